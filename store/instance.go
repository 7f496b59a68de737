package store

import (
	"context"
	"time"
)

// Instance is one engine process.
type Instance struct {
	ID          string     `json:"id"`
	Host        string     `json:"host"`
	PID         int        `json:"pid"`
	Beats       int64      `json:"beats"`
	Version     string     `json:"version,omitempty"`
	StartedAt   time.Time  `json:"started_at"`
	HeartbeatAt time.Time  `json:"heartbeat_at"`
	StoppedAt   *time.Time `json:"stopped_at,omitempty"`
	LostAt      *time.Time `json:"lost_at,omitempty"`
}

// RegisterInstance records an instance as alive (again).
func (o ops) RegisterInstance(ctx context.Context, in Instance) error {
	_, err := o.q.Exec(ctx, `
		INSERT INTO instances (id, host, pid, version, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5, $5)
		ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, version = excluded.version, beats = instances.beats + 1,
			started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, lost_at = NULL`,
		in.ID, in.Host, in.PID, in.Version, Canon(in.StartedAt))
	return dbErr(err, "register instance %s", in.ID)
}

// Heartbeat records that instance id is alive. lost reports that others
// declared it lost meanwhile (its jobs were taken over); the heartbeat
// then does not revive it: RegisterInstance does.
func (o ops) Heartbeat(ctx context.Context, id string, now time.Time) (lost bool, err error) {
	n, err := o.q.Exec(ctx, `UPDATE instances SET heartbeat_at = $2, beats = beats + 1 WHERE id = $1 AND lost_at IS NULL AND stopped_at IS NULL`, id, Canon(now))
	if err != nil {
		return false, dbErr(err, "heartbeat of instance %s", id)
	}
	return n == 0, nil
}

// StopInstance records a clean stop.
func (o ops) StopInstance(ctx context.Context, id string, now time.Time) error {
	_, err := o.q.Exec(ctx, `UPDATE instances SET stopped_at = $2 WHERE id = $1`, id, Canon(now))
	return dbErr(err, "record the stop of instance %s", id)
}

// LiveInstances returns the instances neither stopped nor lost.
func (o ops) LiveInstances(ctx context.Context) ([]Instance, error) {
	return o.instances(ctx, `WHERE stopped_at IS NULL AND lost_at IS NULL`)
}

// MarkLost declares instance id lost if its beat count is still beats; it
// reports false when the instance beat meanwhile or another instance
// declared it lost first (only one takes its jobs over).
func (o ops) MarkLost(ctx context.Context, id string, beats int64, now time.Time) (bool, error) {
	n, err := o.q.Exec(ctx, `UPDATE instances SET lost_at = $3 WHERE id = $1 AND beats = $2 AND lost_at IS NULL AND stopped_at IS NULL`, id, beats, Canon(now))
	return n == 1, dbErr(err, "mark instance %s lost", id)
}

// Instances lists every known instance, most recent heartbeat first.
func (o ops) Instances(ctx context.Context) ([]Instance, error) {
	return o.instances(ctx, ``)
}

func (o ops) instances(ctx context.Context, where string, args ...any) ([]Instance, error) {
	rows, err := o.q.Query(ctx, `SELECT id, host, pid, beats, version, started_at, heartbeat_at, stopped_at, lost_at FROM instances `+where+` ORDER BY heartbeat_at DESC, id`, args...)
	if err != nil {
		return nil, dbErr(err, "read instances")
	}
	defer rows.Close()
	var out []Instance
	for rows.Next() {
		var (
			in                       Instance
			started, beat, stop, lst nullTime
		)
		if err := rows.Scan(&in.ID, &in.Host, &in.PID, &in.Beats, &in.Version, &started, &beat, &stop, &lst); err != nil {
			return nil, dbErr(err, "read instances")
		}
		in.StartedAt, in.HeartbeatAt = started.t, beat.t
		if stop.valid {
			t := stop.t
			in.StoppedAt = &t
		}
		if lst.valid {
			t := lst.t
			in.LostAt = &t
		}
		out = append(out, in)
	}
	return out, dbErr(rows.Err(), "read instances")
}

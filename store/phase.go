package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// StartPhase records that phase p of execution id starts now on instance,
// and returns the attempt number (1 on the first start, more on a retry or
// a takeover after a crash).
func (o ops) StartPhase(ctx context.Context, id int64, p pb.Phase, instance string, now time.Time) (int, error) {
	var attempt int
	err := o.q.QueryRow(ctx, `
		INSERT INTO execution_phases (execution_id, phase, status, attempt, instance, started_at)
		VALUES ($1, $2, 'running', 1, $3, $4)
		ON CONFLICT (execution_id, phase) DO UPDATE
		SET status = 'running', attempt = execution_phases.attempt + 1, instance = excluded.instance,
		    started_at = excluded.started_at, finished_at = NULL, error = NULL
		RETURNING attempt`, id, string(p), instance, Canon(now)).Scan(&attempt)
	return attempt, dbErr(err, "record start of phase %s of execution %d", p, id)
}

// PhaseEnd is how a phase ended.
type PhaseEnd struct {
	Status  pb.PhaseStatus
	Metrics map[string]int64
	Note    string
	Error   *pb.Error
	Now     time.Time
	// Instance is set for phases that end without having started (skipped,
	// cancelled while waiting).
	Instance string
}

// EndPhase records the end of phase p. A phase that never started gets a
// record too, so the history shows every phase.
func (o ops) EndPhase(ctx context.Context, id int64, p pb.Phase, end PhaseEnd) error {
	var metrics any
	if len(end.Metrics) > 0 {
		b, _ := json.Marshal(end.Metrics) // a map of int64 always encodes
		metrics = string(b)
	}
	_, err := o.q.Exec(ctx, `
		INSERT INTO execution_phases (execution_id, phase, status, attempt, instance, finished_at, metrics, note, error)
		VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8)
		ON CONFLICT (execution_id, phase) DO UPDATE
		SET status = excluded.status, finished_at = excluded.finished_at,
		    metrics = COALESCE(excluded.metrics, execution_phases.metrics),
		    note = excluded.note, error = excluded.error`,
		id, string(p), string(end.Status), end.Instance, Canon(end.Now), metrics, end.Note, encodeError(end.Error))
	return dbErr(err, "record end of phase %s of execution %d", p, id)
}

// PhaseFailed records a recoverable failure of phase p (the note says
// what and that it retries) and returns how many failures it has had.
func (o ops) PhaseFailed(ctx context.Context, id int64, p pb.Phase, note string) (int, error) {
	var n int
	err := o.q.QueryRow(ctx, `
		UPDATE execution_phases SET failures = failures + 1, note = $3
		WHERE execution_id = $1 AND phase = $2 RETURNING failures`, id, string(p), note).Scan(&n)
	return n, dbErr(err, "record failure of phase %s of execution %d", p, id)
}

// SetPhaseNote updates the note of a running phase (e.g. "window open
// until 09:30 UTC").
func (o ops) SetPhaseNote(ctx context.Context, id int64, p pb.Phase, note string) error {
	_, err := o.q.Exec(ctx, `UPDATE execution_phases SET note = $3 WHERE execution_id = $1 AND phase = $2`,
		id, string(p), note)
	return dbErr(err, "update phase %s of execution %d", p, id)
}

// idList returns "$first, $first+1, …" for ids, with the arguments.
func idList(ids []int64, first int) (string, []any) {
	var sb strings.Builder
	args := make([]any, len(ids))
	for i, id := range ids {
		if i > 0 {
			sb.WriteString(", ")
		}
		fmt.Fprintf(&sb, "$%d", first+i)
		args[i] = id
	}
	return sb.String(), args
}

// phasesOf returns the phase records of executions ids, each in phase order
// with a pending record for every phase not begun.
func (o ops) phasesOf(ctx context.Context, ids []int64) (map[int64][]pb.PhaseRecord, error) {
	in, args := idList(ids, 1)
	rows, err := o.q.Query(ctx, `
		SELECT execution_id, phase, status, attempt, instance, started_at, finished_at, metrics, note, error
		FROM execution_phases WHERE execution_id IN (`+in+`)`, args...)
	if err != nil {
		return nil, dbErr(err, "list phases")
	}
	defer rows.Close()
	byExec := map[int64]map[pb.Phase]pb.PhaseRecord{}
	for rows.Next() {
		var (
			id                int64
			r                 pb.PhaseRecord
			phase, status     string
			started, finished nullTime
			metrics, errJSON  nullString
		)
		if err := rows.Scan(&id, &phase, &status, &r.Attempt, &r.Instance, &started, &finished, &metrics, &r.Note, &errJSON); err != nil {
			return nil, dbErr(err, "list phases")
		}
		r.Phase, r.Status = pb.Phase(phase), pb.PhaseStatus(status)
		r.StartedAt, r.FinishedAt = started.ptr(), finished.ptr()
		if metrics.Valid && metrics.String != "" {
			if err := json.Unmarshal([]byte(metrics.String), &r.Metrics); err != nil {
				return nil, pb.Errorf(pb.KindInternal, "phase %s of execution %d: stored metrics unreadable: %v", phase, id, err)
			}
		}
		if r.Error, err = decodeError(errJSON); err != nil {
			return nil, pb.Errorf(pb.KindInternal, "phase %s of execution %d: %v", phase, id, err)
		}
		if byExec[id] == nil {
			byExec[id] = map[pb.Phase]pb.PhaseRecord{}
		}
		byExec[id][r.Phase] = r
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr(err, "list phases")
	}
	out := make(map[int64][]pb.PhaseRecord, len(ids))
	for _, id := range ids {
		list := make([]pb.PhaseRecord, 0, len(pb.Phases))
		for _, p := range pb.Phases {
			if r, ok := byExec[id][p]; ok {
				list = append(list, r)
			} else {
				list = append(list, pb.PhaseRecord{Phase: p, Status: pb.PhasePending})
			}
		}
		out[id] = list
	}
	return out, nil
}

// metricsOf returns the metrics of executions ids.
func (o ops) metricsOf(ctx context.Context, ids []int64) (map[int64]map[string]int64, error) {
	in, args := idList(ids, 1)
	rows, err := o.q.Query(ctx, `SELECT execution_id, name, value FROM execution_metrics WHERE execution_id IN (`+in+`)`, args...)
	if err != nil {
		return nil, dbErr(err, "read metrics")
	}
	defer rows.Close()
	out := make(map[int64]map[string]int64, len(ids))
	for _, id := range ids {
		out[id] = map[string]int64{}
	}
	for rows.Next() {
		var (
			id   int64
			name string
			v    int64
		)
		if err := rows.Scan(&id, &name, &v); err != nil {
			return nil, dbErr(err, "read metrics")
		}
		out[id][name] = v
	}
	return out, dbErr(rows.Err(), "read metrics")
}

// AddMetrics adds deltas to an execution's metrics.
func (o ops) AddMetrics(ctx context.Context, id int64, deltas map[string]int64) error {
	for name, v := range deltas {
		_, err := o.q.Exec(ctx, `
			INSERT INTO execution_metrics (execution_id, name, value) VALUES ($1, $2, $3)
			ON CONFLICT (execution_id, name) DO UPDATE SET value = execution_metrics.value + excluded.value`,
			id, name, v)
		if err != nil {
			return dbErr(err, "add metric %s of execution %d", name, id)
		}
	}
	return nil
}

// SetMetrics sets an execution's metrics to the given values, in one
// statement.
func (o ops) SetMetrics(ctx context.Context, id int64, values map[string]int64) error {
	if len(values) == 0 {
		return nil
	}
	names := make([]string, 0, len(values))
	for name := range values {
		names = append(names, name)
	}
	slices.Sort(names) // a stable lock order between concurrent writers
	var sb strings.Builder
	args := []any{id}
	sb.WriteString(`INSERT INTO execution_metrics (execution_id, name, value) VALUES `)
	for i, name := range names {
		if i > 0 {
			sb.WriteString(", ")
		}
		fmt.Fprintf(&sb, "($1, $%d, $%d)", len(args)+1, len(args)+2)
		args = append(args, name, values[name])
	}
	sb.WriteString(` ON CONFLICT (execution_id, name) DO UPDATE SET value = excluded.value`)
	_, err := o.q.Exec(ctx, sb.String(), args...)
	return dbErr(err, "set metrics of execution %d", id)
}

// GetPhase returns the record of phase p of execution id (pending if the
// phase has not begun).
func (o ops) GetPhase(ctx context.Context, id int64, p pb.Phase) (pb.PhaseRecord, error) {
	m, err := o.phasesOf(ctx, []int64{id})
	if err != nil {
		return pb.PhaseRecord{}, err
	}
	for _, r := range m[id] {
		if r.Phase == p {
			return r, nil
		}
	}
	return pb.PhaseRecord{Phase: p, Status: pb.PhasePending}, nil
}

// Metrics returns an execution's metrics.
func (o ops) Metrics(ctx context.Context, id int64) (map[string]int64, error) {
	m, err := o.metricsOf(ctx, []int64{id})
	if err != nil {
		return nil, err
	}
	return m[id], nil
}

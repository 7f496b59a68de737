package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// Ping runs a trivial statement: the database answers.
func (o ops) Ping(ctx context.Context) error {
	var one int
	return dbErr(o.q.QueryRow(ctx, `SELECT 1`).Scan(&one), "ping the database")
}

// JobCounts returns River's jobs by state.
func (o ops) JobCounts(ctx context.Context) (map[string]int64, error) {
	rows, err := o.q.Query(ctx, `SELECT state, count(*) FROM river_job GROUP BY state`)
	if err != nil {
		return nil, dbErr(err, "count jobs")
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var (
			state string
			n     int64
		)
		if err := rows.Scan(&state, &n); err != nil {
			return nil, dbErr(err, "count jobs")
		}
		out[state] = n
	}
	return out, dbErr(rows.Err(), "count jobs")
}

// RunningJob is a River job in state running.
type RunningJob struct {
	ID          int64
	Kind        string
	ExecutionID int64
	// AttemptedBy is the instance running it (River's client id).
	AttemptedBy string
	AttemptedAt time.Time
}

// RunningJobs returns River's running jobs, oldest attempt first.
func (o ops) RunningJobs(ctx context.Context) ([]RunningJob, error) {
	q := `SELECT id, kind, attempted_at, COALESCE(attempted_by[array_length(attempted_by, 1)], ''),
		COALESCE((args->>'execution_id')::bigint, 0) FROM river_job WHERE state = 'running' ORDER BY attempted_at, id`
	if o.dialect != "postgres" {
		q = `SELECT id, kind, attempted_at, COALESCE(json_extract(attempted_by, '$[#-1]'), ''),
			COALESCE(json_extract(args, '$.execution_id'), 0) FROM river_job WHERE state = 'running' ORDER BY attempted_at, id`
	}
	rows, err := o.q.Query(ctx, q)
	if err != nil {
		return nil, dbErr(err, "read running jobs")
	}
	defer rows.Close()
	var out []RunningJob
	for rows.Next() {
		var (
			j  RunningJob
			at nullTime
		)
		if err := rows.Scan(&j.ID, &j.Kind, &at, &j.AttemptedBy, &j.ExecutionID); err != nil {
			return nil, dbErr(err, "read running jobs")
		}
		j.AttemptedAt = at.t
		out = append(out, j)
	}
	return out, dbErr(rows.Err(), "read running jobs")
}

// CountLateJobs counts jobs due since before due that no worker of any
// instance has taken, but for jobs of kind except (a big send's batches
// wait their turn by design).
func (o ops) CountLateJobs(ctx context.Context, due time.Time, except string) (int64, error) {
	// Due jobs wait as available, or as scheduled or retryable until
	// River's leader makes them available.
	q := `SELECT count(*) FROM river_job WHERE state IN ('available', 'scheduled', 'retryable') AND scheduled_at < $1 AND kind <> $2`
	if o.dialect != "postgres" {
		// River's SQLite timestamps are text in a format of its own:
		// compare instants, not text.
		q = `SELECT count(*) FROM river_job WHERE state IN ('available', 'scheduled', 'retryable') AND julianday(scheduled_at) < julianday($1) AND kind <> $2`
	}
	var n int64
	err := o.q.QueryRow(ctx, q, Canon(due), except).Scan(&n)
	return n, dbErr(err, "count late jobs")
}

// ActivePhase is a non-final execution with its current phase.
type ActivePhase struct {
	ExecutionID, AutomationID int64
	Status                    pb.ExecutionStatus
	Phase                     pb.Phase
	SendAt, AudienceAt        time.Time
	// Queued is set when the execution waits for another (overlap policy
	// queue).
	Queued bool
	// StartedAt is when its current phase last started (nil before).
	StartedAt *time.Time
	// Progress is the last time a batch of its live send recorded
	// progress (nil without batches).
	Progress *time.Time
}

// ActivePhases returns every non-final execution with its current phase.
func (o ops) ActivePhases(ctx context.Context) ([]ActivePhase, error) {
	rows, err := o.q.Query(ctx, `
		SELECT e.id, e.automation_id, e.status, e.phase, e.send_at, e.audience_at, e.waiting_for IS NOT NULL,
		       p.started_at, (SELECT max(b.updated_at) FROM send_batches b WHERE b.execution_id = e.id)
		FROM executions e LEFT JOIN execution_phases p ON p.execution_id = e.id AND p.phase = e.phase
		WHERE e.status IN ('scheduled', 'running', 'awaiting_send') ORDER BY e.id`)
	if err != nil {
		return nil, dbErr(err, "read active executions")
	}
	defer rows.Close()
	var out []ActivePhase
	for rows.Next() {
		var (
			a                         ActivePhase
			status, phase             string
			send, aud, started, batch nullTime
		)
		if err := rows.Scan(&a.ExecutionID, &a.AutomationID, &status, &phase, &send, &aud, &a.Queued, &started, &batch); err != nil {
			return nil, dbErr(err, "read active executions")
		}
		a.Status, a.Phase, a.SendAt, a.AudienceAt = pb.ExecutionStatus(status), pb.Phase(phase), send.t, aud.t
		a.StartedAt, a.Progress = started.ptr(), batch.ptr()
		out = append(out, a)
	}
	return out, dbErr(rows.Err(), "read active executions")
}

// ListErrors returns recorded errors (error events), newest first.
func (o ops) ListErrors(ctx context.Context, f pb.ErrorFilter) ([]pb.ErrorRecord, error) {
	where := []string{"type = 'error'"}
	var args []any
	if f.BeforeID > 0 {
		args = append(args, f.BeforeID)
		where = append(where, fmt.Sprintf("id < $%d", len(args)))
	}
	if f.AutomationID != nil {
		args = append(args, *f.AutomationID)
		where = append(where, fmt.Sprintf("automation_id = $%d", len(args)))
	}
	if f.ExecutionID != nil {
		args = append(args, *f.ExecutionID)
		where = append(where, fmt.Sprintf("execution_id = $%d", len(args)))
	}
	if f.Kind != "" {
		args = append(args, string(f.Kind))
		kind := "data->>'kind'"
		if o.dialect != "postgres" {
			kind = "json_extract(data, '$.kind')"
		}
		// An error event without a kind is internal (see ErrorRecord).
		where = append(where, fmt.Sprintf("COALESCE(%s, 'internal') = $%d", kind, len(args)))
	}
	limit := f.Limit
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	args = append(args, limit)
	evs, err := o.events(ctx, fmt.Sprintf(`WHERE %s ORDER BY id DESC LIMIT $%d`, strings.Join(where, " AND "), len(args)), args...)
	if err != nil {
		return nil, err
	}
	out := make([]pb.ErrorRecord, len(evs))
	for i, ev := range evs {
		out[i] = ErrorRecordOf(ev)
		out[i].Stored = true
	}
	return out, nil
}

// ErrorRecordOf is the error record of an error event.
func ErrorRecordOf(ev *pb.Event) pb.ErrorRecord {
	kind := pb.Kind(ev.Data["kind"])
	if kind == "" {
		kind = pb.KindInternal
	}
	return pb.ErrorRecord{ID: ev.ID, Kind: kind, AutomationID: ev.AutomationID, ExecutionID: ev.ExecutionID,
		Phase: ev.Phase, Message: ev.Message, At: ev.At, Stored: ev.ID > 0}
}

// CountErrorsSince counts error events recorded at or after since.
func (o ops) CountErrorsSince(ctx context.Context, since time.Time) (int64, error) {
	var n int64
	err := o.q.QueryRow(ctx, `SELECT count(*) FROM events WHERE type = 'error' AND at >= $1`, Canon(since)).Scan(&n)
	return n, dbErr(err, "count recent errors")
}

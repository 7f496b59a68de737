package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

const executionColumns = `e.id, e.automation_id, a.name, e.automation_version, e.send_at, e.audience_at,
	e.cancel_deadline, e.trigger, e.status, e.reason, e.phase, e.error, e.waiting_for, e.job_id, e.created_at,
	e.started_at, e.finished_at, e.cancelled_at, e.updated_at`

const executionFrom = ` FROM executions e JOIN automations a ON a.id = e.automation_id`

func scanExecution(row interface{ Scan(...any) error }) (*pb.Execution, error) {
	var (
		e                                     pb.Execution
		sendAt, audienceAt, deadline, created nullTime
		started, finished, cancelled, updated nullTime
		trigger, status, phase                string
		errJSON                               nullString
		waitingFor, jobID                     *int64
	)
	err := row.Scan(&e.ID, &e.AutomationID, &e.AutomationName, &e.AutomationVersion, &sendAt, &audienceAt,
		&deadline, &trigger, &status, &e.Reason, &phase, &errJSON, &waitingFor, &jobID, &created,
		&started, &finished, &cancelled, &updated)
	if err != nil {
		return nil, err
	}
	e.SendAt, e.AudienceAt, e.CancelDeadline, e.CreatedAt, e.UpdatedAt = sendAt.t, audienceAt.t, deadline.t, created.t, updated.t
	e.StartedAt, e.FinishedAt, e.CancelledAt = started.ptr(), finished.ptr(), cancelled.ptr()
	e.Trigger, e.Status, e.Phase = pb.Trigger(trigger), pb.ExecutionStatus(status), pb.Phase(phase)
	if waitingFor != nil {
		e.WaitingFor = *waitingFor
	}
	if jobID != nil {
		e.JobID = *jobID
	}
	if e.Error, err = decodeError(errJSON); err != nil {
		return nil, err
	}
	e.Phases = []pb.PhaseRecord{}
	e.Metrics = map[string]int64{}
	return &e, nil
}

func decodeError(s nullString) (*pb.Error, error) {
	if !s.Valid || s.String == "" || s.String == "null" {
		return nil, nil
	}
	var e pb.Error
	if err := json.Unmarshal([]byte(s.String), &e); err != nil {
		return nil, fmt.Errorf("stored error is unreadable: %w", err)
	}
	return &e, nil
}

// encodeError returns the JSON of e, or nil for SQL NULL.
func encodeError(e *pb.Error) any {
	if e == nil {
		return nil
	}
	b, err := json.Marshal(e)
	if err != nil {
		return `{"kind":"internal","message":"unencodable error"}`
	}
	return string(b)
}

// InsertExecution stores e (its ID is set) unless an execution for the
// same automation and send time exists: then it returns that execution's id
// and created false. That unique key is what makes every fire happen once,
// however many instances tick.
func (o ops) InsertExecution(ctx context.Context, e *pb.Execution) (existing int64, created bool, err error) {
	e.CreatedAt, e.UpdatedAt = Canon(e.CreatedAt), Canon(e.CreatedAt)
	err = o.q.QueryRow(ctx, `
		INSERT INTO executions (automation_id, automation_version, send_at, audience_at, cancel_deadline,
			trigger, status, reason, phase, error, created_at, started_at, finished_at, cancelled_at, updated_at,
			waiting_for, job_id, tags)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $11, $15, $16, $17)
		ON CONFLICT (automation_id, send_at) DO NOTHING
		RETURNING id`,
		e.AutomationID, e.AutomationVersion, Canon(e.SendAt), Canon(e.AudienceAt), Canon(e.CancelDeadline),
		string(e.Trigger), string(e.Status), e.Reason, string(e.Phase), encodeError(e.Error), e.CreatedAt,
		canonPtr(e.StartedAt), canonPtr(e.FinishedAt), canonPtr(e.CancelledAt), nullID(e.WaitingFor), nullID(e.JobID), joinTags(e.Tags)).Scan(&e.ID)
	if errors.Is(err, ErrNoRows) {
		err = o.q.QueryRow(ctx, `SELECT id FROM executions WHERE automation_id = $1 AND send_at = $2`,
			e.AutomationID, Canon(e.SendAt)).Scan(&existing)
		return existing, false, dbErr(err, "find execution of automation %d at %s", e.AutomationID, e.SendAt)
	}
	if err != nil {
		return 0, false, dbErr(err, "insert execution of automation %d at %s", e.AutomationID, e.SendAt)
	}
	return e.ID, true, nil
}

func canonPtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return Canon(*t)
}

// GetExecution returns an execution with its phases and metrics. With lock,
// the execution row stays locked until the transaction ends (PostgreSQL):
// every status change takes this lock, so a cancel and a phase start are
// strictly ordered.
func (o ops) GetExecution(ctx context.Context, id int64, lock bool) (*pb.Execution, error) {
	e, err := o.GetExecutionRow(ctx, id, lock)
	if err != nil {
		return nil, err
	}
	if err := o.loadDetails(ctx, e); err != nil {
		return nil, err
	}
	return e, nil
}

// GetExecutionRow is GetExecution without phases and metrics: the cheap
// read of the phase transactions.
func (o ops) GetExecutionRow(ctx context.Context, id int64, lock bool) (*pb.Execution, error) {
	q := `SELECT ` + executionColumns + executionFrom + ` WHERE e.id = $1`
	if lock && o.dialect == "postgres" {
		q += ` FOR NO KEY UPDATE OF e`
	}
	e, err := scanExecution(o.q.QueryRow(ctx, q, id))
	if err != nil {
		return nil, notFound(err, "execution", id)
	}
	return e, nil
}

// loadDetails fills the phases and metrics of es in two queries.
func (o ops) loadDetails(ctx context.Context, es ...*pb.Execution) error {
	if len(es) == 0 {
		return nil
	}
	ids := make([]int64, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	phases, err := o.phasesOf(ctx, ids)
	if err != nil {
		return err
	}
	metrics, err := o.metricsOf(ctx, ids)
	if err != nil {
		return err
	}
	for _, e := range es {
		e.Phases, e.Metrics = phases[e.ID], metrics[e.ID]
	}
	return nil
}

// ListExecutions returns executions newest first with their phases and
// metrics; Limit defaults to 100 and is capped at 1000.
func (o ops) ListExecutions(ctx context.Context, f pb.ExecutionFilter) ([]*pb.Execution, error) {
	var (
		where []string
		args  []any
	)
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.AutomationID != nil {
		add("e.automation_id = $%d", *f.AutomationID)
	}
	if f.Status != nil {
		add("e.status = $%d", string(*f.Status))
	}
	if f.BeforeID > 0 {
		add("e.id < $%d", f.BeforeID)
	}
	limit := f.Limit
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	q := `SELECT ` + executionColumns + executionFrom
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	args = append(args, limit)
	q += fmt.Sprintf(` ORDER BY e.id DESC LIMIT $%d`, len(args))
	rows, err := o.q.Query(ctx, q, args...)
	if err != nil {
		return nil, dbErr(err, "list executions")
	}
	var out []*pb.Execution
	for rows.Next() {
		e, err := scanExecution(rows)
		if err != nil {
			rows.Close()
			return nil, dbErr(err, "list executions")
		}
		out = append(out, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, dbErr(err, "list executions")
	}
	return out, o.loadDetails(ctx, out...)
}

// ActiveExecutions returns an automation's executions in a non-final
// status, oldest first, without details.
func (o ops) ActiveExecutions(ctx context.Context, automationID int64) ([]*pb.Execution, error) {
	rows, err := o.q.Query(ctx, `SELECT `+executionColumns+executionFrom+`
		WHERE e.automation_id = $1 AND e.status IN ('scheduled', 'running', 'awaiting_send')
		ORDER BY e.id`, automationID)
	if err != nil {
		return nil, dbErr(err, "list active executions of automation %d", automationID)
	}
	defer rows.Close()
	var out []*pb.Execution
	for rows.Next() {
		e, err := scanExecution(rows)
		if err != nil {
			return nil, dbErr(err, "list active executions of automation %d", automationID)
		}
		out = append(out, e)
	}
	return out, dbErr(rows.Err(), "list active executions of automation %d", automationID)
}

// CountActive returns how many executions are in a non-final status.
func (o ops) CountActive(ctx context.Context) (int64, error) {
	var n int64
	err := o.q.QueryRow(ctx, `SELECT count(*) FROM executions
		WHERE status IN ('scheduled', 'running', 'awaiting_send')`).Scan(&n)
	return n, dbErr(err, "count active executions")
}

// CountActiveByStatus returns how many executions are in each non-final
// status; a status without any is absent.
func (o ops) CountActiveByStatus(ctx context.Context) (map[pb.ExecutionStatus]int64, error) {
	rows, err := o.q.Query(ctx, `SELECT status, count(*) FROM executions
		WHERE status IN ('scheduled', 'running', 'awaiting_send') GROUP BY status`)
	if err != nil {
		return nil, dbErr(err, "count active executions")
	}
	defer rows.Close()
	out := map[pb.ExecutionStatus]int64{}
	for rows.Next() {
		var (
			status string
			n      int64
		)
		if err := rows.Scan(&status, &n); err != nil {
			return nil, dbErr(err, "count active executions")
		}
		out[pb.ExecutionStatus(status)] = n
	}
	return out, dbErr(rows.Err(), "count active executions")
}

// ExecutionUpdate changes an execution; nil fields stay as they are.
type ExecutionUpdate struct {
	Status      *pb.ExecutionStatus
	Reason      *string
	Phase       *pb.Phase
	Error       *pb.Error
	StartedAt   *time.Time // kept if already set
	FinishedAt  *time.Time
	CancelledAt *time.Time
	// WaitingFor and JobID: a pointer to 0 clears the column.
	WaitingFor *int64
	JobID      *int64
	Now        time.Time
}

// UpdateExecution applies u to execution id.
func (o ops) UpdateExecution(ctx context.Context, id int64, u ExecutionUpdate) error {
	sets := []string{"updated_at = $2"}
	args := []any{id, Canon(u.Now)}
	set := func(expr string, v any) {
		args = append(args, v)
		sets = append(sets, fmt.Sprintf(expr, len(args)))
	}
	if u.Status != nil {
		set("status = $%d", string(*u.Status))
	}
	if u.Reason != nil {
		set("reason = $%d", *u.Reason)
	}
	if u.Phase != nil {
		set("phase = $%d", string(*u.Phase))
	}
	if u.Error != nil {
		set("error = $%d", encodeError(u.Error))
	}
	if u.StartedAt != nil {
		set("started_at = COALESCE(started_at, $%d)", Canon(*u.StartedAt))
	}
	if u.FinishedAt != nil {
		set("finished_at = $%d", Canon(*u.FinishedAt))
	}
	if u.CancelledAt != nil {
		set("cancelled_at = $%d", Canon(*u.CancelledAt))
	}
	if u.WaitingFor != nil {
		set("waiting_for = $%d", nullID(*u.WaitingFor))
	}
	if u.JobID != nil {
		set("job_id = $%d", nullID(*u.JobID))
	}
	n, err := o.q.Exec(ctx, `UPDATE executions SET `+strings.Join(sets, ", ")+` WHERE id = $1`, args...)
	if err != nil {
		return dbErr(err, "update execution %d", id)
	}
	if n == 0 {
		return pb.Errorf(pb.KindNotFound, "execution %d not found", id)
	}
	return nil
}

// QueuedBehind returns the executions waiting for execution id to end.
func (o ops) QueuedBehind(ctx context.Context, id int64) ([]*pb.Execution, error) {
	rows, err := o.q.Query(ctx, `SELECT `+executionColumns+executionFrom+`
		WHERE e.waiting_for = $1 AND e.status = 'scheduled' ORDER BY e.id`, id)
	if err != nil {
		return nil, dbErr(err, "list executions queued behind %d", id)
	}
	defer rows.Close()
	var out []*pb.Execution
	for rows.Next() {
		e, err := scanExecution(rows)
		if err != nil {
			return nil, dbErr(err, "list executions queued behind %d", id)
		}
		out = append(out, e)
	}
	return out, dbErr(rows.Err(), "list executions queued behind %d", id)
}

// ExecutionStatus returns just the status of execution id: a cheap read
// for running phases that watch for a cancel.
func (o ops) ExecutionStatus(ctx context.Context, id int64) (pb.ExecutionStatus, error) {
	var st string
	err := o.q.QueryRow(ctx, `SELECT status FROM executions WHERE id = $1`, id).Scan(&st)
	if err != nil {
		return "", notFound(err, "execution", id)
	}
	return pb.ExecutionStatus(st), nil
}

// joinTags stores tags as ",a,b," so that a tag matches with LIKE '%,a,%'.
func joinTags(tags []string) string {
	if len(tags) == 0 {
		return ""
	}
	return "," + strings.Join(tags, ",") + ","
}

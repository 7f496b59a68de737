package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// Schedule is an automation's scheduler state.
type Schedule struct {
	// SendAt is the next fire's send time; nil means no further fire.
	SendAt *time.Time
	// FireAt is when that fire is due: SendAt minus the lead time.
	FireAt *time.Time
}

const automationColumns = `id, name, version, spec, paused, next_send_at, next_fire_at, created_at, updated_at`

func scanAutomation(row interface{ Scan(...any) error }) (*pb.Automation, error) {
	var (
		a        pb.Automation
		id       int64
		name     string
		version  int
		spec     string
		paused   bool
		nextSend nullTime
		nextFire nullTime
		created  nullTime
		updated  nullTime
	)
	if err := row.Scan(&id, &name, &version, &spec, &paused, &nextSend, &nextFire, &created, &updated); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(spec), &a); err != nil {
		return nil, pb.Errorf(pb.KindInternal, "automation %d: stored definition is unreadable: %v", id, err)
	}
	a.ID, a.Name, a.Version, a.Paused = id, name, version, paused
	a.NextSendAt, a.NextFireAt = nextSend.ptr(), nextFire.ptr()
	a.CreatedAt, a.UpdatedAt = created.t, updated.t
	return &a, nil
}

func specJSON(a *pb.Automation) (string, error) {
	d := a.Definition()
	d.Paused = false // a column of its own: pausing is not a new version
	b, err := json.Marshal(d)
	if err != nil {
		return "", pb.Errorf(pb.KindInternal, "encode automation: %v", err)
	}
	return string(b), nil
}

func notFound(err error, what string, id any) error {
	if errors.Is(err, ErrNoRows) {
		return pb.Errorf(pb.KindNotFound, "%s %v not found", what, id)
	}
	return dbErr(err, "read %s %v", what, id)
}

// InsertAutomation stores a new, normalised automation as version 1 and
// sets a.ID, a.Version and the timestamps. A live automation with the same
// name is a conflict.
func (o ops) InsertAutomation(ctx context.Context, a *pb.Automation, sched Schedule, now time.Time) error {
	spec, err := specJSON(a)
	if err != nil {
		return err
	}
	now = Canon(now)
	err = o.q.QueryRow(ctx, `
		INSERT INTO automations (name, version, spec, paused, next_send_at, next_fire_at, created_at, updated_at)
		VALUES ($1, 1, $2, $3, $4, $5, $6, $6)
		RETURNING id`,
		a.Name, spec, a.Paused, sched.SendAt, sched.FireAt, now).Scan(&a.ID)
	if err != nil {
		return nameConflict(err, a.Name, "insert automation")
	}
	a.Version, a.CreatedAt, a.UpdatedAt, a.NextSendAt, a.NextFireAt = 1, now, now, sched.SendAt, sched.FireAt
	return o.insertVersion(ctx, a.ID, 1, spec, now)
}

func nameConflict(err error, name, op string) error {
	if pb.ErrorKind(err) == pb.KindConflict {
		return pb.Errorf(pb.KindConflict, "an automation named %q already exists; choose another name or update that one", name)
	}
	return dbErr(err, "%s", op)
}

func (o ops) insertVersion(ctx context.Context, id int64, version int, spec string, now time.Time) error {
	_, err := o.q.Exec(ctx, `
		INSERT INTO automation_versions (automation_id, version, spec, created_at)
		VALUES ($1, $2, $3, $4)`, id, version, spec, now)
	return dbErr(err, "insert automation %d version %d", id, version)
}

// UpdateAutomation replaces the definition of automation a.ID, stores it as
// a new version and sets a.Version and a.UpdatedAt. The caller holds the
// row (GetAutomation with lock).
func (o ops) UpdateAutomation(ctx context.Context, a *pb.Automation, sched Schedule, now time.Time) error {
	spec, err := specJSON(a)
	if err != nil {
		return err
	}
	now = Canon(now)
	var version int
	err = o.q.QueryRow(ctx, `
		UPDATE automations
		SET name = $2, version = version + 1, spec = $3, paused = $4,
		    next_send_at = $5, next_fire_at = $6, updated_at = $7
		WHERE id = $1 AND deleted_at IS NULL
		RETURNING version`,
		a.ID, a.Name, spec, a.Paused, sched.SendAt, sched.FireAt, now).Scan(&version)
	if err != nil {
		if errors.Is(err, ErrNoRows) {
			return notFound(err, "automation", a.ID)
		}
		return nameConflict(err, a.Name, "update automation")
	}
	a.Version, a.UpdatedAt, a.NextSendAt, a.NextFireAt = version, now, sched.SendAt, sched.FireAt
	return o.insertVersion(ctx, a.ID, version, spec, now)
}

// SetSchedule records an automation's next fire (the scheduler advancing)
// and, if paused is non-nil, pauses or resumes it. It does not make a new
// version.
func (o ops) SetSchedule(ctx context.Context, id int64, sched Schedule, paused *bool, now time.Time) error {
	var n int64
	var err error
	if paused == nil {
		n, err = o.q.Exec(ctx, `
			UPDATE automations SET next_send_at = $2, next_fire_at = $3
			WHERE id = $1 AND deleted_at IS NULL`, id, sched.SendAt, sched.FireAt)
	} else {
		n, err = o.q.Exec(ctx, `
			UPDATE automations SET next_send_at = $2, next_fire_at = $3, paused = $4, updated_at = $5
			WHERE id = $1 AND deleted_at IS NULL`, id, sched.SendAt, sched.FireAt, *paused, Canon(now))
	}
	if err != nil {
		return dbErr(err, "update schedule of automation %d", id)
	}
	if n == 0 {
		return pb.Errorf(pb.KindNotFound, "automation %d not found", id)
	}
	return nil
}

// DeleteAutomation removes an automation from scheduling and frees its
// name. Its versions and executions stay readable.
func (o ops) DeleteAutomation(ctx context.Context, id int64, now time.Time) error {
	n, err := o.q.Exec(ctx, `
		UPDATE automations SET deleted_at = $2, next_send_at = NULL, next_fire_at = NULL
		WHERE id = $1 AND deleted_at IS NULL`, id, Canon(now))
	if err != nil {
		return dbErr(err, "delete automation %d", id)
	}
	if n == 0 {
		return pb.Errorf(pb.KindNotFound, "automation %d not found", id)
	}
	return nil
}

// GetAutomation returns a live automation. With lock, the row stays locked
// until the transaction ends (PostgreSQL).
func (o ops) GetAutomation(ctx context.Context, id int64, lock bool) (*pb.Automation, error) {
	q := `SELECT ` + automationColumns + ` FROM automations WHERE id = $1 AND deleted_at IS NULL`
	if lock {
		q += o.forUpdate()
	}
	a, err := scanAutomation(o.q.QueryRow(ctx, q, id))
	if err != nil {
		return nil, notFound(err, "automation", id)
	}
	return a, nil
}

// GetAutomationByName returns the live automation with that name.
func (o ops) GetAutomationByName(ctx context.Context, name string, lock bool) (*pb.Automation, error) {
	q := `SELECT ` + automationColumns + ` FROM automations WHERE name = $1 AND deleted_at IS NULL`
	if lock {
		q += o.forUpdate()
	}
	a, err := scanAutomation(o.q.QueryRow(ctx, q, name))
	if err != nil {
		return nil, notFound(err, "automation", `"`+name+`"`)
	}
	return a, nil
}

// GetAutomationVersion returns version v of automation id, even if it was
// deleted since: an execution always runs the version it started with.
func (o ops) GetAutomationVersion(ctx context.Context, id int64, version int) (*pb.Automation, error) {
	var (
		name    string
		spec    string
		created nullTime
	)
	err := o.q.QueryRow(ctx, `
		SELECT a.name, v.spec, v.created_at
		FROM automation_versions v JOIN automations a ON a.id = v.automation_id
		WHERE v.automation_id = $1 AND v.version = $2`, id, version).Scan(&name, &spec, &created)
	if err != nil {
		return nil, notFound(err, "automation version", fmtIDVersion(id, version))
	}
	var a pb.Automation
	if err := json.Unmarshal([]byte(spec), &a); err != nil {
		return nil, pb.Errorf(pb.KindInternal, "automation %d version %d: stored definition is unreadable: %v", id, version, err)
	}
	a.ID, a.Version, a.CreatedAt, a.UpdatedAt = id, version, created.t, created.t
	return &a, nil
}

func fmtIDVersion(id int64, v int) string { return fmt.Sprintf("%d/v%d", id, v) }

// ListAutomations returns live automations in name order.
func (o ops) ListAutomations(ctx context.Context, f pb.AutomationFilter) ([]*pb.Automation, error) {
	q := `SELECT ` + automationColumns + ` FROM automations WHERE deleted_at IS NULL`
	var args []any
	if f.Name != nil {
		args = append(args, *f.Name)
		q += ` AND name = $1`
	}
	rows, err := o.q.Query(ctx, q+` ORDER BY name`, args...)
	if err != nil {
		return nil, dbErr(err, "list automations")
	}
	defer rows.Close()
	var out []*pb.Automation
	for rows.Next() {
		a, err := scanAutomation(rows)
		if err != nil {
			return nil, dbErr(err, "list automations")
		}
		out = append(out, a)
	}
	return out, dbErr(rows.Err(), "list automations")
}

// DueAutomationIDs returns up to limit ids of unpaused automations whose
// next fire is due at now, most overdue first. It locks nothing: each is
// then taken with LockDueAutomation in a transaction of its own, so that one
// automation that cannot fire never holds up the others.
func (o ops) DueAutomationIDs(ctx context.Context, now time.Time, limit int) ([]int64, error) {
	rows, err := o.q.Query(ctx, `
		SELECT id FROM automations
		WHERE deleted_at IS NULL AND NOT paused AND next_fire_at <= $1
		ORDER BY next_fire_at, id
		LIMIT $2`, Canon(now), limit)
	if err != nil {
		return nil, dbErr(err, "select due automations")
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, dbErr(err, "select due automations")
		}
		out = append(out, id)
	}
	return out, dbErr(rows.Err(), "select due automations")
}

// LockDueAutomation locks automation id for this transaction if it is
// still due at now, and returns it; it returns nil if the automation is no
// longer due or (PostgreSQL) another instance is firing it right now.
func (o ops) LockDueAutomation(ctx context.Context, id int64, now time.Time) (*pb.Automation, error) {
	a, err := scanAutomation(o.q.QueryRow(ctx, `
		SELECT `+automationColumns+` FROM automations
		WHERE id = $1 AND deleted_at IS NULL AND NOT paused AND next_fire_at <= $2`+o.skipLocked(), id, Canon(now)))
	if errors.Is(err, ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, dbErr(err, "lock automation %d", id)
	}
	return a, nil
}

// CountScheduled returns how many automations have a next fire.
func (o ops) CountScheduled(ctx context.Context) (int64, error) {
	var n int64
	err := o.q.QueryRow(ctx, `
		SELECT count(*) FROM automations
		WHERE deleted_at IS NULL AND NOT paused AND next_fire_at IS NOT NULL`).Scan(&n)
	return n, dbErr(err, "count scheduled automations")
}

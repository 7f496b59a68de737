package engine_test

import (
	"context"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// exec runs raw SQL on the bundle's database, as an operator (or an
// outage) would.
func (b *bundle) exec(sql string) {
	b.t.Helper()
	var err error
	if b.db.Pool != nil {
		_, err = b.db.Pool.Exec(context.Background(), sql)
	} else {
		_, err = b.db.SQLite.DB.ExecContext(context.Background(), sql)
	}
	if err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
}

// jobState returns the River state of job id and how many errors it has
// recorded.
func (b *bundle) jobState(id int64) (state string, errs int) {
	b.t.Helper()
	q := `SELECT state, coalesce(array_length(errors, 1), 0) FROM river_job WHERE id = $1`
	var err error
	if b.db.Pool != nil {
		err = b.db.Pool.QueryRow(context.Background(), q, id).Scan(&state, &errs)
	} else {
		q = `SELECT state, coalesce(json_array_length(errors), 0) FROM river_job WHERE id = ?`
		err = b.db.SQLite.DB.QueryRowContext(context.Background(), q, id).Scan(&state, &errs)
	}
	if err != nil {
		b.t.Fatalf("read job %d: %v", id, err)
	}
	return state, errs
}

// TestPhaseDoesNotRunUnrecorded: when the start of the live send cannot be
// written, nothing is sent; River retries, and once the store works again
// the phase runs, once.
func TestPhaseDoesNotRunUnrecorded(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := automation("fail-closed")
		a.CancellationDeadline = pb.DurationOf(10 * time.Minute)
		a = b.create(a)
		send := berlin(2026, 6, 1, 9, 30)
		b.clock.Set(send.Add(-30 * time.Minute))
		ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
		b.clock.Set(send.Add(-10 * time.Minute))
		ex = b.waitPhase(ex.ID, pb.PhaseWindow, pb.PhaseCompleted)
		liveJob := ex.JobID

		// The phase table disappears (think: a bad migration, a revoked
		// grant) just before the send time.
		b.exec(`ALTER TABLE execution_phases RENAME TO execution_phases_away`)
		b.clock.Set(send)
		waitFor(t, "the live send job to fail its start", func() (bool, string) {
			st, errs := b.jobState(liveJob)
			return errs >= 1, st
		})
		if n := b.sender.count("u1"); n != 0 {
			t.Fatalf("u1 got %d pushes although the phase start was never recorded", n)
		}

		b.exec(`ALTER TABLE execution_phases_away RENAME TO execution_phases`)
		b.clock.Set(send.Add(time.Hour)) // past River's retry backoff
		ex = b.waitStatus(ex.ID, pb.StatusCompleted)
		if n := b.sender.count("u1"); n != 1 {
			t.Errorf("u1 got %d pushes, want 1", n)
		}
		if live := ex.PhaseRecord(pb.PhaseLiveSend); live.Attempt != 1 {
			t.Errorf("live send attempt = %d; the failed try never started, so the recorded one is the first", live.Attempt)
		}
	})
}

package engine

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/store"
)

func lockTestEngine(t *testing.T, policy pb.OverlapPolicy) (*Engine, *testdb.DB, *fakeclock.Clock, *pb.Automation) {
	t.Helper()
	db := testdb.NewPostgres(t)
	clock := fakeclock.New(time.Date(2026, 6, 1, 6, 0, 0, 0, time.UTC))
	e, err := New(db.Store, riverpgxv5.New(db.Pool), Config{Clock: clock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	a, err := e.CreateAutomation(context.Background(), &pb.Automation{
		Name: "x", Schedule: pb.Schedule{Cron: "*/10 * * * *", Timezone: "UTC"}, OverlapPolicy: policy,
		LeadTime: pb.DurationOf(time.Minute),
		Audience: pb.Audience{Type: pb.AudienceStatic, Recipients: []pb.Recipient{{UserID: "u1", Token: "t1"}}},
		Message:  pb.Message{Title: "hi"}, Delivery: pb.Delivery{Provider: "log"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return e, db, clock, a
}

// waitForLockWaiter waits until some other backend of the test database
// waits for a lock: the other transaction has come to the row we hold.
func waitForLockWaiter(t *testing.T, db *testdb.DB) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		err := db.Pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`).Scan(&n)
		if err == nil && n > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Log("no lock waiter appeared; the other transaction did not block")
}

// endTx is a live send's end transaction that pauses, holding the
// execution row, until another transaction queues up behind it.
func endTx(e *Engine, db *testdb.DB, id int64, holding chan<- struct{}, t *testing.T) error {
	ctx := context.Background()
	return db.Store.InTx(ctx, func(tx *store.Tx) error {
		cur, err := tx.GetExecutionRow(ctx, id, true)
		if err != nil {
			return err
		}
		close(holding)
		waitForLockWaiter(t, db)
		if err := tx.SetMetrics(ctx, id, map[string]int64{pb.MetricSent: 1}); err != nil {
			return err
		}
		if err := tx.EndPhase(ctx, id, pb.PhaseLiveSend, store.PhaseEnd{Status: pb.PhaseCompleted, Now: e.now()}); err != nil {
			return err
		}
		return e.finish(ctx, tx, cur, pb.StatusCompleted, nil, "")
	})
}

// TestNoDeadlockPhaseEndVersusAutomationLock: a phase end (which updates
// its execution twice, so PostgreSQL re-checks the foreign key to the
// automation) and a transaction holding the automation row (a forced delete,
// a cancel_previous fire) used to deadlock. With FOR NO KEY UPDATE they
// queue instead.
func TestNoDeadlockPhaseEndVersusAutomationLock(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		policy pb.OverlapPolicy
		other  func(e *Engine, clock *fakeclock.Clock, a *pb.Automation) error
	}{
		{"forced delete", pb.OverlapSkip, func(e *Engine, _ *fakeclock.Clock, a *pb.Automation) error {
			return e.DeleteAutomation(context.Background(), a.ID, true)
		}},
		{"cancel_previous fire", pb.OverlapCancelPrevious, func(e *Engine, clock *fakeclock.Clock, a *pb.Automation) error {
			res, err := e.Tick(context.Background())
			if err == nil && res.Failed > 0 {
				err = pb.Errorf(pb.KindInternal, "tick failed to fire: %+v", res)
			}
			return err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e, db, clock, a := lockTestEngine(t, c.policy)
			ex, err := e.RunAutomation(context.Background(), a.ID, pb.RunParams{})
			if err != nil {
				t.Fatal(err)
			}
			clock.Set(time.Date(2026, 6, 1, 6, 9, 0, 0, time.UTC)) // the 06:10 fire is due
			holding := make(chan struct{})
			var (
				wg               sync.WaitGroup
				endErr, otherErr error
			)
			wg.Add(2)
			go func() { defer wg.Done(); endErr = endTx(e, db, ex.ID, holding, t) }()
			go func() { defer wg.Done(); <-holding; otherErr = c.other(e, clock, a) }()
			wg.Wait()
			for _, err := range []error{endErr, otherErr} {
				if err != nil {
					t.Errorf("%v", err)
					if strings.Contains(err.Error(), "deadlock") {
						t.Fatal("deadlock detected")
					}
				}
			}
			got, _ := db.Store.GetExecution(context.Background(), ex.ID, false)
			if got.Status != pb.StatusCompleted || got.Metrics[pb.MetricSent] != 1 {
				t.Errorf("the finished execution: %s %v", got.Status, got.Metrics)
			}
		})
	}
}

// TestGiveUpFailsTheExecution: when River discards a phase job after its
// last attempt, the execution fails with the reason instead of looking
// "running" forever.
func TestGiveUpFailsTheExecution(t *testing.T) {
	t.Parallel()
	e, db, _, a := lockTestEngine(t, pb.OverlapSkip)
	ex, err := e.RunAutomation(context.Background(), a.ID, pb.RunParams{})
	if err != nil {
		t.Fatal(err)
	}
	args, _ := json.Marshal(phaseArgs{ExecutionID: ex.ID, Phase: pb.PhaseAudience})
	job := &rivertype.JobRow{ID: ex.JobID, Kind: phaseArgs{}.Kind(), EncodedArgs: args, Attempt: 24, MaxAttempts: 25}
	e.giveUp(context.Background(), job, "failed 24 times: database unreachable")
	if got, _ := db.Store.GetExecution(context.Background(), ex.ID, false); got.Status.Final() {
		t.Fatalf("gave up before the last attempt: %s", got.Status)
	}
	job.Attempt = 25
	e.giveUp(context.Background(), job, "failed 25 times: database unreachable")
	got, err := db.Store.GetExecution(context.Background(), ex.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != pb.StatusFailed || got.PhaseRecord(pb.PhaseAudience).Status != pb.PhaseFailed ||
		got.Error == nil || !strings.Contains(got.Error.Message, "database unreachable") {
		t.Fatalf("after giving up: %s %+v", got.Status, got.Error)
	}
}

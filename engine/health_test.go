package engine_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	pb "github.com/pushblaster/pushblaster"

	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/postgres"
	"github.com/pushblaster/pushblaster/store"
)

// health returns the engine's report.
func (b *bundle) health(eng *engine.Engine) *pb.Health {
	b.t.Helper()
	return eng.Health(context.Background())
}

// waitHealth waits until the report satisfies cond and returns it.
func (b *bundle) waitHealth(eng *engine.Engine, what string, cond func(h *pb.Health) bool) *pb.Health {
	b.t.Helper()
	var h *pb.Health
	waitFor(b.t, what, func() (bool, string) {
		h = b.health(eng)
		return cond(h), fmt.Sprintf("%s %v", h.Status, h.Reasons)
	})
	return h
}

func hasProblem(h *pb.Health, code string) bool { return engine.HasCode(h.Problems, code) }

func healthy(h *pb.Health) bool { return h.Status == pb.HealthHealthy && h.LastRestoration != nil }

// TestHealthReportsEachProblem walks one engine through every degraded
// reason it can reproduce with a real database, and back to healthy; then
// stops it (critical).
func TestHealthReportsEachProblem(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		ctx := context.Background()

		// Start: healthy, with the start-up recovery and the instance.
		h := b.waitHealth(b.eng, "healthy after start", healthy)
		if h.InstanceID != b.eng.InstanceID() || !h.Engine.Running || h.Engine.LastTickAt == nil || !h.Database.Reachable ||
			h.Database.Dialect != dialect || *h.ScheduledAutomations != 0 || *h.ActiveExecutions != 0 {
			t.Fatalf("first report: %+v", h)
		}
		if r := h.LastRestoration; !r.Success || r.Restored != 0 || r.Missed != 0 || r.At.IsZero() {
			t.Errorf("restoration = %+v", r)
		}
		if len(h.Instances) != 1 || !h.Instances[0].Self || h.Instances[0].ID != h.InstanceID {
			t.Errorf("instances = %+v", h.Instances)
		}
		if _, ok := h.Jobs["running"]; !ok || h.Jobs["stuck"] != 0 || h.Jobs["late"] != 0 {
			t.Errorf("jobs = %v", h.Jobs)
		}
		if len(h.Reasons) != 0 || len(h.Problems) != 0 {
			t.Errorf("healthy with reasons %v", h.Reasons)
		}

		// 1. An execution past its expected phase time: a live send that
		//    makes no progress (its provider hangs).
		a := b.create(automation("overdue"))
		send := berlin(2026, 6, 1, 9, 30)
		b.clock.Set(send.Add(-30 * time.Minute))
		ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
		// (The clock jumped two hours: jobs due meanwhile look late until
		// a worker takes them.)
		h = b.waitHealth(b.eng, "healthy during the window", healthy)
		if *h.ScheduledAutomations != 1 || *h.ActiveExecutions != 1 {
			t.Fatalf("during the window: scheduled %v active %v", *h.ScheduledAutomations, *h.ActiveExecutions)
		}
		entered, release := b.sender.hold()
		b.clock.Set(send)
		<-entered
		b.clock.Set(send.Add(13 * time.Minute))
		h = b.waitHealth(b.eng, "overdue", func(h *pb.Health) bool { return hasProblem(h, pb.ProblemExecutionOverdue) })
		if h.Status != pb.HealthDegraded || len(h.Overdue) != 1 || h.Overdue[0].ExecutionID != ex.ID || h.Overdue[0].Phase != pb.PhaseLiveSend ||
			!strings.Contains(h.Overdue[0].Message, "no progress") {
			t.Fatalf("overdue report: %s %+v", h.Status, h.Overdue)
		}
		release()
		b.waitStatus(ex.ID, pb.StatusCompleted)
		b.waitHealth(b.eng, "healthy after the send", healthy)

		// 2. Stuck jobs: a running job whose instance is gone (it was
		//    killed and nobody took its jobs over).
		ghost := "ghost-instance"
		// (In a queue no worker serves, so that River leaves it alone.)
		stuck := `INSERT INTO river_job (args, kind, max_attempts, state, attempt, attempted_at, attempted_by, queue, scheduled_at)
			VALUES ('{"execution_id": 999}', 'pushblaster.phase', 3, 'running', 1, $1, ARRAY[$2::text], 'unserved', $1)`
		if dialect == "sqlite" {
			stuck = `INSERT INTO river_job (args, kind, max_attempts, state, attempt, attempted_at, attempted_by, queue, scheduled_at)
				VALUES (jsonb('{"execution_id": 999}'), 'pushblaster.phase', 3, 'running', 1, $1, jsonb_array($2), 'unserved', $1)`
		}
		if n, err := b.store.Conn().Exec(ctx, stuck, store.Canon(b.clock.Now()), ghost); err != nil || n != 1 {
			t.Fatalf("make a stuck job: %d %v", n, err)
		}
		h = b.waitHealth(b.eng, "stuck job", func(h *pb.Health) bool { return hasProblem(h, pb.ProblemJobsStuck) })
		if h.Status != pb.HealthDegraded || h.Jobs["stuck"] != 1 || len(h.StuckJobs) != 1 || h.StuckJobs[0].AttemptedBy != ghost || h.StuckJobs[0].ExecutionID != 999 ||
			!strings.Contains(h.StuckJobs[0].Why, "not alive") {
			t.Fatalf("stuck report: %s jobs %v stuck %+v", h.Status, h.Jobs, h.StuckJobs)
		}
		if _, err := b.store.Conn().Exec(ctx, `DELETE FROM river_job WHERE state = 'running'`); err != nil {
			t.Fatal(err)
		}

		// 3. An error rate above the threshold (10 in 5 minutes): the
		//    errors are stored, listed newest first and pageable.
		var ids []int64
		for i := range 11 {
			ev := &pb.Event{At: b.clock.Now(), AutomationID: a.ID, ExecutionID: ex.ID, Phase: pb.PhaseLiveSend, Type: pb.EventError,
				Message: fmt.Sprintf("provider failure %d", i), Data: map[string]string{"kind": string(pb.KindExternal)}}
			if err := b.store.InsertEvent(ctx, ev); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, ev.ID)
		}
		h = b.waitHealth(b.eng, "error rate", func(h *pb.Health) bool { return hasProblem(h, pb.ProblemErrorRate) })
		if h.Status != pb.HealthDegraded || h.ErrorRate.Count < 11 || h.ErrorRate.Threshold != 10 || len(h.RecentErrors) != 10 {
			t.Fatalf("error rate report: %s %+v, %d recent", h.Status, h.ErrorRate, len(h.RecentErrors))
		}
		if e := h.RecentErrors[0]; e.ID != ids[10] || e.Kind != pb.KindExternal || e.ExecutionID != ex.ID || e.AutomationID != a.ID ||
			e.Phase != pb.PhaseLiveSend || e.Message != "provider failure 10" || !e.Stored {
			t.Errorf("newest error = %+v", e)
		}
		page1, err := b.eng.ListErrors(ctx, pb.ErrorFilter{Limit: 4})
		if err != nil || len(page1) != 4 || page1[0].ID != ids[10] || page1[3].ID != ids[7] {
			t.Fatalf("page 1: %v %+v", err, page1)
		}
		page2, err := b.eng.ListErrors(ctx, pb.ErrorFilter{Limit: 4, BeforeID: page1[3].ID})
		if err != nil || len(page2) != 4 || page2[0].ID != ids[6] {
			t.Fatalf("page 2: %v %+v", err, page2)
		}
		if byKind, err := b.eng.ListErrors(ctx, pb.ErrorFilter{Kind: pb.KindScript}); err != nil || len(byKind) != 0 {
			t.Errorf("script errors: %v %+v", err, byKind)
		}
		if byKind, err := b.eng.ListErrors(ctx, pb.ErrorFilter{Kind: pb.KindExternal, ExecutionID: &ex.ID, Limit: 1000}); err != nil || len(byKind) < 11 {
			t.Errorf("external errors of the execution: %v %d", err, len(byKind))
		}
		// Out of the window, the rate is healthy again; the errors stay.
		b.clock.Set(b.clock.Now().Add(6 * time.Minute))
		b.waitHealth(b.eng, "healthy once the errors are old", healthy)

		// 4. A stopped engine is critical.
		stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := b.eng.Stop(stopCtx); err != nil {
			t.Fatal(err)
		}
		h = b.health(b.eng)
		if h.Status != pb.HealthCritical || !hasProblem(h, pb.ProblemEngineStopped) || h.Engine.Running {
			t.Fatalf("after stop: %s %v", h.Status, h.Reasons)
		}
	})
}

// proxiedSetup starts an engine on PostgreSQL reached through a proxy the
// test can cut, beating every heartbeat; b.store reads directly.
func proxiedSetup(t *testing.T, heartbeat time.Duration) (*bundle, *testdb.Proxy) {
	t.Helper()
	db := testdb.NewPostgres(t)
	proxy := testdb.NewProxy(t)
	pool := proxy.Open(t, db.Schema)
	st := store.New(postgres.NewConn(pool))
	b := &bundle{t: t, db: db, store: db.Store, clock: fakeclock.New(t0), sender: newRecordingSender(),
		pools: map[*store.Store]*pgxpool.Pool{st: pool}}
	b.eng = b.newEngine(t, st, func(c *engine.Config) {
		c.HeartbeatInterval, c.LostAfter = heartbeat, time.Second
		c.PoolStats = func() pb.PoolStats { s, _ := postgres.Stats(st.Conn()); return s }
	})
	b.start(b.eng)
	return b, proxy
}

// TestHealthDatabaseGoesAway: the database disappears mid-run (every
// connection reset, new ones refused) while a fire comes due. The health
// turns critical and says why, the engine keeps running, and when the
// database returns the health recovers, the outage is recorded as an
// error, and the fire that came due meanwhile runs to completion, each
// push sent once.
func TestHealthDatabaseGoesAway(t *testing.T) {
	t.Parallel()
	b, proxy := proxiedSetup(t, 100*time.Millisecond)
	b.waitHealth(b.eng, "healthy after start", healthy)
	a := b.create(automation("through-an-outage"))

	proxy.Cut()
	h := b.waitHealth(b.eng, "critical", func(h *pb.Health) bool { return h.Status == pb.HealthCritical })
	if !hasProblem(h, pb.ProblemDatabaseUnreachable) || h.Database.Reachable || h.Database.Error == "" || !h.Engine.Running {
		t.Fatalf("outage report: %s %v %+v", h.Status, h.Reasons, h.Database)
	}
	// A health check whose caller went away learns nothing and changes
	// nothing.
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.eng.Health(cctx)
	// Errors during the outage are held, listed, and not lost.
	for i := range 15 {
		b.eng.RecordEvent(context.Background(), &pb.Event{AutomationID: a.ID, Type: pb.EventError,
			Message: fmt.Sprintf("during the outage %d", i), Data: map[string]string{"kind": string(pb.KindExternal)}})
	}
	h = b.health(b.eng)
	if len(h.RecentErrors) != 10 || h.RecentErrors[0].Stored || h.RecentErrors[0].Message != "during the outage 14" || !hasProblem(h, pb.ProblemErrorsUnrecorded) {
		t.Fatalf("held errors in the report: %d %+v %v", len(h.RecentErrors), h.RecentErrors, h.Reasons)
	}
	if held, err := b.eng.ListErrors(context.Background(), pb.ErrorFilter{AutomationID: &a.ID}); err != nil || len(held) != 15 {
		t.Fatalf("errors listed during the outage: %v %d", err, len(held))
	}
	// The fire comes due during the outage; the scheduler tries and fails.
	send := berlin(2026, 6, 1, 9, 30)
	b.clock.Set(send.Add(-30 * time.Minute))
	h = b.waitHealth(b.eng, "a failed scheduler pass and a failed heartbeat", func(h *pb.Health) bool {
		return h.Engine.LastTickError != "" && h.Database.UnreachableSince != nil
	})
	if !strings.Contains(strings.Join(h.Reasons, " "), "since") {
		t.Errorf("reasons do not say since when: %v", h.Reasons)
	}

	proxy.Restore()
	h = b.waitHealth(b.eng, "healthy again, the scheduler passing", func(h *pb.Health) bool {
		return healthy(h) && h.Engine.LastTickError == ""
	})
	if h.Database.UnreachableSince != nil || !h.Database.Reachable {
		t.Errorf("after recovery: %+v", h.Database)
	}
	// The outage is a stored error, and so is every error held meanwhile,
	// once each.
	waitFor(t, "the held errors stored", func() (bool, string) {
		errs, err := b.eng.ListErrors(context.Background(), pb.ErrorFilter{AutomationID: &a.ID, Limit: 100})
		stored := 0
		for _, e := range errs {
			if e.Stored && strings.HasPrefix(e.Message, "during the outage") {
				stored++
			}
		}
		return err == nil && stored == 15 && len(errs) == 15, fmt.Sprintf("%v: %d stored of %d", err, stored, len(errs))
	})
	// The outage is a stored error.
	waitFor(t, "the outage recorded", func() (bool, string) {
		errs, err := b.eng.ListErrors(context.Background(), pb.ErrorFilter{Kind: pb.KindDatabase})
		for _, e := range errs {
			if e.Stored && strings.Contains(e.Message, "database unreachable from") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%v %+v", err, errs)
	})
	// Nothing was lost: the fire due during the outage runs.
	ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
	b.clock.Set(send)
	ex = b.waitStatus(ex.ID, pb.StatusCompleted)
	for _, u := range []string{"u1", "u2", "u3"} {
		if n := b.sender.count(u); n != 1 {
			t.Errorf("%s got %d pushes, want 1", u, n)
		}
	}
	if d := b.sender.duplicates(); len(d) > 0 {
		t.Errorf("duplicates: %v", d)
	}
}

// TestHealthPoolExhausted: with every connection of the pool held, the
// health is degraded (pool_waiting, with the numbers), not critical, and
// it answers; once connections are free it is healthy again.
func TestHealthPoolExhausted(t *testing.T) {
	t.Parallel()
	db := testdb.NewPostgres(t)
	ctx := context.Background()
	pool := testdb.OpenPool(t, postgres.Config{URL: testdb.URL() + "&search_path=" + db.Schema, MaxConns: 4, ConnectTimeout: 300 * time.Millisecond})
	st := store.New(postgres.NewConn(pool))
	b := &bundle{t: t, db: db, store: db.Store, clock: fakeclock.New(t0), sender: newRecordingSender(),
		pools: map[*store.Store]*pgxpool.Pool{st: pool}}
	b.eng = b.newEngine(t, st, func(c *engine.Config) {
		c.PoolStats = func() pb.PoolStats { s, _ := postgres.Stats(st.Conn()); return s }
	})
	b.start(b.eng)
	b.waitHealth(b.eng, "healthy after start", healthy)

	var held []*pgxpool.Conn
	for range 4 {
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	h := b.health(b.eng)
	if h.Status != pb.HealthDegraded || !hasProblem(h, pb.ProblemPoolWaiting) || h.DBPool.InUse != 4 || h.DBPool.Max != 4 ||
		!strings.Contains(strings.Join(h.Reasons, " "), "4/4") {
		t.Fatalf("pool held: %s %v %+v", h.Status, h.Reasons, h.DBPool)
	}
	for _, c := range held {
		c.Release()
	}
	b.waitHealth(b.eng, "healthy once connections are free", healthy)
}

// TestHeldErrorsDoNotStopHeartbeats: errors held during an outage are
// stored after it by a goroutine of their own; while their inserts block
// (a lock on the events table), the instance keeps beating, so the others
// never take it for dead. When the lock goes, they are stored.
func TestHeldErrorsDoNotStopHeartbeats(t *testing.T) {
	t.Parallel()
	b, proxy := proxiedSetup(t, 50*time.Millisecond)
	db := b.db
	b.waitHealth(b.eng, "healthy after start", healthy)

	proxy.Cut()
	b.eng.RecordEvent(context.Background(), &pb.Event{Type: pb.EventError, Message: "held", Data: map[string]string{"kind": "external"}})
	b.waitHealth(b.eng, "the error held", func(h *pb.Health) bool { return hasProblem(h, pb.ProblemErrorsUnrecorded) })

	// Inserts into events block behind this lock (on the direct pool).
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `LOCK TABLE events IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	proxy.Restore()
	beats := func() int64 {
		ins, err := b.store.LiveInstances(ctx)
		if err != nil || len(ins) != 1 {
			t.Fatalf("instances: %v %+v", err, ins)
		}
		return ins[0].Beats
	}
	first := beats()
	waitFor(t, "ten more heartbeats while the held error's insert blocks", func() (bool, string) {
		n := beats()
		return n >= first+10, fmt.Sprintf("%d beats", n)
	})
	if h := b.health(b.eng); !hasProblem(h, pb.ProblemErrorsUnrecorded) {
		t.Fatalf("the held error is gone while its insert is blocked: %v", h.Reasons)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the held error stored", func() (bool, string) {
		errs, err := b.eng.ListErrors(ctx, pb.ErrorFilter{Kind: pb.KindExternal})
		return err == nil && len(errs) == 1 && errs[0].Stored && errs[0].Message == "held", fmt.Sprintf("%v %+v", err, errs)
	})
}

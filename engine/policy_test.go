package engine_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
)

// every10 fires every ten minutes with no lead time: the audience phase
// starts at the send time.
func every10(name string, policy pb.OverlapPolicy) *pb.Automation {
	a := automation(name)
	a.Schedule = pb.Schedule{Cron: "*/10 * * * *", Timezone: "UTC"}
	a.LeadTime = pb.DurationOf(0)
	a.OverlapPolicy = policy
	return a
}

var ten = time.Date(2026, 6, 1, 10, 0, 0, 0, time.UTC)

// startBlocked fires the 10:00 execution of a and holds it in its test send.
func (b *bundle) startBlocked(a *pb.Automation) (*pb.Execution, func()) {
	b.t.Helper()
	entered, release := b.sender.hold()
	b.t.Cleanup(release)
	b.clock.Set(ten)
	list := b.waitExecutions(a.ID, 1)
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		b.t.Fatalf("test send never started: %s", describe(b.execution(list[0].ID)))
	}
	return list[0], release
}

func TestOverlapSkip(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		b.clock.Set(ten.Add(-time.Minute))
		a := b.create(every10("skip", pb.OverlapSkip))
		ex1, release := b.startBlocked(a)

		b.clock.Set(ten.Add(10 * time.Minute))
		list := b.waitExecutions(a.ID, 2)
		ex2 := list[0]
		if ex2.Status != pb.StatusSkipped || !strings.Contains(ex2.Reason, fmt.Sprintf("execution %d", ex1.ID)) ||
			!strings.Contains(ex2.Reason, "overlap_policy skip") || ex2.FinishedAt == nil {
			t.Fatalf("second fire: %s", describe(ex2))
		}
		// A manual run is refused rather than recorded as skipped.
		_, err := b.eng.RunAutomation(t.Context(), a.ID, pb.RunParams{})
		if pb.ErrorKind(err) != pb.KindConflict {
			t.Fatalf("manual run during execution: %v, want conflict", err)
		}

		release()
		b.waitStatus(ex1.ID, pb.StatusCompleted)
		if got := b.sender.count("u1"); got != 1 {
			t.Errorf("u1 got %d pushes, want 1 (the skipped fire sends nothing)", got)
		}
		// The next fire runs normally.
		b.clock.Set(ten.Add(20 * time.Minute))
		list = b.waitExecutions(a.ID, 3)
		b.waitStatus(list[0].ID, pb.StatusCompleted)
	})
}

func TestOverlapQueue(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		b.clock.Set(ten.Add(-time.Minute))
		a := b.create(every10("queue", pb.OverlapQueue))
		ex1, release := b.startBlocked(a)

		b.clock.Set(ten.Add(10 * time.Minute))
		ex2 := b.waitExecutions(a.ID, 2)[0]
		if ex2.Status != pb.StatusScheduled || ex2.WaitingFor != ex1.ID || !strings.Contains(ex2.Reason, "queued") {
			t.Fatalf("second fire: %s waiting_for=%d", describe(ex2), ex2.WaitingFor)
		}
		b.clock.Set(ten.Add(20 * time.Minute))
		ex3 := b.waitExecutions(a.ID, 3)[0]
		if ex3.Status != pb.StatusSkipped || !strings.Contains(ex3.Reason, "queue full") {
			t.Fatalf("third fire: %s", describe(ex3))
		}
		if ex := b.execution(ex2.ID); ex.Status != pb.StatusScheduled || ex.PhaseRecord(pb.PhaseAudience).Status != pb.PhasePending {
			t.Fatalf("queued execution started early: %s", describe(ex))
		}

		release()
		b.waitStatus(ex1.ID, pb.StatusCompleted)
		ex2 = b.waitStatus(ex2.ID, pb.StatusCompleted)
		if ex2.WaitingFor != 0 || !strings.Contains(ex2.Reason, fmt.Sprintf("execution %d ended", ex1.ID)) {
			t.Errorf("dequeued: %s", describe(ex2))
		}
		if !ex2.SendAt.Equal(ten.Add(10 * time.Minute)) {
			t.Errorf("queued execution keeps its send time: %v", ex2.SendAt)
		}
		if got := b.sender.count("u1"); got != 2 {
			t.Errorf("u1 got %d pushes, want 2 (first and queued)", got)
		}
	})
}

func TestOverlapCancelPrevious(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		b.clock.Set(ten.Add(-time.Minute))
		a := b.create(every10("cancel", pb.OverlapCancelPrevious))
		ex1, release := b.startBlocked(a)

		b.clock.Set(ten.Add(10 * time.Minute))
		list := b.waitExecutions(a.ID, 2)
		ex2 := list[0]
		got1 := b.waitPhase(ex1.ID, pb.PhaseTestSend, pb.PhaseCancelled)
		if got1.Status != pb.StatusCancelled || !strings.Contains(got1.Reason, fmt.Sprintf("superseded by execution %d", ex2.ID)) {
			t.Fatalf("previous: %s", describe(got1))
		}
		b.waitPhase(ex1.ID, pb.PhaseCleanup, pb.PhaseCompleted)
		release()
		ex2 = b.waitStatus(ex2.ID, pb.StatusCompleted)
		if ex2.Metrics[pb.MetricSent] != 3 {
			t.Errorf("new execution sent %d", ex2.Metrics[pb.MetricSent])
		}
		got1 = b.execution(ex1.ID)
		if got1.Metrics[pb.MetricSent] != 0 || got1.PhaseRecord(pb.PhaseLiveSend).Status != pb.PhasePending {
			t.Errorf("cancelled execution sent live: %s metrics %v", describe(got1), got1.Metrics)
		}
		if got := b.sender.count("u1"); got != 1 {
			t.Errorf("u1 got %d pushes, want 1", got)
		}
	})
}

func TestMissedFires(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		// Nothing ticks while the engine is down.
		if err := b.eng.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		a := b.create(automation("daily")) // 09:30 Berlin, lead 30m, catch-up 10m
		day1 := berlin(2026, 6, 1, 9, 30)

		// Back at 09:05 on day 1: 5 minutes late, within the window: runs
		// once, as a catch-up.
		b.clock.Set(day1.Add(-25 * time.Minute))
		b.start(b.newEngine(t, b.store))
		ex := b.waitExecutions(a.ID, 1)[0]
		if ex.Trigger != pb.TriggerCatchup || ex.Status == pb.StatusMissed || !ex.SendAt.Equal(day1) {
			t.Fatalf("late fire: %s trigger=%s", describe(ex), ex.Trigger)
		}
		b.clock.Set(day1)
		b.waitStatus(ex.ID, pb.StatusCompleted)
	})
}

func TestMissedFiresBeyondWindow(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		if err := b.eng.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		a := b.create(automation("daily"))
		day1 := berlin(2026, 6, 1, 9, 30)

		// Down for three days: back at 12:00 on day 3. Days 1-3 are missed
		// (each more than 10 minutes late); day 4 is next.
		b.clock.Set(day1.AddDate(0, 0, 2).Add(150 * time.Minute))
		eng := b.newEngine(t, b.store)
		if res, err := eng.Tick(t.Context()); err != nil || res.Missed != 3 || res.Fired != 0 {
			t.Fatalf("tick after outage: %+v %v; want 3 missed", res, err)
		}
		list := b.executions(a.ID)
		if len(list) != 3 {
			t.Fatalf("%d executions, want 3 missed", len(list))
		}
		for i, ex := range list {
			want := day1.AddDate(0, 0, 2-i)
			if ex.Status != pb.StatusMissed || !ex.SendAt.Equal(want) || !strings.Contains(ex.Reason, "catch-up window of 10m") {
				t.Errorf("execution %d: %s send %v, want missed at %v", i, describe(ex), ex.SendAt, want)
			}
		}
		got, _ := b.eng.GetAutomation(t.Context(), a.ID)
		if !got.NextSendAt.Equal(day1.AddDate(0, 0, 3)) {
			t.Errorf("next send = %v, want day 4", got.NextSendAt)
		}
		if b.sender.total() != 0 {
			t.Errorf("missed fires sent %d pushes", b.sender.total())
		}
	})
}

// TestMissedFiresNoFlood: after a long outage an every-minute automation
// runs once (the latest fire, within the catch-up window), records the
// newest misses one by one and sums up the rest.
func TestMissedFiresNoFlood(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect, func(c *engine.Config) { c.MaxMissedRecords = 5 })
		if err := b.eng.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		b.clock.Set(ten.Add(-30 * time.Second))
		a := every10("minutely", pb.OverlapSkip)
		a.Schedule.Cron = "* * * * *"
		a = b.create(a)
		// Down from 10:00 to 13:00: 181 fires are due (10:00 … 13:00).
		b.clock.Set(ten.Add(3 * time.Hour))
		eng := b.newEngine(t, b.store, func(c *engine.Config) { c.MaxMissedRecords = 5 })
		res, err := eng.Tick(t.Context())
		if err != nil || res.Fired != 1 || res.Missed != 5 {
			t.Fatalf("tick: %+v %v; want 1 fired and 5 missed records", res, err)
		}
		list := b.executions(a.ID)
		if len(list) != 6 {
			t.Fatalf("%d executions, want 6", len(list))
		}
		oldest := list[len(list)-1]
		if !strings.Contains(oldest.Reason, "175 earlier fires since 2026-06-01T10:00:00Z") {
			t.Errorf("summary reason = %q", oldest.Reason)
		}
		if list[0].Status != pb.StatusScheduled || !list[0].SendAt.Equal(ten.Add(3*time.Hour)) {
			t.Errorf("latest fire: %s", describe(list[0]))
		}
	})
}

// TestUpcomingRunIsNotAnOverlap: a manual run scheduled for later does not
// make today's fire "overlap" (it has not started), so the fire runs.
func TestUpcomingRunIsNotAnOverlap(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := b.create(automation("daily"))
		later := berlin(2026, 6, 2, 15, 0)
		manual, err := b.eng.RunAutomation(t.Context(), a.ID, pb.RunParams{SendAt: &later})
		if err != nil {
			t.Fatal(err)
		}
		b.clock.Set(berlin(2026, 6, 1, 9, 0))
		list := b.waitExecutions(a.ID, 2)
		fire := list[0]
		if fire.ID == manual.ID || fire.Status == pb.StatusSkipped {
			t.Fatalf("today's fire: %s", describe(fire))
		}
		b.clock.Set(berlin(2026, 6, 1, 9, 30))
		b.waitStatus(fire.ID, pb.StatusCompleted)
		if ex := b.execution(manual.ID); ex.Status != pb.StatusScheduled {
			t.Errorf("upcoming manual run: %s", describe(ex))
		}
	})
}

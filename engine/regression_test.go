package engine_test

import (
	"context"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
	"github.com/pushblaster/pushblaster/internal/testdb"
)

// unstarted is a bundle whose engine does not run: the test ticks it, as a
// tick that has not come yet or an engine that was down.
func unstarted(t *testing.T, dialect string, opts ...option) *bundle {
	db := testdb.New(t, dialect)
	b := &bundle{t: t, db: db, store: db.Store, clock: fakeclock.New(t0), sender: newRecordingSender()}
	b.eng = b.newEngine(t, db.Store, opts...)
	return b
}

// TestEditLongerLeadKeepsTodaysSend: lengthening the lead time at 08:45
// for a 09:30 send keeps today's send; its audience starts at once.
func TestEditLongerLeadKeepsTodaysSend(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := unstarted(t, dialect)
		a := b.create(automation("lead"))
		b.clock.Set(berlin(2026, 6, 1, 8, 45))
		edit := automation("lead")
		edit.LeadTime = pb.DurationOf(time.Hour)
		up, err := b.eng.UpdateAutomation(t.Context(), a.ID, edit)
		if err != nil {
			t.Fatal(err)
		}
		send := berlin(2026, 6, 1, 9, 30)
		if !up.NextSendAt.Equal(send) || !up.NextFireAt.Equal(berlin(2026, 6, 1, 8, 45)) {
			t.Fatalf("after the edit: next send %v, next fire %v; want today 09:30, firing now", up.NextSendAt, up.NextFireAt)
		}
		b.clock.Set(berlin(2026, 6, 1, 8, 45).Add(time.Second))
		res, err := b.eng.Tick(t.Context())
		if err != nil || res.Fired != 1 {
			t.Fatalf("tick: %+v %v; want today's fire", res, err)
		}
		ex := b.executions(a.ID)[0]
		if !ex.SendAt.Equal(send) || ex.AutomationVersion != 2 || ex.Trigger != pb.TriggerSchedule {
			t.Errorf("execution: %s send %v version %d trigger %s", describe(ex), ex.SendAt, ex.AutomationVersion, ex.Trigger)
		}
	})
}

// TestEditWhileDueFiresFirst: a fire that became due just before an edit
// (the tick has not taken it yet) fires, with the version it was due under.
func TestEditWhileDueFiresFirst(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := unstarted(t, dialect)
		a := b.create(automation("due"))
		b.clock.Set(berlin(2026, 6, 1, 9, 0).Add(400 * time.Millisecond))
		edit := automation("due")
		edit.Message.Title = "fixed typo"
		edit.Schedule.Cron = "0 18 * * *"
		up, err := b.eng.UpdateAutomation(t.Context(), a.ID, edit)
		if err != nil {
			t.Fatal(err)
		}
		list := b.executions(a.ID)
		if len(list) != 1 || !list[0].SendAt.Equal(berlin(2026, 6, 1, 9, 30)) || list[0].AutomationVersion != 1 {
			t.Fatalf("the due fire: %d executions %v", len(list), list)
		}
		if !up.NextSendAt.Equal(berlin(2026, 6, 1, 18, 0)) {
			t.Errorf("next send after the edit = %v, want the new schedule's 18:00", up.NextSendAt)
		}
	})
}

// TestZeroCatchupWindowRuns: a catch-up window of 0 still runs a fire the
// tick reaches a moment late; only real downtime is missed.
func TestZeroCatchupWindowRuns(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := unstarted(t, dialect)
		a := automation("nocatchup")
		a.CatchupWindow = pb.DurationOf(0)
		a = b.create(a)
		b.clock.Set(berlin(2026, 6, 1, 9, 0).Add(300 * time.Millisecond))
		if res, err := b.eng.Tick(t.Context()); err != nil || res.Fired != 1 {
			t.Fatalf("tick 300ms late: %+v %v", res, err)
		}
		b.clock.Set(berlin(2026, 6, 2, 9, 5))
		res, err := b.eng.Tick(t.Context())
		if err != nil || res.Missed != 1 {
			t.Fatalf("tick 5 minutes late: %+v %v; want missed", res, err)
		}
		if r := b.executions(a.ID)[0].Reason; !strings.Contains(r, "5m late") || !strings.Contains(r, "catch-up window of 0s") {
			t.Errorf("missed reason: %q", r)
		}
	})
}

type panicSender struct{}

func (panicSender) Send(context.Context, []pb.Push) []pb.SendResult {
	panic("provider SDK bug")
}

// TestPanickingSenderFailsTheExecution: a panic is a bug; it fails the
// execution with an internal error at once, instead of River retrying it
// for days while the execution looks "running".
func TestPanickingSenderFailsTheExecution(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect, func(c *engine.Config) { c.Senders = map[string]pb.Sender{"record": panicSender{}} })
		a := automation("panics")
		a.TestAudience = nil
		a = b.create(a)
		b.clock.Set(berlin(2026, 6, 1, 9, 0))
		ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
		b.clock.Set(berlin(2026, 6, 1, 9, 30))
		ex = b.waitStatus(ex.ID, pb.StatusFailed)
		b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
		if ex.Error == nil || ex.Error.Kind != pb.KindInternal || ex.Error.Phase != pb.PhaseLiveSend || !strings.Contains(ex.Error.Message, "provider SDK bug") {
			t.Errorf("error = %+v", ex.Error)
		}
		if ex.Metrics[pb.MetricUnknown] != 3 {
			t.Errorf("metrics = %v; the panicking batch's recipients are unknown", ex.Metrics)
		}
	})
}

// TestCancelledInterruptedSendKeepsMetrics: a send interrupted by a stop
// after one batch went out, then force-cancelled: the record still says
// 500 were sent, and the in-flight batch is unknown.
func TestCancelledInterruptedSendKeepsMetrics(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		ex, send := b.stopMidSend("interrupted")
		eng2 := b.newEngine(t, b.store)
		if _, err := eng2.CancelExecution(t.Context(), ex.ID, pb.CancelParams{Force: true, Reason: "stop it"}); err != nil {
			t.Fatal(err)
		}
		b.start(eng2)
		b.clock.Set(send.Add(time.Minute))
		ex = b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
		if ex.Metrics[pb.MetricSent] != 500 || ex.Metrics[pb.MetricUnknown] != 500 || ex.PhaseRecord(pb.PhaseLiveSend).Status != pb.PhaseCancelled {
			t.Errorf("%s metrics %v; want sent 500, unknown 500", describe(ex), ex.Metrics)
		}
	})
}

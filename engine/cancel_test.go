package engine_test

import (
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// TestCancelWhileScheduled: a manual run waiting for its audience time is
// cancelled; nothing ever runs or goes out.
func TestCancelWhileScheduled(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := b.create(automation("manual"))
		send := t0.Add(2 * time.Hour)
		ex, err := b.eng.RunAutomation(t.Context(), a.ID, pb.RunParams{SendAt: &send})
		if err != nil {
			t.Fatal(err)
		}
		if ex.Status != pb.StatusScheduled || !ex.AudienceAt.Equal(send.Add(-30*time.Minute)) || ex.Trigger != pb.TriggerManual {
			t.Fatalf("run: %s audience_at %v", describe(ex), ex.AudienceAt)
		}
		got, err := b.eng.CancelExecution(t.Context(), ex.ID, pb.CancelParams{Reason: "wrong copy"})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != pb.StatusCancelled || got.Reason != "cancelled by operator: wrong copy" || got.Error == nil || got.Error.Kind != pb.KindAbort {
			t.Fatalf("cancelled: %s", describe(got))
		}
		b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
		b.clock.Set(send.Add(time.Minute))
		// Give the engine the chance to misbehave: a later execution of
		// another automation completes, so the engine has worked past send.
		other := automation("other")
		other.Schedule.Cron = "45 10 * * *" // 08:45 UTC: fires at 08:15 UTC, before the clock
		other.LeadTime = pb.DurationOf(0)
		oa := b.create(other)
		b.clock.Set(time.Date(2026, 6, 1, 8, 45, 0, 0, time.UTC))
		b.waitStatus(b.waitExecutions(oa.ID, 1)[0].ID, pb.StatusCompleted)
		ex = b.execution(ex.ID)
		if ex.PhaseRecord(pb.PhaseAudience).Status != pb.PhaseCancelled || ex.Metrics[pb.MetricSent] != 0 {
			t.Errorf("cancelled execution ran: %s", describe(ex))
		}
		if n := b.sender.count("tester"); n != 1 {
			t.Errorf("tester got %d pushes; want 1 (only the other automation's test send)", n)
		}
		// Cancelling twice is a conflict, not a silent success.
		if _, err := b.eng.CancelExecution(t.Context(), ex.ID, pb.CancelParams{}); pb.ErrorKind(err) != pb.KindConflict {
			t.Errorf("second cancel: %v", err)
		}
	})
}

// TestCancelInWindow: cancelling in the cancellation window guarantees that
// no live push goes out, even when the send time comes.
func TestCancelInWindow(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := b.create(automation("daily"))
		send := berlin(2026, 6, 1, 9, 30)
		b.clock.Set(send.Add(-30 * time.Minute))
		ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
		if _, err := b.eng.CancelExecution(t.Context(), ex.ID, pb.CancelParams{}); err != nil {
			t.Fatal(err)
		}
		ex = b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
		if ex.Status != pb.StatusCancelled || ex.PhaseRecord(pb.PhaseWindow).Status != pb.PhaseCancelled {
			t.Fatalf("after cancel: %s", describe(ex))
		}
		b.clock.Set(send.Add(time.Hour))
		// The live send job was cancelled: run the next day's execution to
		// prove the engine kept working, then check nobody got a push.
		b.clock.Set(send.AddDate(0, 0, 1).Add(-30 * time.Minute))
		next := b.waitPhase(b.waitExecutions(a.ID, 2)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
		b.clock.Set(send.AddDate(0, 0, 1))
		b.waitStatus(next.ID, pb.StatusCompleted)
		ex = b.execution(ex.ID)
		if ex.Metrics[pb.MetricSent] != 0 || ex.PhaseRecord(pb.PhaseLiveSend).Status != pb.PhasePending {
			t.Fatalf("live send after cancel: %s %v", describe(ex), ex.Metrics)
		}
		if n := b.sender.count("u1"); n != 1 {
			t.Errorf("u1 got %d pushes, want 1 (only from the next day)", n)
		}
	})
}

// TestCancelAfterDeadline: past the cancellation deadline a plain cancel is
// refused with the reason; force stops it anyway.
func TestCancelAfterDeadline(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := automation("locked")
		a.CancellationDeadline = pb.DurationOf(10 * time.Minute)
		a = b.create(a)
		send := berlin(2026, 6, 1, 9, 30)
		b.clock.Set(send.Add(-30 * time.Minute))
		ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
		b.clock.Set(send.Add(-5 * time.Minute)) // after the deadline (09:20)
		b.waitPhase(ex.ID, pb.PhaseWindow, pb.PhaseCompleted)
		_, err := b.eng.CancelExecution(t.Context(), ex.ID, pb.CancelParams{})
		if pb.ErrorKind(err) != pb.KindConflict || !strings.Contains(err.Error(), "force") {
			t.Fatalf("cancel after deadline: %v; want a conflict naming force", err)
		}
		got, err := b.eng.CancelExecution(t.Context(), ex.ID, pb.CancelParams{Force: true})
		if err != nil || got.Status != pb.StatusCancelled {
			t.Fatalf("forced cancel: %v %v", got, err)
		}
		ex = b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
		if ex.PhaseRecord(pb.PhaseLiveSend).Status != pb.PhaseCancelled {
			t.Errorf("live send phase: %s", describe(ex))
		}
	})
}

// TestCancelDuringSend: a cancel during the live send stops it promptly and
// the ledger shows exactly who got the push.
func TestCancelDuringSend(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := automation("big")
		a.Audience.Recipients = recipients("u", 1200) // three batches
		// Let the first batch through, then hold the second.
		ex, release := b.heldAtSend(a) // batch 1 is waiting
		release()
		entered, release2 := b.sender.hold()
		defer release2()
		<-entered // batch 2 is waiting
		if _, err := b.eng.CancelExecution(t.Context(), ex.ID, pb.CancelParams{Force: true}); err != nil {
			t.Fatal(err)
		}
		ex = b.waitPhase(ex.ID, pb.PhaseLiveSend, pb.PhaseCancelled)
		b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
		if ex.Status != pb.StatusCancelled || ex.Metrics[pb.MetricSent] != 500 {
			t.Fatalf("after cancel: %s %v; want 500 sent (one batch)", describe(ex), ex.Metrics)
		}
		ledger, err := b.store.Deliveries(t.Context(), ex.ID)
		if err != nil {
			t.Fatal(err)
		}
		sent := 0
		for _, d := range ledger {
			if d.Audience == "live" && d.State == "sent" {
				sent++
				if b.sender.count(d.UserID) != 1 {
					t.Errorf("ledger says %s got the push, sender says %d", d.UserID, b.sender.count(d.UserID))
				}
			}
		}
		if sent != 500 || b.sender.total() != 501 { // 500 live + 1 test
			t.Errorf("ledger sent %d, sender delivered %d; want 500 and 501", sent, b.sender.total())
		}
	})
}

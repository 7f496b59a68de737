package engine_test

import (
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// TestTimeline follows one scheduled execution through its five phases on
// the injected clock: nothing live goes out before the send time.
func TestTimeline(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := automation("daily")
		a.CancellationDeadline = pb.DurationOf(10 * time.Minute)
		a = b.create(a)
		send := berlin(2026, 6, 1, 9, 30)
		if a.NextSendAt == nil || !a.NextSendAt.Equal(send) {
			t.Fatalf("next_send_at = %v, want %v", a.NextSendAt, send)
		}

		// 08:59:59: not due yet.
		b.clock.Set(send.Add(-30*time.Minute - time.Second))
		if res, err := b.eng.Tick(t.Context()); err != nil || res.Fired != 0 {
			t.Fatalf("tick before fire time: %+v %v", res, err)
		}

		// 09:00: the audience phase starts; test send; the window opens.
		b.clock.Set(send.Add(-30 * time.Minute))
		list := b.waitExecutions(a.ID, 1)
		ex := b.waitPhase(list[0].ID, pb.PhaseWindow, pb.PhaseRunning)
		if ex.Status != pb.StatusAwaitingSend || ex.Trigger != pb.TriggerSchedule || ex.AutomationVersion != 1 {
			t.Fatalf("after test send: %s", describe(ex))
		}
		if !ex.SendAt.Equal(send) || !ex.AudienceAt.Equal(send.Add(-30*time.Minute)) || !ex.CancelDeadline.Equal(send.Add(-10*time.Minute)) {
			t.Errorf("timeline: send %v audience %v deadline %v", ex.SendAt, ex.AudienceAt, ex.CancelDeadline)
		}
		if ex.Metrics[pb.MetricAudienceSize] != 3 || ex.Metrics[pb.MetricTestSent] != 1 {
			t.Errorf("metrics = %v, want audience_size 3 and test_sent 1", ex.Metrics)
		}
		if b.sender.count("tester") != 1 || b.sender.count("u1") != 0 {
			t.Fatalf("before the send time: tester got %d, u1 got %d; want 1 and 0", b.sender.count("tester"), b.sender.count("u1"))
		}
		for _, p := range []pb.Phase{pb.PhaseAudience, pb.PhaseTestSend} {
			r := ex.PhaseRecord(p)
			if r.Status != pb.PhaseCompleted || r.Instance != b.eng.InstanceID() || r.Attempt != 1 || r.StartedAt == nil || r.FinishedAt == nil {
				t.Errorf("phase %s = %+v", p, r)
			}
		}
		// The next fire is tomorrow.
		got, _ := b.eng.GetAutomation(t.Context(), a.ID)
		if !got.NextSendAt.Equal(send.AddDate(0, 0, 1)) {
			t.Errorf("next_send_at after fire = %v, want %v", got.NextSendAt, send.AddDate(0, 0, 1))
		}

		// 09:20: the window closes; still nothing live.
		b.clock.Set(send.Add(-10 * time.Minute))
		ex = b.waitPhase(ex.ID, pb.PhaseWindow, pb.PhaseCompleted)
		if ex.Status != pb.StatusAwaitingSend || b.sender.count("u1") != 0 {
			t.Fatalf("after the window: %s, u1 got %d", describe(ex), b.sender.count("u1"))
		}

		// 09:30: live send, then cleanup.
		b.clock.Set(send)
		ex = b.waitStatus(ex.ID, pb.StatusCompleted)
		ex = b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
		if ex.Metrics[pb.MetricSent] != 3 || ex.Metrics[pb.MetricFailed] != 0 {
			t.Errorf("metrics = %v, want sent 3", ex.Metrics)
		}
		for _, u := range []string{"u1", "u2", "u3", "tester"} {
			if n := b.sender.count(u); n != 1 {
				t.Errorf("%s received %d pushes, want 1", u, n)
			}
		}
		if ex.FinishedAt == nil || !ex.FinishedAt.Equal(send) {
			t.Errorf("finished_at = %v, want %v", ex.FinishedAt, send)
		}
		ledger, err := b.store.Deliveries(t.Context(), ex.ID)
		if err != nil || len(ledger) != 4 {
			t.Fatalf("ledger = %d rows, %v; want 4", len(ledger), err)
		}
		events, err := b.eng.ListEvents(t.Context(), pb.EventFilter{ExecutionID: &ex.ID})
		if err != nil || len(events) < 10 {
			t.Errorf("events = %d, %v; want every phase start and end", len(events), err)
		}
	})
}

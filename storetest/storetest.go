// Package storetest is the store conformance suite: every behaviour the
// engine relies on, run against PostgreSQL and SQLite alike.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// Run runs the suite. newStore returns a fresh, migrated, empty store.
func Run(t *testing.T, newStore func(t *testing.T) *store.Store) {
	t.Run("AutomationLifecycle", func(t *testing.T) { t.Parallel(); testAutomationLifecycle(t, newStore(t)) })
	t.Run("AutomationNameConflict", func(t *testing.T) { t.Parallel(); testNameConflict(t, newStore(t)) })
	t.Run("DueAutomations", func(t *testing.T) { t.Parallel(); testDue(t, newStore(t)) })
	t.Run("ExecutionUniquePerSendTime", func(t *testing.T) { t.Parallel(); testExecutionUnique(t, newStore(t)) })
	t.Run("ExecutionConcurrentInsert", func(t *testing.T) { t.Parallel(); testConcurrentInsert(t, newStore(t)) })
	t.Run("ExecutionUpdateAndList", func(t *testing.T) { t.Parallel(); testExecutionUpdate(t, newStore(t)) })
	t.Run("PhasesAndMetrics", func(t *testing.T) { t.Parallel(); testPhases(t, newStore(t)) })
	t.Run("Recipients", func(t *testing.T) { t.Parallel(); testRecipients(t, newStore(t)) })
	t.Run("DeliveryLedger", func(t *testing.T) { t.Parallel(); testLedger(t, newStore(t)) })
	t.Run("LedgerPendingAndResend", func(t *testing.T) { t.Parallel(); testLedgerPending(t, newStore(t)) })
	t.Run("InvalidTokens", func(t *testing.T) { t.Parallel(); testInvalidTokens(t, newStore(t)) })
	t.Run("SendBatches", func(t *testing.T) { t.Parallel(); testSendBatches(t, newStore(t)) })
	t.Run("RecentPushesForCaps", func(t *testing.T) { t.Parallel(); testRecentPushes(t, newStore(t)) })
	t.Run("RateWindows", func(t *testing.T) { t.Parallel(); testRateWindows(t, newStore(t)) })
	t.Run("Instances", func(t *testing.T) { t.Parallel(); testInstances(t, newStore(t)) })
	t.Run("Events", func(t *testing.T) { t.Parallel(); testEvents(t, newStore(t)) })
	t.Run("TimesRoundTrip", func(t *testing.T) { t.Parallel(); testTimes(t, newStore(t)) })
	t.Run("TxRollback", func(t *testing.T) { t.Parallel(); testRollback(t, newStore(t)) })
	t.Run("WriteRecipientsInBulk", func(t *testing.T) { t.Parallel(); testWriteRecipients(t, newStore(t)) })
	t.Run("AttachTokens", func(t *testing.T) { t.Parallel(); testAttachTokens(t, newStore(t)) })
	t.Run("LastCompletedAudience", func(t *testing.T) { t.Parallel(); testLastAudience(t, newStore(t)) })
	t.Run("Artifacts", func(t *testing.T) { t.Parallel(); testArtifacts(t, newStore(t)) })
	t.Run("PreviewLists", func(t *testing.T) { t.Parallel(); testPreviewLists(t, newStore(t)) })
}

var t0 = time.Date(2026, 3, 8, 6, 30, 0, 0, time.UTC)

// MustAutomation returns a valid normalised automation named name.
func MustAutomation(tb testing.TB, name string) *pb.Automation {
	tb.Helper()
	a := &pb.Automation{
		Name:     name,
		Schedule: pb.Schedule{Cron: "30 9 * * *", Timezone: "Europe/Berlin"},
		Audience: pb.Audience{Type: pb.AudienceStatic, Recipients: []pb.Recipient{{UserID: "u1", Token: "t1"}}},
		Message:  pb.Message{Title: "Hello", Body: "World", Data: map[string]string{"k": "v"}},
		Delivery: pb.Delivery{Provider: pb.ProviderLog},
	}
	if err := a.Normalize(); err != nil {
		tb.Fatalf("normalize: %v", err)
	}
	return a
}

func mustInsert(tb testing.TB, s *store.Store, name string, sched store.Schedule) *pb.Automation {
	tb.Helper()
	a := MustAutomation(tb, name)
	if err := s.InsertAutomation(context.Background(), a, sched, t0); err != nil {
		tb.Fatalf("insert automation: %v", err)
	}
	return a
}

func mustExecution(tb testing.TB, s *store.Store, a *pb.Automation, sendAt time.Time) *pb.Execution {
	tb.Helper()
	e := &pb.Execution{
		AutomationID: a.ID, AutomationVersion: a.Version, SendAt: sendAt,
		AudienceAt: sendAt.Add(-a.Lead()), CancelDeadline: sendAt, Trigger: pb.TriggerSchedule,
		Status: pb.StatusScheduled, CreatedAt: t0,
	}
	_, created, err := s.InsertExecution(context.Background(), e)
	if err != nil || !created {
		tb.Fatalf("insert execution: created=%v err=%v", created, err)
	}
	return e
}

func ptr[T any](v T) *T { return &v }

func wantKind(tb testing.TB, err error, kind pb.Kind) {
	tb.Helper()
	if got := pb.ErrorKind(err); got != kind {
		tb.Fatalf("error kind = %q (%v), want %q", got, err, kind)
	}
}

func testAutomationLifecycle(t *testing.T, s *store.Store) {
	ctx := context.Background()
	send := t0.Add(time.Hour)
	a := mustInsert(t, s, "daily", store.Schedule{SendAt: &send, FireAt: ptr(send.Add(-30 * time.Minute))})
	if a.ID == 0 || a.Version != 1 {
		t.Fatalf("id=%d version=%d, want id set and version 1", a.ID, a.Version)
	}

	got, err := s.GetAutomation(ctx, a.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if !pb.SameDefinition(a, got) {
		t.Errorf("read back a different definition:\n got %+v\nwant %+v", got, a)
	}
	if got.NextSendAt == nil || !got.NextSendAt.Equal(send) {
		t.Errorf("next_send_at = %v, want %v", got.NextSendAt, send)
	}
	if byName, err := s.GetAutomationByName(ctx, "daily", false); err != nil || byName.ID != a.ID {
		t.Fatalf("by name: %v %v", byName, err)
	}

	// An update makes version 2; version 1 stays readable as it was.
	got.Message.Title = "Changed"
	if err := s.UpdateAutomation(ctx, got, store.Schedule{}, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 {
		t.Fatalf("version after update = %d, want 2", got.Version)
	}
	v1, err := s.GetAutomationVersion(ctx, a.ID, 1)
	if err != nil {
		t.Fatal(err)
	}
	if v1.Message.Title != "Hello" {
		t.Errorf("version 1 title = %q, want the original %q", v1.Message.Title, "Hello")
	}
	v2, err := s.GetAutomationVersion(ctx, a.ID, 2)
	if err != nil || v2.Message.Title != "Changed" {
		t.Fatalf("version 2 = %+v, %v", v2, err)
	}

	// Pausing is not a new version.
	if err := s.SetSchedule(ctx, a.ID, store.Schedule{}, ptr(true), t0); err != nil {
		t.Fatal(err)
	}
	paused, _ := s.GetAutomation(ctx, a.ID, false)
	if !paused.Paused || paused.Version != 2 || paused.NextSendAt != nil {
		t.Errorf("after pause: paused=%v version=%d next=%v", paused.Paused, paused.Version, paused.NextSendAt)
	}

	list, err := s.ListAutomations(ctx, pb.AutomationFilter{})
	if err != nil || len(list) != 1 {
		t.Fatalf("list = %d, %v", len(list), err)
	}

	// Delete hides it and frees the name; its versions stay readable.
	if err := s.DeleteAutomation(ctx, a.ID, t0); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetAutomation(ctx, a.ID, false)
	wantKind(t, err, pb.KindNotFound)
	wantKind(t, s.DeleteAutomation(ctx, a.ID, t0), pb.KindNotFound)
	if _, err := s.GetAutomationVersion(ctx, a.ID, 2); err != nil {
		t.Errorf("version of deleted automation: %v", err)
	}
	if list, _ := s.ListAutomations(ctx, pb.AutomationFilter{}); len(list) != 0 {
		t.Errorf("deleted automation still listed")
	}
	again := mustInsert(t, s, "daily", store.Schedule{})
	if again.ID == a.ID {
		t.Errorf("new automation reused id %d", a.ID)
	}
	_, err = s.GetAutomation(ctx, 999999, false)
	wantKind(t, err, pb.KindNotFound)
}

func testNameConflict(t *testing.T, s *store.Store) {
	ctx := context.Background()
	mustInsert(t, s, "a", store.Schedule{})
	b := mustInsert(t, s, "b", store.Schedule{})
	dup := MustAutomation(t, "a")
	wantKind(t, s.InsertAutomation(ctx, dup, store.Schedule{}, t0), pb.KindConflict)
	b.Name = "a"
	wantKind(t, s.UpdateAutomation(ctx, b, store.Schedule{}, t0), pb.KindConflict)
	// The failed update changed nothing.
	got, err := s.GetAutomation(ctx, b.ID, false)
	if err != nil || got.Name != "b" || got.Version != 1 {
		t.Fatalf("after failed update: %+v, %v", got, err)
	}
}

func testDue(t *testing.T, s *store.Store) {
	ctx := context.Background()
	at := func(d time.Duration) store.Schedule {
		return store.Schedule{SendAt: ptr(t0.Add(d + 30*time.Minute)), FireAt: ptr(t0.Add(d))}
	}
	late := mustInsert(t, s, "late", at(-time.Hour))
	now := mustInsert(t, s, "now", at(0))
	mustInsert(t, s, "future", at(time.Second))
	paused := mustInsert(t, s, "paused", at(-time.Hour))
	if err := s.SetSchedule(ctx, paused.ID, at(-time.Hour), ptr(true), t0); err != nil {
		t.Fatal(err)
	}
	deleted := mustInsert(t, s, "deleted", at(-time.Hour))
	if err := s.DeleteAutomation(ctx, deleted.ID, t0); err != nil {
		t.Fatal(err)
	}
	mustInsert(t, s, "never", store.Schedule{})

	due, err := s.DueAutomationIDs(ctx, t0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(due) != fmt.Sprint([]int64{late.ID, now.ID}) {
		t.Fatalf("due = %v, want [late now] = [%d %d]", due, late.ID, now.ID)
	}
	due, err = s.DueAutomationIDs(ctx, t0, 1)
	if err != nil || len(due) != 1 || due[0] != late.ID {
		t.Fatalf("limit 1: %v %v", due, err)
	}
	// Locking re-checks dueness: a paused one is not taken.
	err = s.InTx(ctx, func(tx *store.Tx) error {
		a, err := tx.LockDueAutomation(ctx, late.ID, t0)
		if err != nil || a == nil || a.ID != late.ID {
			return fmt.Errorf("lock late: %v %v", a, err)
		}
		if a, err := tx.LockDueAutomation(ctx, paused.ID, t0); err != nil || a != nil {
			return fmt.Errorf("lock paused: %v %v", a, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.CountScheduled(ctx)
	if err != nil || n != 3 {
		t.Errorf("scheduled = %d, %v; want 3 (late, now, future)", n, err)
	}
}

func testExecutionUnique(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	send := t0.Add(time.Hour)
	first := mustExecution(t, s, a, send)
	// Same send time, written differently (another zone, sub-microsecond
	// noise): still the same fire.
	dup := &pb.Execution{
		AutomationID: a.ID, AutomationVersion: 1, SendAt: send.In(time.FixedZone("x", 3600)).Add(100 * time.Nanosecond),
		AudienceAt: send, CancelDeadline: send, Trigger: pb.TriggerManual, Status: pb.StatusScheduled, CreatedAt: t0,
	}
	existing, created, err := s.InsertExecution(ctx, dup)
	if err != nil || created || existing != first.ID {
		t.Fatalf("duplicate insert: existing=%d created=%v err=%v, want existing=%d", existing, created, err, first.ID)
	}
	// Inside a transaction, a duplicate must not poison it (PostgreSQL
	// aborts a transaction on a unique violation).
	err = s.InTx(ctx, func(tx *store.Tx) error {
		if _, created, err := tx.InsertExecution(ctx, dup); err != nil || created {
			return fmt.Errorf("dup in tx: created=%v err=%v", created, err)
		}
		return tx.UpdateExecution(ctx, first.ID, store.ExecutionUpdate{Reason: ptr("still usable"), Now: t0})
	})
	if err != nil {
		t.Fatal(err)
	}
	e, _ := s.GetExecution(ctx, first.ID, false)
	if e.Reason != "still usable" {
		t.Errorf("reason = %q", e.Reason)
	}
	// Another automation may use the same send time.
	b := mustInsert(t, s, "b", store.Schedule{})
	mustExecution(t, s, b, send)
}

func testConcurrentInsert(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	send := t0.Add(time.Hour)
	const workers = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		created int
		ids     = map[int64]bool{}
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := &pb.Execution{AutomationID: a.ID, AutomationVersion: 1, SendAt: send, AudienceAt: send,
				CancelDeadline: send, Trigger: pb.TriggerSchedule, Status: pb.StatusScheduled, CreatedAt: t0}
			err := s.InTx(ctx, func(tx *store.Tx) error {
				id, ok, err := tx.InsertExecution(ctx, e)
				if err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				if ok {
					created++
				}
				ids[id] = true
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if created != 1 || len(ids) != 1 {
		t.Fatalf("%d concurrent inserts created %d executions with ids %v; want exactly 1", workers, created, ids)
	}
}

func testExecutionUpdate(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	b := mustInsert(t, s, "b", store.Schedule{})
	e1 := mustExecution(t, s, a, t0)
	e2 := mustExecution(t, s, a, t0.Add(time.Hour))
	e3 := mustExecution(t, s, b, t0)

	started := t0.Add(time.Second)
	perr := pb.Errorf(pb.KindScript, "exit status 3").WithPhase(pb.PhaseAudience).With("exit_code", "3")
	err := s.UpdateExecution(ctx, e1.ID, store.ExecutionUpdate{
		Status: ptr(pb.StatusFailed), Phase: ptr(pb.PhaseAudience), Error: perr,
		StartedAt: &started, FinishedAt: ptr(t0.Add(time.Minute)), Now: t0.Add(time.Minute),
	})
	if err != nil {
		t.Fatal(err)
	}
	// StartedAt keeps its first value.
	if err := s.UpdateExecution(ctx, e1.ID, store.ExecutionUpdate{StartedAt: ptr(t0.Add(time.Hour)), Now: t0}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetExecution(ctx, e1.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != pb.StatusFailed || got.Phase != pb.PhaseAudience || got.AutomationName != "a" {
		t.Errorf("got status=%s phase=%s name=%s", got.Status, got.Phase, got.AutomationName)
	}
	if got.StartedAt == nil || !got.StartedAt.Equal(started) {
		t.Errorf("started_at = %v, want %v", got.StartedAt, started)
	}
	if got.Error == nil || got.Error.Kind != pb.KindScript || got.Error.Phase != pb.PhaseAudience ||
		got.Error.Context["exit_code"] != "3" || got.Error.Recoverable {
		t.Errorf("error = %+v, want the script error with its context", got.Error)
	}
	if len(got.Phases) != len(pb.Phases) || got.Phases[0].Status != pb.PhasePending {
		t.Errorf("phases = %+v, want all five, pending", got.Phases)
	}
	wantKind(t, s.UpdateExecution(ctx, 424242, store.ExecutionUpdate{Now: t0}), pb.KindNotFound)

	active, err := s.ActiveExecutions(ctx, a.ID)
	if err != nil || len(active) != 1 || active[0].ID != e2.ID {
		t.Fatalf("active = %v, %v; want [e2]", active, err)
	}
	if n, err := s.CountActive(ctx); err != nil || n != 2 {
		t.Errorf("count active = %d, %v; want 2", n, err)
	}
	if m, err := s.CountActiveByStatus(ctx); err != nil || len(m) != 1 || m[pb.StatusScheduled] != 2 {
		t.Errorf("count active by status = %v, %v; want scheduled 2", m, err)
	}
	list, err := s.ListExecutions(ctx, pb.ExecutionFilter{AutomationID: &a.ID})
	if err != nil || len(list) != 2 || list[0].ID != e2.ID || list[1].ID != e1.ID {
		t.Fatalf("list by automation: %v %v", list, err)
	}
	list, _ = s.ListExecutions(ctx, pb.ExecutionFilter{Status: ptr(pb.StatusScheduled)})
	if len(list) != 2 || list[0].ID != e3.ID {
		t.Errorf("list by status: %d", len(list))
	}
	list, _ = s.ListExecutions(ctx, pb.ExecutionFilter{BeforeID: e3.ID, Limit: 1})
	if len(list) != 1 || list[0].ID != e2.ID {
		t.Errorf("page: %v", list)
	}
}

func testPhases(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e := mustExecution(t, s, a, t0)
	n, err := s.StartPhase(ctx, e.ID, pb.PhaseAudience, "i1", t0)
	if err != nil || n != 1 {
		t.Fatalf("start: %d %v", n, err)
	}
	n, err = s.StartPhase(ctx, e.ID, pb.PhaseAudience, "i2", t0.Add(time.Second))
	if err != nil || n != 2 {
		t.Fatalf("restart: attempt %d %v, want 2", n, err)
	}
	err = s.EndPhase(ctx, e.ID, pb.PhaseAudience, store.PhaseEnd{
		Status: pb.PhaseCompleted, Metrics: map[string]int64{"audience_size": 3}, Note: "ok", Now: t0.Add(2 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	// A phase that never started still gets its record.
	werr := pb.Errorf(pb.KindAbort, "cancelled by operator")
	err = s.EndPhase(ctx, e.ID, pb.PhaseLiveSend, store.PhaseEnd{Status: pb.PhaseCancelled, Error: werr, Now: t0, Instance: "i3"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddMetrics(ctx, e.ID, map[string]int64{"sent": 2, "failed": 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddMetrics(ctx, e.ID, map[string]int64{"sent": 3}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetMetrics(ctx, e.ID, map[string]int64{"audience_size": 7, "failed": 0}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetExecution(ctx, e.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	aud := got.PhaseRecord(pb.PhaseAudience)
	if aud.Status != pb.PhaseCompleted || aud.Attempt != 2 || aud.Instance != "i2" || aud.Metrics["audience_size"] != 3 ||
		aud.Note != "ok" || aud.StartedAt == nil || !aud.StartedAt.Equal(t0.Add(time.Second)) || aud.FinishedAt == nil {
		t.Errorf("audience phase = %+v", aud)
	}
	live := got.PhaseRecord(pb.PhaseLiveSend)
	if live.Status != pb.PhaseCancelled || live.Error == nil || live.Error.Kind != pb.KindAbort || live.Instance != "i3" {
		t.Errorf("live phase = %+v", live)
	}
	if got.PhaseRecord(pb.PhaseCleanup).Status != pb.PhasePending {
		t.Errorf("cleanup should be pending")
	}
	want := map[string]int64{"sent": 5, "failed": 0, "audience_size": 7}
	if fmt.Sprint(got.Metrics) != fmt.Sprint(want) {
		t.Errorf("metrics = %v, want %v", got.Metrics, want)
	}
}

func testRecipients(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e := mustExecution(t, s, a, t0)
	var rs []pb.Recipient
	for i := range 1200 {
		rs = append(rs, pb.Recipient{UserID: fmt.Sprintf("u%04d", i), Token: "tok", Platform: "ios", Data: map[string]string{"n": fmt.Sprint(i)}})
	}
	rs = append(rs, rs[5], pb.Recipient{UserID: "u0005", Token: "other-device"})
	n, err := s.InsertRecipients(ctx, store.ExecutionList(e.ID), rs)
	if err != nil || n != 1201 {
		t.Fatalf("inserted %d, %v; want 1201 (one duplicate dropped)", n, err)
	}
	var all []store.StoredRecipient
	after := int64(0)
	for {
		page, err := s.Recipients(ctx, e.ID, after, 500)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1].ID
	}
	if len(all) != 1201 || all[7].UserID != "u0007" || all[7].Data["n"] != "7" || all[7].Platform != "ios" {
		t.Fatalf("paged %d recipients; #7 = %+v", len(all), all[7])
	}
	if err := s.DeleteRecipients(ctx, store.ExecutionList(e.ID)); err != nil {
		t.Fatal(err)
	}
	if page, _ := s.Recipients(ctx, e.ID, 0, 10); len(page) != 0 {
		t.Errorf("recipients left after delete: %d", len(page))
	}
}

func testLedger(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e := mustExecution(t, s, a, t0)
	rs := []pb.Recipient{{UserID: "u1", Token: "a"}, {UserID: "u1", Token: "b"}, {UserID: "u2", Token: "c"}}
	claimed, unknown, _, err := s.ClaimDeliveries(ctx, e.ID, store.AudienceLive, rs, store.ClaimParams{Instance: "i1", Now: t0})
	if err != nil || len(claimed) != 3 || unknown != 0 {
		t.Fatalf("claim: %d claimed, %d unknown, %v", len(claimed), unknown, err)
	}
	// The test audience has a ledger of its own.
	if c, _, _, _ := s.ClaimDeliveries(ctx, e.ID, store.AudienceTest, rs[:1], store.ClaimParams{Instance: "i1", Now: t0}); len(c) != 1 {
		t.Fatalf("test audience claim: %d", len(c))
	}
	err = s.FinishDeliveries(ctx, e.ID, store.AudienceLive, []store.DeliveryResult{
		{UserID: "u1", Token: "a", State: store.DeliverySent},
		{UserID: "u1", Token: "b", State: store.DeliveryFailed, Reason: "INVALID_ARGUMENT"},
	}, t0)
	if err != nil {
		t.Fatal(err)
	}
	// A re-run of the same batch (a takeover after a crash) claims nothing:
	// u2 was in flight, so it becomes unknown, never sent twice.
	claimed, unknown, _, err = s.ClaimDeliveries(ctx, e.ID, store.AudienceLive, rs, store.ClaimParams{Instance: "i2", Now: t0})
	if err != nil || len(claimed) != 0 || unknown != 1 {
		t.Fatalf("re-claim: %d claimed, %d unknown, %v; want 0 and 1", len(claimed), unknown, err)
	}
	counts, err := s.DeliveryCounts(ctx, e.ID, store.AudienceLive)
	want := map[pb.DeliveryState]int64{"sent": 1, "failed": 1, "unknown": 1}
	if err != nil || fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Fatalf("counts = %v, %v; want %v", counts, err, want)
	}
	// Finishing an unknown row does not turn it into sent.
	_ = s.FinishDeliveries(ctx, e.ID, store.AudienceLive, []store.DeliveryResult{{UserID: "u2", Token: "c", State: store.DeliverySent}}, t0)
	rows, err := s.Deliveries(ctx, e.ID)
	if err != nil || len(rows) != 4 {
		t.Fatalf("ledger rows = %d, %v", len(rows), err)
	}
	for _, r := range rows {
		if r.UserID == "u2" && r.State != store.DeliveryUnknown {
			t.Errorf("u2 state = %s, want unknown", r.State)
		}
		if r.Token == "b" && r.Reason != "INVALID_ARGUMENT" {
			t.Errorf("reason = %q", r.Reason)
		}
	}
}

func testEvents(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e := mustExecution(t, s, a, t0)
	for i := range 5 {
		ev := &pb.Event{At: t0, AutomationID: a.ID, Type: pb.EventLog, Message: fmt.Sprint(i)}
		if i%2 == 0 {
			ev.ExecutionID, ev.Phase, ev.Data = e.ID, pb.PhaseAudience, map[string]string{"i": fmt.Sprint(i)}
		}
		if err := s.InsertEvent(ctx, ev); err != nil || ev.ID == 0 {
			t.Fatalf("insert event: %v", err)
		}
	}
	if err := s.InsertEvent(ctx, &pb.Event{At: t0, Type: pb.EventLog, Message: "global"}); err != nil {
		t.Fatal(err)
	}
	all, err := s.ListEvents(ctx, pb.EventFilter{})
	if err != nil || len(all) != 6 {
		t.Fatalf("all events: %d %v", len(all), err)
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID <= all[i-1].ID {
			t.Fatalf("ids not increasing: %d then %d", all[i-1].ID, all[i].ID)
		}
	}
	byExec, _ := s.ListEvents(ctx, pb.EventFilter{ExecutionID: &e.ID})
	if len(byExec) != 3 || byExec[0].Data["i"] != "0" || byExec[0].Phase != pb.PhaseAudience {
		t.Errorf("by execution: %+v", byExec)
	}
	after, _ := s.ListEvents(ctx, pb.EventFilter{AutomationID: &a.ID, AfterID: all[1].ID, Limit: 2})
	if len(after) != 2 || after[0].Message != "2" {
		t.Errorf("after/limit: %+v", after)
	}
	// Text a database refuses (a NUL byte, invalid UTF-8), as a script's
	// stderr or a remote service may produce, is stored with those bytes
	// replaced, not lost.
	bad := &pb.Event{At: t0, Type: pb.EventError, Message: "bad \x00 byte \xff end", Data: map[string]string{"kind": "external", "body\x00": "x\xffy\x00"}}
	if err := s.InsertEvent(ctx, bad); err != nil {
		t.Fatalf("insert an event with a NUL byte and invalid UTF-8: %v", err)
	}
	got, err := s.ListEvents(ctx, pb.EventFilter{AfterID: bad.ID - 1, Limit: 1})
	if err != nil || len(got) != 1 || got[0].Message != "bad \uFFFD byte \uFFFD end" || got[0].Data["body\uFFFD"] != "x\uFFFDy\uFFFD" {
		t.Errorf("stored bad text: %v %+v", err, got)
	}
}

func testTimes(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	ny, _ := time.LoadLocation("America/New_York")
	// 01:30 EDT and 01:30 EST on fall-back day are different instants with
	// the same wall clock: both must survive the round trip distinctly.
	edt := time.Date(2026, 11, 1, 5, 30, 0, 123456789, time.UTC).In(ny)
	est := edt.Add(time.Hour)
	e1 := mustExecution(t, s, a, edt)
	e2 := mustExecution(t, s, a, est)
	for _, c := range []struct {
		id   int64
		want time.Time
	}{{e1.ID, edt}, {e2.ID, est}} {
		got, err := s.GetExecution(ctx, c.id, false)
		if err != nil {
			t.Fatal(err)
		}
		want := c.want.Truncate(time.Microsecond)
		if !got.SendAt.Equal(want) || got.SendAt.Location() != time.UTC {
			t.Errorf("send_at = %v, want %v in UTC", got.SendAt, want)
		}
	}
}

func testRollback(t *testing.T, s *store.Store) {
	ctx := context.Background()
	boom := errors.New("boom")
	err := s.InTx(ctx, func(tx *store.Tx) error {
		a := MustAutomation(t, "rolled-back")
		if err := tx.InsertAutomation(ctx, a, store.Schedule{}, t0); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if _, err := s.GetAutomationByName(ctx, "rolled-back", false); pb.ErrorKind(err) != pb.KindNotFound {
		t.Fatalf("rolled-back automation exists: %v", err)
	}
}

func testWriteRecipients(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e := mustExecution(t, s, a, t0)
	// Large enough for PostgreSQL's COPY path, with duplicates inside the
	// batch and across batches.
	var rs []pb.Recipient
	for i := range 3000 {
		rs = append(rs, pb.Recipient{UserID: fmt.Sprintf("u%05d", i%2500), Token: fmt.Sprintf("t%05d", i%2500), Platform: "android",
			Timezone: "Europe/Berlin", Locale: "de-DE", Data: map[string]string{"first_name": "Zoë", "quote": `say "hi"`}})
	}
	n, err := s.WriteRecipients(ctx, store.ExecutionList(e.ID), rs)
	if err != nil || n != 2500 {
		t.Fatalf("first batch: %d new, %v; want 2500", n, err)
	}
	n, err = s.WriteRecipients(ctx, store.ExecutionList(e.ID), rs[2000:])
	if err != nil || n != 0 {
		t.Fatalf("repeated batch: %d new, %v; want 0", n, err)
	}
	small := []pb.Recipient{{UserID: "solo"}, {UserID: "solo"}}
	if n, err := s.WriteRecipients(ctx, store.ExecutionList(e.ID), small); err != nil || n != 1 {
		t.Fatalf("small batch: %d new, %v; want 1", n, err)
	}
	page, err := s.Recipients(ctx, e.ID, 0, 1)
	if err != nil || len(page) != 1 {
		t.Fatalf("read back: %v %v", page, err)
	}
	r := page[0]
	if r.Timezone != "Europe/Berlin" || r.Locale != "de-DE" || r.Data["first_name"] != "Zoë" || r.Data["quote"] != `say "hi"` {
		t.Errorf("round trip lost data: %+v", r)
	}
	total, noToken, err := s.CountRecipients(ctx, store.ExecutionList(e.ID))
	if err != nil || total != 2501 || noToken != 1 {
		t.Errorf("counts = %d, %d, %v; want 2501 and 1 without a token", total, noToken, err)
	}
}

func testAttachTokens(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e := mustExecution(t, s, a, t0)
	rs := []pb.Recipient{
		{UserID: "multi", Platform: "ios", Data: map[string]string{"n": "1"}},
		{UserID: "none"},
		{UserID: "has", Token: "kept"},
	}
	if _, err := s.WriteRecipients(ctx, store.ExecutionList(e.ID), rs); err != nil {
		t.Fatal(err)
	}
	tl, err := s.TokenlessRecipients(ctx, store.ExecutionList(e.ID), 0, 10)
	if err != nil || len(tl) != 2 {
		t.Fatalf("tokenless = %v, %v", tl, err)
	}
	devices := map[string][]pb.Device{
		"multi": {{Token: "phone"}, {Token: "tablet", Platform: "android"}},
		"none":  nil,
	}
	err = s.InTx(ctx, func(tx *store.Tx) error { return tx.AttachTokens(ctx, store.ExecutionList(e.ID), devices) })
	if err != nil {
		t.Fatal(err)
	}
	var all []store.StoredRecipient
	after := int64(0)
	for {
		page, err := s.Recipients(ctx, e.ID, after, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1].ID
	}
	got := map[string]store.StoredRecipient{}
	for _, r := range all {
		got[r.UserID+"/"+r.Token] = r
	}
	if len(all) != 4 {
		t.Fatalf("recipients after attaching = %v; want multi/phone, multi/tablet, none/, has/kept", got)
	}
	if p := got["multi/phone"]; p.Platform != "ios" || p.Data["n"] != "1" {
		t.Errorf("a device without a platform keeps the user's: %+v", p)
	}
	if p := got["multi/tablet"]; p.Platform != "android" {
		t.Errorf("a device's platform wins: %+v", p)
	}
	if _, ok := got["none/"]; !ok {
		t.Errorf("a user without devices keeps its tokenless row")
	}
	if _, ok := got["multi/"]; ok {
		t.Errorf("the tokenless row of a user with devices is gone")
	}
}

func testLastAudience(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e1 := mustExecution(t, s, a, t0)
	e2 := mustExecution(t, s, a, t0.Add(time.Hour))
	e3 := mustExecution(t, s, a, t0.Add(2*time.Hour))
	if _, _, found, err := s.LastCompletedAudience(ctx, a.ID, e3.ID); err != nil || found {
		t.Fatalf("none completed yet: found=%v %v", found, err)
	}
	for _, e := range []*pb.Execution{e1, e2} {
		if err := s.UpdateExecution(ctx, e.ID, store.ExecutionUpdate{Status: ptr(pb.StatusCompleted), Now: t0}); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.SetMetrics(ctx, e1.ID, map[string]int64{pb.MetricAudienceSize: 10})
	_ = s.SetMetrics(ctx, e2.ID, map[string]int64{pb.MetricAudienceSize: 20})
	size, id, found, err := s.LastCompletedAudience(ctx, a.ID, e3.ID)
	if err != nil || !found || size != 20 || id != e2.ID {
		t.Fatalf("last = %d from %d (found %v, %v); want 20 from %d", size, id, found, err, e2.ID)
	}
	size, id, _, _ = s.LastCompletedAudience(ctx, a.ID, e2.ID)
	if size != 10 || id != e1.ID {
		t.Errorf("before e2: %d from %d", size, id)
	}
}

func testArtifacts(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e := mustExecution(t, s, a, t0)
	put := func(name, content string, expires time.Time) {
		t.Helper()
		if err := s.PutArtifact(ctx, e.ID, store.Artifact{Name: name, Content: content, CreatedAt: t0, ExpiresAt: expires}); err != nil {
			t.Fatal(err)
		}
	}
	put("stderr", "old", t0.Add(time.Hour))
	put("stderr", "line 1\nline 2", t0.Add(time.Hour)) // replaced
	put("exit_status", "exit code 3", t0.Add(time.Minute))
	list, err := s.Artifacts(ctx, e.ID, t0)
	if err != nil || len(list) != 2 || list[1].Name != "stderr" || list[1].Content != "line 1\nline 2" {
		t.Fatalf("artefacts = %+v, %v", list, err)
	}
	list, _ = s.Artifacts(ctx, e.ID, t0.Add(30*time.Minute))
	if len(list) != 1 || list[0].Name != "stderr" {
		t.Errorf("expired artefacts are not served: %+v", list)
	}
	n, err := s.DeleteExpiredArtifacts(ctx, t0.Add(30*time.Minute))
	if err != nil || n != 1 {
		t.Errorf("deleted %d, %v; want 1", n, err)
	}
}

func testPreviewLists(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e := mustExecution(t, s, a, t0)
	if _, err := s.WriteRecipients(ctx, store.ExecutionList(e.ID), []pb.Recipient{{UserID: "real", Token: "x"}}); err != nil {
		t.Fatal(err)
	}
	p1, err := s.NewPreview(ctx, a.ID, t0)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := s.NewPreview(ctx, a.ID, t0)
	if p1.ID == p2.ID || !p1.Preview {
		t.Fatalf("previews %+v %+v", p1, p2)
	}
	var rs []pb.Recipient
	for i := range 1500 {
		rs = append(rs, pb.Recipient{UserID: fmt.Sprint(i % 1000)})
	}
	if n, err := s.WriteRecipients(ctx, p1, rs); err != nil || n != 1000 {
		t.Fatalf("preview write: %d %v", n, err)
	}
	if err := s.InTx(ctx, func(tx *store.Tx) error {
		return tx.AttachTokens(ctx, p1, map[string][]pb.Device{"7": {{Token: "a"}, {Token: "b"}}})
	}); err != nil {
		t.Fatal(err)
	}
	if total, noToken, err := s.CountRecipients(ctx, p1); err != nil || total != 1001 || noToken != 999 {
		t.Fatalf("preview counts %d %d %v", total, noToken, err)
	}
	if total, _, _ := s.CountRecipients(ctx, p2); total != 0 {
		t.Errorf("previews share rows")
	}
	if total, _, _ := s.CountRecipients(ctx, store.ExecutionList(e.ID)); total != 1 {
		t.Errorf("a preview touched the execution's list: %d", total)
	}
	if err := s.DeletePreview(ctx, p1); err != nil {
		t.Fatal(err)
	}
	if total, _, _ := s.CountRecipients(ctx, p1); total != 0 {
		t.Errorf("deleted preview kept %d rows", total)
	}
}

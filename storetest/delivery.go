package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

func states(t *testing.T, s *store.Store, id int64) map[string]store.DeliveryRow {
	t.Helper()
	rows, err := s.Deliveries(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]store.DeliveryRow{}
	for _, r := range rows {
		out[r.UserID+"/"+r.Token] = r
	}
	return out
}

// A push never requested goes back to pending and is claimed again; with
// ResendUnknown a row a dead attempt left in flight is claimed again too.
func testLedgerPending(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e := mustExecution(t, s, a, t0)
	rs := []pb.Recipient{{UserID: "u1", Token: "a"}, {UserID: "u2", Token: "b"}, {UserID: "u3", Token: "c"}}
	p := store.ClaimParams{Instance: "i1", Now: t0}
	if c, _, _, err := s.ClaimDeliveries(ctx, e.ID, store.AudienceLive, rs, p); err != nil || len(c) != 3 {
		t.Fatalf("claim: %d, %v", len(c), err)
	}
	err := s.FinishDeliveries(ctx, e.ID, store.AudienceLive, []store.DeliveryResult{
		{UserID: "u1", Token: "a", State: store.DeliverySent, Attempts: 3},
		{UserID: "u2", Token: "b", State: store.DeliveryPending, Reason: "not requested"},
	}, t0)
	if err != nil {
		t.Fatal(err)
	}
	got := states(t, s, e.ID)
	if r := got["u1/a"]; r.State != store.DeliverySent || r.Attempts != 3 {
		t.Errorf("u1 = %+v; want sent after 3 attempts", r)
	}
	if r := got["u2/b"]; r.State != store.DeliveryPending || r.Attempts != 0 {
		t.Errorf("u2 = %+v; want pending with 0 attempts", r)
	}
	// Re-run: u2 (pending) is claimed again, u3 (in flight) becomes
	// unknown, u1 (sent) is left alone.
	c, unknown, resent, err := s.ClaimDeliveries(ctx, e.ID, store.AudienceLive, rs, store.ClaimParams{Instance: "i2", Now: t0})
	if err != nil || len(c) != 1 || c[0].UserID != "u2" || unknown != 1 || resent != 0 {
		t.Fatalf("re-claim: %v unknown=%d resent=%d %v; want [u2], 1, 0", c, unknown, resent, err)
	}
	// With resend, a row in flight (u2 now is) and a row already unknown
	// (u3) are claimed again.
	c, unknown, resent, err = s.ClaimDeliveries(ctx, e.ID, store.AudienceLive, rs, store.ClaimParams{Instance: "i3", Now: t0, ResendUnknown: true})
	if err != nil || len(c) != 2 || unknown != 0 || resent != 2 {
		t.Fatalf("resend claim: %v unknown=%d resent=%d %v; want u2 and u3, 0, 2", c, unknown, resent, err)
	}
	if r := states(t, s, e.ID)["u2/b"]; r.State != store.DeliverySending || r.Instance != "i3" || r.Attempts != 2 {
		t.Errorf("u2 after resend claim = %+v", r)
	}
	// Without resend, the rows in flight become unknown again.
	if c, unknown, _, _ := s.ClaimDeliveries(ctx, e.ID, store.AudienceLive, rs, p); len(c) != 0 || unknown != 2 {
		t.Fatalf("claim after resend: %v unknown=%d; want none, 2", c, unknown)
	}
	_ = s.FinishDeliveries(ctx, e.ID, store.AudienceLive, []store.DeliveryResult{{UserID: "u2", Token: "b", State: store.DeliverySent}}, t0)
	// Held rows are written once, final.
	n, err := s.HoldDeliveries(ctx, e.ID, store.AudienceLive, []store.DeliveryResult{
		{UserID: "u4", Token: "d", State: store.DeliveryCapped, Code: "frequency_cap", Reason: "max 1 per 24h"},
		{UserID: "u1", Token: "a", State: store.DeliveryCapped},
	}, "i1", t0)
	if err != nil || n != 1 {
		t.Fatalf("hold: %d, %v; want 1 (u1 has a row)", n, err)
	}
	got = states(t, s, e.ID)
	if got["u4/d"].State != store.DeliveryCapped || got["u4/d"].Code != "frequency_cap" || got["u1/a"].State != store.DeliverySent {
		t.Errorf("after hold: u4 %+v, u1 %+v", got["u4/d"], got["u1/a"])
	}
	if c, _, _, _ := s.ClaimDeliveries(ctx, e.ID, store.AudienceLive, []pb.Recipient{{UserID: "u4", Token: "d"}}, p); len(c) != 0 {
		t.Errorf("a capped row was claimed")
	}
	// Paging and filters.
	page, err := s.Deliveries(ctx, e.ID, store.DeliveryFilter{State: store.DeliveryCapped})
	if err != nil || len(page) != 1 || page[0].UserID != "u4" {
		t.Errorf("filter capped = %+v, %v", page, err)
	}
	page, err = s.Deliveries(ctx, e.ID, store.DeliveryFilter{Limit: 2, AfterAudience: "live", AfterUser: "u2", AfterToken: "b"})
	if err != nil || len(page) != 2 || page[0].UserID != "u3" || page[1].UserID != "u4" {
		t.Errorf("page after u2 = %+v, %v", page, err)
	}
}

func testInvalidTokens(t *testing.T, s *store.Store) {
	ctx := context.Background()
	err := s.AddInvalidTokens(ctx, []store.InvalidToken{
		{Token: "t1", Provider: "fcm", UserID: "u1", Code: "unregistered", Reason: "UNREGISTERED", ExecutionID: 7, CreatedAt: t0},
		{Token: "t2", Provider: "apns", UserID: "u2", Reason: "410", CreatedAt: t0.Add(time.Second)},
	})
	if err != nil {
		t.Fatal(err)
	}
	// A second report keeps the first record.
	if err := s.AddInvalidTokens(ctx, []store.InvalidToken{{Token: "t1", Provider: "fcm", UserID: "u1", Reason: "again", CreatedAt: t0.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	known, err := s.KnownInvalid(ctx, []string{"t1", "t3"})
	if err != nil || len(known) != 1 || known["t1"].Reason != "UNREGISTERED" || !known["t1"].CreatedAt.Equal(t0) || known["t1"].ExecutionID != 7 {
		t.Fatalf("known = %+v, %v", known, err)
	}
	list, err := s.InvalidTokens(ctx, store.InvalidTokenFilter{Limit: 1})
	if err != nil || len(list) != 1 || list[0].Token != "t2" {
		t.Fatalf("newest first = %+v, %v", list, err)
	}
	list, err = s.InvalidTokens(ctx, store.InvalidTokenFilter{BeforeAt: list[0].CreatedAt, BeforeToken: list[0].Token})
	if err != nil || len(list) != 1 || list[0].Token != "t1" {
		t.Fatalf("next page = %+v, %v", list, err)
	}
	if list, _ := s.InvalidTokens(ctx, store.InvalidTokenFilter{Provider: "apns"}); len(list) != 1 || list[0].UserID != "u2" {
		t.Errorf("by provider = %+v", list)
	}
	if ok, err := s.DeleteInvalidToken(ctx, "t1"); !ok || err != nil {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if ok, _ := s.DeleteInvalidToken(ctx, "t1"); ok {
		t.Error("deleted twice")
	}
}

func testSendBatches(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a := mustInsert(t, s, "a", store.Schedule{})
	e := mustExecution(t, s, a, t0)
	var rs []pb.Recipient
	for i := range 1001 {
		rs = append(rs, pb.Recipient{UserID: fmt.Sprintf("u%04d", i), Token: "t"})
	}
	if _, err := s.WriteRecipients(ctx, store.ExecutionList(e.ID), rs); err != nil {
		t.Fatal(err)
	}
	bs, err := s.PlanBatches(ctx, e.ID, 400)
	if err != nil || len(bs) != 3 || bs[0].Size != 400 || bs[2].Size != 201 || bs[1].FirstID != bs[0].LastID+1 {
		t.Fatalf("plan = %+v, %v", bs, err)
	}
	// The ranges cover every recipient exactly once.
	seen := 0
	for _, b := range bs {
		page, err := s.RecipientsBetween(ctx, e.ID, b.FirstID-1, b.LastID, 1000)
		if err != nil || len(page) != b.Size {
			t.Fatalf("batch %d: %d recipients, %v; want %d", b.Seq, len(page), err, b.Size)
		}
		seen += len(page)
	}
	if seen != 1001 {
		t.Fatalf("batches cover %d recipients", seen)
	}
	if err := s.InsertBatches(ctx, bs, t0); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertBatches(ctx, bs, t0); err != nil { // idempotent
		t.Fatal(err)
	}
	att, failed, err := s.BatchProgress(ctx, e.ID, 0, 10, 2, map[pb.DeliveryState]int64{store.DeliverySent: 8, store.DeliveryFailed: 2, store.DeliveryCapped: 3}, "i1", t0)
	if err != nil || att != 10 || failed != 2 {
		t.Fatalf("progress = %d %d %v", att, failed, err)
	}
	if att, failed, _ = s.BatchProgress(ctx, e.ID, 2, 5, 5, map[pb.DeliveryState]int64{store.DeliveryFailed: 5}, "i2", t0); att != 15 || failed != 7 {
		t.Fatalf("totals over batches = %d %d; want 15 7", att, failed)
	}
	// Progress while batches run is what their rounds reported.
	wantCounts := func(when string, want map[pb.DeliveryState]int64) {
		t.Helper()
		got, batches, err := s.LiveCounts(ctx, e.ID)
		if err != nil || batches != 3 {
			t.Fatalf("LiveCounts: %d batches, %v", batches, err)
		}
		for _, st := range []pb.DeliveryState{store.DeliverySent, store.DeliveryFailed, store.DeliveryInvalidToken, store.DeliveryCapped, store.DeliveryUnknown} {
			if got[st] != want[st] {
				t.Errorf("%s: LiveCounts = %v, want %v", when, got, want)
				return
			}
		}
	}
	wantCounts("while running", map[pb.DeliveryState]int64{store.DeliverySent: 8, store.DeliveryFailed: 7, store.DeliveryCapped: 3})

	// Concurrent ends: exactly one sees zero left.
	var (
		mu    sync.Mutex
		zeros int
		wg    sync.WaitGroup
	)
	for _, b := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.InTx(ctx, func(tx *store.Tx) error {
				if _, err := tx.GetExecutionRow(ctx, e.ID, true); err != nil {
					return err
				}
				left, err := tx.FinishBatch(ctx, e.ID, b.Seq, "done", "i", t0)
				if err == nil && left == 0 {
					mu.Lock()
					zeros++
					mu.Unlock()
				}
				return err
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if zeros != 1 {
		t.Fatalf("%d batches saw none left; want exactly 1", zeros)
	}
	got, err := s.Batches(ctx, e.ID)
	if err != nil || len(got) != 3 || got[1].State != store.BatchDone || got[0].Attempted != 10 {
		t.Fatalf("batches = %+v, %v", got, err)
	}
	// Finishing a batch keeps what its rounds reported.
	wantCounts("after every batch finished", map[pb.DeliveryState]int64{store.DeliverySent: 8, store.DeliveryFailed: 7, store.DeliveryCapped: 3})
	if b, err := s.Batch(ctx, e.ID, 9); pb.ErrorKind(err) != pb.KindNotFound {
		t.Errorf("missing batch = %+v, %v", b, err)
	}
}

func testRecentPushes(t *testing.T, s *store.Store) {
	ctx := context.Background()
	a1 := mustInsert(t, s, "a1", store.Schedule{})
	a2 := mustInsert(t, s, "a2", store.Schedule{})
	e1 := mustExecution(t, s, a1, t0)
	e2 := &pb.Execution{AutomationID: a2.ID, AutomationVersion: 1, SendAt: t0, AudienceAt: t0, CancelDeadline: t0,
		Trigger: pb.TriggerSchedule, Status: pb.StatusScheduled, CreatedAt: t0, Tags: []string{"promo", "weekly"}}
	if _, _, err := s.InsertExecution(ctx, e2); err != nil {
		t.Fatal(err)
	}
	e3 := mustExecution(t, s, a1, t0.Add(time.Hour))
	claim := func(e *pb.Execution, at time.Time, aud store.Audience, users ...string) {
		var rs []pb.Recipient
		for _, u := range users {
			rs = append(rs, pb.Recipient{UserID: u, Token: u + "-t"})
		}
		if _, _, _, err := s.ClaimDeliveries(ctx, e.ID, aud, rs, store.ClaimParams{Instance: "i", Now: at}); err != nil {
			t.Fatal(err)
		}
	}
	claim(e1, t0, store.AudienceLive, "u1", "u2")
	claim(e2, t0.Add(time.Minute), store.AudienceLive, "u1", "u3")
	claim(e2, t0.Add(time.Minute), store.AudienceTest, "u4") // test sends never count
	// u2's push failed: it does not count.
	_ = s.FinishDeliveries(ctx, e1.ID, store.AudienceLive, []store.DeliveryResult{{UserID: "u2", Token: "u2-t", State: store.DeliveryFailed}}, t0)
	users := []string{"u1", "u2", "u3", "u4"}
	got, err := s.RecentPushes(ctx, users, t0.Add(-time.Hour), store.CapScope{}, e3.ID)
	if err != nil || fmt.Sprint(got) != "map[u1:2 u3:1]" {
		t.Fatalf("global = %v, %v", got, err)
	}
	if got, _ := s.RecentPushes(ctx, users, t0.Add(30*time.Second), store.CapScope{}, e3.ID); fmt.Sprint(got) != "map[u1:1 u3:1]" {
		t.Errorf("since t0+30s = %v", got)
	}
	if got, _ := s.RecentPushes(ctx, users, t0.Add(-time.Hour), store.CapScope{AutomationID: a1.ID}, e3.ID); fmt.Sprint(got) != "map[u1:1]" {
		t.Errorf("automation scope = %v", got)
	}
	if got, _ := s.RecentPushes(ctx, users, t0.Add(-time.Hour), store.CapScope{Tag: "promo"}, e3.ID); fmt.Sprint(got) != "map[u1:1 u3:1]" {
		t.Errorf("tag scope = %v", got)
	}
	if got, _ := s.RecentPushes(ctx, users, t0.Add(-time.Hour), store.CapScope{Tag: "prom"}, e3.ID); len(got) != 0 {
		t.Errorf("a tag prefix matched: %v", got)
	}
	// The execution being sent does not count against itself.
	if got, _ := s.RecentPushes(ctx, users, t0.Add(-time.Hour), store.CapScope{}, e1.ID); fmt.Sprint(got) != "map[u1:1 u3:1]" {
		t.Errorf("excluding e1 = %v", got)
	}
	// Locking users works inside a transaction on both databases.
	if err := s.InTx(ctx, func(tx *store.Tx) error { return tx.LockUsers(ctx, []string{"u2", "u1", "u1"}) }); err != nil {
		t.Fatal(err)
	}
}

func testRateWindows(t *testing.T, s *store.Store) {
	ctx := context.Background()
	take := func(key string, w int64, limit, n int) int {
		var g int
		err := s.InTx(ctx, func(tx *store.Tx) error {
			var err error
			g, err = tx.TakeRate(ctx, key, w, limit, n)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	if g := take("k", 100, 10, 6); g != 6 {
		t.Fatalf("first take = %d", g)
	}
	if g := take("k", 100, 10, 6); g != 4 {
		t.Fatalf("second take = %d; want the 4 left", g)
	}
	if g := take("k", 100, 10, 1); g != 0 {
		t.Fatalf("third take = %d; want 0", g)
	}
	if g := take("k", 101, 10, 3); g != 3 {
		t.Fatalf("next second = %d", g)
	}
	if g := take("other", 100, 10, 3); g != 3 {
		t.Fatalf("another key = %d", g)
	}
	if err := s.GiveBackRate(ctx, "k", 100, 2); err != nil {
		t.Fatal(err)
	}
	if g := take("k", 100, 10, 5); g != 2 {
		t.Fatalf("after give back = %d; want 2", g)
	}
	// Concurrent takers never exceed the limit together.
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var g int
			err := s.InTx(ctx, func(tx *store.Tx) error {
				var err error
				g, err = tx.TakeRate(ctx, "c", 7, 25, 7)
				return err
			})
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			total += g
			mu.Unlock()
		}()
	}
	wg.Wait()
	if total != 25 {
		t.Fatalf("8 concurrent takers got %d; want exactly the limit 25", total)
	}
	if err := s.PruneRates(ctx, 101); err != nil {
		t.Fatal(err)
	}
}

func testInstances(t *testing.T, s *store.Store) {
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		if err := s.RegisterInstance(ctx, store.Instance{ID: id, Host: "h", PID: 7, Version: "v1", StartedAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if lost, err := s.Heartbeat(ctx, "a", t0.Add(time.Minute)); lost || err != nil {
		t.Fatalf("heartbeat a: %v %v", lost, err)
	}
	if err := s.StopInstance(ctx, "c", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	live, err := s.LiveInstances(ctx)
	if err != nil || len(live) != 2 || live[0].ID != "a" || live[0].Beats != 1 || live[1].ID != "b" || live[1].Beats != 0 {
		t.Fatalf("live = %+v, %v; want a (1 beat) and b (0); c stopped", live, err)
	}
	// A beat since the observation wins over the takeover.
	if _, err := s.Heartbeat(ctx, "a", t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.MarkLost(ctx, "a", 1, t0.Add(time.Minute)); ok {
		t.Fatal("a was marked lost although it beat")
	}
	// Only one instance wins the takeover.
	if ok, err := s.MarkLost(ctx, "b", 0, t0.Add(time.Minute)); !ok || err != nil {
		t.Fatalf("mark lost: %v %v", ok, err)
	}
	if ok, _ := s.MarkLost(ctx, "b", 0, t0.Add(time.Minute)); ok {
		t.Fatal("b marked lost twice")
	}
	// A lost instance learns it at its next heartbeat, until it registers
	// again.
	if lost, _ := s.Heartbeat(ctx, "b", t0.Add(2*time.Minute)); !lost {
		t.Fatal("b's heartbeat did not report it lost")
	}
	if err := s.RegisterInstance(ctx, store.Instance{ID: "b", Host: "h", PID: 8, StartedAt: t0.Add(2 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if lost, _ := s.Heartbeat(ctx, "b", t0.Add(3*time.Minute)); lost {
		t.Fatal("b still lost after registering again")
	}
	all, err := s.Instances(ctx)
	if err != nil || len(all) != 3 || all[0].ID != "b" || all[0].PID != 8 || all[0].LostAt != nil || all[2].StoppedAt == nil || all[2].ID != "c" {
		t.Fatalf("instances = %+v, %v", all, err)
	}
}

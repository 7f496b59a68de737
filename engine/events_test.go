package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/postgres"
	"github.com/pushblaster/pushblaster/store"
)

// feedSetup is setup with the live event feed configured before start.
func feedSetup(t *testing.T, dialect string, eo engine.EventOptions, opts ...option) *bundle {
	t.Helper()
	db := testdb.New(t, dialect)
	b := &bundle{t: t, db: db, store: db.Store, clock: fakeclock.New(t0), sender: newRecordingSender()}
	b.eng = b.newEngine(t, db.Store, opts...)
	b.eng.Events().Configure(eo)
	b.start(b.eng)
	return b
}

// fastFeed polls often, so that tests wait less.
var fastFeed = engine.EventOptions{PollInterval: 20 * time.Millisecond}

// feedAutomation is an automation id no engine uses: the tests' own
// events carry it, and subscriptions filter on it.
const feedAutomation = 424242

func insertEvent(t *testing.T, q interface {
	InsertEvent(context.Context, *pb.Event) error
}, automationID int64, msg string) *pb.Event {
	t.Helper()
	ev := &pb.Event{At: t0, AutomationID: automationID, Type: pb.EventLog, Message: msg}
	if err := q.InsertEvent(context.Background(), ev); err != nil {
		t.Fatalf("insert event %q: %v", msg, err)
	}
	return ev
}

// next receives the next event of a subscription, failing after a
// generous deadline.
func next(t *testing.T, ch <-chan *pb.Event, what string) *pb.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("waiting for %s: the subscription ended", what)
		}
		return ev
	case <-time.After(60 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	return nil
}

// nothingQueued fails if the subscription has an event waiting.
func nothingQueued(t *testing.T, ch <-chan *pb.Event, why string) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("%s, yet event %d %q was delivered", why, ev.ID, ev.Message)
		}
		t.Fatalf("%s, yet the subscription ended", why)
	default:
	}
}

func subscribe(t *testing.T, h *engine.EventHub, f pb.EventFilter, buffer int) (<-chan *pb.Event, int64, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, w, err := h.Subscribe(ctx, f, buffer)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	return ch, w, cancel
}

func forAutomation(id int64) pb.EventFilter { return pb.EventFilter{AutomationID: &id} }

// TestEventFeedWaitsForLateCommits: on PostgreSQL, transaction 1 takes
// event id N and transaction 2 takes N+1 and commits first. The feed sees
// N+1 but must not publish it (a client resuming from N+1 would lose N
// for good): it holds it back until N commits, then publishes N, N+1 in
// order. The watermark given to subscribers never passes N meanwhile.
func TestEventFeedWaitsForLateCommits(t *testing.T) {
	t.Parallel()
	// A gap timeout far beyond the test: only the commit can release N.
	b := feedSetup(t, "postgres", engine.EventOptions{PollInterval: 20 * time.Millisecond, GapTimeout: time.Hour})
	h := b.eng.Events()
	ch, _, _ := subscribe(t, h, forAutomation(feedAutomation), 16)

	inserted, release, committed := make(chan *pb.Event), make(chan struct{}), make(chan error, 1)
	go func() {
		committed <- b.store.InTx(context.Background(), func(tx *store.Tx) error {
			ev := &pb.Event{At: t0, AutomationID: feedAutomation, Type: pb.EventLog, Message: "late"}
			if err := tx.InsertEvent(context.Background(), ev); err != nil {
				close(inserted)
				return err
			}
			inserted <- ev
			<-release
			return nil
		})
	}()
	late := <-inserted
	if late == nil {
		t.Fatalf("transaction 1 failed: %v", <-committed)
	}
	var early *pb.Event
	if err := b.store.InTx(context.Background(), func(tx *store.Tx) error {
		early = insertEvent(t, tx, feedAutomation, "early")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if early.ID <= late.ID {
		t.Fatalf("ids %d then %d: the sequence did not order them", late.ID, early.ID)
	}
	waitFor(t, "the feed to read the early commit", func() (bool, string) {
		st := h.Stats()
		return st.Seen >= early.ID, fmt.Sprintf("%+v", st)
	})
	st := h.Stats()
	if st.Published >= late.ID || st.Missing < 1 || st.Held < 1 {
		t.Fatalf("with id %d uncommitted and %d visible, the feed stands at %+v; want it held below %d", late.ID, early.ID, st, late.ID)
	}
	nothingQueued(t, ch, fmt.Sprintf("id %d is not committed", late.ID))
	// A subscriber joining now replays up to the watermark: below N.
	if _, w, _ := subscribe(t, h, pb.EventFilter{}, 4); w >= late.ID {
		t.Fatalf("watermark %d passes the uncommitted id %d", w, late.ID)
	}

	close(release)
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	if got := next(t, ch, "the late event"); got.ID != late.ID || got.Message != "late" {
		t.Fatalf("first event %d %q, want %d late", got.ID, got.Message, late.ID)
	}
	if got := next(t, ch, "the early event"); got.ID != early.ID || got.Message != "early" {
		t.Fatalf("second event %d %q, want %d early", got.ID, got.Message, early.ID)
	}
	waitFor(t, "the watermark to pass both", func() (bool, string) {
		st := h.Stats()
		return st.Published >= early.ID && st.Missing == 0 && st.Held == 0, fmt.Sprintf("%+v", st)
	})
	if st := h.Stats(); st.GivenUp != 0 {
		t.Errorf("the feed gave up %d ids; none was rolled back", st.GivenUp)
	}
	nothingQueued(t, ch, "both events were delivered")
}

// TestEventFeedGoesPastRolledBackIDs: an id taken by a transaction that
// rolls back never appears. On PostgreSQL the feed learns that from the
// snapshot horizon (every transaction that could hold it has ended), long
// before the gap timeout (an hour here).
func TestEventFeedGoesPastRolledBackIDs(t *testing.T) {
	t.Parallel()
	b := feedSetup(t, "postgres", engine.EventOptions{PollInterval: 20 * time.Millisecond, GapTimeout: time.Hour})
	h := b.eng.Events()
	ch, _, _ := subscribe(t, h, forAutomation(feedAutomation), 16)

	inserted, release, done := make(chan int64), make(chan struct{}), make(chan error, 1)
	errRollback := errors.New("roll back")
	go func() {
		done <- b.store.InTx(context.Background(), func(tx *store.Tx) error {
			ev := &pb.Event{At: t0, AutomationID: feedAutomation, Type: pb.EventLog, Message: "rolled back"}
			if err := tx.InsertEvent(context.Background(), ev); err != nil {
				close(inserted)
				return err
			}
			inserted <- ev.ID
			<-release
			return errRollback
		})
	}()
	lost := <-inserted
	after := insertEvent(t, b.store, feedAutomation, "after")
	waitFor(t, "the feed to read the event after the gap", func() (bool, string) {
		st := h.Stats()
		return st.Seen >= after.ID, fmt.Sprintf("%+v", st)
	})
	nothingQueued(t, ch, fmt.Sprintf("id %d is still in flight", lost))
	close(release)
	if err := <-done; !errors.Is(err, errRollback) {
		t.Fatalf("transaction 1: %v", err)
	}
	if got := next(t, ch, "the event after the rolled-back id"); got.ID != after.ID {
		t.Fatalf("got event %d %q, want %d", got.ID, got.Message, after.ID)
	}
	if st := h.Stats(); st.GivenUp < 1 {
		t.Errorf("stats %+v: the rolled-back id is not counted as given up", st)
	}
}

// TestEventFeedGapTimeout: an id that never appears is waited for at most
// GapTimeout, then streams go past it. (SQLite commits in id order, so
// the hole is made by hand.)
func TestEventFeedGapTimeout(t *testing.T) {
	t.Parallel()
	b := feedSetup(t, "sqlite", engine.EventOptions{PollInterval: 10 * time.Millisecond, GapTimeout: 200 * time.Millisecond})
	h := b.eng.Events()
	ch, _, _ := subscribe(t, h, forAutomation(feedAutomation), 16)
	first := insertEvent(t, b.store, feedAutomation, "first")
	if got := next(t, ch, "the first event"); got.ID != first.ID {
		t.Fatalf("got %d, want %d", got.ID, first.ID)
	}
	hole := first.ID + 1
	if _, err := b.store.Conn().Exec(context.Background(),
		`INSERT INTO events (id, at, automation_id, type, phase, message) VALUES ($1, $2, $3, 'log', '', 'after the hole')`,
		hole+1, store.Canon(t0), feedAutomation); err != nil {
		t.Fatal(err)
	}
	got := next(t, ch, "the event after the hole")
	if got.ID != hole+1 || got.Message != "after the hole" {
		t.Fatalf("got %d %q, want %d", got.ID, got.Message, hole+1)
	}
	if st := h.Stats(); st.GivenUp != 1 || st.Missing != 0 {
		t.Errorf("stats %+v: want exactly the one id given up", st)
	}
}

// TestEventFeedAcrossInstances: an event stored by one engine reaches the
// subscribers of another engine on the same PostgreSQL database.
func TestEventFeedAcrossInstances(t *testing.T) {
	t.Parallel()
	b := feedSetup(t, "postgres", fastFeed)
	st2 := store.New(postgres.NewConn(b.db.Reopen(t)))
	eng2 := b.newEngine(t, st2)
	eng2.Events().Configure(fastFeed)
	b.start(eng2)

	ch, _, _ := subscribe(t, eng2.Events(), pb.EventFilter{}, 64)
	a := b.create(automation("made-on-one")) // records an event on engine 1
	for {
		ev := next(t, ch, "engine 1's event on engine 2")
		if ev.AutomationID == a.ID {
			break
		}
	}
	ev := insertEvent(t, b.store, feedAutomation, "stored through engine 1's store")
	for {
		got := next(t, ch, "the stored event on engine 2")
		if got.ID == ev.ID {
			break
		}
	}
}

// TestEventFeedSlowSubscriberIsCutOff: a subscriber that does not read
// fills its buffer and is cut off with a reconnect event; the feed and the
// other subscribers go on.
func TestEventFeedSlowSubscriberIsCutOff(t *testing.T) {
	t.Parallel()
	b := feedSetup(t, "sqlite", fastFeed)
	h := b.eng.Events()
	slow, _, _ := subscribe(t, h, forAutomation(feedAutomation), 3)
	fast, _, _ := subscribe(t, h, forAutomation(feedAutomation), 100)
	var ids []int64
	for i := range 10 {
		ids = append(ids, insertEvent(t, b.store, feedAutomation, fmt.Sprint("event ", i)).ID)
	}
	for _, id := range ids {
		if got := next(t, fast, "the fast subscriber's events"); got.ID != id {
			t.Fatalf("fast subscriber got %d, want %d", got.ID, id)
		}
	}
	waitFor(t, "the slow subscriber to be cut off", func() (bool, string) {
		n := h.Subscribers()
		return n == 1, fmt.Sprintf("%d subscribers", n)
	})
	var got []int64
	var last *pb.Event
	for ev := range slow {
		if ev.ID == 0 {
			last = ev
			continue
		}
		got = append(got, ev.ID)
	}
	if fmt.Sprint(got) != fmt.Sprint(ids[:3]) {
		t.Errorf("slow subscriber got %v, want the first 3 of %v", got, ids)
	}
	if last == nil || last.Type != engine.EventReconnect || last.Message == "" {
		t.Fatalf("the slow subscriber's last event is %+v, want a reconnect event saying why", last)
	}
}

// TestEventFeedScopesAndUnsubscribe: a subscription gets only its
// execution's or automation's events, and ends when its context does.
func TestEventFeedScopesAndUnsubscribe(t *testing.T) {
	t.Parallel()
	b := feedSetup(t, "sqlite", fastFeed)
	h := b.eng.Events()
	exA, exB := int64(9001), int64(9002)
	byExec, _, _ := subscribe(t, h, pb.EventFilter{ExecutionID: &exA}, 16)
	byAuto, _, _ := subscribe(t, h, forAutomation(feedAutomation), 16)
	all, _, cancelAll := subscribe(t, h, pb.EventFilter{}, 64)
	put := func(auto, ex int64, msg string) int64 {
		ev := &pb.Event{At: t0, AutomationID: auto, ExecutionID: ex, Type: pb.EventLog, Message: msg}
		if err := b.store.InsertEvent(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		return ev.ID
	}
	a1 := put(feedAutomation, exA, "A1")
	b1 := put(feedAutomation, exB, "B1")
	o1 := put(feedAutomation+1, 0, "other automation")
	a2 := put(feedAutomation, exA, "A2")
	for _, want := range []int64{a1, a2} {
		if got := next(t, byExec, "execution A's events"); got.ID != want {
			t.Fatalf("execution subscriber got %d %q, want %d", got.ID, got.Message, want)
		}
	}
	for _, want := range []int64{a1, b1, a2} {
		if got := next(t, byAuto, "the automation's events"); got.ID != want {
			t.Fatalf("automation subscriber got %d %q, want %d", got.ID, got.Message, want)
		}
	}
	seen := map[int64]bool{}
	for len(seen) < 4 {
		ev := next(t, all, "every event")
		if ev.ID == a1 || ev.ID == b1 || ev.ID == o1 || ev.ID == a2 {
			seen[ev.ID] = true
		}
	}
	nothingQueued(t, byExec, "execution A has no more events")

	before := h.Subscribers()
	cancelAll()
	waitFor(t, "the cancelled subscription to go", func() (bool, string) {
		return h.Subscribers() == before-1, fmt.Sprintf("%d subscribers", h.Subscribers())
	})
	for range all { // closed, without a reconnect event
	}
}

// TestEventFeedStop: stopping ends every subscription with a reconnect
// event, and no one can subscribe to a stopped feed.
func TestEventFeedStop(t *testing.T) {
	t.Parallel()
	b := feedSetup(t, "sqlite", fastFeed)
	h := b.eng.Events()
	ch, _, _ := subscribe(t, h, pb.EventFilter{}, 4)
	h.Stop()
	h.Stop() // twice is fine: serve stops it on shutdown, then the engine does
	var last *pb.Event
	for ev := range ch {
		last = ev
	}
	if last == nil || last.Type != engine.EventReconnect {
		t.Fatalf("last event %+v, want a reconnect event", last)
	}
	if _, _, err := h.Subscribe(context.Background(), pb.EventFilter{}, 4); pb.ErrorKind(err) != pb.KindConflict {
		t.Fatalf("subscribe to a stopped feed: %v, want a conflict", err)
	}
	if n := h.Subscribers(); n != 0 {
		t.Fatalf("%d subscribers after stop", n)
	}
}

// TestProgressEvents: a live send records progress events from the
// ledger, at most one per execution per second (of the progress clock):
// with time standing still only the first round's; with a second passing
// per push, one per round.
func TestProgressEvents(t *testing.T) {
	t.Parallel()
	clock := fakeclock.New(t0)
	b := feedSetup(t, "sqlite", engine.EventOptions{PollInterval: 20 * time.Millisecond, ProgressClock: clock},
		func(c *engine.Config) { c.SendChunkSize = 1 })
	progress := func(a *pb.Automation) []*pb.Event {
		t.Helper()
		ex, err := b.eng.RunAutomation(context.Background(), a.ID, pb.RunParams{})
		if err != nil {
			t.Fatal(err)
		}
		b.waitStatus(ex.ID, pb.StatusCompleted)
		evs, err := b.store.ListEvents(context.Background(), pb.EventFilter{ExecutionID: &ex.ID})
		if err != nil {
			t.Fatal(err)
		}
		var out []*pb.Event
		for _, ev := range evs {
			if ev.Type == pb.EventProgress {
				out = append(out, ev)
			}
		}
		return out
	}
	data := func(ev *pb.Event, k string) int {
		n, _ := strconv.Atoi(ev.Data[k])
		return n
	}

	a := automation("still")
	a.LeadTime = pb.DurationOf(0)
	a.Audience.Recipients = recipients("s", 5)
	evs := progress(b.create(a))
	if len(evs) != 1 {
		t.Fatalf("with the clock standing still: %d progress events, want 1", len(evs))
	}
	if ev := evs[0]; ev.Phase != pb.PhaseLiveSend || data(ev, "total") != 5 || data(ev, "done") != 1 || data(ev, "sent") != 1 || data(ev, "failed") != 0 {
		t.Errorf("progress event %q %v", ev.Message, ev.Data)
	}

	b.sender.setScript(func(pb.Push) (pb.SendResult, bool) {
		clock.Advance(time.Second)
		return pb.SendResult{}, false
	})
	a = automation("ticking")
	a.LeadTime = pb.DurationOf(0)
	a.Audience.Recipients = recipients("k", 5)
	evs = progress(b.create(a))
	if len(evs) != 5 {
		t.Fatalf("with a second per push: %d progress events, want one per round (5)", len(evs))
	}
	for i, ev := range evs {
		if data(ev, "done") != i+1 || data(ev, "total") != 5 || data(ev, "sent") != i+1 {
			t.Errorf("progress event %d: %q %v", i, ev.Message, ev.Data)
		}
	}
}

// TestEventFeedLocalEventsAtOnce: an event this instance stores reaches
// live streams at once, not at the next poll (here an hour away); one that
// another instance stored meanwhile comes along, in id order.
func TestEventFeedLocalEventsAtOnce(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := feedSetup(t, dialect, engine.EventOptions{PollInterval: time.Hour})
		ch, _, _ := subscribe(t, b.eng.Events(), forAutomation(feedAutomation), 16)
		other := insertEvent(t, b.store, feedAutomation, "stored by another instance")
		local := &pb.Event{AutomationID: feedAutomation, Type: pb.EventLog, Message: "stored here"}
		b.eng.RecordEvent(context.Background(), local)
		if ev := next(t, ch, "the other instance's event"); ev.ID != other.ID {
			t.Fatalf("first event %d %q, want %d", ev.ID, ev.Message, other.ID)
		}
		if ev := next(t, ch, "the local event"); ev.ID != local.ID || ev.Message != "stored here" {
			t.Fatalf("second event %d %q, want %d", ev.ID, ev.Message, local.ID)
		}
	})
}

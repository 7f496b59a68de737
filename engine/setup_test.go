package engine_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/store"
)

// bundle is one engine on a fresh database with a clock the test moves.
type bundle struct {
	t      *testing.T
	db     *testdb.DB
	store  *store.Store
	clock  *fakeclock.Clock
	eng    *engine.Engine
	sender *recordingSender
	// pools maps a store the test opened itself (e.g. through a proxy)
	// to its pool, for River.
	pools map[*store.Store]*pgxpool.Pool
}

// t0 is 08:00 Berlin on a Monday.
var t0 = time.Date(2026, 6, 1, 6, 0, 0, 0, time.UTC)

type option func(*engine.Config)

func setup(t *testing.T, dialect string, opts ...option) *bundle {
	t.Helper()
	db := testdb.New(t, dialect)
	b := &bundle{t: t, db: db, store: db.Store, clock: fakeclock.New(t0), sender: newRecordingSender()}
	b.eng = b.newEngine(t, db.Store, opts...)
	b.start(b.eng)
	return b
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("PUSHBLASTER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newEngine builds an engine on st sharing the bundle's clock and sender.
func (b *bundle) newEngine(t *testing.T, st *store.Store, opts ...option) *engine.Engine {
	t.Helper()
	cfg := engine.Config{
		Clock:        b.clock,
		Logger:       testLogger(t),
		TickInterval: 50 * time.Millisecond,
		PollInterval: 20 * time.Millisecond,
		Senders:      map[string]pb.Sender{"record": b.sender},
		// Rounds of 500: the send tests count pushes in rounds.
		SendChunkSize: 500,
		// River's own rescuer measures job age with the real clock: with
		// the test's clock months behind, it would rescue (and reschedule
		// into the real present) every running job. Takeovers in tests
		// come from the instance heartbeats instead.
		RescueAfter: 50 * 365 * 24 * time.Hour,
	}
	for _, o := range opts {
		o(&cfg)
	}
	var (
		eng *engine.Engine
		err error
	)
	if b.db.Pool != nil {
		pool := b.db.Pool
		if p, ok := b.pools[st]; ok {
			pool = p
		} else if st != b.db.Store {
			pool = b.db.Reopen(t)
		}
		eng, err = engine.New(st, riverpgxv5.New(pool), cfg)
	} else {
		eng, err = engine.New(st, riversqlite.New(b.db.SQLite.DB), cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

func (b *bundle) start(eng *engine.Engine) {
	b.t.Helper()
	if err := eng.Start(context.Background()); err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = eng.Stop(ctx)
	})
}

// automation returns a valid definition sending to users u1..u3 with the
// recording sender, at 09:30 Berlin daily with a 30-minute lead time.
func automation(name string) *pb.Automation {
	return &pb.Automation{
		Name:         name,
		Schedule:     pb.Schedule{Cron: "30 9 * * *", Timezone: "Europe/Berlin"},
		Audience:     pb.Audience{Type: pb.AudienceStatic, Recipients: recipients("u", 3)},
		TestAudience: []pb.Recipient{{UserID: "tester", Token: "tester-token"}},
		Message:      pb.Message{Title: "Hi", Body: "there"},
		Delivery:     pb.Delivery{Provider: "record"},
	}
}

func recipients(prefix string, n int) []pb.Recipient {
	out := make([]pb.Recipient, n)
	for i := range out {
		out[i] = pb.Recipient{UserID: fmt.Sprintf("%s%d", prefix, i+1), Token: fmt.Sprintf("%s-token-%d", prefix, i+1)}
	}
	return out
}

func (b *bundle) create(a *pb.Automation) *pb.Automation {
	b.t.Helper()
	got, err := b.eng.CreateAutomation(context.Background(), a)
	if err != nil {
		b.t.Fatalf("create automation: %v", err)
	}
	return got
}

func (b *bundle) execution(id int64) *pb.Execution {
	b.t.Helper()
	ex, err := b.store.GetExecution(context.Background(), id, false)
	if err != nil {
		b.t.Fatalf("get execution %d: %v", id, err)
	}
	return ex
}

func (b *bundle) executions(automationID int64) []*pb.Execution {
	b.t.Helper()
	list, err := b.store.ListExecutions(context.Background(), pb.ExecutionFilter{AutomationID: &automationID, Limit: 1000})
	if err != nil {
		b.t.Fatal(err)
	}
	return list
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline with the last state described by describe.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ok, desc := cond()
		if ok {
			return
		}
		last = desc
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last state: %s", what, last)
}

// waitStatus waits until execution id has status st (and its phase p has
// status ps, if p is set).
func (b *bundle) waitStatus(id int64, st pb.ExecutionStatus) *pb.Execution {
	b.t.Helper()
	var ex *pb.Execution
	waitFor(b.t, fmt.Sprintf("execution %d %s", id, st), func() (bool, string) {
		ex = b.execution(id)
		return ex.Status == st, describe(ex)
	})
	return ex
}

// waitPhase waits until phase p of execution id has status ps.
func (b *bundle) waitPhase(id int64, p pb.Phase, ps pb.PhaseStatus) *pb.Execution {
	b.t.Helper()
	var ex *pb.Execution
	waitFor(b.t, fmt.Sprintf("execution %d phase %s %s", id, p, ps), func() (bool, string) {
		ex = b.execution(id)
		return ex.PhaseRecord(p).Status == ps, describe(ex)
	})
	return ex
}

// waitExecutions waits until automation id has n executions.
func (b *bundle) waitExecutions(id int64, n int) []*pb.Execution {
	b.t.Helper()
	var list []*pb.Execution
	waitFor(b.t, fmt.Sprintf("%d executions of automation %d", n, id), func() (bool, string) {
		list = b.executions(id)
		return len(list) >= n, fmt.Sprintf("%d executions", len(list))
	})
	return list
}

func describe(ex *pb.Execution) string {
	s := fmt.Sprintf("#%d %s phase=%s reason=%q", ex.ID, ex.Status, ex.Phase, ex.Reason)
	for _, p := range ex.Phases {
		s += fmt.Sprintf(" %s:%s", p.Phase, p.Status)
		if p.Note != "" {
			s += fmt.Sprintf("(%s)", p.Note)
		}
	}
	if ex.Error != nil {
		s += " error=" + ex.Error.Error()
	}
	return s
}

// recordingSender records every push, so tests can prove who got what and
// that nobody got anything twice. Block makes sends wait until released.
type recordingSender struct {
	mu      sync.Mutex
	sent    map[string]int // user/token → pushes received
	titles  map[string][]string
	calls   int
	block   chan struct{} // when non-nil, Send waits for it to close
	entered chan struct{} // receives once per Send call that blocks
	fail    error
	// script, when set, answers pushes it returns true for (those do
	// not count as received).
	script func(p pb.Push) (pb.SendResult, bool)
}

func newRecordingSender() *recordingSender {
	return &recordingSender{sent: map[string]int{}, titles: map[string][]string{}}
}

func (s *recordingSender) Send(ctx context.Context, ps []pb.Push) []pb.SendResult {
	s.mu.Lock()
	block, entered, fail, script := s.block, s.entered, s.fail, s.script
	s.calls++
	s.mu.Unlock()
	out := make([]pb.SendResult, len(ps))
	if block != nil {
		if entered != nil {
			entered <- struct{}{}
		}
		select {
		case <-block:
		case <-ctx.Done():
			// The requests were in flight: nobody knows if they arrived.
			for i := range out {
				out[i] = pb.SendResult{State: pb.DeliveryUnknown, Attempts: 1, Err: pb.ProviderError(pb.CodeNetwork, "stopped in flight")}
			}
			return out
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range ps {
		r := p.Recipient
		if fail != nil {
			out[i] = pb.SendResult{State: pb.DeliveryFailed, Attempts: 1, Err: pb.AsError(fail)}
			continue
		}
		if script != nil {
			if res, ok := script(p); ok {
				out[i] = res
				continue
			}
		}
		s.sent[r.UserID+"/"+r.Token]++
		s.titles[r.UserID] = append(s.titles[r.UserID], p.Message.Title)
		out[i] = pb.SendResult{State: pb.DeliverySent, Attempts: 1}
	}
	return out
}

func (s *recordingSender) count(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, v := range s.sent {
		if len(k) > len(user) && k[:len(user)+1] == user+"/" {
			n += v
		}
	}
	return n
}

func (s *recordingSender) titlesOf(user string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.titles[user]...)
}

// hold makes every Send wait until the returned release func is called;
// entered receives one value per Send that started waiting.
func (s *recordingSender) hold() (entered <-chan struct{}, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	block, ent := make(chan struct{}), make(chan struct{}, 100)
	s.block, s.entered = block, ent
	var once sync.Once
	return ent, func() {
		once.Do(func() {
			s.mu.Lock()
			s.block, s.entered = nil, nil
			s.mu.Unlock()
			close(block)
		})
	}
}

func (s *recordingSender) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, v := range s.sent {
		n += v
	}
	return n
}

func (s *recordingSender) duplicates() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k, v := range s.sent {
		if v > 1 {
			out = append(out, fmt.Sprintf("%s×%d", k, v))
		}
	}
	return out
}

func forEachDialect(t *testing.T, fn func(t *testing.T, dialect string)) {
	for _, d := range testdb.Dialects {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			fn(t, d)
		})
	}
}

func ptr[T any](v T) *T { return &v }

func berlin(y int, m time.Month, d, h, min int) time.Time {
	loc, _ := time.LoadLocation("Europe/Berlin")
	return time.Date(y, m, d, h, min, 0, 0, loc)
}

// stopMidSend runs a 1,200-recipient automation to its live send, lets the
// first batch of 500 out, and stops the engine (shutdown timeout passing)
// while the second batch is in flight. It returns the execution.
func (b *bundle) stopMidSend(name string, edit ...func(*pb.Automation)) (*pb.Execution, time.Time) {
	b.t.Helper()
	a := automation(name)
	a.Audience.Recipients = recipients("u", 1200)
	for _, fn := range edit {
		fn(a)
	}
	ex, release := b.heldAtSend(a)
	release()
	entered, release := b.sender.hold()
	<-entered
	stopCtx, cancel := context.WithTimeout(b.t.Context(), 200*time.Millisecond)
	defer cancel()
	_ = b.eng.Stop(stopCtx)
	release()
	return ex, berlin(2026, 6, 1, 9, 30)
}

// heldAtSend creates a, runs it to the send time of 09:30 Berlin on June 1
// and returns once its first live round is at the provider, which holds it
// until release (called at the end of the test too).
func (b *bundle) heldAtSend(a *pb.Automation) (*pb.Execution, func()) {
	b.t.Helper()
	a = b.create(a)
	send := berlin(2026, 6, 1, 9, 30)
	b.clock.Set(send.Add(-30 * time.Minute))
	ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
	entered, release := b.sender.hold()
	b.t.Cleanup(release)
	b.clock.Set(send)
	<-entered
	return ex, release
}

// setScript sets the sender's script (see recordingSender.script).
func (s *recordingSender) setScript(fn func(p pb.Push) (pb.SendResult, bool)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.script = fn
}

// letOthersThrough keeps the Sends already held waiting but lets later
// ones through.
func (s *recordingSender) letOthersThrough() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.block, s.entered = nil, nil
}

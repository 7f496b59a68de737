package engine_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/cadence/cadencetest"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/store"
	"github.com/riverqueue/river/riverdriver/riversqlite"
)

// runOnce creates a and runs its first execution to the end (09:30 Berlin
// on day d of June 2026), returning the final execution.
func (b *bundle) runOnce(a *pb.Automation, day int) *pb.Execution {
	b.t.Helper()
	send := berlin(2026, 6, day, 9, 30)
	b.clock.Set(send.Add(-30 * time.Minute))
	ex := b.executionAt(a.ID, send)
	b.waitPhase(ex.ID, pb.PhaseWindow, pb.PhaseRunning)
	b.clock.Set(send)
	// Time moves on while the test looks, so that retries come due.
	waitFor(b.t, "the end of the execution", func() (bool, string) {
		cur := b.execution(ex.ID)
		if cur.PhaseRecord(pb.PhaseCleanup).Status == pb.PhaseCompleted {
			ex = cur
			return true, ""
		}
		b.clock.Advance(time.Second)
		return false, describe(cur)
	})
	return ex
}

// executionAt waits for automation id's execution for send time sendAt.
func (b *bundle) executionAt(id int64, sendAt time.Time) *pb.Execution {
	b.t.Helper()
	var ex *pb.Execution
	waitFor(b.t, "the execution of "+sendAt.String(), func() (bool, string) {
		for _, e := range b.executions(id) {
			if e.SendAt.Equal(sendAt) {
				ex = e
				return true, ""
			}
		}
		return false, fmt.Sprint(len(b.executions(id)), " executions")
	})
	return ex
}

func (b *bundle) ledger(id int64) map[string]store.DeliveryRow {
	b.t.Helper()
	rows, err := b.store.Deliveries(b.t.Context(), id, store.DeliveryFilter{Audience: "live"})
	if err != nil {
		b.t.Fatal(err)
	}
	out := map[string]store.DeliveryRow{}
	for _, r := range rows {
		out[r.UserID] = r
	}
	return out
}

// TestTemplatesRenderPerRecipient: every recipient gets the message
// rendered with their own data.
func TestTemplatesRenderPerRecipient(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := automation("personal")
		a.Message.Title = `Hi {{default "there" .first_name}}`
		a.Message.Body = `{{if .code}}code {{slice .code 0 4}}{{end}}`
		a.Audience.Recipients = []pb.Recipient{{UserID: "u1", Token: "t1", Data: map[string]string{"first_name": "Anna", "code": "ABCDEF"}},
			{UserID: "u2", Token: "t2"}, {UserID: "u3", Token: "t3", Data: map[string]string{"code": "AB"}}}
		ex := b.runOnce(b.create(a), 1)
		if ex.Status != pb.StatusCompleted || fmt.Sprint(b.sender.titlesOf("u1"), b.sender.titlesOf("u2")) != "[Hi Anna] [Hi there]" {
			t.Fatalf("%s titles %v %v", describe(ex), b.sender.titlesOf("u1"), b.sender.titlesOf("u2"))
		}
		// A template that fails for one recipient's data fails that push
		// only, without a request.
		if r := b.ledger(ex.ID)["u3"]; r.State != pb.DeliveryFailed || r.Code != pb.CodeTemplate || r.Attempts != 0 ||
			!strings.Contains(r.Reason, "message.body") || b.sender.count("u3") != 0 || ex.Metrics[pb.MetricSent] != 2 {
			t.Errorf("u3 = %+v, metrics %v", r, ex.Metrics)
		}
	})
}

// TestInvalidTokensNeverSentAgain: a token the provider calls invalid is
// recorded, and the next send does not contact the provider for it.
func TestInvalidTokensNeverSentAgain(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		b.sender.setScript(func(p pb.Push) (pb.SendResult, bool) {
			if p.Recipient.Token == "u-token-2" {
				return pb.SendResult{State: pb.DeliveryInvalidToken, Attempts: 1, Err: pb.ProviderError(pb.CodeUnregistered, "UNREGISTERED")}, true
			}
			return pb.SendResult{}, false
		})
		a := b.create(automation("cleanup"))
		ex := b.runOnce(a, 1)
		if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricInvalidToken] != 1 || ex.Metrics[pb.MetricSent] != 2 {
			t.Fatalf("first send: %s %v", describe(ex), ex.Metrics)
		}
		known, err := b.store.InvalidTokens(t.Context(), store.InvalidTokenFilter{})
		if err != nil || len(known) != 1 || known[0].UserID != "u2" || known[0].Provider != "record" || known[0].ExecutionID != ex.ID {
			t.Fatalf("invalid tokens = %+v, %v", known, err)
		}
		b.sender.setScript(nil)
		callsBefore := b.sender.count("u2")
		ex2 := b.runOnce(a, 2)
		if ex2.Metrics[pb.MetricInvalidToken] != 1 || ex2.Metrics[pb.MetricSent] != 2 || b.sender.count("u2") != callsBefore {
			t.Fatalf("second send: %v; u2 received %d (before %d)", ex2.Metrics, b.sender.count("u2"), callsBefore)
		}
		if r := b.ledger(ex2.ID)["u2"]; r.State != pb.DeliveryInvalidToken || r.Attempts != 0 || !strings.Contains(r.Reason, "recorded invalid") {
			t.Errorf("u2 ledger row = %+v", r)
		}
	})
}

// TestCircuitBreaker: when most requests fail the send stops after the
// minimum number of attempts; the counts are kept and the execution fails
// as external.
func TestCircuitBreaker(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect, func(c *engine.Config) { c.SendChunkSize = 40; c.SendBatchSize = 200 })
		b.sender.setScript(func(p pb.Push) (pb.SendResult, bool) {
			return pb.SendResult{State: pb.DeliveryFailed, Attempts: 5, Err: pb.ProviderError(pb.CodeUnavailable, "UNAVAILABLE after 5 attempts")}, true
		})
		a := automation("broken")
		a.Audience.Recipients = recipients("u", 1000)
		ex := b.runOnce(b.create(a), 1)
		if ex.Status != pb.StatusFailed || ex.Error == nil || ex.Error.Kind != pb.KindExternal || pb.ErrorCode(ex.Error) != "circuit_breaker" ||
			!strings.Contains(ex.Error.Message, "max_error_ratio 0.20") {
			t.Fatalf("%s; want failed by the circuit breaker", describe(ex))
		}
		failed := ex.Metrics[pb.MetricFailed]
		if failed < pb.BreakerMinAttempts || failed >= 1000 || ex.Metrics[pb.MetricSent] != 0 {
			t.Fatalf("metrics %v; want at least %d failed and the send stopped well before 1000", ex.Metrics, pb.BreakerMinAttempts)
		}
		if ex.PhaseRecord(pb.PhaseLiveSend).Status != pb.PhaseFailed {
			t.Errorf("live send phase: %s", describe(ex))
		}
		// The ledger agrees with the metrics, with the provider's code.
		rows := b.ledger(ex.ID)
		if int64(len(rows)) != failed {
			t.Errorf("ledger has %d rows, metrics say %d failed", len(rows), failed)
		}
		for _, r := range rows {
			if r.Code != pb.CodeUnavailable || r.Attempts != 5 {
				t.Fatalf("ledger row %+v; want code unavailable after 5 attempts", r)
			}
		}
	})
}

// TestBreakerToleratesFewFailures: 10% failures stay under the default
// ratio; the send completes and the failures are counted.
func TestBreakerToleratesFewFailures(t *testing.T) {
	t.Parallel()
	b := setup(t, "sqlite", func(c *engine.Config) { c.SendChunkSize = 50 })
	b.sender.setScript(func(p pb.Push) (pb.SendResult, bool) {
		if strings.HasSuffix(p.Recipient.UserID, "0") {
			return pb.SendResult{State: pb.DeliveryFailed, Attempts: 1, Err: pb.ProviderError(pb.CodeInvalidArgument, "INVALID_ARGUMENT")}, true
		}
		return pb.SendResult{}, false
	})
	a := automation("flaky")
	a.Audience.Recipients = recipients("u", 500)
	ex := b.runOnce(b.create(a), 1)
	if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricFailed] != 50 || ex.Metrics[pb.MetricSent] != 450 {
		t.Fatalf("%s %v", describe(ex), ex.Metrics)
	}
}

// TestFrequencyCapsAcrossAutomations: a global cap counts pushes of every
// automation; an automation-scoped cap only its own.
func TestFrequencyCapsAcrossAutomations(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		first := automation("first")
		first.Audience.Recipients = recipients("u", 5)
		first = b.create(first)
		second := automation("second")
		second.Schedule.Cron = "45 9 * * *"
		second.Audience.Recipients = recipients("u", 8) // u6..u8 got nothing today
		second.FrequencyCaps = []pb.FrequencyCap{{Max: 1, Per: "24h"}}
		second.CatchupWindow = pb.DurationOf(time.Hour) // the clock jumps
		second = b.create(second)
		third := automation("third")
		third.Schedule.Cron = "50 9 * * *"
		third.Audience.Recipients = recipients("u", 2)
		third.FrequencyCaps = []pb.FrequencyCap{{Max: 1, Per: "24h", Scope: "automation"}}
		third.CatchupWindow = pb.DurationOf(time.Hour)
		third = b.create(third)

		if ex := b.runOnce(first, 1); ex.Metrics[pb.MetricSent] != 5 {
			t.Fatalf("first: %v", ex.Metrics)
		}
		send := berlin(2026, 6, 1, 9, 45)
		b.clock.Set(send)
		ex := b.waitPhase(b.waitExecutions(second.ID, 1)[0].ID, pb.PhaseCleanup, pb.PhaseCompleted)
		if ex.Metrics[pb.MetricCapped] != 5 || ex.Metrics[pb.MetricSent] != 3 {
			t.Fatalf("second: %s %v; want 5 capped, 3 sent", describe(ex), ex.Metrics)
		}
		for u, r := range b.ledger(ex.ID) {
			capped := u <= "u5"
			if capped != (r.State == pb.DeliveryCapped) || (capped && !strings.Contains(r.Reason, "max 1 per 24h (global)")) {
				t.Errorf("%s: %+v", u, r)
			}
		}
		for i := 1; i <= 8; i++ {
			if n := b.sender.count(fmt.Sprintf("u%d", i)); n != 1 {
				t.Errorf("u%d got %d pushes; want 1", i, n)
			}
		}
		// An automation-scoped cap ignores the other automations' pushes.
		b.clock.Set(berlin(2026, 6, 1, 9, 50))
		ex3 := b.waitPhase(b.waitExecutions(third.ID, 1)[0].ID, pb.PhaseCleanup, pb.PhaseCompleted)
		if ex3.Metrics[pb.MetricSent] != 2 || ex3.Metrics[pb.MetricCapped] != 0 {
			t.Fatalf("third: %v", ex3.Metrics)
		}
		// Two days later the cap has expired for the second automation
		// (the others are paused, so theirs are the only pushes).
		for _, id := range []int64{first.ID, third.ID} {
			if _, err := b.eng.SetPaused(t.Context(), id, true); err != nil {
				t.Fatal(err)
			}
		}
		b.clock.Set(berlin(2026, 6, 3, 9, 45))
		ex = b.waitPhase(b.executionAt(second.ID, berlin(2026, 6, 3, 9, 45)).ID, pb.PhaseCleanup, pb.PhaseCompleted)
		if ex.Metrics[pb.MetricSent] != 8 {
			t.Errorf("second, two days later: %s %v", describe(ex), ex.Metrics)
		}
	})
}

// TestCadenceService: the service's answer decides who is sent; a slow or
// failing service is handled as on_error says, and never silently.
func TestCadenceService(t *testing.T) {
	t.Parallel()
	cases := []struct {
		onError string
		fail    func(s *cadencetest.Server)
		check   func(t *testing.T, ex *pb.Execution)
	}{
		{"fail", nil, func(t *testing.T, ex *pb.Execution) {
			if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 2 || ex.Metrics[pb.MetricCapped] != 2 {
				t.Errorf("healthy service: %s %v", describe(ex), ex.Metrics)
			}
		}},
		{"fail", func(s *cadencetest.Server) { s.SetDelay(time.Hour) }, func(t *testing.T, ex *pb.Execution) {
			if ex.Status != pb.StatusFailed || ex.Error == nil || ex.Error.Kind != pb.KindExternal || ex.Metrics[pb.MetricSent] != 0 {
				t.Errorf("slow service, on_error fail: %s %v", describe(ex), ex.Metrics)
			}
		}},
		{"send_all", func(s *cadencetest.Server) { s.SetFailure(503, "down") }, func(t *testing.T, ex *pb.Execution) {
			if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 4 {
				t.Errorf("failing service, send_all: %s %v", describe(ex), ex.Metrics)
			}
		}},
		{"skip_all", func(s *cadencetest.Server) { s.SetDelay(time.Hour) }, func(t *testing.T, ex *pb.Execution) {
			if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 0 || ex.Metrics[pb.MetricCapped] != 4 {
				t.Errorf("slow service, skip_all: %s %v", describe(ex), ex.Metrics)
			}
		}},
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("%s-%d", c.onError, i), func(t *testing.T) {
			t.Parallel()
			srv := cadencetest.NewServer()
			defer srv.Close()
			srv.SetRule(func(u string) (bool, string) { return u == "u1" || u == "u3", "2 pushes this week" })
			if c.fail != nil {
				c.fail(srv)
			}
			b := setup(t, "sqlite")
			a := automation("cadenced")
			a.Audience.Recipients = recipients("u", 4)
			a.Cadence = &pb.Cadence{URL: srv.URL, Timeout: "100ms", OnError: c.onError}
			ex := b.runOnce(b.create(a), 1)
			c.check(t, ex)
			if c.fail != nil && c.onError != "fail" {
				// A fallback is never silent: an error event says so.
				evs, err := b.eng.ListEvents(t.Context(), pb.EventFilter{ExecutionID: &ex.ID})
				if err != nil {
					t.Fatal(err)
				}
				found := false
				for _, ev := range evs {
					found = found || (ev.Type == pb.EventError && strings.Contains(ev.Message, "on_error "+c.onError))
				}
				if !found {
					t.Errorf("no error event names the fallback %s", c.onError)
				}
			}
			if c.fail == nil {
				if r := b.ledger(ex.ID)["u2"]; r.State != pb.DeliveryCapped || !strings.Contains(r.Reason, "2 pushes this week") {
					t.Errorf("u2 = %+v", r)
				}
				reqs := srv.Requests()
				if len(reqs) == 0 || reqs[0].Automation != "cadenced" || reqs[0].ExecutionID != ex.ID || len(reqs[0].UserIDs) != 4 {
					t.Errorf("requests = %+v", reqs)
				}
			}
		})
	}
}

// TestOnUnknownResend: with on_unknown resend, the recipients in flight at
// a stop are sent again by the engine that resumes (at most one duplicate,
// never a miss).
func TestOnUnknownResend(t *testing.T) {
	t.Parallel()
	b := setup(t, "sqlite")
	ex, send := b.stopMidSend("resend", func(a *pb.Automation) { a.Delivery.OnUnknown = pb.OnUnknownResend })

	eng2 := b.newEngine(t, b.store)
	b.start(eng2)
	b.clock.Set(send.Add(time.Minute))
	ex = b.waitStatus(ex.ID, pb.StatusCompleted)
	if ex.Metrics[pb.MetricSent] != 1200 || ex.Metrics[pb.MetricUnknown] != 0 {
		t.Fatalf("metrics %v; want all 1200 sent, none unknown", ex.Metrics)
	}
	// Nobody is missed, and at most the in-flight round got it twice.
	twice := 0
	for i := 1; i <= 1200; i++ {
		switch n := b.sender.count(fmt.Sprintf("u%d", i)); n {
		case 1:
		case 2:
			twice++
		default:
			t.Fatalf("u%d got %d pushes", i, n)
		}
	}
	if twice > 500 {
		t.Errorf("%d recipients got the push twice; at most the 500 in flight may", twice)
	}
}

// TestRateLimitAcrossEngines: two engines on one PostgreSQL share one
// automation's rate limit: no second ever grants more than the limit.
func TestRateLimitAcrossEngines(t *testing.T) {
	t.Parallel()
	small := func(c *engine.Config) { c.SendChunkSize = 20; c.SendBatchSize = 60 }
	b := setup(t, "postgres", small)
	eng2 := b.newEngine(t, b.store, small)
	b.start(eng2)
	a := automation("throttled")
	a.Delivery.RatePerSecond = 50
	a.Audience.Recipients = recipients("u", 400)
	a = b.create(a)
	send := berlin(2026, 6, 1, 9, 30)
	b.clock.Set(send.Add(-30 * time.Minute))
	ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
	b.clock.Set(send)
	// Time moves on only while the test looks: each look is a new second.
	waitFor(t, "the throttled send", func() (bool, string) {
		cur := b.execution(ex.ID)
		if cur.Status.Final() {
			return true, ""
		}
		b.clock.Advance(time.Second)
		return false, describe(cur)
	})
	ex = b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
	if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 400 {
		t.Fatalf("%s %v", describe(ex), ex.Metrics)
	}
	rows, err := b.db.Pool.Query(t.Context(), `SELECT window_start, used FROM rate_windows WHERE key = $1 ORDER BY window_start`, fmt.Sprintf("automation:%d", a.ID))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var windows, total int64
	for rows.Next() {
		var w, used int64
		if err := rows.Scan(&w, &used); err != nil {
			t.Fatal(err)
		}
		if used > 50 {
			t.Errorf("second %d granted %d sends; the limit is 50", w, used)
		}
		windows++
		total += used
	}
	if total < 400 || windows < 8 {
		t.Errorf("%d sends granted over %d seconds; want at least 400 over at least 8", total, windows)
	}
	if d := b.sender.duplicates(); len(d) > 0 {
		t.Errorf("duplicates: %v", d)
	}
}

// TestLostInstanceIsTakenOver: an instance that stops beating mid-send (as
// if killed) is declared lost by another, which resumes its batch at once:
// the recipients it had in flight are unknown, the rest are sent by the
// other instance, nobody gets the push twice.
func TestLostInstanceIsTakenOver(t *testing.T) {
	t.Parallel()
	fast := func(c *engine.Config) {
		c.HeartbeatInterval = 20 * time.Millisecond
		c.LostAfter = 100 * time.Millisecond
	}
	b := setup(t, "postgres", fast)
	a := automation("takeover")
	a.Audience.Recipients = recipients("u", 1200)
	ex, release := b.heldAtSend(a) // the first 500 are in flight on the first engine
	engine.FreezeHeartbeat(b.eng)
	// The frozen engine's River still fetches: if it takes the resumed
	// batch itself, that run must not hang on the held request.
	b.sender.letOthersThrough()

	other := newRecordingSender()
	eng2 := b.newEngine(t, b.store, fast, func(c *engine.Config) { c.Senders = map[string]pb.Sender{"record": other} })
	b.start(eng2)
	ex = b.waitStatus(ex.ID, pb.StatusCompleted)
	if ex.Metrics[pb.MetricSent] != 700 || ex.Metrics[pb.MetricUnknown] != 500 {
		t.Fatalf("metrics %v; want 700 sent by the survivor, 500 unknown", ex.Metrics)
	}
	release() // the frozen instance's requests come back: they did arrive
	waitFor(t, "the frozen engine's round to end", func() (bool, string) {
		return b.sender.total()+other.total() == 1201, fmt.Sprint(b.sender.total() + other.total())
	})
	for i := 1; i <= 1200; i++ {
		u := fmt.Sprintf("u%d", i)
		if n := b.sender.count(u) + other.count(u); n != 1 {
			t.Fatalf("%s got %d pushes", u, n)
		}
	}
	evs, err := eng2.ListEvents(t.Context(), pb.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range evs {
		found = found || (strings.Contains(ev.Message, b.eng.InstanceID()+" ") && strings.Contains(ev.Message, "lost"))
	}
	if !found {
		t.Errorf("no event says instance %s was lost", b.eng.InstanceID())
	}
}

// TestHungProviderHoldsUpOnlyItsOwnSends: rounds in flight are limited
// per provider, so a provider that hangs does not hold up the sends of
// another provider on the same instance.
func TestHungProviderHoldsUpOnlyItsOwnSends(t *testing.T) {
	t.Parallel()
	other := newRecordingSender()
	b := setup(t, "sqlite", func(c *engine.Config) {
		c.SendRoundsInFlight = 1
		c.Senders["other"] = other
	})
	hung := b.create(automation("hung"))
	fine := automation("fine")
	fine.Delivery.Provider = "other"
	fine.Schedule.Cron = "31 9 * * *" // a minute after the hung one
	fine = b.create(fine)
	send := berlin(2026, 6, 1, 9, 30)
	b.clock.Set(send.Add(-29 * time.Minute))
	exHung := b.waitPhase(b.waitExecutions(hung.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
	exFine := b.waitPhase(b.waitExecutions(fine.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
	entered, release := b.sender.hold()
	defer release()
	b.clock.Set(send)
	<-entered // the hung provider's round holds its only slot
	b.clock.Set(send.Add(time.Minute))
	exFine = b.waitStatus(exFine.ID, pb.StatusCompleted)
	if exFine.Metrics[pb.MetricSent] != 3 || other.count("u1") != 1 {
		t.Fatalf("the other provider's send: %s %v", describe(exFine), exFine.Metrics)
	}
	release()
	if ex := b.waitStatus(exHung.ID, pb.StatusCompleted); ex.Metrics[pb.MetricSent] != 3 {
		t.Fatalf("the hung provider's send after release: %s %v", describe(ex), ex.Metrics)
	}
}

// TestRateHoldsAfterASlowProvider: a round takes its share of the rate
// limit only once it has its provider's slot, so rounds that waited for a
// slow provider do not all go out in the second it recovers.
func TestRateHoldsAfterASlowProvider(t *testing.T) {
	t.Parallel()
	b := setup(t, "sqlite", func(c *engine.Config) {
		c.SendRoundsInFlight, c.SendBatchSize, c.SendChunkSize = 1, 1, 1
		c.SendWorkers = 8 // every batch runs, waiting for the one slot
	})
	a := automation("slow-provider")
	a.Delivery.RatePerSecond = 3
	a.Audience.Recipients = recipients("u", 8)
	a.TestAudience = nil
	ex, release := b.heldAtSend(a) // the first round is at the provider, which hangs
	waitFor(t, "all 8 batches running", func() (bool, string) {
		var n int
		err := b.store.Conn().QueryRow(t.Context(), `SELECT count(*) FROM river_job WHERE state = 'running' AND kind = 'pushblaster.send_batch'`).Scan(&n)
		return err == nil && n == 8, fmt.Sprintf("%d running (%v)", n, err)
	})
	for range 3 { // the provider hangs for three seconds
		b.clock.Advance(time.Second)
	}
	release()
	// The clock stands still while each step is checked: the hung round's
	// push, then 3 in this second; 3 in the next; the last one after.
	for i, want := range []int{4, 7, 8} {
		waitFor(t, fmt.Sprintf("%d pushes", want), func() (bool, string) {
			got := b.sender.total()
			if got > want {
				t.Fatalf("%d pushes reached the provider within one second of a rate of 3/s (want at most %d so far)", got, want)
			}
			return got == want, fmt.Sprintf("%d pushes", got)
		})
		if i < 2 {
			b.clock.Advance(time.Second)
		}
	}
	if ex = b.waitStatus(ex.ID, pb.StatusCompleted); ex.Metrics[pb.MetricSent] != 8 {
		t.Fatalf("%s %v", describe(ex), ex.Metrics)
	}
}

// TestProgressMidSend: a look at a running live send shows what its
// batches did so far, by outcome (sent, failed, invalid token, held back
// as invalid), without counting the ledger; at the end the metrics are
// the ledger's, and the batches' counts agree with it exactly.
func TestProgressMidSend(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		// Known invalid before the send: held back at the claim.
		if err := b.store.AddInvalidTokens(t.Context(), []store.InvalidToken{
			{Token: "u-token-3", Provider: "record", UserID: "u3", CreatedAt: t0},
			{Token: "u-token-13", Provider: "record", UserID: "u13", CreatedAt: t0},
		}); err != nil {
			t.Fatal(err)
		}
		b.sender.setScript(func(p pb.Push) (pb.SendResult, bool) {
			var n int
			fmt.Sscanf(p.Recipient.UserID, "u%d", &n)
			switch n % 10 {
			case 1:
				return pb.SendResult{State: pb.DeliveryFailed, Attempts: 1, Err: pb.ProviderError(pb.CodeInvalidArgument, "INVALID_ARGUMENT")}, true
			case 2:
				return pb.SendResult{State: pb.DeliveryInvalidToken, Attempts: 1, Err: pb.ProviderError(pb.CodeUnregistered, "UNREGISTERED")}, true
			}
			return pb.SendResult{}, false
		})
		a := automation("progress")
		a.Audience.Recipients = recipients("u", 1200) // three batches of 500, 500, 200
		ex, release := b.heldAtSend(a)
		release()
		entered, release2 := b.sender.hold()
		defer release2()
		<-entered // batch 1 is done, batch 2's first round is at the provider

		// Batch 1, users 1-500: 50 failed (n%10 == 1), 50 invalid at the
		// provider (n%10 == 2) and 2 held back, 398 sent.
		got, err := b.eng.GetExecution(t.Context(), ex.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int64{pb.MetricSent: 398, pb.MetricFailed: 50, pb.MetricInvalidToken: 52, pb.MetricCapped: 0, pb.MetricUnknown: 0}
		for k, v := range want {
			if got.Metrics[k] != v {
				t.Errorf("mid-send %s = %d, want %d (metrics %v)", k, got.Metrics[k], v, got.Metrics)
			}
		}
		release2()
		ex = b.waitStatus(ex.ID, pb.StatusCompleted)
		want = map[string]int64{pb.MetricSent: 958, pb.MetricFailed: 120, pb.MetricInvalidToken: 122, pb.MetricCapped: 0, pb.MetricUnknown: 0}
		for k, v := range want {
			if ex.Metrics[k] != v {
				t.Errorf("final %s = %d, want %d (metrics %v)", k, ex.Metrics[k], v, ex.Metrics)
			}
		}
		batches, _, err := b.store.LiveCounts(t.Context(), ex.ID)
		if err != nil {
			t.Fatal(err)
		}
		ledger, err := b.store.DeliveryCounts(t.Context(), ex.ID, store.AudienceLive)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range []pb.DeliveryState{pb.DeliverySent, pb.DeliveryFailed, pb.DeliveryInvalidToken, pb.DeliveryCapped, pb.DeliveryUnknown} {
			if batches[st] != ledger[st] {
				t.Errorf("%s: batches count %d, the ledger %d", st, batches[st], ledger[st])
			}
		}
	})
}

// limitedSender is a sender that says how many pushes it sends at once.
type limitedSender struct {
	*recordingSender
	max int
}

func (s limitedSender) MaxInFlight() int { return s.max }

// TestRoundsInFlightFollowTheProvider: by default each provider gets the
// rounds that keep its own in-flight limit busy, plus one, so that no
// claimed push waits in a queue (where a crash would make it unknown).
func TestRoundsInFlightFollowTheProvider(t *testing.T) {
	t.Parallel()
	b := setup(t, "sqlite", func(c *engine.Config) {
		c.SendChunkSize = 250
		c.Senders["fcm-like"] = limitedSender{newRecordingSender(), 1000}
		c.Senders["apns-like"] = limitedSender{newRecordingSender(), 500}
		c.Senders["one"] = limitedSender{newRecordingSender(), 1}
		c.Senders["silent"] = newRecordingSender()
	})
	for provider, want := range map[string]int{"fcm-like": 5, "apns-like": 3, "one": 2, "silent": 5, pb.ProviderLog: 5} {
		if got := b.eng.RoundsInFlight(provider); got != want {
			t.Errorf("%s: %d rounds in flight, want %d", provider, got, want)
		}
	}
	set := setup(t, "sqlite", func(c *engine.Config) {
		c.SendRoundsInFlight = 7
		c.Senders["apns-like"] = limitedSender{newRecordingSender(), 500}
	})
	if got := set.eng.RoundsInFlight("apns-like"); got != 7 {
		t.Errorf("with SendRoundsInFlight 7: %d", got)
	}
}

// TestBigSendDoesNotHoldUpOtherPhases: a live send's batch jobs run in
// their provider's own queue, so while a send fills every worker it has
// (here its provider hangs), another automation's phases still run, and
// so does its send through another provider.
func TestBigSendDoesNotHoldUpOtherPhases(t *testing.T) {
	t.Parallel()
	other := newRecordingSender()
	b := setup(t, "sqlite", func(c *engine.Config) {
		c.MaxWorkers, c.SendWorkers = 2, 2
		c.SendBatchSize, c.SendChunkSize = 1, 1
		c.Senders["other"] = other
	})
	big := automation("big")
	big.Audience.Recipients = recipients("u", 10) // ten batches
	big.TestAudience = nil
	exBig, release := b.heldAtSend(big) // 09:30: a batch is at the provider, which hangs
	<-b.sender.entered                  // and a second: every send worker of its provider is busy
	small := automation("small")
	small.Schedule.Cron = "31 9 * * *"
	small.LeadTime = pb.DurationOf(0) // its audience phase is due at 09:31, during the big send
	small.Delivery.Provider = "other"
	small = b.create(small)
	b.clock.Set(berlin(2026, 6, 1, 9, 31))
	exSmall := b.waitStatus(b.waitExecutions(small.ID, 1)[0].ID, pb.StatusCompleted)
	if exSmall.Metrics[pb.MetricSent] != 3 || other.count("u1") != 1 {
		t.Fatalf("the other automation: %s %v", describe(exSmall), exSmall.Metrics)
	}
	release()
	if ex := b.waitStatus(exBig.ID, pb.StatusCompleted); ex.Metrics[pb.MetricSent] != 10 {
		t.Fatalf("the big send after release: %s %v", describe(ex), ex.Metrics)
	}
}

// TestProviderNameMustNameAQueue: a provider's name names the River queue
// of its sends, so a name River would refuse is a validation error at New
// that names the provider and the rule.
func TestProviderNameMustNameAQueue(t *testing.T) {
	t.Parallel()
	db := testdb.NewSQLite(t)
	for _, name := range []string{"Push Co", "fcm__eu", strings.Repeat("p", 60)} {
		_, err := engine.New(db.Store, riversqlite.New(db.SQLite.DB), engine.Config{
			Logger: testLogger(t), Senders: map[string]pb.Sender{name: newRecordingSender()}})
		if pb.ErrorKind(err) != pb.KindValidation || !strings.Contains(err.Error(), strconv.Quote(name)) || !strings.Contains(err.Error(), "lower-case letters and digits") {
			t.Errorf("provider %q: %v; want a validation error naming it and the rule", name, err)
		}
	}
}

package engine_test

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
)

// recordingObserver remembers what the engine reported.
type recordingObserver struct {
	mu       sync.Mutex
	finished map[pb.ExecutionStatus]int
	phases   map[string][]time.Duration // "phase/status" → durations
	sent     map[string]int             // "provider/audience/state"
	failed   map[string]int             // "provider/code"
	capped   map[string]int
	scripts  map[pb.ScriptOutcome]int
	errors   map[string]int // "kind/phase"
}

func newRecordingObserver() *recordingObserver {
	return &recordingObserver{finished: map[pb.ExecutionStatus]int{}, phases: map[string][]time.Duration{},
		sent: map[string]int{}, failed: map[string]int{}, capped: map[string]int{},
		scripts: map[pb.ScriptOutcome]int{}, errors: map[string]int{}}
}

func observed(o *recordingObserver) option { return func(c *engine.Config) { c.Observer = o } }

func (o *recordingObserver) ExecutionFinished(s pb.ExecutionStatus) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.finished[s]++
}

func (o *recordingObserver) PhaseEnded(p pb.Phase, s pb.PhaseStatus, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	k := string(p) + "/" + string(s)
	o.phases[k] = append(o.phases[k], d)
}

func (o *recordingObserver) Sent(provider, audience string, s pb.DeliveryState, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sent[provider+"/"+audience+"/"+string(s)] += n
}

func (o *recordingObserver) SendFailed(provider, code string, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failed[provider+"/"+code] += n
}

func (o *recordingObserver) Capped(reason string, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.capped[reason] += n
}

func (o *recordingObserver) ScriptEnded(outcome pb.ScriptOutcome, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.scripts[outcome]++
}

func (o *recordingObserver) ErrorRecorded(k pb.Kind, p pb.Phase) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.errors[string(k)+"/"+string(p)]++
}

// phaseCount is how many phase ends were reported.
func (o *recordingObserver) phaseCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, ds := range o.phases {
		n += len(ds)
	}
	return n
}

func (o *recordingObserver) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var phases []string
	for k, ds := range o.phases {
		phases = append(phases, fmt.Sprintf("%s×%d", k, len(ds)))
	}
	sort.Strings(phases)
	return fmt.Sprintf("finished %v phases %v sent %v failed %v capped %v scripts %v errors %v",
		o.finished, phases, o.sent, o.failed, o.capped, o.scripts, o.errors)
}

// waitObserved waits until cond holds: the observer hears of a commit just
// after it (and the test sees the store change), so tests wait on it.
func waitObserved(t *testing.T, o *recordingObserver, what string, cond func() bool) {
	t.Helper()
	waitFor(t, what, func() (bool, string) {
		o.mu.Lock()
		ok := cond()
		o.mu.Unlock()
		return ok, o.String()
	})
}

// runStill runs a's execution for 09:30 Berlin on day d of June 2026 to
// its end, holding the clock at the send time: unlike runOnce it never
// nudges the clock on, so that River never takes a slow batch for a stuck
// one and runs it twice (which would turn deliveries unknown).
func (b *bundle) runStill(a *pb.Automation, day int) *pb.Execution {
	b.t.Helper()
	send := berlin(2026, 6, day, 9, 30)
	b.clock.Set(send.Add(-30 * time.Minute))
	ex := b.executionAt(a.ID, send)
	b.waitPhase(ex.ID, pb.PhaseWindow, pb.PhaseRunning)
	b.clock.Set(send)
	return b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
}

// TestObserverHearsAnExecution: one execution reports each of its phases
// once, timed from its recorded start, and every delivery outcome once
// per state.
func TestObserverHearsAnExecution(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		obs := newRecordingObserver()
		b := setup(t, dialect, observed(obs))
		b.sender.setScript(func(p pb.Push) (pb.SendResult, bool) {
			switch p.Recipient.UserID {
			case "u2":
				return pb.SendResult{State: pb.DeliveryFailed, Attempts: 3, Err: pb.ProviderError(pb.CodeUnavailable, "UNAVAILABLE")}, true
			case "u3":
				return pb.SendResult{State: pb.DeliveryInvalidToken, Attempts: 1, Err: pb.ProviderError(pb.CodeUnregistered, "UNREGISTERED")}, true
			}
			return pb.SendResult{}, false
		})
		ex := b.runStill(b.create(automation("observed")), 1)
		if ex.Status != pb.StatusCompleted {
			t.Fatalf("%s", describe(ex))
		}
		waitObserved(t, obs, "five phase ends", func() bool { return len(obs.phases) == 5 })

		if got := obs.phaseCount(); got != 5 {
			t.Errorf("%d phase ends reported, want 5: %s", got, obs)
		}
		obs.mu.Lock()
		defer obs.mu.Unlock()
		for _, p := range pb.Phases {
			if ds := obs.phases[string(p)+"/completed"]; len(ds) != 1 || ds[0] < 0 {
				t.Errorf("phase %s: %v, want one completed end", p, ds)
			}
		}
		// The window opened when the test send ended (at the audience time)
		// and closed when the live send started, at the send time: 30
		// minutes later on the test clock.
		if d := obs.phases["window/completed"]; len(d) == 1 && d[0] != 30*time.Minute {
			t.Errorf("window lasted %s, want 30m", d[0])
		}
		want := map[string]int{"record/live/sent": 1, "record/live/failed": 1, "record/live/invalid_token": 1, "record/test/sent": 1}
		if fmt.Sprint(obs.sent) != fmt.Sprint(want) {
			t.Errorf("sent %v, want %v", obs.sent, want)
		}
		if fmt.Sprint(obs.failed) != fmt.Sprint(map[string]int{"record/unavailable": 1}) {
			t.Errorf("failures by code %v, want record/unavailable 1", obs.failed)
		}
		if fmt.Sprint(obs.finished) != fmt.Sprint(map[pb.ExecutionStatus]int{pb.StatusCompleted: 1}) {
			t.Errorf("finished %v, want completed 1", obs.finished)
		}
		if len(obs.errors)+len(obs.capped)+len(obs.scripts) != 0 {
			t.Errorf("nothing else happened, yet: %s", obs)
		}
	})
}

// TestObserverHearsHeldRecipients: recipients held back by a frequency cap
// or a token known to be invalid are reported as such, never as sends.
func TestObserverHearsHeldRecipients(t *testing.T) {
	t.Parallel()
	obs := newRecordingObserver()
	b := setup(t, "sqlite", observed(obs))
	b.sender.setScript(func(p pb.Push) (pb.SendResult, bool) {
		if p.Recipient.UserID == "u3" {
			return pb.SendResult{State: pb.DeliveryInvalidToken, Attempts: 1, Err: pb.ProviderError(pb.CodeUnregistered, "UNREGISTERED")}, true
		}
		return pb.SendResult{}, false
	})
	first := b.create(automation("first")) // u1, u2 get a push; u3's token is invalid
	second := automation("second")
	second.Schedule.Cron = "45 9 * * *"
	second.Audience.Recipients = recipients("u", 5)
	second.FrequencyCaps = []pb.FrequencyCap{{Max: 1, Per: "24h"}}
	second.CatchupWindow = pb.DurationOf(time.Hour)
	second = b.create(second)
	b.runStill(first, 1)
	b.clock.Set(berlin(2026, 6, 1, 9, 45))
	ex := b.waitPhase(b.waitExecutions(second.ID, 1)[0].ID, pb.PhaseCleanup, pb.PhaseCompleted)
	if ex.Metrics[pb.MetricCapped] != 2 || ex.Metrics[pb.MetricInvalidToken] != 1 || ex.Metrics[pb.MetricSent] != 2 {
		t.Fatalf("second: %v", ex.Metrics)
	}
	waitObserved(t, obs, "both executions finished", func() bool { return obs.finished[pb.StatusCompleted] == 2 })
	obs.mu.Lock()
	defer obs.mu.Unlock()
	// first: u1, u2 sent, u3 invalid (provider); second: u1, u2 capped,
	// u3 held as known invalid, u4, u5 sent. Both sent to their tester.
	want := map[string]int{"record/live/sent": 4, "record/live/invalid_token": 2, "record/live/capped": 2, "record/test/sent": 2}
	if fmt.Sprint(obs.sent) != fmt.Sprint(want) {
		t.Errorf("sent %v, want %v", obs.sent, want)
	}
	if fmt.Sprint(obs.capped) != fmt.Sprint(map[string]int{"frequency_cap": 2}) {
		t.Errorf("capped %v, want frequency_cap 2", obs.capped)
	}
}

// TestObserverHearsFailuresAndCancels: a failed phase reports its error,
// its end and the execution's status; a cancel in the window reports the
// window's end and the status.
func TestObserverHearsFailuresAndCancels(t *testing.T) {
	t.Parallel()
	obs := newRecordingObserver()
	b := setup(t, "sqlite", observed(obs))
	a := automation("too-big")
	a.Audience.MaxRecipients = 2
	a = b.create(a)
	b.clock.Set(berlin(2026, 6, 1, 9, 0))
	ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseCleanup, pb.PhaseCompleted)
	if ex.Status != pb.StatusFailed {
		t.Fatalf("%s; want failed by max_recipients", describe(ex))
	}
	waitObserved(t, obs, "the failure", func() bool { return obs.finished[pb.StatusFailed] == 1 && len(obs.phases["cleanup/completed"]) == 1 })
	obs.mu.Lock()
	if len(obs.phases["audience/failed"]) != 1 || obs.errors["validation/audience"] != 1 || len(obs.errors) != 1 {
		t.Errorf("after a failed audience: %s", obs)
	}
	obs.mu.Unlock()

	c := automation("cancelled")
	c.Schedule.Cron = "30 10 * * *"
	c = b.create(c)
	send := berlin(2026, 6, 1, 10, 30)
	b.clock.Set(send.Add(-30 * time.Minute))
	cex := b.waitPhase(b.executionAt(c.ID, send).ID, pb.PhaseWindow, pb.PhaseRunning)
	b.clock.Advance(10 * time.Minute)
	if _, err := b.eng.CancelExecution(t.Context(), cex.ID, pb.CancelParams{Reason: "typo"}); err != nil {
		t.Fatal(err)
	}
	waitObserved(t, obs, "the cancel", func() bool { return obs.finished[pb.StatusCancelled] == 1 })
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if d := obs.phases["window/cancelled"]; len(d) != 1 || d[0] != 10*time.Minute {
		t.Errorf("window cancelled after %v, want one end after 10m: %s", d, obs)
	}
	if len(obs.errors) != 1 {
		t.Errorf("a cancel is not an error, yet: %v", obs.errors)
	}
}

// TestObserverHearsScripts: every script run of an execution reports how
// it ended; a preview does not.
func TestObserverHearsScripts(t *testing.T) {
	t.Parallel()
	dir := scriptsDir(t, map[string]string{
		"ok.sh":    "echo user_id,token\necho u1,t1\n",
		"exit3.sh": "echo 'db: connection refused' >&2\nexit 3\n",
	})
	obs := newRecordingObserver()
	b := setup(t, "sqlite", withScripts(dir), observed(obs), func(c *engine.Config) { c.PhaseAttempts = 1 })
	ok := b.create(scriptAutomation("ok", "ok.sh"))
	if _, err := b.eng.PreviewAudience(t.Context(), ok.ID); err != nil {
		t.Fatal(err)
	}
	bad := scriptAutomation("bad", "exit3.sh")
	bad.Schedule.Cron = "30 9 * * *"
	bad = b.create(bad)
	if ex := b.fireNow(ok); ex.Status != pb.StatusCompleted {
		t.Fatalf("ok.sh: %s", describe(ex))
	}
	if ex := b.fireNow(bad); ex.Status != pb.StatusFailed {
		t.Fatalf("exit3.sh: %s", describe(ex))
	}
	waitObserved(t, obs, "two script runs", func() bool { return len(obs.scripts) == 2 })
	obs.mu.Lock()
	defer obs.mu.Unlock()
	want := map[pb.ScriptOutcome]int{pb.ScriptOK: 1, pb.ScriptExitError: 1}
	if fmt.Sprint(obs.scripts) != fmt.Sprint(want) {
		t.Errorf("scripts %v, want %v", obs.scripts, want)
	}
	if obs.errors["script/audience"] != 1 {
		t.Errorf("errors %v, want the script's", obs.errors)
	}
}

// A missed fire is a finished execution too.
func TestObserverHearsMissedFires(t *testing.T) {
	t.Parallel()
	obs := newRecordingObserver()
	b := setup(t, "sqlite", observed(obs))
	a := b.create(automation("late"))
	// Three days later, with no catch-up window: three fires missed, the
	// fourth (today's, still ahead) waits.
	b.clock.Set(berlin(2026, 6, 4, 8, 0))
	waitObserved(t, obs, "the missed fires", func() bool { return obs.finished[pb.StatusMissed] == 3 })
	for _, ex := range b.executions(a.ID) {
		if ex.Status != pb.StatusMissed {
			t.Errorf("%s", describe(ex))
		}
	}
	if s := obs.String(); strings.Contains(s, "completed") {
		t.Errorf("%s", s)
	}
}

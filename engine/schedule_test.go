package engine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/store"
)

// TestEditDuringExecution: an edit (new copy, new schedule) while an
// execution runs does not touch it: it finishes on its version; only future
// fires change.
func TestEditDuringExecution(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := automation("edited")
		a.Message.Title = "v1"
		a = b.create(a)
		send := berlin(2026, 6, 1, 9, 30)
		b.clock.Set(send.Add(-30 * time.Minute))
		ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)

		edit := automation("edited")
		edit.Message.Title = "v2"
		edit.Schedule.Cron = "0 18 * * *"
		updated, err := b.eng.UpdateAutomation(t.Context(), a.ID, edit)
		if err != nil {
			t.Fatal(err)
		}
		if updated.Version != 2 || !updated.NextSendAt.Equal(berlin(2026, 6, 1, 18, 0)) {
			t.Fatalf("updated: version %d next %v", updated.Version, updated.NextSendAt)
		}
		b.clock.Set(send)
		ex = b.waitStatus(ex.ID, pb.StatusCompleted)
		if ex.AutomationVersion != 1 {
			t.Errorf("running execution moved to version %d", ex.AutomationVersion)
		}
		if got := b.sender.titlesOf("u1"); fmt.Sprint(got) != "[v1]" {
			t.Errorf("u1 got %v, want [v1]: the running execution keeps its copy", got)
		}
		// The next fire follows the new schedule and copy.
		b.clock.Set(berlin(2026, 6, 1, 17, 30))
		next := b.waitExecutions(a.ID, 2)[0]
		if next.AutomationVersion != 2 || !next.SendAt.Equal(berlin(2026, 6, 1, 18, 0)) {
			t.Fatalf("next: %s version %d send %v", describe(next), next.AutomationVersion, next.SendAt)
		}
		b.waitPhase(next.ID, pb.PhaseWindow, pb.PhaseRunning)
		b.clock.Set(berlin(2026, 6, 1, 18, 0))
		b.waitStatus(next.ID, pb.StatusCompleted)
		if got := b.sender.titlesOf("u1"); fmt.Sprint(got) != "[v1 v2]" {
			t.Errorf("u1 got %v, want [v1 v2]", got)
		}
	})
}

// TestDeleteWithRunningExecution: refused without force; with force the
// execution is cancelled first and its history stays readable.
func TestDeleteWithRunningExecution(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := b.create(automation("doomed"))
		b.clock.Set(berlin(2026, 6, 1, 9, 0))
		ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
		err := b.eng.DeleteAutomation(t.Context(), a.ID, false)
		if pb.ErrorKind(err) != pb.KindConflict {
			t.Fatalf("delete: %v, want conflict", err)
		}
		if _, err := b.eng.GetAutomation(t.Context(), a.ID); err != nil {
			t.Fatalf("refused delete removed the automation: %v", err)
		}
		if err := b.eng.DeleteAutomation(t.Context(), a.ID, true); err != nil {
			t.Fatal(err)
		}
		ex = b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
		if ex.Status != pb.StatusCancelled {
			t.Errorf("execution after forced delete: %s", describe(ex))
		}
		if _, err := b.eng.GetAutomation(t.Context(), a.ID); pb.ErrorKind(err) != pb.KindNotFound {
			t.Errorf("get deleted: %v", err)
		}
		b.clock.Set(berlin(2026, 6, 1, 9, 30))
		if res, err := b.eng.Tick(t.Context()); err != nil || res.Fired != 0 {
			t.Errorf("deleted automation fired: %+v %v", res, err)
		}
		// The name is free again.
		b.create(automation("doomed"))
	})
}

// TestPauseResume: a paused automation does not fire; resuming schedules
// the next full timeline, without backfilling.
func TestPauseResume(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := b.create(automation("pausable"))
		p, err := b.eng.SetPaused(t.Context(), a.ID, true)
		if err != nil || !p.Paused || p.NextSendAt != nil {
			t.Fatalf("pause: %+v %v", p, err)
		}
		b.clock.Set(berlin(2026, 6, 3, 12, 0))
		if res, err := b.eng.Tick(t.Context()); err != nil || res != (engine.TickResult{}) {
			t.Fatalf("paused automation ticked: %+v %v", res, err)
		}
		r, err := b.eng.SetPaused(t.Context(), a.ID, false)
		if err != nil || r.Paused || !r.NextSendAt.Equal(berlin(2026, 6, 4, 9, 30)) {
			t.Fatalf("resume: %+v %v", r, err)
		}
		if list := b.executions(a.ID); len(list) != 0 {
			t.Errorf("paused days were recorded: %d executions", len(list))
		}
	})
}

// TestDST runs a fixed-hour and a wildcard-hour automation through both
// 2026 transitions in New York, executing every fire: cronie semantics.
func TestDST(t *testing.T) {
	t.Parallel()
	ny, _ := time.LoadLocation("America/New_York")
	cases := []struct {
		name, cron string
		from, to   time.Time
		want       []string
	}{
		{"spring fixed 02:30", "30 2 * * *", time.Date(2026, 3, 7, 0, 0, 0, 0, ny), time.Date(2026, 3, 9, 12, 0, 0, 0, ny),
			[]string{"2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"}},
		{"fall fixed 01:30", "30 1 * * *", time.Date(2026, 10, 31, 0, 0, 0, 0, ny), time.Date(2026, 11, 2, 12, 0, 0, 0, ny),
			[]string{"2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"}},
		{"fall hourly", "30 * * * *", time.Date(2026, 11, 1, 0, 0, 0, 0, ny), time.Date(2026, 11, 1, 2, 45, 0, 0, ny),
			[]string{"2026-11-01T00:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00", "2026-11-01T02:30:00-05:00"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			forEachDialect(t, func(t *testing.T, dialect string) {
				b := setup(t, dialect)
				b.clock.Set(c.from)
				a := automation("dst")
				a.Schedule = pb.Schedule{Cron: c.cron, Timezone: "America/New_York"}
				a.LeadTime = pb.DurationOf(0)
				a = b.create(a)
				// Step through time one fire at a time, finishing each.
				for i := 0; ; i++ {
					cur, _ := b.eng.GetAutomation(t.Context(), a.ID)
					if cur.NextSendAt == nil || cur.NextSendAt.After(c.to) {
						break
					}
					b.clock.Set(*cur.NextSendAt)
					list := b.waitExecutions(a.ID, i+1)
					b.waitStatus(list[0].ID, pb.StatusCompleted)
				}
				list := b.executions(a.ID)
				var got []string
				for j := len(list) - 1; j >= 0; j-- {
					got = append(got, list[j].SendAt.In(ny).Format(time.RFC3339))
				}
				if fmt.Sprint(got) != fmt.Sprint(c.want) {
					t.Fatalf("send times:\n got %v\nwant %v", got, c.want)
				}
				if n := b.sender.count("u1"); n != len(c.want) {
					t.Errorf("u1 got %d pushes, want %d", n, len(c.want))
				}
			})
		})
	}
}

// TestRestartMidExecution: an engine stops (its running job cancelled mid
// send); a new engine on the same database finishes the execution, and
// nobody gets a push twice.
func TestRestartMidExecution(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		ex, send := b.stopMidSend("restart")
		mid := b.execution(ex.ID)
		if mid.Status.Final() || mid.PhaseRecord(pb.PhaseLiveSend).Status != pb.PhaseRunning {
			t.Fatalf("after stop: %s", describe(mid))
		}

		// Second engine takes over. River retries the interrupted job after
		// its backoff: move the clock past it.
		eng2 := b.newEngine(t, b.store)
		b.start(eng2)
		b.clock.Set(send.Add(time.Minute))
		ex = b.waitStatus(ex.ID, pb.StatusCompleted)
		// The interrupted batch was finished by the new engine.
		bs, err := b.store.Batches(t.Context(), ex.ID)
		if err != nil || len(bs) != 1 || bs[0].State != store.BatchDone || bs[0].Instance != eng2.InstanceID() {
			t.Errorf("send batches = %+v, %v; want one, done by the new engine %s", bs, err, eng2.InstanceID())
		}
		if d := b.sender.duplicates(); len(d) > 0 {
			t.Fatalf("duplicate pushes: %v", d)
		}
		// 500 sent by the first engine, 500 unknown (in flight at the
		// stop), 200 sent by the second.
		if ex.Metrics[pb.MetricSent] != 700 || ex.Metrics["unknown"] != 500 {
			t.Errorf("metrics = %v; want sent 700, unknown 500", ex.Metrics)
		}
		if b.sender.total() != 701 {
			t.Errorf("sender delivered %d, want 701 (700 live + 1 test)", b.sender.total())
		}
	})
}

// TestReapplyKeepsPause: re-applying a definition that does not mention
// "paused" never resumes an automation paused in an emergency, and an
// unchanged definition makes no new version.
func TestReapplyKeepsPause(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		full, _ := json.Marshal(automation("gitops"))
		// A file in git that does not mention "paused".
		raw := strings.Replace(string(full), `,"paused":false`, "", 1)
		if strings.Contains(raw, "paused") {
			t.Fatalf("fixture still mentions paused: %s", raw)
		}
		decode := func(s string) *pb.Automation {
			a, err := pb.DecodeAutomation(strings.NewReader(s))
			if err != nil {
				t.Fatal(err)
			}
			return a
		}
		a, res, err := b.eng.ApplyAutomation(t.Context(), decode(string(raw)))
		if err != nil || res != pb.ApplyCreated {
			t.Fatalf("apply: %v %v", res, err)
		}
		if _, err := b.eng.SetPaused(t.Context(), a.ID, true); err != nil {
			t.Fatal(err)
		}
		again, res, err := b.eng.ApplyAutomation(t.Context(), decode(string(raw)))
		if err != nil || res != pb.ApplyUnchanged || !again.Paused || again.Version != 1 {
			t.Fatalf("re-apply: %v paused=%v version=%d %v", res, again.Paused, again.Version, err)
		}
		put, err := b.eng.UpdateAutomation(t.Context(), a.ID, decode(string(raw)))
		if err != nil || !put.Paused || put.Version != 1 {
			t.Fatalf("identical PUT: paused=%v version=%d %v", put.Paused, put.Version, err)
		}
		edited := strings.Replace(string(raw), `"title":"Hi"`, `"title":"Hello"`, 1)
		upd, res, err := b.eng.ApplyAutomation(t.Context(), decode(edited))
		if err != nil || res != pb.ApplyUpdated || !upd.Paused || upd.Version != 2 || upd.NextSendAt != nil {
			t.Fatalf("edit while paused: %v paused=%v version=%d next=%v %v", res, upd.Paused, upd.Version, upd.NextSendAt, err)
		}
		resume := strings.Replace(edited, `"name":`, `"paused":false,"name":`, 1)
		res2, _, err := b.eng.ApplyAutomation(t.Context(), decode(resume))
		if err != nil || res2.Paused || res2.NextSendAt == nil {
			t.Fatalf("explicit paused:false resumes: %+v %v", res2, err)
		}
	})
}

// TestManualRunQueueFull: with policy queue and the buffer full, a manual
// run is refused instead of recorded as skipped.
func TestManualRunQueueFull(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		b.clock.Set(ten.Add(-time.Minute))
		a := b.create(every10("queue", pb.OverlapQueue))
		_, release := b.startBlocked(a)
		defer release()
		if _, err := b.eng.RunAutomation(t.Context(), a.ID, pb.RunParams{SendAt: ptr(ten.Add(3 * time.Minute))}); err != nil {
			t.Fatalf("first manual run should queue: %v", err)
		}
		_, err := b.eng.RunAutomation(t.Context(), a.ID, pb.RunParams{SendAt: ptr(ten.Add(5 * time.Minute))})
		if pb.ErrorKind(err) != pb.KindConflict || !strings.Contains(err.Error(), "queue full") {
			t.Fatalf("second manual run: %v, want a queue-full conflict", err)
		}
	})
}

// TestFarManualRunKeepsSchedule: a manual run a week ahead does not push
// the daily schedule past it, even after a pause and resume.
func TestFarManualRunKeepsSchedule(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := b.create(automation("daily"))
		far := berlin(2026, 6, 8, 8, 0)
		if _, err := b.eng.RunAutomation(t.Context(), a.ID, pb.RunParams{SendAt: &far}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.eng.SetPaused(t.Context(), a.ID, true); err != nil {
			t.Fatal(err)
		}
		r, err := b.eng.SetPaused(t.Context(), a.ID, false)
		if err != nil || r.NextSendAt == nil || !r.NextSendAt.Equal(berlin(2026, 6, 1, 9, 30)) {
			t.Fatalf("after resume: next %v, %v; want today 09:30", r.NextSendAt, err)
		}
		// A manual run that took a scheduled send time is that fire.
		at := berlin(2026, 6, 2, 9, 30)
		manual, err := b.eng.RunAutomation(t.Context(), a.ID, pb.RunParams{SendAt: &at})
		if err != nil {
			t.Fatal(err)
		}
		b.clock.Set(berlin(2026, 6, 2, 9, 0))
		// The scheduler (its own ticks run too) passes that send time.
		waitFor(t, "the schedule past the manual run's send time", func() (bool, string) {
			if _, err := b.eng.Tick(t.Context()); err != nil {
				return false, err.Error()
			}
			cur, err := b.eng.GetAutomation(t.Context(), a.ID)
			if err != nil || cur.NextSendAt == nil {
				return false, fmt.Sprint(err)
			}
			return cur.NextSendAt.After(at), fmt.Sprintf("next send %v", cur.NextSendAt)
		})
		list := b.executions(a.ID)
		count := 0
		for _, ex := range list {
			if ex.SendAt.Equal(at) {
				count++
				if ex.ID != manual.ID {
					t.Errorf("a second execution for %v: %s", at, describe(ex))
				}
			}
		}
		if count != 1 {
			t.Errorf("%d executions for %v, want 1", count, at)
		}
	})
}

// TestGracefulStop: the context an engine was started with ending does not
// stop it (a signal context ends at SIGTERM); Stop lets a running send
// finish within its timeout instead of cancelling it.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		if err := b.eng.Stop(t.Context()); err != nil {
			t.Fatal(err)
		}
		eng := b.newEngine(t, b.store)
		startCtx, cancelStart := context.WithCancel(t.Context())
		if err := eng.Start(startCtx); err != nil {
			t.Fatal(err)
		}
		cancelStart() // like SIGTERM ending serve's signal context

		a := b.create(automation("graceful"))
		send := berlin(2026, 6, 1, 9, 30)
		b.clock.Set(send.Add(-30 * time.Minute))
		ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
		entered, release := b.sender.hold()
		b.clock.Set(send)
		<-entered
		stopped := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stopped <- eng.Stop(ctx)
		}()
		release()
		if err := <-stopped; err != nil {
			t.Fatal(err)
		}
		ex = b.execution(ex.ID)
		live := ex.PhaseRecord(pb.PhaseLiveSend)
		if ex.Status != pb.StatusCompleted || live.Attempt != 1 || ex.Metrics[pb.MetricSent] != 3 {
			t.Fatalf("after a graceful stop: %s attempt %d metrics %v", describe(ex), live.Attempt, ex.Metrics)
		}
	})
}

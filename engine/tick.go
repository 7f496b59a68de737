package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// tickLoop ticks every TickInterval until ctx ends. Every instance ticks:
// the per-automation row lock (SKIP LOCKED) and the unique send time make
// concurrent ticks safe, and no fire waits for a leader election (River's
// periodic jobs run on the leader only and pause while it changes).
func (e *Engine) tickLoop(ctx context.Context) {
	t := time.NewTicker(e.cfg.TickInterval)
	defer t.Stop()
	var failingSince time.Time
	var lastReport time.Time
	restored := false
	for {
		var err error
		if !restored {
			// The first pass is the start-up recovery (health.go).
			restored = e.restore(ctx)
			if !restored {
				err = errRestore
			}
		} else {
			_, err = e.Tick(ctx)
			e.noteTick(err)
		}
		switch {
		case err != nil && ctx.Err() == nil:
			// Tick logged it; say once in a while that it goes on.
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if time.Since(lastReport) > 30*time.Second {
				lastReport = time.Now()
				e.log.Error("scheduler cannot tick; fires wait (and run within their catch-up window once it can)",
					"event", "tick.failing", "since", failingSince, "error", err)
			}
		case err == nil && !failingSince.IsZero():
			e.log.Info("scheduler ticks again", "event", "tick.recovered", "failed_for", time.Since(failingSince).Round(time.Second).String())
			failingSince, lastReport = time.Time{}, time.Time{}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// errRestore stands for a failed start-up recovery (restore logged why).
var errRestore = errors.New("start-up recovery failed")

// TickResult counts what a tick did.
type TickResult struct {
	Fired, Skipped, Queued, Missed, Failed int
}

// tickBatch bounds the automations one tick fires; the rest wait for the
// next tick, a second later.
const tickBatch = 1000

// tickWorkers is how many fires a tick runs at once on PostgreSQL.
const tickWorkers = 4

// Tick fires every due automation: for each, in one transaction, it applies
// the catch-up and overlap policies, records the execution, advances the
// schedule and enqueues the first phase. Any number of instances may tick
// at once; the unique send time makes each fire happen once.
func (e *Engine) Tick(ctx context.Context) (TickResult, error) {
	var res TickResult
	now := e.now()
	ids, err := e.store.DueAutomationIDs(ctx, now, tickBatch)
	if err != nil {
		if ctx.Err() == nil {
			e.log.Error("tick: cannot read due automations", "event", "tick.error", "error", err)
		}
		return res, err
	}
	// Fires are independent transactions: on PostgreSQL several run at
	// once (SQLite has one connection, so one at a time).
	workers := 1
	if e.store.Dialect() == "postgres" {
		workers = tickWorkers
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		next = make(chan int64)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range next {
				var one TickResult
				err := e.store.InTx(ctx, func(tx *store.Tx) error {
					one = TickResult{}
					a, err := tx.LockDueAutomation(ctx, id, now)
					if err != nil || a == nil {
						return err
					}
					return e.fireDue(ctx, tx, a, now, &one)
				})
				if err != nil && ctx.Err() != nil {
					continue // stopping: the fire waits for the next tick, here or elsewhere
				}
				if err != nil {
					one = TickResult{Failed: 1}
					e.log.Error("tick: cannot fire automation", "event", "fire.error", "automation_id", id, "error", err)
					e.recordEvent(ctx, &pb.Event{AutomationID: id, Type: pb.EventError,
						Message: "the scheduler could not fire this automation; it retries every tick: " + err.Error(),
						Data:    map[string]string{"kind": string(pb.ErrorKind(err))}})
				}
				mu.Lock()
				res.Fired, res.Skipped, res.Queued = res.Fired+one.Fired, res.Skipped+one.Skipped, res.Queued+one.Queued
				res.Missed, res.Failed = res.Missed+one.Missed, res.Failed+one.Failed
				mu.Unlock()
			}
		}()
	}
	for _, id := range ids {
		next <- id
	}
	close(next)
	wg.Wait()
	return res, nil
}

// fireDue handles every overdue fire of a: the latest one within the
// catch-up window runs; all others are recorded as missed (never a silent
// gap, never a flood).
func (e *Engine) fireDue(ctx context.Context, tx *store.Tx, a *pb.Automation, now time.Time, res *TickResult) error {
	sched, err := a.ParsedSchedule()
	if err != nil {
		return pb.WrapError(pb.KindInternal, err, "stored cron of automation %d", a.ID)
	}
	loc, lead := a.Location(), a.Lead()

	// fireAt is when the fire for send time t is due: its audience time,
	// except for the first pending fire, whose stored time may be later
	// (an edit that lengthened the lead time starts it when it was saved).
	fireAt := func(t time.Time) time.Time {
		if a.NextFireAt != nil && a.NextSendAt != nil && t.Equal(*a.NextSendAt) && a.NextFireAt.After(t.Add(-lead)) {
			return *a.NextFireAt
		}
		return t.Add(-lead)
	}

	// Collect the overdue send times, keeping only the newest few.
	keep := e.cfg.MaxMissedRecords + 1
	var (
		overdue []time.Time
		total   int
		oldest  time.Time
	)
	t := *a.NextSendAt
	for !t.IsZero() && !fireAt(t).After(now) {
		if total == 0 {
			oldest = t
		}
		total++
		overdue = append(overdue, t)
		if len(overdue) > keep {
			overdue = overdue[1:]
		}
		t = sched.Next(t, loc)
	}
	next := nextSchedule(t, lead)
	if err := tx.SetSchedule(ctx, a.ID, next, nil, now); err != nil {
		return err
	}
	if total == 0 {
		return nil
	}

	// A fire found within the catch-up window runs; the tick's own delay
	// (up to LateFire) never counts as missing, even with a window of 0.
	latest := overdue[len(overdue)-1]
	lateness := now.Sub(fireAt(latest))
	window := max(a.Catchup(), e.cfg.LateFire)
	runLatest := lateness <= window
	missed := overdue
	if runLatest {
		missed = overdue[:len(overdue)-1]
	}
	for i, sendAt := range missed {
		late := roundDur(now.Sub(fireAt(sendAt)))
		reason := fmt.Sprintf("not fired at its time %s: the scheduler reached it %s late (the engine was down, or could not tick)",
			fireAt(sendAt).In(loc).Format(time.RFC3339), late)
		if runLatest {
			reason += fmt.Sprintf("; only the latest overdue fire (send time %s) ran", latest.In(loc).Format(time.RFC3339))
		} else {
			reason += fmt.Sprintf(", beyond the catch-up window of %s", pb.Duration(a.Catchup()))
		}
		if i == 0 && total > len(overdue) {
			reason += fmt.Sprintf(" (%d earlier fires since %s were missed too and are not recorded one by one)",
				total-len(overdue), oldest.In(loc).Format(time.RFC3339))
		}
		if err := e.recordMissed(ctx, tx, a, sendAt, reason, now); err != nil {
			return err
		}
		res.Missed++
	}
	if !runLatest {
		return nil
	}
	trigger := pb.TriggerSchedule
	if lateness > e.cfg.LateFire {
		trigger = pb.TriggerCatchup
	}
	ex, created, err := e.startExecution(ctx, tx, a, latest, trigger, now)
	if err != nil {
		return err
	}
	switch {
	case !created:
		// A manual run already took this send time: it is the fire.
		e.log.Info("fire already has an execution", "event", "fire.exists", "automation_id", a.ID, "execution_id", ex.ID, "send_at", latest)
	case ex.Status == pb.StatusSkipped:
		res.Skipped++
	case ex.WaitingFor != 0:
		res.Queued++
	default:
		res.Fired++
	}
	return nil
}

func roundDur(d time.Duration) pb.Duration { return pb.Duration(d.Round(time.Second)) }

func (e *Engine) recordMissed(ctx context.Context, tx *store.Tx, a *pb.Automation, sendAt time.Time, reason string, now time.Time) error {
	ex := newExecution(a, sendAt, pb.TriggerSchedule, now)
	ex.Status, ex.Reason, ex.FinishedAt = pb.StatusMissed, reason, &now
	_, created, err := tx.InsertExecution(ctx, ex)
	if err != nil || !created {
		return err
	}
	e.executionFinished(tx, pb.StatusMissed)
	e.log.Warn("fire missed", "event", "fire.missed", "automation_id", a.ID, "execution_id", ex.ID, "send_at", sendAt, "reason", reason)
	return e.recordEventTx(ctx, tx, &pb.Event{AutomationID: a.ID, ExecutionID: ex.ID, Type: pb.EventStatus,
		Message: "missed: " + reason, Data: map[string]string{"status": string(pb.StatusMissed)}})
}

// nextSchedule is the scheduler state for the fire with send time t (zero:
// none).
func nextSchedule(t time.Time, lead time.Duration) store.Schedule {
	if t.IsZero() {
		return store.Schedule{}
	}
	send := store.Canon(t)
	fire := send.Add(-lead)
	return store.Schedule{SendAt: &send, FireAt: &fire}
}

// firstSchedule is the scheduler state of a newly saved or resumed
// automation: its first send time whose whole timeline (the audience phase
// at T − lead time) is still ahead. A send time that already has an
// execution (a manual run, or an edit right after a fire) is not fired
// again: the unique send time turns that fire into a no-op.
func firstSchedule(a *pb.Automation, now time.Time) store.Schedule {
	if a.Paused {
		return store.Schedule{}
	}
	sched, err := a.ParsedSchedule()
	if err != nil {
		return store.Schedule{}
	}
	from := now.Add(a.Lead()).Add(-time.Nanosecond)
	return nextSchedule(sched.Next(from, a.Location()), a.Lead())
}

func newExecution(a *pb.Automation, sendAt time.Time, trigger pb.Trigger, now time.Time) *pb.Execution {
	sendAt = store.Canon(sendAt)
	return &pb.Execution{
		AutomationID:      a.ID,
		AutomationName:    a.Name,
		AutomationVersion: a.Version,
		Tags:              a.Tags,
		SendAt:            sendAt,
		AudienceAt:        sendAt.Add(-a.Lead()),
		CancelDeadline:    sendAt.Add(-a.Deadline()),
		Trigger:           trigger,
		Status:            pb.StatusScheduled,
		CreatedAt:         now,
	}
}

// startExecution records the execution of a for sendAt, applying the
// overlap policy, and enqueues its audience phase. If an execution for that
// send time exists already, it returns that one with created false.
func (e *Engine) startExecution(ctx context.Context, tx *store.Tx, a *pb.Automation, sendAt time.Time, trigger pb.Trigger, now time.Time) (*pb.Execution, bool, error) {
	all, err := tx.ActiveExecutions(ctx, a.ID)
	if err != nil {
		return nil, false, err
	}
	active := inProgress(all, now)
	ex := newExecution(a, sendAt, trigger, now)
	var cancelPrevious []*pb.Execution
	if len(active) > 0 {
		prev := active[len(active)-1]
		switch a.OverlapPolicy {
		case pb.OverlapQueue:
			if waiting := queuedOf(active); waiting != nil {
				ex.Status, ex.FinishedAt = pb.StatusSkipped, &now
				ex.Reason = fmt.Sprintf("queue full: execution %d is already waiting for execution %d to end (overlap_policy queue buffers one)",
					waiting.ID, waiting.WaitingFor)
			} else {
				ex.WaitingFor = prev.ID
				ex.Reason = fmt.Sprintf("queued: starts when execution %d (send time %s, %s) ends (overlap_policy queue)",
					prev.ID, prev.SendAt.In(a.Location()).Format(time.RFC3339), prev.Status)
			}
		case pb.OverlapCancelPrevious:
			cancelPrevious = active
		default:
			ex.Status, ex.FinishedAt = pb.StatusSkipped, &now
			ex.Reason = fmt.Sprintf("skipped: execution %d (send time %s) was still %s (overlap_policy skip)",
				prev.ID, prev.SendAt.In(a.Location()).Format(time.RFC3339), prev.Status)
		}
	}
	existing, created, err := tx.InsertExecution(ctx, ex)
	if err != nil {
		return nil, false, err
	}
	if !created {
		got, err := tx.GetExecution(ctx, existing, false)
		return got, false, err
	}
	log := e.log.With("automation_id", a.ID, "execution_id", ex.ID, "send_at", ex.SendAt, "trigger", trigger)
	if ex.Status == pb.StatusSkipped || ex.WaitingFor != 0 {
		if ex.Status == pb.StatusSkipped {
			e.executionFinished(tx, pb.StatusSkipped)
		}
		log.Warn("fire not started", "event", "fire.overlap", "status", ex.Status, "reason", ex.Reason)
		err := e.recordEventTx(ctx, tx, &pb.Event{AutomationID: a.ID, ExecutionID: ex.ID, Type: pb.EventStatus,
			Message: ex.Reason, Data: map[string]string{"status": string(ex.Status)}})
		return ex, true, err
	}
	for _, prev := range cancelPrevious {
		reason := fmt.Sprintf("superseded by execution %d (send time %s): overlap_policy cancel_previous",
			ex.ID, ex.SendAt.In(a.Location()).Format(time.RFC3339))
		if err := e.cancelInTx(ctx, tx, prev, reason, now); err != nil {
			return nil, false, err
		}
	}
	if err := e.enqueuePhase(ctx, tx, ex, pb.PhaseAudience, ex.AudienceAt); err != nil {
		return nil, false, err
	}
	log.Info("fire", "event", "fire", "audience_at", ex.AudienceAt, "version", ex.AutomationVersion)
	err = e.recordEventTx(ctx, tx, &pb.Event{AutomationID: a.ID, ExecutionID: ex.ID, Type: pb.EventStatus,
		Message: fmt.Sprintf("%s fire for send time %s: audience phase at %s", trigger,
			ex.SendAt.In(a.Location()).Format(time.RFC3339), ex.AudienceAt.In(a.Location()).Format(time.RFC3339)),
		Data: map[string]string{"status": string(pb.StatusScheduled)}})
	return ex, true, err
}

// inProgress keeps the executions that overlap a new fire: running,
// awaiting the send, queued, or due to start. A manual run scheduled for
// later is upcoming, not in progress.
func inProgress(active []*pb.Execution, now time.Time) []*pb.Execution {
	var out []*pb.Execution
	for _, x := range active {
		if x.Status != pb.StatusScheduled || x.WaitingFor != 0 || !x.AudienceAt.After(now) {
			out = append(out, x)
		}
	}
	return out
}

func queuedOf(active []*pb.Execution) *pb.Execution {
	for _, x := range active {
		if x.WaitingFor != 0 {
			return x
		}
	}
	return nil
}

// enqueuePhase enqueues phase p of ex to run at `at` and records the job.
func (e *Engine) enqueuePhase(ctx context.Context, tx *store.Tx, ex *pb.Execution, p pb.Phase, at time.Time) error {
	id, err := e.jobs.insert(ctx, tx, phaseArgs{ExecutionID: ex.ID, Phase: p}, at)
	if err != nil {
		return err
	}
	ex.JobID = id
	return tx.UpdateExecution(ctx, ex.ID, store.ExecutionUpdate{JobID: &id, Now: e.now()})
}

// recordEventTx stores an event in tx.
func (e *Engine) recordEventTx(ctx context.Context, tx *store.Tx, ev *pb.Event) error {
	if ev.At.IsZero() {
		ev.At = e.now()
	}
	if err := tx.InsertEvent(ctx, ev); err != nil {
		return err
	}
	e.eventRecorded(tx, ev)
	tx.AfterCommit(e.events.Poke) // live streams get it at once
	return nil
}

// recordEvent stores an event on its own; a failure is logged, not
// returned, because it happens on a path that is already reporting one.
func (e *Engine) recordEvent(ctx context.Context, ev *pb.Event) {
	if ev.At.IsZero() {
		ev.At = e.now()
	}
	if err := e.store.InsertEvent(ctx, ev); err != nil {
		e.log.Error("cannot record event", "event", "event.error", "error", err, "message", ev.Message)
		if ev.Type == pb.EventError && ctx.Err() == nil {
			e.holdError(ev) // stored when the database answers again (health.go)
		}
		return
	}
	e.eventRecorded(nil, ev)
	e.events.Poke() // live streams get it at once
}

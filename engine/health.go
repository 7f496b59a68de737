package engine

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// Health thresholds.
const (
	// healthPingTimeout and healthReadTimeout bound the health report's
	// database statements, so that it answers while the database does not.
	healthPingTimeout = 2 * time.Second
	healthReadTimeout = 3 * time.Second
	// overdueGrace is how far past its expected time an execution may be
	// before it is reported overdue.
	overdueGrace = 2 * time.Minute
	// lateJobAfter is how long a due job may wait for a worker before it
	// counts as late.
	lateJobAfter = time.Minute
	// maxUnstoredErrors bounds the errors held in memory while the
	// database does not take them.
	maxUnstoredErrors = 1000
	// maxHeldTries is how often a held error is offered to the database
	// before it is given up (it stays in the log).
	maxHeldTries = 5
	// heldInsertTimeout bounds storing one held error.
	heldInsertTimeout = 5 * time.Second
	// recentErrors is how many errors the health report lists.
	recentErrors = 10
)

// healthState is what the engine remembers for its health report.
type healthState struct {
	mu sync.Mutex
	// lastTick is when the scheduler last finished a pass (real time).
	lastTick    time.Time
	lastTickErr string
	restoration *pb.Restoration
	// dbDownSince is when heartbeats began failing (engine clock); zero
	// while they succeed.
	dbDownSince time.Time
	dbFailures  int
	dbLastErr   string
	// unstored are error events the database did not take; they are
	// stored when it answers again, by one goroutine at a time
	// (replaying).
	unstored        []heldError
	unstoredDropped int
	replaying       bool
	// lastTickOK is when a scheduler pass last succeeded (real time);
	// started is when the engine started.
	lastTickOK time.Time
	started    time.Time
}

// heldError is an error event waiting to be stored.
type heldError struct {
	ev    pb.Event
	tries int
}

// noteTick records the end of a scheduler pass.
func (e *Engine) noteTick(err error) {
	h := &e.health
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastTick = time.Now()
	h.lastTickErr = ""
	if err != nil {
		h.lastTickErr = err.Error()
	} else {
		h.lastTickOK = h.lastTick
	}
}

// restore is the start-up recovery, run by the scheduler's first pass: it
// counts the schedules and in-flight executions it takes over, fires what
// came due while no instance ran (or records it missed), and reports it.
// It returns whether it succeeded; the scheduler calls it again until it
// does.
func (e *Engine) restore(ctx context.Context) bool {
	r := &pb.Restoration{At: e.now()}
	var err error
	if r.Schedules, err = e.store.CountScheduled(ctx); err == nil {
		if r.InFlight, err = e.store.CountActive(ctx); err == nil {
			var res TickResult
			res, err = e.Tick(ctx)
			e.noteTick(err)
			r.CaughtUp, r.Missed = int64(res.Fired), int64(res.Missed)
		}
	}
	if ctx.Err() != nil {
		return false
	}
	r.Restored = r.Schedules + r.InFlight
	r.Success = err == nil
	if err != nil {
		r.Error = err.Error()
		e.log.Error("start-up recovery failed; the scheduler tries again every tick", "event", "engine.restore", "error", err)
	} else {
		e.log.Info("start-up recovery done", "event", "engine.restore", "schedules", r.Schedules, "in_flight", r.InFlight,
			"caught_up", r.CaughtUp, "missed", r.Missed)
	}
	e.health.mu.Lock()
	e.health.restoration = r
	e.health.mu.Unlock()
	return r.Success
}

// dbFailed notes a failed heartbeat: the database did not answer.
func (e *Engine) dbFailed(err error) {
	h := &e.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dbDownSince.IsZero() {
		h.dbDownSince = e.now()
	}
	h.dbFailures++
	h.dbLastErr = err.Error()
}

// dbAnswered notes a successful heartbeat. After an outage it records the
// outage as an error (the database can take it now), and it has the errors
// held meanwhile stored, in a goroutine of their own: the heartbeat must
// not wait for them.
func (e *Engine) dbAnswered(ctx context.Context) {
	h := &e.health
	h.mu.Lock()
	since, failures, last := h.dbDownSince, h.dbFailures, h.dbLastErr
	h.dbDownSince, h.dbFailures, h.dbLastErr = time.Time{}, 0, ""
	if !since.IsZero() {
		now := e.now()
		msg := fmt.Sprintf("database unreachable from %s to %s (%s, %d heartbeats failed): %s; fires due meanwhile run within their catch-up window, interrupted phases resume",
			since.Format(time.RFC3339), now.Format(time.RFC3339), now.Sub(since).Round(time.Second), failures, last)
		e.log.Warn(msg, "event", "db.recovered", "down_for", now.Sub(since).Round(time.Second).String(), "failures", failures)
		h.unstored = append(h.unstored, heldError{ev: pb.Event{At: now, Type: pb.EventError, Message: msg,
			Data: map[string]string{"kind": string(pb.KindDatabase), "instance": e.cfg.InstanceID}}})
	}
	if h.unstoredDropped > 0 {
		h.unstored = append(h.unstored, heldError{ev: pb.Event{At: e.now(), Type: pb.EventError,
			Message: fmt.Sprintf("%d more errors happened while the database was unreachable; they are in this instance's log only", h.unstoredDropped),
			Data:    map[string]string{"kind": string(pb.KindDatabase), "instance": e.cfg.InstanceID}}})
		h.unstoredDropped = 0
	}
	start := len(h.unstored) > 0 && !h.replaying
	h.replaying = h.replaying || start
	h.mu.Unlock()
	if start {
		e.replays.Add(1)
		go func() {
			defer e.replays.Done()
			e.storeHeld(ctx)
		}()
	}
}

// storeHeld stores the held errors, oldest first, until the database
// refuses one (the rest wait for the next heartbeat). h.replaying is set by
// the caller and cleared here.
func (e *Engine) storeHeld(ctx context.Context) {
	h := &e.health
	defer func() {
		h.mu.Lock()
		h.replaying = false
		h.mu.Unlock()
	}()
	for ctx.Err() == nil {
		h.mu.Lock()
		if len(h.unstored) == 0 {
			h.mu.Unlock()
			return
		}
		ev := h.unstored[0].ev
		h.mu.Unlock()
		ictx, cancel := context.WithTimeout(ctx, heldInsertTimeout)
		err := e.store.InsertEvent(ictx, &ev)
		cancel()
		h.mu.Lock()
		if err == nil {
			h.unstored = h.unstored[1:]
			h.mu.Unlock()
			e.eventRecorded(nil, &ev)
			e.events.Poke()
			continue
		}
		h.unstored[0].tries++
		if h.unstored[0].tries < maxHeldTries {
			h.mu.Unlock()
			e.log.Warn("cannot store a held error yet; trying again at the next heartbeat", "event", "event.held_error", "error", err)
			return
		}
		h.unstored = h.unstored[1:]
		h.mu.Unlock()
		e.log.Error("a held error could not be stored after several tries; it is in this log only", "event", "event.held_dropped",
			"error", err, "message", ev.Message, "at", ev.At)
	}
}

// holdError keeps an error event the database did not take, to store it
// when the database answers again (dbAnswered).
func (e *Engine) holdError(ev *pb.Event) {
	h := &e.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.unstored) >= maxUnstoredErrors {
		h.unstoredDropped++
		return
	}
	h.unstored = append(h.unstored, heldError{ev: *ev})
}

// flushHeld stores what is held before the instance stops, if the
// database answers within ctx.
func (e *Engine) flushHeld(ctx context.Context) {
	e.replays.Wait()
	h := &e.health
	h.mu.Lock()
	start := len(h.unstored) > 0 && !h.replaying
	h.replaying = h.replaying || start
	h.mu.Unlock()
	if start {
		e.storeHeld(ctx)
	}
}

// isRunning reports whether the engine is started and not stopping.
func (e *Engine) isRunning() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.started
}

// Health implements pb.Service. It only reports: it never changes what
// the engine remembers (outages are noted by the heartbeats).
func (e *Engine) Health(ctx context.Context) *pb.Health {
	now := e.now()
	h := &pb.Health{InstanceID: e.cfg.InstanceID, Version: e.cfg.Version, CheckedAt: now,
		Reasons: []string{}, Problems: []pb.HealthProblem{}, Jobs: map[string]int64{}, Instances: []pb.InstanceInfo{},
		RecentErrors: []pb.ErrorRecord{}, Database: pb.DatabaseHealth{Dialect: e.store.Dialect()},
		ErrorRate: pb.ErrorRate{Window: pb.Duration(e.cfg.HealthErrorWindow), Threshold: e.cfg.HealthErrorThreshold}}
	problem := func(code string, st pb.HealthStatus, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		h.Problems = append(h.Problems, pb.HealthProblem{Code: code, Status: st, Message: msg})
		h.Reasons = append(h.Reasons, msg)
	}

	// What this instance remembers.
	hs := &e.health
	hs.mu.Lock()
	lastTick, lastTickOK, lastTickErr, started := hs.lastTick, hs.lastTickOK, hs.lastTickErr, hs.started
	downSince, downErr := hs.dbDownSince, hs.dbLastErr
	if hs.restoration != nil {
		r := *hs.restoration
		h.LastRestoration = &r
	}
	held := make([]pb.Event, len(hs.unstored))
	for i := range hs.unstored {
		held[i] = hs.unstored[i].ev
	}
	dropped := hs.unstoredDropped
	hs.mu.Unlock()

	h.Engine.Running = e.isRunning()
	if !lastTick.IsZero() {
		t := lastTick.UTC()
		h.Engine.LastTickAt, h.Engine.LastTickError = &t, lastTickErr
	}
	if !h.Engine.Running {
		problem(pb.ProblemEngineStopped, pb.HealthCritical, "the engine is not running on this instance: nothing is fired or sent from here; start it (pushblaster serve) or check its log for engine.stop")
	} else if since := later(lastTickOK, started); !since.IsZero() && time.Since(since) > e.stallAfter() {
		why := "a pass has not finished"
		if lastTickErr != "" {
			why = "its passes fail: " + lastTickErr
		}
		problem(pb.ProblemSchedulerStalled, pb.HealthCritical, "the scheduler has not completed a pass for %s (expected every %s; %s): fires wait; look for tick.error lines and slow database statements",
			time.Since(since).Round(time.Second), e.cfg.TickInterval, why)
	}
	if len(held) > 0 || dropped > 0 {
		problem(pb.ProblemErrorsUnrecorded, pb.HealthDegraded, "%d errors could not be stored yet; they are stored when the database takes them, and listed in recent_errors meanwhile", len(held)+dropped)
	}

	if e.cfg.PoolStats != nil {
		h.DBPool = e.cfg.PoolStats()
	}
	if h.DBPool.Waiting > 0 {
		problem(pb.ProblemPoolWaiting, pb.HealthDegraded, "%d statements wait for a database connection (%d/%d in use): raise --db-max-conns (and PostgreSQL's max_connections) or find what holds connections",
			h.DBPool.Waiting, h.DBPool.InUse, h.DBPool.Max)
	}
	if !downSince.IsZero() {
		t := downSince
		h.Database.UnreachableSince = &t
	}

	pctx, cancel := context.WithTimeout(ctx, healthPingTimeout)
	start := time.Now()
	err := e.store.Ping(pctx)
	cancel()
	h.Database.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
	if err == nil {
		h.Database.Reachable = true
		rctx, cancel := context.WithTimeout(ctx, healthReadTimeout)
		e.healthFromStore(rctx, h, problem, now)
		cancel()
	} else {
		h.Database.Error = err.Error()
		pe := pb.AsError(err)
		if e.cfg.PoolStats != nil {
			h.DBPool = e.cfg.PoolStats() // as it was when the check gave up
		}
		full := h.DBPool.Max > 0 && h.DBPool.InUse >= h.DBPool.Max
		switch {
		case ctx.Err() != nil:
			// The caller went away: nothing was learned; the heartbeats
			// tell.
			h.Database.Reachable = downSince.IsZero()
		case pe.Context["cause"] == "pool_exhausted" || (full && downSince.IsZero()):
			// The database may well answer; this instance has no
			// connection free to ask it (and its heartbeats succeed).
			h.Database.Reachable = true
			if !hasCode(h.Problems, pb.ProblemPoolWaiting) {
				problem(pb.ProblemPoolWaiting, pb.HealthDegraded, "every database connection is in use (%d/%d, %d waiting); the health check got none within %s: raise --db-max-conns (and PostgreSQL's max_connections) or find what holds connections",
					h.DBPool.InUse, h.DBPool.Max, h.DBPool.Waiting, time.Since(start).Round(time.Millisecond))
			}
		default:
			since := " (the heartbeats have not failed yet)"
			if !downSince.IsZero() {
				since = fmt.Sprintf(" since %s (%s; heartbeats fail: %s)", downSince.Format(time.RFC3339), now.Sub(downSince).Round(time.Second), downErr)
			}
			problem(pb.ProblemDatabaseUnreachable, pb.HealthCritical, "the database is unreachable%s: %s; the engine keeps running and resumes when it answers (fires due meanwhile run within their catch-up window)",
				since, pe.Message)
		}
	}
	h.RecentErrors = append(heldRecords(held), h.RecentErrors...)
	if len(h.RecentErrors) > recentErrors {
		h.RecentErrors = h.RecentErrors[:recentErrors]
	}
	h.Status = worst(h.Problems)
	return h
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// stallAfter is how long the scheduler may go without a completed pass.
func (e *Engine) stallAfter() time.Duration { return max(2*time.Minute, 10*e.cfg.TickInterval) }

// healthFromStore fills the parts of h read from the database.
func (e *Engine) healthFromStore(ctx context.Context, h *pb.Health, problem func(string, pb.HealthStatus, string, ...any), now time.Time) {
	var readErrs []string
	read := func(what string, err error) bool {
		if err != nil {
			readErrs = append(readErrs, what+": "+pb.AsError(err).Message)
			return false
		}
		return true
	}
	defer func() {
		if len(readErrs) > 0 {
			h.Database.Error = strings.Join(readErrs, "; ")
			problem(pb.ProblemDatabaseSlow, pb.HealthDegraded, "the database answers, but the health report could not read %s: it is slow or fails statements; the parts not read are empty",
				strings.Join(readErrs, "; "))
		}
	}()

	if n, err := e.store.CountScheduled(ctx); read("scheduled automations", err) {
		h.ScheduledAutomations = &n
	}
	if n, err := e.store.CountActive(ctx); read("active executions", err) {
		h.ActiveExecutions = &n
	}
	live := map[string]bool{}
	if ins, err := e.store.LiveInstances(ctx); read("instances", err) {
		for _, in := range ins {
			live[in.ID] = true
			h.Instances = append(h.Instances, pb.InstanceInfo{ID: in.ID, Host: in.Host, PID: in.PID, Version: in.Version,
				StartedAt: in.StartedAt, LastHeartbeat: in.HeartbeatAt, Self: in.ID == e.cfg.InstanceID})
		}
	}

	// Jobs: counts, stuck and late.
	if counts, err := e.store.JobCounts(ctx); read("jobs", err) {
		for _, st := range []string{"available", "running", "scheduled", "retryable", "completed", "cancelled", "discarded", "pending"} {
			h.Jobs[st] = counts[st]
		}
		for st, n := range counts {
			h.Jobs[st] = n
		}
	}
	h.Jobs["stuck"] = 0
	if running, err := e.store.RunningJobs(ctx); read("running jobs", err) && len(live) > 0 {
		limit := maxPhaseTimeout + overdueGrace
		for _, j := range running {
			why := ""
			switch {
			case j.AttemptedBy != "" && !live[j.AttemptedBy]:
				why = fmt.Sprintf("running on instance %s, which is not alive (stopped or lost) and did not hand it back", j.AttemptedBy)
			case now.Sub(j.AttemptedAt) > limit:
				why = fmt.Sprintf("running for %s, longer than any job may (%s)", now.Sub(j.AttemptedAt).Round(time.Second), maxPhaseTimeout)
			default:
				continue
			}
			h.Jobs["stuck"]++
			if len(h.StuckJobs) < 20 {
				h.StuckJobs = append(h.StuckJobs, pb.JobInfo{ID: j.ID, Kind: j.Kind, ExecutionID: j.ExecutionID,
					AttemptedBy: j.AttemptedBy, AttemptedAt: j.AttemptedAt, Why: why})
			}
		}
	}
	if n := h.Jobs["stuck"]; n > 0 {
		problem(pb.ProblemJobsStuck, pb.HealthDegraded, "%d jobs are stuck (first: job %d, %s); River rescues them after rescue_after, or restart the instance that holds them",
			n, h.StuckJobs[0].ID, h.StuckJobs[0].Why)
	}
	if n, err := e.store.CountLateJobs(ctx, now.Add(-lateJobAfter), batchArgs{}.Kind()); read("late jobs", err) {
		h.Jobs["late"] = n
		if n > 0 {
			problem(pb.ProblemJobsLate, pb.HealthDegraded, "%d jobs have been due for over %s and no worker took them: every worker is busy (raise --max-workers or add instances) or no instance runs",
				n, lateJobAfter)
		}
	}

	// Executions past their expected phase time.
	if active, err := e.store.ActivePhases(ctx); read("active executions", err) {
		for _, a := range active {
			if o, ok := overdue(a, now); ok {
				h.Overdue = append(h.Overdue, o)
			}
		}
		if n := len(h.Overdue); n > 0 {
			problem(pb.ProblemExecutionOverdue, pb.HealthDegraded, "%d executions are past their expected phase time (first: %s)", n, h.Overdue[0].Message)
		}
	}

	if n, err := e.store.CountErrorsSince(ctx, now.Add(-e.cfg.HealthErrorWindow)); read("recent errors", err) {
		h.ErrorRate.Count = n
		if n > e.cfg.HealthErrorThreshold {
			problem(pb.ProblemErrorRate, pb.HealthDegraded, "%d errors in the last %s (threshold %d): see recent_errors and GET /api/errors",
				n, e.cfg.HealthErrorWindow, e.cfg.HealthErrorThreshold)
		}
	}
	if errs, err := e.store.ListErrors(ctx, pb.ErrorFilter{Limit: recentErrors}); read("recent errors", err) {
		h.RecentErrors = errs
	}
}

// overdue reports whether an active execution is past its expected phase
// time.
func overdue(a store.ActivePhase, now time.Time) (pb.OverdueExecution, bool) {
	o := pb.OverdueExecution{ExecutionID: a.ExecutionID, AutomationID: a.AutomationID, Phase: a.Phase}
	switch {
	case a.Status == pb.StatusScheduled && !a.Queued && a.StartedAt == nil:
		o.Phase = pb.PhaseAudience
		o.ExpectedBy = a.AudienceAt.Add(overdueGrace)
		o.Message = fmt.Sprintf("execution %d was due to start its audience phase at %s and has not", a.ExecutionID, a.AudienceAt.Format(time.RFC3339))
	case a.StartedAt == nil:
		return o, false
	case a.Phase == pb.PhaseWindow:
		o.ExpectedBy = a.SendAt.Add(overdueGrace)
		o.Message = fmt.Sprintf("execution %d is still in its cancellation window after its send time %s", a.ExecutionID, a.SendAt.Format(time.RFC3339))
	case a.Phase == pb.PhaseLiveSend:
		last := *a.StartedAt
		if a.Progress != nil && a.Progress.After(last) {
			last = *a.Progress
		}
		o.ExpectedBy = last.Add(maxPhaseTimeout + overdueGrace)
		o.Message = fmt.Sprintf("execution %d's live send has made no progress since %s", a.ExecutionID, last.Format(time.RFC3339))
	default:
		o.ExpectedBy = a.StartedAt.Add(maxPhaseTimeout + overdueGrace)
		o.Message = fmt.Sprintf("execution %d's %s phase has run since %s, longer than a phase may (%s)", a.ExecutionID, a.Phase, a.StartedAt.Format(time.RFC3339), maxPhaseTimeout)
	}
	return o, now.After(o.ExpectedBy)
}

// heldRecords are the error records of errors not stored yet, newest first.
func heldRecords(held []pb.Event) []pb.ErrorRecord {
	out := make([]pb.ErrorRecord, 0, len(held))
	for i := len(held) - 1; i >= 0; i-- {
		out = append(out, store.ErrorRecordOf(&held[i]))
	}
	return out
}

func hasCode(ps []pb.HealthProblem, code string) bool {
	for _, p := range ps {
		if p.Code == code {
			return true
		}
	}
	return false
}

// worst is the status the problems make.
func worst(ps []pb.HealthProblem) pb.HealthStatus {
	st := pb.HealthHealthy
	for _, p := range ps {
		if p.Status == pb.HealthCritical {
			return pb.HealthCritical
		}
		st = pb.HealthDegraded
	}
	return st
}

// ListErrors implements pb.Service: recorded errors, newest first, and on
// the first page the errors this instance holds until the database takes
// them (also when the database cannot be read: then they are all there is).
func (e *Engine) ListErrors(ctx context.Context, f pb.ErrorFilter) ([]pb.ErrorRecord, error) {
	out, err := e.store.ListErrors(ctx, f)
	if f.BeforeID != 0 {
		return out, err
	}
	e.health.mu.Lock()
	var held []pb.Event
	for _, he := range e.health.unstored {
		r := store.ErrorRecordOf(&he.ev)
		if (f.Kind == "" || r.Kind == f.Kind) && (f.AutomationID == nil || r.AutomationID == *f.AutomationID) &&
			(f.ExecutionID == nil || r.ExecutionID == *f.ExecutionID) {
			held = append(held, he.ev)
		}
	}
	e.health.mu.Unlock()
	if err != nil {
		if len(held) == 0 {
			return nil, err
		}
		out = nil
	}
	return append(heldRecords(held), out...), nil
}

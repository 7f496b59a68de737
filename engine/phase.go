package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// phaseArgs is one phase of one execution. Unique by args: a phase is
// enqueued once, whoever enqueues it.
type phaseArgs struct {
	ExecutionID int64    `json:"execution_id"`
	Phase       pb.Phase `json:"phase"`
}

func (phaseArgs) Kind() string { return "pushblaster.phase" }

func (phaseArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}, MaxAttempts: 25}
}

type phaseWorker struct {
	river.WorkerDefaults[phaseArgs]
	e *Engine
}

// maxPhaseTimeout is the longest phase timeout; RescueAfter must exceed it.
const maxPhaseTimeout = 10 * time.Minute

// Timeout is explicit for every phase: a job without one is never rescued.
func (w *phaseWorker) Timeout(job *river.Job[phaseArgs]) time.Duration {
	switch job.Args.Phase {
	case pb.PhaseAudience, pb.PhaseTestSend, pb.PhaseLiveSend:
		return maxPhaseTimeout
	}
	return time.Minute
}

func (w *phaseWorker) Work(ctx context.Context, job *river.Job[phaseArgs]) error {
	return w.e.runPhase(ctx, job)
}

// errInterrupted marks a phase stopped by this instance's shutdown: River
// retries it (here after restart, or on another instance).
var errInterrupted = errors.New("interrupted by shutdown")

// outcome is what a phase body produced.
type outcome struct {
	metrics map[string]int64 // set on the execution (absolute values)
	note    string
	err     error
	empty   bool // the audience is empty and on_empty is complete
	// batches is a live send's plan: the phase stays running until the
	// last batch job ends it. Its jobs go to provider's queue.
	batches  []store.SendBatch
	provider string
}

// runPhase runs one phase: record its start (or do not run), run it,
// record its end and enqueue the next phase in the same transaction that
// completes the job.
func (e *Engine) runPhase(ctx context.Context, job *river.Job[phaseArgs]) error {
	id, p := job.Args.ExecutionID, job.Args.Phase
	log := e.log.With("execution_id", id, "phase", p, "job_id", job.ID, "job_attempt", job.Attempt)

	var (
		ex   *pb.Execution
		a    *pb.Automation
		done bool
	)
	err := e.store.InTx(ctx, func(tx *store.Tx) error {
		var err error
		ex, err = tx.GetExecutionRow(ctx, id, true)
		if err != nil {
			return err
		}
		log = log.With("automation_id", ex.AutomationID)
		phaseRec, err := tx.GetPhase(ctx, id, p)
		if err != nil {
			return err
		}
		rec := &phaseRec
		switch {
		case rec.Status != pb.PhasePending && rec.Status != pb.PhaseRunning:
			log.Info("phase already ended; nothing to do", "event", "phase.duplicate", "status", rec.Status)
			done = true
		case ex.Status.Final() && p != pb.PhaseCleanup:
			log.Info("execution already final; phase not run", "event", "phase.skip", "status", ex.Status)
			done = true
			if rec.Status == pb.PhaseRunning {
				// Cancelled while this phase ran on an instance that died:
				// close the phase and clean up on its behalf. Deliveries it
				// left in flight are unknown; its metrics come from the
				// ledger, so the record says who got the push.
				end := store.PhaseEnd{Status: pb.PhaseCancelled, Now: e.now(),
					Note:  "execution ended while this phase ran on an instance that stopped",
					Error: pb.Errorf(pb.KindAbort, "execution %s during %s: %s", ex.Status, p, ex.Reason).WithPhase(p)}
				if aud, ok := sendAudienceOf(p); ok {
					m, err := e.settleLedger(ctx, tx, ex, aud)
					if err != nil {
						return err
					}
					end.Metrics = m
				}
				if err := tx.EndPhase(ctx, id, p, end); err != nil {
					return err
				}
				e.phaseEnded(ctx, tx, id, p, end.Status, end.Now)
				if err := e.enqueuePhase(ctx, tx, ex, pb.PhaseCleanup, e.now()); err != nil {
					return err
				}
			}
		}
		if done {
			return e.jobs.complete(ctx, tx, job.JobRow)
		}
		a, err = e.automationVersion(ctx, tx, ex.AutomationID, ex.AutomationVersion)
		if err != nil {
			return err
		}
		return e.startPhase(ctx, tx, ex, p, rec)
	})
	if err != nil {
		log.Error("cannot record phase start; phase not run, retried later", "event", "phase.start_error", "error", err)
		return err
	}
	if done {
		return nil
	}
	log.Info("phase started", "event", "phase.start")

	phaseCtx, cancel := context.WithCancelCause(ctx)
	untrack := e.trackRunning(id, cancel)
	stopWatch := func() {}
	if p != pb.PhaseCleanup { // cleanup runs for ended executions
		stopWatch = e.watchCancel(phaseCtx, id, cancel)
	}
	out := e.phaseBody(phaseCtx, ex, a, p, log)
	fenced := errors.Is(context.Cause(phaseCtx), errFenced)
	stopWatch()
	untrack()
	cancel(nil)

	// Record the end even if the job's context is gone (cancel, shutdown).
	endCtx, endCancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer endCancel()
	var retry error
	err = e.store.InTx(endCtx, func(tx *store.Tx) error {
		retry = nil
		cur, err := tx.GetExecutionRow(endCtx, id, true)
		if err != nil {
			return err
		}
		return e.endPhase(endCtx, tx, job.JobRow, cur, p, out, (ctx.Err() != nil && e.stopping()) || fenced, &retry, log)
	})
	if err != nil {
		log.Error("cannot record phase end; the phase runs again", "event", "phase.end_error", "error", err)
		return err
	}
	return retry
}

// cancelPoll is how often a running phase checks whether its execution was
// cancelled on another instance.
const cancelPoll = 500 * time.Millisecond

// errExecutionEnded is the cause given to a running batch whose execution
// ended (failed) elsewhere.
var errExecutionEnded = errors.New("execution ended on another instance")

// watchCancel cancels a running phase when its execution is cancelled
// (or otherwise ended) anywhere, and returns a func that stops watching.
func (e *Engine) watchCancel(ctx context.Context, id int64, cancel context.CancelCauseFunc) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(cancelPoll)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				st, err := e.store.ExecutionStatus(ctx, id)
				switch {
				case err != nil:
				case st == pb.StatusCancelled:
					cancel(errCancelled)
					return
				case st.Final():
					// Another batch of a live send failed the execution
					// (the circuit breaker): stop this one too.
					cancel(errExecutionEnded)
					return
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// startPhase records the start of p (the window was started by the end of
// the test send).
func (e *Engine) startPhase(ctx context.Context, tx *store.Tx, ex *pb.Execution, p pb.Phase, rec *pb.PhaseRecord) error {
	now := e.now()
	if p == pb.PhaseWindow && rec.Status == pb.PhaseRunning {
		return nil
	}
	if p == pb.PhaseLiveSend {
		// With no cancellation deadline the window closes at the send time:
		// the live send closes it, saving a job per execution at the
		// busiest moment.
		w, err := tx.GetPhase(ctx, ex.ID, pb.PhaseWindow)
		if err != nil {
			return err
		}
		if w.Status == pb.PhaseRunning {
			if err := e.closeWindow(ctx, tx, ex, now); err != nil {
				return err
			}
		}
	}
	attempt, err := tx.StartPhase(ctx, ex.ID, p, e.cfg.InstanceID, now)
	if err != nil {
		return err
	}
	u := store.ExecutionUpdate{Phase: &p, Now: now}
	if p != pb.PhaseCleanup {
		st := pb.StatusRunning
		u.Status, u.StartedAt = &st, &now
	}
	if err := tx.UpdateExecution(ctx, ex.ID, u); err != nil {
		return err
	}
	msg := fmt.Sprintf("%s started on %s", p, e.cfg.InstanceID)
	if attempt > 1 {
		msg += fmt.Sprintf(" (attempt %d)", attempt)
	}
	return e.recordEventTx(ctx, tx, &pb.Event{AutomationID: ex.AutomationID, ExecutionID: ex.ID, Type: pb.EventPhase,
		Phase: p, Message: msg, Data: map[string]string{"status": string(pb.PhaseRunning), "attempt": fmt.Sprint(attempt)}})
}

func (e *Engine) endPhase(ctx context.Context, tx *store.Tx, job *rivertype.JobRow, ex *pb.Execution, p pb.Phase,
	out outcome, interrupted bool, retry *error, log *slog.Logger) error {
	now := e.now()
	end := store.PhaseEnd{Metrics: out.metrics, Note: out.note, Now: now}
	event := &pb.Event{AutomationID: ex.AutomationID, ExecutionID: ex.ID, Type: pb.EventPhase, Phase: p}

	switch {
	case ex.Status == pb.StatusCancelled && p != pb.PhaseCleanup:
		end.Status = pb.PhaseCancelled
		end.Error = pb.Errorf(pb.KindAbort, "execution cancelled during %s: %s", p, ex.Reason).WithPhase(p)
		if out.metrics != nil {
			if err := tx.SetMetrics(ctx, ex.ID, out.metrics); err != nil {
				return err
			}
		}
		if err := tx.EndPhase(ctx, ex.ID, p, end); err != nil {
			return err
		}
		e.phaseEnded(ctx, tx, ex.ID, p, end.Status, now)
		if err := e.enqueuePhase(ctx, tx, ex, pb.PhaseCleanup, now); err != nil {
			return err
		}
		log.Warn("phase cancelled", "event", "phase.end", "status", end.Status)
		event.Message = fmt.Sprintf("%s stopped: execution cancelled", p)
		event.Data = map[string]string{"status": string(end.Status)}
		if err := e.recordEventTx(ctx, tx, event); err != nil {
			return err
		}
		return e.jobs.complete(ctx, tx, job)

	case out.err != nil && interrupted:
		// Keep the phase running: it resumes after restart or elsewhere.
		if err := tx.SetPhaseNote(ctx, ex.ID, p, fmt.Sprintf("interrupted: instance %s stopped; resumes on restart or on another instance", e.cfg.InstanceID)); err != nil {
			return err
		}
		log.Warn("phase interrupted by shutdown; River retries it", "event", "phase.interrupted")
		*retry = errInterrupted
		return nil

	case out.err != nil:
		perr := pb.AsError(out.err).WithPhase(p)
		if perr.Recoverable {
			// Only the phase's own failures count against its budget, not
			// restarts after a shutdown or a crash.
			note := fmt.Sprintf("failed (%s): %s; retrying", perr.Kind, perr.Message)
			failures, err := tx.PhaseFailed(ctx, ex.ID, p, note)
			if err != nil {
				return err
			}
			if failures >= e.cfg.PhaseAttempts {
				return e.failPhase(ctx, tx, job, ex, p, end, perr, out, event, log)
			}
			note = fmt.Sprintf("failure %d of %d allowed (%s): %s; retrying", failures, e.cfg.PhaseAttempts, perr.Kind, perr.Message)
			if err := tx.SetPhaseNote(ctx, ex.ID, p, note); err != nil {
				return err
			}
			log.Warn("phase failed; retrying", "event", "phase.retry", "kind", perr.Kind, "error", perr.Message)
			event.Type, event.Message = pb.EventError, note
			event.Data = map[string]string{"kind": string(perr.Kind)}
			if err := e.recordEventTx(ctx, tx, event); err != nil {
				return err
			}
			*retry = perr
			return nil
		}
		return e.failPhase(ctx, tx, job, ex, p, end, perr, out, event, log)
	}

	if out.batches != nil {
		if err := e.fanOut(ctx, tx, ex, out.provider, out.batches, log); err != nil {
			return err
		}
		return e.jobs.complete(ctx, tx, job)
	}

	end.Status = pb.PhaseCompleted
	if out.metrics != nil {
		if err := tx.SetMetrics(ctx, ex.ID, out.metrics); err != nil {
			return err
		}
	}
	if err := tx.EndPhase(ctx, ex.ID, p, end); err != nil {
		return err
	}
	e.phaseEnded(ctx, tx, ex.ID, p, end.Status, now)
	log.Info("phase completed", "event", "phase.end", "status", end.Status, "metrics", out.metrics, "note", out.note)
	event.Message = fmt.Sprintf("%s completed", p)
	if out.note != "" {
		event.Message += ": " + out.note
	}
	event.Data = map[string]string{"status": string(end.Status)}
	for k, v := range out.metrics {
		event.Data[k] = fmt.Sprint(v)
	}
	if err := e.recordEventTx(ctx, tx, event); err != nil {
		return err
	}
	if err := e.advance(ctx, tx, ex, p, now, out); err != nil {
		return err
	}
	return e.jobs.complete(ctx, tx, job)
}

// failPhase records phase p as failed and fails its execution.
func (e *Engine) failPhase(ctx context.Context, tx *store.Tx, job *rivertype.JobRow, ex *pb.Execution, p pb.Phase,
	end store.PhaseEnd, perr *pb.Error, out outcome, event *pb.Event, log *slog.Logger) error {
	end.Status, end.Error = pb.PhaseFailed, perr
	if aud, ok := sendAudienceOf(p); ok {
		// A send that died mid-batch (a panic) left deliveries in flight.
		m, err := e.settleLedger(ctx, tx, ex, aud)
		if err != nil {
			return err
		}
		end.Metrics = m
	} else if out.metrics != nil {
		if err := tx.SetMetrics(ctx, ex.ID, out.metrics); err != nil {
			return err
		}
	}
	if err := tx.EndPhase(ctx, ex.ID, p, end); err != nil {
		return err
	}
	e.phaseEnded(ctx, tx, ex.ID, p, end.Status, end.Now)
	log.Error("phase failed", "event", "phase.end", "status", end.Status, "kind", perr.Kind, "recoverable", perr.Recoverable, "error", perr.Message)
	event.Type = pb.EventError
	event.Message = fmt.Sprintf("%s failed (%s): %s", p, perr.Kind, perr.Message)
	event.Data = map[string]string{"status": string(end.Status), "kind": string(perr.Kind)}
	if err := e.recordEventTx(ctx, tx, event); err != nil {
		return err
	}
	if p != pb.PhaseCleanup {
		if err := e.finish(ctx, tx, ex, pb.StatusFailed, perr, ""); err != nil {
			return err
		}
	}
	return e.jobs.complete(ctx, tx, job)
}

// advance moves ex on after phase p completed.
func (e *Engine) advance(ctx context.Context, tx *store.Tx, ex *pb.Execution, p pb.Phase, now time.Time, out outcome) error {
	switch p {
	case pb.PhaseAudience:
		if out.empty {
			// Nothing to send: the remaining send phases are skipped and
			// the execution completes, saying so.
			for _, skip := range []pb.Phase{pb.PhaseTestSend, pb.PhaseWindow, pb.PhaseLiveSend} {
				if err := tx.EndPhase(ctx, ex.ID, skip, store.PhaseEnd{Status: pb.PhaseSkipped, Note: out.note, Now: now, Instance: e.cfg.InstanceID}); err != nil {
					return err
				}
			}
			return e.finish(ctx, tx, ex, pb.StatusCompleted, nil, out.note)
		}
		return e.enqueuePhase(ctx, tx, ex, pb.PhaseTestSend, now)
	case pb.PhaseTestSend:
		// The window opens now and closes at the cancellation deadline.
		if _, err := tx.StartPhase(ctx, ex.ID, pb.PhaseWindow, e.cfg.InstanceID, now); err != nil {
			return err
		}
		note := "open until " + ex.CancelDeadline.Format(time.RFC3339)
		if !ex.CancelDeadline.After(now) {
			note = "closed already: the test send ended after the cancellation deadline " + ex.CancelDeadline.Format(time.RFC3339)
		}
		if err := tx.SetPhaseNote(ctx, ex.ID, pb.PhaseWindow, note); err != nil {
			return err
		}
		st, w := pb.StatusAwaitingSend, pb.PhaseWindow
		if err := tx.UpdateExecution(ctx, ex.ID, store.ExecutionUpdate{Status: &st, Phase: &w, Now: now}); err != nil {
			return err
		}
		if err := e.recordEventTx(ctx, tx, &pb.Event{AutomationID: ex.AutomationID, ExecutionID: ex.ID, Type: pb.EventPhase,
			Phase: pb.PhaseWindow, Message: "cancellation window " + note, Data: map[string]string{"status": string(pb.PhaseRunning)}}); err != nil {
			return err
		}
		if !ex.CancelDeadline.Before(ex.SendAt) {
			return e.enqueuePhase(ctx, tx, ex, pb.PhaseLiveSend, ex.SendAt)
		}
		return e.enqueuePhase(ctx, tx, ex, pb.PhaseWindow, ex.CancelDeadline)
	case pb.PhaseWindow:
		return e.enqueuePhase(ctx, tx, ex, pb.PhaseLiveSend, ex.SendAt)
	case pb.PhaseLiveSend:
		return e.finish(ctx, tx, ex, pb.StatusCompleted, nil, "")
	}
	return nil
}

// sendAudienceOf names the ledger a send phase writes.
func sendAudienceOf(p pb.Phase) (store.Audience, bool) {
	switch p {
	case pb.PhaseTestSend:
		return store.AudienceTest, true
	case pb.PhaseLiveSend:
		return store.AudienceLive, true
	}
	return "", false
}

// settleLedger turns deliveries still in flight into unknown and sets the
// execution's send metrics from the ledger.
func (e *Engine) settleLedger(ctx context.Context, tx *store.Tx, ex *pb.Execution, aud store.Audience) (map[string]int64, error) {
	n, err := tx.MarkUnknown(ctx, ex.ID, aud, e.now())
	if err != nil {
		return nil, err
	}
	e.unknownMarked(ctx, tx, ex, aud, n)
	counts, err := tx.DeliveryCounts(ctx, ex.ID, aud)
	if err != nil {
		return nil, err
	}
	m := ledgerMetrics(aud, counts)
	return m, tx.SetMetrics(ctx, ex.ID, m)
}

// closeWindow records the end of the cancellation window (when the live
// send starts and the window closes at the send time).
func (e *Engine) closeWindow(ctx context.Context, tx *store.Tx, ex *pb.Execution, now time.Time) error {
	note := "closed at " + ex.CancelDeadline.Format(time.RFC3339) + "; live send at " + ex.SendAt.Format(time.RFC3339)
	if err := tx.EndPhase(ctx, ex.ID, pb.PhaseWindow, store.PhaseEnd{Status: pb.PhaseCompleted, Note: note, Now: now}); err != nil {
		return err
	}
	e.phaseEnded(ctx, tx, ex.ID, pb.PhaseWindow, pb.PhaseCompleted, now)
	return e.recordEventTx(ctx, tx, &pb.Event{AutomationID: ex.AutomationID, ExecutionID: ex.ID, Type: pb.EventPhase,
		Phase: pb.PhaseWindow, Message: "window completed: " + note, Data: map[string]string{"status": string(pb.PhaseCompleted)}})
}

// finish gives ex its final status, enqueues its cleanup and starts the
// execution queued behind it, if any.
func (e *Engine) finish(ctx context.Context, tx *store.Tx, ex *pb.Execution, status pb.ExecutionStatus, perr *pb.Error, reason string) error {
	now := e.now()
	u := store.ExecutionUpdate{Status: &status, Error: perr, FinishedAt: &now, Now: now}
	if reason != "" {
		u.Reason = &reason
	}
	if status == pb.StatusCancelled {
		u.CancelledAt = &now
	}
	if err := tx.UpdateExecution(ctx, ex.ID, u); err != nil {
		return err
	}
	e.executionFinished(tx, status)
	metrics, err := tx.Metrics(ctx, ex.ID)
	if err != nil {
		return err
	}
	msg := fmt.Sprintf("execution %s: sent %d, failed %d of audience %d", status,
		metrics[pb.MetricSent], metrics[pb.MetricFailed], metrics[pb.MetricAudienceSize])
	if perr != nil {
		msg += fmt.Sprintf("; %s error: %s", perr.Kind, perr.Message)
	}
	if reason != "" {
		msg += "; " + reason
	}
	level := slog.LevelInfo
	if status != pb.StatusCompleted {
		level = slog.LevelWarn
	}
	e.log.Log(ctx, level, "execution finished", "event", "execution.end", "automation_id", ex.AutomationID,
		"execution_id", ex.ID, "status", status, "metrics", metrics)
	if err := e.recordEventTx(ctx, tx, &pb.Event{AutomationID: ex.AutomationID, ExecutionID: ex.ID, Type: pb.EventStatus,
		Message: msg, Data: map[string]string{"status": string(status)}}); err != nil {
		return err
	}
	if err := e.enqueuePhase(ctx, tx, ex, pb.PhaseCleanup, now); err != nil {
		return err
	}
	return e.startQueued(ctx, tx, ex, now)
}

// startQueued starts the execution waiting for ex (overlap policy queue).
func (e *Engine) startQueued(ctx context.Context, tx *store.Tx, ex *pb.Execution, now time.Time) error {
	queued, err := tx.QueuedBehind(ctx, ex.ID)
	if err != nil {
		return err
	}
	for _, q := range queued {
		zero := int64(0)
		reason := fmt.Sprintf("was queued; started when execution %d ended", ex.ID)
		if err := tx.UpdateExecution(ctx, q.ID, store.ExecutionUpdate{WaitingFor: &zero, Reason: &reason, Now: now}); err != nil {
			return err
		}
		if err := e.enqueuePhase(ctx, tx, q, pb.PhaseAudience, q.AudienceAt); err != nil {
			return err
		}
		e.log.Info("queued execution started", "event", "fire.dequeue", "automation_id", q.AutomationID, "execution_id", q.ID, "after", ex.ID)
		if err := e.recordEventTx(ctx, tx, &pb.Event{AutomationID: q.AutomationID, ExecutionID: q.ID, Type: pb.EventStatus,
			Message: reason, Data: map[string]string{"status": string(pb.StatusScheduled)}}); err != nil {
			return err
		}
	}
	return nil
}

// phaseBody does the work of phase p. A panic is a bug: it becomes an
// internal error recorded with the phase, not a silent River retry loop.
func (e *Engine) phaseBody(ctx context.Context, ex *pb.Execution, a *pb.Automation, p pb.Phase, log *slog.Logger) (out outcome) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("phase panicked: this is a bug, please report it", "event", "phase.panic", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			out = outcome{err: pb.Errorf(pb.KindInternal, "panic in %s: %v (a bug; the stack is in the log, event phase.panic)", p, r)}
		}
	}()
	switch p {
	case pb.PhaseAudience:
		return e.generateAudience(ctx, ex, a, log)
	case pb.PhaseTestSend:
		if len(a.TestAudience) == 0 {
			return outcome{metrics: map[string]int64{pb.MetricTestSent: 0}, note: "no test audience defined"}
		}
		return e.sendList(ctx, ex, a, store.AudienceTest, a.TestAudience, log)
	case pb.PhaseWindow:
		return outcome{note: "closed at " + ex.CancelDeadline.Format(time.RFC3339) + "; live send at " + ex.SendAt.Format(time.RFC3339)}
	case pb.PhaseLiveSend:
		if a.Mode == pb.ModeTest {
			out := e.sendList(ctx, ex, a, store.AudienceLive, a.TestAudience, log)
			out.note = "test mode: sent to the test audience instead of the generated audience"
			return out
		}
		return e.planLiveSend(ctx, ex, a, log)
	case pb.PhaseCleanup:
		return outcome{note: "nothing to remove"}
	}
	return outcome{err: pb.Errorf(pb.KindInternal, "unknown phase %q", p)}
}

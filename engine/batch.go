package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// A live send fans out: the live-send phase job splits the recipients into
// batches (id ranges) and enqueues one job per batch in the transaction that
// records the plan; every instance takes batches. The phase stays running
// until the last batch ends: that batch, holding the execution row lock,
// ends the phase for all of them.

// batchArgs is one batch of one live send. Unique by args.
type batchArgs struct {
	ExecutionID int64 `json:"execution_id"`
	Seq         int   `json:"seq"`
	// Provider names the queue the job runs in (sendQueue). Empty in jobs
	// enqueued before there was a queue per provider: they run in the
	// default queue.
	Provider string `json:"provider,omitempty"`
}

// sendQueue is the River queue of provider's batch jobs. Each provider
// has its own, with its own workers (Config.SendWorkers), apart from the
// phases in River's default queue: a send to millions, or a provider that
// hangs, holds up only that provider's batches, never another
// automation's audience, test send or window, nor another provider's
// send. An instance works only the queues of the providers it has.
func sendQueue(provider string) string {
	if provider == "" {
		return river.QueueDefault
	}
	return "send_" + provider
}

func (batchArgs) Kind() string { return "pushblaster.send_batch" }

// batchAttempts bounds River's attempts of a batch job; restarts after a
// shutdown count too. The batch's own recoverable failures are limited by
// Config.PhaseAttempts, like a phase's.
const batchAttempts = 25

func (batchArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}, MaxAttempts: batchAttempts}
}

type batchWorker struct {
	river.WorkerDefaults[batchArgs]
	e *Engine
}

// Timeout is explicit: a job without one is never rescued. A batch that
// times out is retried and resumes from the ledger.
func (w *batchWorker) Timeout(*river.Job[batchArgs]) time.Duration { return maxPhaseTimeout }

func (w *batchWorker) Work(ctx context.Context, job *river.Job[batchArgs]) error {
	return w.e.runBatch(ctx, job)
}

// planLiveSend splits ex's recipients into batches: the outcome carries the
// plan, recorded (with the batch jobs) when the phase job ends.
func (e *Engine) planLiveSend(ctx context.Context, ex *pb.Execution, a *pb.Automation, log *slog.Logger) outcome {
	if _, err := e.newSendRun(ex, a, store.AudienceLive, 0, log); err != nil {
		return outcome{err: err} // a provider or template problem: fail before planning
	}
	bs, err := e.store.Batches(ctx, ex.ID)
	if err != nil {
		return outcome{err: err}
	}
	if len(bs) == 0 {
		size := e.cfg.SendBatchSize
		if r := a.Delivery.RatePerSecond; r > 0 {
			// A batch must finish well within its job timeout.
			size = max(min(size, r*120), e.cfg.SendChunkSize)
		}
		if bs, err = e.store.PlanBatches(ctx, ex.ID, size); err != nil {
			return outcome{err: err}
		}
	}
	if len(bs) == 0 {
		return e.sendOutcome(ctx, ex, store.AudienceLive, nil)
	}
	return outcome{batches: bs, provider: a.Delivery.Provider}
}

// fanOut records the plan of a live send and enqueues its batch jobs in
// provider's queue (sendQueue); the phase stays running.
func (e *Engine) fanOut(ctx context.Context, tx *store.Tx, ex *pb.Execution, provider string, bs []store.SendBatch, log *slog.Logger) error {
	now := e.now()
	if err := tx.InsertBatches(ctx, bs, now); err != nil {
		return err
	}
	total := 0
	for _, b := range bs {
		total += b.Size
		if _, err := e.jobs.insert(ctx, tx, batchArgs{ExecutionID: ex.ID, Seq: b.Seq, Provider: provider}, time.Time{}); err != nil {
			return err
		}
	}
	note := fmt.Sprintf("sending to %d recipients in %d batches", total, len(bs))
	if len(bs) == 1 {
		note = fmt.Sprintf("sending to %d recipients in one batch", total)
	}
	if err := tx.SetPhaseNote(ctx, ex.ID, pb.PhaseLiveSend, note); err != nil {
		return err
	}
	log.Info("live send fanned out", "event", "send.fanout", "recipients", total, "batches", len(bs))
	return e.recordEventTx(ctx, tx, &pb.Event{AutomationID: ex.AutomationID, ExecutionID: ex.ID, Type: pb.EventPhase,
		Phase: pb.PhaseLiveSend, Message: note,
		Data: map[string]string{"status": string(pb.PhaseRunning), "batches": fmt.Sprint(len(bs)), "recipients": fmt.Sprint(total)}})
}

// runBatch sends one batch and records its end; the last batch of a send
// ends the live-send phase.
func (e *Engine) runBatch(ctx context.Context, job *river.Job[batchArgs]) error {
	id, seq := job.Args.ExecutionID, job.Args.Seq
	log := e.log.With("execution_id", id, "phase", pb.PhaseLiveSend, "batch", seq, "job_id", job.ID, "job_attempt", job.Attempt)
	ex, err := e.store.GetExecutionRow(ctx, id, false)
	if err != nil {
		return err
	}
	log = log.With("automation_id", ex.AutomationID)
	b, err := e.store.Batch(ctx, id, seq)
	if err != nil {
		return err
	}
	if b.State == store.BatchDone {
		log.Info("batch already done; nothing to do", "event", "batch.duplicate")
		return nil
	}
	var sendErr error
	if !ex.Status.Final() {
		sendErr = e.sendBatchBody(ctx, ex, b, log)
	}

	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var retry error
	err = e.store.InTx(endCtx, func(tx *store.Tx) error {
		retry = nil
		// The lock serialises the batches' ends: exactly one sees none left.
		cur, err := tx.GetExecutionRow(endCtx, id, true)
		if err != nil {
			return err
		}
		// A batch taken over from this instance (declared lost while it
		// was only slow) may have been finished elsewhere already.
		if cur, err := tx.Batch(endCtx, id, seq); err != nil {
			return err
		} else if cur.State == store.BatchDone {
			log.Warn("batch already finished elsewhere; this run's results stand in the ledger where it recorded them", "event", "batch.duplicate")
			return e.jobs.complete(endCtx, tx, job.JobRow)
		}
		now := e.now()
		note := fmt.Sprintf("done on %s", e.cfg.InstanceID)
		if sendErr != nil {
			perr := pb.AsError(sendErr).WithPhase(pb.PhaseLiveSend)
			switch {
			case cur.Status.Final():
				note = fmt.Sprintf("stopped on %s: execution %s", e.cfg.InstanceID, cur.Status)
			case (ctx.Err() != nil && e.stopping()) || errors.Is(sendErr, errFenced):
				log.Warn("batch interrupted by shutdown; River retries it", "event", "batch.interrupted")
				retry = errInterrupted
				return nil
			case perr.Recoverable && !isLast(endCtx, tx, id, seq, e.cfg.PhaseAttempts):
				// Only the batch's own failures count, not restarts.
				msg := fmt.Sprintf("live send batch %d failed (%s): %s; retrying (at most %d failures)", seq, perr.Kind, perr.Message, e.cfg.PhaseAttempts)
				log.Warn("batch failed; retrying", "event", "batch.retry", "kind", perr.Kind, "error", perr.Message)
				retry = perr
				return e.recordEventTx(endCtx, tx, &pb.Event{AutomationID: cur.AutomationID, ExecutionID: id, Type: pb.EventError,
					Phase: pb.PhaseLiveSend, Message: msg, Data: map[string]string{"kind": string(perr.Kind), "batch": fmt.Sprint(seq)}})
			default:
				// Fail the execution now, so that every other batch stops
				// before its next round; the last batch ends the phase.
				failed := pb.StatusFailed
				if err := tx.UpdateExecution(endCtx, id, store.ExecutionUpdate{Status: &failed, Error: perr, Now: now}); err != nil {
					return err
				}
				cur.Status, cur.Error = failed, perr
				log.Error("live send failed; other batches stop", "event", "batch.failed", "kind", perr.Kind, "error", perr.Message)
				if err := e.recordEventTx(endCtx, tx, &pb.Event{AutomationID: cur.AutomationID, ExecutionID: id, Type: pb.EventError,
					Phase: pb.PhaseLiveSend, Message: fmt.Sprintf("live send batch %d failed (%s): %s", seq, perr.Kind, perr.Message),
					Data: map[string]string{"kind": string(perr.Kind), "batch": fmt.Sprint(seq)}}); err != nil {
					return err
				}
				note = "failed: " + perr.Message
			}
		}
		remaining, err := tx.FinishBatch(endCtx, id, seq, note, e.cfg.InstanceID, now)
		if err != nil {
			return err
		}
		if remaining > 0 {
			return e.jobs.complete(endCtx, tx, job.JobRow)
		}
		return e.endLiveSend(endCtx, tx, job.JobRow, cur, &retry, log)
	})
	if err != nil {
		log.Error("cannot record the end of a send batch; it runs again", "event", "batch.end_error", "error", err)
		return err
	}
	return retry
}

// sendBatchBody sends a batch's recipients; cancel anywhere stops it.
func (e *Engine) sendBatchBody(ctx context.Context, ex *pb.Execution, b store.SendBatch, log *slog.Logger) (err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("send batch panicked: this is a bug, please report it", "event", "phase.panic", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = pb.Errorf(pb.KindInternal, "panic in live send batch %d: %v (a bug; the stack is in the log, event phase.panic)", b.Seq, r)
		}
	}()
	a, err := e.automationVersion(ctx, e.store, ex.AutomationID, ex.AutomationVersion)
	if err != nil {
		return err
	}
	run, err := e.newSendRun(ex, a, store.AudienceLive, b.Seq, log)
	if err != nil {
		return err
	}
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	untrack := e.trackRunning(ex.ID, cancel)
	defer untrack()
	stop := e.watchCancel(bctx, ex.ID, cancel)
	defer stop()
	err = run.sendRange(bctx, b.FirstID, b.LastID)
	if err != nil && errors.Is(context.Cause(bctx), errFenced) {
		// Whatever failed (often a query cut short), the reason is that
		// this instance was declared lost.
		return pb.WrapError(pb.KindAbort, errFenced, "live send batch %d", b.Seq)
	}
	return err
}

// isLast counts a failure of batch seq and reports whether it used up the
// batch's budget of attempts. A counting error counts as the last.
func isLast(ctx context.Context, tx *store.Tx, id int64, seq, budget int) bool {
	n, err := tx.BatchFailed(ctx, id, seq)
	return err != nil || n >= budget
}

// endLiveSend ends the live-send phase after its last batch: the ledger
// gives the metrics; a failed execution fails the phase.
func (e *Engine) endLiveSend(ctx context.Context, tx *store.Tx, job *rivertype.JobRow, ex *pb.Execution, retry *error, log *slog.Logger) error {
	if rec, err := tx.GetPhase(ctx, ex.ID, pb.PhaseLiveSend); err != nil {
		return err
	} else if rec.Status != pb.PhaseRunning {
		return e.jobs.complete(ctx, tx, job) // ended already
	}
	n, err := tx.MarkUnknown(ctx, ex.ID, store.AudienceLive, e.now())
	if err != nil {
		return err
	}
	e.unknownMarked(ctx, tx, ex, store.AudienceLive, n)
	counts, err := tx.DeliveryCounts(ctx, ex.ID, store.AudienceLive)
	if err != nil {
		return err
	}
	out := outcome{metrics: ledgerMetrics(store.AudienceLive, counts), note: ledgerNote(counts)}
	if ex.Status == pb.StatusFailed {
		perr := pb.Errorf(pb.KindInternal, "live send failed")
		if ex.Error != nil {
			cp := *ex.Error
			perr = &cp
		}
		out.err = perr.WithRecoverable(false)
	}
	return e.endPhase(ctx, tx, job, ex, pb.PhaseLiveSend, out, false, retry, log)
}

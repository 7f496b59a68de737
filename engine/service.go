package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// CreateAutomation implements pb.Service.
func (e *Engine) CreateAutomation(ctx context.Context, a *pb.Automation) (*pb.Automation, error) {
	if err := a.NormalizeIn(e.Environment()); err != nil {
		return nil, err
	}
	now := e.now()
	err := e.store.InTx(ctx, func(tx *store.Tx) error {
		if err := tx.InsertAutomation(ctx, a, firstSchedule(a, now), now); err != nil {
			return err
		}
		return e.recordEventTx(ctx, tx, &pb.Event{AutomationID: a.ID, Type: pb.EventLog,
			Message: fmt.Sprintf("automation created (version 1); %s", nextFireText(a))})
	})
	if err != nil {
		return nil, err
	}
	e.log.Info("automation created", "event", "automation.create", "automation_id", a.ID, "name", a.Name, "next_send_at", a.NextSendAt)
	return a, nil
}

func nextFireText(a *pb.Automation) string {
	switch {
	case a.Paused:
		return "paused"
	case a.NextSendAt == nil:
		return "the schedule does not fire again"
	}
	return "next send " + a.NextSendAt.In(a.Location()).Format(time.RFC3339)
}

// UpdateAutomation implements pb.Service.
func (e *Engine) UpdateAutomation(ctx context.Context, id int64, a *pb.Automation) (*pb.Automation, error) {
	if err := a.NormalizeIn(e.Environment()); err != nil {
		return nil, err
	}
	a.ID = id
	var out *pb.Automation
	err := e.store.InTx(ctx, func(tx *store.Tx) error {
		cur, err := tx.GetAutomation(ctx, id, true)
		if err != nil {
			return err
		}
		if !a.PausedSet() {
			a.Paused = cur.Paused
		}
		if pb.SameDefinition(cur, a) && cur.Paused == a.Paused {
			out = cur // nothing changed: no new version
			return nil
		}
		out = a
		return e.update(ctx, tx, cur, a)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// update stores a as the new version of cur. Running executions keep their
// version. A fire already due under cur fires first, with cur's version: an
// edit never swallows a due fire. The upcoming send time is kept when the
// schedule is unchanged (a longer lead time then starts its audience at
// once); a new schedule starts with its first full timeline.
func (e *Engine) update(ctx context.Context, tx *store.Tx, cur, a *pb.Automation) error {
	now := e.now()
	if due, err := tx.LockDueAutomation(ctx, cur.ID, now); err != nil {
		return err
	} else if due != nil {
		var res TickResult
		if err := e.fireDue(ctx, tx, due, now, &res); err != nil {
			return err
		}
		if cur, err = tx.GetAutomation(ctx, cur.ID, true); err != nil {
			return err
		}
	}
	a.ID, a.CreatedAt = cur.ID, cur.CreatedAt
	if err := tx.UpdateAutomation(ctx, a, scheduleAfterEdit(cur, a, now), now); err != nil {
		return err
	}
	e.log.Info("automation updated", "event", "automation.update", "automation_id", a.ID, "version", a.Version, "next_send_at", a.NextSendAt)
	return e.recordEventTx(ctx, tx, &pb.Event{AutomationID: a.ID, Type: pb.EventLog,
		Message: fmt.Sprintf("automation updated to version %d; running executions keep their version; %s", a.Version, nextFireText(a))})
}

// scheduleAfterEdit is the scheduler state after cur is replaced by a.
func scheduleAfterEdit(cur, a *pb.Automation, now time.Time) store.Schedule {
	if a.Paused || cur.Paused || cur.NextSendAt == nil || cur.Schedule != a.Schedule {
		return firstSchedule(a, now)
	}
	send := *cur.NextSendAt
	fire := send.Add(-a.Lead())
	if fire.Before(now) {
		fire = now
	}
	return store.Schedule{SendAt: &send, FireAt: &fire}
}

// ApplyAutomation implements pb.Service.
func (e *Engine) ApplyAutomation(ctx context.Context, a *pb.Automation) (*pb.Automation, pb.ApplyResult, error) {
	if err := a.NormalizeIn(e.Environment()); err != nil {
		return nil, "", err
	}
	var (
		result pb.ApplyResult
		out    *pb.Automation
	)
	err := e.store.InTx(ctx, func(tx *store.Tx) error {
		cur, err := tx.GetAutomationByName(ctx, a.Name, true)
		switch {
		case pb.ErrorKind(err) == pb.KindNotFound:
			now := e.now()
			if err := tx.InsertAutomation(ctx, a, firstSchedule(a, now), now); err != nil {
				return err
			}
			result, out = pb.ApplyCreated, a
			return e.recordEventTx(ctx, tx, &pb.Event{AutomationID: a.ID, Type: pb.EventLog,
				Message: "automation created by apply (version 1); " + nextFireText(a)})
		case err != nil:
			return err
		}
		if !a.PausedSet() {
			a.Paused = cur.Paused
		}
		if pb.SameDefinition(cur, a) && cur.Paused == a.Paused {
			result, out = pb.ApplyUnchanged, cur
			return nil
		}
		result, out = pb.ApplyUpdated, a
		return e.update(ctx, tx, cur, a)
	})
	if err != nil {
		return nil, "", err
	}
	return out, result, nil
}

// Providers lists the configured delivery providers.
func (e *Engine) Providers() []string {
	out := make([]string, 0, len(e.senders))
	for name := range e.senders {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// GetAutomation implements pb.Service.
func (e *Engine) GetAutomation(ctx context.Context, id int64) (*pb.Automation, error) {
	return e.store.GetAutomation(ctx, id, false)
}

// GetAutomationByName implements pb.Service.
func (e *Engine) GetAutomationByName(ctx context.Context, name string) (*pb.Automation, error) {
	return e.store.GetAutomationByName(ctx, name, false)
}

// ListAutomations implements pb.Service.
func (e *Engine) ListAutomations(ctx context.Context, f pb.AutomationFilter) ([]*pb.Automation, error) {
	return e.store.ListAutomations(ctx, f)
}

// DeleteAutomation implements pb.Service.
func (e *Engine) DeleteAutomation(ctx context.Context, id int64, force bool) error {
	var cancelled []int64
	err := e.store.InTx(ctx, func(tx *store.Tx) error {
		if _, err := tx.GetAutomation(ctx, id, true); err != nil {
			return err
		}
		active, err := tx.ActiveExecutions(ctx, id)
		if err != nil {
			return err
		}
		if len(active) > 0 && !force {
			return pb.Errorf(pb.KindConflict, "automation %d has execution %d in progress (%s); cancel it first, or delete with force=true to cancel it and delete",
				id, active[0].ID, active[0].Status).With("execution_id", fmt.Sprint(active[0].ID))
		}
		for _, ex := range active {
			if err := e.cancelInTx(ctx, tx, ex, "automation deleted (force)", e.now()); err != nil {
				return err
			}
			cancelled = append(cancelled, ex.ID)
		}
		if err := tx.DeleteAutomation(ctx, id, e.now()); err != nil {
			return err
		}
		return e.recordEventTx(ctx, tx, &pb.Event{AutomationID: id, Type: pb.EventLog,
			Message: fmt.Sprintf("automation deleted; cancelled executions: %v", cancelled)})
	})
	if err != nil {
		return err
	}
	e.log.Info("automation deleted", "event", "automation.delete", "automation_id", id, "cancelled", cancelled)
	return nil
}

// SetPaused implements pb.Service.
func (e *Engine) SetPaused(ctx context.Context, id int64, paused bool) (*pb.Automation, error) {
	var out *pb.Automation
	err := e.store.InTx(ctx, func(tx *store.Tx) error {
		a, err := tx.GetAutomation(ctx, id, true)
		if err != nil {
			return err
		}
		if a.Paused == paused {
			out = a
			return nil
		}
		now := e.now()
		a.Paused = paused
		sched := firstSchedule(a, now)
		if err := tx.SetSchedule(ctx, id, sched, &paused, now); err != nil {
			return err
		}
		a.NextSendAt = sched.SendAt
		out = a
		verb := "resumed"
		if paused {
			verb = "paused: no future fires; executions in progress continue (cancel them to stop them)"
		}
		e.log.Info("automation "+map[bool]string{true: "paused", false: "resumed"}[paused], "event", "automation.pause",
			"automation_id", id, "paused", paused, "next_send_at", sched.SendAt)
		return e.recordEventTx(ctx, tx, &pb.Event{AutomationID: id, Type: pb.EventLog, Message: "automation " + verb + "; " + nextFireText(a)})
	})
	return out, err
}

// RunAutomation implements pb.Service.
func (e *Engine) RunAutomation(ctx context.Context, id int64, p pb.RunParams) (*pb.Execution, error) {
	var out *pb.Execution
	err := e.store.InTx(ctx, func(tx *store.Tx) error {
		a, err := tx.GetAutomation(ctx, id, true)
		if err != nil {
			return err
		}
		now := e.now()
		sendAt := now.Add(a.Lead())
		if p.SendAt != nil {
			sendAt = store.Canon(*p.SendAt)
			if sendAt.Before(now.Add(-time.Minute)) {
				return &pb.Error{Kind: pb.KindValidation, Message: "invalid send_at",
					Fields: []pb.FieldError{{Field: "send_at", Message: fmt.Sprintf("%s is in the past; give a future time or omit it to send after the lead time", sendAt.Format(time.RFC3339))}}}
			}
		}
		if a.OverlapPolicy == pb.OverlapSkip {
			all, err := tx.ActiveExecutions(ctx, id)
			if err != nil {
				return err
			}
			if active := inProgress(all, now); len(active) > 0 {
				return pb.Errorf(pb.KindConflict, "execution %d is in progress (%s) and overlap_policy is skip; cancel it first or wait for it to end",
					active[0].ID, active[0].Status).With("execution_id", fmt.Sprint(active[0].ID))
			}
		}
		ex, created, err := e.startExecution(ctx, tx, a, sendAt, pb.TriggerManual, now)
		if err != nil {
			return err
		}
		if !created {
			return pb.Errorf(pb.KindConflict, "execution %d already exists for send time %s", ex.ID, sendAt.Format(time.RFC3339)).
				With("execution_id", fmt.Sprint(ex.ID))
		}
		if ex.Status == pb.StatusSkipped {
			// Refuse rather than record: the operator asked for a run and
			// must hear at once that it will not happen.
			return pb.Errorf(pb.KindConflict, "%s", ex.Reason)
		}
		out, err = tx.GetExecution(ctx, ex.ID, false)
		return err
	})
	if err != nil {
		return nil, err
	}
	e.log.Info("manual run", "event", "automation.run", "automation_id", id, "execution_id", out.ID, "send_at", out.SendAt)
	return out, nil
}

// errCancelled is the cause given to a cancelled phase's context.
var errCancelled = errors.New("execution cancelled")

// CancelExecution implements pb.Service.
func (e *Engine) CancelExecution(ctx context.Context, id int64, p pb.CancelParams) (*pb.Execution, error) {
	var out *pb.Execution
	err := e.store.InTx(ctx, func(tx *store.Tx) error {
		ex, err := tx.GetExecution(ctx, id, true)
		if err != nil {
			return err
		}
		now := e.now()
		if ex.Status.Final() {
			return pb.Errorf(pb.KindConflict, "execution %d is already %s", id, ex.Status)
		}
		if !p.Force && now.After(ex.CancelDeadline) {
			return pb.Errorf(pb.KindConflict,
				"cancelling execution %d closed at %s (the automation's cancellation_deadline); the send is locked in. Cancel with force=true to stop it anyway: pushes already sent stay sent",
				id, ex.CancelDeadline.Format(time.RFC3339))
		}
		reason := "cancelled by operator"
		if p.Reason != "" {
			reason += ": " + p.Reason
		}
		if err := e.cancelInTx(ctx, tx, ex, reason, now); err != nil {
			return err
		}
		out, err = tx.GetExecution(ctx, id, false)
		return err
	})
	if err != nil {
		return nil, err
	}
	e.log.Warn("execution cancelled", "event", "execution.cancel", "automation_id", out.AutomationID, "execution_id", id, "reason", out.Reason)
	return out, e.liveProgress(ctx, out)
}

// cancelInTx cancels ex. A waiting phase (the audience phase not started
// yet, the window, the wait for the send time) is closed at once and its
// job cancelled, so no live push can go out. A running phase has its job
// cancelled and ends itself: it records what it did and enqueues cleanup.
func (e *Engine) cancelInTx(ctx context.Context, tx *store.Tx, ex *pb.Execution, reason string, now time.Time) error {
	if ex.Status.Final() {
		return nil
	}
	if len(ex.Phases) == 0 {
		full, err := tx.GetExecution(ctx, ex.ID, true)
		if err != nil {
			return err
		}
		if ex = full; ex.Status.Final() {
			return nil
		}
	}
	running := runningPhase(ex)
	st := pb.StatusCancelled
	perr := pb.Errorf(pb.KindAbort, "%s", reason)
	u := store.ExecutionUpdate{Status: &st, Reason: &reason, Error: perr, CancelledAt: &now, FinishedAt: &now, Now: now}
	if err := tx.UpdateExecution(ctx, ex.ID, u); err != nil {
		return err
	}
	e.executionFinished(tx, st)
	if err := e.recordEventTx(ctx, tx, &pb.Event{AutomationID: ex.AutomationID, ExecutionID: ex.ID, Type: pb.EventStatus,
		Message: reason, Data: map[string]string{"status": string(st)}}); err != nil {
		return err
	}
	if running == "" || running == pb.PhaseWindow {
		// Waiting: its job has not started, so cancel it and close the
		// phase it waits in. A job already fetched meets the final status
		// when it takes the execution lock, and does nothing.
		if ex.JobID != 0 {
			if err := e.jobs.cancel(ctx, tx, ex.JobID); err != nil {
				return err
			}
		}
		waiting := waitingPhase(ex)
		if err := tx.EndPhase(ctx, ex.ID, waiting, store.PhaseEnd{Status: pb.PhaseCancelled, Note: reason,
			Error: pb.Errorf(pb.KindAbort, "%s", reason).WithPhase(waiting), Now: now, Instance: e.cfg.InstanceID}); err != nil {
			return err
		}
		e.phaseEnded(ctx, tx, ex.ID, waiting, pb.PhaseCancelled, now)
		if err := e.enqueuePhase(ctx, tx, ex, pb.PhaseCleanup, now); err != nil {
			return err
		}
	}
	// A running phase stops itself: on this instance its context is
	// cancelled after commit; elsewhere its watcher sees the status within
	// a second. It then records what it did and enqueues cleanup.
	tx.AfterCommit(func() { e.cancelLocal(ex.ID, errCancelled) })
	return e.startQueued(ctx, tx, ex, now)
}

// runningPhase returns the phase that is running, or "".
func runningPhase(ex *pb.Execution) pb.Phase {
	for _, r := range ex.Phases {
		if r.Status == pb.PhaseRunning {
			return r.Phase
		}
	}
	return ""
}

// waitingPhase returns the first phase that has not ended: the one a
// waiting execution waits in.
func waitingPhase(ex *pb.Execution) pb.Phase {
	for _, r := range ex.Phases {
		if r.Status == pb.PhasePending || r.Status == pb.PhaseRunning {
			return r.Phase
		}
	}
	return pb.PhaseCleanup
}

// GetExecution implements pb.Service.
func (e *Engine) GetExecution(ctx context.Context, id int64) (*pb.Execution, error) {
	ex, err := e.store.GetExecution(ctx, id, false)
	if err != nil {
		return nil, err
	}
	return ex, e.liveProgress(ctx, ex)
}

// liveProgress fills the send metrics of a live send still running from
// its batches' counts (the ledger's are stored when the phase ends), so
// that a look in the middle of a big send shows how far it got without
// counting millions of ledger rows.
func (e *Engine) liveProgress(ctx context.Context, ex *pb.Execution) error {
	if ex.PhaseRecord(pb.PhaseLiveSend).Status != pb.PhaseRunning {
		return nil
	}
	counts, err := e.liveCounts(ctx, ex.ID)
	if err != nil {
		return err
	}
	if ex.Metrics == nil {
		ex.Metrics = map[string]int64{}
	}
	for k, v := range ledgerMetrics(store.AudienceLive, counts) {
		ex.Metrics[k] = v
	}
	return nil
}

// liveCounts is a running live send's ledger rows by final state, from
// its batches' counts (store.LiveCounts); a send without batches (test
// mode: the test audience) is counted from its few ledger rows.
func (e *Engine) liveCounts(ctx context.Context, id int64) (map[pb.DeliveryState]int64, error) {
	counts, batches, err := e.store.LiveCounts(ctx, id)
	if err != nil || batches > 0 {
		return counts, err
	}
	return e.store.DeliveryCounts(ctx, id, store.AudienceLive)
}

// ListExecutions implements pb.Service.
func (e *Engine) ListExecutions(ctx context.Context, f pb.ExecutionFilter) ([]*pb.Execution, error) {
	if f.AutomationID != nil {
		// An automation that never existed is a 404, not an empty list.
		if _, err := e.store.GetAutomationVersion(ctx, *f.AutomationID, 1); err != nil {
			return nil, err
		}
	}
	return e.store.ListExecutions(ctx, f)
}

// ListEvents implements pb.Service.
func (e *Engine) ListEvents(ctx context.Context, f pb.EventFilter) ([]*pb.Event, error) {
	return e.store.ListEvents(ctx, f)
}

// ListArtifacts implements pb.Service.
func (e *Engine) ListArtifacts(ctx context.Context, id int64) ([]pb.Artifact, error) {
	if _, err := e.store.GetExecutionRow(ctx, id, false); err != nil {
		return nil, err
	}
	return e.store.Artifacts(ctx, id, e.now())
}

// ListDeliveries implements pb.Service.
func (e *Engine) ListDeliveries(ctx context.Context, id int64, f pb.DeliveryFilter) ([]pb.DeliveryRecord, error) {
	if _, err := e.store.GetExecutionRow(ctx, id, false); err != nil {
		return nil, err
	}
	return e.store.Deliveries(ctx, id, f)
}

// ListInvalidTokens implements pb.Service.
func (e *Engine) ListInvalidTokens(ctx context.Context, f pb.InvalidTokenFilter) ([]pb.InvalidToken, error) {
	return e.store.InvalidTokens(ctx, f)
}

// DeleteInvalidToken implements pb.Service.
func (e *Engine) DeleteInvalidToken(ctx context.Context, token string) error {
	ok, err := e.store.DeleteInvalidToken(ctx, token)
	if err != nil {
		return err
	}
	if !ok {
		return pb.Errorf(pb.KindNotFound, "token %s is not recorded as invalid", redactToken(token))
	}
	e.log.Info("invalid token forgotten; it will be sent to again", "event", "token.revalidated", "token", redactToken(token))
	return nil
}

package engine

import (
	"context"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// The engine tells its pb.Observer only what it committed: facts recorded
// in a transaction reach the observer from tx.AfterCommit, so a rolled-back
// (and retried) transaction is never counted twice. The helpers below keep
// each hook at its call site to one line.

// observing reports whether anyone listens, so that a hook that needs a
// query (a phase's start time) costs nothing without an observer.
func (e *Engine) observing() bool {
	_, nop := e.obs.(pb.NopObserver)
	return !nop
}

// executionFinished reports ex's final status once tx commits.
func (e *Engine) executionFinished(tx *store.Tx, s pb.ExecutionStatus) {
	tx.AfterCommit(func() { e.obs.ExecutionFinished(s) })
}

// phaseEnded reports the end of phase p of execution id, timed from its
// recorded (last) start, once tx commits. A phase that never started is not
// reported. It reads the start in tx; a failed read only loses the report
// (a broken transaction fails at its next statement anyway).
func (e *Engine) phaseEnded(ctx context.Context, tx *store.Tx, id int64, p pb.Phase, s pb.PhaseStatus, now time.Time) {
	if !e.observing() {
		return
	}
	rec, err := tx.GetPhase(ctx, id, p)
	if err != nil || rec.StartedAt == nil {
		return
	}
	d := max(now.Sub(*rec.StartedAt), 0)
	tx.AfterCommit(func() { e.obs.PhaseEnded(p, s, d) })
}

// eventRecorded reports an error event once it is stored: in tx (after
// commit), or on its own (tx nil: already stored).
func (e *Engine) eventRecorded(tx *store.Tx, ev *pb.Event) {
	if ev.Type != pb.EventError {
		return
	}
	kind := pb.Kind(ev.Data["kind"])
	if kind == "" {
		kind = pb.KindInternal
	}
	p := ev.Phase
	if tx == nil {
		e.obs.ErrorRecorded(kind, p)
		return
	}
	tx.AfterCommit(func() { e.obs.ErrorRecorded(kind, p) })
}

// unknownMarked reports n deliveries of ex turned unknown in tx (in flight
// when their sender stopped), once tx commits.
func (e *Engine) unknownMarked(ctx context.Context, tx *store.Tx, ex *pb.Execution, aud store.Audience, n int64) {
	if n <= 0 || !e.observing() {
		return
	}
	a, err := e.automationVersion(ctx, tx, ex.AutomationID, ex.AutomationVersion)
	if err != nil {
		return
	}
	provider := a.Delivery.Provider
	tx.AfterCommit(func() { e.obs.Sent(provider, string(aud), pb.DeliveryUnknown, int(n)) })
}

// observeRound reports the outcomes of one ledger round, after they are
// recorded: counts per state and failures per provider code.
func (r *sendRun) observeRound(sent, failed, invalid, unknown int, byCode map[string]int) {
	provider, aud, obs := r.a.Delivery.Provider, string(r.aud), r.e.obs
	for _, c := range [...]struct {
		s pb.DeliveryState
		n int
	}{{pb.DeliverySent, sent}, {pb.DeliveryFailed, failed}, {pb.DeliveryInvalidToken, invalid}, {pb.DeliveryUnknown, unknown}} {
		if c.n > 0 {
			obs.Sent(provider, aud, c.s, c.n)
		}
	}
	for code, n := range byCode {
		obs.SendFailed(provider, code, n)
	}
}

// observeHeld reports the recipients a round held back (capped, or a token
// known to be invalid), once written. written is how many ledger rows the
// hold created: a round retried after its holds were written creates none
// and reports nothing, so nobody is counted twice.
func (r *sendRun) observeHeld(hold []store.DeliveryResult, written int64) {
	if written == 0 || written != int64(len(hold)) {
		return
	}
	var capped, invalid, byCadence int
	for i := range hold {
		switch hold[i].State {
		case pb.DeliveryCapped:
			capped++
			if hold[i].Code == capCadence {
				byCadence++
			}
		case pb.DeliveryInvalidToken:
			invalid++
		}
	}
	provider, aud, obs := r.a.Delivery.Provider, string(r.aud), r.e.obs
	if capped > 0 {
		obs.Sent(provider, aud, pb.DeliveryCapped, capped)
	}
	if invalid > 0 {
		obs.Sent(provider, aud, pb.DeliveryInvalidToken, invalid)
	}
	if n := capped - byCadence; n > 0 {
		obs.Capped(capFrequency, n)
	}
	if byCadence > 0 {
		obs.Capped(capCadence, byCadence)
	}
}

// The codes of capped ledger rows, and the reasons Observer.Capped gets.
const (
	capFrequency = "frequency_cap"
	capCadence   = "cadence"
)

// scriptOutcome classifies how an audience script run ended, from the
// error audience.RunScript returned (its context says why the runner
// stopped the script).
func scriptOutcome(err error) pb.ScriptOutcome {
	if err == nil {
		return pb.ScriptOK
	}
	pe := pb.AsError(err)
	switch pe.Context["reason"] {
	case "cancelled":
		return pb.ScriptCancelled
	case "deadline", "timeout":
		return pb.ScriptTimeout
	case "stalled":
		return pb.ScriptStalled
	}
	switch {
	case pe.Kind == pb.KindScript && pe.Context["signal"] != "":
		return pb.ScriptKilled
	case pe.Kind == pb.KindScript && pe.Context["exit_code"] != "" && pe.Context["exit_code"] != "-1":
		return pb.ScriptExitError
	case pe.Kind == pb.KindScript:
		return pb.ScriptStartError
	case pe.Kind == pb.KindValidation:
		return pb.ScriptRejected
	case pe.Kind == pb.KindAbort:
		return pb.ScriptCancelled
	case pe.Kind == pb.KindTimeout:
		return pb.ScriptTimeout
	}
	return pb.ScriptError
}

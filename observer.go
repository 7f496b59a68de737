package pushblaster

import "time"

// Observer hears what the engine did, for metrics. The engine calls it only
// for facts it has committed to the store (a transaction that rolls back
// reports nothing), from many goroutines at once, on the hot path of a send:
// every method must be safe for concurrent use, cheap and non-blocking.
// Counts are per instance: each fact is reported once, by the instance that
// recorded it.
type Observer interface {
	// ExecutionFinished reports that an execution reached final status s
	// (completed, failed, cancelled, skipped or missed).
	ExecutionFinished(s ExecutionStatus)
	// PhaseEnded reports that phase p ended with status s (completed,
	// failed or cancelled) d after its last start. A phase that ends
	// without having started (skipped, cancelled while waiting for its
	// turn) is not reported.
	PhaseEnded(p Phase, s PhaseStatus, d time.Duration)
	// Sent reports that n deliveries of provider to audience ("live" or
	// "test") reached final ledger state s (sent, failed, invalid_token,
	// capped or unknown). It is called once per state and ledger round,
	// not per push.
	Sent(provider, audience string, s DeliveryState, n int)
	// SendFailed reports that n of the failed deliveries of provider
	// failed with provider code (CodeUnavailable, …).
	SendFailed(provider, code string, n int)
	// Capped reports that n recipients were held back; reason is
	// "frequency_cap" or "cadence".
	Capped(reason string, n int)
	// ScriptEnded reports that an execution's audience script ended with
	// outcome after running d.
	ScriptEnded(outcome ScriptOutcome, d time.Duration)
	// ErrorRecorded reports that an error of kind k was persisted as an
	// error event: a phase or batch failure, a retry, a scheduler failure,
	// a lost instance, a cadence fallback. p is "" outside a phase.
	ErrorRecorded(k Kind, p Phase)
}

// ScriptOutcome is how an audience script run ended.
type ScriptOutcome string

// Script outcomes.
const (
	ScriptOK         ScriptOutcome = "ok"          // exited 0 and its output was accepted
	ScriptExitError  ScriptOutcome = "exit_error"  // exited with a non-zero status
	ScriptKilled     ScriptOutcome = "killed"      // died of a signal it was not sent by the runner
	ScriptStartError ScriptOutcome = "start_error" // could not be started
	ScriptTimeout    ScriptOutcome = "timeout"     // ran past its timeout or the phase deadline
	ScriptStalled    ScriptOutcome = "stalled"     // no output or heartbeat for the stall timeout
	ScriptCancelled  ScriptOutcome = "cancelled"   // the execution was cancelled or the engine stopped
	ScriptRejected   ScriptOutcome = "rejected"    // its output broke a guard or a limit
	ScriptError      ScriptOutcome = "error"       // anything else (the store failed, a bug)
)

// ScriptOutcomes lists every script outcome, for metrics.
var ScriptOutcomes = []ScriptOutcome{ScriptOK, ScriptExitError, ScriptKilled, ScriptStartError,
	ScriptTimeout, ScriptStalled, ScriptCancelled, ScriptRejected, ScriptError}

// NopObserver observes nothing; it is the engine's default.
type NopObserver struct{}

var _ Observer = NopObserver{}

// ExecutionFinished implements Observer.
func (NopObserver) ExecutionFinished(ExecutionStatus) {}

// PhaseEnded implements Observer.
func (NopObserver) PhaseEnded(Phase, PhaseStatus, time.Duration) {}

// Sent implements Observer.
func (NopObserver) Sent(string, string, DeliveryState, int) {}

// SendFailed implements Observer.
func (NopObserver) SendFailed(string, string, int) {}

// Capped implements Observer.
func (NopObserver) Capped(string, int) {}

// ScriptEnded implements Observer.
func (NopObserver) ScriptEnded(ScriptOutcome, time.Duration) {}

// ErrorRecorded implements Observer.
func (NopObserver) ErrorRecorded(Kind, Phase) {}

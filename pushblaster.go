// Package pushblaster holds the domain of a scheduled push-notification
// engine: automations (what to send, to whom, on which schedule), executions
// (one five-phase run per send time), the typed error every part reports, and
// the interfaces the adapters implement.
//
// The package imports no adapter. engine/ runs executions on River, store/
// keeps the truth in SQL (postgres/ and sqlite/ supply the connections),
// httpapi/ serves people, and cmd/pushblaster wires them.
package pushblaster

import (
	"context"
	"time"
)

// Clock tells the time. The engine never calls time.Now directly, so tests
// control time instead of sleeping.
type Clock interface {
	Now() time.Time
}

// ClockFunc adapts a function to Clock.
type ClockFunc func() time.Time

// Now implements Clock.
func (f ClockFunc) Now() time.Time { return f() }

// SystemClock is the real clock.
var SystemClock Clock = systemClock{}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Service is what people can do with the engine; the HTTP API serves it.
//
// Unless a method says otherwise, it returns *Error with kind not_found when
// the named object does not exist, validation when the input is invalid
// (Fields names every bad field), conflict when the request clashes with the
// current state, and database when the store failed.
type Service interface {
	// CreateAutomation validates a, fills its defaults, stores it and
	// computes its next send time. A duplicate name is a conflict.
	CreateAutomation(ctx context.Context, a *Automation) (*Automation, error)
	// UpdateAutomation replaces automation id with a (a full replace:
	// omitted fields take their defaults) and bumps its version. Running
	// executions keep the version they started with.
	UpdateAutomation(ctx context.Context, id int64, a *Automation) (*Automation, error)
	// ApplyAutomation creates a, or updates the automation with a's name.
	// Applying an unchanged definition changes nothing, not even the version.
	ApplyAutomation(ctx context.Context, a *Automation) (*Automation, ApplyResult, error)
	GetAutomation(ctx context.Context, id int64) (*Automation, error)
	// GetAutomationByName looks an automation up by its unique name.
	GetAutomationByName(ctx context.Context, name string) (*Automation, error)
	ListAutomations(ctx context.Context, f AutomationFilter) ([]*Automation, error)
	// DeleteAutomation removes an automation from scheduling. With an
	// execution still in progress it is a conflict unless force is set, in
	// which case that execution is cancelled first. History is kept.
	DeleteAutomation(ctx context.Context, id int64, force bool) error
	// SetPaused pauses (no future fires) or resumes an automation.
	SetPaused(ctx context.Context, id int64, paused bool) (*Automation, error)
	// RunAutomation starts an execution now, outside the schedule. The
	// overlap policy applies; with policy skip and an execution in progress
	// it is a conflict.
	RunAutomation(ctx context.Context, id int64, p RunParams) (*Execution, error)

	// CancelExecution cancels an execution in any non-final status. After
	// the cancellation deadline it is a conflict unless p.Force is set.
	CancelExecution(ctx context.Context, id int64, p CancelParams) (*Execution, error)
	GetExecution(ctx context.Context, id int64) (*Execution, error)
	ListExecutions(ctx context.Context, f ExecutionFilter) ([]*Execution, error)
	ListEvents(ctx context.Context, f EventFilter) ([]*Event, error)
	// ListArtifacts returns the debug artefacts an execution's audience run
	// kept (stderr, first and last rows, exit status, bad rows) that have
	// not expired.
	ListArtifacts(ctx context.Context, executionID int64) ([]Artifact, error)
	// PreviewAudience runs phase 1 of automation id without sending and
	// reports what the audience would be.
	PreviewAudience(ctx context.Context, id int64) (*AudiencePreview, error)
	// ListDeliveries returns an execution's delivery ledger: who got the
	// push, who did not, and why.
	ListDeliveries(ctx context.Context, executionID int64, f DeliveryFilter) ([]DeliveryRecord, error)
	// ListInvalidTokens returns the tokens providers called invalid; they
	// are never sent to again.
	ListInvalidTokens(ctx context.Context, f InvalidTokenFilter) ([]InvalidToken, error)
	// DeleteInvalidToken forgets that a token is invalid, so that it is
	// sent to again (not_found if it is not recorded).
	DeleteInvalidToken(ctx context.Context, token string) error

	// Health reports this instance's health; it answers (critical) even
	// when the database does not.
	Health(ctx context.Context) *Health
	// ListErrors returns recorded errors, newest first.
	ListErrors(ctx context.Context, f ErrorFilter) ([]ErrorRecord, error)
}

// ApplyResult says what ApplyAutomation did.
type ApplyResult string

// Apply results.
const (
	ApplyCreated   ApplyResult = "created"
	ApplyUpdated   ApplyResult = "updated"
	ApplyUnchanged ApplyResult = "unchanged"
)

// AutomationFilter selects automations.
type AutomationFilter struct {
	Name *string
}

// RunParams are the options of a manual run.
type RunParams struct {
	// SendAt is the send time; nil means now + lead time.
	SendAt *time.Time `json:"send_at,omitempty"`
}

// CancelParams are the options of a cancel.
type CancelParams struct {
	// Force cancels even after the cancellation deadline (an emergency
	// stop: pushes already sent stay sent).
	Force bool `json:"force,omitempty"`
	// Reason is recorded with the execution.
	Reason string `json:"reason,omitempty"`
}

// ExecutionFilter selects executions, newest first.
type ExecutionFilter struct {
	AutomationID *int64
	Status       *ExecutionStatus
	// BeforeID pages: only executions with a smaller id.
	BeforeID int64
	Limit    int
}

// EventFilter selects events in id order.
type EventFilter struct {
	ExecutionID  *int64
	AutomationID *int64
	AfterID      int64
	Limit        int
}

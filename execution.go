package pushblaster

import "time"

// ExecutionStatus is where an execution stands.
type ExecutionStatus string

// Execution statuses. The last five are final.
const (
	// StatusScheduled: created, waiting for its audience phase (or, with
	// overlap policy queue, for the execution ahead of it to end).
	StatusScheduled ExecutionStatus = "scheduled"
	// StatusRunning: a phase is running (audience, test send, live send).
	StatusRunning ExecutionStatus = "running"
	// StatusAwaitingSend: in the cancellation window or waiting for the
	// send time.
	StatusAwaitingSend ExecutionStatus = "awaiting_send"
	StatusCompleted    ExecutionStatus = "completed"
	StatusFailed       ExecutionStatus = "failed"
	StatusCancelled    ExecutionStatus = "cancelled"
	// StatusSkipped: the fire did not run because of the overlap policy.
	StatusSkipped ExecutionStatus = "skipped"
	// StatusMissed: the engine was down at fire time and the fire was
	// later than the catch-up window allows.
	StatusMissed ExecutionStatus = "missed"
)

// Final reports whether s can no longer change.
func (s ExecutionStatus) Final() bool {
	switch s {
	case StatusCompleted, StatusFailed, StatusCancelled, StatusSkipped, StatusMissed:
		return true
	}
	return false
}

// ExecutionStatuses lists every status, for validation and metrics.
var ExecutionStatuses = []ExecutionStatus{
	StatusScheduled, StatusRunning, StatusAwaitingSend, StatusCompleted,
	StatusFailed, StatusCancelled, StatusSkipped, StatusMissed,
}

// Phase is one of the five phases of an execution.
type Phase string

// Phases, in order.
const (
	PhaseAudience Phase = "audience"
	PhaseTestSend Phase = "test_send"
	PhaseWindow   Phase = "window"
	PhaseLiveSend Phase = "live_send"
	PhaseCleanup  Phase = "cleanup"
)

// Phases lists the phases in order.
var Phases = []Phase{PhaseAudience, PhaseTestSend, PhaseWindow, PhaseLiveSend, PhaseCleanup}

// PhaseStatus is where one phase stands.
type PhaseStatus string

// Phase statuses.
const (
	PhasePending   PhaseStatus = "pending"
	PhaseRunning   PhaseStatus = "running"
	PhaseCompleted PhaseStatus = "completed"
	PhaseFailed    PhaseStatus = "failed"
	PhaseCancelled PhaseStatus = "cancelled"
	PhaseSkipped   PhaseStatus = "skipped"
)

// Trigger says why an execution exists.
type Trigger string

// Triggers.
const (
	TriggerSchedule Trigger = "schedule" // a cron fire on time
	TriggerCatchup  Trigger = "catchup"  // a late fire within the catch-up window
	TriggerManual   Trigger = "manual"   // POST /api/automations/{id}/run
)

// Metric names every execution records.
const (
	MetricAudienceSize = "audience_size"
	MetricDuplicates   = "duplicates_removed"
	MetricNoToken      = "no_token"
	MetricBadRows      = "bad_rows"
	MetricTestSent     = "test_sent"
	MetricTestFailed   = "test_failed"
	MetricSent         = "sent"
	MetricFailed       = "failed"
	// MetricUnknown counts deliveries in flight when their instance
	// stopped: nobody knows whether they arrived, and they are not re-sent.
	MetricUnknown = "unknown"
	// MetricInvalidToken counts live pushes not delivered because the
	// provider called the token invalid (now or in an earlier send).
	MetricInvalidToken = "invalid_token"
	// MetricCapped counts recipients held back by a frequency cap or the
	// cadence service.
	MetricCapped = "capped"
)

// Execution is one run of an automation for one send time.
type Execution struct {
	ID                int64  `json:"id"`
	AutomationID      int64  `json:"automation_id"`
	AutomationName    string `json:"automation_name"`
	AutomationVersion int    `json:"automation_version"`
	// Tags are the tags of the automation version the execution runs
	// (frequency caps scoped to a tag count them).
	Tags []string `json:"tags,omitempty"`
	// SendAt is the send time T: live sending starts then.
	SendAt time.Time `json:"send_at"`
	// AudienceAt is when the audience phase is due (T − lead time).
	AudienceAt time.Time `json:"audience_at"`
	// CancelDeadline is when cancelling closes (T − cancellation deadline).
	CancelDeadline time.Time       `json:"cancel_deadline"`
	Trigger        Trigger         `json:"trigger"`
	Status         ExecutionStatus `json:"status"`
	// Reason explains a skipped, missed, queued or cancelled execution.
	Reason string `json:"reason,omitempty"`
	// Phase is the current (or last) phase.
	Phase   Phase            `json:"phase,omitempty"`
	Phases  []PhaseRecord    `json:"phases"`
	Metrics map[string]int64 `json:"metrics"`
	Error   *Error           `json:"error,omitempty"`
	// WaitingFor is the execution this one waits for (overlap policy queue).
	WaitingFor int64 `json:"waiting_for,omitempty"`
	// JobID is the River job of the current or next phase.
	JobID int64 `json:"job_id,omitempty"`

	CreatedAt   time.Time  `json:"created_at"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
	CancelledAt *time.Time `json:"cancelled_at,omitempty"`
	UpdatedAt   time.Time  `json:"updated_at"`
}

// PhaseRecord is what happened in one phase.
type PhaseRecord struct {
	Phase      Phase       `json:"phase"`
	Status     PhaseStatus `json:"status"`
	StartedAt  *time.Time  `json:"started_at,omitempty"`
	FinishedAt *time.Time  `json:"finished_at,omitempty"`
	// Instance is the engine instance that ran (or last ran) the phase.
	Instance string `json:"instance,omitempty"`
	// Attempt counts starts; more than one means a retry or a takeover.
	Attempt int              `json:"attempt"`
	Metrics map[string]int64 `json:"metrics,omitempty"`
	Note    string           `json:"note,omitempty"`
	Error   *Error           `json:"error,omitempty"`
}

// PhaseRecord returns the record of phase p, or nil.
func (e *Execution) PhaseRecord(p Phase) *PhaseRecord {
	for i := range e.Phases {
		if e.Phases[i].Phase == p {
			return &e.Phases[i]
		}
	}
	return nil
}

// EventType classifies an event.
type EventType string

// Event types.
const (
	EventLog      EventType = "log"
	EventPhase    EventType = "phase"
	EventProgress EventType = "progress"
	EventError    EventType = "error"
	EventStatus   EventType = "status"
)

// Event is one stored line of an execution's story, in id order.
type Event struct {
	ID           int64             `json:"id"`
	At           time.Time         `json:"at"`
	AutomationID int64             `json:"automation_id,omitempty"`
	ExecutionID  int64             `json:"execution_id,omitempty"`
	Type         EventType         `json:"type"`
	Phase        Phase             `json:"phase,omitempty"`
	Message      string            `json:"message"`
	Data         map[string]string `json:"data,omitempty"`
}

// Artifact is a piece of debugging evidence an audience run keeps for a
// while: its stderr, its first and last rows, its exit status, its bad
// rows.
type Artifact struct {
	Name      string    `json:"name"`
	Content   string    `json:"content"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// BadRow is a malformed row of an audience source, with its line.
type BadRow struct {
	Line   int64  `json:"line"`
	Reason string `json:"reason"`
	Text   string `json:"text"`
}

// AudiencePreview is what phase 1 of an automation would produce now,
// computed without sending anything.
type AudiencePreview struct {
	AutomationID      int64  `json:"automation_id"`
	AutomationVersion int    `json:"automation_version"`
	Type              string `json:"type"`
	// Size counts recipients (devices) after de-duplication and token
	// resolution.
	Size              int64       `json:"size"`
	NoToken           int64       `json:"no_token"`
	DuplicatesRemoved int64       `json:"duplicates_removed"`
	BadRows           int64       `json:"bad_rows"`
	BadRowExamples    []BadRow    `json:"bad_row_examples,omitempty"`
	Sample            []Recipient `json:"sample"`
	Note              string      `json:"note,omitempty"`
	// Error is what would fail the audience phase (a guard, a script
	// error); the counts above are what was produced until then.
	Error      *Error   `json:"error,omitempty"`
	Stderr     string   `json:"stderr,omitempty"`
	ExitStatus string   `json:"exit_status,omitempty"`
	Elapsed    Duration `json:"elapsed"`
}

package pushblaster

import "time"

// HealthStatus sums up an instance's health.
type HealthStatus string

// Health statuses, from good to bad.
const (
	// HealthHealthy: nothing needs attention.
	HealthHealthy HealthStatus = "healthy"
	// HealthDegraded: the engine runs, but something slows it or fails
	// (Reasons says what); pushes may be late.
	HealthDegraded HealthStatus = "degraded"
	// HealthCritical: the database is unreachable or the engine is not
	// running; nothing is fired or sent until it is fixed.
	HealthCritical HealthStatus = "critical"
)

// Health problem codes: each has a section in docs/operations.md.
const (
	ProblemDatabaseUnreachable = "database_unreachable" // critical
	ProblemEngineStopped       = "engine_stopped"       // critical
	ProblemSchedulerStalled    = "scheduler_stalled"    // critical
	ProblemPoolWaiting         = "pool_waiting"         // degraded
	ProblemDatabaseSlow        = "database_slow"        // degraded
	ProblemJobsStuck           = "jobs_stuck"           // degraded
	ProblemJobsLate            = "jobs_late"            // degraded
	ProblemErrorRate           = "error_rate"           // degraded
	ProblemExecutionOverdue    = "execution_overdue"    // degraded
	ProblemErrorsUnrecorded    = "errors_unrecorded"    // degraded
)

// Health is one instance's view of itself and of the engine it belongs
// to (GET /api/health, pushblaster health).
type Health struct {
	Status HealthStatus `json:"status"`
	// Reasons says, in words, why the status is not healthy (empty when
	// healthy); Problems gives the same with a code each.
	Reasons  []string        `json:"reasons"`
	Problems []HealthProblem `json:"problems"`

	InstanceID string    `json:"instance_id"`
	Version    string    `json:"version,omitempty"`
	CheckedAt  time.Time `json:"checked_at"`

	// ScheduledAutomations counts automations that will fire (not paused,
	// not deleted); ActiveExecutions counts executions not yet final. Both
	// are null when the database cannot be read.
	ScheduledAutomations *int64 `json:"scheduled_automations"`
	ActiveExecutions     *int64 `json:"active_executions"`
	// LastRestoration is this instance's start-up recovery: the schedules
	// and in-flight executions it found, and the fires it caught up on or
	// recorded as missed. Null until its first scheduler pass.
	LastRestoration *Restoration   `json:"last_restoration"`
	Database        DatabaseHealth `json:"database"`
	DBPool          PoolStats      `json:"db_pool"`
	Engine          EngineHealth   `json:"engine"`
	// Jobs counts River's jobs by state, plus "stuck" (running, but on an
	// instance that is gone or for longer than any phase may) and "late"
	// (due for over a minute, no worker has taken them).
	Jobs      map[string]int64 `json:"jobs"`
	StuckJobs []JobInfo        `json:"stuck_jobs,omitempty"`
	// Instances are the live instances sharing the database.
	Instances []InstanceInfo `json:"instances"`
	// Overdue are executions past their expected phase time.
	Overdue []OverdueExecution `json:"overdue,omitempty"`
	// ErrorRate counts recorded errors over the last window.
	ErrorRate ErrorRate `json:"error_rate"`
	// RecentErrors are the newest recorded errors (GET /api/errors pages
	// through all of them).
	RecentErrors []ErrorRecord `json:"recent_errors"`
}

// HealthProblem is one reason an instance is not healthy.
type HealthProblem struct {
	// Code names the problem (Problem* constants).
	Code string `json:"code"`
	// Status is what this problem alone makes of the health.
	Status  HealthStatus `json:"status"`
	Message string       `json:"message"`
}

// Restoration is what an instance found and did when it started: the
// schedules it resumed, the executions that were in flight (their jobs
// resume where the ledger says they stopped), and the fires it ran late or
// recorded as missed for the time it was down.
type Restoration struct {
	At      time.Time `json:"at"`
	Success bool      `json:"success"`
	// Restored is Schedules + InFlight.
	Restored  int64 `json:"restored"`
	Schedules int64 `json:"schedules"`
	InFlight  int64 `json:"in_flight"`
	// CaughtUp counts fires that were due while no instance ran and ran
	// late, within their catch-up window.
	CaughtUp int64 `json:"caught_up"`
	// Missed counts fires recorded as missed (later than the catch-up
	// window allows).
	Missed int64  `json:"missed"`
	Error  string `json:"error,omitempty"`
}

// DatabaseHealth is the database as this instance sees it.
type DatabaseHealth struct {
	Dialect   string `json:"dialect"`
	Reachable bool   `json:"reachable"`
	// LatencyMS is how long a trivial statement took.
	LatencyMS float64 `json:"latency_ms"`
	Error     string  `json:"error,omitempty"`
	// UnreachableSince is when this instance's heartbeats began failing
	// (null while they succeed).
	UnreachableSince *time.Time `json:"unreachable_since,omitempty"`
}

// PoolStats is a snapshot of the database connection pool.
type PoolStats struct {
	Total   int64 `json:"total"`
	Idle    int64 `json:"idle"`
	InUse   int64 `json:"in_use"`
	Waiting int64 `json:"waiting"`
	Max     int64 `json:"max"`
}

// EngineHealth is the state of this instance's scheduler.
type EngineHealth struct {
	Running bool `json:"running"`
	// LastTickAt is when the scheduler last looked for due fires.
	LastTickAt *time.Time `json:"last_tick_at,omitempty"`
	// LastTickError is the last pass's error, if it failed.
	LastTickError string `json:"last_tick_error,omitempty"`
}

// JobInfo describes one River job.
type JobInfo struct {
	ID          int64     `json:"id"`
	Kind        string    `json:"kind"`
	ExecutionID int64     `json:"execution_id,omitempty"`
	AttemptedBy string    `json:"attempted_by,omitempty"`
	AttemptedAt time.Time `json:"attempted_at"`
	// Why says what makes it stuck.
	Why string `json:"why"`
}

// InstanceInfo is one engine instance sharing the database.
type InstanceInfo struct {
	ID            string    `json:"id"`
	Host          string    `json:"host"`
	PID           int       `json:"pid"`
	Version       string    `json:"version,omitempty"`
	StartedAt     time.Time `json:"started_at"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	// Self marks the instance that answered.
	Self bool `json:"self,omitempty"`
}

// OverdueExecution is an execution past its expected phase time.
type OverdueExecution struct {
	ExecutionID  int64     `json:"execution_id"`
	AutomationID int64     `json:"automation_id"`
	Phase        Phase     `json:"phase"`
	ExpectedBy   time.Time `json:"expected_by"`
	Message      string    `json:"message"`
}

// ErrorRate counts recorded errors over a window.
type ErrorRate struct {
	Window    Duration `json:"window"`
	Count     int64    `json:"count"`
	Threshold int64    `json:"threshold"`
}

// ErrorRecord is a recorded error: of an execution, a phase, the scheduler
// or an instance. Errors are stored (error events), so a restart does not
// erase them.
type ErrorRecord struct {
	// ID is the event's id (0 for an error this instance could not store
	// yet, e.g. while the database was unreachable).
	ID           int64     `json:"id"`
	Kind         Kind      `json:"kind"`
	AutomationID int64     `json:"automation_id,omitempty"`
	ExecutionID  int64     `json:"execution_id,omitempty"`
	Phase        Phase     `json:"phase,omitempty"`
	Message      string    `json:"message"`
	At           time.Time `json:"at"`
	// Stored is false for an error held in memory until the database
	// takes it.
	Stored bool `json:"stored"`
}

// ErrorFilter selects recorded errors, newest first.
type ErrorFilter struct {
	AutomationID *int64
	ExecutionID  *int64
	Kind         Kind
	// BeforeID pages: only errors with a smaller id.
	BeforeID int64
	Limit    int
}

// Package engine runs automations: a scheduler tick turns due cron fires
// into executions, and each execution's five phases run as short River jobs
// chained in transactions with the store. Waits (lead time, cancellation
// window) are jobs scheduled for later, never a sleeping worker.
package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivertype"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// Config configures an Engine. Zero values take the defaults.
type Config struct {
	// InstanceID names this instance in every phase record and log line
	// (default: host-pid-random).
	InstanceID string
	// Clock is the engine's time (default: the system clock). A non-nil
	// clock is shared with River, so tests move time instead of sleeping.
	Clock  pb.Clock
	Logger *slog.Logger
	// TickInterval is how often the scheduler looks for due fires
	// (default 1s).
	TickInterval time.Duration
	// PollInterval is how often River looks for due jobs (default 100ms).
	// It bounds how late a phase starts after its time.
	PollInterval time.Duration
	// MaxWorkers is the number of phase jobs run at once (default 50).
	MaxWorkers int
	// SendWorkers is the number of one provider's live-send batch jobs
	// run at once, in the provider's own queue (default: twice its rounds
	// in flight, see SendRoundsInFlight). More would only wait for a
	// round's slot.
	SendWorkers int
	// RescueAfter is how long a job may run before River considers its
	// instance dead and runs it again elsewhere (default 15m).
	RescueAfter time.Duration
	// Senders maps a provider name to its sender. "log" is built in.
	Senders map[string]pb.Sender
	// PhaseAttempts is how often a phase with a recoverable error is tried
	// before the execution fails (default 3).
	PhaseAttempts int
	// MaxMissedRecords caps the missed fires recorded one by one after a
	// long outage; older ones are summed up in one record (default 100).
	MaxMissedRecords int
	// LateFire is how late a fire may start and still count as on time
	// rather than a catch-up (default 1m).
	LateFire time.Duration
	// Audience configures audience sources.
	Audience AudienceConfig
	// SendBatchSize is how many recipients one live-send batch job takes
	// (default 5,000): the unit of work spread over instances.
	SendBatchSize int
	// SendChunkSize is how many pushes one ledger round claims and hands
	// to the provider at once (default 250).
	SendChunkSize int
	// SendRoundsInFlight is how many rounds per provider may be between
	// their claim and their record at once on this instance (default, per
	// provider: enough rounds to keep its sender's MaxInFlight pushes in
	// flight, plus one; 1,000 pushes for a sender that does not say, see
	// pb.InFlightSender). Pushes are claimed only when there is room to
	// send them, so a crash leaves at most this many rounds unknown and
	// the ledger's set of rows in state sending small.
	SendRoundsInFlight int
	// ProviderRates caps each provider's sends per second over every
	// instance (e.g. "fcm": 10,000 for FCM's default 600,000/min quota).
	ProviderRates map[string]int
	// HeartbeatInterval is how often this instance records that it is
	// alive and looks at the others (default 5s).
	HeartbeatInterval time.Duration
	// LostAfter is how long another instance's heartbeat may stand still
	// before it is declared lost and its running jobs resume here
	// (default 60s; at least three heartbeats).
	LostAfter time.Duration
	// Version is recorded with the instance (the build's version).
	Version string
	// CadenceHTTPClient is the client for cadence services (default: one
	// with the automation's timeout per request).
	CadenceHTTPClient *http.Client
	// CadenceAuthorization is the Authorization header sent to cadence
	// services (PUSHBLASTER_CADENCE_AUTHORIZATION): credentials belong to
	// the server, not to a definition that GET returns.
	CadenceAuthorization string
	// Observer hears what the engine did, for metrics (default: nobody).
	Observer pb.Observer
	// PoolStats reports the database connection pool, for health (default:
	// none known).
	PoolStats func() pb.PoolStats
	// HealthErrorWindow and HealthErrorThreshold: more errors recorded in
	// the window than the threshold make the health degraded (defaults 5m
	// and 10).
	HealthErrorWindow    time.Duration
	HealthErrorThreshold int64
}

// Engine runs automations. It implements pb.Service.
type Engine struct {
	store   *store.Store
	jobs    jobs
	clock   pb.Clock
	log     *slog.Logger
	cfg     Config
	senders map[string]pb.Sender
	obs     pb.Observer

	mu       sync.Mutex
	stopTick context.CancelFunc
	ticking  sync.WaitGroup
	stopBeat context.CancelFunc
	beating  sync.WaitGroup
	running  map[int64]map[uint64]context.CancelCauseFunc // execution id → its running phase or batches
	runSeq   uint64
	versions map[versionKey]*pb.Automation // automation versions are immutable
	stopped  chan struct{}
	started  bool
	events   *EventHub // live event feed (events.go)
	// rounds holds, per provider, a slot per send round between its
	// claim and its record (Config.SendRoundsInFlight): a provider that
	// hangs holds up its own sends only.
	rounds map[string]chan struct{}
	health healthState // what the health report remembers (health.go)
	// replays is the goroutine storing held errors (health.go).
	replays sync.WaitGroup
}

var _ pb.Service = (*Engine)(nil)

// New returns an engine on st, running jobs with River on driver (which must
// use the same database as st).
func New[TDriver riverdriver.Driver[TTx], TTx any](st *store.Store, driver TDriver, cfg Config) (*Engine, error) {
	cfg = withDefaults(cfg)
	if cfg.LostAfter < 3*cfg.HeartbeatInterval {
		return nil, pb.Errorf(pb.KindValidation,
			"lost_after %s must be at least three heartbeat intervals (%s), or a slow heartbeat would make a live instance look lost", cfg.LostAfter, 3*cfg.HeartbeatInterval)
	}
	if cfg.RescueAfter <= maxPhaseTimeout {
		return nil, pb.Errorf(pb.KindValidation,
			"rescue_after %s must be longer than the longest phase timeout (%s), or a slow phase would be run twice", cfg.RescueAfter, maxPhaseTimeout)
	}
	e := &Engine{
		store:    st,
		clock:    cfg.Clock,
		log:      cfg.Logger.With("instance_id", cfg.InstanceID),
		cfg:      cfg,
		rounds:   map[string]chan struct{}{},
		senders:  map[string]pb.Sender{pb.ProviderLog: &logSender{log: cfg.Logger.With("instance_id", cfg.InstanceID)}},
		obs:      cfg.Observer,
		running:  map[int64]map[uint64]context.CancelCauseFunc{},
		versions: map[versionKey]*pb.Automation{},
		stopped:  make(chan struct{}),
	}
	e.events = newEventHub(e) // live event feed (events.go)
	for name, s := range cfg.Senders {
		e.senders[name] = s
	}
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &phaseWorker{e: e}); err != nil {
		return nil, pb.Errorf(pb.KindInternal, "register phase worker: %v", err)
	}
	if err := river.AddWorkerSafely(workers, &batchWorker{e: e}); err != nil {
		return nil, pb.Errorf(pb.KindInternal, "register send batch worker: %v", err)
	}
	if err := river.AddWorkerSafely(workers, &janitorWorker{e: e}); err != nil {
		return nil, pb.Errorf(pb.KindInternal, "register janitor worker: %v", err)
	}
	queues := map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: cfg.MaxWorkers}}
	for name := range e.senders {
		if !queueName.MatchString(name) || len(name) > 59 {
			return nil, pb.Errorf(pb.KindValidation, "provider name %q: it names the River queue of its sends, so it must be at most 59 lower-case letters and digits, separated by single '-' or '_'", name)
		}
		// A send queue polls less often than the phases' queue: each poll
		// is a query, and SQLite has no LISTEN/NOTIFY to announce jobs. A
		// batch that ends fetches the next at once (River does that for a
		// full queue), and PostgreSQL announces new batches, so only a
		// send's first batches on SQLite wait for a poll.
		queues[sendQueue(name)] = river.QueueConfig{MaxWorkers: e.sendWorkers(name), FetchPollInterval: max(cfg.PollInterval, sendQueuePoll)}
	}
	rc := &river.Config{
		ID:                   cfg.InstanceID,
		Logger:               quietLogger(cfg.Logger.With("instance_id", cfg.InstanceID)),
		Queues:               queues,
		Workers:              workers,
		FetchPollInterval:    cfg.PollInterval,
		FetchCooldown:        min(cfg.PollInterval, 20*time.Millisecond),
		RescueStuckJobsAfter: cfg.RescueAfter,
		JobTimeout:           time.Minute,
		Middleware:           []rivertype.Middleware{&dueAtMiddleware{}},
		PeriodicJobs: []*river.PeriodicJob{river.NewPeriodicJob(
			river.PeriodicInterval(time.Hour),
			func() (river.JobArgs, *river.InsertOpts) { return janitorArgs{}, nil },
			&river.PeriodicJobOpts{RunOnStart: true, ID: "janitor"},
		)},
		ErrorHandler: &errorHandler{e: e},
	}
	if cfg.Clock != pb.SystemClock {
		rc.Test.Time = riverTime{cfg.Clock}
	}
	j, err := newRiverJobs[TDriver, TTx](driver, rc, cfg.Clock)
	if err != nil {
		return nil, err
	}
	e.jobs = j
	return e, nil
}

// sendQueuePoll is the least time between polls of a send queue.
const sendQueuePoll = 250 * time.Millisecond

func withDefaults(c Config) Config {
	if c.InstanceID == "" {
		c.InstanceID = NewInstanceID()
	}
	if c.Clock == nil {
		c.Clock = pb.SystemClock
	}
	if c.Observer == nil {
		c.Observer = pb.NopObserver{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if c.TickInterval <= 0 {
		c.TickInterval = time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 100 * time.Millisecond
	}
	if c.MaxWorkers <= 0 {
		c.MaxWorkers = 50
	}
	if c.RescueAfter <= 0 {
		c.RescueAfter = 15 * time.Minute
	}
	if c.PhaseAttempts <= 0 {
		c.PhaseAttempts = 3
	}
	if c.MaxMissedRecords <= 0 {
		c.MaxMissedRecords = 100
	}
	if c.LateFire <= 0 {
		c.LateFire = time.Minute
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 5 * time.Second
	}
	if c.LostAfter <= 0 {
		c.LostAfter = 60 * time.Second
	}
	if c.SendBatchSize <= 0 {
		c.SendBatchSize = defaultBatchSize
	}
	if c.SendChunkSize <= 0 {
		c.SendChunkSize = defaultChunkSize
	}
	if c.HealthErrorWindow <= 0 {
		c.HealthErrorWindow = 5 * time.Minute
	}
	if c.HealthErrorThreshold <= 0 {
		c.HealthErrorThreshold = 10
	}
	if c.Audience.ArtifactRetention <= 0 {
		c.Audience.ArtifactRetention = 7 * 24 * time.Hour
	}
	if c.Audience.HeartbeatEvery <= 0 {
		c.Audience.HeartbeatEvery = 10 * time.Second
	}
	return c
}

// NewInstanceID returns host-pid-random: unique, and readable in a log.
func NewInstanceID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "host"
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// InstanceID returns this instance's name.
func (e *Engine) InstanceID() string { return e.cfg.InstanceID }

// Store returns the engine's store.
func (e *Engine) Store() *store.Store { return e.store }

// Start starts ticking and working jobs. ctx bounds only the start: the
// engine runs until Stop (River would hard-stop its jobs when a start context
// ends, skipping the soft shutdown).
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return pb.Errorf(pb.KindInternal, "engine already started")
	}
	if err := e.register(ctx); err != nil {
		return err
	}
	if err := e.events.Start(ctx); err != nil { // live event feed (events.go)
		return err
	}
	if err := e.jobs.start(context.WithoutCancel(ctx)); err != nil {
		e.events.Stop() // live event feed (events.go)
		return pb.WrapError(pb.KindDatabase, err, "start River")
	}
	beatCtx, stopBeat := context.WithCancel(context.WithoutCancel(ctx))
	e.stopBeat = stopBeat
	e.beating.Add(1)
	go func() { defer e.beating.Done(); e.heartbeatLoop(beatCtx) }()
	tickCtx, stopTick := context.WithCancel(context.WithoutCancel(ctx))
	e.stopTick = stopTick
	e.ticking.Add(1)
	go func() { defer e.ticking.Done(); e.tickLoop(tickCtx) }()
	e.started = true
	e.health.mu.Lock()
	e.health.started = time.Now()
	e.health.mu.Unlock()
	e.log.Info("engine started", "event", "engine.start", "tick_interval", e.cfg.TickInterval.String())
	return nil
}

// Stop stops firing and lets running jobs finish until ctx is done, then
// cancels them: they are retried after a restart or by another instance,
// and their phases pick up where the ledger says they stopped.
func (e *Engine) Stop(ctx context.Context) error {
	e.mu.Lock()
	if !e.started {
		e.mu.Unlock()
		return nil
	}
	e.started = false
	stopTick, stopBeat := e.stopTick, e.stopBeat
	e.mu.Unlock()
	// No new fires from here on.
	stopTick()
	e.ticking.Wait()
	e.log.Info("engine stopping: finishing running jobs", "event", "engine.stop")
	err := e.jobs.stop(ctx)
	if (err != nil && errors.Is(err, context.DeadlineExceeded)) || ctx.Err() != nil {
		e.log.Warn("soft stop timed out: cancelling running jobs; they resume after restart or on another instance", "event", "engine.stop_cancel")
		hard, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		err = e.jobs.stopAndCancel(hard)
	}
	close(e.stopped)
	// Beat until the jobs are done: the others must not take them over
	// while they finish here.
	stopBeat()
	e.beating.Wait()
	// Errors held while the database was unreachable: one last try.
	flushCtx, cancelFlush := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	e.flushHeld(flushCtx)
	cancelFlush()
	if serr := e.store.StopInstance(context.WithoutCancel(ctx), e.cfg.InstanceID, e.now()); serr != nil {
		e.log.Warn("cannot record the stop of this instance; the others will declare it lost", "event", "instance.stop_error", "error", serr)
	}
	e.events.Stop() // live event feed (events.go): after the jobs, so their last events are streamed
	if err != nil {
		return pb.WrapError(pb.KindInternal, err, "stop River")
	}
	e.log.Info("engine stopped", "event", "engine.stopped")
	return nil
}

// Stopping reports whether Stop was called (so an aborted phase knows it
// was interrupted, not cancelled by an operator).
func (e *Engine) stopping() bool {
	select {
	case <-e.stopped:
		return true
	default:
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.started
}

func (e *Engine) now() time.Time { return store.Canon(e.clock.Now()) }

// trackRunning registers the cancel func of an execution's running phase,
// so a cancel on this instance stops it at once.
// A live send's batches may run side by side on one instance: each
// registers its own.
func (e *Engine) trackRunning(id int64, cancel context.CancelCauseFunc) func() {
	e.mu.Lock()
	e.runSeq++
	key := e.runSeq
	if e.running[id] == nil {
		e.running[id] = map[uint64]context.CancelCauseFunc{}
	}
	e.running[id][key] = cancel
	e.mu.Unlock()
	return func() {
		e.mu.Lock()
		delete(e.running[id], key)
		if len(e.running[id]) == 0 {
			delete(e.running, id)
		}
		e.mu.Unlock()
	}
}

func (e *Engine) cancelLocal(id int64, cause error) {
	e.mu.Lock()
	var cancels []context.CancelCauseFunc
	for _, c := range e.running[id] {
		cancels = append(cancels, c)
	}
	e.mu.Unlock()
	for _, c := range cancels {
		c(cause)
	}
}

type versionKey struct {
	id      int64
	version int
}

// maxCachedVersions bounds the version cache (a static audience can be
// large).
const maxCachedVersions = 1024

// automationVersion returns version v of automation id. Versions never
// change once written, so they are cached: every phase reads its
// execution's version.
func (e *Engine) automationVersion(ctx context.Context, tx versionReader, id int64, v int) (*pb.Automation, error) {
	k := versionKey{id, v}
	e.mu.Lock()
	a := e.versions[k]
	e.mu.Unlock()
	if a != nil {
		return a, nil
	}
	a, err := tx.GetAutomationVersion(ctx, id, v)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	if len(e.versions) >= maxCachedVersions {
		for old := range e.versions { // evict one at random
			delete(e.versions, old)
			break
		}
	}
	e.versions[k] = a
	e.mu.Unlock()
	return a, nil
}

// versionReader reads automation versions: a *store.Tx or the *store.Store.
type versionReader interface {
	GetAutomationVersion(ctx context.Context, id int64, v int) (*pb.Automation, error)
}

// errorHandler makes sure no phase job vanishes: when River gives up on one
// (its last attempt failed, e.g. the database was down all along), the
// execution is failed with the reason instead of staying "running" forever.
type errorHandler struct{ e *Engine }

func (h *errorHandler) HandleError(ctx context.Context, job *rivertype.JobRow, err error) *river.ErrorHandlerResult {
	h.e.giveUp(ctx, job, fmt.Sprintf("failed %d times: %v", job.Attempt, err))
	return nil
}

func (h *errorHandler) HandlePanic(ctx context.Context, job *rivertype.JobRow, panicVal any, trace string) *river.ErrorHandlerResult {
	h.e.log.Error("job panicked: this is a bug, please report it", "event", "job.panic", "job_id", job.ID, "kind", job.Kind, "panic", fmt.Sprint(panicVal), "trace", trace)
	h.e.giveUp(ctx, job, fmt.Sprintf("panicked %d times: %v", job.Attempt, panicVal))
	return nil
}

// giveUp fails the execution of a phase job on its last attempt.
func (e *Engine) giveUp(ctx context.Context, job *rivertype.JobRow, why string) {
	if job.Kind != (phaseArgs{}).Kind() || job.Attempt < job.MaxAttempts {
		return
	}
	var args phaseArgs
	if err := json.Unmarshal(job.EncodedArgs, &args); err != nil {
		e.log.Error("cannot read the arguments of a job River gave up on", "event", "job.discarded", "job_id", job.ID, "error", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := e.store.InTx(ctx, func(tx *store.Tx) error {
		ex, err := tx.GetExecutionRow(ctx, args.ExecutionID, true)
		if err != nil {
			return err
		}
		perr := pb.Errorf(pb.KindInternal, "phase %s gave up: its job %s", args.Phase, why).WithPhase(args.Phase).
			With("job_id", fmt.Sprint(job.ID))
		now := e.now()
		if err := tx.EndPhase(ctx, ex.ID, args.Phase, store.PhaseEnd{Status: pb.PhaseFailed, Error: perr, Now: now}); err != nil {
			return err
		}
		e.phaseEnded(ctx, tx, ex.ID, args.Phase, pb.PhaseFailed, now)
		if err := e.recordEventTx(ctx, tx, &pb.Event{AutomationID: ex.AutomationID, ExecutionID: ex.ID, Type: pb.EventError,
			Phase: args.Phase, Message: perr.Message, Data: map[string]string{"kind": string(perr.Kind)}}); err != nil {
			return err
		}
		if ex.Status.Final() {
			return nil // a cleanup that gave up: the outcome stands
		}
		return e.finish(ctx, tx, ex, pb.StatusFailed, perr, "")
	})
	if err != nil {
		e.log.Error("River gave up on a phase job and the execution could not be failed; it needs an operator",
			"event", "job.discarded", "job_id", job.ID, "execution_id", args.ExecutionID, "phase", args.Phase, "error", err)
		return
	}
	e.log.Error("River gave up on a phase job; execution failed", "event", "job.discarded", "job_id", job.ID,
		"execution_id", args.ExecutionID, "phase", args.Phase, "reason", why)
}

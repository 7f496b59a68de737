// Package metrics exports pushblaster's Prometheus metrics: it is the
// engine's pb.Observer (counters and histograms fed as executions run) and
// reads the rest at scrape time (active executions from the store, the
// database pool, SSE subscribers). Every metric lives on a registry of its
// own, never the global one. docs/operations.md lists them with what to
// alert on.
package metrics

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	pb "github.com/pushblaster/pushblaster"
)

// namespace prefixes every pushblaster metric.
const namespace = "pushblaster"

// Options says where the scrape-time metrics come from. Every field is
// optional: a nil source leaves its metrics out rather than reporting a
// made-up zero.
type Options struct {
	// ActiveExecutions counts the executions in each non-final status
	// (store.Store.CountActiveByStatus); it runs at every scrape.
	ActiveExecutions func(ctx context.Context) (map[pb.ExecutionStatus]int64, error)
	// QueryTimeout bounds ActiveExecutions (default 5s).
	QueryTimeout time.Duration
	// Subscribers counts the live SSE subscriptions of this instance.
	Subscribers func() int
	// Pool is the PostgreSQL pool whose statistics are exported.
	Pool *pgxpool.Pool
	// DB is the database/sql pool whose statistics are exported (SQLite).
	DB *sql.DB
	// Version is the build's version, exported in pushblaster_build_info.
	Version string
	// Logger receives scrape errors (default: slog.Default()).
	Logger *slog.Logger
}

// Metrics is the engine's pb.Observer and the /metrics handler. It is safe
// for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	executionsFinished *prometheus.CounterVec
	phaseDuration      *prometheus.HistogramVec
	sends              *prometheus.CounterVec
	sendFailures       *prometheus.CounterVec
	capped             *prometheus.CounterVec
	scriptDuration     *prometheus.HistogramVec
	errors             *prometheus.CounterVec

	handler http.Handler
}

var _ pb.Observer = (*Metrics)(nil)

// Histogram buckets, in seconds. Phases run from milliseconds (cleanup)
// to hours (the cancellation window, a large live send); scripts from a
// second to their timeout.
var (
	phaseBuckets  = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400}
	scriptBuckets = []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600}
)

// New returns the metrics, registered on a fresh registry with the Go
// runtime and process collectors.
func New(opts Options) *Metrics {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.QueryTimeout <= 0 {
		opts.QueryTimeout = 5 * time.Second
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		executionsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "executions_finished_total",
			Help: "Executions that reached a final status, by status (completed, failed, cancelled, skipped, missed).",
		}, []string{"status"}),
		phaseDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "phase_duration_seconds",
			Help:    "Time from a phase's (last) start to its end, by phase and outcome (completed, failed, cancelled).",
			Buckets: phaseBuckets,
		}, []string{"phase", "outcome"}),
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "sends_total",
			Help: "Deliveries that reached a final ledger state, by provider, audience (live, test) and outcome (sent, failed, invalid_token, capped, unknown).",
		}, []string{"provider", "audience", "outcome"}),
		sendFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "send_failures_total",
			Help: "Failed deliveries by provider and provider code (unavailable, quota_exceeded, template, …).",
		}, []string{"provider", "code"}),
		capped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "capped_recipients_total",
			Help: "Recipients held back from a live send, by reason (frequency_cap, cadence).",
		}, []string{"reason"}),
		scriptDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "script_duration_seconds",
			Help:    "Wall time of audience script runs of executions, by outcome (ok, exit_error, killed, start_error, timeout, stalled, cancelled, rejected, error).",
			Buckets: scriptBuckets,
		}, []string{"outcome"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "errors_total",
			Help: "Errors persisted as error events, by kind and phase (none outside a phase).",
		}, []string{"kind", "phase"}),
	}
	// Final statuses start at 0, so that rate() and increase() see the
	// first execution of each.
	for _, s := range pb.ExecutionStatuses {
		if s.Final() {
			m.executionsFinished.WithLabelValues(string(s))
		}
	}
	m.reg.MustRegister(m.executionsFinished, m.phaseDuration, m.sends, m.sendFailures, m.capped, m.scriptDuration, m.errors)
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	version := opts.Version
	if version == "" {
		version = "unknown"
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info", ConstLabels: prometheus.Labels{"version": version},
		Help: "Always 1; the version label names the running build.",
	}, func() float64 { return 1 }))
	if opts.Subscribers != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sse_subscribers",
			Help: "Live server-sent-event subscriptions on this instance.",
		}, func() float64 { return float64(opts.Subscribers()) }))
	}
	if opts.ActiveExecutions != nil {
		m.reg.MustRegister(&activeCollector{count: opts.ActiveExecutions, timeout: opts.QueryTimeout, desc: prometheus.NewDesc(
			prometheus.BuildFQName(namespace, "", "executions_active"),
			"Executions in a non-final status (scheduled, running, awaiting_send), counted in the database at scrape time: the same for every instance.",
			[]string{"status"}, nil)})
	}
	if opts.Pool != nil {
		m.reg.MustRegister(newPgxCollector(opts.Pool))
	}
	if opts.DB != nil {
		m.reg.MustRegister(newSQLCollector(opts.DB))
	}
	m.handler = promhttp.InstrumentMetricHandler(m.reg, promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog: errorLog{opts.Logger},
		// A failing source (the database is down) drops its own metrics,
		// not the whole scrape.
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg,
	}))
	return m
}

// Handler serves the metrics in the Prometheus text (or OpenMetrics)
// format.
func (m *Metrics) Handler() http.Handler { return m.handler }

// Gatherer returns the registry, for tests and for other exporters.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// ExecutionFinished implements pb.Observer.
func (m *Metrics) ExecutionFinished(s pb.ExecutionStatus) {
	m.executionsFinished.WithLabelValues(string(s)).Inc()
}

// PhaseEnded implements pb.Observer.
func (m *Metrics) PhaseEnded(p pb.Phase, s pb.PhaseStatus, d time.Duration) {
	m.phaseDuration.WithLabelValues(string(p), string(s)).Observe(d.Seconds())
}

// Sent implements pb.Observer.
func (m *Metrics) Sent(provider, audience string, s pb.DeliveryState, n int) {
	m.sends.WithLabelValues(provider, audience, string(s)).Add(float64(n))
}

// SendFailed implements pb.Observer.
func (m *Metrics) SendFailed(provider, code string, n int) {
	m.sendFailures.WithLabelValues(provider, providerCode(code)).Add(float64(n))
}

// Capped implements pb.Observer.
func (m *Metrics) Capped(reason string, n int) {
	m.capped.WithLabelValues(reason).Add(float64(n))
}

// ScriptEnded implements pb.Observer.
func (m *Metrics) ScriptEnded(outcome pb.ScriptOutcome, d time.Duration) {
	m.scriptDuration.WithLabelValues(string(outcome)).Observe(d.Seconds())
}

// ErrorRecorded implements pb.Observer.
func (m *Metrics) ErrorRecorded(k pb.Kind, p pb.Phase) {
	phase := string(p)
	if phase == "" {
		phase = "none"
	}
	m.errors.WithLabelValues(string(k), phase).Inc()
}

// providerCodes are the provider codes every sender uses (pb.Code…);
// anything else is counted as "other", so that a sender inventing codes
// cannot blow up the number of series.
var providerCodes = map[string]bool{
	pb.CodeUnavailable: true, pb.CodeInternal: true, pb.CodeQuotaExceeded: true, pb.CodeUnregistered: true,
	pb.CodeInvalidArgument: true, pb.CodeSenderIDMismatch: true, pb.CodeThirdPartyAuth: true,
	pb.CodeUnauthenticated: true, pb.CodeNetwork: true, pb.CodeTemplate: true, pb.CodeRejected: true,
}

func providerCode(code string) string {
	switch {
	case code == "":
		return "none"
	case providerCodes[code]:
		return code
	}
	return "other"
}

// activeCollector counts active executions in the store at scrape time:
// executions move between instances, so only the database knows.
type activeCollector struct {
	desc    *prometheus.Desc
	count   func(ctx context.Context) (map[pb.ExecutionStatus]int64, error)
	timeout time.Duration
}

func (c *activeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *activeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	counts, err := c.count(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, fmt.Errorf("count active executions: %w", err))
		return
	}
	for _, s := range pb.ExecutionStatuses {
		if !s.Final() {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), string(s))
		}
	}
}

// errorLog hands promhttp's errors to slog.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Println(v ...any) {
	l.log.Warn("metrics: collecting failed; the scrape goes on without the failing metrics", "event", "metrics.error", "error", fmt.Sprint(v...))
}

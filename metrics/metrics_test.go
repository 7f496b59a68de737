package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/internal/promtest"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/metrics"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// scrape GETs /metrics from m and returns the body.
func scrape(t *testing.T, m *metrics.Metrics) []byte {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.Bytes()
}

func TestObserverCounts(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Options{Logger: quiet()})
	m.ExecutionFinished(pb.StatusCompleted)
	m.ExecutionFinished(pb.StatusCompleted)
	m.ExecutionFinished(pb.StatusMissed)
	m.PhaseEnded(pb.PhaseAudience, pb.PhaseCompleted, 2*time.Second)
	m.PhaseEnded(pb.PhaseLiveSend, pb.PhaseFailed, 90*time.Second)
	m.Sent("fcm", "live", pb.DeliverySent, 250)
	m.Sent("fcm", "live", pb.DeliverySent, 10)
	m.Sent("fcm", "live", pb.DeliveryFailed, 3)
	m.Sent("fcm", "test", pb.DeliverySent, 1)
	m.SendFailed("fcm", pb.CodeUnavailable, 2)
	m.SendFailed("fcm", "made_up_by_a_plugin", 1)
	m.Capped("frequency_cap", 4)
	m.ScriptEnded(pb.ScriptTimeout, 90*time.Second)
	m.ErrorRecorded(pb.KindExternal, pb.PhaseLiveSend)
	m.ErrorRecorded(pb.KindDatabase, "")

	s := promtest.Parse(t, scrape(t, m))
	s.Want(t, 2, "pushblaster_executions_finished_total", "status", "completed")
	s.Want(t, 1, "pushblaster_executions_finished_total", "status", "missed")
	s.Want(t, 0, "pushblaster_executions_finished_total", "status", "failed") // every final status starts at 0
	s.Want(t, 1, "pushblaster_phase_duration_seconds_count", "phase", "audience", "outcome", "completed")
	s.Want(t, 2, "pushblaster_phase_duration_seconds_sum", "phase", "audience", "outcome", "completed")
	s.Want(t, 0, "pushblaster_phase_duration_seconds_bucket", "phase", "audience", "outcome", "completed", "le", "1")
	s.Want(t, 1, "pushblaster_phase_duration_seconds_bucket", "phase", "audience", "outcome", "completed", "le", "2.5")
	s.Want(t, 1, "pushblaster_phase_duration_seconds_count", "phase", "live_send", "outcome", "failed")
	s.Want(t, 260, "pushblaster_sends_total", "provider", "fcm", "audience", "live", "outcome", "sent")
	s.Want(t, 3, "pushblaster_sends_total", "provider", "fcm", "audience", "live", "outcome", "failed")
	s.Want(t, 1, "pushblaster_sends_total", "provider", "fcm", "audience", "test", "outcome", "sent")
	s.Want(t, 2, "pushblaster_send_failures_total", "provider", "fcm", "code", "unavailable")
	s.Want(t, 1, "pushblaster_send_failures_total", "provider", "fcm", "code", "other") // unknown codes cannot add series
	s.Want(t, 4, "pushblaster_capped_recipients_total", "reason", "frequency_cap")
	s.Want(t, 1, "pushblaster_script_duration_seconds_count", "outcome", "timeout")
	s.Want(t, 90, "pushblaster_script_duration_seconds_sum", "outcome", "timeout")
	s.Want(t, 1, "pushblaster_errors_total", "kind", "external", "phase", "live_send")
	s.Want(t, 1, "pushblaster_errors_total", "kind", "database", "phase", "none")
	s.Want(t, 1, "pushblaster_build_info", "version", "unknown")
	for _, absent := range []string{"pushblaster_executions_active", "pushblaster_sse_subscribers", "pushblaster_db_open_connections"} {
		if got := s.Of(absent); len(got) > 0 {
			t.Errorf("%s without a source: %v, want absent", absent, got)
		}
	}
	if len(s.Of("go_goroutines")) == 0 || len(s.Of("process_cpu_seconds_total")) == 0 {
		t.Error("the Go and process collectors are missing")
	}
}

func TestScrapeTimeSources(t *testing.T) {
	t.Parallel()
	db := testdb.NewSQLite(t)
	subscribers := 7
	m := metrics.New(metrics.Options{
		Logger:      quiet(),
		Version:     "v1.2.3",
		Subscribers: func() int { return subscribers },
		ActiveExecutions: func(context.Context) (map[pb.ExecutionStatus]int64, error) {
			return map[pb.ExecutionStatus]int64{pb.StatusRunning: 2}, nil
		},
		DB: db.SQLite.DB,
	})
	s := promtest.Parse(t, scrape(t, m))
	s.Want(t, 7, "pushblaster_sse_subscribers")
	s.Want(t, 2, "pushblaster_executions_active", "status", "running")
	s.Want(t, 0, "pushblaster_executions_active", "status", "scheduled") // every active status is reported
	s.Want(t, 0, "pushblaster_executions_active", "status", "awaiting_send")
	if got := s.Of("pushblaster_executions_active"); len(got) != 3 {
		t.Errorf("executions_active: %v, want the three non-final statuses", got)
	}
	s.Want(t, 1, "pushblaster_build_info", "version", "v1.2.3")
	st := db.SQLite.DB.Stats()
	s.Want(t, float64(st.MaxOpenConnections), "pushblaster_db_max_open_connections")
	s.Want(t, float64(st.OpenConnections), "pushblaster_db_open_connections")
	s.Want(t, float64(st.WaitCount), "pushblaster_db_waits_total")
	s.Want(t, float64(st.MaxIdleClosed), "pushblaster_db_closed_connections_total", "reason", "max_idle")
	if got := s.Of("pushblaster_db_acquires_total"); len(got) > 0 {
		t.Errorf("database/sql has no acquire count, yet: %v", got)
	}
	subscribers = 0
	promtest.Parse(t, scrape(t, m)).Want(t, 0, "pushblaster_sse_subscribers")
}

func TestPostgresPool(t *testing.T) {
	t.Parallel()
	db := testdb.NewPostgres(t)
	m := metrics.New(metrics.Options{Logger: quiet(), Pool: db.Pool})
	c, err := db.Pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	st := db.Pool.Stat() // nothing else uses the pool now
	s := promtest.Parse(t, scrape(t, m))
	s.Want(t, 1, "pushblaster_db_in_use_connections")
	s.Want(t, float64(st.MaxConns()), "pushblaster_db_max_open_connections")
	s.Want(t, float64(st.TotalConns()), "pushblaster_db_open_connections")
	s.Want(t, float64(st.IdleConns()), "pushblaster_db_idle_connections")
	s.Want(t, float64(st.AcquireCount()), "pushblaster_db_acquires_total")
	s.Want(t, float64(st.EmptyAcquireCount()), "pushblaster_db_waits_total")
	s.Want(t, float64(st.NewConnsCount()), "pushblaster_db_new_connections_total")
	s.Want(t, float64(st.MaxIdleDestroyCount()), "pushblaster_db_closed_connections_total", "reason", "max_idle_time")
	if problems, err := testutil.GatherAndLint(m.Gatherer()); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}

// A failing source loses its own metrics, not the scrape.
func TestFailingSourceKeepsTheRest(t *testing.T) {
	t.Parallel()
	var logged bytes.Buffer
	m := metrics.New(metrics.Options{
		Logger: slog.New(slog.NewTextHandler(&logged, nil)),
		ActiveExecutions: func(context.Context) (map[pb.ExecutionStatus]int64, error) {
			return nil, errors.New("database is down")
		},
	})
	m.ExecutionFinished(pb.StatusFailed)
	s := promtest.Parse(t, scrape(t, m))
	s.Want(t, 1, "pushblaster_executions_finished_total", "status", "failed")
	if got := s.Of("pushblaster_executions_active"); len(got) > 0 {
		t.Errorf("executions_active while its query fails: %v", got)
	}
	if !strings.Contains(logged.String(), "database is down") || !strings.Contains(logged.String(), "metrics.error") {
		t.Errorf("the failure is not logged: %s", logged.String())
	}
}

// The whole registry (Go and process collectors included) passes the
// linter promtool uses, and promtool itself when installed.
func TestLint(t *testing.T) {
	t.Parallel()
	db := testdb.NewSQLite(t)
	m := metrics.New(metrics.Options{
		Logger: quiet(), Subscribers: func() int { return 1 }, DB: db.SQLite.DB,
		ActiveExecutions: db.Store.CountActiveByStatus,
	})
	for _, s := range pb.ExecutionStatuses {
		if s.Final() {
			m.ExecutionFinished(s)
		}
	}
	for _, p := range pb.Phases {
		m.PhaseEnded(p, pb.PhaseCompleted, time.Second)
	}
	for _, st := range []pb.DeliveryState{pb.DeliverySent, pb.DeliveryFailed, pb.DeliveryInvalidToken, pb.DeliveryCapped, pb.DeliveryUnknown} {
		m.Sent("log", "live", st, 1)
	}
	m.SendFailed("log", pb.CodeNetwork, 1)
	m.Capped("cadence", 1)
	for _, o := range pb.ScriptOutcomes {
		m.ScriptEnded(o, time.Second)
	}
	m.ErrorRecorded(pb.KindTimeout, pb.PhaseAudience)
	problems, err := testutil.GatherAndLint(m.Gatherer())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	body := scrape(t, m)
	t.Run("promtool", func(t *testing.T) { promtest.Promtool(t, body) })
}

// Hooks run per ledger round, on the send path: they must stay cheap.
func BenchmarkSent(b *testing.B) {
	m := metrics.New(metrics.Options{Logger: quiet()})
	b.ReportAllocs()
	for b.Loop() {
		m.Sent("fcm", "live", pb.DeliverySent, 250)
	}
}

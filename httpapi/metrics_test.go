package httpapi_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/riverqueue/river/riverdriver/riversqlite"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/httpapi"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
	"github.com/pushblaster/pushblaster/internal/promtest"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/metrics"
)

// newMetricsAPI is newAPI with the metrics wired as serve wires them: the
// engine reports to them and GET /metrics serves them.
func newMetricsAPI(t *testing.T) *api {
	t.Helper()
	db := testdb.NewSQLite(t)
	clock := fakeclock.New(t0)
	var eng *engine.Engine
	m := metrics.New(metrics.Options{
		Logger: quietLogger(), Version: "test", DB: db.SQLite.DB,
		ActiveExecutions: db.Store.CountActiveByStatus,
		Subscribers:      func() int { return eng.Events().Subscribers() },
	})
	eng, err := engine.New(db.Store, riversqlite.New(db.SQLite.DB), engine.Config{
		Clock: clock, Logger: quietLogger(), TickInterval: 50 * time.Millisecond, PollInterval: 20 * time.Millisecond,
		Observer: m,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(httpapi.NewServer(eng, httpapi.Options{Clock: clock, Logger: quietLogger(), Metrics: m.Handler()}))
	t.Cleanup(srv.Close)
	return &api{t: t, eng: eng, store: db.Store, clock: clock, srv: srv}
}

// TestMetricsAfterAnExecution scrapes /metrics from a server that ran one
// execution (three live pushes and one test push through the log
// provider) and checks the numbers, then has promtool check the scrape.
func TestMetricsAfterAnExecution(t *testing.T) {
	t.Parallel()
	a := newMetricsAPI(t)
	a.start()
	def := definition("measured")
	def["lead_time"] = "0s"
	def["test_audience"] = []map[string]string{{"user_id": "qa", "token": "tq"}}
	auto := a.create(def)
	var ex pb.Execution
	expect(t, a.do("POST", fmt.Sprintf("/api/automations/%d/run", auto.ID), nil), http.StatusCreated, &ex)
	waitFor(t, "execution final and cleaned up", func() (bool, string) {
		got := a.execution(ex.ID)
		return got.Status.Final() && got.PhaseRecord(pb.PhaseCleanup).Status == pb.PhaseCompleted, string(got.Status)
	})

	// The engine reports a phase just after committing it: wait for the
	// scrape to show all five.
	var body []byte
	var s promtest.Samples
	waitFor(t, "five phase ends in the scrape", func() (bool, string) {
		r := a.do("GET", "/metrics", nil)
		if r.status != http.StatusOK {
			return false, r.String()
		}
		body, s = r.body, promtest.Parse(t, r.body)
		if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Fatalf("Content-Type %q, want the Prometheus text format", ct)
		}
		n := 0.0
		for _, p := range pb.Phases {
			n += s[promtest.Series("pushblaster_phase_duration_seconds_count", "phase", string(p), "outcome", "completed")]
		}
		return n == 5, fmt.Sprint(s.Of("pushblaster_phase_duration_seconds_count"))
	})
	for _, p := range pb.Phases {
		s.Want(t, 1, "pushblaster_phase_duration_seconds_count", "phase", string(p), "outcome", "completed")
	}
	s.Want(t, 3, "pushblaster_sends_total", "provider", "log", "audience", "live", "outcome", "sent")
	s.Want(t, 1, "pushblaster_sends_total", "provider", "log", "audience", "test", "outcome", "sent")
	s.Want(t, 1, "pushblaster_executions_finished_total", "status", "completed")
	s.Want(t, 0, "pushblaster_executions_finished_total", "status", "failed")
	for _, st := range []string{"scheduled", "running", "awaiting_send"} {
		s.Want(t, 0, "pushblaster_executions_active", "status", st)
	}
	s.Want(t, 0, "pushblaster_sse_subscribers")
	s.Want(t, 1, "pushblaster_db_max_open_connections") // SQLite: one connection
	s.Want(t, 1, "pushblaster_build_info", "version", "test")
	for _, none := range []string{"pushblaster_errors_total", "pushblaster_send_failures_total", "pushblaster_capped_recipients_total"} {
		if got := s.Of(none); len(got) > 0 {
			t.Errorf("nothing failed, yet %v", got)
		}
	}
	t.Run("promtool", func(t *testing.T) { promtest.Promtool(t, body) })
}

func TestMetricsNotEnabled(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	e := expectError(t, a.do("GET", "/metrics", nil), http.StatusNotFound, pb.KindNotFound)
	if !strings.Contains(e.Message, "metrics are not enabled") {
		t.Errorf("message %q", e.Message)
	}
}

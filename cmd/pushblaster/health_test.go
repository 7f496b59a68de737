package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/internal/testdb"
)

// TestHealthCommandThroughADatabaseOutage: the real server on PostgreSQL
// reached through a proxy; the database goes away and comes back.
// pushblaster health exits 0 (healthy), 2 (critical, naming the database)
// and 0 again; pushblaster errors then lists the outage.
func TestHealthCommandThroughADatabaseOutage(t *testing.T) {
	t.Parallel()
	db := testdb.NewPostgres(t)
	proxy := testdb.NewProxy(t)
	s := startServer(t, []string{"PUSHBLASTER_DATABASE_URL=" + proxy.URL() + "&search_path=" + db.Schema},
		"--heartbeat-interval", "200ms", "--lost-after", "1s")
	health := func() (string, int) {
		out, err := s.cli("health")
		_, code := printed(err)
		return out, code
	}
	pollUntil(t, "healthy", func() (bool, string) {
		out, code := health()
		return code == 0 && strings.HasPrefix(out, "HEALTHY"), out
	})
	out, err := s.cli("health", "--json")
	var h pb.Health
	if err != nil || json.Unmarshal([]byte(out), &h) != nil || h.Status != pb.HealthHealthy || h.DBPool.Max != 10 || h.Database.Dialect != "postgres" {
		t.Fatalf("health --json: %v %s", err, out)
	}

	proxy.Cut()
	pollUntil(t, "critical, with the heartbeats failing", func() (bool, string) {
		out, code := health()
		return code == exitCritical && strings.HasPrefix(out, "CRITICAL") && strings.Contains(out, pb.ProblemDatabaseUnreachable) &&
			strings.Contains(out, "heartbeats fail"), out
	})
	// The API itself still answers.
	if code := s.do("GET", "/healthz", nil, nil); code != http.StatusOK {
		t.Errorf("healthz during the outage: %d", code)
	}

	proxy.Restore()
	pollUntil(t, "healthy again", func() (bool, string) {
		out, code := health()
		return code == 0, out
	})
	pollUntil(t, "the outage in pushblaster errors", func() (bool, string) {
		out, err := s.cli("errors", "--kind", "database")
		return err == nil && strings.Contains(out, "database unreachable from"), out
	})
	s.stop()
	// Stopped: no answer at all.
	if out, code := health(); code != exitUnreachable || !strings.Contains(out, "cannot reach") {
		t.Errorf("health of a stopped server: %d %s", code, out)
	}
}

// TestHealthCommandDegraded: a degraded report exits 1 and prints every
// reason with its code.
func TestHealthCommandDegraded(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/health" {
			http.NotFound(w, r)
			return
		}
		at := time.Date(2026, 6, 1, 7, 0, 0, 0, time.UTC)
		_ = json.NewEncoder(w).Encode(pb.Health{Status: pb.HealthDegraded, InstanceID: "i1", CheckedAt: at,
			Problems:     []pb.HealthProblem{{Code: pb.ProblemPoolWaiting, Status: pb.HealthDegraded, Message: "3 statements wait for a database connection (10/10 in use)"}},
			Jobs:         map[string]int64{"running": 2, "stuck": 0},
			RecentErrors: []pb.ErrorRecord{{ID: 7, Kind: pb.KindExternal, ExecutionID: 4, Message: "fcm: quota exceeded", At: at, Stored: true}}})
	}))
	defer srv.Close()
	// No report is never a health status: a bad flag, a bad --server.
	for _, args := range [][]string{{"health", "--nope"}, {"health", "extra"}, {"health", "--server", "127.0.0.1:8080"}} {
		if _, _, code, _ := localRun(t, nil, args...); code != exitUnreachable {
			t.Errorf("pushblaster %v exits %d, want %d", args, code, exitUnreachable)
		}
	}
	out, _, code, _ := localRun(t, map[string]string{"PUSHBLASTER_SERVER": srv.URL}, "health")
	if code != exitDegraded || !strings.HasPrefix(out, "DEGRADED") || !strings.Contains(out, "pool_waiting: 3 statements wait") ||
		!strings.Contains(out, "running 2") || !strings.Contains(out, "fcm: quota exceeded") {
		t.Errorf("exit %d:\n%s", code, out)
	}
}

// TestHealthWhenPostgreSQLStops: the real server on a PostgreSQL server of
// the test's own, which is stopped mid-run (pg_ctl stop -m fast) while an
// execution is due, then started again. The health turns critical and
// says why, the engine keeps running (its API answers), and when
// PostgreSQL is back the health recovers, the outage is a recorded error,
// and the execution that came due meanwhile completes, each push sent
// once.
func TestHealthWhenPostgreSQLStops(t *testing.T) {
	t.Parallel()
	pg := testdb.NewCluster(t)
	s := startServer(t, []string{"PUSHBLASTER_DATABASE_URL=" + pg.URL()}, "--heartbeat-interval", "200ms", "--lost-after", "1s")
	pollUntil(t, "healthy", func() (bool, string) {
		out, err := s.cli("health")
		return err == nil, out
	})
	created := s.createQuick("through-a-stop")
	// Due while PostgreSQL is down: its audience phase at send time − 1s.
	sendAt := time.Now().Add(4 * time.Second).UTC().Truncate(time.Second)
	var ex pb.Execution
	if code := s.do("POST", fmt.Sprintf("/api/automations/%d/run", created.ID), map[string]any{"send_at": sendAt}, &ex); code != http.StatusCreated {
		t.Fatalf("run: %d", code)
	}

	runID := ex.ID
	pg.Stop()
	var h pb.Health
	pollUntil(t, "critical, and past the send time", func() (bool, string) {
		out, err := s.cli("health", "--json")
		h = pb.Health{}
		_ = json.Unmarshal([]byte(out), &h)
		_, code := printed(err)
		return code == exitCritical && h.CheckedAt.After(sendAt.Add(2*time.Second)), out
	})
	if !h.Engine.Running || h.Database.Reachable || len(h.Problems) == 0 || h.Problems[0].Code != pb.ProblemDatabaseUnreachable {
		t.Fatalf("report during the outage: %+v", h)
	}
	pg.Start()
	pollUntil(t, "healthy again", func() (bool, string) {
		out, err := s.cli("health")
		return err == nil, out
	})
	pollUntil(t, "the execution due during the outage completed", func() (bool, string) {
		ex = pb.Execution{}
		s.do("GET", fmt.Sprintf("/api/executions/%d", runID), nil, &ex)
		return ex.Status.Final(), fmt.Sprintf("%s %s %v", ex.Status, ex.Phase, ex.Error)
	})
	if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 3 {
		t.Fatalf("execution: %s metrics %v error %v", ex.Status, ex.Metrics, ex.Error)
	}
	pollUntil(t, "the outage in pushblaster errors", func() (bool, string) {
		out, err := s.cli("errors", "--kind", "database")
		return err == nil && strings.Contains(out, "database unreachable from"), out
	})
	s.stop()
	for _, u := range []string{`"user_id":"a"`, `"user_id":"b"`, `"user_id":"c"`} {
		if n := countLines(s.stderr.String(), `"event":"send.log"`, u); n != 1 {
			t.Errorf("%s was sent %d times, want 1", u, n)
		}
	}
}

// countLines counts the lines of log holding every one of subs.
func countLines(log string, subs ...string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(l, s)
		}
		if all {
			n++
		}
	}
	return n
}

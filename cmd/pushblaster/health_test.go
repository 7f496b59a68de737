package main

import (
	"encoding/json"
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
	pollUntil(t, "critical", func() (bool, string) {
		out, code := health()
		return code == exitCritical && strings.HasPrefix(out, "CRITICAL") && strings.Contains(out, pb.ProblemDatabaseUnreachable), out
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
	out, _, code, _ := localRun(t, map[string]string{"PUSHBLASTER_SERVER": srv.URL}, "health")
	if code != exitDegraded || !strings.HasPrefix(out, "DEGRADED") || !strings.Contains(out, "pool_waiting: 3 statements wait") ||
		!strings.Contains(out, "running 2") || !strings.Contains(out, "fcm: quota exceeded") {
		t.Errorf("exit %d:\n%s", code, out)
	}
}

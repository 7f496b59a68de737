package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/fcm/fcmtest"
	"github.com/pushblaster/pushblaster/httpapi"
	"github.com/pushblaster/pushblaster/internal/testdb"
)

// fakeFCM starts a fake FCM and returns the serve flags that use it.
func fakeFCM(t *testing.T, latency time.Duration) (*fcmtest.Server, []string) {
	t.Helper()
	f, err := fcmtest.NewServer(fcmtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	f.SetLatency(latency)
	dir := t.TempDir()
	creds, cert := filepath.Join(dir, "key.json"), filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(creds, f.CredentialsJSON(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cert, f.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return f, []string{"--fcm-credentials", creds, "--fcm-endpoint", f.URL(), "--fcm-ca-file", cert}
}

// waitExecution polls the server until the execution is final.
func (s *server) waitExecution(id int64) *pb.Execution {
	s.t.Helper()
	var ex pb.Execution
	deadline := time.Now().Add(90 * time.Second)
	for {
		s.do("GET", fmt.Sprintf("/api/executions/%d", id), nil, &ex)
		if ex.Status.Final() && ex.PhaseRecord(pb.PhaseCleanup).Status == pb.PhaseCompleted {
			return &ex
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("execution %d not done: %s %v\nstderr:\n%s", id, ex.Status, ex.Metrics, s.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestKillMidSendResumesExactly: kill -9 of the instance sending a big
// push through FCM; another instance (PostgreSQL) or the restarted one
// (SQLite) declares it lost and finishes the send. Every recipient the
// ledger calls sent got exactly one push, nobody got two, and the ones in
// flight at the kill are reported unknown, not re-sent.
func TestKillMidSendResumesExactly(t *testing.T) {
	t.Parallel()
	for _, dialect := range testdb.Dialects {
		t.Run(dialect, func(t *testing.T) {
			t.Parallel()
			fake, fcmFlags := fakeFCM(t, 300*time.Millisecond)
			env := databaseEnv(t, dialect)
			flags := append([]string{"--heartbeat-interval", "100ms", "--lost-after", "1s",
				"--send-chunk-size", "100", "--send-batch-size", "500"}, fcmFlags...)
			victim := startServer(t, env, flags...)

			const n = 3000
			rs := make([]map[string]string, n)
			for i := range rs {
				rs[i] = map[string]string{"user_id": fmt.Sprintf("u%d", i), "token": fmt.Sprintf("tok-%d", i)}
			}
			var a pb.Automation
			if code := victim.do("POST", "/api/automations", map[string]any{
				"name": "crash", "schedule": map[string]string{"cron": "0 9 * * *"}, "lead_time": "0s",
				"audience": map[string]any{"type": "static", "recipients": rs},
				"message":  map[string]string{"title": "Hi {{.user_id}}"}, "delivery": map[string]string{"provider": "fcm"},
			}, &a); code != 201 {
				t.Fatalf("create: %d\n%s", code, victim.stderr)
			}
			var ex pb.Execution
			victim.do("POST", fmt.Sprintf("/api/automations/%d/run", a.ID), nil, &ex)
			// Kill it once a good part of the send went out.
			deadline := time.Now().Add(90 * time.Second)
			for fake.Total() < 400 {
				if time.Now().After(deadline) {
					t.Fatalf("the send never started: %d pushes\n%s", fake.Total(), victim.stderr)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if err := victim.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-victim.done
			atKill := fake.Total()

			survivor := startServer(t, env, flags...)
			got := survivor.waitExecution(ex.ID)
			if got.Status != pb.StatusCompleted {
				t.Fatalf("execution %s: %v %v\n%s", got.Status, got.Metrics, got.Error, survivor.stderr)
			}
			sent, unknown := got.Metrics[pb.MetricSent], got.Metrics[pb.MetricUnknown]
			if sent+unknown != n || got.Metrics[pb.MetricFailed] != 0 {
				t.Fatalf("metrics %v; want sent + unknown = %d", got.Metrics, n)
			}
			if unknown == 0 || sent < int64(atKill)-unknown {
				t.Errorf("metrics %v after %d pushes at the kill; want some unknown (in flight at the kill)", got.Metrics, atKill)
			}
			// The ledger against what FCM received, push by push.
			var ledger httpapi.DeliveryList
			survivor.do("GET", fmt.Sprintf("/api/executions/%d/deliveries?audience=live&limit=10000", ex.ID), nil, &ledger)
			if len(ledger.Deliveries) != n {
				t.Fatalf("ledger has %d rows; want %d", len(ledger.Deliveries), n)
			}
			arrivedUnknown := 0
			for _, d := range ledger.Deliveries {
				c := fake.Count(d.Token)
				switch {
				case c > 1:
					t.Fatalf("%s got %d pushes", d.Token, c)
				case d.State == pb.DeliverySent && c != 1:
					t.Fatalf("ledger says %s was sent; FCM received it %d times", d.Token, c)
				case d.State == pb.DeliveryUnknown:
					arrivedUnknown += c
				case d.State != pb.DeliverySent:
					t.Fatalf("%s is %s", d.Token, d.State)
				}
			}
			if fake.Total() != int(sent)+arrivedUnknown {
				t.Errorf("FCM accepted %d pushes; the ledger explains %d sent + %d unknown that arrived", fake.Total(), sent, arrivedUnknown)
			}
			t.Logf("%d pushes at the kill; final: sent %d, unknown %d (of which %d arrived)", atKill, sent, unknown, arrivedUnknown)
			survivor.stop()
		})
	}
}

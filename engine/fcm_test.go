package engine_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/fcm"
	"github.com/pushblaster/pushblaster/fcm/fcmtest"
)

// withFakeFCM runs the engine's "fcm" provider against a fake FCM.
func withFakeFCM(t *testing.T) (*fcmtest.Server, option) {
	t.Helper()
	f, err := fcmtest.NewServer(fcmtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	c, err := fcm.New(fcm.Config{CredentialsJSON: f.CredentialsJSON(), Endpoint: f.URL(), HTTPClient: f.Client(),
		Backoff: pb.Backoff{Base: time.Millisecond, Max: 10 * time.Millisecond}, QuotaBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return f, func(cfg *engine.Config) { cfg.Senders = map[string]pb.Sender{"fcm": c} }
}

// TestFCMSendsRenderedPushesAndForgetsDeadTokens: through the FCM client
// and a fake FCM: every recipient gets its own rendered message, an
// UNREGISTERED token is recorded and never requested again.
func TestFCMSendsRenderedPushesAndForgetsDeadTokens(t *testing.T) {
	t.Parallel()
	f, opt := withFakeFCM(t)
	b := setup(t, "sqlite", opt)
	f.Unregister("u-token-2")
	a := automation("fcm")
	a.Delivery.Provider = "fcm"
	a.Message = pb.Message{Title: "Hi {{.user_id}}", Body: "b", Data: map[string]string{"who": "{{.user_id}}"}}
	a = b.create(a)
	ex := b.runOnce(a, 1)
	if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 2 || ex.Metrics[pb.MetricInvalidToken] != 1 || ex.Metrics[pb.MetricTestSent] != 1 {
		t.Fatalf("%s %v", describe(ex), ex.Metrics)
	}
	got := f.Received("u-token-3")
	if len(got) != 1 || got[0].Title != "Hi u3" || got[0].Data["who"] != "u3" {
		t.Fatalf("u3 received %+v", got)
	}
	if r := b.ledger(ex.ID)["u2"]; r.State != pb.DeliveryInvalidToken || r.Code != pb.CodeUnregistered || !strings.Contains(r.Reason, "UNREGISTERED") {
		t.Errorf("u2 = %+v", r)
	}
	before := f.Requests()
	ex2 := b.runOnce(a, 2)
	if ex2.Metrics[pb.MetricSent] != 2 || ex2.Metrics[pb.MetricInvalidToken] != 1 {
		t.Fatalf("second run: %v", ex2.Metrics)
	}
	if n := f.Requests() - before; n != 3 { // u1, u3 and the tester
		t.Errorf("second run made %d requests; want 3 (u2's dead token is not requested again)", n)
	}
}

// TestFCMOutageTripsTheBreaker: FCM answers UNAVAILABLE to everything; the
// retries run out, the breaker stops the send after about 100 failures.
func TestFCMOutageTripsTheBreaker(t *testing.T) {
	t.Parallel()
	f, opt := withFakeFCM(t)
	b := setup(t, "sqlite", opt, func(c *engine.Config) { c.SendChunkSize = 50 })
	f.SetFailRate(1, "UNAVAILABLE")
	a := automation("outage")
	a.Delivery.Provider = "fcm"
	a.TestAudience = nil
	a.Audience.Recipients = recipients("u", 1000)
	ex := b.runOnce(b.create(a), 1)
	if ex.Status != pb.StatusFailed || pb.ErrorCode(ex.Error) != "circuit_breaker" {
		t.Fatalf("%s", describe(ex))
	}
	// A request that times out on a loaded machine is unknown, not failed.
	failed, unknown := ex.Metrics[pb.MetricFailed], ex.Metrics[pb.MetricUnknown]
	if failed < 50 || failed+unknown < 100 || failed+unknown > 250 || ex.Metrics[pb.MetricSent] != 0 {
		t.Fatalf("metrics %v; want the send stopped after 100 to 250 attempts, most failed", ex.Metrics)
	}
	for u, r := range b.ledger(ex.ID) {
		if r.State == pb.DeliveryUnknown {
			continue
		}
		if r.State != pb.DeliveryFailed || r.Code != pb.CodeUnavailable || r.Attempts != fcm.DefaultMaxAttempts {
			t.Fatalf("%s: %+v; want unavailable after %d attempts", u, r, fcm.DefaultMaxAttempts)
		}
	}
	if f.Requests() < int(failed)*fcm.DefaultMaxAttempts {
		t.Errorf("FCM saw %d requests for %d failed pushes", f.Requests(), failed)
	}
}

// TestFCMCancelMidSend: a forced cancel during a slow send stops it; the
// ledger says exactly who FCM got a push for.
func TestFCMCancelMidSend(t *testing.T) {
	t.Parallel()
	f, opt := withFakeFCM(t)
	b := setup(t, "sqlite", opt, func(c *engine.Config) { c.SendChunkSize = 100 })
	f.SetLatency(100 * time.Millisecond)
	a := automation("cancel")
	a.Delivery.Provider = "fcm"
	a.TestAudience = nil
	a.Audience.Recipients = recipients("u", 3000)
	a = b.create(a)
	send := berlin(2026, 6, 1, 9, 30)
	b.clock.Set(send.Add(-30 * time.Minute))
	ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
	b.clock.Set(send)
	waitFor(t, "some pushes to go out", func() (bool, string) { return f.Total() >= 300, fmt.Sprint(f.Total()) })
	got, err := b.eng.CancelExecution(t.Context(), ex.ID, pb.CancelParams{Force: true, Reason: "wrong message"})
	if err != nil {
		t.Fatal(err)
	}
	// The answer to the cancel already says how far the send got.
	if got.Metrics[pb.MetricSent] == 0 {
		t.Errorf("cancel answered metrics %v; want the pushes sent so far", got.Metrics)
	}
	ex = b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
	if ex.Status != pb.StatusCancelled || ex.PhaseRecord(pb.PhaseLiveSend).Status != pb.PhaseCancelled {
		t.Fatalf("%s", describe(ex))
	}
	sent, explained := 0, 0
	for u, r := range b.ledger(ex.ID) {
		c := f.Count(r.Token)
		explained += c
		switch {
		case c > 1:
			t.Fatalf("%s got %d pushes", u, c)
		case r.State == pb.DeliverySent:
			sent++
			if c != 1 {
				t.Fatalf("ledger says %s was sent; FCM got %d", u, c)
			}
		case c == 1 && r.State != pb.DeliveryUnknown:
			t.Fatalf("FCM got %s's push but the ledger says %s", u, r.State)
		}
	}
	if explained != f.Total() {
		t.Errorf("FCM accepted %d pushes; the ledger accounts for %d", f.Total(), explained)
	}
	if sent == 0 || sent >= 3000 || int64(sent) != ex.Metrics[pb.MetricSent] {
		t.Errorf("sent %d (metrics %v); want a part of the 3000", sent, ex.Metrics)
	}
}

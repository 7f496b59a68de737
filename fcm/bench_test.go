package fcm_test

import (
	"fmt"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/fcm"
	"github.com/pushblaster/pushblaster/fcm/fcmtest"
)

// BenchmarkSend sends b.N pushes through the fake with 20 ms of latency
// per request, as FCM's is, with the default in-flight limit: it measures
// what one client sustains (sends/s) with client and fake on the same
// machine.
func BenchmarkSend(b *testing.B) {
	srv, err := fcmtest.NewServer(fcmtest.Options{ReceivedLimit: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Close)
	srv.SetLatency(20 * time.Millisecond)
	c, err := fcm.New(fcm.Config{CredentialsJSON: srv.CredentialsJSON(), Endpoint: srv.URL(), HTTPClient: srv.Client()})
	if err != nil {
		b.Fatal(err)
	}
	// Warm up: the access token and the connections.
	for _, r := range c.Send(b.Context(), benchPushes(1000)) {
		if r.State != pb.DeliverySent {
			b.Fatalf("warm-up: %q %v", r.State, r.Err)
		}
	}
	srv.Reset()
	ps := benchPushes(b.N)
	b.ReportAllocs()
	b.ResetTimer()
	res := c.Send(b.Context(), ps)
	b.StopTimer()
	for i, r := range res {
		if r.State != pb.DeliverySent {
			b.Fatalf("push %d: %q %v", i, r.State, r.Err)
		}
	}
	if srv.Total() != b.N {
		b.Fatalf("fake accepted %d of %d", srv.Total(), b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sends/s")
}

func benchPushes(n int) []pb.Push {
	ps := make([]pb.Push, n)
	for i := range ps {
		ps[i] = pb.Push{
			Recipient: pb.Recipient{UserID: fmt.Sprint("u", i), Token: fmt.Sprintf("bench-token-%08d:APA91bH", i)},
			Message: pb.Message{Title: "Your order has shipped", Body: "Track it in the app", Data: map[string]string{
				"deep_link": "app://orders/12345", "campaign": "shipping"}},
		}
	}
	return ps
}

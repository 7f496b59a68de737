package fcm_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/fcm"
	"github.com/pushblaster/pushblaster/fcm/fcmtest"
)

// TestNoGoroutineLeft runs every path that starts goroutines (token
// fetch, retries, cancel, a dropped connection, GOAWAY) and checks that
// once the server is closed nothing of the client or the fake is left.
// It is not parallel: it counts the process's goroutines.
func TestNoGoroutineLeft(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		srv, err := fcmtest.NewServer(fcmtest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		c, err := fcm.New(fcm.Config{CredentialsJSON: srv.CredentialsJSON(), Endpoint: srv.URL(), HTTPClient: srv.Client(),
			Sleep: func(ctx context.Context, _ time.Duration) error { return ctx.Err() }})
		if err != nil {
			t.Fatal(err)
		}
		srv.Script("drop", fcmtest.Drop)
		srv.Script("retry", fcmtest.Error(fcmtest.Unavailable))
		c.Send(t.Context(), pushes("a", "drop", "retry"))
		srv.GoAway()
		c.Send(t.Context(), pushes("b", "c"))

		srv.SetLatency(time.Hour)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan []pb.SendResult)
		// How many requests came before varies from run to run: the drop
		// cuts the connection that a and retry share, sometimes before
		// their requests arrive. So d and e are counted from here.
		sent := srv.Requests()
		go func() { done <- c.Send(ctx, pushes("d", "e")) }()
		inFlight := make(chan error, 1)
		go func() { inFlight <- srv.WaitRequests(ctx, sent+2) }()
		select {
		case err := <-inFlight:
			if err != nil {
				t.Fatal(err)
			}
		case res := <-done:
			t.Fatalf("Send returned before its requests were in flight (%d requests before, %d now): %+v", sent, srv.Requests(), res)
		}
		cancel()
		<-done
	}()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			var ours []string
			for _, g := range strings.Split(string(buf[:n]), "\n\n") {
				if strings.Contains(g, "net/http") || strings.Contains(g, "pushblaster") {
					ours = append(ours, g)
				}
			}
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), strings.Join(ours, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

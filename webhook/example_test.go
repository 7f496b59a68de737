package webhook_test

import (
	"fmt"
	"time"

	"github.com/pushblaster/pushblaster/webhook"
)

// A receiver checks every request before it trusts the body: in a handler,
// header and ts come from r.Header, body from io.ReadAll(r.Body), now from
// time.Now(). It answers 401 when Verify fails.
func ExampleVerify() {
	secret := []byte("shared secret")
	now := time.Unix(1735787045, 0)
	body := []byte(`{"batch_id":"…","sent_at":"2025-01-02T03:04:05Z","pushes":[]}`)
	header := webhook.Sign(secret, now.Unix(), body) // what the Sender put in X-Pushblaster-Signature
	ts := fmt.Sprint(now.Unix())                     // and in X-Pushblaster-Timestamp

	fmt.Println(webhook.Verify(secret, header, ts, body, now.Add(time.Minute), webhook.DefaultTolerance))
	fmt.Println(webhook.Verify(secret, header, ts, body, now.Add(time.Hour), webhook.DefaultTolerance) != nil)
	// Output:
	// <nil>
	// true
}

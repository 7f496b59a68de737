package apns_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/apns"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
)

const (
	testKeyID  = "ABC123DEFG"
	testTeamID = "TEAM123456"
	testTopic  = "com.example.app"
)

// testBundle is what one test works with.
type testBundle struct {
	fake   *fakeAPNs
	sender *apns.Sender
	cfg    apns.Config
	sleeps *sleepRecorder
	clock  *fakeclock.Clock
}

// setup starts a fake APNs and a Sender aimed at it. opts adjust the
// Sender's config before New.
func setup(t *testing.T, opts ...func(*apns.Config)) *testBundle {
	t.Helper()
	key := mustKey(t)
	fake := newFakeAPNs(t, &key.PublicKey, testKeyID, testTeamID, testTopic)
	b := &testBundle{fake: fake, sleeps: &sleepRecorder{}, clock: fakeclock.New(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))}
	b.cfg = apns.Config{
		KeyP8:       mustP8(t, key),
		KeyID:       testKeyID,
		TeamID:      testTeamID,
		Topic:       testTopic,
		Endpoint:    fake.srv.URL,
		HTTPClient:  fake.srv.Client(),
		MaxInFlight: 16,
		MaxAttempts: 3,
		Backoff:     pb.Backoff{Base: time.Second, Max: time.Minute},
		Now:         b.clock.Now,
		Sleep:       b.sleeps.sleep,
		Rand:        func() float64 { return 0.5 },
		Logger:      slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(&b.cfg)
	}
	s, err := apns.New(b.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	b.sender = s
	return b
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// mustP8 encodes key as Apple's .p8 files are: PKCS#8 in a PEM block.
func mustP8(t testing.TB, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// sleepRecorder stands in for Config.Sleep: it records each wait and
// returns at once.
type sleepRecorder struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleepRecorder) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.d = append(s.d, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleepRecorder) waits() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.d...)
}

// tok returns the i-th test device token (APNs tokens are hex).
func tok(i int) string { return fmt.Sprintf("%064x", i+1) }

func push(i int) pb.Push {
	return pb.Push{Recipient: pb.Recipient{UserID: fmt.Sprintf("u%d", i), Token: tok(i)},
		Message: pb.Message{Title: "Hello", Body: "World"}}
}

func pushes(n int) []pb.Push {
	ps := make([]pb.Push, n)
	for i := range ps {
		ps[i] = push(i)
	}
	return ps
}

// want is the expected part of a SendResult.
type want struct {
	state    pb.DeliveryState
	code     string
	attempts int
}

func check(t *testing.T, name string, got pb.SendResult, w want) {
	t.Helper()
	code := ""
	if got.Err != nil {
		code = got.Err.Context["code"]
	}
	if got.State != w.state || code != w.code || got.Attempts != w.attempts {
		t.Errorf("%s: got state %q code %q attempts %d (err: %v); want state %q code %q attempts %d",
			name, got.State, code, got.Attempts, got.Err, w.state, w.code, w.attempts)
	}
	if got.State == pb.DeliverySent && got.Err != nil {
		t.Errorf("%s: sent with an error: %v", name, got.Err)
	}
	if got.State != pb.DeliverySent && got.State != "" && got.Err == nil {
		t.Errorf("%s: state %q without an error", name, got.State)
	}
}

// receive waits for a signal on ch, failing the test after a generous
// deadline instead of hanging; it never asserts how long anything took.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("gave up waiting for %s", what)
		panic("unreachable")
	}
}

func TestNewValidation(t *testing.T) {
	t.Parallel()
	key := mustKey(t)
	good := apns.Config{KeyP8: mustP8(t, key), KeyID: testKeyID, TeamID: testTeamID, Topic: testTopic}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func(*apns.Config)
		fields []string
	}{
		{"empty", func(c *apns.Config) { *c = apns.Config{} },
			[]string{"apns.key_file", "apns.key_id", "apns.team_id", "apns.topic"}},
		{"not PEM", func(c *apns.Config) { c.KeyP8 = []byte("not a key") }, []string{"apns.key_file"}},
		{"not PKCS8", func(c *apns.Config) {
			c.KeyP8 = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("garbage")})
		}, []string{"apns.key_file"}},
		{"RSA key", func(c *apns.Config) { c.KeyP8 = mustP8(t, rsaKey) }, []string{"apns.key_file"}},
		{"P-384 key", func(c *apns.Config) { c.KeyP8 = mustP8(t, p384) }, []string{"apns.key_file"}},
		{"no key id", func(c *apns.Config) { c.KeyID = " " }, []string{"apns.key_id"}},
		{"no team id", func(c *apns.Config) { c.TeamID = "" }, []string{"apns.team_id"}},
		{"no topic", func(c *apns.Config) { c.Topic = "" }, []string{"apns.topic"}},
		{"bad endpoint", func(c *apns.Config) { c.Endpoint = "localhost:443" }, []string{"apns.endpoint"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.change(&cfg)
			s, err := apns.New(cfg)
			if err == nil {
				t.Fatalf("New accepted the config: %+v", s)
			}
			var pe *pb.Error
			if !errors.As(err, &pe) || pe.Kind != pb.KindValidation {
				t.Fatalf("New: %v; want a validation *pb.Error", err)
			}
			var got []string
			for _, f := range pe.Fields {
				got = append(got, f.Field)
			}
			if !reflect.DeepEqual(got, tc.fields) {
				t.Errorf("fields %v, want %v (%v)", got, tc.fields, err)
			}
		})
	}
	if _, err := apns.New(good); err != nil {
		t.Errorf("New with a good config: %v", err)
	}
}

// TestStatuses sends one push per kind of APNs answer in a single Send,
// which also shows that results come back in input order.
func TestStatuses(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *apns.Config) { c.MaxAttempts = 2 })
	cases := []struct {
		name    string
		replies []reply
		want    want
	}{
		{"200", nil, want{pb.DeliverySent, "", 1}},
		{"410 Unregistered", []reply{{status: 410, reason: "Unregistered", timestamp: 1700000000000}},
			want{pb.DeliveryInvalidToken, pb.CodeUnregistered, 1}},
		{"410 ExpiredToken", []reply{{status: 410, reason: "ExpiredToken"}},
			want{pb.DeliveryInvalidToken, pb.CodeUnregistered, 1}},
		{"400 BadDeviceToken", []reply{{status: 400, reason: "BadDeviceToken"}},
			want{pb.DeliveryInvalidToken, pb.CodeUnregistered, 1}},
		{"400 DeviceTokenNotForTopic", []reply{{status: 400, reason: "DeviceTokenNotForTopic"}},
			want{pb.DeliveryInvalidToken, pb.CodeUnregistered, 1}},
		{"400 BadTopic", []reply{{status: 400, reason: "BadTopic"}}, want{pb.DeliveryFailed, pb.CodeInvalidArgument, 1}},
		{"400 MissingTopic", []reply{{status: 400, reason: "MissingTopic"}}, want{pb.DeliveryFailed, pb.CodeInvalidArgument, 1}},
		{"400 BadPriority", []reply{{status: 400, reason: "BadPriority"}}, want{pb.DeliveryFailed, pb.CodeInvalidArgument, 1}},
		{"400 IdleTimeout then 200", []reply{{status: 400, reason: "IdleTimeout"}, {status: 200}},
			want{pb.DeliverySent, "", 2}},
		{"413 PayloadTooLarge", []reply{{status: 413, reason: "PayloadTooLarge"}},
			want{pb.DeliveryFailed, pb.CodeInvalidArgument, 1}},
		{"403 Forbidden", []reply{{status: 403, reason: "Forbidden"}}, want{pb.DeliveryFailed, pb.CodeUnauthenticated, 1}},
		{"403 InvalidProviderToken", []reply{{status: 403, reason: "InvalidProviderToken"}},
			want{pb.DeliveryFailed, pb.CodeUnauthenticated, 2}},
		{"404 BadPath", []reply{{status: 404, reason: "BadPath"}}, want{pb.DeliveryFailed, pb.CodeRejected, 1}},
		{"405 MethodNotAllowed", []reply{{status: 405, reason: "MethodNotAllowed"}}, want{pb.DeliveryFailed, pb.CodeRejected, 1}},
		{"429 TooManyRequests", []reply{{status: 429, reason: "TooManyRequests"}},
			want{pb.DeliveryFailed, pb.CodeQuotaExceeded, 2}},
		{"500 InternalServerError", []reply{{status: 500, reason: "InternalServerError"}},
			want{pb.DeliveryFailed, pb.CodeInternal, 2}},
		{"503 ServiceUnavailable", []reply{{status: 503, reason: "ServiceUnavailable"}},
			want{pb.DeliveryFailed, pb.CodeUnavailable, 2}},
		{"503 Shutdown then 200", []reply{{status: 503, reason: "Shutdown"}, {status: 200}},
			want{pb.DeliverySent, "", 2}},
	}
	ps := pushes(len(cases))
	for i, c := range cases {
		b.fake.reply(tok(i), c.replies...)
	}
	got := b.sender.Send(t.Context(), ps)
	if len(got) != len(ps) {
		t.Fatalf("%d results for %d pushes", len(got), len(ps))
	}
	byName := map[string]pb.SendResult{}
	for i, c := range cases {
		check(t, c.name, got[i], c.want)
		byName[c.name] = got[i]
	}

	// The details an operator reads.
	e := byName["410 Unregistered"].Err
	if e.Context["reason"] != "Unregistered" || e.Context["status"] != "410" ||
		e.Context["unregistered_at"] != "2023-11-14T22:13:20Z" || e.Recoverable {
		t.Errorf("410 error: %+v", e)
	}
	if e := byName["400 BadTopic"].Err; e.Kind != pb.KindValidation || e.Recoverable {
		t.Errorf("400 BadTopic error: kind %s, recoverable %v; want validation, not recoverable", e.Kind, e.Recoverable)
	}
	if e := byName["503 ServiceUnavailable"].Err; e.Kind != pb.KindExternal || !e.Recoverable {
		t.Errorf("503 error: kind %s, recoverable %v; want external, recoverable", e.Kind, e.Recoverable)
	}
}

func TestRetriesWaitBackoffOrRetryAfter(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *apns.Config) { c.MaxAttempts = 5 })
	date := b.clock.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	b.fake.reply(tok(0),
		reply{status: 503, reason: "ServiceUnavailable", retryAfter: "7"},
		reply{status: 500, reason: "InternalServerError"},
		reply{status: 429, reason: "TooManyRequests"},
		reply{status: 503, reason: "ServiceUnavailable", retryAfter: date},
		reply{status: 200},
	)
	got := b.sender.Send(t.Context(), pushes(1))
	check(t, "push", got[0], want{pb.DeliverySent, "", 5})
	// Retry-After in seconds, then the backoff for retries 2 and 3 (with
	// Rand 0.5: half fixed plus a quarter), then Retry-After as a date
	// read against the injected clock.
	wantWaits := []time.Duration{7 * time.Second, 1500 * time.Millisecond, 3 * time.Second, 30 * time.Second}
	if w := b.sleeps.waits(); !reflect.DeepEqual(w, wantWaits) {
		t.Errorf("waits %v, want %v", w, wantWaits)
	}
	if n := len(b.fake.requests()); n != 5 {
		t.Errorf("APNs received %d requests, want 5", n)
	}
}

func TestRetriesRunOut(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *apns.Config) { c.MaxAttempts = 3 })
	b.fake.reply(tok(0), reply{status: 503, reason: "ServiceUnavailable"})
	got := b.sender.Send(t.Context(), pushes(1))
	check(t, "push", got[0], want{pb.DeliveryFailed, pb.CodeUnavailable, 3})
	wantWaits := []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond}
	if w := b.sleeps.waits(); !reflect.DeepEqual(w, wantWaits) {
		t.Errorf("waits %v, want %v", w, wantWaits)
	}
}

func TestExpiredProviderTokenRefreshedOnce(t *testing.T) {
	t.Parallel()
	const n = 12
	b := setup(t, func(c *apns.Config) { c.MaxInFlight = n })
	b.fake.expireFirst()
	// Hold every request made with the first token until all n are in
	// flight, so that all of them are refused concurrently.
	var first atomic.Int32
	all := make(chan struct{})
	b.fake.setHold(func(ctx context.Context, rq received) {
		if rq.Bearer != b.fake.distinctBearers()[0] {
			return
		}
		if first.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
		case <-ctx.Done():
		}
	})
	got := b.sender.Send(t.Context(), pushes(n))
	for i, r := range got {
		check(t, fmt.Sprintf("push %d", i), r, want{pb.DeliverySent, "", 2})
	}
	if bs := b.fake.distinctBearers(); len(bs) != 2 {
		t.Errorf("APNs saw %d provider tokens, want 2 (the stale one and exactly one refresh)", len(bs))
	}
	if r := b.fake.requests(); len(r) != 2*n {
		t.Errorf("APNs received %d requests, want %d", len(r), 2*n)
	}
	if w := b.sleeps.waits(); len(w) != 0 {
		t.Errorf("waited %v before retrying with a fresh token; want no wait", w)
	}
}

func TestExpiredProviderTokenTwiceFails(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *apns.Config) { c.MaxAttempts = 5 })
	b.fake.reply(tok(0), reply{status: 403, reason: "ExpiredProviderToken"})
	got := b.sender.Send(t.Context(), pushes(1))
	check(t, "push", got[0], want{pb.DeliveryFailed, pb.CodeUnauthenticated, 2})
	rs := b.fake.requests()
	if len(rs) != 2 || rs[0].Bearer == rs[1].Bearer {
		t.Errorf("want 2 requests with different provider tokens, got %d", len(rs))
	}
}

func TestPayload(t *testing.T) {
	t.Parallel()
	b := setup(t)
	plain := push(0)
	plain.Message.Data = map[string]string{"deep_link": "app://x", "n": "1"}

	rich := push(1)
	rich.Message.Image = "https://img.example.com/a.png"
	rich.Message.Data = map[string]string{"deep_link": "app://x", "n": "1"}
	rich.Message.APNs = json.RawMessage(`{
		"headers": {"apns-priority": "5", "apns-expiration": "0", "apns-collapse-id": "c1",
			"apns-push-type": "background", "x-unknown": "ignored"},
		"payload": {"aps": {"sound": "default", "badge": 3, "alert": {"subtitle": "S", "title": "T2"}},
			"deep_link": "app://override", "custom": {"a": 12345678901234567890}}
	}`)

	silent := push(2)
	silent.Message.APNs = json.RawMessage(`{"headers": {"apns-push-type": "background", "apns-priority": 5,
		"apns-expiration": "1900000000"},
		"payload": {"aps": {"alert": null, "content-available": 1}}, "fcm_options": {"image": "https://img/b.png"}}`)

	got := b.sender.Send(t.Context(), []pb.Push{plain, rich, silent})
	for i, r := range got {
		check(t, fmt.Sprintf("push %d", i), r, want{pb.DeliverySent, "", 1})
	}
	byToken := map[string]received{}
	for _, rq := range b.fake.requests() {
		byToken[rq.Token] = rq
	}
	// A number beyond float64's precision reaches the app digit for digit.
	if raw := byToken[tok(1)].Raw; !strings.Contains(string(raw), `"a":12345678901234567890`) {
		t.Errorf("override number altered: %s", raw)
	}

	for _, c := range []struct {
		name    string
		rq      received
		payload string
		headers map[string]string
	}{
		{"plain", byToken[tok(0)],
			`{"aps": {"alert": {"title": "Hello", "body": "World"}}, "deep_link": "app://x", "n": "1"}`,
			map[string]string{"apns-push-type": "alert", "apns-priority": "", "apns-expiration": "", "apns-collapse-id": ""}},
		{"rich", byToken[tok(1)],
			`{"aps": {"alert": {"title": "T2", "body": "World", "subtitle": "S"}, "mutable-content": 1,
				"sound": "default", "badge": 3},
			  "fcm_options": {"image": "https://img.example.com/a.png"},
			  "deep_link": "app://override", "n": "1", "custom": {"a": 12345678901234567890}}`,
			map[string]string{"apns-push-type": "background", "apns-priority": "5", "apns-expiration": "0",
				"apns-collapse-id": "c1", "x-unknown": ""}},
		{"silent, image from fcm_options", byToken[tok(2)],
			`{"aps": {"content-available": 1, "mutable-content": 1}, "fcm_options": {"image": "https://img/b.png"}}`,
			map[string]string{"apns-push-type": "background", "apns-priority": "5", "apns-expiration": "1900000000"}},
	} {
		var want map[string]any
		if err := json.Unmarshal([]byte(c.payload), &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(c.rq.Payload, want) {
			gj, _ := json.Marshal(c.rq.Payload)
			wj, _ := json.Marshal(want)
			t.Errorf("%s: payload\n got %s\nwant %s", c.name, gj, wj)
		}
		for h, v := range c.headers {
			if got := c.rq.Header.Get(h); got != v {
				t.Errorf("%s: header %s is %q, want %q", c.name, h, got, v)
			}
		}
		if got := c.rq.Header.Get("apns-topic"); got != testTopic {
			t.Errorf("%s: apns-topic %q", c.name, got)
		}
	}
}

func TestPayloadRejectedBeforeSending(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mk := func(i int, f func(*pb.Push)) pb.Push { p := push(i); f(&p); return p }
	cases := []struct {
		p     pb.Push
		field string
	}{
		{mk(0, func(p *pb.Push) { p.Message.APNs = json.RawMessage(`{"headers": {"apns-priority": "high"}}`) }),
			"message.apns.headers.apns-priority"},
		{mk(1, func(p *pb.Push) { p.Message.APNs = json.RawMessage(`{"headers": {"apns-expiration": "-1"}}`) }),
			"message.apns.headers.apns-expiration"},
		{mk(2, func(p *pb.Push) { p.Message.APNs = json.RawMessage(`{"payload": [1]}`) }), "message.apns.payload"},
		{mk(3, func(p *pb.Push) { p.Message.APNs = json.RawMessage(`[]`) }), "message.apns"},
		{mk(4, func(p *pb.Push) { p.Message.Data = map[string]string{"aps": "x"} }), "message.data.aps"},
		{mk(5, func(p *pb.Push) {
			p.Message.Image = "https://i/x.png"
			p.Message.Data = map[string]string{"fcm_options": "x"}
		}), "message.data.fcm_options"},
		{mk(6, func(p *pb.Push) { p.Recipient.Token = "" }), "recipient.token"},
		{mk(7, func(p *pb.Push) { p.Recipient.Token = "dGhpcyBpcyBhbiBGQ00gdG9rZW4/x=1" }), "recipient.token"},
	}
	ps := make([]pb.Push, len(cases))
	for i, c := range cases {
		ps[i] = c.p
	}
	got := b.sender.Send(t.Context(), ps)
	for i, c := range cases {
		check(t, c.field, got[i], want{pb.DeliveryFailed, pb.CodeInvalidArgument, 0})
		if got[i].Err != nil && got[i].Err.Context["field"] != c.field {
			t.Errorf("case %d: field %q, want %q (%v)", i, got[i].Err.Context["field"], c.field, got[i].Err)
		}
	}
	if n := len(b.fake.requests()); n != 0 {
		t.Errorf("APNs received %d requests, want none", n)
	}
}

// failFirst fails the first request before writing anything, as a dial
// that is refused does.
type failFirst struct {
	base  http.RoundTripper
	calls atomic.Int32
}

func (f *failFirst) RoundTrip(r *http.Request) (*http.Response, error) {
	if f.calls.Add(1) == 1 {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	}
	return f.base.RoundTrip(r)
}

func TestNetworkErrorBeforeWriteIsRetried(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *apns.Config) {
		c.HTTPClient = &http.Client{Transport: &failFirst{base: c.HTTPClient.Transport}}
	})
	got := b.sender.Send(t.Context(), pushes(1))
	check(t, "push", got[0], want{pb.DeliverySent, "", 2})
	if w := b.sleeps.waits(); !reflect.DeepEqual(w, []time.Duration{750 * time.Millisecond}) {
		t.Errorf("waits %v, want [750ms]", w)
	}
}

func TestNetworkErrorBeforeWriteRunsOut(t *testing.T) {
	t.Parallel()
	// A server that hangs up during the TLS handshake: nothing is sent.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	b := setup(t, func(c *apns.Config) {
		c.Endpoint = "https://" + ln.Addr().String()
		c.HTTPClient = &http.Client{Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	})
	got := b.sender.Send(t.Context(), pushes(1))
	check(t, "push", got[0], want{pb.DeliveryFailed, pb.CodeNetwork, 3})
	if w := b.sleeps.waits(); len(w) != 2 {
		t.Errorf("waits %v, want 2", w)
	}
}

func TestNetworkErrorAfterWriteIsUnknown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.fake.reply(tok(0), reply{abort: true})
	got := b.sender.Send(t.Context(), pushes(2))
	check(t, "aborted", got[0], want{pb.DeliveryUnknown, pb.CodeNetwork, 1})
	check(t, "other", got[1], want{pb.DeliverySent, "", 1})
	n := 0
	for _, rq := range b.fake.requests() {
		if rq.Token == tok(0) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("APNs received the aborted push %d times, want once (never re-sent)", n)
	}
}

func TestOrderWhenAnswersComeBackwards(t *testing.T) {
	t.Parallel()
	const n = 10
	b := setup(t, func(c *apns.Config) { c.MaxInFlight = n })
	// The last push is answered first, then each one after its successor.
	answered := make([]chan struct{}, n+1)
	for i := range answered {
		answered[i] = make(chan struct{})
	}
	close(answered[n])
	index := map[string]int{}
	for i := range n {
		index[tok(i)] = i
		if i%2 == 1 {
			b.fake.reply(tok(i), reply{status: 410, reason: "Unregistered"})
		}
	}
	b.fake.setHold(func(ctx context.Context, rq received) {
		select {
		case <-answered[index[rq.Token]+1]:
		case <-ctx.Done():
		}
	})
	b.fake.setAfter(func(rq received) { close(answered[index[rq.Token]]) })
	got := b.sender.Send(t.Context(), pushes(n))
	for i, r := range got {
		w := want{pb.DeliverySent, "", 1}
		if i%2 == 1 {
			w = want{pb.DeliveryInvalidToken, pb.CodeUnregistered, 1}
		}
		check(t, fmt.Sprintf("push %d", i), r, w)
	}
}

func TestMaxInFlightSharedAcrossSends(t *testing.T) {
	t.Parallel()
	const limit = 3
	b := setup(t, func(c *apns.Config) { c.MaxInFlight = limit })
	release := make(chan struct{})
	arrived := make(chan struct{}, 10)
	b.fake.setHold(func(ctx context.Context, rq received) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
	})
	var wg sync.WaitGroup
	results := make([][]pb.SendResult, 2)
	for k := range results {
		wg.Go(func() {
			ps := make([]pb.Push, 5)
			for i := range ps {
				ps[i] = push(k*5 + i)
			}
			results[k] = b.sender.Send(t.Context(), ps)
		})
	}
	for range limit {
		receive(t, arrived, "the first requests")
	}
	close(release)
	wg.Wait()
	for k, rs := range results {
		for i, r := range rs {
			check(t, fmt.Sprintf("send %d push %d", k, i), r, want{pb.DeliverySent, "", 1})
		}
	}
	if m := b.fake.maxInFlight(); m > limit {
		t.Errorf("APNs handled %d requests at once, want at most %d", m, limit)
	}
}

func TestCancelMidSend(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *apns.Config) { c.MaxInFlight = 2 })
	arrived := make(chan struct{}, 5)
	b.fake.setHold(func(ctx context.Context, rq received) {
		arrived <- struct{}{}
		<-ctx.Done() // never answered: the client's cancellation resets the stream
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan []pb.SendResult)
	go func() { done <- b.sender.Send(ctx, pushes(5)) }()
	receive(t, arrived, "the first request")
	receive(t, arrived, "the second request")
	cancel()
	got := receive(t, done, "Send to return")
	for i := range 2 {
		check(t, fmt.Sprintf("in flight %d", i), got[i], want{pb.DeliveryUnknown, pb.CodeNetwork, 1})
		if got[i].Err.Kind != pb.KindAbort {
			t.Errorf("in flight %d: kind %s, want abort", i, got[i].Err.Kind)
		}
	}
	for i := 2; i < 5; i++ {
		if got[i] != (pb.SendResult{}) {
			t.Errorf("never started %d: %+v, want a zero result (State \"\")", i, got[i])
		}
	}
	if n := len(b.fake.requests()); n != 2 {
		t.Errorf("APNs received %d requests, want 2", n)
	}
}

func TestCancelDuringBackoff(t *testing.T) {
	t.Parallel()
	waiting := make(chan struct{})
	b := setup(t, func(c *apns.Config) {
		c.Sleep = func(ctx context.Context, d time.Duration) error {
			close(waiting)
			<-ctx.Done()
			return ctx.Err()
		}
	})
	b.fake.reply(tok(0), reply{status: 503, reason: "ServiceUnavailable"})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan []pb.SendResult)
	go func() { done <- b.sender.Send(ctx, pushes(1)) }()
	receive(t, waiting, "the retry wait")
	cancel()
	got := receive(t, done, "Send to return")
	// APNs refused it: not delivered, so claimable again.
	check(t, "push", got[0], want{"", "", 1})
	if got[0].Err == nil || got[0].Err.Kind != pb.KindAbort || !errors.Is(got[0].Err, context.Canceled) {
		t.Errorf("err %v, want an abort wrapping context.Canceled", got[0].Err)
	}
}

// TestDefaultSleepEndsWithContext uses the real Sleep with a backoff of
// an hour: the test ends only if cancellation cuts the wait short.
func TestDefaultSleepEndsWithContext(t *testing.T) {
	t.Parallel()
	waiting := make(chan struct{})
	var once sync.Once
	b := setup(t, func(c *apns.Config) {
		c.Sleep = nil
		c.Backoff = pb.Backoff{Base: 2 * time.Hour, Max: 2 * time.Hour}
		// The jitter is drawn just before the wait starts.
		c.Rand = func() float64 { once.Do(func() { close(waiting) }); return 0.5 }
	})
	b.fake.reply(tok(0), reply{status: 503, reason: "ServiceUnavailable"})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan []pb.SendResult)
	go func() { done <- b.sender.Send(ctx, pushes(1)) }()
	receive(t, waiting, "the retry wait")
	cancel()
	got := receive(t, done, "Send to return")
	check(t, "push", got[0], want{"", "", 1})
}

func TestSendWithEndedContext(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	got := b.sender.Send(ctx, pushes(3))
	for i, r := range got {
		if r != (pb.SendResult{}) {
			t.Errorf("push %d: %+v, want a zero result", i, r)
		}
	}
	if n := len(b.fake.requests()); n != 0 {
		t.Errorf("APNs received %d requests, want none", n)
	}
}

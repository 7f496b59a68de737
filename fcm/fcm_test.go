package fcm_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/fcm"
	"github.com/pushblaster/pushblaster/fcm/fcmtest"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
)

// sleeper is the injected Sleep: it records every wait instead of
// waiting. A hook, if set, runs first (to hold a wait until the test lets
// it go).
type sleeper struct {
	mu    sync.Mutex
	waits []recordedWait
	hook  func(ctx context.Context, d time.Duration) error
}

type recordedWait struct {
	tag string // the ctx's tag, see withTag
	d   time.Duration
}

type tagKey struct{}

// withTag labels the waits of a Send call.
func withTag(ctx context.Context, tag string) context.Context {
	return context.WithValue(ctx, tagKey{}, tag)
}

func (s *sleeper) Sleep(ctx context.Context, d time.Duration) error {
	tag, _ := ctx.Value(tagKey{}).(string)
	s.mu.Lock()
	s.waits = append(s.waits, recordedWait{tag, d})
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, d); err != nil {
			return err
		}
	}
	return context.Cause(ctx)
}

func (s *sleeper) recorded(tag string) []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []time.Duration
	for _, w := range s.waits {
		if tag == "*" || w.tag == tag {
			out = append(out, w.d)
		}
	}
	return out
}

// testBundle is a fake FCM and a client of it.
type testBundle struct {
	srv    *fcmtest.Server
	client *fcm.Client
	clock  *fakeclock.Clock
	sleep  *sleeper
	cfg    fcm.Config
}

func setup(t testing.TB, opts fcmtest.Options, mod func(*fcm.Config)) *testBundle {
	t.Helper()
	if tt, ok := t.(*testing.T); ok {
		tt.Parallel()
	}
	srv, err := fcmtest.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	b := &testBundle{srv: srv, clock: fakeclock.New(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)), sleep: &sleeper{}}
	b.cfg = fcm.Config{
		CredentialsJSON: srv.CredentialsJSON(),
		Endpoint:        srv.URL(),
		HTTPClient:      srv.Client(),
		Now:             b.clock.Now,
		Sleep:           b.sleep.Sleep,
		Rand:            func() float64 { return 0.5 },
	}
	if mod != nil {
		mod(&b.cfg)
	}
	if b.client, err = fcm.New(b.cfg); err != nil {
		t.Fatal(err)
	}
	return b
}

func push(token string) pb.Push {
	return pb.Push{Recipient: pb.Recipient{UserID: "u-" + token, Token: token}, Message: pb.Message{Title: "Hello", Body: "for " + token}}
}

func pushes(tokens ...string) []pb.Push {
	ps := make([]pb.Push, len(tokens))
	for i, tk := range tokens {
		ps[i] = push(tk)
	}
	return ps
}

func tokens(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

// want is an expected result.
type want struct {
	state       pb.DeliveryState
	code        string
	kind        pb.Kind
	recoverable bool
	attempts    int
	message     string // a substring of Err.Message
}

func check(t *testing.T, name string, got pb.SendResult, w want) {
	t.Helper()
	if got.State != w.state || got.Attempts != w.attempts {
		t.Errorf("%s: state %q attempts %d, want %q %d (err %v)", name, got.State, got.Attempts, w.state, w.attempts, got.Err)
	}
	if w.state == pb.DeliverySent {
		if got.Err != nil {
			t.Errorf("%s: sent with error %v", name, got.Err)
		}
		return
	}
	if got.Err == nil {
		t.Errorf("%s: no error", name)
		return
	}
	if c := pb.ErrorCode(got.Err); c != w.code {
		t.Errorf("%s: code %q, want %q (%v)", name, c, w.code, got.Err)
	}
	if w.kind != "" && got.Err.Kind != w.kind {
		t.Errorf("%s: kind %q, want %q", name, got.Err.Kind, w.kind)
	}
	if got.Err.Recoverable != w.recoverable {
		t.Errorf("%s: recoverable %v, want %v", name, got.Err.Recoverable, w.recoverable)
	}
	if !strings.Contains(got.Err.Message, w.message) {
		t.Errorf("%s: message %q does not contain %q", name, got.Err.Message, w.message)
	}
}

func TestSendDeliversTheExactPayload(t *testing.T) {
	b := setup(t, fcmtest.Options{}, nil)
	p := pb.Push{
		Recipient: pb.Recipient{UserID: "u1", Token: "tok:APA91b-x_y.z"},
		Message: pb.Message{
			Title:   `Héllo "Ann" \ <b>&`,
			Body:    "line1\nline2\ttab \u2028 \x01",
			Image:   "https://cdn.example/i.png?a=1&b=2",
			Data:    map[string]string{"deep_link": "app://x/y", "n": "42", "emoji": "🎉"},
			Android: json.RawMessage(`{"ttl": "3600s", "priority": "HIGH", "notification": {"channel_id": "news"}}`),
			APNs:    json.RawMessage(`{"headers":{"apns-priority":"10"},"payload":{"aps":{"badge":3}}}`),
		},
	}
	res := b.client.Send(t.Context(), []pb.Push{p, push("t2")})
	check(t, "push", res[0], want{state: pb.DeliverySent, attempts: 1})
	check(t, "plain push", res[1], want{state: pb.DeliverySent, attempts: 1})

	got := b.srv.Received("tok:APA91b-x_y.z")
	if len(got) != 1 {
		t.Fatalf("received %d messages", len(got))
	}
	m := got[0]
	if m.Token != p.Recipient.Token || m.Title != p.Message.Title || m.Body != p.Message.Body || m.Image != p.Message.Image {
		t.Errorf("notification: got %q %q %q %q", m.Token, m.Title, m.Body, m.Image)
	}
	if fmt.Sprint(m.Data) != fmt.Sprint(p.Message.Data) {
		t.Errorf("data: got %v, want %v", m.Data, p.Message.Data)
	}
	if !jsonEqual(t, m.Android, p.Message.Android) || !jsonEqual(t, m.APNs, p.Message.APNs) {
		t.Errorf("overrides: got %s %s", m.Android, m.APNs)
	}
	if r := b.srv.Received("t2"); len(r) != 1 || r[0].Title != "Hello" || r[0].Data != nil || r[0].Android != nil || r[0].Image != "" {
		t.Errorf("plain push received as %+v", r)
	}
	if n := b.srv.TokenRequests(); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
}

func jsonEqual(t *testing.T, a, b json.RawMessage) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(x) == fmt.Sprint(y)
}

func TestErrorClasses(t *testing.T) {
	b := setup(t, fcmtest.Options{}, nil)
	five := func(r fcmtest.Response) []fcmtest.Response { return []fcmtest.Response{r, r, r, r, r} }
	tests := []struct {
		name   string
		script []fcmtest.Response
		push   func(pb.Push) pb.Push
		want   want
	}{
		{"unregistered", []fcmtest.Response{fcmtest.Error(fcmtest.Unregistered)}, nil,
			want{pb.DeliveryInvalidToken, pb.CodeUnregistered, pb.KindExternal, false, 1, "HTTP 404 NOT_FOUND UNREGISTERED: Requested entity was not found."}},
		{"malformed token", []fcmtest.Response{{Code: fcmtest.InvalidArgument, Message: fcmtest.InvalidTokenMessage}}, nil,
			want{pb.DeliveryInvalidToken, pb.CodeUnregistered, pb.KindExternal, false, 1, fcmtest.InvalidTokenMessage}},
		{"invalid argument", []fcmtest.Response{fcmtest.Error(fcmtest.InvalidArgument)}, nil,
			want{pb.DeliveryFailed, pb.CodeInvalidArgument, pb.KindValidation, false, 1, "HTTP 400 INVALID_ARGUMENT: Request contains an invalid argument."}},
		{"rejected by the fake's validation", nil, func(p pb.Push) pb.Push { p.Message.Data = map[string]string{"from": "x"}; return p },
			want{pb.DeliveryFailed, pb.CodeInvalidArgument, pb.KindValidation, false, 1, "Invalid data payload key: from"}},
		{"sender id mismatch", []fcmtest.Response{fcmtest.Error(fcmtest.SenderIDMismatch)}, nil,
			want{pb.DeliveryFailed, pb.CodeSenderIDMismatch, pb.KindExternal, false, 1, "PERMISSION_DENIED SENDER_ID_MISMATCH: SenderId mismatch"}},
		{"third party auth", []fcmtest.Response{fcmtest.Error(fcmtest.ThirdPartyAuthError)}, nil,
			want{pb.DeliveryFailed, pb.CodeThirdPartyAuth, pb.KindExternal, false, 1, "UNAUTHENTICATED THIRD_PARTY_AUTH_ERROR"}},
		{"unavailable until the end", five(fcmtest.Error(fcmtest.Unavailable)), nil,
			want{pb.DeliveryFailed, pb.CodeUnavailable, pb.KindExternal, true, 5, "gave up after 5 attempts"}},
		{"internal until the end", five(fcmtest.Error(fcmtest.Internal)), nil,
			want{pb.DeliveryFailed, pb.CodeInternal, pb.KindExternal, true, 5, "HTTP 500 INTERNAL: Internal error encountered."}},
		{"quota until the end", five(fcmtest.Error(fcmtest.QuotaExceeded)), nil,
			want{pb.DeliveryFailed, pb.CodeQuotaExceeded, pb.KindExternal, true, 5, "RESOURCE_EXHAUSTED QUOTA_EXCEEDED"}},
		{"access token refused twice", []fcmtest.Response{fcmtest.Error(fcmtest.Unauthenticated), fcmtest.Error(fcmtest.Unauthenticated)}, nil,
			want{pb.DeliveryFailed, pb.CodeUnauthenticated, pb.KindExternal, false, 2, "freshly fetched access token was refused too"}},
		{"unexpected answer", []fcmtest.Response{{Status: http.StatusTeapot, Body: "<html>" + strings.Repeat("teapot ", 100) + "</html>"}}, nil,
			want{pb.DeliveryFailed, pb.CodeRejected, pb.KindExternal, false, 1, "HTTP 418 I'm a teapot: <html>teapot teapot"}},
		{"proxy error page", five(fcmtest.Response{Status: http.StatusBadGateway, Body: "<html>bad gateway</html>"}), nil,
			want{pb.DeliveryFailed, pb.CodeUnavailable, pb.KindExternal, true, 5, "HTTP 502 Bad Gateway: <html>bad gateway</html>"}},
		{"no token", nil, func(p pb.Push) pb.Push { p.Recipient.Token = ""; return p },
			want{pb.DeliveryFailed, pb.CodeInvalidArgument, pb.KindValidation, false, 0, "has no device token"}},
		{"android override not JSON", nil, func(p pb.Push) pb.Push { p.Message.Android = json.RawMessage(`{"ttl":`); return p },
			want{pb.DeliveryFailed, pb.CodeInvalidArgument, pb.KindValidation, false, 0, "message.android is not valid JSON"}},
	}
	var ps []pb.Push
	for i, tt := range tests {
		tok := fmt.Sprintf("class-%d", i)
		b.srv.Script(tok, tt.script...)
		p := push(tok)
		if tt.push != nil {
			p = tt.push(p)
		}
		ps = append(ps, p)
	}
	ps = append(ps, push("gone"))
	b.srv.Unregister("gone")

	res := b.client.Send(t.Context(), ps)
	for i, tt := range tests {
		check(t, tt.name, res[i], tt.want)
		if tok := ps[i].Recipient.Token; tok != "" && b.srv.Count(tok) != 0 {
			t.Errorf("%s: the fake accepted %d", tt.name, b.srv.Count(tok))
		}
	}
	check(t, "unregistered for good", res[len(tests)], want{pb.DeliveryInvalidToken, pb.CodeUnregistered, pb.KindExternal, false, 1, "UNREGISTERED"})
	if res[0].Err.Context["http_status"] != "404" || res[0].Err.Context["fcm_error"] != "UNREGISTERED" {
		t.Errorf("context %v", res[0].Err.Context)
	}
}

func TestUnavailableThenSuccess(t *testing.T) {
	b := setup(t, fcmtest.Options{}, nil)
	b.srv.Script("t1", fcmtest.Error(fcmtest.Unavailable), fcmtest.Error(fcmtest.Internal))
	res := b.client.Send(t.Context(), pushes("t1"))
	check(t, "t1", res[0], want{state: pb.DeliverySent, attempts: 3})
	// Backoff from 1 s, doubling, half of it jittered (Rand is 0.5).
	if got, w := b.sleep.recorded("*"), []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond}; !slices.Equal(got, w) {
		t.Errorf("waits %v, want %v", got, w)
	}
	if b.srv.Count("t1") != 1 || b.srv.Requests() != 3 {
		t.Errorf("Count %d Requests %d, want 1 3", b.srv.Count("t1"), b.srv.Requests())
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	for _, form := range []string{"seconds", "date"} {
		t.Run(form, func(t *testing.T) {
			b := setup(t, fcmtest.Options{}, nil)
			ra := "30"
			if form == "date" {
				ra = b.clock.Now().Add(30 * time.Second).Format(http.TimeFormat)
			}
			b.srv.Script("t1", fcmtest.Response{Code: fcmtest.Unavailable, RetryAfter: ra})
			res := b.client.Send(t.Context(), pushes("t1"))
			check(t, "t1", res[0], want{state: pb.DeliverySent, attempts: 2})
			waits := b.sleep.recorded("*")
			if len(waits) != 1 || waits[0] < 30*time.Second {
				t.Errorf("waits %v, want one of at least 30s", waits)
			}
		})
	}
}

func TestQuotaPausesTheWholeClient(t *testing.T) {
	b := setup(t, fcmtest.Options{}, nil)
	b.srv.Script("a", fcmtest.Response{Code: fcmtest.QuotaExceeded, RetryAfter: "10"})

	// A's pause wait is held until B has queued behind it.
	aWaiting, release := make(chan struct{}), make(chan struct{})
	bWaiting := make(chan struct{})
	b.sleep.hook = func(ctx context.Context, d time.Duration) error {
		switch ctx.Value(tagKey{}) {
		case "A":
			close(aWaiting)
		case "B":
			close(bWaiting)
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	resA := make(chan []pb.SendResult)
	go func() { resA <- b.client.Send(withTag(t.Context(), "A"), pushes("a")) }()
	<-aWaiting
	resB := make(chan []pb.SendResult)
	go func() { resB <- b.client.Send(withTag(t.Context(), "B"), pushes("b")) }()
	<-bWaiting

	// B, another token in another Send, has not been sent: it waits for
	// the pause A's 429 set.
	if n := b.srv.Count("b"); n != 0 {
		t.Fatalf("b was sent during the pause")
	}
	if n := b.srv.Requests(); n != 1 {
		t.Fatalf("%d requests during the pause, want 1", n)
	}
	b.clock.Advance(time.Minute)
	close(release)
	check(t, "a", (<-resA)[0], want{state: pb.DeliverySent, attempts: 2})
	check(t, "b", (<-resB)[0], want{state: pb.DeliverySent, attempts: 1})

	// The pause is the quota backoff (60 s), longer than Retry-After.
	if w := b.sleep.recorded("A"); len(w) != 1 || w[0] != time.Minute {
		t.Errorf("A waited %v, want [1m0s]", w)
	}
	if w := b.sleep.recorded("B"); len(w) != 1 || w[0] != time.Minute {
		t.Errorf("B waited %v, want [1m0s]", w)
	}
	if b.srv.Count("a") != 1 || b.srv.Count("b") != 1 {
		t.Errorf("counts %d %d", b.srv.Count("a"), b.srv.Count("b"))
	}
}

func TestQuotaRetryAfterLongerThanBackoff(t *testing.T) {
	b := setup(t, fcmtest.Options{}, nil)
	b.srv.Script("a", fcmtest.Response{Code: fcmtest.QuotaExceeded, RetryAfter: "90"})
	res := b.client.Send(t.Context(), pushes("a"))
	check(t, "a", res[0], want{state: pb.DeliverySent, attempts: 2})
	if w := b.sleep.recorded("*"); len(w) != 1 || w[0] != 90*time.Second {
		t.Errorf("waits %v, want [1m30s]", w)
	}
}

func TestRefusedTokenIsRefreshedOnceForAll(t *testing.T) {
	b := setup(t, fcmtest.Options{}, nil)
	res := b.client.Send(t.Context(), pushes("warmup"))
	check(t, "warmup", res[0], want{state: pb.DeliverySent, attempts: 1})
	if n := b.srv.TokenRequests(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}

	b.srv.RevokeTokens()
	toks := tokens("r", 100)
	res = b.client.Send(t.Context(), pushes(toks...))
	refused := 0
	for i, r := range res {
		if r.State != pb.DeliverySent || r.Attempts < 1 || r.Attempts > 2 {
			t.Errorf("%s: %q after %d attempts: %v", toks[i], r.State, r.Attempts, r.Err)
		}
		if r.Attempts == 2 {
			refused++
		}
		if n := b.srv.Count(toks[i]); n != 1 {
			t.Errorf("%s accepted %d times", toks[i], n)
		}
	}
	if refused == 0 {
		t.Error("no request was refused: the revoked token was not used")
	}
	if n := b.srv.TokenRequests(); n != 2 {
		t.Errorf("%d token requests, want 2: one refresh for %d refused requests", n, refused)
	}
	if len(b.sleep.recorded("*")) != 0 {
		t.Error("a refresh waited")
	}
}

func TestTokenIsRefreshedBeforeExpiry(t *testing.T) {
	b := setup(t, fcmtest.Options{TokenTTL: time.Hour}, nil)
	check(t, "first", b.client.Send(t.Context(), pushes("t1"))[0], want{state: pb.DeliverySent, attempts: 1})
	b.clock.Advance(50 * time.Minute)
	check(t, "before refresh", b.client.Send(t.Context(), pushes("t1"))[0], want{state: pb.DeliverySent, attempts: 1})
	if n := b.srv.TokenRequests(); n != 1 {
		t.Errorf("%d token requests before the refresh time, want 1", n)
	}
	b.clock.Advance(6 * time.Minute)
	check(t, "after refresh", b.client.Send(t.Context(), pushes("t1"))[0], want{state: pb.DeliverySent, attempts: 1})
	if n := b.srv.TokenRequests(); n != 2 {
		t.Errorf("%d token requests, want 2", n)
	}
}

func TestRefusedKeyFailsWithoutRequest(t *testing.T) {
	other, err := fcmtest.NewServer(fcmtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
	b := setup(t, fcmtest.Options{}, func(c *fcm.Config) {
		// The other server's key, this server's token endpoint: a valid
		// key the endpoint does not know.
		var k map[string]any
		json.Unmarshal(other.CredentialsJSON(), &k)
		var mine map[string]any
		json.Unmarshal(c.CredentialsJSON, &mine)
		mine["private_key"] = k["private_key"]
		c.CredentialsJSON, _ = json.Marshal(mine)
	})
	res := b.client.Send(t.Context(), pushes("t1"))
	check(t, "t1", res[0], want{pb.DeliveryFailed, pb.CodeUnauthenticated, pb.KindExternal, false, 0, "invalid_grant: Invalid JWT Signature."})
	if b.srv.Requests() != 0 {
		t.Errorf("%d send requests without a token", b.srv.Requests())
	}
}

func TestConnectionDroppedAfterWrite(t *testing.T) {
	for _, tc := range []struct {
		name     string
		resp     fcmtest.Response
		accepted int
	}{
		{"before FCM accepted", fcmtest.Drop, 0},
		{"after FCM accepted", fcmtest.DropAfterAccept, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t, fcmtest.Options{}, nil)
			b.srv.Script("t1", tc.resp)
			res := b.client.Send(t.Context(), pushes("t1"))
			check(t, "t1", res[0], want{pb.DeliveryUnknown, pb.CodeNetwork, pb.KindExternal, true, 1, "may or may not have been delivered"})
			if n := b.srv.Requests(); n != 1 {
				t.Errorf("%d requests: a request that was written was sent again", n)
			}
			if n := b.srv.Count("t1"); n != tc.accepted {
				t.Errorf("accepted %d, want %d", n, tc.accepted)
			}
		})
	}
}

func TestRequestNotWrittenIsRetried(t *testing.T) {
	// A port with nothing listening: every dial fails before anything is
	// written.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	b := setup(t, fcmtest.Options{}, func(c *fcm.Config) { c.Endpoint = "https://" + addr })
	res := b.client.Send(t.Context(), pushes("t1"))
	check(t, "t1", res[0], want{pb.DeliveryFailed, pb.CodeNetwork, pb.KindExternal, true, 5, "request not sent"})
	if n := len(b.sleep.recorded("*")); n != 4 {
		t.Errorf("%d backoff waits, want 4", n)
	}
}

func TestRequestTimeoutIsUnknown(t *testing.T) {
	b := setup(t, fcmtest.Options{}, func(c *fcm.Config) {
		c.RequestTimeout = 50 * time.Millisecond
		// The token endpoint keeps its own, generous timeout.
		c.HTTPClient = &http.Client{Transport: c.HTTPClient.Transport, Timeout: time.Minute}
	})
	// Warm the shared transport up with another client, so that the
	// request under test finds its connection ready.
	warm, err := fcm.New(fcm.Config{CredentialsJSON: b.cfg.CredentialsJSON, Endpoint: b.cfg.Endpoint, HTTPClient: b.cfg.HTTPClient})
	if err != nil {
		t.Fatal(err)
	}
	check(t, "warm-up", warm.Send(t.Context(), pushes("warm"))[0], want{state: pb.DeliverySent, attempts: 1})

	b.srv.SetLatency(time.Hour)
	res := b.client.Send(t.Context(), pushes("t1"))
	check(t, "t1", res[0], want{pb.DeliveryUnknown, pb.CodeNetwork, pb.KindExternal, true, 1, "no answer within 50ms"})
	if n := b.srv.Requests(); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
}

func TestCancelMidSend(t *testing.T) {
	b := setup(t, fcmtest.Options{}, func(c *fcm.Config) { c.MaxInFlight = 3 })
	b.srv.SetLatency(time.Hour)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan []pb.SendResult)
	toks := tokens("c", 10)
	go func() { done <- b.client.Send(ctx, pushes(toks...)) }()
	if err := b.srv.WaitRequests(t.Context(), 3); err != nil {
		t.Fatal(err)
	}
	cancel()
	res := <-done
	unknown, unsent := 0, 0
	for i, r := range res {
		switch {
		case r.State == pb.DeliveryUnknown && r.Attempts == 1:
			unknown++
			check(t, toks[i], r, want{pb.DeliveryUnknown, pb.CodeNetwork, pb.KindExternal, true, 1, "while the request was in flight"})
		case r.State == "" && r.Attempts == 0:
			unsent++
			if r.Err == nil || r.Err.Kind != pb.KindAbort {
				t.Errorf("%s: not sent with error %v", toks[i], r.Err)
			}
		default:
			t.Errorf("%s: %q after %d attempts", toks[i], r.State, r.Attempts)
		}
	}
	if unknown != 3 || unsent != 7 {
		t.Errorf("%d unknown and %d unsent, want 3 and 7", unknown, unsent)
	}
	if n := b.srv.Requests(); n != 3 {
		t.Errorf("%d requests, want 3: a request started after the cancel", n)
	}
	if n := b.srv.Total(); n != 0 {
		t.Errorf("%d accepted", n)
	}
}

func TestCancelDuringBackoff(t *testing.T) {
	b := setup(t, fcmtest.Options{}, nil)
	b.srv.Script("t1", fcmtest.Error(fcmtest.Unavailable))
	ctx, cancel := context.WithCancel(t.Context())
	b.sleep.hook = func(context.Context, time.Duration) error { cancel(); return nil }
	res := b.client.Send(ctx, pushes("t1"))
	r := res[0]
	if r.State != "" || r.Attempts != 1 || r.Err == nil || r.Err.Kind != pb.KindAbort || pb.ErrorCode(r.Err) != pb.CodeUnavailable {
		t.Errorf("got %q after %d attempts: %v", r.State, r.Attempts, r.Err)
	}
	if n := b.srv.Requests(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestGoAwayMidSend(t *testing.T) {
	// A steady flow of requests, so that the GOAWAY finds some in flight
	// and others about to start.
	b := setup(t, fcmtest.Options{}, func(c *fcm.Config) { c.MaxInFlight = 50 })
	b.srv.SetLatency(30 * time.Millisecond)
	toks := tokens("g", 300)
	done := make(chan []pb.SendResult)
	go func() { done <- b.client.Send(t.Context(), pushes(toks...)) }()
	if err := b.srv.WaitRequests(t.Context(), 150); err != nil {
		t.Fatal(err)
	}
	b.srv.GoAway()
	res := <-done
	for i, r := range res {
		if r.State != pb.DeliverySent {
			t.Errorf("%s: %q after %d attempts: %v", toks[i], r.State, r.Attempts, r.Err)
		}
		if n := b.srv.Count(toks[i]); n != 1 {
			t.Errorf("%s accepted %d times", toks[i], n)
		}
	}
	if n := b.srv.Total(); n != len(toks) {
		t.Errorf("Total %d, want %d", n, len(toks))
	}
}

func TestResultsFollowInputOrder(t *testing.T) {
	b := setup(t, fcmtest.Options{}, nil)
	const n = 40
	toks := tokens("o", n)
	for i, tk := range toks {
		// The first pushes are answered last.
		r := fcmtest.Response{Delay: time.Duration(n-i) * time.Millisecond}
		if i%3 == 0 {
			r.Code = fcmtest.Unregistered
		}
		b.srv.Script(tk, r)
	}
	res := b.client.Send(t.Context(), pushes(toks...))
	if len(res) != n {
		t.Fatalf("%d results for %d pushes", len(res), n)
	}
	for i, r := range res {
		wantState := pb.DeliverySent
		if i%3 == 0 {
			wantState = pb.DeliveryInvalidToken
		}
		if r.State != wantState {
			t.Errorf("result %d: %q, want %q", i, r.State, wantState)
		}
	}
}

func TestInFlightLimitIsSharedBySends(t *testing.T) {
	b := setup(t, fcmtest.Options{}, func(c *fcm.Config) { c.MaxInFlight = 4 })
	b.srv.SetLatency(20 * time.Millisecond)
	var wg sync.WaitGroup
	for s := range 3 {
		wg.Go(func() {
			for i, r := range b.client.Send(t.Context(), pushes(tokens(fmt.Sprint("s", s), 8)...)) {
				if r.State != pb.DeliverySent {
					t.Errorf("send %d push %d: %q %v", s, i, r.State, r.Err)
				}
			}
		})
	}
	wg.Wait()
	if p := b.srv.PeakInFlight(); p > 4 || p < 1 {
		t.Errorf("peak of %d requests in flight, want at most 4", p)
	}
}

func TestNewValidatesTheKey(t *testing.T) {
	t.Parallel()
	srv, err := fcmtest.NewServer(fcmtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	var good map[string]any
	if err := json.Unmarshal(srv.CredentialsJSON(), &good); err != nil {
		t.Fatal(err)
	}
	edit := func(k string, v any) []byte {
		m := map[string]any{}
		for kk, vv := range good {
			m[kk] = vv
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		out, _ := json.Marshal(m)
		return out
	}
	tests := []struct {
		name  string
		json  []byte
		field string
		msg   string
	}{
		{"empty", nil, "credentials_json", "is empty"},
		{"not JSON", []byte("-----BEGIN PRIVATE KEY-----"), "credentials_json", "not a JSON key file"},
		{"no type", edit("type", nil), "credentials_json.type", `has no "type"`},
		{"user credentials", edit("type", "authorized_user"), "credentials_json.type", `is "authorized_user"`},
		{"no client_email", edit("client_email", nil), "credentials_json.client_email", "client_email"},
		{"no private_key", edit("private_key", nil), "credentials_json.private_key", `has no "private_key"`},
		{"bad private_key", edit("private_key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "credentials_json.private_key", "not a PEM-encoded RSA private key"},
		{"no project_id", edit("project_id", nil), "credentials_json.project_id", "Config.ProjectID"},
		{"bad token_uri", edit("token_uri", "oauth2.googleapis.com/token"), "credentials_json.token_uri", "absolute https URL"},
	}
	for _, tt := range tests {
		_, err := fcm.New(fcm.Config{CredentialsJSON: tt.json})
		e := pb.AsError(err)
		if e == nil || e.Kind != pb.KindValidation || e.Context["field"] != tt.field || !strings.Contains(e.Message, tt.msg) {
			t.Errorf("%s: got %v (field %q), want validation of %s mentioning %q", tt.name, err, e.Context["field"], tt.field, tt.msg)
		}
	}
	c, err := fcm.New(fcm.Config{CredentialsJSON: edit("project_id", nil), ProjectID: "override"})
	if err != nil || c.ProjectID() != "override" {
		t.Errorf("override: %v", err)
	}
	c, err = fcm.New(fcm.Config{CredentialsJSON: srv.CredentialsJSON()})
	if err != nil || c.ProjectID() != srv.ProjectID() {
		t.Errorf("good key: %v", err)
	}
}

// failTokens fails every request to the token endpoint, as a network
// outage on the way to Google's OAuth2 servers would.
type failTokens struct{ next http.RoundTripper }

func (f failTokens) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/token" {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, fmt.Errorf("dial tcp: connection refused")
	}
	return f.next.RoundTrip(r)
}

func TestTokenEndpointDown(t *testing.T) {
	b := setup(t, fcmtest.Options{}, func(c *fcm.Config) {
		c.HTTPClient = &http.Client{Transport: failTokens{c.HTTPClient.Transport}}
	})
	toks := tokens("down", 20)
	res := b.client.Send(t.Context(), pushes(toks...))
	for i, r := range res {
		check(t, toks[i], r, want{pb.DeliveryFailed, pb.CodeNetwork, pb.KindExternal, true, 0, "no access token from"})
		if strings.Count(r.Err.Message, "gave up") != 1 {
			t.Errorf("%s: %s", toks[i], r.Err.Message)
		}
	}
	if b.srv.Requests() != 0 {
		t.Errorf("%d send requests without a token", b.srv.Requests())
	}
}

func TestQuotaOfTheFake(t *testing.T) {
	// One clock for the fake's quota window and the client's pause; the
	// client's Sleep moves it, so waiting out the pause opens a new
	// window. It starts now: the JWTs carry the real time.
	clock := fakeclock.New(time.Now())
	b := setup(t, fcmtest.Options{Now: clock.Now}, func(c *fcm.Config) {
		c.Now = clock.Now
		c.Sleep = func(ctx context.Context, d time.Duration) error {
			clock.Advance(d)
			return ctx.Err()
		}
	})
	b.srv.SetQuota(3, time.Minute)
	toks := tokens("q", 5)
	for i, r := range b.client.Send(t.Context(), pushes(toks...)) {
		if r.State != pb.DeliverySent || r.Attempts > 2 {
			t.Errorf("%s: %q after %d attempts: %v", toks[i], r.State, r.Attempts, r.Err)
		}
		if n := b.srv.Count(toks[i]); n != 1 {
			t.Errorf("%s accepted %d times", toks[i], n)
		}
	}
	// The fourth request is refused; the fifth too unless it arrives only
	// after the pause moved the clock into a new window.
	if n := b.srv.Requests(); n < 6 || n > 7 {
		t.Errorf("%d requests, want 6 or 7: 5 pushes, 1 or 2 of them refused once", n)
	}
}

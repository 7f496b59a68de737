package webhook_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/webhook"
)

var (
	secret = []byte("s3cret")
	t0     = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
)

// waits records the waits a Sender asks for instead of waiting them.
type waits struct {
	mu sync.Mutex
	ds []time.Duration
}

func (w *waits) sleep(ctx context.Context, d time.Duration) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ds = append(w.ds, d)
	return ctx.Err()
}

func (w *waits) all() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.ds)
}

// request is what a test server saw of one request.
type request struct {
	header http.Header
	body   []byte
	batch  webhook.Batch
}

// server is a test webhook that records requests and answers with handle.
type server struct {
	*httptest.Server
	mu       sync.Mutex
	requests []request
	// release unblocks handlers that wait for the client to go away, so
	// that closing the server never hangs.
	release chan struct{}
}

// newServer starts a webhook whose handle answers the n-th request (from 1)
// after the server recorded it.
func newServer(t *testing.T, handle func(w http.ResponseWriter, r *http.Request, n int, b webhook.Batch)) *server {
	t.Helper()
	s := &server{release: make(chan struct{})}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading the request body: %v", err)
			return
		}
		var b webhook.Batch
		if err := json.Unmarshal(body, &b); err != nil {
			t.Errorf("request body is not a batch: %v: %s", err, body)
		}
		s.mu.Lock()
		s.requests = append(s.requests, request{header: r.Header.Clone(), body: body, batch: b})
		n := len(s.requests)
		s.mu.Unlock()
		handle(w, r, n, b)
	}))
	t.Cleanup(s.Close)
	t.Cleanup(func() { close(s.release) }) // runs before Close
	return s
}

func (s *server) got() []request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// block holds a handler until its client goes away.
func (s *server) block(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-s.release:
	}
}

// hangUp closes the connection without answering: the request was written,
// the answer is lost.
func hangUp(t *testing.T, w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	conn.Close()
}

func ok(w http.ResponseWriter, _ *http.Request, _ int, _ webhook.Batch) {}

// newSender returns a Sender for url with a fixed clock, no jitter, three
// attempts and recorded waits; mod adjusts the config.
func newSender(t *testing.T, url string, mod func(*webhook.Config)) (*webhook.Sender, *waits) {
	t.Helper()
	w := &waits{}
	cfg := webhook.Config{
		URL:         url,
		Secret:      secret,
		MaxAttempts: 3,
		Now:         func() time.Time { return t0 },
		Sleep:       w.sleep,
		Rand:        func() float64 { return 0 },
		Logger:      slog.New(slog.DiscardHandler),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := webhook.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s, w
}

func pushes(n int) []pb.Push {
	ps := make([]pb.Push, n)
	for i := range ps {
		ps[i] = pb.Push{
			Recipient: pb.Recipient{UserID: fmt.Sprintf("u%d", i), Token: fmt.Sprintf("t%d", i),
				Platform: "android", Locale: "en-US", Timezone: "Europe/Paris"},
			Message: pb.Message{Title: "Hi", Body: fmt.Sprintf("body %d", i)},
		}
	}
	return ps
}

// codeOf is the provider code of r. (pb.ErrorCode would see a nil *Error
// as a non-nil error.)
func codeOf(r pb.SendResult) string {
	if r.Err == nil {
		return ""
	}
	return r.Err.Context["code"]
}

// want checks every result of rs.
func want(t *testing.T, rs []pb.SendResult, state pb.DeliveryState, code string, attempts int) {
	t.Helper()
	for i, r := range rs {
		if r.State != state || codeOf(r) != code || r.Attempts != attempts {
			t.Errorf("result %d = {%q, code %q, %d attempts} (err %v), want {%q, code %q, %d attempts}",
				i, r.State, codeOf(r), r.Attempts, r.Err, state, code, attempts)
		}
		if state != pb.DeliverySent && state != "" && r.Err == nil {
			t.Errorf("result %d: state %q without an error", i, r.State)
		}
	}
}

func TestRequestIsSignedAndVerifies(t *testing.T) {
	t.Parallel()
	srv := newServer(t, ok)
	s, _ := newSender(t, srv.URL, nil)
	ps := pushes(2)
	ps[1].Message.Data = map[string]string{"deep_link": "app://x"}
	ps[1].Message.Image = "https://img/x.png"
	want(t, s.Send(context.Background(), ps), pb.DeliverySent, "", 1)

	got := srv.got()
	if len(got) != 1 {
		t.Fatalf("%d requests, want 1", len(got))
	}
	r := got[0]
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	ts, sig := r.header.Get(webhook.HeaderTimestamp), r.header.Get(webhook.HeaderSignature)
	if ts != strconv.FormatInt(t0.Unix(), 10) {
		t.Errorf("timestamp = %q, want %d", ts, t0.Unix())
	}
	if sig != webhook.Sign(secret, t0.Unix(), r.body) {
		t.Errorf("signature = %q, want Sign's %q", sig, webhook.Sign(secret, t0.Unix(), r.body))
	}
	// The pushes' keys (empty here) come first, then user and token.
	h := sha256.Sum256([]byte("\x00u0\x00t0\x00\x00u1\x00t1\x00"))
	if id := hex.EncodeToString(h[:]); r.batch.BatchID != id || r.header.Get(webhook.HeaderIdempotencyKey) != id {
		t.Errorf("batch_id = %q, Idempotency-Key = %q, want both %q", r.batch.BatchID, r.header.Get(webhook.HeaderIdempotencyKey), id)
	}
	if !r.batch.SentAt.Equal(t0) {
		t.Errorf("sent_at = %s, want %s", r.batch.SentAt, t0)
	}
	wantPushes := []webhook.Push{
		{UserID: "u0", Token: "t0", Platform: "android", Locale: "en-US", Timezone: "Europe/Paris",
			Title: "Hi", Body: "body 0", Data: map[string]string{}},
		{UserID: "u1", Token: "t1", Platform: "android", Locale: "en-US", Timezone: "Europe/Paris",
			Title: "Hi", Body: "body 1", Image: "https://img/x.png", Data: map[string]string{"deep_link": "app://x"}},
	}
	if fmt.Sprint(r.batch.Pushes) != fmt.Sprint(wantPushes) {
		t.Errorf("pushes = %+v, want %+v", r.batch.Pushes, wantPushes)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &raw); err != nil || string(raw["sent_at"]) != `"2025-03-04T05:06:07Z"` {
		t.Errorf("sent_at is %s (%v), want RFC 3339 seconds", raw["sent_at"], err)
	}

	if err := webhook.Verify(secret, sig, ts, r.body, t0.Add(time.Minute), 0); err != nil {
		t.Errorf("Verify of the request: %v", err)
	}
	if err := webhook.Verify(secret, "v1=00ff,"+sig, ts, r.body, t0, 0); err != nil {
		t.Errorf("Verify with a rotated-out signature first: %v", err)
	}
	altered := slices.Clone(r.body)
	altered[len(altered)-2] ^= 1
	fails := []struct {
		name   string
		secret []byte
		sig    string
		ts     string
		body   []byte
		now    time.Time
		err    error
	}{
		{"wrong secret", []byte("other"), sig, ts, r.body, t0, webhook.ErrSignature},
		{"no secret", nil, sig, ts, r.body, t0, webhook.ErrSignature},
		{"altered body", secret, sig, ts, altered, t0, webhook.ErrSignature},
		{"altered timestamp", secret, sig, strconv.FormatInt(t0.Unix()+1, 10), r.body, t0, webhook.ErrSignature},
		{"no signature", secret, "", ts, r.body, t0, webhook.ErrSignature},
		{"other scheme", secret, "v0=" + sig[3:], ts, r.body, t0, webhook.ErrSignature},
		{"stale timestamp", secret, sig, ts, r.body, t0.Add(webhook.DefaultTolerance + time.Second), webhook.ErrTimestamp},
		{"future timestamp", secret, sig, ts, r.body, t0.Add(-webhook.DefaultTolerance - time.Second), webhook.ErrTimestamp},
		{"bad timestamp", secret, sig, "yesterday", r.body, t0, webhook.ErrTimestamp},
	}
	for _, f := range fails {
		err := webhook.Verify(f.secret, f.sig, f.ts, f.body, f.now, 0)
		if !errors.Is(err, f.err) || pb.ErrorKind(err) != pb.KindUnauthorized {
			t.Errorf("%s: Verify = %v, want unauthorized wrapping %v", f.name, err, f.err)
		}
	}
	if err := webhook.Verify(secret, sig, ts, r.body, t0.Add(time.Minute), 30*time.Second); !errors.Is(err, webhook.ErrTimestamp) {
		t.Errorf("Verify with a 30s tolerance a minute later = %v, want ErrTimestamp", err)
	}
}

func TestPerPushResults(t *testing.T) {
	t.Parallel()
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int, _ webhook.Batch) {
		// t3 is missing (sent); t4 appears twice in the batch and once in
		// the results (both get it); "zz" is not in the batch.
		fmt.Fprint(w, `{"results":[
			{"token":"t0","status":"sent"},
			{"token":"t1","status":"failed","reason":"quiet hours"},
			{"token":"t2","status":"invalid_token","reason":"uninstalled"},
			{"token":"t4","status":"invalid_token"},
			{"token":"t5","status":"exploded"},
			{"token":"zz","status":"failed"}]}`)
	})
	s, _ := newSender(t, srv.URL, nil)
	ps := pushes(7)
	ps[6].Recipient.Token = "t4"
	rs := s.Send(context.Background(), ps)
	wantRes := []struct {
		state pb.DeliveryState
		code  string
	}{
		{pb.DeliverySent, ""},
		{pb.DeliveryFailed, pb.CodeRejected},
		{pb.DeliveryInvalidToken, pb.CodeUnregistered},
		{pb.DeliverySent, ""},
		{pb.DeliveryInvalidToken, pb.CodeUnregistered},
		{pb.DeliveryFailed, pb.CodeRejected},
		{pb.DeliveryInvalidToken, pb.CodeUnregistered},
	}
	for i, w := range wantRes {
		if rs[i].State != w.state || codeOf(rs[i]) != w.code || rs[i].Attempts != 1 {
			t.Errorf("push %d: %+v (err %v), want %s/%q after 1 attempt", i, rs[i], rs[i].Err, w.state, w.code)
		}
	}
	if msg := rs[1].Err.Error(); !strings.Contains(msg, "quiet hours") {
		t.Errorf("failed push error %q lacks the receiver's reason", msg)
	}
	if rs[1].Err.Recoverable || rs[2].Err.Recoverable {
		t.Errorf("per-push failures must not be recoverable")
	}
}

func TestSuccessBodies(t *testing.T) {
	t.Parallel()
	for name, body := range map[string]string{
		"empty":        "",
		"blank":        " \n",
		"no results":   `{}`,
		"not json":     "OK",
		"accepted 202": `{"results":[]}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int, _ webhook.Batch) {
				if name == "accepted 202" {
					w.WriteHeader(http.StatusAccepted)
				}
				io.WriteString(w, body)
			})
			s, _ := newSender(t, srv.URL, nil)
			want(t, s.Send(context.Background(), pushes(3)), pb.DeliverySent, "", 1)
		})
	}
}

func TestStatusClasses(t *testing.T) {
	t.Parallel()
	retried := []time.Duration{500 * time.Millisecond, time.Second} // Rand 0: half of 1s, 2s
	cases := []struct {
		status   int
		state    pb.DeliveryState
		code     string
		attempts int
	}{
		{400, pb.DeliveryFailed, pb.CodeInvalidArgument, 1},
		{422, pb.DeliveryFailed, pb.CodeInvalidArgument, 1},
		{401, pb.DeliveryFailed, pb.CodeUnauthenticated, 1},
		{403, pb.DeliveryFailed, pb.CodeUnauthenticated, 1},
		{404, pb.DeliveryFailed, pb.CodeRejected, 1},
		{409, pb.DeliveryFailed, pb.CodeRejected, 1},
		{302, pb.DeliveryFailed, pb.CodeRejected, 1},
		{408, pb.DeliveryFailed, pb.CodeUnavailable, 3},
		{429, pb.DeliveryFailed, pb.CodeQuotaExceeded, 3},
		{500, pb.DeliveryFailed, pb.CodeInternal, 3},
		{502, pb.DeliveryFailed, pb.CodeUnavailable, 3},
		{503, pb.DeliveryFailed, pb.CodeUnavailable, 3},
		{504, pb.DeliveryFailed, pb.CodeUnavailable, 3},
	}
	for _, c := range cases {
		t.Run(strconv.Itoa(c.status), func(t *testing.T) {
			t.Parallel()
			var followed atomic.Int32
			target := newServer(t, func(http.ResponseWriter, *http.Request, int, webhook.Batch) { followed.Add(1) })
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int, _ webhook.Batch) {
				if c.status == 302 {
					http.Redirect(w, r, target.URL, c.status)
					return
				}
				http.Error(w, "no thanks", c.status)
			})
			s, ws := newSender(t, srv.URL, nil)
			rs := s.Send(context.Background(), pushes(2))
			want(t, rs, c.state, c.code, c.attempts)
			if n := len(srv.got()); n != c.attempts {
				t.Errorf("server got %d requests, want %d", n, c.attempts)
			}
			if c.attempts == 1 && len(ws.all()) != 0 || c.attempts == 3 && !slices.Equal(ws.all(), retried) {
				t.Errorf("waits = %v", ws.all())
			}
			if got := rs[0].Err.Context["http_status"]; got != strconv.Itoa(c.status) {
				t.Errorf("http_status = %q", got)
			}
			if c.status != 302 && !strings.Contains(rs[0].Err.Message, "no thanks") {
				t.Errorf("error %q lacks the receiver's answer", rs[0].Err.Message)
			}
			if followed.Load() != 0 {
				t.Errorf("redirect followed")
			}
		})
	}
}

func TestRetryThenSuccess(t *testing.T) {
	t.Parallel()
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, n int, _ webhook.Batch) {
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	s, ws := newSender(t, srv.URL, nil)
	want(t, s.Send(context.Background(), pushes(2)), pb.DeliverySent, "", 2)
	got := srv.got()
	if len(got) != 2 || string(got[0].body) != string(got[1].body) ||
		got[0].header.Get(webhook.HeaderIdempotencyKey) != got[1].header.Get(webhook.HeaderIdempotencyKey) {
		t.Errorf("a retry must repeat the body and the Idempotency-Key: %d requests", len(got))
	}
	if !slices.Equal(ws.all(), []time.Duration{500 * time.Millisecond}) {
		t.Errorf("waits = %v", ws.all())
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		status int
		header string
		wait   time.Duration
	}{
		"seconds":        {429, "7", 7 * time.Second},
		"http date":      {503, t0.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		"shorter":        {503, "0", 500 * time.Millisecond}, // never sooner than the backoff
		"past date":      {429, t0.Add(-time.Hour).Format(http.TimeFormat), 500 * time.Millisecond},
		"malformed":      {503, "soon", 500 * time.Millisecond},
		"on a 408 too":   {408, "3", 3 * time.Second},
		"internal error": {500, "4", 4 * time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, n int, _ webhook.Batch) {
				if n == 1 {
					w.Header().Set("Retry-After", c.header)
					w.WriteHeader(c.status)
				}
			})
			s, ws := newSender(t, srv.URL, nil)
			want(t, s.Send(context.Background(), pushes(1)), pb.DeliverySent, "", 2)
			if !slices.Equal(ws.all(), []time.Duration{c.wait}) {
				t.Errorf("waits = %v, want [%s]", ws.all(), c.wait)
			}
		})
	}
}

func TestQuotaHoldsBackOtherBatches(t *testing.T) {
	t.Parallel()
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, n int, _ webhook.Batch) {
		if n == 1 {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	s, ws := newSender(t, srv.URL, func(c *webhook.Config) { c.BatchSize, c.MaxInFlight = 1, 1 })
	rs := s.Send(context.Background(), pushes(2))
	want(t, rs[:1], pb.DeliverySent, "", 2)
	want(t, rs[1:], pb.DeliverySent, "", 1)
	// The clock stands still: the second batch is held back as long as the
	// first, although it never got a 429 itself.
	if !slices.Equal(ws.all(), []time.Duration{30 * time.Second, 30 * time.Second}) {
		t.Errorf("waits = %v", ws.all())
	}
}

func TestTimeoutAfterWriteIsUnknown(t *testing.T) {
	t.Parallel()
	var srv *server
	srv = newServer(t, func(_ http.ResponseWriter, r *http.Request, _ int, _ webhook.Batch) { srv.block(r) })
	s, ws := newSender(t, srv.URL, func(c *webhook.Config) { c.Timeout, c.MaxAttempts = 100*time.Millisecond, 5 })
	rs := s.Send(context.Background(), pushes(3))
	want(t, rs, pb.DeliveryUnknown, pb.CodeNetwork, 1)
	if n := len(srv.got()); n != 1 {
		t.Errorf("server got %d requests, want 1: an unknown batch must not be sent again", n)
	}
	if len(ws.all()) != 0 {
		t.Errorf("waits = %v, want none", ws.all())
	}
	if !strings.Contains(rs[0].Err.Message, "may have got it") {
		t.Errorf("error %q should say the receiver may have got the batch", rs[0].Err.Message)
	}
}

func TestConnectionLostAfterWriteIsUnknown(t *testing.T) {
	t.Parallel()
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int, _ webhook.Batch) { hangUp(t, w) })
	s, _ := newSender(t, srv.URL, func(c *webhook.Config) { c.MaxAttempts = 5 })
	want(t, s.Send(context.Background(), pushes(2)), pb.DeliveryUnknown, pb.CodeNetwork, 1)
	if n := len(srv.got()); n != 1 {
		t.Errorf("server got %d requests, want 1", n)
	}
}

func TestRetryUnknown(t *testing.T) {
	t.Parallel()
	t.Run("then delivered", func(t *testing.T) {
		t.Parallel()
		var srv *server
		srv = newServer(t, func(w http.ResponseWriter, r *http.Request, n int, _ webhook.Batch) {
			switch n {
			case 1:
				srv.block(r) // times out
			case 2:
				hangUp(t, w)
			}
		})
		s, ws := newSender(t, srv.URL, func(c *webhook.Config) {
			c.RetryUnknown, c.Timeout, c.MaxAttempts = true, 100*time.Millisecond, 5
		})
		want(t, s.Send(context.Background(), pushes(2)), pb.DeliverySent, "", 3)
		got := srv.got()
		if len(got) != 3 {
			t.Fatalf("server got %d requests, want 3", len(got))
		}
		key := got[0].header.Get(webhook.HeaderIdempotencyKey)
		for i, r := range got {
			if k := r.header.Get(webhook.HeaderIdempotencyKey); k != key || k != r.batch.BatchID {
				t.Errorf("request %d: Idempotency-Key %q, batch_id %q, want both %q", i, k, r.batch.BatchID, key)
			}
			if string(r.body) != string(got[0].body) {
				t.Errorf("request %d: body differs from the first", i)
			}
		}
		if len(ws.all()) != 2 {
			t.Errorf("waits = %v, want 2", ws.all())
		}
	})
	t.Run("attempts run out", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, n int, _ webhook.Batch) {
			if n == 1 {
				hangUp(t, w)
				return
			}
			w.WriteHeader(http.StatusBadGateway)
		})
		s, _ := newSender(t, srv.URL, func(c *webhook.Config) { c.RetryUnknown = true })
		// The first attempt may have delivered the batch: the later 502s
		// cannot make it a plain failure.
		want(t, s.Send(context.Background(), pushes(2)), pb.DeliveryUnknown, pb.CodeNetwork, 3)
		if n := len(srv.got()); n != 3 {
			t.Errorf("server got %d requests, want 3", n)
		}
	})
}

// failingDials returns a client whose first fails dials are refused.
func failingDials(fails int) *http.Client {
	var n atomic.Int32
	var d net.Dialer
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if int(n.Add(1)) <= fails {
			return nil, errors.New("connection refused (test)")
		}
		return d.DialContext(ctx, network, addr)
	}}
	return &http.Client{Transport: tr}
}

func TestConnectionErrorBeforeWriteIsRetried(t *testing.T) {
	t.Parallel()
	t.Run("then delivered", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, ok)
		s, ws := newSender(t, srv.URL, func(c *webhook.Config) { c.HTTPClient = failingDials(1) })
		want(t, s.Send(context.Background(), pushes(2)), pb.DeliverySent, "", 2)
		if n := len(srv.got()); n != 1 {
			t.Errorf("server got %d requests, want 1", n)
		}
		if len(ws.all()) != 1 {
			t.Errorf("waits = %v, want 1", ws.all())
		}
	})
	t.Run("attempts run out", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, ok)
		s, _ := newSender(t, srv.URL, func(c *webhook.Config) { c.HTTPClient = failingDials(100) })
		rs := s.Send(context.Background(), pushes(2))
		want(t, rs, pb.DeliveryFailed, pb.CodeNetwork, 3)
		if !rs[0].Err.Recoverable {
			t.Errorf("a network failure is recoverable")
		}
	})
}

func TestCancel(t *testing.T) {
	t.Parallel()
	t.Run("mid-send", func(t *testing.T) {
		t.Parallel()
		arrived := make(chan struct{})
		var srv *server
		srv = newServer(t, func(_ http.ResponseWriter, r *http.Request, n int, _ webhook.Batch) {
			if n == 2 {
				close(arrived)
				srv.block(r)
			}
		})
		s, _ := newSender(t, srv.URL, func(c *webhook.Config) { c.BatchSize, c.MaxInFlight = 2, 1 })
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			<-arrived
			cancel()
		}()
		rs := s.Send(ctx, pushes(6))
		want(t, rs[0:2], pb.DeliverySent, "", 1)
		want(t, rs[2:4], pb.DeliveryUnknown, pb.CodeNetwork, 1)
		want(t, rs[4:6], "", "", 0)
		if n := len(srv.got()); n != 2 {
			t.Errorf("server got %d requests, want 2", n)
		}
	})
	t.Run("before", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, ok)
		s, _ := newSender(t, srv.URL, nil)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		rs := s.Send(ctx, pushes(3))
		for i, r := range rs {
			if r != (pb.SendResult{}) {
				t.Errorf("result %d = %+v, want zero", i, r)
			}
		}
		if n := len(srv.got()); n != 0 {
			t.Errorf("server got %d requests, want 0", n)
		}
	})
	t.Run("during backoff", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int, _ webhook.Batch) {
			w.WriteHeader(http.StatusServiceUnavailable)
		})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s, _ := newSender(t, srv.URL, func(c *webhook.Config) {
			c.Sleep = func(ctx context.Context, _ time.Duration) error { cancel(); return ctx.Err() }
		})
		rs := s.Send(ctx, pushes(2))
		// The 503 says the batch was not delivered: the engine may send it
		// again, so it is unrequested, not unknown.
		want(t, rs, "", "", 1)
		if pb.ErrorKind(rs[0].Err) != pb.KindAbort || !strings.Contains(rs[0].Err.Message, "503") {
			t.Errorf("err = %v, want abort naming the last answer", rs[0].Err)
		}
		if n := len(srv.got()); n != 1 {
			t.Errorf("server got %d requests, want 1", n)
		}
	})
}

func TestBatchingAndOrdering(t *testing.T) {
	t.Parallel()
	// The first batch answers last: results must still land in input order.
	var done atomic.Int32
	others := make(chan struct{})
	var srv *server
	srv = newServer(t, func(w http.ResponseWriter, r *http.Request, _ int, b webhook.Batch) {
		if b.Pushes[0].Token == "t0" {
			select {
			case <-others:
			case <-r.Context().Done():
			}
		}
		res := webhook.Response{}
		for _, p := range b.Pushes {
			if n, _ := strconv.Atoi(p.Token[1:]); n%2 == 1 {
				res.Results = append(res.Results, webhook.Result{Token: p.Token, Status: webhook.StatusInvalidToken})
			}
		}
		json.NewEncoder(w).Encode(res)
		if b.Pushes[0].Token != "t0" && done.Add(1) == 2 {
			close(others)
		}
	})
	s, _ := newSender(t, srv.URL, func(c *webhook.Config) { c.BatchSize, c.MaxInFlight = 3, 3 })
	ps := pushes(7)
	rs := s.Send(context.Background(), ps)
	if len(rs) != len(ps) {
		t.Fatalf("%d results for %d pushes", len(rs), len(ps))
	}
	for i, r := range rs {
		st := pb.DeliverySent
		if i%2 == 1 {
			st = pb.DeliveryInvalidToken
		}
		if r.State != st || r.Attempts != 1 {
			t.Errorf("push %d: %s after %d attempts, want %s after 1", i, r.State, r.Attempts, st)
		}
	}
	var sizes []int
	var tokens []string
	for _, r := range srv.got() {
		sizes = append(sizes, len(r.batch.Pushes))
		for _, p := range r.batch.Pushes {
			tokens = append(tokens, p.Token)
		}
	}
	slices.Sort(sizes)
	slices.Sort(tokens)
	if !slices.Equal(sizes, []int{1, 3, 3}) || !slices.Equal(tokens, []string{"t0", "t1", "t2", "t3", "t4", "t5", "t6"}) {
		t.Errorf("batches of %v carrying %v", sizes, tokens)
	}
}

func TestMaxInFlight(t *testing.T) {
	t.Parallel()
	var inFlight, peak atomic.Int32
	both := make(chan struct{})
	var srv *server
	srv = newServer(t, func(_ http.ResponseWriter, r *http.Request, n int, _ webhook.Batch) {
		cur := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); cur > p && !peak.CompareAndSwap(p, cur); p = peak.Load() {
		}
		// The first two wait for each other, so that the limit is reached.
		if n == 2 {
			close(both)
		}
		if n <= 2 {
			select {
			case <-both:
			case <-r.Context().Done():
			}
		}
	})
	s, _ := newSender(t, srv.URL, func(c *webhook.Config) { c.BatchSize, c.MaxInFlight = 1, 2 })
	want(t, s.Send(context.Background(), pushes(6)), pb.DeliverySent, "", 1)
	if p := peak.Load(); p != 2 {
		t.Errorf("peak of %d requests in flight, want 2", p)
	}
	if n := len(srv.got()); n != 6 {
		t.Errorf("server got %d requests, want 6", n)
	}
}

func TestSendNothing(t *testing.T) {
	t.Parallel()
	s, _ := newSender(t, "http://127.0.0.1:1/never", nil)
	if rs := s.Send(context.Background(), nil); len(rs) != 0 {
		t.Errorf("Send(nil) = %v", rs)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	good := webhook.Config{URL: "https://hooks.example.com/push", Secret: secret}
	if _, err := webhook.New(good); err != nil {
		t.Fatalf("New(good) = %v", err)
	}
	cases := []struct {
		name   string
		mod    func(*webhook.Config)
		fields []string
	}{
		{"no url", func(c *webhook.Config) { c.URL = "" }, []string{"webhook.url"}},
		{"relative url", func(c *webhook.Config) { c.URL = "/push" }, []string{"webhook.url"}},
		{"no host", func(c *webhook.Config) { c.URL = "https:///push" }, []string{"webhook.url"}},
		{"ftp url", func(c *webhook.Config) { c.URL = "ftp://example.com/push" }, []string{"webhook.url"}},
		{"unparsable url", func(c *webhook.Config) { c.URL = "http://exa mple.com/%zz" }, []string{"webhook.url"}},
		{"no secret", func(c *webhook.Config) { c.Secret = nil }, []string{"webhook.secret"}},
		{"negative batch size", func(c *webhook.Config) { c.BatchSize = -1 }, []string{"webhook.batch_size"}},
		{"negative timeout", func(c *webhook.Config) { c.Timeout = -time.Second }, []string{"webhook.timeout"}},
		{"negative attempts", func(c *webhook.Config) { c.MaxAttempts = -1 }, []string{"webhook.max_attempts"}},
		{"negative in flight", func(c *webhook.Config) { c.MaxInFlight = -1 }, []string{"webhook.max_in_flight"}},
		{"inverted backoff", func(c *webhook.Config) { c.Backoff = pb.Backoff{Base: time.Minute, Max: time.Second} }, []string{"webhook.backoff"}},
		{"both", func(c *webhook.Config) { c.URL, c.Secret = "", []byte{} }, []string{"webhook.secret", "webhook.url"}},
	}
	for _, c := range cases {
		cfg := good
		c.mod(&cfg)
		_, err := webhook.New(cfg)
		var pe *pb.Error
		if !errors.As(err, &pe) || pe.Kind != pb.KindValidation {
			t.Errorf("%s: New = %v, want a validation error", c.name, err)
			continue
		}
		var fields []string
		for _, f := range pe.Fields {
			fields = append(fields, f.Field)
		}
		if !slices.Equal(fields, c.fields) {
			t.Errorf("%s: fields %v, want %v (%v)", c.name, fields, c.fields, err)
		}
	}
	cfg := good
	cfg.URL = "https://user:hunter2@example.com:bad/push"
	if _, err := webhook.New(cfg); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("New with a bad URL holding a password = %v; want an error that does not repeat the password", err)
	}
}

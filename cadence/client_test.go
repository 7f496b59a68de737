package cadence_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/cadence"
	"github.com/pushblaster/pushblaster/cadence/cadencetest"
)

// logRecorder keeps the records logged, so that tests can check that a
// fallback is never silent.
type logRecorder struct {
	mu   sync.Mutex
	recs []map[string]string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]string{"level": rec.Level.String(), "msg": rec.Message}
	rec.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, m)
	return nil
}

func (r *logRecorder) records() []map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.recs)
}

// newClient returns a client of url logging into a recorder; change
// adjusts the configuration.
func newClient(t *testing.T, url string, change func(*cadence.Config)) (*cadence.Client, *logRecorder) {
	t.Helper()
	logs := &logRecorder{}
	cfg := cadence.Config{URL: url, Logger: slog.New(logs)}
	if change != nil {
		change(&cfg)
	}
	c, err := cadence.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, logs
}

// startServer starts a fake service that is closed when the test ends.
func startServer(t *testing.T) *cadencetest.Server {
	t.Helper()
	srv := cadencetest.NewServer()
	t.Cleanup(srv.Close)
	return srv
}

var sendAt = time.Date(2025, 6, 2, 9, 0, 0, 0, time.UTC)

func request(ids ...string) cadence.Request {
	return cadence.Request{AutomationID: 42, Automation: "weekly-digest", ExecutionID: 1234,
		SendAt: sendAt, Tags: []string{"digest"}, UserIDs: ids}
}

func ids(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("u%04d", i)
	}
	return out
}

func TestAllowedSubset(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	srv.SetRule(func(id string) (bool, string) {
		switch id {
		case "u1":
			return true, ""
		case "u2":
			return false, "3 pushes this week"
		}
		return false, ""
	})
	c, logs := newClient(t, srv.URL, nil)

	d, err := c.Allowed(t.Context(), request("u1", "u2", "u3", "u1"))
	if err != nil {
		t.Fatalf("Allowed: %v", err)
	}
	want := map[string]bool{"u1": true, "u2": false, "u3": false}
	if !maps.Equal(d.Allowed, want) {
		t.Errorf("Allowed = %v, want %v", d.Allowed, want)
	}
	if !maps.Equal(d.Reasons, map[string]string{"u2": "3 pushes this week"}) {
		t.Errorf("Reasons = %v", d.Reasons)
	}
	if d.Fallback != "" || d.Err != nil {
		t.Errorf("Fallback = %q, Err = %v; want none", d.Fallback, d.Err)
	}
	reqs := srv.Requests()
	if len(reqs) != 1 {
		t.Fatalf("service got %d requests, want 1", len(reqs))
	}
	got := reqs[0]
	if got.AutomationID != 42 || got.Automation != "weekly-digest" || got.ExecutionID != 1234 ||
		!got.SendAt.Equal(sendAt) || !slices.Equal(got.Tags, []string{"digest"}) {
		t.Errorf("request = %+v", got)
	}
	// The repeated u1 is asked once.
	if !slices.Equal(got.UserIDs, []string{"u1", "u2", "u3"}) {
		t.Errorf("user_ids = %v, want [u1 u2 u3]", got.UserIDs)
	}
	if recs := logs.records(); len(recs) != 0 {
		t.Errorf("logged %v on success", recs)
	}
}

func TestAnswerAboutOthersIsIgnored(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"allowed": ["u1", "intruder"], "reasons": {"intruder": "x", "u2": "quiet hours"}, "version": 3}`)
	}))
	t.Cleanup(srv.Close)
	c, _ := newClient(t, srv.URL, nil)

	d, err := c.Allowed(t.Context(), request("u1", "u2"))
	if err != nil {
		t.Fatalf("Allowed: %v", err)
	}
	if !maps.Equal(d.Allowed, map[string]bool{"u1": true, "u2": false}) {
		t.Errorf("Allowed = %v; an id not asked about must not be added", d.Allowed)
	}
	if !maps.Equal(d.Reasons, map[string]string{"u2": "quiet hours"}) {
		t.Errorf("Reasons = %v", d.Reasons)
	}
}

func TestNoUserIDsAsksNothing(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	c, _ := newClient(t, srv.URL, nil)

	d, err := c.Allowed(t.Context(), request())
	if err != nil || len(d.Allowed) != 0 || d.Fallback != "" {
		t.Fatalf("Allowed = %+v, %v; want an empty decision", d, err)
	}
	if n := len(srv.Requests()); n != 0 {
		t.Errorf("service got %d requests, want 0", n)
	}
}

func TestBatching(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	// Every other user may get the push.
	srv.SetRule(func(id string) (bool, string) {
		n, _ := strconv.Atoi(strings.TrimPrefix(id, "u"))
		if n%2 == 0 {
			return true, ""
		}
		return false, "odd"
	})
	c, _ := newClient(t, srv.URL, nil) // default batch size 1000
	all := ids(2500)

	d, err := c.Allowed(t.Context(), request(all...))
	if err != nil {
		t.Fatalf("Allowed: %v", err)
	}

	reqs := srv.Requests()
	var sizes []int
	seen := map[string]int{}
	for _, r := range reqs {
		sizes = append(sizes, len(r.UserIDs))
		for _, id := range r.UserIDs {
			seen[id]++
		}
		if r.ExecutionID != 1234 || r.Automation != "weekly-digest" {
			t.Errorf("batch lacks the check's fields: %+v", r)
		}
	}
	slices.Sort(sizes)
	if !slices.Equal(sizes, []int{500, 1000, 1000}) {
		t.Errorf("batch sizes = %v, want [500 1000 1000]", sizes)
	}
	if len(seen) != len(all) {
		t.Errorf("asked %d distinct ids, want %d", len(seen), len(all))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s asked %d times", id, n)
		}
	}
	if len(d.Allowed) != len(all) {
		t.Fatalf("decision holds %d ids, want %d", len(d.Allowed), len(all))
	}
	allowed := 0
	for i, id := range all {
		if d.Allowed[id] != (i%2 == 0) {
			t.Errorf("Allowed[%s] = %v", id, d.Allowed[id])
		}
		if d.Allowed[id] {
			allowed++
		}
	}
	if allowed != 1250 || len(d.Reasons) != 1250 {
		t.Errorf("allowed %d, reasons %d; want 1250 and 1250", allowed, len(d.Reasons))
	}
}

func TestBatchSize(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	c, _ := newClient(t, srv.URL, func(c *cadence.Config) { c.BatchSize = 2 })

	d, err := c.Allowed(t.Context(), request(ids(5)...))
	if err != nil {
		t.Fatalf("Allowed: %v", err)
	}
	if n := len(srv.Requests()); n != 3 {
		t.Errorf("5 ids in batches of 2 took %d requests, want 3", n)
	}
	if len(d.Allowed) != 5 {
		t.Errorf("decision holds %d ids, want 5", len(d.Allowed))
	}
}

// failure is a way for the service to fail and what the client must make of
// it.
type failure struct {
	name        string
	timeout     time.Duration
	arrange     func(*cadencetest.Server)
	cause       string
	recoverable bool
	status      string   // Context["status"], if any
	says        []string // parts of the message besides the URL and the advice
}

var failures = []failure{
	{
		name: "slow", timeout: 50 * time.Millisecond,
		// Far longer than the client waits: only the timeout ends it.
		arrange: func(s *cadencetest.Server) { s.SetDelay(time.Hour) },
		cause:   "timeout", recoverable: true,
		says: []string{"did not answer within cadence.timeout (50ms)", "raise cadence.timeout"},
	},
	{
		name:    "down",
		arrange: func(s *cadencetest.Server) { s.Close() },
		cause:   "connection", recoverable: true,
		says: []string{"cannot be reached", "connect", "check that the service runs"},
	},
	{
		name:    "500",
		arrange: func(s *cadencetest.Server) { s.SetFailure(http.StatusInternalServerError, "database on fire") },
		cause:   "status", recoverable: true, status: "500",
		says: []string{"answered HTTP 500", "database on fire", "fix the service,"},
	},
	{
		name: "400",
		arrange: func(s *cadencetest.Server) {
			s.SetFailure(http.StatusBadRequest, `{"error": "unknown field user_ids"}`)
		},
		cause: "status", recoverable: false, status: "400",
		says: []string{"answered HTTP 400", "unknown field user_ids", "fix the service or cadence.url"},
	},
	{
		name:    "malformed JSON",
		arrange: func(s *cadencetest.Server) { s.SetMalformed(true) },
		cause:   "malformed", recoverable: false,
		says: []string{`not {"allowed": [...]}`, "fix the service,"},
	},
	{
		name:    "no allowed array",
		arrange: func(s *cadencetest.Server) { s.SetFailure(http.StatusOK, `{"reasons": {}}`) },
		cause:   "malformed", recoverable: false,
		says: []string{`without an "allowed" array`},
	},
}

func TestServiceFailures(t *testing.T) {
	t.Parallel()
	for _, f := range failures {
		for _, onError := range cadence.OnErrorValues {
			t.Run(f.name+"/"+onError, func(t *testing.T) {
				t.Parallel()
				srv := startServer(t)
				c, logs := newClient(t, srv.URL, func(c *cadence.Config) {
					c.OnError = onError
					if f.timeout > 0 {
						c.Timeout = f.timeout
					}
				})
				f.arrange(srv)
				asked := []string{"u1", "u2", "u3"}

				d, err := c.Allowed(t.Context(), request(asked...))

				var perr *pb.Error
				switch onError {
				case cadence.OnErrorFail:
					if !errors.As(err, &perr) {
						t.Fatalf("Allowed = %+v, %v; want a *pb.Error", d, err)
					}
					if d.Allowed != nil || d.Fallback != "" {
						t.Errorf("a failed check returned a decision: %+v", d)
					}
					if recs := logs.records(); len(recs) != 0 {
						t.Errorf("logged %v; the returned error is the report", recs)
					}
				default:
					if err != nil {
						t.Fatalf("Allowed: %v; want a fallback decision", err)
					}
					if d.Fallback != onError {
						t.Errorf("Fallback = %q, want %q", d.Fallback, onError)
					}
					want := onError == cadence.OnErrorSendAll
					if len(d.Allowed) != len(asked) {
						t.Errorf("Allowed = %v, want every asked id", d.Allowed)
					}
					for _, id := range asked {
						if v, ok := d.Allowed[id]; !ok || v != want {
							t.Errorf("Allowed[%s] = %v, %v; want %v", id, v, ok, want)
						}
					}
					checkFallbackLogged(t, logs, onError, f.cause)
					perr = d.Err
					if perr == nil {
						t.Fatal("Decision.Err is nil; the fallback must say why")
					}
				}
				checkFailure(t, perr, srv.URL, f)
			})
		}
	}
}

func checkFailure(t *testing.T, e *pb.Error, url string, f failure) {
	t.Helper()
	if e.Kind != pb.KindExternal {
		t.Errorf("kind = %q, want external", e.Kind)
	}
	if e.Recoverable != f.recoverable {
		t.Errorf("recoverable = %v, want %v", e.Recoverable, f.recoverable)
	}
	if e.Context["cause"] != f.cause || e.Context["url"] != url || e.Context["status"] != f.status {
		t.Errorf("context = %v, want cause %q, url %q, status %q", e.Context, f.cause, url, f.status)
	}
	for _, part := range append([]string{url, "cadence.on_error to send_all"}, f.says...) {
		if !strings.Contains(e.Message, part) {
			t.Errorf("message %q does not say %q", e.Message, part)
		}
	}
}

func checkFallbackLogged(t *testing.T, logs *logRecorder, onError, cause string) {
	t.Helper()
	recs := logs.records()
	if len(recs) != 1 {
		t.Fatalf("logged %d records, want 1 warning: %v", len(recs), recs)
	}
	r := recs[0]
	if r["level"] != "WARN" || r["event"] != "cadence.fallback" || r["on_error"] != onError ||
		r["execution_id"] != "1234" || !strings.Contains(r["error"], "cadence service") {
		t.Errorf("log record = %v", r)
	}
}

// A failing batch fails the whole check, even the batches that were
// answered: the fallback is about the check, not a batch.
func TestOneFailedBatchFailsTheCheck(t *testing.T) {
	t.Parallel()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), `"u1500"`) {
			http.Error(w, "shard 2 is down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, `{"allowed": []}`)
	}))
	t.Cleanup(failing.Close)

	for _, onError := range []string{cadence.OnErrorSendAll, cadence.OnErrorSkipAll} {
		c, logs := newClient(t, failing.URL, func(c *cadence.Config) { c.OnError = onError })
		d, err := c.Allowed(t.Context(), request(ids(2500)...))
		if err != nil {
			t.Fatalf("%s: Allowed: %v", onError, err)
		}
		if d.Fallback != onError || d.Err == nil || d.Err.Context["status"] != "503" {
			t.Fatalf("%s: Fallback = %q, Err = %v", onError, d.Fallback, d.Err)
		}
		want := onError == cadence.OnErrorSendAll
		for id, v := range d.Allowed {
			if v != want {
				t.Fatalf("%s: Allowed[%s] = %v, want %v for every id", onError, id, v, want)
			}
		}
		if len(d.Allowed) != 2500 {
			t.Errorf("%s: decision holds %d ids, want 2500", onError, len(d.Allowed))
		}
		checkFallbackLogged(t, logs, onError, "status")
	}
}

func TestRetryAfterIsKept(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "120")
		http.Error(w, "slow down", http.StatusTooManyRequests)
	}))
	t.Cleanup(srv.Close)
	c, _ := newClient(t, srv.URL, nil)

	_, err := c.Allowed(t.Context(), request("u1"))
	var e *pb.Error
	if !errors.As(err, &e) {
		t.Fatalf("Allowed: %v; want a *pb.Error", err)
	}
	if !e.Recoverable || e.Context["retry_after"] != "120" || e.Context["status"] != "429" {
		t.Errorf("429 error = %+v; want recoverable with retry_after 120", e)
	}
	if wait, ok := pb.RetryAfter(e.Context["retry_after"], time.Time{}); !ok || wait != 2*time.Minute {
		t.Errorf("retry_after does not parse: %v, %v", wait, ok)
	}
}

func TestURLCredentialsAreNotShown(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	srv.SetFailure(http.StatusUnauthorized, "who are you")
	url := strings.Replace(srv.URL, "http://", "http://push:s3cret@", 1)
	c, _ := newClient(t, url, nil)

	_, err := c.Allowed(t.Context(), request("u1"))
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Allowed: %v; want an error without the password", err)
	}
	if e := pb.AsError(err); strings.Contains(e.Context["url"], "s3cret") || e.Recoverable {
		t.Errorf("error = %+v", e)
	}
}

// A check that its caller stops is not a failure of the service: no
// fallback, whatever on_error says.
func TestCallerStopsTheCheck(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Only a server that has read the whole body notices that the
		// client hung up.
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)

	t.Run("cancel in flight", func(t *testing.T) {
		c, logs := newClient(t, srv.URL, func(c *cadence.Config) { c.OnError = cadence.OnErrorSendAll })
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-arrived
			cancel()
		}()
		d, err := c.Allowed(ctx, request("u1", "u2"))
		if pb.ErrorKind(err) != pb.KindAbort || d.Fallback != "" || d.Allowed != nil {
			t.Errorf("Allowed = %+v, %v; want an abort error and no decision", d, err)
		}
		if recs := logs.records(); len(recs) != 0 {
			t.Errorf("logged %v", recs)
		}
	})
	t.Run("caller deadline", func(t *testing.T) {
		// The caller's deadline is shorter than cadence.timeout: it is the
		// caller's timeout, not the service's.
		c, _ := newClient(t, srv.URL, func(c *cadence.Config) { c.OnError = cadence.OnErrorSkipAll })
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		d, err := c.Allowed(ctx, request("u1"))
		if pb.ErrorKind(err) != pb.KindTimeout || d.Fallback != "" {
			t.Errorf("Allowed = %+v, %v; want a timeout error and no fallback", d, err)
		}
	})
	t.Run("cancelled before", func(t *testing.T) {
		c, _ := newClient(t, srv.URL, func(c *cadence.Config) { c.OnError = cadence.OnErrorSendAll })
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := c.Allowed(ctx, request("u1")); pb.ErrorKind(err) != pb.KindAbort {
			t.Errorf("Allowed: %v; want abort", err)
		}
	})
}

// TestAuthorizationHeader: the server's credentials for the service go in
// the Authorization header of every request, and appear in no error.
func TestAuthorizationHeader(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		seen []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer s3cret-token" {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		io.WriteString(w, `{"allowed": []}`)
	}))
	t.Cleanup(srv.Close)
	c, _ := newClient(t, srv.URL, func(c *cadence.Config) { c.Authorization, c.BatchSize = "Bearer s3cret-token", 2 })
	if _, err := c.Allowed(t.Context(), request("u1", "u2", "u3")); err != nil {
		t.Fatalf("Allowed: %v", err)
	}
	// Without them the service refuses, and the error does not quote them.
	c, _ = newClient(t, srv.URL, func(c *cadence.Config) { c.Authorization = "Bearer wrong-s3cret" })
	if _, err := c.Allowed(t.Context(), request("u1")); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Allowed with wrong credentials: %v; want a 401 error without them", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen[0] != "Bearer s3cret-token" || seen[1] != "Bearer s3cret-token" {
		t.Errorf("Authorization headers %q, want the configured one on both batches, then the wrong one", seen)
	}
}

// Package fcm is the pushblaster Sender for Firebase Cloud Messaging: the
// HTTP v1 API (projects.messages.send) over HTTP/2, authenticated as a
// service account with the OAuth2 JWT-bearer flow.
//
// One request carries one push. Every push of a Send call is in flight at
// once, up to Config.MaxInFlight requests for the whole client. Failures
// are handled as Google's guidance says: UNAVAILABLE and INTERNAL are
// retried with exponential backoff and jitter (honouring Retry-After),
// QUOTA_EXCEEDED pauses the whole client for at least a minute,
// UNREGISTERED marks the token invalid, a refused access token is
// refreshed once. A request that may have reached FCM is never sent
// twice: when its connection fails after it was written the push is
// reported unknown.
//
// The fake in fcm/fcmtest serves the same API for tests, demos and
// benchmarks.
package fcm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// DefaultEndpoint is FCM's API host.
const DefaultEndpoint = "https://fcm.googleapis.com"

// Defaults of Config.
const (
	DefaultMaxInFlight    = 1000
	DefaultMaxAttempts    = 5
	DefaultRequestTimeout = 10 * time.Second
	DefaultQuotaBackoff   = 60 * time.Second
)

// DefaultBackoff is the retry schedule of UNAVAILABLE and INTERNAL that
// Google recommends: from 1 s, doubling, at most a minute.
var DefaultBackoff = pb.Backoff{Base: time.Second, Max: 60 * time.Second}

// Config configures a Client. Only CredentialsJSON is required.
type Config struct {
	// CredentialsJSON is the content of the service-account key file
	// (Firebase console → Project settings → Service accounts). Its
	// token_uri is where access tokens are fetched.
	CredentialsJSON []byte
	// ProjectID overrides the key file's project_id.
	ProjectID string
	// Endpoint is the API base URL (default DefaultEndpoint); point it at
	// a fake such as fcmtest.
	Endpoint string
	// HTTPClient sends the requests, also to the token endpoint. The
	// default speaks HTTP/2 with sensible dial, TLS and keep-alive
	// timeouts. A client of your own should speak HTTP/2 (FCM serves 100
	// streams per connection) and set Transport.MaxConnsPerHost, or a
	// burst of requests dials one connection each.
	HTTPClient *http.Client
	// RootCAs, when set, replaces the system's trusted roots in the
	// default client (to reach a fake FCM such as cmd/fakefcm).
	RootCAs *x509.CertPool
	// RequestTimeout bounds each request (default 10 s).
	RequestTimeout time.Duration
	// MaxInFlight is how many requests may be in flight at once across
	// every Send call of the client (default 1000).
	MaxInFlight int
	// MaxAttempts is how many requests one push may take, retries
	// included (default 5).
	MaxAttempts int
	// Backoff is the retry schedule of transient errors (default
	// DefaultBackoff).
	Backoff pb.Backoff
	// QuotaBackoff is the least pause of the whole client after a 429
	// (default 60 s; Google asks for at least a minute).
	QuotaBackoff time.Duration
	// Now is the clock of Retry-After dates, quota pauses and token expiry
	// (default time.Now).
	Now func() time.Time
	// Sleep waits d or until ctx ends, returning ctx's cause then
	// (default: a timer). Tests inject one that records the waits.
	Sleep func(ctx context.Context, d time.Duration) error
	// Rand returns a number in [0, 1) for backoff jitter (default
	// math/rand/v2).
	Rand func() float64
	// Logger receives retries, pauses and unknown outcomes (default:
	// discarded).
	Logger *slog.Logger
}

// Client sends pushes through FCM. It is safe for concurrent use; one
// client per project is meant to be shared by every sender of a process,
// so that its in-flight limit, its quota pause and its access token are
// shared too.
type Client struct {
	cfg     Config
	project string
	sendURL string
	hc      *http.Client
	tokens  *tokenSource
	log     *slog.Logger
	// sem holds one slot per request allowed in flight.
	sem chan struct{}
	// pause is the client-wide "not before" time after a 429, in Unix
	// nanoseconds of cfg.Now; no request starts before it.
	pause    atomic.Int64
	payloads sync.Pool
}

var _ pb.Sender = (*Client)(nil)

// contentType is shared by every request (headers are read-only to the
// transport).
var contentType = []string{"application/json; charset=UTF-8"}

// New returns a client for the key file's project. A key file that cannot
// sign in is a validation error naming the field of the key that is
// missing or wrong; New makes no request.
func New(cfg Config) (*Client, error) {
	key, err := parseKey(cfg.CredentialsJSON)
	if err != nil {
		return nil, err
	}
	project := cfg.ProjectID
	if project == "" {
		project = key.ProjectID
	}
	if project == "" {
		return nil, keyError("project_id", `has no "project_id"; set Config.ProjectID to the Firebase project id`)
	}
	if strings.ContainsAny(project, "/?#% ") {
		return nil, pb.Errorf(pb.KindValidation, "fcm: project id %q is not a Firebase project id", project).With("field", "project_id")
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultEndpoint
	}
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, pb.Errorf(pb.KindValidation, "fcm: endpoint %q is not an absolute http(s) URL", cfg.Endpoint).With("field", "endpoint")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = defaultHTTPClient(cfg.RootCAs)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.Backoff.Base <= 0 {
		cfg.Backoff.Base = DefaultBackoff.Base
	}
	if cfg.Backoff.Max < cfg.Backoff.Base {
		cfg.Backoff.Max = max(DefaultBackoff.Max, cfg.Backoff.Base)
	}
	if cfg.QuotaBackoff <= 0 {
		cfg.QuotaBackoff = DefaultQuotaBackoff
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Sleep == nil {
		cfg.Sleep = sleep
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		cfg:     cfg,
		project: project,
		sendURL: strings.TrimRight(cfg.Endpoint, "/") + "/v1/projects/" + project + "/messages:send",
		hc:      cfg.HTTPClient,
		tokens:  newTokenSource(key, cfg.HTTPClient, cfg.RequestTimeout, cfg.Now),
		log:     cfg.Logger.With("project", project),
		sem:     make(chan struct{}, cfg.MaxInFlight),
	}
	c.payloads.New = func() any { return &payload{buf: make([]byte, 0, 512), pool: &c.payloads} }
	return c, nil
}

// ProjectID is the project the client sends for.
func (c *Client) ProjectID() string { return c.project }

// defaultHTTPClient speaks HTTP/2 only, which FCM always offers: 100
// streams per connection, new connections opened as the in-flight
// requests need them. It pings idle connections so that a dead one is
// noticed before a request is lost on it.
func defaultHTTPClient(roots *x509.CertPool) *http.Client {
	p := new(http.Protocols)
	p.SetHTTP2(true)
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy:       http.ProxyFromEnvironment,
		DialContext: d.DialContext,
		Protocols:   p,
		HTTP2:       &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
		// For HTTP/2 this bounds the connections being dialled at once,
		// not the total: without it a burst of a thousand requests to a
		// host with no connection yet dials a thousand TLS connections.
		MaxConnsPerHost:     4,
		TLSHandshakeTimeout: 10 * time.Second,
		TLSClientConfig:     &tls.Config{RootCAs: roots},
		MaxIdleConns:        100,
		MaxIdleConnsPerHost: 100,
		IdleConnTimeout:     90 * time.Second,
	}}
}

// sleep waits d on a timer, returning early with ctx's cause.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return context.Cause(ctx)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Send implements pb.Sender: one request per push, all of them at once up
// to the client's in-flight limit, results in the order of ps.
//
// Each result's Err carries the provider code: unavailable, internal,
// quota_exceeded or network when retries ran out; unregistered (State
// invalid_token) for a token FCM no longer knows or finds malformed;
// invalid_argument, sender_id_mismatch, third_party_auth_error,
// unauthenticated or rejected for a refusal; network with State unknown
// when a connection failed after the request was written, or ctx ended
// while it was in flight. A push not in flight when ctx ended (never
// started, or waiting to retry) has State "" and an abort or timeout
// error.
func (c *Client) Send(ctx context.Context, ps []pb.Push) []pb.SendResult {
	res := make([]pb.SendResult, len(ps))
	// At most one worker per in-flight slot, each taking the next push
	// when done with one: a goroutine's stack, grown deep by the HTTP/2
	// path, then serves many pushes instead of being grown anew for each.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(len(ps), c.cfg.MaxInFlight) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ps) {
					return
				}
				if !c.acquire(ctx) {
					res[i] = notSent(ctx, 0, nil)
					continue
				}
				res[i] = c.sendOne(ctx, &ps[i])
			}
		})
	}
	wg.Wait()
	return res
}

// acquire takes an in-flight slot, or reports false when ctx ends first.
func (c *Client) acquire(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	select {
	case c.sem <- struct{}{}:
		if ctx.Err() != nil {
			// Both were ready: ending wins, nothing new starts.
			<-c.sem
			return false
		}
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *Client) release() { <-c.sem }

// MaxInFlight implements pb.InFlightSender: Config.MaxInFlight.
func (c *Client) MaxInFlight() int { return cap(c.sem) }

var _ pb.InFlightSender = (*Client)(nil)

// sendOne delivers one push, retrying as its errors allow. It is called
// holding an in-flight slot and releases it.
func (c *Client) sendOne(ctx context.Context, p *pb.Push) (res pb.SendResult) {
	held := true
	defer func() {
		if held {
			c.release()
		}
	}()
	pl, perr := c.encode(p)
	if perr != nil {
		return pb.SendResult{State: pb.DeliveryFailed, Err: perr}
	}
	defer pl.release()

	refreshed := false
	var last *pb.Error
	for try := 1; ; try++ {
		// The pause is waited holding the slot: nothing may start during
		// it anyway, and the slot bounds how many pushes wait.
		if err := c.waitPause(ctx); err != nil {
			return notSent(ctx, res.Attempts, last)
		}
		tok, terr := c.tokens.get(ctx)
		var out outcome
		switch {
		case tok == nil && terr == nil, ctx.Err() != nil:
			return notSent(ctx, res.Attempts, last)
		case terr != nil && pb.ErrorCode(terr) == pb.CodeUnauthenticated:
			out = outcome{kind: final, state: pb.DeliveryFailed, err: cloneError(terr)}
		case terr != nil:
			out = outcome{kind: retry, err: cloneError(terr)}
		default:
			res.Attempts++
			out = c.attempt(ctx, pl, tok)
		}

		switch out.kind {
		case final:
			res.State, res.Err = out.state, out.err
			return res
		case stopped:
			return notSent(ctx, res.Attempts, last)
		case reauth:
			if refreshed {
				out.err.Message = "fcm: a freshly fetched access token was refused too; check that the service account may send " +
					"(role Firebase Cloud Messaging API Admin): " + strings.TrimPrefix(out.err.Message, "fcm: ")
				res.State, res.Err = pb.DeliveryFailed, out.err
				return res
			}
			refreshed = true
			c.tokens.invalidate(tok)
		case quota:
			c.setPause(max(c.cfg.QuotaBackoff, out.wait))
		}
		last = out.err
		if try >= c.cfg.MaxAttempts {
			out.err.Message += fmt.Sprintf("; gave up after %d attempts", try)
			res.State, res.Err = pb.DeliveryFailed, out.err
			return res
		}
		if out.kind != retry {
			continue
		}
		d := max(out.wait, c.cfg.Backoff.Delay(try, c.cfg.Rand()))
		if c.log.Enabled(ctx, slog.LevelDebug) {
			c.log.LogAttrs(ctx, slog.LevelDebug, "fcm: retrying", slog.String("event", "fcm.retry"), slog.String("code", pb.ErrorCode(out.err)),
				slog.Int("attempt", try), slog.Duration("wait", d), slog.String("error", out.err.Message))
		}
		// Backoff is waited without the slot so that other pushes keep
		// going.
		c.release()
		held = false
		if err := c.cfg.Sleep(ctx, d); err != nil || !c.acquire(ctx) {
			return notSent(ctx, res.Attempts, last)
		}
		held = true
	}
}

// cloneError copies an error shared by every push that waited for the
// same token fetch, so that each result owns its error.
func cloneError(e *pb.Error) *pb.Error {
	c := *e
	c.Context = maps.Clone(e.Context)
	return &c
}

// notSent is the result of a push whose send was stopped before a
// request of it could be in flight: State "" makes the engine claim it
// again later.
func notSent(ctx context.Context, attempts int, last *pb.Error) pb.SendResult {
	cause := context.Cause(ctx)
	if cause == nil {
		cause = context.Canceled
	}
	kind := pb.ErrorKind(cause)
	if kind != pb.KindTimeout {
		kind = pb.KindAbort
	}
	var e *pb.Error
	if last == nil {
		e = pb.WrapError(kind, cause, "fcm: not sent: the send was stopped before the push's request started")
	} else {
		e = pb.WrapError(kind, cause, "fcm: not sent: the send was stopped while waiting to retry (last attempt: %s)", last.Message)
		e = e.With("code", pb.ErrorCode(last))
	}
	return pb.SendResult{Err: e, Attempts: attempts}
}

// waitPause waits out the client-wide pause. Each pause deadline is slept
// for once: when a longer pause is set meanwhile the wait goes on, and an
// injected Sleep that does not move the clock cannot make it spin.
func (c *Client) waitPause(ctx context.Context) error {
	var slept int64
	for {
		until := c.pause.Load()
		if until == 0 || until == slept {
			return nil
		}
		d := time.Duration(until - c.cfg.Now().UnixNano())
		if d <= 0 {
			return nil
		}
		if err := c.cfg.Sleep(ctx, d); err != nil {
			return err
		}
		slept = until
	}
}

// setPause makes every request of the client wait d from now, unless a
// longer pause is already set.
func (c *Client) setPause(d time.Duration) {
	until := c.cfg.Now().Add(d).UnixNano()
	for {
		cur := c.pause.Load()
		if cur >= until {
			return
		}
		if c.pause.CompareAndSwap(cur, until) {
			c.log.LogAttrs(context.Background(), slog.LevelWarn, "fcm: quota exceeded, pausing every send",
				slog.String("event", "fcm.quota_pause"), slog.Duration("pause", d))
			return
		}
	}
}

// maxResponseBody bounds what is read of any response.
const maxResponseBody = 64 << 10

// attempt makes one request.
func (c *Client) attempt(ctx context.Context, pl *payload, tok *accessToken) outcome {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	tr := &reqTrace{}
	tr.trace = httptrace.ClientTrace{GotConn: tr.gotConnection, WroteRequest: tr.wroteRequest}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(rctx, &tr.trace), http.MethodPost, c.sendURL, nil)
	if err != nil {
		return outcome{kind: final, state: pb.DeliveryFailed, err: pb.ProviderError(pb.CodeRejected, "fcm: build request: %v", err)}
	}
	req.Body, _ = pl.reader()
	req.GetBody = pl.reader
	req.ContentLength = int64(len(pl.buf))
	req.Header["Authorization"] = tok.header
	req.Header["Content-Type"] = contentType

	resp, err := c.hc.Do(req)
	if err != nil {
		return c.lost(ctx, rctx, err, tr)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// FCM accepted the push; a body cut short changes nothing.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBody))
		return outcome{kind: final, state: pb.DeliverySent}
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	return c.classify(resp.StatusCode, resp.Header.Get("Retry-After"), body)
}

// reqTrace records how far a request got, to tell a request that never
// reached FCM (safe to send again) from one that may have.
type reqTrace struct {
	trace httptrace.ClientTrace
	// gotConn: a connection was obtained for the request.
	gotConn atomic.Bool
	// wrote: the whole request was written on the latest connection.
	wrote atomic.Bool
}

func (t *reqTrace) gotConnection(httptrace.GotConnInfo) {
	t.gotConn.Store(true)
	// net/http replays a request on a new connection only when it knows
	// the old one did not process it (GOAWAY, refused stream), so what
	// counts is the latest connection.
	t.wrote.Store(false)
}

func (t *reqTrace) wroteRequest(i httptrace.WroteRequestInfo) {
	if i.Err == nil {
		t.wrote.Store(true)
	}
}

// lost decides what a failed request means. A request that never left
// (no connection, or not completely written) is retried; one that was
// written may have been delivered, so it is not sent again: unknown.
func (c *Client) lost(ctx, rctx context.Context, err error, tr *reqTrace) outcome {
	ended := ctx.Err() != nil
	timedOut := !ended && rctx.Err() != nil
	if ended || timedOut {
		// The transport returns as soon as the context ends, possibly
		// before its writer reports; only a request that never got a
		// connection is known not to have left.
		if !tr.gotConn.Load() {
			if ended {
				return outcome{kind: stopped}
			}
			return outcome{kind: retry, err: pb.ProviderError(pb.CodeNetwork,
				"fcm: no connection to %s within %s: %v", c.cfg.Endpoint, c.cfg.RequestTimeout, err)}
		}
		why := fmt.Sprintf("no answer within %s", c.cfg.RequestTimeout)
		if ended {
			why = fmt.Sprintf("the send was stopped (%v) while the request was in flight", context.Cause(ctx))
		}
		c.logUnknown(ctx, why)
		return outcome{kind: final, state: pb.DeliveryUnknown, err: pb.ProviderError(pb.CodeNetwork,
			"fcm: %s; the push may or may not have been delivered", why)}
	}
	if !tr.wrote.Load() {
		return outcome{kind: retry, err: pb.ProviderError(pb.CodeNetwork, "fcm: request not sent: %v", err)}
	}
	why := fmt.Sprintf("connection lost after the request was sent: %v", err)
	c.logUnknown(ctx, why)
	return outcome{kind: final, state: pb.DeliveryUnknown, err: pb.ProviderError(pb.CodeNetwork,
		"fcm: %s; the push may or may not have been delivered, so it is not sent again", why)}
}

func (c *Client) logUnknown(ctx context.Context, why string) {
	if c.log.Enabled(ctx, slog.LevelInfo) {
		c.log.LogAttrs(ctx, slog.LevelInfo, "fcm: outcome unknown", slog.String("event", "fcm.unknown"), slog.String("reason", why))
	}
}

// Package webhook is a pushblaster Sender for teams that deliver pushes
// through their own service: it POSTs the pushes as signed JSON batches to
// one URL, with a timeout per request and retries of transient failures.
//
// # Request
//
// Every request is a POST of Content-Type application/json:
//
//	{"batch_id": "…", "sent_at": "2025-01-02T03:04:05Z",
//	 "pushes": [{"user_id": "…", "token": "…", "platform": "…", "locale": "…",
//	             "timezone": "…", "title": "…", "body": "…", "image": "…",
//	             "data": {"key": "value"}}]}
//
// batch_id is the hex SHA-256 of the batch's push keys (which name the
// execution, so the next day's send to the same people gets new ids), user
// ids and tokens (see [Batch]); sent_at is when the batch was first sent. The body of a retry is
// byte for byte the body of the first attempt. The headers are
//
//	X-Pushblaster-Timestamp: <unix seconds of this attempt>
//	X-Pushblaster-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>
//	Idempotency-Key: <batch_id>
//
// The signature binds the timestamp, so a captured request cannot be
// replayed after the receiver's tolerance has passed; [Verify] checks both.
// A receiver that remembers the Idempotency-Keys it has processed can drop a
// retried batch it already handled, which is what makes [Config.RetryUnknown]
// safe.
//
// # Response contract
//
//   - 2xx: the batch was accepted. The body is empty or
//     {"results": [{"token": "…", "status": "sent|failed|invalid_token",
//     "reason": "…"}]} giving per-push outcomes; a push missing from results
//     counts as sent. A push that failed is not retried; invalid_token means
//     the device is gone (code unregistered). When a token occurs several
//     times in a batch, its results apply in order and the last one repeats.
//     A 2xx body that is not such an object counts as all sent, and is
//     logged.
//   - 400, 422: every push of the batch failed with code invalid_argument.
//   - 401, 403: every push failed with code unauthenticated.
//   - Any other 4xx but 408 and 429, and any 1xx or 3xx: every push failed
//     with code rejected. Redirects are not followed: a redirected POST
//     would arrive as a GET or not at all.
//   - 408, 429, 5xx: the batch is retried with exponential backoff, never
//     sooner than a Retry-After header (seconds or HTTP date) asks; a 429
//     or a Retry-After holds back every batch of the Sender, not only the
//     one that got it. When attempts run out, every push failed with code
//     quota_exceeded (429), internal (500) or unavailable (408, other 5xx).
//   - No connection, or the connection failed before the request was
//     written: retried like a 5xx, code network.
//   - Timeout, or the connection lost, after the request was written: the
//     receiver may have got the batch, so every push is unknown and the
//     batch is not sent again, which would risk a duplicate. With
//     RetryUnknown the batch is retried with the same Idempotency-Key; it
//     is unknown if attempts run out. A 502 or 504 from a proxy can also
//     mean the receiver got the batch: another reason to honour the key.
//
// A rejection that follows an attempt which may have been delivered is
// taken as it is: a receiver that honours Idempotency-Key answers a replay
// as it answered the original.
package webhook

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// Headers of every request.
const (
	HeaderTimestamp      = "X-Pushblaster-Timestamp"
	HeaderSignature      = "X-Pushblaster-Signature"
	HeaderIdempotencyKey = "Idempotency-Key"
)

// Per-push statuses a receiver reports in its 2xx response.
const (
	StatusSent         = "sent"
	StatusFailed       = "failed"
	StatusInvalidToken = "invalid_token"
)

// Defaults of Config.
const (
	DefaultBatchSize   = 500
	DefaultTimeout     = 10 * time.Second
	DefaultMaxAttempts = 5
	DefaultMaxInFlight = 8
)

// DefaultBackoff is the retry schedule when Config.Backoff is zero.
var DefaultBackoff = pb.Backoff{Base: time.Second, Max: time.Minute}

// maxResponseBytes bounds how much of a 2xx body is read: a results list for
// a full batch is far smaller, and a runaway receiver must not exhaust memory.
const maxResponseBytes = 8 << 20

// Config configures a Sender. Zero fields take the documented defaults.
type Config struct {
	// URL is the absolute http or https URL batches are POSTed to.
	URL string
	// Secret is the HMAC-SHA256 key of the signature header.
	Secret []byte
	// BatchSize is the number of pushes per request (default 500).
	BatchSize int
	// Timeout bounds each request, response body included (default 10s).
	Timeout time.Duration
	// MaxAttempts is how many requests a batch gets, the first included
	// (default 5).
	MaxAttempts int
	// Backoff is the wait between attempts (default 1s doubling to 60s).
	Backoff pb.Backoff
	// MaxInFlight is how many batch requests run at once (default 8).
	MaxInFlight int
	// RetryUnknown retries a batch whose request timed out or lost its
	// connection after it was written. Set it only when the receiver
	// drops a batch whose Idempotency-Key it has already processed:
	// otherwise a retry can deliver the pushes twice.
	RetryUnknown bool
	// HTTPClient sends the requests (default: a client whose transport
	// keeps MaxInFlight idle connections). Its redirect policy is replaced:
	// redirects are never followed. Whether a failed request was written is
	// known only with an *http.Transport (or a nil Transport); with any
	// other RoundTripper a failed request counts as possibly delivered.
	HTTPClient *http.Client
	// Now tells the time of the timestamp header, sent_at and Retry-After
	// dates (default time.Now).
	Now func() time.Time
	// Sleep waits d or until ctx ends, returning ctx's error then (default:
	// a timer). Tests inject it to record waits instead of waiting.
	Sleep func(ctx context.Context, d time.Duration) error
	// Rand returns a number in [0, 1) for the backoff jitter (default
	// math/rand/v2.Float64).
	Rand func() float64
	// Logger receives retries and anomalies (default slog.Default()).
	Logger *slog.Logger
}

// Sender POSTs pushes to a webhook. It is safe for concurrent use.
type Sender struct {
	cfg    Config
	client *http.Client
	// traceable says whether httptrace reports reliably when a request was
	// written; only then can a failed request be called undelivered.
	traceable bool
	log       *slog.Logger

	mu sync.Mutex
	// notBefore holds every request of the Sender back after a 429 or a
	// Retry-After: the receiver asked the whole sender to slow down, and
	// other batches would only collect the same answer.
	notBefore time.Time
}

var _ pb.Sender = (*Sender)(nil)

// New returns a Sender for cfg. An invalid config is a validation *pb.Error
// naming every bad field (webhook.url, webhook.secret, …).
func New(cfg Config) (*Sender, error) {
	var v pb.Validation
	if cfg.URL == "" {
		v.Add("webhook.url", "is required")
	} else if u, err := url.Parse(cfg.URL); err != nil {
		v.Add("webhook.url", "is not a URL: %s", urlErr(err))
	} else if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		// Redacted: validation messages end up in logs.
		v.Add("webhook.url", "is %q; it must be an absolute http or https URL", u.Redacted())
	}
	if len(cfg.Secret) == 0 {
		v.Add("webhook.secret", "is required; requests are signed with it")
	}
	if cfg.BatchSize < 0 {
		v.Add("webhook.batch_size", "is %d; it must be positive (0 means %d)", cfg.BatchSize, DefaultBatchSize)
	}
	if cfg.Timeout < 0 {
		v.Add("webhook.timeout", "is %s; it must be positive (0 means %s)", cfg.Timeout, DefaultTimeout)
	}
	if cfg.MaxAttempts < 0 {
		v.Add("webhook.max_attempts", "is %d; it must be positive (0 means %d)", cfg.MaxAttempts, DefaultMaxAttempts)
	}
	if cfg.MaxInFlight < 0 {
		v.Add("webhook.max_in_flight", "is %d; it must be positive (0 means %d)", cfg.MaxInFlight, DefaultMaxInFlight)
	}
	if cfg.Backoff == (pb.Backoff{}) {
		cfg.Backoff = DefaultBackoff
	} else if cfg.Backoff.Base <= 0 || cfg.Backoff.Max < cfg.Backoff.Base {
		v.Add("webhook.backoff", "is %s..%s; the base must be positive and at most the max", cfg.Backoff.Base, cfg.Backoff.Max)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}

	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
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
		cfg.Logger = slog.Default()
	}
	cfg.Secret = bytes.Clone(cfg.Secret)

	var client http.Client
	if cfg.HTTPClient != nil {
		client = *cfg.HTTPClient
	} else {
		// The default transport keeps 2 idle connections per host: with
		// MaxInFlight batches to one host the rest would be redialled for
		// every request.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = cfg.MaxInFlight
		client.Transport = t
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	_, std := client.Transport.(*http.Transport)
	return &Sender{
		cfg:       cfg,
		client:    &client,
		traceable: client.Transport == nil || std,
		log:       cfg.Logger.With("sender", "webhook"),
	}, nil
}

// MaxInFlight implements pb.InFlightSender: Config.MaxInFlight requests
// of Config.BatchSize pushes each.
func (s *Sender) MaxInFlight() int { return s.cfg.MaxInFlight * s.cfg.BatchSize }

var _ pb.InFlightSender = (*Sender)(nil)

// Send implements pb.Sender: it POSTs ps in batches of Config.BatchSize,
// up to Config.MaxInFlight at once, and returns one result per push in the
// order of ps. Attempts is the number of requests made for the push's batch.
//
// When ctx ends, no request starts: a batch whose request was written gets
// DeliveryUnknown, one that never reached the receiver State "" (with
// Attempts counting any requests that were refused or never written), so
// that the engine can send it again without risking a duplicate.
func (s *Sender) Send(ctx context.Context, ps []pb.Push) []pb.SendResult {
	out := make([]pb.SendResult, len(ps))
	size := s.cfg.BatchSize
	batches := (len(ps) + size - 1) / size
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(s.cfg.MaxInFlight, batches) {
		wg.Go(func() {
			for {
				// Batches are taken in order so that a cancelled send has
				// delivered a prefix of ps, not a scattering.
				i := int(next.Add(1) - 1)
				if i >= batches || ctx.Err() != nil {
					return
				}
				lo, hi := i*size, min((i+1)*size, len(ps))
				s.sendBatch(ctx, ps[lo:hi], out[lo:hi])
			}
		})
	}
	wg.Wait()
	return out
}

// outcome is what one request of a batch came to.
type outcome struct {
	// results is set when the receiver accepted the batch (2xx).
	results []pb.SendResult
	// err is why the batch was not delivered, when results is nil.
	err *pb.Error
	// retry says whether another attempt can succeed.
	retry bool
	// maybeDelivered says whether the receiver may have got the batch
	// although no answer came back.
	maybeDelivered bool
	// stopped says whether ctx ended during the request.
	stopped bool
	// hold is how long the receiver asked every request to wait.
	hold time.Duration
}

// sendBatch delivers one batch, retrying as the package doc describes, and
// fills out (one result per push of ps).
func (s *Sender) sendBatch(ctx context.Context, ps []pb.Push, out []pb.SendResult) {
	id := batchID(ps)
	log := s.log.With("batch_id", id, "pushes", len(ps))
	var (
		body           []byte
		attempts       int
		last           *pb.Error // why the previous attempt did not deliver
		maybeDelivered bool      // an earlier attempt may have reached the receiver
		backoff        time.Duration
	)
	stop := func(err error) {
		if err == nil {
			err = context.Canceled
		}
		if maybeDelivered {
			fill(out, pb.DeliveryUnknown, pb.ProviderError(pb.CodeNetwork,
				"the send stopped after a request of batch %s that may have reached the webhook", id).With("batch_id", id), attempts)
			return
		}
		e := pb.WrapError(pb.AsError(err).Kind, err, "webhook batch %s stopped before it was delivered", id).With("batch_id", id)
		if last != nil {
			e.Message += " (last attempt: " + last.Message + ")"
		}
		fill(out, "", e, attempts)
	}
	for {
		wait := max(backoff, s.held())
		if wait > 0 {
			if err := s.cfg.Sleep(ctx, wait); err != nil {
				stop(err)
				return
			}
		}
		if err := ctx.Err(); err != nil {
			stop(err)
			return
		}
		if body == nil {
			var err error
			if body, err = encode(id, ps, s.cfg.Now()); err != nil {
				fill(out, pb.DeliveryFailed, pb.WrapError(pb.KindInternal, err, "webhook batch %s cannot be encoded", id), 0)
				return
			}
		}
		attempts++
		o := s.attempt(ctx, id, ps, body)
		switch {
		case o.results != nil:
			for i := range out {
				out[i] = o.results[i]
				out[i].Attempts = attempts
			}
			return
		case o.stopped:
			maybeDelivered = maybeDelivered || o.maybeDelivered
			last = o.err
			stop(ctx.Err())
			return
		case o.maybeDelivered:
			maybeDelivered = true
			if !s.cfg.RetryUnknown {
				log.WarnContext(ctx, "webhook batch may have been delivered; not retried", "event", "webhook.unknown", "attempt", attempts, "error", o.err.Message)
				fill(out, pb.DeliveryUnknown, o.err, attempts)
				return
			}
		case !o.retry:
			fill(out, pb.DeliveryFailed, o.err, attempts)
			return
		}
		last = o.err
		if attempts >= s.cfg.MaxAttempts {
			if maybeDelivered {
				fill(out, pb.DeliveryUnknown, pb.ProviderError(pb.CodeNetwork,
					"%s; an earlier attempt may have reached the webhook", o.err.Message).With("batch_id", id), attempts)
				return
			}
			fill(out, pb.DeliveryFailed, o.err, attempts)
			return
		}
		backoff = max(s.cfg.Backoff.Delay(attempts, s.cfg.Rand()), o.hold)
		if o.hold > 0 || pb.ErrorCode(o.err) == pb.CodeQuotaExceeded {
			s.holdFor(backoff)
		}
		log.DebugContext(ctx, "webhook batch retried", "event", "webhook.retry", "attempt", attempts, "wait", backoff, "error", o.err.Message)
	}
}

// attempt makes one request of batch id, whose pushes are ps and whose
// request body is body.
func (s *Sender) attempt(ctx context.Context, id string, ps []pb.Push, body []byte) outcome {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	var wrote atomic.Bool
	trace := &httptrace.ClientTrace{WroteRequest: func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			wrote.Store(true)
		}
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(rctx, trace), http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return outcome{err: pb.WrapError(pb.KindInternal, err, "webhook request for batch %s", id)}
	}
	// Without GetBody the transport never replays the request on its own.
	// It would, because of the Idempotency-Key header, after a connection
	// was lost with the request written: a hidden duplicate, and an
	// attempt this sender would not count.
	req.GetBody = nil
	ts := strconv.FormatInt(s.cfg.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, sign(s.cfg.Secret, ts, body))
	req.Header.Set(HeaderIdempotencyKey, id)

	resp, err := s.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its message repeats the URL, which may hold a credential
		}
		written := wrote.Load() || !s.traceable
		o := outcome{stopped: ctx.Err() != nil, maybeDelivered: written, retry: !written}
		switch {
		case written && rctx.Err() != nil && ctx.Err() == nil:
			o.err = pb.ProviderError(pb.CodeNetwork, "webhook did not answer batch %s within %s; it may have got it", id, s.cfg.Timeout)
		case written:
			o.err = pb.ProviderError(pb.CodeNetwork, "webhook request for batch %s failed after it was written; the webhook may have got it: %v", id, err)
		default:
			o.err = pb.ProviderError(pb.CodeNetwork, "webhook request for batch %s failed before it was written: %v", id, err)
		}
		o.err.With("batch_id", id)
		return o
	}
	defer func() {
		// Draining lets the connection be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()

	code := resp.StatusCode
	if code >= 200 && code <= 299 {
		// The status is the receiver's answer: a body cut short does not
		// undo it, so what was read is used.
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
		return outcome{results: s.results(ctx, id, ps, b)}
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	o := outcome{}
	var pcode string
	switch {
	case code == http.StatusRequestTimeout:
		pcode, o.retry = pb.CodeUnavailable, true
	case code == http.StatusTooManyRequests:
		pcode, o.retry = pb.CodeQuotaExceeded, true
	case code == http.StatusInternalServerError:
		pcode, o.retry = pb.CodeInternal, true
	case code >= 500 && code <= 599:
		pcode, o.retry = pb.CodeUnavailable, true
	case code == http.StatusBadRequest || code == http.StatusUnprocessableEntity:
		pcode = pb.CodeInvalidArgument
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		pcode = pb.CodeUnauthenticated
	default:
		pcode = pb.CodeRejected
	}
	if o.retry {
		if d, ok := pb.RetryAfter(resp.Header.Get("Retry-After"), s.cfg.Now()); ok {
			o.hold = d
		}
	}
	msg := fmt.Sprintf("webhook answered batch %s with %s", id, resp.Status)
	if t := clean(snippet); t != "" {
		msg += ": " + t
	}
	o.err = pb.ProviderError(pcode, "%s", msg).With("batch_id", id).With("http_status", strconv.Itoa(code))
	return o
}

// results turns a 2xx body into one result per push of the batch.
func (s *Sender) results(ctx context.Context, id string, ps []pb.Push, body []byte) []pb.SendResult {
	out := make([]pb.SendResult, len(ps))
	for i := range out {
		out[i].State = pb.DeliverySent
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return out
	}
	var r Response
	if err := json.Unmarshal(body, &r); err != nil {
		s.log.WarnContext(ctx, "webhook accepted a batch with a body that is not a results object; counted as sent", "event", "webhook.bad_response",
			"batch_id", id, "error", err, "body", clean(body[:min(len(body), 200)]))
		return out
	}
	byToken := make(map[string][]Result, len(r.Results))
	for _, res := range r.Results {
		byToken[res.Token] = append(byToken[res.Token], res)
	}
	used := make(map[string]int, len(byToken))
	for i, p := range ps {
		tok := p.Recipient.Token
		rs := byToken[tok]
		if len(rs) == 0 {
			continue
		}
		res := rs[min(used[tok], len(rs)-1)]
		used[tok]++
		reason := res.Reason
		if reason == "" {
			reason = "no reason given"
		}
		switch res.Status {
		case StatusSent:
		case StatusInvalidToken:
			out[i].State = pb.DeliveryInvalidToken
			out[i].Err = pb.ProviderError(pb.CodeUnregistered, "webhook says the token of user %s is invalid: %s", p.Recipient.UserID, reason)
		case StatusFailed:
			out[i].State = pb.DeliveryFailed
			out[i].Err = pb.ProviderError(pb.CodeRejected, "webhook failed the push to user %s: %s", p.Recipient.UserID, reason)
		default:
			out[i].State = pb.DeliveryFailed
			out[i].Err = pb.ProviderError(pb.CodeRejected, "webhook answered status %q for the push to user %s: %s", res.Status, p.Recipient.UserID, reason)
		}
		if out[i].Err != nil {
			out[i].Err.With("batch_id", id)
		}
	}
	for tok, rs := range byToken {
		if used[tok] == 0 {
			s.log.DebugContext(ctx, "webhook reported a token that is not in the batch", "event", "webhook.unknown_token", "batch_id", id, "results", len(rs))
		}
	}
	return out
}

// held is how long the receiver still wants every request held back.
func (s *Sender) held() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notBefore.Sub(s.cfg.Now())
}

// holdFor holds every request back for d from now, unless already held
// longer.
func (s *Sender) holdFor(d time.Duration) {
	t := s.cfg.Now().Add(d)
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.After(s.notBefore) {
		s.notBefore = t
	}
}

// Batch is the JSON body of a request, for receivers written in Go.
type Batch struct {
	// BatchID is the hex SHA-256 of each push's user_id and token, each
	// followed by a NUL byte, in batch order. It is stable across retries
	// and is also the Idempotency-Key. The same pushes sent again (the
	// same users and tokens, in another run of the automation) get the
	// same id, so a receiver should forget ids after a while shorter than
	// the interval between runs.
	BatchID string `json:"batch_id"`
	// SentAt is when the batch was first sent (RFC 3339, seconds).
	SentAt time.Time `json:"sent_at"`
	Pushes []Push    `json:"pushes"`
}

// Push is one push of a Batch: the recipient's device and the rendered
// message.
type Push struct {
	UserID   string            `json:"user_id"`
	Token    string            `json:"token"`
	Platform string            `json:"platform"`
	Locale   string            `json:"locale"`
	Timezone string            `json:"timezone"`
	Title    string            `json:"title"`
	Body     string            `json:"body"`
	Image    string            `json:"image"`
	Data     map[string]string `json:"data"`
}

// Response is the optional body of a 2xx answer.
type Response struct {
	Results []Result `json:"results"`
}

// Result is one push's outcome in a Response.
type Result struct {
	// Token identifies the push within the batch.
	Token string `json:"token"`
	// Status is StatusSent, StatusFailed or StatusInvalidToken.
	Status string `json:"status"`
	// Reason explains a status other than sent; it is recorded with the
	// push.
	Reason string `json:"reason,omitempty"`
}

// batchID identifies a batch by its pushes' keys (which name the
// execution) and recipients, so that every retry of it carries the same
// Idempotency-Key and the next day's send to the same people does not.
func batchID(ps []pb.Push) string {
	h := sha256.New()
	for _, p := range ps {
		io.WriteString(h, p.Key)
		h.Write([]byte{0})
		io.WriteString(h, p.Recipient.UserID)
		h.Write([]byte{0})
		io.WriteString(h, p.Recipient.Token)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// encode returns the request body of a batch.
func encode(id string, ps []pb.Push, now time.Time) ([]byte, error) {
	b := Batch{BatchID: id, SentAt: now.UTC().Truncate(time.Second), Pushes: make([]Push, len(ps))}
	for i, p := range ps {
		data := p.Message.Data
		if data == nil {
			data = map[string]string{} // {} rather than null: one shape for receivers
		}
		b.Pushes[i] = Push{
			UserID: p.Recipient.UserID, Token: p.Recipient.Token, Platform: p.Recipient.Platform,
			Locale: p.Recipient.Locale, Timezone: p.Recipient.Timezone,
			Title: p.Message.Title, Body: p.Message.Body, Image: p.Message.Image, Data: data,
		}
	}
	return json.Marshal(b)
}

// fill gives every push of a batch the same result.
func fill(out []pb.SendResult, state pb.DeliveryState, err *pb.Error, attempts int) {
	for i := range out {
		out[i] = pb.SendResult{State: state, Err: err, Attempts: attempts}
	}
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// clean makes a receiver's text fit for an error message: one line, valid
// UTF-8, short.
func clean(b []byte) string {
	s := strings.ToValidUTF8(string(b), "?")
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "…"
	}
	return s
}

// urlErr is the reason of a url.Parse error without the URL it repeats.
func urlErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// Package apns delivers pushes to Apple devices through the APNs HTTP/2
// provider API (github.com/sideshow/apns2), authenticating with a .p8
// signing key: token-based auth, one key for every app of the team, no
// certificate to renew every year.
//
// A push becomes one request to /3/device/{token}: the message's title and
// body go into aps.alert, its data keys become custom top-level keys, and
// an image URL goes where FCM puts it on Apple devices ({"fcm_options":
// {"image": url}} plus aps.mutable-content), so that a Notification Service
// Extension written for FCM shows it unchanged. The message's APNs override,
// FCM's ApnsConfig shape {"headers": {…}, "payload": {…}}, is applied last.
package apns

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"

	pb "github.com/pushblaster/pushblaster"
)

// Defaults of Config.
const (
	DefaultMaxInFlight = 500
	DefaultMaxAttempts = 5
)

// DefaultBackoff is the retry schedule when Config.Backoff is zero.
var DefaultBackoff = pb.Backoff{Base: time.Second, Max: time.Minute}

// Config configures a Sender. KeyP8, KeyID, TeamID and Topic are required.
type Config struct {
	// KeyP8 is the content of the .p8 file Apple issued for the key: a
	// PEM-encoded PKCS#8 P-256 private key.
	KeyP8 []byte
	// KeyID is the key's id (the JWT header's kid), shown next to the key
	// in the Apple developer account.
	KeyID string
	// TeamID is the developer team's id (the JWT's iss).
	TeamID string
	// Topic is the app's bundle id, sent as apns-topic.
	Topic string
	// Production selects api.push.apple.com; otherwise the sandbox, which
	// knows only the tokens of development builds.
	Production bool
	// Endpoint replaces Apple's host when set ("https://host:port"), for
	// tests and proxies.
	Endpoint string
	// HTTPClient replaces the HTTP/2 client apns2 builds when set, e.g. to
	// trust a test server's certificate. Apple only speaks HTTP/2.
	HTTPClient *http.Client
	// MaxInFlight caps the pushes being delivered at once by this Sender,
	// across concurrent Send calls; default 500. A push keeps its slot
	// while it waits to retry, so a struggling APNs sees fewer requests,
	// not more.
	MaxInFlight int
	// MaxAttempts caps the requests made for one push; default 5.
	MaxAttempts int
	// Backoff is the wait before retrying a transient failure when APNs
	// sends no Retry-After; default 1s doubling up to 60s, jittered.
	Backoff pb.Backoff
	// Now reads the clock, for Retry-After dates; default time.Now. The
	// JWT's iat comes from apns2, which reads the system clock itself.
	Now func() time.Time
	// Sleep waits d or until ctx ends, returning ctx's error then; default
	// a timer. Tests record the waits instead of sleeping.
	Sleep func(ctx context.Context, d time.Duration) error
	// Rand returns a number in [0, 1) for the backoff jitter; default
	// math/rand/v2. It is called from many goroutines at once.
	Rand func() float64
	// Logger receives retries, token refreshes and undetermined outcomes;
	// default slog.Default().
	Logger *slog.Logger
}

// Sender is a pb.Sender for APNs. It is safe for concurrent use; its
// HTTP/2 connections and signing token are shared by every Send.
type Sender struct {
	client      *apns2.Client
	token       *token.Token
	topic       string
	sem         chan struct{}
	maxAttempts int
	backoff     pb.Backoff
	now         func() time.Time
	sleep       func(context.Context, time.Duration) error
	rand        func() float64
	log         *slog.Logger
}

var _ pb.Sender = (*Sender)(nil)

// New returns a Sender for cfg. A missing or invalid key, key id, team id
// or topic is a validation error naming the field (apns.key_file,
// apns.key_id, apns.team_id, apns.topic) so that a bad config fails at
// startup rather than on the first push.
func New(cfg Config) (*Sender, error) {
	var v pb.Validation
	key, keyErr := parseKey(cfg.KeyP8)
	if keyErr != "" {
		v.Add("apns.key_file", "%s", keyErr)
	}
	if strings.TrimSpace(cfg.KeyID) == "" {
		v.Add("apns.key_id", "is required: the id of the .p8 key, shown with the key in the Apple developer account")
	}
	if strings.TrimSpace(cfg.TeamID) == "" {
		v.Add("apns.team_id", "is required: the Apple developer team id")
	}
	if strings.TrimSpace(cfg.Topic) == "" {
		v.Add("apns.topic", "is required: the app's bundle id")
	}
	host := apns2.HostDevelopment
	if cfg.Production {
		host = apns2.HostProduction
	}
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			v.Add("apns.endpoint", "is %q; it must be an absolute URL such as https://api.push.apple.com", cfg.Endpoint)
		}
		host = strings.TrimRight(cfg.Endpoint, "/")
	}
	if err := v.Err(); err != nil {
		return nil, err
	}

	tok := &token.Token{AuthKey: key, KeyID: cfg.KeyID, TeamID: cfg.TeamID}
	// Signing once now proves the key works before anything is sent.
	if _, err := tok.Generate(); err != nil {
		v.Add("apns.key_file", "cannot sign a token: %v", err)
		return nil, v.Err()
	}
	client := apns2.NewTokenClient(tok)
	client.Host = host
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient // a copy: the wrapped transport must not leak into the caller's client
		client.HTTPClient = &c
	}
	base := client.HTTPClient.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	client.HTTPClient.Transport = &recordingTransport{base: base}

	s := &Sender{
		client:      client,
		token:       tok,
		topic:       cfg.Topic,
		sem:         make(chan struct{}, positiveOr(cfg.MaxInFlight, DefaultMaxInFlight)),
		maxAttempts: positiveOr(cfg.MaxAttempts, DefaultMaxAttempts),
		backoff:     cfg.Backoff,
		now:         cfg.Now,
		sleep:       cfg.Sleep,
		rand:        cfg.Rand,
		log:         cfg.Logger,
	}
	if s.backoff.Base <= 0 {
		s.backoff.Base = DefaultBackoff.Base
	}
	if s.backoff.Max <= 0 {
		s.backoff.Max = DefaultBackoff.Max
	}
	s.backoff.Max = max(s.backoff.Max, s.backoff.Base)
	if s.now == nil {
		s.now = time.Now
	}
	if s.sleep == nil {
		s.sleep = sleep
	}
	if s.rand == nil {
		s.rand = rand.Float64
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s, nil
}

// positiveOr returns v, or def when v is not positive.
func positiveOr(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// parseKey reads a .p8 key, returning why it is unusable instead of an
// error so that New can report it as a field problem.
func parseKey(p8 []byte) (*ecdsa.PrivateKey, string) {
	if len(strings.TrimSpace(string(p8))) == 0 {
		return nil, "is required: the content of the .p8 key Apple issued (AuthKey_KEYID.p8)"
	}
	key, err := token.AuthKeyFromBytes(p8)
	switch {
	case errors.Is(err, token.ErrAuthKeyNotPem):
		return nil, "is not a .p8 key: no PEM block (-----BEGIN PRIVATE KEY-----) found"
	case errors.Is(err, token.ErrAuthKeyNotECDSA):
		return nil, "is not an APNs key: it holds a private key, but not an elliptic-curve one"
	case err != nil:
		return nil, "is not a .p8 key: " + err.Error()
	}
	// ES256 needs P-256; apns2 accepts any curve and would fail on every
	// request instead.
	if key.Curve != elliptic.P256() {
		return nil, "is an elliptic-curve key on " + key.Curve.Params().Name + "; APNs keys are P-256"
	}
	return key, ""
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// MaxInFlight implements pb.InFlightSender: Config.MaxInFlight.
func (s *Sender) MaxInFlight() int { return cap(s.sem) }

var _ pb.InFlightSender = (*Sender)(nil)

// Send delivers every push of ps, up to MaxInFlight at once, and returns
// one result per push in the order of ps. Retries (transient APNs errors,
// connections that failed before the request left, one token refresh)
// happen inside; every result is final, except when ctx ends: then no
// request starts any more, a push whose request was in flight is
// DeliveryUnknown, and a push never requested, or refused transiently and
// waiting to retry (so known not to be delivered), gets State "" so that
// the engine can claim it again.
func (s *Sender) Send(ctx context.Context, ps []pb.Push) []pb.SendResult {
	out := make([]pb.SendResult, len(ps))
	var wg sync.WaitGroup
	for i := range ps {
		if !s.acquire(ctx) {
			break
		}
		wg.Go(func() {
			defer func() { <-s.sem }()
			out[i] = s.deliver(ctx, &ps[i])
		})
	}
	wg.Wait()
	return out
}

// acquire takes a slot of the Sender's semaphore, or reports false once
// ctx has ended.
func (s *Sender) acquire(ctx context.Context) bool {
	// select picks at random among ready cases: check first, so an ended
	// ctx never starts another push.
	if ctx.Err() != nil {
		return false
	}
	select {
	case s.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// deliver sends one push, retrying as its outcomes allow.
func (s *Sender) deliver(ctx context.Context, p *pb.Push) pb.SendResult {
	req, perr := s.request(p)
	if perr != nil {
		return pb.SendResult{State: pb.DeliveryFailed, Err: perr}
	}
	var res pb.SendResult
	refreshed := false
	for {
		if ctx.Err() != nil {
			return stopped(ctx, res)
		}
		res.Attempts++
		o := s.attempt(ctx, req)
		res.State, res.Err = o.state, o.err
		more := res.Attempts < s.maxAttempts
		switch {
		case o.refresh && !refreshed && more:
			refreshed = true
			if err := s.refresh(o.bearer); err != nil {
				res.Err = pb.ProviderError(pb.CodeUnauthenticated, "apns: refreshing the provider token after %s: %v",
					o.err.Context["reason"], err)
				return res
			}
		case o.retry && more:
			wait := o.retryAfter
			if !o.hasRetryAfter {
				wait = s.backoff.Delay(res.Attempts, s.rand())
			}
			s.log.DebugContext(ctx, "apns: retrying", "event", "apns.retry", "user_id", p.Recipient.UserID, "attempt", res.Attempts,
				"code", pb.ErrorCode(o.err), "wait", wait)
			if err := s.sleep(ctx, wait); err != nil {
				return stopped(ctx, res)
			}
		default:
			if o.state == pb.DeliveryUnknown {
				s.log.WarnContext(ctx, "apns: outcome unknown", "event", "apns.unknown", "user_id", p.Recipient.UserID, "err", o.err.Message)
			}
			return res
		}
	}
}

// stopped is the result of a push whose delivery ctx ended between
// requests: nothing of it reached Apple, or APNs refused it transiently,
// so the engine may claim it again.
func stopped(ctx context.Context, res pb.SendResult) pb.SendResult {
	if res.Attempts == 0 {
		return pb.SendResult{}
	}
	last := "none"
	if res.Err != nil {
		last = res.Err.Message
	}
	e := pb.WrapError(pb.AsError(ctx.Err()).Kind, ctx.Err(), "apns: stopped before retrying (last attempt: %s)", last)
	return pb.SendResult{State: "", Err: e, Attempts: res.Attempts}
}

// refresh replaces the signing token if stale is still the current one:
// concurrent requests refused with the same token cause one refresh, not
// one each, since APNs refuses tokens renewed too often
// (TooManyProviderTokenUpdates).
func (s *Sender) refresh(stale string) error {
	s.token.Lock()
	defer s.token.Unlock()
	if stale != "" && s.token.Bearer != stale {
		return nil
	}
	if _, err := s.token.Generate(); err != nil {
		return err
	}
	s.log.Info("apns: provider token refreshed after APNs refused it", "event", "apns.token_refresh", "key_id", s.token.KeyID)
	return nil
}

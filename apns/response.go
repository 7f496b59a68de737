package apns

import (
	"context"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sideshow/apns2"

	pb "github.com/pushblaster/pushblaster"
)

// outcome is what one request achieved and what may follow.
type outcome struct {
	// state and err are the push's result if nothing follows.
	state pb.DeliveryState
	err   *pb.Error
	// retry: a transient failure; the request may be repeated after
	// retryAfter, if APNs named a wait, or after the backoff.
	retry         bool
	retryAfter    time.Duration
	hasRetryAfter bool
	// refresh: APNs refused bearer, the provider token sent; a fresh one
	// may succeed.
	refresh bool
	bearer  string
}

// attempt makes one request for req.
func (s *Sender) attempt(ctx context.Context, req *request) outcome {
	x := &exchange{extra: req.extra}
	ctx = context.WithValue(ctx, exchangeKey{}, x)
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		// Called even when writing the headers failed: once the write was
		// tried, APNs may have the request.
		WroteHeaders: func() { x.written.Store(true) },
	})
	resp, err := s.client.PushWithContext(ctx, req.n)
	if err != nil {
		if x.status == 0 {
			return s.transportFailure(ctx, x, err)
		}
		// The status arrived but not a readable body: the status decides.
		resp = &apns2.Response{StatusCode: x.status}
	}
	return s.classify(resp, x)
}

// transportFailure classifies a request that got no answer.
func (s *Sender) transportFailure(ctx context.Context, x *exchange, err error) outcome {
	if ctxErr := ctx.Err(); ctxErr != nil {
		// The trace hook may run after RoundTrip gave up on ctx, so a
		// request that ctx interrupted is taken to have left.
		e := pb.ProviderError(pb.CodeNetwork, "apns: request interrupted (%v); it may have been delivered", ctxErr)
		e.Kind = pb.AsError(ctxErr).Kind
		return outcome{state: pb.DeliveryUnknown, err: e}
	}
	if x.written.Load() {
		// APNs may have delivered it: sending it again could show the
		// notification twice.
		e := pb.ProviderError(pb.CodeNetwork, "apns: connection failed after the request was sent; it may have been delivered: %v", err)
		return outcome{state: pb.DeliveryUnknown, err: e}
	}
	e := pb.ProviderError(pb.CodeNetwork, "apns: connection failed before the request was sent: %v", err)
	return outcome{state: pb.DeliveryFailed, err: e, retry: true}
}

// classify maps APNs' answer to a result, after Apple's "Handling
// notification responses from APNs" table.
func (s *Sender) classify(resp *apns2.Response, x *exchange) outcome {
	st, reason := resp.StatusCode, resp.Reason
	if st == http.StatusOK {
		return outcome{state: pb.DeliverySent}
	}
	fail := func(code string) *pb.Error {
		msg := "apns: " + strconv.Itoa(st)
		if reason != "" {
			msg += " " + reason
		}
		if h := hints[reason]; h != "" {
			msg += ": " + h
		}
		e := pb.ProviderError(code, "%s", msg).With("status", strconv.Itoa(st))
		if reason != "" {
			e.With("reason", reason)
		}
		if resp.ApnsID != "" {
			e.With("apns_id", resp.ApnsID)
		}
		return e
	}
	retryable := func(code string) outcome {
		o := outcome{state: pb.DeliveryFailed, err: fail(code), retry: true}
		o.retryAfter, o.hasRetryAfter = pb.RetryAfter(x.retryAfter, s.now())
		return o
	}

	switch {
	case st == http.StatusGone,
		st == http.StatusBadRequest && (reason == apns2.ReasonBadDeviceToken || reason == apns2.ReasonDeviceTokenNotForTopic):
		e := fail(pb.CodeUnregistered)
		if !resp.Timestamp.IsZero() {
			// Since when APNs knows the token is gone: an app may have
			// registered again after it.
			e.With("unregistered_at", resp.Timestamp.UTC().Format(time.RFC3339))
		}
		return outcome{state: pb.DeliveryInvalidToken, err: e}
	case st == http.StatusBadRequest && reason == apns2.ReasonIdleTimeout:
		// The connection was idle too long; the request was not taken.
		return retryable(pb.CodeUnavailable)
	case st == http.StatusBadRequest, st == http.StatusRequestEntityTooLarge:
		return outcome{state: pb.DeliveryFailed, err: fail(pb.CodeInvalidArgument)}
	case st == http.StatusForbidden:
		o := outcome{state: pb.DeliveryFailed, err: fail(pb.CodeUnauthenticated)}
		if reason == apns2.ReasonExpiredProviderToken || reason == apns2.ReasonInvalidProviderToken {
			o.refresh, o.bearer = true, x.bearer
		}
		return o
	case st == http.StatusTooManyRequests:
		return retryable(pb.CodeQuotaExceeded)
	case st == http.StatusInternalServerError:
		return retryable(pb.CodeInternal)
	case st >= 500:
		return retryable(pb.CodeUnavailable)
	}
	return outcome{state: pb.DeliveryFailed, err: fail(pb.CodeRejected)}
}

// hints say what to do about the reasons an operator can act on.
var hints = map[string]string{
	apns2.ReasonBadDeviceToken:              "the token is malformed, or belongs to the other environment (sandbox or production)",
	apns2.ReasonDeviceTokenNotForTopic:      "the token belongs to another app than apns.topic",
	apns2.ReasonUnregistered:                "the app is no longer registered for notifications on the device",
	apns2.ReasonExpiredToken:                "the device token has expired",
	apns2.ReasonBadTopic:                    "apns.topic is not a bundle id APNs accepts",
	apns2.ReasonTopicDisallowed:             "the key may not push to apns.topic",
	apns2.ReasonPayloadTooLarge:             "the payload is over 4096 bytes; shorten the message or its data",
	apns2.ReasonExpiredProviderToken:        "APNs found the provider token stale; check the system clock",
	apns2.ReasonInvalidProviderToken:        "check apns.key_id, apns.team_id and the key file",
	apns2.ReasonMissingProviderToken:        "no provider token was sent",
	apns2.ReasonTooManyRequests:             "too many notifications to this device in a row",
	apns2.ReasonInternalServerError:         "APNs failed internally",
	apns2.ReasonServiceUnavailable:          "APNs is unavailable",
	apns2.ReasonShutdown:                    "the APNs server is shutting down",
	apns2.ReasonTooManyProviderTokenUpdates: "the provider token was renewed too often",
}

// exchangeKey marks a request's context with its exchange.
type exchangeKey struct{}

// exchange is what recordingTransport saw of one request, beyond what
// apns2 reports. RoundTrip runs in the caller's goroutine, so only the
// trace hook, which runs in the transport's, needs an atomic.
type exchange struct {
	extra      http.Header
	written    atomic.Bool
	bearer     string // the provider token sent
	status     int
	retryAfter string
}

// recordingTransport adds the headers apns2 cannot set and records the
// request's bearer token and the response's status and Retry-After, which
// apns2's Response leaves out.
type recordingTransport struct {
	base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	x, _ := req.Context().Value(exchangeKey{}).(*exchange)
	if x == nil {
		return t.base.RoundTrip(req)
	}
	if len(x.extra) > 0 {
		req = req.Clone(req.Context()) // a RoundTripper must not change the caller's request
		for k, v := range x.extra {
			req.Header[k] = v
		}
	}
	x.bearer = strings.TrimPrefix(req.Header.Get("Authorization"), "bearer ")
	resp, err := t.base.RoundTrip(req)
	if resp != nil {
		x.status = resp.StatusCode
		x.retryAfter = resp.Header.Get("Retry-After")
	}
	return resp, err
}

// CloseIdleConnections lets apns2's Client.CloseIdleConnections reach the
// wrapped transport.
func (t *recordingTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

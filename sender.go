package pushblaster

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Push is one message to one device: the automation's message rendered
// with the recipient's data.
type Push struct {
	Recipient Recipient
	Message   Message
	// Key identifies this push across retries and resumed sends, and
	// differs between executions: "EXECUTION/AUDIENCE" (the recipient
	// adds user and token). Providers that support idempotency use it.
	Key string
}

// Sender delivers pushes for one provider. The engine writes the ledger
// around every call (claims the rows before, records the results after),
// so a Sender only delivers and reports what happened.
type Sender interface {
	// Send delivers every push of ps, as many at once as the provider
	// allows, and returns one result per push, in the order of ps. It
	// returns when every request it started has ended.
	//
	// Retries of transient provider errors happen inside Send; a result
	// is final. When ctx ends, Send starts no more requests: a push whose
	// request was in flight gets DeliveryUnknown, one never requested gets
	// State "" (the engine makes it claimable again).
	Send(ctx context.Context, ps []Push) []SendResult
}

// InFlightSender is a Sender that says how many pushes it delivers at once
// at most. The engine hands it only as many rounds as keep that many busy
// (plus one), so that no claimed push waits in a queue: after a crash
// every push in state sending had really been handed over.
type InFlightSender interface {
	Sender
	MaxInFlight() int
}

// SendResult is one push's outcome.
type SendResult struct {
	// State is DeliverySent, DeliveryFailed, DeliveryInvalidToken,
	// DeliveryUnknown, or "" when the push was never requested.
	State DeliveryState
	// Err explains any state but sent: its Kind classifies the failure and
	// its Context["code"] holds the provider code (CodeUnavailable, …).
	Err *Error
	// Attempts is how many requests were made for the push.
	Attempts int
}

// DeliveryState is the state of one ledger row.
type DeliveryState string

// Ledger states. A row is pending (to be sent), sending (claimed by an
// instance, request about to start or in flight), or final: sent, failed,
// invalid_token (the provider says the device is gone), capped (a frequency
// cap or the cadence service held it back) or unknown (in flight when its
// instance died: nobody knows whether it arrived; reported, not re-sent
// unless the automation's on_unknown is resend).
const (
	DeliveryPending      DeliveryState = "pending"
	DeliverySending      DeliveryState = "sending"
	DeliverySent         DeliveryState = "sent"
	DeliveryFailed       DeliveryState = "failed"
	DeliveryInvalidToken DeliveryState = "invalid_token"
	DeliveryCapped       DeliveryState = "capped"
	DeliveryUnknown      DeliveryState = "unknown"
)

// DeliveryStates lists every ledger state, in lifecycle order.
var DeliveryStates = []DeliveryState{DeliveryPending, DeliverySending, DeliverySent, DeliveryFailed,
	DeliveryInvalidToken, DeliveryCapped, DeliveryUnknown}

// Final reports whether a row in state s is settled.
func (s DeliveryState) Final() bool { return s != DeliveryPending && s != DeliverySending }

// Provider error codes, the same words for every provider. A SendResult's
// Err carries one in Context["code"]; the ledger keeps it per row.
const (
	// CodeUnavailable: the provider is overloaded or down (FCM UNAVAILABLE,
	// HTTP 503, APNs 503, a webhook 5xx). Retried with backoff.
	CodeUnavailable = "unavailable"
	// CodeInternal: the provider failed internally (FCM INTERNAL, 500).
	// Retried with backoff.
	CodeInternal = "internal"
	// CodeQuotaExceeded: the project's or device's quota is used up (429).
	// Retried after at least a minute; the whole send slows down.
	CodeQuotaExceeded = "quota_exceeded"
	// CodeUnregistered: the token is no longer valid. Never sent again.
	CodeUnregistered = "unregistered"
	// CodeInvalidArgument: the provider rejected the message or token as
	// malformed. Not retried.
	CodeInvalidArgument = "invalid_argument"
	// CodeSenderIDMismatch: the token belongs to another sender. Not
	// retried.
	CodeSenderIDMismatch = "sender_id_mismatch"
	// CodeThirdPartyAuth: the APNs certificate or web push key configured
	// in the provider is invalid. Not retried.
	CodeThirdPartyAuth = "third_party_auth_error"
	// CodeUnauthenticated: our credentials were refused even after one
	// refresh. Not retried.
	CodeUnauthenticated = "unauthenticated"
	// CodeNetwork: no answer (connection refused, reset, timeout). Retried;
	// a request that may have reached the provider is reported unknown if
	// retries run out.
	CodeNetwork = "network"
	// CodeTemplate: the message could not be rendered for the recipient.
	CodeTemplate = "template"
	// CodeRejected: any other refusal (an unexpected status or body).
	CodeRejected = "rejected"
)

// ProviderError returns the error of a failed push: kind and recoverability
// follow from code, the code goes into the context.
func ProviderError(code, format string, args ...any) *Error {
	kind := KindExternal
	switch code {
	case CodeInvalidArgument, CodeTemplate:
		kind = KindValidation
	}
	e := Errorf(kind, format, args...).With("code", code)
	switch code {
	case CodeUnavailable, CodeInternal, CodeQuotaExceeded, CodeNetwork:
		e.Recoverable = true
	default:
		e.Recoverable = false
	}
	return e
}

// ErrorCode returns the provider code of err, or "" if it has none.
func ErrorCode(err error) string {
	if pe, ok := err.(*Error); err == nil || (ok && pe == nil) {
		return ""
	}
	return AsError(err).Context["code"]
}

// Backoff is an exponential backoff with full jitter, the schedule Google
// recommends for FCM: base, 2·base, 4·base, … capped at max, each wait a
// random fraction of that so that many senders do not retry in step.
type Backoff struct {
	Base, Max time.Duration
}

// Delay returns the wait before retry n (1 for the first retry), given a
// random number r in [0, 1).
func (b Backoff) Delay(n int, r float64) time.Duration {
	d := b.Base
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	// Half fixed, half random: never retry at once, never in step.
	return d/2 + time.Duration(r*float64(d/2))
}

// RetryAfter parses an HTTP Retry-After header in either of its forms, a
// number of seconds or an HTTP date, into a wait from now. ok is false for
// an absent or malformed header; a date in the past is a wait of 0.
func RetryAfter(header string, now time.Time) (wait time.Duration, ok bool) {
	header = strings.TrimSpace(header)
	if header == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(header, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(min(secs, int64(24*time.Hour/time.Second))) * time.Second, true
	}
	at, err := http.ParseTime(header)
	if err != nil {
		return 0, false
	}
	return max(at.Sub(now), 0), true
}

// DeliveryRecord is one row of an execution's delivery ledger: one push to
// one device.
type DeliveryRecord struct {
	// Audience is live or test.
	Audience string        `json:"audience"`
	UserID   string        `json:"user_id"`
	Token    string        `json:"token"`
	State    DeliveryState `json:"state"`
	// Code is the provider code of a failure (CodeUnavailable, …), or
	// frequency_cap / cadence for a capped row.
	Code   string `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Attempts is how many provider requests were made for the push.
	Attempts  int       `json:"attempts"`
	Instance  string    `json:"instance,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// DeliveryFilter selects ledger rows of one execution, in (audience,
// user_id, token) order.
type DeliveryFilter struct {
	Audience string        // "" for both
	State    DeliveryState // "" for every state
	// AfterAudience, AfterUser and AfterToken page: rows after this key.
	AfterAudience, AfterUser, AfterToken string
	Limit                                int // 0: no limit
}

// InvalidToken is a device token a provider called invalid (unregistered):
// it is never sent to again until deleted.
type InvalidToken struct {
	Token       string    `json:"token"`
	Provider    string    `json:"provider"`
	UserID      string    `json:"user_id"`
	Code        string    `json:"code,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	ExecutionID int64     `json:"execution_id,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
}

// InvalidTokenFilter selects invalid tokens, newest first.
type InvalidTokenFilter struct {
	UserID   string
	Provider string
	// BeforeAt and BeforeToken page: tokens recorded before this one.
	BeforeAt    time.Time
	BeforeToken string
	Limit       int // default 100
}

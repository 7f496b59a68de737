package fcmtest

import (
	"context"
	"time"
)

// FCM error codes (the errorCode of the FcmError detail), usable as
// Response.Code and in SetFailRate. Unauthenticated is not an FcmError
// code: it is the 401 Google answers when the OAuth2 access token itself is
// refused, without an FcmError detail.
const (
	InvalidArgument     = "INVALID_ARGUMENT"
	Unregistered        = "UNREGISTERED"
	SenderIDMismatch    = "SENDER_ID_MISMATCH"
	QuotaExceeded       = "QUOTA_EXCEEDED"
	Unavailable         = "UNAVAILABLE"
	Internal            = "INTERNAL"
	ThirdPartyAuthError = "THIRD_PARTY_AUTH_ERROR"
	Unauthenticated     = "UNAUTHENTICATED"
)

// InvalidTokenMessage is FCM's message for a malformed registration token
// (a 400 INVALID_ARGUMENT). Script it with
// Response{Code: InvalidArgument, Message: InvalidTokenMessage}.
const InvalidTokenMessage = "The registration token is not a valid FCM registration token"

// Response is one scripted answer to a send request for a token.
//
// The zero Response is a success. Code answers with that FCM error in
// Google's shape; Status (with Body) answers with anything at all, such
// as a proxy's 502 HTML page. Delay waits before answering (ended early if
// the client gives up). Drop reads the request and closes the connection
// without answering; with Accept the message is accepted (counted) first,
// as when FCM delivered but its answer was lost.
type Response struct {
	Code string
	// Message replaces the code's usual message.
	Message string
	// RetryAfter is a Retry-After header value in either form: seconds
	// ("30") or an HTTP date.
	RetryAfter string
	// Status and Body answer with a raw response instead of Code.
	Status int
	Body   string
	Delay  time.Duration
	Drop   bool
	Accept bool
}

// Drop closes the connection after reading the request, without
// accepting the message.
var Drop = Response{Drop: true}

// DropAfterAccept accepts the message and then closes the connection
// without answering.
var DropAfterAccept = Response{Drop: true, Accept: true}

// Error is a scripted FCM error with the code's usual message.
func Error(code string) Response { return Response{Code: code} }

// Script queues responses for requests to token, consumed in order by
// the token's next requests; once they are used up the token is served
// normally again.
func (s *Server) Script(token string, responses ...Response) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[token] = append(s.scripts[token], responses...)
}

// Unregister makes every later send to the tokens fail with UNREGISTERED
// (404), as for an app that was uninstalled.
func (s *Server) Unregister(tokens ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range tokens {
		s.unregistered[t] = true
	}
}

// SetFailRate makes a fraction p (0..1) of the send requests not answered
// by a script fail with code (default UNAVAILABLE).
func (s *Server) SetFailRate(p float64, code string) {
	if code == "" {
		code = Unavailable
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failRate, s.failCode = min(max(p, 0), 1), code
}

// SetLatency adds d before every send request is answered.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = max(d, 0)
}

// SetQuota allows n send requests per window of length per for the
// project; more are answered 429 RESOURCE_EXHAUSTED (QUOTA_EXCEEDED) with
// a Retry-After of the seconds left in the window. A window starts with
// the first request after the previous one ended, as FCM's per-minute
// quotas are not aligned to the clock. n <= 0 removes the quota.
func (s *Server) SetQuota(n int, per time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quotaN, s.quotaPer, s.quotaUsed, s.quotaStart = n, per, 0, time.Time{}
}

// RevokeTokens invalidates every access token issued so far: the next
// sends with them get 401 UNAUTHENTICATED.
func (s *Server) RevokeTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// Count is how many messages to token were accepted. Messages to a topic
// count under "/topics/NAME", to a condition under the condition.
func (s *Server) Count(token string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[token]
}

// Total is how many messages were accepted in all.
func (s *Server) Total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// Requests is how many send requests arrived, whatever the answer.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// PeakInFlight is the most send requests that were being handled at
// once, to check a client's concurrency limit.
func (s *Server) PeakInFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakInFlight
}

// TokenRequests is how many requests the token endpoint got.
func (s *Server) TokenRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenRequests
}

// Received returns the accepted messages to token, oldest first (up to
// Options.ReceivedLimit messages are kept in all).
func (s *Server) Received(token string) []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.received[token]...)
}

// Reset zeroes the counters and forgets the received messages. Scripts,
// unregistered tokens, issued tokens and settings stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resetCounters()
}

func (s *Server) resetCounters() {
	s.counts = map[string]int{}
	s.received = map[string][]Message{}
	s.receivedN, s.total, s.requests, s.tokenRequests, s.peakInFlight = 0, 0, 0, 0, s.inFlight
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
}

// WaitRequests blocks until at least n send requests have arrived (see
// Requests) or ctx ends, so that a test can act on a request in flight
// without sleeping.
func (s *Server) WaitRequests(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		got, changed := s.requests, s.changed
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// notifyLocked wakes WaitRequests callers; s.mu must be held.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

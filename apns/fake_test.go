package apns_test

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/golang-jwt/jwt/v4"
)

// fakeAPNs emulates APNs' /3/device/{token} endpoint over HTTP/2 and TLS.
// It checks what Apple checks (ES256 provider token with kid and iss,
// apns-topic, POST) and answers with Apple's statuses and JSON bodies.
type fakeAPNs struct {
	t      testing.TB
	srv    *httptest.Server
	pub    *ecdsa.PublicKey
	keyID  string
	teamID string
	topic  string
	// done is closed when the test ends, releasing every held handler.
	done chan struct{}

	mu sync.Mutex
	// hold, if set, runs before the answer is chosen and may block; it
	// must return when ctx (the request's) ends.
	hold func(ctx context.Context, rq received)
	// after, if set, runs once the answer has been written and flushed.
	after func(rq received)
	// replies answer a device token in turn; the last one repeats. A
	// token without replies gets 200.
	replies map[string][]reply
	// expireFirstBearer makes APNs refuse the first provider token it
	// sees as ExpiredProviderToken, as it does with a token over an hour
	// old.
	expireFirstBearer bool
	received          []received
	bearers           []string // distinct provider tokens, in order of first use
	inFlight, maxIn   int
}

// reply is one APNs answer.
type reply struct {
	status     int
	reason     string
	retryAfter string
	timestamp  int64 // ms since the epoch, sent with 410
	// abort resets the stream instead of answering: the request arrived,
	// the client never learns what became of it.
	abort bool
}

// received is one request as APNs saw it.
type received struct {
	Token   string
	Header  http.Header
	Payload map[string]any
	Raw     []byte // the payload as sent
	Bearer  string
}

func newFakeAPNs(t testing.TB, pub *ecdsa.PublicKey, keyID, teamID, topic string) *fakeAPNs {
	t.Helper()
	f := &fakeAPNs{t: t, pub: pub, keyID: keyID, teamID: teamID, topic: topic,
		done: make(chan struct{}), replies: map[string][]reply{}}
	f.srv = httptest.NewUnstartedServer(f)
	f.srv.EnableHTTP2 = true
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	t.Cleanup(func() { close(f.done) }) // runs first: held handlers return, then Close can finish
	return f
}

// reply scripts the answers to token.
func (f *fakeAPNs) reply(token string, rs ...reply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replies[token] = rs
}

// setHold sets the hold hook.
func (f *fakeAPNs) setHold(h func(ctx context.Context, rq received)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hold = h
}

// setAfter sets the after hook.
func (f *fakeAPNs) setAfter(a func(rq received)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.after = a
}

// expireFirst makes APNs refuse the first provider token it sees.
func (f *fakeAPNs) expireFirst() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expireFirstBearer = true
}

// requests returns every request received so far.
func (f *fakeAPNs) requests() []received {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]received(nil), f.received...)
}

// distinctBearers returns the provider tokens used so far.
func (f *fakeAPNs) distinctBearers() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.bearers...)
}

// maxInFlight returns the most requests APNs was handling at once.
func (f *fakeAPNs) maxInFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxIn
}

func (f *fakeAPNs) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 2 {
		f.t.Errorf("request over %s; APNs only speaks HTTP/2", r.Proto)
	}
	if r.Method != http.MethodPost {
		writeReply(w, reply{status: http.StatusMethodNotAllowed, reason: "MethodNotAllowed"})
		return
	}
	token, ok := strings.CutPrefix(r.URL.Path, "/3/device/")
	if !ok {
		writeReply(w, reply{status: http.StatusNotFound, reason: "BadPath"})
		return
	}
	if token == "" {
		writeReply(w, reply{status: http.StatusBadRequest, reason: "MissingDeviceToken"})
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return // the client went away
	}
	if len(body) == 0 {
		writeReply(w, reply{status: http.StatusBadRequest, reason: "PayloadEmpty"})
		return
	}
	var payload map[string]any
	if err := json.Unmarshal(body, &payload); err != nil {
		f.t.Errorf("payload is not a JSON object: %v: %s", err, body)
		writeReply(w, reply{status: http.StatusBadRequest, reason: "BadPayload"})
		return
	}
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "bearer ")
	if !ok || bearer == "" {
		writeReply(w, reply{status: http.StatusForbidden, reason: "MissingProviderToken"})
		return
	}
	if err := f.verify(bearer); err != nil {
		f.t.Errorf("provider token refused: %v", err)
		writeReply(w, reply{status: http.StatusForbidden, reason: "InvalidProviderToken"})
		return
	}
	switch topic := r.Header.Get("apns-topic"); topic {
	case "":
		writeReply(w, reply{status: http.StatusBadRequest, reason: "MissingTopic"})
		return
	case f.topic:
	default:
		writeReply(w, reply{status: http.StatusBadRequest, reason: "BadTopic"})
		return
	}

	rq := received{Token: token, Header: r.Header.Clone(), Payload: payload, Raw: body, Bearer: bearer}
	f.mu.Lock()
	f.received = append(f.received, rq)
	if !slices.Contains(f.bearers, bearer) {
		f.bearers = append(f.bearers, bearer)
	}
	f.inFlight++
	f.maxIn = max(f.maxIn, f.inFlight)
	hold, after := f.hold, f.after
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
	}()

	if hold != nil {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		go func() {
			select {
			case <-f.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		hold(ctx, rq)
	}

	f.mu.Lock()
	var rep reply
	if f.expireFirstBearer && bearer == f.bearers[0] {
		rep = reply{status: http.StatusForbidden, reason: "ExpiredProviderToken"}
	} else if rs := f.replies[token]; len(rs) > 0 {
		rep = rs[0]
		if len(rs) > 1 {
			f.replies[token] = rs[1:]
		}
	} else {
		rep = reply{status: http.StatusOK}
	}
	f.mu.Unlock()

	if rep.abort {
		panic(http.ErrAbortHandler) // the server resets the stream
	}
	writeReply(w, rep)
	w.(http.Flusher).Flush()
	if after != nil {
		after(rq)
	}
}

// verify checks the provider token as APNs does: ES256, signed by the
// team's key, naming the key (kid) and the team (iss).
func (f *fakeAPNs) verify(bearer string) error {
	tok, err := jwt.Parse(bearer, func(tok *jwt.Token) (any, error) {
		if kid, _ := tok.Header["kid"].(string); kid != f.keyID {
			return nil, fmt.Errorf("kid is %q, want %q", kid, f.keyID)
		}
		return f.pub, nil
	}, jwt.WithValidMethods([]string{"ES256"}))
	if err != nil {
		return err
	}
	claims := tok.Claims.(jwt.MapClaims)
	if iss, _ := claims["iss"].(string); iss != f.teamID {
		return fmt.Errorf("iss is %q, want team id %q", iss, f.teamID)
	}
	if _, ok := claims["iat"].(float64); !ok {
		return fmt.Errorf("no iat claim")
	}
	return nil
}

func writeReply(w http.ResponseWriter, rep reply) {
	w.Header().Set("apns-id", "8C1B5D56-6A46-4D57-9B46-2E0A1F0C0001")
	if rep.retryAfter != "" {
		w.Header().Set("Retry-After", rep.retryAfter)
	}
	if rep.status == http.StatusOK {
		w.WriteHeader(http.StatusOK)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	body := map[string]any{"reason": rep.reason}
	if rep.status == http.StatusGone && rep.timestamp != 0 {
		body["timestamp"] = rep.timestamp
	}
	_ = json.NewEncoder(w).Encode(body)
}

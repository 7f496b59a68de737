// Package cadencetest is a fake cadence service for tests: it answers the
// HTTP contract of package cadence by a rule, and can be made slow, failing
// or malformed.
package cadencetest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/pushblaster/pushblaster/cadence"
)

// Server is a fake cadence service on a local httptest server. Its setters
// may be called while requests are in flight.
type Server struct {
	// URL is the endpoint to put in cadence.Config.URL.
	URL string

	srv  *httptest.Server
	done chan struct{} // closed by Close, so that delayed answers end

	mu         sync.Mutex
	rule       func(userID string) (allowed bool, reason string)
	delay      time.Duration
	failStatus int
	failBody   string
	malformed  bool
	requests   []cadence.Request
	closeOnce  sync.Once
}

// NewServer starts a fake service that allows everyone.
func NewServer() *Server {
	s := &Server{done: make(chan struct{})}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	return s
}

// SetRule decides every user id from now on; nil allows everyone. A
// non-empty reason is answered in "reasons", whether or not the id is
// allowed.
func (s *Server) SetRule(rule func(userID string) (allowed bool, reason string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rule = rule
}

// SetDelay makes every answer wait d. The wait ends early when the client
// gives up (its request's context ends) or the server closes, so a client
// timeout shorter than d ends the request at once.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// SetFailure makes every answer status with body; a status of 0 answers
// normally again.
func (s *Server) SetFailure(status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failStatus, s.failBody = status, body
}

// SetMalformed makes every answer a 200 whose body is truncated JSON.
func (s *Server) SetMalformed(malformed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.malformed = malformed
}

// Requests returns the requests received so far, in arrival order, including
// those answered with a failure.
func (s *Server) Requests() []cadence.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]cadence.Request(nil), s.requests...)
}

// Close ends delayed answers and shuts the server down; a client then gets
// connection errors, like from a service that is down. It may be called
// more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.srv.Close()
	})
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	var req cadence.Request
	dec := json.NewDecoder(r.Body)
	// Strict, so that a client that drifts from the contract fails tests.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	// Drained, because only a server that has read the whole body notices
	// that the client hung up, which ends a delay early.
	_, _ = io.Copy(io.Discard, r.Body)
	s.mu.Lock()
	s.requests = append(s.requests, req)
	rule, delay, status, body, malformed := s.rule, s.delay, s.failStatus, s.failBody, s.malformed
	s.mu.Unlock()

	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		}
	}
	if status != 0 {
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if malformed {
		_, _ = w.Write([]byte(`{"allowed": ["`))
		return
	}
	ans := struct {
		Allowed []string          `json:"allowed"`
		Reasons map[string]string `json:"reasons,omitempty"`
	}{Allowed: []string{}}
	for _, id := range req.UserIDs {
		ok, why := true, ""
		if rule != nil {
			ok, why = rule(id)
		}
		if ok {
			ans.Allowed = append(ans.Allowed, id)
		}
		if why != "" {
			if ans.Reasons == nil {
				ans.Reasons = map[string]string{}
			}
			ans.Reasons[id] = why
		}
	}
	_ = json.NewEncoder(w).Encode(ans)
}

// Package httpapi serves pushblaster's REST API: automations, executions,
// events, schedule previews, health and readiness. Routes are in routes.go;
// errors are encoded in one place (writeError).
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// Options configures the server.
type Options struct {
	// Tokens are the accepted bearer tokens for mutating routes. Empty
	// means no authentication (loopback only; serve enforces that).
	Tokens []string
	Logger *slog.Logger
	Clock  pb.Clock
	// Ready reports whether the database is reachable and migrated.
	Ready func(ctx context.Context) error
	// Metrics serves GET /metrics, the Prometheus scrape (nil: the route
	// answers 404).
	Metrics http.Handler
	// MaxBodyBytes bounds request bodies (default 16 MiB: static audiences
	// can be long).
	MaxBodyBytes int64

	// Live event streams (sse.go).
	// Events feeds them (default: svc, if it implements EventSource, as
	// the engine does).
	Events EventSource
	// MaxSubscribers caps the streams served at once (default 1000); one
	// more is answered 503.
	MaxSubscribers int
	// HeartbeatInterval is how often a stream gets a comment line, so that
	// proxies keep an idle one open (default 15s).
	HeartbeatInterval time.Duration
	// StreamBuffer is how many events a stream may fall behind before it
	// is cut off with a reconnect event (default 1024).
	StreamBuffer int
}

type server struct {
	svc     pb.Service
	opts    Options
	log     *slog.Logger
	streams atomic.Int64  // open live event streams (sse.go)
	encoded encodedEvents // events encoded once for every stream (sse.go)
}

// NewServer returns the API handler.
func NewServer(svc pb.Service, opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Clock == nil {
		opts.Clock = pb.SystemClock
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 16 << 20
	}
	s := &server{svc: svc, opts: opts, log: opts.Logger}
	mux := http.NewServeMux()
	s.routes(mux)
	return s.logRequests(mux)
}

// statusOf maps error kinds to HTTP statuses; the only place that does.
func statusOf(kind pb.Kind) int {
	switch kind {
	case pb.KindValidation:
		return http.StatusBadRequest
	case pb.KindNotFound:
		return http.StatusNotFound
	case pb.KindConflict:
		return http.StatusConflict
	case pb.KindUnauthorized:
		return http.StatusUnauthorized
	case pb.KindDatabase:
		return http.StatusServiceUnavailable
	case pb.KindTimeout:
		return http.StatusGatewayTimeout
	case pb.KindExternal:
		return http.StatusBadGateway
	}
	return http.StatusInternalServerError
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error *pb.Error `json:"error"`
}

func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		s.writeErrorStatus(w, r, http.StatusRequestEntityTooLarge,
			pb.Errorf(pb.KindValidation, "request body is larger than %d bytes", mbe.Limit))
		return
	}
	pe := pb.AsError(err)
	s.writeErrorStatus(w, r, statusOf(pe.Kind), pe)
}

// writeErrorStatus writes err with an explicit status.
func (s *server) writeErrorStatus(w http.ResponseWriter, r *http.Request, status int, err error) {
	pe := pb.AsError(err)
	if status >= 500 {
		s.log.Error("request failed", "event", "http.error", "method", r.Method, "path", r.URL.Path, "kind", pe.Kind, "error", pe.Message)
	}
	if pe.Kind == pb.KindUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pushblaster"`)
	}
	writeJSON(w, status, ErrorBody{Error: pe})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client may have gone; nothing to do about it
}

// readJSON decodes a body into v, rejecting unknown fields.
func (s *server) readJSON(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) error {
	r.Body = http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		if allowEmpty && errors.Is(err, io.EOF) {
			return nil
		}
		return pb.JSONError(err)
	}
	if dec.More() {
		return pb.Errorf(pb.KindValidation, "the body holds more than one JSON value; send exactly one object")
	}
	return nil
}

// authorize enforces bearer tokens on mutating routes.
func (s *server) authorize(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(s.opts.Tokens) == 0 {
			next(w, r)
			return
		}
		// The scheme is case-insensitive (RFC 9110 §11.1).
		scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		got = strings.TrimSpace(got)
		if !ok || !strings.EqualFold(scheme, "Bearer") || got == "" {
			s.writeError(w, r, pb.Errorf(pb.KindUnauthorized, "this route changes state and needs a bearer token: send \"Authorization: Bearer <token>\" (one of PUSHBLASTER_API_TOKENS)"))
			return
		}
		for _, t := range s.opts.Tokens {
			if subtle.ConstantTimeCompare([]byte(got), []byte(t)) == 1 {
				next(w, r)
				return
			}
		}
		s.writeError(w, r, pb.Errorf(pb.KindUnauthorized, "the bearer token is not one of the configured API tokens"))
	}
}

// pathID reads the {id} path value.
func pathID(r *http.Request) (int64, error) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		return 0, &pb.Error{Kind: pb.KindValidation, Message: "invalid id",
			Fields: []pb.FieldError{{Field: "id", Message: fmt.Sprintf("%q is not an id; ids are positive integers", raw)}}}
	}
	return id, nil
}

// queryInt reads an optional integer query parameter.
func queryInt(r *http.Request, name string, def, lo, hi int64) (int64, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return def, nil
	}
	v, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || v < lo || v > hi {
		return 0, &pb.Error{Kind: pb.KindValidation, Message: "invalid " + name,
			Fields: []pb.FieldError{{Field: name, Message: fmt.Sprintf("%q must be an integer from %d to %d", raw, lo, hi)}}}
	}
	return v, nil
}

// queryBool reads an optional boolean query parameter.
func queryBool(r *http.Request, name string) (bool, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return false, nil
	}
	v, err := strconv.ParseBool(raw)
	if err != nil {
		return false, &pb.Error{Kind: pb.KindValidation, Message: "invalid " + name,
			Fields: []pb.FieldError{{Field: name, Message: fmt.Sprintf("%q must be true or false", raw)}}}
	}
	return v, nil
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		level := slog.LevelDebug
		if r.Method != http.MethodGet {
			level = slog.LevelInfo
		}
		s.log.Log(r.Context(), level, "request", "event", "http.request", "method", r.Method, "path", r.URL.Path,
			"status", rec.status, "duration_ms", time.Since(start).Milliseconds())
	})
}

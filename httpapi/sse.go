package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// Live event streams: the three event routes answer a client that accepts
// text/event-stream with server-sent events instead of the JSON listing.
//
// A stream starts where the client says (Last-Event-ID header, else the
// last_event_id or after_id query parameter): the stored events after that
// id up to the feed's watermark are replayed from the store, then the live
// ones follow. The feed publishes strictly in id order above its
// watermark, so the two meet with no gap and no duplicate. Without a
// starting id the stream carries only what happens from now on.

// EventSource feeds live event streams. *engine.Engine and
// *engine.EventHub implement it.
type EventSource interface {
	// Subscribe registers a subscriber for the events f selects until ctx
	// ends, and returns the watermark: every selected event with a larger
	// id comes on the channel, in id order; those up to it are read from
	// the store. The channel holds about buffer events. When the source
	// ends a subscription (the subscriber is too slow, the instance
	// stops) the last event on the channel has ID 0 and says why in its
	// message; the channel is closed in every case.
	Subscribe(ctx context.Context, f pb.EventFilter, buffer int) (events <-chan *pb.Event, watermark int64, err error)
}

// SSE event names beyond the stored event types.
const (
	// SSEReconnect is the last event of a stream the server ends (the
	// client is too slow, the instance stops): its data says why and the
	// last event id to resume from.
	SSEReconnect = "reconnect"
	// SSEHeartbeat is the comment line sent on idle streams.
	SSEHeartbeat = ": heartbeat\n\n"
)

// Stream defaults (see Options).
const (
	defaultMaxSubscribers = 1000
	defaultHeartbeat      = 15 * time.Second
	defaultStreamBuffer   = 1024 // at least what the feed publishes at once
	// streamWriteTimeout cuts a stream whose client stopped reading (a
	// dead peer would otherwise hold the handler until TCP gives up).
	streamWriteTimeout = 30 * time.Second
	// streamRetryMillis is the reconnection delay suggested to
	// EventSource clients.
	streamRetryMillis = 2000
	replayPage        = 1000
)

// ReconnectData is the data of an SSEReconnect event.
type ReconnectData struct {
	Message string `json:"message"`
	// LastEventID is the id to send as Last-Event-ID when reconnecting.
	LastEventID int64 `json:"last_event_id"`
}

// Unwrap lets http.ResponseController reach the connection under the
// request logger (write deadlines, flushes).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// handleEvents serves an event route: a live stream to a client that
// accepts text/event-stream, the JSON listing otherwise.
func (s *server) handleEvents(scope string) http.HandlerFunc {
	list := s.handleListEvents(scope)
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Vary", "Accept")
		if acceptsEventStream(r) {
			s.streamEvents(w, r, scope)
			return
		}
		list(w, r)
	}
}

// acceptsEventStream reports whether the Accept header names
// text/event-stream (with a non-zero quality).
func acceptsEventStream(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || mt != "text/event-stream" {
				continue
			}
			if q, err := strconv.ParseFloat(params["q"], 64); err == nil && q == 0 {
				continue
			}
			return true
		}
	}
	return false
}

func (s *server) eventSource() EventSource {
	if s.opts.Events != nil {
		return s.opts.Events
	}
	src, _ := s.svc.(EventSource)
	return src
}

// eventScope returns the filter of an event route, checking that its
// execution or automation exists (as the JSON listing does).
func (s *server) eventScope(r *http.Request, scope string) (pb.EventFilter, error) {
	var f pb.EventFilter
	if scope == "" {
		return f, nil
	}
	id, err := pathID(r)
	if err != nil {
		return f, err
	}
	if scope == "execution" {
		if _, err := s.svc.GetExecution(r.Context(), id); err != nil {
			return f, err
		}
		f.ExecutionID = &id
		return f, nil
	}
	// A deleted automation's history stays readable; one that never
	// existed is a 404.
	if _, err := s.svc.ListExecutions(r.Context(), pb.ExecutionFilter{AutomationID: &id, Limit: 1}); err != nil {
		return f, err
	}
	f.AutomationID = &id
	return f, nil
}

// streamStart reads where a stream starts: the Last-Event-ID header (an
// EventSource reconnecting), else last_event_id, else after_id. ok is
// false when none is given (live events only).
func streamStart(r *http.Request) (from int64, ok bool, err error) {
	name, raw := "Last-Event-ID", strings.TrimSpace(r.Header.Get("Last-Event-ID"))
	if raw == "" {
		for _, q := range []string{"last_event_id", "after_id"} {
			if raw = r.URL.Query().Get(q); raw != "" {
				name = q
				break
			}
		}
	}
	if raw == "" {
		return 0, false, nil
	}
	from, err = strconv.ParseInt(raw, 10, 64)
	if err != nil || from < 0 {
		return 0, false, &pb.Error{Kind: pb.KindValidation, Message: "invalid " + name,
			Fields: []pb.FieldError{{Field: name, Message: fmt.Sprintf("%q is not an event id; event ids are integers from 0", raw)}}}
	}
	return from, true, nil
}

// streamEvents serves one live event stream until the client goes, the
// client falls too far behind, or the instance stops.
func (s *server) streamEvents(w http.ResponseWriter, r *http.Request, scope string) {
	src := s.eventSource()
	if src == nil {
		s.writeErrorStatus(w, r, http.StatusServiceUnavailable, pb.Errorf(pb.KindInternal,
			"this server has no live event feed; list the events as JSON (without Accept: text/event-stream) and poll with after_id"))
		return
	}
	f, err := s.eventScope(r, scope)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	from, hasFrom, err := streamStart(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	limit := int64(s.opts.MaxSubscribers)
	if limit <= 0 {
		limit = defaultMaxSubscribers
	}
	if n := s.streams.Add(1); n > limit {
		s.streams.Add(-1)
		w.Header().Set("Retry-After", "5")
		s.writeErrorStatus(w, r, http.StatusServiceUnavailable, pb.Errorf(pb.KindConflict,
			"this instance already serves %d live event streams, its limit (--max-subscribers); retry in a few seconds, connect to another instance, close streams you do not watch, or raise --max-subscribers",
			limit).WithRecoverable(true).With("max_subscribers", strconv.FormatInt(limit, 10)))
		return
	}
	defer s.streams.Add(-1)

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel() // ends the subscription whatever makes the stream end
	buffer := s.opts.StreamBuffer
	if buffer <= 0 {
		buffer = defaultStreamBuffer
	}
	events, watermark, err := src.Subscribe(ctx, f, buffer)
	if err != nil {
		w.Header().Set("Retry-After", "5")
		s.writeErrorStatus(w, r, http.StatusServiceUnavailable, err)
		return
	}

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	sw := &sseWriter{w: w, rc: http.NewResponseController(w), enc: &s.encoded}
	// The connection may serve other requests after this one.
	defer func() { _ = sw.rc.SetWriteDeadline(time.Time{}) }()
	sw.begin()
	sw.printf("retry: %d\n\n", streamRetryMillis)
	if err := sw.flush(); err != nil {
		return
	}

	// pos is the id the client is at: everything it should have up to
	// pos, it has.
	pos := watermark
	if hasFrom {
		pos = max(from, watermark)
		for after := from; after < watermark; {
			page, err := s.svc.ListEvents(ctx, pb.EventFilter{ExecutionID: f.ExecutionID, AutomationID: f.AutomationID, AfterID: after, Limit: replayPage})
			if err != nil {
				if ctx.Err() == nil {
					sw.reconnect(fmt.Sprintf("cannot read the stored events to replay (%s); reconnect with Last-Event-ID", pb.AsError(err).Message), max(from, sw.last))
				}
				return
			}
			done := len(page) < replayPage
			sw.begin()
			for _, ev := range page {
				if ev.ID > watermark {
					done = true // the rest comes live
					break
				}
				sw.event(ev)
				after = ev.ID
			}
			if err := sw.flush(); err != nil || done {
				break
			}
		}
		if sw.err != nil {
			return
		}
	}
	if pos > sw.last && (!hasFrom || pos > from) {
		// No data: sets the client's last event id to where the stream
		// is, so that a reconnect resumes here.
		sw.begin()
		sw.printf("id: %d\n\n", pos)
		if err := sw.flush(); err != nil {
			return
		}
	}

	interval := s.opts.HeartbeatInterval
	if interval <= 0 {
		interval = defaultHeartbeat
	}
	hb := time.NewTicker(interval)
	defer hb.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hb.C:
			sw.begin()
			sw.printf("%s", SSEHeartbeat)
			if err := sw.flush(); err != nil {
				return
			}
		case ev, ok := <-events:
			sw.begin()
			for {
				if !ok {
					sw.reconnect("the live event feed ended this stream; reconnect with Last-Event-ID", pos)
					return
				}
				if ev.ID == 0 {
					sw.reconnect(ev.Message, pos)
					return
				}
				if ev.ID > pos {
					sw.event(ev)
					pos = ev.ID
				}
				// Write what is queued in one go, then flush once.
				select {
				case ev, ok = <-events:
					continue
				default:
				}
				break
			}
			if err := sw.flush(); err != nil {
				return
			}
			hb.Reset(interval)
		}
	}
}

// sseWriter writes server-sent events. Errors stick: after one, writes
// do nothing and flush reports it.
type sseWriter struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	enc  *encodedEvents
	err  error
	last int64 // id of the last event written
}

// encodedEvents keeps the SSE form of the latest events: every stream of
// an event gets the same bytes, encoded once.
type encodedEvents struct {
	mu sync.Mutex
	m  map[int64][]byte
	// ring holds the ids in m, oldest first, to bound it.
	ring []int64
}

const encodedKeep = 4096

// get returns ev's "id/event/data" block.
func (c *encodedEvents) get(ev *pb.Event) []byte {
	c.mu.Lock()
	b, ok := c.m[ev.ID]
	c.mu.Unlock()
	if ok {
		return b
	}
	data, err := json.Marshal(ev)
	if err != nil {
		data = []byte(`{"error":"event not encodable"}`)
	}
	b = fmt.Appendf(nil, "id: %d\nevent: %s\ndata: %s\n\n", ev.ID, ev.Type, data)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[int64][]byte{}
	}
	if _, ok := c.m[ev.ID]; !ok {
		c.m[ev.ID] = b
		c.ring = append(c.ring, ev.ID)
		if len(c.ring) > encodedKeep {
			delete(c.m, c.ring[0])
			c.ring = c.ring[1:]
		}
	}
	return b
}

// begin sets the write deadline for the writes that follow.
func (sw *sseWriter) begin() {
	if err := sw.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) && sw.err == nil {
		sw.err = err
	}
}

func (sw *sseWriter) printf(format string, args ...any) {
	if sw.err == nil {
		_, sw.err = fmt.Fprintf(sw.w, format, args...)
	}
}

// event writes a stored event: id, type, and the event as JSON (one line:
// JSON escapes newlines).
func (sw *sseWriter) event(ev *pb.Event) {
	if sw.err == nil {
		_, sw.err = sw.w.Write(sw.enc.get(ev))
	}
	sw.last = ev.ID
}

// reconnect writes the last event of a stream the server ends.
func (sw *sseWriter) reconnect(why string, last int64) {
	data, _ := json.Marshal(ReconnectData{Message: why, LastEventID: last})
	sw.begin()
	sw.printf("event: %s\ndata: %s\n\n", SSEReconnect, data)
	_ = sw.flush()
}

func (sw *sseWriter) flush() error {
	if sw.err == nil {
		sw.err = sw.rc.Flush()
	}
	return sw.err
}

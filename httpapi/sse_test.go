package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/httpapi"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/postgres"
	"github.com/pushblaster/pushblaster/store"
)

// pipeNet connects a test's HTTP client to its server in memory: no
// sockets, no kernel buffers. A write blocks until the other side reads,
// so a client that stops reading stalls the server at once.
type pipeNet struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func newPipeNet() *pipeNet {
	return &pipeNet{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (p *pipeNet) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.closed:
		return nil, net.ErrClosed
	}
}

func (p *pipeNet) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

func (p *pipeNet) Addr() net.Addr { return pipeAddr{} }

func (p *pipeNet) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	server, client := net.Pipe()
	select {
	case p.conns <- server:
		return client, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-p.closed:
		return nil, net.ErrClosed
	}
}

// streamEnv is an engine and its API on an in-memory network.
type streamEnv struct {
	t      *testing.T
	db     *testdb.DB
	eng    *engine.Engine
	store  *store.Store
	clock  *fakeclock.Clock
	srv    *httptest.Server
	client *http.Client
}

// newStreamEnv builds an engine on db (pool: a PostgreSQL pool of its own,
// nil for the test's main pool or SQLite) and its API.
func newStreamEnv(t *testing.T, db *testdb.DB, pool *pgxpool.Pool, opts httpapi.Options) *streamEnv {
	t.Helper()
	clock := fakeclock.New(t0)
	cfg := engine.Config{Clock: clock, Logger: quietLogger(), TickInterval: 50 * time.Millisecond, PollInterval: 20 * time.Millisecond}
	st := db.Store
	var (
		eng *engine.Engine
		err error
	)
	switch {
	case db.SQLite != nil:
		eng, err = engine.New(st, riversqlite.New(db.SQLite.DB), cfg)
	case pool != nil:
		st = store.New(postgres.NewConn(pool))
		eng, err = engine.New(st, riverpgxv5.New(pool), cfg)
	default:
		eng, err = engine.New(st, riverpgxv5.New(db.Pool), cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	eng.Events().Configure(engine.EventOptions{PollInterval: 20 * time.Millisecond})
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	if opts.Clock == nil {
		opts.Clock = clock
	}
	pn := newPipeNet()
	srv := httptest.NewUnstartedServer(httpapi.NewServer(eng, opts))
	srv.Listener.Close()
	srv.Listener = pn
	srv.Start()
	t.Cleanup(srv.Close)
	tr := &http.Transport{DialContext: pn.dial, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &streamEnv{t: t, db: db, eng: eng, store: st, clock: clock, srv: srv, client: &http.Client{Transport: tr}}
}

// startFeed starts only the live event feed (no River, no ticks): the
// quietest setup, for counting goroutines.
func (e *streamEnv) startFeed() {
	e.t.Helper()
	if err := e.eng.Events().Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(e.eng.Events().Stop)
}

func (e *streamEnv) startEngine() {
	e.t.Helper()
	if err := e.eng.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = e.eng.Stop(ctx)
	})
}

// execution creates an automation and a (waiting) execution of it.
func (e *streamEnv) execution(name string) *pb.Execution {
	e.t.Helper()
	a := &pb.Automation{Name: name, Schedule: pb.Schedule{Cron: "30 9 * * *"},
		Audience: pb.Audience{Type: pb.AudienceStatic, Recipients: []pb.Recipient{{UserID: "u1", Token: "t1"}}},
		Message:  pb.Message{Title: "Hi", Body: "there"}, Delivery: pb.Delivery{Provider: "log"}}
	a, err := e.eng.CreateAutomation(context.Background(), a)
	if err != nil {
		e.t.Fatal(err)
	}
	send := t0.Add(24 * time.Hour)
	ex, err := e.eng.RunAutomation(context.Background(), a.ID, pb.RunParams{SendAt: &send})
	if err != nil {
		e.t.Fatal(err)
	}
	return ex
}

func (e *streamEnv) event(ex *pb.Execution, msg string) int64 {
	e.t.Helper()
	ev := &pb.Event{At: t0, AutomationID: ex.AutomationID, ExecutionID: ex.ID, Type: pb.EventLog, Message: msg}
	if err := e.store.InsertEvent(context.Background(), ev); err != nil {
		e.t.Error(err) // may run on a writer goroutine
	}
	return ev.ID
}

// sseMsg is one block of an event stream.
type sseMsg = httpapi.SSEMessage

// eventID is m's id as a number.
func eventID(t *testing.T, m sseMsg) int64 {
	t.Helper()
	id, err := strconv.ParseInt(m.ID, 10, 64)
	if err != nil {
		t.Fatalf("event id %q: %v", m.ID, err)
	}
	return id
}

// stream is an open event stream, parsed as it arrives.
type stream struct {
	t      *testing.T
	resp   *http.Response
	cancel context.CancelFunc
	msgs   chan sseMsg
	done   chan error
}

// get sends a GET with headers (name, value pairs) and returns the
// response; the caller closes its body.
func (e *streamEnv) get(ctx context.Context, path string, headers ...string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+path, nil)
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return e.client.Do(req)
}

// open opens an event stream and starts parsing it.
func (e *streamEnv) open(path string, headers ...string) *stream {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := e.get(ctx, path, append([]string{"Accept", "text/event-stream"}, headers...)...)
	if err != nil {
		cancel()
		e.t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		e.t.Fatalf("GET %s: %d %s %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	s := &stream{t: e.t, resp: resp, cancel: cancel, msgs: make(chan sseMsg, 10000), done: make(chan error, 1)}
	go func() {
		err := httpapi.ReadSSE(resp.Body, func(m httpapi.SSEMessage) error { s.msgs <- m; return nil })
		if err == nil {
			err = io.EOF
		}
		s.done <- err
		close(s.msgs)
	}()
	e.t.Cleanup(s.close)
	return s
}

func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next returns the next block, failing after a generous deadline.
func (s *stream) next(what string) (sseMsg, bool) {
	s.t.Helper()
	select {
	case m, ok := <-s.msgs:
		return m, ok
	case <-time.After(60 * time.Second):
		s.t.Fatalf("timed out waiting for %s", what)
	}
	return sseMsg{}, false
}

// nextEvent returns the next event (skipping comments and positions).
func (s *stream) nextEvent(what string) sseMsg {
	s.t.Helper()
	for {
		m, ok := s.next(what)
		if !ok {
			s.t.Fatalf("waiting for %s: the stream ended (%v)", what, <-s.done)
		}
		if m.Data != "" {
			return m
		}
	}
}

// collect reads events until it has every id in want (in any scope) and
// returns the ids of the stored events it got, in stream order.
func (s *stream) collect(want []int64) []int64 {
	s.t.Helper()
	missing := map[int64]bool{}
	for _, id := range want {
		missing[id] = true
	}
	var got []int64
	for len(missing) > 0 {
		m := s.nextEvent(fmt.Sprintf("%d more events", len(missing)))
		if m.Event == httpapi.SSEReconnect {
			s.t.Fatalf("the stream ended with reconnect %s, %d events short", m.Data, len(missing))
		}
		id := eventID(s.t, m)
		var ev pb.Event
		if err := json.Unmarshal([]byte(m.Data), &ev); err != nil || ev.ID != id || string(ev.Type) != m.Event {
			s.t.Fatalf("event block id %s event %s data %s: does not match (%v)", m.ID, m.Event, m.Data, err)
		}
		got = append(got, id)
		delete(missing, id)
	}
	return got
}

// expectIDs fails unless got is exactly want, in order.
func expectIDs(t *testing.T, what string, got, want []int64) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %d events %v\nwant %d: %v", what, len(got), got, len(want), want)
	}
}

func streamPath(ex *pb.Execution) string { return fmt.Sprintf("/api/executions/%d/events", ex.ID) }

// TestStreamReplayThenLive: a stream from Last-Event-ID replays the stored
// events after it, then carries the live ones, while writers keep adding
// events (concurrently: on PostgreSQL their ids commit out of order): every
// event of the execution after the id exactly once, in id order. A
// reconnect from any id it got continues just as exactly.
func TestStreamReplayThenLive(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := newStreamEnv(t, testdb.New(t, dialect), nil, httpapi.Options{})
		env.startFeed()
		ex, other := env.execution("watched"), env.execution("other")
		var mine []int64
		for i := range 30 {
			mine = append(mine, env.event(ex, fmt.Sprint("before ", i)))
			env.event(other, "noise")
		}
		from := mine[9]

		writers, perWriter := 4, 40
		if dialect == "sqlite" {
			writers = 1 // one connection: writers would only queue
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for i := range perWriter {
					id := env.event(ex, fmt.Sprintf("live %d/%d", w, i))
					env.event(other, "noise")
					mu.Lock()
					mine = append(mine, id)
					mu.Unlock()
				}
			}()
		}
		s := env.open(streamPath(ex), "Last-Event-ID", strconv.FormatInt(from, 10))
		close(start)
		wg.Wait()
		mu.Lock()
		slices.Sort(mine)
		want := mine[slices.Index(mine, from)+1:]
		mu.Unlock()
		got := s.collect(want)
		expectIDs(t, "stream from Last-Event-ID", got, want)

		// Drop it and resume from the middle of what it got.
		s.close()
		resume := got[len(got)/2]
		tail := append(slices.Clone(want[slices.Index(want, resume)+1:]), env.event(ex, "after the reconnect"))
		s2 := env.open(streamPath(ex), "Last-Event-ID", strconv.FormatInt(resume, 10))
		expectIDs(t, "stream resumed", s2.collect(tail), tail)

		// The query parameters start a stream too; the header wins.
		expectIDs(t, "last_event_id", env.open(streamPath(ex)+"?last_event_id="+strconv.FormatInt(resume, 10)).collect(tail), tail)
		expectIDs(t, "after_id", env.open(streamPath(ex)+"?after_id="+strconv.FormatInt(resume, 10)).collect(tail), tail)
		last := tail[len(tail)-1]
		s3 := env.open(streamPath(ex)+"?last_event_id=0", "Last-Event-ID", strconv.FormatInt(tail[len(tail)-2], 10))
		expectIDs(t, "header over query", s3.collect([]int64{last}), []int64{last})
	})
}

func forEachDialect(t *testing.T, fn func(t *testing.T, dialect string)) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			fn(t, d)
		})
	}
}

// TestStreamLiveOnlyIsResumable: without a starting id a stream carries
// what happens from now on, and first tells the client where it stands
// (an id line without data), so an EventSource that reconnects resumes
// there instead of losing what happened in between.
func TestStreamLiveOnlyIsResumable(t *testing.T) {
	t.Parallel()
	env := newStreamEnv(t, testdb.NewSQLite(t), nil, httpapi.Options{})
	env.startFeed()
	ex := env.execution("live")
	old := env.event(ex, "before the stream")
	waitFor(t, "the feed to publish the old event", func() (bool, string) {
		st := env.eng.Events().Stats()
		return st.Published >= old, fmt.Sprintf("%+v", st)
	})
	s := env.open(streamPath(ex))
	var pos int64
	for pos == 0 {
		m, ok := s.next("the position")
		if !ok {
			t.Fatal("stream ended")
		}
		if m.HasID && m.Data == "" {
			pos = eventID(t, m)
		}
	}
	if pos < old {
		t.Fatalf("position %d is before the event %d that happened before the stream", pos, old)
	}
	live := env.event(ex, "during the stream")
	expectIDs(t, "live only", s.collect([]int64{live}), []int64{live})
}

// TestStreamScopes: each route streams its own scope; the JSON listing is
// unchanged without Accept: text/event-stream; unknown ids and bad
// Last-Event-IDs are the usual JSON errors.
func TestStreamScopes(t *testing.T) {
	t.Parallel()
	env := newStreamEnv(t, testdb.NewSQLite(t), nil, httpapi.Options{})
	env.startFeed()
	a1, a2 := env.execution("first"), env.execution("second")
	a1b, err := env.eng.RunAutomation(context.Background(), a1.AutomationID, pb.RunParams{SendAt: ptrTime(t0.Add(48 * time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	start := "0"
	byExec := env.open(streamPath(a1), "Last-Event-ID", start)
	byAuto := env.open(fmt.Sprintf("/api/automations/%d/events", a1.AutomationID), "Last-Event-ID", start)
	all := env.open("/api/events", "Last-Event-ID", start)

	x1, y1, x2, z1 := env.event(a1, "a1"), env.event(a1b, "a1b"), env.event(a1, "a1 again"), env.event(a2, "a2")
	stored, err := env.store.ListEvents(context.Background(), pb.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var every, ofAuto, ofExec []int64
	for _, ev := range stored {
		every = append(every, ev.ID)
		if ev.AutomationID == a1.AutomationID {
			ofAuto = append(ofAuto, ev.ID)
		}
		if ev.ExecutionID == a1.ID {
			ofExec = append(ofExec, ev.ID)
		}
	}
	if !slices.Contains(ofExec, x1) || !slices.Contains(ofExec, x2) || !slices.Contains(ofAuto, y1) || slices.Contains(ofAuto, z1) {
		t.Fatalf("test setup: %v %v", ofExec, ofAuto)
	}
	expectIDs(t, "execution stream", byExec.collect(ofExec), ofExec)
	expectIDs(t, "automation stream", byAuto.collect(ofAuto), ofAuto)
	expectIDs(t, "all events", all.collect(every), every)

	// Without the Accept header: the JSON listing, as before.
	resp, err := env.get(context.Background(), streamPath(a1))
	if err != nil {
		t.Fatal(err)
	}
	var list httpapi.EventList
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if err != nil || resp.Header.Get("Content-Type") != "application/json" || len(list.Events) != len(ofExec) || resp.Header.Get("Vary") != "Accept" {
		t.Fatalf("JSON listing: %v %s Vary %q, %d events", err, resp.Header.Get("Content-Type"), resp.Header.Get("Vary"), len(list.Events))
	}

	for _, c := range []struct {
		path    string
		headers []string
		status  int
		kind    pb.Kind
		field   string
	}{
		{"/api/executions/999/events", nil, http.StatusNotFound, pb.KindNotFound, ""},
		{"/api/automations/999/events", nil, http.StatusNotFound, pb.KindNotFound, ""},
		{streamPath(a1), []string{"Last-Event-ID", "yesterday"}, http.StatusBadRequest, pb.KindValidation, "Last-Event-ID"},
		{streamPath(a1) + "?last_event_id=-4", nil, http.StatusBadRequest, pb.KindValidation, "last_event_id"},
	} {
		resp, err := env.get(context.Background(), c.path, append([]string{"Accept", "text/event-stream"}, c.headers...)...)
		if err != nil {
			t.Fatal(err)
		}
		var eb httpapi.ErrorBody
		err = json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if err != nil || resp.StatusCode != c.status || eb.Error == nil || eb.Error.Kind != c.kind ||
			(c.field != "" && (len(eb.Error.Fields) != 1 || eb.Error.Fields[0].Field != c.field)) {
			t.Errorf("GET %s %v: %d %+v (%v); want %d %s naming %q", c.path, c.headers, resp.StatusCode, eb.Error, err, c.status, c.kind, c.field)
		}
	}
}

func ptrTime(t time.Time) *time.Time { return &t }

// TestStreamAcrossInstances: two engines and two servers on one
// PostgreSQL database; what happens through one is streamed by the other.
func TestStreamAcrossInstances(t *testing.T) {
	t.Parallel()
	db := testdb.NewPostgres(t)
	a := newStreamEnv(t, db, nil, httpapi.Options{})
	b := newStreamEnv(t, db, db.Reopen(t), httpapi.Options{})
	a.startEngine()
	b.startEngine()

	all := b.open("/api/events")
	ex := a.execution("made on a") // events recorded by engine a
	stored := a.event(ex, "stored through a")
	evs, err := a.store.ListEvents(context.Background(), pb.EventFilter{ExecutionID: &ex.ID})
	if err != nil {
		t.Fatal(err)
	}
	var want []int64
	for _, ev := range evs {
		want = append(want, ev.ID)
	}
	if !slices.Contains(want, stored) || len(want) < 2 {
		t.Fatalf("test setup: events %v", want)
	}
	got := all.collect(want)
	if !slices.IsSorted(got) {
		t.Errorf("ids out of order: %v", got)
	}
	// And the execution's own stream on b, from the start.
	expectIDs(t, "execution stream on the other instance", b.open(streamPath(ex), "Last-Event-ID", "0").collect(want), want)
}

// TestStreamHeartbeat: an idle stream gets a comment line every
// HeartbeatInterval.
func TestStreamHeartbeat(t *testing.T) {
	t.Parallel()
	env := newStreamEnv(t, testdb.NewSQLite(t), nil, httpapi.Options{HeartbeatInterval: 20 * time.Millisecond})
	env.startFeed()
	s := env.open("/api/events")
	for beats := 0; beats < 3; {
		m, ok := s.next("heartbeats")
		if !ok {
			t.Fatal("the stream ended")
		}
		if m.Comment == "heartbeat" {
			beats++
		} else if m.Data != "" {
			t.Fatalf("an idle stream got %+v", m)
		}
	}
}

// TestStreamSubscriberLimit: past MaxSubscribers a stream is refused with
// 503, the JSON error saying what to do, and Retry-After; a closed stream
// frees its place.
func TestStreamSubscriberLimit(t *testing.T) {
	t.Parallel()
	env := newStreamEnv(t, testdb.NewSQLite(t), nil, httpapi.Options{MaxSubscribers: 2})
	env.startFeed()
	first := env.open("/api/events")
	env.open("/api/events")
	resp, err := env.get(context.Background(), "/api/events", "Accept", "text/event-stream")
	if err != nil {
		t.Fatal(err)
	}
	var eb httpapi.ErrorBody
	err = json.NewDecoder(resp.Body).Decode(&eb)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable || eb.Error == nil || !eb.Error.Recoverable ||
		!strings.Contains(eb.Error.Message, "--max-subscribers") || !strings.Contains(eb.Error.Message, "another instance") ||
		resp.Header.Get("Retry-After") == "" || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("third stream: %d %+v (%v), Retry-After %q", resp.StatusCode, eb.Error, err, resp.Header.Get("Retry-After"))
	}
	// The JSON listing is not a stream: never limited.
	resp, err = env.get(context.Background(), "/api/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("JSON listing at the limit: %d", resp.StatusCode)
	}
	first.close()
	waitFor(t, "a place to free up", func() (bool, string) {
		resp, err := env.get(context.Background(), "/api/events?limit=1", "Accept", "text/event-stream")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// TestStreamSlowConsumerIsCutOff: a client that stops reading never holds
// up the feed or the other streams: once it is StreamBuffer events behind
// it gets a reconnect event (with the id to resume from) and the stream
// ends; resuming from that id loses nothing.
func TestStreamSlowConsumerIsCutOff(t *testing.T) {
	t.Parallel()
	env := newStreamEnv(t, testdb.NewSQLite(t), nil, httpapi.Options{StreamBuffer: 4})
	env.startFeed()
	ex := env.execution("slow")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slow, err := env.get(ctx, streamPath(ex), "Accept", "text/event-stream", "Last-Event-ID", "0")
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	fast := env.open(streamPath(ex), "Last-Event-ID", "0")
	stored, err := env.store.ListEvents(context.Background(), pb.EventFilter{ExecutionID: &ex.ID})
	if err != nil {
		t.Fatal(err)
	}
	var want []int64
	for _, ev := range stored {
		want = append(want, ev.ID)
	}
	expectIDs(t, "fast stream", fast.collect(want), want)
	// One at a time, so that no burst exceeds the fast stream's buffer
	// either: it gets everything while the slow one reads nothing.
	for i := range 40 {
		id := env.event(ex, fmt.Sprint("event ", i))
		want = append(want, id)
		expectIDs(t, "fast stream", fast.collect([]int64{id}), []int64{id})
	}
	waitFor(t, "the slow stream to be cut off", func() (bool, string) {
		n := env.eng.Events().Subscribers()
		return n == 1, fmt.Sprintf("%d subscribers", n)
	})

	msgs := make(chan sseMsg, 1000)
	perr := httpapi.ReadSSE(slow.Body, func(m httpapi.SSEMessage) error { msgs <- m; return nil })
	close(msgs)
	if perr != nil { // nil: the server ended the stream
		t.Fatalf("slow stream: %v", perr)
	}
	var got []int64
	var rd *httpapi.ReconnectData
	for m := range msgs {
		switch {
		case m.Event == httpapi.SSEReconnect:
			rd = &httpapi.ReconnectData{}
			if err := json.Unmarshal([]byte(m.Data), rd); err != nil {
				t.Fatal(err)
			}
		case m.Data != "":
			if rd != nil {
				t.Fatalf("event %s after the reconnect event", m.ID)
			}
			got = append(got, eventID(t, m))
		}
	}
	if rd == nil || !strings.Contains(rd.Message, "Last-Event-ID") {
		t.Fatalf("slow stream ended without a reconnect event saying what to do: %+v", rd)
	}
	if len(got) == 0 || len(got) >= len(want) || !slices.Equal(got, want[:len(got)]) || rd.LastEventID != got[len(got)-1] {
		t.Fatalf("slow stream got %v then reconnect from %d; want a prefix of %v ending there", got, rd.LastEventID, want)
	}
	rest := want[len(got):]
	expectIDs(t, "resumed stream", env.open(streamPath(ex), "Last-Event-ID", strconv.FormatInt(rd.LastEventID, 10)).collect(rest), rest)
}

// TestStreamEndsWhenFeedStops: an instance stopping ends its streams with
// a reconnect event, so that clients resume on another one.
func TestStreamEndsWhenFeedStops(t *testing.T) {
	t.Parallel()
	env := newStreamEnv(t, testdb.NewSQLite(t), nil, httpapi.Options{})
	env.startFeed()
	s := env.open("/api/events")
	env.eng.Events().Stop()
	for {
		m, ok := s.next("the reconnect event")
		if !ok {
			t.Fatal("the stream ended without a reconnect event")
		}
		if m.Event == httpapi.SSEReconnect {
			break
		}
	}
	if _, ok := s.next("the end"); ok {
		t.Fatal("the stream goes on after its reconnect event")
	}
}

// TestStreamConnectAbortLeavesNothing: 10,000 clients connect and go
// away (while events flow); afterwards no subscription is left and the
// goroutine count is back where it was. Not parallel: the goroutine count
// is the process's.
func TestStreamConnectAbortLeavesNothing(t *testing.T) {
	cycles := 10000
	if testing.Short() {
		cycles = 1000
	}
	env := newStreamEnv(t, testdb.NewSQLite(t), nil, httpapi.Options{MaxSubscribers: 100000})
	// SQLite under the race detector is the costly part: poll less.
	env.eng.Events().Configure(engine.EventOptions{PollInterval: 100 * time.Millisecond})
	env.startFeed()
	ex := env.execution("busy")

	waitSettled := func(what string, limit int) {
		t.Helper()
		waitFor(t, what, func() (bool, string) {
			n, subs := runtime.NumGoroutine(), env.eng.Events().Subscribers()
			return n <= limit && subs == 0, fmt.Sprintf("%d goroutines (baseline %d), %d subscribers", n, limit, subs)
		})
	}
	baseline := runtime.NumGoroutine()

	var latest atomic.Int64
	latest.Store(env.event(ex, "before"))
	stopWriting, writing := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(writing)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopWriting:
				return
			case <-tick.C:
				latest.Store(env.event(ex, "flowing"))
			}
		}
	}()

	const workers = 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < cycles; i += workers {
				ctx, cancel := context.WithCancel(context.Background())
				// Mostly the cheapest connect (no scope to look up, live
				// only); some look their execution up, some replay a little.
				path, headers := "/api/events", []string{"Accept", "text/event-stream"}
				if i%16 == 1 {
					path = streamPath(ex)
				}
				if i%16 == 2 {
					headers = append(headers, "Last-Event-ID", strconv.FormatInt(max(0, latest.Load()-3), 10))
				}
				resp, err := env.get(ctx, path, headers...)
				if err != nil {
					cancel()
					errs <- fmt.Errorf("cycle %d: %v", i, err)
					return
				}
				if resp.StatusCode != http.StatusOK {
					cancel()
					resp.Body.Close()
					errs <- fmt.Errorf("cycle %d: status %d", i, resp.StatusCode)
					return
				}
				if i%3 == 0 { // some read a little before going
					var b [64]byte
					_, _ = resp.Body.Read(b[:])
				}
				cancel()
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	close(stopWriting)
	<-writing
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitSettled("every subscription gone and the goroutines back to the baseline", baseline)
}

package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/riverqueue/river/riverdriver/riversqlite"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/httpapi"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
	"github.com/pushblaster/pushblaster/internal/testdb"
)

// lockedBuffer is a bytes.Buffer a test may read while a command writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// watchEnv is an engine with a clock the test moves, behind the real API
// on a loopback httptest server.
type watchEnv struct {
	t     *testing.T
	eng   *engine.Engine
	clock *fakeclock.Clock
	srv   *httptest.Server
}

func newWatchEnv(t *testing.T) *watchEnv {
	t.Helper()
	db := testdb.NewSQLite(t)
	t0 := time.Date(2026, 6, 1, 6, 0, 0, 0, time.UTC)
	clock := fakeclock.New(t0)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	eng, err := engine.New(db.Store, riversqlite.New(db.SQLite.DB), engine.Config{Clock: clock, Logger: quiet,
		TickInterval: 50 * time.Millisecond, PollInterval: 20 * time.Millisecond, SendChunkSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	eng.Events().Configure(engine.EventOptions{PollInterval: 20 * time.Millisecond})
	if err := eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(httpapi.NewServer(eng, httpapi.Options{Clock: clock, Logger: quiet}))
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = eng.Stop(ctx)
	})
	return &watchEnv{t: t, eng: eng, clock: clock, srv: srv}
}

// scheduled creates an automation and runs it for a send time an hour
// away (lead time 0: nothing happens until the clock gets there).
func (w *watchEnv) scheduled(name string) (*pb.Execution, time.Time) {
	w.t.Helper()
	a, err := w.eng.CreateAutomation(context.Background(), &pb.Automation{
		Name:         name,
		Schedule:     pb.Schedule{Cron: "30 9 * * *"},
		LeadTime:     pb.DurationOf(0),
		Audience:     pb.Audience{Type: pb.AudienceStatic, Recipients: []pb.Recipient{{UserID: "a", Token: "ta"}, {UserID: "b", Token: "tb"}, {UserID: "c", Token: "tc"}}},
		TestAudience: []pb.Recipient{{UserID: "qa", Token: "tq"}},
		Message:      pb.Message{Title: "Hello", Body: "from the watch test"},
		Delivery:     pb.Delivery{Provider: "log"},
	})
	if err != nil {
		w.t.Fatal(err)
	}
	send := w.clock.Now().Add(time.Hour)
	ex, err := w.eng.RunAutomation(context.Background(), a.ID, pb.RunParams{SendAt: &send})
	if err != nil {
		w.t.Fatal(err)
	}
	return ex, send
}

// watch runs `pushblaster execution watch ID` in the background.
func (w *watchEnv) watch(id int64) (stdout, stderr *lockedBuffer, code <-chan int) {
	stdout, stderr = &lockedBuffer{}, &lockedBuffer{}
	done := make(chan int, 1)
	go func() {
		err := run(context.Background(), []string{"execution", "watch", strconv.FormatInt(id, 10), "--server", w.srv.URL},
			func(string) string { return "" }, strings.NewReader(""), stdout, stderr)
		done <- exitCode(err, stderr)
	}()
	return stdout, stderr, done
}

func (w *watchEnv) waitSubscribers(n int) {
	w.t.Helper()
	pollUntil(w.t, strconv.Itoa(n)+" watching", func() (bool, string) {
		got := w.eng.Events().Subscribers()
		return got == n, strconv.Itoa(got) + " subscribers"
	})
}

func waitExit(t *testing.T, code <-chan int, stdout, stderr *lockedBuffer) int {
	t.Helper()
	select {
	case c := <-code:
		return c
	case <-time.After(60 * time.Second):
		t.Fatalf("watch did not exit\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
	return -1
}

// TestWatchFollowsAnExecution: watch attaches to an execution that waits
// for its send time, survives a dropped connection (it resumes with
// Last-Event-ID: nothing missed, nothing shown twice), shows every phase,
// the send's progress and the outcome, and exits 0 when it completes.
func TestWatchFollowsAnExecution(t *testing.T) {
	t.Parallel()
	w := newWatchEnv(t)
	ex, send := w.scheduled("watched")
	stdout, stderr, code := w.watch(ex.ID)
	w.waitSubscribers(1)
	pollUntil(t, "the story so far", func() (bool, string) {
		return strings.Contains(stdout.String(), "fire for send time"), stdout.String()
	})

	// The connection drops: watch reconnects from where it was.
	w.srv.CloseClientConnections()
	pollUntil(t, "the reconnect", func() (bool, string) {
		return strings.Contains(stderr.String(), "reconnecting with Last-Event-ID") && w.eng.Events().Subscribers() == 1,
			stderr.String()
	})

	w.clock.Set(send)
	if c := waitExit(t, code, stdout, stderr); c != 0 {
		t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", c, stdout, stderr)
	}
	out := stdout.String()
	for _, want := range []string{
		"watching execution " + strconv.FormatInt(ex.ID, 10),
		"phase    [audience] audience started",
		"phase    [audience] audience completed",
		"phase    [test_send] test_send completed",
		"phase    [window] cancellation window",
		"phase    [live_send] live_send started",
		"progress [live_send] live send: 1 of 3 done (sent 1, failed 0)",
		"phase    [live_send] live_send completed",
		"status   execution completed: sent 3",
		"execution " + strconv.FormatInt(ex.ID, 10) + " completed: sent 3, failed 0 of audience 3",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Every event line once, in order, despite the reconnect.
	lines := regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d  .*$`).FindAllString(out, -1)
	seen := map[string]bool{}
	for _, l := range lines {
		if seen[l] {
			t.Errorf("line shown twice: %q\n%s", l, out)
		}
		seen[l] = true
	}
	if i, j := strings.Index(out, "audience started"), strings.Index(out, "live_send completed"); i < 0 || j < i {
		t.Errorf("phases out of order:\n%s", out)
	}
}

// TestWatchExitsNonZeroUnlessCompleted: a cancelled execution ends the
// watch with status 1 and says so; so does one already over.
func TestWatchExitsNonZeroUnlessCompleted(t *testing.T) {
	t.Parallel()
	w := newWatchEnv(t)
	ex, _ := w.scheduled("doomed")
	stdout, stderr, code := w.watch(ex.ID)
	w.waitSubscribers(1)
	if _, err := w.eng.CancelExecution(context.Background(), ex.ID, pb.CancelParams{Reason: "not today"}); err != nil {
		t.Fatal(err)
	}
	if c := waitExit(t, code, stdout, stderr); c != 1 {
		t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", c, stdout, stderr)
	}
	if out := stdout.String(); !strings.Contains(out, "status   cancelled by operator: not today") ||
		!strings.Contains(out, "execution "+strconv.FormatInt(ex.ID, 10)+" cancelled") {
		t.Errorf("output:\n%s", out)
	}

	// Watching it afterwards replays its story and ends at once.
	stdout, stderr, code = w.watch(ex.ID)
	if c := waitExit(t, code, stdout, stderr); c != 1 || !strings.Contains(stdout.String(), "cancelled by operator") {
		t.Fatalf("watch of a finished execution: exit %d\nstdout:\n%s\nstderr:\n%s", c, stdout, stderr)
	}

	// An unknown execution is an error, not a wait.
	stdout, stderr, code = w.watch(ex.ID + 1000)
	if c := waitExit(t, code, stdout, stderr); c != 1 || !strings.Contains(stderr.String(), "not found") {
		t.Fatalf("watch of an unknown execution: exit %d\nstdout:\n%s\nstderr:\n%s", c, stdout, stderr)
	}
}

// TestReadSSE: the parser follows the WHATWG rules the server relies on:
// comments, id lines without data, multi-line data, CRLF.
func TestReadSSE(t *testing.T) {
	in := "retry: 2000\n\n: heartbeat\n\nid: 7\n\nid: 8\r\nevent: log\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nevent: reconnect\ndata: x\n\nid: 9\ndata: unterminated"
	var got []httpapi.SSEMessage
	if err := httpapi.ReadSSE(strings.NewReader(in), func(m httpapi.SSEMessage) error { got = append(got, m); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []httpapi.SSEMessage{{}, {Comment: "heartbeat"}, {ID: "7", HasID: true}, {ID: "8", HasID: true, Event: "log", Data: "{\"a\":\n1}"}, {Event: "reconnect", Data: "x"}}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("block %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

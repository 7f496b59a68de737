package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/httpapi"
)

// `pushblaster execution watch ID` follows an execution live over the
// server-sent event stream of GET /api/executions/{id}/events: its whole
// story so far, then every phase, progress, log line and error as it
// happens, and the final outcome. The exit status is 0 when the execution
// completes and 1 otherwise, so scripts can wait on it. A dropped stream
// is resumed with Last-Event-ID: nothing is missed or shown twice.

// watchCommand is registered in executionCommands.
var watchCommand = command{
	synopsis: "watch ID [--json]   (follow it live: phases, send progress, log lines, outcome; exit 0 if it completes)",
	args:     1,
	run:      runWatch,
}

// Watch timing.
var (
	// watchStatusEvery is how often the execution itself is read while
	// watching: if it is final and its final event does not come (a
	// server without a live feed, say), the watch ends anyway.
	watchStatusEvery = 10 * time.Second
	// watchIdleAfter is how long a stream may stay silent (servers send
	// a heartbeat every 15s) before it is presumed dead and reopened.
	watchIdleAfter = 60 * time.Second
	// watchGiveUpAfter is how long the watch tries to reconnect before
	// it gives up.
	watchGiveUpAfter = 2 * time.Minute
)

var (
	errStreamIdle  = errors.New("no data or heartbeat for too long")
	errFinalPolled = errors.New("execution final")
)

// errPermanent is a failure that reconnecting cannot cure.
type errPermanent struct{ err error }

func (e errPermanent) Error() string { return e.err.Error() }

// errReconnect is the server ending the stream (reconnect event).
type errReconnect struct{ msg string }

func (e errReconnect) Error() string { return "the server ended the stream: " + e.msg }

func runWatch(ctx context.Context, x *cmdCtx) error {
	id, err := x.executionID()
	if err != nil {
		return err
	}
	var ex pb.Execution
	if err := x.c.do(ctx, http.MethodGet, "/api/executions/"+id, nil, &ex); err != nil {
		return err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = 30 * time.Second
	w := &watcher{c: x.c, id: id, out: x.stdout, errOut: x.stderr, json: x.cf.json, tty: isTerminal(x.stdout),
		stream: &http.Client{Transport: tr}}
	defer tr.CloseIdleConnections()
	if !w.json {
		fmt.Fprintf(w.out, "watching execution %d of automation %q: %s; send at %s\n", ex.ID, ex.AutomationName, ex.Status, when(ex.SendAt, time.UTC))
	}
	return w.run(ctx)
}

// watcher follows one execution's event stream.
type watcher struct {
	c      *client
	stream *http.Client // no overall timeout: a stream lasts
	id     string
	out    io.Writer
	errOut io.Writer
	json   bool
	tty    bool

	last      int64 // Last-Event-ID: the stream's position
	printed   int64 // id of the last event shown (never show one twice)
	final     pb.ExecutionStatus
	connected bool // the last attempt got a stream
	bar       bool // a progress bar is on the current line
}

func (w *watcher) run(ctx context.Context) error {
	lastOK := time.Now()
	delay := 500 * time.Millisecond
	for {
		err := w.follow(ctx)
		if errors.Is(err, errFinalPolled) {
			w.endBar()
			fmt.Fprintf(w.errOut, "execution %s is final but its final event did not come; showing its record\n", w.id)
			w.final = pb.StatusFailed // outcome reads the real status
		}
		if w.final != "" {
			return w.outcome(ctx)
		}
		if ctx.Err() != nil {
			w.endBar()
			fmt.Fprintf(w.errOut, "stopped watching execution %s; it goes on (pushblaster execution get %s)\n", w.id, w.id)
			return exitError{130}
		}
		var pe *pb.Error
		if errors.As(err, &pe) {
			switch pe.Kind {
			case pb.KindNotFound, pb.KindValidation, pb.KindUnauthorized:
				return err
			}
		}
		var perm errPermanent
		if errors.As(err, &perm) {
			return perm.err
		}
		if w.connected {
			lastOK, delay = time.Now(), 500*time.Millisecond
		}
		if time.Since(lastOK) > watchGiveUpAfter {
			return pb.Errorf(pb.KindExternal, "lost the event stream of execution %s for %s (%v); the execution goes on: pushblaster execution get %s",
				w.id, watchGiveUpAfter, err, w.id)
		}
		w.endBar()
		fmt.Fprintf(w.errOut, "event stream interrupted (%v); reconnecting with Last-Event-ID %d\n", describeError(err), w.last)
		select {
		case <-ctx.Done():
			continue
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// follow opens the stream from w.last and shows its events until the
// execution's final status event, or until the stream ends.
func (w *watcher) follow(ctx context.Context) error {
	w.connected = false
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var activity atomic.Int64
	activity.Store(time.Now().UnixNano())
	var guard sync.WaitGroup
	guard.Add(1)
	go func() { defer guard.Done(); w.guard(sctx, cancel, &activity) }()
	defer guard.Wait()
	defer cancel(nil)

	req, err := http.NewRequestWithContext(sctx, http.MethodGet, w.c.base+"/api/executions/"+w.id+"/events", nil)
	if err != nil {
		return pb.Errorf(pb.KindValidation, "build request: %v", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", strconv.FormatInt(w.last, 10))
	if w.c.token != "" {
		req.Header.Set("Authorization", "Bearer "+w.c.token)
	}
	resp, err := w.stream.Do(req)
	if err != nil {
		return w.streamErr(sctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var eb httpapi.ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error != nil {
			return eb.Error
		}
		return pb.Errorf(pb.KindExternal, "HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		return errPermanent{pb.Errorf(pb.KindExternal, "the server answered %s, not an event stream; is it an older pushblaster? (pushblaster execution events %s lists the events)", ct, w.id)}
	}
	w.connected = true
	err = httpapi.ReadSSE(resp.Body, func(m httpapi.SSEMessage) error {
		activity.Store(time.Now().UnixNano())
		return w.handle(m)
	})
	if errors.Is(err, errStop) {
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return w.streamErr(sctx, err)
}

// streamErr names why a stream ended, preferring the watcher's own reason.
func (w *watcher) streamErr(sctx context.Context, err error) error {
	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	var rc errReconnect
	if errors.As(err, &rc) {
		return err
	}
	return pb.Errorf(pb.KindExternal, "%v", err)
}

// guard ends a stream that went silent, and ends the watch when the
// execution is final but its final event does not come.
func (w *watcher) guard(ctx context.Context, cancel context.CancelCauseFunc, activity *atomic.Int64) {
	tick := time.NewTicker(min(watchStatusEvery, watchIdleAfter/4))
	defer tick.Stop()
	lastCheck, finalSeen := time.Now(), 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if time.Since(time.Unix(0, activity.Load())) > watchIdleAfter {
			cancel(errStreamIdle)
			return
		}
		if time.Since(lastCheck) < watchStatusEvery {
			continue
		}
		lastCheck = time.Now()
		var ex pb.Execution
		if err := w.c.do(ctx, http.MethodGet, "/api/executions/"+w.id, nil, &ex); err != nil || !ex.Status.Final() {
			finalSeen = 0
			continue
		}
		// Twice in a row: the final event may be on its way.
		if finalSeen++; finalSeen >= 2 {
			cancel(errFinalPolled)
			return
		}
	}
}

// errStop ends reading: the final status has been shown.
var errStop = errors.New("stop")

// handle shows one message of the stream.
func (w *watcher) handle(m httpapi.SSEMessage) error {
	if m.HasID {
		if id, err := strconv.ParseInt(m.ID, 10, 64); err == nil && id > w.last {
			w.last = id
		}
	}
	if m.Data == "" {
		return nil // a comment (heartbeat), or a position
	}
	if m.Event == httpapi.SSEReconnect {
		var rd httpapi.ReconnectData
		_ = json.Unmarshal([]byte(m.Data), &rd)
		w.last = max(w.last, rd.LastEventID)
		return errReconnect{msg: rd.Message}
	}
	var ev pb.Event
	if err := json.Unmarshal([]byte(m.Data), &ev); err != nil {
		return pb.Errorf(pb.KindExternal, "unreadable event %q: %v", m.Data, err)
	}
	if ev.ID != 0 && ev.ID <= w.printed {
		return nil
	}
	w.printed = max(w.printed, ev.ID)
	w.show(&ev)
	if ev.Type == pb.EventStatus {
		if st := pb.ExecutionStatus(ev.Data["status"]); st.Final() {
			w.final = st
			return errStop
		}
	}
	return nil
}

// show prints an event: a line, or the progress bar on a terminal.
func (w *watcher) show(ev *pb.Event) {
	if w.json {
		data, _ := json.Marshal(ev)
		fmt.Fprintf(w.out, "%s\n", data)
		return
	}
	if ev.Type == pb.EventProgress && w.tty {
		done, _ := strconv.ParseInt(ev.Data["done"], 10, 64)
		total, _ := strconv.ParseInt(ev.Data["total"], 10, 64)
		fmt.Fprintf(w.out, "\r\033[K%s %s/%s  sent %s  failed %s", progressBar(done, total, 30),
			ev.Data["done"], ev.Data["total"], ev.Data["sent"], ev.Data["failed"])
		w.bar = true
		return
	}
	w.endBar()
	label := string(ev.Type)
	if ev.Type == pb.EventError {
		label = "ERROR"
	}
	phase := ""
	if ev.Phase != "" {
		phase = "[" + string(ev.Phase) + "] "
	}
	fmt.Fprintf(w.out, "%s  %-8s %s%s\n", ev.At.Local().Format("15:04:05"), label, phase, ev.Message)
}

func (w *watcher) endBar() {
	if w.bar {
		fmt.Fprintln(w.out)
		w.bar = false
	}
}

// progressBar draws done of total in width cells.
func progressBar(done, total int64, width int) string {
	frac := 0.0
	if total > 0 {
		frac = min(1, float64(done)/float64(total))
	}
	n := int(frac * float64(width))
	return fmt.Sprintf("[%s%s] %3.0f%%", strings.Repeat("#", n), strings.Repeat(".", width-n), 100*frac)
}

// outcome prints how the execution ended; the exit status is 0 only when
// it completed.
func (w *watcher) outcome(ctx context.Context) error {
	w.endBar()
	var ex pb.Execution
	err := w.c.do(context.WithoutCancel(ctx), http.MethodGet, "/api/executions/"+w.id, nil, &ex)
	if err != nil || !ex.Status.Final() {
		ex = pb.Execution{Status: w.final}
		if id, perr := strconv.ParseInt(w.id, 10, 64); perr == nil {
			ex.ID = id
		}
	}
	if !w.json {
		line := fmt.Sprintf("execution %d %s: sent %d, failed %d of audience %d", ex.ID, ex.Status,
			ex.Metrics[pb.MetricSent], ex.Metrics[pb.MetricFailed], ex.Metrics[pb.MetricAudienceSize])
		if ex.StartedAt != nil && ex.FinishedAt != nil {
			line += fmt.Sprintf(", in %s", ex.FinishedAt.Sub(*ex.StartedAt).Round(time.Millisecond))
		}
		if note := executionNote(&ex); note != "" {
			line += "; " + note
		}
		fmt.Fprintln(w.out, line)
	}
	if ex.Status != pb.StatusCompleted {
		return exitError{1}
	}
	return nil
}

// isTerminal reports whether w is a terminal (progress bars redraw in
// place there; elsewhere every progress event is a line).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

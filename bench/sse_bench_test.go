package bench

// BenchmarkSSEFanout: 1,000 live event streams (server-sent events) on one
// execution of the real binary. Run with
//
//	go test -run '^$' -bench SSEFanout -benchtime 1x -timeout 30m -v ./bench/
//
// Results are recorded in docs/BENCHMARKS.md. The helpers (TestMain's build,
// startServer, the /proc readers) are those of engine_bench_test.go, the API
// helper and the RSS sampler those of audience_bench_test.go, the CPU points
// those of delivery_bench_test.go.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

const (
	// sseSubscribers is how many streams follow the execution.
	sseSubscribers = 1_000
	// sseTicks is how many stderr lines ("tick SEQ UNIX-NANOS") the script
	// writes, sseTickGap apart.
	sseTicks   = 200
	sseTickGap = 20 * time.Millisecond
	// sseDeadline bounds the wait for every tick on every stream after the
	// go file is created.
	sseDeadline = 2 * time.Minute
	// sseConnectTimeout bounds the wait for every stream's response
	// headers.
	sseConnectTimeout = time.Minute
	// sseLead is the automation's lead time and how far ahead the manual
	// run's send time lies: only the audience phase runs while measured.
	sseLead = time.Hour
	// The goal of the issue.
	sseGoalP99 = 100 * time.Millisecond
)

// sseScript waits (every 10 ms, at most 60 s) for the file "go" in the
// directory $1, then writes $2 lines "tick SEQ UNIX-NANOS" to stderr, 20 ms
// apart (sleep 0.02 between two lines), the time taken just before its line
// is written; then a one-recipient audience on stdout.
const sseScript = `#!/bin/sh
dir=$1
n=$2
i=0
while [ ! -e "$dir/go" ]; do
	i=$((i + 1))
	if [ "$i" -gt 6000 ]; then
		echo "no file $dir/go after 60 s" >&2
		exit 1
	fi
	sleep 0.01
done
seq=1
while [ "$seq" -le "$n" ]; do
	echo "tick $seq $(date +%s%N)" >&2
	seq=$((seq + 1))
	sleep 0.02
done
printf 'user_id,token\nu-1,token-1\n'
`

// BenchmarkSSEFanout opens 1,000 SSE streams (GET /api/executions/{id}/events,
// Accept: text/event-stream) on one running execution of `pushblaster
// serve`, then makes its script audience write 200 stderr lines, 20 ms
// apart, each carrying the time it was written. Every stderr line becomes a
// stored log event of the execution, which every stream delivers. It
// reports the event latency over all 200,000 deliveries (p50, p99, max; the
// goal is p99 < 100 ms), the delivered events/s (tick deliveries over the
// time from the first tick's writing to the last receipt: the script's pace
// times the streams, if the server keeps up), and the server's peak RSS
// (VmHWM) and CPU from the go file to the last receipt. Run with
// -benchtime 1x.
//
// The latency of one delivery is the client's clock when it reads the
// event's data line minus the time the script took just before writing the
// line: it includes the server reading the script's stderr, the batching of
// stderr lines into events, storing the event, the live event feed's poll
// of the events table, the fan-out to 1,000 streams and the HTTP write, and
// the client (this process, on the same cores) reading it. A stream that
// misses a tick, gets one twice or out of order, or is ended by the server
// fails the benchmark: it records timing, it fails on data loss only.
//
// Knobs, unset to reproduce the recorded numbers: those of
// BenchmarkEngineScale (PUSHBLASTER_BENCH_LOG_LEVEL, _LOG_DIR, _ARGS,
// _PG_PARAMS) and
//
//	PUSHBLASTER_BENCH_SSE_SUBSCRIBERS  streams (default 1000)
//	PUSHBLASTER_BENCH_SSE_TICKS        stderr lines of the script (default 200)
func BenchmarkSSEFanout(b *testing.B) {
	forEachDatabase(b, runSSEFanout)
}

// sseTick is one delivery of one tick to one stream.
type sseTick struct {
	seq      int
	latency  time.Duration // receipt − the script's time
	stored   time.Duration // the event's "at" − the script's time
	received time.Time
}

// sseStream is what one subscriber saw.
type sseStream struct {
	status     int
	connectErr error
	ticks      []sseTick
	seen       []int // deliveries of each seq (index seq-1)
	dups       int
	outOfOrder int
	badIDs     int    // ids not increasing
	ended      string // why the stream ended before every tick (reconnect event, read error)
	events     int    // every event with data, ticks included
}

func (s *sseStream) missing() int {
	n := 0
	for _, c := range s.seen {
		if c == 0 {
			n++
		}
	}
	return n
}

func envPositive(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

func runSSEFanout(b *testing.B, dbEnv string) {
	if binary == "" {
		b.Fatal("the pushblaster binary was not built (TestMain builds it when -bench is given)")
	}
	subs := envPositive(b, "PUSHBLASTER_BENCH_SSE_SUBSCRIBERS", sseSubscribers)
	ticks := envPositive(b, "PUSHBLASTER_BENCH_SSE_TICKS", sseTicks)
	loadBefore := loadAvg()

	// The script, and the directory of its go file.
	dir := b.TempDir()
	if strings.ContainsAny(dir, " \t\n") {
		b.Fatalf("the temporary directory %q contains white space (PUSHBLASTER_BENCH_ARGS is split on it)", dir)
	}
	scripts, goDir := filepath.Join(dir, "scripts"), filepath.Join(dir, "go")
	for _, d := range []string{scripts, goDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(scripts, "ticks.sh"), []byte(sseScript), 0o755); err != nil {
		b.Fatal(err)
	}
	maxSubs := max(1100, subs+100)
	b.Setenv("PUSHBLASTER_BENCH_ARGS", strings.TrimSpace(os.Getenv("PUSHBLASTER_BENCH_ARGS")+
		fmt.Sprintf(" --scripts-dir %s --max-subscribers %d", scripts, maxSubs)))
	srv := startServer(b, dbEnv, "sse")
	pid := srv.pid()

	// The automation: never due by itself; run by hand, send time an hour
	// ahead, so that only the audience phase (the script) runs.
	far := time.Now().UTC().AddDate(0, 6, 0)
	var a pb.Automation
	srv.apiJSON(b, http.MethodPost, "/api/automations", map[string]any{
		"name":                  "sse-fanout",
		"schedule":              map[string]any{"cron": fmt.Sprintf("0 3 %d %d *", far.Day(), int(far.Month())), "timezone": "UTC"},
		"lead_time":             pb.Duration(sseLead).String(),
		"cancellation_deadline": "0s",
		"audience": map[string]any{
			"type": "script", "script": "ticks.sh", "args": []string{goDir, strconv.Itoa(ticks)},
			"timeout": "9m", "stall_timeout": "2m", "max_growth": 0,
		},
		"message":  map[string]any{"title": "Benchmark", "body": "sse fanout"},
		"delivery": map[string]any{"provider": "log"},
	}, http.StatusCreated, &a)
	if a.ID == 0 {
		b.Fatalf("created automation has no id: %+v", a)
	}
	var ex pb.Execution
	srv.apiJSON(b, http.MethodPost, fmt.Sprintf("/api/automations/%d/run", a.ID), map[string]any{}, http.StatusCreated, &ex)
	rssBase := float64(vmRSSKB(pid)) / 1024
	progress("execution %d created; opening %d streams (--max-subscribers %d)", ex.ID, subs, maxSubs)

	// The streams: one client, one HTTP/1.1 connection each.
	tr := &http.Transport{
		MaxIdleConns: 0, MaxIdleConnsPerHost: subs + 100, MaxConnsPerHost: 0,
		DisableCompression: true, ForceAttemptHTTP2: false,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	streams := make([]*sseStream, subs)
	var (
		connected sync.WaitGroup // every stream has its headers (or failed)
		done      sync.WaitGroup // every stream has ended
	)
	goFile := make(chan struct{}) // closed once the go file exists
	connectStart := time.Now()
	url := fmt.Sprintf("%s/api/executions/%d/events", srv.url, ex.ID)
	for i := range streams {
		st := &sseStream{seen: make([]int, ticks), ticks: make([]sseTick, 0, ticks)}
		streams[i] = st
		connected.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			subscribe(ctx, client, url, st, ticks, connected.Done, goFile)
		}()
	}
	waitConnected := make(chan struct{})
	go func() { connected.Wait(); close(waitConnected) }()
	select {
	case <-waitConnected:
	case <-time.After(sseConnectTimeout):
		cancel()
		srv.fail(b, fmt.Sprintf("not every stream had its response headers within %s", sseConnectTimeout))
	}
	connectDur := time.Since(connectStart)
	for i, st := range streams {
		if st.connectErr != nil || st.status != http.StatusOK {
			cancel()
			srv.fail(b, fmt.Sprintf("stream %d of %d: status %d, %v", i, subs, st.status, st.connectErr))
		}
	}
	rssConnected := float64(vmRSSKB(pid)) / 1024
	progress("%d streams open in %s; server RSS %.1f MB (%.1f MB before)", subs, connectDur.Round(time.Millisecond), rssConnected, rssBase)

	// Go: the script starts ticking. CPU from here to the last receipt.
	pgClient := 0
	if strings.HasSuffix(b.Name(), "postgres") {
		pgClient = pid
	}
	rss := startRSSSampler(pid)
	p0 := procSample(pgClient, pid, os.Getpid())
	goAt := time.Now()
	if err := os.WriteFile(filepath.Join(goDir, "go"), nil, 0o644); err != nil {
		cancel()
		b.Fatal(err)
	}
	close(goFile)
	allDone := make(chan struct{})
	go func() { done.Wait(); close(allDone) }()
	timedOut := false
	select {
	case <-allDone:
	case <-time.After(sseDeadline):
		timedOut = true
		cancel()
		<-allDone
	}
	p1 := procSample(pgClient, pid, os.Getpid())
	rssSeries := rss()
	hwmMB := float64(readStatus(b, pid).hwmKB) / 1024

	// Integrity: every stream every tick, once, in order.
	var lost, dupStreams, dups, ooo, badIDs, missingTicks int
	var firstBad string
	note := func(i int, st *sseStream, what string) {
		if firstBad == "" {
			firstBad = fmt.Sprintf("stream %d: %s (%d of %d ticks, %d events in all; ended: %q)",
				i, what, len(st.ticks), ticks, st.events, st.ended)
		}
	}
	for i, st := range streams {
		if m := st.missing(); m > 0 {
			lost++
			missingTicks += m
			note(i, st, fmt.Sprintf("%d ticks missing", m))
		}
		if st.dups > 0 {
			dupStreams++
			dups += st.dups
			note(i, st, fmt.Sprintf("%d ticks twice", st.dups))
		}
		if st.outOfOrder > 0 {
			ooo += st.outOfOrder
			note(i, st, fmt.Sprintf("%d ticks out of order", st.outOfOrder))
		}
		if st.badIDs > 0 {
			badIDs += st.badIDs
			note(i, st, fmt.Sprintf("%d event ids not increasing", st.badIDs))
		}
	}
	srv.apiJSON(b, http.MethodGet, fmt.Sprintf("/api/executions/%d", ex.ID), nil, http.StatusOK, &ex)
	if lost > 0 || dups > 0 || ooo > 0 || badIDs > 0 {
		why := ""
		if timedOut {
			why = fmt.Sprintf(" (not every stream had every tick %s after the go file)", sseDeadline)
		}
		// How many ticks were stored: the JSON listing.
		var page struct {
			Events []*pb.Event `json:"events"`
		}
		srv.apiJSON(b, http.MethodGet, fmt.Sprintf("/api/executions/%d/events?limit=1000", ex.ID), nil, http.StatusOK, &page)
		stored := 0
		for _, ev := range page.Events {
			if strings.HasPrefix(ev.Message, "tick ") {
				stored++
			}
		}
		srv.fail(b, fmt.Sprintf("data loss%s: %d of %d streams missed %d ticks in all, %d streams got %d ticks twice, %d out of order, %d ids not increasing; "+
			"%d of %d ticks stored (JSON listing); execution %d is %s; first: %s",
			why, lost, subs, missingTicks, dupStreams, dups, ooo, badIDs, stored, ticks, ex.ID, ex.Status, firstBad))
	}

	// The numbers.
	all := make([]time.Duration, 0, subs*ticks)
	feed := make([]time.Duration, 0, subs*ticks) // receipt − the event's "at"
	var stored []time.Duration                   // the event's "at" − the script's time
	first := make([]time.Time, ticks)            // per tick: first and last receipt
	last := make([]time.Time, ticks)
	var lastReceipt time.Time
	var scriptFirst time.Time // the script's time of tick 1
	events := 0
	for _, st := range streams {
		events += st.events
		for _, t := range st.ticks {
			all = append(all, t.latency)
			feed = append(feed, t.latency-t.stored)
			k := t.seq - 1
			if first[k].IsZero() || t.received.Before(first[k]) {
				first[k] = t.received
			}
			if t.received.After(last[k]) {
				last[k] = t.received
			}
			if t.received.After(lastReceipt) {
				lastReceipt = t.received
			}
			if t.seq == 1 && scriptFirst.IsZero() {
				scriptFirst = t.received.Add(-t.latency)
			}
		}
	}
	// stored − script is the same for every stream: take stream 0's.
	for _, t := range streams[0].ticks {
		stored = append(stored, t.stored)
	}
	spread := make([]time.Duration, ticks) // per tick: last − first receipt over the streams
	for k := range spread {
		spread[k] = last[k].Sub(first[k])
	}
	slices.Sort(all)
	slices.Sort(feed)
	slices.Sort(stored)
	slices.Sort(spread)
	window := lastReceipt.Sub(scriptFirst)
	rate := float64(len(all)) / window.Seconds()
	scriptSpan := time.Duration(0)
	if t := streams[0].ticks; len(t) > 1 {
		scriptSpan = t[len(t)-1].received.Add(-t[len(t)-1].latency).Sub(t[0].received.Add(-t[0].latency))
	}
	u := cpuBetween(p0, p1)
	serverCPU, clientCPU := u.procCPU[0], u.procCPU[1]
	rssMax := rssSeries.maxBetween(goAt, time.Now())

	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(pct(all, 50)), "p50_ms")
	b.ReportMetric(ms(pct(all, 99)), "p99_ms")
	b.ReportMetric(ms(all[len(all)-1]), "max_ms")
	b.ReportMetric(float64(subs), "subscribers")
	b.ReportMetric(rate, "events_per_s")
	b.ReportMetric(hwmMB, "peak_rss_MB")
	b.ReportMetric(serverCPU, "server_cpu_s")

	verdict := "NOT met"
	if pct(all, 99) < sseGoalP99 {
		verdict = "met"
	}
	warns, firstWarn := srv.warnLines()
	if firstWarn != "" {
		firstWarn = fmt.Sprintf(", first: %.300s", firstWarn)
	}
	b.Logf("setup        %d SSE streams on execution %d (HTTP/1.1, one connection each, open in %s), script: %d stderr lines %s apart (took %s); load average before %s",
		subs, ex.ID, connectDur.Round(time.Millisecond), ticks, sseTickGap, fmtDur(scriptSpan), loadBefore)
	b.Logf("latency      %d deliveries, none lost or twice: p50 %s, p99 %s, max %s (goal p99 < %s: %s); %.0f ticks/s delivered over %s",
		len(all), fmtDur(pct(all, 50)), fmtDur(pct(all, 99)), fmtDur(all[len(all)-1]), sseGoalP99, verdict, rate, fmtDur(window))
	b.Logf("parts        script line → event's \"at\" (stamped as it is stored): p50 %s, p99 %s, max %s; \"at\" → receipt: p50 %s, p99 %s, max %s; one tick's spread over the %d streams (last − first receipt): p50 %s, max %s",
		fmtDur(pct(stored, 50)), fmtDur(pct(stored, 99)), fmtDur(stored[len(stored)-1]),
		fmtDur(pct(feed, 50)), fmtDur(pct(feed, 99)), fmtDur(feed[len(feed)-1]),
		subs, fmtDur(pct(spread, 50)), fmtDur(spread[len(spread)-1]))
	b.Logf("memory/CPU   server RSS: before the streams %.1f MB, with them %.1f MB, max sampled %.1f MB, VmHWM %.1f MB; go → last receipt %s: server %.2f CPU-s (%.0f%% of a core)%s, this process (the clients) %.2f CPU-s, other %.2f CPU-s; machine %.0f%% busy of %d cores",
		rssBase, rssConnected, rssMax, hwmMB, fmtDur(lastReceipt.Sub(goAt)), serverCPU, u.pct(serverCPU), pgPct(u), clientCPU, u.otherCPU, u.machPct, u.cores)
	b.Logf("server log   %d warn/error lines%s; %d events with data in all (ticks and the execution's others); execution %s; load average after %s",
		warns, firstWarn, events, ex.Status, loadAvg())

	cancel()
	done.Wait()
	srv.stop(b)
}

// subscribe follows one stream: it reports its headers with connected,
// then reads events until it has every tick, the stream ends or ctx ends.
// It starts reading once goFile is closed (the server buffers what comes
// before: the stream's first lines).
func subscribe(ctx context.Context, client *http.Client, url string, st *sseStream, ticks int, connected func(), goFile <-chan struct{}) {
	once := sync.OnceFunc(connected)
	defer once()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		st.connectErr = err
		return
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := client.Do(req)
	if err != nil {
		st.connectErr = err
		return
	}
	defer resp.Body.Close()
	st.status = resp.StatusCode
	if resp.StatusCode != http.StatusOK {
		body := make([]byte, 512)
		n, _ := resp.Body.Read(body)
		st.connectErr = fmt.Errorf("%s", bytes.TrimSpace(body[:n]))
		return
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		st.connectErr = fmt.Errorf("content type %q", ct)
		return
	}
	once()
	select {
	case <-goFile:
	case <-ctx.Done():
		return
	}

	rd := bufio.NewReaderSize(resp.Body, 16<<10)
	var (
		event   string
		data    []byte
		at      time.Time // receipt of the data line
		lastID  int64
		lastSeq int
		have    int
		ev      struct {
			ID      int64     `json:"id"`
			At      time.Time `json:"at"`
			Message string    `json:"message"`
		}
	)
	for have < ticks {
		line, err := rd.ReadSlice('\n')
		now := time.Now()
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				st.ended = "a line longer than 16 kB"
			} else if ctx.Err() == nil {
				st.ended = "read: " + err.Error()
			}
			return
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0: // dispatch
			typ := event
			event = ""
			if typ == "reconnect" {
				st.ended = "reconnect event: " + string(data)
				return
			}
			if data == nil {
				continue // an id line alone, or the retry line
			}
			st.events++
			ev.ID, ev.At, ev.Message = 0, time.Time{}, ""
			if err := json.Unmarshal(data, &ev); err != nil {
				st.ended = fmt.Sprintf("bad data %q: %v", data, err)
				return
			}
			if ev.ID <= lastID {
				st.badIDs++
			}
			lastID = ev.ID
			if msg, ok := strings.CutPrefix(ev.Message, "tick "); ok {
				f := strings.Fields(msg)
				if len(f) != 2 {
					st.ended = fmt.Sprintf("bad tick %q", ev.Message)
					return
				}
				seq, err1 := strconv.Atoi(f[0])
				nanos, err2 := strconv.ParseInt(f[1], 10, 64)
				if err1 != nil || err2 != nil || seq < 1 || seq > ticks {
					st.ended = fmt.Sprintf("bad tick %q", ev.Message)
					return
				}
				wrote := time.Unix(0, nanos)
				if st.seen[seq-1] > 0 {
					st.dups++
				} else {
					have++
				}
				st.seen[seq-1]++
				if seq <= lastSeq {
					st.outOfOrder++
				}
				lastSeq = seq
				st.ticks = append(st.ticks, sseTick{seq: seq, latency: at.Sub(wrote), stored: ev.At.Sub(wrote), received: at})
			}
			data = nil
		case line[0] == ':': // comment (heartbeat)
		default:
			name, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			switch string(name) {
			case "event":
				event = string(value)
			case "data":
				data = append(data[:0:0], value...)
				at = now
			}
		}
	}
}

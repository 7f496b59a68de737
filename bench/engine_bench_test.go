// Package bench measures the real pushblaster binary at scale. It holds
// benchmarks only: `go test ./bench/` runs nothing and builds nothing.
//
//	go test -run '^$' -bench EngineScale -benchtime 1x -timeout 60m ./bench/
//
// Results are recorded in docs/BENCHMARKS.md.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/sqlite"
	"github.com/pushblaster/pushblaster/store"
)

// The scenario.
const (
	totalAutomations = 10_000
	dueAutomations   = 1_000 // share one send time T
	dueLead          = 45 * time.Second
	// sendAfterStart is how long after the binary is started T lies.
	sendAfterStart = 90 * time.Second
	// settle is the pause after readiness before the idle sample.
	settle     = 5 * time.Second
	idleWindow = 20 * time.Second
	insertTx   = 500 // automations per insert transaction
	// doneTimeout bounds the wait for the 1,000 executions after T.
	doneTimeout = 10 * time.Minute
)

// binary is the pushblaster binary built by TestMain (empty when no
// benchmark was requested).
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	dir := ""
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		var err error
		dir, err = os.MkdirTemp("", "pushblaster-bench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		binary = filepath.Join(dir, "pushblaster")
		// No -race: the benchmark measures the binary as an operator runs it.
		build := exec.Command("go", "build", "-o", binary, "github.com/pushblaster/pushblaster/cmd/pushblaster")
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: build pushblaster:", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// BenchmarkEngineScale runs `pushblaster serve` on 10,000 automations, of
// which 1,000 share one send time T, and reports startup, idle CPU and RSS,
// and how late the fires and live sends start. Run with -benchtime 1x.
//
// Knobs for investigation, all unset to reproduce the recorded numbers:
//
//	PUSHBLASTER_BENCH_LOG_LEVEL  server log level (default warn)
//	PUSHBLASTER_BENCH_LOG_DIR    keep the server logs and the executions (JSON) here
//	PUSHBLASTER_BENCH_ARGS       extra serve flags, space separated
//	PUSHBLASTER_BENCH_DEADLINE   cancellation_deadline of the 1,000 (default 0s)
//	PUSHBLASTER_BENCH_PG_PARAMS  extra PostgreSQL URL parameters (a=b&c=d)
func BenchmarkEngineScale(b *testing.B) {
	b.Run("postgres", func(b *testing.B) {
		db := testdb.NewPostgres(b)
		runScale(b, postgresEnv(db), func(fn func(*store.Store)) { fn(db.Store) })
	})
	b.Run("sqlite", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "pushblaster.db")
		ctx := context.Background()
		db, err := sqlite.Open(ctx, path)
		if err != nil {
			b.Fatalf("open SQLite: %v", err)
		}
		if _, err := sqlite.Migrate(ctx, db); err != nil {
			db.Close()
			b.Fatalf("migrate SQLite: %v", err)
		}
		// The server needs the file to itself: close it before the start.
		closeOnce := sync.OnceFunc(func() { db.Close() })
		b.Cleanup(closeOnce)
		runScale(b, "PUSHBLASTER_DATABASE_URL=sqlite:"+path, func(fn func(*store.Store)) {
			fn(store.New(sqlite.NewConn(db)))
			closeOnce()
		})
	})
}

// postgresEnv is the server's database setting for db's schema, with
// PUSHBLASTER_BENCH_PG_PARAMS added.
func postgresEnv(db *testdb.DB) string {
	url := testdb.URL()
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	if extra := os.Getenv("PUSHBLASTER_BENCH_PG_PARAMS"); extra != "" {
		url += sep + extra
		sep = "&"
	}
	return "PUSHBLASTER_DATABASE_URL=" + url + sep + "search_path=" + db.Schema
}

// forEachDatabase runs run as sub-benchmarks "postgres" (a schema of its
// own) and "sqlite" (a fresh file that serve creates and migrates), with
// the server's database setting.
func forEachDatabase(b *testing.B, run func(b *testing.B, dbEnv string)) {
	b.Run("postgres", func(b *testing.B) { run(b, postgresEnv(testdb.NewPostgres(b))) })
	b.Run("sqlite", func(b *testing.B) {
		run(b, "PUSHBLASTER_DATABASE_URL=sqlite:"+filepath.Join(b.TempDir(), "pushblaster.db"))
	})
}

// runScale is the whole scenario on one database. withStore hands the
// prepared store to fn and releases it afterwards (SQLite: closes it).
func runScale(b *testing.B, dbEnv string, withStore func(fn func(*store.Store))) {
	if binary == "" {
		b.Fatal("the pushblaster binary was not built (TestMain builds it when -bench is given)")
	}
	ctx := context.Background()
	cancelDeadline := time.Duration(0)
	if v := os.Getenv("PUSHBLASTER_BENCH_DEADLINE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > dueLead {
			b.Fatalf("PUSHBLASTER_BENCH_DEADLINE=%q: want a duration between 0 and %s", v, dueLead)
		}
		cancelDeadline = d
	}
	loadBefore := loadAvg()

	// 1. 10,000 automations: 9,000 far in the future, 1,000 at T.
	var sendAt time.Time
	var insertDur time.Duration
	withStore(func(st *store.Store) {
		start := time.Now()
		// Far away: a day about half a year ahead, 03:MM UTC.
		far := time.Now().UTC().AddDate(0, 6, 0)
		insertBatch(b, ctx, st, totalAutomations-dueAutomations, func(i int) *pb.Automation {
			return automation(fmt.Sprintf("idle-%05d", i), fmt.Sprintf("%d 3 %d %d *", i%60, far.Day(), int(far.Month())), nil)
		})
		// T to the second (6-field cron, seconds first): sendAfterStart
		// after the binary starts, which is right after this insert.
		sendAt = time.Now().UTC().Add(sendAfterStart + 2*time.Second).Truncate(time.Second)
		expr := fmt.Sprintf("%d %d %d %d %d *", sendAt.Second(), sendAt.Minute(), sendAt.Hour(), sendAt.Day(), int(sendAt.Month()))
		lead := dueLead
		insertBatch(b, ctx, st, dueAutomations, func(i int) *pb.Automation {
			a := automation(fmt.Sprintf("due-%05d", i), expr, &lead)
			a.CancellationDeadline = pb.DurationOf(cancelDeadline)
			return a
		})
		insertDur = time.Since(start)
		n, err := st.CountScheduled(ctx)
		if err != nil || n != totalAutomations {
			b.Fatalf("scheduled automations: %d, %v; want %d", n, err, totalAutomations)
		}
	})
	fireAt := sendAt.Add(-dueLead)
	progress("inserted %d automations in %s; T = %s (fire at T-%s)", totalAutomations, insertDur.Round(time.Millisecond),
		sendAt.Format(time.RFC3339), dueLead)

	// 2. Start the server; startup = exec → "listening", and → /readyz 200.
	srv := startServer(b, dbEnv, "first")
	progress("startup: listening after %s, ready after %s (T − ready = %s)", srv.listening.Round(time.Millisecond),
		srv.ready.Round(time.Millisecond), sendAt.Sub(srv.readyAt).Round(time.Second))
	if idleEnd := srv.readyAt.Add(settle + idleWindow); !idleEnd.Add(5 * time.Second).Before(fireAt) {
		b.Fatalf("the server was ready at %s, too late for a %s idle sample before the fire at %s",
			srv.readyAt.Format(time.RFC3339), idleWindow, fireAt.Format(time.RFC3339))
	}

	// 3. Idle: nothing is due for the next minute.
	time.Sleep(time.Until(srv.readyAt.Add(settle)))
	idle := sampleIdle(b, srv.pid(), idleWindow)
	if n := len(srv.listExecutions(b, "", 1)); n != 0 {
		b.Fatalf("%d executions exist after the idle sample; nothing should have fired yet", n)
	}
	progress("idle %s: CPU %.2f%% of one core (max %.1f%% in one second), RSS %.1f MB (max %.1f MB)",
		idleWindow, idle.cpuPct, idle.maxCPUPct, idle.rssMB, idle.maxRSSMB)

	// 4. The burst: 1,000 fires at T − lead, 1,000 live sends at T.
	time.Sleep(time.Until(fireAt.Add(-5 * time.Second)))
	burstTicks0 := cpuTicks(b, srv.pid())
	burstStart := time.Now()
	samples := startSampler(b, srv.pid())
	time.Sleep(time.Until(sendAt))
	deadline := sendAt.Add(doneTimeout)
	for {
		if time.Now().After(deadline) {
			b.Fatalf("not all executions ended %s after T", doneTimeout)
		}
		active := 0
		for _, st := range []string{"scheduled", "running", "awaiting_send"} {
			active += len(srv.listExecutions(b, st, 1))
		}
		if active == 0 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	burstCPU := float64(cpuTicks(b, srv.pid())-burstTicks0) / clkTck()
	burstWall := time.Since(burstStart)
	// Wait for the cleanups too (status is final before cleanup runs).
	var all []*pb.Execution
	for {
		all = srv.allExecutions(b)
		pending := 0
		for _, ex := range all {
			if r := ex.PhaseRecord(pb.PhaseCleanup); r == nil || r.FinishedAt == nil {
				pending++
			}
		}
		if pending == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	peak := readStatus(b, srv.pid())
	series := samples()
	if dir := os.Getenv("PUSHBLASTER_BENCH_LOG_DIR"); dir != "" {
		// Every execution with its phases, for a timeline.
		data, _ := json.Marshal(all)
		_ = os.WriteFile(filepath.Join(dir, strings.ReplaceAll(b.Name(), "/", "_")+"-executions.json"), data, 0o644)
	}

	// 5. Lateness of each of the 1,000 executions.
	if len(all) != dueAutomations {
		b.Fatalf("%d executions, want %d (only the due automations fire)", len(all), dueAutomations)
	}
	var fire, live []time.Duration
	var lastDone, lastCleanup time.Time
	for _, ex := range all {
		if ex.Status != pb.StatusCompleted || !strings.HasPrefix(ex.AutomationName, "due-") || !ex.SendAt.Equal(sendAt) {
			b.Fatalf("execution %d of %q (send time %s): status %s (%s), want completed at T %s",
				ex.ID, ex.AutomationName, ex.SendAt, ex.Status, ex.Reason, sendAt)
		}
		aud, ls, cl := ex.PhaseRecord(pb.PhaseAudience), ex.PhaseRecord(pb.PhaseLiveSend), ex.PhaseRecord(pb.PhaseCleanup)
		if aud == nil || aud.StartedAt == nil || ls == nil || ls.StartedAt == nil || ex.FinishedAt == nil {
			b.Fatalf("execution %d lacks phase records: %+v", ex.ID, ex.Phases)
		}
		if ex.Metrics[pb.MetricSent] != 1 {
			b.Fatalf("execution %d sent %d pushes, want 1 (metrics %v)", ex.ID, ex.Metrics[pb.MetricSent], ex.Metrics)
		}
		fire = append(fire, aud.StartedAt.Sub(ex.AudienceAt))
		live = append(live, ls.StartedAt.Sub(ex.SendAt))
		if ex.FinishedAt.After(lastDone) {
			lastDone = *ex.FinishedAt
		}
		if cl != nil && cl.FinishedAt != nil && cl.FinishedAt.After(lastCleanup) {
			lastCleanup = *cl.FinishedAt
		}
	}
	slices.Sort(fire)
	slices.Sort(live)
	var lastFire time.Time
	for _, ex := range all {
		if t := *ex.PhaseRecord(pb.PhaseAudience).StartedAt; t.After(lastFire) {
			lastFire = t
		}
	}
	fireCPU := series.between(fireAt, lastFire)
	liveCPU := series.between(sendAt, lastDone)

	// 6. SIGTERM, exit 0; then a restart on the same data ("restore").
	srv.stop(b)
	re := startServer(b, dbEnv, "restart")
	re.stop(b)
	progress("restart on the same database (10,000 automations, 1,000 executions): listening after %s, ready after %s",
		re.listening.Round(time.Millisecond), re.ready.Round(time.Millisecond))

	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(srv.listening), "startup_ms")
	b.ReportMetric(ms(srv.ready), "ready_ms")
	b.ReportMetric(ms(re.ready), "restart_ready_ms")
	b.ReportMetric(idle.cpuPct, "idle_cpu_%")
	b.ReportMetric(idle.rssMB, "idle_rss_MB")
	b.ReportMetric(float64(peak.hwmKB)/1024, "peak_rss_MB")
	b.ReportMetric(ms(pct(fire, 50)), "fire_p50_ms")
	b.ReportMetric(ms(pct(fire, 99)), "fire_p99_ms")
	b.ReportMetric(ms(pct(live, 50)), "live_p50_ms")
	b.ReportMetric(ms(pct(live, 99)), "live_p99_ms")
	b.ReportMetric(ms(live[len(live)-1]), "live_max_ms")
	b.ReportMetric(ms(lastDone.Sub(sendAt)), "last_done_ms")
	b.ReportMetric(burstCPU, "burst_cpu_s")

	// Benchmark logs are cut after 10 lines: the summary fits in 9.
	b.Logf("setup        %d automations (inserted in %s), %d at one send time T, lead %s, cancellation_deadline %s; load average before %s",
		totalAutomations, insertDur.Round(time.Millisecond), dueAutomations, dueLead, pb.Duration(cancelDeadline), loadBefore)
	b.Logf("startup      listening %s, /readyz 200 after %s; restart %s / %s", srv.listening.Round(time.Millisecond),
		srv.ready.Round(time.Millisecond), re.listening.Round(time.Millisecond), re.ready.Round(time.Millisecond))
	b.Logf("idle         CPU %.2f%% of one core, RSS %.1f MB", idle.cpuPct, idle.rssMB)
	b.Logf("fire         audience start − audience_at: p50 %s, p99 %s, max %s", fmtDur(pct(fire, 50)), fmtDur(pct(fire, 99)), fmtDur(fire[len(fire)-1]))
	b.Logf("live send    live_send start − T: p50 %s, p99 %s, max %s", fmtDur(pct(live, 50)), fmtDur(pct(live, 99)), fmtDur(live[len(live)-1]))
	b.Logf("completion   last execution completed T+%s, last cleanup T+%s", fmtDur(lastDone.Sub(sendAt)), fmtDur(lastCleanup.Sub(sendAt)))
	b.Logf("burst        %.1f CPU-seconds in %s wall (T−lead−5s until all final); peak RSS (VmHWM) %.1f MB",
		burstCPU, burstWall.Round(time.Second), float64(peak.hwmKB)/1024)
	pgShare := func(u cpuUse) string {
		if u.pgPct < 1 {
			return ""
		}
		return fmt.Sprintf(", postgres %.0f%%", u.pgPct)
	}
	b.Logf("CPU          %% of one core; fires (T−%s … T%+.1fs): server %.0f%%%s, machine %.0f%% busy of %d cores; live (T … T+%.1fs): server %.0f%%%s, machine %.0f%% busy",
		dueLead, lastFire.Sub(sendAt).Seconds(), fireCPU.procPct, pgShare(fireCPU), fireCPU.sysPct, fireCPU.cores,
		lastDone.Sub(sendAt).Seconds(), liveCPU.procPct, pgShare(liveCPU), liveCPU.sysPct)
	warns, firstWarn := srv.warnLines()
	if firstWarn != "" {
		firstWarn = fmt.Sprintf(", first: %.300s", firstWarn)
	}
	b.Logf("server log   %d warn/error lines (level %s)%s; load average after the run: %s", warns, logLevel(), firstWarn, loadAvg())
}

// automation is a normalised automation with a one-recipient static
// audience, no test audience and the dry-run provider.
func automation(name, expr string, lead *time.Duration) *pb.Automation {
	a := &pb.Automation{
		Name:     name,
		Schedule: pb.Schedule{Cron: expr, Timezone: "UTC"},
		Audience: pb.Audience{Type: pb.AudienceStatic, Recipients: []pb.Recipient{{UserID: "u-" + name, Token: "token-" + name}}},
		Message:  pb.Message{Title: "Benchmark", Body: "scale benchmark " + name},
		Delivery: pb.Delivery{Provider: pb.ProviderLog},
	}
	if lead != nil {
		a.LeadTime = pb.DurationOf(*lead)
	}
	return a
}

// insertBatch stores n automations, insertTx per transaction, each with
// its first schedule (as the API computes it: the first send time whose
// audience phase is still ahead).
func insertBatch(b *testing.B, ctx context.Context, st *store.Store, n int, mk func(int) *pb.Automation) {
	now := time.Now()
	for lo := 0; lo < n; lo += insertTx {
		err := st.InTx(ctx, func(tx *store.Tx) error {
			for i := lo; i < min(lo+insertTx, n); i++ {
				a := mk(i)
				if err := a.Normalize(); err != nil {
					return err
				}
				sched, err := a.ParsedSchedule()
				if err != nil {
					return err
				}
				send := store.Canon(sched.Next(now.Add(a.Lead()).Add(-time.Nanosecond), a.Location()))
				if send.IsZero() {
					return fmt.Errorf("%s: cron %q never fires", a.Name, a.Schedule.Cron)
				}
				fire := send.Add(-a.Lead())
				if err := tx.InsertAutomation(ctx, a, store.Schedule{SendAt: &send, FireAt: &fire}, now); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatalf("insert automations: %v", err)
		}
	}
}

// server is a running `pushblaster serve`.
type server struct {
	cmd       *exec.Cmd
	url       string
	logPath   string
	started   time.Time
	listening time.Duration // exec → "listening on" on stdout
	ready     time.Duration // exec → first 200 from /readyz
	readyAt   time.Time
	done      chan error
	stdout    chan string
	client    *http.Client
}

// progress reports a step while the benchmark runs (with -v).
func progress(format string, args ...any) {
	if testing.Verbose() {
		fmt.Printf("    bench: "+format+"\n", args...)
	}
}

func logLevel() string {
	if l := os.Getenv("PUSHBLASTER_BENCH_LOG_LEVEL"); l != "" {
		return l
	}
	return "warn"
}

func startServer(b *testing.B, dbEnv, tag string) *server {
	dir := os.Getenv("PUSHBLASTER_BENCH_LOG_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	logPath := filepath.Join(dir, strings.ReplaceAll(b.Name(), "/", "_")+"-"+tag+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	args := []string{"serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", logLevel()}
	args = append(args, strings.Fields(os.Getenv("PUSHBLASTER_BENCH_ARGS"))...)
	cmd := exec.Command(binary, args...)
	// Only the database comes from the environment: a PUSHBLASTER_*
	// variable of the caller's would change what is measured.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PUSHBLASTER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, dbEnv)
	cmd.Stderr = logFile
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	s := &server{cmd: cmd, logPath: logPath, done: make(chan error, 1), stdout: make(chan string, 16),
		client: &http.Client{Timeout: 2 * time.Minute}}
	s.started = time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.stdout <- sc.Text()
		}
		close(s.stdout)
	}()
	go func() { s.done <- cmd.Wait(); logFile.Close() }()
	b.Cleanup(func() {
		select {
		case err := <-s.done:
			s.done <- err
		default:
			_ = cmd.Process.Kill()
			<-s.done
		}
	})
	timeout := time.After(2 * time.Minute)
	for s.url == "" {
		select {
		case line, ok := <-s.stdout:
			if !ok {
				s.fail(b, "the server's stdout closed before it listened")
			}
			if i := strings.Index(line, "listening on http://"); i >= 0 {
				s.listening = time.Since(s.started)
				s.url = strings.Fields(line[i+len("listening on "):])[0]
			}
		case err := <-s.done:
			s.done <- err
			s.fail(b, fmt.Sprintf("the server exited before it listened: %v", err))
		case <-timeout:
			s.fail(b, "the server did not listen within 2 minutes")
		}
	}
	for {
		resp, err := s.client.Get(s.url + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.readyAt = time.Now()
				s.ready = s.readyAt.Sub(s.started)
				break
			}
		}
		if time.Since(s.started) > 2*time.Minute {
			s.fail(b, fmt.Sprintf("/readyz not 200 within 2 minutes (last: %v)", err))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return s
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// fail stops the benchmark with the tail of the server's log.
func (s *server) fail(b *testing.B, msg string) {
	b.Helper()
	data, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	b.Fatalf("%s\nserver log %s (last lines):\n%s", msg, s.logPath, strings.Join(lines, "\n"))
}

// warnLines counts the log lines at warn level or above and returns the
// first one.
func (s *server) warnLines() (int, string) {
	f, err := os.Open(s.logPath)
	if err != nil {
		return -1, err.Error()
	}
	defer f.Close()
	n, first := 0, ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
			if n == 0 {
				first = line
			}
			n++
		}
	}
	return n, first
}

// stop sends SIGTERM and requires a clean exit.
func (s *server) stop(b *testing.B) {
	b.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			s.fail(b, fmt.Sprintf("after SIGTERM the server exited with %v, want 0", err))
		}
	case <-time.After(90 * time.Second):
		s.fail(b, "the server did not exit within 90 s of SIGTERM")
	}
	stopped := false
	for line := range s.stdout {
		stopped = stopped || strings.Contains(line, "pushblaster stopped")
	}
	if !stopped {
		s.fail(b, `the server exited without printing "pushblaster stopped"`)
	}
}

// listExecutions returns up to limit executions (of one status, if given).
func (s *server) listExecutions(b *testing.B, status string, limit int) []*pb.Execution {
	list, _ := s.executionPage(b, status, limit, 0)
	return list
}

func (s *server) executionPage(b *testing.B, status string, limit int, before int64) ([]*pb.Execution, int64) {
	b.Helper()
	u := fmt.Sprintf("%s/api/executions?limit=%d", s.url, limit)
	if status != "" {
		u += "&status=" + status
	}
	if before > 0 {
		u += fmt.Sprintf("&before_id=%d", before)
	}
	resp, err := s.client.Get(u)
	if err != nil {
		s.fail(b, fmt.Sprintf("GET %s: %v", u, err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		s.fail(b, fmt.Sprintf("GET %s: %d %s", u, resp.StatusCode, body))
	}
	var page struct {
		Executions   []*pb.Execution `json:"executions"`
		NextBeforeID int64           `json:"next_before_id"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		s.fail(b, fmt.Sprintf("GET %s: %v", u, err))
	}
	return page.Executions, page.NextBeforeID
}

// allExecutions pages through every execution, with its phases.
func (s *server) allExecutions(b *testing.B) []*pb.Execution {
	var all []*pb.Execution
	var before int64
	for {
		page, next := s.executionPage(b, "", 1000, before)
		all = append(all, page...)
		if next == 0 {
			return all
		}
		before = next
	}
}

// idleSample is the process's cost while nothing is due.
type idleSample struct {
	cpuPct, maxCPUPct float64 // % of one core: mean, and the busiest second
	rssMB, maxRSSMB   float64 // VmRSS: mean and max of the samples
}

func sampleIdle(b *testing.B, pid int, d time.Duration) idleSample {
	var s idleSample
	start := time.Now()
	t0 := cpuTicks(b, pid)
	prev, prevAt := t0, start
	var rssSum float64
	n := 0
	for time.Since(start) < d {
		time.Sleep(time.Second)
		now := time.Now()
		t := cpuTicks(b, pid)
		if p := float64(t-prev) / clkTck() / now.Sub(prevAt).Seconds() * 100; p > s.maxCPUPct {
			s.maxCPUPct = p
		}
		prev, prevAt = t, now
		rss := float64(readStatus(b, pid).rssKB) / 1024
		rssSum += rss
		n++
		s.maxRSSMB = max(s.maxRSSMB, rss)
	}
	s.cpuPct = float64(prev-t0) / clkTck() / prevAt.Sub(start).Seconds() * 100
	s.rssMB = rssSum / float64(n)
	return s
}

// cpuTicks is utime+stime of pid, in clock ticks.
func cpuTicks(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatalf("read /proc/%d/stat: %v", pid, err)
	}
	s := string(data)
	// Fields after "(comm)": state is field 3, utime 14, stime 15.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ut, err1 := strconv.ParseInt(f[14-3], 10, 64)
	st, err2 := strconv.ParseInt(f[15-3], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("parse /proc/%d/stat: %q", pid, s)
	}
	return ut + st
}

var clkTck = sync.OnceValue(func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100 // USER_HZ on Linux
})

type procStatus struct{ rssKB, hwmKB int64 }

func readStatus(b *testing.B, pid int) procStatus {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	var ps procStatus
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			ps.rssKB = v
		case "VmHWM:":
			ps.hwmKB = v
		}
	}
	return ps
}

// pct is the nearest-rank percentile of sorted values.
func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func fmtDur(d time.Duration) string {
	if d < time.Second && d > -time.Second {
		return d.Round(time.Microsecond * 100).String()
	}
	return d.Round(time.Millisecond).String()
}

// cpuSeries is the server's and the machine's CPU counters over time.
type cpuSeries []cpuPoint

type cpuPoint struct {
	at        time.Time
	proc      int64 // server utime+stime, clock ticks
	pg        int64 // all postgres processes on this machine, clock ticks
	busy, all int64 // machine, clock ticks summed over all CPUs
	cores     int
}

// startSampler samples every 200 ms until the returned func is called,
// which returns the series.
func startSampler(b *testing.B, pid int) func() cpuSeries {
	var (
		mu     sync.Mutex
		series cpuSeries
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	sample := func() {
		busy, all, cores := machineTicks()
		p := cpuPoint{at: time.Now(), proc: cpuTicks(b, pid), pg: postgresTicks(), busy: busy, all: all, cores: cores}
		mu.Lock()
		series = append(series, p)
		mu.Unlock()
	}
	sample()
	go func() {
		defer close(done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				sample()
			}
		}
	}()
	return func() cpuSeries {
		close(stop)
		<-done
		sample()
		mu.Lock()
		defer mu.Unlock()
		return series
	}
}

type cpuUse struct {
	procPct float64 // server, % of one core
	pgPct   float64 // postgres processes, % of one core
	sysPct  float64 // machine, % of all cores
	cores   int
}

// between is the CPU use from the last sample at or before from to the
// first at or after to.
func (s cpuSeries) between(from, to time.Time) cpuUse {
	if len(s) < 2 {
		return cpuUse{}
	}
	i, j := 0, len(s)-1
	for k, p := range s {
		if !p.at.After(from) {
			i = k
		}
	}
	for k := len(s) - 1; k >= 0; k-- {
		if !s[k].at.Before(to) {
			j = k
		}
	}
	if j <= i {
		j = min(i+1, len(s)-1)
		i = j - 1
	}
	a, z := s[i], s[j]
	u := cpuUse{cores: z.cores}
	if secs := z.at.Sub(a.at).Seconds(); secs > 0 {
		u.procPct = float64(z.proc-a.proc) / clkTck() / secs * 100
		u.pgPct = float64(z.pg-a.pg) / clkTck() / secs * 100
	}
	if z.all > a.all {
		u.sysPct = float64(z.busy-a.busy) / float64(z.all-a.all) * 100
	}
	return u
}

// machineTicks reads the "cpu" line of /proc/stat: busy and total ticks,
// and the number of CPUs.
func machineTicks() (busy, all int64, cores int) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 4 && f[0] == "cpu":
			for k, v := range f[1:] {
				n, _ := strconv.ParseInt(v, 10, 64)
				if k >= 8 { // guest time is already in user time
					break
				}
				all += n
				if k != 3 && k != 4 { // idle, iowait
					busy += n
				}
			}
		case len(f) > 0 && strings.HasPrefix(f[0], "cpu"):
			cores++
		}
	}
	return busy, all, cores
}

// postgresTicks sums utime+stime of the processes named postgres (the
// local server, if any; other clients' work included).
func postgresTicks() int64 {
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	var sum int64
	for _, p := range dirs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(data)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || s[open+1:end] != "postgres" {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) > 12 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			sum += ut + st
		}
	}
	return sum
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

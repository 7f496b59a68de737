package bench

// BenchmarkDelivery: a live send of 100,000 recipients through the real
// binary and the fcm provider to the fake FCM (cmd/fakefcm) over HTTP/2 TLS
// on loopback, 20 ms of latency per request, and h2load against a fake of
// the same build and settings for the machine's raw request rate. Run with
//
//	go test -run '^$' -bench Delivery -benchtime 1x -timeout 30m ./bench/
//
// Results are recorded in docs/BENCHMARKS.md. The helpers (TestMain's build,
// startServer, the /proc readers) are those of engine_bench_test.go, the
// API helper and the RSS sampler those of audience_bench_test.go.

import (
	"bufio"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

const (
	// deliveryRecipients is the audience of the live send, and the number
	// of requests of each h2load try.
	deliveryRecipients = 100_000
	// deliveryLatency is what the fake adds to every send request: FCM's
	// round trip.
	deliveryLatency = 20 * time.Millisecond
	// deliveryLead is the automation's lead time and how far ahead the
	// manual run's send time lies: the audience phase (100,000 CSV rows)
	// must end before it, so that only the live send is measured.
	deliveryLead = 45 * time.Second
	// deliveryDone bounds the wait for the execution after its send time.
	deliveryDone = 10 * time.Minute
	// The goals of the issue.
	deliveryGoalPGSendsPerSec = 10_000
	deliveryGoalRawShare      = 0.5
	// The message of every push, and of h2load's request body.
	deliveryTitle = "Your order has shipped"
	deliveryBody  = "Track it in the app"
)

// deliveryServeArgs are the serve flags of the measured send besides the
// provider's: no rate limit, so that only the machine limits the rate.
var deliveryServeArgs = []string{"--fcm-rate", "0"}

// h2loadTries are the h2load settings tried; the best rate counts. The fake
// allows 100 streams per connection (as FCM), so -m above 100 changes
// nothing; -c is the connections.
var h2loadTries = []string{
	"-c 8 -m 100 -t 2",
	"-c 16 -m 100 -t 2",
	"-c 32 -m 100 -t 2",
	"-c 8 -m 100 -t 1",
}

// rawRate is h2load's best rate, once measured in this process (0: not
// measured: h2load missing, or its sub-benchmark not selected).
var rawRate struct {
	sync.Mutex
	reqPerSec float64
	args      string
	why       string // why it is 0
}

// BenchmarkDelivery measures h2load's request rate against the fake FCM,
// then one live send of 100,000 recipients through `pushblaster serve` on
// each database, and reports sends/s, the ratio to h2load's rate, peak RSS
// and CPU per 1,000 sends. Run with -benchtime 1x.
//
// Knobs, unset to reproduce the recorded numbers: those of
// BenchmarkEngineScale (PUSHBLASTER_BENCH_LOG_LEVEL, _LOG_DIR, _ARGS: extra
// serve flags such as --send-chunk-size, last one wins; _PG_PARAMS) and
//
//	PUSHBLASTER_BENCH_H2LOAD_ARGS  h2load settings to try instead of h2loadTries, separated by ";"
//	PUSHBLASTER_BENCH_PERF_DIR     record the server with `perf record -g` during the live send, into DIR
func BenchmarkDelivery(b *testing.B) {
	b.Run("h2load", func(b *testing.B) { runH2load(b) })
	forEachDatabase(b, runDelivery)
}

// fakeBinary builds cmd/fakefcm next to the pushblaster binary (TestMain
// removes that directory at the end).
var fakeBinary = sync.OnceValues(func() (string, error) {
	if binary == "" {
		return "", errors.New("the pushblaster binary was not built (TestMain builds it when -bench is given)")
	}
	bin := filepath.Join(filepath.Dir(binary), "fakefcm")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/pushblaster/pushblaster/cmd/fakefcm").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build fakefcm: %v\n%s", err, out)
	}
	return bin, nil
})

// fake is a running fakefcm.
type fake struct {
	cmd       *exec.Cmd
	url       string
	dir       string // its files: creds.json, cert.pem, token.txt, stats.json, stderr.log
	done      chan error
	stopped   bool
	statsPath string
}

// fakeStats is fakefcm's --stats-file.
type fakeStats struct {
	Requests      int `json:"requests"`
	Accepted      int `json:"accepted"`
	TokenRequests int `json:"token_requests"`
	PeakInFlight  int `json:"peak_in_flight"`
	Expected      *struct {
		Tokens   int      `json:"tokens"`
		Once     int      `json:"once"`
		Missing  int      `json:"missing"`
		Repeated int      `json:"repeated"`
		Examples []string `json:"examples"`
	} `json:"expected"`
}

// startFake runs fakefcm with deliveryLatency, its key file, certificate,
// an access token and a stats file in dir, plus args.
func startFake(b *testing.B, dir string, args ...string) *fake {
	bin, err := fakeBinary()
	if err != nil {
		b.Fatal(err)
	}
	f := &fake{dir: dir, done: make(chan error, 1), statsPath: filepath.Join(dir, "stats.json")}
	stderr, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		b.Fatal(err)
	}
	all := append([]string{"--latency", deliveryLatency.String(),
		"--credentials-out", filepath.Join(dir, "creds.json"), "--cert-out", filepath.Join(dir, "cert.pem"),
		"--token-out", filepath.Join(dir, "token.txt"), "--stats-file", f.statsPath}, args...)
	f.cmd = exec.Command(bin, all...)
	f.cmd.Stderr = stderr
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			urls <- sc.Text()
		}
		close(urls)
		io.Copy(io.Discard, out)
	}()
	go func() { f.done <- f.cmd.Wait(); stderr.Close() }()
	b.Cleanup(func() {
		if !f.stopped {
			_ = f.cmd.Process.Kill()
			<-f.done
		}
	})
	select {
	case u, ok := <-urls:
		if !ok || !strings.HasPrefix(u, "https://") {
			f.fail(b, fmt.Sprintf("fakefcm printed %q instead of its URL", u))
		}
		f.url = u
	case <-time.After(time.Minute):
		f.fail(b, "fakefcm printed no URL within a minute")
	}
	return f
}

func (f *fake) pid() int { return f.cmd.Process.Pid }

func (f *fake) file(name string) string { return filepath.Join(f.dir, name) }

func (f *fake) fail(b *testing.B, msg string) {
	b.Helper()
	data, _ := os.ReadFile(f.file("stderr.log"))
	b.Fatalf("%s\nfakefcm stderr:\n%.3000s", msg, data)
}

// stop sends SIGTERM, requires a clean exit and returns the counters.
func (f *fake) stop(b *testing.B) fakeStats {
	b.Helper()
	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	select {
	case err := <-f.done:
		f.stopped = true
		if err != nil {
			f.fail(b, fmt.Sprintf("after SIGTERM fakefcm exited with %v, want 0", err))
		}
	case <-time.After(time.Minute):
		f.fail(b, "fakefcm did not exit within a minute of SIGTERM")
	}
	var st fakeStats
	data, err := os.ReadFile(f.statsPath)
	if err == nil {
		err = json.Unmarshal(data, &st)
	}
	if err != nil {
		f.fail(b, fmt.Sprintf("fakefcm stats: %v", err))
	}
	return st
}

// procTicks is utime+stime of pid in clock ticks, or -1 once it is gone
// (it runs off the benchmark's goroutine: no b.Fatal).
func procTicks(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

// procPoint is the CPU of some processes, of the PostgreSQL processes
// working for one of them and of the machine at one instant. The
// measurements take two points, one at each end of the window: continuous
// sampling of every process in /proc costs the machine a few per cent by
// itself.
type procPoint struct {
	at        time.Time
	procs     []int64       // utime+stime of each watched pid, clock ticks
	pg        map[int]int64 // postgres pid → utime+stime
	busy, all int64
	cores     int
}

// procSample reads the counters of pids; pgClient (0: none) names the
// process whose PostgreSQL backends are counted, with PostgreSQL's own
// background processes, but not the backends of other clients (other test
// runs on the same server).
func procSample(pgClient int, pids ...int) procPoint {
	p := procPoint{}
	if pgClient > 0 {
		p.pg = postgresTicksFor(pgClient)
	}
	for _, pid := range pids {
		p.procs = append(p.procs, procTicks(pid))
	}
	p.busy, p.all, p.cores = machineTicks()
	p.at = time.Now()
	return p
}

// backendPort is the client port in a backend's process title, e.g.
// "postgres: 15/main: postgres test 127.0.0.1(59116) UPDATE".
var backendPort = regexp.MustCompile(`\((\d+)\)`)

// postgresTicksFor is utime+stime of each postgres process that is a
// background process or a backend of a connection of pid.
func postgresTicksFor(pid int) map[int]int64 {
	ports := clientPorts(pid)
	out := map[int]int64{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := string(data)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || s[open+1:end] != "postgres" {
			continue
		}
		dir := filepath.Dir(path)
		title, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		if m := backendPort.FindSubmatch(title); m != nil && !ports[string(m[1])] {
			continue // another client's backend
		}
		f := strings.Fields(s[end+1:])
		if len(f) > 12 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			n, _ := strconv.Atoi(filepath.Base(dir))
			out[n] = ut + st
		}
	}
	return out
}

// clientPorts are the local TCP ports (decimal) of pid's sockets.
func clientPorts(pid int) map[string]bool {
	inodes := map[string]bool{}
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	ports := map[string]bool{}
	for _, tbl := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, tbl))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			if i := strings.LastIndexByte(f[1], ':'); i >= 0 {
				if port, err := strconv.ParseInt(f[1][i+1:], 16, 32); err == nil {
					ports[strconv.FormatInt(port, 10)] = true
				}
			}
		}
	}
	return ports
}

// procUse is the CPU used between two points.
type procUse struct {
	secs     float64   // wall time between the points
	procCPU  []float64 // CPU-seconds of each watched pid
	pgCPU    float64   // CPU-seconds of the postgres processes
	busyCPU  float64   // CPU-seconds of the whole machine
	cores    int
	machPct  float64 // machine busy, % of all cores
	otherCPU float64 // CPU-seconds of everything else
}

func cpuBetween(a, z procPoint) procUse {
	u := procUse{secs: z.at.Sub(a.at).Seconds(), cores: z.cores}
	// A backend that exited between the points is lost; one that started
	// counts from its start.
	for pid, t := range z.pg {
		u.pgCPU += float64(t-a.pg[pid]) / clkTck()
	}
	for k := range a.procs {
		if a.procs[k] >= 0 && z.procs[k] >= 0 {
			u.procCPU = append(u.procCPU, float64(z.procs[k]-a.procs[k])/clkTck())
		} else {
			u.procCPU = append(u.procCPU, 0)
		}
	}
	if z.all > a.all {
		u.machPct = float64(z.busy-a.busy) / float64(z.all-a.all) * 100
		// /proc/stat's "cpu" line sums the ticks of every CPU.
		u.busyCPU = float64(z.busy-a.busy) / clkTck()
	}
	u.otherCPU = u.busyCPU - u.pgCPU
	for _, c := range u.procCPU {
		u.otherCPU -= c
	}
	u.otherCPU = max(u.otherCPU, 0)
	return u
}

// pct is CPU-seconds as % of one core over the window.
func (u procUse) pct(cpu float64) float64 {
	if u.secs <= 0 {
		return 0
	}
	return cpu / u.secs * 100
}

// randomToken is an FCM registration token as devices get them: 163
// characters, an instance id, ":APA91b" and a base64url tail.
func randomToken() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	buf := make([]byte, 22+134)
	rand.Read(buf)
	for i, c := range buf {
		buf[i] = alphabet[c&63]
	}
	return string(buf[:22]) + ":APA91b" + string(buf[22:])
}

// h2loadResult is one h2load run.
type h2loadResult struct {
	args       string
	reqPerSec  float64
	secs       float64
	ok         int     // 2xx responses
	h2loadCPU  float64 // CPU-seconds of h2load
	fakeCPU    float64 // CPU-seconds of the fake
	machinePct float64 // machine busy, % of all cores
	otherCPU   float64 // CPU-seconds of everything else
}

var (
	h2loadFinished = regexp.MustCompile(`finished in ([0-9.]+)(ms|s), ([0-9.]+) req/s`)
	h2loadStatus   = regexp.MustCompile(`status codes: ([0-9]+) 2xx`)
)

// runH2load measures the fake's request rate with h2load: deliveryRecipients
// requests per try, each a valid send with a valid access token.
func runH2load(b *testing.B) {
	rawRate.Lock()
	rawRate.reqPerSec, rawRate.args, rawRate.why = 0, "", "h2load did not finish"
	rawRate.Unlock()
	h2load, err := exec.LookPath("h2load")
	if err != nil {
		why := "h2load is not installed: the raw request rate is NOT measured (install it with `apt-get install nghttp2-client` " +
			"on Debian/Ubuntu, `brew install nghttp2` on macOS, and run again)"
		rawRate.Lock()
		rawRate.why = "not measured: h2load is not installed"
		rawRate.Unlock()
		if !testing.Verbose() {
			// go test prints a skipped benchmark only with -v: say it
			// anyway, a skip must not pass for a result.
			fmt.Printf("--- SKIP: %s: %s\n", b.Name(), why)
		}
		b.Skip(why)
	}
	tries := h2loadTries
	if v := os.Getenv("PUSHBLASTER_BENCH_H2LOAD_ARGS"); v != "" {
		tries = nil
		for _, t := range strings.Split(v, ";") {
			if t = strings.TrimSpace(t); t != "" {
				tries = append(tries, t)
			}
		}
	}
	loadBefore := loadAvg()
	dir := b.TempDir()
	f := startFake(b, dir)
	tok, err := os.ReadFile(f.file("token.txt"))
	if err != nil {
		f.fail(b, err.Error())
	}
	body := fmt.Sprintf(`{"message":{"token":%q,"notification":{"title":%q,"body":%q}}}`, randomToken(), deliveryTitle, deliveryBody)
	bodyPath := filepath.Join(dir, "body.json")
	if err := os.WriteFile(bodyPath, []byte(body), 0o644); err != nil {
		b.Fatal(err)
	}
	sendURL := f.url + "/v1/projects/fake-project/messages:send"
	var results []h2loadResult
	sent := 0
	for _, t := range tries {
		args := append([]string{"-n", strconv.Itoa(deliveryRecipients), "-d", bodyPath,
			"-H", "authorization: Bearer " + strings.TrimSpace(string(tok)),
			"-H", "content-type: application/json; charset=UTF-8"}, strings.Fields(t)...)
		args = append(args, sendURL)
		cmd := exec.Command(h2load, args...)
		p0 := procSample(0, f.pid())
		out, err := cmd.CombinedOutput()
		use := cpuBetween(p0, procSample(0, f.pid()))
		sent += deliveryRecipients
		if err != nil {
			b.Fatalf("h2load %s: %v\n%s", t, err, out)
		}
		m, s := h2loadFinished.FindSubmatch(out), h2loadStatus.FindSubmatch(out)
		if m == nil || s == nil {
			b.Fatalf("h2load %s: cannot read its summary:\n%s", t, out)
		}
		r := h2loadResult{args: t, h2loadCPU: (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds(),
			fakeCPU: use.procCPU[0], machinePct: use.machPct}
		r.secs, _ = strconv.ParseFloat(string(m[1]), 64)
		if string(m[2]) == "ms" {
			r.secs /= 1000
		}
		r.reqPerSec, _ = strconv.ParseFloat(string(m[3]), 64)
		r.ok, _ = strconv.Atoi(string(s[1]))
		r.otherCPU = max(0, use.busyCPU-r.fakeCPU-r.h2loadCPU)
		if r.ok != deliveryRecipients {
			b.Fatalf("h2load %s: %d of %d requests answered 2xx:\n%s", t, r.ok, deliveryRecipients, out)
		}
		progress("h2load %s: %.0f req/s in %.2f s; CPU-s: fake %.1f, h2load %.1f, other %.1f; machine %.0f%% busy",
			t, r.reqPerSec, r.secs, r.fakeCPU, r.h2loadCPU, r.otherCPU, r.machinePct)
		results = append(results, r)
	}
	st := f.stop(b)
	if st.Accepted != sent || st.Requests != sent {
		b.Fatalf("the fake counted %d requests and accepted %d; h2load sent %d", st.Requests, st.Accepted, sent)
	}
	best := results[0]
	for _, r := range results[1:] {
		if r.reqPerSec > best.reqPerSec {
			best = r
		}
	}
	rawRate.Lock()
	rawRate.reqPerSec, rawRate.args, rawRate.why = best.reqPerSec, best.args, ""
	rawRate.Unlock()

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(best.reqPerSec, "req/s")
	b.ReportMetric(best.fakeCPU/float64(deliveryRecipients)*1000, "fake_cpu_s/1000req")
	b.Logf("setup        h2load %d valid sends per try (%d-byte body, one access token from the fake's /token), fake latency %s, "+
		"100 streams per connection; load average before %s", deliveryRecipients, len(body), deliveryLatency, loadBefore)
	for _, r := range results {
		mark := ""
		if r == best {
			mark = "  ← best"
		}
		b.Logf("h2load %-17s %6.0f req/s in %5.2f s; CPU %% of one core: fake %3.0f%%, h2load %3.0f%%, other %3.0f%%; machine %3.0f%% busy%s",
			r.args, r.reqPerSec, r.secs, 100*r.fakeCPU/r.secs, 100*r.h2loadCPU/r.secs, 100*r.otherCPU/r.secs, r.machinePct, mark)
	}
	_, _, cores := machineTicks()
	own := (best.fakeCPU + best.h2loadCPU) / float64(deliveryRecipients)
	b.Logf("fake         %d requests, %d accepted, all 2xx; best try: CPU-s per 1,000 requests fake %.3f, h2load %.3f: "+
		"CPU bound on %d idle cores ≈ %.0f req/s; load average after %s", st.Requests, st.Accepted,
		best.fakeCPU/float64(deliveryRecipients)*1000, best.h2loadCPU/float64(deliveryRecipients)*1000, cores, float64(cores)/own, loadAvg())
}

// deliveryResult is one measured live send.
type deliveryResult struct {
	sendAt               time.Time
	liveStart, liveEnd   time.Time // the live_send phase record
	done                 time.Time // the execution's finished_at
	audienceDur          time.Duration
	use                  procUse // live start → done; procCPU: server, fake
	hwmMB, rssMaxMB      float64
	metrics              map[string]int64
	fake                 fakeStats
	serverCPUs, fakeCPUs float64
	perfData             string
}

func (r deliveryResult) secs() float64        { return r.done.Sub(r.liveStart).Seconds() }
func (r deliveryResult) sendsPerSec() float64 { return deliveryRecipients / r.secs() }

// runDelivery is the live send on one database.
func runDelivery(b *testing.B, dbEnv string) {
	if binary == "" {
		b.Fatal("the pushblaster binary was not built (TestMain builds it when -bench is given)")
	}
	loadBefore := loadAvg()
	dir := b.TempDir()
	if strings.ContainsAny(dir, " \t\n") {
		b.Fatalf("the temporary directory %q contains white space (PUSHBLASTER_BENCH_ARGS is split on it)", dir)
	}

	// The audience: a CSV file of 100,000 unique recipients, and their
	// tokens for the fake to check.
	dataDir, fakeDir := filepath.Join(dir, "data"), filepath.Join(dir, "fake")
	for _, d := range []string{dataDir, fakeDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	var csv, toks strings.Builder
	csv.WriteString("user_id,token\n")
	for i := range deliveryRecipients {
		t := randomToken()
		fmt.Fprintf(&csv, "user-%07d,%s\n", i, t)
		toks.WriteString(t + "\n")
	}
	tokensPath := filepath.Join(dir, "tokens.txt")
	if err := os.WriteFile(filepath.Join(dataDir, "audience.csv"), []byte(csv.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(tokensPath, []byte(toks.String()), 0o644); err != nil {
		b.Fatal(err)
	}

	f := startFake(b, fakeDir, "--expect-tokens", tokensPath)
	userArgs := strings.TrimSpace(os.Getenv("PUSHBLASTER_BENCH_ARGS"))
	b.Setenv("PUSHBLASTER_BENCH_ARGS", strings.Join(append([]string{"--data-dir", dataDir,
		"--fcm-credentials", f.file("creds.json"), "--fcm-endpoint", f.url, "--fcm-ca-file", f.file("cert.pem")},
		deliveryServeArgs...), " ")+" "+userArgs)
	srv := startServer(b, dbEnv, "delivery")

	// The automation: never due by itself; run by hand with the send
	// time deliveryLead ahead.
	far := time.Now().UTC().AddDate(0, 6, 0)
	var a pb.Automation
	srv.apiJSON(b, http.MethodPost, "/api/automations", map[string]any{
		"name":                  "delivery-100k",
		"schedule":              map[string]any{"cron": fmt.Sprintf("0 3 %d %d *", far.Day(), int(far.Month())), "timezone": "UTC"},
		"lead_time":             pb.Duration(deliveryLead).String(),
		"cancellation_deadline": "0s",
		"audience":              map[string]any{"type": "csv", "file": "audience.csv", "max_growth": 0},
		"message":               map[string]any{"title": deliveryTitle, "body": deliveryBody},
		"delivery":              map[string]any{"provider": "fcm"},
	}, http.StatusCreated, &a)
	rss := startRSSSampler(srv.pid())
	var ex pb.Execution
	srv.apiJSON(b, http.MethodPost, fmt.Sprintf("/api/automations/%d/run", a.ID), map[string]any{}, http.StatusCreated, &ex)
	res := deliveryResult{sendAt: ex.SendAt}
	progress("execution %d: send time %s (in %s)", ex.ID, ex.SendAt.Format(time.RFC3339), time.Until(ex.SendAt).Round(time.Second))

	// Wait for the end: the CPU counters are read just before the send
	// time and as soon as the execution is seen final (polled every
	// 100 ms). The poll lists the automation's executions: GET
	// /api/executions/{id} of a running live send counts its ledger
	// (live progress), which at 10 looks a second would add to what is
	// measured. Profile the live send if asked.
	var (
		perf   *exec.Cmd
		p0, p1 procPoint
	)
	deadline := ex.SendAt.Add(deliveryDone)
	for !ex.Status.Final() {
		if p0.at.IsZero() && time.Until(ex.SendAt) < 200*time.Millisecond {
			time.Sleep(time.Until(ex.SendAt.Add(-50 * time.Millisecond)))
			if os.Getenv("PUSHBLASTER_BENCH_PERF_DIR") != "" {
				perf, res.perfData = startPerf(b, srv.pid())
			}
			p0 = procSample(srv.pid(), srv.pid(), f.pid())
		}
		if time.Now().After(deadline) {
			srv.fail(b, fmt.Sprintf("execution %d is still %s %s after its send time", ex.ID, ex.Status, deliveryDone))
		}
		pause := 100 * time.Millisecond
		if p0.at.IsZero() {
			pause = min(pause, max(time.Until(ex.SendAt.Add(-150*time.Millisecond)), time.Millisecond))
		}
		time.Sleep(pause)
		var page struct {
			Executions []*pb.Execution `json:"executions"`
		}
		srv.apiJSON(b, http.MethodGet, fmt.Sprintf("/api/executions?automation_id=%d&limit=1", a.ID), nil, http.StatusOK, &page)
		if len(page.Executions) != 1 || page.Executions[0].ID != ex.ID {
			b.Fatalf("GET /api/executions?automation_id=%d&limit=1: %d executions, want execution %d", a.ID, len(page.Executions), ex.ID)
		}
		ex.Status = page.Executions[0].Status
	}
	p1 = procSample(srv.pid(), srv.pid(), f.pid())
	if perf != nil {
		_ = perf.Process.Signal(os.Interrupt)
		_ = perf.Wait()
	}
	srv.apiJSON(b, http.MethodGet, fmt.Sprintf("/api/executions/%d", ex.ID), nil, http.StatusOK, &ex)
	res.hwmMB = float64(readStatus(b, srv.pid()).hwmKB) / 1024
	rssSeries := rss()
	if dir := os.Getenv("PUSHBLASTER_BENCH_LOG_DIR"); dir != "" {
		data, _ := json.Marshal(ex)
		_ = os.WriteFile(filepath.Join(dir, strings.ReplaceAll(b.Name(), "/", "_")+"-execution.json"), data, 0o644)
	}
	if ex.Status != pb.StatusCompleted {
		data, _ := json.MarshalIndent(ex, "", "  ")
		srv.fail(b, fmt.Sprintf("execution %d ended %s, want completed:\n%s", ex.ID, ex.Status, data))
	}
	aud, ls := ex.PhaseRecord(pb.PhaseAudience), ex.PhaseRecord(pb.PhaseLiveSend)
	if aud == nil || aud.StartedAt == nil || aud.FinishedAt == nil || ls == nil || ls.StartedAt == nil || ls.FinishedAt == nil || ex.FinishedAt == nil {
		b.Fatalf("execution %d lacks phase records: %+v", ex.ID, ex.Phases)
	}
	if aud.FinishedAt.After(ex.SendAt) {
		b.Fatalf("the audience phase ended %s after the send time: raise deliveryLead (%s)", aud.FinishedAt.Sub(ex.SendAt), deliveryLead)
	}
	res.audienceDur = aud.FinishedAt.Sub(*aud.StartedAt)
	res.liveStart, res.liveEnd, res.done = *ls.StartedAt, *ls.FinishedAt, *ex.FinishedAt
	res.metrics = ex.Metrics
	if p0.at.IsZero() {
		b.Fatalf("execution %d ended %s before its send time %s", ex.ID, ex.Status, ex.SendAt.Format(time.RFC3339))
	}
	res.use = cpuBetween(p0, p1)
	res.serverCPUs, res.fakeCPUs = res.use.procCPU[0], res.use.procCPU[1]
	res.rssMaxMB = rssSeries.maxBetween(res.liveStart, res.done)
	for k, want := range map[string]int64{pb.MetricAudienceSize: deliveryRecipients, pb.MetricSent: deliveryRecipients,
		pb.MetricFailed: 0, pb.MetricUnknown: 0, pb.MetricInvalidToken: 0, pb.MetricCapped: 0} {
		if ex.Metrics[k] != want {
			b.Fatalf("execution %d: metric %s = %d, want %d (metrics %v)", ex.ID, k, ex.Metrics[k], want, ex.Metrics)
		}
	}
	srv.stop(b)
	res.fake = f.stop(b)
	if e := res.fake.Expected; res.fake.Requests != deliveryRecipients || res.fake.Accepted != deliveryRecipients ||
		e == nil || e.Once != deliveryRecipients || e.Tokens != deliveryRecipients {
		data, _ := json.Marshal(res.fake)
		b.Fatalf("the fake's counters: %s; want %d requests, %d accepted, each of the %d tokens exactly once",
			data, deliveryRecipients, deliveryRecipients, deliveryRecipients)
	}

	rate := res.sendsPerSec()
	perK := func(cpu float64) float64 { return cpu / deliveryRecipients * 1000 }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rate, "sends/s")
	b.ReportMetric(res.secs(), "send_s")
	b.ReportMetric(res.hwmMB, "peak_rss_MB")
	b.ReportMetric(perK(res.serverCPUs), "server_cpu_s/1000sends")
	rawRate.Lock()
	raw, rawArgs, rawWhy := rawRate.reqPerSec, rawRate.args, rawRate.why
	rawRate.Unlock()
	ratio := "h2load rate: not measured in this run (run the h2load sub-benchmark first: -bench 'Delivery/(h2load|postgres|sqlite)')"
	if rawWhy != "" {
		ratio = "h2load rate: " + rawWhy
	}
	if raw > 0 {
		b.ReportMetric(rate/raw, "ratio_to_h2load")
		ratio = fmt.Sprintf("%.0f%% of h2load's %.0f req/s (%s)", 100*rate/raw, raw, rawArgs)
	}
	isPG := strings.HasSuffix(b.Name(), "postgres")
	pgPart := ""
	if isPG {
		b.ReportMetric(perK(res.use.pgCPU), "postgres_cpu_s/1000sends")
		pgPart = fmt.Sprintf(", postgres %.3f", perK(res.use.pgCPU))
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	goals := "≥ 50% of h2load: "
	if raw > 0 {
		goals += verdict(rate >= deliveryGoalRawShare*raw)
	} else {
		goals += "not measured"
	}
	if isPG {
		goals = fmt.Sprintf("≥ %d sends/s: %s; ", deliveryGoalPGSendsPerSec, verdict(rate >= deliveryGoalPGSendsPerSec)) + goals
	}
	serveArgs := strings.Join(deliveryServeArgs, " ")
	if userArgs != "" {
		serveArgs += " " + userArgs
	}
	warns, firstWarn := srv.warnLines()
	if firstWarn != "" {
		firstWarn = fmt.Sprintf(", first: %.300s", firstWarn)
	}
	u := res.use
	b.Logf("setup        %d CSV recipients (user_id,token), provider fcm → fakefcm over HTTP/2 TLS on loopback, +%s per request; serve %s; "+
		"audience phase %s, ended T%s; load average before %s", deliveryRecipients, deliveryLatency, serveArgs,
		fmtDur(res.audienceDur), fmtDur(ex.SendAt.Sub(*aud.FinishedAt)*-1), loadBefore)
	b.Logf("live send    %d sent in %s (live_send start T+%s → execution completed T+%s; phase ended T+%s) = %.0f sends/s; %s",
		res.metrics[pb.MetricSent], fmtDur(res.done.Sub(res.liveStart)), fmtDur(res.liveStart.Sub(res.sendAt)),
		fmtDur(res.done.Sub(res.sendAt)), fmtDur(res.liveEnd.Sub(res.sendAt)), rate, ratio)
	b.Logf("verified     execution metrics sent %d, failed %d, unknown %d; fake: %d requests, %d accepted, %d of %d tokens exactly once, peak %d in flight, %d token requests",
		res.metrics[pb.MetricSent], res.metrics[pb.MetricFailed], res.metrics[pb.MetricUnknown], res.fake.Requests, res.fake.Accepted,
		res.fake.Expected.Once, res.fake.Expected.Tokens, res.fake.PeakInFlight, res.fake.TokenRequests)
	b.Logf("memory       server peak RSS (VmHWM, whole run) %.1f MB; max VmRSS sampled during the send %.1f MB", res.hwmMB, res.rssMaxMB)
	b.Logf("CPU          during the send, %% of one core: server %.0f%%%s, fake %.0f%%, other processes %.0f%%; machine %.0f%% busy of %d cores",
		u.pct(res.serverCPUs), pgPct(u), u.pct(res.fakeCPUs), u.pct(u.otherCPU), u.machPct, u.cores)
	// The send's own CPU; on a machine with nothing else to do, the
	// cores divided by it bound the rate.
	own := res.serverCPUs + res.fakeCPUs
	if isPG {
		own += u.pgCPU
	}
	b.Logf("per 1,000    CPU-s per 1,000 sends: server %.3f%s, fake %.3f (the fake's share %.0f%%); together %.3f: "+
		"CPU bound on %d idle cores ≈ %.0f sends/s", perK(res.serverCPUs), pgPart, perK(res.fakeCPUs),
		100*res.fakeCPUs/max(own, 1e-9), perK(own), u.cores, float64(u.cores)*deliveryRecipients/max(own, 1e-9))
	if res.perfData != "" {
		b.Logf("profile      perf record -g of the server during the send (slows it): %s", res.perfData)
	}
	b.Logf("goals        %s; server log: %d warn/error lines%s; load average after: %s", goals, warns, firstWarn, loadAvg())
}

func pgPct(u procUse) string {
	if u.pct(u.pgCPU) < 1 {
		return ""
	}
	return fmt.Sprintf(", postgres %.0f%%", u.pct(u.pgCPU))
}

// startPerf runs `perf record -g` on pid until interrupted, into
// PUSHBLASTER_BENCH_PERF_DIR.
func startPerf(b *testing.B, pid int) (*exec.Cmd, string) {
	perfBin, err := exec.LookPath("perf")
	if err != nil {
		b.Fatal("PUSHBLASTER_BENCH_PERF_DIR is set but perf is not installed (Debian: apt-get install linux-perf)")
	}
	out := filepath.Join(os.Getenv("PUSHBLASTER_BENCH_PERF_DIR"), strings.ReplaceAll(b.Name(), "/", "_")+".perf.data")
	cmd := exec.Command(perfBin, "record", "-F", "499", "-g", "-p", strconv.Itoa(pid), "-o", out)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, out
}

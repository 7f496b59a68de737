package bench

// BenchmarkAudienceIngest: phase 1 (the audience) at scale, through the real
// binary. Run with
//
//	go test -run '^$' -bench AudienceIngest -benchtime 1x -timeout 30m ./bench/
//
// Results are recorded in docs/BENCHMARKS.md. The helpers (TestMain's build,
// startServer, the /proc samplers) are those of engine_bench_test.go.

import (
	"bytes"
	"encoding/json"
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
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

const (
	// audienceRows is how many recipients the script writes.
	audienceRows = 1_000_000
	// audienceLead is the automation's lead time and how far ahead the
	// manual run's send time lies: the audience phase is due at once, the
	// live send an hour later, after the measurement.
	audienceLead = time.Hour
	// audienceDone bounds the wait for the audience phase (its job times
	// out after 10 minutes).
	audienceDone = 12 * time.Minute
	// audienceMaxOutput is --max-output-bytes: room for 1,000,000 rows of
	// about 84 bytes.
	audienceMaxOutput = 4 << 30
	// The goals of the issue.
	audienceGoalPGRowsPerSec = 200_000
	audienceGoalRSSMB        = 150
)

// audienceScript writes argv[1] recipients as CSV with a header, as fast as
// Python allows: unique user ids in ascending order, random 36-character
// tokens, the other columns cycling through realistic values (first_name
// becomes per-recipient data).
const audienceScript = `#!/usr/bin/env python3
import os, sys
n = int(sys.argv[1])
out = sys.stdout.buffer
out.write(b"user_id,token,platform,timezone,locale,first_name\n")
platforms = ("android", "ios", "web")
zones = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC", "Europe/London", "America/Sao_Paulo", "Australia/Sydney")
locales = ("de-DE", "en-US", "ja-JP", "en-GB", "pt-BR", "fr-FR", "es-ES", "it-IT")
names = ("Anna", "Ben", "Chiara", "Daniel", "Emma", "Felix", "Hannah", "Jonas", "Lea", "Lukas", "Mia", "Noah", "Sofia", "Tom")
tails = [f",{platforms[k % 3]},{zones[k % 7]},{locales[k % 8]},{names[k % 14]}\n" for k in range(168)]
chunk = 16800
for lo in range(0, n, chunk):
    m = min(chunk, n - lo)
    tok = os.urandom(18 * m).hex()
    out.write("".join([f"user-{lo + j:010d},{tok[36 * j:36 * j + 36]}{tails[j % 168]}" for j in range(m)]).encode())
`

// BenchmarkAudienceIngest runs an automation whose script audience writes
// 1,000,000 CSV rows and reports how fast `pushblaster serve` streams them
// into each database, and its peak RSS. Run with -benchtime 1x.
//
// The measured run is POST /api/automations/{id}/run with the send time an
// hour ahead (lead time 1h): only the audience phase (and an empty test
// send) runs. A second server on the same database then runs
// POST /api/automations/{id}/audience/preview, phase 1 into a scratch list.
//
// Knobs, unset to reproduce the recorded numbers: those of
// BenchmarkEngineScale (PUSHBLASTER_BENCH_LOG_LEVEL, _LOG_DIR, _ARGS,
// _PG_PARAMS) and
//
//	PUSHBLASTER_BENCH_AUDIENCE_ROWS  rows the script writes (default 1000000)
func BenchmarkAudienceIngest(b *testing.B) {
	forEachDatabase(b, runAudienceIngest)
}

// audienceResult is one measured phase 1.
type audienceResult struct {
	dur        time.Duration // phase 1 as the engine records it
	size, dups int64
	cpu        cpuUse  // during dur
	serverCPU  float64 // server CPU-seconds during dur
	hwmMB      float64 // VmHWM at the end
	rssMaxMB   float64 // max VmRSS sampled during dur
	rssBaseMB  float64 // VmRSS before the run
	script     string  // the runner's exit status, shortened
	scriptCPU  float64 // the script's CPU-seconds, as the runner reports them
}

// otherPct is the CPU of everything but the server, PostgreSQL and the
// script during the run, in % of one core: the machine's quietness.
func (r audienceResult) otherPct() float64 {
	return max(0, r.cpu.sysPct*float64(r.cpu.cores)-r.cpu.procPct-r.cpu.pgPct-100*r.scriptCPU/r.dur.Seconds())
}

func (r audienceResult) rowsPerSec() float64 { return float64(r.size) / r.dur.Seconds() }

func runAudienceIngest(b *testing.B, dbEnv string) {
	if binary == "" {
		b.Fatal("the pushblaster binary was not built (TestMain builds it when -bench is given)")
	}
	rows := audienceRows
	if v := os.Getenv("PUSHBLASTER_BENCH_AUDIENCE_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("PUSHBLASTER_BENCH_AUDIENCE_ROWS=%q: want a positive number", v)
		}
		rows = n
	}
	loadBefore := loadAvg()

	// The script, and its cost alone (stdout to /dev/null).
	scripts := b.TempDir()
	if strings.ContainsAny(scripts, " \t\n") {
		b.Fatalf("the scripts directory %q contains white space (PUSHBLASTER_BENCH_ARGS is split on it)", scripts)
	}
	if err := os.WriteFile(filepath.Join(scripts, "million.py"), []byte(audienceScript), 0o755); err != nil {
		b.Fatal(err)
	}
	alone, aloneCPU := timeScript(b, scripts, rows)
	progress("script alone: %d rows to /dev/null in %s (%.2f CPU-s)", rows, alone.Round(time.Millisecond), aloneCPU)

	b.Setenv("PUSHBLASTER_BENCH_ARGS", strings.TrimSpace(os.Getenv("PUSHBLASTER_BENCH_ARGS")+
		fmt.Sprintf(" --scripts-dir %s --max-output-bytes %d", scripts, audienceMaxOutput)))

	// 1. The execution: POST /run, send time an hour ahead.
	srv := startServer(b, dbEnv, "ingest")
	far := time.Now().UTC().AddDate(0, 6, 0)
	id := createAudienceAutomation(b, srv, rows, fmt.Sprintf("0 3 %d %d *", far.Day(), int(far.Month())))
	ex := runAndMeasure(b, srv, id)
	srv.stop(b)
	progress("ingest: %d rows in %s = %.0f rows/s; peak RSS %.1f MB", ex.size, fmtDur(ex.dur), ex.rowsPerSec(), ex.hwmMB)

	// 2. The preview, on a fresh server and the same database.
	pre := startServer(b, dbEnv, "preview")
	pv := previewAndMeasure(b, pre, id)
	pre.stop(b)
	progress("preview: %d rows in %s = %.0f rows/s; peak RSS %.1f MB", pv.size, fmtDur(pv.dur), pv.rowsPerSec(), pv.hwmMB)

	for _, r := range []struct {
		what string
		res  audienceResult
	}{{"execution", ex}, {"preview", pv}} {
		if r.res.size != int64(rows) || r.res.dups != 0 {
			b.Fatalf("%s: audience_size %d, duplicates_removed %d; want %d and 0", r.what, r.res.size, r.res.dups, rows)
		}
	}

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ex.rowsPerSec(), "rows_per_s")
	b.ReportMetric(ex.dur.Seconds(), "ingest_s")
	b.ReportMetric(ex.hwmMB, "peak_rss_MB")
	b.ReportMetric(pv.rowsPerSec(), "preview_rows_per_s")
	b.ReportMetric(pv.hwmMB, "preview_peak_rss_MB")
	b.ReportMetric(alone.Seconds(), "script_alone_s")
	b.ReportMetric(ex.cpu.procPct, "server_cpu_%")

	pgShare := func(u cpuUse) string {
		if u.pgPct < 1 {
			return ""
		}
		return fmt.Sprintf(", postgres %.0f%%", u.pgPct)
	}
	b.Logf("setup        %d CSV rows from a python3 script, lead_time %s, send_at now+%s; load average before %s",
		rows, pb.Duration(audienceLead), pb.Duration(audienceLead), loadBefore)
	b.Logf("script alone %s to /dev/null (%.2f CPU-s): %.0f rows/s", alone.Round(time.Millisecond), aloneCPU, float64(rows)/alone.Seconds())
	for _, r := range []struct {
		what string
		res  audienceResult
	}{{"ingest      ", ex}, {"preview     ", pv}} {
		b.Logf("%s %d rows in %s = %.0f rows/s; RSS: before %.1f MB, max sampled %.1f MB, VmHWM %.1f MB",
			r.what, r.res.size, fmtDur(r.res.dur), r.res.rowsPerSec(), r.res.rssBaseMB, r.res.rssMaxMB, r.res.hwmMB)
		b.Logf("  CPU        %% of one core: server %.0f%% (%.1f CPU-s)%s, other processes %.0f%%; machine %.0f%% busy of %d cores; script: %s",
			r.res.cpu.procPct, r.res.serverCPU, pgShare(r.res.cpu), r.res.otherPct(), r.res.cpu.sysPct, r.res.cpu.cores, r.res.script)
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	goals := fmt.Sprintf("peak RSS < %d MB: %s", audienceGoalRSSMB, verdict(ex.hwmMB < audienceGoalRSSMB && pv.hwmMB < audienceGoalRSSMB))
	if strings.HasSuffix(b.Name(), "postgres") {
		goals = fmt.Sprintf("≥ %d rows/s: %s; ", audienceGoalPGRowsPerSec, verdict(ex.rowsPerSec() >= audienceGoalPGRowsPerSec)) + goals
	}
	warns, firstWarn := srv.warnLines()
	if firstWarn != "" {
		firstWarn = fmt.Sprintf(", first: %.300s", firstWarn)
	}
	b.Logf("goals        %s; server log: %d warn/error lines%s; load average after: %s", goals, warns, firstWarn, loadAvg())
}

// timeScript runs the script alone into /dev/null, as the engine would
// (same directory, clean environment), and returns its wall and CPU time.
func timeScript(b *testing.B, dir string, rows int) (time.Duration, float64) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	cmd := exec.Command(filepath.Join(dir, "million.py"), strconv.Itoa(rows))
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=" + dir}
	cmd.Stdout = devnull
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("the audience script alone: %v\n%s", err, stderr.String())
	}
	return time.Since(start), (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
}

// createAudienceAutomation creates the automation over the API and returns
// its id.
func createAudienceAutomation(b *testing.B, srv *server, rows int, cron string) int64 {
	body := map[string]any{
		"name":                  "audience-ingest",
		"schedule":              map[string]any{"cron": cron, "timezone": "UTC"},
		"lead_time":             pb.Duration(audienceLead).String(),
		"cancellation_deadline": "0s",
		"audience": map[string]any{
			"type": "script", "script": "million.py", "args": []string{strconv.Itoa(rows)},
			"timeout": "9m", "stall_timeout": "2m", "max_growth": 0, "max_bad_row_ratio": 0.01,
		},
		"message":  map[string]any{"title": "Benchmark", "body": "audience ingest"},
		"delivery": map[string]any{"provider": "log"},
	}
	var a pb.Automation
	srv.apiJSON(b, http.MethodPost, "/api/automations", body, http.StatusCreated, &a)
	if a.ID == 0 {
		b.Fatalf("created automation has no id: %+v", a)
	}
	return a.ID
}

// runAndMeasure runs automation id now (send time an hour ahead) and
// measures its audience phase.
func runAndMeasure(b *testing.B, srv *server, id int64) audienceResult {
	pid := srv.pid()
	res := audienceResult{rssBaseMB: float64(readStatus(b, pid).rssKB) / 1024}
	cpu := startSampler(b, pid)
	rss := startRSSSampler(pid)
	var ex pb.Execution
	srv.apiJSON(b, http.MethodPost, fmt.Sprintf("/api/automations/%d/run", id), map[string]any{}, http.StatusCreated, &ex)
	deadline := time.Now().Add(audienceDone)
	for {
		time.Sleep(200 * time.Millisecond)
		srv.apiJSON(b, http.MethodGet, fmt.Sprintf("/api/executions/%d", ex.ID), nil, http.StatusOK, &ex)
		if r := ex.PhaseRecord(pb.PhaseAudience); r != nil && r.FinishedAt != nil {
			if r.Status != pb.PhaseCompleted {
				data, _ := json.MarshalIndent(ex, "", "  ")
				srv.fail(b, fmt.Sprintf("the audience phase ended %s:\n%s", r.Status, data))
			}
			// The empty test send ends it at awaiting_send.
			if ex.Status != pb.StatusRunning {
				break
			}
		}
		if ex.Status == pb.StatusFailed || ex.Status == pb.StatusCancelled {
			data, _ := json.MarshalIndent(ex, "", "  ")
			srv.fail(b, fmt.Sprintf("execution %d ended %s:\n%s", ex.ID, ex.Status, data))
		}
		if time.Now().After(deadline) {
			srv.fail(b, fmt.Sprintf("the audience phase of execution %d did not end within %s", ex.ID, audienceDone))
		}
	}
	res.hwmMB = float64(readStatus(b, pid).hwmKB) / 1024
	series, rssSeries := cpu(), rss()
	r := ex.PhaseRecord(pb.PhaseAudience)
	res.dur = r.FinishedAt.Sub(*r.StartedAt)
	res.size, res.dups = ex.Metrics[pb.MetricAudienceSize], ex.Metrics[pb.MetricDuplicates]
	res.cpu = series.between(*r.StartedAt, *r.FinishedAt)
	res.serverCPU = res.cpu.procPct / 100 * res.dur.Seconds()
	res.rssMaxMB = rssSeries.maxBetween(*r.StartedAt, *r.FinishedAt)
	if ex.Status != pb.StatusAwaitingSend {
		b.Fatalf("execution %d is %s after its audience phase, want %s", ex.ID, ex.Status, pb.StatusAwaitingSend)
	}
	var arts struct {
		Artifacts []pb.Artifact `json:"artifacts"`
	}
	srv.apiJSON(b, http.MethodGet, fmt.Sprintf("/api/executions/%d/artifacts", ex.ID), nil, http.StatusOK, &arts)
	for _, a := range arts.Artifacts {
		if a.Name == "exit_status" {
			res.script, res.scriptCPU = scriptCost(a.Content)
		}
	}
	if dir := os.Getenv("PUSHBLASTER_BENCH_LOG_DIR"); dir != "" {
		data, _ := json.Marshal(ex)
		_ = os.WriteFile(filepath.Join(dir, strings.ReplaceAll(b.Name(), "/", "_")+"-execution.json"), data, 0o644)
	}
	return res
}

// previewAndMeasure previews automation id's audience (synchronous).
func previewAndMeasure(b *testing.B, srv *server, id int64) audienceResult {
	pid := srv.pid()
	res := audienceResult{rssBaseMB: float64(readStatus(b, pid).rssKB) / 1024}
	cpu := startSampler(b, pid)
	rss := startRSSSampler(pid)
	start := time.Now()
	var p pb.AudiencePreview
	srv.apiJSON(b, http.MethodPost, fmt.Sprintf("/api/automations/%d/audience/preview", id), map[string]any{}, http.StatusOK, &p)
	end := time.Now()
	res.hwmMB = float64(readStatus(b, pid).hwmKB) / 1024
	series, rssSeries := cpu(), rss()
	if p.Error != nil {
		srv.fail(b, fmt.Sprintf("the preview failed: %v", p.Error))
	}
	// Elapsed is phase 1 inside the server; the request adds the scratch
	// list's deletion and the sample read.
	res.dur = p.Elapsed.D()
	res.size, res.dups = p.Size, p.DuplicatesRemoved
	res.cpu = series.between(start, end)
	res.serverCPU = res.cpu.procPct / 100 * end.Sub(start).Seconds()
	res.rssMaxMB = rssSeries.maxBetween(start, end)
	res.script, res.scriptCPU = scriptCost(p.ExitStatus)
	res.script += fmt.Sprintf("; request %s", fmtDur(end.Sub(start)))
	return res
}

// scriptCost is the runner's "ran …, … s CPU, … bytes" of an exit status.
var scriptCostRE = regexp.MustCompile(`ran ([^,]+), ([0-9.]+) s CPU, ([0-9]+) bytes`)

func scriptCost(exit string) (string, float64) {
	m := scriptCostRE.FindStringSubmatch(exit)
	if m == nil {
		return fmt.Sprintf("%q", exit), 0
	}
	mb, _ := strconv.ParseFloat(m[3], 64)
	cpu, _ := strconv.ParseFloat(m[2], 64)
	return fmt.Sprintf("ran %s, %s CPU-s, %.1f MB", m[1], m[2], mb/1e6), cpu
}

// apiJSON sends body (JSON; nil: none) and decodes the answer into out,
// which must have status want. No client timeout: a preview of a large
// audience takes as long as the audience phase.
func (s *server) apiJSON(b *testing.B, method, path string, body any, want int, out any) {
	b.Helper()
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			b.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, s.url+path, rd)
	if err != nil {
		b.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{Timeout: audienceDone}
	resp, err := client.Do(req)
	if err != nil {
		s.fail(b, fmt.Sprintf("%s %s: %v", method, path, err))
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		s.fail(b, fmt.Sprintf("%s %s: %d %s, want %d", method, path, resp.StatusCode, data, want))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			s.fail(b, fmt.Sprintf("%s %s: %v in %.500s", method, path, err, data))
		}
	}
}

// rssSeries is VmRSS over time.
type rssSeries []rssPoint

type rssPoint struct {
	at    time.Time
	rssKB int64
}

// maxBetween is the largest VmRSS sampled from from to to, in MB.
func (s rssSeries) maxBetween(from, to time.Time) float64 {
	var m int64
	for _, p := range s {
		if !p.at.Before(from) && !p.at.After(to) {
			m = max(m, p.rssKB)
		}
	}
	return float64(m) / 1024
}

// startRSSSampler samples the VmRSS of pid every 100 ms until the returned
// func is called, which returns the series.
func startRSSSampler(pid int) func() rssSeries {
	var (
		mu     sync.Mutex
		series rssSeries
	)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if kb := vmRSSKB(pid); kb > 0 {
					mu.Lock()
					series = append(series, rssPoint{time.Now(), kb})
					mu.Unlock()
				}
			}
		}
	}()
	return func() rssSeries {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return series
	}
}

// vmRSSKB reads VmRSS of pid (0 if it cannot), without failing the
// benchmark: it runs off the benchmark's goroutine.
func vmRSSKB(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

//go:build linux

package audience

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// The test binary is also the supervisor and the "engine" of the crash test:
//
//   - with PUSHBLASTER_TEST_SUPERVISE=1 and a "--" argument it is the
//     supervisor: Supervise(the arguments after "--"). TestMain sets that
//     variable for the whole test process, so every supervisor the tests
//     start (argv {test binary, "--"}) inherits it. The script never sees
//     it: its environment travels over fd 4 (see Supervise), the
//     supervisor's own environment is not passed on;
//   - with PUSHBLASTER_TEST_CRASH_CHILD=1 it is an engine that runs one
//     script (its arguments: the script's path and arguments) under the
//     supervisor until it is SIGKILLed (TestScriptEngineCrash).
const (
	scriptTestSuperviseEnv = "PUSHBLASTER_TEST_SUPERVISE"
	scriptTestCrashEnv     = "PUSHBLASTER_TEST_CRASH_CHILD"
)

// TestMain makes the test binary a supervisor or a crashing engine when
// asked to (see above), or runs the tests.
func TestMain(m *testing.M) {
	if os.Getenv(scriptTestSuperviseEnv) == "1" {
		if i := slices.Index(os.Args, "--"); i > 0 {
			os.Exit(Supervise(os.Args[i+1:]))
		}
	}
	if os.Getenv(scriptTestCrashEnv) == "1" {
		os.Exit(scriptCrashChild())
	}
	os.Setenv(scriptTestSuperviseEnv, "1")
	// A race-enabled supervisor would linger at exit for the race
	// detector's atexit_sleep_ms (1 s), which short stall timeouts notice.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	os.Exit(m.Run())
}

// scriptCrashChild runs one script under the supervisor, forever (until the
// test SIGKILLs this process).
func scriptCrashChild() int {
	args := os.Args[1:]
	_, err := RunScript(context.Background(), ScriptSpec{
		Path: args[0], Dir: filepath.Dir(args[0]), Args: args[1:], Env: scriptTestEnv,
		Timeout: time.Hour, StallTimeout: time.Hour, Supervisor: scriptTestSupervisor(),
	}, scriptDiscard, ScriptHooks{})
	fmt.Fprintln(os.Stderr, "crash child: RunScript returned:", err)
	return 3
}

// scriptTestEnv is the scripts' environment in most tests.
var scriptTestEnv = []string{"PATH=/usr/bin:/bin", "LANG=C"}

// scriptTestSupervisor is the Supervisor argv: this test binary.
func scriptTestSupervisor() []string {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	return []string{exe, "--"}
}

// scriptTestDir is testdata/scripts, absolute.
func scriptTestDir(t testing.TB) string {
	dir, err := filepath.Abs(filepath.Join("testdata", "scripts"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// scriptModes runs f as parallel subtests, with and without the supervisor.
func scriptModes(t *testing.T, f func(t *testing.T, supervisor []string)) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("audience scripts run on Linux only")
	}
	for _, m := range []struct {
		name string
		sup  []string
	}{{"direct", nil}, {"supervised", scriptTestSupervisor()}} {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			f(t, m.sup)
		})
	}
}

// scriptTestSpec is a ScriptSpec for testdata/scripts/name with generous limits.
func scriptTestSpec(t *testing.T, name string, supervisor []string, args ...string) ScriptSpec {
	t.Helper()
	dir := scriptTestDir(t)
	path, err := ResolveScript(dir, name)
	if err != nil {
		t.Fatalf("ResolveScript(%s): %v", name, err)
	}
	return ScriptSpec{Path: path, Dir: dir, Args: args, Env: scriptTestEnv,
		Timeout: time.Minute, StallTimeout: 30 * time.Second, HeartbeatEvery: time.Minute, Supervisor: supervisor}
}

// scriptDiscard is a consume that reads everything and keeps nothing.
func scriptDiscard(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// scriptLineCounter is a consume that counts lines, and its Rows hook.
type scriptLineCounter struct{ n atomic.Int64 }

// consume is the consume function.
func (c *scriptLineCounter) consume(r io.Reader) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		c.n.Add(1)
	}
	return sc.Err()
}

// rows is the Rows hook.
func (c *scriptLineCounter) rows() int64 { return c.n.Load() }

// scriptWantErr checks that err is a *pb.Error of kind with recoverable, whose
// message matches msg (a regular expression, anchored) and whose context
// has ctx (a value "*" only needs the key).
func scriptWantErr(t *testing.T, err error, kind pb.Kind, recoverable bool, msg string, ctx map[string]string) *pb.Error {
	t.Helper()
	var pe *pb.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not a *pb.Error", err, err)
	}
	if pe.Kind != kind || pe.Recoverable != recoverable {
		t.Errorf("kind %s recoverable %v, want %s %v (%v)", pe.Kind, pe.Recoverable, kind, recoverable, pe)
	}
	if !regexp.MustCompile("^(?:" + msg + ")$").MatchString(pe.Message) {
		t.Errorf("message %q does not match %q", pe.Message, msg)
	}
	for k, v := range ctx {
		got, ok := pe.Context[k]
		if !ok {
			t.Errorf("context has no %q: %v", k, pe.Context)
		} else if v != "*" && got != v {
			t.Errorf("context %q = %q, want %q", k, got, v)
		}
	}
	return pe
}

// scriptRunning reports whether pid runs (a zombie does not: it is dead and only
// waits to be reaped by its parent, maybe init).
func scriptRunning(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	p, ok := scriptParseStat(pid, b)
	return ok && p.state != 'Z' && p.state != 'X'
}

// scriptReadPids reads a pid file of "name pid" lines.
func scriptReadPids(t *testing.T, file string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the script did not record its pids: %v", err)
	}
	pids := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		name, v, _ := strings.Cut(line, " ")
		pid, err := strconv.Atoi(v)
		if err != nil || pid <= 0 {
			t.Fatalf("bad pid line %q in %s", line, file)
		}
		pids[name] = pid
	}
	return pids
}

// scriptEventually polls cond until it holds or the deadline passes.
func scriptEventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("still not %s after %s", what, limit)
		}
	}
}

func scriptHasSetsid() bool {
	_, err := exec.LookPath("setsid")
	return err == nil
}

// 1. Slow but alive: a row every 200 ms, StallTimeout 1 s: no stall, and
// heartbeats report progress.
func TestScriptSlowButAlive(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		s := scriptTestSpec(t, "slow.sh", sup)
		s.StallTimeout = time.Second
		s.HeartbeatEvery = 100 * time.Millisecond
		var c scriptLineCounter
		var mu sync.Mutex
		var beats []Heartbeat
		var lines []string
		res, err := RunScript(context.Background(), s, c.consume, ScriptHooks{
			Rows:      c.rows,
			Heartbeat: func(h Heartbeat) { mu.Lock(); beats = append(beats, h); mu.Unlock() },
			Stderr:    func(l string) { mu.Lock(); lines = append(lines, l); mu.Unlock() },
		})
		if err != nil {
			t.Fatalf("RunScript: %v", err)
		}
		if c.rows() != 8 || res.ExitCode != 0 || res.Signal != "" || res.Bytes != int64(len("user_id\n")+7*3) {
			t.Errorf("rows %d, result %+v", c.rows(), res)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(lines) != 7 || lines[0] != "progress 1" || lines[6] != "progress 7" {
			t.Errorf("stderr lines %q", lines)
		}
		if !strings.HasSuffix(res.StderrTail, "progress 6\nprogress 7\n") {
			t.Errorf("stderr tail %q", res.StderrTail)
		}
		var alive bool
		for _, h := range beats {
			if h.Elapsed > 0 && h.Bytes > 0 && h.Rows > 0 && strings.HasPrefix(h.LastStderr, "progress ") {
				alive = true
			}
		}
		if !alive {
			t.Errorf("no heartbeat reported progress: %+v", beats)
		}
	})
}

// 2. Stalled: one row, then silence. The error says so, and says whether
// the script was burning CPU (spinning) or not (hung).
func TestScriptStalled(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		for _, c := range []struct {
			script string
			busy   bool
		}{{"stall.sh", false}, {"spin.sh", true}} {
			s := scriptTestSpec(t, c.script, sup)
			s.StallTimeout = 500 * time.Millisecond
			var lc scriptLineCounter
			res, err := RunScript(context.Background(), s, lc.consume, ScriptHooks{Rows: lc.rows})
			pe := scriptWantErr(t, err, pb.KindTimeout, true, `stalled: no output for 500ms, \d+\.\d s CPU in that time`,
				map[string]string{"reason": "stalled", "exit_code": "-1", "signal": "SIGKILL", "elapsed": "*", "rows": "1"})
			cpu, _ := strconv.ParseFloat(pe.Context["stall_cpu_seconds"], 64)
			if c.busy && cpu <= 0 {
				t.Errorf("%s: a spinning script stalled with %v s CPU: %v", c.script, cpu, pe)
			}
			if !c.busy && cpu >= 0.2 {
				t.Errorf("%s: a sleeping script stalled with %v s CPU: %v", c.script, cpu, pe)
			}
			if res.Signal != "SIGKILL" || res.ExitCode != -1 {
				t.Errorf("%s: result %+v", c.script, res)
			}
		}
	})
}

// 3. Timed out while chatty: a plain timeout, not a stall.
func TestScriptTimeout(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		s := scriptTestSpec(t, "chatty.sh", sup)
		s.Timeout = 700 * time.Millisecond
		s.StallTimeout = 20 * time.Second
		var lc scriptLineCounter
		_, err := RunScript(context.Background(), s, lc.consume, ScriptHooks{Rows: lc.rows})
		scriptWantErr(t, err, pb.KindTimeout, true, `timed out after 700ms; \d+ rows, \d+ bytes of output so far`,
			map[string]string{"reason": "timeout", "exit_code": "-1", "signal": "SIGKILL", "elapsed": "*"})
	})
}

// 4. Whatever the script started is gone when RunScript returns: a
// background child always; one in a session of its own (setsid) too.
func TestScriptGrandchildrenKilled(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		for _, setsid := range []bool{false, true} {
			if setsid && !scriptHasSetsid() {
				t.Log("no setsid(1): skipping the detached grandchildren")
				continue
			}
			pidfile := filepath.Join(t.TempDir(), "pids")
			args := []string{pidfile}
			if setsid {
				args = append(args, "setsid")
				if sup != nil {
					// Only a subreaper can find a daemon whose parent is
					// gone: without a supervisor it would escape.
					args = append(args, "daemon")
				}
			}
			s := scriptTestSpec(t, "grandchildren.sh", sup, args...)
			s.Timeout = 3 * time.Second
			_, err := RunScript(context.Background(), s, scriptDiscard, ScriptHooks{})
			scriptWantErr(t, err, pb.KindTimeout, true, `timed out after 3s; \d+ bytes of output so far`,
				map[string]string{"reason": "timeout", "stderr_tail": "waiting forever\n"})
			pids := scriptReadPids(t, pidfile)
			names := []string{"script", "child"}
			if setsid {
				names = append(names, "detached")
			}
			if setsid && sup != nil {
				names = append(names, "daemon")
			}
			if sup != nil {
				names = append(names, "parent") // the supervisor
			}
			for _, name := range names {
				if scriptRunning(pids[name]) {
					t.Errorf("setsid=%v: the %s (pid %d) still runs after RunScript returned", setsid, name, pids[name])
					syscall.Kill(pids[name], syscall.SIGKILL)
				}
			}
		}
	})
}

// 5. The engine crashes (SIGKILL): the supervisor kills the script and its
// grandchildren, detached ones included.
func TestScriptEngineCrash(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("audience scripts run on Linux only")
	}
	t.Parallel()
	args := []string{scriptTestSpec(t, "grandchildren.sh", nil).Path, filepath.Join(t.TempDir(), "pids")}
	if scriptHasSetsid() {
		args = append(args, "setsid", "daemon")
	}
	var out bytes.Buffer
	engine := exec.Command(scriptTestSupervisor()[0], args...)
	engine.Env = append(os.Environ(), scriptTestCrashEnv+"=1")
	engine.Stdout, engine.Stderr = &out, &out
	if err := engine.Start(); err != nil {
		t.Fatal(err)
	}
	engineGone := make(chan struct{})
	go func() { engine.Wait(); close(engineGone) }()
	defer func() {
		engine.Process.Kill()
		<-engineGone
	}()
	scriptEventually(t, 30*time.Second, "recording its pids", func() bool {
		select {
		case <-engineGone:
			t.Fatalf("the crash child exited early: %s", out.String())
		default:
		}
		_, err := os.Stat(args[1])
		return err == nil
	})
	pids := scriptReadPids(t, args[1])
	t.Cleanup(func() { // leave nothing behind, even when failing
		if t.Failed() && pids["parent"] > 0 {
			syscall.Kill(-pids["parent"], syscall.SIGKILL) // the supervisor's group
		}
		for _, pid := range pids {
			if scriptRunning(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	for name, pid := range pids {
		if !scriptRunning(pid) {
			t.Fatalf("the %s (pid %d) is not scriptRunning before the crash", name, pid)
		}
	}
	if err := engine.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-engineGone
	for name, pid := range pids {
		scriptEventually(t, 15*time.Second, fmt.Sprintf("rid of the %s (pid %d)", name, pid), func() bool { return !scriptRunning(pid) })
	}
}

// 6. Cancelled mid-script: abort, and nothing left.
func TestScriptCancel(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		pidfile := filepath.Join(t.TempDir(), "pids")
		s := scriptTestSpec(t, "grandchildren.sh", sup, pidfile)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		_, err := RunScript(ctx, s, func(r io.Reader) error {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				if sc.Text() == "ready" {
					cancel()
				}
			}
			return sc.Err()
		}, ScriptHooks{})
		scriptWantErr(t, err, pb.KindAbort, false, `cancelled after \S+; script killed`,
			map[string]string{"reason": "cancelled", "exit_code": "-1", "signal": "SIGKILL", "elapsed": "*"})
		for name, pid := range scriptReadPids(t, pidfile) {
			if name != "parent" || sup != nil {
				if scriptRunning(pid) {
					t.Errorf("the %s (pid %d) still runs after RunScript returned", name, pid)
				}
			}
		}
	})
}

// 7. Failures: a non-zero exit (75 is recoverable), a signal of its own, and
// 137 that is an exit status, not a signal.
func TestScriptExitStatus(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		for _, c := range []struct {
			code        int
			recoverable bool
		}{{3, false}, {75, true}, {137, false}} {
			s := scriptTestSpec(t, "exit.sh", sup, strconv.Itoa(c.code))
			res, err := RunScript(context.Background(), s, scriptDiscard, ScriptHooks{})
			code := strconv.Itoa(c.code)
			pe := scriptWantErr(t, err, pb.KindScript, c.recoverable, `exited with status `+code+`: fatal: warehouse unreachable`,
				map[string]string{"exit_code": code, "elapsed": "*",
					"stderr_tail": "connecting to the warehouse\nfatal: warehouse unreachable\n"})
			if _, ok := pe.Context["signal"]; ok {
				t.Errorf("exit %d: a signal in the context: %v", c.code, pe.Context)
			}
			if res.ExitCode != c.code || res.Signal != "" || res.Bytes != 3 || res.StderrTail != pe.Context["stderr_tail"] {
				t.Errorf("exit %d: result %+v", c.code, res)
			}
		}
	})
}

func TestScriptKilledBySignal(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		res, err := RunScript(context.Background(), scriptTestSpec(t, "segv.sh", sup), scriptDiscard, ScriptHooks{})
		scriptWantErr(t, err, pb.KindScript, true, `killed by signal SIGSEGV`,
			map[string]string{"signal": "SIGSEGV", "exit_code": "-1", "stderr_tail": "about to crash\n"})
		if res.Signal != "SIGSEGV" || res.ExitCode != -1 {
			t.Errorf("result %+v", res)
		}
	})
}

// A script that closes stdout but works on is waited for: its exit decides.
func TestScriptClosesStdout(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		var lc scriptLineCounter
		_, err := RunScript(context.Background(), scriptTestSpec(t, "closes-stdout.sh", sup), lc.consume, ScriptHooks{})
		scriptWantErr(t, err, pb.KindScript, false, `exited with status 4: failed after closing stdout`, map[string]string{"exit_code": "4"})
		if lc.rows() != 1 {
			t.Errorf("%d rows", lc.rows())
		}
	})
}

// 8. consume's error stops the script; its kind is kept.
func TestScriptConsumeError(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		for _, c := range []struct {
			err  error
			kind pb.Kind
		}{
			{pb.Errorf(pb.KindValidation, "bad row 3: no user_id"), pb.KindValidation},
			{errors.New("disk full"), pb.KindInternal},
		} {
			pidfile := filepath.Join(t.TempDir(), "pids")
			s := scriptTestSpec(t, "chatty.sh", sup, pidfile)
			res, err := RunScript(context.Background(), s, func(r io.Reader) error {
				sc := bufio.NewScanner(r)
				for n := 0; sc.Scan(); n++ {
					if n == 2 {
						return c.err
					}
				}
				return errors.New("the script ended")
			}, ScriptHooks{})
			scriptWantErr(t, err, c.kind, false, `script output: `+regexp.QuoteMeta(pb.AsError(c.err).Message), map[string]string{"elapsed": "*"})
			if !errors.Is(err, c.err) {
				t.Errorf("%v does not wrap %v", err, c.err)
			}
			if pid := scriptReadPids(t, pidfile)["script"]; scriptRunning(pid) {
				t.Errorf("the script (pid %d) still runs", pid)
			}
			if res.Signal != "SIGKILL" {
				t.Errorf("result %+v", res)
			}
		}
	})
}

// When consume fails at the end of the output (a truncated last row, say)
// and the script then exits non-zero, the script's failure is the cause.
func TestScriptConsumeErrorAtEnd(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		for _, code := range []int{3, 0} {
			truncated := pb.Errorf(pb.KindValidation, "last row truncated")
			_, err := RunScript(context.Background(), scriptTestSpec(t, "exit.sh", sup, strconv.Itoa(code)), func(r io.Reader) error {
				if _, err := io.Copy(io.Discard, r); err != nil {
					return err
				}
				return truncated
			}, ScriptHooks{})
			if code == 0 {
				scriptWantErr(t, err, pb.KindValidation, false, `script output: last row truncated`, map[string]string{"exit_code": "0"})
				continue
			}
			scriptWantErr(t, err, pb.KindScript, false, `exited with status 3: fatal: warehouse unreachable`,
				map[string]string{"exit_code": "3", "consume_error": truncated.Error()})
		}
	})
}

// A daemon that escapes the process group keeps the output open. The
// supervisor (a subreaper) finds and kills it; without one the run can only
// end by stalling, and the error says why.
func TestScriptDaemonHoldsOutput(t *testing.T) {
	if !scriptHasSetsid() {
		t.Skip("no setsid(1)")
	}
	scriptModes(t, func(t *testing.T, sup []string) {
		pidfile := filepath.Join(t.TempDir(), "pids")
		s := scriptTestSpec(t, "daemon.sh", sup, pidfile)
		s.StallTimeout = 1500 * time.Millisecond
		_, err := RunScript(context.Background(), s, scriptDiscard, ScriptHooks{})
		daemon := scriptReadPids(t, pidfile)["daemon"]
		if sup != nil {
			if err != nil {
				t.Errorf("RunScript: %v", err)
			}
			if scriptRunning(daemon) {
				t.Errorf("the daemon (pid %d) still runs", daemon)
			}
		} else {
			scriptWantErr(t, err, pb.KindTimeout, true, `stalled: no output for 1.5s, .*`,
				map[string]string{"reason": "stalled", "exit_code": "0",
					"detail": "the script had exited (status 0), but a process it started outside its process group kept its output open; run it with a supervisor to kill such processes too"})
		}
		if scriptRunning(daemon) {
			syscall.Kill(daemon, syscall.SIGKILL) // the documented limit of scriptRunning without a supervisor
		}
	})
}

// consume returning nil before the end of the output must not drop rows.
func TestScriptConsumeStopsEarly(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		_, err := RunScript(context.Background(), scriptTestSpec(t, "chatty.sh", sup), func(r io.Reader) error {
			_, err := r.Read(make([]byte, 1))
			return err
		}, ScriptHooks{})
		scriptWantErr(t, err, pb.KindInternal, false, `script output: the script's output was not read to the end .*`, nil)
	})
}

// 9. The script's environment is exactly scriptTestSpec.Env: nothing of the engine's
// (no HOME, no PATH), nothing of the supervisor's.
func TestScriptCleanEnvironment(t *testing.T) {
	t.Setenv("PUSHBLASTER_TEST_LEAK", "engine secret") // not parallel: the engine's environment changes
	for _, sup := range [][]string{nil, scriptTestSupervisor()} {
		s := scriptTestSpec(t, "env.sh", sup)
		s.Env = []string{"PWD=" + s.Dir, "AUDIENCE_TOKEN=s3cret", "GREETING=hello world", "EMPTY=", "DUP=first", "DUP=last"}
		var out bytes.Buffer
		_, err := RunScript(context.Background(), s, func(r io.Reader) error {
			_, err := io.Copy(&out, r)
			return err
		}, ScriptHooks{})
		if err != nil {
			t.Fatalf("supervisor %v: %v", sup, err)
		}
		got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		want := []string{"PWD=" + s.Dir, "AUDIENCE_TOKEN=s3cret", "GREETING=hello world", "EMPTY=", "DUP=last"}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("supervisor %v: environment\n%q\nwant\n%q", sup, got, want)
		}
	}
}

// stderr lines are capped, the tail is bounded.
func TestScriptStderrLines(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		s := scriptTestSpec(t, "longline.sh", sup)
		s.StderrTailBytes = 100
		var mu sync.Mutex
		var lines []string
		res, err := RunScript(context.Background(), s, scriptDiscard, ScriptHooks{Stderr: func(l string) { mu.Lock(); lines = append(lines, l); mu.Unlock() }})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(lines) != 2 || lines[0] != strings.Repeat("x", scriptMaxStderrLine)+scriptTruncatedMark || lines[1] != "short" {
			t.Errorf("%d lines: %.60q…", len(lines), lines)
		}
		if len(res.StderrTail) != 100 || !strings.HasSuffix(res.StderrTail, "xx\nshort\n") {
			t.Errorf("tail %q", res.StderrTail)
		}
	})
}

// Lines are split whatever the chunks, and a long one is cut on a character
// boundary.
func TestScriptStderrSplit(t *testing.T) {
	t.Parallel()
	var lines []string
	s := &scriptStderr{max: 8, onLine: func(l string) { lines = append(lines, l) }}
	long := strings.Repeat("x", scriptMaxStderrLine-1) + "é" + strings.Repeat("y", 10) // é straddles the cap
	input := "a\r\nbb\n\n" + long + "\nlast"
	for i := 0; i < len(input); i += 7 { // odd chunks
		s.write([]byte(input[i:min(i+7, len(input))]))
	}
	s.flush()
	want := []string{"a", "bb", "", strings.Repeat("x", scriptMaxStderrLine-1) + scriptTruncatedMark, "last"}
	if !slices.Equal(lines, want) {
		t.Errorf("lines %.80q", lines)
	}
	if s.last() != "last" || s.tailString(100) != "yyy\nlast" {
		t.Errorf("last %q, tail %q", s.last(), s.tailString(100))
	}
}

// A script the kernel cannot execute (no "#!" line) is a script error.
func TestScriptCannotStart(t *testing.T) {
	scriptModes(t, func(t *testing.T, sup []string) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "noshebang.sh"), []byte("echo u1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		path, err := ResolveScript(dir, "noshebang.sh")
		if err != nil {
			t.Fatal(err)
		}
		_, err = RunScript(context.Background(), ScriptSpec{Path: path, Dir: dir, Env: scriptTestEnv, Supervisor: sup}, scriptDiscard, ScriptHooks{})
		scriptWantErr(t, err, pb.KindScript, false, `could not start the script: .*exec format error`, map[string]string{"elapsed": "*"})
	})
}

// A supervisor that is not started by RunScript refuses to run anything.
func TestSuperviseWithoutRunner(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("audience scripts run on Linux only")
	}
	t.Parallel()
	marker := filepath.Join(t.TempDir(), "ran")
	cmd := exec.Command(scriptTestSupervisor()[0], "--", "/bin/sh", "-c", "echo > "+marker)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != supExitFailed || !strings.Contains(string(out), "no environment on fd 4") {
		t.Errorf("err %v, output %q", err, out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the script ran")
	}
}

// A supervisor that is not one is noticed, rather than read as an empty
// audience.
func TestScriptWrongSupervisor(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("audience scripts run on Linux only")
	}
	t.Parallel()
	s := scriptTestSpec(t, "exit.sh", []string{"/bin/true"}, "0")
	_, err := RunScript(context.Background(), s, scriptDiscard, ScriptHooks{})
	scriptWantErr(t, err, pb.KindInternal, false, `the supervisor "/bin/true" exited \(status 0\) without starting the script: .*`, nil)
}

// 10. ResolveScript refuses whatever could run something outside the
// scripts directory, and says how to fix it.
func TestResolveScript(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "scripts")
	outside := filepath.Join(root, "outside.sh")
	write := func(path string, mode os.FileMode) {
		if err := os.WriteFile(path, []byte("#!/bin/sh\necho u1\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // not subject to the umask
			t.Fatal(err)
		}
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
	write(outside, 0o755)
	write(filepath.Join(dir, "ok.sh"), 0o755)
	write(filepath.Join(dir, "sub", "nested.sh"), 0o755)
	write(filepath.Join(dir, "plain.sh"), 0o644)
	must(os.Symlink(outside, filepath.Join(dir, "escape.sh")))
	must(os.Symlink("../outside.sh", filepath.Join(dir, "relescape.sh")))
	must(os.Symlink(root, filepath.Join(dir, "up")))
	must(os.Symlink("ok.sh", filepath.Join(dir, "alias.sh")))
	must(os.Symlink("missing.sh", filepath.Join(dir, "dangling.sh")))
	must(syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o755))
	// The scripts directory may itself be reached through a link.
	linkDir := filepath.Join(root, "link-to-scripts")
	must(os.Symlink(dir, linkDir))

	realDir, err := filepath.EvalSymlinks(dir)
	must(err)
	for _, c := range []struct {
		dir, rel string
		want     string // a regular expression the field message must match, or the path returned
	}{
		{dir, "", `is empty: name a script file inside the scripts directory.*`},
		{dir, "/bin/sh", `"/bin/sh" is an absolute path: give the script's path relative to the scripts directory.*`},
		{dir, outside, `.* is an absolute path: .*`},
		{dir, "../x", `"../x" contains "..": scripts must stay inside the scripts directory.*`},
		{dir, "sub/../ok.sh", `"sub/../ok.sh" contains "..".*`},
		{dir, "..", `".." contains "..".*`},
		{dir, "escape.sh", `"escape.sh" leads to .*/outside.sh, outside the scripts directory .*: copy the script into the scripts directory instead of linking to it`},
		{dir, "relescape.sh", `"relescape.sh" leads to .*/outside.sh, outside the scripts directory.*`},
		{dir, "up/outside.sh", `"up/outside.sh" leads to .*/outside.sh, outside the scripts directory.*`},
		{dir, "up", `"up" leads to .*, outside the scripts directory.*`},
		{dir, "missing.sh", `"missing.sh" does not exist in the scripts directory .*`},
		{dir, "dangling.sh", `"dangling.sh" does not exist in the scripts directory .*`},
		{dir, "sub", `"sub" is a directory: name the script file inside it`},
		{dir, ".", `"\." is a directory: .*`},
		{dir, "fifo", `"fifo" is not a regular file .*`},
		{dir, "plain.sh", `"plain.sh" is not executable: chmod \+x .*/plain.sh`},
		{filepath.Join(root, "nope"), "ok.sh", `the scripts directory .*/nope does not exist: .*`},
		{outside, "ok.sh", `the scripts directory .*/outside.sh is not a directory: .*`},
		{"", "ok.sh", `no scripts directory is configured: .*`},
		{dir, "ok.sh", filepath.Join(realDir, "ok.sh")},
		{dir, "./ok.sh", filepath.Join(realDir, "ok.sh")},
		{dir, "sub/nested.sh", filepath.Join(realDir, "sub", "nested.sh")},
		{dir, "alias.sh", filepath.Join(realDir, "ok.sh")}, // a link inside is fine; the target is returned
		{linkDir, "ok.sh", filepath.Join(realDir, "ok.sh")},
	} {
		got, err := ResolveScript(c.dir, c.rel)
		if filepath.IsAbs(c.want) {
			if err != nil || got != c.want {
				t.Errorf("ResolveScript(%q, %q) = %q, %v; want %q", c.dir, c.rel, got, err, c.want)
			}
			continue
		}
		if got != "" {
			t.Errorf("ResolveScript(%q, %q) = %q", c.dir, c.rel, got)
		}
		var pe *pb.Error
		if !errors.As(err, &pe) || pe.Kind != pb.KindValidation || len(pe.Fields) != 1 || pe.Fields[0].Field != "audience.script" {
			t.Errorf("ResolveScript(%q, %q): %#v is not a validation error on audience.script", c.dir, c.rel, err)
			continue
		}
		if !regexp.MustCompile("^(?:" + c.want + ")$").MatchString(pe.Fields[0].Message) {
			t.Errorf("ResolveScript(%q, %q): %q does not match %q", c.dir, c.rel, pe.Fields[0].Message, c.want)
		}
	}
}

// Every script in testdata is executable (git keeps the mode).
func TestResolveScriptTestdata(t *testing.T) {
	t.Parallel()
	dir := scriptTestDir(t)
	names, err := filepath.Glob(filepath.Join(dir, "*.sh"))
	if err != nil || len(names) == 0 {
		t.Fatalf("%v %v", names, err)
	}
	for _, n := range names {
		if _, err := ResolveScript(dir, filepath.Base(n)); err != nil {
			t.Error(err)
		}
	}
}

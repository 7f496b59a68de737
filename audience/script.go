package audience

// The script runner. A customer's script is untrusted in one precise sense:
// it may hang, spin, fork, daemonise or die, and the operator must always be
// told which, and nothing it started may outlive the run.
//
// Process layout (Linux):
//
//	engine ── supervisor (optional; own process group, Pdeathsig SIGTERM, child subreaper)
//	              └── script (same group) ── its children (same group, unless they setsid)
//
// Without a supervisor the script itself leads the process group.
//
// The script's stdout is a pipe handed to consume; its stderr is a pipe read
// here line by line. With a supervisor two more pipes exist: fd 3 (status:
// the supervisor writes "signal SIGSEGV" or "error ..." there) and fd 4 (the
// engine's pid and the script's environment, so that the script's
// environment is exactly ScriptSpec.Env while the supervisor itself keeps
// the engine's environment; see Supervise).

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
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	pb "github.com/pushblaster/pushblaster"
)

// scriptField is the configuration field a ResolveScript refusal names.
const scriptField = "audience.script"

// ResolveScript returns the absolute path of rel inside dir, refusing anything that could run a command outside it.
//
// rel must be a relative path without any ".." element; after resolving
// symbolic links (of dir too) it must still lie inside dir, and it must be
// an existing regular file the engine's user may execute. The returned path
// has its symbolic links resolved, so that what is checked is what runs.
// Every refusal is a validation *pb.Error whose field audience.script says
// what is wrong and how to fix it.
func ResolveScript(dir, rel string) (string, error) {
	refuse := func(format string, args ...any) error {
		var v pb.Validation
		v.Add(scriptField, format, args...)
		return v.Err()
	}
	if rel == "" {
		return "", refuse("is empty: name a script file inside the scripts directory, e.g. \"audience.py\"")
	}
	if strings.ContainsRune(rel, 0) {
		return "", refuse("%q contains a NUL byte: name a script file inside the scripts directory", rel)
	}
	if filepath.IsAbs(rel) || strings.HasPrefix(rel, "/") {
		return "", refuse("%q is an absolute path: give the script's path relative to the scripts directory, e.g. \"audience.py\"", rel)
	}
	for _, el := range strings.Split(filepath.ToSlash(rel), "/") {
		if el == ".." {
			return "", refuse("%q contains \"..\": scripts must stay inside the scripts directory; name the file relative to it, without \"..\"", rel)
		}
	}
	if dir == "" {
		return "", refuse("no scripts directory is configured: set the engine's scripts directory (--scripts-dir) to enable script audiences")
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", refuse("the scripts directory %s does not exist: create it or fix the engine's scripts directory (--scripts-dir)", dir)
		}
		return "", refuse("the scripts directory %s cannot be read (%v): fix its permissions or the engine's scripts directory (--scripts-dir)", dir, scriptUnwrapPathError(err))
	}
	if realDir, err = filepath.Abs(realDir); err != nil {
		return "", refuse("the scripts directory %s has no absolute path (%v)", dir, err)
	}
	if st, err := os.Stat(realDir); err != nil || !st.IsDir() {
		return "", refuse("the scripts directory %s is not a directory: point the engine's scripts directory (--scripts-dir) at a directory", dir)
	}
	target := filepath.Join(realDir, rel)
	realTarget, err := filepath.EvalSymlinks(target)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", refuse("%q does not exist in the scripts directory %s (or is a symbolic link to nothing): check the name or copy the script there", rel, realDir)
		}
		return "", refuse("%q cannot be read (%v): fix the permissions of the script and of its directories", rel, scriptUnwrapPathError(err))
	}
	if realTarget == realDir {
		return "", refuse("%q is a directory: name the script file inside it", rel)
	}
	if !scriptInside(realDir, realTarget) {
		return "", refuse("%q leads to %s, outside the scripts directory %s: copy the script into the scripts directory instead of linking to it", rel, realTarget, realDir)
	}
	st, err := os.Stat(realTarget)
	if err != nil {
		return "", refuse("%q cannot be read (%v): fix the permissions of the script", rel, scriptUnwrapPathError(err))
	}
	if st.IsDir() {
		return "", refuse("%q is a directory: name the script file inside it", rel)
	}
	if !st.Mode().IsRegular() {
		return "", refuse("%q is not a regular file (%s): name an executable script file", rel, st.Mode().Type())
	}
	if st.Mode().Perm()&0o111 == 0 {
		return "", refuse("%q is not executable: chmod +x %s", rel, realTarget)
	}
	if err := scriptCheckExecutable(realTarget); err != nil {
		return "", refuse("%q is not executable by the engine's user (%v): make it executable for that user (chmod, chown), or run the engine as the script's owner", rel, err)
	}
	return realTarget, nil
}

// scriptInside reports whether path lies strictly inside dir; both are
// absolute and free of symbolic links.
func scriptInside(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	if err != nil || rel == "." || filepath.IsAbs(rel) {
		return false
	}
	return rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// scriptUnwrapPathError drops the operation and path of a *fs.PathError, which
// the refusal message already names.
func scriptUnwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// ScriptSpec says what to run and under which limits. Zero durations and
// sizes take their defaults.
type ScriptSpec struct {
	Path string   // absolute, from ResolveScript
	Dir  string   // scripts directory; also the working directory
	Args []string // passed as is, no shell
	// Env is the COMPLETE environment ("K=V"); the caller builds it (clean +
	// allow-listed). Nothing of the engine's environment is added. If a name
	// appears twice, the last one wins.
	Env []string
	// Timeout bounds the whole run (default 5m); StallTimeout bounds a
	// silence: no byte on stdout or stderr while the engine waits for one
	// (default 2m); HeartbeatEvery is the heartbeat period (default 10s).
	Timeout, StallTimeout, HeartbeatEvery time.Duration
	// StderrTailBytes is how much stderr is retained for errors and
	// artefacts (default 64 KiB; the tail is kept).
	StderrTailBytes int
	// Supervisor is the argv prefix that runs the script under Supervise
	// (e.g. {"/usr/bin/pushblaster", "__supervise"}); nil runs the script
	// directly (no protection if the engine itself dies). The supervisor
	// process gets the engine's own environment; the script still gets
	// exactly Env (it travels over a pipe).
	Supervisor []string
}

// ScriptSpec defaults.
const (
	scriptDefaultTimeout         = 5 * time.Minute
	scriptDefaultStallTimeout    = 2 * time.Minute
	scriptDefaultHeartbeatEvery  = 10 * time.Second
	scriptDefaultStderrTailBytes = 64 << 10
)

// Script runner internals.
const (
	// scriptMaxStderrLine caps one stderr line handed to hooks.Stderr.
	scriptMaxStderrLine = 4 << 10
	// scriptTruncatedMark ends a stderr line that was cut at scriptMaxStderrLine.
	scriptTruncatedMark = " …[line truncated]"
	// scriptContextTail is how much stderr goes into an error's context.
	scriptContextTail = 2 << 10
	// scriptMessageLine caps the stderr line quoted in an error message.
	scriptMessageLine = 500
	// scriptSupervisorGrace is how long a supervisor asked to stop (SIGTERM)
	// may take to kill the script's tree before its group is SIGKILLed.
	scriptSupervisorGrace = 5 * time.Second
	// scriptSupervisorResend: SIGTERM is sent again this often during the
	// grace, in case the first one came before the supervisor listened.
	scriptSupervisorResend = 100 * time.Millisecond
	// scriptConsumeExitGrace: when consume fails after the end of the
	// output, the script probably exited and is the real cause; its exit
	// is awaited this long before it is killed.
	scriptConsumeExitGrace = time.Second
	// scriptDrainGrace bounds the reading of what a stopped script left in
	// its pipes.
	scriptDrainGrace = time.Second
	// scriptGoneLimit bounds the wait for a SIGKILLed group to disappear.
	scriptGoneLimit = 10 * time.Second
	// scriptExitTempFail is EX_TEMPFAIL: the script says "try again later".
	scriptExitTempFail = 75
)

// withDefaults returns s with every zero limit set to its default.
func (s ScriptSpec) withDefaults() ScriptSpec {
	if s.Timeout <= 0 {
		s.Timeout = scriptDefaultTimeout
	}
	if s.StallTimeout <= 0 {
		s.StallTimeout = scriptDefaultStallTimeout
	}
	if s.HeartbeatEvery <= 0 {
		s.HeartbeatEvery = scriptDefaultHeartbeatEvery
	}
	if s.StderrTailBytes <= 0 {
		s.StderrTailBytes = scriptDefaultStderrTailBytes
	}
	return s
}

// Heartbeat is a running script's periodic report.
type Heartbeat struct {
	Elapsed    time.Duration // since the start
	Bytes      int64         // stdout bytes read so far
	Rows       int64         // from ScriptHooks.Rows (0 without it)
	LastStderr string        // the last non-blank stderr line
	CPU        time.Duration // CPU used so far by the script's process group
}

// ScriptHooks observe a running script. Every hook may be nil. Hooks must
// not block for long: Stderr runs on the goroutine that drains stderr (a
// slow hook slows the script down), Heartbeat and Rows on the one that
// watches timeouts. Rows is called concurrently with consume.
type ScriptHooks struct {
	Stderr    func(line string) // every stderr line, as it comes (may be nil)
	Heartbeat func(Heartbeat)   // every HeartbeatEvery (may be nil)
	Rows      func() int64      // rows consumed so far, for heartbeats (may be nil)
}

// ScriptResult describes a finished run, successful or not.
type ScriptResult struct {
	// ExitCode is the script's exit status; -1 if it was killed by a
	// signal (then Signal names it, e.g. "SIGSEGV") or never ran.
	ExitCode int
	Signal   string
	// Elapsed is the wall time of the run; CPU the user+system time of the
	// script and every descendant that was waited for (with a supervisor,
	// including the supervisor's own few milliseconds).
	Elapsed, CPU time.Duration
	// StderrTail is the end of stderr (at most StderrTailBytes).
	StderrTail string
	// Bytes is how much stdout was read.
	Bytes int64
}

// scriptStop says why the runner stopped a script.
type scriptStop int

// Why a script was stopped.
const (
	scriptStopNone scriptStop = iota
	scriptStopCancelled
	scriptStopDeadline
	scriptStopTimeout
	scriptStopStalled
	scriptStopConsume
)

// RunScript runs the script and hands its stdout to consume, which must read it to EOF (or return an error, which stops the script). It returns when the script and everything it started are gone.
//
// The script runs in its own process group (led by the supervisor if
// spec.Supervisor is set), with stdin /dev/null, working directory
// spec.Dir and exactly spec.Env. It is killed — the whole group, and every
// descendant that could be found, SIGKILL — when spec.Timeout passes, when
// it stays silent for spec.StallTimeout, when ctx is done or when consume
// fails; also anything it leaves running when it exits is killed. RunScript
// waits for consume to return, so consume should only block on its reader.
//
// Errors are *pb.Error with context exit_code, elapsed, and signal and
// stderr_tail when known:
//   - timeout (recoverable), reason "timeout": "timed out after 5m0s; …";
//   - timeout (recoverable), reason "stalled": "stalled: no output for
//     2m0s, 0.0 s CPU in that time" — the CPU tells a hung script (0.0)
//     from a busy one;
//   - timeout (recoverable), reason "deadline": ctx's deadline passed;
//   - abort, reason "cancelled": ctx was cancelled;
//   - script: "exited with status 3: <last stderr line>" (recoverable only
//     for status 75, EX_TEMPFAIL), "killed by signal SIGSEGV" (recoverable),
//     or the script could not be started;
//   - consume's error, its kind kept, prefixed "script output: ".
func RunScript(ctx context.Context, spec ScriptSpec, consume func(stdout io.Reader) error, hooks ScriptHooks) (ScriptResult, error) {
	spec = spec.withDefaults()
	res := ScriptResult{ExitCode: -1}
	switch {
	case consume == nil:
		return res, pb.Errorf(pb.KindInternal, "RunScript: consume is nil")
	case !filepath.IsAbs(spec.Path):
		return res, pb.Errorf(pb.KindInternal, "RunScript: script path %q is not absolute (use ResolveScript)", spec.Path)
	case spec.Dir == "":
		return res, pb.Errorf(pb.KindInternal, "RunScript: no working directory (ScriptSpec.Dir)")
	case len(spec.Supervisor) > 0 && spec.Supervisor[0] == "":
		return res, pb.Errorf(pb.KindInternal, "RunScript: empty supervisor command")
	}
	env, err := scriptCleanEnv(spec.Env)
	if err != nil {
		return res, err
	}
	spec.Env = env
	if err := ctx.Err(); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return res, pb.Errorf(pb.KindTimeout, "deadline exceeded before the script started").With("reason", "deadline")
		}
		return res, pb.Errorf(pb.KindAbort, "cancelled before the script started").With("reason", "cancelled")
	}
	r := &scriptRun{spec: spec, hooks: hooks, consume: consume}
	return r.run(ctx)
}

// scriptCleanEnv checks that every entry is "K=V" and drops all but the last
// of a repeated name (as os/exec does), so that the script's environment is
// the same with and without a supervisor.
func scriptCleanEnv(env []string) ([]string, error) {
	last := make(map[string]int, len(env))
	for i, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsRune(kv, 0) {
			return nil, pb.Errorf(pb.KindInternal, "RunScript: environment entry %d (%q) is not NAME=value", i, kv)
		}
		last[k] = i
	}
	out := make([]string, 0, len(last))
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if last[k] == i {
			out = append(out, kv)
		}
	}
	return out, nil
}

// scriptRun is one run of RunScript.
type scriptRun struct {
	spec    ScriptSpec
	hooks   ScriptHooks
	consume func(io.Reader) error
	start   time.Time

	bytes atomic.Int64 // stdout bytes read
	live  scriptLiveness
	err   scriptStderr

	statusR *os.File // the supervisor's fd 3
}

// scriptLiveness tracks the last activity: any byte on stdout or stderr.
// Time the consumer spends on data it already has is not the script's
// silence: the clock restarts when consume comes back for more, and it is
// paused while consume holds data.
type scriptLiveness struct {
	mu   sync.Mutex
	last time.Time
	busy bool // consume holds data and is not waiting in Read
}

// touch restarts the silence clock.
func (l *scriptLiveness) touch() {
	l.mu.Lock()
	l.last = time.Now()
	l.mu.Unlock()
}

// consumerGone: consume returned; it holds nothing any more.
func (l *scriptLiveness) consumerGone() {
	l.mu.Lock()
	l.busy = false
	l.mu.Unlock()
}

func (l *scriptLiveness) activity(busy bool) {
	l.mu.Lock()
	l.last = time.Now()
	l.busy = busy
	l.mu.Unlock()
}

// idle returns how long the engine has been waiting for a byte (0 while
// consume is busy) and when the silence began.
func (l *scriptLiveness) idle(now time.Time) (time.Duration, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.busy {
		return 0, l.last
	}
	return now.Sub(l.last), l.last
}

// scriptReader is the stdout given to consume: it counts bytes and feeds the
// liveness clock.
type scriptReader struct {
	r   *scriptRun
	f   *os.File
	eof atomic.Bool
}

func (sr *scriptReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	sr.r.live.activity(false)
	n, err := sr.f.Read(p)
	if n > 0 {
		sr.r.bytes.Add(int64(n))
		sr.r.live.activity(true)
	}
	if err == io.EOF {
		sr.eof.Store(true)
		sr.r.live.activity(false)
	}
	return n, err
}

// scriptStderr drains stderr: lines for the hook, the last line, the tail.
type scriptStderr struct {
	mu       sync.Mutex
	tail     []byte
	max      int
	lastLine string

	line    []byte // the current, incomplete line
	cut     bool   // the current line was truncated; skip to its end
	onLine  func(string)
	touched func()
}

func (s *scriptStderr) write(p []byte) {
	s.mu.Lock()
	switch {
	case len(p) >= s.max:
		s.tail = append(s.tail[:0], p[len(p)-s.max:]...)
	case len(s.tail)+len(p) > s.max:
		drop := len(s.tail) + len(p) - s.max
		s.tail = append(s.tail[:0], s.tail[drop:]...)
		s.tail = append(s.tail, p...)
	default:
		s.tail = append(s.tail, p...)
	}
	s.mu.Unlock()
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if !s.cut {
			room := scriptMaxStderrLine - len(s.line)
			if len(chunk) > room {
				s.line = append(s.line, chunk[:room]...)
				s.emit(true)
				s.cut = true
			} else {
				s.line = append(s.line, chunk...)
			}
		}
		if i < 0 {
			return
		}
		if s.cut {
			s.cut = false
		} else {
			s.emit(false)
		}
		p = p[i+1:]
	}
}

// flush emits a last line that had no newline.
func (s *scriptStderr) flush() {
	if len(s.line) > 0 && !s.cut {
		s.emit(false)
	}
}

func (s *scriptStderr) emit(truncated bool) {
	b := bytes.TrimSuffix(s.line, []byte("\r"))
	if truncated {
		b = b[:scriptCompleteRunes(b)]
	}
	line := string(b)
	if truncated {
		line += scriptTruncatedMark
	}
	s.line = s.line[:0]
	if strings.TrimSpace(line) != "" {
		s.mu.Lock()
		s.lastLine = line
		s.mu.Unlock()
	}
	if s.onLine != nil {
		s.onLine(line)
	}
}

func (s *scriptStderr) last() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastLine
}

// tailString returns at most n bytes of the end of stderr, starting on a
// line (or at least a character) boundary when possible.
func (s *scriptStderr) tailString(n int) string {
	s.mu.Lock()
	b := s.tail
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:]
		}
	}
	out := string(b)
	s.mu.Unlock()
	for len(out) > 0 && !utf8.RuneStart(out[0]) {
		out = out[1:]
	}
	return out
}

// scriptStatus is what the supervisor reported on fd 3.
type scriptStatus struct {
	started  bool   // "started <pid>"
	signal   string // "signal <name>"
	startErr string // "error <message>"
}

// scriptParseStatus reads the supervisor's fd 3 report.
func scriptParseStatus(b []byte) scriptStatus {
	var st scriptStatus
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "started ") {
			st.started = true
		} else if v, ok := strings.CutPrefix(line, "signal "); ok {
			st.signal = strings.TrimSpace(v)
		} else if v, ok := strings.CutPrefix(line, "error "); ok {
			st.startErr = strings.TrimSpace(v)
		}
	}
	return st
}

// scriptEnvPayload is what the runner writes on the supervisor's fd 4: the
// engine's pid, then every environment entry, each NUL-terminated.
func scriptEnvPayload(enginePid int, env []string) []byte {
	var b bytes.Buffer
	b.WriteString(strconv.Itoa(enginePid))
	b.WriteByte(0)
	for _, kv := range env {
		b.WriteString(kv)
		b.WriteByte(0)
	}
	return b.Bytes()
}

// elapsed is the time since the start.
func (r *scriptRun) elapsed() time.Duration { return time.Since(r.start) }

func (r *scriptRun) run(ctx context.Context) (res ScriptResult, _ error) {
	spec := r.spec
	res.ExitCode = -1
	supervised := len(spec.Supervisor) > 0

	var files []*os.File // every pipe end, closed on return
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	pipe := func() (*os.File, *os.File, error) {
		pr, pw, err := os.Pipe()
		if err == nil {
			files = append(files, pr, pw)
		}
		return pr, pw, err
	}
	outR, outW, err := pipe()
	if err != nil {
		return res, pb.Errorf(pb.KindInternal, "script stdout pipe: %w", err)
	}
	errR, errW, err := pipe()
	if err != nil {
		return res, pb.Errorf(pb.KindInternal, "script stderr pipe: %w", err)
	}

	cmd := &exec.Cmd{Dir: spec.Dir, Stdout: outW, Stderr: errW} // Stdin nil: /dev/null
	var envW, envR, statusW *os.File
	if supervised {
		path := spec.Supervisor[0]
		if !filepath.IsAbs(path) {
			if path, err = exec.LookPath(path); err != nil {
				return res, pb.Errorf(pb.KindInternal, "script supervisor %q: %w", spec.Supervisor[0], err)
			}
		}
		if r.statusR, statusW, err = pipe(); err != nil {
			return res, pb.Errorf(pb.KindInternal, "supervisor status pipe: %w", err)
		}
		if envR, envW, err = pipe(); err != nil {
			return res, pb.Errorf(pb.KindInternal, "supervisor environment pipe: %w", err)
		}
		cmd.Path = path
		cmd.Args = append(append(append([]string(nil), spec.Supervisor...), spec.Path), spec.Args...)
		cmd.Env = os.Environ() // the supervisor is the engine's; the script's env goes over fd 4
		cmd.ExtraFiles = []*os.File{statusW, envR}
	} else {
		cmd.Path = spec.Path
		cmd.Args = append([]string{spec.Path}, spec.Args...)
		cmd.Env = append([]string{}, spec.Env...) // never nil: nil would mean os.Environ()
	}

	r.start = time.Now()
	r.live.activity(false)
	child, err := scriptStart(cmd, supervised)
	// The child has its copies; the engine keeps only the read ends (and
	// fd 4's write end).
	for _, f := range []*os.File{outW, errW, statusW, envR} {
		if f != nil {
			f.Close()
		}
	}
	if err != nil {
		res.Elapsed = r.elapsed()
		if supervised { // the engine's setup, not the script
			return res, pb.Errorf(pb.KindInternal, "could not start the script supervisor %s: %v", cmd.Path, scriptUnwrapPathError(err)).
				With("elapsed", scriptRound(res.Elapsed).String())
		}
		return res, pb.Errorf(pb.KindScript, "could not start the script: %v", scriptUnwrapPathError(err)).
			With("elapsed", scriptRound(res.Elapsed).String())
	}
	// However run ends (a panicking hook included), the group dies and the
	// child is reaped.
	defer child.ensureGone()

	if supervised {
		payload := scriptEnvPayload(os.Getpid(), spec.Env)
		go func() {
			envW.Write(payload) // an error means the supervisor died; its exit says why
			envW.Close()
		}()
	}

	// Stderr.
	r.err.max = spec.StderrTailBytes
	r.err.onLine = r.hooks.Stderr
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		buf := make([]byte, 32<<10)
		for {
			n, err := errR.Read(buf)
			if n > 0 {
				r.live.touch()
				r.err.write(buf[:n])
			}
			if err != nil {
				r.err.flush()
				return
			}
		}
	}()

	// Supervisor status (fd 3).
	statusDone := make(chan scriptStatus, 1)
	if supervised {
		go func() {
			// The script's silence starts when it does, not when the
			// supervisor does.
			var b []byte
			sc := bufio.NewScanner(r.statusR)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "started ") {
					r.live.touch()
				}
				b = append(append(b, sc.Bytes()...), '\n')
			}
			statusDone <- scriptParseStatus(b)
		}()
	} else {
		statusDone <- scriptStatus{}
	}

	// Stdout, to consume.
	reader := &scriptReader{r: r, f: outR}
	consumeDone := make(chan error, 1)
	go func() {
		consumeDone <- r.runConsume(reader)
	}()

	// The watch loop.
	var (
		stop        = scriptStopNone
		stopErr     error // consume's error
		stopAt      time.Duration
		stallCPU    time.Duration
		exited      = child.exited
		reaped      bool
		consumed    bool
		stderrEnded bool
		status      scriptStatus
		statusEnded bool
		goneErr     error
		pendingErr  error // consume failed after EOF: waiting briefly for the exit
		graceC      <-chan time.Time
		supGraceC   <-chan time.Time // the supervisor's time to clean up
		supResend   *time.Ticker     // SIGTERM again, in case one came too early
		supResendC  <-chan time.Time
		pipesClosed bool
		heldOpen    bool // the script had exited, but its output was held open
	)
	timeout := time.NewTimer(spec.Timeout)
	defer timeout.Stop()
	heartbeat := time.NewTicker(max(spec.HeartbeatEvery, 10*time.Millisecond))
	defer heartbeat.Stop()
	stallEvery := min(max(spec.StallTimeout/10, 10*time.Millisecond), time.Second)
	stallTick := time.NewTicker(stallEvery)
	defer stallTick.Stop()
	var silenceFrom time.Time // start of the silence the baseline belongs to
	cpuBase := time.Duration(0)
	ctxDone := ctx.Done()

	halt := func(why scriptStop, cause error) {
		if stop != scriptStopNone {
			return
		}
		stop, stopErr, stopAt = why, cause, r.elapsed()
		pendingErr, graceC = nil, nil
		if exited == nil {
			// Already exited and its group gone: if its output stays
			// silent but open, a process that left the group holds it (no
			// supervisor to find it).
			heldOpen = why == scriptStopStalled
			return
		}
		if supervised {
			// The supervisor kills the tree it reaps (setsid'd descendants
			// included) and exits; if it does not, its group is SIGKILLed.
			child.terminate()
			supGraceC = time.After(scriptSupervisorGrace)
			supResend = time.NewTicker(scriptSupervisorResend)
			supResendC = supResend.C
		} else {
			child.killAll()
		}
	}

	for {
		if !reaped && exited == nil {
			// The leader (script or supervisor) is a zombie: its pid, and
			// so its group id, cannot be reused yet. Kill what is left in
			// the group, wait until it is gone, then reap.
			child.killAll()
			goneErr = child.waitGroupGone(scriptGoneLimit)
			child.reap()
			reaped = true
			supGraceC, supResendC = nil, nil
			if supResend != nil {
				supResend.Stop()
			}
		}
		if reaped && stop != scriptStopNone && !pipesClosed {
			// Nothing more is wanted from the script: what it wrote before
			// it died is still read (the end of stderr, the supervisor's
			// report), but a process outside the group that still holds a
			// pipe cannot keep the readers waiting.
			pipesClosed = true
			drainBy := time.Now().Add(scriptDrainGrace)
			for _, f := range []*os.File{outR, errR, r.statusR} {
				if f != nil {
					f.SetReadDeadline(drainBy)
				}
			}
		}
		if reaped && consumed && stderrEnded && statusEnded {
			break
		}
		select {
		case <-ctxDone:
			ctxDone = nil
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				halt(scriptStopDeadline, nil)
			} else {
				halt(scriptStopCancelled, nil)
			}
		case <-timeout.C:
			halt(scriptStopTimeout, nil)
		case now := <-stallTick.C:
			idle, from := r.live.idle(now)
			if !from.Equal(silenceFrom) {
				silenceFrom = from
				if !reaped {
					cpuBase = child.groupCPU()
				}
			}
			if idle >= spec.StallTimeout && stop == scriptStopNone {
				if !reaped {
					stallCPU = max(0, child.groupCPU()-cpuBase)
				}
				halt(scriptStopStalled, nil)
			}
		case <-heartbeat.C:
			if r.hooks.Heartbeat != nil {
				hb := Heartbeat{Elapsed: r.elapsed(), Bytes: r.bytes.Load(), LastStderr: r.err.last()}
				if r.hooks.Rows != nil {
					hb.Rows = r.hooks.Rows()
				}
				if !reaped {
					hb.CPU = child.groupCPU()
				}
				r.hooks.Heartbeat(hb)
			}
		case <-exited:
			exited = nil
			if pendingErr != nil {
				// consume failed at the end of the output and the script
				// has now exited: its status decides (see below).
				stopErr, pendingErr, graceC = pendingErr, nil, nil
			}
		case err := <-consumeDone:
			consumed = true
			r.live.consumerGone()
			if err != nil && stop == scriptStopNone {
				if reader.eof.Load() && exited != nil {
					pendingErr = err
					graceC = time.After(scriptConsumeExitGrace)
				} else if exited != nil {
					halt(scriptStopConsume, err)
				} else {
					stopErr = err // the script already exited; decided below
				}
			}
		case <-graceC:
			graceC = nil
			err := pendingErr
			pendingErr = nil
			halt(scriptStopConsume, err)
		case <-supResendC:
			child.terminate()
		case <-supGraceC:
			supGraceC, supResendC = nil, nil
			child.killAll()
		case <-stderrDone:
			stderrDone = nil
			stderrEnded = true
		case status = <-statusDone:
			statusDone = nil
			statusEnded = true
		}
	}

	// The outcome.
	res.Elapsed = r.elapsed()
	res.Bytes = r.bytes.Load()
	res.StderrTail = r.err.tailString(spec.StderrTailBytes)
	res.ExitCode, res.Signal, res.CPU = child.outcome()
	if supervised && res.ExitCode >= 0 && status.signal != "" {
		res.ExitCode, res.Signal = -1, status.signal
	}
	outErr := r.outcome(stop, stopErr, stopAt, stallCPU, status, res)
	if heldOpen && outErr != nil {
		if pe, ok := outErr.(*pb.Error); ok {
			pe.With("detail", fmt.Sprintf("the script had exited (%s), but a process it started outside its process group kept its output open; run it with a supervisor to kill such processes too",
				scriptExitText(res)))
		}
	}
	if goneErr != nil {
		e := pb.Errorf(pb.KindInternal, "%v", goneErr)
		if outErr != nil {
			e = e.With("outcome", outErr.Error())
		}
		outErr = r.decorate(e, res)
	}
	return res, outErr
}

// runConsume calls consume; if it returns nil before the end of the output,
// the rest must be empty (no row may be silently dropped).
func (r *scriptRun) runConsume(reader *scriptReader) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = pb.Errorf(pb.KindInternal, "reading the script's output panicked: %v", p).With("stack", string(debug.Stack()))
		}
	}()
	if err := r.consume(reader); err != nil {
		return err
	}
	if reader.eof.Load() {
		return nil
	}
	var b [512]byte
	for {
		n, err := reader.Read(b[:])
		if n > 0 {
			return pb.Errorf(pb.KindInternal, "the script's output was not read to the end (%d bytes after the last read)", n)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return pb.Errorf(pb.KindInternal, "script output: %w", err)
		}
	}
}

// outcome turns what happened into the error RunScript returns.
func (r *scriptRun) outcome(stop scriptStop, stopErr error, stopAt, stallCPU time.Duration, status scriptStatus, res ScriptResult) error {
	spec := r.spec
	switch stop {
	case scriptStopCancelled:
		return r.decorate(pb.Errorf(pb.KindAbort, "cancelled after %s; script killed", scriptRound(stopAt)).With("reason", "cancelled"), res)
	case scriptStopDeadline:
		return r.decorate(pb.Errorf(pb.KindTimeout, "deadline exceeded after %s; script killed", scriptRound(stopAt)).With("reason", "deadline"), res)
	case scriptStopTimeout:
		return r.decorate(pb.Errorf(pb.KindTimeout, "timed out after %s; %s so far", spec.Timeout, r.progress(res)).With("reason", "timeout"), res)
	case scriptStopStalled:
		e := pb.Errorf(pb.KindTimeout, "stalled: no output for %s, %.1f s CPU in that time", spec.StallTimeout, stallCPU.Seconds()).
			With("reason", "stalled").With("stall_cpu_seconds", fmt.Sprintf("%.2f", stallCPU.Seconds())).WithRecoverable(true)
		return r.decorate(e, res)
	case scriptStopConsume:
		return r.consumeError(stopErr, res)
	}
	var e *pb.Error
	switch {
	case status.startErr != "":
		e = pb.Errorf(pb.KindScript, "could not start the script: %s", status.startErr)
	case len(spec.Supervisor) > 0 && !status.started:
		e = pb.Errorf(pb.KindInternal, "the supervisor %q exited (status %d%s) without starting the script: is it the engine's supervise command?",
			strings.Join(spec.Supervisor, " "), res.ExitCode, scriptIf(res.Signal != "", ", "+res.Signal))
	case res.Signal != "":
		e = pb.Errorf(pb.KindScript, "killed by signal %s", res.Signal).WithRecoverable(true)
	case res.ExitCode != 0:
		msg := fmt.Sprintf("exited with status %d", res.ExitCode)
		if line := r.err.last(); line != "" {
			msg += ": " + scriptClip(line, scriptMessageLine)
		}
		e = pb.Errorf(pb.KindScript, "%s", msg).WithRecoverable(res.ExitCode == scriptExitTempFail)
		if res.ExitCode == scriptExitTempFail {
			e = e.With("hint", "exit status 75 (EX_TEMPFAIL): the script says try again later")
		}
	}
	if e != nil {
		if stopErr != nil {
			e = e.With("consume_error", stopErr.Error())
		}
		return r.decorate(e, res)
	}
	if stopErr != nil {
		return r.consumeError(stopErr, res)
	}
	return nil
}

func (r *scriptRun) consumeError(err error, res ScriptResult) error {
	e := pb.WrapError(pb.AsError(err).Kind, err, "script output")
	return r.decorate(e, res)
}

// progress says how far the script got, for timeout messages.
func (r *scriptRun) progress(res ScriptResult) string {
	if r.hooks.Rows != nil {
		return fmt.Sprintf("%d rows, %d bytes of output", r.hooks.Rows(), res.Bytes)
	}
	return fmt.Sprintf("%d bytes of output", res.Bytes)
}

// decorate adds the run's context to e.
func (r *scriptRun) decorate(e *pb.Error, res ScriptResult) *pb.Error {
	e = e.With("exit_code", strconv.Itoa(res.ExitCode)).With("elapsed", scriptRound(res.Elapsed).String()).
		With("bytes", strconv.FormatInt(res.Bytes, 10))
	if res.Signal != "" {
		e = e.With("signal", res.Signal)
	}
	if tail := r.err.tailString(scriptContextTail); tail != "" {
		e = e.With("stderr_tail", tail)
	}
	if r.hooks.Rows != nil {
		e = e.With("rows", strconv.FormatInt(r.hooks.Rows(), 10))
	}
	return e
}

// scriptRound rounds a duration for people: 340ms, 12.3s, 2m5s.
func scriptRound(d time.Duration) time.Duration {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

// scriptClip shortens s to at most n bytes, on a character boundary.
func scriptClip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:scriptCompleteRunes([]byte(s[:n]))] + "…"
}

// scriptCompleteRunes returns the length of b without an incomplete UTF-8
// sequence at its end (as left by cutting it anywhere).
func scriptCompleteRunes(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if utf8.FullRune(b[i:]) {
				return len(b)
			}
			return i
		}
	}
	return len(b)
}

// scriptIf returns s if cond holds, else "".
func scriptIf(cond bool, s string) string {
	if cond {
		return s
	}
	return ""
}

// scriptExitText describes how the script ended: "status 0", "signal SIGKILL".
func scriptExitText(res ScriptResult) string {
	if res.Signal != "" {
		return "signal " + res.Signal
	}
	return "status " + strconv.Itoa(res.ExitCode)
}

package audience

// Linux process handling for the script runner, and the supervisor.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// scriptChild is the started leader of the script's process group: the
// script itself, or the supervisor.
type scriptChild struct {
	cmd        *exec.Cmd
	pid        int // also the process group id
	supervised bool

	exited chan struct{} // closed when the leader has exited (a zombie, not reaped)
	reapCh chan struct{} // closed to let the starting goroutine reap it
	waited chan struct{} // closed once it is reaped
	reaped bool

	killed []scriptProc // descendants outside the group, killed one by one
}

// scriptStart starts cmd as the leader of a new process group. The child
// gets a parent-death signal: SIGTERM for the supervisor (which then kills
// the script's whole tree), SIGKILL for a script run directly (which saves
// the script itself, not what it started, if the engine dies).
func scriptStart(cmd *exec.Cmd, supervised bool) (*scriptChild, error) {
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if supervised {
		attr.Pdeathsig = syscall.SIGTERM
	}
	cmd.SysProcAttr = attr
	c := &scriptChild{cmd: cmd, supervised: supervised,
		exited: make(chan struct{}), reapCh: make(chan struct{}), waited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Linux sends the parent-death signal when the *thread* that forked
		// the child exits, not the process. Start and wait on a thread that
		// lives exactly as long as the child: locked, never unlocked, so
		// that it ends with this goroutine, after the reaping.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		scriptWaitExited(cmd.Process.Pid)
		close(c.exited)
		<-c.reapCh
		_ = cmd.Wait() // the outcome is read from cmd.ProcessState
		close(c.waited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	c.pid = cmd.Process.Pid
	return c, nil
}

// scriptWaitExited blocks until pid has exited, without reaping it
// (waitid WNOWAIT): as long as it is not reaped, its pid and so the group id
// cannot be reused, and signalling the group is safe.
func scriptWaitExited(pid int) {
	const pPID = 1     // P_PID
	var info [128]byte // siginfo_t
	for {
		_, _, e := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid), uintptr(unsafe.Pointer(&info)),
			syscall.WEXITED|syscall.WNOWAIT, 0, 0)
		if e != syscall.EINTR {
			return
		}
	}
}

// terminate asks the supervisor to kill the script's tree and exit.
func (c *scriptChild) terminate() {
	if !c.reaped {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
}

// killAll SIGKILLs the group and every descendant of the leader that can be
// found, including those that left the group (setsid). The group is
// stopped first so that nothing forks while the tree is read.
func (c *scriptChild) killAll() {
	if c.reaped {
		return // the group id may belong to someone else by now
	}
	_ = syscall.Kill(-c.pid, syscall.SIGSTOP)
	for _, pid := range scriptDescendants(c.pid) {
		if p, ok := scriptReadStat(pid); ok && p.pgrp != c.pid {
			c.killed = append(c.killed, p)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = syscall.Kill(-c.pid, syscall.SIGKILL)
}

// leftovers lists the processes of the group, and the descendants killed
// outside it, that are still running (zombies are dead: they only wait for
// their parent, maybe a non-reaping init, to reap them).
func (c *scriptChild) leftovers() []int {
	var left []int
	for _, p := range scriptScan(func(p scriptProc) bool { return p.pgrp == c.pid && p.state != 'Z' && p.state != 'X' }) {
		left = append(left, p.pid)
	}
	for _, k := range c.killed {
		if p, ok := scriptReadStat(k.pid); ok && p.start == k.start && p.state != 'Z' && p.state != 'X' && !slices.Contains(left, p.pid) {
			left = append(left, p.pid)
		}
	}
	return left
}

// waitGroupGone waits, while the leader is still unreaped, until nothing of
// the group runs any more, SIGKILLing it again at each poll.
func (c *scriptChild) waitGroupGone(limit time.Duration) error {
	if c.reaped {
		return nil
	}
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for {
		left := c.leftovers()
		if len(left) == 0 {
			return nil
		}
		_ = syscall.Kill(-c.pid, syscall.SIGKILL)
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-poll.C:
		case <-deadline.C:
			return fmt.Errorf("processes %v of the script (group %d) still run %s after SIGKILL", left, c.pid, limit)
		}
	}
}

// reap reaps the leader once it has exited.
func (c *scriptChild) reap() {
	if c.reaped {
		return
	}
	<-c.exited
	close(c.reapCh)
	<-c.waited
	c.reaped = true
}

// ensureGone kills and reaps whatever is left; a no-op after a normal run.
func (c *scriptChild) ensureGone() {
	if c.reaped {
		return
	}
	c.killAll()
	<-c.exited
	c.killAll()
	_ = c.waitGroupGone(scriptGoneLimit)
	c.reap()
}

// groupCPU is the CPU time of the group's processes, counting the children
// they waited for.
func (c *scriptChild) groupCPU() time.Duration {
	if c.reaped {
		return 0
	}
	var ticks uint64
	for _, p := range scriptScan(func(p scriptProc) bool { return p.pgrp == c.pid }) {
		ticks += p.ticks
	}
	return time.Duration(ticks) * time.Second / time.Duration(scriptClockTicks())
}

// outcome is the leader's exit code or signal, and its CPU time (its own and
// that of every descendant it or its descendants waited for).
func (c *scriptChild) outcome() (code int, signal string, cpu time.Duration) {
	st := c.cmd.ProcessState
	if st == nil {
		return -1, "", 0
	}
	cpu = st.UserTime() + st.SystemTime()
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, scriptSignalName(ws.Signal()), cpu
	}
	return st.ExitCode(), "", cpu
}

// scriptCheckExecutable asks the kernel whether the engine's user may
// execute path.
func scriptCheckExecutable(path string) error {
	const xOK = 1
	return syscall.Access(path, xOK)
}

// scriptProc is one line of /proc/<pid>/stat.
type scriptProc struct {
	pid, ppid, pgrp int
	state           byte
	ticks           uint64 // utime+stime+cutime+cstime
	start           uint64 // start time, to tell a reused pid
}

// scriptReadStat reads /proc/<pid>/stat.
func scriptReadStat(pid int) (scriptProc, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return scriptProc{}, false
	}
	return scriptParseStat(pid, b)
}

func scriptParseStat(pid int, b []byte) (scriptProc, bool) {
	// The command name is in parentheses and may hold anything, ")" too.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return scriptProc{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return scriptProc{}, false
	}
	p := scriptProc{pid: pid, state: f[0][0]}
	var err error
	if p.ppid, err = strconv.Atoi(f[1]); err != nil {
		return scriptProc{}, false
	}
	if p.pgrp, err = strconv.Atoi(f[2]); err != nil {
		return scriptProc{}, false
	}
	for _, k := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		v, err := strconv.ParseInt(f[k], 10, 64)
		if err == nil && v > 0 {
			p.ticks += uint64(v)
		}
	}
	p.start, _ = strconv.ParseUint(f[19], 10, 64)
	return p, true
}

// scriptScan returns every process for which keep is true.
func scriptScan(keep func(scriptProc) bool) []scriptProc {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	var out []scriptProc
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil || pid <= 0 {
			continue
		}
		if p, ok := scriptReadStat(pid); ok && keep(p) {
			out = append(out, p)
		}
	}
	return out
}

var scriptChildrenFiles = sync.OnceValue(func() bool {
	_, err := os.Stat("/proc/self/task/" + strconv.Itoa(os.Getpid()) + "/children")
	return err == nil
})

// scriptDescendants lists every descendant of pid, from
// /proc/<pid>/task/*/children (or, on kernels without that file, from the
// parent pids of all processes).
func scriptDescendants(pid int) []int {
	var children func(int) []int
	if scriptChildrenFiles() {
		children = scriptChildren
	} else {
		byParent := map[int][]int{}
		for _, p := range scriptScan(func(scriptProc) bool { return true }) {
			byParent[p.ppid] = append(byParent[p.ppid], p.pid)
		}
		children = func(p int) []int { return byParent[p] }
	}
	var out []int
	seen := map[int]bool{pid: true}
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		for _, ch := range children(queue[0]) {
			if !seen[ch] {
				seen[ch] = true
				out = append(out, ch)
				queue = append(queue, ch)
			}
		}
	}
	return out
}

// scriptChildren lists the children of every thread of pid.
func scriptChildren(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	d, err := os.Open(dir)
	if err != nil {
		return nil
	}
	tids, _ := d.Readdirnames(-1)
	d.Close()
	var out []int
	for _, tid := range tids {
		b, err := os.ReadFile(dir + "/" + tid + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// scriptClockTicks is USER_HZ, the unit of /proc/<pid>/stat times: AT_CLKTCK
// from the auxiliary vector, or 100 (its value on every Linux architecture
// Go supports) if that cannot be read.
var scriptClockTicks = sync.OnceValue(func() int64 {
	const atClkTck = 17
	b, err := os.ReadFile("/proc/self/auxv")
	word := strconv.IntSize / 8
	if err == nil {
		for i := 0; i+2*word <= len(b); i += 2 * word {
			var k, v uint64
			if word == 8 {
				k, v = binary.NativeEndian.Uint64(b[i:]), binary.NativeEndian.Uint64(b[i+word:])
			} else {
				k, v = uint64(binary.NativeEndian.Uint32(b[i:])), uint64(binary.NativeEndian.Uint32(b[i+word:]))
			}
			if k == 0 {
				break
			}
			if k == atClkTck && v > 0 && v < 1e6 {
				return int64(v)
			}
		}
	}
	return 100
})

// scriptSignalNames names the signals; others are "SIG<n>".
var scriptSignalNames = map[syscall.Signal]string{
	syscall.SIGABRT: "SIGABRT", syscall.SIGALRM: "SIGALRM", syscall.SIGBUS: "SIGBUS",
	syscall.SIGCHLD: "SIGCHLD", syscall.SIGCONT: "SIGCONT", syscall.SIGFPE: "SIGFPE",
	syscall.SIGHUP: "SIGHUP", syscall.SIGILL: "SIGILL", syscall.SIGINT: "SIGINT",
	syscall.SIGIO: "SIGIO", syscall.SIGKILL: "SIGKILL", syscall.SIGPIPE: "SIGPIPE",
	syscall.SIGPROF: "SIGPROF", syscall.SIGPWR: "SIGPWR", syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGSEGV: "SIGSEGV", syscall.SIGSTOP: "SIGSTOP", syscall.SIGSYS: "SIGSYS",
	syscall.SIGTERM: "SIGTERM", syscall.SIGTRAP: "SIGTRAP", syscall.SIGTSTP: "SIGTSTP",
	syscall.SIGTTIN: "SIGTTIN", syscall.SIGTTOU: "SIGTTOU", syscall.SIGURG: "SIGURG",
	syscall.SIGUSR1: "SIGUSR1", syscall.SIGUSR2: "SIGUSR2", syscall.SIGVTALRM: "SIGVTALRM",
	syscall.SIGWINCH: "SIGWINCH", syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ",
}

// scriptSignalName names s the way operators know it: "SIGSEGV".
func scriptSignalName(s syscall.Signal) string {
	if n, ok := scriptSignalNames[s]; ok {
		return n
	}
	return "SIG" + strconv.Itoa(int(s))
}

// Supervisor exit codes of its own (the script's otherwise).
const (
	supExitFailed = 125 // the supervisor could not run the script
)

// supReap is one child reaped by the supervisor; done means none is left.
type supReap struct {
	pid    int
	status syscall.WaitStatus
	done   bool
}

// Supervise is the supervisor's main: args is the script path and its arguments. It returns the process exit code. The engine binary calls it for a hidden subcommand.
//
// RunScript starts it as the leader of a new process group with a
// parent-death signal (SIGTERM), stdout and stderr the script's pipes, and
// two extra descriptors: fd 3, where it reports "started <pid>", then
// "signal <name>" if the script died of a signal (it then exits 128+n, so
// the engine can tell that from "exit 137"), or "error <message>" if it
// could not run the script; and fd 4, from which it reads the engine's pid
// and the script's environment (NUL-terminated strings). The script gets
// exactly that environment (nothing of the supervisor's own), stdin
// /dev/null, the supervisor's working directory and group.
//
// The supervisor is a child subreaper: whatever the script starts, even
// daemonised (setsid, double fork), stays its descendant. When the script
// exits, and on SIGTERM, SIGINT or SIGHUP, or when its parent is no longer
// the engine (checked every second, in case the parent-death signal was
// missed), it SIGKILLs its group and every descendant, again and again,
// until it has no child left; then it exits with the script's status.
func Supervise(args []string) int {
	// The script's parent-death signal is tied to this thread.
	runtime.LockOSThread()
	status := supOpenFD(3)
	envIn := supOpenFD(4)
	report := func(format string, a ...any) {
		if status != nil {
			fmt.Fprintf(status, format+"\n", a...)
		}
	}
	fail := func(format string, a ...any) int {
		msg := fmt.Sprintf(format, a...)
		fmt.Fprintf(os.Stderr, "pushblaster supervisor: %s\n", msg)
		report("error %s", msg)
		return supExitFailed
	}
	if len(args) == 0 {
		return fail("no script to run")
	}
	if envIn == nil {
		return fail("no environment on fd 4: the supervisor is started by the script runner only")
	}
	// Catch the signals before anything else; one that came earlier killed
	// this process (Go's default), or is caught by the parent check below.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	const prSetChildSubreaper = 36
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		return fail("cannot become a child subreaper: %v", e)
	}
	payload, err := io.ReadAll(envIn)
	envIn.Close()
	if err != nil {
		return fail("reading the environment: %v", err)
	}
	fields := strings.Split(string(payload), "\x00")
	if len(fields) < 2 || fields[len(fields)-1] != "" {
		return fail("malformed environment on fd 4")
	}
	enginePid, err := strconv.Atoi(fields[0])
	if err != nil {
		return fail("malformed engine pid on fd 4: %q", fields[0])
	}
	env := fields[1 : len(fields)-1]
	if os.Getppid() != enginePid {
		return fail("the engine (pid %d) is gone; not starting the script", enginePid)
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return fail("%v", err)
	}
	pid, err := syscall.ForkExec(args[0], args, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{devNull.Fd(), 1, 2},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	devNull.Close()
	if err != nil {
		return fail("cannot run %s: %v", args[0], err)
	}
	report("started %d", pid)

	reaped := make(chan supReap, 16)
	go func() {
		for {
			var ws syscall.WaitStatus
			wpid, err := syscall.Wait4(-1, &ws, 0, nil)
			if err == syscall.EINTR {
				continue
			}
			if err != nil { // ECHILD: no child, so no descendant, is left
				reaped <- supReap{done: true}
				return
			}
			reaped <- supReap{pid: wpid, status: ws}
		}
	}()

	var (
		scriptStatus *syscall.WaitStatus
		cleaning     bool
		sweepC       <-chan time.Time
	)
	parentCheck := time.NewTicker(time.Second)
	defer parentCheck.Stop()
	clean := func() {
		if !cleaning {
			// Sweep again regularly: a process forked just before a sweep
			// is caught by the next one.
			cleaning = true
			t := time.NewTicker(20 * time.Millisecond)
			sweepC = t.C
		}
		supSweep()
	}
loop:
	for {
		select {
		case r := <-reaped:
			if r.done {
				break loop
			}
			if r.pid == pid {
				ws := r.status
				scriptStatus = &ws
			}
			if scriptStatus != nil {
				clean() // the script is gone: so must be all it started
			}
		case <-sigs:
			clean()
		case <-parentCheck.C:
			if os.Getppid() != enginePid {
				clean()
			}
		case <-sweepC:
			supSweep()
		}
	}
	if scriptStatus == nil {
		return fail("lost the script's exit status")
	}
	if scriptStatus.Signaled() {
		report("signal %s", scriptSignalName(scriptStatus.Signal()))
		return 128 + int(scriptStatus.Signal())
	}
	return scriptStatus.ExitStatus()
}

// supSweep SIGKILLs every descendant of the supervisor and every other
// member of its group.
func supSweep() {
	self := os.Getpid()
	for _, pid := range scriptDescendants(self) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	pgrp := syscall.Getpgrp()
	for _, p := range scriptScan(func(p scriptProc) bool { return p.pgrp == pgrp && p.pid != self }) {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
}

// supOpenFD returns fd as a file, close-on-exec so that the script does not
// inherit it, or nil if it is not an open pipe (the runner passes pipes;
// anything else is not ours to write to or close).
func supOpenFD(fd int) *os.File {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFIFO {
		return nil
	}
	syscall.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), "fd"+strconv.Itoa(fd))
}

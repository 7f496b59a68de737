//go:build !linux

package audience

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"time"
)

// Audience scripts need Linux (process groups, /proc, parent-death signals,
// child subreapers); elsewhere they are refused with a clear error.

var errScriptPlatform = fmt.Errorf("audience scripts run on Linux only, not on %s", runtime.GOOS)

// scriptChild is never started on this platform.
type scriptChild struct {
	exited chan struct{}
}

func scriptStart(*exec.Cmd, bool) (*scriptChild, error) { return nil, errScriptPlatform }

func (c *scriptChild) terminate()                            {}
func (c *scriptChild) killAll()                              {}
func (c *scriptChild) waitGroupGone(time.Duration) error     { return nil }
func (c *scriptChild) reap()                                 {}
func (c *scriptChild) ensureGone()                           {}
func (c *scriptChild) groupCPU() time.Duration               { return 0 }
func (c *scriptChild) outcome() (int, string, time.Duration) { return -1, "", 0 }

func scriptCheckExecutable(string) error { return nil }

// Supervise is the supervisor's main: args is the script path and its arguments. It returns the process exit code. The engine binary calls it for a hidden subcommand.
//
// On this platform it only says that scripts need Linux.
func Supervise(args []string) int {
	fmt.Fprintln(os.Stderr, "pushblaster supervisor:", errScriptPlatform)
	return 125
}

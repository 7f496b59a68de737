// Command pushblaster is the scheduled push-notification engine and its
// command-line client: `pushblaster serve` runs the engine and its API;
// the other commands talk to a running server (or, for migrate, to the
// database). Run `pushblaster help` for the list.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/audience"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == superviseCommand {
		// Before any signal handling of ours: the supervisor handles
		// SIGTERM itself (it means "the engine is gone, kill the script").
		os.Exit(audience.Supervise(os.Args[2:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	os.Exit(exitCode(err, os.Stderr))
}

// superviseCommand is the hidden subcommand that supervises an audience
// script so that it dies with the engine.
const superviseCommand = "__supervise"

// errUsage marks a command-line mistake (exit status 2).
var errUsage = errors.New("usage")

// exitError carries an exit status without printing anything more (the
// command already said what it had to).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	fmt.Fprintln(stderr, "pushblaster:", describeError(err))
	return 1
}

// describeError renders an error for a person: the message, then every
// invalid field on its own line.
func describeError(err error) string {
	pe := pb.AsError(err)
	s := pe.Message
	if pe.Kind != pb.KindInternal && pe.Kind != pb.KindValidation {
		s = fmt.Sprintf("%s (%s)", pe.Message, pe.Kind)
	}
	for _, f := range pe.Fields {
		s += fmt.Sprintf("\n  %s: %s", f.Field, f.Message)
	}
	return s
}

const usage = `pushblaster: scheduled push-notification automations.

Engine:
  serve                 run the engine and its API (embedded SQLite by default)
  demo                  watch one automation run through all five phases
  migrate               apply database migrations and exit
  version               print the version and build

Client (talks to a running server; --server, PUSHBLASTER_SERVER):
  automation     list|get|create|apply|update|delete|pause|resume|run|preview
  execution      list|get|cancel|events|watch|artifacts|deliveries
  invalid-tokens list|delete   tokens providers called invalid
  schedule       preview       next send times of a cron expression
  health                       the server's health; exit 0 healthy, 1 degraded, 2 critical, 3 no answer
  errors                       recorded errors, newest first

Run "pushblaster COMMAND -h" for a command's flags.
`

// run is the whole program; tests call it directly.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	env := envFunc(getenv)
	switch args[0] {
	case superviseCommand:
		// The engine runs audience scripts under this: not for people.
		return exitError{audience.Supervise(args[1:])}
	case "serve":
		return runServe(ctx, args[1:], env, stdout, stderr)
	case "demo":
		return runDemo(ctx, args[1:], env, stdout, stderr)
	case "migrate":
		return runMigrate(ctx, args[1:], env, stdout, stderr)
	case "automation", "automations":
		return runAutomation(ctx, args[1:], env, stdin, stdout, stderr)
	case "execution", "executions":
		return runExecution(ctx, args[1:], env, stdout, stderr)
	case "invalid-tokens":
		return runInvalidTokens(ctx, args[1:], env, stdout, stderr)
	case "schedule":
		return runSchedule(ctx, args[1:], env, stdout, stderr)
	case "health":
		return runHealth(ctx, args[1:], env, stdout, stderr)
	case "errors":
		return runErrors(ctx, args[1:], env, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, versionString())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "pushblaster: unknown command %q\n\n%s", args[0], usage)
	return errUsage
}

// versionString names the build: module version, commit and Go version.
func versionString() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "pushblaster (unknown build)"
	}
	rev, dirty := "", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		rev = "no commit"
	}
	return fmt.Sprintf("pushblaster %s (%s%s, %s)", bi.Main.Version, rev, dirty, bi.GoVersion)
}

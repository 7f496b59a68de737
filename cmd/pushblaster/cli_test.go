package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/httpapi"
)

// localRun runs the program in-process with the given environment, without
// a server, and returns what it printed and its exit status.
func localRun(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	err = run(context.Background(), args, func(k string) string { return env[k] }, strings.NewReader(""), &out, &errb)
	code = exitCode(err, &errb)
	return out.String(), errb.String(), code, err
}

// cliAutomation is a valid automation file body.
func cliAutomation(name, cron, zone, lead, title string) map[string]any {
	a := map[string]any{
		"name":     name,
		"schedule": map[string]any{"cron": cron, "timezone": zone},
		"audience": map[string]any{"type": "static", "recipients": []map[string]string{
			{"user_id": "a", "token": "ta"}, {"user_id": "b", "token": "tb"},
		}},
		"test_audience": []map[string]string{{"user_id": "qa", "token": "tq"}},
		"message":       map[string]any{"title": title, "body": "from the CLI test"},
		"delivery":      map[string]any{"provider": "log"},
	}
	if lead != "" {
		a["lead_time"] = lead
	}
	return a
}

func writeJSONFile(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// mustCLI runs a client command and fails the test if it fails.
func (s *server) mustCLI(args ...string) string {
	s.t.Helper()
	out, err := s.cli(args...)
	if err != nil {
		s.t.Fatalf("pushblaster %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// printed returns what the program prints to stderr for err.
func printed(err error) (string, int) {
	var b bytes.Buffer
	code := exitCode(err, &b)
	return b.String(), code
}

// pollUntil polls cond until it holds, failing after a generous deadline.
func pollUntil(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ok, desc := cond()
		if ok {
			return
		}
		last = desc
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last state: %s", what, last)
}

var whenRE = regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d\d:\d\d`)

func TestCLIAutomationWorkflow(t *testing.T) {
	t.Parallel()
	s := startServer(t, databaseEnv(t, "sqlite"))
	dir := t.TempDir()
	alpha := cliAutomation("cli-alpha", "0 9 * * *", "Europe/Berlin", "", "Morning")
	beta := cliAutomation("cli-beta", "30 18 * * 1-5", "America/New_York", "1s", "Evening")
	writeJSONFile(t, filepath.Join(dir, "alpha.json"), alpha)
	writeJSONFile(t, filepath.Join(dir, "beta.json"), beta)
	if err := os.WriteFile(filepath.Join(dir, "README.txt"), []byte("not an automation"), 0o644); err != nil {
		t.Fatal(err)
	}

	applyLines := func(out string) map[string]string {
		t.Helper()
		res := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			result, rest, ok := strings.Cut(line, "\t")
			name, _, _ := strings.Cut(rest, " ")
			if !ok || name == "" {
				t.Fatalf("apply printed %q", out)
			}
			res[name] = result
		}
		return res
	}
	out := s.mustCLI("automation", "apply", "-f", dir)
	if got := applyLines(out); got["cli-alpha"] != "created" || got["cli-beta"] != "created" || len(got) != 2 {
		t.Fatalf("first apply:\n%s", out)
	}
	if !strings.Contains(out, "(id 1, version 1)") || !strings.Contains(out, "next send ") {
		t.Errorf("apply does not show id, version and next send:\n%s", out)
	}
	out = s.mustCLI("automation", "apply", "-f", dir)
	if got := applyLines(out); got["cli-alpha"] != "unchanged" || got["cli-beta"] != "unchanged" {
		t.Fatalf("second apply:\n%s", out)
	}
	alpha["message"] = map[string]any{"title": "Good morning", "body": "edited"}
	writeJSONFile(t, filepath.Join(dir, "alpha.json"), alpha)
	out = s.mustCLI("automation", "apply", "-f", dir)
	if got := applyLines(out); got["cli-alpha"] != "updated" || got["cli-beta"] != "unchanged" {
		t.Fatalf("apply after editing alpha:\n%s", out)
	}
	if !regexp.MustCompile(`updated\tcli-alpha \(id \d+, version 2\)`).MatchString(out) {
		t.Errorf("update does not show version 2:\n%s", out)
	}

	// The table shows both, each with its next send time in its own zone.
	var list httpapi.AutomationList
	if err := json.Unmarshal([]byte(s.mustCLI("automation", "list", "--json")), &list); err != nil {
		t.Fatalf("automation list --json: %v", err)
	}
	if len(list.Automations) != 2 {
		t.Fatalf("list --json: %+v", list.Automations)
	}
	out = s.mustCLI("automation", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "NEXT SEND") || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("automation list:\n%s", out)
	}
	for i, a := range list.Automations {
		row := lines[i+1]
		want := a.NextSendAt.In(a.Location()).Format("2006-01-02 15:04:05 -07:00")
		if !strings.Contains(row, a.Name) || !strings.Contains(row, want) || !strings.Contains(row, a.Schedule.Timezone) {
			t.Errorf("row %q does not show %s with next send %s", row, a.Name, want)
		}
	}

	// get by name.
	out = s.mustCLI("automation", "get", "cli-alpha")
	for _, want := range []string{"cli-alpha", "0 9 * * * (Europe/Berlin)", `"Good morning"`, "30m", "skip"} {
		if !strings.Contains(out, want) {
			t.Errorf("automation get does not show %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`(?m)^version\s+2$`).MatchString(out) {
		t.Errorf("automation get does not show version 2:\n%s", out)
	}
	_, err := s.cli("automation", "get", "cli-gamma")
	if msg, code := printed(err); code != 1 || !strings.Contains(msg, `"cli-gamma"`) || !strings.Contains(msg, "not_found") {
		t.Errorf("get of an unknown name: exit %d %q", code, msg)
	}

	// run by name, then follow the execution.
	out = s.mustCLI("automation", "run", "cli-beta")
	m := regexp.MustCompile(`started execution (\d+)`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "pushblaster execution get "+m[1]) {
		t.Fatalf("automation run:\n%s", out)
	}
	id := m[1]
	var ex pb.Execution
	pollUntil(t, "execution "+id+" completed and cleaned up", func() (bool, string) {
		ex = pb.Execution{}
		if err := json.Unmarshal([]byte(s.mustCLI("execution", "get", id, "--json")), &ex); err != nil {
			t.Fatalf("execution get --json: %v", err)
		}
		cleanup := ex.PhaseRecord(pb.PhaseCleanup)
		return ex.Status.Final() && cleanup != nil && cleanup.Status == pb.PhaseCompleted, string(ex.Status)
	})
	if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 2 {
		t.Fatalf("execution %s: %s metrics %v error %v", id, ex.Status, ex.Metrics, ex.Error)
	}
	out = s.mustCLI("execution", "get", id)
	if !strings.Contains(out, `"cli-beta" (version 1), manual fire`) || !regexp.MustCompile(`(?m)^status\s+completed$`).MatchString(out) {
		t.Errorf("execution get header:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^PHASE\s+STATUS\s+STARTED\s+TOOK\s+INSTANCE\s+ATTEMPT\s+NOTE`).MatchString(out) {
		t.Errorf("no phase table:\n%s", out)
	}
	for _, p := range pb.Phases {
		if !regexp.MustCompile(`(?m)^` + string(p) + `\s+completed\s+\d\d:\d\d:\d\d\.\d{3}\s+\S+\s+\S+\s+1\b`).MatchString(out) {
			t.Errorf("phase %s is not a completed row of the table:\n%s", p, out)
		}
	}
	if !strings.Contains(out, "sent 2") {
		t.Errorf("metrics missing:\n%s", out)
	}

	// execution list --json is JSON and filters by automation name.
	var el httpapi.ExecutionList
	if err := json.Unmarshal([]byte(s.mustCLI("execution", "list", "--automation", "cli-beta", "--json")), &el); err != nil {
		t.Fatalf("execution list --json is not JSON: %v", err)
	}
	if len(el.Executions) != 1 || strconv.FormatInt(el.Executions[0].ID, 10) != id || el.Executions[0].AutomationName != "cli-beta" {
		t.Errorf("execution list --automation cli-beta: %+v", el.Executions)
	}
	var none httpapi.ExecutionList
	if err := json.Unmarshal([]byte(s.mustCLI("execution", "list", "--automation", "cli-alpha", "--json")), &none); err != nil || none.Executions == nil || len(none.Executions) != 0 {
		t.Errorf("executions of cli-alpha: %v %+v", err, none.Executions)
	}
	out = s.mustCLI("execution", "list")
	if !strings.Contains(out, "cli-beta") || !strings.Contains(out, "completed") {
		t.Errorf("execution list:\n%s", out)
	}

	// Cancelling a completed execution is a conflict, even forced.
	for _, args := range [][]string{{"execution", "cancel", id}, {"execution", "cancel", id, "--force"}} {
		_, err := s.cli(args...)
		msg, code := printed(err)
		if code != 1 || !strings.Contains(msg, "execution "+id+" is already completed (conflict)") {
			t.Errorf("%v: exit %d %q", args, code, msg)
		}
	}

	// Pausing shows in the table.
	s.mustCLI("automation", "pause", "cli-alpha")
	out = s.mustCLI("automation", "list")
	if !regexp.MustCompile(`(?m)^\d+\s+cli-alpha\s.*\spaused\s+2$`).MatchString(out) {
		t.Errorf("paused automation in the table:\n%s", out)
	}
}

func TestCLIInvalidAutomationFile(t *testing.T) {
	t.Parallel()
	s := startServer(t, databaseEnv(t, "sqlite"))
	dir := t.TempDir()
	bad := cliAutomation("cli-bad", "0 25 * * *", "Europe/Atlantis", "-10m", "x")
	bad["overlap_policy"] = "whenever"
	file := filepath.Join(dir, "bad.json")
	writeJSONFile(t, file, bad)

	for _, verb := range []string{"apply", "create"} {
		_, err := s.cli("automation", verb, "-f", file)
		if err == nil {
			t.Fatalf("%s of an invalid file succeeded", verb)
		}
		text := describeError(err)
		for _, f := range []string{"lead_time", "overlap_policy", "schedule.cron", "schedule.timezone"} {
			if !regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(f) + `: \S`).MatchString(text) {
				t.Errorf("%s: field %s is not on a line of its own:\n%s", verb, f, text)
			}
		}
		if n := strings.Count(text, "\n"); n != 4 {
			t.Errorf("%s: %d field lines, want 4:\n%s", verb, n, text)
		}
		msg, code := printed(err)
		if code != 1 || !strings.HasPrefix(msg, "pushblaster: ") || !strings.Contains(msg, "\n  schedule.cron: ") {
			t.Errorf("%s: exit %d, printed %q", verb, code, msg)
		}
	}
	if !strings.HasPrefix(describeError(func() error { _, err := s.cli("automation", "apply", "-f", file); return err }()), `apply "cli-bad": `) {
		t.Errorf("apply does not name the automation it rejected")
	}

	// Unreadable files are named locally, before anything is sent.
	broken := filepath.Join(dir, "broken.json")
	if err := os.WriteFile(broken, []byte(`{"name": "cli-broken",`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := s.cli("automation", "apply", "-f", broken)
	if msg, code := printed(err); code != 1 || !strings.Contains(msg, "broken.json") {
		t.Errorf("broken file: exit %d %q", code, msg)
	}
	_, err = s.cli("automation", "apply", "-f", filepath.Join(dir, "missing.json"))
	if msg, code := printed(err); code != 1 || !strings.Contains(msg, "missing.json") {
		t.Errorf("missing file: exit %d %q", code, msg)
	}
	_, err = s.cli("automation", "apply", "-f", t.TempDir())
	if msg, code := printed(err); code != 1 || !strings.Contains(msg, "no *.json files") {
		t.Errorf("empty directory: exit %d %q", code, msg)
	}
	_, err = s.cli("automation", "apply")
	if msg, code := printed(err); code != 1 || !strings.Contains(msg, "-f FILE is required") {
		t.Errorf("no -f: exit %d %q", code, msg)
	}

	var list httpapi.AutomationList
	if err := json.Unmarshal([]byte(s.mustCLI("automation", "list", "--json")), &list); err != nil || len(list.Automations) != 0 {
		t.Fatalf("invalid files stored something: %v %+v", err, list.Automations)
	}
}

func TestCLISchedulePreview(t *testing.T) {
	t.Parallel()
	args := []string{"schedule", "preview", "--cron", "30 2 * * *", "--timezone", "America/New_York", "--from", "2026-03-07T00:00:00Z", "--count", "3"}
	out, _, code, err := localRun(t, nil, args...)
	if err != nil || code != 0 {
		t.Fatalf("schedule preview: exit %d %v", code, err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], "America/New_York") {
		t.Fatalf("schedule preview:\n%s", out)
	}
	for i, want := range [][]string{
		{"2026-03-07 02:30:00", "-05:00", "2026-03-07T07:30:00Z", "Saturday"},
		{"2026-03-08 03:00:00", "-04:00", "2026-03-08T07:00:00Z", "Sunday"},
		{"2026-03-09 02:30:00", "-04:00", "2026-03-09T06:30:00Z", "Monday"},
	} {
		if got := strings.Fields(lines[i+1]); !slices.Equal(got, append(strings.Fields(want[0]), want[1:]...)) {
			t.Errorf("row %d: %q, want %q", i+1, lines[i+1], want)
		}
	}

	out, _, _, err = localRun(t, nil, append(args, "--json")...)
	var p httpapi.SchedulePreview
	if err != nil || json.Unmarshal([]byte(out), &p) != nil || len(p.SendTimes) != 3 || p.SendTimes[1].At != "2026-03-08T03:00:00-04:00" {
		t.Errorf("schedule preview --json: %v\n%s", err, out)
	}

	// Invalid input: every bad flag named, exit status 1.
	_, stderr, code, err := localRun(t, nil, "schedule", "preview", "--cron", "61 * * * *", "--timezone", "Nowhere/Land", "--count", "0")
	if code != 1 || err == nil {
		t.Fatalf("invalid preview: exit %d", code)
	}
	for _, f := range []string{"cron", "timezone", "count"} {
		if !strings.Contains(stderr, "\n  "+f+": ") {
			t.Errorf("invalid preview does not name %s:\n%s", f, stderr)
		}
	}
}

func TestCLIUsageErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		says string // in stderr
	}{
		{nil, "Client (talks to a running server"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"automation"}, "usage: pushblaster automation COMMAND"},
		{[]string{"automation", "frobnicate"}, `unknown command "frobnicate"; commands: apply, create`},
		{[]string{"automation", "get"}, "usage: pushblaster automation get ID|NAME"},
		{[]string{"automation", "get", "a", "b"}, "usage: pushblaster automation get ID|NAME"},
		{[]string{"automation", "list", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"automation", "run", "x", "--send-at"}, "flag needs an argument"},
		{[]string{"execution", "get"}, "usage: pushblaster execution get ID"},
		{[]string{"execution", "list", "--limit", "ten"}, `invalid value "ten"`},
		{[]string{"execution", "cancel"}, "usage: pushblaster execution cancel ID"},
		{[]string{"schedule"}, "usage: pushblaster schedule preview"},
		{[]string{"schedule", "preview", "--count", "x"}, `invalid value "x"`},
		{[]string{"serve", "extra"}, `serve takes no arguments`},
		{[]string{"serve", "--max-workers", "many"}, `invalid value "many"`},
		{[]string{"migrate", "--nope"}, "flag provided but not defined: -nope"},
	} {
		stdout, stderr, code, err := localRun(t, nil, c.args...)
		if !errors.Is(err, errUsage) || code != 2 {
			t.Errorf("%q: exit %d, err %v; want a usage error (exit 2)", c.args, code, err)
		}
		if !strings.Contains(stderr, c.says) {
			t.Errorf("%q: stderr does not say %q:\n%s", c.args, c.says, stderr)
		}
		if strings.Contains(stderr, "pushblaster: usage") || stdout != "" {
			t.Errorf("%q: printed %q / %q", c.args, stdout, stderr)
		}
	}
	// Help is not an error.
	for _, args := range [][]string{{"help"}, {"--help"}, {"automation", "help"}, {"automation", "get", "-h"}, {"schedule", "preview", "-h"}} {
		if _, _, code, err := localRun(t, nil, args...); code != 0 {
			t.Errorf("%q: exit %d %v", args, code, err)
		}
	}
}

func TestCLIServerUnreachable(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"automation", "list", "--server", "http://127.0.0.1:1"},
		{"execution", "get", "1", "--server", "http://127.0.0.1:1"},
		{"automation", "pause", "morning", "--server", "http://127.0.0.1:1"},
	} {
		_, stderr, code, err := localRun(t, nil, args...)
		if code != 1 || pb.ErrorKind(err) != pb.KindExternal || !strings.Contains(stderr, "cannot reach pushblaster at http://127.0.0.1:1") ||
			!strings.Contains(stderr, "PUSHBLASTER_SERVER") {
			t.Errorf("%q: exit %d %q", args, code, stderr)
		}
	}
	// The environment names the server too; the flag wins.
	_, stderr, _, _ := localRun(t, map[string]string{"PUSHBLASTER_SERVER": "http://127.0.0.1:1"}, "automation", "list")
	if !strings.Contains(stderr, "cannot reach pushblaster at http://127.0.0.1:1") {
		t.Errorf("PUSHBLASTER_SERVER ignored: %q", stderr)
	}
	_, stderr, code, _ := localRun(t, nil, "automation", "list", "--server", "ftp://example.com")
	if code != 1 || !strings.Contains(stderr, `--server="ftp://example.com" is not an http(s) URL`) {
		t.Errorf("ftp server: exit %d %q", code, stderr)
	}
}

func TestParseServeListen(t *testing.T) {
	t.Parallel()
	parse := func(env map[string]string, args ...string) (*serveConfig, error) {
		var stderr bytes.Buffer
		return parseServe(args, func(k string) string { return env[k] }, &stderr)
	}

	for _, listen := range []string{"0.0.0.0:8080", ":8080", "[::]:8080", "10.1.2.3:80", "example.com:80"} {
		_, err := parse(nil, "--listen", listen)
		if pb.ErrorKind(err) != pb.KindValidation || !strings.Contains(describeError(err), "PUSHBLASTER_API_TOKENS") {
			t.Errorf("--listen %s without tokens: %v", listen, err)
		}
		_, err = parse(map[string]string{"PUSHBLASTER_LISTEN": listen})
		if err == nil || !strings.Contains(err.Error(), "PUSHBLASTER_API_TOKENS") {
			t.Errorf("PUSHBLASTER_LISTEN=%s without tokens: %v", listen, err)
		}
		// Blank tokens are no tokens.
		if _, err = parse(map[string]string{"PUSHBLASTER_API_TOKENS": " , "}, "--listen", listen); err == nil {
			t.Errorf("--listen %s with blank tokens was allowed", listen)
		}
		c, err := parse(map[string]string{"PUSHBLASTER_API_TOKENS": " one, ,two "}, "--listen", listen)
		if err != nil || c.listen != listen || !slices.Equal(c.tokens, []string{"one", "two"}) {
			t.Errorf("--listen %s with tokens: %v %+v", listen, err, c)
		}
	}
	for _, listen := range []string{"127.0.0.1:8080", "127.0.0.2:1", "[::1]:8080", "localhost:0"} {
		c, err := parse(nil, "--listen", listen)
		if err != nil || c.listen != listen || len(c.tokens) != 0 {
			t.Errorf("loopback %s: %v", listen, err)
		}
	}
	c, err := parse(nil)
	if err != nil || c.listen != "127.0.0.1:8080" || c.shutdownTimeout != 30*time.Second || c.maxWorkers != 50 || c.db.url != DefaultDatabaseURL {
		t.Errorf("defaults: %v %+v", err, c)
	}
	if err := checkListen("8080", false); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Errorf("checkListen without a port: %v", err)
	}
	if err := checkListen("8080", true); err == nil {
		t.Errorf("checkListen accepted a bad address because there are tokens")
	}
}

func TestParseServeDurations(t *testing.T) {
	t.Parallel()
	parse := func(env map[string]string, args ...string) (*serveConfig, error) {
		var stderr bytes.Buffer
		return parseServe(args, func(k string) string { return env[k] }, &stderr)
	}
	for _, bad := range []string{"soon", "30", "-5s", "1 minute"} {
		_, err := parse(map[string]string{"PUSHBLASTER_SHUTDOWN_TIMEOUT": bad})
		if pb.ErrorKind(err) != pb.KindValidation || !strings.Contains(err.Error(), "PUSHBLASTER_SHUTDOWN_TIMEOUT") || !strings.Contains(err.Error(), strconv.Quote(bad)) {
			t.Errorf("PUSHBLASTER_SHUTDOWN_TIMEOUT=%q: %v", bad, err)
		}
	}
	c, err := parse(map[string]string{"PUSHBLASTER_SHUTDOWN_TIMEOUT": "45s", "PUSHBLASTER_MAX_WORKERS": "7"})
	if err != nil || c.shutdownTimeout != 45*time.Second || c.maxWorkers != 7 {
		t.Errorf("from the environment: %v %+v", err, c)
	}
	c, err = parse(map[string]string{"PUSHBLASTER_SHUTDOWN_TIMEOUT": "45s"}, "--shutdown-timeout", "2m")
	if err != nil || c.shutdownTimeout != 2*time.Minute {
		t.Errorf("the flag should win over the environment: %v %+v", err, c)
	}
	if _, err := parse(nil, "--lost-after", "2s", "--heartbeat-interval", "1s"); err == nil || !strings.Contains(err.Error(), "--lost-after") {
		t.Errorf("lost-after below three heartbeats: %v", err)
	}
	for _, flagName := range []string{"shutdown-timeout", "tick-interval", "poll-interval", "rescue-after", "heartbeat-interval", "lost-after"} {
		_, err := parse(nil, "--"+flagName, "0s")
		if err == nil || !strings.Contains(err.Error(), "--"+flagName) {
			t.Errorf("--%s=0s: %v", flagName, err)
		}
	}
	for _, bad := range []string{"0", "-1", "lots"} {
		if _, err := parse(map[string]string{"PUSHBLASTER_MAX_WORKERS": bad}); err == nil || !strings.Contains(err.Error(), "PUSHBLASTER_MAX_WORKERS") {
			t.Errorf("PUSHBLASTER_MAX_WORKERS=%q: %v", bad, err)
		}
	}
	if _, err := parse(nil, "--tick-interval", "fast"); !errors.Is(err, errUsage) {
		t.Errorf("unparseable flag: %v", err)
	}
}

func TestParseDatabaseURL(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ raw, kind, target string }{
		{"postgres://u:p@db:5432/app?sslmode=disable", "postgres", "postgres://u:p@db:5432/app?sslmode=disable"},
		{"postgresql://db/app", "postgres", "postgresql://db/app"},
		{"sqlite:pushblaster.db", "sqlite", "pushblaster.db"},
		{"sqlite:/var/lib/pushblaster/pb.db", "sqlite", "/var/lib/pushblaster/pb.db"},
		{"sqlite://data/pb.db", "sqlite", "data/pb.db"},
		{"sqlite:///var/lib/pb.db", "sqlite", "/var/lib/pb.db"},
	} {
		kind, target, err := parseDatabaseURL(c.raw)
		if err != nil || kind != c.kind || target != c.target {
			t.Errorf("%s: %q %q %v, want %q %q", c.raw, kind, target, err, c.kind, c.target)
		}
	}
	for _, raw := range []string{"mysql://root:hunter2@db/app", "", "pushblaster.db", "POSTGRES://db/app"} {
		_, _, err := parseDatabaseURL(raw)
		pe := pb.AsError(err)
		if err == nil || pe.Kind != pb.KindValidation || len(pe.Fields) != 1 || pe.Fields[0].Field != "database-url" {
			t.Errorf("%q: %v", raw, err)
			continue
		}
		text := describeError(err)
		if strings.Contains(text, "hunter2") || !strings.Contains(text, "\n  database-url: ") || !strings.Contains(text, "sqlite:PATH") {
			t.Errorf("%q: %q", raw, text)
		}
	}

	for _, c := range []struct{ raw, want string }{
		{"postgres://app:hunter2@db:5432/pb?sslmode=require", "postgres://app:xxxxx@db:5432/pb?sslmode=require"},
		{"postgres://app@db/pb", "postgres://app@db/pb"},
		{"postgres://db/pb", "postgres://db/pb"},
		{"sqlite:pb.db", "sqlite:pb.db"},
		{"postgres://app@db/pb?password=hunter2", "postgres://app@db/pb?password=xxxxx"},
		{"postgres://app@db/pb?sslpassword=hunter2&sslmode=verify-full", "postgres://app@db/pb?sslmode=verify-full&sslpassword=xxxxx"},
		{"postgres://app:p%zzhunter2@db/pb", "postgres://(unparseable URL hidden)"},
	} {
		if got := redactURL(c.raw); got != c.want {
			t.Errorf("redactURL(%q) = %q, want %q", c.raw, got, c.want)
		}
	}

	// A bad URL never reaches the database: the error names the flag.
	_, stderr, code, _ := localRun(t, map[string]string{"PUSHBLASTER_DATABASE_URL": "mysql://root:hunter2@db/app"}, "migrate")
	if code != 1 || !strings.Contains(stderr, "database-url") || strings.Contains(stderr, "hunter2") {
		t.Errorf("migrate with a mysql URL: exit %d %q", code, stderr)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"version"}, func(string) string { return "" }, strings.NewReader(""), &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "pushblaster ") || !strings.Contains(out.String(), "go1.") {
		t.Errorf("version = %q", out.String())
	}
}

// TestDeliveryFlags: provider flags that cannot work are refused, naming
// the flag and the fix, before anything starts.
func TestDeliveryFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notKey := filepath.Join(dir, "key.json")
	if err := os.WriteFile(notKey, []byte(`{"type": "authorized_user"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--fcm-credentials", filepath.Join(dir, "missing.json")}, nil, "--fcm-credentials"},
		{[]string{"--fcm-credentials", notKey}, nil, "service_account"},
		{[]string{"--fcm-credentials", notKey, "--fcm-ca-file", notKey}, nil, "--fcm-ca-file"},
		{[]string{"--fcm-rate", "-1"}, nil, "--fcm-rate"},
		{[]string{"--webhook-url", "https://hooks.example/push"}, nil, "PUSHBLASTER_WEBHOOK_SECRET"},
		{[]string{"--webhook-url", "ftp://x"}, map[string]string{"PUSHBLASTER_WEBHOOK_SECRET": "s"}, "webhook.url"},
		{[]string{"--apns-key-file", notKey, "--apns-key-id", "K", "--apns-team-id", "T", "--apns-topic", "app"}, nil, "apns.key_file"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		var d deliveryConfig
		d.register(fs, func(k string) string { return c.env[k] })
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		_, _, err := d.build(slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v; want an error naming %s", c.args, err, c.want)
		}
	}
	// Nothing configured: no providers but log (built into the engine).
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var d deliveryConfig
	d.register(fs, func(string) string { return "" })
	senders, _, err := d.build(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || len(senders) != 0 {
		t.Errorf("defaults: %v %v", senders, err)
	}
}

// TestScriptEnvPass: --script-env-pass takes the values from the server's
// environment; a name that is not set, or that automations may also set,
// is refused at start.
func TestScriptEnvPass(t *testing.T) {
	t.Parallel()
	build := func(env map[string]string, args ...string) (engine.AudienceConfig, error) {
		var c audienceConfig
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		lookup := func(k string) string { return env[k] }
		c.register(fs, lookup)
		if err := fs.Parse(args); err != nil {
			return engine.AudienceConfig{}, err
		}
		cfg, closeFn, err := c.build(t.Context())
		closeFn()
		return cfg, err
	}
	cfg, err := build(map[string]string{"PUSHBLASTER_SCRIPT_ENV_PASS": "DB_PASSWORD, API_KEY", "DB_PASSWORD": "pw", "API_KEY": "k"})
	if err != nil || len(cfg.ScriptEnvPass) != 2 || cfg.ScriptEnvPass["DB_PASSWORD"] != "pw" || cfg.ScriptEnvPass["API_KEY"] != "k" {
		t.Fatalf("from the environment: %v %v", cfg.ScriptEnvPass, err)
	}
	for _, c := range []struct {
		env  map[string]string
		args []string
		says string
	}{
		{map[string]string{}, []string{"--script-env-pass", "DB_PASSWORD"}, "DB_PASSWORD is not set in the server's environment"},
		{map[string]string{"DB_PASSWORD": "pw"}, []string{"--script-env-pass", "DB_PASSWORD", "--script-env-allow", "DB_PASSWORD,REGION"}, "DB_PASSWORD is in --script-env-allow too"},
	} {
		_, err := build(c.env, c.args...)
		if pb.ErrorKind(err) != pb.KindValidation || !strings.Contains(err.Error(), c.says) || strings.Contains(err.Error(), "pw") {
			t.Errorf("%q: %v; want a validation error saying %q", c.args, err, c.says)
		}
	}
}

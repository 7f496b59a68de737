package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/internal/testdb"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pushblaster-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "pushblaster")
	build := exec.Command("go", "build", "-race", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build pushblaster:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is a `pushblaster serve` process.
type server struct {
	t      *testing.T
	cmd    *exec.Cmd
	url    string
	stderr *bytes.Buffer
	done   chan error
}

// startServer runs the real binary with env and waits until it listens.
func startServer(t *testing.T, env []string, args ...string) *server {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"serve", "--listen", "127.0.0.1:0", "--tick-interval", "100ms", "--poll-interval", "20ms"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-s.done
		}
	})
	select {
	case line, ok := <-lines:
		if !ok || !strings.Contains(line, "listening on http://") {
			t.Fatalf("serve did not start: %q\nstderr:\n%s", line, s.stderr)
		}
		s.url = strings.Fields(line[strings.Index(line, "http://"):])[0]
	case <-time.After(60 * time.Second):
		t.Fatalf("serve did not start in time\nstderr:\n%s", s.stderr)
	}
	go func() {
		for range lines {
		}
	}()
	return s
}

func (s *server) do(method, path string, body any, out any) int {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.url+path, rd)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			s.t.Fatalf("%s %s: decode: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

// cli runs a client command in-process against the server.
func (s *server) cli(args ...string) (string, error) {
	var out, errb bytes.Buffer
	env := func(k string) string {
		if k == "PUSHBLASTER_SERVER" {
			return s.url
		}
		return ""
	}
	err := run(context.Background(), args, env, strings.NewReader(""), &out, &errb)
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

// createQuick creates a log-provider automation for users a, b and c with
// a lead time of 1s, so that a run completes in seconds.
func (s *server) createQuick(name string) pb.Automation {
	s.t.Helper()
	a := map[string]any{
		"name":          name,
		"schedule":      map[string]string{"cron": "0 9 * * *", "timezone": "Europe/Berlin"},
		"lead_time":     "1s",
		"audience":      map[string]any{"type": "static", "recipients": []map[string]string{{"user_id": "a", "token": "ta"}, {"user_id": "b", "token": "tb"}, {"user_id": "c", "token": "tc"}}},
		"test_audience": []map[string]string{{"user_id": "qa", "token": "tq"}},
		"message":       map[string]string{"title": "Hello", "body": "World"},
		"delivery":      map[string]string{"provider": "log"},
	}
	var created pb.Automation
	if code := s.do("POST", "/api/automations", a, &created); code != http.StatusCreated {
		s.t.Fatalf("create %s: %d", name, code)
	}
	return created
}

// stop sends SIGTERM and expects a clean exit.
func (s *server) stop() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatal(err)
	}
	select {
	case err := <-s.done:
		if err != nil {
			s.t.Fatalf("serve exited with %v after SIGTERM\nstderr:\n%s", err, s.stderr)
		}
	case <-time.After(60 * time.Second):
		s.t.Fatalf("serve did not exit after SIGTERM\nstderr:\n%s", s.stderr)
	}
}

func databaseEnv(t *testing.T, dialect string) []string {
	if dialect == "postgres" {
		db := testdb.NewPostgres(t)
		return []string{"PUSHBLASTER_DATABASE_URL=" + testdb.URL() + "&search_path=" + db.Schema}
	}
	return []string{"PUSHBLASTER_DATABASE_URL=sqlite:" + filepath.Join(t.TempDir(), "e2e.db")}
}

// TestServeEndToEnd: build the binary, serve, create an automation over
// HTTP, run it, see it complete with sent equal to the audience, SIGTERM,
// clean exit.
func TestServeEndToEnd(t *testing.T) {
	t.Parallel()
	for _, dialect := range testdb.Dialects {
		t.Run(dialect, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, databaseEnv(t, dialect))
			var health map[string]string
			if code := s.do("GET", "/readyz", nil, &health); code != 200 || health["status"] != "ready" {
				t.Fatalf("readyz: %d %v", code, health)
			}
			created := s.createQuick("e2e")
			var ex pb.Execution
			if code := s.do("POST", fmt.Sprintf("/api/automations/%d/run", created.ID), nil, &ex); code != 201 {
				t.Fatalf("run: %d", code)
			}
			deadline := time.Now().Add(60 * time.Second)
			for ex.Status != pb.StatusCompleted && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
				s.do("GET", fmt.Sprintf("/api/executions/%d", ex.ID), nil, &ex)
			}
			if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 3 || ex.Metrics[pb.MetricAudienceSize] != 3 {
				t.Fatalf("execution: status %s metrics %v error %v", ex.Status, ex.Metrics, ex.Error)
			}
			s.stop()
			if !strings.Contains(s.stderr.String(), `"event":"engine.stopped"`) {
				t.Errorf("no clean engine stop in the log:\n%s", s.stderr)
			}
		})
	}
}

// TestScriptAudienceThroughTheBinary: the real binary runs an audience
// script under its supervisor; a kill -9 of the engine mid-script leaves no
// process behind.
func TestScriptAudienceThroughTheBinary(t *testing.T) {
	t.Parallel()
	scripts, pids := t.TempDir(), t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(scripts, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("users.sh", "echo 'hello from the script' >&2\necho user_id,token\necho a,ta\necho b,tb\n")
	write("hang.sh", fmt.Sprintf("sleep 600 &\necho $! > %[1]s/child\necho $$ > %[1]s/script\necho user_id\nsleep 600\n", pids))

	s := startServer(t, databaseEnv(t, "sqlite"), "--scripts-dir", scripts)
	create := func(name, script string) int64 {
		var a pb.Automation
		body := map[string]any{
			"name": name, "schedule": map[string]string{"cron": "0 9 * * *"}, "lead_time": "0s",
			"audience": map[string]any{"type": "script", "script": script},
			"message":  map[string]string{"title": "hi"}, "delivery": map[string]string{"provider": "log"},
		}
		if code := s.do("POST", "/api/automations", body, &a); code != 201 {
			t.Fatalf("create %s: %d", name, code)
		}
		return a.ID
	}
	var ex pb.Execution
	s.do("POST", fmt.Sprintf("/api/automations/%d/run", create("users", "users.sh")), nil, &ex)
	deadline := time.Now().Add(60 * time.Second)
	for ex.Status != pb.StatusCompleted && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		s.do("GET", fmt.Sprintf("/api/executions/%d", ex.ID), nil, &ex)
	}
	if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 2 {
		t.Fatalf("script execution: %s %v %v", ex.Status, ex.Metrics, ex.Error)
	}

	// Now a script that hangs with a child; kill the engine with SIGKILL.
	s.do("POST", fmt.Sprintf("/api/automations/%d/run", create("hang", "hang.sh")), nil, &ex)
	var procs []int
	deadline = time.Now().Add(60 * time.Second)
	for len(procs) < 2 {
		procs = procs[:0]
		for _, f := range []string{"script", "child"} {
			raw, err := os.ReadFile(filepath.Join(pids, f))
			if n, _ := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && n > 0 {
				procs = append(procs, n)
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the hanging script never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := s.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-s.done
	for _, pid := range procs {
		gone := time.Now().Add(30 * time.Second)
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(gone) {
				t.Fatalf("process %d outlived the engine's kill -9", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

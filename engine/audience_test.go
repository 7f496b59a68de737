package engine_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/audience"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/internal/testdb"
)

// scriptsDir writes executable shell scripts into a fresh directory.
func scriptsDir(t *testing.T, scripts map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func withScripts(dir string) option {
	return func(c *engine.Config) {
		c.Audience.ScriptsDir = dir
		c.Audience.HeartbeatEvery = 200 * time.Millisecond
	}
}

// scriptAutomation sends at 09:30 Berlin with no lead time to the output
// of script.
func scriptAutomation(name, script string) *pb.Automation {
	a := automation(name)
	a.LeadTime = pb.DurationOf(0)
	a.Audience = pb.Audience{Type: pb.AudienceScript, Script: script}
	return a
}

// fireNow runs a's 09:30 execution to the end (or to a final status).
func (b *bundle) fireNow(a *pb.Automation) *pb.Execution {
	b.t.Helper()
	b.clock.Set(berlin(2026, 6, 1, 9, 30))
	ex := b.waitExecutions(a.ID, 1)[0]
	var got *pb.Execution
	waitFor(b.t, "a final status and cleanup", func() (bool, string) {
		got = b.execution(ex.ID)
		return got.Status.Final() && got.PhaseRecord(pb.PhaseCleanup).Status == pb.PhaseCompleted, describe(got)
	})
	return got
}

func artifacts(t *testing.T, b *bundle, id int64) map[string]string {
	t.Helper()
	list, err := b.eng.ListArtifacts(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, a := range list {
		out[a.Name] = a.Content
	}
	return out
}

func TestScriptAudience(t *testing.T) {
	t.Parallel()
	dir := scriptsDir(t, map[string]string{"users.sh": `
echo "querying users" >&2
echo "user_id,token,platform,first_name"
echo "u1,t1,ios,Ann"
echo "u2,t2,android,Bob"
echo "u2,t2,android,Bob"
echo ",t3,ios,Nobody"
echo "u3,t3,ios,Cy"
echo "done" >&2
`})
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect, withScripts(dir))
		a := scriptAutomation("script", "users.sh")
		a.Audience.MaxBadRowRatio = ptr(0.5)
		ex := b.fireNow(b.create(a))
		if ex.Status != pb.StatusCompleted {
			t.Fatalf("%s", describe(ex))
		}
		want := map[string]int64{pb.MetricAudienceSize: 3, pb.MetricDuplicates: 1, pb.MetricBadRows: 1, pb.MetricSent: 3}
		for k, v := range want {
			if ex.Metrics[k] != v {
				t.Errorf("%s = %d, want %d (metrics %v)", k, ex.Metrics[k], v, ex.Metrics)
			}
		}
		for _, u := range []string{"u1", "u2", "u3"} {
			if b.sender.count(u) != 1 {
				t.Errorf("%s got %d pushes", u, b.sender.count(u))
			}
		}
		arts := artifacts(t, b, ex.ID)
		if !strings.Contains(arts["stderr"], "querying users") || !strings.Contains(arts["exit_status"], "exit code 0") ||
			!strings.Contains(arts["first_rows"], "user_id,token") || !strings.Contains(arts["bad_rows"], "user_id") {
			t.Errorf("artefacts = %v", arts)
		}
		events, _ := b.eng.ListEvents(t.Context(), pb.EventFilter{ExecutionID: &ex.ID})
		var sawStderr bool
		for _, ev := range events {
			sawStderr = sawStderr || (ev.Data["stream"] == "stderr" && ev.Message == "querying users")
		}
		if !sawStderr {
			t.Errorf("stderr lines are not in the events")
		}
	})
}

func TestScriptAudienceFailures(t *testing.T) {
	t.Parallel()
	dir := scriptsDir(t, map[string]string{
		"exit3.sh":   "echo 'connecting' >&2\necho 'db: connection refused' >&2\nexit 3\n",
		"stall.sh":   "echo user_id\necho u1\nsleep 600\n",
		"garbage.sh": "echo user_id,token\necho u1,t1\necho ,x\necho ,y\necho ,z\n",
	})
	cases := []struct {
		script, wantKind, wantMsg string
		stall                     time.Duration
		recoverable               bool
	}{
		{"exit3.sh", string(pb.KindScript), "exited with status 3", 0, false},
		{"stall.sh", string(pb.KindTimeout), "stalled: no output for", 500 * time.Millisecond, true},
		{"garbage.sh", string(pb.KindValidation), "3 of 4 rows (75.0%) are malformed", 0, false},
	}
	for _, c := range cases {
		t.Run(c.script, func(t *testing.T) {
			t.Parallel()
			b := setup(t, "sqlite", withScripts(dir), func(cfg *engine.Config) { cfg.PhaseAttempts = 1 })
			a := scriptAutomation(c.script, c.script)
			if c.stall > 0 {
				a.Audience.StallTimeout = pb.DurationOf(c.stall)
			}
			ex := b.fireNow(b.create(a))
			if ex.Status != pb.StatusFailed || ex.Error == nil || string(ex.Error.Kind) != c.wantKind ||
				!strings.Contains(ex.Error.Message, c.wantMsg) || ex.Error.Phase != pb.PhaseAudience {
				t.Fatalf("%s: error %+v", describe(ex), ex.Error)
			}
			if ex.PhaseRecord(pb.PhaseLiveSend).Status != pb.PhasePending || b.sender.total() != 0 {
				t.Errorf("something was sent after a failed audience")
			}
			if c.script == "exit3.sh" && (ex.Error.Context["exit_code"] != "3" || !strings.Contains(ex.Error.Message, "connection refused")) {
				t.Errorf("exit error context = %v, message %q", ex.Error.Context, ex.Error.Message)
			}
			if c.script == "stall.sh" && ex.Error.Context["reason"] != "stalled" {
				t.Errorf("stall context = %v", ex.Error.Context)
			}
			if arts := artifacts(t, b, ex.ID); arts["exit_status"] == "" {
				t.Errorf("no exit status artefact: %v", arts)
			}
		})
	}
}

// TestCancelMidScript: a cancel while the audience script runs kills it
// (and its children) promptly and no push goes out.
func TestCancelMidScript(t *testing.T) {
	t.Parallel()
	pidDir := t.TempDir()
	dir := scriptsDir(t, map[string]string{"slow.sh": fmt.Sprintf(`
sleep 600 &
echo $! > %[1]s/child
echo $$ > %[1]s/script
echo user_id
while true; do echo "working" >&2; sleep 0.1; done
`, pidDir)})
	b := setup(t, "sqlite", withScripts(dir))
	a := b.create(scriptAutomation("slow", "slow.sh"))
	b.clock.Set(berlin(2026, 6, 1, 9, 30))
	ex := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseAudience, pb.PhaseRunning)
	var pids []int
	waitFor(t, "the script to record its pids", func() (bool, string) {
		pids = nil
		for _, f := range []string{"script", "child"} {
			raw, err := os.ReadFile(filepath.Join(pidDir, f))
			if err != nil || len(strings.TrimSpace(string(raw))) == 0 {
				return false, f + " missing"
			}
			n, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
			pids = append(pids, n)
		}
		return true, ""
	})
	if _, err := b.eng.CancelExecution(t.Context(), ex.ID, pb.CancelParams{Reason: "wrong list"}); err != nil {
		t.Fatal(err)
	}
	ex = b.waitPhase(ex.ID, pb.PhaseAudience, pb.PhaseCancelled)
	b.waitPhase(ex.ID, pb.PhaseCleanup, pb.PhaseCompleted)
	for _, pid := range pids {
		waitFor(t, fmt.Sprintf("process %d to be gone", pid), func() (bool, string) {
			err := syscall.Kill(pid, 0)
			return err == syscall.ESRCH, fmt.Sprint(err)
		})
	}
	if b.sender.total() != 0 {
		t.Errorf("pushes went out after a cancel during the audience phase")
	}
}

// TestAudienceGuards: growth anomaly, empty audiences, max_recipients.
func TestAudienceGuards(t *testing.T) {
	t.Parallel()
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect)
		a := automation("growing")
		a.Audience.Recipients = recipients("u", 2)
		a = b.create(a)
		send := berlin(2026, 6, 1, 9, 30)
		b.clock.Set(send.Add(-30 * time.Minute))
		first := b.waitPhase(b.waitExecutions(a.ID, 1)[0].ID, pb.PhaseWindow, pb.PhaseRunning)
		b.clock.Set(send)
		b.waitStatus(first.ID, pb.StatusCompleted)

		// Tomorrow the list is 5× larger: an anomaly, nothing goes out.
		grown := automation("growing")
		grown.Audience.Recipients = recipients("u", 10)
		if _, err := b.eng.UpdateAutomation(t.Context(), a.ID, grown); err != nil {
			t.Fatal(err)
		}
		before := b.sender.total()
		b.clock.Set(send.AddDate(0, 0, 1).Add(-30 * time.Minute))
		second := b.waitStatus(b.waitExecutions(a.ID, 2)[0].ID, pb.StatusFailed)
		if second.Error == nil || second.Error.Kind != pb.KindValidation || !strings.Contains(second.Error.Message, "audience anomaly: 10 recipients is 5.0× the 2 of execution") {
			t.Fatalf("growth guard: %+v", second.Error)
		}
		if b.sender.total() != before {
			t.Errorf("pushes went out despite the anomaly")
		}
	})
}

func TestEmptyAudience(t *testing.T) {
	t.Parallel()
	dir := scriptsDir(t, map[string]string{"none.sh": "echo user_id,token\n"})
	for _, onEmpty := range []string{pb.OnEmptyComplete, pb.OnEmptyFail} {
		t.Run(onEmpty, func(t *testing.T) {
			t.Parallel()
			b := setup(t, "sqlite", withScripts(dir))
			a := scriptAutomation("empty", "none.sh")
			a.Audience.OnEmpty = onEmpty
			ex := b.fireNow(b.create(a))
			if onEmpty == pb.OnEmptyComplete {
				if ex.Status != pb.StatusCompleted || !strings.Contains(ex.Reason, "nothing to send") ||
					ex.PhaseRecord(pb.PhaseTestSend).Status != pb.PhaseSkipped || ex.PhaseRecord(pb.PhaseLiveSend).Status != pb.PhaseSkipped {
					t.Errorf("%s", describe(ex))
				}
			} else if ex.Status != pb.StatusFailed || ex.Error == nil || !strings.Contains(ex.Error.Message, "on_empty: fail") {
				t.Errorf("%s", describe(ex))
			}
			if b.sender.total() != 0 {
				t.Errorf("an empty audience sent %d pushes (incl. the test send)", b.sender.total())
			}
		})
	}
}

func TestMaxRecipients(t *testing.T) {
	t.Parallel()
	dir := scriptsDir(t, map[string]string{"many.sh": "echo user_id,token\ni=0; while [ $i -lt 20000 ]; do echo u$i,t$i; i=$((i+1)); done\n"})
	b := setup(t, "sqlite", withScripts(dir))
	a := scriptAutomation("many", "many.sh")
	a.Audience.MaxRecipients = 100
	ex := b.fireNow(b.create(a))
	if ex.Status != pb.StatusFailed || ex.Error == nil || !strings.Contains(ex.Error.Message, "more than max_recipients (100)") {
		t.Fatalf("%s", describe(ex))
	}
}

// TestTokenResolution: recipients without a token get theirs from an HTTP
// token source, one delivery per device; users without devices are counted
// as no_token and not sent.
func TestTokenResolution(t *testing.T) {
	t.Parallel()
	var requests []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Variables struct {
				IDs []string `json:"ids"`
			} `json:"variables"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		requests = append(requests, strings.Join(body.Variables.IDs, ","))
		devices := []map[string]string{}
		for _, id := range body.Variables.IDs {
			switch id {
			case "two-devices":
				devices = append(devices, map[string]string{"userId": id, "pushToken": "phone", "os": "IOS"},
					map[string]string{"userId": id, "pushToken": "tablet", "os": "android"})
			case "one-device":
				devices = append(devices, map[string]string{"userId": id, "pushToken": "only"})
			}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"devices": devices}})
	}))
	defer srv.Close()
	tokens, err := audience.NewHTTPTokens(audience.HTTPTokens{
		URL: srv.URL, Request: `{"query": "query($ids: [ID!]!) { devices(userIds: $ids) { userId pushToken os } }", "variables": {"ids": {{json .UserIDs}}}}`,
		Path: "data.devices", UserIDField: "userId", TokenField: "pushToken", PlatformField: "os",
	})
	if err != nil {
		t.Fatal(err)
	}
	b := setup(t, "sqlite", func(c *engine.Config) { c.Audience.Tokens = tokens })
	a := automation("tokens")
	a.LeadTime = pb.DurationOf(0)
	a.Audience.Recipients = []pb.Recipient{{UserID: "two-devices"}, {UserID: "one-device"}, {UserID: "no-device"}, {UserID: "has", Token: "own"}}
	ex := b.fireNow(b.create(a))
	if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricAudienceSize] != 5 || ex.Metrics[pb.MetricNoToken] != 1 || ex.Metrics[pb.MetricSent] != 4 {
		t.Fatalf("%s metrics %v", describe(ex), ex.Metrics)
	}
	if b.sender.count("two-devices") != 2 || b.sender.count("one-device") != 1 || b.sender.count("no-device") != 0 || b.sender.count("has") != 1 {
		t.Errorf("pushes: %v", b.sender.sent)
	}
	if len(requests) != 1 || requests[0] != "no-device,one-device,two-devices" {
		t.Errorf("token requests = %q", requests)
	}
}

func TestTokenSourceDown(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream down", http.StatusBadGateway)
	}))
	defer srv.Close()
	tokens, _ := audience.NewHTTPTokens(audience.HTTPTokens{URL: srv.URL, Path: "devices"})
	b := setup(t, "sqlite", func(c *engine.Config) { c.Audience.Tokens = tokens; c.PhaseAttempts = 1 })
	a := automation("tokens-down")
	a.LeadTime = pb.DurationOf(0)
	a.Audience.Recipients = []pb.Recipient{{UserID: "x"}}
	ex := b.fireNow(b.create(a))
	if ex.Status != pb.StatusFailed || ex.Error.Kind != pb.KindExternal || !ex.Error.Recoverable || !strings.Contains(ex.Error.Message, "HTTP 502") {
		t.Fatalf("%s %+v", describe(ex), ex.Error)
	}
}

// TestScriptPathRefusedAtSave: the API can never make the engine run a
// command outside the scripts directory.
func TestScriptPathRefusedAtSave(t *testing.T) {
	t.Parallel()
	dir := scriptsDir(t, map[string]string{"ok.sh": "echo user_id\n"})
	if err := os.WriteFile(filepath.Join(dir, "notexec.sh"), []byte("echo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/bin/sh", filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	b := setup(t, "sqlite", withScripts(dir))
	for _, path := range []string{"../ok.sh", "/bin/sh", "missing.sh", "notexec.sh", "escape", ""} {
		_, err := b.eng.CreateAutomation(t.Context(), scriptAutomation("bad-"+path, path))
		pe := pb.AsError(err)
		if err == nil || pe.Kind != pb.KindValidation || len(pe.Fields) == 0 || pe.Fields[0].Field != "audience.script" {
			t.Errorf("script %q: %v, want a validation error on audience.script", path, err)
		}
	}
	if _, err := b.eng.CreateAutomation(t.Context(), scriptAutomation("good", "ok.sh")); err != nil {
		t.Errorf("a good script was refused: %v", err)
	}
	// Without a scripts directory, script audiences are refused outright.
	b2 := setup(t, "sqlite")
	if _, err := b2.eng.CreateAutomation(t.Context(), scriptAutomation("x", "ok.sh")); err == nil || !strings.Contains(err.Error(), "--scripts-dir") {
		t.Errorf("without --scripts-dir: %v", err)
	}
}

func TestCSVAudience(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	if err := os.MkdirAll(filepath.Join(data, "lists"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "lists", "vip.csv"), []byte("user_id,token\nv1,t1\nv2,t2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := setup(t, "sqlite", func(c *engine.Config) { c.Audience.DataDir = data })
	a := automation("csv")
	a.LeadTime = pb.DurationOf(0)
	a.Audience = pb.Audience{Type: pb.AudienceCSV, File: "lists/vip.csv"}
	ex := b.fireNow(b.create(a))
	if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 2 {
		t.Fatalf("%s %v", describe(ex), ex.Metrics)
	}
	bad := automation("csv-escape")
	bad.Audience = pb.Audience{Type: pb.AudienceCSV, File: "../../etc/passwd"}
	if _, err := b.eng.CreateAutomation(t.Context(), bad); err == nil || !strings.Contains(err.Error(), "audience.file") {
		t.Errorf("path outside the data directory: %v", err)
	}
}

// TestAudiencePreview: phase 1 without sending: counts, a sample, the
// error that would fail it, and no execution, no push.
func TestAudiencePreview(t *testing.T) {
	t.Parallel()
	dir := scriptsDir(t, map[string]string{
		"users.sh": "echo 'previewing' >&2\necho user_id,token,city\necho u1,t1,Berlin\necho u1,t1,Berlin\necho u2,,Paris\necho ,x,Rome\n",
		"fails.sh": "echo 'no database' >&2\nexit 3\n",
	})
	forEachDialect(t, func(t *testing.T, dialect string) {
		b := setup(t, dialect, withScripts(dir))
		a := scriptAutomation("preview", "users.sh")
		a.Audience.MaxBadRowRatio = ptr(0.5)
		a = b.create(a)
		p, err := b.eng.PreviewAudience(t.Context(), a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if p.Size != 2 || p.NoToken != 1 || p.DuplicatesRemoved != 1 || p.BadRows != 1 || p.Error != nil ||
			len(p.Sample) != 2 || p.Sample[0].Data["city"] != "Berlin" || len(p.BadRowExamples) != 1 || !strings.Contains(p.Stderr, "previewing") {
			t.Fatalf("preview = %+v", p)
		}
		if list := b.executions(a.ID); len(list) != 0 || b.sender.total() != 0 {
			t.Errorf("a preview created %d executions and sent %d pushes", len(list), b.sender.total())
		}
		// A second preview starts from nothing.
		if p2, _ := b.eng.PreviewAudience(t.Context(), a.ID); p2.Size != 2 {
			t.Errorf("second preview size = %d", p2.Size)
		}

		f := b.create(scriptAutomation("preview-fails", "fails.sh"))
		p, err = b.eng.PreviewAudience(t.Context(), f.ID)
		if err != nil {
			t.Fatal(err)
		}
		if p.Error == nil || p.Error.Kind != pb.KindScript || !strings.Contains(p.Error.Message, "no database") {
			t.Errorf("failing preview = %+v", p.Error)
		}
	})
}

// TestSQLAudience: an sql audience streams a query's rows (read-only, with
// a statement timeout); device tokens come from an sql token source; a bad
// query and a writing query fail as validation, naming the problem.
func TestSQLAudience(t *testing.T) {
	t.Parallel()
	adb := testdb.NewPostgres(t) // the customer's database, in a schema of its own
	for _, q := range []string{
		`CREATE TABLE users (id text, country text, active bool)`,
		`INSERT INTO users VALUES ('u1', 'DE', true), ('u2', 'FR', true), ('u3', 'DE', false), ('u4', 'DE', true)`,
		`CREATE TABLE devices (user_id text, token text, platform text)`,
		`INSERT INTO devices VALUES ('u1', 'u1-phone', 'ios'), ('u1', 'u1-tablet', 'android'), ('u2', 'u2-phone', 'android')`,
	} {
		if _, err := adb.Pool.Exec(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	b := setup(t, "sqlite", func(c *engine.Config) {
		c.Audience.SQL = &audience.SQLSource{Pool: adb.Pool}
		c.Audience.Tokens = &audience.SQLTokens{Pool: adb.Pool, Query: `SELECT user_id, token, platform FROM devices WHERE user_id = ANY($1)`}
		c.PhaseAttempts = 1
	})
	a := automation("sql")
	a.LeadTime = pb.DurationOf(0)
	a.Audience = pb.Audience{Type: pb.AudienceSQL, Query: `SELECT id AS user_id, country FROM users WHERE active ORDER BY id`}
	ex := b.fireNow(b.create(a))
	if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricAudienceSize] != 4 || ex.Metrics[pb.MetricNoToken] != 1 || ex.Metrics[pb.MetricSent] != 3 {
		t.Fatalf("%s %v", describe(ex), ex.Metrics)
	}
	if b.sender.count("u1") != 2 || b.sender.count("u2") != 1 || b.sender.count("u4") != 0 || b.sender.count("u3") != 0 {
		t.Errorf("pushes: %v", b.sender.sent)
	}

	for name, c := range map[string]struct{ query, want string }{
		"bad":        {`SELECT id AS user_id FROM no_such_table`, `relation "no_such_table" does not exist`},
		"writes":     {`WITH x AS (DELETE FROM users RETURNING id) SELECT id AS user_id FROM x`, "read-only"},
		"no user_id": {`SELECT id FROM users`, "no user_id column"},
	} {
		bad := automation("sql-" + name)
		bad.LeadTime = pb.DurationOf(0)
		bad.Schedule.Cron = "31 9 * * *"
		bad.Audience = pb.Audience{Type: pb.AudienceSQL, Query: c.query}
		bad = b.create(bad)
		b.clock.Set(berlin(2026, 6, 1, 9, 31))
		got := b.waitStatus(b.waitExecutions(bad.ID, 1)[0].ID, pb.StatusFailed)
		if got.Error == nil || got.Error.Kind != pb.KindValidation || got.Error.Recoverable || !strings.Contains(got.Error.Message, c.want) {
			t.Errorf("%s query: %+v", name, got.Error)
		}
	}
	var n int
	if err := adb.Pool.QueryRow(t.Context(), `SELECT count(*) FROM users`).Scan(&n); err != nil || n != 4 {
		t.Errorf("the audience database changed: %d users, %v", n, err)
	}
}

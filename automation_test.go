package pushblaster_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

const valid = `{
  "name": "welcome",
  "schedule": {"cron": "30 9 * * 1-5", "timezone": "Europe/Berlin"},
  "audience": {"type": "static", "recipients": [{"user_id": "u1", "token": "t1"}]},
  "test_audience": [{"user_id": "qa", "token": "tq"}],
  "message": {"title": "Hi", "body": "there"},
  "delivery": {"provider": "log"}
}`

func TestNormalizeDefaults(t *testing.T) {
	t.Parallel()
	a, err := pb.DecodeAutomation(strings.NewReader(valid))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Normalize(); err != nil {
		t.Fatal(err)
	}
	if a.Mode != pb.ModeLive || a.Lead() != 30*time.Minute || a.Deadline() != 0 || a.Catchup() != 10*time.Minute || a.OverlapPolicy != pb.OverlapSkip {
		t.Errorf("defaults: mode %s lead %s deadline %s catchup %s overlap %s", a.Mode, a.Lead(), a.Deadline(), a.Catchup(), a.OverlapPolicy)
	}
	// Test mode has a shorter default lead time; an explicit 0 is kept.
	b, _ := pb.DecodeAutomation(strings.NewReader(strings.Replace(valid, `"name"`, `"mode": "test", "name"`, 1)))
	if err := b.Normalize(); err != nil || b.Lead() != 3*time.Minute {
		t.Errorf("test mode lead = %s, %v", b.Lead(), err)
	}
	c, _ := pb.DecodeAutomation(strings.NewReader(strings.Replace(valid, `"name"`, `"lead_time": "0s", "name"`, 1)))
	if err := c.Normalize(); err != nil || c.Lead() != 0 {
		t.Errorf("explicit zero lead = %s, %v", c.Lead(), err)
	}
	d, _ := pb.DecodeAutomation(strings.NewReader(strings.Replace(valid, `"timezone": "Europe/Berlin"`, `"timezone": ""`, 1)))
	if err := d.Normalize(); err != nil || d.Schedule.Timezone != "UTC" {
		t.Errorf("default zone = %q, %v", d.Schedule.Timezone, err)
	}
}

// TestNormalizeNamesEveryField: one response lists every bad field, each
// with a reason that says how to fix it.
func TestNormalizeNamesEveryField(t *testing.T) {
	t.Parallel()
	body := `{
	  "name": "",
	  "schedule": {"cron": "0 25 * * *", "timezone": "Mars/Olympus"},
	  "mode": "shadow",
	  "lead_time": "-5m",
	  "cancellation_deadline": "soon",
	  "catchup_window": 30,
	  "overlap_policy": "pile_up",
	  "audience": {"type": "static", "recipients": [{"user_id": ""}, {"user_id": "x", "platform": "symbian"}]},
	  "message": {"title": " ", "body": ""},
	  "delivery": {"provider": ""}
	}`
	a, err := pb.DecodeAutomation(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	err = a.Normalize()
	var pe *pb.Error
	if !errors.As(err, &pe) || pe.Kind != pb.KindValidation {
		t.Fatalf("err = %v, want a validation error", err)
	}
	got := map[string]string{}
	for _, f := range pe.Fields {
		got[f.Field] = f.Message
	}
	want := map[string]string{
		"name":                   "is required",
		"schedule.cron":          "hour",
		"schedule.timezone":      "IANA",
		"mode":                   "live or test",
		"lead_time":              "zero or positive",
		"cancellation_deadline":  "not a duration",
		"catchup_window":         "a duration is a string",
		"overlap_policy":         "skip, queue or cancel_previous",
		"audience.recipients[0]": "user_id is required",
		"audience.recipients[1]": "android, ios or web",
		"message":                "title or a body",
		"delivery.provider":      "is required",
	}
	for field, fragment := range want {
		if msg, ok := got[field]; !ok || !strings.Contains(msg, fragment) {
			t.Errorf("field %s: got %q, want it named with %q", field, msg, fragment)
		}
	}
	if len(got) != len(want) {
		t.Errorf("fields = %v, want exactly %d", got, len(want))
	}
	if !strings.Contains(got["schedule.cron"], "position") {
		t.Errorf("cron error %q should give the position", got["schedule.cron"])
	}
}

func TestDecodeRejectsUnknownAndMalformed(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		body, want string
	}{
		{strings.Replace(valid, `"name"`, `"lead_tme": "5m", "name"`, 1), `lead_tme: is not a known field`},
		{strings.Replace(valid, `"timezone"`, `"tz": "UTC", "timezone"`, 1), `schedule.tz: is not a known field`},
		{strings.Replace(valid, `"token": "t1"`, `"tokn": "t1"`, 1), `audience.recipients[0].tokn: is not a known field`},
		{strings.Replace(valid, `"name": "welcome"`, `"name": 5`, 1), "name: is a JSON number; expected a string"},
		{strings.Replace(valid, `"user_id": "u1"`, `"user_id": 7`, 1), "audience.recipients.user_id: is a JSON number"},
		{`[]`, "an automation is a JSON object, not a JSON array"},
		{`{"name": "x"`, "malformed JSON"},
		{``, "body is empty"},
		{valid + valid, "more than one JSON value"},
	} {
		a, err := pb.DecodeAutomation(strings.NewReader(c.body))
		if err == nil {
			err = a.Normalize()
		}
		if pb.ErrorKind(err) != pb.KindValidation || !strings.Contains(err.Error(), c.want) {
			t.Errorf("decode %.40q: %v, want validation mentioning %q", c.body, err, c.want)
		}
	}
}

// TestDecodeReportsEveryProblem: a typo, a bad value and a wrong type in
// one body are all named in one answer.
func TestDecodeReportsEveryProblem(t *testing.T) {
	t.Parallel()
	body := strings.Replace(valid, `"name"`, `"lead_tme": "5m", "lead_time": "-1m", "overlap_policy": "bad", "paused": "yes", "name"`, 1)
	a, err := pb.DecodeAutomation(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	err = a.Normalize()
	for _, f := range []string{"lead_tme", "lead_time", "overlap_policy", "paused"} {
		if err == nil || !strings.Contains(err.Error(), f+":") {
			t.Errorf("error %v does not name %s", err, f)
		}
	}
}

func TestCancellationDeadlineWithinLead(t *testing.T) {
	t.Parallel()
	a, _ := pb.DecodeAutomation(strings.NewReader(strings.Replace(valid, `"name"`, `"lead_time": "5m", "cancellation_deadline": "10m", "name"`, 1)))
	err := a.Normalize()
	if err == nil || !strings.Contains(err.Error(), "cancellation_deadline") {
		t.Fatalf("deadline beyond lead: %v", err)
	}
}

func TestNormalizeInEnvironment(t *testing.T) {
	t.Parallel()
	env := pb.Environment{Providers: []string{"log"}}
	a, _ := pb.DecodeAutomation(strings.NewReader(strings.Replace(valid, `"provider": "log"`, `"provider": "fcm"`, 1)))
	err := a.NormalizeIn(env)
	if err == nil || !strings.Contains(err.Error(), `"fcm", which is not configured; configured providers: log`) {
		t.Fatalf("unconfigured provider: %v", err)
	}
	b, _ := pb.DecodeAutomation(strings.NewReader(valid))
	if err := b.NormalizeIn(env); err != nil {
		t.Fatal(err)
	}
	// Sources the server does not offer are refused when saved.
	for body, want := range map[string]string{
		`{"type": "script", "script": "x.sh"}`:                                      "--scripts-dir",
		`{"type": "sql", "query": "SELECT 1"}`:                                      "--audience-database-url",
		`{"type": "csv", "file": "lists/a.csv"}`:                                    "--data-dir",
		`{"type": "script"}`:                                                        "audience.script: is required",
		`{"type": "sql", "file": "x"}`:                                              "audience.file: does not apply to a sql audience",
		`{"type": "script", "script": "x", "stall_timeout": "soon"}`:                "audience.stall_timeout",
		`{"type": "script", "script": "x", "timeout": "1h"}`:                        "at most 9m",
		`{"type": "static", "recipients": [{"user_id": "u"}], "max_growth": 0.5}`:   "at least 1",
		`{"type": "static", "recipients": [{"user_id": "u"}], "on_empty": "shrug"}`: "complete or fail",
	} {
		c, err := pb.DecodeAutomation(strings.NewReader(strings.Replace(valid, `{"type": "static", "recipients": [{"user_id": "u1", "token": "t1"}]}`, body, 1)))
		if err == nil {
			err = c.NormalizeIn(env)
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("audience %s: %v, want %q", body, err, want)
		}
	}
}

func TestSameDefinitionIgnoresIdentity(t *testing.T) {
	t.Parallel()
	a, _ := pb.DecodeAutomation(strings.NewReader(valid))
	b, _ := pb.DecodeAutomation(strings.NewReader(valid))
	_ = a.Normalize()
	_ = b.Normalize()
	now := time.Now()
	b.ID, b.Version, b.CreatedAt, b.NextSendAt = 9, 4, now, &now
	if !pb.SameDefinition(a, b) {
		t.Error("identity and scheduler state should not count")
	}
	b.Message.Body = "changed"
	if pb.SameDefinition(a, b) {
		t.Error("a changed body must count")
	}
}

func TestDurationJSON(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{30 * time.Minute: "30m", 90 * time.Minute: "1h30m", 2 * time.Hour: "2h", 90 * time.Second: "1m30s", 0: "0s"} {
		if got := pb.Duration(d).String(); got != want {
			t.Errorf("%v → %q, want %q", d, got, want)
		}
	}
}

func TestErrorClassification(t *testing.T) {
	t.Parallel()
	if k := pb.ErrorKind(context.DeadlineExceeded); k != pb.KindTimeout {
		t.Errorf("deadline → %s", k)
	}
	if k := pb.ErrorKind(fmt.Errorf("x: %w", context.Canceled)); k != pb.KindAbort {
		t.Errorf("canceled → %s", k)
	}
	if pb.AsError(errors.New("boom")).Kind != pb.KindInternal {
		t.Error("plain error should be internal")
	}
	base := pb.Errorf(pb.KindScript, "exit status 3").With("exit_code", "3")
	wrapped := pb.WrapError(pb.KindInternal, base, "audience")
	if wrapped.Kind != pb.KindScript || wrapped.Recoverable || wrapped.Context["exit_code"] != "3" || wrapped.Message != "audience: exit status 3" {
		t.Errorf("wrap keeps the inner classification: %+v", wrapped)
	}
	if !errors.Is(wrapped, base) {
		t.Error("wrapped error should unwrap to its cause")
	}
	if !pb.Errorf(pb.KindDatabase, "down").Recoverable || pb.Errorf(pb.KindValidation, "bad").Recoverable {
		t.Error("database errors are recoverable by default, validation ones are not")
	}
}

// TestTestAudienceDevicesOnce: a test list is sent as given, so a device
// listed twice is refused at save, naming both entries.
func TestTestAudienceDevicesOnce(t *testing.T) {
	t.Parallel()
	body := strings.Replace(valid, `"test_audience": [{"user_id": "qa", "token": "tq"}]`,
		`"test_audience": [{"user_id": "qa", "token": "tq"}, {"user_id": "qa", "token": "tq2"}, {"user_id": "qa", "token": "tq"}]`, 1)
	a, err := pb.DecodeAutomation(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	pe := pb.AsError(a.Normalize())
	if pe == nil || len(pe.Fields) != 1 || pe.Fields[0].Field != "test_audience[2]" || !strings.Contains(pe.Fields[0].Message, "repeats test_audience[0]") {
		t.Fatalf("error = %+v", pe)
	}
}

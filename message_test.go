package pushblaster_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// withFields returns the valid automation with replacements of its message
// and delivery, plus extra top-level fields.
func withFields(message, delivery, extra string) string {
	s := valid
	if message != "" {
		s = strings.Replace(s, `"message": {"title": "Hi", "body": "there"}`, `"message": `+message, 1)
	}
	if delivery != "" {
		s = strings.Replace(s, `"delivery": {"provider": "log"}`, `"delivery": `+delivery, 1)
	}
	if extra != "" {
		s = strings.Replace(s, `"name": "welcome",`, `"name": "welcome", `+extra+`,`, 1)
	}
	return s
}

func normalizeErr(t *testing.T, doc string) map[string]string {
	t.Helper()
	a, err := pb.DecodeAutomation(strings.NewReader(doc))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	out := map[string]string{}
	if err := a.Normalize(); err != nil {
		pe := pb.AsError(err)
		if pe.Kind != pb.KindValidation {
			t.Fatalf("kind %s: %v", pe.Kind, err)
		}
		for _, f := range pe.Fields {
			out[f.Field] = f.Message
		}
	}
	return out
}

func TestMessageTemplatesRenderPerRecipient(t *testing.T) {
	t.Parallel()
	m := pb.Message{Title: `Hi {{default "there" .first_name}}`, Body: `{{upper .plan}} ends {{.locale}}`, Image: "https://img/{{.user_id}}.png",
		Data: map[string]string{"screen": "offer", "who": "{{.user_id}}"}}
	tmpl, err := m.Compile()
	if err != nil {
		t.Fatal(err)
	}
	anna, err := tmpl.Render(&pb.Recipient{UserID: "u1", Locale: "de-DE", Data: map[string]string{"first_name": "Anna", "plan": "pro"}})
	if err != nil {
		t.Fatal(err)
	}
	if anna.Title != "Hi Anna" || anna.Body != "PRO ends de-DE" || anna.Image != "https://img/u1.png" || anna.Data["who"] != "u1" || anna.Data["screen"] != "offer" {
		t.Errorf("rendered = %+v", anna)
	}
	// A missing field renders empty (or the default), never "<no value>".
	bob, err := tmpl.Render(&pb.Recipient{UserID: "u2"})
	if err != nil || bob.Title != "Hi there" || bob.Body != " ends " || strings.Contains(fmt.Sprint(bob), "no value") {
		t.Errorf("rendered = %+v, %v", bob, err)
	}
	// Rendering never changes the template's own data map.
	if m.Data["who"] != "{{.user_id}}" || anna.Data["who"] != "u1" {
		t.Errorf("data shared between renders: %v %v", m.Data, anna.Data)
	}
}

func TestMessageTemplateErrorsFailAtSave(t *testing.T) {
	t.Parallel()
	cases := []struct{ message, field, want string }{
		{`{"title": "Hi {{.first_name"}`, "message.title", "not a valid template"},
		{`{"title": "Hi", "body": "{{nosuchfunc .x}}"}`, "message.body", `function "nosuchfunc" not defined`},
		{`{"title": "Hi", "data": {"k": "{{end}}"}}`, "message.data.k", "not a valid template"},
		{`{"title": "Hi {{.user_id.foo}}"}`, "message.title", "does not render"},
		{`{"title": "Hi", "data": {"from": "x"}}`, "message.data.from", "FCM reserves"},
		{`{"title": "Hi", "data": {"google.x": "x"}}`, "message.data.google.x", "reserves"},
		{`{"title": "Hi", "android": [1]}`, "message.android", "JSON object"},
		{`{"title": "` + strings.Repeat("x", 4100) + `"}`, "message", "4096"},
		{`{"title": " ", "body": ""}`, "message", "needs a title or a body"},
	}
	for _, c := range cases {
		got := normalizeErr(t, withFields(c.message, "", ""))
		if !strings.Contains(got[c.field], c.want) {
			t.Errorf("%s: errors %v; want %s to say %q", c.message[:min(len(c.message), 60)], got, c.field, c.want)
		}
	}
	// A valid template passes.
	if got := normalizeErr(t, withFields(`{"title": "Hi {{.first_name}}", "android": {"priority": "high"}}`, "", "")); len(got) != 0 {
		t.Errorf("valid template rejected: %v", got)
	}
}

func TestDeliveryCapsAndCadenceValidation(t *testing.T) {
	t.Parallel()
	got := normalizeErr(t, withFields("", `{"provider": "log", "rate_per_second": -1, "max_error_ratio": 1.5, "on_unknown": "retry"}`,
		`"tags": ["Promo"], "frequency_caps": [{"max": 0, "per": "1w", "scope": "team"}, {"max": 1}], "cadence": {"url": "ftp://x", "timeout": "2m", "on_error": "ignore"}`))
	want := map[string]string{
		"delivery.rate_per_second": "0 (no limit) or more",
		"delivery.max_error_ratio": "at most 1",
		"delivery.on_unknown":      "report (default) or resend",
		"tags[0]":                  "lower-case",
		"frequency_caps[0].max":    "at least 1",
		"frequency_caps[0].per":    `"1w" is not a period`,
		"frequency_caps[0].scope":  "global, automation or tag:NAME",
		"frequency_caps[1].per":    "is required",
		"cadence.url":              "absolute http or https URL",
		"cadence.timeout":          "between 1ms and 1m",
		"cadence.on_error":         "fail (default), send_all or skip_all",
	}
	for f, w := range want {
		if !strings.Contains(got[f], w) {
			t.Errorf("%s = %q; want it to say %q", f, got[f], w)
		}
	}
	// A password in the URL would come back on GET: refused, and not quoted.
	got = normalizeErr(t, withFields("", "", `"cadence": {"url": "https://push:hunter2@cadence.internal/allowed"}`))
	if msg := got["cadence.url"]; !strings.Contains(msg, "PUSHBLASTER_CADENCE_AUTHORIZATION") || strings.Contains(msg, "hunter2") || len(got) != 1 {
		t.Errorf("a cadence.url with a password: errors %v", got)
	}
	if got := normalizeErr(t, withFields("", "", `"cadence": {"url": "https://push@cadence.internal/allowed"}`)); len(got) != 0 {
		t.Errorf("a cadence.url with a user name only: errors %v", got)
	}
	a, err := pb.DecodeAutomation(strings.NewReader(withFields("", "", `"tags": ["promo"], "frequency_caps": [{"max": 2, "per": "7d", "scope": "tag:promo"}, {"max": 1, "per": "24h"}], "cadence": {"url": "http://127.0.0.1:1/allowed"}`)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Normalize(); err != nil {
		t.Fatal(err)
	}
	c0, c1 := a.FrequencyCaps[0], a.FrequencyCaps[1]
	if c0.Period() != 7*24*time.Hour || c0.Tag() != "promo" || c1.Scope != pb.ScopeGlobal || c1.Tag() != "" {
		t.Errorf("caps = %+v %+v", c0, c1)
	}
	if a.Cadence.OnError != pb.CadenceFail || a.Cadence.TimeoutD() != pb.DefaultCadenceTimeout || a.Delivery.OnUnknown != pb.OnUnknownReport || a.Delivery.ErrorRatio() != 0.2 {
		t.Errorf("defaults: cadence %+v delivery %+v", a.Cadence, a.Delivery)
	}
}

func TestRetryAfterBothForms(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		h    string
		want time.Duration
		ok   bool
	}{
		{"120", 2 * time.Minute, true},
		{" 0 ", 0, true},
		{"Fri, 27 Nov 2026 12:00:30 GMT", 30 * time.Second, true},
		{"Fri, 27 Nov 2026 11:00:00 GMT", 0, true}, // in the past
		{"-5", 0, false},
		{"soon", 0, false},
		{"", 0, false},
	}
	for _, c := range cases {
		got, ok := pb.RetryAfter(c.h, now)
		if got != c.want || ok != c.ok {
			t.Errorf("RetryAfter(%q) = %s %v; want %s %v", c.h, got, ok, c.want, c.ok)
		}
	}
}

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	t.Parallel()
	b := pb.Backoff{Base: time.Second, Max: 60 * time.Second}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 7: 60 * time.Second, 30: 60 * time.Second} {
		lo, hi := b.Delay(n, 0), b.Delay(n, 0.999999)
		if lo != want/2 || hi > want || hi < want-want/1000 {
			t.Errorf("retry %d: delay in [%s, %s]; want [%s, %s)", n, lo, hi, want/2, want)
		}
	}
}

func TestProviderErrorKinds(t *testing.T) {
	t.Parallel()
	for code, want := range map[string]struct {
		kind        pb.Kind
		recoverable bool
	}{
		pb.CodeUnavailable: {pb.KindExternal, true}, pb.CodeInternal: {pb.KindExternal, true}, pb.CodeQuotaExceeded: {pb.KindExternal, true},
		pb.CodeNetwork: {pb.KindExternal, true}, pb.CodeUnregistered: {pb.KindExternal, false}, pb.CodeInvalidArgument: {pb.KindValidation, false},
		pb.CodeSenderIDMismatch: {pb.KindExternal, false}, pb.CodeThirdPartyAuth: {pb.KindExternal, false},
		pb.CodeUnauthenticated: {pb.KindExternal, false}, pb.CodeTemplate: {pb.KindValidation, false},
	} {
		e := pb.ProviderError(code, "x")
		if e.Kind != want.kind || e.Recoverable != want.recoverable || pb.ErrorCode(e) != code {
			t.Errorf("%s: kind %s recoverable %v code %q", code, e.Kind, e.Recoverable, pb.ErrorCode(e))
		}
	}
	var nilErr *pb.Error
	if pb.ErrorCode(nilErr) != "" || pb.ErrorCode(nil) != "" {
		t.Error("ErrorCode of nil")
	}
}

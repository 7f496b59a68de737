package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/riverqueue/river/riverdriver/riversqlite"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/httpapi"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/store"
)

// t0 is the fake "now" of every test: a Monday, 06:00 UTC.
var t0 = time.Date(2026, 6, 1, 6, 0, 0, 0, time.UTC)

// api is an engine on a fresh SQLite database behind the real HTTP handler.
type api struct {
	t     *testing.T
	eng   *engine.Engine
	store *store.Store
	clock *fakeclock.Clock
	srv   *httptest.Server
	token string // sent as a bearer token when set

	mu     sync.Mutex
	bodies []string // every response body, for the token-leak check
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newAPI builds the engine (not started) and the server. opts.Clock and
// opts.Logger are filled in when unset.
func newAPI(t *testing.T, opts httpapi.Options) *api {
	t.Helper()
	db := testdb.NewSQLite(t)
	clock := fakeclock.New(t0)
	eng, err := engine.New(db.Store, riversqlite.New(db.SQLite.DB), engine.Config{
		Clock:        clock,
		Logger:       quietLogger(),
		TickInterval: 50 * time.Millisecond,
		PollInterval: 20 * time.Millisecond,
		// River's rescuer ages jobs by the real clock; the test clock is
		// months behind it.
		RescueAfter: 50 * 365 * 24 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	if opts.Clock == nil {
		opts.Clock = clock
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	srv := httptest.NewServer(httpapi.NewServer(eng, opts))
	t.Cleanup(srv.Close)
	return &api{t: t, eng: eng, store: db.Store, clock: clock, srv: srv}
}

// start runs the engine until the test ends.
func (a *api) start() {
	a.t.Helper()
	if err := a.eng.Start(context.Background()); err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = a.eng.Stop(ctx)
	})
}

type response struct {
	method, path string
	status       int
	header       http.Header
	body         []byte
}

func (r response) String() string {
	return fmt.Sprintf("%s %s → %d %s", r.method, r.path, r.status, bytes.TrimSpace(r.body))
}

// do sends a request. body is nil (no body), a string or []byte (sent as
// is), or anything else (sent as JSON). headers are name, value pairs.
func (a *api) do(method, path string, body any, headers ...string) response {
	a.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			a.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, a.srv.URL+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := a.srv.Client().Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	a.mu.Lock()
	a.bodies = append(a.bodies, string(data))
	a.mu.Unlock()
	return response{method: method, path: path, status: resp.StatusCode, header: resp.Header, body: data}
}

// expect fails unless r has the status, and decodes its JSON body into out
// (if non-nil).
func expect(t *testing.T, r response, status int, out any) {
	t.Helper()
	if r.status != status {
		t.Fatalf("want %d: %s", status, r)
	}
	if out == nil {
		return
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json: %s", ct, r)
	}
	// Decode into a zero value: reusing a variable must not keep fields
	// the response omits.
	v := reflect.ValueOf(out).Elem()
	v.Set(reflect.Zero(v.Type()))
	if err := json.Unmarshal(r.body, out); err != nil {
		t.Fatalf("decode %s: %v", r, err)
	}
}

// expectError fails unless r is an error response with status and kind,
// and returns the error.
func expectError(t *testing.T, r response, status int, kind pb.Kind) *pb.Error {
	t.Helper()
	var eb httpapi.ErrorBody
	expect(t, r, status, &eb)
	if eb.Error == nil {
		t.Fatalf("no error object: %s", r)
	}
	if eb.Error.Kind != kind {
		t.Fatalf("kind %q, want %q: %s", eb.Error.Kind, kind, r)
	}
	if strings.TrimSpace(eb.Error.Message) == "" {
		t.Fatalf("empty error message: %s", r)
	}
	return eb.Error
}

// fieldNames lists the fields an error names, sorted.
func fieldNames(e *pb.Error) []string {
	var out []string
	for _, f := range e.Fields {
		out = append(out, f.Field)
	}
	slices.Sort(out)
	return out
}

// field returns the message for field, failing if e does not name it.
func field(t *testing.T, e *pb.Error, name string) string {
	t.Helper()
	for _, f := range e.Fields {
		if f.Field == name {
			if strings.TrimSpace(f.Message) == "" {
				t.Fatalf("field %s has no message: %+v", name, e)
			}
			return f.Message
		}
	}
	t.Fatalf("error does not name field %q; it names %v (%s)", name, fieldNames(e), e.Message)
	return ""
}

// definition is a valid automation: 09:30 UTC daily to three users, log
// provider, everything else defaulted.
func definition(name string) map[string]any {
	return map[string]any{
		"name":     name,
		"schedule": map[string]any{"cron": "30 9 * * *"},
		"audience": map[string]any{"type": "static", "recipients": []map[string]string{
			{"user_id": "u1", "token": "t1"}, {"user_id": "u2", "token": "t2"}, {"user_id": "u3", "token": "t3"},
		}},
		"message":  map[string]any{"title": "Hello", "body": "World"},
		"delivery": map[string]any{"provider": "log"},
	}
}

func (a *api) create(def map[string]any) *pb.Automation {
	a.t.Helper()
	var out pb.Automation
	expect(a.t, a.do("POST", "/api/automations", def), http.StatusCreated, &out)
	return &out
}

func (a *api) run(id int64, sendAt time.Time) *pb.Execution {
	a.t.Helper()
	var ex pb.Execution
	expect(a.t, a.do("POST", fmt.Sprintf("/api/automations/%d/run", id), map[string]any{"send_at": sendAt}), http.StatusCreated, &ex)
	return &ex
}

func (a *api) listAutomations() []*pb.Automation {
	a.t.Helper()
	var list httpapi.AutomationList
	expect(a.t, a.do("GET", "/api/automations", nil), http.StatusOK, &list)
	return list.Automations
}

func (a *api) execution(id int64) *pb.Execution {
	a.t.Helper()
	var ex pb.Execution
	expect(a.t, a.do("GET", fmt.Sprintf("/api/executions/%d", id), nil), http.StatusOK, &ex)
	return &ex
}

// waitFor polls cond until it holds, failing after a generous deadline
// with the last state cond described.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ok, desc := cond()
		if ok {
			return
		}
		last = desc
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last state: %s", what, last)
}

func TestCreateNamesEveryInvalidField(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	def := definition("bad")
	def["schedule"] = map[string]any{"cron": "30 9 * * MON-FRY", "timezone": "Mars/Olympus_Mons"}
	def["lead_time"] = "-5m"
	def["overlap_policy"] = "sometimes"
	def["catchup_window"] = "30 minutes"
	def["cancellation_deadline"] = 300 // a JSON number, not a duration string
	e := expectError(t, a.do("POST", "/api/automations", def), http.StatusBadRequest, pb.KindValidation)

	want := []string{"cancellation_deadline", "catchup_window", "lead_time", "overlap_policy", "schedule.cron", "schedule.timezone"}
	if got := fieldNames(e); !slices.Equal(got, want) {
		t.Fatalf("fields %v, want %v: %+v", got, want, e)
	}
	if msg := field(t, e, "schedule.cron"); !strings.Contains(msg, "position 14") || !strings.Contains(msg, `"FRY"`) {
		t.Errorf("schedule.cron message does not point at the bad item: %q", msg)
	}
	if msg := field(t, e, "schedule.timezone"); !strings.Contains(msg, "Mars/Olympus_Mons") {
		t.Errorf("schedule.timezone message does not name the zone: %q", msg)
	}
	if msg := field(t, e, "lead_time"); !strings.Contains(msg, "-5m") {
		t.Errorf("lead_time message: %q", msg)
	}
	if msg := field(t, e, "overlap_policy"); !strings.Contains(msg, "sometimes") || !strings.Contains(msg, "cancel_previous") {
		t.Errorf("overlap_policy message does not list the choices: %q", msg)
	}
	if msg := field(t, e, "catchup_window"); !strings.Contains(msg, "30 minutes") || !strings.Contains(msg, `"30m"`) {
		t.Errorf("catchup_window message does not show the fix: %q", msg)
	}
	if msg := field(t, e, "cancellation_deadline"); !strings.Contains(msg, "300") {
		t.Errorf("cancellation_deadline message: %q", msg)
	}
	for _, f := range want {
		if !strings.Contains(e.Message, f) {
			t.Errorf("message %q does not name %s", e.Message, f)
		}
	}

	// Everything missing at once.
	e = expectError(t, a.do("POST", "/api/automations", "{}"), http.StatusBadRequest, pb.KindValidation)
	want = []string{"audience.type", "delivery.provider", "message", "name", "schedule.cron"}
	if got := fieldNames(e); !slices.Equal(got, want) {
		t.Fatalf("empty object: fields %v, want %v", got, want)
	}

	// A provider that is not configured lists the configured ones.
	def = definition("smtp")
	def["delivery"] = map[string]any{"provider": "carrier-pigeon"}
	e = expectError(t, a.do("POST", "/api/automations", def), http.StatusBadRequest, pb.KindValidation)
	if msg := field(t, e, "delivery.provider"); !strings.Contains(msg, "carrier-pigeon") || !strings.Contains(msg, "log") {
		t.Errorf("delivery.provider message: %q", msg)
	}

	// A typo must not silently fall back to a default.
	def = definition("typo")
	def["lead_tme"] = "5m"
	e = expectError(t, a.do("POST", "/api/automations", def), http.StatusBadRequest, pb.KindValidation)
	if msg := field(t, e, "lead_tme"); !strings.Contains(msg, "spelling") {
		t.Errorf("lead_tme message: %q", msg)
	}

	// A JSON value of the wrong type is named.
	def = definition("wrong-type")
	def["paused"] = "yes"
	e = expectError(t, a.do("POST", "/api/automations", def), http.StatusBadRequest, pb.KindValidation)
	if len(e.Fields) != 1 || e.Fields[0].Field != "paused" || !strings.Contains(e.Fields[0].Message, "true or false") {
		t.Errorf("wrong type: %+v", e)
	}

	if list := a.listAutomations(); len(list) != 0 {
		t.Fatalf("invalid automations were stored: %+v", list)
	}
}

func TestRejectsUnreadableBodies(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{MaxBodyBytes: 512})
	cases := []struct {
		name, body string
		status     int
		msg        string
	}{
		{"malformed", `{"name" "x"}`, http.StatusBadRequest, "malformed JSON at byte"},
		{"truncated", `{"name": "x"`, http.StatusBadRequest, "JSON"},
		{"empty", ``, http.StatusBadRequest, "body is empty"},
		{"trailing data", `{"name": "x"} garbage{`, http.StatusBadRequest, "more than one JSON value"},
		{"an array", `[]`, http.StatusBadRequest, "a JSON object, not a JSON array"},
		{"too large", `{"name": "` + strings.Repeat("x", 2048) + `"}`, http.StatusRequestEntityTooLarge, "larger than 512 bytes"},
	}
	for _, c := range cases {
		for _, route := range []struct{ method, path string }{{"POST", "/api/automations"}, {"POST", "/api/automations/apply"}} {
			e := expectError(t, a.do(route.method, route.path, c.body), c.status, pb.KindValidation)
			if !strings.Contains(e.Message, c.msg) {
				t.Errorf("%s %s %s: message %q does not contain %q", c.name, route.method, route.path, e.Message, c.msg)
			}
		}
	}
	// The size limit applies to every body, also a run's.
	created := a.create(definition("limit"))
	e := expectError(t, a.do("POST", fmt.Sprintf("/api/automations/%d/run", created.ID), `{"send_at": "`+strings.Repeat(" ", 1024)+`"}`),
		http.StatusRequestEntityTooLarge, pb.KindValidation)
	if !strings.Contains(e.Message, "512") {
		t.Errorf("run: %q", e.Message)
	}
	// A run's body may be empty (defaults), but not malformed or unknown.
	expectError(t, a.do("POST", fmt.Sprintf("/api/automations/%d/run", created.ID), `{"send_at": `), http.StatusBadRequest, pb.KindValidation)
	e = expectError(t, a.do("POST", fmt.Sprintf("/api/automations/%d/run", created.ID), `{"sendAt": "2026-06-01T10:00:00Z"}`), http.StatusBadRequest, pb.KindValidation)
	field(t, e, "sendAt")
	if list := a.listAutomations(); len(list) != 1 {
		t.Fatalf("want only the one valid automation, got %d", len(list))
	}
}

func TestCreateFillsDefaults(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	r := a.do("POST", "/api/automations", definition("morning"))
	var raw map[string]any
	expect(t, r, http.StatusCreated, &raw)
	var got pb.Automation
	expect(t, r, http.StatusCreated, &got)
	if loc := r.header.Get("Location"); loc != fmt.Sprintf("/api/automations/%d", got.ID) || got.ID <= 0 {
		t.Fatalf("Location %q for id %d", loc, got.ID)
	}
	for k, want := range map[string]any{
		"lead_time": "30m", "catchup_window": "10m", "cancellation_deadline": "0s",
		"overlap_policy": "skip", "mode": "live", "name": "morning", "version": float64(1), "paused": false,
		"next_send_at": "2026-06-01T09:30:00Z",
	} {
		if raw[k] != want {
			t.Errorf("%s = %#v, want %#v", k, raw[k], want)
		}
	}
	if tz := raw["schedule"].(map[string]any)["timezone"]; tz != "UTC" {
		t.Errorf("timezone %v, want UTC", tz)
	}
	if ta, ok := raw["test_audience"].([]any); !ok || len(ta) != 0 {
		t.Errorf("test_audience %#v, want []", raw["test_audience"])
	}
	if !got.CreatedAt.Equal(t0) || !got.UpdatedAt.Equal(t0) {
		t.Errorf("timestamps %s %s, want the engine clock %s", got.CreatedAt, got.UpdatedAt, t0)
	}

	// Test mode has its own default lead time; the next send is the first
	// whose audience phase is still ahead.
	def := definition("rehearsal")
	def["mode"] = "test"
	def["schedule"] = map[string]any{"cron": "2 6 * * *", "timezone": "UTC"}
	test := a.create(def)
	if test.LeadTime.D() != 3*time.Minute || test.NextSendAt == nil || !test.NextSendAt.Equal(t0.Add(24*time.Hour+2*time.Minute)) {
		t.Errorf("test mode: lead %s next %v", test.LeadTime, test.NextSendAt)
	}

	// The GET returns what the POST did.
	var again pb.Automation
	expect(t, a.do("GET", fmt.Sprintf("/api/automations/%d", got.ID), nil), http.StatusOK, &again)
	if !pb.SameDefinition(&got, &again) || again.Version != 1 || !again.NextSendAt.Equal(*got.NextSendAt) {
		t.Errorf("GET differs from POST:\n%+v\n%+v", got, again)
	}

	// Names are unique.
	e := expectError(t, a.do("POST", "/api/automations", definition("morning")), http.StatusConflict, pb.KindConflict)
	if !strings.Contains(e.Message, `"morning"`) {
		t.Errorf("conflict message does not name the automation: %q", e.Message)
	}
	// ... also after trimming.
	expectError(t, a.do("POST", "/api/automations", definition("  morning ")), http.StatusConflict, pb.KindConflict)

	// ?name= finds it.
	var list httpapi.AutomationList
	expect(t, a.do("GET", "/api/automations?name=morning", nil), http.StatusOK, &list)
	if len(list.Automations) != 1 || list.Automations[0].ID != got.ID {
		t.Errorf("by name: %+v", list.Automations)
	}
	expect(t, a.do("GET", "/api/automations?name=nobody", nil), http.StatusOK, &list)
	if list.Automations == nil || len(list.Automations) != 0 {
		t.Errorf("unknown name: %#v, want an empty list", list.Automations)
	}
	if n := len(a.listAutomations()); n != 2 {
		t.Errorf("%d automations, want 2", n)
	}
}

func TestAutomationByID(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	created := a.create(definition("weekly"))
	path := fmt.Sprintf("/api/automations/%d", created.ID)

	for _, method := range []string{"GET", "PUT", "DELETE"} {
		var body any
		if method == "PUT" {
			body = definition("weekly")
		}
		e := expectError(t, a.do(method, "/api/automations/999999", body), http.StatusNotFound, pb.KindNotFound)
		if !strings.Contains(e.Message, "999999") {
			t.Errorf("%s 404 does not name the id: %q", method, e.Message)
		}
		for _, bad := range []string{"abc", "0", "-3", "1.5"} {
			e := expectError(t, a.do(method, "/api/automations/"+bad, body), http.StatusBadRequest, pb.KindValidation)
			if msg := field(t, e, "id"); !strings.Contains(msg, bad) {
				t.Errorf("%s id %q: message %q", method, bad, msg)
			}
		}
	}

	// PUT is a full replace that bumps the version.
	def := definition("weekly")
	def["message"] = map[string]any{"title": "Changed"}
	def["schedule"] = map[string]any{"cron": "0 12 * * *", "timezone": "Europe/Berlin"}
	a.clock.Advance(time.Minute)
	var updated pb.Automation
	expect(t, a.do("PUT", path, def), http.StatusOK, &updated)
	if updated.ID != created.ID || updated.Version != 2 || updated.Message.Title != "Changed" || updated.Message.Body != "" {
		t.Fatalf("update: %+v", updated)
	}
	if want := time.Date(2026, 6, 1, 10, 0, 0, 0, time.UTC); updated.NextSendAt == nil || !updated.NextSendAt.Equal(want) {
		t.Errorf("next send after update %v, want %s", updated.NextSendAt, want)
	}
	if !updated.CreatedAt.Equal(created.CreatedAt) || !updated.UpdatedAt.After(created.UpdatedAt) {
		t.Errorf("timestamps: created %s→%s updated %s→%s", created.CreatedAt, updated.CreatedAt, created.UpdatedAt, updated.UpdatedAt)
	}
	var got pb.Automation
	expect(t, a.do("GET", path, nil), http.StatusOK, &got)
	if got.Version != 2 || got.Schedule.Timezone != "Europe/Berlin" {
		t.Errorf("GET after PUT: %+v", got)
	}

	// An identical PUT is not a new version.
	delete(def, "lead_time")
	var same pb.Automation
	expect(t, a.do("PUT", path, def), http.StatusOK, &same)
	if same.Version != 2 || !same.UpdatedAt.Equal(updated.UpdatedAt) {
		t.Errorf("identical PUT: version %d updated %s, want version 2 updated %s", same.Version, same.UpdatedAt, updated.UpdatedAt)
	}

	// An invalid PUT changes nothing.
	def["lead_time"] = "-1m"
	e := expectError(t, a.do("PUT", path, def), http.StatusBadRequest, pb.KindValidation)
	field(t, e, "lead_time")
	expect(t, a.do("GET", path, nil), http.StatusOK, &got)
	if got.Version != 2 {
		t.Errorf("invalid PUT bumped the version to %d", got.Version)
	}

	// Renaming onto another automation's name is a conflict.
	a.create(definition("other"))
	expectError(t, a.do("PUT", path, definition("other")), http.StatusConflict, pb.KindConflict)

	// DELETE, then it is gone; its name is free again.
	r := a.do("DELETE", path, nil)
	expect(t, r, http.StatusNoContent, nil)
	if len(r.body) != 0 {
		t.Errorf("204 with a body: %q", r.body)
	}
	expectError(t, a.do("GET", path, nil), http.StatusNotFound, pb.KindNotFound)
	expectError(t, a.do("DELETE", path, nil), http.StatusNotFound, pb.KindNotFound)
	expectError(t, a.do("PUT", path, definition("weekly")), http.StatusNotFound, pb.KindNotFound)
	for _, l := range a.listAutomations() {
		if l.ID == created.ID {
			t.Errorf("deleted automation still listed")
		}
	}
	a.create(definition("weekly"))
}

func TestApply(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	def := definition("daily-digest")
	var res httpapi.ApplyResponse

	expect(t, a.do("POST", "/api/automations/apply", def), http.StatusCreated, &res)
	if res.Result != pb.ApplyCreated || res.Automation.Version != 1 || res.Automation.ID <= 0 {
		t.Fatalf("first apply: %+v", res)
	}
	id := res.Automation.ID

	a.clock.Advance(time.Minute)
	expect(t, a.do("POST", "/api/automations/apply", def), http.StatusOK, &res)
	if res.Result != pb.ApplyUnchanged || res.Automation.ID != id || res.Automation.Version != 1 || !res.Automation.UpdatedAt.Equal(t0) {
		t.Fatalf("unchanged apply: %+v", res)
	}
	// Spelling out the defaults is the same definition.
	def["lead_time"], def["overlap_policy"], def["mode"] = "30m", "skip", "live"
	def["schedule"] = map[string]any{"cron": "30 9 * * *", "timezone": "UTC"}
	expect(t, a.do("POST", "/api/automations/apply", def), http.StatusOK, &res)
	if res.Result != pb.ApplyUnchanged || res.Automation.Version != 1 {
		t.Fatalf("apply with explicit defaults: %+v", res)
	}

	def["message"] = map[string]any{"title": "Hello", "body": "Changed"}
	expect(t, a.do("POST", "/api/automations/apply", def), http.StatusOK, &res)
	if res.Result != pb.ApplyUpdated || res.Automation.ID != id || res.Automation.Version != 2 || res.Automation.Message.Body != "Changed" {
		t.Fatalf("updating apply: %+v", res)
	}
	expect(t, a.do("POST", "/api/automations/apply", def), http.StatusOK, &res)
	if res.Result != pb.ApplyUnchanged || res.Automation.Version != 2 {
		t.Fatalf("second unchanged apply: %+v", res)
	}

	// A pause survives re-applying a file that does not mention it; a file
	// that says "paused": false resumes (a new version is not needed).
	expect(t, a.do("POST", fmt.Sprintf("/api/automations/%d/pause", id), nil), http.StatusOK, nil)
	expect(t, a.do("POST", "/api/automations/apply", def), http.StatusOK, &res)
	if res.Result != pb.ApplyUnchanged || !res.Automation.Paused || res.Automation.NextSendAt != nil {
		t.Fatalf("re-apply of a paused automation: %s paused=%v next=%v", res.Result, res.Automation.Paused, res.Automation.NextSendAt)
	}
	def["paused"] = false
	expect(t, a.do("POST", "/api/automations/apply", def), http.StatusOK, &res)
	if res.Result != pb.ApplyUpdated || res.Automation.Paused || res.Automation.NextSendAt == nil {
		t.Fatalf("apply with paused false: %+v", res)
	}
	delete(def, "paused")

	// An invalid definition is rejected, naming its fields.
	def["overlap_policy"] = "never"
	e := expectError(t, a.do("POST", "/api/automations/apply", def), http.StatusBadRequest, pb.KindValidation)
	field(t, e, "overlap_policy")
	var got pb.Automation
	expect(t, a.do("GET", fmt.Sprintf("/api/automations/%d", id), nil), http.StatusOK, &got)
	if got.Version != 3 || got.Paused {
		t.Errorf("invalid apply changed the automation: version %d paused %v", got.Version, got.Paused)
	}
}

func TestPauseResumeRun(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	created := a.create(definition("pausable"))
	base := fmt.Sprintf("/api/automations/%d", created.ID)

	var got pb.Automation
	expect(t, a.do("POST", base+"/pause", nil), http.StatusOK, &got)
	if !got.Paused || got.NextSendAt != nil || got.Version != 1 {
		t.Fatalf("paused: %+v", got)
	}
	expect(t, a.do("POST", base+"/pause", nil), http.StatusOK, &got) // idempotent
	if !got.Paused {
		t.Fatalf("paused twice: %+v", got)
	}
	expect(t, a.do("POST", base+"/resume", nil), http.StatusOK, &got)
	if got.Paused || got.NextSendAt == nil || !got.NextSendAt.Equal(*created.NextSendAt) || got.Version != 1 {
		t.Fatalf("resumed: %+v (created with next send %v)", got, created.NextSendAt)
	}
	for _, op := range []string{"pause", "resume", "run"} {
		expectError(t, a.do("POST", "/api/automations/424242/"+op, nil), http.StatusNotFound, pb.KindNotFound)
		e := expectError(t, a.do("POST", "/api/automations/x/"+op, nil), http.StatusBadRequest, pb.KindValidation)
		field(t, e, "id")
	}

	// A send time in the past is refused, naming send_at.
	e := expectError(t, a.do("POST", base+"/run", map[string]any{"send_at": t0.Add(-time.Hour)}), http.StatusBadRequest, pb.KindValidation)
	if msg := field(t, e, "send_at"); !strings.Contains(msg, "2026-06-01T05:00:00Z") || !strings.Contains(msg, "past") {
		t.Errorf("send_at message: %q", msg)
	}
	e = expectError(t, a.do("POST", base+"/run", `{"send_at": "tomorrow"}`), http.StatusBadRequest, pb.KindValidation)
	if !strings.Contains(e.Message, "tomorrow") {
		t.Errorf("unparseable send_at: %q", e.Message)
	}

	// A send time within the lead time: the audience phase is due at once,
	// so the execution is in progress from the start.
	sendAt := t0.Add(10 * time.Minute)
	r := a.do("POST", base+"/run", map[string]any{"send_at": sendAt})
	var ex pb.Execution
	expect(t, r, http.StatusCreated, &ex)
	if r.header.Get("Location") != fmt.Sprintf("/api/executions/%d", ex.ID) {
		t.Errorf("Location %q for execution %d", r.header.Get("Location"), ex.ID)
	}
	if ex.AutomationID != created.ID || ex.Trigger != pb.TriggerManual || ex.Status != pb.StatusScheduled || !ex.SendAt.Equal(sendAt) ||
		!ex.AudienceAt.Equal(sendAt.Add(-30*time.Minute)) || !ex.CancelDeadline.Equal(sendAt) || len(ex.Phases) != len(pb.Phases) {
		t.Fatalf("run: %+v", ex)
	}

	// Overlap policy skip: another run while this one is in progress is a
	// conflict naming it, ...
	e = expectError(t, a.do("POST", base+"/run", map[string]any{"send_at": sendAt.Add(10 * time.Minute)}), http.StatusConflict, pb.KindConflict)
	if e.Context["execution_id"] != fmt.Sprint(ex.ID) || !strings.Contains(e.Message, "skip") {
		t.Errorf("overlap conflict: %+v", e)
	}
	// ... so is the same send time again, ...
	e = expectError(t, a.do("POST", base+"/run", map[string]any{"send_at": sendAt}), http.StatusConflict, pb.KindConflict)
	if e.Context["execution_id"] != fmt.Sprint(ex.ID) {
		t.Errorf("conflict does not name execution %d: %+v", ex.ID, e)
	}
	// ... and still after the first ended: one execution per send time.
	var cancelled pb.Execution
	expect(t, a.do("POST", fmt.Sprintf("/api/executions/%d/cancel", ex.ID), map[string]any{"reason": "test"}), http.StatusOK, &cancelled)
	if cancelled.Status != pb.StatusCancelled || !strings.Contains(cancelled.Reason, "test") {
		t.Fatalf("cancel: %+v", cancelled)
	}
	e = expectError(t, a.do("POST", base+"/run", map[string]any{"send_at": sendAt}), http.StatusConflict, pb.KindConflict)
	if !strings.Contains(e.Message, "already exists") || e.Context["execution_id"] != fmt.Sprint(ex.ID) {
		t.Errorf("duplicate send time: %+v", e)
	}

	// No body: send after the lead time.
	var now pb.Execution
	expect(t, a.do("POST", base+"/run", nil), http.StatusCreated, &now)
	if !now.SendAt.Equal(t0.Add(30*time.Minute)) || !now.AudienceAt.Equal(t0) {
		t.Errorf("default send time %s (audience %s), want %s", now.SendAt, now.AudienceAt, t0.Add(30*time.Minute))
	}
}

func TestExecutions(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	def := definition("superseding")
	def["overlap_policy"] = "cancel_previous"
	auto := a.create(def)
	other := a.create(definition("single"))
	// Send times within the lead time: each run's audience phase is due at
	// once, so each is in progress when the next one supersedes it.
	var ids []int64
	for i := 1; i <= 5; i++ {
		ids = append(ids, a.run(auto.ID, t0.Add(time.Duration(i)*time.Minute)).ID)
	}
	otherEx := a.run(other.ID, t0.Add(2*time.Hour))

	list := func(query string) httpapi.ExecutionList {
		t.Helper()
		var l httpapi.ExecutionList
		expect(t, a.do("GET", "/api/executions"+query, nil), http.StatusOK, &l)
		return l
	}
	idsOf := func(l httpapi.ExecutionList) []int64 {
		var out []int64
		for _, ex := range l.Executions {
			out = append(out, ex.ID)
		}
		return out
	}

	all := list("")
	if got, want := idsOf(all), []int64{otherEx.ID, ids[4], ids[3], ids[2], ids[1], ids[0]}; !slices.Equal(got, want) || all.NextBeforeID != 0 {
		t.Fatalf("all: %v next %d, want %v newest first", got, all.NextBeforeID, want)
	}
	if l := list(fmt.Sprintf("?automation_id=%d&status=cancelled", auto.ID)); !slices.Equal(idsOf(l), []int64{ids[3], ids[2], ids[1], ids[0]}) {
		t.Errorf("cancelled: %v", idsOf(l))
	}
	if l := list("?status=scheduled"); !slices.Equal(idsOf(l), []int64{otherEx.ID, ids[4]}) {
		t.Errorf("scheduled: %v", idsOf(l))
	}
	var l httpapi.ExecutionList
	expect(t, a.do("GET", fmt.Sprintf("/api/automations/%d/executions", other.ID), nil), http.StatusOK, &l)
	if !slices.Equal(idsOf(l), []int64{otherEx.ID}) {
		t.Errorf("executions of %d: %v", other.ID, idsOf(l))
	}

	// Paging: pass next_before_id as before_id until it is absent.
	var paged []int64
	query := fmt.Sprintf("?automation_id=%d&limit=2", auto.ID)
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatalf("paging does not end: %v", paged)
		}
		l := list(query)
		if len(l.Executions) > 2 {
			t.Fatalf("page of %d with limit 2", len(l.Executions))
		}
		paged = append(paged, idsOf(l)...)
		if l.NextBeforeID == 0 {
			break
		}
		if l.NextBeforeID != l.Executions[len(l.Executions)-1].ID {
			t.Fatalf("next_before_id %d is not the last id of the page %v", l.NextBeforeID, idsOf(l))
		}
		query = fmt.Sprintf("?automation_id=%d&limit=2&before_id=%d", auto.ID, l.NextBeforeID)
	}
	if want := []int64{ids[4], ids[3], ids[2], ids[1], ids[0]}; !slices.Equal(paged, want) {
		t.Errorf("paged %v, want %v", paged, want)
	}
	var raw map[string]any
	expect(t, a.do("GET", "/api/executions?limit=1000", nil), http.StatusOK, &raw)
	if _, ok := raw["next_before_id"]; ok {
		t.Errorf("a short page has next_before_id: %v", raw["next_before_id"])
	}

	// Invalid filters name the parameter and the fix.
	e := expectError(t, a.do("GET", "/api/executions?status=done", nil), http.StatusBadRequest, pb.KindValidation)
	msg := field(t, e, "status")
	for _, st := range pb.ExecutionStatuses {
		if !strings.Contains(msg, string(st)) {
			t.Errorf("status message %q does not list %s", msg, st)
		}
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=ten", "before_id=-1", "automation_id=abc", "automation_id=0"} {
		name := strings.SplitN(q, "=", 2)[0]
		e := expectError(t, a.do("GET", "/api/executions?"+q, nil), http.StatusBadRequest, pb.KindValidation)
		if msg := field(t, e, name); !strings.Contains(msg, "integer") {
			t.Errorf("%s: %q", q, msg)
		}
	}
	expectError(t, a.do("GET", "/api/executions?automation_id=777", nil), http.StatusNotFound, pb.KindNotFound)
	expectError(t, a.do("GET", "/api/automations/777/executions", nil), http.StatusNotFound, pb.KindNotFound)

	// One execution.
	got := a.execution(ids[0])
	if got.Status != pb.StatusCancelled || !strings.Contains(got.Reason, "superseded") || got.Error == nil || got.Error.Kind != pb.KindAbort {
		t.Errorf("superseded execution: %+v", got)
	}
	expectError(t, a.do("GET", "/api/executions/888", nil), http.StatusNotFound, pb.KindNotFound)
	e = expectError(t, a.do("GET", "/api/executions/first", nil), http.StatusBadRequest, pb.KindValidation)
	field(t, e, "id")

	// Events of an execution, oldest first, paged by after_id.
	var evs httpapi.EventList
	expect(t, a.do("GET", fmt.Sprintf("/api/executions/%d/events", ids[0]), nil), http.StatusOK, &evs)
	if len(evs.Events) < 2 || !slices.IsSortedFunc(evs.Events, func(x, y *pb.Event) int { return int(x.ID - y.ID) }) {
		t.Fatalf("events: %+v", evs.Events)
	}
	for _, ev := range evs.Events {
		if ev.ExecutionID != ids[0] {
			t.Errorf("event of execution %d in the list of %d", ev.ExecutionID, ids[0])
		}
	}
	last := evs.Events[len(evs.Events)-1].ID
	expect(t, a.do("GET", fmt.Sprintf("/api/executions/%d/events?after_id=%d", ids[0], last), nil), http.StatusOK, &evs)
	if len(evs.Events) != 0 {
		t.Errorf("events after the last: %+v", evs.Events)
	}
	expectError(t, a.do("GET", "/api/executions/888/events", nil), http.StatusNotFound, pb.KindNotFound)

	// Cancelling a final execution is a conflict; unknown ids are 404.
	e = expectError(t, a.do("POST", fmt.Sprintf("/api/executions/%d/cancel", ids[0]), nil), http.StatusConflict, pb.KindConflict)
	if !strings.Contains(e.Message, "already cancelled") {
		t.Errorf("cancel of a cancelled execution: %q", e.Message)
	}
	expectError(t, a.do("POST", "/api/executions/888/cancel", nil), http.StatusNotFound, pb.KindNotFound)
	e = expectError(t, a.do("POST", fmt.Sprintf("/api/executions/%d/cancel?force=sure", ids[4]), nil), http.StatusBadRequest, pb.KindValidation)
	field(t, e, "force")

	// After the cancellation deadline only a forced cancel works.
	a.clock.Set(t0.Add(5*time.Minute + time.Second)) // past the send time of ids[4]
	e = expectError(t, a.do("POST", fmt.Sprintf("/api/executions/%d/cancel", ids[4]), nil), http.StatusConflict, pb.KindConflict)
	if !strings.Contains(e.Message, "force=true") {
		t.Errorf("late cancel does not say how to force: %q", e.Message)
	}
	var forced pb.Execution
	expect(t, a.do("POST", fmt.Sprintf("/api/executions/%d/cancel?force=true", ids[4]), nil), http.StatusOK, &forced)
	if forced.Status != pb.StatusCancelled {
		t.Errorf("forced cancel: %+v", forced)
	}
}

func TestDeleteWithExecutionInProgress(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	auto := a.create(definition("busy"))
	ex := a.run(auto.ID, t0.Add(time.Hour))
	path := fmt.Sprintf("/api/automations/%d", auto.ID)

	e := expectError(t, a.do("DELETE", path, nil), http.StatusConflict, pb.KindConflict)
	if e.Context["execution_id"] != fmt.Sprint(ex.ID) || !strings.Contains(e.Message, "force=true") {
		t.Errorf("conflict: %+v", e)
	}
	e = expectError(t, a.do("DELETE", path+"?force=perhaps", nil), http.StatusBadRequest, pb.KindValidation)
	field(t, e, "force")
	expectError(t, a.do("DELETE", path+"?force=false", nil), http.StatusConflict, pb.KindConflict)
	expect(t, a.do("GET", path, nil), http.StatusOK, nil)

	expect(t, a.do("DELETE", path+"?force=true", nil), http.StatusNoContent, nil)
	expectError(t, a.do("GET", path, nil), http.StatusNotFound, pb.KindNotFound)
	got := a.execution(ex.ID) // history stays readable
	if got.Status != pb.StatusCancelled || !strings.Contains(got.Reason, "deleted") {
		t.Errorf("execution of the deleted automation: %+v", got)
	}
}

// TestRunCompletes starts the engine: a run with no lead time goes through
// every phase; afterwards cancelling it is a conflict.
func TestRunCompletes(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	a.start()
	def := definition("now")
	def["lead_time"] = "0s"
	def["test_audience"] = []map[string]string{{"user_id": "qa", "token": "tq"}}
	auto := a.create(def)
	var ex pb.Execution
	expect(t, a.do("POST", fmt.Sprintf("/api/automations/%d/run", auto.ID), nil), http.StatusCreated, &ex)
	var got *pb.Execution
	// The status turns final before the cleanup phase has run.
	waitFor(t, "execution final and cleaned up", func() (bool, string) {
		got = a.execution(ex.ID)
		return got.Status.Final() && got.PhaseRecord(pb.PhaseCleanup).Status == pb.PhaseCompleted,
			fmt.Sprintf("%s phase %s cleanup %s", got.Status, got.Phase, got.PhaseRecord(pb.PhaseCleanup).Status)
	})
	if got.Status != pb.StatusCompleted || got.Metrics[pb.MetricSent] != 3 || got.Metrics[pb.MetricAudienceSize] != 3 || got.Metrics[pb.MetricTestSent] != 1 {
		t.Fatalf("execution: %s metrics %v error %v", got.Status, got.Metrics, got.Error)
	}
	for _, p := range got.Phases {
		if p.Status != pb.PhaseCompleted && p.Status != pb.PhaseSkipped {
			t.Errorf("phase %s is %s", p.Phase, p.Status)
		}
	}
	e := expectError(t, a.do("POST", fmt.Sprintf("/api/executions/%d/cancel", ex.ID), map[string]any{"force": true}), http.StatusConflict, pb.KindConflict)
	if !strings.Contains(e.Message, "already completed") {
		t.Errorf("cancel of a completed execution: %q", e.Message)
	}
	var l httpapi.ExecutionList
	expect(t, a.do("GET", "/api/executions?status=completed", nil), http.StatusOK, &l)
	if len(l.Executions) != 1 || l.Executions[0].ID != ex.ID {
		t.Errorf("completed: %+v", l.Executions)
	}
	// With nothing in progress, DELETE needs no force.
	expect(t, a.do("DELETE", fmt.Sprintf("/api/automations/%d", auto.ID), nil), http.StatusNoContent, nil)
}

func TestSchedulePreview(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	q := url.Values{"cron": {"30 2 * * *"}, "timezone": {"America/New_York"}, "from": {"2026-03-07T00:00:00Z"}, "count": {"3"}}
	var p httpapi.SchedulePreview
	expect(t, a.do("GET", "/api/schedule/preview?"+q.Encode(), nil), http.StatusOK, &p)
	want := []httpapi.SendTime{
		{At: "2026-03-07T02:30:00-05:00", UTC: "2026-03-07T07:30:00Z", UTCOffset: "-05:00", Weekday: "Saturday"},
		{At: "2026-03-08T03:00:00-04:00", UTC: "2026-03-08T07:00:00Z", UTCOffset: "-04:00", Weekday: "Sunday"},
		{At: "2026-03-09T02:30:00-04:00", UTC: "2026-03-09T06:30:00Z", UTCOffset: "-04:00", Weekday: "Monday"},
	}
	if p.Cron != "30 2 * * *" || p.Timezone != "America/New_York" || !slices.Equal(p.SendTimes, want) {
		t.Fatalf("preview:\n got %+v\nwant %+v", p, want)
	}

	// Defaults: UTC, 10 send times, from the server clock.
	expect(t, a.do("GET", "/api/schedule/preview?cron="+url.QueryEscape("0 12 * * *"), nil), http.StatusOK, &p)
	if p.Timezone != "UTC" || len(p.SendTimes) != 10 || p.SendTimes[0].UTC != "2026-06-01T12:00:00Z" {
		t.Errorf("defaults: %+v", p)
	}

	// Every invalid input is named at once.
	q = url.Values{"cron": {"30 25 * * *"}, "timezone": {"Atlantis/Capital"}, "count": {"0"}, "from": {"yesterday"}}
	e := expectError(t, a.do("GET", "/api/schedule/preview?"+q.Encode(), nil), http.StatusBadRequest, pb.KindValidation)
	if got, want := fieldNames(e), []string{"count", "cron", "from", "timezone"}; !slices.Equal(got, want) {
		t.Fatalf("fields %v, want %v: %+v", got, want, e)
	}
	if msg := field(t, e, "cron"); !strings.Contains(msg, "position 4") || !strings.Contains(msg, "0-23") {
		t.Errorf("cron message: %q", msg)
	}
	if msg := field(t, e, "timezone"); !strings.Contains(msg, "Atlantis/Capital") {
		t.Errorf("timezone message: %q", msg)
	}
	if msg := field(t, e, "from"); !strings.Contains(msg, "yesterday") || !strings.Contains(msg, "RFC 3339") {
		t.Errorf("from message: %q", msg)
	}
	for _, c := range []struct{ query, field string }{
		{"", "cron"},
		{"cron=" + url.QueryEscape("* * * * *") + "&count=1001", "count"},
		{"cron=" + url.QueryEscape("* * * * *") + "&count=many", "count"},
		{"cron=" + url.QueryEscape("* * * * *") + "&timezone=Local", "timezone"},
		{"cron=" + url.QueryEscape("0 0 30 2 *"), "cron"},
	} {
		e := expectError(t, a.do("GET", "/api/schedule/preview?"+c.query, nil), http.StatusBadRequest, pb.KindValidation)
		if got := fieldNames(e); !slices.Equal(got, []string{c.field}) {
			t.Errorf("%q: fields %v, want [%s]", c.query, got, c.field)
		}
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	const token, token2, wrong = "s3cret-token-A1", "s3cret-token-B2", "s3cret-token-C3"
	a := newAPI(t, httpapi.Options{Tokens: []string{token, token2}})

	// Set up with the token; the steps below refer to these.
	a.token = token
	auto := a.create(definition("guarded"))
	ex := a.run(auto.ID, t0.Add(time.Hour))
	a.token = ""

	type route struct {
		method, path string
		body         any
		status       int // with the right token
	}
	def := definition("guarded-2")
	updated := definition("guarded")
	updated["message"] = map[string]any{"title": "v2"}
	mutating := []route{
		{"POST", "/api/automations", def, http.StatusCreated},
		{"POST", "/api/automations/apply", updated, http.StatusOK},
		{"PUT", fmt.Sprintf("/api/automations/%d", auto.ID), definition("guarded"), http.StatusOK},
		{"POST", fmt.Sprintf("/api/automations/%d/pause", auto.ID), nil, http.StatusOK},
		{"POST", fmt.Sprintf("/api/automations/%d/resume", auto.ID), nil, http.StatusOK},
		{"POST", fmt.Sprintf("/api/executions/%d/cancel", ex.ID), nil, http.StatusOK},
		{"POST", fmt.Sprintf("/api/automations/%d/run", auto.ID), map[string]any{"send_at": t0.Add(2 * time.Hour)}, http.StatusCreated},
		{"DELETE", fmt.Sprintf("/api/automations/%d?force=true", auto.ID), nil, http.StatusNoContent},
	}
	for _, r := range mutating {
		for _, hdr := range [][]string{
			nil,
			{"Authorization", "Bearer " + wrong},
			{"Authorization", "Bearer "},
			{"Authorization", "Basic " + token},
			{"Authorization", token},
			{"Authorization", "Bearer " + token + "x"},
			{"Authorization", "Bearer " + token[:len(token)-1]},
		} {
			resp := a.do(r.method, r.path, r.body, hdr...)
			e := expectError(t, resp, http.StatusUnauthorized, pb.KindUnauthorized)
			if got := resp.header.Get("WWW-Authenticate"); got != `Bearer realm="pushblaster"` {
				t.Errorf("%s %s %v: WWW-Authenticate %q", r.method, r.path, hdr, got)
			}
			if len(hdr) == 0 && !strings.Contains(e.Message, "Authorization: Bearer") {
				t.Errorf("missing token message does not say what to send: %q", e.Message)
			}
		}
	}
	// Nothing changed.
	var got pb.Automation
	expect(t, a.do("GET", fmt.Sprintf("/api/automations/%d", auto.ID), nil), http.StatusOK, &got)
	if got.Version != 1 || got.Paused || len(a.listAutomations()) != 1 || a.execution(ex.ID).Status != pb.StatusScheduled {
		t.Fatalf("an unauthorized request changed something: %+v", got)
	}

	// GETs need no token.
	for _, path := range []string{
		"/healthz", "/readyz", "/api/automations", fmt.Sprintf("/api/automations/%d", auto.ID),
		fmt.Sprintf("/api/automations/%d/executions", auto.ID), fmt.Sprintf("/api/automations/%d/events", auto.ID),
		"/api/executions", fmt.Sprintf("/api/executions/%d", ex.ID), fmt.Sprintf("/api/executions/%d/events", ex.ID),
		"/api/events", "/api/schedule/preview?cron=" + url.QueryEscape("0 9 * * *"),
	} {
		if r := a.do("GET", path, nil); r.status != http.StatusOK {
			t.Errorf("GET without a token: %s", r)
		}
	}

	// The right token (either one, the scheme in any case) works everywhere.
	for i, r := range mutating {
		auth := []string{"Bearer " + token, "bearer " + token2, "BEARER " + token}[i%3]
		if resp := a.do(r.method, r.path, r.body, "Authorization", auth); resp.status != r.status {
			t.Errorf("with token: %s, want %d", resp, r.status)
		}
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.bodies) < len(mutating)*8 {
		t.Fatalf("only %d bodies recorded", len(a.bodies))
	}
	for _, b := range a.bodies {
		for _, secret := range []string{token, token2, wrong, "s3cret"} {
			if strings.Contains(b, secret) {
				t.Errorf("a response body contains a token: %s", b)
			}
		}
	}
}

func TestHealthAndUnknownRoutes(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})

	var h map[string]string
	expect(t, a.do("GET", "/healthz", nil), http.StatusOK, &h)
	if h["status"] != "ok" {
		t.Errorf("healthz: %v", h)
	}
	expect(t, a.do("GET", "/readyz", nil), http.StatusOK, &h)
	if h["status"] != "ready" {
		t.Errorf("readyz: %v", h)
	}

	for _, r := range []struct{ method, path string }{
		{"GET", "/nope"}, {"GET", "/api"}, {"GET", "/api/automation"}, {"POST", "/api/nothing"},
		{"GET", "/api/executions/1/nothing"}, {"DELETE", "/api/automations/1/pause/now"},
	} {
		e := expectError(t, a.do(r.method, r.path, nil), http.StatusNotFound, pb.KindNotFound)
		if !strings.Contains(e.Message, r.method+" "+r.path) {
			t.Errorf("%s %s: message %q does not name the route", r.method, r.path, e.Message)
		}
	}
	// A known path with the wrong method: 405 listing the allowed ones.
	for _, r := range []struct{ method, path, allow string }{
		{"POST", "/api/executions", "GET"},
		{"DELETE", "/api/executions/1", "GET"},
		{"PATCH", "/api/automations", "GET, POST"},
		{"POST", "/api/automations/1", "GET, PUT, DELETE"},
		{"GET", "/api/automations/1/run", "POST"},
		{"PUT", "/api/schedule/preview", "GET"},
	} {
		resp := a.do(r.method, r.path, nil)
		e := expectError(t, resp, http.StatusMethodNotAllowed, pb.KindValidation)
		if got := resp.header.Get("Allow"); got != r.allow {
			t.Errorf("%s %s: Allow %q, want %q", r.method, r.path, got, r.allow)
		}
		if !strings.Contains(e.Message, r.allow) || !strings.Contains(e.Message, r.method) {
			t.Errorf("%s %s: message %q", r.method, r.path, e.Message)
		}
	}

	// Readiness reports the failure with its kind.
	var calls int
	var mu sync.Mutex
	ready := func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return pb.Errorf(pb.KindDatabase, "migrations pending: 002_next; run pushblaster migrate")
	}
	b := newAPI(t, httpapi.Options{Ready: ready})
	var body struct {
		Status string    `json:"status"`
		Error  *pb.Error `json:"error"`
	}
	expect(t, b.do("GET", "/readyz", nil), http.StatusServiceUnavailable, &body)
	if body.Status != "not_ready" || body.Error == nil || body.Error.Kind != pb.KindDatabase || !strings.Contains(body.Error.Message, "002_next") {
		t.Errorf("readyz: %+v %+v", body, body.Error)
	}
	expect(t, b.do("GET", "/healthz", nil), http.StatusOK, &h) // liveness does not depend on the database
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Errorf("Ready called %d times, want 1", calls)
	}
}

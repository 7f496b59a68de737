package pushblaster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/pushblaster/pushblaster/cron"
)

// Mode says whether an automation reaches its real audience.
type Mode string

// Modes.
const (
	// ModeLive sends to the generated audience.
	ModeLive Mode = "live"
	// ModeTest rehearses: every phase runs on the real timeline and the
	// audience is generated and counted, but the live send goes to the test
	// audience instead.
	ModeTest Mode = "test"
)

// OverlapPolicy says what a fire does while an earlier execution of the same
// automation is still in progress.
type OverlapPolicy string

// Overlap policies.
const (
	// OverlapSkip records the new fire as skipped, with the reason.
	OverlapSkip OverlapPolicy = "skip"
	// OverlapQueue buffers one fire; it starts when the running one ends.
	// A fire that finds the buffer full is skipped.
	OverlapQueue OverlapPolicy = "queue"
	// OverlapCancelPrevious cancels the running execution and starts anew.
	OverlapCancelPrevious OverlapPolicy = "cancel_previous"
)

// Defaults.
const (
	DefaultLeadTimeLive  = 30 * time.Minute
	DefaultLeadTimeTest  = 3 * time.Minute
	DefaultCatchupWindow = 10 * time.Minute
	DefaultTimezone      = "UTC"
)

// Automation is an operator's definition: a message, an audience and a
// schedule. Pointer fields are optional on input; Normalize fills them with
// their defaults, so a stored automation has every field set.
type Automation struct {
	ID      int64  `json:"id,omitempty"`
	Name    string `json:"name"`
	Version int    `json:"version,omitempty"`

	Schedule Schedule `json:"schedule"`
	Mode     Mode     `json:"mode,omitempty"`
	// LeadTime is how long before the send time the audience phase starts.
	LeadTime *Duration `json:"lead_time,omitempty"`
	// CancellationDeadline is how long before the send time cancelling
	// closes (later, only a forced cancel stops it).
	CancellationDeadline *Duration     `json:"cancellation_deadline,omitempty"`
	OverlapPolicy        OverlapPolicy `json:"overlap_policy,omitempty"`
	// CatchupWindow is how late a fire may still run after the engine was
	// down at its fire time; later ones are recorded as missed.
	CatchupWindow *Duration `json:"catchup_window,omitempty"`

	Audience     Audience    `json:"audience"`
	TestAudience []Recipient `json:"test_audience"`
	Message      Message     `json:"message"`
	Delivery     Delivery    `json:"delivery"`
	Paused       bool        `json:"paused"`

	// Tags group automations (frequency caps can be scoped to a tag).
	Tags []string `json:"tags,omitempty"`
	// FrequencyCaps hold back recipients who got too many pushes lately.
	FrequencyCaps []FrequencyCap `json:"frequency_caps,omitempty"`
	// Cadence asks an external service which recipients may get the push.
	Cadence *Cadence `json:"cadence,omitempty"`

	// NextSendAt is the send time of the next scheduled fire; nil when
	// paused or when the schedule never fires again.
	NextSendAt *time.Time `json:"next_send_at,omitempty"`
	// NextFireAt is when that fire starts (its audience phase): the send
	// time minus the lead time, or later if an edit lengthened the lead.
	NextFireAt *time.Time `json:"next_fire_at,omitempty"`
	CreatedAt  time.Time  `json:"created_at,omitzero"`
	UpdatedAt  time.Time  `json:"updated_at,omitzero"`

	// decodeErrs are field errors found while decoding JSON; Normalize
	// reports them together with every other invalid field.
	decodeErrs []FieldError
	// pausedSet records whether the JSON said "paused" at all: an update
	// that does not mention it keeps the current state, so re-applying a
	// file never resumes an automation someone paused in an emergency.
	pausedSet bool
}

// PausedSet reports whether the decoded JSON set "paused" explicitly.
func (a *Automation) PausedSet() bool { return a.pausedSet }

// UnmarshalJSON decodes an automation, collecting invalid durations as field
// errors (encoding/json would report them without naming the field).
func (a *Automation) UnmarshalJSON(b []byte) error {
	type plain Automation
	var shadow struct {
		*plain
		LeadTime             json.RawMessage `json:"lead_time"`
		CancellationDeadline json.RawMessage `json:"cancellation_deadline"`
		CatchupWindow        json.RawMessage `json:"catchup_window"`
		Paused               *bool           `json:"paused"`
	}
	shadow.plain = (*plain)(a)
	// Decode leniently and collect what is wrong, so that one answer names
	// every bad field: unknown ones (typos must not fall back to defaults),
	// the first wrongly typed one, and whatever Normalize finds.
	a.decodeErrs = unknownFields(b, reflect.TypeOf(shadow), "")
	if err := json.Unmarshal(b, &shadow); err != nil {
		var typ *json.UnmarshalTypeError
		if !errors.As(err, &typ) {
			return err
		}
		if typ.Field == "" {
			return Errorf(KindValidation, "an automation is a JSON object, not a JSON %s", typ.Value)
		}
		field := strings.ReplaceAll(typ.Field, "plain.", "")
		a.decodeErrs = append(a.decodeErrs, FieldError{Field: field,
			Message: fmt.Sprintf("is a JSON %s; expected %s", typ.Value, jsonKind(typ.Type))})
	}
	a.pausedSet = shadow.Paused != nil
	a.Paused = shadow.Paused != nil && *shadow.Paused
	for _, f := range []struct {
		name string
		raw  json.RawMessage
		dst  **Duration
	}{
		{"lead_time", shadow.LeadTime, &a.LeadTime},
		{"cancellation_deadline", shadow.CancellationDeadline, &a.CancellationDeadline},
		{"catchup_window", shadow.CatchupWindow, &a.CatchupWindow},
	} {
		*f.dst = nil
		if len(f.raw) == 0 || string(f.raw) == "null" {
			continue
		}
		var d Duration
		if err := d.UnmarshalJSON(f.raw); err != nil {
			a.decodeErrs = append(a.decodeErrs, FieldError{Field: f.name, Message: err.Error()})
			continue
		}
		*f.dst = &d
	}
	return nil
}

// Schedule is a cron expression in an IANA time zone. The cron expression
// names the send time.
type Schedule struct {
	Cron     string `json:"cron"`
	Timezone string `json:"timezone,omitempty"`
}

// Delivery says how pushes go out.
type Delivery struct {
	// Provider is the sender; "log" is a dry run that records every
	// delivery in the ledger and the log without contacting anyone.
	Provider string `json:"provider"`
	// RatePerSecond caps this automation's sends per second, in total
	// over every instance; 0 is no limit of its own (the provider's
	// global limit still applies).
	RatePerSecond int `json:"rate_per_second"`
	// MaxErrorRatio is the circuit breaker: when more than this share of
	// a send's requests fail (after at least BreakerMinAttempts), the send
	// stops and the execution fails as external. Default 0.2; 1 disables.
	MaxErrorRatio *float64 `json:"max_error_ratio,omitempty"`
	// OnUnknown says what happens to a recipient whose request was in
	// flight when its instance died: report (default: never re-sent) or
	// resend (at most one duplicate, never a miss).
	OnUnknown string `json:"on_unknown,omitempty"`
}

// OnUnknown policies.
const (
	OnUnknownReport = "report"
	OnUnknownResend = "resend"
)

// Circuit breaker defaults.
const (
	DefaultMaxErrorRatio = 0.2
	BreakerMinAttempts   = 100
)

// ErrorRatio returns the effective max_error_ratio.
func (d *Delivery) ErrorRatio() float64 {
	if d.MaxErrorRatio != nil {
		return *d.MaxErrorRatio
	}
	return DefaultMaxErrorRatio
}

// ProviderLog is the dry-run provider.
const ProviderLog = "log"

// Lead returns the effective lead time.
func (a *Automation) Lead() time.Duration {
	if a.LeadTime != nil {
		return a.LeadTime.D()
	}
	if a.Mode == ModeTest {
		return DefaultLeadTimeTest
	}
	return DefaultLeadTimeLive
}

// Deadline returns the effective cancellation deadline.
func (a *Automation) Deadline() time.Duration {
	if a.CancellationDeadline != nil {
		return a.CancellationDeadline.D()
	}
	return 0
}

// Catchup returns the effective catch-up window.
func (a *Automation) Catchup() time.Duration {
	if a.CatchupWindow != nil {
		return a.CatchupWindow.D()
	}
	return DefaultCatchupWindow
}

// Location returns the automation's time zone. Normalize has validated it.
func (a *Automation) Location() *time.Location {
	loc, err := loadLocation(a.Schedule.Timezone)
	if err != nil {
		return time.UTC
	}
	return loc
}

// ParsedSchedule returns the parsed cron schedule. Normalize has validated it.
func (a *Automation) ParsedSchedule() (*cron.Schedule, error) {
	return cron.Parse(a.Schedule.Cron)
}

// Normalize validates a and fills every default. It returns a validation
// *Error naming every invalid field.
func (a *Automation) Normalize() error {
	var v Validation
	for _, fe := range a.decodeErrs {
		v.Add(fe.Field, "%s", fe.Message)
	}
	a.Name = strings.TrimSpace(a.Name)
	switch {
	case a.Name == "":
		v.Add("name", "is required")
	case len(a.Name) > 200:
		v.Add("name", "is %d characters long; the limit is 200", len(a.Name))
	case strings.IndexFunc(a.Name, unicode.IsControl) >= 0:
		v.Add("name", "contains a control character")
	}

	a.Schedule.Cron = strings.TrimSpace(a.Schedule.Cron)
	if a.Schedule.Cron == "" {
		v.Add("schedule.cron", `is required, e.g. "30 9 * * 1-5" (09:30 on weekdays)`)
	} else if _, err := cron.Parse(a.Schedule.Cron); err != nil {
		v.Add("schedule.cron", "%s", err.Error())
	}
	if a.Schedule.Timezone == "" {
		a.Schedule.Timezone = DefaultTimezone
	}
	if _, err := loadLocation(a.Schedule.Timezone); err != nil {
		v.Add("schedule.timezone", "%s", err.Error())
	}

	switch a.Mode {
	case "":
		a.Mode = ModeLive
	case ModeLive, ModeTest:
	default:
		v.Add("mode", "is %q; use live or test", a.Mode)
	}
	switch a.OverlapPolicy {
	case "":
		a.OverlapPolicy = OverlapSkip
	case OverlapSkip, OverlapQueue, OverlapCancelPrevious:
	default:
		v.Add("overlap_policy", "is %q; use skip, queue or cancel_previous", a.OverlapPolicy)
	}

	lead := a.Lead()
	a.LeadTime = durationPtr(lead)
	a.CancellationDeadline = durationPtr(a.Deadline())
	a.CatchupWindow = durationPtr(a.Catchup())
	for _, d := range []struct {
		field string
		val   time.Duration
	}{
		{"lead_time", lead},
		{"cancellation_deadline", a.Deadline()},
		{"catchup_window", a.Catchup()},
	} {
		if d.val < 0 {
			v.Add(d.field, "is %s; it must be zero or positive", Duration(d.val))
		}
	}
	if a.Deadline() > lead && lead >= 0 {
		v.Add("cancellation_deadline", "is %s, longer than lead_time %s: cancelling would close before the audience is even generated; make it at most the lead time",
			Duration(a.Deadline()), Duration(lead))
	}

	a.Audience.normalize(&v)
	if a.TestAudience == nil {
		a.TestAudience = []Recipient{}
	}
	validateRecipients(&v, "test_audience", a.TestAudience)
	// A test list is sent as given: a device listed twice would be sent
	// twice (a live audience is de-duplicated as it is loaded).
	seen := map[[2]string]int{}
	for i, r := range a.TestAudience {
		k := [2]string{r.UserID, r.Token}
		if j, dup := seen[k]; dup {
			v.Add(fmt.Sprintf("test_audience[%d]", i), "repeats test_audience[%d] (same user_id and token); list each device once", j)
			continue
		}
		seen[k] = i
	}

	a.Message.validate(&v, "message")
	a.Delivery.normalize(&v)
	a.normalizeCaps(&v)
	return v.Err()
}

// NormalizeIn is Normalize plus the checks that depend on the engine's
// environment: a configured provider, a script inside the scripts
// directory, a CSV file inside the data directory, an audience database for
// SQL, allowed script environment names.
func (a *Automation) NormalizeIn(env Environment) error {
	var v Validation
	var pe *Error
	if err := a.Normalize(); err != nil {
		if !errors.As(err, &pe) || pe.Kind != KindValidation {
			return err
		}
		for _, f := range pe.Fields {
			v.Add(f.Field, "%s", f.Message)
		}
	}
	if a.Delivery.Provider != "" && !slices.Contains(env.Providers, a.Delivery.Provider) {
		v.Add("delivery.provider", "is %q, which is not configured; configured providers: %s",
			a.Delivery.Provider, strings.Join(env.Providers, ", "))
	}
	a.Audience.checkEnvironment(&v, env)
	return v.Err()
}

func validateRecipients(v *Validation, field string, rs []Recipient) {
	const maxReported = 5
	bad := 0
	for i, r := range rs {
		msg := ""
		switch {
		case strings.TrimSpace(r.UserID) == "":
			msg = "user_id is required"
		case r.Platform != "" && r.Platform != "android" && r.Platform != "ios" && r.Platform != "web":
			msg = fmt.Sprintf("platform is %q; use android, ios or web", r.Platform)
		}
		if msg == "" {
			continue
		}
		bad++
		if bad <= maxReported {
			v.Add(fmt.Sprintf("%s[%d]", field, i), "%s", msg)
		}
	}
	if bad > maxReported {
		v.Add(field, "%d more invalid recipients not listed", bad-maxReported)
	}
}

// SameDefinition reports whether a and b define the same automation,
// ignoring identity, version, timestamps and scheduler state.
func SameDefinition(a, b *Automation) bool {
	ja, err1 := json.Marshal(a.Definition())
	jb, err2 := json.Marshal(b.Definition())
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// Definition returns a copy of a without identity, version, timestamps and
// scheduler state: what an operator writes.
func (a *Automation) Definition() *Automation {
	c := *a
	c.ID, c.Version, c.NextSendAt, c.NextFireAt = 0, 0, nil, nil
	c.CreatedAt, c.UpdatedAt = time.Time{}, time.Time{}
	return &c
}

// DecodeAutomation reads one automation from JSON, rejecting unknown fields
// (a typo such as "lead_tme" must not silently fall back to a default).
func DecodeAutomation(r io.Reader) (*Automation, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var a Automation
	if err := dec.Decode(&a); err != nil {
		return nil, JSONError(err)
	}
	if dec.More() {
		return nil, Errorf(KindValidation, "body holds more than one JSON value")
	}
	return &a, nil
}

// JSONError turns a JSON decoding error into a validation *Error that names
// the field and the fix.
func JSONError(err error) *Error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var pe *Error
	switch {
	case errors.As(err, &pe):
		return pe
	case errors.Is(err, io.EOF):
		return Errorf(KindValidation, "body is empty; send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(KindValidation, "malformed JSON: the body ends before the value does (truncated?)")
	case errors.As(err, &syn):
		return Errorf(KindValidation, "malformed JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		e := Errorf(KindValidation, "invalid field %s", typ.Field)
		e.Fields = []FieldError{{Field: typ.Field, Message: fmt.Sprintf("is a JSON %s; expected %s", typ.Value, typ.Type)}}
		return e
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		e := Errorf(KindValidation, "unknown field %q", name)
		e.Fields = []FieldError{{Field: name, Message: "is not a known field; check its spelling"}}
		return e
	}
	return Errorf(KindValidation, "invalid JSON: %v", err)
}

// unknownFields lists the object keys in raw that type t has no field for,
// recursively, with their paths ("schedule.tz", "audience.recipients[2].tokn").
func unknownFields(raw []byte, t reflect.Type, path string) []FieldError {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil {
			return nil // not an object: the type error is reported elsewhere
		}
		fields := map[string]reflect.Type{}
		collectJSONFields(t, fields)
		var out []FieldError
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				out = append(out, FieldError{Field: path + k, Message: "is not a known field; check its spelling"})
				continue
			}
			out = append(out, unknownFields(obj[k], ft, path+k+".")...)
		}
		return out
	case reflect.Slice:
		var arr []json.RawMessage
		if json.Unmarshal(raw, &arr) != nil {
			return nil
		}
		var out []FieldError
		base := strings.TrimSuffix(path, ".")
		for i, el := range arr {
			out = append(out, unknownFields(el, t.Elem(), fmt.Sprintf("%s[%d].", base, i))...)
		}
		return out
	}
	return nil
}

// collectJSONFields maps JSON names to field types, following embedded
// structs; the shallowest field wins, as in encoding/json.
func collectJSONFields(t reflect.Type, out map[string]reflect.Type) {
	var embedded []reflect.Type
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			embedded = append(embedded, ft)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	for _, et := range embedded {
		inner := map[string]reflect.Type{}
		collectJSONFields(et, inner)
		for k, v := range inner {
			if _, ok := out[k]; !ok {
				out[k] = v
			}
		}
	}
}

// jsonKind names a Go type as JSON calls it.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16,
		reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}

// loadLocation loads an IANA zone, refusing "Local" whose meaning depends on
// the machine the engine happens to run on.
func loadLocation(name string) (*time.Location, error) {
	if name == "Local" {
		return nil, fmt.Errorf(`"Local" depends on the server's configuration; name an IANA zone such as "Europe/Berlin" or "UTC"`)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf(`unknown time zone %q; use an IANA name such as "America/New_York", "Europe/Berlin" or "UTC"`, name)
	}
	return loc, nil
}

// LoadLocation is loadLocation for other packages.
func LoadLocation(name string) (*time.Location, error) { return loadLocation(name) }

package pushblaster

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Audience types.
const (
	// AudienceStatic is an inline recipient list.
	AudienceStatic = "static"
	// AudienceScript runs an executable from the scripts directory; its
	// stdout is CSV with a header or JSON Lines.
	AudienceScript = "script"
	// AudienceSQL runs a query on the audience database.
	AudienceSQL = "sql"
	// AudienceCSV reads a CSV file from the data directory.
	AudienceCSV = "csv"
)

// On-empty policies.
const (
	OnEmptyComplete = "complete" // an empty audience completes: "nothing to send"
	OnEmptyFail     = "fail"     // an empty audience fails the execution
)

// Audience defaults.
const (
	DefaultAudienceTimeout = 5 * time.Minute
	DefaultStallTimeout    = 2 * time.Minute
	DefaultMaxGrowth       = 3.0
	DefaultMaxBadRowRatio  = 0.01
	// MaxAudienceTimeout bounds a source's timeout below the phase job's
	// own timeout, so a slow source is reported as such, not rescued.
	MaxAudienceTimeout = 9 * time.Minute
)

// Audience defines who receives the live push: where the recipients come
// from and the guards that stop an anomalous list before anything is sent.
type Audience struct {
	// Type is the source: static, script, sql or csv.
	Type string `json:"type"`
	// Recipients is the static list.
	Recipients []Recipient `json:"recipients,omitempty"`

	// Script is an executable, relative to the scripts directory.
	Script string `json:"script,omitempty"`
	// Args are passed to the script as they are (no shell).
	Args []string `json:"args,omitempty"`
	// Env is extra environment for the script; every name must be allowed
	// by the server (--script-env-allow).
	Env map[string]string `json:"env,omitempty"`
	// Query is the SQL of an sql audience, run read-only on the audience
	// database. Its columns are named like a script's output.
	Query string `json:"query,omitempty"`
	// File is a CSV file, relative to the data directory.
	File string `json:"file,omitempty"`

	// Timeout bounds a script or query (default 5m, at most 9m).
	Timeout *Duration `json:"timeout,omitempty"`
	// StallTimeout kills a script silent on stdout and stderr this long
	// (default 2m): hung, not slow.
	StallTimeout *Duration `json:"stall_timeout,omitempty"`

	// MaxRecipients fails the execution when the audience is larger (0:
	// no limit).
	MaxRecipients int64 `json:"max_recipients,omitempty"`
	// MaxGrowth fails the execution when the audience is more than this
	// many times the last completed execution's (default 3; 0 turns the
	// guard off).
	MaxGrowth *float64 `json:"max_growth,omitempty"`
	// OnEmpty says what an empty audience does: complete (default) or fail.
	OnEmpty string `json:"on_empty,omitempty"`
	// MaxBadRowRatio fails the phase when more than this share of the
	// output rows is malformed (default 0.01).
	MaxBadRowRatio *float64 `json:"max_bad_row_ratio,omitempty"`

	decodeErrs []FieldError
}

// UnmarshalJSON decodes an audience, collecting invalid durations as field
// errors that Normalize reports with every other invalid field.
func (a *Audience) UnmarshalJSON(b []byte) error {
	type plain Audience
	var shadow struct {
		*plain
		Timeout      json.RawMessage `json:"timeout"`
		StallTimeout json.RawMessage `json:"stall_timeout"`
	}
	shadow.plain = (*plain)(a)
	a.decodeErrs = nil
	if err := json.Unmarshal(b, &shadow); err != nil {
		// A wrongly typed value is reported with its field, like every
		// other invalid field, instead of ending the decoding.
		var typ *json.UnmarshalTypeError
		if !errors.As(err, &typ) || typ.Field == "" {
			return err
		}
		a.decodeErrs = append(a.decodeErrs, FieldError{Field: "audience." + strings.ReplaceAll(typ.Field, "plain.", ""),
			Message: fmt.Sprintf("is a JSON %s; expected %s", typ.Value, jsonKind(typ.Type))})
	}
	a.Timeout = decodeDuration(shadow.Timeout, "audience.timeout", &a.decodeErrs)
	a.StallTimeout = decodeDuration(shadow.StallTimeout, "audience.stall_timeout", &a.decodeErrs)
	return nil
}

// decodeDuration parses an optional duration, recording a field error.
func decodeDuration(raw json.RawMessage, field string, errs *[]FieldError) *Duration {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var d Duration
	if err := d.UnmarshalJSON(raw); err != nil {
		*errs = append(*errs, FieldError{Field: field, Message: err.Error()})
		return nil
	}
	return &d
}

// SourceTimeout returns the effective timeout of a script or query.
func (a *Audience) SourceTimeout() time.Duration {
	if a.Timeout != nil {
		return a.Timeout.D()
	}
	return DefaultAudienceTimeout
}

// Stall returns the effective stall timeout.
func (a *Audience) Stall() time.Duration {
	if a.StallTimeout != nil {
		return a.StallTimeout.D()
	}
	return DefaultStallTimeout
}

// Growth returns the effective growth guard (0: off).
func (a *Audience) Growth() float64 {
	if a.MaxGrowth != nil {
		return *a.MaxGrowth
	}
	return DefaultMaxGrowth
}

// BadRowRatio returns the effective bad-row ratio guard.
func (a *Audience) BadRowRatio() float64 {
	if a.MaxBadRowRatio != nil {
		return *a.MaxBadRowRatio
	}
	return DefaultMaxBadRowRatio
}

// envName is a portable environment variable name.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (a *Audience) normalize(v *Validation) {
	for _, fe := range a.decodeErrs {
		v.Add(fe.Field, "%s", fe.Message)
	}
	a.Type = strings.TrimSpace(a.Type)
	sourceFields := map[string]bool{
		"recipients": len(a.Recipients) > 0, "script": a.Script != "", "args": len(a.Args) > 0, "env": len(a.Env) > 0,
		"query": strings.TrimSpace(a.Query) != "", "file": a.File != "", "timeout": a.Timeout != nil, "stall_timeout": a.StallTimeout != nil,
	}
	allowed := map[string][]string{
		AudienceStatic: {"recipients"},
		AudienceScript: {"script", "args", "env", "timeout", "stall_timeout"},
		AudienceSQL:    {"query", "timeout"},
		AudienceCSV:    {"file"},
	}
	switch a.Type {
	case "":
		v.Add("audience.type", "is required; use static, script, sql or csv")
		return
	case AudienceStatic:
		if len(a.Recipients) == 0 {
			v.Add("audience.recipients", "is empty; a static audience lists at least one recipient")
		}
		validateRecipients(v, "audience.recipients", a.Recipients)
	case AudienceScript:
		if a.Script == "" {
			v.Add("audience.script", `is required: an executable in the scripts directory, e.g. "segments/churned.py"`)
		}
		for k := range a.Env {
			if !envName.MatchString(k) {
				v.Add("audience.env", "%q is not an environment variable name", k)
			}
		}
	case AudienceSQL:
		if strings.TrimSpace(a.Query) == "" {
			v.Add("audience.query", "is required: a SELECT returning a user_id column (and optionally token, platform, timezone, locale, …)")
		}
	case AudienceCSV:
		if a.File == "" {
			v.Add("audience.file", `is required: a CSV file in the data directory, e.g. "lists/vip.csv"`)
		}
	default:
		v.Add("audience.type", "is %q; use static, script, sql or csv", a.Type)
		return
	}
	for name, set := range sourceFields {
		if set && !slices.Contains(allowed[a.Type], name) {
			v.Add("audience."+name, "does not apply to a %s audience; remove it", a.Type)
		}
	}
	for _, d := range []struct {
		field string
		val   *Duration
	}{{"audience.timeout", a.Timeout}, {"audience.stall_timeout", a.StallTimeout}} {
		if d.val != nil && (d.val.D() <= 0 || d.val.D() > MaxAudienceTimeout) {
			v.Add(d.field, "is %s; use more than 0 and at most %s", *d.val, Duration(MaxAudienceTimeout))
		}
	}
	if a.MaxRecipients < 0 {
		v.Add("audience.max_recipients", "is %d; use 0 (no limit) or a positive number", a.MaxRecipients)
	}
	if a.MaxGrowth == nil {
		g := DefaultMaxGrowth
		a.MaxGrowth = &g
	} else if *a.MaxGrowth != 0 && *a.MaxGrowth < 1 {
		v.Add("audience.max_growth", "is %g; use a ratio of at least 1 (3 allows up to three times the last audience), or 0 to turn the guard off", *a.MaxGrowth)
	}
	switch a.OnEmpty {
	case "":
		a.OnEmpty = OnEmptyComplete
	case OnEmptyComplete, OnEmptyFail:
	default:
		v.Add("audience.on_empty", "is %q; use complete or fail", a.OnEmpty)
	}
	if a.MaxBadRowRatio == nil {
		r := DefaultMaxBadRowRatio
		a.MaxBadRowRatio = &r
	} else if *a.MaxBadRowRatio < 0 || *a.MaxBadRowRatio > 1 {
		v.Add("audience.max_bad_row_ratio", "is %g; use a share from 0 to 1 (0.01 allows 1%% malformed rows)", *a.MaxBadRowRatio)
	}
}

// Environment is what an engine offers automations; NormalizeIn checks a
// definition against it when it is saved, so that a bad path or a missing
// database is refused then, not at 3 a.m. at fire time.
type Environment struct {
	// Providers are the configured delivery providers.
	Providers []string
	// ScriptsDir is the directory of audience scripts ("" disables them).
	ScriptsDir string
	// ResolveScript checks a script path inside ScriptsDir.
	ResolveScript func(dir, rel string) (string, error)
	// DataDir is the directory of CSV audiences ("" disables them).
	DataDir string
	// AudienceDB says whether an audience database is configured.
	AudienceDB bool
	// ScriptEnv lists the environment names an automation may set.
	ScriptEnv []string
}

func (a *Audience) checkEnvironment(v *Validation, env Environment) {
	switch a.Type {
	case AudienceScript:
		if env.ScriptsDir == "" {
			v.Add("audience.type", "script audiences are disabled on this server: start it with --scripts-dir (PUSHBLASTER_SCRIPTS_DIR)")
			return
		}
		if a.Script != "" && env.ResolveScript != nil {
			if _, err := env.ResolveScript(env.ScriptsDir, a.Script); err != nil {
				pe := AsError(err)
				msg := pe.Message
				if len(pe.Fields) > 0 {
					msg = pe.Fields[0].Message
				}
				v.Add("audience.script", "%s", msg)
			}
		}
		for k := range a.Env {
			if !slices.Contains(env.ScriptEnv, k) {
				v.Add("audience.env", "%s is not an allowed variable; the server allows: %s (--script-env-allow)", k, listOrNone(env.ScriptEnv))
			}
		}
	case AudienceSQL:
		if !env.AudienceDB {
			v.Add("audience.type", "sql audiences need an audience database: start the server with --audience-database-url (PUSHBLASTER_AUDIENCE_DATABASE_URL)")
		}
	case AudienceCSV:
		if env.DataDir == "" {
			v.Add("audience.type", "csv audiences are disabled on this server: start it with --data-dir (PUSHBLASTER_DATA_DIR)")
			return
		}
		if a.File != "" {
			if _, err := ResolveDataFile(env.DataDir, a.File); err != nil {
				v.Add("audience.file", "%s", err.Error())
			}
		}
	}
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// ResolveDataFile returns the path of rel inside dir, refusing absolute
// paths, "..", and symbolic links that lead outside dir.
func ResolveDataFile(dir, rel string) (string, error) {
	if filepath.IsAbs(rel) {
		return "", fmt.Errorf("%q is absolute; give a path relative to the data directory", rel)
	}
	if slices.Contains(strings.Split(filepath.ToSlash(rel), "/"), "..") {
		return "", fmt.Errorf("%q contains \"..\"; give a path inside the data directory", rel)
	}
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("the data directory %s cannot be read: %v", dir, err)
	}
	target, err := filepath.EvalSymlinks(filepath.Join(root, rel))
	if err != nil {
		return "", fmt.Errorf("%q does not exist in the data directory", rel)
	}
	if r, err := filepath.Rel(root, target); err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", fmt.Errorf("%q leads outside the data directory (a symbolic link?)", rel)
	}
	return target, nil
}

// Recipient is one user and, optionally, one device token.
type Recipient struct {
	UserID   string `json:"user_id"`
	Token    string `json:"token,omitempty"`
	Platform string `json:"platform,omitempty"`
	Timezone string `json:"timezone,omitempty"`
	Locale   string `json:"locale,omitempty"`
	// Data is per-recipient template data (every other column of the
	// audience source).
	Data map[string]string `json:"data,omitempty"`
}

// Device is one push target of a user, as a token source knows it.
type Device struct {
	Token    string `json:"token"`
	Platform string `json:"platform,omitempty"`
}

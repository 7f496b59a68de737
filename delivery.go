package pushblaster

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

func (d *Delivery) normalize(v *Validation) {
	if d.Provider == "" {
		v.Add("delivery.provider", "is required; use log for a dry run")
	}
	if d.RatePerSecond < 0 {
		v.Add("delivery.rate_per_second", "is %d; it must be 0 (no limit) or more", d.RatePerSecond)
	}
	if r := d.MaxErrorRatio; r != nil && (*r <= 0 || *r > 1) {
		v.Add("delivery.max_error_ratio", "is %g; it must be above 0 and at most 1 (1 never trips)", *r)
	} else if r == nil {
		def := DefaultMaxErrorRatio
		d.MaxErrorRatio = &def
	}
	switch d.OnUnknown {
	case "":
		d.OnUnknown = OnUnknownReport
	case OnUnknownReport, OnUnknownResend:
	default:
		v.Add("delivery.on_unknown", "is %q; use %s (default) or %s", d.OnUnknown, OnUnknownReport, OnUnknownResend)
	}
}

// FrequencyCap limits how many pushes a user gets: at most Max live pushes
// per Per, counted over the automations of Scope.
type FrequencyCap struct {
	Max int `json:"max"`
	// Per is a duration such as "24h", "90m" or "7d".
	Per string `json:"per"`
	// Scope is global (every automation, the default), automation (this
	// one only) or tag:NAME (automations tagged NAME).
	Scope string `json:"scope,omitempty"`

	per time.Duration
}

// Cap scopes.
const (
	ScopeGlobal     = "global"
	ScopeAutomation = "automation"
	ScopeTagPrefix  = "tag:"
)

// Period returns the parsed Per (valid after Normalize).
func (c *FrequencyCap) Period() time.Duration {
	if c.per == 0 {
		c.per, _ = parsePeriod(c.Per)
	}
	return c.per
}

// Tag returns the tag of a tag:NAME scope, or "".
func (c *FrequencyCap) Tag() string {
	if t, ok := strings.CutPrefix(c.Scope, ScopeTagPrefix); ok {
		return t
	}
	return ""
}

// String describes the cap for a ledger reason: "max 1 per 24h (global)".
func (c *FrequencyCap) String() string {
	return fmt.Sprintf("frequency cap: max %d per %s (%s)", c.Max, c.Per, c.Scope)
}

// parsePeriod reads a Go duration or a number of days ("7d").
func parsePeriod(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%q is not a period; write e.g. \"24h\", \"90m\" or \"7d\"", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a period; write e.g. \"24h\", \"90m\" or \"7d\"", s)
	}
	return d, nil
}

// tagPattern is what a tag may look like.
var tagPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// Cadence is an external frequency-capping service asked before a live
// send which recipients may get the push (see docs/configuration.md).
type Cadence struct {
	URL string `json:"url"`
	// Timeout is per request, e.g. "2s" (default 5s).
	Timeout string `json:"timeout,omitempty"`
	// OnError says what to do when the service fails or is slow: fail the
	// execution (default), send_all or skip_all.
	OnError string `json:"on_error,omitempty"`
}

// Cadence on_error policies.
const (
	CadenceFail    = "fail"
	CadenceSendAll = "send_all"
	CadenceSkipAll = "skip_all"
)

// DefaultCadenceTimeout is the per-request timeout of the cadence service.
const DefaultCadenceTimeout = 5 * time.Second

// TimeoutD returns the parsed timeout (valid after Normalize).
func (c *Cadence) TimeoutD() time.Duration {
	if d, err := time.ParseDuration(c.Timeout); err == nil && d > 0 {
		return d
	}
	return DefaultCadenceTimeout
}

func (a *Automation) normalizeCaps(v *Validation) {
	for i, t := range a.Tags {
		if !tagPattern.MatchString(t) {
			v.Add(fmt.Sprintf("tags[%d]", i), "is %q; a tag is lower-case letters, digits, '_', '.' or '-' (at most 64)", t)
		}
	}
	for i := range a.FrequencyCaps {
		c := &a.FrequencyCaps[i]
		f := fmt.Sprintf("frequency_caps[%d]", i)
		if c.Max < 1 {
			v.Add(f+".max", "is %d; it must be at least 1 (to send nothing, pause the automation)", c.Max)
		}
		if c.Per == "" {
			v.Add(f+".per", `is required: a period such as "24h" or "7d"`)
		} else if d, err := parsePeriod(c.Per); err != nil {
			v.Add(f+".per", "%s", err.Error())
		} else if d < time.Minute || d > 366*24*time.Hour {
			v.Add(f+".per", "is %s; it must be between 1m and 366d", c.Per)
		} else {
			c.per = d
		}
		switch {
		case c.Scope == "":
			c.Scope = ScopeGlobal
		case c.Scope == ScopeGlobal, c.Scope == ScopeAutomation:
		case strings.HasPrefix(c.Scope, ScopeTagPrefix) && tagPattern.MatchString(c.Tag()):
		default:
			v.Add(f+".scope", "is %q; use global, automation or tag:NAME", c.Scope)
		}
	}
	if c := a.Cadence; c != nil {
		if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			// Not quoted: a URL may carry a password.
			v.Add("cadence.url", "is not an absolute http or https URL (such as https://cadence.internal/allowed)")
		} else if _, ok := u.User.Password(); ok {
			// A definition is returned as saved by GET: no secret in it.
			v.Add("cadence.url", "carries a password, and a definition is returned as saved by GET; remove it from the URL and give the server the credentials: PUSHBLASTER_CADENCE_AUTHORIZATION=\"Basic <base64 of user:password>\" (or \"Bearer <token>\")")
		}
		if c.Timeout != "" {
			if d, err := time.ParseDuration(c.Timeout); err != nil || d <= 0 || d > time.Minute {
				v.Add("cadence.timeout", `is %q; write a duration between 1ms and 1m, e.g. "2s"`, c.Timeout)
			}
		}
		switch c.OnError {
		case "":
			c.OnError = CadenceFail
		case CadenceFail, CadenceSendAll, CadenceSkipAll:
		default:
			v.Add("cadence.on_error", "is %q; use fail (default), send_all or skip_all", c.OnError)
		}
	}
}

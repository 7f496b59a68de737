package cadence

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// What to do when the cadence service fails: the values of Config.OnError.
const (
	// OnErrorFail returns the failure instead of a decision (the default,
	// because sending past a team's caps is worse than sending late).
	OnErrorFail = "fail"
	// OnErrorSendAll lets everyone asked get the push.
	OnErrorSendAll = "send_all"
	// OnErrorSkipAll holds everyone asked back.
	OnErrorSkipAll = "skip_all"
)

// OnErrorValues lists the allowed values of Config.OnError.
var OnErrorValues = []string{OnErrorFail, OnErrorSendAll, OnErrorSkipAll}

// Defaults and bounds of Config.
const (
	DefaultTimeout   = 5 * time.Second
	MinTimeout       = time.Millisecond
	MaxTimeout       = time.Minute
	DefaultBatchSize = 1000
)

// Config configures a Client. Zero values mean the defaults.
type Config struct {
	// URL is the endpoint the checks are POSTed to.
	URL string
	// Timeout bounds each request, answer included (default 5s, at most
	// 1m).
	Timeout time.Duration
	// OnError is what a failed check does: fail (default), send_all or
	// skip_all.
	OnError string
	// BatchSize is the number of user ids per request (default 1000).
	BatchSize int
	// Authorization, if set, is the Authorization header of every request
	// (e.g. "Bearer …" or "Basic …"). It comes from the server's
	// environment, never from an automation's definition, and is never
	// logged.
	Authorization string
	// HTTPClient sends the requests (default: a client on
	// http.DefaultTransport). Its own Timeout, if any, applies too.
	HTTPClient *http.Client
	// Logger receives the fallback warnings (default slog.Default(), so
	// that they are never lost).
	Logger *slog.Logger
}

// Validate returns every invalid field of c, named under field (e.g.
// "cadence" gives "cadence.url"), or nil. It does not change c.
func (c *Config) Validate(field string) []pb.FieldError {
	name := func(s string) string {
		if field == "" {
			return s
		}
		return field + "." + s
	}
	var errs []pb.FieldError
	add := func(f, format string, args ...any) {
		errs = append(errs, pb.FieldError{Field: name(f), Message: fmt.Sprintf(format, args...)})
	}
	if c.URL == "" {
		add("url", "is required: the cadence service's endpoint, an absolute http or https URL such as https://cadence.example.com/check")
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The value is not repeated: a URL may carry credentials.
		add("url", "must be an absolute http or https URL, such as https://cadence.example.com/check")
	}
	// Above a minute a check only delays the send it guards; the same bounds
	// as an automation's cadence.timeout.
	if c.Timeout != 0 && (c.Timeout < MinTimeout || c.Timeout > MaxTimeout) {
		add("timeout", "is %s; it must be a duration per request between 1ms and 1m, such as 5s (0 means the default 5s)", c.Timeout)
	}
	switch c.OnError {
	case "", OnErrorFail, OnErrorSendAll, OnErrorSkipAll:
	default:
		add("on_error", "is %q; it must be one of %s (default %s)", c.OnError, strings.Join(OnErrorValues, ", "), OnErrorFail)
	}
	if c.BatchSize < 0 {
		add("batch_size", "is %d; it must be a positive number of user ids per request (0 means the default %d)", c.BatchSize, DefaultBatchSize)
	}
	return errs
}

// withDefaults returns c with every zero value replaced by its default.
func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.OnError == "" {
		c.OnError = OnErrorFail
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

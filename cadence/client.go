package cadence

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// parallel is how many batches of one check are asked at once: enough that
// a large audience does not wait for its batches one by one, few enough
// that a check does not flood a team's service.
const parallel = 4

// maxAnswer bounds the answer to one batch; a few reasons per id fit many
// times over, a runaway answer does not fill the memory.
const maxAnswer = 16 << 20

// Request is one check, as POSTed to the service (with UserIDs cut into
// batches).
type Request struct {
	AutomationID int64 `json:"automation_id"`
	// Automation is the automation's name.
	Automation  string    `json:"automation"`
	ExecutionID int64     `json:"execution_id"`
	SendAt      time.Time `json:"send_at"`
	Tags        []string  `json:"tags,omitempty"`
	UserIDs     []string  `json:"user_ids"`
}

// Decision is the answer to a check.
type Decision struct {
	// Allowed holds every user id asked about: true if it may get the push.
	Allowed map[string]bool
	// Reasons holds the service's reasons, by user id, for the ids asked.
	Reasons map[string]string
	// Fallback is "" when the service answered, or the on_error applied
	// (OnErrorSendAll or OnErrorSkipAll) when it failed.
	Fallback string
	// Err is the failure that triggered the fallback.
	Err *pb.Error
}

// Client asks a cadence service. It is safe for concurrent use.
type Client struct {
	cfg Config
	// where names the service in messages and logs without the
	// credentials its URL may carry.
	where string
}

// New checks cfg (fields are named cadence.url, cadence.timeout, …) and
// returns a Client, or a validation *pb.Error naming every bad field.
func New(cfg Config) (*Client, error) {
	if fields := cfg.Validate("cadence"); len(fields) > 0 {
		var v pb.Validation
		for _, f := range fields {
			v.Add(f.Field, "%s", f.Message)
		}
		return nil, v.Err()
	}
	u, _ := url.Parse(cfg.URL) // Validate parsed it
	return &Client{cfg: cfg.withDefaults(), where: u.Redacted()}, nil
}

// Allowed asks the service which of req.UserIDs may get the push, in
// batches of Config.BatchSize ids.
//
// When the service fails (see the package documentation), OnError decides:
// fail returns a *pb.Error of kind external; send_all and skip_all return a
// Decision with Fallback and Err set, and log a warning. When ctx ends
// first, Allowed returns a *pb.Error of kind abort (or timeout, for a
// deadline of ctx) and applies no fallback: the caller stopped the check,
// the service did not fail.
func (c *Client) Allowed(ctx context.Context, req Request) (Decision, error) {
	ids := unique(req.UserIDs)
	d := Decision{Allowed: make(map[string]bool, len(ids)), Reasons: map[string]string{}}
	if len(ids) == 0 {
		return d, nil
	}
	answers, err := c.askAll(ctx, req, ids)
	if err != nil {
		if ctx.Err() != nil {
			// Whatever the requests saw, the caller ended the check.
			return Decision{}, stopped(ctx)
		}
		return c.fallback(ctx, req, ids, err)
	}
	for _, id := range ids {
		d.Allowed[id] = false
	}
	for _, a := range answers {
		for _, id := range a.Allowed {
			// Ids not asked about are ignored: the service may be sloppy,
			// but it must not add recipients.
			if _, asked := d.Allowed[id]; asked {
				d.Allowed[id] = true
			}
		}
		for id, why := range a.Reasons {
			if _, asked := d.Allowed[id]; asked {
				d.Reasons[id] = why
			}
		}
	}
	return d, nil
}

// fallback applies OnError to a failed check.
func (c *Client) fallback(ctx context.Context, req Request, ids []string, err *pb.Error) (Decision, error) {
	if c.cfg.OnError == OnErrorFail {
		return Decision{}, err
	}
	allow := c.cfg.OnError == OnErrorSendAll
	d := Decision{Allowed: make(map[string]bool, len(ids)), Reasons: map[string]string{}, Fallback: c.cfg.OnError, Err: err}
	for _, id := range ids {
		d.Allowed[id] = allow
	}
	c.cfg.Logger.WarnContext(ctx, "cadence service failed; applying cadence.on_error",
		"event", "cadence.fallback", "on_error", c.cfg.OnError, "url", c.where,
		"automation_id", req.AutomationID, "execution_id", req.ExecutionID,
		"user_ids", len(ids), "recoverable", err.Recoverable, "error", err.Error())
	return d, nil
}

// answer is the service's answer to one batch.
type answer struct {
	// A pointer, so that a missing "allowed" is told apart from an empty
	// one.
	Allowed *[]string         `json:"allowed"`
	Reasons map[string]string `json:"reasons"`
}

// batchAnswer is the useful part of an answer.
type batchAnswer struct {
	Allowed []string
	Reasons map[string]string
}

// askAll asks every batch, parallel at a time, and stops at the first
// failure, which it returns. The answers are in batch order.
func (c *Client) askAll(ctx context.Context, req Request, ids []string) ([]batchAnswer, *pb.Error) {
	var batches [][]string
	for start := 0; start < len(ids); start += c.cfg.BatchSize {
		batches = append(batches, ids[start:min(start+c.cfg.BatchSize, len(ids))])
	}
	// Cancelled at the first failure: the check has failed, the other
	// batches need not be asked.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	answers := make([]batchAnswer, len(batches))
	var (
		next     atomic.Int64
		answered atomic.Int64
		mu       sync.Mutex
		firstErr *pb.Error
		wg       sync.WaitGroup
	)
	for range min(parallel, len(batches)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(batches) {
					return
				}
				a, err := c.ask(ctx, req, batches[i])
				if err != nil {
					mu.Lock()
					// Later failures are mostly the cancellation of the
					// first one; the first is the cause.
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				answers[i] = a
				answered.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr == nil && int(answered.Load()) < len(batches) {
		// The caller ended the check between batches: some were never
		// asked, so the answers are not whole.
		firstErr = pb.Errorf(pb.KindAbort, "cadence check stopped: %v", context.Cause(ctx))
	}
	return answers, firstErr
}

// ask sends one batch.
func (c *Client) ask(ctx context.Context, req Request, ids []string) (batchAnswer, *pb.Error) {
	req.UserIDs = ids
	body, err := json.Marshal(req)
	if err != nil {
		return batchAnswer{}, pb.Errorf(pb.KindInternal, "encode the cadence request: %v", err)
	}
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(rctx, http.MethodPost, c.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return batchAnswer{}, pb.Errorf(pb.KindInternal, "build the cadence request: %v", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "application/json")
	hreq.Header.Set("User-Agent", "pushblaster-cadence")
	if c.cfg.Authorization != "" {
		hreq.Header.Set("Authorization", c.cfg.Authorization)
	}
	resp, err := c.cfg.HTTPClient.Do(hreq)
	if err != nil {
		return batchAnswer{}, c.transportError(ctx, rctx, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return batchAnswer{}, c.transportError(ctx, rctx, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fix := "fix the service"
		if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
			// A refusal of the request itself is as often a wrong URL
			// (404) or a contract mismatch as a broken service.
			fix = "fix the service or cadence.url"
		}
		e := c.failure("status", fix, "answered HTTP %d: %s", resp.StatusCode, snippet(data)).
			With("status", strconv.Itoa(resp.StatusCode))
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			// Kept raw: whoever retries reads it with pb.RetryAfter and
			// its own clock.
			e.With("retry_after", ra)
		}
		// A client error does not heal by itself; overload and outages may.
		return batchAnswer{}, e.WithRecoverable(resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests)
	}
	if len(data) > maxAnswer {
		return batchAnswer{}, c.failure("malformed", "fix the service", "answered more than %d MiB for %d user ids", maxAnswer>>20, len(ids)).WithRecoverable(false)
	}
	var a answer
	if err := json.Unmarshal(data, &a); err != nil {
		return batchAnswer{}, c.failure("malformed", "fix the service", `answered HTTP %d with a body that is not {"allowed": [...]} (%v): %s`, resp.StatusCode, err, snippet(data)).WithRecoverable(false)
	}
	if a.Allowed == nil {
		return batchAnswer{}, c.failure("malformed", "fix the service", `answered HTTP %d without an "allowed" array: %s`, resp.StatusCode, snippet(data)).WithRecoverable(false)
	}
	return batchAnswer{Allowed: *a.Allowed, Reasons: a.Reasons}, nil
}

// transportError classifies a request that got no (whole) answer. ctx is
// the check's, rctx the request's.
func (c *Client) transportError(ctx, rctx context.Context, err error) *pb.Error {
	if ctx.Err() != nil {
		// The caller or another batch's failure stopped it; Allowed and
		// askAll report the real cause.
		return pb.Errorf(pb.KindAbort, "cadence request to %s stopped: %v", c.where, context.Cause(ctx))
	}
	if errors.Is(rctx.Err(), context.DeadlineExceeded) {
		return c.failure("timeout", "fix the service (or raise cadence.timeout if it is only slow)", "did not answer within cadence.timeout (%s)", c.cfg.Timeout).WithRecoverable(true)
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		// The HTTPClient's own timeout, or a network one.
		return c.failure("timeout", "fix the service", "timed out: %v", unwrapURLError(err)).WithRecoverable(true)
	}
	return c.failure("connection", "check that the service runs and is reachable", "cannot be reached: %v", unwrapURLError(err)).WithRecoverable(true)
}

// failure returns an external error naming the service, what went wrong and
// what to do about it (fix, then on_error as the way to live with it); cause
// goes into the context for tests and dashboards.
func (c *Client) failure(cause, fix, format string, args ...any) *pb.Error {
	what := fmt.Sprintf(format, args...)
	return pb.Errorf(pb.KindExternal, "cadence service %s %s; %s, or set cadence.on_error to %s (send to everyone) or %s (hold everyone back) while it fails",
		c.where, what, fix, OnErrorSendAll, OnErrorSkipAll).
		With("url", c.where).With("cause", cause)
}

// unwrapURLError drops the *url.Error wrapper, whose text repeats the method
// and URL the message already names (with credentials, possibly).
func unwrapURLError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// stopped is the error of a check whose caller ended it.
func stopped(ctx context.Context) *pb.Error {
	kind := pb.KindAbort
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		kind = pb.KindTimeout
	}
	return pb.WrapError(kind, context.Cause(ctx), "cadence check stopped before the service answered")
}

// unique returns ids without repeats, in their first order: the service
// counts and the Decision holds each id once.
func unique(ids []string) []string {
	seen := make(map[string]struct{}, len(ids))
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if _, dup := seen[id]; !dup {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out
}

// snippet shortens an answer body for a message.
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "(empty body)"
	}
	const limit = 200
	if len(s) > limit {
		s = strings.ToValidUTF8(s[:limit], "") + "…"
	}
	return strconv.Quote(s)
}

package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/cadence"
	"github.com/pushblaster/pushblaster/store"
)

// Send tunables (see Config).
const (
	defaultBatchSize = 5000 // recipients per live-send batch job
	defaultChunkSize = 250  // pushes per ledger round
)

// sendRun is one send of one execution to one audience: the test list, a
// test-mode live send, or one batch of a live send. It runs chunks through
// the pipeline: known-invalid tokens, rate limits, cadence service,
// frequency caps and claim, render, provider, ledger, circuit breaker.
type sendRun struct {
	e      *Engine
	ex     *pb.Execution
	a      *pb.Automation
	aud    store.Audience
	sender pb.Sender
	tmpl   *pb.MessageTemplate
	log    *slog.Logger
	// seq is the batch of a live send (its progress is shared with the
	// other batches for the circuit breaker); -1 for a send run inline.
	seq     int
	cadence *cadence.Client
	key     string // pb.Push.Key of this send

	// Counters of this run (inline runs feed the breaker from them).
	attempted, failed int64
	fallbackOnce      sync.Once
}

// newSendRun prepares a send of ex to aud.
func (e *Engine) newSendRun(ex *pb.Execution, a *pb.Automation, aud store.Audience, seq int, log *slog.Logger) (*sendRun, error) {
	sender, ok := e.senders[a.Delivery.Provider]
	if !ok {
		return nil, pb.Errorf(pb.KindValidation, "delivery provider %q is not configured on instance %s; configure it (see docs/configuration.md) or change delivery.provider",
			a.Delivery.Provider, e.cfg.InstanceID).WithRecoverable(false)
	}
	tmpl, err := a.Message.Compile()
	if err != nil {
		return nil, err
	}
	r := &sendRun{e: e, ex: ex, a: a, aud: aud, sender: sender, tmpl: tmpl, log: log, seq: seq, key: fmt.Sprintf("%d/%s", ex.ID, aud)}
	if aud == store.AudienceLive && a.Cadence != nil && a.Mode != pb.ModeTest {
		c, err := cadence.New(cadence.Config{URL: a.Cadence.URL, Timeout: a.Cadence.TimeoutD(), OnError: a.Cadence.OnError,
			// The client adds automation_id and execution_id itself.
			Authorization: e.cfg.CadenceAuthorization,
			HTTPClient:    e.cfg.CadenceHTTPClient, Logger: e.log.With("phase", pb.PhaseLiveSend)})
		if err != nil {
			return nil, err
		}
		r.cadence = c
	}
	return r, nil
}

// sendList delivers to a list given in the definition (the test audience,
// or the live send of a test-mode automation), inline in the phase job.
func (e *Engine) sendList(ctx context.Context, ex *pb.Execution, a *pb.Automation, aud store.Audience, rs []pb.Recipient, log *slog.Logger) outcome {
	run, err := e.newSendRun(ex, a, aud, -1, log)
	if err != nil {
		return outcome{err: err}
	}
	// Each device once, also for a definition stored before duplicates
	// were refused.
	rs = uniqueDevices(rs)
	chunk := e.cfg.SendChunkSize
	for start := 0; start < len(rs); start += chunk {
		if err := run.chunk(ctx, rs[start:min(start+chunk, len(rs))]); err != nil {
			return e.sendOutcome(ctx, ex, aud, err)
		}
	}
	return e.sendOutcome(ctx, ex, aud, nil)
}

// uniqueDevices drops repeated (user_id, token) pairs, keeping the first.
func uniqueDevices(rs []pb.Recipient) []pb.Recipient {
	seen := make(map[[2]string]bool, len(rs))
	out := make([]pb.Recipient, 0, len(rs))
	for _, r := range rs {
		if k := [2]string{r.UserID, r.Token}; !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	return out
}

// sendRange delivers the live push to the stored recipients with ids in
// [first, last] (one batch).
func (r *sendRun) sendRange(ctx context.Context, first, last int64) error {
	after := first - 1
	for {
		page, err := r.e.store.RecipientsBetween(ctx, r.ex.ID, after, last, r.e.cfg.SendChunkSize)
		if err != nil {
			return err
		}
		if len(page) == 0 {
			return nil
		}
		after = page[len(page)-1].ID
		rs := make([]pb.Recipient, 0, len(page))
		for _, p := range page {
			if p.Token != "" { // tokenless users are counted as no_token, never sent
				rs = append(rs, p.Recipient)
			}
		}
		if err := r.chunk(ctx, rs); err != nil {
			return err
		}
	}
}

// sendOutcome reads the metrics of a send from the ledger, the truth
// whatever attempts came before.
func (e *Engine) sendOutcome(ctx context.Context, ex *pb.Execution, aud store.Audience, sendErr error) outcome {
	counts, err := e.store.DeliveryCounts(context.WithoutCancel(ctx), ex.ID, aud)
	if err != nil {
		if sendErr == nil {
			sendErr = err
		}
		return outcome{err: sendErr}
	}
	return outcome{metrics: ledgerMetrics(aud, counts), note: ledgerNote(counts), err: sendErr}
}

// ledgerNote sums up a ledger for a phase record.
func ledgerNote(counts map[pb.DeliveryState]int64) string {
	note := fmt.Sprintf("sent %d, failed %d", counts[store.DeliverySent], counts[store.DeliveryFailed])
	if n := counts[store.DeliveryInvalidToken]; n > 0 {
		note += fmt.Sprintf(", invalid token %d", n)
	}
	if n := counts[store.DeliveryCapped]; n > 0 {
		note += fmt.Sprintf(", capped %d", n)
	}
	if n := counts[store.DeliveryUnknown]; n > 0 {
		note += fmt.Sprintf(", unknown %d (in flight when an instance stopped; not re-sent)", n)
	}
	return note
}

// ledgerMetrics names the ledger's counts as execution metrics.
func ledgerMetrics(aud store.Audience, counts map[pb.DeliveryState]int64) map[string]int64 {
	if aud == store.AudienceTest {
		return map[string]int64{pb.MetricTestSent: counts[store.DeliverySent],
			pb.MetricTestFailed: counts[store.DeliveryFailed] + counts[store.DeliveryInvalidToken] + counts[store.DeliveryUnknown]}
	}
	return map[string]int64{pb.MetricSent: counts[store.DeliverySent], pb.MetricFailed: counts[store.DeliveryFailed],
		pb.MetricUnknown: counts[store.DeliveryUnknown], pb.MetricInvalidToken: counts[store.DeliveryInvalidToken],
		pb.MetricCapped: counts[store.DeliveryCapped]}
}

// errBreaker marks the circuit breaker's error.
var errBreaker = errors.New("circuit breaker")

// chunk sends rs (at most one chunk) in rounds. Each round first takes a
// slot of its provider (claim only when there is room to send at once: a
// claimed push waiting in a queue would be unknown after a crash), then
// waits for the rate limits: a round that took its share of a second sends
// in that second, never after a wait for a slot.
func (r *sendRun) chunk(ctx context.Context, rs []pb.Recipient) error {
	slots := r.e.roundSlots(r.a.Delivery.Provider)
	for len(rs) > 0 {
		n, err := func() (int, error) {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return 0, pb.AsError(context.Cause(ctx))
			}
			defer func() { <-slots }() // also if the provider panics
			n, err := r.e.waitRate(ctx, r.a, len(rs))
			if err != nil {
				return 0, err
			}
			return n, r.round(ctx, rs[:n])
		}()
		if err != nil {
			return err
		}
		rs = rs[n:]
	}
	return nil
}

// round runs one ledger round for rs: hold back what must not be sent,
// claim the rest, send, record.
func (r *sendRun) round(ctx context.Context, rs []pb.Recipient) error {
	e, id := r.e, r.ex.ID
	if err := context.Cause(ctx); err != nil {
		return pb.AsError(err)
	}
	// A cancel (or a failure of another batch) made anywhere stops the
	// send before its next round.
	st, err := e.store.ExecutionStatus(ctx, id)
	if err != nil {
		return err
	}
	if st == pb.StatusCancelled {
		return pb.Errorf(pb.KindAbort, "execution cancelled")
	}
	if st.Final() {
		return pb.Errorf(pb.KindAbort, "execution %s elsewhere", st)
	}
	now := e.now()
	var held []store.DeliveryResult

	// Tokens a provider called invalid are never sent to again.
	tokens := make([]string, len(rs))
	for i := range rs {
		tokens[i] = rs[i].Token
	}
	known, err := e.store.KnownInvalid(ctx, tokens)
	if err != nil {
		return err
	}
	if len(known) > 0 {
		keep := rs[:0:0]
		for _, rc := range rs {
			if t, ok := known[rc.Token]; ok {
				held = append(held, store.DeliveryResult{UserID: rc.UserID, Token: rc.Token, State: store.DeliveryInvalidToken,
					Code: pb.CodeUnregistered, Reason: fmt.Sprintf("not sent: token recorded invalid at %s (%s)", t.CreatedAt.Format(time.RFC3339), t.Reason)})
				continue
			}
			keep = append(keep, rc)
		}
		rs = keep
	}

	// The cadence service decides before the caps (it knows nothing of
	// this send's claims).
	if r.cadence != nil && len(rs) > 0 {
		keep, hold, err := r.askCadence(ctx, rs)
		if err != nil {
			return err
		}
		rs, held = keep, append(held, hold...)
	}

	claimed, final, err := r.claim(ctx, rs, held, now) // holding its provider's slot (chunk)
	if err != nil {
		return err
	}
	if len(claimed) == 0 {
		return r.breaker(context.WithoutCancel(ctx), 0, 0, nil, final)
	}

	pushes := make([]pb.Push, 0, len(claimed))
	results := make([]store.DeliveryResult, len(claimed))
	idx := make([]int, 0, len(claimed)) // pushes[k] is claimed[idx[k]]
	for i := range claimed {
		rc := &claimed[i]
		results[i] = store.DeliveryResult{UserID: rc.UserID, Token: rc.Token}
		m, err := r.tmpl.Render(rc)
		if err != nil {
			pe := pb.AsError(err)
			results[i].State, results[i].Code, results[i].Reason, results[i].Attempts = store.DeliveryFailed, pb.CodeTemplate, pe.Message, 0
			continue
		}
		pushes = append(pushes, pb.Push{Recipient: *rc, Message: m, Key: r.key})
		idx = append(idx, i)
	}
	var sent []pb.SendResult
	if len(pushes) > 0 {
		sent = r.sender.Send(r.logCtx(ctx), pushes)
	}
	var (
		invalid           []store.InvalidToken
		attempted, failed int64
		okCount, notTried int
		unknown           int
		byCode            = map[string]int{}
	)
	for k, i := range idx {
		res := pb.SendResult{State: pb.DeliveryUnknown, Err: pb.Errorf(pb.KindInternal, "provider %s returned no result", r.a.Delivery.Provider)}
		if k < len(sent) {
			res = sent[k]
		}
		dr := &results[i]
		dr.State, dr.Attempts = res.State, res.Attempts
		if res.Err != nil {
			dr.Code, dr.Reason = res.Err.Context["code"], res.Err.Message
		}
		switch res.State {
		case "":
			dr.State = store.DeliveryPending
			dr.Reason = "not requested: the send stopped first"
			if res.Err != nil {
				dr.Reason = "not requested: " + res.Err.Message
			}
			notTried++
			continue
		case store.DeliverySent:
			okCount++
			final[store.DeliverySent]++
		case store.DeliveryFailed:
			final[store.DeliveryFailed]++
			failed++
			byCode[dr.Code]++
		case store.DeliveryInvalidToken:
			invalid = append(invalid, store.InvalidToken{Token: dr.Token, Provider: r.a.Delivery.Provider, UserID: dr.UserID,
				Code: dr.Code, Reason: dr.Reason, ExecutionID: id, CreatedAt: now})
			final[store.DeliveryInvalidToken]++
		case store.DeliveryUnknown:
			unknown++
			final[store.DeliveryUnknown]++
		default:
			dr.State, dr.Reason = store.DeliveryUnknown, fmt.Sprintf("provider returned state %q", res.State)
			unknown++
			final[store.DeliveryUnknown]++
		}
		attempted++
	}
	for i := range results {
		if results[i].Code == pb.CodeTemplate {
			final[store.DeliveryFailed]++
			failed++
			attempted++
			byCode[pb.CodeTemplate]++
		}
	}
	// The outcome must be recorded even if the context was just cancelled:
	// these pushes went out.
	wctx := context.WithoutCancel(ctx)
	if err := e.store.FinishDeliveries(wctx, id, r.aud, results, e.now()); err != nil {
		return err
	}
	r.observeRound(okCount, int(failed), len(invalid), unknown, byCode)
	if len(invalid) > 0 {
		if err := e.store.AddInvalidTokens(wctx, invalid); err != nil {
			return err
		}
	}
	r.log.Info("batch sent", "event", "send.batch", "audience", r.aud, "claimed", len(claimed), "sent", okCount,
		"failed", failed, "invalid_token", len(invalid), "not_requested", notTried, "failed_by_code", byCode)

	// The batch's counts first: the progress event reads them.
	berr := r.breaker(wctx, attempted, failed, byCode, final)
	if err := context.Cause(ctx); err != nil {
		return pb.AsError(err)
	}
	e.progress(ctx, r) // a progress event, at most one a second (events.go)
	return berr
}

// logCtx is ctx carrying the send's log attributes, for the provider's own
// lines (pb.WithLogAttrs).
func (r *sendRun) logCtx(ctx context.Context) context.Context {
	phase := pb.PhaseLiveSend
	if r.aud == store.AudienceTest {
		phase = pb.PhaseTestSend
	}
	attrs := []slog.Attr{slog.Int64("automation_id", r.a.ID), slog.Int64("execution_id", r.ex.ID), slog.String("phase", string(phase))}
	if r.seq >= 0 {
		attrs = append(attrs, slog.Int("batch", r.seq))
	}
	return pb.WithLogAttrs(ctx, attrs...)
}

// roundsInFlight is how many rounds of provider may be between claim and
// record at once (Config.SendRoundsInFlight).
func (e *Engine) roundsInFlight(provider string) int {
	if n := e.cfg.SendRoundsInFlight; n > 0 {
		return n
	}
	pushes := 1000
	if s, ok := e.senders[provider].(pb.InFlightSender); ok && s.MaxInFlight() > 0 {
		pushes = s.MaxInFlight()
	}
	chunk := e.cfg.SendChunkSize
	return (pushes+chunk-1)/chunk + 1
}

// sendWorkers is how many batch jobs of provider run at once on this
// instance (Config.SendWorkers).
func (e *Engine) sendWorkers(provider string) int {
	if n := e.cfg.SendWorkers; n > 0 {
		return n
	}
	return 2 * e.roundsInFlight(provider)
}

// queueName is what River accepts as a queue name, less "send_".
var queueName = regexp.MustCompile(`^[a-z0-9]+(?:[_-]?[a-z0-9]+)*$`)

// roundSlots is the provider's gate of rounds in flight.
func (e *Engine) roundSlots(provider string) chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.rounds[provider]
	if !ok {
		c = make(chan struct{}, e.roundsInFlight(provider))
		e.rounds[provider] = c
	}
	return c
}

// claim holds back capped recipients and claims the rest, in one
// transaction when frequency caps apply (so two sends to the same user
// never both pass a cap).
//
// It also returns the ledger rows it made final, by state (for the batch's
// progress): the holds and the rows of dead attempts it marked unknown.
func (r *sendRun) claim(ctx context.Context, rs []pb.Recipient, held []store.DeliveryResult, now time.Time) ([]pb.Recipient, map[pb.DeliveryState]int64, error) {
	e, id := r.e, r.ex.ID
	params := store.ClaimParams{Instance: e.cfg.InstanceID, Now: now, ResendUnknown: r.a.Delivery.OnUnknown == pb.OnUnknownResend}
	capped := r.aud == store.AudienceLive && len(r.a.FrequencyCaps) > 0 && r.a.Mode != pb.ModeTest
	var (
		claimed         []pb.Recipient
		unknown, resent int64
		wroteHold       []store.DeliveryResult // the holds this round wrote
		written         int64
	)
	work := func(q interface {
		LockUsers(context.Context, []string) error
		RecentPushes(context.Context, []string, time.Time, store.CapScope, int64) (map[string]int, error)
		HoldDeliveries(context.Context, int64, store.Audience, []store.DeliveryResult, string, time.Time) (int64, error)
		ClaimDeliveries(context.Context, int64, store.Audience, []pb.Recipient, store.ClaimParams) ([]pb.Recipient, int64, int64, error)
	}) error {
		hold := held
		keep := rs
		if capped && len(rs) > 0 {
			users := make([]string, len(rs))
			for i := range rs {
				users[i] = rs[i].UserID
			}
			if err := q.LockUsers(ctx, users); err != nil {
				return err
			}
			keep = rs[:0:0]
			over := map[string]string{}
			for i := range r.a.FrequencyCaps {
				c := &r.a.FrequencyCaps[i]
				scope := store.CapScope{Tag: c.Tag()}
				if c.Scope == pb.ScopeAutomation {
					scope.AutomationID = r.a.ID
				}
				counts, err := q.RecentPushes(ctx, users, now.Add(-c.Period()), scope, id)
				if err != nil {
					return err
				}
				for u, n := range counts {
					if _, done := over[u]; !done && n >= c.Max {
						over[u] = fmt.Sprintf("%s: %d push(es) in the last %s", c, n, c.Per)
					}
				}
			}
			hold = append([]store.DeliveryResult(nil), held...)
			for _, rc := range rs {
				if why, ok := over[rc.UserID]; ok {
					hold = append(hold, store.DeliveryResult{UserID: rc.UserID, Token: rc.Token, State: store.DeliveryCapped, Code: capFrequency, Reason: why})
					continue
				}
				keep = append(keep, rc)
			}
		}
		if len(hold) > 0 {
			n, err := q.HoldDeliveries(ctx, id, r.aud, hold, e.cfg.InstanceID, now)
			if err != nil {
				return err
			}
			wroteHold, written = hold, n
		}
		var err error
		claimed, unknown, resent, err = q.ClaimDeliveries(ctx, id, r.aud, keep, params)
		return err
	}
	var err error
	if capped {
		err = e.store.InTx(ctx, func(tx *store.Tx) error { return work(tx) })
	} else {
		err = work(e.store)
	}
	if err != nil {
		return nil, nil, err
	}
	r.observeHeld(wroteHold, written)
	final := map[pb.DeliveryState]int64{}
	// A retried round that finds some holds written already counts none:
	// it cannot tell which it wrote (progress may fall short, see
	// store.LiveCounts; the phase's end counts the ledger).
	if written > 0 && written == int64(len(wroteHold)) {
		for i := range wroteHold {
			final[wroteHold[i].State]++
		}
	}
	final[store.DeliveryUnknown] += unknown
	if unknown > 0 {
		r.e.obs.Sent(r.a.Delivery.Provider, string(r.aud), pb.DeliveryUnknown, int(unknown))
		r.log.Warn("deliveries in flight at a crash are unknown; not re-sent (on_unknown report)", "event", "send.unknown", "count", unknown)
	}
	if resent > 0 {
		r.log.Warn("deliveries in flight at a crash are sent again (on_unknown resend)", "event", "send.resend", "count", resent)
	}
	return claimed, final, nil
}

// askCadence splits rs into those the cadence service allows and the rest
// (held as capped). With on_error fail its failure is the send's error.
func (r *sendRun) askCadence(ctx context.Context, rs []pb.Recipient) (keep []pb.Recipient, hold []store.DeliveryResult, err error) {
	ids := make([]string, 0, len(rs))
	seen := map[string]bool{}
	for _, rc := range rs {
		if !seen[rc.UserID] {
			seen[rc.UserID] = true
			ids = append(ids, rc.UserID)
		}
	}
	d, err := r.cadence.Allowed(ctx, cadence.Request{AutomationID: r.a.ID, Automation: r.a.Name, ExecutionID: r.ex.ID,
		SendAt: r.ex.SendAt, Tags: r.a.Tags, UserIDs: ids})
	if err != nil {
		return nil, nil, pb.WrapError(pb.KindExternal, err, "cadence service (on_error fail)")
	}
	if d.Fallback != "" {
		r.fallbackOnce.Do(func() {
			msg := fmt.Sprintf("cadence service failed; on_error %s applied", d.Fallback)
			if d.Err != nil {
				msg += ": " + d.Err.Message
			}
			r.e.recordEvent(context.WithoutCancel(ctx), &pb.Event{AutomationID: r.a.ID, ExecutionID: r.ex.ID, Type: pb.EventError,
				Phase: pb.PhaseLiveSend, Message: msg, Data: map[string]string{"kind": string(pb.KindExternal), "on_error": d.Fallback}})
		})
	}
	for _, rc := range rs {
		if d.Allowed[rc.UserID] {
			keep = append(keep, rc)
			continue
		}
		why := "held back by the cadence service"
		if d.Fallback != "" {
			why = "cadence service failed; on_error skip_all"
		} else if s := d.Reasons[rc.UserID]; s != "" {
			why += ": " + s
		}
		hold = append(hold, store.DeliveryResult{UserID: rc.UserID, Token: rc.Token, State: store.DeliveryCapped, Code: capCadence, Reason: why})
	}
	return keep, hold, nil
}

// breaker adds a round's outcomes to the send's totals (over every batch
// of a live send), with the ledger rows the round made final (final, by
// state, for progress), and trips when the failure ratio passes the
// automation's max_error_ratio after BreakerMinAttempts.
func (r *sendRun) breaker(ctx context.Context, attempted, failed int64, byCode map[string]int, final map[pb.DeliveryState]int64) error {
	r.attempted += attempted
	r.failed += failed
	total, bad := r.attempted, r.failed
	if r.seq >= 0 {
		var err error
		total, bad, err = r.e.store.BatchProgress(ctx, r.ex.ID, r.seq, attempted, failed, final, r.e.cfg.InstanceID, r.e.now())
		if err != nil {
			return err
		}
	}
	ratio := r.a.Delivery.ErrorRatio()
	if attempted == 0 {
		return nil // a round with no request cannot move the ratio
	}
	if total < pb.BreakerMinAttempts || ratio >= 1 || float64(bad) <= ratio*float64(total) {
		return nil
	}
	codes := make([]string, 0, len(byCode))
	for c, n := range byCode {
		codes = append(codes, fmt.Sprintf("%s %d", c, n))
	}
	return pb.WrapError(pb.KindExternal, errBreaker,
		"circuit breaker: %d of %d requests failed (%.0f%%, max_error_ratio %.2f; this round: %s); the send stopped, the counts are kept; fix the provider or the message and run again",
		bad, total, 100*float64(bad)/float64(total), ratio, strings.Join(codes, ", ")).WithRecoverable(false).With("code", "circuit_breaker")
}

// logSender is the dry-run provider: it records every delivery in the log
// and reports it sent, without contacting anyone.
type logSender struct{ log *slog.Logger }

func (s *logSender) Send(ctx context.Context, ps []pb.Push) []pb.SendResult {
	out := make([]pb.SendResult, len(ps))
	for i, p := range ps {
		if ctx.Err() != nil {
			break // never requested: State ""
		}
		s.log.Info("push (dry run)", "event", "send.log", "user_id", p.Recipient.UserID, "token", redactToken(p.Recipient.Token), "title", p.Message.Title)
		out[i] = pb.SendResult{State: pb.DeliverySent, Attempts: 1}
	}
	return out
}

// redactToken keeps enough of a device token to recognise it in a log.
func redactToken(t string) string {
	if len(t) <= 8 {
		return t
	}
	return t[:4] + "…" + t[len(t)-4:]
}

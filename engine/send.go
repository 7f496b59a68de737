package engine

import (
	"context"
	"fmt"
	"log/slog"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// sendBatch is how many recipients go to the provider per ledger round.
const sendBatch = 500

// sendAudience delivers the live push to every stored recipient of ex.
func (e *Engine) sendAudience(ctx context.Context, ex *pb.Execution, a *pb.Automation, log *slog.Logger) outcome {
	var after int64
	for {
		page, err := e.store.Recipients(ctx, ex.ID, after, sendBatch)
		if err != nil {
			return e.sendOutcome(ctx, ex, store.AudienceLive, err)
		}
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1].ID
		rs := make([]pb.Recipient, 0, len(page))
		for _, r := range page {
			if r.Token != "" { // tokenless users are counted as no_token, never sent
				rs = append(rs, r.Recipient)
			}
		}
		if err := e.sendBatch(ctx, ex, a, store.AudienceLive, rs, log); err != nil {
			return e.sendOutcome(ctx, ex, store.AudienceLive, err)
		}
	}
	return e.sendOutcome(ctx, ex, store.AudienceLive, nil)
}

// sendList delivers to a list given in the definition (the test audience).
func (e *Engine) sendList(ctx context.Context, ex *pb.Execution, a *pb.Automation, aud store.Audience, rs []pb.Recipient, log *slog.Logger) outcome {
	for start := 0; start < len(rs); start += sendBatch {
		if err := e.sendBatch(ctx, ex, a, aud, rs[start:min(start+sendBatch, len(rs))], log); err != nil {
			return e.sendOutcome(ctx, ex, aud, err)
		}
	}
	return e.sendOutcome(ctx, ex, aud, nil)
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
	m := ledgerMetrics(aud, counts)
	note := fmt.Sprintf("sent %d, failed %d", counts[store.DeliverySent], counts[store.DeliveryFailed])
	if n := counts[store.DeliveryUnknown]; n > 0 {
		note += fmt.Sprintf(", unknown %d (in flight when an instance stopped; not re-sent)", n)
	}
	return outcome{metrics: m, note: note, err: sendErr}
}

// ledgerMetrics names the ledger's counts as execution metrics.
func ledgerMetrics(aud store.Audience, counts map[string]int64) map[string]int64 {
	if aud == store.AudienceTest {
		return map[string]int64{pb.MetricTestSent: counts[store.DeliverySent], pb.MetricTestFailed: counts[store.DeliveryFailed]}
	}
	return map[string]int64{pb.MetricSent: counts[store.DeliverySent], pb.MetricFailed: counts[store.DeliveryFailed],
		pb.MetricUnknown: counts[store.DeliveryUnknown]}
}

// sendBatch claims rs in the ledger, sends the claimed ones and records
// each outcome. Before each batch it checks that ex was not cancelled, so a
// cancel stops a send within one batch even if it was made elsewhere.
func (e *Engine) sendBatch(ctx context.Context, ex *pb.Execution, a *pb.Automation, aud store.Audience, rs []pb.Recipient, log *slog.Logger) error {
	if err := context.Cause(ctx); err != nil {
		return pb.AsError(err)
	}
	st, err := e.store.ExecutionStatus(ctx, ex.ID)
	if err != nil {
		return err
	}
	if st == pb.StatusCancelled {
		return pb.Errorf(pb.KindAbort, "execution cancelled")
	}
	sender, ok := e.senders[a.Delivery.Provider]
	if !ok {
		return pb.Errorf(pb.KindValidation, "delivery provider %q is not configured on instance %s", a.Delivery.Provider, e.cfg.InstanceID)
	}
	claimed, unknown, err := e.store.ClaimDeliveries(ctx, ex.ID, aud, rs, e.cfg.InstanceID, e.now())
	if err != nil {
		return err
	}
	if unknown > 0 {
		log.Warn("deliveries in flight at a crash are unknown; not re-sent", "event", "send.unknown", "count", unknown)
	}
	if len(claimed) == 0 {
		return nil
	}
	results, sendErr := sender.Send(ctx, &a.Message, claimed)
	stopped := sendErr != nil && ctx.Err() != nil
	out := make([]store.DeliveryResult, len(claimed))
	sent := 0
	for i, r := range claimed {
		out[i] = store.DeliveryResult{UserID: r.UserID, Token: r.Token, State: store.DeliveryFailed}
		switch {
		case stopped:
			// The request may have reached the provider before the stop.
			out[i].State = store.DeliveryUnknown
			out[i].Reason = "in flight when the send was stopped (" + context.Cause(ctx).Error() + ")"
		case sendErr != nil:
			out[i].Reason = sendErr.Error()
		case i < len(results) && results[i].Sent:
			out[i].State = store.DeliverySent
			sent++
		case i < len(results):
			out[i].Reason = results[i].Reason
		default:
			out[i].Reason = "provider returned no result"
		}
	}
	// The outcome must be recorded even if the context was just cancelled:
	// these pushes went out.
	if err := e.store.FinishDeliveries(context.WithoutCancel(ctx), ex.ID, aud, out, e.now()); err != nil {
		return err
	}
	log.Info("batch sent", "event", "send.batch", "audience", aud, "claimed", len(claimed), "sent", sent, "failed", len(claimed)-sent)
	switch {
	case stopped:
		return pb.AsError(context.Cause(ctx))
	case sendErr != nil:
		return pb.WrapError(pb.KindExternal, sendErr, "provider %s", a.Delivery.Provider)
	}
	return nil
}

// logSender is the dry-run provider: it records every delivery in the log
// and reports it sent, without contacting anyone.
type logSender struct{ log *slog.Logger }

func (s *logSender) Send(ctx context.Context, m *pb.Message, rs []pb.Recipient) ([]pb.SendResult, error) {
	out := make([]pb.SendResult, len(rs))
	for i, r := range rs {
		s.log.Info("push (dry run)", "event", "send.log", "user_id", r.UserID, "token", redactToken(r.Token), "title", m.Title)
		out[i] = pb.SendResult{Sent: true}
	}
	return out, nil
}

// redactToken keeps enough of a device token to recognise it in a log.
func redactToken(t string) string {
	if len(t) <= 8 {
		return t
	}
	return t[:4] + "…" + t[len(t)-4:]
}

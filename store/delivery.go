package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// Delivery states of the ledger (see pb.DeliveryState).
const (
	DeliveryPending      = pb.DeliveryPending
	DeliverySending      = pb.DeliverySending
	DeliverySent         = pb.DeliverySent
	DeliveryFailed       = pb.DeliveryFailed
	DeliveryInvalidToken = pb.DeliveryInvalidToken
	DeliveryCapped       = pb.DeliveryCapped
	DeliveryUnknown      = pb.DeliveryUnknown
)

// reasonCrashed is the reason of a row left in state sending by an attempt
// that died.
const reasonCrashed = "in flight when its sender stopped"

// ClaimParams says how ClaimDeliveries treats rows that exist already.
type ClaimParams struct {
	Instance string
	Now      time.Time
	// ResendUnknown claims rows left in state sending by a dead attempt
	// again (on_unknown resend) instead of marking them unknown.
	ResendUnknown bool
}

// ClaimDeliveries takes rs for sending: a recipient without a ledger row
// gets one in state sending; a pending row (never requested) becomes
// sending again. Only the returned recipients may be sent. A row already in
// state sending belongs to an attempt that died mid-request: it becomes
// unknown and is counted in unknown. With ResendUnknown, such a row and a
// row already unknown (in flight when a sender stopped) are claimed again
// and counted in resent.
func (o ops) ClaimDeliveries(ctx context.Context, id int64, aud Audience, rs []pb.Recipient, p ClaimParams) (claimed []pb.Recipient, unknown, resent int64, err error) {
	now := Canon(p.Now)
	for start := 0; start < len(rs); start += insertBatch {
		batch := rs[start:min(start+insertBatch, len(rs))]
		byKey := make(map[[2]string]pb.Recipient, len(batch))
		for _, r := range batch {
			byKey[[2]string{r.UserID, r.Token}] = r
		}
		q, args := o.claimInsert(id, aud, p, now, batch)
		rows, err := o.q.Query(ctx, q, args...)
		if err != nil {
			return nil, 0, 0, dbErr(err, "claim deliveries of execution %d", id)
		}
		for rows.Next() {
			var k [2]string
			if err := rows.Scan(&k[0], &k[1]); err != nil {
				rows.Close()
				return nil, 0, 0, dbErr(err, "claim deliveries of execution %d", id)
			}
			claimed = append(claimed, byKey[k])
			delete(byKey, k)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, 0, 0, dbErr(err, "claim deliveries of execution %d", id)
		}
		// What was not claimed has a final row already, or one in state
		// sending from an attempt that died.
		if len(byKey) == 0 {
			continue
		}
		keys := make([][2]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		if p.ResendUnknown {
			in, inArgs := keysIn(keys, 5)
			rows, err := o.q.Query(ctx, `
				UPDATE deliveries SET state = 'sending', attempts = attempts + 1, instance = $3, updated_at = $4,
				       reason = 'claimed again: the previous attempt died in flight (on_unknown resend)'
				WHERE execution_id = $1 AND audience = $2 AND state IN ('sending', 'unknown') AND `+in+` RETURNING user_id, token`,
				append([]any{id, string(aud), p.Instance, now}, inArgs...)...)
			if err != nil {
				return nil, 0, 0, dbErr(err, "claim deliveries of execution %d again", id)
			}
			for rows.Next() {
				var k [2]string
				if err := rows.Scan(&k[0], &k[1]); err != nil {
					rows.Close()
					return nil, 0, 0, dbErr(err, "claim deliveries of execution %d again", id)
				}
				claimed = append(claimed, byKey[k])
				resent++
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, 0, 0, dbErr(err, "claim deliveries of execution %d again", id)
			}
			continue
		}
		in, inArgs := keysIn(keys, 4)
		n, err := o.q.Exec(ctx, `
			UPDATE deliveries SET state = 'unknown', code = 'network', reason = '`+reasonCrashed+`', updated_at = $3
			WHERE execution_id = $1 AND audience = $2 AND state = 'sending' AND `+in,
			append([]any{id, string(aud), now}, inArgs...)...)
		if err != nil {
			return nil, 0, 0, dbErr(err, "mark unknown deliveries of execution %d", id)
		}
		unknown += n
	}
	return claimed, unknown, resent, nil
}

// claimInsert is the statement of ClaimDeliveries for one batch: an insert
// of rows in state sending that also claims pending rows again and returns
// what it claimed. PostgreSQL gets the keys as two array parameters (one
// plan whatever the batch size); SQLite a VALUES list.
func (o ops) claimInsert(id int64, aud Audience, p ClaimParams, now time.Time, batch []pb.Recipient) (string, []any) {
	var sb strings.Builder
	args := []any{id, string(aud), p.Instance, now}
	sb.WriteString(`INSERT INTO deliveries (execution_id, audience, user_id, token, state, attempts, instance, updated_at) `)
	if o.dialect == "postgres" {
		users, tokens := make([]string, len(batch)), make([]string, len(batch))
		for i, r := range batch {
			users[i], tokens[i] = r.UserID, r.Token
		}
		sb.WriteString(`SELECT $1, $2, k.user_id, k.token, 'sending', 1, $3, $4 FROM unnest($5::text[], $6::text[]) AS k(user_id, token)`)
		args = append(args, users, tokens)
	} else {
		sb.WriteString(`VALUES `)
		for i, r := range batch {
			if i > 0 {
				sb.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&sb, "($1, $2, $%d, $%d, 'sending', 1, $3, $4)", n+1, n+2)
			args = append(args, r.UserID, r.Token)
		}
	}
	// A pending row is claimed again; any other row stays as it is.
	sb.WriteString(` ON CONFLICT (execution_id, audience, user_id, token) DO UPDATE
		SET state = 'sending', attempts = deliveries.attempts + 1, instance = excluded.instance,
		    updated_at = excluded.updated_at, reason = '', code = ''
		WHERE deliveries.state = 'pending' RETURNING user_id, token`)
	return sb.String(), args
}

// MarkUnknown turns every delivery of an execution still in state sending
// into unknown (their sender stopped mid-request) and returns how many.
func (o ops) MarkUnknown(ctx context.Context, id int64, aud Audience, now time.Time) (int64, error) {
	n, err := o.q.Exec(ctx, `
		UPDATE deliveries SET state = 'unknown', code = 'network', reason = '`+reasonCrashed+`', updated_at = $3
		WHERE execution_id = $1 AND audience = $2 AND state = 'sending'`, id, string(aud), Canon(now))
	return n, dbErr(err, "mark unknown deliveries of execution %d", id)
}

// DeliveryResult is the outcome of one delivery.
type DeliveryResult struct {
	UserID, Token string
	// State is final, or pending for a push never requested.
	State  pb.DeliveryState
	Code   string
	Reason string
	// Attempts is how many provider requests this claim made; they are
	// counted into the row's attempts (the claim itself counted one).
	Attempts int
}

// FinishDeliveries records outcomes for rows in state sending, one
// statement per distinct outcome.
func (o ops) FinishDeliveries(ctx context.Context, id int64, aud Audience, results []DeliveryResult, now time.Time) error {
	now = Canon(now)
	type outcome struct {
		state        pb.DeliveryState
		code, reason string
		extra        int // attempts beyond the one the claim counted
	}
	if o.dialect == "postgres" {
		return o.finishDeliveriesPG(ctx, id, aud, results, now)
	}
	groups := map[outcome][][2]string{}
	var order []outcome
	for _, r := range results {
		// The claim counted one attempt; no request (a push never
		// requested, a template that did not render) takes it back.
		k := outcome{r.State, r.Code, r.Reason, r.Attempts - 1}
		if r.State == DeliveryPending {
			k.extra = -1
		}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], [2]string{r.UserID, r.Token})
	}
	for _, k := range order {
		keys := groups[k]
		for start := 0; start < len(keys); start += insertBatch {
			in, inArgs := keysIn(keys[start:min(start+insertBatch, len(keys))], 8)
			_, err := o.q.Exec(ctx, `
				UPDATE deliveries SET state = $3, code = $4, reason = $5, updated_at = $6, attempts = attempts + $7
				WHERE execution_id = $1 AND audience = $2 AND state = 'sending' AND `+in,
				append([]any{id, string(aud), string(k.state), k.code, k.reason, now, k.extra}, inArgs...)...)
			if err != nil {
				return dbErr(err, "record deliveries of execution %d", id)
			}
		}
	}
	return nil
}

// finishDeliveriesPG is FinishDeliveries in one statement per batch, the
// outcomes as array parameters joined on the ledger's key. (A list of
// (user_id, token) pairs in an IN (VALUES …) was planned as a nested loop
// over every row in state sending, about a second a round in a big send.)
func (o ops) finishDeliveriesPG(ctx context.Context, id int64, aud Audience, results []DeliveryResult, now time.Time) error {
	for start := 0; start < len(results); start += insertBatch {
		batch := results[start:min(start+insertBatch, len(results))]
		var (
			users, tokens, states, codes, reasons = make([]string, len(batch)), make([]string, len(batch)),
				make([]string, len(batch)), make([]string, len(batch)), make([]string, len(batch))
			extra = make([]int32, len(batch))
		)
		for i, r := range batch {
			users[i], tokens[i], states[i], codes[i], reasons[i] = r.UserID, r.Token, string(r.State), r.Code, r.Reason
			// The claim counted one attempt; no request (a push never
			// requested, a template that did not render) takes it back.
			extra[i] = int32(r.Attempts - 1)
			if r.State == DeliveryPending {
				extra[i] = -1
			}
		}
		// Planned per call: a plan cached for any array would assume ten
		// keys and walk every row in state sending for each of them.
		_, err := o.q.Exec(ctx, `
			UPDATE deliveries d SET state = k.state, code = k.code, reason = k.reason, updated_at = $3, attempts = d.attempts + k.extra
			FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int[]) AS k(user_id, token, state, code, reason, extra)
			WHERE d.execution_id = $1 AND d.audience = $2 AND d.state = 'sending' AND d.user_id = k.user_id AND d.token = k.token`,
			PlanPerCall, id, string(aud), now, users, tokens, states, codes, reasons, extra)
		if err != nil {
			return dbErr(err, "record deliveries of execution %d", id)
		}
	}
	return nil
}

// HoldDeliveries records recipients that are not sent at all (capped, or a
// known invalid token) with their final state, unless they have a row.
// It returns how many rows it wrote.
func (o ops) HoldDeliveries(ctx context.Context, id int64, aud Audience, results []DeliveryResult, instance string, now time.Time) (int64, error) {
	now = Canon(now)
	var total int64
	for start := 0; start < len(results); start += insertBatch {
		batch := results[start:min(start+insertBatch, len(results))]
		var (
			sb   strings.Builder
			args = []any{id, string(aud), instance, now}
		)
		sb.WriteString(`INSERT INTO deliveries (execution_id, audience, user_id, token, state, code, reason, attempts, instance, updated_at) VALUES `)
		for i, r := range batch {
			if i > 0 {
				sb.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&sb, "($1, $2, $%d, $%d, $%d, $%d, $%d, 0, $3, $4)", n+1, n+2, n+3, n+4, n+5)
			args = append(args, r.UserID, r.Token, string(r.State), r.Code, r.Reason)
		}
		sb.WriteString(` ON CONFLICT (execution_id, audience, user_id, token) DO NOTHING`)
		n, err := o.q.Exec(ctx, sb.String(), args...)
		if err != nil {
			return total, dbErr(err, "record held deliveries of execution %d", id)
		}
		total += n
	}
	return total, nil
}

// DeliveryCounts returns the number of ledger rows per state.
func (o ops) DeliveryCounts(ctx context.Context, id int64, aud Audience) (map[pb.DeliveryState]int64, error) {
	rows, err := o.q.Query(ctx, `
		SELECT state, count(*) FROM deliveries WHERE execution_id = $1 AND audience = $2 GROUP BY state`,
		id, string(aud))
	if err != nil {
		return nil, dbErr(err, "count deliveries of execution %d", id)
	}
	defer rows.Close()
	out := map[pb.DeliveryState]int64{}
	for rows.Next() {
		var (
			state string
			n     int64
		)
		if err := rows.Scan(&state, &n); err != nil {
			return nil, dbErr(err, "count deliveries of execution %d", id)
		}
		out[pb.DeliveryState(state)] = n
	}
	return out, dbErr(rows.Err(), "count deliveries of execution %d", id)
}

// DeliveryRow is one ledger row.
type DeliveryRow = pb.DeliveryRecord

// DeliveryFilter selects ledger rows.
type DeliveryFilter = pb.DeliveryFilter

// Deliveries returns an execution's ledger, ordered by audience, user and
// token.
func (o ops) Deliveries(ctx context.Context, id int64, f ...DeliveryFilter) ([]DeliveryRow, error) {
	var flt DeliveryFilter
	if len(f) > 0 {
		flt = f[0]
	}
	q := `SELECT audience, user_id, token, state, code, reason, attempts, instance, updated_at FROM deliveries WHERE execution_id = $1`
	args := []any{id}
	if flt.Audience != "" {
		args = append(args, flt.Audience)
		q += fmt.Sprintf(" AND audience = $%d", len(args))
	}
	if flt.State != "" {
		args = append(args, string(flt.State))
		q += fmt.Sprintf(" AND state = $%d", len(args))
	}
	if flt.AfterAudience != "" {
		args = append(args, flt.AfterAudience, flt.AfterUser, flt.AfterToken)
		n := len(args)
		q += fmt.Sprintf(" AND (audience > $%d OR (audience = $%d AND (user_id > $%d OR (user_id = $%d AND token > $%d))))", n-2, n-2, n-1, n-1, n)
	}
	q += " ORDER BY audience, user_id, token"
	if flt.Limit > 0 {
		args = append(args, flt.Limit)
		q += fmt.Sprintf(" LIMIT $%d", len(args))
	}
	rows, err := o.q.Query(ctx, q, args...)
	if err != nil {
		return nil, dbErr(err, "read deliveries of execution %d", id)
	}
	defer rows.Close()
	var out []DeliveryRow
	for rows.Next() {
		var (
			d          DeliveryRow
			aud, state string
			at         nullTime
		)
		if err := rows.Scan(&aud, &d.UserID, &d.Token, &state, &d.Code, &d.Reason, &d.Attempts, &d.Instance, &at); err != nil {
			return nil, dbErr(err, "read deliveries of execution %d", id)
		}
		d.Audience, d.State, d.UpdatedAt = aud, pb.DeliveryState(state), at.t
		out = append(out, d)
	}
	return out, dbErr(rows.Err(), "read deliveries of execution %d", id)
}

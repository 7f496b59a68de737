package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// SendBatch is one slice of a live send: the recipients with ids in
// [FirstID, LastID], sent by one job.
type SendBatch struct {
	ExecutionID int64
	Seq         int
	FirstID     int64
	LastID      int64
	Size        int
	State       string // pending, done
	Attempted   int64  // provider requests' outcomes: sent + failed + invalid + unknown
	Failed      int64
	Instance    string
	Note        string
}

// Send batch states.
const (
	BatchPending = "pending"
	BatchDone    = "done"
)

// PlanBatches splits an execution's recipients into id ranges of at most
// size recipients, in id order.
func (o ops) PlanBatches(ctx context.Context, id int64, size int) ([]SendBatch, error) {
	rows, err := o.q.Query(ctx, `
		SELECT b, min(id), max(id), count(*) FROM (
			SELECT id, (row_number() OVER (ORDER BY id) - 1) / $2 AS b FROM recipients WHERE execution_id = $1
		) r GROUP BY b ORDER BY b`, id, size)
	if err != nil {
		return nil, dbErr(err, "plan the send batches of execution %d", id)
	}
	defer rows.Close()
	var out []SendBatch
	for rows.Next() {
		b := SendBatch{ExecutionID: id, State: BatchPending}
		var seq int64
		if err := rows.Scan(&seq, &b.FirstID, &b.LastID, &b.Size); err != nil {
			return nil, dbErr(err, "plan the send batches of execution %d", id)
		}
		b.Seq = int(seq)
		out = append(out, b)
	}
	return out, dbErr(rows.Err(), "plan the send batches of execution %d", id)
}

// InsertBatches stores planned batches; batches that exist are kept.
func (o ops) InsertBatches(ctx context.Context, bs []SendBatch, now time.Time) error {
	now = Canon(now)
	for start := 0; start < len(bs); start += 200 {
		batch := bs[start:min(start+200, len(bs))]
		var sb strings.Builder
		args := []any{now}
		sb.WriteString(`INSERT INTO send_batches (execution_id, seq, first_id, last_id, size, updated_at) VALUES `)
		for i, b := range batch {
			if i > 0 {
				sb.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&sb, "($%d, $%d, $%d, $%d, $%d, $1)", n+1, n+2, n+3, n+4, n+5)
			args = append(args, b.ExecutionID, b.Seq, b.FirstID, b.LastID, b.Size)
		}
		sb.WriteString(` ON CONFLICT (execution_id, seq) DO NOTHING`)
		if _, err := o.q.Exec(ctx, sb.String(), args...); err != nil {
			return dbErr(err, "store send batches")
		}
	}
	return nil
}

// Batches returns an execution's send batches in order.
func (o ops) Batches(ctx context.Context, id int64) ([]SendBatch, error) {
	rows, err := o.q.Query(ctx, `
		SELECT seq, first_id, last_id, size, state, attempted, failed, instance, note FROM send_batches
		WHERE execution_id = $1 ORDER BY seq`, id)
	if err != nil {
		return nil, dbErr(err, "read the send batches of execution %d", id)
	}
	defer rows.Close()
	var out []SendBatch
	for rows.Next() {
		b := SendBatch{ExecutionID: id}
		if err := rows.Scan(&b.Seq, &b.FirstID, &b.LastID, &b.Size, &b.State, &b.Attempted, &b.Failed, &b.Instance, &b.Note); err != nil {
			return nil, dbErr(err, "read the send batches of execution %d", id)
		}
		out = append(out, b)
	}
	return out, dbErr(rows.Err(), "read the send batches of execution %d", id)
}

// Batch returns one send batch.
func (o ops) Batch(ctx context.Context, id int64, seq int) (SendBatch, error) {
	b := SendBatch{ExecutionID: id, Seq: seq}
	err := o.q.QueryRow(ctx, `
		SELECT first_id, last_id, size, state, attempted, failed, instance, note FROM send_batches
		WHERE execution_id = $1 AND seq = $2`, id, seq).Scan(&b.FirstID, &b.LastID, &b.Size, &b.State, &b.Attempted, &b.Failed, &b.Instance, &b.Note)
	if err == ErrNoRows {
		return b, pb.Errorf(pb.KindNotFound, "send batch %d of execution %d not found", seq, id)
	}
	return b, dbErr(err, "read send batch %d of execution %d", seq, id)
}

// BatchProgress adds a round's outcomes to its batch: attempted and
// failed requests (for the circuit breaker) and its ledger rows by final
// state (for progress, see LiveCounts). It returns the attempted and
// failed totals over every batch of the execution.
func (o ops) BatchProgress(ctx context.Context, id int64, seq int, attempted, failed int64, ledger map[pb.DeliveryState]int64, instance string, now time.Time) (totalAttempted, totalFailed int64, err error) {
	if _, err := o.q.Exec(ctx, `
		UPDATE send_batches SET attempted = attempted + $3, failed = failed + $4, instance = $5, updated_at = $6,
		       ledger_sent = ledger_sent + $7, ledger_failed = ledger_failed + $8, ledger_invalid = ledger_invalid + $9,
		       ledger_capped = ledger_capped + $10, ledger_unknown = ledger_unknown + $11
		WHERE execution_id = $1 AND seq = $2`, id, seq, attempted, failed, instance, Canon(now),
		ledger[DeliverySent], ledger[DeliveryFailed], ledger[DeliveryInvalidToken], ledger[DeliveryCapped], ledger[DeliveryUnknown]); err != nil {
		return 0, 0, dbErr(err, "record progress of send batch %d of execution %d", seq, id)
	}
	err = o.q.QueryRow(ctx, `SELECT COALESCE(sum(attempted), 0), COALESCE(sum(failed), 0) FROM send_batches WHERE execution_id = $1`, id).
		Scan(&totalAttempted, &totalFailed)
	return totalAttempted, totalFailed, dbErr(err, "sum the send batches of execution %d", id)
}

// LiveCounts is the live send's ledger rows by final state, as its
// batches' rounds reported them (BatchProgress). It reads one row per
// batch, not the ledger, so it is cheap enough to ask every second of a
// send to millions. It can be short by the rounds a crash cut between
// their ledger write and their report, and count twice the unknown rows
// an on_unknown resend sends again; the ledger (DeliveryCounts) is the
// truth, and the phase's end takes its metrics from there.
// batches is how many batches the send has; a live send without any (test
// mode sends to its test audience in one go) has no counts here.
func (o ops) LiveCounts(ctx context.Context, id int64) (counts map[pb.DeliveryState]int64, batches int64, err error) {
	var sent, failed, invalid, capped, unknown int64
	err = o.q.QueryRow(ctx, `
		SELECT count(*), COALESCE(sum(ledger_sent), 0), COALESCE(sum(ledger_failed), 0), COALESCE(sum(ledger_invalid), 0),
		       COALESCE(sum(ledger_capped), 0), COALESCE(sum(ledger_unknown), 0)
		FROM send_batches WHERE execution_id = $1`, id).Scan(&batches, &sent, &failed, &invalid, &capped, &unknown)
	if err != nil {
		return nil, 0, dbErr(err, "sum the send batches of execution %d", id)
	}
	return map[pb.DeliveryState]int64{DeliverySent: sent, DeliveryFailed: failed, DeliveryInvalidToken: invalid,
		DeliveryCapped: capped, DeliveryUnknown: unknown}, batches, nil
}

// BatchFailed counts a recoverable failure of a batch and returns how many
// it has had.
func (o ops) BatchFailed(ctx context.Context, id int64, seq int) (int, error) {
	var n int
	err := o.q.QueryRow(ctx, `UPDATE send_batches SET failures = failures + 1 WHERE execution_id = $1 AND seq = $2 RETURNING failures`, id, seq).Scan(&n)
	return n, dbErr(err, "count a failure of send batch %d of execution %d", seq, id)
}

// FinishBatch marks a batch done with a note and returns how many batches
// of the execution are not done yet. Call it with the execution row locked
// so that exactly one batch sees zero.
func (o ops) FinishBatch(ctx context.Context, id int64, seq int, note, instance string, now time.Time) (remaining int, err error) {
	if _, err := o.q.Exec(ctx, `
		UPDATE send_batches SET state = 'done', note = $3, instance = $4, updated_at = $5
		WHERE execution_id = $1 AND seq = $2`, id, seq, note, instance, Canon(now)); err != nil {
		return 0, dbErr(err, "finish send batch %d of execution %d", seq, id)
	}
	err = o.q.QueryRow(ctx, `SELECT count(*) FROM send_batches WHERE execution_id = $1 AND state <> 'done'`, id).Scan(&remaining)
	return remaining, dbErr(err, "count the open send batches of execution %d", id)
}

// RecipientsBetween returns up to limit recipients of an execution with
// afterID < id <= lastID, in id order.
func (o ops) RecipientsBetween(ctx context.Context, id, afterID, lastID int64, limit int) ([]StoredRecipient, error) {
	return o.recipientsWhere(ctx, ExecutionList(id), fmt.Sprintf(" AND id <= %d", lastID), afterID, limit)
}

// InvalidToken is a device token a provider called invalid.
type InvalidToken = pb.InvalidToken

// AddInvalidTokens records tokens as invalid; tokens known already keep
// their first record.
func (o ops) AddInvalidTokens(ctx context.Context, ts []InvalidToken) error {
	for start := 0; start < len(ts); start += insertBatch {
		batch := ts[start:min(start+insertBatch, len(ts))]
		var sb strings.Builder
		var args []any
		sb.WriteString(`INSERT INTO invalid_tokens (token, provider, user_id, code, reason, execution_id, created_at) VALUES `)
		for i, t := range batch {
			if i > 0 {
				sb.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&sb, "($%d, $%d, $%d, $%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4, n+5, n+6, n+7)
			args = append(args, t.Token, t.Provider, t.UserID, t.Code, t.Reason, t.ExecutionID, Canon(t.CreatedAt))
		}
		sb.WriteString(` ON CONFLICT (token) DO NOTHING`)
		if _, err := o.q.Exec(ctx, sb.String(), args...); err != nil {
			return dbErr(err, "record invalid tokens")
		}
	}
	return nil
}

// KnownInvalid returns which of tokens are recorded as invalid.
func (o ops) KnownInvalid(ctx context.Context, tokens []string) (map[string]InvalidToken, error) {
	out := map[string]InvalidToken{}
	if o.dialect == "postgres" {
		// One statement (and one cached plan) whatever the number of tokens.
		err := o.scanInvalid(ctx, `SELECT token, provider, user_id, code, reason, COALESCE(execution_id, 0), created_at FROM invalid_tokens
			WHERE token = ANY($1::text[])`, []any{tokens}, func(t InvalidToken) { out[t.Token] = t })
		return out, err
	}
	for start := 0; start < len(tokens); start += insertBatch {
		batch := tokens[start:min(start+insertBatch, len(tokens))]
		var sb strings.Builder
		args := make([]any, len(batch))
		sb.WriteString(`SELECT token, provider, user_id, code, reason, COALESCE(execution_id, 0), created_at FROM invalid_tokens WHERE token IN (`)
		for i, t := range batch {
			if i > 0 {
				sb.WriteString(", ")
			}
			fmt.Fprintf(&sb, "$%d", i+1)
			args[i] = t
		}
		sb.WriteString(")")
		if err := o.scanInvalid(ctx, sb.String(), args, func(t InvalidToken) { out[t.Token] = t }); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// InvalidTokenFilter selects invalid tokens, newest first.
type InvalidTokenFilter = pb.InvalidTokenFilter

// InvalidTokens lists recorded invalid tokens, newest first.
func (o ops) InvalidTokens(ctx context.Context, f InvalidTokenFilter) ([]InvalidToken, error) {
	q := `SELECT token, provider, user_id, code, reason, COALESCE(execution_id, 0), created_at FROM invalid_tokens WHERE 1 = 1`
	var args []any
	if f.UserID != "" {
		args = append(args, f.UserID)
		q += fmt.Sprintf(" AND user_id = $%d", len(args))
	}
	if f.Provider != "" {
		args = append(args, f.Provider)
		q += fmt.Sprintf(" AND provider = $%d", len(args))
	}
	if f.BeforeToken != "" {
		args = append(args, Canon(f.BeforeAt), f.BeforeToken)
		n := len(args)
		q += fmt.Sprintf(" AND (created_at < $%d OR (created_at = $%d AND token < $%d))", n-1, n-1, n)
	}
	if f.Limit <= 0 {
		f.Limit = 100
	}
	args = append(args, f.Limit)
	q += fmt.Sprintf(" ORDER BY created_at DESC, token DESC LIMIT $%d", len(args))
	var out []InvalidToken
	err := o.scanInvalid(ctx, q, args, func(t InvalidToken) { out = append(out, t) })
	return out, err
}

// DeleteInvalidToken forgets that a token is invalid (it will be sent to
// again). It reports whether the token was recorded.
func (o ops) DeleteInvalidToken(ctx context.Context, token string) (bool, error) {
	n, err := o.q.Exec(ctx, `DELETE FROM invalid_tokens WHERE token = $1`, token)
	return n > 0, dbErr(err, "delete invalid token")
}

func (o ops) scanInvalid(ctx context.Context, q string, args []any, fn func(InvalidToken)) error {
	rows, err := o.q.Query(ctx, q, args...)
	if err != nil {
		return dbErr(err, "read invalid tokens")
	}
	defer rows.Close()
	for rows.Next() {
		var (
			t  InvalidToken
			at nullTime
		)
		if err := rows.Scan(&t.Token, &t.Provider, &t.UserID, &t.Code, &t.Reason, &t.ExecutionID, &at); err != nil {
			return dbErr(err, "read invalid tokens")
		}
		t.CreatedAt = at.t
		fn(t)
	}
	return dbErr(rows.Err(), "read invalid tokens")
}

// CapScope selects which earlier pushes count against a frequency cap.
type CapScope struct {
	AutomationID int64  // only this automation's pushes (0: any)
	Tag          string // only pushes of executions with this tag ("": any)
}

// RecentPushes returns, for each of userIDs that got a live push (sent,
// in flight, or unknown: it may have arrived) since since in scope, how
// many executions pushed to them. Executions other than exclude count.
func (o ops) RecentPushes(ctx context.Context, userIDs []string, since time.Time, scope CapScope, exclude int64) (map[string]int, error) {
	out := map[string]int{}
	for start := 0; start < len(userIDs); start += insertBatch {
		batch := userIDs[start:min(start+insertBatch, len(userIDs))]
		args := []any{Canon(since), exclude}
		var sb strings.Builder
		sb.WriteString(`SELECT d.user_id, count(DISTINCT d.execution_id) FROM deliveries d`)
		if scope.AutomationID != 0 || scope.Tag != "" {
			sb.WriteString(` JOIN executions e ON e.id = d.execution_id`)
		}
		sb.WriteString(` WHERE d.updated_at >= $1 AND d.execution_id <> $2 AND d.audience = 'live' AND d.state IN ('sent', 'sending', 'unknown')`)
		if scope.AutomationID != 0 {
			args = append(args, scope.AutomationID)
			fmt.Fprintf(&sb, " AND e.automation_id = $%d", len(args))
		}
		if scope.Tag != "" {
			args = append(args, "%,"+scope.Tag+",%")
			fmt.Fprintf(&sb, " AND e.tags LIKE $%d", len(args))
		}
		sb.WriteString(" AND d.user_id IN (")
		for i, u := range batch {
			if i > 0 {
				sb.WriteString(", ")
			}
			args = append(args, u)
			fmt.Fprintf(&sb, "$%d", len(args))
		}
		sb.WriteString(") GROUP BY d.user_id")
		rows, err := o.q.Query(ctx, sb.String(), args...)
		if err != nil {
			return nil, dbErr(err, "count recent pushes for frequency caps")
		}
		for rows.Next() {
			var (
				u string
				n int64
			)
			if err := rows.Scan(&u, &n); err != nil {
				rows.Close()
				return nil, dbErr(err, "count recent pushes for frequency caps")
			}
			out[u] = int(n)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, dbErr(err, "count recent pushes for frequency caps")
		}
	}
	return out, nil
}

// TakeRate grants up to n sends under limit per second for key in the
// second starting at window (unix seconds), counted over every instance,
// and returns how many it granted (0 when the second is used up). Run it
// in a transaction: the row is locked while it is read and written.
func (o ops) TakeRate(ctx context.Context, key string, window int64, limit, n int) (int, error) {
	if _, err := o.q.Exec(ctx, `INSERT INTO rate_windows (key, window_start, used) VALUES ($1, $2, 0) ON CONFLICT (key, window_start) DO NOTHING`, key, window); err != nil {
		return 0, dbErr(err, "take rate for %s", key)
	}
	lock := ""
	if o.dialect == "postgres" {
		lock = " FOR UPDATE"
	}
	var used int64
	if err := o.q.QueryRow(ctx, `SELECT used FROM rate_windows WHERE key = $1 AND window_start = $2`+lock, key, window).Scan(&used); err != nil {
		return 0, dbErr(err, "take rate for %s", key)
	}
	grant := min(int64(n), int64(limit)-used)
	if grant <= 0 {
		return 0, nil
	}
	if _, err := o.q.Exec(ctx, `UPDATE rate_windows SET used = used + $3 WHERE key = $1 AND window_start = $2`, key, window, grant); err != nil {
		return 0, dbErr(err, "take rate for %s", key)
	}
	return int(grant), nil
}

// GiveBackRate returns n unused sends to a window.
func (o ops) GiveBackRate(ctx context.Context, key string, window int64, n int) error {
	_, err := o.q.Exec(ctx, `UPDATE rate_windows SET used = used - $3 WHERE key = $1 AND window_start = $2`, key, window, n)
	return dbErr(err, "give back rate for %s", key)
}

// PruneRates deletes rate windows before window.
func (o ops) PruneRates(ctx context.Context, before int64) error {
	_, err := o.q.Exec(ctx, `DELETE FROM rate_windows WHERE window_start < $1`, before)
	return dbErr(err, "prune rate windows")
}

// LockUsers serialises frequency-cap decisions for userIDs across
// instances until the transaction ends (PostgreSQL advisory locks, taken
// in a fixed order so that two sends never deadlock; SQLite has one
// writer, which serialises them already).
func (o ops) LockUsers(ctx context.Context, userIDs []string) error {
	if o.dialect != "postgres" || len(userIDs) == 0 {
		return nil
	}
	_, err := o.q.Exec(ctx, `SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(u, 7340) AS k FROM unnest($1::text[]) AS u ORDER BY k) s`, userIDs)
	return dbErr(err, "lock users for frequency caps")
}

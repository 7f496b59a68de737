package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// insertBatch bounds rows per multi-row INSERT (SQLite allows 32,766
// parameters per statement).
const insertBatch = 500

// List names a recipient list: an execution's, or a preview's scratch list
// (same columns, its execution_id column holding the preview id).
type List struct {
	ID      int64
	Preview bool
}

// ExecutionList is the recipient list of execution id.
func ExecutionList(id int64) List { return List{ID: id} }

// Table is the list's table.
func (l List) Table() string {
	if l.Preview {
		return "preview_recipients"
	}
	return "recipients"
}

func (l List) String() string {
	if l.Preview {
		return fmt.Sprintf("preview %d", l.ID)
	}
	return fmt.Sprintf("execution %d", l.ID)
}

// DeleteRecipients empties a list, so that a re-run audience phase starts
// from nothing.
func (o ops) DeleteRecipients(ctx context.Context, l List) error {
	_, err := o.q.Exec(ctx, `DELETE FROM `+l.Table()+` WHERE execution_id = $1`, l.ID)
	return dbErr(err, "delete recipients of %s", l)
}

// InsertRecipients adds recipients to an execution and returns how many
// were new: a repeated (user_id, token) pair is dropped.
func (o ops) InsertRecipients(ctx context.Context, l List, rs []pb.Recipient) (int64, error) {
	id := l.ID
	const cols = 7
	var inserted int64
	for start := 0; start < len(rs); start += insertBatch {
		batch := rs[start:min(start+insertBatch, len(rs))]
		var (
			sb   strings.Builder
			args = make([]any, 0, len(batch)*cols)
		)
		sb.WriteString(`INSERT INTO ` + l.Table() + ` (execution_id, user_id, token, platform, timezone, locale, data) VALUES `)
		for i, r := range batch {
			if i > 0 {
				sb.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&sb, "($%d, $%d, $%d, $%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4, n+5, n+6, n+7)
			args = append(args, id, r.UserID, r.Token, r.Platform, r.Timezone, r.Locale, DataJSON(r.Data))
		}
		sb.WriteString(` ON CONFLICT (execution_id, user_id, token) DO NOTHING`)
		n, err := o.q.Exec(ctx, sb.String(), args...)
		if err != nil {
			return inserted, dbErr(err, "insert recipients of %s", l)
		}
		inserted += n
	}
	return inserted, nil
}

// DataJSON encodes per-recipient data for its column (nil when empty).
func DataJSON(m map[string]string) any {
	if len(m) == 0 {
		return nil
	}
	b, _ := json.Marshal(m) // a map of strings always encodes
	return string(b)
}

// BulkLoader is implemented by Conns that load recipients faster than
// multi-row INSERTs (PostgreSQL: COPY).
type BulkLoader interface {
	// LoadRecipients adds rs to list id of table, dropping repeated
	// (user_id, token) pairs, and returns how many were new.
	LoadRecipients(ctx context.Context, table string, id int64, rs []pb.Recipient) (int64, error)
}

// WriteRecipients adds a batch of recipients to an execution in one
// transaction (by COPY where the database has it) and returns how many were
// new. Callers stream an audience through it batch by batch.
func (s *Store) WriteRecipients(ctx context.Context, l List, rs []pb.Recipient) (int64, error) {
	if bl, ok := s.conn.(BulkLoader); ok && len(rs) >= insertBatch {
		n, err := bl.LoadRecipients(ctx, l.Table(), l.ID, rs)
		return n, dbErr(err, "load recipients of %s", l)
	}
	var n int64
	err := s.InTx(ctx, func(tx *Tx) error {
		var err error
		n, err = tx.InsertRecipients(ctx, l, rs)
		return err
	})
	return n, err
}

// StoredRecipient is a recipient with its row id, the cursor for batches.
type StoredRecipient struct {
	ID int64
	pb.Recipient
}

// Recipients returns up to limit recipients of an execution with an id
// above afterID, in id order.
func (o ops) Recipients(ctx context.Context, id, afterID int64, limit int) ([]StoredRecipient, error) {
	return o.recipientsWhere(ctx, ExecutionList(id), "", afterID, limit)
}

// ListRecipients returns up to limit recipients of a list after afterID.
func (o ops) ListRecipients(ctx context.Context, l List, afterID int64, limit int) ([]StoredRecipient, error) {
	return o.recipientsWhere(ctx, l, "", afterID, limit)
}

// TokenlessRecipients returns up to limit recipients without a token, for
// token resolution, in id order after afterID.
func (o ops) TokenlessRecipients(ctx context.Context, l List, afterID int64, limit int) ([]StoredRecipient, error) {
	return o.recipientsWhere(ctx, l, ` AND token = ''`, afterID, limit)
}

func (o ops) recipientsWhere(ctx context.Context, l List, cond string, afterID int64, limit int) ([]StoredRecipient, error) {
	id := l.ID
	rows, err := o.q.Query(ctx, `
		SELECT id, user_id, token, platform, timezone, locale, data FROM `+l.Table()+`
		WHERE execution_id = $1 AND id > $2`+cond+` ORDER BY id LIMIT $3`, id, afterID, limit)
	if err != nil {
		return nil, dbErr(err, "read recipients of execution %d", id)
	}
	defer rows.Close()
	var out []StoredRecipient
	for rows.Next() {
		var (
			r    StoredRecipient
			data nullString
		)
		if err := rows.Scan(&r.ID, &r.UserID, &r.Token, &r.Platform, &r.Timezone, &r.Locale, &data); err != nil {
			return nil, dbErr(err, "read recipients of execution %d", id)
		}
		if data.Valid && data.String != "" {
			if err := json.Unmarshal([]byte(data.String), &r.Data); err != nil {
				return nil, pb.Errorf(pb.KindInternal, "recipient %d: stored data unreadable: %v", r.ID, err)
			}
		}
		out = append(out, r)
	}
	return out, dbErr(rows.Err(), "read recipients of execution %d", id)
}

// AttachTokens gives tokenless recipients their devices: one recipient
// row per device (keeping the user's data), replacing the tokenless row. A
// user without devices keeps its tokenless row (counted as no_token).
func (o ops) AttachTokens(ctx context.Context, l List, devices map[string][]pb.Device) error {
	id, table := l.ID, l.Table()
	var (
		users []string
		vals  []string
		args  = []any{id}
	)
	for user, ds := range devices {
		if len(ds) == 0 {
			continue
		}
		users = append(users, user)
		for _, d := range ds {
			n := len(args)
			vals = append(vals, fmt.Sprintf("($%d, $%d, $%d)", n+1, n+2, n+3))
			args = append(args, user, d.Token, d.Platform)
		}
	}
	if len(users) == 0 {
		return nil
	}
	// "WHERE true" keeps SQLite from reading ON CONFLICT as a join clause.
	_, err := o.q.Exec(ctx, `
		WITH d(user_id, token, platform) AS (VALUES `+strings.Join(vals, ", ")+`)
		INSERT INTO `+table+` (execution_id, user_id, token, platform, timezone, locale, data)
		SELECT r.execution_id, r.user_id, d.token, CASE WHEN d.platform = '' THEN r.platform ELSE d.platform END,
		       r.timezone, r.locale, r.data
		FROM `+table+` r JOIN d ON d.user_id = r.user_id
		WHERE r.execution_id = $1 AND r.token = '' AND true
		ON CONFLICT (execution_id, user_id, token) DO NOTHING`, args...)
	if err != nil {
		return dbErr(err, "attach tokens to recipients of %s", l)
	}
	in, inArgs := stringList(users, 2)
	_, err = o.q.Exec(ctx, `DELETE FROM `+table+` WHERE execution_id = $1 AND token = '' AND user_id IN (`+in+`)`,
		append([]any{id}, inArgs...)...)
	return dbErr(err, "drop tokenless rows of %s", l)
}

// stringList returns "$first, …" for vs, with the arguments.
func stringList(vs []string, first int) (string, []any) {
	parts := make([]string, len(vs))
	args := make([]any, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf("$%d", first+i)
		args[i] = v
	}
	return strings.Join(parts, ", "), args
}

// CountRecipients returns an execution's recipients and how many of them
// have no token.
func (o ops) CountRecipients(ctx context.Context, l List) (total, noToken int64, err error) {
	err = o.q.QueryRow(ctx, `
		SELECT count(*), count(*) FILTER (WHERE token = '') FROM `+l.Table()+` WHERE execution_id = $1`, l.ID).Scan(&total, &noToken)
	return total, noToken, dbErr(err, "count recipients of %s", l)
}

// NewPreview starts a scratch list for an audience preview of automation
// automationID and returns it.
func (o ops) NewPreview(ctx context.Context, automationID int64, now time.Time) (List, error) {
	var id int64
	err := o.q.QueryRow(ctx, `INSERT INTO previews (automation_id, created_at) VALUES ($1, $2) RETURNING id`,
		automationID, Canon(now)).Scan(&id)
	return List{ID: id, Preview: true}, dbErr(err, "start a preview of automation %d", automationID)
}

// DeletePreview removes a preview and its scratch list.
func (o ops) DeletePreview(ctx context.Context, l List) error {
	if err := o.DeleteRecipients(ctx, l); err != nil {
		return err
	}
	_, err := o.q.Exec(ctx, `DELETE FROM previews WHERE id = $1`, l.ID)
	return dbErr(err, "delete %s", l)
}

// LastCompletedAudience returns the audience size of the latest completed
// execution of an automation before execution `before`, for the growth
// guard; found is false when there is none.
func (o ops) LastCompletedAudience(ctx context.Context, automationID, before int64) (size, executionID int64, found bool, err error) {
	err = o.q.QueryRow(ctx, `
		SELECT e.id, COALESCE(m.value, 0) FROM executions e
		LEFT JOIN execution_metrics m ON m.execution_id = e.id AND m.name = 'audience_size'
		WHERE e.automation_id = $1 AND e.id < $2 AND e.status = 'completed'
		ORDER BY e.id DESC LIMIT 1`, automationID, before).Scan(&executionID, &size)
	if errors.Is(err, ErrNoRows) {
		return 0, 0, false, nil
	}
	return size, executionID, err == nil, dbErr(err, "read the last audience of automation %d", automationID)
}

// Audience names which list a delivery belongs to.
type Audience string

// Audiences.
const (
	AudienceTest Audience = "test"
	AudienceLive Audience = "live"
)

// keysIn returns "(user_id, token) IN (VALUES ($n, $n+1), …)" with its
// arguments, numbering placeholders from first.
func keysIn(keys [][2]string, first int) (string, []any) {
	var sb strings.Builder
	args := make([]any, 0, 2*len(keys))
	sb.WriteString("(user_id, token) IN (VALUES ")
	for i, k := range keys {
		if i > 0 {
			sb.WriteString(", ")
		}
		fmt.Fprintf(&sb, "($%d, $%d)", first+2*i, first+2*i+1)
		args = append(args, k[0], k[1])
	}
	sb.WriteString(")")
	return sb.String(), args
}

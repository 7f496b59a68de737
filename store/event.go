package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	pb "github.com/pushblaster/pushblaster"
)

// InsertEvent stores ev and sets its ID. Text a database cannot store (a
// NUL byte, invalid UTF-8: from a script's stderr or a remote service's
// answer) is stored with those bytes replaced.
func (o ops) InsertEvent(ctx context.Context, ev *pb.Event) error {
	ev.Message = storable(ev.Message)
	for k, v := range ev.Data {
		if sk, sv := storable(k), storable(v); sk != k || sv != v {
			delete(ev.Data, k)
			ev.Data[sk] = sv
		}
	}
	var data any
	if len(ev.Data) > 0 {
		b, _ := json.Marshal(ev.Data) // a map of strings always encodes
		data = string(b)
	}
	ev.At = Canon(ev.At)
	err := o.q.QueryRow(ctx, `
		INSERT INTO events (at, automation_id, execution_id, type, phase, message, data)
		VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`,
		ev.At, nullID(ev.AutomationID), nullID(ev.ExecutionID), string(ev.Type), string(ev.Phase), ev.Message, data).Scan(&ev.ID)
	return dbErr(err, "record event")
}

func nullID(id int64) any {
	if id == 0 {
		return nil
	}
	return id
}

// ListEvents returns events in id order.
func (o ops) ListEvents(ctx context.Context, f pb.EventFilter) ([]*pb.Event, error) {
	where := []string{"id > $1"}
	args := []any{f.AfterID}
	if f.ExecutionID != nil {
		args = append(args, *f.ExecutionID)
		where = append(where, fmt.Sprintf("execution_id = $%d", len(args)))
	}
	if f.AutomationID != nil {
		args = append(args, *f.AutomationID)
		where = append(where, fmt.Sprintf("automation_id = $%d", len(args)))
	}
	limit := f.Limit
	if limit <= 0 || limit > 10000 {
		limit = 1000
	}
	args = append(args, limit)
	return o.events(ctx, fmt.Sprintf(`WHERE %s ORDER BY id LIMIT $%d`, strings.Join(where, " AND "), len(args)), args...)
}

// events reads the events a WHERE … ORDER BY … LIMIT clause selects.
func (o ops) events(ctx context.Context, clause string, args ...any) ([]*pb.Event, error) {
	rows, err := o.q.Query(ctx, `SELECT id, at, automation_id, execution_id, type, phase, message, data FROM events `+clause, args...)
	if err != nil {
		return nil, dbErr(err, "list events")
	}
	defer rows.Close()
	var out []*pb.Event
	for rows.Next() {
		var (
			ev             pb.Event
			at             nullTime
			autoID, execID *int64
			typ, phase     string
			data           nullString
		)
		if err := rows.Scan(&ev.ID, &at, &autoID, &execID, &typ, &phase, &ev.Message, &data); err != nil {
			return nil, dbErr(err, "list events")
		}
		ev.At, ev.Type, ev.Phase = at.t, pb.EventType(typ), pb.Phase(phase)
		if autoID != nil {
			ev.AutomationID = *autoID
		}
		if execID != nil {
			ev.ExecutionID = *execID
		}
		if data.Valid && data.String != "" {
			if err := json.Unmarshal([]byte(data.String), &ev.Data); err != nil {
				return nil, pb.Errorf(pb.KindInternal, "event %d: stored data unreadable: %v", ev.ID, err)
			}
		}
		out = append(out, &ev)
	}
	return out, dbErr(rows.Err(), "list events")
}

// storable replaces NUL bytes and invalid UTF-8, which PostgreSQL refuses in
// text and JSON, with U+FFFD.
func storable(s string) string {
	if utf8.ValidString(s) && !strings.ContainsRune(s, 0) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

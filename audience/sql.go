package audience

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	pb "github.com/pushblaster/pushblaster"
)

// SQLSource reads audiences from a PostgreSQL database, read-only.
type SQLSource struct {
	Pool *pgxpool.Pool
}

// SQLStats counts what a query returned.
type SQLStats struct {
	Rows, BadRows int64
	BadExamples   []BadRow
	Columns       []string
}

// Stream runs query in a read-only transaction with a statement timeout and
// calls emit for each good row, in order, as the rows arrive. Columns are
// named like a script's output: user_id (required), token, platform,
// timezone, locale; any other column becomes per-recipient data.
func (s *SQLSource) Stream(ctx context.Context, query string, timeout time.Duration, emit func(Row) error) (SQLStats, error) {
	var st SQLStats
	ctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	tx, err := s.Pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return st, sqlError(err, "connect to the audience database")
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", timeout.Milliseconds())); err != nil {
		return st, sqlError(err, "set the statement timeout")
	}
	rows, err := tx.Query(ctx, query)
	if err != nil {
		return st, sqlError(err, "run the audience query")
	}
	defer rows.Close()
	fields := rows.FieldDescriptions()
	if len(fields) == 0 {
		// pgx reports some failures (a write in a read-only transaction)
		// only when the rows are read.
		rows.Close()
		if err := rows.Err(); err != nil {
			return st, sqlError(err, "run the audience query")
		}
	}
	idx := map[string]int{}
	for i, f := range fields {
		name := strings.ToLower(f.Name)
		st.Columns = append(st.Columns, name)
		if _, dup := idx[name]; dup {
			return st, queryShapeError(fmt.Sprintf("the query returns the column %q twice; alias one of them", name), st.Columns)
		}
		idx[name] = i
	}
	if _, ok := idx["user_id"]; !ok {
		return st, queryShapeError("the query returns no user_id column", st.Columns)
	}
	var n int64
	for rows.Next() {
		n++
		vals, err := rows.Values()
		if err != nil {
			return st, sqlError(err, "read row %d", n)
		}
		r := Row{Line: n}
		for i, v := range vals {
			text, ok := sqlText(v)
			if !ok {
				continue
			}
			name := st.Columns[i]
			r.assign(parserFieldOf(name), name, text, len(vals))
		}
		r.Platform = strings.ToLower(r.Platform)
		if problem := rowProblem(&r); problem != "" {
			st.BadRows++
			if len(st.BadExamples) < 5 {
				st.BadExamples = append(st.BadExamples, BadRow{Line: n, Reason: problem, Text: fmt.Sprint(vals)})
			}
			continue
		}
		st.Rows++
		if err := emit(r); err != nil {
			return st, err
		}
	}
	if err := rows.Err(); err != nil {
		return st, sqlError(err, "read the audience query's rows")
	}
	return st, nil
}

// rowProblem says why a row from SQL cannot be a recipient ("" if it can).
func rowProblem(r *Row) string {
	switch {
	case strings.TrimSpace(r.UserID) == "":
		return "user_id is empty"
	case r.Platform != "" && r.Platform != "android" && r.Platform != "ios" && r.Platform != "web":
		return fmt.Sprintf("platform is %q; use android, ios or web", r.Platform)
	}
	if r.Timezone != "" {
		if _, err := pb.LoadLocation(r.Timezone); err != nil {
			return fmt.Sprintf("timezone %q is not an IANA zone", r.Timezone)
		}
	}
	return ""
}

// sqlText renders a column value as text; NULL is absent.
func sqlText(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", false
	case string:
		return strings.TrimSpace(x), true
	case []byte:
		return string(x), true
	case time.Time:
		return x.Format(time.RFC3339Nano), true
	case bool:
		return strconv.FormatBool(x), true
	case fmt.Stringer:
		return x.String(), true
	}
	return fmt.Sprint(v), true
}

func queryShapeError(msg string, cols []string) error {
	e := pb.Errorf(pb.KindValidation, "%s (columns: %s)", msg, strings.Join(cols, ", ")).WithRecoverable(false)
	e.Fields = []pb.FieldError{{Field: "audience.query", Message: e.Message}}
	return e
}

// sqlError classifies an audience database failure: unreachable or
// overloaded is a recoverable database error; a timeout is a timeout; a
// wrong query (syntax, missing table, a write) is the query's fault.
func sqlError(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	var pge *pgconn.PgError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return pb.Errorf(pb.KindTimeout, "%s: the audience query ran out of time", what).With("reason", "timeout")
	case errors.Is(err, context.Canceled):
		return pb.Errorf(pb.KindAbort, "%s: cancelled", what)
	case errors.As(err, &pge):
		switch {
		case pge.Code == "57014":
			return pb.Errorf(pb.KindTimeout, "%s: the audience query hit its statement timeout: %s", what, pge.Message).With("reason", "timeout")
		case pge.Code == "25006":
			return pb.Errorf(pb.KindValidation, "%s: the audience query tried to write; audience queries are read-only", what).WithRecoverable(false)
		case strings.HasPrefix(pge.Code, "08"), strings.HasPrefix(pge.Code, "53"), strings.HasPrefix(pge.Code, "57P"):
			return pb.Errorf(pb.KindDatabase, "%s: the audience database is unavailable: %s", what, pge.Message).With("sqlstate", pge.Code)
		}
		return pb.Errorf(pb.KindValidation, "%s: %s (SQLSTATE %s); fix the audience query", what, pge.Message, pge.Code).
			WithRecoverable(false).With("sqlstate", pge.Code)
	}
	return pb.Errorf(pb.KindDatabase, "%s: the audience database is unreachable: %v", what, err)
}

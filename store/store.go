// Package store keeps pushblaster's truth in SQL: automations and their
// versions, executions with their phases, metrics and errors, the recipient
// list and delivery ledger of every execution, and the event log.
//
// The statements are written once and run on PostgreSQL and SQLite; the
// postgres and sqlite packages supply a Conn (the connection pool and its
// error translation) and their migrations. Public methods on *Store run
// on the pool; the same methods on *Tx run inside one transaction, which
// River jobs can join (Tx.Raw).
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// ErrNoRows is returned by Row.Scan when a query matched nothing. Conns
// translate their driver's equivalent into it.
var ErrNoRows = errors.New("no rows")

// Querier runs statements. Statements use $1-style placeholders.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (int64, error)
	Query(ctx context.Context, sql string, args ...any) (Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) Row
}

// PlanPerCall, as a statement's first argument, asks the database to plan
// the statement with its arguments at every call rather than once for all
// (PostgreSQL: an unnamed statement instead of a cached one, so no generic
// plan). For a statement whose best plan depends on its arguments, such as
// the size of an array parameter. Only Conns that plan ahead accept it.
var PlanPerCall planPerCall

type planPerCall struct{}

// Rows is a result set.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// Row is a single-row result.
type Row interface {
	Scan(dest ...any) error
}

// Conn is a dialect's connection pool.
type Conn interface {
	Querier
	Begin(ctx context.Context) (TxConn, error)
	// BeginRead begins a read-only transaction that sees one snapshot
	// (PostgreSQL: REPEATABLE READ), so a multi-statement read is
	// consistent.
	BeginRead(ctx context.Context) (TxConn, error)
	// Dialect names the database: "postgres" or "sqlite".
	Dialect() string
	Close() error
}

// TxConn is a dialect's transaction.
type TxConn interface {
	Querier
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
	// Raw is the driver's transaction (pgx.Tx or *sql.Tx), for River.
	Raw() any
}

// Store is the database. It is safe for concurrent use.
type Store struct {
	ops
	conn Conn
}

// New returns a Store on conn.
func New(conn Conn) *Store {
	return &Store{ops: ops{q: conn, dialect: conn.Dialect()}, conn: conn}
}

// Dialect names the database.
func (s *Store) Dialect() string { return s.conn.Dialect() }

// Conn returns the underlying connection pool.
func (s *Store) Conn() Conn { return s.conn }

// Close closes the pool.
func (s *Store) Close() error { return s.conn.Close() }

// Tx is one database transaction.
type Tx struct {
	ops
	tx          TxConn
	afterCommit []func()
}

// AfterCommit runs fn once the transaction has committed (never if it
// rolls back): for side effects outside the database, such as stopping a
// phase running in this process.
func (tx *Tx) AfterCommit(fn func()) { tx.afterCommit = append(tx.afterCommit, fn) }

// Raw returns the driver's transaction, for River's InsertTx.
func (tx *Tx) Raw() any { return tx.tx.Raw() }

// InTx runs fn in a transaction, committing if it returns nil. On SQLite the
// pool has one connection: fn must use tx, never the Store, or it waits
// forever.
func (s *Store) InTx(ctx context.Context, fn func(tx *Tx) error) error {
	t, err := s.conn.Begin(ctx)
	if err != nil {
		return dbErr(err, "begin transaction")
	}
	tx := &Tx{ops: ops{q: t, dialect: s.dialect}, tx: t}
	if err := fn(tx); err != nil {
		// A rollback failure adds nothing the caller can act on: the
		// transaction is gone either way.
		_ = t.Rollback(context.WithoutCancel(ctx))
		return err
	}
	if err := t.Commit(ctx); err != nil {
		return dbErr(err, "commit transaction")
	}
	for _, f := range tx.afterCommit {
		f()
	}
	return nil
}

// readTx runs fn in a read-only snapshot transaction.
func (s *Store) readTx(ctx context.Context, fn func(tx *Tx) error) error {
	t, err := s.conn.BeginRead(ctx)
	if err != nil {
		return dbErr(err, "begin read transaction")
	}
	defer func() { _ = t.Rollback(context.WithoutCancel(ctx)) }()
	return fn(&Tx{ops: ops{q: t, dialect: s.dialect}, tx: t})
}

// GetExecution returns an execution with its phases and metrics, read in
// one snapshot so that its status and its phases agree.
func (s *Store) GetExecution(ctx context.Context, id int64, _ bool) (*pb.Execution, error) {
	var e *pb.Execution
	err := s.readTx(ctx, func(tx *Tx) error {
		var err error
		e, err = tx.GetExecution(ctx, id, false)
		return err
	})
	return e, err
}

// ListExecutions is ops.ListExecutions in one snapshot.
func (s *Store) ListExecutions(ctx context.Context, f pb.ExecutionFilter) ([]*pb.Execution, error) {
	var out []*pb.Execution
	err := s.readTx(ctx, func(tx *Tx) error {
		var err error
		out, err = tx.ListExecutions(ctx, f)
		return err
	})
	return out, err
}

// ops holds every statement; Store and Tx share it.
type ops struct {
	q       Querier
	dialect string
}

// forUpdate locks selected rows on PostgreSQL. SQLite has one writer at a
// time, so its transactions are serialised anyway (BEGIN IMMEDIATE).
//
// NO KEY UPDATE, not UPDATE: we never change keys, and a plain FOR UPDATE
// conflicts with the FOR KEY SHARE locks that foreign-key checks take on the
// parent row, which deadlocks a phase end (updating its execution twice)
// against a tick holding the automation.
func (o ops) forUpdate() string {
	if o.dialect == "postgres" {
		return " FOR NO KEY UPDATE"
	}
	return ""
}

func (o ops) skipLocked() string {
	if o.dialect == "postgres" {
		return " FOR NO KEY UPDATE SKIP LOCKED"
	}
	return ""
}

// dbErr wraps a database failure as a recoverable database *Error, keeping
// an *Error that a Conn already classified (conflict, not found).
func dbErr(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return pb.WrapError(pb.KindDatabase, err, format, args...)
}

// TimeFormat is how SQLite stores instants: UTC with fixed microseconds, so
// that text order is time order and equal instants are equal text.
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// Canon truncates t to what the databases keep (microseconds, UTC).
func Canon(t time.Time) time.Time { return t.Truncate(time.Microsecond).UTC() }

// nullTime scans a timestamp from either dialect (PostgreSQL returns
// time.Time, SQLite our TimeFormat text).
type nullTime struct {
	t     time.Time
	valid bool
}

// Scan implements sql.Scanner.
func (n *nullTime) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		n.valid = false
		return nil
	case time.Time:
		n.t, n.valid = v.UTC(), true
		return nil
	case string:
		return n.parse(v)
	case []byte:
		return n.parse(string(v))
	}
	return fmt.Errorf("cannot scan %T into a time", src)
}

func (n *nullTime) parse(s string) error {
	t, err := time.Parse(time.RFC3339Nano, strings.Replace(s, " ", "T", 1))
	if err != nil {
		return fmt.Errorf("stored time %q: %w", s, err)
	}
	n.t, n.valid = t.UTC(), true
	return nil
}

func (n nullTime) ptr() *time.Time {
	if !n.valid {
		return nil
	}
	t := n.t
	return &t
}

var _ sql.Scanner = (*nullTime)(nil)

// nullString scans a nullable text column.
type nullString = sql.NullString

// Package sqlite runs pushblaster's store on an embedded SQLite file
// (modernc.org/sqlite, no cgo): the zero-setup default for one instance.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/riverqueue/river/riverdriver/riversqlite"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrations returns the engine's migrations for SQLite.
func Migrations() ([]store.Migration, error) {
	return store.LoadMigrations(migrationFS, "migrations")
}

// DB is an open SQLite database with its single connection.
type DB struct {
	*sql.DB
	Path string
	lock *os.File
}

// Open opens (creating if needed) the database file at path. One process
// at a time: a second one gets a clear error instead of "database is
// locked" failures later. The pool has one connection, as River's SQLite
// driver requires; every transaction is BEGIN IMMEDIATE.
func Open(ctx context.Context, path string) (*DB, error) {
	if path == "" {
		return nil, pb.Errorf(pb.KindValidation, "SQLite path is empty").With("field", "database_url")
	}
	if dir := filepath.Dir(path); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, pb.Errorf(pb.KindDatabase, "create directory for %s: %v", path, err).WithRecoverable(false)
		}
	}
	lock, err := lockFile(path + ".lock")
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "busy_timeout(10000)", "foreign_keys(1)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		lock.Close()
		return nil, pb.Errorf(pb.KindDatabase, "open SQLite %s: %v", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		lock.Close()
		return nil, pb.Errorf(pb.KindDatabase, "open SQLite %s: %v", path, err).WithRecoverable(false)
	}
	return &DB{DB: db, Path: path, lock: lock}, nil
}

// Close closes the database and releases the file lock.
func (d *DB) Close() error {
	err := d.DB.Close()
	d.lock.Close()
	return err
}

func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, pb.Errorf(pb.KindDatabase, "open lock file %s: %v", path, err).WithRecoverable(false)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		holder := strings.TrimSpace(string(b))
		if holder == "" {
			holder = "another process"
		}
		return nil, pb.Errorf(pb.KindConflict,
			"the SQLite database %s is in use by %s; SQLite serves one instance: stop it, or use PostgreSQL to run several",
			strings.TrimSuffix(path, ".lock"), holder)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte("pid "+strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// Migrate applies the engine's and River's migrations.
func Migrate(ctx context.Context, db *DB) ([]string, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	return store.MigrateAll(ctx, NewConn(db), ms, riversqlite.New(db.DB))
}

// Pending returns the migrations (the engine's and River's) not applied.
func Pending(ctx context.Context, db *DB) ([]string, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	return store.PendingAll(ctx, NewConn(db), ms, riversqlite.New(db.DB))
}

// NewConn adapts the database to store.Conn.
func NewConn(db *DB) store.Conn { return &conn{querier{db.DB}, db} }

type sqlQuerier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

type querier struct{ q sqlQuerier }

// args converts instants to the stored text form (see store.TimeFormat).
func args(in []any) []any {
	out := make([]any, len(in))
	for i, a := range in {
		switch v := a.(type) {
		case time.Time:
			out[i] = v.UTC().Format(store.TimeFormat)
		case *time.Time:
			if v == nil {
				out[i] = nil
			} else {
				out[i] = v.UTC().Format(store.TimeFormat)
			}
		default:
			out[i] = a
		}
	}
	return out
}

func (q querier) Exec(ctx context.Context, query string, a ...any) (int64, error) {
	res, err := q.q.ExecContext(ctx, query, args(a)...)
	if err != nil {
		return 0, interpretError(err)
	}
	n, err := res.RowsAffected()
	return n, interpretError(err)
}

func (q querier) Query(ctx context.Context, query string, a ...any) (store.Rows, error) {
	rows, err := q.q.QueryContext(ctx, query, args(a)...)
	if err != nil {
		return nil, interpretError(err)
	}
	return sqlRows{rows}, nil
}

func (q querier) QueryRow(ctx context.Context, query string, a ...any) store.Row {
	return sqlRow{q.q.QueryRowContext(ctx, query, args(a)...)}
}

type sqlRows struct{ *sql.Rows }

func (r sqlRows) Scan(dest ...any) error { return interpretError(r.Rows.Scan(dest...)) }
func (r sqlRows) Err() error             { return interpretError(r.Rows.Err()) }

// Close closes the result set; its error, if any, also shows in Err.
func (r sqlRows) Close() { _ = r.Rows.Close() }

type sqlRow struct{ *sql.Row }

func (r sqlRow) Scan(dest ...any) error { return interpretError(r.Row.Scan(dest...)) }

type conn struct {
	querier
	db *DB
}

func (c *conn) Dialect() string { return "sqlite" }
func (c *conn) Close() error    { return c.db.Close() }

func (c *conn) Begin(ctx context.Context) (store.TxConn, error) {
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, interpretError(err)
	}
	return &txConn{querier{tx}, tx}, nil
}

// BeginRead begins a transaction: with one connection, it is a snapshot.
func (c *conn) BeginRead(ctx context.Context) (store.TxConn, error) { return c.Begin(ctx) }

type txConn struct {
	querier
	tx *sql.Tx
}

func (t *txConn) Commit(context.Context) error   { return interpretError(t.tx.Commit()) }
func (t *txConn) Rollback(context.Context) error { return interpretError(t.tx.Rollback()) }
func (t *txConn) Raw() any                       { return t.tx }

// interpretError translates SQLite errors at the edge.
func interpretError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return store.ErrNoRows
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return pb.Errorf(pb.KindConflict, "unique constraint violated: %s", se.Error())
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return pb.Errorf(pb.KindDatabase, "SQLite is busy: %s", se.Error())
		}
	}
	return err
}

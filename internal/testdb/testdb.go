// Package testdb gives tests a fresh, migrated database: a PostgreSQL schema
// of its own (dropped afterwards) or a SQLite file in a temporary directory.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pushblaster/pushblaster/postgres"
	"github.com/pushblaster/pushblaster/sqlite"
	"github.com/pushblaster/pushblaster/store"
)

// DefaultURL is the test server; override with PUSHBLASTER_TEST_DATABASE_URL.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// URL returns the PostgreSQL URL tests use.
func URL() string {
	if u := os.Getenv("PUSHBLASTER_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// DB is a fresh database for one test.
type DB struct {
	Store  *store.Store
	Pool   *pgxpool.Pool // PostgreSQL only
	SQLite *sqlite.DB    // SQLite only
	Schema string        // PostgreSQL only
	// Reopen opens another pool on the same database (PostgreSQL only),
	// as a second instance would.
	Reopen func(tb testing.TB) *pgxpool.Pool
}

// Dialects are the databases every conformance test runs on.
var Dialects = []string{"postgres", "sqlite"}

// New returns a fresh migrated database of the given dialect.
func New(tb testing.TB, dialect string) *DB {
	tb.Helper()
	switch dialect {
	case "postgres":
		return NewPostgres(tb)
	case "sqlite":
		return NewSQLite(tb)
	}
	tb.Fatalf("unknown dialect %q", dialect)
	return nil
}

// NewPostgres creates a schema of its own, migrated, dropped at cleanup.
func NewPostgres(tb testing.TB) *DB {
	tb.Helper()
	ctx := context.Background()
	admin, err := postgres.Open(ctx, postgres.Config{URL: URL(), MaxConns: 2})
	if err != nil {
		tb.Fatalf("PostgreSQL is required for this test (set PUSHBLASTER_TEST_DATABASE_URL): %v", err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "pbtest_" + hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		tb.Fatalf("create schema: %v", err)
	}
	tb.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		admin.Close()
	})
	open := func(tb testing.TB) *pgxpool.Pool { return OpenPool(tb, postgres.Config{URL: URL(), Schema: schema}) }
	pool := open(tb)
	if _, err := postgres.Migrate(ctx, pool); err != nil {
		tb.Fatalf("migrate: %v", err)
	}
	return &DB{Store: store.New(postgres.NewConn(pool)), Pool: pool, Schema: schema, Reopen: open}
}

// OpenPool opens a pool with cfg (a test's own limits and timeouts),
// closed when the test ends.
func OpenPool(tb testing.TB, cfg postgres.Config) *pgxpool.Pool {
	tb.Helper()
	pool, err := postgres.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("open pool: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// NewSQLite creates a migrated SQLite file in a temporary directory.
func NewSQLite(tb testing.TB) *DB {
	tb.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(tb.TempDir(), "pushblaster.db"))
	if err != nil {
		tb.Fatalf("open SQLite: %v", err)
	}
	tb.Cleanup(func() { db.Close() })
	if _, err := sqlite.Migrate(context.Background(), db); err != nil {
		tb.Fatalf("migrate: %v", err)
	}
	return &DB{Store: store.New(sqlite.NewConn(db)), SQLite: db}
}

// Package postgres runs pushblaster's store on PostgreSQL through a bounded
// pgx v5 pool, and migrates both the engine's tables and River's.
package postgres

import (
	"context"
	"embed"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrations returns the engine's migrations for PostgreSQL.
func Migrations() ([]store.Migration, error) {
	return store.LoadMigrations(migrationFS, "migrations")
}

// Config bounds the pool. Zero values take the defaults.
type Config struct {
	URL string
	// MaxConns caps open connections (default 10).
	MaxConns int32
	// IdleTimeout closes connections idle this long (default 30s).
	IdleTimeout time.Duration
	// ConnectTimeout bounds opening one connection (default 5s).
	ConnectTimeout time.Duration
	// StatementTimeout bounds every statement on the server (default 60s).
	StatementTimeout time.Duration
	// Schema, if set, is the search_path of every connection: the engine's
	// and River's tables live there.
	Schema string
}

// Defaults.
const (
	DefaultMaxConns         = 10
	DefaultIdleTimeout      = 30 * time.Second
	DefaultConnectTimeout   = 5 * time.Second
	DefaultStatementTimeout = 60 * time.Second
)

// Open opens a bounded pool and checks that the server answers.
func Open(ctx context.Context, cfg Config) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, pb.Errorf(pb.KindValidation, "database URL: %v", redact(err)).With("field", "database_url")
	}
	pc.MaxConns = cmpOr(cfg.MaxConns, DefaultMaxConns)
	pc.MaxConnIdleTime = cmpOr(cfg.IdleTimeout, DefaultIdleTimeout)
	pc.ConnConfig.ConnectTimeout = cmpOr(cfg.ConnectTimeout, DefaultConnectTimeout)
	stmt := cmpOr(cfg.StatementTimeout, DefaultStatementTimeout)
	pc.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(stmt.Milliseconds(), 10)
	pc.ConnConfig.RuntimeParams["application_name"] = "pushblaster"
	if cfg.Schema != "" {
		pc.ConnConfig.RuntimeParams["search_path"] = cfg.Schema
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, pb.Errorf(pb.KindDatabase, "open PostgreSQL pool: %v", redact(err))
	}
	pingCtx, cancel := context.WithTimeout(ctx, pc.ConnConfig.ConnectTimeout)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, pb.Errorf(pb.KindDatabase, "connect to PostgreSQL at %s:%d: %v", pc.ConnConfig.Host, pc.ConnConfig.Port, redact(err))
	}
	return pool, nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// redact drops the connection string (and its password) that some pgx
// errors quote.
func redact(err error) string {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return "cannot parse the URL (check its format: postgres://user:password@host:5432/db)"
	}
	return err.Error()
}

// migrationLockKey, mixed with the schema name, serialises migrators of one
// schema across instances.
const migrationLockKey = 0x7075_7368_626c // "pushbl"

// Migrate applies the engine's and River's migrations, holding an advisory
// lock so that instances starting together do not race.
func Migrate(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	c, err := pool.Acquire(ctx)
	if err != nil {
		return nil, pb.Errorf(pb.KindDatabase, "migrate: acquire connection: %v", err)
	}
	defer c.Release()
	if _, err := c.Exec(ctx, `SELECT pg_advisory_lock($1::bigint # hashtext(current_schema()))`, int64(migrationLockKey)); err != nil {
		return nil, pb.Errorf(pb.KindDatabase, "migrate: take lock: %v", err)
	}
	defer func() {
		_, _ = c.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1::bigint # hashtext(current_schema()))`, int64(migrationLockKey))
	}()
	return store.MigrateAll(ctx, NewConn(pool), ms, riverpgxv5.New(pool))
}

// Pending returns the migrations (the engine's and River's) not applied.
func Pending(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	return store.PendingAll(ctx, NewConn(pool), ms, riverpgxv5.New(pool))
}

// NewConn adapts a pool to store.Conn.
func NewConn(pool *pgxpool.Pool) store.Conn {
	return &conn{pool: pool, wait: cmpOr(pool.Config().ConnConfig.ConnectTimeout, DefaultConnectTimeout)}
}

type pgxQuerier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

type querier struct{ q pgxQuerier }

// execMode turns store.PlanPerCall into pgx's mode for it.
func execMode(args []any) []any {
	if len(args) > 0 && args[0] == any(store.PlanPerCall) {
		args[0] = pgx.QueryExecModeExec
	}
	return args
}

func (q querier) Exec(ctx context.Context, sql string, args ...any) (int64, error) {
	tag, err := q.q.Exec(ctx, sql, execMode(args)...)
	if err != nil {
		return 0, interpretError(err)
	}
	return tag.RowsAffected(), nil
}

func (q querier) Query(ctx context.Context, sql string, args ...any) (store.Rows, error) {
	rows, err := q.q.Query(ctx, sql, execMode(args)...)
	if err != nil {
		return nil, interpretError(err)
	}
	return pgxRows{rows}, nil
}

func (q querier) QueryRow(ctx context.Context, sql string, args ...any) store.Row {
	return pgxRow{q.q.QueryRow(ctx, sql, args...)}
}

type pgxRows struct{ pgx.Rows }

func (r pgxRows) Scan(dest ...any) error { return interpretError(r.Rows.Scan(dest...)) }
func (r pgxRows) Err() error             { return interpretError(r.Rows.Err()) }

type pgxRow struct{ pgx.Row }

func (r pgxRow) Scan(dest ...any) error { return interpretError(r.Row.Scan(dest...)) }

// conn runs pool-level statements on a connection it acquires with a
// bounded wait: an exhausted pool is a typed database error with the
// numbers, never a silent hang.
type conn struct {
	pool *pgxpool.Pool
	// wait bounds acquiring a connection (the pool's connect timeout).
	wait time.Duration
	// waiting counts the statements waiting for a connection now.
	waiting atomic.Int64
}

// acquire takes a connection, waiting at most c.wait.
func (c *conn) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	actx, cancel := context.WithTimeout(ctx, c.wait)
	defer cancel()
	c.waiting.Add(1)
	pc, err := c.pool.Acquire(actx)
	waiting := c.waiting.Add(-1)
	if err == nil {
		return pc, nil
	}
	if ctx.Err() == nil && actx.Err() != nil {
		st := c.pool.Stat()
		return nil, pb.Errorf(pb.KindDatabase,
			"waited %s for a database connection, %d/%d in use, %d waiting: the pool is exhausted; raise --db-max-conns (and PostgreSQL's max_connections) or find what holds connections (slow statements, long transactions)",
			c.wait, st.AcquiredConns(), st.MaxConns(), waiting).With("cause", "pool_exhausted").
			With("in_use", strconv.Itoa(int(st.AcquiredConns()))).With("max", strconv.Itoa(int(st.MaxConns())))
	}
	return nil, interpretError(err)
}

func (c *conn) Exec(ctx context.Context, sql string, args ...any) (int64, error) {
	pc, err := c.acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer pc.Release()
	return querier{pc}.Exec(ctx, sql, args...)
}

func (c *conn) Query(ctx context.Context, sql string, args ...any) (store.Rows, error) {
	pc, err := c.acquire(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := querier{pc}.Query(ctx, sql, args...)
	if err != nil {
		pc.Release()
		return nil, err
	}
	return &releasingRows{Rows: rows, pc: pc}, nil
}

func (c *conn) QueryRow(ctx context.Context, sql string, args ...any) store.Row {
	pc, err := c.acquire(ctx)
	if err != nil {
		return errRow{err}
	}
	return releasingRow{row: pc.QueryRow(ctx, sql, args...), pc: pc}
}

// releasingRows gives the connection back when the rows are closed.
type releasingRows struct {
	store.Rows
	pc   *pgxpool.Conn
	once sync.Once
}

func (r *releasingRows) Close() {
	r.Rows.Close()
	r.once.Do(r.pc.Release)
}

// releasingRow gives the connection back after Scan.
type releasingRow struct {
	row pgx.Row
	pc  *pgxpool.Conn
}

func (r releasingRow) Scan(dest ...any) error {
	defer r.pc.Release()
	return interpretError(r.row.Scan(dest...))
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

func (c *conn) Dialect() string { return "postgres" }
func (c *conn) Close() error    { c.pool.Close(); return nil }

func (c *conn) Begin(ctx context.Context) (store.TxConn, error) {
	return c.begin(ctx, pgx.TxOptions{})
}

func (c *conn) BeginRead(ctx context.Context) (store.TxConn, error) {
	return c.begin(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
}

func (c *conn) begin(ctx context.Context, opts pgx.TxOptions) (store.TxConn, error) {
	pc, err := c.acquire(ctx)
	if err != nil {
		return nil, err
	}
	tx, err := pc.BeginTx(ctx, opts)
	if err != nil {
		pc.Release()
		return nil, interpretError(err)
	}
	return &txConn{querier: querier{tx}, tx: tx, pc: pc}, nil
}

type txConn struct {
	querier
	tx   pgx.Tx
	pc   *pgxpool.Conn
	once sync.Once
}

func (t *txConn) release() { t.once.Do(t.pc.Release) }

func (t *txConn) Commit(ctx context.Context) error {
	defer t.release()
	return interpretError(t.tx.Commit(ctx))
}

func (t *txConn) Rollback(ctx context.Context) error {
	defer t.release()
	return interpretError(t.tx.Rollback(ctx))
}

func (t *txConn) Raw() any { return t.tx }

// interpretError translates pgx errors at the edge: no rows, unique
// violations (conflict) and statement timeouts keep their meaning.
func interpretError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ErrNoRows
	}
	var pge *pgconn.PgError
	if errors.As(err, &pge) {
		switch pge.Code {
		case "23505":
			return pb.Errorf(pb.KindConflict, "unique constraint %s violated: %s", pge.ConstraintName, pge.Detail)
		case "57014":
			return pb.Errorf(pb.KindDatabase, "statement cancelled by the server (statement_timeout or a cancel): %s", pge.Message)
		}
	}
	return err
}

// LoadRecipients implements store.BulkLoader: one INSERT … SELECT FROM
// unnest of array parameters (sent in pgx's binary format) with ON CONFLICT
// DO NOTHING dropping repeated pairs. Unlike COPY into a temporary table it
// creates no catalog entries per batch, which made PostgreSQL the
// bottleneck of large audiences.
func (c *conn) LoadRecipients(ctx context.Context, table string, id int64, rs []pb.Recipient) (int64, error) {
	n := len(rs)
	users, tokens, platforms := make([]string, n), make([]string, n), make([]string, n)
	zones, locales, data := make([]string, n), make([]string, n), make([]*string, n)
	for i := range rs {
		r := &rs[i]
		users[i], tokens[i], platforms[i], zones[i], locales[i] = r.UserID, r.Token, r.Platform, r.Timezone, r.Locale
		if d := store.DataJSON(r.Data); d != nil {
			s := d.(string)
			data[i] = &s
		}
	}
	pc, err := c.acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer pc.Release()
	tag, err := pc.Exec(ctx, `
		INSERT INTO `+table+` (execution_id, user_id, token, platform, timezone, locale, data)
		SELECT $1, u, t, p, z, l, d::jsonb
		FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) AS r(u, t, p, z, l, d)
		ON CONFLICT (execution_id, user_id, token) DO NOTHING`, id, users, tokens, platforms, zones, locales, data)
	if err != nil {
		return 0, interpretError(err)
	}
	return tag.RowsAffected(), nil
}

// Stats returns the pool's numbers now (c must come from NewConn).
func Stats(c store.Conn) (pb.PoolStats, bool) {
	pc, ok := c.(*conn)
	if !ok {
		return pb.PoolStats{}, false
	}
	st := pc.pool.Stat()
	return pb.PoolStats{Total: int64(st.TotalConns()), Idle: int64(st.IdleConns()), InUse: int64(st.AcquiredConns()),
		Waiting: pc.waiting.Load(), Max: int64(st.MaxConns())}, true
}

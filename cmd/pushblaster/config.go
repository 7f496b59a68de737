package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/postgres"
	"github.com/pushblaster/pushblaster/sqlite"
	"github.com/pushblaster/pushblaster/store"
)

// envFunc reads the environment (injected, so tests set their own).
type envFunc func(string) string

// DefaultDatabaseURL is the embedded default: a SQLite file in the working
// directory.
const DefaultDatabaseURL = "sqlite:pushblaster.db"

// flagSet returns a FlagSet whose errors name the command and go to stderr.
func flagSet(name string, stderr io.Writer, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: pushblaster %s\n\nflags:\n", synopsis)
		hideSecretDefaults(fs)
		fs.PrintDefaults()
	}
	return fs
}

// secretFlags hold a secret as their whole value.
var secretFlags = map[string]bool{"token": true}

// hideSecretDefaults keeps secrets out of the usage text. Defaults come from
// the environment (PUSHBLASTER_DATABASE_URL, PUSHBLASTER_TOKEN, …), and the
// flag package prints them: a token is shown as set, a URL without its
// password.
func hideSecretDefaults(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		n := strings.ToLower(f.Name)
		switch {
		case f.DefValue == "":
		case secretFlags[n] || strings.Contains(n, "secret") || strings.Contains(n, "password"):
			f.DefValue = "(set, hidden)"
		case strings.Contains(f.DefValue, "://"):
			f.DefValue = redactURL(f.DefValue)
		}
	})
}

// parseFlags parses args, allowing flags after positional arguments
// ("automation delete 7 --force"), and returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				return nil, exitError{0}
			}
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// dbConfig is how to reach the database.
type dbConfig struct {
	url              string
	maxConns         int
	idleTimeout      time.Duration
	connectTimeout   time.Duration
	statementTimeout time.Duration
}

func (c *dbConfig) register(fs *flag.FlagSet, env envFunc) {
	fs.StringVar(&c.url, "database-url", envOr(env, "PUSHBLASTER_DATABASE_URL", DefaultDatabaseURL),
		"database: postgres://user:pass@host:5432/db, or sqlite:PATH for the embedded default (env PUSHBLASTER_DATABASE_URL)")
	fs.IntVar(&c.maxConns, "db-max-conns", postgres.DefaultMaxConns, "PostgreSQL: maximum open connections")
	fs.DurationVar(&c.idleTimeout, "db-idle-timeout", postgres.DefaultIdleTimeout, "PostgreSQL: close connections idle this long")
	fs.DurationVar(&c.connectTimeout, "db-connect-timeout", postgres.DefaultConnectTimeout, "PostgreSQL: time allowed to open a connection")
	fs.DurationVar(&c.statementTimeout, "db-statement-timeout", postgres.DefaultStatementTimeout, "PostgreSQL: time allowed for one statement")
}

func envOr(env envFunc, key, def string) string {
	if v := env(key); v != "" {
		return v
	}
	return def
}

// envDuration reads a duration from the environment, failing with the
// variable's name and the fix.
func envDuration(env envFunc, key string, def time.Duration) (time.Duration, error) {
	raw := env(key)
	if raw == "" {
		return def, nil
	}
	d, err := time.ParseDuration(raw)
	if err != nil || d < 0 {
		return 0, pb.Errorf(pb.KindValidation, "%s=%q is not a duration; write e.g. 30s or 5m", key, raw)
	}
	return d, nil
}

func envInt(env envFunc, key string, def int) (int, error) {
	raw := env(key)
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n <= 0 {
		return 0, pb.Errorf(pb.KindValidation, "%s=%q must be a positive integer", key, raw)
	}
	return n, nil
}

// backend is an open database with what the engine needs from it.
type backend struct {
	dialect   string
	store     *store.Store
	desc      string // the URL without its password
	newEngine func(engine.Config) (*engine.Engine, error)
	migrate   func(context.Context) ([]string, error)
	pending   func(context.Context) ([]string, error)
	close     func()
	// pool (PostgreSQL) or sqlDB (SQLite) is the connection pool, for
	// its metrics.
	pool  *pgxpool.Pool
	sqlDB *sql.DB
}

// poolStats reports the connection pool, for health.
func (b *backend) poolStats() pb.PoolStats {
	if st, ok := postgres.Stats(b.store.Conn()); ok {
		return st
	}
	if b.sqlDB == nil {
		return pb.PoolStats{}
	}
	// database/sql does not tell how many wait now (SQLite has one
	// connection; statements take turns by design).
	st := b.sqlDB.Stats()
	return pb.PoolStats{Total: int64(st.OpenConnections), Idle: int64(st.Idle), InUse: int64(st.InUse), Max: int64(st.MaxOpenConnections)}
}

// openBackend opens the database named by c.url.
func openBackend(ctx context.Context, c dbConfig) (*backend, error) {
	kind, target, err := parseDatabaseURL(c.url)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "postgres":
		if c.maxConns <= 0 || c.maxConns > 10000 {
			return nil, pb.Errorf(pb.KindValidation, "--db-max-conns=%d must be between 1 and 10000", c.maxConns)
		}
		pool, err := postgres.Open(ctx, postgres.Config{URL: target, MaxConns: int32(c.maxConns),
			IdleTimeout: c.idleTimeout, ConnectTimeout: c.connectTimeout, StatementTimeout: c.statementTimeout})
		if err != nil {
			return nil, err
		}
		st := store.New(postgres.NewConn(pool))
		return &backend{
			dialect: "postgres", store: st, desc: redactURL(target),
			newEngine: func(cfg engine.Config) (*engine.Engine, error) { return engine.New(st, riverpgxv5.New(pool), cfg) },
			migrate:   func(ctx context.Context) ([]string, error) { return postgres.Migrate(ctx, pool) },
			pending:   func(ctx context.Context) ([]string, error) { return postgres.Pending(ctx, pool) },
			close:     pool.Close,
			pool:      pool,
		}, nil
	default:
		db, err := sqlite.Open(ctx, target)
		if err != nil {
			return nil, err
		}
		st := store.New(sqlite.NewConn(db))
		return &backend{
			dialect: "sqlite", store: st, desc: "sqlite:" + target,
			newEngine: func(cfg engine.Config) (*engine.Engine, error) { return engine.New(st, riversqlite.New(db.DB), cfg) },
			migrate:   func(ctx context.Context) ([]string, error) { return sqlite.Migrate(ctx, db) },
			pending:   func(ctx context.Context) ([]string, error) { return sqlite.Pending(ctx, db) },
			close:     func() { _ = db.Close() },
			sqlDB:     db.DB,
		}, nil
	}
}

// parseDatabaseURL returns "postgres" or "sqlite" and what to open.
func parseDatabaseURL(raw string) (kind, target string, err error) {
	switch {
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		return "postgres", raw, nil
	case strings.HasPrefix(raw, "sqlite://"):
		return "sqlite", strings.TrimPrefix(raw, "sqlite://"), nil
	case strings.HasPrefix(raw, "sqlite:"):
		return "sqlite", strings.TrimPrefix(raw, "sqlite:"), nil
	}
	scheme, _, _ := strings.Cut(raw, ":")
	e := pb.Errorf(pb.KindValidation, "a database URL of scheme %q is not supported", scheme)
	e.Fields = []pb.FieldError{{Field: "database-url", Message: "use postgres://user:password@host:5432/dbname, or sqlite:PATH (e.g. sqlite:pushblaster.db)"}}
	return "", "", e
}

// redactURL hides the password of a database URL, in its user info and in
// its query (password=, sslpassword=). A URL that does not parse is shown as
// its scheme only: it may hold a password we cannot find.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if !strings.Contains(raw, "@") {
			return raw // no credentials in it: show the typo as it is
		}
		scheme, _, _ := strings.Cut(raw, ":")
		return scheme + "://(unparseable URL hidden)"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	q := u.Query()
	changed := false
	for k := range q {
		if strings.Contains(strings.ToLower(k), "password") {
			q.Set(k, "xxxxx")
			changed = true
		}
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// logConfig is how to log.
type logConfig struct {
	format string
	level  string
}

func (c *logConfig) register(fs *flag.FlagSet, env envFunc) {
	fs.StringVar(&c.format, "log-format", envOr(env, "PUSHBLASTER_LOG_FORMAT", ""), "json or text (default: text on a terminal, else json) (env PUSHBLASTER_LOG_FORMAT)")
	fs.StringVar(&c.level, "log-level", envOr(env, "PUSHBLASTER_LOG_LEVEL", "info"), "debug, info, warn or error (env PUSHBLASTER_LOG_LEVEL)")
}

func (c logConfig) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.level)); err != nil {
		return nil, pb.Errorf(pb.KindValidation, "--log-level=%q: use debug, info, warn or error", c.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	format := c.format
	if format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	// ContextHandler: providers' lines carry the execution they send for.
	switch format {
	case "json":
		return slog.New(pb.ContextHandler{Handler: slog.NewJSONHandler(w, opts)}), nil
	case "text":
		return slog.New(pb.ContextHandler{Handler: slog.NewTextHandler(w, opts)}), nil
	}
	return nil, pb.Errorf(pb.KindValidation, "--log-format=%q: use json or text", c.format)
}

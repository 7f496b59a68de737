package store

import (
	"context"
	"fmt"

	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivermigrate"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// Migration is one schema change, from a file named NNN_name.sql.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// LoadMigrations reads the NNN_name.sql files in directory dir of fsys, in
// version order.
func LoadMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	fsys, err := fs.Sub(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || path.Ext(name) != ".sql" {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must be NNN_name.sql", name)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		out = append(out, Migration{Version: v, Name: strings.TrimSuffix(name, ".sql"), SQL: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i := 1; i < len(out); i++ {
		if out[i].Version == out[i-1].Version {
			return nil, fmt.Errorf("migrations %s and %s share version %d", out[i-1].Name, out[i].Name, out[i].Version)
		}
	}
	return out, nil
}

const migrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER PRIMARY KEY,
	name       TEXT NOT NULL,
	applied_at TEXT NOT NULL
)`

// Migrate applies every migration not applied yet, each in its own
// transaction, and returns the names it applied. Callers serialise
// concurrent migrators (PostgreSQL: an advisory lock).
func Migrate(ctx context.Context, conn Conn, ms []Migration) ([]string, error) {
	if _, err := conn.Exec(ctx, migrationsTable); err != nil {
		return nil, dbErr(err, "create schema_migrations")
	}
	pending, err := Pending(ctx, conn, ms)
	if err != nil {
		return nil, err
	}
	var applied []string
	for _, m := range pending {
		err := New(conn).InTx(ctx, func(tx *Tx) error {
			if _, err := tx.q.Exec(ctx, m.SQL); err != nil {
				return dbErr(err, "apply migration %s", m.Name)
			}
			_, err := tx.q.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`,
				m.Version, m.Name, time.Now().UTC().Format(time.RFC3339))
			return dbErr(err, "record migration %s", m.Name)
		})
		if err != nil {
			return applied, err
		}
		applied = append(applied, m.Name)
	}
	return applied, nil
}

// Pending returns the migrations not applied yet. It fails if the database
// has a migration this binary does not know: an older binary must not run
// against a newer schema.
func Pending(ctx context.Context, conn Conn, ms []Migration) ([]Migration, error) {
	rows, err := conn.Query(ctx, `SELECT version, name FROM schema_migrations ORDER BY version`)
	if err != nil {
		return nil, dbErr(err, "read schema_migrations")
	}
	defer rows.Close()
	known := map[int]bool{}
	for _, m := range ms {
		known[m.Version] = true
	}
	done := map[int]bool{}
	for rows.Next() {
		var (
			v    int
			name string
		)
		if err := rows.Scan(&v, &name); err != nil {
			return nil, dbErr(err, "read schema_migrations")
		}
		if !known[v] {
			return nil, pb.Errorf(pb.KindDatabase, "the database has migration %s, which this pushblaster does not know: it is older than the schema; upgrade it", name).WithRecoverable(false)
		}
		done[v] = true
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr(err, "read schema_migrations")
	}
	var out []Migration
	for _, m := range ms {
		if !done[m.Version] {
			out = append(out, m)
		}
	}
	return out, nil
}

// MigrateAll applies the engine's migrations, then River's through driver.
func MigrateAll[TTx any](ctx context.Context, conn Conn, ms []Migration, driver riverdriver.Driver[TTx]) ([]string, error) {
	applied, err := Migrate(ctx, conn, ms)
	if err != nil {
		return applied, err
	}
	river, err := migrateRiver(ctx, driver, false)
	return append(applied, river...), err
}

// PendingAll returns the engine's and River's migrations not applied yet.
func PendingAll[TTx any](ctx context.Context, conn Conn, ms []Migration, driver riverdriver.Driver[TTx]) ([]string, error) {
	pending, err := Pending(ctx, conn, ms)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range pending {
		out = append(out, m.Name)
	}
	river, err := migrateRiver(ctx, driver, true)
	return append(out, river...), err
}

func migrateRiver[TTx any](ctx context.Context, driver riverdriver.Driver[TTx], dryRun bool) ([]string, error) {
	migrator, err := rivermigrate.New(driver, nil)
	if err != nil {
		return nil, pb.Errorf(pb.KindInternal, "River migrator: %v", err)
	}
	res, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, &rivermigrate.MigrateOpts{DryRun: dryRun})
	if err != nil {
		return nil, pb.Errorf(pb.KindDatabase, "migrate River: %v", err)
	}
	var out []string
	for _, v := range res.Versions {
		out = append(out, fmt.Sprintf("river_%03d_%s", v.Version, v.Name))
	}
	return out, nil
}

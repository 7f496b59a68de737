package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/postgres"
	"github.com/pushblaster/pushblaster/store"
	"github.com/pushblaster/pushblaster/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) *store.Store { return testdb.NewPostgres(t).Store })
}

// TestPoolExhaustionIsATypedError: with every connection held, a statement
// waits the connect timeout and fails as a database error that says how
// full the pool is; once a connection is free again, statements work.
func TestPoolExhaustionIsATypedError(t *testing.T) {
	t.Parallel()
	db := testdb.NewPostgres(t)
	ctx := context.Background()
	pool := testdb.OpenPool(t, postgres.Config{URL: testdb.URL() + "&search_path=" + db.Schema, MaxConns: 2, ConnectTimeout: 300 * time.Millisecond})
	conn := postgres.NewConn(pool)
	st := store.New(conn)
	var held []*pgxpool.Conn
	for range 2 {
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	if s, ok := postgres.Stats(conn); !ok || s.InUse != 2 || s.Max != 2 {
		t.Fatalf("stats = %+v", s)
	}
	_, err := st.ListAutomations(ctx, pb.AutomationFilter{})
	pe := pb.AsError(err)
	if pe == nil || pe.Kind != pb.KindDatabase || !strings.Contains(pe.Message, "waited 300ms for a database connection, 2/2 in use") ||
		pe.Context["cause"] != "pool_exhausted" || !strings.Contains(pe.Message, "--db-max-conns") {
		t.Fatalf("error = %v; want a database error with the pool's numbers", err)
	}
	// Transactions and single-row reads wait the same way.
	if err := st.InTx(ctx, func(*store.Tx) error { return nil }); pb.ErrorKind(err) != pb.KindDatabase || !strings.Contains(err.Error(), "2/2 in use") {
		t.Errorf("begin: %v", err)
	}
	if _, err := st.ExecutionStatus(ctx, 1); !strings.Contains(fmt.Sprint(err), "2/2 in use") {
		t.Errorf("query row: %v", err)
	}
	// The caller's own deadline is not reported as exhaustion.
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := st.ListAutomations(short, pb.AutomationFilter{}); err == nil || strings.Contains(err.Error(), "exhausted") {
		t.Errorf("caller's deadline: %v", err)
	}
	held[0].Release()
	if _, err := st.ListAutomations(ctx, pb.AutomationFilter{}); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	held[1].Release()
	// Every statement gave its connection back.
	if s, _ := postgres.Stats(conn); s.InUse != 0 || s.Waiting != 0 {
		t.Errorf("after the test: %+v", s)
	}
}

// TestPlanPerCall: a statement marked store.PlanPerCall is not kept as a
// prepared statement (so PostgreSQL never switches it to a generic plan);
// the same statement without the mark is.
func TestPlanPerCall(t *testing.T) {
	t.Parallel()
	db := testdb.NewPostgres(t)
	ctx := context.Background()
	pool := testdb.OpenPool(t, postgres.Config{URL: testdb.URL() + "&search_path=" + db.Schema, MaxConns: 1})
	conn := postgres.NewConn(pool) // one connection: every statement below sees the same session
	prepared := func(marker string) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%' || $1 || '%' AND statement NOT LIKE '%pg_prepared_statements%'`, marker).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for range 7 { // more than the five custom plans PostgreSQL tries first
		if _, err := conn.Exec(ctx, `SELECT count(*) FROM unnest($1::text[]) /* per_call */`, store.PlanPerCall, []string{"a", "b"}); err != nil {
			t.Fatal(err)
		}
		rows, err := conn.Query(ctx, `SELECT x FROM unnest($1::text[]) AS x /* per_call_query */`, store.PlanPerCall, []string{"a"})
		if err != nil {
			t.Fatal(err)
		}
		rows.Close()
		if _, err := conn.Exec(ctx, `SELECT count(*) FROM unnest($1::text[]) /* cached */`, []string{"a", "b"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := prepared("per_call"); n != 0 {
		t.Errorf("%d prepared statements for the per-call statements; want 0", n)
	}
	if n := prepared("cached"); n != 1 {
		t.Errorf("%d prepared statements for the unmarked statement; want 1 (the test would prove nothing)", n)
	}
}

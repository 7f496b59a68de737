package metrics

import (
	"database/sql"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Database pool statistics, read once per scrape. PostgreSQL (pgxpool) and
// SQLite (database/sql) share the names where they mean the same, so one
// dashboard serves both; the pgx-only ones say so in their help.

func dbDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "db", name), help, labels, nil)
}

var (
	dbOpen        = dbDesc("open_connections", "Open database connections (in use + idle).")
	dbIdle        = dbDesc("idle_connections", "Idle database connections.")
	dbInUse       = dbDesc("in_use_connections", "Database connections in use.")
	dbMax         = dbDesc("max_open_connections", "The pool's maximum of open connections (--db-max-conns).")
	dbWaits       = dbDesc("waits_total", "Connection requests that found the pool empty and had to wait (pgx: empty acquires).")
	dbWaitSeconds = dbDesc("wait_duration_seconds_total", "Time spent waiting for a connection because the pool was empty.")
	dbClosed      = dbDesc("closed_connections_total", "Connections the pool closed, by reason (max_idle_time, max_lifetime, max_idle).", "reason")

	dbConstructing   = dbDesc("constructing_connections", "Connections being opened (PostgreSQL only).")
	dbAcquires       = dbDesc("acquires_total", "Successful connection acquires (PostgreSQL only).")
	dbAcquireSeconds = dbDesc("acquire_duration_seconds_total", "Total time of successful connection acquires, waits included (PostgreSQL only).")
	dbCanceled       = dbDesc("canceled_acquires_total", "Connection acquires cancelled by their context (PostgreSQL only).")
	dbNew            = dbDesc("new_connections_total", "Connections opened (PostgreSQL only).")
)

// pgxCollector exports a pgxpool's Stat().
type pgxCollector struct{ pool *pgxpool.Pool }

func newPgxCollector(p *pgxpool.Pool) prometheus.Collector { return pgxCollector{p} }

func (c pgxCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dbOpen, dbIdle, dbInUse, dbMax, dbWaits, dbWaitSeconds, dbClosed,
		dbConstructing, dbAcquires, dbAcquireSeconds, dbCanceled, dbNew} {
		ch <- d
	}
}

func (c pgxCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.pool.Stat()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(dbOpen, float64(st.TotalConns()))
	gauge(dbIdle, float64(st.IdleConns()))
	gauge(dbInUse, float64(st.AcquiredConns()))
	gauge(dbMax, float64(st.MaxConns()))
	gauge(dbConstructing, float64(st.ConstructingConns()))
	counter(dbWaits, float64(st.EmptyAcquireCount()))
	counter(dbWaitSeconds, st.EmptyAcquireWaitTime().Seconds())
	counter(dbAcquires, float64(st.AcquireCount()))
	counter(dbAcquireSeconds, st.AcquireDuration().Seconds())
	counter(dbCanceled, float64(st.CanceledAcquireCount()))
	counter(dbNew, float64(st.NewConnsCount()))
	counter(dbClosed, float64(st.MaxIdleDestroyCount()), "max_idle_time")
	counter(dbClosed, float64(st.MaxLifetimeDestroyCount()), "max_lifetime")
}

// sqlCollector exports a database/sql pool's Stats().
type sqlCollector struct{ db *sql.DB }

func newSQLCollector(db *sql.DB) prometheus.Collector { return sqlCollector{db} }

func (c sqlCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dbOpen, dbIdle, dbInUse, dbMax, dbWaits, dbWaitSeconds, dbClosed} {
		ch <- d
	}
}

func (c sqlCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.db.Stats()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(dbOpen, float64(st.OpenConnections))
	gauge(dbIdle, float64(st.Idle))
	gauge(dbInUse, float64(st.InUse))
	gauge(dbMax, float64(st.MaxOpenConnections))
	counter(dbWaits, float64(st.WaitCount))
	counter(dbWaitSeconds, st.WaitDuration.Seconds())
	counter(dbClosed, float64(st.MaxIdleTimeClosed), "max_idle_time")
	counter(dbClosed, float64(st.MaxLifetimeClosed), "max_lifetime")
	counter(dbClosed, float64(st.MaxIdleClosed), "max_idle")
}

-- Engine instances and their heartbeats: an instance whose heartbeat count
-- (beats) stops moving is declared lost by the others, and its running jobs
-- are resumed at once instead of after River's rescue delay. Counting beats
-- (not comparing timestamps) keeps this immune to clock skew between hosts.
CREATE TABLE instances (
    id           TEXT        PRIMARY KEY,
    host         TEXT        NOT NULL,
    pid          INTEGER     NOT NULL,
    beats        BIGINT      NOT NULL DEFAULT 0,
    version      TEXT        NOT NULL DEFAULT '',
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    stopped_at   TIMESTAMPTZ,
    lost_at      TIMESTAMPTZ
);
CREATE INDEX instances_heartbeat_idx ON instances (heartbeat_at);

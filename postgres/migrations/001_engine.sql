-- The engine's tables. River's tables are migrated separately (river_*).

CREATE TABLE automations (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT        NOT NULL,
    version      INTEGER     NOT NULL,
    spec         JSONB       NOT NULL,
    paused       BOOLEAN     NOT NULL DEFAULT false,
    -- next_send_at is the send time of the next fire; next_fire_at is when
    -- that fire is due (send time minus lead time). The scheduler tick
    -- selects on next_fire_at.
    next_send_at TIMESTAMPTZ,
    next_fire_at TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    deleted_at   TIMESTAMPTZ
);
CREATE UNIQUE INDEX automations_name_key ON automations (name) WHERE deleted_at IS NULL;
CREATE INDEX automations_due_idx ON automations (next_fire_at) WHERE deleted_at IS NULL AND NOT paused;

CREATE TABLE automation_versions (
    automation_id BIGINT      NOT NULL REFERENCES automations (id),
    version       INTEGER     NOT NULL,
    spec          JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (automation_id, version)
);

CREATE TABLE executions (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    automation_id      BIGINT      NOT NULL REFERENCES automations (id),
    automation_version INTEGER     NOT NULL,
    send_at            TIMESTAMPTZ NOT NULL,
    audience_at        TIMESTAMPTZ NOT NULL,
    cancel_deadline    TIMESTAMPTZ NOT NULL,
    trigger            TEXT        NOT NULL,
    status             TEXT        NOT NULL,
    reason             TEXT        NOT NULL DEFAULT '',
    phase              TEXT        NOT NULL DEFAULT '',
    -- waiting_for: with overlap policy queue, the execution this one starts
    -- after. job_id: the River job of the current (or next) phase.
    waiting_for        BIGINT,
    job_id             BIGINT,
    error              JSONB,
    created_at         TIMESTAMPTZ NOT NULL,
    started_at         TIMESTAMPTZ,
    finished_at        TIMESTAMPTZ,
    cancelled_at       TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL,
    -- One execution per send time: however many instances tick, a fire
    -- happens once.
    CONSTRAINT executions_automation_send_at_key UNIQUE (automation_id, send_at)
);
CREATE INDEX executions_active_idx ON executions (automation_id, id)
    WHERE status IN ('scheduled', 'running', 'awaiting_send');
CREATE INDEX executions_status_idx ON executions (status, id);

CREATE TABLE execution_phases (
    execution_id BIGINT  NOT NULL REFERENCES executions (id),
    phase        TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    -- failures counts recoverable failures of this phase's own work (not
    -- restarts): the budget for retries.
    failures     INTEGER NOT NULL DEFAULT 0,
    instance     TEXT    NOT NULL DEFAULT '',
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    metrics      JSONB,
    note         TEXT    NOT NULL DEFAULT '',
    error        JSONB,
    PRIMARY KEY (execution_id, phase)
);

CREATE TABLE execution_metrics (
    execution_id BIGINT NOT NULL REFERENCES executions (id),
    name         TEXT   NOT NULL,
    value        BIGINT NOT NULL,
    PRIMARY KEY (execution_id, name)
);

CREATE TABLE recipients (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id BIGINT NOT NULL REFERENCES executions (id),
    user_id      TEXT   NOT NULL,
    token        TEXT   NOT NULL DEFAULT '',
    platform     TEXT   NOT NULL DEFAULT '',
    data         JSONB,
    CONSTRAINT recipients_execution_user_token_key UNIQUE (execution_id, user_id, token)
);
CREATE INDEX recipients_execution_idx ON recipients (execution_id, id);

-- The delivery ledger: one row per execution, audience and device, written
-- around the provider call.
CREATE TABLE deliveries (
    execution_id BIGINT      NOT NULL REFERENCES executions (id),
    audience     TEXT        NOT NULL,
    user_id      TEXT        NOT NULL,
    token        TEXT        NOT NULL,
    state        TEXT        NOT NULL,
    reason       TEXT        NOT NULL DEFAULT '',
    attempts     INTEGER     NOT NULL DEFAULT 0,
    instance     TEXT        NOT NULL DEFAULT '',
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (execution_id, audience, user_id, token)
);
CREATE INDEX deliveries_state_idx ON deliveries (execution_id, audience, state);

CREATE TABLE events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            TIMESTAMPTZ NOT NULL,
    automation_id BIGINT,
    execution_id  BIGINT,
    type          TEXT        NOT NULL,
    phase         TEXT        NOT NULL DEFAULT '',
    message       TEXT        NOT NULL,
    data          JSONB
);
CREATE INDEX events_execution_idx ON events (execution_id, id);
CREATE INDEX events_automation_idx ON events (automation_id, id);

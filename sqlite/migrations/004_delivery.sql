-- Delivery: provider codes per ledger row, frequency caps (by user over
-- time), known invalid tokens, live sends fanned out as batches, and rate
-- windows shared by every instance.

ALTER TABLE deliveries ADD COLUMN code TEXT NOT NULL DEFAULT '';
-- Frequency caps count a user's recent pushes across executions.
CREATE INDEX deliveries_user_idx ON deliveries (user_id, updated_at);

-- The tags of the automation version an execution runs, as ",a,b," (for
-- frequency caps scoped to a tag).
ALTER TABLE executions ADD COLUMN tags TEXT NOT NULL DEFAULT '';

-- Tokens a provider called invalid: never sent to again.
CREATE TABLE invalid_tokens (
    token        TEXT        PRIMARY KEY,
    provider     TEXT        NOT NULL,
    user_id      TEXT        NOT NULL,
    code         TEXT        NOT NULL DEFAULT '',
    reason       TEXT        NOT NULL DEFAULT '',
    execution_id BIGINT,
    created_at   TEXT        NOT NULL
);
CREATE INDEX invalid_tokens_created_idx ON invalid_tokens (created_at);

-- A live send's batches: recipient id ranges, each sent by one job.
CREATE TABLE send_batches (
    execution_id BIGINT      NOT NULL REFERENCES executions (id),
    seq          INTEGER     NOT NULL,
    first_id     BIGINT      NOT NULL,
    last_id      BIGINT      NOT NULL,
    size         INTEGER     NOT NULL,
    state        TEXT        NOT NULL DEFAULT 'pending',
    attempted    BIGINT      NOT NULL DEFAULT 0,
    failed       BIGINT      NOT NULL DEFAULT 0,
    failures     INTEGER     NOT NULL DEFAULT 0,
    instance     TEXT        NOT NULL DEFAULT '',
    note         TEXT        NOT NULL DEFAULT '',
    updated_at   TEXT        NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

-- Rate limits across instances: sends granted per key and second.
CREATE TABLE rate_windows (
    key          TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    used         BIGINT NOT NULL,
    PRIMARY KEY (key, window_start)
);

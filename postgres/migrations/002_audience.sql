-- Audience sources: recipients carry their time zone and locale; every
-- audience run keeps debug artefacts (stderr, first and last rows, exit
-- status, bad rows) until they expire.

ALTER TABLE recipients ADD COLUMN timezone TEXT NOT NULL DEFAULT '';
ALTER TABLE recipients ADD COLUMN locale TEXT NOT NULL DEFAULT '';
CREATE INDEX recipients_tokenless_idx ON recipients (execution_id, id) WHERE token = '';

CREATE TABLE execution_artifacts (
    execution_id BIGINT      NOT NULL REFERENCES executions (id),
    name         TEXT        NOT NULL,
    content      TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (execution_id, name)
);
CREATE INDEX execution_artifacts_expiry_idx ON execution_artifacts (expires_at);

-- Audience previews: phase 1 run without sending. Each preview writes into a
-- scratch list shaped like recipients (execution_id holds the preview id),
-- removed when the preview is done.

CREATE TABLE previews (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    automation_id BIGINT      NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE preview_recipients (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id BIGINT NOT NULL,
    user_id      TEXT   NOT NULL,
    token        TEXT   NOT NULL DEFAULT '',
    platform     TEXT   NOT NULL DEFAULT '',
    timezone     TEXT   NOT NULL DEFAULT '',
    locale       TEXT   NOT NULL DEFAULT '',
    data         JSONB,
    CONSTRAINT preview_recipients_key UNIQUE (execution_id, user_id, token)
);

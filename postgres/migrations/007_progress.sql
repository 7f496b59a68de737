-- Live-send progress without counting the ledger: each batch keeps its
-- ledger rows' outcomes by state, added by its rounds as they end.
ALTER TABLE send_batches ADD COLUMN ledger_sent BIGINT NOT NULL DEFAULT 0;
ALTER TABLE send_batches ADD COLUMN ledger_failed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE send_batches ADD COLUMN ledger_invalid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE send_batches ADD COLUMN ledger_capped BIGINT NOT NULL DEFAULT 0;
ALTER TABLE send_batches ADD COLUMN ledger_unknown BIGINT NOT NULL DEFAULT 0;

-- Health: recorded errors (error events) are listed newest first, and
-- counted over a recent window.
CREATE INDEX events_type_idx ON events (type, id);
CREATE INDEX events_type_at_idx ON events (type, at);

-- Health: recorded errors (error events) are read newest first, by type.
CREATE INDEX events_type_idx ON events (type, id);

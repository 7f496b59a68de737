package pushblaster

import (
	"context"
	"log/slog"
)

// logAttrsKey is the context key of WithLogAttrs.
type logAttrsKey struct{}

// WithLogAttrs returns ctx carrying attrs for the log lines written on
// the caller's behalf by code that knows nothing of it: the engine passes
// a send's execution_id, automation_id and phase to a Sender this way, so
// that the provider's own lines (fcm.retry, apns.unknown, …) say which
// execution they belong to. They reach a line only through a handler
// wrapped in ContextHandler, and only when logged with that context
// (slog's …Context methods and LogAttrs).
func WithLogAttrs(ctx context.Context, attrs ...slog.Attr) context.Context {
	if prev, ok := ctx.Value(logAttrsKey{}).([]slog.Attr); ok {
		attrs = append(append([]slog.Attr(nil), prev...), attrs...)
	}
	return context.WithValue(ctx, logAttrsKey{}, attrs)
}

// ContextHandler adds the attributes a record's context carries
// (WithLogAttrs) to the record.
type ContextHandler struct{ slog.Handler }

// Handle implements slog.Handler.
func (h ContextHandler) Handle(ctx context.Context, r slog.Record) error {
	if attrs, ok := ctx.Value(logAttrsKey{}).([]slog.Attr); ok && len(attrs) > 0 {
		r = r.Clone()
		r.AddAttrs(attrs...)
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h ContextHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return ContextHandler{h.Handler.WithAttrs(as)}
}

// WithGroup implements slog.Handler.
func (h ContextHandler) WithGroup(name string) slog.Handler {
	return ContextHandler{h.Handler.WithGroup(name)}
}

package pushblaster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	pb "github.com/pushblaster/pushblaster"
)

// TestContextHandler: a line logged with a context that carries
// attributes gets them, nested contexts add up, and a line logged without
// one is left alone.
func TestContextHandler(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := slog.New(pb.ContextHandler{Handler: slog.NewJSONHandler(&buf, nil)}).With("provider", "fcm")
	ctx := pb.WithLogAttrs(context.Background(), slog.Int64("execution_id", 7))
	ctx = pb.WithLogAttrs(ctx, slog.String("phase", "live_send"))
	log.InfoContext(ctx, "with", "event", "fcm.retry")
	log.Info("without")
	dec := json.NewDecoder(&buf)
	var with, without map[string]any
	if err := dec.Decode(&with); err != nil {
		t.Fatal(err)
	}
	if err := dec.Decode(&without); err != nil {
		t.Fatal(err)
	}
	if with["execution_id"] != float64(7) || with["phase"] != "live_send" || with["provider"] != "fcm" || with["event"] != "fcm.retry" {
		t.Errorf("line with a context: %v", with)
	}
	if _, ok := without["execution_id"]; ok || without["provider"] != "fcm" {
		t.Errorf("line without: %v", without)
	}
}

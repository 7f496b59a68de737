package webhook

import (
	"context"
	"errors"
	"testing"
	"time"
)

// The default sleep must give up at once when the send is stopped: a
// Retry-After can ask for hours.
func TestSleepReturnsOnCancel(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- sleep(ctx, 24*time.Hour) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("sleep after cancel = %v, want context.Canceled", err)
	}
	if err := sleep(context.Background(), time.Nanosecond); err != nil {
		t.Errorf("sleep(1ns) = %v", err)
	}
}

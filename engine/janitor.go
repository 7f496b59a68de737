package engine

import (
	"context"
	"time"

	"github.com/riverqueue/river"
)

// janitorArgs is the hourly housekeeping job: expired debug artefacts go.
type janitorArgs struct{}

func (janitorArgs) Kind() string { return "pushblaster.janitor" }

type janitorWorker struct {
	river.WorkerDefaults[janitorArgs]
	e *Engine
}

func (w *janitorWorker) Timeout(*river.Job[janitorArgs]) time.Duration { return 5 * time.Minute }

func (w *janitorWorker) Work(ctx context.Context, _ *river.Job[janitorArgs]) error {
	n, err := w.e.store.DeleteExpiredArtifacts(ctx, w.e.now())
	if err != nil {
		w.e.log.Error("cannot delete expired artefacts", "event", "janitor.error", "error", err)
		return err
	}
	if n > 0 {
		w.e.log.Info("expired artefacts deleted", "event", "janitor.artifacts", "deleted", n)
	}
	return nil
}

package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivertype"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// jobs is the engine's view of River, free of River's transaction type
// parameter: store transactions carry the driver's transaction (Tx.Raw).
type jobs interface {
	// insert enqueues args in tx to run at `at` (now if at is zero or past).
	insert(ctx context.Context, tx *store.Tx, args river.JobArgs, at time.Time) (int64, error)
	// complete marks a running phase job completed in tx, so that the phase
	// record and the job's completion commit together.
	complete(ctx context.Context, tx *store.Tx, job *rivertype.JobRow) error
	// cancel cancels a job in tx: a waiting one never runs, a running one
	// has its context cancelled.
	cancel(ctx context.Context, tx *store.Tx, id int64) error
	// rescue makes the running jobs last attempted by instance runnable
	// again at once, and returns how many.
	rescue(ctx context.Context, instance string, now time.Time) (int, error)
	start(ctx context.Context) error
	stop(ctx context.Context) error
	stopAndCancel(ctx context.Context) error
}

type riverJobs[TDriver riverdriver.Driver[TTx], TTx any] struct {
	client *river.Client[TTx]
	clock  pb.Clock
}

func newRiverJobs[TDriver riverdriver.Driver[TTx], TTx any](driver TDriver, cfg *river.Config, clock pb.Clock) (*riverJobs[TDriver, TTx], error) {
	client, err := river.NewClient[TTx](driver, cfg)
	if err != nil {
		return nil, pb.Errorf(pb.KindInternal, "create River client: %v", err)
	}
	return &riverJobs[TDriver, TTx]{client: client, clock: clock}, nil
}

func (r *riverJobs[TDriver, TTx]) rawTx(tx *store.Tx) TTx {
	raw, ok := tx.Raw().(TTx)
	if !ok {
		panic(fmt.Sprintf("store transaction is %T, River expects %T", tx.Raw(), raw))
	}
	return raw
}

func (r *riverJobs[TDriver, TTx]) insert(ctx context.Context, tx *store.Tx, args river.JobArgs, at time.Time) (int64, error) {
	opts := &river.InsertOpts{}
	switch a := args.(type) {
	case phaseArgs:
		opts.Priority = phasePriority(a.Phase)
	case batchArgs:
		opts.Priority = phasePriority(pb.PhaseLiveSend)
		opts.Queue = sendQueue(a.Provider)
	}
	if !at.IsZero() && at.After(r.clock.Now()) {
		opts.ScheduledAt = at
	}
	res, err := r.client.InsertTx(ctx, r.rawTx(tx), args, opts)
	if err != nil {
		return 0, pb.WrapError(pb.KindDatabase, err, "enqueue %s job", args.Kind())
	}
	return res.Job.ID, nil
}

func (r *riverJobs[TDriver, TTx]) complete(ctx context.Context, tx *store.Tx, job *rivertype.JobRow) error {
	// JobCompleteTx reads only the row; the args type is irrelevant.
	if _, err := river.JobCompleteTx[TDriver](ctx, r.rawTx(tx), &river.Job[phaseArgs]{JobRow: job}); err != nil {
		return pb.WrapError(pb.KindDatabase, err, "complete job %d", job.ID)
	}
	return nil
}

func (r *riverJobs[TDriver, TTx]) cancel(ctx context.Context, tx *store.Tx, id int64) error {
	if _, err := r.client.JobCancelTx(ctx, r.rawTx(tx), id); err != nil && err != river.ErrNotFound {
		return pb.WrapError(pb.KindDatabase, err, "cancel job %d", id)
	}
	return nil
}

func (r *riverJobs[TDriver, TTx]) rescue(ctx context.Context, instance string, now time.Time) (int, error) {
	exec := r.client.Driver().GetExecutor()
	// Every job running now, whatever clock stamped it: the instance is
	// what selects them.
	horizon := now.AddDate(100, 0, 0)
	var (
		after int64
		total int
	)
	for {
		stuck, err := exec.JobGetStuck(ctx, &riverdriver.JobGetStuckParams{AfterID: after, Max: 1000, StuckHorizon: horizon})
		if err != nil {
			return total, pb.WrapError(pb.KindDatabase, err, "list running jobs")
		}
		p := &riverdriver.JobRescueManyParams{StuckHorizon: horizon}
		for _, j := range stuck {
			after = j.ID
			if len(j.AttemptedBy) == 0 || j.AttemptedBy[len(j.AttemptedBy)-1] != instance {
				continue
			}
			msg, _ := json.Marshal(rivertype.AttemptError{At: now, Attempt: j.Attempt,
				Error: "resumed: its instance " + instance + " was declared lost"})
			p.ID = append(p.ID, j.ID)
			p.Error = append(p.Error, msg)
			p.FinalizedAt = append(p.FinalizedAt, nil)
			p.ScheduledAt = append(p.ScheduledAt, now)
			p.State = append(p.State, string(rivertype.JobStateAvailable))
		}
		if len(p.ID) > 0 {
			if _, err := exec.JobRescueMany(ctx, p); err != nil {
				return total, pb.WrapError(pb.KindDatabase, err, "resume the jobs of instance %s", instance)
			}
			total += len(p.ID)
		}
		if len(stuck) < 1000 {
			return total, nil
		}
	}
}

func (r *riverJobs[TDriver, TTx]) start(ctx context.Context) error { return r.client.Start(ctx) }
func (r *riverJobs[TDriver, TTx]) stop(ctx context.Context) error  { return r.client.Stop(ctx) }
func (r *riverJobs[TDriver, TTx]) stopAndCancel(ctx context.Context) error {
	return r.client.StopAndCancel(ctx)
}

// phasePriority puts live sends first when many jobs are due at once (River
// runs priority 1 before 2), and cleanup last.
func phasePriority(p pb.Phase) int {
	switch p {
	case pb.PhaseLiveSend:
		return 1
	case pb.PhaseCleanup:
		return 3
	}
	return 2
}

// dueAtMiddleware inserts timed jobs as available (not scheduled) with their
// future scheduled_at. River's fetch only takes available jobs whose
// scheduled_at has passed, so such a job starts within one fetch poll of its
// time on any instance, instead of waiting for the leader's scheduler pass
// (every 5 s). This is what keeps live sends on time even across a leader
// change.
type dueAtMiddleware struct{ river.MiddlewareDefaults }

func (dueAtMiddleware) InsertMany(ctx context.Context, params []*rivertype.JobInsertParams, doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	for _, p := range params {
		if p.State == rivertype.JobStateScheduled && (p.Kind == phaseArgs{}.Kind() || p.Kind == batchArgs{}.Kind()) {
			p.State = rivertype.JobStateAvailable
		}
	}
	return doInner(ctx)
}

// riverTime lets River share the engine's clock, so that an injected clock
// moves River's notion of "due" too.
type riverTime struct{ clock pb.Clock }

func (t riverTime) Now() time.Time { return t.clock.Now() }
func (t riverTime) NowOrNil() *time.Time {
	now := t.clock.Now()
	return &now
}

// quietHandler drops River's info logs (per-job chatter) and keeps warnings.
func quietLogger(l *slog.Logger) *slog.Logger {
	return slog.New(levelFilter{l.Handler(), slog.LevelWarn}).With("component", "river", "event", "river")
}

type levelFilter struct {
	slog.Handler
	min slog.Level
}

func (f levelFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= f.min && f.Handler.Enabled(ctx, l)
}
func (f levelFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return levelFilter{f.Handler.WithAttrs(a), f.min}
}
func (f levelFilter) WithGroup(n string) slog.Handler {
	return levelFilter{f.Handler.WithGroup(n), f.min}
}

package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// Every instance beats (increments its count in the instances table) every
// HeartbeatInterval and watches the others' counts. An instance whose count
// has not moved for LostAfter, by the watcher's own monotonic clock, is
// declared lost, once, by whichever instance gets there first; that one
// hands the lost instance's running jobs back to River at once, so a
// killed instance's batches resume within about LostAfter instead of
// River's rescue delay (RescueAfter). Counting beats rather than comparing
// timestamps keeps this immune to clock skew between hosts (and to a test's
// clock).
//
// An instance that was only slow (a long pause, a lost database connection)
// learns at its next beat that it was declared lost: it stops its running
// jobs, which now run elsewhere, and registers again. The ledger keeps a
// job that ran twice from sending twice.

// errFenced is the cause given to this instance's running jobs when it
// learns that the others declared it lost.
var errFenced = errors.New("this instance was declared lost by the others; its jobs resumed elsewhere")

// observed is the last beat count seen of another instance and when it
// changed.
type observed struct {
	beats int64
	since time.Time // monotonic, local
}

// register records this instance as alive.
func (e *Engine) register(ctx context.Context) error {
	host, _ := os.Hostname()
	return e.store.RegisterInstance(ctx, store.Instance{ID: e.cfg.InstanceID, Host: host, PID: os.Getpid(),
		Version: e.cfg.Version, StartedAt: e.now()})
}

// heartbeatLoop beats and watches until ctx ends.
func (e *Engine) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(e.cfg.HeartbeatInterval)
	defer t.Stop()
	seen := map[string]observed{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.beat(ctx, seen)
		}
	}
}

// beat records a heartbeat and declares silent instances lost.
func (e *Engine) beat(ctx context.Context, seen map[string]observed) {
	lost, err := e.store.Heartbeat(ctx, e.cfg.InstanceID, e.now())
	if err != nil {
		if ctx.Err() == nil {
			e.dbFailed(err) // health.go
			e.log.Warn("heartbeat failed; other instances declare this one lost if it lasts", "event", "instance.heartbeat_error",
				"error", err, "lost_after", e.cfg.LostAfter.String())
		}
		return
	}
	e.dbAnswered(ctx) // records an outage that just ended (health.go)
	if lost {
		e.log.Error("this instance was declared lost by the others (its heartbeats stopped for longer than lost_after): stopping its running jobs, which resumed elsewhere, and rejoining",
			"event", "instance.fenced", "lost_after", e.cfg.LostAfter.String())
		e.cancelAllLocal(errFenced)
		if err := e.register(ctx); err != nil {
			e.log.Error("cannot register again", "event", "instance.register_error", "error", err)
		}
		return
	}
	live, err := e.store.LiveInstances(ctx)
	if err != nil {
		return
	}
	now := time.Now()
	present := map[string]bool{}
	for _, in := range live {
		present[in.ID] = true
		if in.ID == e.cfg.InstanceID {
			continue
		}
		o, ok := seen[in.ID]
		if !ok || o.beats != in.Beats {
			seen[in.ID] = observed{beats: in.Beats, since: now}
			continue
		}
		if now.Sub(o.since) < e.cfg.LostAfter {
			continue
		}
		delete(seen, in.ID)
		e.takeOver(ctx, in)
	}
	for id := range seen {
		if !present[id] {
			delete(seen, id)
		}
	}
}

// takeOver declares in lost and hands its running jobs back to River.
func (e *Engine) takeOver(ctx context.Context, in store.Instance) {
	won, err := e.store.MarkLost(ctx, in.ID, in.Beats, e.now())
	if err != nil || !won {
		return // it beat meanwhile, or another instance took over
	}
	n, err := e.jobs.rescue(ctx, in.ID, e.clock.Now())
	if err != nil {
		e.log.Error("cannot resume the jobs of a lost instance; River rescues them after rescue_after", "event", "instance.takeover_error",
			"lost_instance", in.ID, "error", err, "rescue_after", e.cfg.RescueAfter.String())
		return
	}
	msg := fmt.Sprintf("instance %s (host %s, pid %d) lost: no heartbeat for %s (last at %s); %d running jobs resumed on the others",
		in.ID, in.Host, in.PID, e.cfg.LostAfter, in.HeartbeatAt.Format(time.RFC3339), n)
	e.log.Warn(msg, "event", "instance.lost", "lost_instance", in.ID, "jobs", n)
	e.recordEvent(ctx, &pb.Event{Type: pb.EventError, Message: msg,
		Data: map[string]string{"kind": string(pb.KindInternal), "instance": in.ID, "jobs": fmt.Sprint(n)}})
}

// cancelAllLocal cancels every phase and batch running on this instance.
func (e *Engine) cancelAllLocal(cause error) {
	e.mu.Lock()
	var cancels []context.CancelCauseFunc
	for _, m := range e.running {
		for _, c := range m {
			cancels = append(cancels, c)
		}
	}
	e.mu.Unlock()
	for _, c := range cancels {
		c(cause)
	}
}

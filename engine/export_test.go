package engine

import (
	"context"

	pb "github.com/pushblaster/pushblaster"
)

// FreezeHeartbeat stops e's heartbeat while its jobs go on: to the other
// instances it looks like a process that was killed.
func FreezeHeartbeat(e *Engine) {
	e.mu.Lock()
	stop := e.stopBeat
	e.mu.Unlock()
	stop()
	e.beating.Wait()
}

// HasCode reports whether a problem with code is among ps.
var HasCode = hasCode

// RecordEvent stores an event as the engine does (recordEvent).
func (e *Engine) RecordEvent(ctx context.Context, ev *pb.Event) { e.recordEvent(ctx, ev) }

// RoundsInFlight is how many rounds of provider may be between claim and
// record at once (roundsInFlight).
func (e *Engine) RoundsInFlight(provider string) int { return e.roundsInFlight(provider) }

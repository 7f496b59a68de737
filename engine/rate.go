package engine

import (
	"context"
	"fmt"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// Rate limits hold over every instance: each second's sends are counted in
// the store (rate_windows), per automation (delivery.rate_per_second) and
// per provider (Config.ProviderRates). A round takes what the current
// second has left and waits for the next second when nothing is left.

// rateLimit is one limit that applies to a send.
type rateLimit struct {
	key   string
	limit int
}

func (e *Engine) rateLimits(a *pb.Automation) []rateLimit {
	var out []rateLimit
	if r := a.Delivery.RatePerSecond; r > 0 {
		out = append(out, rateLimit{fmt.Sprintf("automation:%d", a.ID), r})
	}
	if r := e.cfg.ProviderRates[a.Delivery.Provider]; r > 0 {
		out = append(out, rateLimit{"provider:" + a.Delivery.Provider, r})
	}
	return out
}

// rateWait is the longest real-time pause between looks at the clock
// while waiting for the next second (the clock may be a test's).
const rateWait = 20 * time.Millisecond

// waitRate returns how many of n sends may go now, waiting (until ctx ends)
// while the current second is used up.
func (e *Engine) waitRate(ctx context.Context, a *pb.Automation, n int) (int, error) {
	limits := e.rateLimits(a)
	if len(limits) == 0 {
		return n, nil
	}
	waited := false
	for {
		window := e.clock.Now().Unix()
		var granted int
		err := e.store.InTx(ctx, func(tx *store.Tx) error {
			granted = n
			taken := make([]int, 0, len(limits))
			for _, l := range limits {
				g, err := tx.TakeRate(ctx, l.key, window, l.limit, granted)
				if err != nil {
					return err
				}
				taken = append(taken, g)
				granted = g
				if g == 0 {
					break
				}
			}
			// Give back what an earlier limit granted beyond a later one.
			for i, g := range taken {
				if g > granted {
					if err := tx.GiveBackRate(ctx, limits[i].key, window, g-granted); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		if granted > 0 {
			return granted, nil
		}
		if !waited {
			waited = true
			e.log.Debug("rate limit reached; waiting for the next second", "event", "send.rate_wait", "automation_id", a.ID)
		}
		if window%60 == 0 {
			_ = e.store.PruneRates(ctx, window-60) // best effort; old windows are never read
		}
		for e.clock.Now().Unix() == window {
			wait := min(time.Until(time.Unix(window+1, 0)), rateWait)
			if e.cfg.Clock != pb.SystemClock {
				wait = time.Millisecond
			}
			t := time.NewTimer(max(wait, time.Millisecond))
			select {
			case <-ctx.Done():
				t.Stop()
				return 0, pb.AsError(context.Cause(ctx))
			case <-t.C:
			}
		}
	}
}

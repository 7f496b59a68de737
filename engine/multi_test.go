package engine_test

import (
	"fmt"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/postgres"
	"github.com/pushblaster/pushblaster/store"
)

// TestTwoEnginesExactlyOnce: two engines on one PostgreSQL database, each
// with its own pool, tick and work concurrently: 200 fires of 20
// automations, each executed exactly once, each recipient pushed once per
// execution.
func TestTwoEnginesExactlyOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	st2 := store.New(postgres.NewConn(b.db.Reopen(t)))
	eng2 := b.newEngine(t, st2)
	b.start(eng2)

	const automations, fires = 20, 10
	start := time.Date(2026, 6, 1, 10, 0, 0, 0, time.UTC)
	b.clock.Set(start.Add(-30 * time.Second))
	var ids []int64
	for i := range automations {
		a := automation(fmt.Sprintf("minutely-%02d", i))
		a.Schedule = pb.Schedule{Cron: "* * * * *", Timezone: "UTC"}
		a.LeadTime = pb.DurationOf(0)
		a.Audience.Recipients = recipients(fmt.Sprintf("a%02d-", i), 3)
		ids = append(ids, b.create(a).ID)
	}
	for f := range fires {
		b.clock.Set(start.Add(time.Duration(f) * time.Minute))
		for _, id := range ids {
			list := b.waitExecutions(id, f+1)
			b.waitStatus(list[0].ID, pb.StatusCompleted)
		}
	}

	instances := map[string]int{}
	for _, id := range ids {
		list := b.executions(id)
		if len(list) != fires {
			t.Fatalf("automation %d has %d executions, want %d", id, len(list), fires)
		}
		seen := map[time.Time]bool{}
		for _, ex := range list {
			if seen[ex.SendAt] {
				t.Errorf("automation %d fired twice at %v", id, ex.SendAt)
			}
			seen[ex.SendAt] = true
			if ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 3 {
				t.Errorf("execution %d: %s %v", ex.ID, describe(ex), ex.Metrics)
			}
			instances[ex.PhaseRecord(pb.PhaseLiveSend).Instance]++
		}
	}
	// Each recipient got exactly one push per fire.
	for i := range automations {
		for r := 1; r <= 3; r++ {
			user := fmt.Sprintf("a%02d-%d", i, r)
			if n := b.sender.count(user); n != fires {
				t.Errorf("%s got %d pushes, want %d", user, n, fires)
			}
		}
	}
	if b.sender.total() != automations*fires*4 {
		t.Errorf("total pushes %d, want %d", b.sender.total(), automations*fires*4)
	}
	if len(instances) != 2 {
		t.Logf("live sends per instance: %v (work was not shared this run)", instances)
	}
}

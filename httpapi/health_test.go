package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/httpapi"
)

// TestHealthReport: GET /api/health answers 503 with the report while the
// engine is not running (critical) and 200 once it runs and is healthy.
func TestHealthReport(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	var h pb.Health
	expect(t, a.do("GET", "/api/health", nil), http.StatusServiceUnavailable, &h)
	if h.Status != pb.HealthCritical || len(h.Problems) == 0 || h.Problems[0].Code != pb.ProblemEngineStopped || len(h.Reasons) == 0 || h.InstanceID == "" {
		t.Fatalf("before start: %+v", h)
	}
	a.start()
	waitFor(t, "healthy", func() (bool, string) {
		h = pb.Health{}
		r := a.do("GET", "/api/health", nil)
		expect(t, r, r.status, &h)
		return r.status == http.StatusOK && h.Status == pb.HealthHealthy && h.LastRestoration != nil, fmt.Sprintf("%d %s %v", r.status, h.Status, h.Reasons)
	})
	if !h.Database.Reachable || h.Database.Dialect != "sqlite" || h.ScheduledAutomations == nil || h.ActiveExecutions == nil ||
		len(h.Instances) != 1 || !h.Engine.Running || h.Reasons == nil || h.RecentErrors == nil {
		t.Errorf("healthy report: %+v", h)
	}
}

// TestErrorsEndpoint: recorded errors page newest first; filters are
// checked and a bad one names the field.
func TestErrorsEndpoint(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	ctx := context.Background()
	var ids []int64
	for i := range 5 {
		kind := pb.KindScript
		if i%2 == 1 {
			kind = pb.KindDatabase
		}
		ev := &pb.Event{At: a.clock.Now(), Type: pb.EventError, Message: fmt.Sprintf("error %d", i), Data: map[string]string{"kind": string(kind)}}
		if err := a.store.InsertEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, ev.ID)
	}
	// Other events are not errors.
	if err := a.store.InsertEvent(ctx, &pb.Event{At: a.clock.Now(), Type: pb.EventLog, Message: "just a log"}); err != nil {
		t.Fatal(err)
	}
	var page httpapi.ErrorList
	expect(t, a.do("GET", "/api/errors?limit=2", nil), http.StatusOK, &page)
	if len(page.Errors) != 2 || page.Errors[0].ID != ids[4] || page.Errors[1].ID != ids[3] || page.NextBeforeID != ids[3] ||
		page.Errors[0].Kind != pb.KindScript || !page.Errors[0].Stored || page.Errors[0].Message != "error 4" {
		t.Fatalf("page 1: %+v", page)
	}
	var rest httpapi.ErrorList
	expect(t, a.do("GET", fmt.Sprintf("/api/errors?limit=10&before_id=%d", page.NextBeforeID), nil), http.StatusOK, &rest)
	if len(rest.Errors) != 3 || rest.Errors[0].ID != ids[2] || rest.NextBeforeID != 0 {
		t.Fatalf("page 2: %+v", rest)
	}
	var db httpapi.ErrorList
	expect(t, a.do("GET", "/api/errors?kind=database", nil), http.StatusOK, &db)
	if len(db.Errors) != 2 || db.Errors[0].Kind != pb.KindDatabase || db.Errors[1].Kind != pb.KindDatabase {
		t.Fatalf("kind database: %+v", db)
	}
	for q, f := range map[string]string{"kind=oops": "kind", "limit=0": "limit", "before_id=x": "before_id", "execution_id=-1": "execution_id"} {
		e := expectError(t, a.do("GET", "/api/errors?"+q, nil), http.StatusBadRequest, pb.KindValidation)
		field(t, e, f)
	}
}

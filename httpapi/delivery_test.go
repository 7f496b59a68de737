package httpapi_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/httpapi"
	"github.com/pushblaster/pushblaster/store"
)

func TestDeliveriesLedger(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	a.start()
	def := definition("ledger")
	def["lead_time"] = "0s"
	auto := a.create(def)
	var ex pb.Execution
	expect(t, a.do("POST", fmt.Sprintf("/api/automations/%d/run", auto.ID), nil), http.StatusCreated, &ex)
	waitFor(t, "the execution to complete", func() (bool, string) {
		got := a.execution(ex.ID)
		return got.Status == pb.StatusCompleted, string(got.Status)
	})
	path := fmt.Sprintf("/api/executions/%d/deliveries", ex.ID)
	var page httpapi.DeliveryList
	expect(t, a.do("GET", path+"?limit=2", nil), http.StatusOK, &page)
	if len(page.Deliveries) != 2 || page.NextCursor == "" || page.Deliveries[0].UserID != "u1" || page.Deliveries[0].State != pb.DeliverySent || page.Deliveries[0].Attempts != 1 {
		t.Fatalf("first page = %+v", page)
	}
	var next httpapi.DeliveryList
	expect(t, a.do("GET", path+"?limit=2&cursor="+page.NextCursor, nil), http.StatusOK, &next)
	if len(next.Deliveries) != 1 || next.Deliveries[0].UserID != "u3" || next.NextCursor != "" {
		t.Fatalf("second page = %+v", next)
	}
	var failed httpapi.DeliveryList
	expect(t, a.do("GET", path+"?state=failed&audience=live", nil), http.StatusOK, &failed)
	if len(failed.Deliveries) != 0 {
		t.Errorf("failed = %+v", failed)
	}
	e := expectError(t, a.do("GET", path+"?state=delivered&audience=prod", nil), http.StatusBadRequest, pb.KindValidation)
	if field(t, e, "state") == "" || field(t, e, "audience") == "" {
		t.Errorf("fields = %v", fieldNames(e))
	}
	e = expectError(t, a.do("GET", path+"?cursor=nonsense", nil), http.StatusBadRequest, pb.KindValidation)
	if field(t, e, "cursor") == "" {
		t.Errorf("fields = %v", fieldNames(e))
	}
	expectError(t, a.do("GET", "/api/executions/999/deliveries", nil), http.StatusNotFound, pb.KindNotFound)
}

func TestInvalidTokensAPI(t *testing.T) {
	t.Parallel()
	a := newAPI(t, httpapi.Options{})
	t0 := time.Date(2026, 6, 1, 7, 0, 0, 0, time.UTC)
	if err := a.store.AddInvalidTokens(t.Context(), []store.InvalidToken{
		{Token: "dead-1", Provider: "fcm", UserID: "u1", Code: pb.CodeUnregistered, Reason: "UNREGISTERED", ExecutionID: 3, CreatedAt: t0},
		{Token: "dead-2", Provider: "apns", UserID: "u2", Code: pb.CodeUnregistered, Reason: "410 Unregistered", CreatedAt: t0.Add(time.Minute)},
		{Token: "dead-3", Provider: "fcm", UserID: "u1", CreatedAt: t0.Add(2 * time.Minute)},
	}); err != nil {
		t.Fatal(err)
	}
	var all []pb.InvalidToken
	cursor := ""
	for pages := 0; pages < 5; pages++ {
		var page httpapi.InvalidTokenList
		expect(t, a.do("GET", "/api/invalid-tokens?limit=2&cursor="+cursor, nil), http.StatusOK, &page)
		all = append(all, page.InvalidTokens...)
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	if len(all) != 3 || all[0].Token != "dead-3" || all[2].Token != "dead-1" || all[2].ExecutionID != 3 || all[2].Reason != "UNREGISTERED" {
		t.Fatalf("paged = %+v", all)
	}
	var byUser httpapi.InvalidTokenList
	expect(t, a.do("GET", "/api/invalid-tokens?user_id=u1&provider=fcm", nil), http.StatusOK, &byUser)
	if len(byUser.InvalidTokens) != 2 {
		t.Errorf("u1 on fcm = %+v", byUser)
	}
	expect(t, a.do("DELETE", "/api/invalid-tokens/dead-1", nil), http.StatusNoContent, nil)
	expectError(t, a.do("DELETE", "/api/invalid-tokens/dead-1", nil), http.StatusNotFound, pb.KindNotFound)
	if known, _ := a.store.KnownInvalid(t.Context(), []string{"dead-1", "dead-2"}); len(known) != 1 {
		t.Errorf("after delete: %v", known)
	}
}

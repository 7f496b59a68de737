package httpapi

import (
	"fmt"
	"net/http"

	pb "github.com/pushblaster/pushblaster"
)

// ErrorList is the body of GET /api/errors, newest first. NextBeforeID
// pages: pass it as before_id for older errors; absent means no more.
type ErrorList struct {
	Errors       []pb.ErrorRecord `json:"errors"`
	NextBeforeID int64            `json:"next_before_id,omitempty"`
}

// handleHealth answers 200 while the instance is healthy or degraded and
// 503 when it is critical, with the report either way, so a probe can use
// the status code and a person the body.
func (s *server) handleHealth(w http.ResponseWriter, r *http.Request) {
	h := s.svc.Health(r.Context())
	code := http.StatusOK
	if h.Status == pb.HealthCritical {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

// errorKinds are the kinds an error record can have.
var errorKinds = []pb.Kind{pb.KindTimeout, pb.KindAbort, pb.KindExternal, pb.KindDatabase, pb.KindScript, pb.KindValidation, pb.KindInternal,
	pb.KindNotFound, pb.KindConflict, pb.KindUnauthorized}

func (s *server) handleErrors(w http.ResponseWriter, r *http.Request) {
	var f pb.ErrorFilter
	q := r.URL.Query()
	if k := q.Get("kind"); k != "" {
		f.Kind = pb.Kind(k)
		valid := false
		for _, v := range errorKinds {
			valid = valid || v == f.Kind
		}
		if !valid {
			s.writeError(w, r, &pb.Error{Kind: pb.KindValidation, Message: "invalid kind",
				Fields: []pb.FieldError{{Field: "kind", Message: fmt.Sprintf("%q is not an error kind; use one of %v", k, errorKinds)}}})
			return
		}
	}
	for _, p := range []struct {
		name string
		dst  **int64
	}{{"automation_id", &f.AutomationID}, {"execution_id", &f.ExecutionID}} {
		if q.Get(p.name) == "" {
			continue
		}
		id, err := queryInt(r, p.name, 0, 1, 1<<62)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		*p.dst = &id
	}
	var err error
	if f.Limit, f.BeforeID, err = pageParams(r, 100); err != nil {
		s.writeError(w, r, err)
		return
	}
	list, err := s.svc.ListErrors(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// Held errors (not stored yet) come first on the first page and do
	// not count against its limit: the limit pages through stored ones.
	out := ErrorList{Errors: []pb.ErrorRecord{}}
	stored := 0
	for _, e := range list {
		out.Errors = append(out.Errors, e)
		if e.Stored {
			stored++
		}
	}
	if n := len(list); stored > 0 && stored >= f.Limit && list[n-1].Stored {
		out.NextBeforeID = list[n-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

// pageParams reads limit (1–1000, default def) and before_id, the paging
// of lists newest first.
func pageParams(r *http.Request, def int64) (limit int, beforeID int64, err error) {
	l, err := queryInt(r, "limit", def, 1, 1000)
	if err != nil {
		return 0, 0, err
	}
	beforeID, err = queryInt(r, "before_id", 0, 0, 1<<62)
	return int(l), beforeID, err
}

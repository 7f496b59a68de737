package httpapi

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// DeliveryList is the body of a ledger listing, in (audience, user_id,
// token) order. NextCursor pages: pass it as cursor to get the next page;
// absent means no more.
type DeliveryList struct {
	Deliveries []pb.DeliveryRecord `json:"deliveries"`
	NextCursor string              `json:"next_cursor,omitempty"`
}

// InvalidTokenList is the body of an invalid-token listing, newest first.
type InvalidTokenList struct {
	InvalidTokens []pb.InvalidToken `json:"invalid_tokens"`
	NextCursor    string            `json:"next_cursor,omitempty"`
}

// encodeCursor makes an opaque page cursor of key parts.
func encodeCursor(parts ...string) string {
	b, _ := json.Marshal(parts) // strings always encode
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor reads a cursor made by encodeCursor with n parts.
func decodeCursor(r *http.Request, n int) ([]string, error) {
	c := r.URL.Query().Get("cursor")
	if c == "" {
		return nil, nil
	}
	var parts []string
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		err = json.Unmarshal(b, &parts)
	}
	if err != nil || len(parts) != n {
		return nil, &pb.Error{Kind: pb.KindValidation, Message: "invalid cursor",
			Fields: []pb.FieldError{{Field: "cursor", Message: "is not a cursor this API returned; pass next_cursor from the previous page unchanged"}}}
	}
	return parts, nil
}

func (s *server) handleDeliveries(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	f := pb.DeliveryFilter{Audience: q.Get("audience"), State: pb.DeliveryState(q.Get("state"))}
	var v pb.Validation
	if f.Audience != "" && f.Audience != "live" && f.Audience != "test" {
		v.Add("audience", "is %q; use live or test", f.Audience)
	}
	if f.State != "" {
		known := false
		for _, st := range pb.DeliveryStates {
			known = known || st == f.State
		}
		if !known {
			v.Add("state", "is %q; use one of %v", f.State, pb.DeliveryStates)
		}
	}
	if err := v.Err(); err != nil {
		s.writeError(w, r, err)
		return
	}
	limit, err := queryInt(r, "limit", 100, 1, 10000)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f.Limit = int(limit)
	cur, err := decodeCursor(r, 3)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if cur != nil {
		f.AfterAudience, f.AfterUser, f.AfterToken = cur[0], cur[1], cur[2]
	}
	list, err := s.svc.ListDeliveries(r.Context(), id, f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := DeliveryList{Deliveries: list}
	if out.Deliveries == nil {
		out.Deliveries = []pb.DeliveryRecord{}
	}
	if len(list) == f.Limit {
		last := list[len(list)-1]
		out.NextCursor = encodeCursor(last.Audience, last.UserID, last.Token)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) handleInvalidTokens(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := pb.InvalidTokenFilter{UserID: q.Get("user_id"), Provider: q.Get("provider")}
	limit, err := queryInt(r, "limit", 100, 1, 10000)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f.Limit = int(limit)
	cur, err := decodeCursor(r, 2)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if cur != nil {
		at, perr := time.Parse(time.RFC3339Nano, cur[0])
		if perr != nil {
			s.writeError(w, r, &pb.Error{Kind: pb.KindValidation, Message: "invalid cursor",
				Fields: []pb.FieldError{{Field: "cursor", Message: "is not a cursor this API returned"}}})
			return
		}
		f.BeforeAt, f.BeforeToken = at, cur[1]
	}
	list, err := s.svc.ListInvalidTokens(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := InvalidTokenList{InvalidTokens: list}
	if out.InvalidTokens == nil {
		out.InvalidTokens = []pb.InvalidToken{}
	}
	if len(list) == f.Limit {
		last := list[len(list)-1]
		out.NextCursor = encodeCursor(last.CreatedAt.Format(time.RFC3339Nano), last.Token)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) handleDeleteInvalidToken(w http.ResponseWriter, r *http.Request) {
	if err := s.svc.DeleteInvalidToken(r.Context(), r.PathValue("token")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

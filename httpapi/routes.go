package httpapi

import (
	_ "embed"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/cron"
)

//go:embed openapi.json
var openAPI []byte

// routes lists every route: GETs are open, everything that changes state
// goes through authorize.
func (s *server) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", s.handleHealthz)
	mux.HandleFunc("GET /readyz", s.handleReadyz)
	mux.HandleFunc("GET /metrics", s.handleMetrics)
	mux.HandleFunc("GET /api/health", s.handleHealth)
	mux.HandleFunc("GET /api/errors", s.handleErrors)
	mux.HandleFunc("GET /api/openapi.json", s.handleOpenAPI)

	mux.HandleFunc("GET /api/automations", s.handleListAutomations)
	mux.HandleFunc("POST /api/automations", s.authorize(s.handleCreateAutomation))
	mux.HandleFunc("POST /api/automations/apply", s.authorize(s.handleApplyAutomation))
	mux.HandleFunc("GET /api/automations/{id}", s.handleGetAutomation)
	mux.HandleFunc("PUT /api/automations/{id}", s.authorize(s.handleUpdateAutomation))
	mux.HandleFunc("DELETE /api/automations/{id}", s.authorize(s.handleDeleteAutomation))
	mux.HandleFunc("POST /api/automations/{id}/pause", s.authorize(s.handlePause(true)))
	mux.HandleFunc("POST /api/automations/{id}/resume", s.authorize(s.handlePause(false)))
	mux.HandleFunc("POST /api/automations/{id}/run", s.authorize(s.handleRun))
	mux.HandleFunc("POST /api/automations/{id}/audience/preview", s.authorize(s.handlePreview))
	mux.HandleFunc("GET /api/automations/{id}/executions", s.handleListExecutions)
	mux.HandleFunc("GET /api/automations/{id}/events", s.handleEvents("automation")) // JSON, or SSE (sse.go)

	mux.HandleFunc("GET /api/executions", s.handleListExecutions)
	mux.HandleFunc("GET /api/executions/{id}", s.handleGetExecution)
	mux.HandleFunc("POST /api/executions/{id}/cancel", s.authorize(s.handleCancel))
	mux.HandleFunc("GET /api/executions/{id}/events", s.handleEvents("execution")) // JSON, or SSE (sse.go)
	mux.HandleFunc("GET /api/executions/{id}/artifacts", s.handleArtifacts)
	mux.HandleFunc("GET /api/executions/{id}/deliveries", s.handleDeliveries)
	mux.HandleFunc("GET /api/invalid-tokens", s.handleInvalidTokens)
	mux.HandleFunc("DELETE /api/invalid-tokens/{token}", s.authorize(s.handleDeleteInvalidToken))
	mux.HandleFunc("GET /api/events", s.handleEvents("")) // JSON, or SSE (sse.go)

	mux.HandleFunc("GET /api/schedule/preview", s.handleSchedulePreview)

	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if allowed := allowedMethods(mux, r); len(allowed) > 0 {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			s.writeErrorStatus(w, r, http.StatusMethodNotAllowed, pb.Errorf(pb.KindValidation,
				"%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, strings.Join(allowed, ", ")))
			return
		}
		s.writeError(w, r, pb.Errorf(pb.KindNotFound, "no route %s %s; see GET /api/openapi.json", r.Method, r.URL.Path))
	})
}

// allowedMethods lists the methods that do have a route for r's path.
func allowedMethods(mux *http.ServeMux, r *http.Request) []string {
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" {
			out = append(out, m)
		}
	}
	return out
}

func (s *server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if s.opts.Ready != nil {
		if err := s.opts.Ready(r.Context()); err != nil {
			pe := pb.AsError(err)
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not_ready", "error": pe})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// handleMetrics serves the Prometheus scrape. Open like every GET: the
// metrics hold counts, never tokens or recipients.
func (s *server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if s.opts.Metrics == nil {
		s.writeError(w, r, pb.Errorf(pb.KindNotFound, "metrics are not enabled on this server"))
		return
	}
	s.opts.Metrics.ServeHTTP(w, r)
}

func (s *server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPI)
}

// AutomationList is the body of GET /api/automations.
type AutomationList struct {
	Automations []*pb.Automation `json:"automations"`
}

func (s *server) handleListAutomations(w http.ResponseWriter, r *http.Request) {
	var f pb.AutomationFilter
	if name := r.URL.Query().Get("name"); name != "" {
		f.Name = &name
	}
	list, err := s.svc.ListAutomations(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if list == nil {
		list = []*pb.Automation{}
	}
	writeJSON(w, http.StatusOK, AutomationList{Automations: list})
}

func (s *server) readAutomation(w http.ResponseWriter, r *http.Request) (*pb.Automation, error) {
	var a pb.Automation
	if err := s.readJSON(w, r, &a, false); err != nil {
		return nil, err
	}
	return &a, nil
}

func (s *server) handleCreateAutomation(w http.ResponseWriter, r *http.Request) {
	a, err := s.readAutomation(w, r)
	if err == nil {
		a, err = s.svc.CreateAutomation(r.Context(), a)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", fmt.Sprintf("/api/automations/%d", a.ID))
	writeJSON(w, http.StatusCreated, a)
}

// ApplyResponse is the body of POST /api/automations/apply.
type ApplyResponse struct {
	Result     pb.ApplyResult `json:"result"`
	Automation *pb.Automation `json:"automation"`
}

func (s *server) handleApplyAutomation(w http.ResponseWriter, r *http.Request) {
	a, err := s.readAutomation(w, r)
	var res pb.ApplyResult
	if err == nil {
		a, res, err = s.svc.ApplyAutomation(r.Context(), a)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if res == pb.ApplyCreated {
		status = http.StatusCreated
	}
	writeJSON(w, status, ApplyResponse{Result: res, Automation: a})
}

func (s *server) handleGetAutomation(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var a *pb.Automation
	if err == nil {
		a, err = s.svc.GetAutomation(r.Context(), id)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (s *server) handleUpdateAutomation(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var a *pb.Automation
	if err == nil {
		a, err = s.readAutomation(w, r)
	}
	if err == nil {
		a, err = s.svc.UpdateAutomation(r.Context(), id, a)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (s *server) handleDeleteAutomation(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var force bool
	if err == nil {
		force, err = queryBool(r, "force")
	}
	if err == nil {
		err = s.svc.DeleteAutomation(r.Context(), id, force)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) handlePause(paused bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r)
		var a *pb.Automation
		if err == nil {
			a, err = s.svc.SetPaused(r.Context(), id, paused)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, a)
	}
}

func (s *server) handleRun(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var p pb.RunParams
	if err == nil {
		err = s.readJSON(w, r, &p, true)
	}
	var ex *pb.Execution
	if err == nil {
		ex, err = s.svc.RunAutomation(r.Context(), id, p)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", fmt.Sprintf("/api/executions/%d", ex.ID))
	writeJSON(w, http.StatusCreated, ex)
}

// ExecutionList is the body of execution listings. NextBeforeID pages: pass
// it as before_id to get the next (older) page; 0 means no more.
type ExecutionList struct {
	Executions   []*pb.Execution `json:"executions"`
	NextBeforeID int64           `json:"next_before_id,omitempty"`
}

func (s *server) handleListExecutions(w http.ResponseWriter, r *http.Request) {
	var f pb.ExecutionFilter
	if r.PathValue("id") != "" {
		id, err := pathID(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		f.AutomationID = &id
	} else if r.URL.Query().Get("automation_id") != "" {
		id, err := queryInt(r, "automation_id", 0, 1, 1<<62)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		f.AutomationID = &id
	}
	if st := r.URL.Query().Get("status"); st != "" {
		status := pb.ExecutionStatus(st)
		valid := false
		for _, v := range pb.ExecutionStatuses {
			valid = valid || v == status
		}
		if !valid {
			s.writeError(w, r, &pb.Error{Kind: pb.KindValidation, Message: "invalid status",
				Fields: []pb.FieldError{{Field: "status", Message: fmt.Sprintf("%q is not a status; use one of %v", st, pb.ExecutionStatuses)}}})
			return
		}
		f.Status = &status
	}
	var err error
	if f.Limit, f.BeforeID, err = pageParams(r, 50); err != nil {
		s.writeError(w, r, err)
		return
	}
	list, err := s.svc.ListExecutions(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := ExecutionList{Executions: list}
	if out.Executions == nil {
		out.Executions = []*pb.Execution{}
	}
	if len(list) == f.Limit {
		out.NextBeforeID = list[len(list)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) handleGetExecution(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var ex *pb.Execution
	if err == nil {
		ex, err = s.svc.GetExecution(r.Context(), id)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ex)
}

func (s *server) handleCancel(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var p pb.CancelParams
	if err == nil {
		err = s.readJSON(w, r, &p, true)
	}
	if err == nil {
		var force bool
		force, err = queryBool(r, "force")
		p.Force = p.Force || force
	}
	var ex *pb.Execution
	if err == nil {
		ex, err = s.svc.CancelExecution(r.Context(), id, p)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ex)
}

func (s *server) handlePreview(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var p *pb.AudiencePreview
	if err == nil {
		p, err = s.svc.PreviewAudience(r.Context(), id)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// ArtifactList is the body of GET /api/executions/{id}/artifacts.
type ArtifactList struct {
	Artifacts []pb.Artifact `json:"artifacts"`
}

func (s *server) handleArtifacts(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var list []pb.Artifact
	if err == nil {
		list, err = s.svc.ListArtifacts(r.Context(), id)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if list == nil {
		list = []pb.Artifact{}
	}
	writeJSON(w, http.StatusOK, ArtifactList{Artifacts: list})
}

// EventList is the body of event listings, oldest first. Pass the last id
// as after_id to get newer events.
type EventList struct {
	Events []*pb.Event `json:"events"`
}

func (s *server) handleListEvents(scope string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var f pb.EventFilter
		if scope != "" {
			id, err := pathID(r)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			if scope == "execution" {
				if _, err := s.svc.GetExecution(r.Context(), id); err != nil {
					s.writeError(w, r, err)
					return
				}
				f.ExecutionID = &id
			} else {
				// A deleted automation's history stays readable; one that
				// never existed is a 404.
				if _, err := s.svc.ListExecutions(r.Context(), pb.ExecutionFilter{AutomationID: &id, Limit: 1}); err != nil {
					s.writeError(w, r, err)
					return
				}
				f.AutomationID = &id
			}
		}
		after, err := queryInt(r, "after_id", 0, 0, 1<<62)
		var limit int64
		if err == nil {
			limit, err = queryInt(r, "limit", 1000, 1, 10000)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		f.AfterID, f.Limit = after, int(limit)
		list, err := s.svc.ListEvents(r.Context(), f)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if list == nil {
			list = []*pb.Event{}
		}
		writeJSON(w, http.StatusOK, EventList{Events: list})
	}
}

// SendTime is one previewed send time.
type SendTime struct {
	// At is the send time in the schedule's zone, with its UTC offset.
	At        string `json:"at"`
	UTC       string `json:"utc"`
	UTCOffset string `json:"utc_offset"`
	Weekday   string `json:"weekday"`
}

// SchedulePreview is the body of GET /api/schedule/preview.
type SchedulePreview struct {
	Cron      string     `json:"cron"`
	Timezone  string     `json:"timezone"`
	SendTimes []SendTime `json:"send_times"`
}

func (s *server) handleSchedulePreview(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	count := 10
	if raw := q.Get("count"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil {
			n = -1
		}
		count = n
	}
	p, err := PreviewSchedule(q.Get("cron"), q.Get("timezone"), q.Get("from"), count, s.opts.Clock.Now())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// PreviewSchedule lists the next count send times of a cron expression in
// a zone (default UTC) after from (RFC 3339; default now). Every invalid
// input is named in one validation error.
func PreviewSchedule(expr, zone, from string, count int, now time.Time) (*SchedulePreview, error) {
	if zone == "" {
		zone = pb.DefaultTimezone
	}
	var v pb.Validation
	sched, err := cron.Parse(expr)
	if expr == "" {
		v.Add("cron", `is required, e.g. "30 9 * * 1-5" (09:30 on weekdays)`)
	} else if err != nil {
		v.Add("cron", "%s", err.Error())
	}
	loc, err := pb.LoadLocation(zone)
	if err != nil {
		v.Add("timezone", "%s", err.Error())
	}
	if count < 1 || count > 1000 {
		v.Add("count", "must be an integer from 1 to 1000")
	}
	start := now
	if from != "" {
		if start, err = time.Parse(time.RFC3339, from); err != nil {
			v.Add("from", "%q is not an RFC 3339 time such as 2026-03-08T00:00:00Z", from)
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	p := &SchedulePreview{Cron: expr, Timezone: zone, SendTimes: []SendTime{}}
	t := start
	for range count {
		if t = sched.Next(t, loc); t.IsZero() {
			break
		}
		p.SendTimes = append(p.SendTimes, SendTime{
			At: t.Format(time.RFC3339), UTC: t.UTC().Format(time.RFC3339),
			UTCOffset: t.Format("-07:00"), Weekday: t.Weekday().String(),
		})
	}
	return p, nil
}

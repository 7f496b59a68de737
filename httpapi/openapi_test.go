package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	pb "github.com/pushblaster/pushblaster"
)

// These tests keep openapi.json honest: every route registered in
// routes.go is documented and every documented route exists, every $ref
// resolves, and the enums match the domain constants.

const specFile = "openapi.json"

// httpMethods are the operation keys of an OpenAPI path item.
var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func loadSpec(t *testing.T) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatalf("read %s: %v", specFile, err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s is not valid JSON: %v", specFile, err)
	}
	return doc
}

func object(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// route is one mux pattern of routes.go.
type route struct {
	method, path string
	// secured is true when the handler is wrapped in s.authorize.
	secured bool
}

func (r route) String() string { return r.method + " " + r.path }

// routeRE matches a registration such as
// mux.HandleFunc("POST /api/automations", s.authorize(s.handleCreateAutomation)).
var routeRE = regexp.MustCompile(`mux\.Handle(?:Func)?\(\s*"([^"]*)"\s*,\s*(s\.authorize\()?`)

// sourceRoutes reads the routes from the source text of routes.go, so that
// a route added there without documentation fails the test.
func sourceRoutes(t *testing.T) []route {
	t.Helper()
	src, err := os.ReadFile("routes.go")
	if err != nil {
		t.Fatalf("read routes.go: %v", err)
	}
	var out []route
	for _, m := range routeRE.FindAllStringSubmatch(string(src), -1) {
		pattern := m[1]
		if pattern == "/" {
			continue // the catch-all 404
		}
		method, path, ok := strings.Cut(pattern, " ")
		if !ok || !strings.HasPrefix(path, "/") {
			t.Errorf("route %q in routes.go has no method (or has a host); give it one such as \"GET %s\" and document it", pattern, pattern)
			continue
		}
		out = append(out, route{method: strings.ToUpper(method), path: openAPIPath(path), secured: m[2] != ""})
	}
	if len(out) < 10 {
		t.Fatalf("found only %d routes in routes.go; has the registration style changed? update routeRE", len(out))
	}
	return out
}

// openAPIPath turns a ServeMux path pattern into an OpenAPI path template:
// {name...} becomes {name} and a trailing {$} is dropped.
func openAPIPath(p string) string {
	p = strings.TrimSuffix(p, "{$}")
	return regexp.MustCompile(`\{([A-Za-z_][A-Za-z0-9_]*)\.\.\.\}`).ReplaceAllString(p, "{$1}")
}

// operation is one documented operation.
type operation struct {
	method, path string
	op           map[string]any
	pathItem     map[string]any
}

func operations(t *testing.T, doc map[string]any) []operation {
	t.Helper()
	var out []operation
	for path, item := range object(doc["paths"]) {
		pi := object(item)
		if pi == nil {
			t.Errorf("path %s is not an object", path)
			continue
		}
		for _, m := range httpMethods {
			if op := object(pi[m]); op != nil {
				out = append(out, operation{method: strings.ToUpper(m), path: path, op: op, pathItem: pi})
			}
		}
	}
	slices.SortFunc(out, func(a, b operation) int { return strings.Compare(a.path+" "+a.method, b.path+" "+b.method) })
	return out
}

func TestOpenAPIIsOpenAPI31(t *testing.T) {
	doc := loadSpec(t)
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.1.") {
		t.Errorf("openapi = %q, want 3.1.x", doc["openapi"])
	}
	info := object(doc["info"])
	if info == nil {
		t.Fatal("no info object")
	}
	for _, k := range []string{"title", "version"} {
		if s, _ := info[k].(string); s == "" {
			t.Errorf("info.%s is missing", k)
		}
	}
	if len(object(doc["paths"])) == 0 {
		t.Fatal("no paths")
	}
	if doc["security"] != nil {
		t.Error("top-level security is set; GET routes are open, so security belongs on the mutating operations only")
	}
	scheme := object(object(object(doc["components"])["securitySchemes"])["bearerAuth"])
	if scheme["type"] != "http" || scheme["scheme"] != "bearer" {
		t.Errorf("components.securitySchemes.bearerAuth = %v, want an http bearer scheme", scheme)
	}
}

func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	doc := loadSpec(t)
	routes := sourceRoutes(t)
	documented := map[string]operation{}
	for _, o := range operations(t, doc) {
		documented[o.method+" "+o.path] = o
	}
	registered := map[string]bool{}
	for _, r := range routes {
		registered[r.String()] = true
		o, ok := documented[r.String()]
		if !ok {
			t.Errorf("route %s is registered in routes.go but not documented in %s", r, specFile)
			continue
		}
		secured := hasBearerAuth(o.op)
		switch {
		case r.secured && !secured:
			t.Errorf("%s goes through authorize but its operation has no security [bearerAuth]", r)
		case !r.secured && secured:
			t.Errorf("%s is open but its operation requires bearerAuth", r)
		}
		if _, ok := object(o.op["responses"])["401"]; r.secured && !ok {
			t.Errorf("%s goes through authorize but does not document 401", r)
		}
	}
	for key := range documented {
		if !registered[key] {
			t.Errorf("%s is documented in %s but not registered in routes.go", key, specFile)
		}
	}
}

func hasBearerAuth(op map[string]any) bool {
	reqs, _ := op["security"].([]any)
	for _, r := range reqs {
		if _, ok := object(r)["bearerAuth"]; ok {
			return true
		}
	}
	return false
}

var pathParamRE = regexp.MustCompile(`\{([^}]+)\}`)

func TestOpenAPIOperations(t *testing.T) {
	doc := loadSpec(t)
	ops := operations(t, doc)
	ids := map[string]string{}
	for _, o := range ops {
		name := o.method + " " + o.path
		if s, _ := o.op["summary"].(string); strings.TrimSpace(s) == "" {
			t.Errorf("%s has no summary", name)
		}
		if s, _ := o.op["description"].(string); strings.TrimSpace(s) == "" {
			t.Errorf("%s has no description", name)
		}
		id, _ := o.op["operationId"].(string)
		if id == "" {
			t.Errorf("%s has no operationId", name)
		} else if prev, dup := ids[id]; dup {
			t.Errorf("operationId %q is used by %s and %s", id, prev, name)
		}
		ids[id] = name

		responses := object(o.op["responses"])
		ok2xx := false
		for code, resp := range responses {
			n, err := strconv.Atoi(code)
			if err != nil || n < 100 || n > 599 {
				t.Errorf("%s: response key %q is not an HTTP status", name, code)
				continue
			}
			ok2xx = ok2xx || (n >= 200 && n < 300)
			r := resolve(t, doc, resp)
			if s, _ := r["description"].(string); s == "" {
				t.Errorf("%s: response %s has no description", name, code)
			}
			// Every 4xx is the one error body (readyz's 503 is the documented exception to the 5xx rule).
			if n >= 400 && n < 500 {
				schema := object(object(object(r["content"])["application/json"])["schema"])
				if schema["$ref"] != "#/components/schemas/ErrorBody" {
					t.Errorf("%s: response %s body is %v, want $ref ErrorBody", name, code, schema)
				}
			}
		}
		if !ok2xx {
			t.Errorf("%s has no 2xx response", name)
		}

		// Every {param} of the path is declared as a required path parameter.
		declared := map[string]bool{}
		for _, list := range []any{o.pathItem["parameters"], o.op["parameters"]} {
			ps, _ := list.([]any)
			for _, p := range ps {
				pm := resolve(t, doc, p)
				if pm["in"] == "path" {
					pn, _ := pm["name"].(string)
					declared[pn] = true
					if pm["required"] != true {
						t.Errorf("%s: path parameter %s is not required: true", name, pn)
					}
				}
			}
		}
		for _, m := range pathParamRE.FindAllStringSubmatch(o.path, -1) {
			if !declared[m[1]] {
				t.Errorf("%s: path parameter {%s} is not declared", name, m[1])
			}
		}
	}
}

// resolve follows v's $ref, if any, and returns the object it names.
func resolve(t *testing.T, doc map[string]any, v any) map[string]any {
	t.Helper()
	for range 10 {
		m := object(v)
		ref, ok := m["$ref"].(string)
		if !ok {
			return m
		}
		target, err := lookup(doc, ref)
		if err != nil {
			t.Errorf("%v", err)
			return nil
		}
		v = target
	}
	t.Errorf("$ref chain too long at %v", v)
	return nil
}

// lookup resolves a local reference "#/components/...".
func lookup(doc map[string]any, ref string) (any, error) {
	ptr, ok := strings.CutPrefix(ref, "#/components/")
	if !ok {
		return nil, fmt.Errorf("$ref %q does not point into #/components/", ref)
	}
	var cur any = object(doc["components"])
	for _, tok := range strings.Split(ptr, "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m := object(cur)
		next, ok := m[tok]
		if m == nil || !ok {
			return nil, fmt.Errorf("$ref %q does not resolve: no %q", ref, tok)
		}
		cur = next
	}
	return cur, nil
}

func TestOpenAPIRefsResolve(t *testing.T) {
	doc := loadSpec(t)
	n := 0
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"]; ok {
				n++
				s, _ := ref.(string)
				if _, err := lookup(doc, s); err != nil {
					t.Errorf("at %s: %v", where, err)
				}
			}
			for k, c := range x {
				walk(where+"/"+k, c)
			}
		case []any:
			for i, c := range x {
				walk(fmt.Sprintf("%s/%d", where, i), c)
			}
		}
	}
	walk("#", doc)
	if n == 0 {
		t.Fatal("no $ref at all; is the walk broken?")
	}
}

// propertyEnum returns the enum of the named property of a component
// schema, following $ref and a single-element allOf.
func propertyEnum(t *testing.T, doc map[string]any, schema, property string) []string {
	t.Helper()
	s := resolve(t, doc, object(object(object(doc["components"])["schemas"])[schema]))
	p := object(s["properties"])[property]
	if p == nil {
		t.Fatalf("schema %s has no property %s", schema, property)
	}
	return enumOf(t, doc, p)
}

func enumOf(t *testing.T, doc map[string]any, v any) []string {
	t.Helper()
	m := resolve(t, doc, v)
	if e, ok := m["enum"].([]any); ok {
		out := make([]string, len(e))
		for i, x := range e {
			out[i], _ = x.(string)
		}
		return out
	}
	if all, ok := m["allOf"].([]any); ok && len(all) == 1 {
		return enumOf(t, doc, all[0])
	}
	t.Fatalf("no enum in %v", m)
	return nil
}

// constValues returns the string values of the constants of type typeName
// declared in the named file of the pushblaster package (the parent
// directory), in source order.
func constValues(t *testing.T, file, typeName string) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../"+file, nil, 0)
	if err != nil {
		t.Fatalf("parse %s: %v", file, err)
	}
	var out []string
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != typeName {
				continue
			}
			for _, v := range vs.Values {
				if lit, ok := v.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					s, _ := strconv.Unquote(lit.Value)
					out = append(out, s)
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no constants of type %s in %s", typeName, file)
	}
	return out
}

func strs[T ~string](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = string(x)
	}
	return out
}

// sameSet reports a difference between the documented and the domain values.
func sameSet(t *testing.T, what string, documented, domain []string) {
	t.Helper()
	seen := map[string]bool{}
	for _, d := range documented {
		if seen[d] {
			t.Errorf("%s: %q is listed twice", what, d)
		}
		seen[d] = true
		if !slices.Contains(domain, d) {
			t.Errorf("%s: %q is documented but not in the domain %v", what, d, domain)
		}
	}
	for _, d := range domain {
		if !seen[d] {
			t.Errorf("%s: %q is in the domain but not documented (documented: %v)", what, d, documented)
		}
	}
}

func TestOpenAPIEnumsMatchDomain(t *testing.T) {
	doc := loadSpec(t)
	sameSet(t, "Execution.status", propertyEnum(t, doc, "Execution", "status"), strs(pb.ExecutionStatuses))
	sameSet(t, "Execution.status vs ExecutionStatus constants", strs(pb.ExecutionStatuses), constValues(t, "execution.go", "ExecutionStatus"))
	sameSet(t, "Error.kind", propertyEnum(t, doc, "Error", "kind"), constValues(t, "error.go", "Kind"))
	sameSet(t, "Execution.phase", propertyEnum(t, doc, "Execution", "phase"), strs(pb.Phases))
	sameSet(t, "Error.phase", propertyEnum(t, doc, "Error", "phase"), strs(pb.Phases))
	sameSet(t, "PhaseRecord.status", propertyEnum(t, doc, "PhaseRecord", "status"), constValues(t, "execution.go", "PhaseStatus"))
	sameSet(t, "Execution.trigger", propertyEnum(t, doc, "Execution", "trigger"), constValues(t, "execution.go", "Trigger"))
	sameSet(t, "Event.type", propertyEnum(t, doc, "Event", "type"), constValues(t, "execution.go", "EventType"))
	sameSet(t, "Automation.mode", propertyEnum(t, doc, "Automation", "mode"), constValues(t, "automation.go", "Mode"))
	sameSet(t, "Automation.overlap_policy", propertyEnum(t, doc, "Automation", "overlap_policy"), constValues(t, "automation.go", "OverlapPolicy"))
	sameSet(t, "Audience.type", propertyEnum(t, doc, "Audience", "type"), []string{pb.AudienceStatic, pb.AudienceScript, pb.AudienceSQL, pb.AudienceCSV})
	sameSet(t, "ApplyResponse.result", propertyEnum(t, doc, "ApplyResponse", "result"), constValues(t, "pushblaster.go", "ApplyResult"))

	// The query parameter status takes the same values as Execution.status.
	p := resolve(t, doc, map[string]any{"$ref": "#/components/parameters/ExecutionStatus"})
	sameSet(t, "query parameter status", enumOf(t, doc, p["schema"]), strs(pb.ExecutionStatuses))
}

// TestOpenAPISchemasMatchGoTypes checks that each schema lists exactly the
// JSON fields of the Go type it describes, so that a field added, renamed or
// removed in Go shows up here.
func TestOpenAPISchemasMatchGoTypes(t *testing.T) {
	doc := loadSpec(t)
	schemas := object(object(doc["components"])["schemas"])
	for name, v := range map[string]any{
		"Automation":       pb.Automation{},
		"Schedule":         pb.Schedule{},
		"Audience":         pb.Audience{},
		"Recipient":        pb.Recipient{},
		"Message":          pb.Message{},
		"Delivery":         pb.Delivery{},
		"Execution":        pb.Execution{},
		"PhaseRecord":      pb.PhaseRecord{},
		"Event":            pb.Event{},
		"Error":            pb.Error{},
		"FieldError":       pb.FieldError{},
		"RunParams":        pb.RunParams{},
		"CancelParams":     pb.CancelParams{},
		"AutomationList":   AutomationList{},
		"ApplyResponse":    ApplyResponse{},
		"ExecutionList":    ExecutionList{},
		"EventList":        EventList{},
		"ErrorBody":        ErrorBody{},
		"SchedulePreview":  SchedulePreview{},
		"SendTime":         SendTime{},
		"HealthReport":     pb.Health{},
		"HealthProblem":    pb.HealthProblem{},
		"Restoration":      pb.Restoration{},
		"DatabaseHealth":   pb.DatabaseHealth{},
		"PoolStats":        pb.PoolStats{},
		"EngineHealth":     pb.EngineHealth{},
		"JobInfo":          pb.JobInfo{},
		"InstanceInfo":     pb.InstanceInfo{},
		"OverdueExecution": pb.OverdueExecution{},
		"ErrorRate":        pb.ErrorRate{},
		"ErrorRecord":      pb.ErrorRecord{},
		"ErrorList":        ErrorList{},
	} {
		s := object(schemas[name])
		if s == nil {
			t.Errorf("no schema %s", name)
			continue
		}
		var documented []string
		for k := range object(s["properties"]) {
			documented = append(documented, k)
		}
		sameSet(t, name+" properties", documented, jsonFields(reflect.TypeOf(v)))
		required, _ := s["required"].([]any)
		for _, r := range required {
			if _, ok := object(s["properties"])[fmt.Sprint(r)]; !ok {
				t.Errorf("%s requires %v, which is not a property", name, r)
			}
		}
	}
}

// jsonFields lists the JSON names of the exported fields of struct type t.
func jsonFields(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		out = append(out, name)
	}
	return out
}

func TestOpenAPIServed(t *testing.T) {
	want, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	h := NewServer(nil, Options{})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/openapi.json", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /api/openapi.json: status %d, body %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if !bytes.Equal(rec.Body.Bytes(), want) {
		t.Error("the served document differs from openapi.json; is the go:embed directive pointing at it?")
	}
}

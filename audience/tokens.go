package audience

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	pb "github.com/pushblaster/pushblaster"
)

// TokenSource finds the devices of users whose audience rows came without
// a token. A user with several devices gets one delivery per device.
type TokenSource interface {
	// Tokens returns the devices of each user id; users without devices
	// may be absent. Errors are *pb.Error: external (the source failed;
	// recoverable when a retry can help) or database.
	Tokens(ctx context.Context, userIDs []string) (map[string][]pb.Device, error)
}

// SQLTokens looks devices up with a query on the audience database. The
// query takes the user ids as $1 (text[]) and returns user_id, token and,
// optionally, platform, e.g.
//
//	SELECT user_id, token, platform FROM devices WHERE user_id = ANY($1) AND active
type SQLTokens struct {
	Pool    *pgxpool.Pool
	Query   string
	Timeout time.Duration // per batch (default 30s)
}

// Tokens implements TokenSource.
func (s *SQLTokens) Tokens(ctx context.Context, userIDs []string) (map[string][]pb.Device, error) {
	ctx, cancel := context.WithTimeout(ctx, cmpDur(s.Timeout, 30*time.Second))
	defer cancel()
	rows, err := s.Pool.Query(ctx, s.Query, userIDs)
	if err != nil {
		return nil, tokenSQLError(err)
	}
	defer rows.Close()
	out := map[string][]pb.Device{}
	fields := rows.FieldDescriptions()
	if len(fields) < 2 {
		return nil, pb.Errorf(pb.KindValidation, "the token query must return user_id, token and optionally platform; it returns %d columns", len(fields)).WithRecoverable(false)
	}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return nil, tokenSQLError(err)
		}
		user, _ := sqlText(vals[0])
		token, ok := sqlText(vals[1])
		if user == "" || !ok || token == "" {
			continue
		}
		d := pb.Device{Token: token}
		if len(vals) > 2 {
			d.Platform, _ = sqlText(vals[2])
			d.Platform = strings.ToLower(d.Platform)
		}
		out[user] = append(out[user], d)
	}
	if err := rows.Err(); err != nil {
		return nil, tokenSQLError(err)
	}
	return out, nil
}

func tokenSQLError(err error) error {
	e := pb.AsError(sqlError(err, "token query"))
	if e.Kind == pb.KindDatabase || e.Kind == pb.KindTimeout {
		e.Kind, e.Recoverable = pb.KindExternal, true
	}
	return e
}

// HTTPTokens looks devices up with a POST, GraphQL style, as the systems
// pushblaster replaces did. Request is a text/template rendering the JSON
// body, with .UserIDs (use the json function: {{json .UserIDs}}). Path is
// the dotted path to the array of devices in the response (e.g.
// "data.devices"); each element has the user id, the token and optionally
// the platform under the configured field names.
type HTTPTokens struct {
	URL                                    string
	Request                                string
	Path                                   string
	UserIDField, TokenField, PlatformField string // default user_id, token, platform
	Headers                                map[string]string
	Client                                 *http.Client
	Timeout                                time.Duration // per batch (default 30s)

	tmpl *template.Template
	// where is URL without its password, for messages and logs.
	where string
}

// location names the token source in messages: its URL without password.
func (h *HTTPTokens) location() string {
	if h.where == "" {
		return redactedURL(h.URL)
	}
	return h.where
}

// redactedURL is raw without the password of its user info; a URL that
// does not parse is not shown, since it may hold a credential.
func redactedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a URL that does not parse)"
	}
	return u.Redacted()
}

// NewHTTPTokens checks the configuration and compiles the template.
func NewHTTPTokens(h HTTPTokens) (*HTTPTokens, error) {
	// The URL is never repeated whole: it may carry a credential.
	u, err := url.Parse(h.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, pb.Errorf(pb.KindValidation, "token source URL %q must be an absolute http(s) URL", redactedURL(h.URL))
	}
	h.where = u.Redacted()
	if h.Request == "" {
		h.Request = `{"user_ids": {{json .UserIDs}}}`
	}
	t, err := template.New("tokens").Funcs(template.FuncMap{"json": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	}}).Parse(h.Request)
	if err != nil {
		return nil, pb.Errorf(pb.KindValidation, "token request template: %v", err)
	}
	h.tmpl = t
	if h.Path == "" {
		return nil, pb.Errorf(pb.KindValidation, `token response path is required, e.g. "data.devices"`)
	}
	h.UserIDField = cmpStr(h.UserIDField, "user_id")
	h.TokenField = cmpStr(h.TokenField, "token")
	h.PlatformField = cmpStr(h.PlatformField, "platform")
	if h.Client == nil {
		h.Client = &http.Client{}
	}
	return &h, nil
}

// Tokens implements TokenSource.
func (h *HTTPTokens) Tokens(ctx context.Context, userIDs []string) (map[string][]pb.Device, error) {
	var body bytes.Buffer
	if err := h.tmpl.Execute(&body, struct{ UserIDs []string }{userIDs}); err != nil {
		return nil, pb.Errorf(pb.KindValidation, "render the token request: %v", err).WithRecoverable(false)
	}
	ctx, cancel := context.WithTimeout(ctx, cmpDur(h.Timeout, 30*time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, &body)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its message repeats the URL, which may hold a credential
		}
		return nil, pb.Errorf(pb.KindValidation, "token request to %s: %v", h.location(), err).WithRecoverable(false)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	for k, v := range h.Headers {
		req.Header.Set(k, v)
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return nil, pb.Errorf(pb.KindExternal, "token source %s unreachable: %v", h.location(), err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, pb.Errorf(pb.KindExternal, "read the token source's answer: %v", err)
	}
	if resp.StatusCode >= 300 {
		e := pb.Errorf(pb.KindExternal, "token source answered HTTP %d: %s", resp.StatusCode, snippet(data)).
			With("status", fmt.Sprint(resp.StatusCode))
		// A client error will not heal by itself; overload and outages may.
		return nil, e.WithRecoverable(resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests)
	}
	var doc any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, pb.Errorf(pb.KindExternal, "token source answered something that is not JSON: %s", snippet(data)).WithRecoverable(false)
	}
	if errs, ok := lookup(doc, "errors").([]any); ok && len(errs) > 0 {
		return nil, pb.Errorf(pb.KindExternal, "token source answered with errors: %s", snippet(mustJSON(errs)))
	}
	list, ok := lookup(doc, h.Path).([]any)
	if !ok {
		return nil, pb.Errorf(pb.KindExternal, "the token source's answer has no array at %q: %s", h.Path, snippet(data)).WithRecoverable(false)
	}
	out := map[string][]pb.Device{}
	for _, el := range list {
		user, token := textOf(lookup(el, h.UserIDField)), textOf(lookup(el, h.TokenField))
		if user == "" || token == "" {
			continue
		}
		out[user] = append(out[user], pb.Device{Token: token, Platform: strings.ToLower(textOf(lookup(el, h.PlatformField)))})
	}
	return out, nil
}

// lookup walks a dotted path through JSON objects.
func lookup(doc any, path string) any {
	for _, k := range strings.Split(path, ".") {
		m, ok := doc.(map[string]any)
		if !ok {
			return nil
		}
		doc = m[k]
	}
	return doc
}

func textOf(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		return fmt.Sprint(x)
	}
	return ""
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func cmpDur(v, def time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return def
}

func cmpStr(v, def string) string {
	if v != "" {
		return v
	}
	return def
}

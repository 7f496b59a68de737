package fcmtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Limits of the send method.
const (
	// MaxPayloadBytes is what a message's notification strings and data
	// keys and values may add up to; messages to a topic or condition get
	// half (MaxTopicPayloadBytes).
	MaxPayloadBytes      = 4096
	MaxTopicPayloadBytes = 2048
	// MaxTTLSeconds is the longest android.ttl FCM accepts: 4 weeks.
	MaxTTLSeconds = 2419200
	// maxRequestBytes is the largest request body read at all.
	maxRequestBytes = 1 << 20
)

// Google's messages for refused OAuth2 credentials.
const (
	msgCredentialsMissing = "Request is missing required authentication credential. Expected OAuth 2 access token, " +
		"login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
	msgCredentialsInvalid = "Request had invalid authentication credentials. Expected OAuth 2 access token, " +
		"login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)

// Detail type URLs of Google's error details.
const (
	typeFcmError   = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
	typeBadRequest = "type.googleapis.com/google.rpc.BadRequest"
	typeErrorInfo  = "type.googleapis.com/google.rpc.ErrorInfo"
	typeQuota      = "type.googleapis.com/google.rpc.QuotaFailure"
)

// apiError is an error answer in Google's JSON shape:
// {"error":{"code","message","status","details"}}.
type apiError struct {
	httpStatus int
	status     string
	message    string
	details    []any
	retryAfter string
}

// fcmErr is an FCM error with its FcmError detail, in the HTTP status and
// canonical status FCM documents for the code.
func fcmErr(code, message string) *apiError {
	e := &apiError{details: []any{map[string]any{"@type": typeFcmError, "errorCode": code}}}
	switch code {
	case InvalidArgument:
		e.httpStatus, e.status, e.message = 400, "INVALID_ARGUMENT", "Request contains an invalid argument."
	case Unregistered:
		e.httpStatus, e.status, e.message = 404, "NOT_FOUND", "Requested entity was not found."
	case SenderIDMismatch:
		e.httpStatus, e.status, e.message = 403, "PERMISSION_DENIED", "SenderId mismatch"
	case QuotaExceeded:
		e.httpStatus, e.status, e.message = 429, "RESOURCE_EXHAUSTED",
			"Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' of service 'fcm.googleapis.com'."
	case Unavailable:
		e.httpStatus, e.status, e.message = 503, "UNAVAILABLE", "The service is currently unavailable."
	case Internal:
		e.httpStatus, e.status, e.message = 500, "INTERNAL", "Internal error encountered."
	case ThirdPartyAuthError:
		e.httpStatus, e.status, e.message = 401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"
	case Unauthenticated:
		return credentialsErr(msgCredentialsInvalid, "ACCESS_TOKEN_EXPIRED")
	default:
		e.httpStatus, e.status, e.message = 500, "UNKNOWN", "Unknown error."
	}
	if message != "" {
		e.message = message
	}
	return e
}

// credentialsErr is the 401 of a missing or refused access token: no
// FcmError, an ErrorInfo with the reason.
func credentialsErr(message, reason string) *apiError {
	return &apiError{httpStatus: 401, status: "UNAUTHENTICATED", message: message, details: []any{map[string]any{
		"@type":  typeErrorInfo,
		"reason": reason,
		"domain": "googleapis.com",
		"metadata": map[string]string{
			"method":  "google.firebase.fcm.v1.FcmService.SendMessage",
			"service": "fcm.googleapis.com",
		},
	}}}
}

// badRequest is a 400 INVALID_ARGUMENT with a BadRequest detail naming the
// field, as Google answers a request that does not parse.
func badRequest(field, description string) *apiError {
	v := map[string]string{"description": description}
	if field != "" {
		v["field"] = field
	}
	return &apiError{httpStatus: 400, status: "INVALID_ARGUMENT", message: description, details: []any{map[string]any{
		"@type": typeBadRequest, "fieldViolations": []map[string]string{v},
	}}}
}

func (e *apiError) write(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=UTF-8")
	h.Set("Vary", "Origin, X-Origin, Referer")
	if e.retryAfter != "" {
		h.Set("Retry-After", e.retryAfter)
	}
	if e.httpStatus == http.StatusUnauthorized && e.status == "UNAUTHENTICATED" && len(e.details) > 0 {
		if d, ok := e.details[0].(map[string]any); ok && d["@type"] == typeErrorInfo {
			h.Set("WWW-Authenticate", `Bearer realm="https://accounts.google.com/", error="invalid_token"`)
		}
	}
	w.WriteHeader(e.httpStatus)
	body := struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			Status  string `json:"status"`
			Details []any  `json:"details,omitempty"`
		} `json:"error"`
	}{}
	body.Error.Code, body.Error.Message, body.Error.Status, body.Error.Details = e.httpStatus, e.message, e.status, e.details
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	enc.Encode(body)
}

// serveSend is projects.messages.send.
func (s *Server) serveSend(w http.ResponseWriter, r *http.Request, project string) {
	s.mu.Lock()
	s.requests++
	s.inFlight++
	s.peakInFlight = max(s.peakInFlight, s.inFlight)
	s.notifyLocked()
	latency := s.latency
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()

	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes+1))
	if err != nil {
		return // the client went away mid-request; nobody to answer
	}
	if !wait(r.Context(), latency) {
		return
	}
	if e := s.authorize(r, project); e != nil {
		e.write(w)
		return
	}
	if len(body) > maxRequestBytes {
		badRequest("", fmt.Sprintf("Request payload size exceeds the limit: %d bytes.", maxRequestBytes)).write(w)
		return
	}
	msg, key, validateOnly, e := parseSend(body)
	if e != nil {
		e.write(w)
		return
	}
	if validateOnly {
		s.writeName(w, project, "fake_message_id")
		return
	}

	s.mu.Lock()
	var resp *Response
	if q := s.scripts[key]; len(q) > 0 {
		next := q[0]
		resp = &next
		if len(q) == 1 {
			delete(s.scripts, key)
		} else {
			s.scripts[key] = q[1:]
		}
	}
	unregistered := s.unregistered[key]
	failCode := ""
	if s.failRate > 0 && rand.Float64() < s.failRate {
		failCode = s.failCode
	}
	s.mu.Unlock()

	switch {
	case resp != nil:
		if !wait(r.Context(), resp.Delay) {
			return
		}
		switch {
		case resp.Drop:
			if resp.Accept {
				s.accept(project, key, msg)
			}
			dropConn(r)
		case resp.Status != 0:
			if resp.RetryAfter != "" {
				w.Header().Set("Retry-After", resp.RetryAfter)
			}
			w.WriteHeader(resp.Status)
			io.WriteString(w, resp.Body)
		case resp.Code != "":
			e := fcmErr(resp.Code, resp.Message)
			e.retryAfter = resp.RetryAfter
			e.write(w)
		default:
			s.writeName(w, project, s.accept(project, key, msg))
		}
	case unregistered:
		fcmErr(Unregistered, "").write(w)
	case failCode != "":
		fcmErr(failCode, "").write(w)
	default:
		s.writeName(w, project, s.accept(project, key, msg))
	}
}

// authorize checks the bearer token, the project and the project's quota,
// in the order Google's front end does.
func (s *Server) authorize(r *http.Request, project string) *apiError {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return credentialsErr(msgCredentialsMissing, "CREDENTIALS_MISSING")
	}
	scheme, tok, _ := strings.Cut(auth, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return credentialsErr(msgCredentialsInvalid, "ACCESS_TOKEN_TYPE_UNSUPPORTED")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	at, ok := s.tokens[strings.TrimSpace(tok)]
	switch {
	case !ok:
		return credentialsErr(msgCredentialsInvalid, "ACCESS_TOKEN_TYPE_UNSUPPORTED")
	case !now.Before(at.expiry):
		return credentialsErr(msgCredentialsInvalid, "ACCESS_TOKEN_EXPIRED")
	case !at.scoped:
		return &apiError{httpStatus: 403, status: "PERMISSION_DENIED", message: "Request had insufficient authentication scopes.",
			details: []any{map[string]any{"@type": typeErrorInfo, "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "domain": "googleapis.com",
				"metadata": map[string]string{"method": "google.firebase.fcm.v1.FcmService.SendMessage", "service": "fcm.googleapis.com"}}}}
	}
	if project != s.opts.ProjectID {
		msg := fmt.Sprintf("Permission 'cloudmessaging.messages.create' denied on resource "+
			"'//cloudresourcemanager.googleapis.com/projects/%s' (or it may not exist).", project)
		return &apiError{httpStatus: 403, status: "PERMISSION_DENIED", message: msg, details: []any{map[string]any{
			"@type": typeErrorInfo, "reason": "IAM_PERMISSION_DENIED", "domain": "cloudresourcemanager.googleapis.com",
			"metadata": map[string]string{"permission": "cloudmessaging.messages.create", "resource": "projects/" + project},
		}}}
	}
	if s.quotaN > 0 && s.quotaPer > 0 {
		if s.quotaStart.IsZero() || !now.Before(s.quotaStart.Add(s.quotaPer)) {
			s.quotaStart, s.quotaUsed = now, 0
		}
		if s.quotaUsed >= s.quotaN {
			left := s.quotaStart.Add(s.quotaPer).Sub(now)
			e := fcmErr(QuotaExceeded, "")
			e.details = append(e.details, map[string]any{"@type": typeQuota, "violations": []map[string]string{{
				"subject":     "projects/" + project,
				"description": fmt.Sprintf("Send requests per %s per project exceeded (limit %d).", s.quotaPer, s.quotaN),
			}}})
			e.retryAfter = strconv.FormatInt(int64((left+time.Second-1)/time.Second), 10)
			return e
		}
		s.quotaUsed++
	}
	return nil
}

// accept counts msg as delivered to key and returns its id.
func (s *Server) accept(project, key string, msg *Message) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	id := fmt.Sprintf("0:%d%%%016x", s.now().UnixMicro(), s.seq)
	s.counts[key]++
	s.total++
	if s.receivedN < s.opts.ReceivedLimit { // a negative limit keeps none
		m := *msg
		m.Name = "projects/" + project + "/messages/" + id
		s.received[key] = append(s.received[key], m)
		s.receivedN++
	}
	s.notifyLocked()
	return id
}

func (s *Server) writeName(w http.ResponseWriter, project, id string) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	fmt.Fprintf(w, "{\n  \"name\": %q\n}\n", "projects/"+project+"/messages/"+id)
}

// dropConn closes the request's TCP connection without answering: no
// response, no TLS close_notify, no GOAWAY. On HTTP/2 every other stream
// of the connection fails with it, as it would with a real network fault.
func dropConn(r *http.Request) {
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if c != nil {
		c.Close()
	}
}

// wait waits d, or less if ctx ends; it reports whether ctx is still live.
func wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// field is one member of a JSON object, in document order.
type field struct {
	name string
	raw  json.RawMessage
}

// objectFields splits a JSON object into its members, keeping their order
// (Google names map entries by position: data[3].value).
func objectFields(raw []byte) ([]field, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, false
	}
	var fs []field
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, false
		}
		name, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, false
		}
		fs = append(fs, field{name, v})
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return nil, false
	}
	return fs, true
}

// protoName maps a JSON name to the proto field name: proto3 JSON accepts
// both lowerCamelCase and the original snake_case.
func protoName(name string) string {
	if !strings.ContainsAny(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
		return name
	}
	var b strings.Builder
	for _, r := range name {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('_')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// invalidValue is Google's parse error for a value of the wrong type.
func invalidValue(path, typ string, raw json.RawMessage) *apiError {
	return badRequest(path, fmt.Sprintf("Invalid value at '%s' (%s), %s", path, typ, raw))
}

// unknownNames is Google's parse error for members the schema lacks.
func unknownNames(path string, names []string) *apiError {
	at := ""
	if path != "" {
		at = " at '" + path + "'"
	}
	e := &apiError{httpStatus: 400, status: "INVALID_ARGUMENT"}
	var msgs []string
	var vs []map[string]string
	for _, n := range names {
		d := fmt.Sprintf("Invalid JSON payload received. Unknown name %q%s: Cannot find field.", n, at)
		msgs = append(msgs, d)
		v := map[string]string{"description": d}
		if path != "" {
			v["field"] = path
		}
		vs = append(vs, v)
	}
	e.message = strings.Join(msgs, "\n")
	e.details = []any{map[string]any{"@type": typeBadRequest, "fieldViolations": vs}}
	return e
}

// members parses a JSON object into its members; ok is false for any
// other value. It is the fast path: document order, which only error
// messages need, is recovered with objectFields then.
func members(raw []byte) (map[string]json.RawMessage, bool) {
	if len(raw) == 0 || raw[0] != '{' {
		return nil, false
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return nil, false
	}
	return m, true
}

// object parses an object value with the given known members, keyed by
// proto name, null members left out.
func object(path, typ string, raw json.RawMessage, known ...string) (map[string]json.RawMessage, *apiError) {
	m, ok := members(raw)
	if !ok {
		return nil, invalidValue(path, typ, raw)
	}
	out := make(map[string]json.RawMessage, len(m))
	bad := false
	for name, v := range m {
		n := protoName(name)
		if !contains(known, n) {
			bad = true
			continue
		}
		if !isNull(v) {
			out[n] = v
		}
	}
	if bad {
		fs, _ := objectFields(raw)
		var unknown []string
		for _, f := range fs {
			if !contains(known, protoName(f.name)) {
				unknown = append(unknown, f.name)
			}
		}
		return nil, unknownNames(path, unknown)
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func str(path string, raw json.RawMessage) (string, *apiError) {
	if raw == nil {
		return "", nil
	}
	if len(raw) < 2 || raw[0] != '"' {
		return "", invalidValue(path, "TYPE_STRING", raw)
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		// No escapes: the common case needs no decoder.
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", invalidValue(path, "TYPE_STRING", raw)
	}
	return s, nil
}

func boolean(path string, raw json.RawMessage) *apiError {
	if raw == nil || string(raw) == "true" || string(raw) == "false" {
		return nil
	}
	return invalidValue(path, "TYPE_BOOL", raw)
}

// stringMap parses a map<string, string>: every value must be a string.
func stringMap(path string, raw json.RawMessage) (map[string]string, *apiError) {
	if raw == nil {
		return nil, nil
	}
	var m map[string]string
	if len(raw) > 0 && raw[0] == '{' && json.Unmarshal(raw, &m) == nil {
		return m, nil
	}
	// Name the first bad entry by position, as Google does.
	fs, ok := objectFields(raw)
	if !ok {
		return nil, invalidValue(path, "TYPE_MAP", raw)
	}
	for i, f := range fs {
		if _, e := str(fmt.Sprintf("%s[%d].value", path, i), f.raw); e != nil {
			return nil, e
		}
	}
	return nil, invalidValue(path, "TYPE_MAP", raw)
}

// tokenPattern is what a registration token is made of; anything else is
// not a token FCM issued.
var tokenPattern = regexp.MustCompile(`^[A-Za-z0-9_:.\-]+$`)

var topicPattern = regexp.MustCompile(`^[a-zA-Z0-9\-_.~%]+$`)

// ttlPattern is a google.protobuf.Duration in JSON.
var ttlPattern = regexp.MustCompile(`^-?[0-9]+(\.[0-9]{1,9})?s$`)

// parseSend parses and validates a SendMessageRequest. key is what the
// message targets: the token, "/topics/NAME" or the condition.
func parseSend(body []byte) (msg *Message, key string, validateOnly bool, e *apiError) {
	body = bytes.TrimSpace(body)
	if _, ok := members(body); !ok {
		return nil, "", false, badRequest("", "Invalid JSON payload received. Unexpected token or end of input.")
	}
	top, e := object("", "SendMessageRequest", body, "message", "validate_only")
	if e != nil {
		return nil, "", false, e
	}
	if e := boolean("validate_only", top["validate_only"]); e != nil {
		return nil, "", false, e
	}
	validateOnly = string(top["validate_only"]) == "true"
	raw := top["message"]
	if raw == nil {
		raw = json.RawMessage("{}")
	}
	m, e := object("message", "type.googleapis.com/google.firebase.fcm.v1.Message", raw,
		"name", "data", "notification", "android", "webpush", "apns", "fcm_options", "token", "topic", "condition")
	if e != nil {
		return nil, "", false, e
	}
	msg = &Message{Android: m["android"], APNs: m["apns"], Webpush: m["webpush"], FCMOptions: m["fcm_options"]}

	// The target is a proto oneof: setting a second member is a parse
	// error naming it, in document order.
	targets := 0
	for _, n := range []string{"token", "topic", "condition"} {
		if _, ok := m[n]; ok {
			targets++
		}
	}
	if targets > 1 {
		fs, _ := objectFields(raw)
		set := ""
		for _, f := range fs {
			n := protoName(f.name)
			if (n == "token" || n == "topic" || n == "condition") && !isNull(f.raw) {
				if set != "" {
					return nil, "", false, badRequest("message", fmt.Sprintf(
						"Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set '%s'", n))
				}
				set = n
			}
		}
	}
	for _, n := range []string{"name", "token", "topic", "condition"} {
		v, e := str("message."+n, m[n])
		if e != nil {
			return nil, "", false, e
		}
		switch n {
		case "token":
			msg.Token = v
		case "topic":
			msg.Topic = v
		case "condition":
			msg.Condition = v
		}
	}
	limit := MaxPayloadBytes
	switch {
	case msg.Token != "":
		if len(msg.Token) > 4096 || !tokenPattern.MatchString(msg.Token) {
			return nil, "", false, fcmErr(InvalidArgument, InvalidTokenMessage)
		}
		key = msg.Token
	case msg.Topic != "":
		if len(msg.Topic) > 900 || !topicPattern.MatchString(msg.Topic) {
			return nil, "", false, fcmErr(InvalidArgument, "Invalid topic name: "+msg.Topic)
		}
		key, limit = "/topics/"+msg.Topic, MaxTopicPayloadBytes
	case msg.Condition != "":
		key, limit = msg.Condition, MaxTopicPayloadBytes
	default:
		return nil, "", false, fcmErr(InvalidArgument, "Recipient of the message is not set.")
	}

	if raw := m["notification"]; raw != nil {
		n, e := object("message.notification", "type.googleapis.com/google.firebase.fcm.v1.Notification", raw, "title", "body", "image")
		if e != nil {
			return nil, "", false, e
		}
		msg.Notification = true
		for _, f := range []struct {
			name string
			dst  *string
		}{{"title", &msg.Title}, {"body", &msg.Body}, {"image", &msg.Image}} {
			if *f.dst, e = str("message.notification."+f.name, n[f.name]); e != nil {
				return nil, "", false, e
			}
		}
	}
	if msg.Data, e = stringMap("message.data", m["data"]); e != nil {
		return nil, "", false, e
	}
	for k := range msg.Data {
		lk := strings.ToLower(k)
		if lk == "from" || lk == "message_type" || strings.HasPrefix(lk, "google.") || strings.HasPrefix(lk, "gcm.") {
			return nil, "", false, fcmErr(InvalidArgument, "Invalid data payload key: "+k)
		}
	}
	if e := validateAndroid(m["android"]); e != nil {
		return nil, "", false, e
	}
	if e := validateAPNs(m["apns"]); e != nil {
		return nil, "", false, e
	}
	if raw := m["webpush"]; raw != nil {
		w, e := object("message.webpush", "type.googleapis.com/google.firebase.fcm.v1.WebpushConfig", raw,
			"headers", "data", "notification", "fcm_options")
		if e != nil {
			return nil, "", false, e
		}
		if _, e := stringMap("message.webpush.headers", w["headers"]); e != nil {
			return nil, "", false, e
		}
		if _, e := stringMap("message.webpush.data", w["data"]); e != nil {
			return nil, "", false, e
		}
	}
	if raw := m["fcm_options"]; raw != nil {
		o, e := object("message.fcm_options", "type.googleapis.com/google.firebase.fcm.v1.FcmOptions", raw, "analytics_label")
		if e != nil {
			return nil, "", false, e
		}
		if _, e := str("message.fcm_options.analytics_label", o["analytics_label"]); e != nil {
			return nil, "", false, e
		}
	}

	size := len(msg.Title) + len(msg.Body) + len(msg.Image)
	for k, v := range msg.Data {
		size += len(k) + len(v)
	}
	if size > limit {
		e := fcmErr(InvalidArgument, "Android message is too big")
		e.details = append([]any{map[string]any{"@type": typeBadRequest}}, e.details...)
		return nil, "", false, e
	}
	return msg, key, validateOnly, nil
}

func validateAndroid(raw json.RawMessage) *apiError {
	if raw == nil {
		return nil
	}
	a, e := object("message.android", "type.googleapis.com/google.firebase.fcm.v1.AndroidConfig", raw,
		"collapse_key", "priority", "ttl", "restricted_package_name", "data", "notification", "fcm_options",
		"direct_boot_ok", "restricted_satellite_ok", "bandwidth_constrained_ok")
	if e != nil {
		return e
	}
	for _, n := range []string{"collapse_key", "restricted_package_name"} {
		if _, e := str("message.android."+n, a[n]); e != nil {
			return e
		}
	}
	for _, n := range []string{"direct_boot_ok", "restricted_satellite_ok", "bandwidth_constrained_ok"} {
		if e := boolean("message.android."+n, a[n]); e != nil {
			return e
		}
	}
	if p := a["priority"]; p != nil {
		switch string(p) {
		case `"NORMAL"`, `"HIGH"`, "0", "1", "2":
		default:
			return invalidValue("message.android.priority", "type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority", p)
		}
	}
	if t := a["ttl"]; t != nil {
		var s string
		if json.Unmarshal(t, &s) != nil || !ttlPattern.MatchString(s) {
			return invalidValue("message.android.ttl", "type.googleapis.com/google.protobuf.Duration", t)
		}
		secs, err := strconv.ParseFloat(strings.TrimSuffix(s, "s"), 64)
		if err != nil || secs < 0 || secs > MaxTTLSeconds {
			e := badRequest("message.android.ttl", fmt.Sprintf(
				"Invalid value at 'message.android.ttl': %s is out of range; a TTL is between 0s and %ds (4 weeks)", s, MaxTTLSeconds))
			e.details = append(e.details, map[string]any{"@type": typeFcmError, "errorCode": InvalidArgument})
			return e
		}
	}
	if _, e := stringMap("message.android.data", a["data"]); e != nil {
		return e
	}
	if n := a["notification"]; n != nil {
		if _, ok := members(n); !ok {
			return invalidValue("message.android.notification", "type.googleapis.com/google.firebase.fcm.v1.AndroidNotification", n)
		}
	}
	return nil
}

func validateAPNs(raw json.RawMessage) *apiError {
	if raw == nil {
		return nil
	}
	a, e := object("message.apns", "type.googleapis.com/google.firebase.fcm.v1.ApnsConfig", raw,
		"headers", "payload", "fcm_options", "live_activity_token")
	if e != nil {
		return e
	}
	if _, e := stringMap("message.apns.headers", a["headers"]); e != nil {
		return e
	}
	if _, e := str("message.apns.live_activity_token", a["live_activity_token"]); e != nil {
		return e
	}
	if p := a["payload"]; p != nil {
		if _, ok := members(p); !ok {
			return invalidValue("message.apns.payload", "type.googleapis.com/google.protobuf.Struct", p)
		}
	}
	return nil
}

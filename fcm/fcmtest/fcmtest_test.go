package fcmtest_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pushblaster/pushblaster/fcm/fcmtest"
	"github.com/pushblaster/pushblaster/internal/fakeclock"
)

// bundle is a running fake and what talking to it takes.
type bundle struct {
	srv   *fcmtest.Server
	clock *fakeclock.Clock
	key   *rsa.PrivateKey
	keyID string
	hc    *http.Client
}

func setup(t *testing.T, opts fcmtest.Options) *bundle {
	t.Helper()
	t.Parallel()
	b := &bundle{clock: fakeclock.New(time.Now().Truncate(time.Second))}
	if opts.Now == nil {
		opts.Now = b.clock.Now
	}
	srv, err := fcmtest.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	b.srv, b.hc = srv, srv.Client()
	var f struct {
		PrivateKey   string `json:"private_key"`
		PrivateKeyID string `json:"private_key_id"`
	}
	if err := json.Unmarshal(srv.CredentialsJSON(), &f); err != nil {
		t.Fatal(err)
	}
	if b.key, err = jwt.ParseRSAPrivateKeyFromPEM([]byte(f.PrivateKey)); err != nil {
		t.Fatal(err)
	}
	b.keyID = f.PrivateKeyID
	return b
}

// claims are a valid assertion's claims at the fake's time.
func (b *bundle) claims() jwt.MapClaims {
	now := b.clock.Now()
	return jwt.MapClaims{
		"iss":   b.srv.ClientEmail(),
		"aud":   b.srv.TokenURI(),
		"scope": fcmtest.ScopeFirebaseMessaging,
		"iat":   now.Unix(),
		"exp":   now.Add(time.Hour).Unix(),
	}
}

func sign(t *testing.T, key *rsa.PrivateKey, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// exchange posts an assertion to the token endpoint.
func (b *bundle) exchange(t *testing.T, grant, assertion string) (int, map[string]any) {
	t.Helper()
	resp, err := b.hc.PostForm(b.srv.TokenURI(), url.Values{"grant_type": {grant}, "assertion": {assertion}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

const jwtBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"

func (b *bundle) accessToken(t *testing.T) string {
	t.Helper()
	st, body := b.exchange(t, jwtBearer, sign(t, b.key, b.keyID, b.claims()))
	if st != 200 {
		t.Fatalf("token: %d %v", st, body)
	}
	return body["access_token"].(string)
}

// response is a decoded answer of the send method.
type response struct {
	status int
	header http.Header
	proto  int
	raw    string
	Name   string `json:"name"`
	Error  struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
		Details []struct {
			Type            string `json:"@type"`
			ErrorCode       string `json:"errorCode"`
			Reason          string `json:"reason"`
			FieldViolations []struct {
				Field       string `json:"field"`
				Description string `json:"description"`
			} `json:"fieldViolations"`
		} `json:"details"`
	} `json:"error"`
}

func (r *response) errorCode() string {
	for _, d := range r.Error.Details {
		if d.Type == "type.googleapis.com/google.firebase.fcm.v1.FcmError" {
			return d.ErrorCode
		}
	}
	return ""
}

func (r *response) violation() string {
	for _, d := range r.Error.Details {
		if d.Type == "type.googleapis.com/google.rpc.BadRequest" && len(d.FieldViolations) > 0 {
			return d.FieldViolations[0].Field
		}
	}
	return ""
}

func (b *bundle) send(t *testing.T, bearer, project, body string) *response {
	t.Helper()
	req, err := http.NewRequest("POST", b.srv.URL()+"/v1/projects/"+project+"/messages:send", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := &response{status: resp.StatusCode, header: resp.Header, proto: resp.ProtoMajor, raw: string(raw)}
	if err := json.Unmarshal(raw, r); err != nil {
		t.Fatalf("answer is not JSON: %v\n%s", err, raw)
	}
	return r
}

func TestTokenEndpointVerifiesJWT(t *testing.T) {
	b := setup(t, fcmtest.Options{})
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	with := func(k string, v any) jwt.MapClaims {
		c := b.claims()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	now := b.clock.Now()
	tests := []struct {
		name      string
		grant     string
		assertion string
		code      string
		desc      string
	}{
		{"wrong key", jwtBearer, sign(t, other, b.keyID, b.claims()), "invalid_grant", "Invalid JWT Signature."},
		{"wrong kid", jwtBearer, sign(t, b.key, "nope", b.claims()), "invalid_grant", "Invalid JWT Signature."},
		{"wrong aud", jwtBearer, sign(t, b.key, b.keyID, with("aud", "https://oauth2.googleapis.com/token")), "invalid_grant", "Failed audience check"},
		{"wrong iss", jwtBearer, sign(t, b.key, b.keyID, with("iss", "someone@else.iam.gserviceaccount.com")), "invalid_grant", "account not found"},
		{"expired", jwtBearer, sign(t, b.key, b.keyID, with("exp", now.Add(-time.Hour).Unix())), "invalid_grant", "short-lived token"},
		{"too long-lived", jwtBearer, sign(t, b.key, b.keyID, with("exp", now.Add(2*time.Hour).Unix())), "invalid_grant", "short-lived token"},
		{"issued in the future", jwtBearer, sign(t, b.key, b.keyID, with("iat", now.Add(time.Hour).Unix())), "invalid_grant", "short-lived token"},
		{"no scope", jwtBearer, sign(t, b.key, b.keyID, with("scope", nil)), "invalid_scope", "Invalid OAuth scope"},
		{"not a JWT", jwtBearer, "abc", "invalid_grant", "Invalid JWT"},
		{"wrong grant", "client_credentials", sign(t, b.key, b.keyID, b.claims()), "unsupported_grant_type", "Invalid grant_type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, body := b.exchange(t, tt.grant, tt.assertion)
			if st != 400 || body["error"] != tt.code || !strings.Contains(body["error_description"].(string), tt.desc) {
				t.Errorf("got %d %v, want 400 %s %q", st, body, tt.code, tt.desc)
			}
		})
	}

	st, body := b.exchange(t, jwtBearer, sign(t, b.key, b.keyID, b.claims()))
	if st != 200 || body["token_type"] != "Bearer" || body["expires_in"] != float64(3599) || !strings.HasPrefix(body["access_token"].(string), "ya29.") {
		t.Errorf("valid assertion: %d %v", st, body)
	}
	if n := b.srv.TokenRequests(); n != len(tests)+1 {
		t.Errorf("TokenRequests = %d, want %d", n, len(tests)+1)
	}
}

func TestAccessTokens(t *testing.T) {
	b := setup(t, fcmtest.Options{TokenTTL: 10 * time.Second})
	p := b.srv.ProjectID()
	msg := `{"message":{"token":"t1","notification":{"title":"hi"}}}`

	r := b.send(t, "", p, msg)
	if r.status != 401 || r.Error.Status != "UNAUTHENTICATED" || !strings.HasPrefix(r.Error.Message, "Request is missing required authentication credential") ||
		r.Error.Details[0].Reason != "CREDENTIALS_MISSING" {
		t.Errorf("no token: %d %s", r.status, r.raw)
	}
	tok := b.accessToken(t)
	if r := b.send(t, tok, p, msg); r.status != 200 || r.proto != 2 {
		t.Fatalf("valid token: %d HTTP/%d %s", r.status, r.proto, r.raw)
	}
	b.clock.Advance(10 * time.Second)
	r = b.send(t, tok, p, msg)
	if r.status != 401 || r.Error.Code != 401 || !strings.HasPrefix(r.Error.Message, "Request had invalid authentication credentials") ||
		r.Error.Details[0].Reason != "ACCESS_TOKEN_EXPIRED" || r.header.Get("WWW-Authenticate") == "" {
		t.Errorf("expired token: %d %s", r.status, r.raw)
	}
	tok = b.accessToken(t)
	b.srv.RevokeTokens()
	if r := b.send(t, tok, p, msg); r.status != 401 || r.Error.Status != "UNAUTHENTICATED" || r.errorCode() != "" {
		t.Errorf("revoked token: %d %s", r.status, r.raw)
	}

	tok = b.accessToken(t)
	r = b.send(t, tok, "other-project", msg)
	if r.status != 403 || r.Error.Status != "PERMISSION_DENIED" || !strings.Contains(r.Error.Message, "cloudmessaging.messages.create") {
		t.Errorf("unknown project: %d %s", r.status, r.raw)
	}
	if b.srv.Total() != 1 || b.srv.Requests() != 5 {
		t.Errorf("Total = %d, Requests = %d; want 1, 5", b.srv.Total(), b.srv.Requests())
	}
}

func TestSendValidation(t *testing.T) {
	b := setup(t, fcmtest.Options{})
	tok := b.accessToken(t)
	big := strings.Repeat("x", 4096)
	tests := []struct {
		name      string
		body      string
		status    int
		errorCode string // FcmError errorCode, if any
		violation string // BadRequest field, if any
		message   string
	}{
		{"two targets", `{"message":{"token":"t1","topic":"news"}}`, 400, "", "message",
			"oneof field 'target' is already set. Cannot set 'topic'"},
		{"no target", `{"message":{"notification":{"title":"x"}}}`, 400, "INVALID_ARGUMENT", "", "Recipient of the message is not set."},
		{"non-string data", `{"message":{"token":"t1","data":{"a":"1","b":12}}}`, 400, "", "message.data[1].value",
			"Invalid value at 'message.data[1].value' (TYPE_STRING), 12"},
		{"reserved data key", `{"message":{"token":"t1","data":{"from":"me"}}}`, 400, "INVALID_ARGUMENT", "", "Invalid data payload key: from"},
		{"oversize payload", `{"message":{"token":"t1","notification":{"title":"` + big + `"},"data":{"k":"` + big[:200] + `"}}}`, 400,
			"INVALID_ARGUMENT", "", "Android message is too big"},
		{"oversize to a topic", `{"message":{"topic":"news","data":{"k":"` + big[:2100] + `"}}}`, 400, "INVALID_ARGUMENT", "", "too big"},
		{"ttl not a duration", `{"message":{"token":"t1","android":{"ttl":"1h"}}}`, 400, "", "message.android.ttl",
			`Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), "1h"`},
		{"ttl a number", `{"message":{"token":"t1","android":{"ttl":3600}}}`, 400, "", "message.android.ttl", "google.protobuf.Duration"},
		{"ttl over 4 weeks", `{"message":{"token":"t1","android":{"ttl":"2419201s"}}}`, 400, "INVALID_ARGUMENT", "message.android.ttl", "out of range"},
		{"negative ttl", `{"message":{"token":"t1","android":{"ttl":"-1s"}}}`, 400, "INVALID_ARGUMENT", "message.android.ttl", "out of range"},
		{"unknown field", `{"message":{"token":"t1","priority":"high"}}`, 400, "", "message",
			`Invalid JSON payload received. Unknown name "priority" at 'message': Cannot find field.`},
		{"legacy request", `{"to":"t1","notification":{"title":"x"}}`, 400, "", "",
			`Invalid JSON payload received. Unknown name "to": Cannot find field.`},
		{"unknown notification field", `{"message":{"token":"t1","notification":{"titel":"x"}}}`, 400, "", "message.notification",
			`Unknown name "titel" at 'message.notification'`},
		{"malformed token", `{"message":{"token":"not a token"}}`, 400, "INVALID_ARGUMENT", "", fcmtest.InvalidTokenMessage},
		{"bad priority", `{"message":{"token":"t1","android":{"priority":"URGENT"}}}`, 400, "", "message.android.priority", "AndroidMessagePriority"},
		{"not JSON", `{"message":`, 400, "", "", "Invalid JSON payload received."},
		{"ok with ttl and camelCase", `{"message":{"token":"t1","android":{"ttl":"86400.5s","collapseKey":"c","priority":"HIGH"},"apns":{"headers":{"apns-priority":"10"},"payload":{"aps":{"badge":1}}}}}`, 200, "", "", ""},
		{"ok at the limit", `{"message":{"token":"t1","data":{"k":"` + big[:4095] + `"}}}`, 200, "", "", ""},
		{"validate only", `{"validate_only":true,"message":{"token":"t2"}}`, 200, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.send(t, tok, b.srv.ProjectID(), tt.body)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.raw)
			}
			if tt.status == 200 {
				if !strings.HasPrefix(r.Name, "projects/"+b.srv.ProjectID()+"/messages/") {
					t.Errorf("name %q", r.Name)
				}
				return
			}
			if r.Error.Code != tt.status || r.Error.Status != "INVALID_ARGUMENT" || !strings.Contains(r.Error.Message, tt.message) {
				t.Errorf("error %d %s %q, want %d INVALID_ARGUMENT containing %q", r.Error.Code, r.Error.Status, r.Error.Message, tt.status, tt.message)
			}
			if got := r.errorCode(); got != tt.errorCode {
				t.Errorf("FcmError errorCode %q, want %q: %s", got, tt.errorCode, r.raw)
			}
			if got := r.violation(); got != tt.violation {
				t.Errorf("fieldViolations field %q, want %q: %s", got, tt.violation, r.raw)
			}
		})
	}
	// validate_only is not a delivery.
	if n := b.srv.Count("t2"); n != 0 {
		t.Errorf("validate_only delivered %d", n)
	}
}

func TestReceivedAndCounters(t *testing.T) {
	b := setup(t, fcmtest.Options{})
	tok := b.accessToken(t)
	body := `{"message":{"token":"t1","notification":{"title":"Hi","body":"there","image":"https://x/i.png"},` +
		`"data":{"k":"v"},"android":{"ttl":"60s"}}}`
	r := b.send(t, tok, b.srv.ProjectID(), body)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.raw)
	}
	got := b.srv.Received("t1")
	if len(got) != 1 {
		t.Fatalf("Received = %v", got)
	}
	m := got[0]
	if m.Name != r.Name || m.Token != "t1" || m.Title != "Hi" || m.Body != "there" || m.Image != "https://x/i.png" ||
		m.Data["k"] != "v" || string(m.Android) != `{"ttl":"60s"}` || !m.Notification {
		t.Errorf("received %+v", m)
	}
	if b.srv.Count("t1") != 1 || b.srv.Total() != 1 || b.srv.Requests() != 1 {
		t.Errorf("counters %d %d %d", b.srv.Count("t1"), b.srv.Total(), b.srv.Requests())
	}
	b.srv.Reset()
	if b.srv.Count("t1") != 0 || b.srv.Total() != 0 || b.srv.Requests() != 0 || len(b.srv.Received("t1")) != 0 {
		t.Error("Reset left counters")
	}
}

func TestQuota(t *testing.T) {
	b := setup(t, fcmtest.Options{})
	tok := b.accessToken(t)
	b.srv.SetQuota(2, time.Minute)
	msg := `{"message":{"token":"t1"}}`
	for i := range 2 {
		if r := b.send(t, tok, b.srv.ProjectID(), msg); r.status != 200 {
			t.Fatalf("send %d: %d %s", i, r.status, r.raw)
		}
	}
	r := b.send(t, tok, b.srv.ProjectID(), msg)
	if r.status != 429 || r.Error.Status != "RESOURCE_EXHAUSTED" || r.errorCode() != "QUOTA_EXCEEDED" || r.header.Get("Retry-After") != "60" {
		t.Fatalf("over quota: %d Retry-After %q %s", r.status, r.header.Get("Retry-After"), r.raw)
	}
	b.clock.Advance(45 * time.Second)
	if r := b.send(t, tok, b.srv.ProjectID(), msg); r.status != 429 || r.header.Get("Retry-After") != "15" {
		t.Fatalf("later in the window: %d Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	b.clock.Advance(15 * time.Second)
	if r := b.send(t, tok, b.srv.ProjectID(), msg); r.status != 200 {
		t.Fatalf("next window: %d %s", r.status, r.raw)
	}
	if b.srv.Count("t1") != 3 || b.srv.Requests() != 5 {
		t.Errorf("Count %d Requests %d, want 3 5", b.srv.Count("t1"), b.srv.Requests())
	}
}

func TestScripts(t *testing.T) {
	b := setup(t, fcmtest.Options{})
	tok := b.accessToken(t)
	date := b.clock.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	b.srv.Script("t1",
		fcmtest.Response{Code: fcmtest.Unavailable, RetryAfter: "7"},
		fcmtest.Response{Code: fcmtest.Internal, RetryAfter: date},
		fcmtest.Error(fcmtest.QuotaExceeded),
		fcmtest.Error(fcmtest.SenderIDMismatch),
		fcmtest.Error(fcmtest.ThirdPartyAuthError),
		fcmtest.Error(fcmtest.Unauthenticated),
		fcmtest.Response{Code: fcmtest.InvalidArgument, Message: fcmtest.InvalidTokenMessage},
		fcmtest.Response{Status: 502, Body: "<html>bad gateway</html>"},
	)
	b.srv.Unregister("gone")
	want := []struct {
		status     int
		canonical  string
		code       string
		retryAfter string
	}{
		{503, "UNAVAILABLE", "UNAVAILABLE", "7"},
		{500, "INTERNAL", "INTERNAL", date},
		{429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", ""},
		{403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", ""},
		{401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", ""},
		{401, "UNAUTHENTICATED", "", ""},
		{400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", ""},
	}
	msg := `{"message":{"token":"t1"}}`
	for i, w := range want {
		r := b.send(t, tok, b.srv.ProjectID(), msg)
		if r.status != w.status || r.Error.Status != w.canonical || r.errorCode() != w.code || r.header.Get("Retry-After") != w.retryAfter {
			t.Errorf("response %d: %d %s %q Retry-After %q; want %+v", i, r.status, r.Error.Status, r.errorCode(), r.header.Get("Retry-After"), w)
		}
	}
	req, _ := http.NewRequest("POST", b.srv.URL()+"/v1/projects/"+b.srv.ProjectID()+"/messages:send", strings.NewReader(msg))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := b.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || string(raw) != "<html>bad gateway</html>" {
		t.Errorf("raw response: %d %q", resp.StatusCode, raw)
	}
	if r := b.send(t, tok, b.srv.ProjectID(), msg); r.status != 200 {
		t.Errorf("after the script: %d %s", r.status, r.raw)
	}
	for range 2 {
		r := b.send(t, tok, b.srv.ProjectID(), `{"message":{"token":"gone"}}`)
		if r.status != 404 || r.Error.Status != "NOT_FOUND" || r.errorCode() != "UNREGISTERED" || r.Error.Message != "Requested entity was not found." {
			t.Errorf("unregistered: %d %s", r.status, r.raw)
		}
	}
	b.srv.SetFailRate(1, fcmtest.Internal)
	if r := b.send(t, tok, b.srv.ProjectID(), msg); r.status != 500 || r.errorCode() != "INTERNAL" {
		t.Errorf("fail rate: %d %s", r.status, r.raw)
	}
	if b.srv.Count("t1") != 1 || b.srv.Count("gone") != 0 {
		t.Errorf("counts %d %d", b.srv.Count("t1"), b.srv.Count("gone"))
	}
}

func TestLatencyEndsWithTheRequest(t *testing.T) {
	b := setup(t, fcmtest.Options{})
	tok := b.accessToken(t)
	b.srv.SetLatency(time.Hour)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", b.srv.URL()+"/v1/projects/"+b.srv.ProjectID()+"/messages:send",
			strings.NewReader(`{"message":{"token":"t1"}}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := b.hc.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	if err := b.srv.WaitRequests(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("request answered despite the latency")
	}
	// Close waits for every handler: it returns only if the latency
	// ended with the request.
	b.srv.Close()
	if b.srv.Count("t1") != 0 {
		t.Error("a request abandoned by its client was accepted")
	}
}

func TestGoAwayKeepsServing(t *testing.T) {
	b := setup(t, fcmtest.Options{})
	tok := b.accessToken(t)
	for i := range 3 {
		if r := b.send(t, tok, b.srv.ProjectID(), `{"message":{"token":"t`+strconv.Itoa(i)+`"}}`); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.raw)
		}
		b.srv.GoAway()
	}
	if b.srv.Total() != 3 {
		t.Errorf("Total = %d", b.srv.Total())
	}
}

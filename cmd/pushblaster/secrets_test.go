package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/fcm/fcmtest"
	"github.com/pushblaster/pushblaster/httpapi"
	"github.com/pushblaster/pushblaster/internal/testdb"
	"github.com/pushblaster/pushblaster/webhook"
)

// secret is one configured secret and the strings that give it away: the
// value itself, its random core (a truncated value still leaks it), and
// for keys every line of the PEM body.
type secret struct {
	name    string
	needles []string
}

// newSentinel returns a unique secret value: a readable name and 16 random
// hex digits, nothing a URL, JSON or a log would escape.
func newSentinel(name string) (value, core string) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	core = hex.EncodeToString(b)
	return "pbsecret-" + name + "-" + core, core
}

// pemNeedles are the lines of a PEM body, and the body joined, so that a
// key is found however a leak would wrap or escape it.
func pemNeedles(t *testing.T, p []byte) []string {
	t.Helper()
	block, _ := pem.Decode(p)
	if block == nil {
		t.Fatalf("not PEM: %q", p)
	}
	body := base64.StdEncoding.EncodeToString(block.Bytes)
	needles := []string{body}
	for len(body) > 0 {
		n := min(64, len(body))
		if n >= 24 {
			needles = append(needles, body[:n])
		}
		body = body[n:]
	}
	return needles
}

// scanForSecrets returns one message per secret found in an output, naming
// the secret, the output and the text around it.
func scanForSecrets(secrets []secret, outputs map[string]string) []string {
	var found []string
	for _, name := range slices.Sorted(maps.Keys(outputs)) {
		out := outputs[name]
		for _, s := range secrets {
			for _, n := range s.needles {
				i := strings.Index(out, n)
				if i < 0 {
					continue
				}
				lo, hi := max(0, i-160), min(len(out), i+len(n)+80)
				found = append(found, fmt.Sprintf("secret %s appears in %s:\n    …%s…", s.name, name, out[lo:hi]))
				break
			}
		}
	}
	return found
}

// apiRecorder calls the API and keeps every response (status, headers,
// body) for the leak scan.
type apiRecorder struct {
	t    *testing.T
	base string
	mu   sync.Mutex
	n    int
	seen map[string]string
}

func (r *apiRecorder) call(method, path, bearer string, body any) (int, []byte) {
	r.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			r.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, r.base+path, rd)
	if err != nil {
		r.t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("%s %s: read: %v", method, path, err)
	}
	var hdr bytes.Buffer
	_ = resp.Header.Write(&hdr)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	r.seen[fmt.Sprintf("response %03d to %s %s (%d)", r.n, method, path, resp.StatusCode)] = hdr.String() + "\n" + string(data)
	return resp.StatusCode, data
}

// get calls a GET route, decoding the JSON answer into out if it is 200.
func (r *apiRecorder) get(path string, out any) int {
	r.t.Helper()
	code, data := r.call(http.MethodGet, path, "", nil)
	if code == http.StatusOK && out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			r.t.Fatalf("GET %s: %v\n%s", path, err, data)
		}
	}
	return code
}

// startServeCapturing runs the real `pushblaster serve` like startServer,
// but keeps its stdout too, for the leak scan.
func startServeCapturing(t *testing.T, env []string, args ...string) (*server, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"serve", "--listen", "127.0.0.1:0", "--tick-interval", "100ms", "--poll-interval", "20ms"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stdout := &lockedBuffer{}
	s := &server{t: t, cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = stdout, s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { s.done <- cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, after, ok := strings.Cut(stdout.String(), "listening on "); ok {
			s.url = strings.Fields(after)[0]
			return s, stdout
		}
		select {
		case <-exited:
			t.Fatalf("serve exited before listening\nstdout:\n%s\nstderr:\n%s", stdout, s.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start in time\nstdout:\n%s", stdout)
		}
	}
}

// withPassword returns the test PostgreSQL URL with password as the
// password of its user (trust authentication ignores it) and the extra
// query parameters.
func withPassword(t *testing.T, password string, query map[string]string) string {
	t.Helper()
	u, err := url.Parse(testdb.URL())
	if err != nil {
		t.Fatal(err)
	}
	user := "postgres"
	if u.User != nil && u.User.Username() != "" {
		user = u.User.Username()
	}
	u.User = url.UserPassword(user, password)
	q := u.Query()
	for k, v := range query {
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// counters is a set of named counts, safe for handlers.
type counters struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counters) add(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[name]++
	return c.m[name]
}

func (c *counters) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[name]
}

func (c *counters) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprint(c.m)
}

// TestSecretsNeverLeak runs the real binary configured with every secret
// the product accepts, each a unique sentinel, drives every path that might
// echo configuration (failed sends on every provider, failed audiences, a
// retried token lookup, a failing cadence service, refused requests, bad
// definitions, every GET route, the CLI's usage and configuration errors),
// and checks that no sentinel appears in the log, stdout, any response or
// any CLI output. Positive controls prove that each secret reached the
// place it is for, so the test cannot pass on a misconfiguration.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	for _, dialect := range testdb.Dialects {
		t.Run(dialect, func(t *testing.T) {
			t.Parallel()
			testSecretsNeverLeak(t, dialect)
		})
	}
}

func testSecretsNeverLeak(t *testing.T, dialect string) {
	var secrets []secret
	sentinel := func(name string) string {
		v, core := newSentinel(strings.ReplaceAll(name, "_", "-"))
		secrets = append(secrets, secret{name: name, needles: []string{v, core}})
		return v
	}
	apiToken1, apiToken2 := sentinel("api_token_1"), sentinel("api_token_2")
	webhookSecret := sentinel("webhook_secret")
	webhookURLPassword := sentinel("webhook_url_password")
	tokenAuth := "Bearer " + sentinel("token_authorization")
	tokenURLPassword := sentinel("token_url_password")
	audienceDBPassword := sentinel("audience_db_password")
	scriptSecret := sentinel("script_env_value")
	cadencePassword := sentinel("cadence_url_password")
	badDBPassword := sentinel("database_url_password") // in configurations that fail
	wrongBearer := sentinel("refused_bearer")          // not configured, but never to be echoed either
	dir := t.TempDir()

	// The fake FCM and its service-account key.
	fake, fcmFlags := fakeFCM(t, 0)
	fake.Unregister("tok-fcm-gone")
	if len(fcmFlags) != 6 || fcmFlags[0] != "--fcm-credentials" || fcmFlags[4] != "--fcm-ca-file" {
		t.Fatalf("fakeFCM's flags changed: %q", fcmFlags)
	}
	var key struct {
		PrivateKeyID string `json:"private_key_id"`
		PrivateKey   string `json:"private_key"`
		ClientEmail  string `json:"client_email"`
	}
	if err := json.Unmarshal(fake.CredentialsJSON(), &key); err != nil || key.PrivateKey == "" {
		t.Fatalf("fake FCM key: %v", err)
	}
	secrets = append(secrets,
		secret{"fcm_private_key", pemNeedles(t, []byte(key.PrivateKey))},
		secret{"fcm_private_key_id", []string{key.PrivateKeyID}},
		secret{"fcm_client_email", []string{key.ClientEmail}})

	// An APNs .p8 key, and an APNs that cannot be reached.
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	p8 := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	p8File := filepath.Join(dir, "AuthKey_ABC123DEFG.p8")
	if err := os.WriteFile(p8File, p8, 0o600); err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, secret{"apns_p8_key", pemNeedles(t, p8)})
	fcmKeyFile := fcmFlags[1]

	// The webhook receiver: checks the signature and the URL's credentials,
	// answers 500 to the first request and 401 to the others.
	var hook counters
	hookSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify([]byte(webhookSecret), r.Header.Get(webhook.HeaderSignature), r.Header.Get(webhook.HeaderTimestamp), body, time.Now(), 0); err == nil {
			hook.add("valid_signature")
		} else {
			hook.add("bad_signature")
		}
		if _, pw, ok := r.BasicAuth(); ok && pw == webhookURLPassword {
			hook.add("url_password")
		}
		if hook.add("requests") == 1 {
			http.Error(w, "receiver overloaded", http.StatusInternalServerError)
			return
		}
		http.Error(w, "receiver says no", http.StatusUnauthorized)
	}))
	t.Cleanup(hookSrv.Close)
	hookURL, _ := url.Parse(hookSrv.URL + "/hook")
	hookURL.User = url.UserPassword("hook", webhookURLPassword)

	// The token source: checks the Authorization header; the first lookup
	// of the runs loses its connection (a recoverable failure whose message
	// names the source), the others answer.
	var toks counters
	var dropNext atomic.Bool
	tokSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != tokenAuth {
			toks.add("bad_auth")
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		toks.add("good_auth")
		if dropNext.CompareAndSwap(true, false) {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
		}
		var req struct {
			UserIDs []string `json:"user_ids"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		devs := []map[string]string{}
		for _, u := range req.UserIDs {
			devs = append(devs, map[string]string{"user_id": u, "token": "tok-resolved-" + u, "platform": "android"})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"devices": devs})
	}))
	t.Cleanup(tokSrv.Close)
	tokURL, _ := url.Parse(tokSrv.URL + "/devices")
	tokURL.User = url.UserPassword("tokens", tokenURLPassword)

	// The cadence service: answers 500 (the automation falls back to
	// send_all) and records the credentials the server gave it
	// (PUSHBLASTER_CADENCE_AUTHORIZATION; a definition cannot hold them).
	var cad counters
	cadSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pw, ok := r.BasicAuth(); ok && pw == cadencePassword {
			cad.add("url_password")
		}
		http.Error(w, "cadence is down", http.StatusInternalServerError)
	}))
	t.Cleanup(cadSrv.Close)
	cadURL, _ := url.Parse(cadSrv.URL + "/check")
	cadenceAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte("cadence:"+cadencePassword))

	// An audience script that needs the secret from its environment: it
	// names its recipient after the secret's hash, which proves the value
	// arrived without printing it.
	scripts := filepath.Join(dir, "scripts")
	if err := os.Mkdir(scripts, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/sh
echo "audience script starting" >&2
if [ "$1" = fail ]; then echo "giving up on purpose" >&2; exit 3; fi
h=$(printf %s "$PB_SCRIPT_SECRET" | sha256sum | cut -c1-16)
echo user_id,token
echo "u-$h,tok-script-1"
echo ",row-without-user"
`
	if err := os.WriteFile(filepath.Join(scripts, "audience.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(scriptSecret))
	scriptUser := "u-" + hex.EncodeToString(sum[:])[:16]

	// The database: PostgreSQL with a password in its URL, or SQLite.
	var dbURL string
	if dialect == "postgres" {
		db := testdb.NewPostgres(t)
		dbURL = withPassword(t, sentinel("database_password"), map[string]string{"search_path": db.Schema})
	} else {
		dbURL = "sqlite:" + filepath.Join(dir, "secrets.db")
	}
	audienceDBURL := withPassword(t, audienceDBPassword, nil)

	// Everything through the environment, as operators do (and as the
	// usage text reads its defaults).
	serveEnv := map[string]string{
		"PUSHBLASTER_DATABASE_URL":          dbURL,
		"PUSHBLASTER_API_TOKENS":            apiToken1 + "," + apiToken2,
		"PUSHBLASTER_FCM_CREDENTIALS":       fcmKeyFile,
		"PUSHBLASTER_FCM_ENDPOINT":          fake.URL(),
		"PUSHBLASTER_FCM_CA_FILE":           fcmFlags[5],
		"PUSHBLASTER_APNS_KEY_FILE":         p8File,
		"PUSHBLASTER_APNS_KEY_ID":           "ABC123DEFG",
		"PUSHBLASTER_APNS_TEAM_ID":          "TEAM123456",
		"PUSHBLASTER_APNS_TOPIC":            "com.example.app",
		"PUSHBLASTER_APNS_ENDPOINT":         "https://" + freeAddr(t),
		"PUSHBLASTER_WEBHOOK_URL":           hookURL.String(),
		"PUSHBLASTER_WEBHOOK_SECRET":        webhookSecret,
		"PUSHBLASTER_SCRIPTS_DIR":           scripts,
		"PUSHBLASTER_SCRIPT_ENV_ALLOW":      "PB_GREETING",
		"PUSHBLASTER_SCRIPT_ENV_PASS":       "PB_SCRIPT_SECRET",
		"PB_SCRIPT_SECRET":                  scriptSecret,
		"PUSHBLASTER_CADENCE_AUTHORIZATION": cadenceAuth,
		"PUSHBLASTER_AUDIENCE_DATABASE_URL": audienceDBURL,
		"PUSHBLASTER_TOKEN_SOURCE":          "http",
		"PUSHBLASTER_TOKEN_URL":             tokURL.String(),
		"PUSHBLASTER_TOKEN_PATH":            "devices",
		"PUSHBLASTER_TOKEN_AUTHORIZATION":   tokenAuth,
		"PUSHBLASTER_LOG_FORMAT":            "json",
		"PUSHBLASTER_LOG_LEVEL":             "debug",
	}
	var envList []string
	for k, v := range serveEnv {
		envList = append(envList, k+"="+v)
	}
	s, stdout := startServeCapturing(t, envList)
	api := &apiRecorder{t: t, base: s.url, seen: map[string]string{}}
	outputs := map[string]string{}

	// One automation per provider and per audience source, some bound to
	// fail.
	automation := func(name, provider string, aud map[string]any, extra map[string]any) map[string]any {
		a := map[string]any{
			"name": name, "schedule": map[string]string{"cron": "0 9 * * *"}, "lead_time": "0s",
			"audience": aud, "message": map[string]string{"title": "Hi {{.user_id}}", "body": "secrets test"},
			"delivery": map[string]any{"provider": provider},
		}
		maps.Copy(a, extra)
		return a
	}
	static := func(rs ...map[string]string) map[string]any {
		return map[string]any{"type": "static", "recipients": rs}
	}
	defs := []map[string]any{
		automation("fcm-push", "fcm", static(
			map[string]string{"user_id": "u-fcm-1", "token": "tok-fcm-1"},
			map[string]string{"user_id": "u-fcm-2", "token": "tok-fcm-gone"},
			map[string]string{"user_id": "u-needs-token"}),
			map[string]any{"test_audience": []map[string]string{{"user_id": "qa", "token": "tok-fcm-qa"}},
				"cadence": map[string]any{"url": cadURL.String(), "timeout": "2s", "on_error": "send_all"}}),
		automation("webhook-push", "webhook", static(map[string]string{"user_id": "u-wh-1", "token": "tok-wh-1"}), nil),
		automation("apns-push", "apns", static(map[string]string{"user_id": "u-ap-1", "token": strings.Repeat("ab", 32)}), nil),
		automation("script-push", "log", map[string]any{"type": "script", "script": "audience.sh", "env": map[string]string{"PB_GREETING": "hello"}, "max_bad_row_ratio": 0.6}, nil),
		automation("script-fail", "log", map[string]any{"type": "script", "script": "audience.sh", "args": []string{"fail"}}, nil),
		automation("sql-push", "log", map[string]any{"type": "sql", "query": "SELECT 'u-sql' AS user_id, 'tok-sql' AS token"}, nil),
		automation("sql-fail", "log", map[string]any{"type": "sql", "query": "SELECT user_id, token FROM no_such_table_here"}, nil),
	}
	// API tokens: a missing or wrong one is refused, both configured ones
	// work.
	if code, body := api.call(http.MethodPost, "/api/automations", "", defs[0]); code != http.StatusUnauthorized {
		t.Fatalf("create without a token: %d %s", code, body)
	}
	if code, body := api.call(http.MethodPost, "/api/automations", wrongBearer, defs[0]); code != http.StatusUnauthorized {
		t.Fatalf("create with a wrong token: %d %s", code, body)
	}
	autoIDs := map[string]int64{}
	for i, d := range defs {
		bearer := apiToken1
		if i%2 == 1 {
			bearer = apiToken2
		}
		code, body := api.call(http.MethodPost, "/api/automations", bearer, d)
		var a pb.Automation
		if code != http.StatusCreated || json.Unmarshal(body, &a) != nil {
			t.Fatalf("create %s: %d %s", d["name"], code, body)
		}
		autoIDs[a.Name] = a.ID
	}
	// Definitions that are refused, with secrets in the refused values.
	for _, bad := range []map[string]any{
		automation("bad-env", "log", map[string]any{"type": "script", "script": "audience.sh", "env": map[string]string{"NOT_ALLOWED": scriptSecret}}, nil),
		automation("passed-env", "log", map[string]any{"type": "script", "script": "audience.sh", "env": map[string]string{"PB_SCRIPT_SECRET": scriptSecret}}, nil),
		automation("bad-cadence", "log", static(map[string]string{"user_id": "u", "token": "t"}),
			map[string]any{"cadence": map[string]any{"url": "ftp://cadence:" + cadencePassword + "@example.com/check"}}),
		automation("cadence-password", "log", static(map[string]string{"user_id": "u", "token": "t"}),
			map[string]any{"cadence": map[string]any{"url": "https://cadence:" + cadencePassword + "@example.com/check"}}),
		automation("bad-provider", "nope", static(map[string]string{"user_id": "u", "token": "t"}), nil),
	} {
		if code, body := api.call(http.MethodPost, "/api/automations", apiToken1, bad); code != http.StatusBadRequest {
			t.Errorf("create %s: %d %s; want 400", bad["name"], code, body)
		}
	}
	// Previews run the audience sources.
	for _, name := range []string{"script-push", "script-fail", "sql-push", "sql-fail", "fcm-push"} {
		api.call(http.MethodPost, fmt.Sprintf("/api/automations/%d/audience/preview", autoIDs[name]), apiToken1, nil)
	}
	// Run everything, then wait for every execution to end.
	dropNext.Store(true)
	execIDs := map[string]int64{}
	for name, id := range autoIDs {
		code, body := api.call(http.MethodPost, fmt.Sprintf("/api/automations/%d/run", id), apiToken2, nil)
		var ex pb.Execution
		if code != http.StatusCreated || json.Unmarshal(body, &ex) != nil {
			t.Fatalf("run %s: %d %s", name, code, body)
		}
		execIDs[name] = ex.ID
	}
	final := map[string]*pb.Execution{}
	for name, id := range execIDs {
		final[name] = s.waitExecution(id)
	}
	ledger := func(name string) map[string]pb.DeliveryRecord {
		var l httpapi.DeliveryList
		if code := api.get(fmt.Sprintf("/api/executions/%d/deliveries?limit=1000", execIDs[name]), &l); code != http.StatusOK {
			t.Fatalf("deliveries of %s: %d", name, code)
		}
		m := map[string]pb.DeliveryRecord{}
		for _, d := range l.Deliveries {
			m[d.Audience+"/"+d.UserID] = d
		}
		return m
	}

	// Positive controls: each secret reached the place it is for.
	if ex := final["fcm-push"]; ex.Status != pb.StatusCompleted {
		t.Errorf("fcm-push: %s %v %v", ex.Status, ex.Metrics, ex.Error)
	}
	if fake.TokenRequests() == 0 || fake.Count("tok-fcm-1") != 1 || fake.Count("tok-fcm-qa") != 1 || fake.Count("tok-resolved-u-needs-token") != 1 {
		t.Errorf("the fake FCM got %d token requests and pushes tok-fcm-1 %d, tok-fcm-qa %d, resolved %d: the FCM key did not work",
			fake.TokenRequests(), fake.Count("tok-fcm-1"), fake.Count("tok-fcm-qa"), fake.Count("tok-resolved-u-needs-token"))
	}
	if d := ledger("fcm-push")["live/u-fcm-2"]; d.State != pb.DeliveryInvalidToken {
		t.Errorf("tok-fcm-gone: %+v; want invalid_token", d)
	}
	if toks.get("good_auth") < 2 || toks.get("bad_auth") != 0 {
		t.Errorf("token source: %s; want the Authorization header on every lookup, one of them retried", &toks)
	}
	if cad.get("url_password") == 0 {
		t.Errorf("the cadence service never got the credentials of its URL")
	}
	if hook.get("valid_signature") < 2 || hook.get("bad_signature") != 0 || hook.get("url_password") < 2 {
		t.Errorf("webhook receiver: %s; want every request signed with PUSHBLASTER_WEBHOOK_SECRET and carrying the URL's credentials", &hook)
	}
	if d := ledger("webhook-push")["live/u-wh-1"]; d.State != pb.DeliveryFailed || d.Code != pb.CodeUnauthenticated {
		t.Errorf("webhook delivery: %+v; want failed, unauthenticated (500, then 401)", d)
	}
	if d := ledger("apns-push")["live/u-ap-1"]; d.State != pb.DeliveryFailed || d.Code != pb.CodeNetwork {
		t.Errorf("apns delivery: %+v; want failed, network (unreachable)", d)
	}
	if d, ok := ledger("script-push")["live/"+scriptUser]; !ok || d.State != pb.DeliverySent {
		t.Errorf("script-push ledger lacks %s (sent): the script did not get PB_SCRIPT_SECRET: %v", scriptUser, ledger("script-push"))
	}
	if ex := final["sql-push"]; ex.Status != pb.StatusCompleted || ex.Metrics[pb.MetricSent] != 1 {
		t.Errorf("sql-push (the audience database URL): %s %v %v", ex.Status, ex.Metrics, ex.Error)
	}
	for _, name := range []string{"script-fail", "sql-fail"} {
		if ex := final[name]; ex.Status != pb.StatusFailed {
			t.Errorf("%s: %s; want failed", name, ex.Status)
		}
	}

	// Every GET route of the OpenAPI document, with every id, plus the
	// ones being added and some wrong requests.
	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if code := api.get("/api/openapi.json", &doc); code != http.StatusOK || len(doc.Paths) == 0 {
		t.Fatalf("openapi: %d", code)
	}
	paramRE := regexp.MustCompile(`\{[^}]+\}`)
	var autoList, execList []string
	for _, id := range autoIDs {
		autoList = append(autoList, fmt.Sprint(id))
	}
	for _, id := range execIDs {
		execList = append(execList, fmt.Sprint(id))
	}
	paths := []string{"/healthz", "/readyz", "/metrics", "/api/health", "/api/errors", "/api/events",
		"/api/invalid-tokens", "/api/no-such-route", "/api/executions?status=bogus", "/api/executions/abc",
		"/api/schedule/preview?cron=bad&timezone=Nowhere/Zone", "/api/executions?limit=1000"}
	for p, ops := range doc.Paths {
		if _, ok := ops["get"]; !ok {
			continue
		}
		ids := []string{"1"}
		switch {
		case strings.HasPrefix(p, "/api/automations/{"):
			ids = autoList
		case strings.HasPrefix(p, "/api/executions/{"):
			ids = execList
		case strings.Contains(p, "{token}"):
			ids = []string{"tok-fcm-gone"}
		}
		for _, id := range ids {
			paths = append(paths, paramRE.ReplaceAllString(p, id))
		}
	}
	sort.Strings(paths)
	for _, p := range slices.Compact(paths) {
		api.get(p, nil)
	}
	// Being added by another change: checked when they answer.
	for _, p := range []string{"/api/health", "/api/errors"} {
		if code, body := api.call(http.MethodGet, p, "", nil); code == http.StatusOK && !json.Valid(body) {
			t.Errorf("GET %s answers 200 with a body that is not JSON: %s", p, body)
		}
	}
	if code, _ := api.call(http.MethodDelete, "/api/automations", apiToken1, nil); code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /api/automations: %d; want 405", code)
	}

	// The CLI: client commands against the server, and the usage and
	// configuration errors of serve and migrate, with every secret in the
	// environment they read.
	cliEnv := maps.Clone(serveEnv)
	cliEnv["PUSHBLASTER_SERVER"] = s.url
	cliEnv["PUSHBLASTER_TOKEN"] = apiToken1
	cli := func(env map[string]string, args ...string) {
		stdout, stderr, code, _ := localRun(t, env, args...)
		outputs[fmt.Sprintf("`pushblaster %s` (exit %d)", strings.Join(args, " "), code)] = stdout + "\n" + stderr
	}
	cli(cliEnv, "automation", "list")
	cli(cliEnv, "execution", "list")
	for _, id := range execList {
		for _, sub := range []string{"get", "events", "deliveries", "artifacts"} {
			cli(cliEnv, "execution", sub, id)
		}
	}
	cli(cliEnv, "invalid-tokens", "list")
	cli(cliEnv, "automation", "pause", "fcm-push")
	withWrongToken := maps.Clone(cliEnv)
	withWrongToken["PUSHBLASTER_TOKEN"] = wrongBearer
	cli(withWrongToken, "automation", "pause", "fcm-push")
	offline := maps.Clone(cliEnv)
	offline["PUSHBLASTER_DATABASE_URL"] = "sqlite:" + filepath.Join(dir, "offline.db")
	offline["PUSHBLASTER_LISTEN"] = "127.0.0.1:0"
	cli(cliEnv, "serve", "--help")
	cli(cliEnv, "serve", "--fcm-rate", "many")
	cli(cliEnv, "serve", "--no-such-flag")
	cli(cliEnv, "serve", "--log-level", "loud")
	cli(cliEnv, "migrate", "--help")
	cli(cliEnv, "automation", "list", "--help")
	cli(cliEnv, "execution", "get", "--bogus")
	cli(cliEnv, "automation", "list", "--server", "http://127.0.0.1:1")
	for i, bad := range []map[string]string{
		{"PUSHBLASTER_TOKEN_URL": "ftp://tokens:" + tokenURLPassword + "@example.com/devices"},
		{"PUSHBLASTER_TOKEN_URL": "http://tokens:" + tokenURLPassword + "@127.0.0.1:bad/devices"},
		{"PUSHBLASTER_WEBHOOK_URL": "ftp://hook:" + webhookURLPassword + "@example.com/hook"},
		{"PUSHBLASTER_WEBHOOK_URL": "http://hook:" + webhookURLPassword + "@127.0.0.1:bad/hook"},
		{"PUSHBLASTER_APNS_KEY_FILE": fcmKeyFile},                            // a key of the wrong kind
		{"PUSHBLASTER_FCM_CREDENTIALS": p8File},                              // the same
		{"PUSHBLASTER_APNS_KEY_FILE": p8File, "PUSHBLASTER_APNS_KEY_ID": ""}, // incomplete
		{"PUSHBLASTER_AUDIENCE_DATABASE_URL": "postgres://postgres:" + audienceDBPassword + "@127.0.0.1:1/test?connect_timeout=2"},
		{"PUSHBLASTER_AUDIENCE_DATABASE_URL": "mysql://root:" + audienceDBPassword + "@127.0.0.1/x"},
		{"PUSHBLASTER_DATABASE_URL": "postgres://postgres:" + badDBPassword + "@127.0.0.1:1/test?connect_timeout=2"},
		{"PUSHBLASTER_DATABASE_URL": "postgres://postgres:" + badDBPassword + "@127.0.0.1:bad/test"},
		{"PUSHBLASTER_DATABASE_URL": "mysql://root:" + badDBPassword + "@127.0.0.1/x"},
		{"PUSHBLASTER_LISTEN": "0.0.0.0:0", "PUSHBLASTER_API_TOKENS": ""},
	} {
		env := maps.Clone(offline)
		maps.Copy(env, bad)
		if bad["PUSHBLASTER_DATABASE_URL"] != "" {
			out, code := runBriefly(env, "migrate", "--db-connect-timeout", "2s")
			outputs[fmt.Sprintf("`pushblaster migrate` with bad configuration %d, %v (exit %d)", i, slices.Sorted(maps.Keys(bad)), code)] = out
		}
		out, code := runBriefly(env, "serve", "--db-connect-timeout", "2s")
		outputs[fmt.Sprintf("`pushblaster serve` with bad configuration %d, %v (exit %d)", i, slices.Sorted(maps.Keys(bad)), code)] = out
		if code == 0 {
			t.Errorf("serve with %v started; want a configuration error", bad)
		}
	}
	// A second real instance on the same database and address: refused
	// (the SQLite lock, or the address in use) after reading everything.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second := exec.CommandContext(ctx, binary, "serve", "--listen", strings.TrimPrefix(s.url, "http://"))
	second.Env = append(os.Environ(), envList...)
	out, err := second.CombinedOutput()
	outputs["a second `pushblaster serve` on the same address"] = string(out)
	if err == nil {
		t.Errorf("a second serve on %s started", s.url)
	}

	s.stop()
	outputs["serve stderr (the log)"] = s.stderr.String()
	outputs["serve stdout"] = stdout.String()
	// Every answer is scanned whole: definitions included, since none can
	// hold a secret (PB_SCRIPT_SECRET comes from the server's environment,
	// the cadence credentials too).
	maps.Copy(outputs, api.seen)

	// The scan would see a leak: the outputs are what the test thinks.
	log := outputs["serve stderr (the log)"]
	for _, want := range []string{`"event":"serve.start"`, `"event":"send.batch"`, `"event":"phase.retry"`, `"event":"cadence.fallback"`, "unauthenticated", "no_such_table_here"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %s: the run did not take the paths it should have", want)
		}
	}
	if found := scanForSecrets([]secret{{"canary", []string{wrongBearer}}}, map[string]string{"canary": "x" + wrongBearer + "y"}); len(found) != 1 {
		t.Fatalf("the scan misses a planted secret: %v", found)
	}
	for _, f := range scanForSecrets(secrets, outputs) {
		t.Error(f)
	}
	if t.Failed() {
		t.Logf("%d outputs scanned; the log without its http.request lines:\n%s", len(outputs), withoutRequests(log))
	}
}

// runBriefly runs the program in-process with env, for configurations that
// must be refused: one that starts serving anyway stops after a while and
// exits 0, which the caller reports.
func runBriefly(env map[string]string, args ...string) (output string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	err := run(ctx, args, func(k string) string { return env[k] }, strings.NewReader(""), &out, &errb)
	code = exitCode(err, &errb)
	return out.String() + "\n" + errb.String(), code
}

// eventNameRE is the shape of a stable event name: dotted lower-case words.
var eventNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$`)

// TestLogLinesFollowTheConventions runs the real binary with --log-format
// json through two executions that pass all five phases (a static audience
// with a token lookup through FCM, and a script that runs long enough for a
// heartbeat), and checks every stderr line: JSON with time, level, msg, a
// stable event name and the instance id; automation_id wherever there is an
// execution_id; phase on every phase.* line; and the documented events
// present. Then --log-format text is slog's key=value format, and the
// default on a pipe is JSON.
func TestLogLinesFollowTheConventions(t *testing.T) {
	t.Parallel()
	fake, fcmFlags := fakeFCM(t, 0)
	// A transient error: the provider's own lines are checked too.
	fake.Script("tok-b", fcmtest.Error(fcmtest.Unavailable))
	scripts := t.TempDir()
	// Silent for 11 s on stdout: one script.heartbeat (every 10 s).
	if err := os.WriteFile(filepath.Join(scripts, "slow.sh"), []byte("#!/bin/sh\necho 'looking up users' >&2\nsleep 11\necho user_id,token\necho s1,tok-s1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, databaseEnv(t, "sqlite"), append([]string{"--log-format", "json", "--log-level", "debug", "--scripts-dir", scripts}, fcmFlags...)...)
	create := func(body map[string]any) int64 {
		var a pb.Automation
		if code := s.do(http.MethodPost, "/api/automations", body, &a); code != http.StatusCreated {
			t.Fatalf("create %s: %d", body["name"], code)
		}
		var ex pb.Execution
		if code := s.do(http.MethodPost, fmt.Sprintf("/api/automations/%d/run", a.ID), nil, &ex); code != http.StatusCreated {
			t.Fatalf("run %s: %d", body["name"], code)
		}
		return ex.ID
	}
	fcmRun := create(map[string]any{
		"name": "conventions", "schedule": map[string]string{"cron": "0 9 * * *"}, "lead_time": "0s",
		"audience":      map[string]any{"type": "static", "recipients": []map[string]string{{"user_id": "a", "token": "tok-a"}, {"user_id": "b", "token": "tok-b"}}},
		"test_audience": []map[string]string{{"user_id": "qa", "token": "tok-qa"}},
		"message":       map[string]string{"title": "Hello {{.user_id}}"}, "delivery": map[string]string{"provider": "fcm"},
	})
	scriptRun := create(map[string]any{
		"name": "slow-script", "schedule": map[string]string{"cron": "0 9 * * *"}, "lead_time": "0s",
		"audience": map[string]any{"type": "script", "script": "slow.sh"},
		"message":  map[string]string{"title": "Hello"}, "delivery": map[string]string{"provider": "log"},
	})
	for _, id := range []int64{fcmRun, scriptRun} {
		if ex := s.waitExecution(id); ex.Status != pb.StatusCompleted {
			t.Fatalf("execution %d: %s %v %v", id, ex.Status, ex.Metrics, ex.Error)
		}
	}
	if fake.Total() != 3 || fake.Requests() != 4 {
		t.Errorf("the fake FCM accepted %d pushes in %d requests; want 3 in 4 (one retried)", fake.Total(), fake.Requests())
	}
	s.stop()

	seen := map[string]int{}
	instances := map[string]bool{}
	lines := strings.Split(strings.TrimRight(s.stderr.String(), "\n"), "\n")
	for i, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("line %d is not JSON (%v): %s", i+1, err, line)
			continue
		}
		str := func(k string) string { v, _ := rec[k].(string); return v }
		for _, k := range []string{"time", "level", "msg"} {
			if str(k) == "" {
				t.Errorf("line %d has no %s: %s", i+1, k, line)
			}
		}
		ev := str("event")
		seen[ev]++
		if !eventNameRE.MatchString(ev) {
			t.Errorf("line %d has no stable event name (event %q): %s", i+1, ev, line)
		}
		if id := str("instance_id"); id == "" {
			t.Errorf("line %d has no instance_id: %s", i+1, line)
		} else {
			instances[id] = true
		}
		if _, ok := rec["execution_id"]; ok {
			if _, ok := rec["automation_id"]; !ok {
				t.Errorf("line %d has an execution_id but no automation_id: %s", i+1, line)
			}
		}
		if strings.HasPrefix(ev, "phase.") && str("phase") == "" {
			t.Errorf("line %d is a %s without a phase: %s", i+1, ev, line)
		}
		// A provider's line during a send names the send.
		if ev == "fcm.retry" && (rec["execution_id"] == nil || str("phase") == "" || rec["automation_id"] == nil) {
			t.Errorf("line %d, a provider's line in a send, lacks execution_id, automation_id or phase: %s", i+1, line)
		}
		if ev == "fcm.retry" && bytes.Count([]byte(line), []byte(`"execution_id"`)) != 1 {
			t.Errorf("line %d names execution_id more than once: %s", i+1, line)
		}
	}
	if len(instances) > 1 {
		t.Errorf("the lines of one instance name %d instance ids: %v", len(instances), instances)
	}
	for _, want := range []string{"fire", "phase.start", "phase.end", "send.batch", "script.heartbeat", "script.end", "execution.end", "serve.start", "engine.stopped", "fcm.retry", "http.request"} {
		if seen[want] == 0 {
			t.Errorf("no %s line among %d lines; events seen: %v", want, len(lines), seen)
		}
	}
	if t.Failed() {
		t.Logf("stderr without its http.request lines:\n%s", withoutRequests(s.stderr.String()))
	}

	// --log-format text: slog's key=value lines.
	textRE := regexp.MustCompile(`^time=\S+ level=(DEBUG|INFO|WARN|ERROR) msg=("(?:[^"\\]|\\.)*"|\S+)( [A-Za-z0-9_.]+=("(?:[^"\\]|\\.)*"|\S*))*$`)
	text := startServer(t, databaseEnv(t, "sqlite"), "--log-format", "text")
	if code := text.do(http.MethodGet, "/readyz", nil, nil); code != http.StatusOK {
		t.Errorf("readyz: %d", code)
	}
	text.stop()
	checkLines(t, "--log-format text", text.stderr.String(), func(line string) bool {
		return textRE.MatchString(line) && strings.Contains(line, " event=") && strings.Contains(line, " instance_id=")
	})
	// The default, with stderr a pipe (not a terminal): JSON.
	def := startServer(t, append(databaseEnv(t, "sqlite"), "PUSHBLASTER_LOG_FORMAT="))
	def.stop()
	checkLines(t, "the default format on a pipe", def.stderr.String(), func(line string) bool {
		var rec map[string]any
		return json.Unmarshal([]byte(line), &rec) == nil && rec["event"] != nil
	})
}

// withoutRequests drops the http.request lines (the test's own polling)
// from a JSON log, for failure messages.
func withoutRequests(log string) string {
	var b strings.Builder
	for line := range strings.Lines(log) {
		if !strings.Contains(line, `"event":"http.request"`) {
			b.WriteString(line)
		}
	}
	return b.String()
}

// checkLines checks that the log has lines, each of them ok.
func checkLines(t *testing.T, what, log string, ok func(string) bool) {
	t.Helper()
	n := 0
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		n++
		if !ok(sc.Text()) {
			t.Errorf("%s: line %d is not in the expected format: %s", what, n, sc.Text())
		}
	}
	if n < 3 {
		t.Errorf("%s: only %d lines:\n%s", what, n, log)
	}
}

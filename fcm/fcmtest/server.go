// Package fcmtest is a fake Firebase Cloud Messaging server: the HTTP v1
// send endpoint and Google's OAuth2 token endpoint, over HTTP/2 with TLS on
// loopback, answering with the status codes and JSON bodies the real
// service uses.
//
// Tests use it to prove what a sender does under each of FCM's failure
// modes (scripted per token), and to count what was accepted so that a
// duplicate or a lost push shows. cmd/fakefcm runs it as a process for
// demos, staging and benchmarks; this package therefore does not import
// testing.
//
// A Server issues its own service-account key (CredentialsJSON) whose
// token_uri points at the server, so a client that honours token_uri runs
// the whole JWT-bearer flow against it unchanged.
package fcmtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Options configure a Server. The zero value is usable.
type Options struct {
	// Addr is the address to listen on (default "127.0.0.1:0").
	Addr string
	// ProjectID is the Firebase project the server serves and writes into
	// its key file (default "fake-project").
	ProjectID string
	// TokenTTL is how long an issued access token is valid (default
	// 3599s, what Google issues).
	TokenTTL time.Duration
	// MaxConcurrentStreams is the HTTP/2 stream limit per connection
	// (default 100, as FCM).
	MaxConcurrentStreams int
	// ReceivedLimit is how many accepted messages Received keeps in all,
	// so that a long benchmark does not grow without bound (default
	// 100000; negative keeps none). Counters are never limited.
	ReceivedLimit int
	// Now is the clock of token expiry, JWT checks and quota windows
	// (default time.Now).
	Now func() time.Time
	// Logger receives the HTTP server's own errors, such as failed TLS
	// handshakes (default: discarded).
	Logger *slog.Logger
}

// Server is a running fake FCM. All methods are safe for concurrent use,
// also while requests are being served.
type Server struct {
	opts     Options
	now      func() time.Time
	ln       net.Listener
	url      string
	cert     tls.Certificate
	certPEM  []byte
	pool     *x509.CertPool
	key      *rsa.PrivateKey
	keyID    string
	email    string
	creds    []byte
	tr       *http.Transport
	acceptWG sync.WaitGroup
	retireWG sync.WaitGroup

	mu      sync.Mutex
	gen     *generation // serves new connections; nil once closed
	retired []*generation
	state
}

// state is everything a request reads or changes, guarded by Server.mu.
type state struct {
	scripts      map[string][]Response
	unregistered map[string]bool
	failRate     float64
	failCode     string
	latency      time.Duration
	quotaN       int
	quotaPer     time.Duration
	quotaStart   time.Time
	quotaUsed    int
	tokens       map[string]accessToken

	counts        map[string]int
	received      map[string][]Message
	receivedN     int
	total         int
	requests      int
	tokenRequests int
	inFlight      int
	peakInFlight  int
	seq           uint64
	changed       chan struct{} // closed and replaced on every counter change
}

// accessToken is an issued OAuth2 access token.
type accessToken struct {
	expiry time.Time
	// scoped is whether the token's scope lets it send through FCM.
	scoped bool
}

// Message is an accepted send: the message as FCM received it.
type Message struct {
	// Name is the id FCM answered with: projects/P/messages/ID.
	Name      string            `json:"name"`
	Token     string            `json:"token,omitempty"`
	Topic     string            `json:"topic,omitempty"`
	Condition string            `json:"condition,omitempty"`
	Title     string            `json:"title,omitempty"`
	Body      string            `json:"body,omitempty"`
	Image     string            `json:"image,omitempty"`
	Data      map[string]string `json:"data,omitempty"`
	// Notification says whether the message had a notification object.
	Notification bool            `json:"notification,omitempty"`
	Android      json.RawMessage `json:"android,omitempty"`
	APNs         json.RawMessage `json:"apns,omitempty"`
	Webpush      json.RawMessage `json:"webpush,omitempty"`
	FCMOptions   json.RawMessage `json:"fcm_options,omitempty"`
}

// generation is one http.Server fed connections by the accept loop. GoAway
// retires the current generation (graceful shutdown: GOAWAY on its HTTP/2
// connections, in-flight streams finish) while a fresh one takes the
// listener's new connections, so the server keeps serving.
type generation struct {
	srv *http.Server
	ln  *chanListener
}

// NewServer starts a fake FCM on opts.Addr and returns once it accepts
// connections.
func NewServer(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.ProjectID == "" {
		opts.ProjectID = "fake-project"
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = 3599 * time.Second
	}
	if opts.MaxConcurrentStreams <= 0 {
		opts.MaxConcurrentStreams = 100
	}
	if opts.ReceivedLimit == 0 {
		opts.ReceivedLimit = 100000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, now: opts.Now}
	s.resetCounters()
	s.scripts = map[string][]Response{}
	s.unregistered = map[string]bool{}
	s.tokens = map[string]accessToken{}

	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("fcmtest: listen on %s: %w", opts.Addr, err)
	}
	s.ln = ln
	host := ln.Addr().(*net.TCPAddr)
	if err := s.makeCert(opts.Addr, host.IP); err != nil {
		ln.Close()
		return nil, err
	}
	urlHost := ln.Addr().String()
	if h, _, err := net.SplitHostPort(opts.Addr); err == nil && h != "" && net.ParseIP(h) == nil {
		// A host name given to listen on is also what clients dial and
		// what the certificate names.
		urlHost = net.JoinHostPort(h, fmt.Sprint(host.Port))
	} else if host.IP.IsUnspecified() {
		urlHost = net.JoinHostPort("127.0.0.1", fmt.Sprint(host.Port))
	}
	s.url = "https://" + urlHost
	if err := s.makeKey(); err != nil {
		ln.Close()
		return nil, err
	}

	h2 := new(http.Protocols)
	h2.SetHTTP2(true)
	s.tr = &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: s.pool},
		Protocols:       h2,
		// Bounds the dials in flight (for HTTP/2 not the connections):
		// a burst of requests would otherwise dial one connection each.
		MaxConnsPerHost:     4,
		MaxIdleConnsPerHost: 100,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}

	s.gen = s.newGeneration()
	s.acceptWG.Add(1)
	go s.acceptLoop()
	return s, nil
}

func protocols() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	return p
}

// connKey is the context key of a request's connection (see Drop).
type connKey struct{}

func (s *Server) newGeneration() *generation {
	g := &generation{ln: &chanListener{addr: s.ln.Addr(), ch: make(chan net.Conn), done: make(chan struct{})}}
	g.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{s.cert}},
		Protocols:         protocols(),
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: s.opts.MaxConcurrentStreams},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.opts.Logger.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	s.retireWG.Add(1)
	go func() {
		defer s.retireWG.Done()
		// ServeTLS wraps the listener in TLS with h2 and http/1.1 offered
		// by ALPN; it returns when the generation is shut down.
		_ = g.srv.ServeTLS(g.ln, "", "")
	}()
	return g
}

// acceptLoop hands each new connection to the current generation.
func (s *Server) acceptLoop() {
	defer s.acceptWG.Done()
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off and keep
			// serving, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.opts.Logger.Debug("fcmtest: accept", "error", err, "retry_in", delay)
			t := time.NewTimer(delay)
			<-t.C
			continue
		}
		delay = 0
		for {
			s.mu.Lock()
			g := s.gen
			s.mu.Unlock()
			if g == nil {
				c.Close()
				break
			}
			select {
			case g.ln.ch <- c:
			case <-g.ln.done:
				// Retired between the read and the hand-off: try the
				// generation that replaced it.
				continue
			}
			break
		}
	}
}

// GoAway makes the server send an HTTP/2 GOAWAY on every connection open
// now, as FCM's front ends do when they drain: streams already started
// are answered, the client must open a new connection for anything else.
// The listener keeps accepting, so new connections are served normally.
func (s *Server) GoAway() {
	s.mu.Lock()
	old := s.gen
	if old == nil {
		s.mu.Unlock()
		return
	}
	s.gen = s.newGeneration()
	s.retired = append(s.retired, old)
	// Added under the lock so that Close, which takes the lock first,
	// never waits while the group grows.
	s.retireWG.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.retireWG.Done()
		// Shutdown closes the generation's listener, sends GOAWAY on its
		// HTTP/2 connections and waits for their streams; Close cuts it
		// short.
		_ = old.srv.Shutdown(context.Background())
	}()
}

// Close stops the server: the listener, every connection, every handler
// (a handler waiting out a latency ends at once).
func (s *Server) Close() {
	s.mu.Lock()
	g := s.gen
	s.gen = nil
	retired := s.retired
	s.retired = nil
	s.mu.Unlock()
	if g == nil {
		return
	}
	s.ln.Close()
	s.acceptWG.Wait()
	for _, r := range append(retired, g) {
		r.srv.Close()
	}
	s.retireWG.Wait()
	s.tr.CloseIdleConnections()
}

// URL is the server's base URL, e.g. https://127.0.0.1:41234: the
// endpoint to configure instead of https://fcm.googleapis.com.
func (s *Server) URL() string { return s.url }

// ProjectID is the project the server serves.
func (s *Server) ProjectID() string { return s.opts.ProjectID }

// CertPEM is the server's self-signed certificate, for clients that build
// their own trust pool.
func (s *Server) CertPEM() []byte { return append([]byte(nil), s.certPEM...) }

// Client returns an HTTP client that trusts the server's certificate and
// speaks HTTP/2 (only) to it, like the fcm package's default client.
// Clients share one transport.
func (s *Server) Client() *http.Client { return &http.Client{Transport: s.tr} }

// CredentialsJSON is a service-account key file for the server's project,
// as the Firebase console downloads it, with token_uri pointing at the
// server.
func (s *Server) CredentialsJSON() []byte { return append([]byte(nil), s.creds...) }

// TokenURI is where the key file says to exchange JWTs for access tokens.
func (s *Server) TokenURI() string { return s.url + "/token" }

// ClientEmail is the service account's e-mail, the JWTs' iss.
func (s *Server) ClientEmail() string { return s.email }

// makeCert creates the self-signed serving certificate for loopback and
// the listen host.
func (s *Server) makeCert(addr string, ip net.IP) error {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("fcmtest: generate TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return fmt.Errorf("fcmtest: certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"fcmtest"}, CommonName: "fcmtest"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	}
	if ip != nil && ip.IsUnspecified() {
		// Listening on every interface, as on a staging host: other
		// machines reach it by the host's name.
		if h, err := os.Hostname(); err == nil && h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if h, _, err := net.SplitHostPort(addr); err == nil && h != "" && net.ParseIP(h) == nil && h != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, h)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return fmt.Errorf("fcmtest: create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("fcmtest: parse certificate: %w", err)
	}
	s.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}
	s.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	s.pool = x509.NewCertPool()
	s.pool.AddCert(leaf)
	return nil
}

// makeKey creates the service account: an RSA key and the key file.
func (s *Server) makeKey() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("fcmtest: generate service-account key: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("fcmtest: encode service-account key: %w", err)
	}
	id := make([]byte, 20)
	rand.Read(id)
	s.key = key
	s.keyID = hex.EncodeToString(id)
	s.email = "firebase-adminsdk-fake@" + s.opts.ProjectID + ".iam.gserviceaccount.com"
	clientID := new(big.Int).SetBytes(id[:8]).String()
	// The same fields, in the same order, as a key downloaded from the
	// Firebase console.
	f := struct {
		Type                    string `json:"type"`
		ProjectID               string `json:"project_id"`
		PrivateKeyID            string `json:"private_key_id"`
		PrivateKey              string `json:"private_key"`
		ClientEmail             string `json:"client_email"`
		ClientID                string `json:"client_id"`
		AuthURI                 string `json:"auth_uri"`
		TokenURI                string `json:"token_uri"`
		AuthProviderX509CertURL string `json:"auth_provider_x509_cert_url"`
		ClientX509CertURL       string `json:"client_x509_cert_url"`
		UniverseDomain          string `json:"universe_domain"`
	}{
		Type:                    "service_account",
		ProjectID:               s.opts.ProjectID,
		PrivateKeyID:            s.keyID,
		PrivateKey:              string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})),
		ClientEmail:             s.email,
		ClientID:                clientID,
		AuthURI:                 "https://accounts.google.com/o/oauth2/auth",
		TokenURI:                s.TokenURI(),
		AuthProviderX509CertURL: "https://www.googleapis.com/oauth2/v1/certs",
		ClientX509CertURL:       "https://www.googleapis.com/robot/v1/metadata/x509/" + strings.ReplaceAll(s.email, "@", "%40"),
		UniverseDomain:          "googleapis.com",
	}
	s.creds, err = json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("fcmtest: encode key file: %w", err)
	}
	s.creds = append(s.creds, '\n')
	return nil
}

// serveHTTP routes like Google's front end: the token endpoint and the v1
// send method; anything else is a 404.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/token":
		s.serveToken(w, r)
	case strings.HasPrefix(r.URL.Path, "/v1/projects/") && strings.HasSuffix(r.URL.Path, "/messages:send"):
		project := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v1/projects/"), "/messages:send")
		if project == "" || strings.Contains(project, "/") {
			writeNotFound(w, r)
			return
		}
		if r.Method != http.MethodPost {
			writeNotFound(w, r)
			return
		}
		s.serveSend(w, r, project)
	default:
		writeNotFound(w, r)
	}
}

// writeNotFound answers an unknown URL the way Google's front end does: a
// 404 HTML page, not a JSON error.
func writeNotFound(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=UTF-8")
	w.WriteHeader(http.StatusNotFound)
	fmt.Fprintf(w, "<!DOCTYPE html>\n<html lang=en>\n<title>Error 404 (Not Found)!!1</title>\n"+
		"<p><b>404.</b> <ins>That’s an error.</ins>\n<p>The requested URL <code>%s</code> was not found on this server.  <ins>That’s all we know.</ins>\n",
		htmlEscape(r.URL.Path))
}

func htmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;").Replace(s)
}

// chanListener is a net.Listener fed by the accept loop.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

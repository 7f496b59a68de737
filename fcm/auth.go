package fcm

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	pb "github.com/pushblaster/pushblaster"
)

// Scope is the OAuth2 scope an access token needs to send through FCM.
const Scope = "https://www.googleapis.com/auth/firebase.messaging"

// defaultTokenURI is Google's token endpoint, used when a key file has no
// token_uri.
const defaultTokenURI = "https://oauth2.googleapis.com/token"

// serviceAccountKey is the part of a service-account key file the sender
// reads.
type serviceAccountKey struct {
	Type         string `json:"type"`
	ProjectID    string `json:"project_id"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
	TokenURI     string `json:"token_uri"`
}

// keyError is the validation error of a bad key file, naming the field.
func keyError(field, format string, args ...any) *pb.Error {
	return pb.Errorf(pb.KindValidation, "fcm: service-account key: "+format, args...).
		With("field", "credentials_json."+field)
}

// parseKey reads a service-account key file and checks every field the
// JWT-bearer flow needs, so that a bad file fails New rather than the
// first send.
func parseKey(data []byte) (*serviceAccountKey, error) {
	if len(data) == 0 {
		return nil, pb.Errorf(pb.KindValidation, "fcm: Config.CredentialsJSON is empty; pass the content of the service-account key file").
			With("field", "credentials_json")
	}
	var k serviceAccountKey
	if err := json.Unmarshal(data, &k); err != nil {
		return nil, pb.Errorf(pb.KindValidation, "fcm: the service-account key is not a JSON key file: %v", err).
			With("field", "credentials_json")
	}
	switch k.Type {
	case "service_account":
	case "":
		return nil, keyError("type", `has no "type"; download a service-account key (Firebase console → Project settings → Service accounts)`)
	default:
		return nil, keyError("type", `is %q; FCM needs a "service_account" key (Firebase console → Project settings → Service accounts)`, k.Type)
	}
	if k.ClientEmail == "" {
		return nil, keyError("client_email", `has no "client_email"; the file is incomplete, download it again`)
	}
	if k.PrivateKey == "" {
		return nil, keyError("private_key", `has no "private_key"; the file is incomplete, download it again`)
	}
	if err := checkRSAKey([]byte(k.PrivateKey)); err != nil {
		return nil, keyError("private_key", `"private_key" is not a PEM-encoded RSA private key: %v`, err)
	}
	if k.TokenURI == "" {
		k.TokenURI = defaultTokenURI
	} else if u, err := url.Parse(k.TokenURI); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, keyError("token_uri", `"token_uri" is %q; it must be an absolute https URL such as %s`, k.TokenURI, defaultTokenURI)
	}
	return &k, nil
}

// checkRSAKey parses the key as the JWT signer will: PKCS#8 (what Google
// issues) or PKCS#1.
func checkRSAKey(p []byte) error {
	block, _ := pem.Decode(p)
	if block == nil {
		return errors.New("no PEM block found")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if _, ok := k.(*rsa.PrivateKey); !ok {
			return fmt.Errorf("the key is a %T, not RSA", k)
		}
		return nil
	}
	if _, err := x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
		return fmt.Errorf("neither PKCS#8 nor PKCS#1: %v", err)
	}
	return nil
}

// tokenSource holds the client's OAuth2 access token: one token shared by
// every request, fetched by one request to the token endpoint at a time
// however many requests need it at once.
type tokenSource struct {
	conf *jwt.Config
	// ctx carries the HTTP client for the token endpoint; the jwt package
	// reads it from there.
	ctx context.Context
	now func() time.Time

	mu    sync.Mutex
	cur   *accessToken // nil before the first fetch
	fetch *tokenFetch  // the fetch in progress, if any
}

// accessToken is one issued token.
type accessToken struct {
	// header is the Authorization header value, shared read-only by every
	// request that uses the token.
	header []string
	// refreshAt is when to fetch a new token ahead of expiry.
	refreshAt time.Time
	// stale is set when FCM refused the token (guarded by tokenSource.mu).
	stale bool
}

// tokenFetch is a fetch in progress; waiters wait for done.
type tokenFetch struct {
	done chan struct{}
	tok  *accessToken
	err  *pb.Error
}

func newTokenSource(k *serviceAccountKey, hc *http.Client, timeout time.Duration, now func() time.Time) *tokenSource {
	// The jwt package posts without a context, so the token endpoint's
	// requests are bounded by the client's own timeout.
	thc := *hc
	if thc.Timeout == 0 {
		thc.Timeout = timeout
	}
	return &tokenSource{
		conf: &jwt.Config{
			Email:        k.ClientEmail,
			PrivateKey:   []byte(k.PrivateKey),
			PrivateKeyID: k.PrivateKeyID,
			Scopes:       []string{Scope},
			TokenURL:     k.TokenURI,
		},
		ctx: context.WithValue(context.Background(), oauth2.HTTPClient, &thc),
		now: now,
	}
}

// get returns a valid token, fetching one if there is none, it expires
// soon or FCM refused it. When ctx ends first it returns nil, nil.
func (ts *tokenSource) get(ctx context.Context) (*accessToken, *pb.Error) {
	ts.mu.Lock()
	if t := ts.cur; t != nil && !t.stale && ts.now().Before(t.refreshAt) {
		ts.mu.Unlock()
		return t, nil
	}
	f := ts.fetch
	if f == nil {
		f = &tokenFetch{done: make(chan struct{})}
		ts.fetch = f
		// The fetch runs on its own so that one waiter giving up does not
		// fail the others; it ends within the token client's timeout.
		go ts.run(f)
	}
	ts.mu.Unlock()
	select {
	case <-f.done:
		return f.tok, f.err
	case <-ctx.Done():
		return nil, nil
	}
}

// invalidate marks t as refused by FCM. Only the current token can be
// marked: a request that was refused an older token finds the new one
// already in place and fetches nothing.
func (ts *tokenSource) invalidate(t *accessToken) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.cur == t {
		t.stale = true
	}
}

func (ts *tokenSource) run(f *tokenFetch) {
	tok, err := ts.conf.TokenSource(ts.ctx).Token()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if err != nil {
		f.err = tokenError(ts.conf.TokenURL, err)
	} else {
		f.tok = &accessToken{header: []string{"Bearer " + tok.AccessToken}, refreshAt: ts.refreshAt(tok)}
		ts.cur = f.tok
	}
	ts.fetch = nil
	close(f.done)
}

// refreshAt is when to replace tok: a tenth of its lifetime (at most five
// minutes) before it expires, so that no request carries a token that
// expires on the way.
func (ts *tokenSource) refreshAt(tok *oauth2.Token) time.Time {
	var life time.Duration
	if v, ok := tok.Extra("expires_in").(float64); ok && v > 0 {
		life = time.Duration(v * float64(time.Second))
	} else if !tok.Expiry.IsZero() {
		life = time.Until(tok.Expiry)
	}
	if life <= 0 {
		// No expiry given: keep the token until FCM refuses it.
		return ts.now().Add(100 * 365 * 24 * time.Hour)
	}
	return ts.now().Add(life - min(life/10, 5*time.Minute))
}

// tokenError translates a failed token fetch. A refusal (4xx) is final:
// the key is wrong or revoked, no retry can help. Anything else is
// transient.
func tokenError(tokenURL string, err error) *pb.Error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		var body struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		_ = json.Unmarshal(re.Body, &body)
		msg := body.Error
		if body.Description != "" {
			msg += ": " + body.Description
		}
		if msg == "" {
			msg = truncate(re.Body, 200)
		}
		st := re.Response.StatusCode
		if st >= 400 && st < 500 && st != http.StatusRequestTimeout && st != http.StatusTooManyRequests {
			return pb.ProviderError(pb.CodeUnauthenticated,
				"fcm: the token endpoint %s refused the service-account key (HTTP %d %s); check that the key is current and not revoked",
				tokenURL, st, msg).With("http_status", fmt.Sprint(st))
		}
		return pb.ProviderError(pb.CodeUnavailable, "fcm: the token endpoint %s failed (HTTP %d %s)", tokenURL, st, msg).
			With("http_status", fmt.Sprint(st))
	}
	return pb.ProviderError(pb.CodeNetwork, "fcm: no access token from %s: %v", tokenURL, err)
}

// Command fakefcm runs a fake Firebase Cloud Messaging server (package
// fcm/fcmtest) as a process: the HTTP v1 send endpoint and Google's OAuth2
// token endpoint, over HTTP/2 with a self-signed certificate.
//
// Use it where the real FCM would be wrong or impossible:
//
//   - demos: pushblaster sends "for real" end to end, nothing reaches a
//     phone, --stats shows the pushes arriving;
//   - staging: point the fcm sender's endpoint at it and exercise failure
//     handling with --fail-rate, --quota and --unregistered;
//   - benchmarks: --latency 20ms gives FCM's round trip, and the counters
//     prove that every push was accepted exactly once (--stats-file with
//     --expect-tokens); --token-out hands a load tool such as h2load an
//     access token to send with.
//
// It writes the service-account key file the sender needs
// (--credentials-out; its token_uri points at the fake) and the
// certificate to trust (--cert-out), then prints its URL on the first
// line of stdout:
//
//	fakefcm --credentials-out /tmp/fcm.json --cert-out /tmp/fcm.pem --latency 20ms --stats
//
// It stops cleanly on SIGINT or SIGTERM.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	"github.com/pushblaster/pushblaster/fcm/fcmtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "fakefcm:", err)
		os.Exit(2)
	}
}

// run serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fakefcm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		listen       = fs.String("listen", "127.0.0.1:0", "address to listen on; the URL is printed on stdout")
		project      = fs.String("project", "fake-project", "Firebase project id to serve and write into the key file")
		latency      = fs.Duration("latency", 0, "added latency per send request, e.g. 20ms")
		failRate     = fs.Float64("fail-rate", 0, "fraction (0..1) of send requests that fail with --fail-code")
		failCode     = fs.String("fail-code", fcmtest.Unavailable, "FCM error code of --fail-rate failures (UNAVAILABLE, INTERNAL, QUOTA_EXCEEDED, UNREGISTERED, …)")
		quota        = fs.Int("quota", 0, "send requests allowed per --quota-per for the project (0: no quota)")
		quotaPer     = fs.Duration("quota-per", time.Minute, "quota window")
		credsOut     = fs.String("credentials-out", "", "write the service-account key file (JSON) here")
		certOut      = fs.String("cert-out", "", "write the server's certificate (PEM) here")
		unregistered = fs.String("unregistered", "", "file of tokens (one per line) answered UNREGISTERED")
		stats        = fs.Bool("stats", false, "print counters to stderr every second")
		statsFile    = fs.String("stats-file", "", "on stop, write the counters (JSON) here")
		expect       = fs.String("expect-tokens", "", "file of tokens (one per line) each expected exactly once; on stop, --stats-file and stderr say how many were accepted once, never or more often")
		tokenOut     = fs.String("token-out", "", "write a valid access token here, fetched from the fake's own token endpoint, for load tools (valid 1 h)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *failRate < 0 || *failRate > 1 {
		return fmt.Errorf("--fail-rate %g: a fraction between 0 and 1", *failRate)
	}
	switch *failCode {
	case fcmtest.Unavailable, fcmtest.Internal, fcmtest.QuotaExceeded, fcmtest.Unregistered, fcmtest.InvalidArgument,
		fcmtest.SenderIDMismatch, fcmtest.ThirdPartyAuthError, fcmtest.Unauthenticated:
	default:
		return fmt.Errorf("--fail-code %q: use UNAVAILABLE, INTERNAL, QUOTA_EXCEEDED, UNREGISTERED, INVALID_ARGUMENT, "+
			"SENDER_ID_MISMATCH, THIRD_PARTY_AUTH_ERROR or UNAUTHENTICATED", *failCode)
	}
	var want []string
	if *expect != "" {
		var err error
		if want, err = readTokens(*expect); err != nil {
			return err
		}
	}
	var gone []string
	if *unregistered != "" {
		var err error
		if gone, err = readTokens(*unregistered); err != nil {
			return err
		}
	}

	srv, err := fcmtest.NewServer(fcmtest.Options{Addr: *listen, ProjectID: *project, ReceivedLimit: -1})
	if err != nil {
		return err
	}
	defer srv.Close()
	srv.SetLatency(*latency)
	srv.SetFailRate(*failRate, *failCode)
	srv.SetQuota(*quota, *quotaPer)
	srv.Unregister(gone...)
	if *credsOut != "" {
		// The key file is a secret in real life; keep the habit.
		if err := os.WriteFile(*credsOut, srv.CredentialsJSON(), 0o600); err != nil {
			return fmt.Errorf("write credentials: %w", err)
		}
	}
	if *certOut != "" {
		if err := os.WriteFile(*certOut, srv.CertPEM(), 0o644); err != nil {
			return fmt.Errorf("write certificate: %w", err)
		}
	}
	if *tokenOut != "" {
		tok, err := accessToken(ctx, srv)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*tokenOut, []byte(tok+"\n"), 0o600); err != nil {
			return fmt.Errorf("write access token: %w", err)
		}
	}
	fmt.Fprintln(stdout, srv.URL())
	fmt.Fprintf(stderr, "fakefcm: serving project %s on %s (%d unregistered tokens)\n", srv.ProjectID(), srv.URL(), len(gone))

	if *stats {
		go printStats(ctx, srv, stderr)
	}
	<-ctx.Done()
	st := counters(srv, want, *expect != "")
	fmt.Fprintf(stderr, "fakefcm: stopping: %d requests, %d accepted\n", st.Requests, st.Accepted)
	if st.Expected != nil {
		e := st.Expected
		fmt.Fprintf(stderr, "fakefcm: expected tokens: %d, accepted once %d, never %d, more than once %d\n",
			e.Tokens, e.Once, e.Missing, e.Repeated)
	}
	if *statsFile != "" {
		data, _ := json.MarshalIndent(st, "", "  ")
		if err := os.WriteFile(*statsFile, append(data, '\n'), 0o644); err != nil {
			return fmt.Errorf("write stats: %w", err)
		}
	}
	return nil
}

// stats is what --stats-file holds.
type stats struct {
	Requests      int `json:"requests"`
	Accepted      int `json:"accepted"`
	TokenRequests int `json:"token_requests"`
	PeakInFlight  int `json:"peak_in_flight"`
	// Expected is the check of --expect-tokens (absent without it).
	Expected *expected `json:"expected,omitempty"`
}

type expected struct {
	Tokens   int `json:"tokens"`
	Once     int `json:"once"`
	Missing  int `json:"missing"`
	Repeated int `json:"repeated"`
	// Examples are up to 10 tokens not accepted exactly once.
	Examples []string `json:"examples,omitempty"`
}

func counters(srv *fcmtest.Server, want []string, check bool) stats {
	st := stats{Requests: srv.Requests(), Accepted: srv.Total(), TokenRequests: srv.TokenRequests(), PeakInFlight: srv.PeakInFlight()}
	if !check {
		return st
	}
	e := &expected{Tokens: len(want)}
	for _, t := range want {
		switch n := srv.Count(t); {
		case n == 1:
			e.Once++
			continue
		case n == 0:
			e.Missing++
		default:
			e.Repeated++
		}
		if len(e.Examples) < 10 {
			e.Examples = append(e.Examples, t)
		}
	}
	st.Expected = e
	return st
}

// accessToken fetches an access token from the fake's token endpoint with
// the JWT-bearer flow of its own service account, as a sender would.
func accessToken(ctx context.Context, srv *fcmtest.Server) (string, error) {
	var key struct {
		PrivateKey   string `json:"private_key"`
		PrivateKeyID string `json:"private_key_id"`
	}
	if err := json.Unmarshal(srv.CredentialsJSON(), &key); err != nil {
		return "", fmt.Errorf("access token: %w", err)
	}
	conf := &jwt.Config{Email: srv.ClientEmail(), PrivateKey: []byte(key.PrivateKey), PrivateKeyID: key.PrivateKeyID,
		Scopes: []string{fcmtest.ScopeFirebaseMessaging}, TokenURL: srv.TokenURI()}
	tok, err := conf.TokenSource(context.WithValue(ctx, oauth2.HTTPClient, srv.Client())).Token()
	if err != nil {
		return "", fmt.Errorf("access token: %w", err)
	}
	return tok.AccessToken, nil
}

// printStats writes one line of counters per second until ctx ends.
func printStats(ctx context.Context, srv *fcmtest.Server, w io.Writer) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastReq, lastOK := 0, 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			req, ok := srv.Requests(), srv.Total()
			fmt.Fprintf(w, "fakefcm: requests %d (+%d/s) accepted %d (+%d/s) token requests %d\n",
				req, req-lastReq, ok, ok-lastOK, srv.TokenRequests())
			lastReq, lastOK = req, ok
		}
	}
}

// readTokens reads a file of tokens, one per line; blank lines and lines
// starting with # are skipped.
func readTokens(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("unregistered tokens: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("unregistered tokens: %s: %w", path, err)
	}
	return out, nil
}

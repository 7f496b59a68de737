package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/fcm"
)

// TestBinary builds fakefcm, runs it, sends through the fcm client with
// the files it wrote and once with the --token-out token, and stops it
// with SIGTERM.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "fakefcm")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	creds, cert, gone := filepath.Join(dir, "creds.json"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "gone.txt")
	if err := os.WriteFile(gone, []byte("# uninstalled\ngone-1\n\ngone-2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	expect, statsFile, tokenFile := filepath.Join(dir, "expect.txt"), filepath.Join(dir, "stats.json"), filepath.Join(dir, "token.txt")
	if err := os.WriteFile(expect, []byte("tok-1\ntok-2\ntok-3\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--credentials-out", creds, "--cert-out", cert,
		"--unregistered", gone, "--latency", "1ms", "--stats",
		"--expect-tokens", expect, "--stats-file", statsFile, "--token-out", tokenFile)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	done := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			// Only reached with the process running if the test failed.
			cmd.Process.Kill()
			<-done
		}
	})
	lines := make(chan string, 1)
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		waitErr = cmd.Wait()
	}()
	var url string
	select {
	case url = <-lines:
	case <-time.After(time.Minute):
		t.Fatalf("no URL printed; stderr:\n%s", stderr.String())
	}
	if !strings.HasPrefix(url, "https://127.0.0.1:") {
		t.Fatalf("printed %q; stderr:\n%s", url, stderr.String())
	}

	key, err := os.ReadFile(creds)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("cert-out is not a PEM certificate")
	}
	h2 := new(http.Protocols)
	h2.SetHTTP2(true)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, Protocols: h2, MaxConnsPerHost: 4}
	defer tr.CloseIdleConnections()
	c, err := fcm.New(fcm.Config{CredentialsJSON: key, Endpoint: url, HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	res := c.Send(t.Context(), []pb.Push{
		{Recipient: pb.Recipient{UserID: "u1", Token: "tok-1"}, Message: pb.Message{Title: "Hello"}},
		{Recipient: pb.Recipient{UserID: "u2", Token: "gone-2"}, Message: pb.Message{Title: "Hello"}},
	})
	if res[0].State != pb.DeliverySent || res[1].State != pb.DeliveryInvalidToken {
		t.Errorf("results %+v %+v", res[0], res[1])
	}

	// A load tool's request: the --token-out token, a body of its own.
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: tr}
	for range 2 {
		req, err := http.NewRequest(http.MethodPost, url+"/v1/projects/fake-project/messages:send",
			strings.NewReader(`{"message":{"token":"tok-2","notification":{"title":"Hello"}}}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("send with the --token-out token: %s", resp.Status)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		if waitErr != nil {
			t.Fatalf("exit: %v; stderr:\n%s", waitErr, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("still running after SIGTERM; stderr:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "4 requests, 3 accepted") ||
		!strings.Contains(stderr.String(), "expected tokens: 3, accepted once 1, never 1, more than once 1") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
	data, err := os.ReadFile(statsFile)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Requests, Accepted int
		Expected           struct {
			Tokens, Once, Missing, Repeated int
			Examples                        []string
		}
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("%v in %s", err, data)
	}
	if st.Requests != 4 || st.Accepted != 3 || st.Expected.Tokens != 3 || st.Expected.Once != 1 ||
		st.Expected.Missing != 1 || st.Expected.Repeated != 1 || strings.Join(st.Expected.Examples, " ") != "tok-2 tok-3" {
		t.Errorf("stats file:\n%s", data)
	}
}

// syncBuffer is a bytes.Buffer the process's output can be written to
// while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/httpapi"
)

// client talks to a running server's API.
type client struct {
	base  string
	token string
	http  *http.Client
}

// clientFlags are the flags every client command shares.
type clientFlags struct {
	server string
	token  string
	json   bool
}

func (c *clientFlags) register(fs *flag.FlagSet, env envFunc) {
	fs.StringVar(&c.server, "server", envOr(env, "PUSHBLASTER_SERVER", "http://127.0.0.1:8080"), "URL of the pushblaster API (env PUSHBLASTER_SERVER)")
	fs.StringVar(&c.token, "token", env("PUSHBLASTER_TOKEN"), "bearer token for changes, if the server requires one (env PUSHBLASTER_TOKEN)")
	fs.BoolVar(&c.json, "json", false, "print the API's JSON instead of a table")
}

func (c *clientFlags) client() (*client, error) {
	u, err := url.Parse(c.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, pb.Errorf(pb.KindValidation, "--server=%q is not an http(s) URL such as http://127.0.0.1:8080", redactURL(c.server))
	}
	return &client{base: strings.TrimRight(c.server, "/"), token: c.token, http: &http.Client{Timeout: 60 * time.Second}}, nil
}

// do sends a request and decodes the JSON answer into out (if non-nil).
// API errors come back as *pb.Error with their kind and fields.
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	_, err := c.doAccepting(ctx, method, path, body, out, nil)
	return err
}

// doAccepting is do, except that a status for which accept reports true
// is an answer (its body decoded into out), not an error; it returns the
// status.
func (c *client) doAccepting(ctx context.Context, method, path string, body, out any, accept func(status int) bool) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, pb.Errorf(pb.KindInternal, "encode request: %v", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, pb.Errorf(pb.KindValidation, "build request: %v", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || isDialError(err) {
			return 0, pb.Errorf(pb.KindExternal, "cannot reach pushblaster at %s: %v; is `pushblaster serve` running there? (--server, PUSHBLASTER_SERVER)", redactURL(c.base), err)
		}
		return 0, pb.Errorf(pb.KindExternal, "%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return 0, pb.Errorf(pb.KindExternal, "read response of %s %s: %v", method, path, err)
	}
	if resp.StatusCode >= 400 && (accept == nil || !accept(resp.StatusCode)) {
		var eb httpapi.ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error != nil {
			return resp.StatusCode, eb.Error
		}
		return resp.StatusCode, pb.Errorf(pb.KindExternal, "%s %s: HTTP %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return resp.StatusCode, nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = data
		return resp.StatusCode, nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return resp.StatusCode, pb.Errorf(pb.KindExternal, "decode response of %s %s: %v", method, path, err)
	}
	return resp.StatusCode, nil
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// automationID resolves an argument that is an id or a name.
func (c *client) automationID(ctx context.Context, ref string) (int64, error) {
	var id int64
	if _, err := fmt.Sscan(ref, &id); err == nil && id > 0 && fmt.Sprint(id) == ref {
		return id, nil
	}
	var list httpapi.AutomationList
	if err := c.do(ctx, http.MethodGet, "/api/automations?name="+url.QueryEscape(ref), nil, &list); err != nil {
		return 0, err
	}
	if len(list.Automations) == 0 {
		return 0, pb.Errorf(pb.KindNotFound, "no automation with id or name %q", ref)
	}
	return list.Automations[0].ID, nil
}

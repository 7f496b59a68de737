package cadencetest_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/pushblaster/pushblaster/cadence/cadencetest"
)

// The fake is strict about the request, so that a client drifting from the
// contract fails its tests instead of passing them.
func TestServerRefusesOffContractRequests(t *testing.T) {
	t.Parallel()
	srv := cadencetest.NewServer()
	defer srv.Close()

	for _, tc := range []struct {
		method, body string
		want         int
	}{
		{http.MethodGet, "", http.StatusMethodNotAllowed},
		{http.MethodPost, `{"userIds": ["u1"]}`, http.StatusBadRequest},
		{http.MethodPost, `not json`, http.StatusBadRequest},
		{http.MethodPost, `{"user_ids": ["u1"]}`, http.StatusOK},
	} {
		req, err := http.NewRequestWithContext(t.Context(), tc.method, srv.URL, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.body, resp.StatusCode, body, tc.want)
		}
	}
	if n := len(srv.Requests()); n != 1 {
		t.Errorf("recorded %d requests, want only the valid one", n)
	}
	srv.Close() // twice is fine
}

// Package promtest reads a Prometheus scrape in tests: the value of each
// series, and promtool's verdict on the whole.
package promtest

import (
	"bytes"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// Samples maps a series, written as the text format writes it (labels
// sorted by name: `name{a="1",b="2"}`), to its value.
type Samples map[string]float64

// Parse reads a scrape in the Prometheus text format.
func Parse(tb testing.TB, body []byte) Samples {
	tb.Helper()
	out := Samples{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			tb.Fatalf("scrape line %q has no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			tb.Fatalf("scrape line %q: %v", line, err)
		}
		key, err := canonical(line[:i])
		if err != nil {
			tb.Fatalf("scrape line %q: %v", line, err)
		}
		out[key] = v
	}
	return out
}

// canonical sorts a series' labels by name (the text format puts le and
// quantile last).
func canonical(series string) (string, error) {
	name, rest, ok := strings.Cut(series, "{")
	if !ok {
		return series, nil
	}
	rest = strings.TrimSuffix(rest, "}")
	var pairs []string
	for rest != "" {
		label, after, ok := strings.Cut(rest, "=")
		if !ok {
			return "", fmt.Errorf("label without a value in %q", series)
		}
		value, err := strconv.QuotedPrefix(after)
		if err != nil {
			return "", fmt.Errorf("label %s: %v", label, err)
		}
		pairs = append(pairs, label+"="+value)
		rest = strings.TrimPrefix(after[len(value):], ",")
	}
	sort.Strings(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}", nil
}

// Series writes the series name with labels given as name, value pairs,
// the way the text format does.
func Series(name string, labels ...string) string {
	if len(labels) == 0 {
		return name
	}
	pairs := make([]string, 0, len(labels)/2)
	for i := 0; i+1 < len(labels); i += 2 {
		pairs = append(pairs, labels[i]+"="+strconv.Quote(labels[i+1]))
	}
	sort.Strings(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// Want fails unless the series has value want.
func (s Samples) Want(tb testing.TB, want float64, name string, labels ...string) {
	tb.Helper()
	key := Series(name, labels...)
	got, ok := s[key]
	switch {
	case !ok:
		tb.Errorf("%s is not in the scrape; series of %s: %v", key, name, s.Of(name))
	case got != want:
		tb.Errorf("%s = %g, want %g", key, got, want)
	}
}

// Of lists the series of one metric name (histogram parts included).
func (s Samples) Of(name string) []string {
	var out []string
	for k, v := range s {
		base, _, _ := strings.Cut(k, "{")
		if base == name || strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(base, "_bucket"), "_sum"), "_count") == name {
			out = append(out, k+" "+strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	sort.Strings(out)
	return out
}

// InstallPromtool is how to get promtool on Debian or Ubuntu.
const InstallPromtool = "apt-get install -y prometheus"

// Promtool pipes a scrape into `promtool check metrics` and fails on any
// complaint; without promtool it skips.
func Promtool(t *testing.T, body []byte) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Skipf("promtool is not installed, so the scrape is not checked by it; install it with: %s", InstallPromtool)
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

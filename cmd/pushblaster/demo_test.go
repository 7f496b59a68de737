package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestDemo: the README's first command runs an automation through the five
// phases against the built-in fake FCM and explains what happened.
func TestDemo(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"demo", "--lead", "1s", "--recipients", "3"}, func(string) string { return "" }, strings.NewReader(""), &out, &errb)
	if err != nil {
		t.Fatalf("demo: %v\n%s\n%s", err, out.String(), errb.String())
	}
	for _, want := range []string{"▶ audience", "✓ test_send", "✓ live_send", "execution 1 completed", "sent 2 of 3, invalid token 1, test sent 1",
		`"Welcome, Anna!"`, "UNREGISTERED", "/api/invalid-tokens"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

package cadence_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/cadence"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	const ok = "https://cadence.example.com/check"
	tests := []struct {
		name  string
		cfg   cadence.Config
		field string // the prefix given to Validate
		want  map[string]string
	}{
		{name: "defaults", cfg: cadence.Config{URL: ok}, field: "cadence"},
		{name: "everything set", field: "cadence", cfg: cadence.Config{URL: "http://10.0.0.7:8080/v1/allowed",
			Timeout: 2 * time.Second, OnError: cadence.OnErrorSkipAll, BatchSize: 250}},
		{name: "no url", field: "cadence", cfg: cadence.Config{},
			want: map[string]string{"cadence.url": "is required"}},
		{name: "relative url", field: "cadence", cfg: cadence.Config{URL: "/check"},
			want: map[string]string{"cadence.url": "must be an absolute http or https URL"}},
		{name: "no host", field: "cadence", cfg: cadence.Config{URL: "https:///check"},
			want: map[string]string{"cadence.url": "must be an absolute http or https URL"}},
		{name: "other scheme", field: "cadence", cfg: cadence.Config{URL: "ftp://cadence.example.com"},
			want: map[string]string{"cadence.url": "must be an absolute http or https URL"}},
		{name: "not a url", field: "cadence", cfg: cadence.Config{URL: "http://a b:%%"},
			want: map[string]string{"cadence.url": "must be an absolute http or https URL"}},
		{name: "negative timeout", field: "cadence", cfg: cadence.Config{URL: ok, Timeout: -time.Second},
			want: map[string]string{"cadence.timeout": "is -1s; it must be a duration per request between 1ms and 1m"}},
		{name: "huge timeout", field: "cadence", cfg: cadence.Config{URL: ok, Timeout: time.Hour},
			want: map[string]string{"cadence.timeout": "is 1h0m0s; it must be a duration per request between 1ms and 1m"}},
		{name: "tiny timeout", field: "cadence", cfg: cadence.Config{URL: ok, Timeout: time.Microsecond},
			want: map[string]string{"cadence.timeout": "between 1ms and 1m"}},
		{name: "unknown on_error", field: "cadence", cfg: cadence.Config{URL: ok, OnError: "ignore"},
			want: map[string]string{"cadence.on_error": `is "ignore"; it must be one of fail, send_all, skip_all`}},
		{name: "negative batch size", field: "cadence", cfg: cadence.Config{URL: ok, BatchSize: -1},
			want: map[string]string{"cadence.batch_size": "positive number of user ids per request"}},
		{name: "all wrong, other prefix", field: "engine.cadence",
			cfg: cadence.Config{URL: "mailto:x@example.com", Timeout: -1, OnError: "FAIL", BatchSize: -2},
			want: map[string]string{
				"engine.cadence.url":        "absolute http or https URL",
				"engine.cadence.timeout":    "between 1ms and 1m",
				"engine.cadence.on_error":   "fail, send_all, skip_all",
				"engine.cadence.batch_size": "positive",
			}},
		{name: "no prefix", field: "", cfg: cadence.Config{OnError: "x"},
			want: map[string]string{"url": "is required", "on_error": "fail, send_all, skip_all"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tt.cfg.Validate(tt.field)
			if len(got) != len(tt.want) {
				t.Fatalf("Validate = %v, want fields %v", got, tt.want)
			}
			for _, f := range got {
				want, ok := tt.want[f.Field]
				if !ok || !strings.Contains(f.Message, want) {
					t.Errorf("%s: %q, want it to contain %q", f.Field, f.Message, want)
				}
			}
		})
	}
}

func TestValidateHidesURLCredentials(t *testing.T) {
	t.Parallel()
	cfg := cadence.Config{URL: "ftp://push:s3cret@cadence.example.com"}
	for _, f := range cfg.Validate("cadence") {
		if strings.Contains(f.Message, "s3cret") {
			t.Errorf("%s: %q shows the password", f.Field, f.Message)
		}
	}
}

func TestNewRefusesInvalidConfig(t *testing.T) {
	t.Parallel()
	_, err := cadence.New(cadence.Config{URL: "cadence.example.com", OnError: "maybe"})
	var e *pb.Error
	if !errors.As(err, &e) || e.Kind != pb.KindValidation {
		t.Fatalf("New: %v; want a validation error", err)
	}
	var fields []string
	for _, f := range e.Fields {
		fields = append(fields, f.Field)
	}
	if strings.Join(fields, " ") != "cadence.on_error cadence.url" {
		t.Errorf("fields = %v, want cadence.on_error and cadence.url", fields)
	}
}

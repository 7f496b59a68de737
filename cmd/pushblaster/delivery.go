package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/apns"
	"github.com/pushblaster/pushblaster/fcm"
	"github.com/pushblaster/pushblaster/webhook"
)

// deliveryConfig is how serve reaches push providers. A provider is
// configured when its credentials are given; "log" always is.
type deliveryConfig struct {
	fcmCredentials string
	fcmEndpoint    string
	fcmCAFile      string
	fcmMaxInFlight int
	fcmRate        int

	apnsKeyFile    string
	apnsKeyID      string
	apnsTeamID     string
	apnsTopic      string
	apnsProduction bool
	apnsEndpoint   string
	apnsCAFile     string
	apnsRate       int

	webhookURL       string
	webhookSecret    string
	webhookBatchSize int
	webhookTimeout   time.Duration
	webhookRate      int
	webhookRetry     bool

	sendBatchSize int
	sendChunkSize int
	sendRounds    int
	sendWorkers   int

	cadenceAuth string // environment only: a secret
}

func (c *deliveryConfig) register(fs *flag.FlagSet, env envFunc) {
	fs.StringVar(&c.fcmCredentials, "fcm-credentials", env("PUSHBLASTER_FCM_CREDENTIALS"), "FCM: service-account JSON key file; enables the fcm provider (env PUSHBLASTER_FCM_CREDENTIALS)")
	fs.StringVar(&c.fcmEndpoint, "fcm-endpoint", envOr(env, "PUSHBLASTER_FCM_ENDPOINT", fcm.DefaultEndpoint), "FCM: API base URL, e.g. a fake FCM's (env PUSHBLASTER_FCM_ENDPOINT)")
	fs.StringVar(&c.fcmCAFile, "fcm-ca-file", env("PUSHBLASTER_FCM_CA_FILE"), "FCM: PEM file of the CA certificates to trust instead of the system's (a fake FCM's --cert-out) (env PUSHBLASTER_FCM_CA_FILE)")
	fs.IntVar(&c.fcmMaxInFlight, "fcm-max-in-flight", fcm.DefaultMaxInFlight, "FCM: requests in flight at once on this instance")
	fs.IntVar(&c.fcmRate, "fcm-rate", 10_000, "FCM: most sends per second over every instance (the default project quota is 600,000/min); 0 is no limit")
	fs.StringVar(&c.apnsKeyFile, "apns-key-file", env("PUSHBLASTER_APNS_KEY_FILE"), "APNs: .p8 token-auth key file; enables the apns provider (env PUSHBLASTER_APNS_KEY_FILE)")
	fs.StringVar(&c.apnsKeyID, "apns-key-id", env("PUSHBLASTER_APNS_KEY_ID"), "APNs: the key's id (env PUSHBLASTER_APNS_KEY_ID)")
	fs.StringVar(&c.apnsTeamID, "apns-team-id", env("PUSHBLASTER_APNS_TEAM_ID"), "APNs: the Apple developer team id (env PUSHBLASTER_APNS_TEAM_ID)")
	fs.StringVar(&c.apnsTopic, "apns-topic", env("PUSHBLASTER_APNS_TOPIC"), "APNs: the app's bundle id (env PUSHBLASTER_APNS_TOPIC)")
	fs.BoolVar(&c.apnsProduction, "apns-production", env("PUSHBLASTER_APNS_PRODUCTION") == "true", "APNs: use the production gateway, not the sandbox (env PUSHBLASTER_APNS_PRODUCTION=true)")
	fs.StringVar(&c.apnsEndpoint, "apns-endpoint", env("PUSHBLASTER_APNS_ENDPOINT"), "APNs: gateway URL overriding the production/sandbox choice (env PUSHBLASTER_APNS_ENDPOINT)")
	fs.StringVar(&c.apnsCAFile, "apns-ca-file", env("PUSHBLASTER_APNS_CA_FILE"), "APNs: PEM file of the CA certificates to trust instead of the system's (env PUSHBLASTER_APNS_CA_FILE)")
	fs.IntVar(&c.apnsRate, "apns-rate", 0, "APNs: most sends per second over every instance; 0 is no limit")
	fs.StringVar(&c.webhookURL, "webhook-url", env("PUSHBLASTER_WEBHOOK_URL"), "webhook: the URL batches are POSTed to; enables the webhook provider with PUSHBLASTER_WEBHOOK_SECRET (env PUSHBLASTER_WEBHOOK_URL)")
	c.webhookSecret = env("PUSHBLASTER_WEBHOOK_SECRET")
	fs.IntVar(&c.webhookBatchSize, "webhook-batch-size", webhook.DefaultBatchSize, "webhook: pushes per request")
	fs.DurationVar(&c.webhookTimeout, "webhook-timeout", webhook.DefaultTimeout, "webhook: timeout of one request")
	fs.IntVar(&c.webhookRate, "webhook-rate", 0, "webhook: most sends per second over every instance; 0 is no limit")
	fs.BoolVar(&c.webhookRetry, "webhook-retry-unknown", false, "webhook: retry a batch whose request may have reached the receiver (only if it drops repeated Idempotency-Keys)")
	fs.IntVar(&c.sendBatchSize, "send-batch-size", 5000, "recipients per live-send batch job (the unit of work shared by instances)")
	fs.IntVar(&c.sendChunkSize, "send-chunk-size", 250, "pushes claimed in the ledger and handed to the provider at once")
	c.cadenceAuth = env("PUSHBLASTER_CADENCE_AUTHORIZATION")
	fs.IntVar(&c.sendWorkers, "send-workers", 0, "live-send batch jobs run at once on this instance, per provider, in the provider's own queue apart from the phases (0: twice its rounds in flight)")
	fs.IntVar(&c.sendRounds, "send-rounds-in-flight", 0, "send rounds between claim and record at once on this instance, per provider (0: per provider, enough rounds for the pushes it has in flight, plus one: FCM --fcm-max-in-flight, APNs 500, webhook 8 requests x --webhook-batch-size)")
}

// build opens the configured providers. Each error names the flag to fix.
func (c *deliveryConfig) build(log *slog.Logger) (senders map[string]pb.Sender, rates map[string]int, err error) {
	senders, rates = map[string]pb.Sender{}, map[string]int{}
	for _, f := range []struct {
		name string
		v    int
	}{{"fcm-rate", c.fcmRate}, {"apns-rate", c.apnsRate}, {"webhook-rate", c.webhookRate}} {
		if f.v < 0 {
			return nil, nil, pb.Errorf(pb.KindValidation, "--%s=%d must be 0 (no limit) or more", f.name, f.v)
		}
	}
	if c.sendBatchSize <= 0 || c.sendChunkSize <= 0 || c.fcmMaxInFlight <= 0 {
		return nil, nil, pb.Errorf(pb.KindValidation, "--send-batch-size, --send-chunk-size and --fcm-max-in-flight must be positive")
	}
	if c.sendRounds < 0 {
		return nil, nil, pb.Errorf(pb.KindValidation, "--send-rounds-in-flight=%d must be 0 (the default) or more", c.sendRounds)
	}
	if c.sendWorkers < 0 {
		return nil, nil, pb.Errorf(pb.KindValidation, "--send-workers=%d must be 0 (the default) or more", c.sendWorkers)
	}
	if c.fcmCredentials != "" {
		key, err := os.ReadFile(c.fcmCredentials)
		if err != nil {
			return nil, nil, pb.Errorf(pb.KindValidation, "--fcm-credentials: %v", err)
		}
		cfg := fcm.Config{CredentialsJSON: key, Endpoint: c.fcmEndpoint, MaxInFlight: c.fcmMaxInFlight, Logger: log.With("provider", "fcm")}
		if c.fcmCAFile != "" {
			if cfg.RootCAs, err = readCAs("fcm-ca-file", c.fcmCAFile); err != nil {
				return nil, nil, err
			}
		}
		s, err := fcm.New(cfg)
		if err != nil {
			return nil, nil, pb.WrapError(pb.KindValidation, err, "--fcm-credentials=%s", c.fcmCredentials)
		}
		senders["fcm"], rates["fcm"] = s, c.fcmRate
	}
	if c.apnsKeyFile != "" {
		key, err := os.ReadFile(c.apnsKeyFile)
		if err != nil {
			return nil, nil, pb.Errorf(pb.KindValidation, "--apns-key-file: %v", err)
		}
		cfg := apns.Config{KeyP8: key, KeyID: c.apnsKeyID, TeamID: c.apnsTeamID, Topic: c.apnsTopic, Production: c.apnsProduction,
			Endpoint: c.apnsEndpoint, Logger: log.With("provider", "apns")}
		if c.apnsCAFile != "" {
			roots, err := readCAs("apns-ca-file", c.apnsCAFile)
			if err != nil {
				return nil, nil, err
			}
			cfg.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}}
		}
		s, err := apns.New(cfg)
		if err != nil {
			return nil, nil, err
		}
		senders["apns"], rates["apns"] = s, c.apnsRate
	}
	if c.webhookURL != "" || c.webhookSecret != "" {
		if c.webhookSecret == "" {
			return nil, nil, pb.Errorf(pb.KindValidation, "--webhook-url needs PUSHBLASTER_WEBHOOK_SECRET (the HMAC key the receiver verifies signatures with)")
		}
		s, err := webhook.New(webhook.Config{URL: c.webhookURL, Secret: []byte(c.webhookSecret), BatchSize: c.webhookBatchSize,
			Timeout: c.webhookTimeout, RetryUnknown: c.webhookRetry, Logger: log.With("provider", "webhook")})
		if err != nil {
			return nil, nil, err
		}
		senders["webhook"], rates["webhook"] = s, c.webhookRate
	}
	return senders, rates, nil
}

// readCAs reads a PEM bundle of CA certificates.
func readCAs(flag, path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, pb.Errorf(pb.KindValidation, "--%s: %v", flag, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, pb.Errorf(pb.KindValidation, "--%s=%s holds no PEM certificate", flag, path)
	}
	return pool, nil
}

package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/audience"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/postgres"
)

// audienceConfig is how serve reaches audience sources and token sources.
type audienceConfig struct {
	scriptsDir        string
	dataDir           string
	scriptEnvAllow    string
	scriptEnvPass     string
	env               envFunc // the server's environment, for --script-env-pass
	databaseURL       string
	tokenSource       string
	tokenQuery        string
	tokenURL          string
	tokenRequest      string
	tokenPath         string
	tokenFields       string
	tokenAuth         string
	artifactRetention time.Duration
	maxOutputBytes    int64
	maxLineBytes      int
}

func (c *audienceConfig) register(fs *flag.FlagSet, env envFunc) {
	fs.StringVar(&c.scriptsDir, "scripts-dir", env("PUSHBLASTER_SCRIPTS_DIR"), "directory of audience scripts; script audiences are disabled without it (env PUSHBLASTER_SCRIPTS_DIR)")
	fs.StringVar(&c.dataDir, "data-dir", env("PUSHBLASTER_DATA_DIR"), "directory of CSV audience files; csv audiences are disabled without it (env PUSHBLASTER_DATA_DIR)")
	fs.StringVar(&c.scriptEnvAllow, "script-env-allow", env("PUSHBLASTER_SCRIPT_ENV_ALLOW"), "comma-separated environment names an automation may set for its script (env PUSHBLASTER_SCRIPT_ENV_ALLOW)")
	fs.StringVar(&c.scriptEnvPass, "script-env-pass", env("PUSHBLASTER_SCRIPT_ENV_PASS"), "comma-separated names of this server's environment given to every audience script as they are, for secrets kept out of definitions (env PUSHBLASTER_SCRIPT_ENV_PASS)")
	c.env = env
	fs.StringVar(&c.databaseURL, "audience-database-url", env("PUSHBLASTER_AUDIENCE_DATABASE_URL"), "PostgreSQL database that sql audiences and the sql token source read, read-only (env PUSHBLASTER_AUDIENCE_DATABASE_URL)")
	fs.StringVar(&c.tokenSource, "token-source", envOr(env, "PUSHBLASTER_TOKEN_SOURCE", "none"), "how recipients without a token get theirs: none, sql or http (env PUSHBLASTER_TOKEN_SOURCE)")
	fs.StringVar(&c.tokenQuery, "token-query", env("PUSHBLASTER_TOKEN_QUERY"), "sql token source: a query taking user ids as $1 (text[]) and returning user_id, token[, platform] (env PUSHBLASTER_TOKEN_QUERY)")
	fs.StringVar(&c.tokenURL, "token-url", env("PUSHBLASTER_TOKEN_URL"), "http token source: the URL to POST to (env PUSHBLASTER_TOKEN_URL)")
	fs.StringVar(&c.tokenRequest, "token-request", env("PUSHBLASTER_TOKEN_REQUEST"), `http token source: the JSON body, a Go template with {{json .UserIDs}} (default {"user_ids": [...]}) (env PUSHBLASTER_TOKEN_REQUEST)`)
	fs.StringVar(&c.tokenPath, "token-path", env("PUSHBLASTER_TOKEN_PATH"), `http token source: dotted path to the array of devices in the answer, e.g. data.devices (env PUSHBLASTER_TOKEN_PATH)`)
	fs.StringVar(&c.tokenFields, "token-fields", env("PUSHBLASTER_TOKEN_FIELDS"), "http token source: field names of a device, e.g. user_id=userId,token=pushToken,platform=os (env PUSHBLASTER_TOKEN_FIELDS)")
	c.tokenAuth = env("PUSHBLASTER_TOKEN_AUTHORIZATION")
	fs.DurationVar(&c.artifactRetention, "artifact-retention", 7*24*time.Hour, "how long audience debug artefacts (stderr, first and last rows, exit status) are kept")
	fs.Int64Var(&c.maxOutputBytes, "max-output-bytes", 1<<30, "largest audience output (script stdout or CSV file) read, in bytes")
	fs.IntVar(&c.maxLineBytes, "max-line-bytes", 64<<10, "longest audience output line; a longer one is a malformed row")
}

// build checks the configuration and opens what it names. close releases
// the audience database pool, if any.
func (c *audienceConfig) build(ctx context.Context) (cfg engine.AudienceConfig, close func(), err error) {
	close = func() {}
	for _, d := range []struct{ flag, dir string }{{"scripts-dir", c.scriptsDir}, {"data-dir", c.dataDir}} {
		if d.dir == "" {
			continue
		}
		st, err := os.Stat(d.dir)
		if err != nil || !st.IsDir() {
			return cfg, close, pb.Errorf(pb.KindValidation, "--%s=%s is not a directory", d.flag, d.dir)
		}
	}
	cfg.ScriptsDir, cfg.DataDir = absOrEmpty(c.scriptsDir), absOrEmpty(c.dataDir)
	for _, n := range strings.Split(c.scriptEnvAllow, ",") {
		if n = strings.TrimSpace(n); n != "" {
			cfg.ScriptEnvAllow = append(cfg.ScriptEnvAllow, n)
		}
	}
	for _, n := range strings.Split(c.scriptEnvPass, ",") {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		if slices.Contains(cfg.ScriptEnvAllow, n) {
			return cfg, close, pb.Errorf(pb.KindValidation, "--script-env-pass: %s is in --script-env-allow too; a name comes either from the server's environment or from the automation, not both", n)
		}
		v := c.env(n)
		if v == "" {
			return cfg, close, pb.Errorf(pb.KindValidation, "--script-env-pass: %s is not set in the server's environment; set it, or drop it from the list", n)
		}
		if cfg.ScriptEnvPass == nil {
			cfg.ScriptEnvPass = map[string]string{}
		}
		cfg.ScriptEnvPass[n] = v
	}
	if c.maxOutputBytes <= 0 || c.maxLineBytes <= 0 {
		return cfg, close, pb.Errorf(pb.KindValidation, "--max-output-bytes and --max-line-bytes must be positive")
	}
	cfg.Limits = audience.Limits{MaxBytes: c.maxOutputBytes, MaxLineBytes: c.maxLineBytes}
	cfg.ArtifactRetention = c.artifactRetention
	if exe, err := os.Executable(); err == nil {
		cfg.Supervisor = []string{exe, superviseCommand}
	}

	var pool *pgxpool.Pool
	if c.databaseURL != "" {
		if kind, _, err := parseDatabaseURL(c.databaseURL); err != nil || kind != "postgres" {
			return cfg, close, pb.Errorf(pb.KindValidation, "--audience-database-url must be a postgres:// URL")
		}
		pool, err = postgres.Open(ctx, postgres.Config{URL: c.databaseURL, MaxConns: 4})
		if err != nil {
			return cfg, close, pb.WrapError(pb.KindDatabase, err, "audience database")
		}
		close = pool.Close
		cfg.SQL = &audience.SQLSource{Pool: pool}
	}
	switch c.tokenSource {
	case "", "none":
	case "sql":
		if pool == nil || c.tokenQuery == "" {
			return cfg, close, pb.Errorf(pb.KindValidation, "--token-source=sql needs --audience-database-url and --token-query")
		}
		cfg.Tokens = &audience.SQLTokens{Pool: pool, Query: c.tokenQuery}
	case "http":
		h := audience.HTTPTokens{URL: c.tokenURL, Request: c.tokenRequest, Path: c.tokenPath, Headers: map[string]string{}}
		if c.tokenAuth != "" {
			h.Headers["Authorization"] = c.tokenAuth
		}
		for _, kv := range strings.Split(c.tokenFields, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			switch {
			case kv == "":
			case !ok:
				return cfg, close, pb.Errorf(pb.KindValidation, "--token-fields: %q is not name=field", kv)
			case k == "user_id":
				h.UserIDField = v
			case k == "token":
				h.TokenField = v
			case k == "platform":
				h.PlatformField = v
			default:
				return cfg, close, pb.Errorf(pb.KindValidation, "--token-fields: %q is not user_id, token or platform", k)
			}
		}
		ht, err := audience.NewHTTPTokens(h)
		if err != nil {
			return cfg, close, err
		}
		cfg.Tokens = ht
	default:
		return cfg, close, pb.Errorf(pb.KindValidation, "--token-source=%q: use none, sql or http", c.tokenSource)
	}
	return cfg, close, nil
}

func absOrEmpty(dir string) string {
	if dir == "" {
		return ""
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return dir
	}
	return abs
}

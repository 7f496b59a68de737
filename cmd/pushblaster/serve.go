package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/httpapi"
	"github.com/pushblaster/pushblaster/metrics"
)

// serveConfig is everything serve reads from flags and the environment.
type serveConfig struct {
	db              dbConfig
	log             logConfig
	listen          string
	instanceID      string
	tickInterval    time.Duration
	pollInterval    time.Duration
	maxWorkers      int
	rescueAfter     time.Duration
	heartbeat       time.Duration
	lostAfter       time.Duration
	shutdownTimeout time.Duration
	tokens          []string
	audience        audienceConfig
	delivery        deliveryConfig
	maxSubscribers  int // live event streams at once (SSE)
	errorWindow     time.Duration
	errorThreshold  int
}

func parseServe(args []string, env envFunc, stderr io.Writer) (*serveConfig, error) {
	c := &serveConfig{}
	fs := flagSet("serve", stderr, "serve [flags]")
	c.db.register(fs, env)
	c.log.register(fs, env)
	c.audience.register(fs, env)
	c.delivery.register(fs, env)
	shutdown, err := envDuration(env, "PUSHBLASTER_SHUTDOWN_TIMEOUT", 30*time.Second)
	if err != nil {
		return nil, err
	}
	workers, err := envInt(env, "PUSHBLASTER_MAX_WORKERS", 50)
	if err != nil {
		return nil, err
	}
	fs.StringVar(&c.listen, "listen", envOr(env, "PUSHBLASTER_LISTEN", "127.0.0.1:8080"),
		"address of the API; a non-loopback address needs PUSHBLASTER_API_TOKENS (env PUSHBLASTER_LISTEN)")
	fs.StringVar(&c.instanceID, "instance-id", env("PUSHBLASTER_INSTANCE_ID"), "name of this instance in records and logs (default host-pid-random) (env PUSHBLASTER_INSTANCE_ID)")
	fs.DurationVar(&c.tickInterval, "tick-interval", time.Second, "how often the scheduler looks for due fires")
	fs.DurationVar(&c.pollInterval, "poll-interval", 100*time.Millisecond, "how often due jobs are fetched; bounds how late a phase starts")
	fs.IntVar(&c.maxWorkers, "max-workers", workers, "phase jobs run at once on this instance; live-send batches have their own queues (--send-workers) (env PUSHBLASTER_MAX_WORKERS)")
	fs.DurationVar(&c.rescueAfter, "rescue-after", 15*time.Minute, "a job running longer than this is presumed dead with its instance and run again")
	fs.DurationVar(&c.heartbeat, "heartbeat-interval", 5*time.Second, "how often this instance records that it is alive and watches the others")
	fs.DurationVar(&c.lostAfter, "lost-after", 60*time.Second, "another instance silent this long is declared lost and its running jobs resume here (at least 3 heartbeat intervals)")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", shutdown, "on SIGTERM, how long running jobs may finish before they are cancelled (env PUSHBLASTER_SHUTDOWN_TIMEOUT)")
	fs.IntVar(&c.maxSubscribers, "max-subscribers", 1000, "live event streams (SSE) this instance serves at once; one more is answered 503")
	fs.DurationVar(&c.errorWindow, "health-error-window", 5*time.Minute, "health: the window over which recorded errors are counted")
	fs.IntVar(&c.errorThreshold, "health-error-threshold", 10, "health: more errors than this in --health-error-window make the health degraded")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "serve takes no arguments, got %q\n", pos)
		return nil, errUsage
	}
	for _, t := range strings.Split(env("PUSHBLASTER_API_TOKENS"), ",") {
		if t = strings.TrimSpace(t); t != "" {
			c.tokens = append(c.tokens, t)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"tick-interval", c.tickInterval}, {"poll-interval", c.pollInterval}, {"rescue-after", c.rescueAfter}, {"heartbeat-interval", c.heartbeat}, {"lost-after", c.lostAfter}, {"shutdown-timeout", c.shutdownTimeout}, {"health-error-window", c.errorWindow}} {
		if d.v <= 0 {
			return nil, pb.Errorf(pb.KindValidation, "--%s=%s must be positive", d.name, d.v)
		}
	}
	if c.lostAfter < 3*c.heartbeat {
		return nil, pb.Errorf(pb.KindValidation, "--lost-after=%s must be at least three --heartbeat-interval (%s), or a slow heartbeat would make a live instance look lost", c.lostAfter, 3*c.heartbeat)
	}
	if c.maxWorkers <= 0 {
		return nil, pb.Errorf(pb.KindValidation, "--max-workers=%d must be positive", c.maxWorkers)
	}
	if c.errorThreshold <= 0 {
		return nil, pb.Errorf(pb.KindValidation, "--health-error-threshold=%d must be positive", c.errorThreshold)
	}
	if c.maxSubscribers <= 0 {
		return nil, pb.Errorf(pb.KindValidation, "--max-subscribers=%d must be positive", c.maxSubscribers)
	}
	if err := checkListen(c.listen, len(c.tokens) > 0); err != nil {
		return nil, err
	}
	return c, nil
}

// checkListen refuses to expose an unauthenticated API beyond loopback.
func checkListen(addr string, haveTokens bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return pb.Errorf(pb.KindValidation, "--listen=%q is not host:port (e.g. 127.0.0.1:8080)", addr)
	}
	if haveTokens || strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return pb.Errorf(pb.KindValidation,
		"refusing to listen on %s without API tokens: anyone who can reach it could send pushes. Set PUSHBLASTER_API_TOKENS=token1,token2 or listen on 127.0.0.1", addr)
}

func runServe(ctx context.Context, args []string, env envFunc, stdout, stderr io.Writer) error {
	c, err := parseServe(args, env, stderr)
	if err != nil {
		return err
	}
	base, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	// Every line of this instance carries its id, from the first one on.
	// The engine adds instance_id to its own lines, so it gets base.
	if c.instanceID == "" {
		c.instanceID = engine.NewInstanceID()
	}
	log := base.With("instance_id", c.instanceID)
	be, err := openBackend(ctx, c.db)
	if err != nil {
		return err
	}
	defer be.close()
	applied, err := be.migrate(ctx)
	if err != nil {
		return pb.WrapError(pb.KindDatabase, err, "migrate %s", be.desc)
	}
	if len(applied) > 0 {
		log.Info("migrations applied", "event", "db.migrate", "applied", applied)
	}
	ac, closeAudience, err := c.audience.build(ctx)
	if err != nil {
		return err
	}
	defer closeAudience()
	senders, rates, err := c.delivery.build(log)
	if err != nil {
		return err
	}
	// The engine reports to the metrics; the metrics read the engine's
	// live event feed when scraped (only once serving, when eng is set).
	var eng *engine.Engine
	met := metrics.New(metrics.Options{
		ActiveExecutions: be.store.CountActiveByStatus,
		Subscribers:      func() int { return eng.Events().Subscribers() },
		Pool:             be.pool, DB: be.sqlDB, Version: versionString(), Logger: log,
	})
	eng, err = be.newEngine(engine.Config{
		InstanceID: c.instanceID, Logger: base, TickInterval: c.tickInterval,
		PollInterval: c.pollInterval, MaxWorkers: c.maxWorkers, RescueAfter: c.rescueAfter,
		Audience: ac, Senders: senders, ProviderRates: rates,
		SendBatchSize: c.delivery.sendBatchSize, SendChunkSize: c.delivery.sendChunkSize, SendRoundsInFlight: c.delivery.sendRounds,
		SendWorkers: c.delivery.sendWorkers, CadenceAuthorization: c.delivery.cadenceAuth,
		HeartbeatInterval: c.heartbeat, LostAfter: c.lostAfter, Version: versionString(),
		Observer: met, PoolStats: be.poolStats,
		HealthErrorWindow: c.errorWindow, HealthErrorThreshold: int64(c.errorThreshold),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return pb.Errorf(pb.KindValidation, "listen on %s: %v (is another pushblaster running? choose another --listen)", c.listen, err)
	}
	srv := &http.Server{
		Handler: httpapi.NewServer(eng, httpapi.Options{
			Tokens: c.tokens, Logger: log, Metrics: met.Handler(),
			Ready:          func(ctx context.Context) error { return ready(ctx, be) },
			MaxSubscribers: c.maxSubscribers,
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.With("event", "http.server_error").Handler(), slog.LevelWarn),
	}
	// Live event streams end (clients reconnect elsewhere) when shutdown
	// begins, instead of holding it up.
	srv.RegisterOnShutdown(eng.Events().Stop)
	if err := eng.Start(ctx); err != nil {
		ln.Close()
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	fmt.Fprintf(stdout, "pushblaster %s listening on http://%s (database %s)\n", eng.InstanceID(), ln.Addr(), be.desc)
	log.Info("serving", "event", "serve.start", "addr", ln.Addr().String(), "database", be.desc, "auth", len(c.tokens) > 0)

	select {
	case <-ctx.Done():
		log.Info("shutting down: no new fires; running jobs may finish", "event", "serve.shutdown", "timeout", c.shutdownTimeout.String())
	case err := <-serveErr:
		log.Error("API server failed; shutting down", "event", "serve.error", "error", err)
	}
	// A fresh context: the signal's context is already done.
	stopCtx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	httpCtx, httpCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer httpCancel()
	if err := srv.Shutdown(httpCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("API shutdown", "event", "serve.shutdown_error", "error", err)
	}
	if err := eng.Stop(stopCtx); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "pushblaster stopped")
	return nil
}

// ready reports whether the database answers and is fully migrated.
func ready(ctx context.Context, be *backend) error {
	pending, err := be.pending(ctx)
	if err != nil {
		return err
	}
	if len(pending) > 0 {
		return pb.Errorf(pb.KindDatabase, "migrations pending: %s; run pushblaster migrate", strings.Join(pending, ", "))
	}
	return nil
}

func runMigrate(ctx context.Context, args []string, env envFunc, stdout, stderr io.Writer) error {
	fs := flagSet("migrate", stderr, "migrate [flags]")
	var db dbConfig
	db.register(fs, env)
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	be, err := openBackend(ctx, db)
	if err != nil {
		return err
	}
	defer be.close()
	applied, err := be.migrate(ctx)
	for _, m := range applied {
		fmt.Fprintln(stdout, "applied", m)
	}
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "%s is up to date\n", be.desc)
	}
	return nil
}

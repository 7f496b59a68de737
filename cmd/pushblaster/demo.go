package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/engine"
	"github.com/pushblaster/pushblaster/fcm"
	"github.com/pushblaster/pushblaster/fcm/fcmtest"
	"github.com/pushblaster/pushblaster/httpapi"
)

// runDemo starts the engine on a throwaway SQLite database, creates one
// automation, runs it and narrates every phase until it is done.
func runDemo(ctx context.Context, args []string, env envFunc, stdout, stderr io.Writer) error {
	fs := flagSet("demo", stderr, "demo [flags]")
	lead := fs.Duration("lead", 20*time.Second, "lead time: how long the audience and test phases run ahead of the send; the cancellation window fills the rest")
	n := fs.Int("recipients", 5, "audience size")
	keep := fs.Bool("keep", false, "keep the demo's database and log afterwards")
	dbURL := fs.String("database-url", "", "database to use (default: a fresh SQLite file in a temporary directory)")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *n < 1 || *n > 100000 {
		return pb.Errorf(pb.KindValidation, "--recipients=%d: use 1 to 100000", *n)
	}
	if *lead < time.Second || *lead > time.Hour {
		return pb.Errorf(pb.KindValidation, "--lead=%s: use 1s to 1h", *lead)
	}
	dir, err := os.MkdirTemp("", "pushblaster-demo-")
	if err != nil {
		return pb.Errorf(pb.KindInternal, "create a temporary directory: %v", err)
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	if *dbURL == "" {
		*dbURL = "sqlite:" + filepath.Join(dir, "demo.db")
	}
	logPath := filepath.Join(dir, "engine.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return pb.Errorf(pb.KindInternal, "create %s: %v", logPath, err)
	}
	defer logFile.Close()
	log := slog.New(pb.ContextHandler{Handler: slog.NewJSONHandler(logFile, nil)})

	be, err := openBackend(ctx, dbConfig{url: *dbURL})
	if err != nil {
		return err
	}
	defer be.close()
	if _, err := be.migrate(ctx); err != nil {
		return err
	}
	// A fake FCM on loopback (HTTP/2, TLS, OAuth2 like Google's): the
	// demo sends real FCM traffic with no Google account.
	fake, err := fcmtest.NewServer(fcmtest.Options{Logger: log})
	if err != nil {
		return err
	}
	defer fake.Close()
	fake.SetLatency(20 * time.Millisecond)
	fake.Unregister(demoDeadToken)
	fcmClient, err := fcm.New(fcm.Config{CredentialsJSON: fake.CredentialsJSON(), Endpoint: fake.URL(), HTTPClient: fake.Client(),
		Logger: log.With("provider", "fcm")})
	if err != nil {
		return err
	}
	eng, err := be.newEngine(engine.Config{Logger: log, Senders: map[string]pb.Sender{"fcm": fcmClient}})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return pb.Errorf(pb.KindInternal, "listen: %v", err)
	}
	srv := &http.Server{Handler: httpapi.NewServer(eng, httpapi.Options{Logger: log}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	if err := eng.Start(ctx); err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = eng.Stop(stopCtx)
	}()

	api := "http://" + ln.Addr().String()
	fmt.Fprintf(stdout, "pushblaster demo: one automation through all five phases, about %s.\n\n", (*lead + 2*time.Second).Round(time.Second))
	fmt.Fprintf(stdout, "  database  %s (embedded SQLite, no setup)\n", be.desc)
	fmt.Fprintf(stdout, "  API       %s   while it runs, try: curl %s/api/executions/1/deliveries\n", api, api)
	fmt.Fprintf(stdout, "  FCM       %s (a fake FCM on loopback: HTTP/2, TLS, OAuth2 service account)\n", fake.URL())
	fmt.Fprintf(stdout, "  log       %s\n\n", logPath)

	a := &pb.Automation{
		Name:         "demo-welcome",
		Schedule:     pb.Schedule{Cron: "0 9 * * *", Timezone: "UTC"},
		LeadTime:     pb.DurationOf(*lead),
		Audience:     pb.Audience{Type: pb.AudienceStatic},
		TestAudience: []pb.Recipient{{UserID: "qa-phone", Token: "qa-device-token"}},
		Message: pb.Message{Title: `Welcome, {{default "friend" .first_name}}!`, Body: "Thanks for joining.",
			Data: map[string]string{"screen": "home", "user": "{{.user_id}}"}},
		Delivery: pb.Delivery{Provider: "fcm"},
	}
	names := []string{"Anna", "Ben", "Chiara", "Daniel", "Emma"}
	for i := range *n {
		r := pb.Recipient{UserID: fmt.Sprintf("user-%d", i+1), Token: fmt.Sprintf("device-token-%04d", i+1),
			Data: map[string]string{"first_name": names[i%len(names)]}}
		if i == 1 {
			r.Token = demoDeadToken // an app that was uninstalled
		}
		a.Audience.Recipients = append(a.Audience.Recipients, r)
	}
	a, err = eng.CreateAutomation(ctx, a)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created automation %d %q: %d recipients, 1 test device, provider %q, title %q\n",
		a.ID, a.Name, len(a.Audience.Recipients), a.Delivery.Provider, a.Message.Title)
	ex, err := eng.RunAutomation(ctx, a.ID, pb.RunParams{})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "started execution %d: audience now, live send at %s (in %s)\n\n", ex.ID, ex.SendAt.Local().Format("15:04:05"), *lead)

	start := time.Now()
	final, err := narrate(ctx, eng, ex.ID, stdout, api)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	printPhaseTable(stdout, final)
	fmt.Fprintf(stdout, "\nexecution %d %s in %s: sent %d of %d, invalid token %d, test sent %d.\n", final.ID, final.Status,
		time.Since(start).Round(100*time.Millisecond), final.Metrics[pb.MetricSent], final.Metrics[pb.MetricAudienceSize],
		final.Metrics[pb.MetricInvalidToken], final.Metrics[pb.MetricTestSent])
	fmt.Fprintf(stdout, "the fake FCM accepted %d pushes in %d requests, for example:\n", fake.Total(), fake.Requests())
	for _, r := range a.Audience.Recipients[:min(3, len(a.Audience.Recipients))] {
		if got := fake.Received(r.Token); len(got) > 0 {
			fmt.Fprintf(stdout, "  %-8s %q  data %v\n", r.UserID, got[0].Title, got[0].Data)
		} else {
			fmt.Fprintf(stdout, "  %-8s nothing: FCM answered UNREGISTERED; the token is listed at %s/api/invalid-tokens and never sent to again\n", r.UserID, api)
		}
	}
	fmt.Fprintln(stdout, "Everything above is stored: `pushblaster serve` runs this engine for real; see README.md.")
	if *keep {
		fmt.Fprintf(stdout, "kept %s\n", dir)
	}
	if final.Status != pb.StatusCompleted {
		return exitError{1}
	}
	return nil
}

// narrate prints the execution's events as they happen until it is final
// and cleaned up, and returns it.
func narrate(ctx context.Context, eng *engine.Engine, id int64, w io.Writer, api string) (*pb.Execution, error) {
	var after int64
	lastTick := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		events, err := eng.ListEvents(ctx, pb.EventFilter{ExecutionID: &id, AfterID: after})
		if err != nil {
			return nil, err
		}
		for _, ev := range events {
			after = ev.ID
			fmt.Fprintln(w, narrateEvent(ev, api))
		}
		ex, err := eng.GetExecution(ctx, id)
		if err != nil {
			return nil, err
		}
		if ex.Status.Final() && ex.PhaseRecord(pb.PhaseCleanup).Status != pb.PhasePending && ex.PhaseRecord(pb.PhaseCleanup).Status != pb.PhaseRunning {
			return ex, nil
		}
		if ex.Status == pb.StatusAwaitingSend && time.Since(lastTick) >= 5*time.Second && time.Until(ex.SendAt) > time.Second {
			lastTick = time.Now()
			fmt.Fprintf(w, "%s  ...  waiting for the send time: live send in %s\n", time.Now().Format("15:04:05.000"),
				time.Until(ex.SendAt).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(w, "\ninterrupted: stopping the engine")
			return nil, exitError{130}
		case <-tick.C:
		}
	}
}

func narrateEvent(ev *pb.Event, api string) string {
	mark := "  "
	switch {
	case ev.Type == pb.EventError:
		mark = "✗ "
	case ev.Type == pb.EventStatus:
		mark = "■ "
	case ev.Data["status"] == string(pb.PhaseRunning):
		mark = "▶ "
	case ev.Data["status"] == string(pb.PhaseCompleted):
		mark = "✓ "
	}
	phase := fmt.Sprintf("%-10s", ev.Phase)
	msg := ev.Message
	if ev.Phase == pb.PhaseWindow && ev.Data["status"] == string(pb.PhaseRunning) {
		msg += fmt.Sprintf("; cancel: curl -X POST %s/api/executions/%d/cancel", api, ev.ExecutionID)
	}
	msg = strings.TrimPrefix(msg, string(ev.Phase)+" ")
	return fmt.Sprintf("%s  %s%s %s", ev.At.Local().Format("15:04:05.000"), mark, phase, msg)
}

func printPhaseTable(w io.Writer, ex *pb.Execution) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tSTATUS\tTOOK\tNOTE")
	for _, p := range ex.Phases {
		took := "-"
		if p.StartedAt != nil && p.FinishedAt != nil {
			took = p.FinishedAt.Sub(*p.StartedAt).Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Phase, p.Status, took, p.Note)
	}
	_ = tw.Flush()
}

// demoDeadToken is the demo's uninstalled app: the fake FCM answers
// UNREGISTERED for it.
const demoDeadToken = "device-token-uninstalled"

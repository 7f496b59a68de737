package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/audience"
	"github.com/pushblaster/pushblaster/store"
)

// AudienceConfig configures audience sources.
type AudienceConfig struct {
	// ScriptsDir holds the audience scripts ("" disables script audiences).
	ScriptsDir string
	// Supervisor is the argv prefix that runs a script under
	// audience.Supervise, so that it dies with the engine (nil: none).
	Supervisor []string
	// ScriptEnvAllow lists the environment names automations may set.
	ScriptEnvAllow []string
	// ScriptEnvPass is environment given to every script from the
	// server's own (--script-env-pass): secrets such as a database
	// password, which never enter a definition, an API answer or a log.
	ScriptEnvPass map[string]string
	// DataDir holds CSV audiences ("" disables them).
	DataDir string
	// SQL runs sql audiences (nil disables them).
	SQL *audience.SQLSource
	// Tokens resolves recipients without a token (nil: they stay
	// tokenless and are counted as no_token).
	Tokens audience.TokenSource
	// Limits bound parsed output.
	Limits audience.Limits
	// ArtifactRetention is how long debug artefacts are kept (default 7 days).
	ArtifactRetention time.Duration
	// HeartbeatEvery is how often a running script reports (default 10s).
	HeartbeatEvery time.Duration
}

// audienceBatch is how many recipients go to the store at once.
const audienceBatch = 5000

// tokenBatch is how many user ids go to the token source at once.
const tokenBatch = 1000

// maxForwardedStderr caps the stderr lines copied into events per run; the
// stderr artefact keeps the tail.
const maxForwardedStderr = 10000

// Environment is what automations may use on this engine; definitions are
// checked against it when saved.
func (e *Engine) Environment() pb.Environment {
	ac := e.cfg.Audience
	return pb.Environment{
		Providers:     e.Providers(),
		ScriptsDir:    ac.ScriptsDir,
		ResolveScript: audience.ResolveScript,
		DataDir:       ac.DataDir,
		AudienceDB:    ac.SQL != nil,
		ScriptEnv:     ac.ScriptEnvAllow,
	}
}

// audienceRun accumulates one audience phase: rows are written to the store
// in batches as they arrive, never held whole.
type audienceRun struct {
	e        *Engine
	list     store.List
	ex       *pb.Execution // nil for a preview
	a        *pb.Automation
	log      *slog.Logger
	batch    []pb.Recipient
	produced int64 // good rows from the source
	inserted int64 // new rows in the store
	bad      int64
	badRows  []audience.BadRow
	first    []string
	last     []string
	stderr   string
	exit     string
}

func (r *audienceRun) add(rec pb.Recipient) error {
	r.produced++
	if max := r.a.Audience.MaxRecipients; max > 0 && r.produced > max {
		return pb.Errorf(pb.KindValidation, "audience anomaly: the source produced more than max_recipients (%d) recipients; no push went out", max).
			With("max_recipients", fmt.Sprint(max)).WithRecoverable(false)
	}
	r.batch = append(r.batch, rec)
	if len(r.batch) >= audienceBatch {
		return r.flush(context.Background())
	}
	return nil
}

func (r *audienceRun) flush(ctx context.Context) error {
	if len(r.batch) == 0 {
		return nil
	}
	n, err := r.e.store.WriteRecipients(ctx, r.list, r.batch)
	if err != nil {
		return err
	}
	r.inserted += n
	r.batch = r.batch[:0]
	return nil
}

func recipientOf(row audience.Row) pb.Recipient {
	return pb.Recipient{UserID: row.UserID, Token: row.Token, Platform: row.Platform, Timezone: row.Timezone, Locale: row.Locale, Data: row.Data}
}

// generateAudience is phase 1: it runs the source, streams the recipients
// into the store (replacing what an earlier attempt wrote), resolves
// missing tokens, applies the guards and keeps debug artefacts.
func (e *Engine) generateAudience(ctx context.Context, ex *pb.Execution, a *pb.Automation, log *slog.Logger) outcome {
	run := &audienceRun{e: e, list: store.ExecutionList(ex.ID), ex: ex, a: a, log: log, batch: make([]pb.Recipient, 0, audienceBatch)}
	defer e.keepArtifacts(context.WithoutCancel(ctx), run)
	return e.buildAudience(ctx, run)
}

// buildAudience fills run.list from the source, resolves tokens and
// applies the guards: phase 1, for an execution or a preview.
func (e *Engine) buildAudience(ctx context.Context, run *audienceRun) outcome {
	a := run.a
	if err := e.store.DeleteRecipients(ctx, run.list); err != nil {
		return outcome{err: err}
	}
	err := e.runSource(ctx, run)
	if err == nil {
		err = run.flush(ctx)
	}
	m := map[string]int64{pb.MetricDuplicates: run.produced - run.inserted, pb.MetricBadRows: run.bad}
	if err != nil {
		return outcome{metrics: m, err: err}
	}
	if err := checkBadRows(run); err != nil {
		return outcome{metrics: m, err: err}
	}
	if err := e.resolveTokens(ctx, run); err != nil {
		return outcome{metrics: m, err: err}
	}
	total, noToken, err := e.store.CountRecipients(ctx, run.list)
	if err != nil {
		return outcome{metrics: m, err: err}
	}
	m[pb.MetricAudienceSize], m[pb.MetricNoToken] = total, noToken
	if err := e.checkGrowth(ctx, run, total); err != nil {
		return outcome{metrics: m, err: err}
	}
	if max := a.Audience.MaxRecipients; max > 0 && total > max {
		return outcome{metrics: m, err: pb.Errorf(pb.KindValidation,
			"audience anomaly: %d recipients (devices) is more than max_recipients %d; no push went out", total, max).WithRecoverable(false)}
	}
	if total == 0 {
		if a.Audience.OnEmpty == pb.OnEmptyFail {
			return outcome{metrics: m, err: pb.Errorf(pb.KindValidation, "the audience is empty (on_empty: fail); no push went out").WithRecoverable(false)}
		}
		return outcome{metrics: m, note: "nothing to send: the audience is empty", empty: true}
	}
	note := fmt.Sprintf("%d recipients", total)
	if noToken > 0 {
		note += fmt.Sprintf(", %d without a token", noToken)
	}
	if d := run.produced - run.inserted; d > 0 {
		note += fmt.Sprintf(", %d duplicates removed", d)
	}
	if run.bad > 0 {
		note += fmt.Sprintf(", %d malformed rows skipped", run.bad)
	}
	return outcome{metrics: m, note: note}
}

// PreviewAudience runs phase 1 of automation id without sending anything
// and reports what the audience would be: size, tokens, duplicates, bad
// rows, a sample, and the error that would fail the phase, if any.
func (e *Engine) PreviewAudience(ctx context.Context, id int64) (*pb.AudiencePreview, error) {
	a, err := e.store.GetAutomation(ctx, id, false)
	if err != nil {
		return nil, err
	}
	list, err := e.store.NewPreview(ctx, id, e.now())
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := e.store.DeletePreview(context.WithoutCancel(ctx), list); err != nil {
			e.log.Warn("cannot delete a preview's scratch list", "event", "preview.cleanup_error", "preview_id", list.ID, "error", err)
		}
	}()
	start := time.Now()
	log := e.log.With("automation_id", id, "preview_id", list.ID)
	run := &audienceRun{e: e, list: list, a: a, log: log, batch: make([]pb.Recipient, 0, audienceBatch)}
	out := e.buildAudience(ctx, run)
	p := &pb.AudiencePreview{
		AutomationID: a.ID, AutomationVersion: a.Version, Type: a.Audience.Type,
		Size: out.metrics[pb.MetricAudienceSize], NoToken: out.metrics[pb.MetricNoToken],
		DuplicatesRemoved: out.metrics[pb.MetricDuplicates], BadRows: out.metrics[pb.MetricBadRows],
		Sample: []pb.Recipient{}, Note: out.note, Elapsed: pb.Duration(time.Since(start).Round(time.Millisecond)),
		Stderr: run.stderr, ExitStatus: run.exit,
	}
	for _, b := range run.badRows {
		p.BadRowExamples = append(p.BadRowExamples, pb.BadRow{Line: b.Line, Reason: b.Reason, Text: b.Text})
	}
	if out.err != nil {
		p.Error = pb.AsError(out.err).WithPhase(pb.PhaseAudience)
	}
	sample, err := e.store.ListRecipients(context.WithoutCancel(ctx), list, 0, previewSample)
	if err != nil {
		return nil, err
	}
	for _, r := range sample {
		p.Sample = append(p.Sample, r.Recipient)
	}
	log.Info("audience previewed", "event", "audience.preview", "size", p.Size, "no_token", p.NoToken, "bad_rows", p.BadRows, "error", errString(out.err))
	return p, nil
}

// previewSample is how many recipients a preview shows.
const previewSample = 10

// runSource streams the automation's audience source into run.
func (e *Engine) runSource(ctx context.Context, run *audienceRun) error {
	ac, aud := e.cfg.Audience, run.a.Audience
	switch aud.Type {
	case pb.AudienceStatic:
		for _, r := range aud.Recipients {
			if err := run.add(r); err != nil {
				return err
			}
		}
		return nil
	case pb.AudienceCSV:
		if ac.DataDir == "" {
			return pb.Errorf(pb.KindValidation, "csv audiences are disabled on instance %s (no --data-dir)", e.cfg.InstanceID).WithRecoverable(false)
		}
		path, err := pb.ResolveDataFile(ac.DataDir, aud.File)
		if err != nil {
			return pb.Errorf(pb.KindValidation, "audience.file: %v", err).WithRecoverable(false)
		}
		f, err := os.Open(path)
		if err != nil {
			return pb.Errorf(pb.KindValidation, "open the audience file %s: %v", aud.File, err)
		}
		defer f.Close()
		_, err = e.consume(run, f, nil)
		return err
	case pb.AudienceSQL:
		if ac.SQL == nil {
			return pb.Errorf(pb.KindValidation, "sql audiences are disabled on instance %s (no --audience-database-url)", e.cfg.InstanceID).WithRecoverable(false)
		}
		st, err := ac.SQL.Stream(ctx, aud.Query, aud.SourceTimeout(), func(row audience.Row) error { return run.add(recipientOf(row)) })
		run.bad, run.badRows = st.BadRows, st.BadExamples
		return err
	case pb.AudienceScript:
		return e.runScript(ctx, run)
	}
	return pb.Errorf(pb.KindValidation, "unknown audience type %q", aud.Type).WithRecoverable(false)
}

// consume parses a CSV or JSON Lines stream into run. parser, if given,
// receives the parser so heartbeats can count its rows.
func (e *Engine) consume(run *audienceRun, r io.Reader, parser *atomic.Pointer[audience.Parser]) (audience.ParseStats, error) {
	p := audience.NewParser(r, e.cfg.Audience.Limits)
	if parser != nil {
		parser.Store(p)
	}
	defer func() {
		st := p.Stats()
		run.bad, run.badRows, run.first, run.last = st.BadRows, st.BadExamples, st.FirstLines, st.LastLines
	}()
	for {
		row, err := p.Next()
		if err == io.EOF {
			return p.Stats(), nil
		}
		if err != nil {
			return p.Stats(), err
		}
		if err := run.add(recipientOf(row)); err != nil {
			return p.Stats(), err
		}
	}
}

// runScript runs an audience script under the runner's protections.
func (e *Engine) runScript(ctx context.Context, run *audienceRun) error {
	ac, aud := e.cfg.Audience, run.a.Audience
	if ac.ScriptsDir == "" {
		return pb.Errorf(pb.KindValidation, "script audiences are disabled on instance %s (no --scripts-dir)", e.cfg.InstanceID).WithRecoverable(false)
	}
	path, err := audience.ResolveScript(ac.ScriptsDir, aud.Script)
	if err != nil {
		return pb.WrapError(pb.KindValidation, err, "audience.script").WithRecoverable(false)
	}
	env, err := e.scriptEnv(run)
	if err != nil {
		return err
	}
	events := newEventForwarder(e, run.ex)
	defer events.close()
	var parser atomic.Pointer[audience.Parser]
	spec := audience.ScriptSpec{
		Path: path, Dir: ac.ScriptsDir, Args: aud.Args, Env: env,
		Timeout: aud.SourceTimeout(), StallTimeout: aud.Stall(), HeartbeatEvery: ac.HeartbeatEvery,
		Supervisor: ac.Supervisor,
	}
	hooks := audience.ScriptHooks{
		Stderr: events.stderr,
		Rows: func() int64 {
			if p := parser.Load(); p != nil {
				return p.Stats().Rows
			}
			return 0
		},
		Heartbeat: func(h audience.Heartbeat) {
			msg := fmt.Sprintf("script running %s: %d rows, %d bytes, %.1f s CPU", h.Elapsed.Round(time.Second), h.Rows, h.Bytes, h.CPU.Seconds())
			if h.LastStderr != "" {
				msg += "; last stderr: " + h.LastStderr
			}
			run.log.Info("script heartbeat", "event", "script.heartbeat", "elapsed_s", h.Elapsed.Seconds(), "rows", h.Rows, "bytes", h.Bytes, "cpu_s", h.CPU.Seconds())
			events.add(&pb.Event{Type: pb.EventLog, Message: msg, Data: map[string]string{
				"kind": "heartbeat", "rows": fmt.Sprint(h.Rows), "bytes": fmt.Sprint(h.Bytes), "elapsed_s": fmt.Sprintf("%.0f", h.Elapsed.Seconds())}})
		},
	}
	res, err := audience.RunScript(ctx, spec, func(stdout io.Reader) error {
		_, err := e.consume(run, stdout, &parser)
		return err
	}, hooks)
	if run.ex != nil { // a preview is not an execution's script run
		e.obs.ScriptEnded(scriptOutcome(err), res.Elapsed)
	}
	run.stderr = res.StderrTail
	run.exit = fmt.Sprintf("exit code %d", res.ExitCode)
	if res.Signal != "" {
		run.exit = "killed by signal " + res.Signal
	}
	run.exit += fmt.Sprintf("; ran %s, %.1f s CPU, %d bytes of output", res.Elapsed.Round(time.Millisecond), res.CPU.Seconds(), res.Bytes)
	if err != nil {
		run.exit += "; " + err.Error()
	}
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelWarn
	}
	run.log.Log(ctx, level, "script ended", "event", "script.end", "exit_code", res.ExitCode, "signal", res.Signal,
		"elapsed_s", res.Elapsed.Seconds(), "cpu_s", res.CPU.Seconds(), "rows", run.produced, "error", errString(err))
	return err
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// scriptEnv is the script's whole environment: a clean base, the
// execution's identity, and the automation's allow-listed variables.
func (e *Engine) scriptEnv(run *audienceRun) ([]string, error) {
	execution, sendAt := "preview", ""
	if run.ex != nil {
		execution, sendAt = fmt.Sprint(run.ex.ID), run.ex.SendAt.Format(time.RFC3339)
	} else if run.a.NextSendAt != nil {
		sendAt = run.a.NextSendAt.Format(time.RFC3339)
	}
	env := []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"LANG=C.UTF-8",
		"HOME=" + e.cfg.Audience.ScriptsDir,
		"PUSHBLASTER_EXECUTION_ID=" + execution,
		"PUSHBLASTER_AUTOMATION_ID=" + fmt.Sprint(run.a.ID),
		"PUSHBLASTER_AUTOMATION_NAME=" + run.a.Name,
		"PUSHBLASTER_SEND_AT=" + sendAt,
		"PUSHBLASTER_TIMEZONE=" + run.a.Schedule.Timezone,
	}
	names := make([]string, 0, len(run.a.Audience.Env))
	for k := range run.a.Audience.Env {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if !slices.Contains(e.cfg.Audience.ScriptEnvAllow, k) {
			return nil, pb.Errorf(pb.KindValidation, "audience.env: %s is no longer allowed on this server (--script-env-allow)", k).WithRecoverable(false)
		}
		env = append(env, k+"="+run.a.Audience.Env[k])
	}
	pass := slices.Sorted(maps.Keys(e.cfg.Audience.ScriptEnvPass))
	for _, k := range pass {
		env = append(env, k+"="+e.cfg.Audience.ScriptEnvPass[k])
	}
	return env, nil
}

// checkBadRows fails the phase when too much of the output is malformed.
func checkBadRows(run *audienceRun) error {
	seen := run.produced + run.bad
	if run.bad == 0 || seen == 0 {
		return nil
	}
	ratio := float64(run.bad) / float64(seen)
	max := run.a.Audience.BadRowRatio()
	if ratio <= max {
		return nil
	}
	var ex []string
	for _, b := range run.badRows {
		ex = append(ex, fmt.Sprintf("line %d: %s", b.Line, b.Reason))
	}
	return pb.Errorf(pb.KindValidation, "%d of %d rows (%.1f%%) are malformed, more than max_bad_row_ratio %g: %s",
		run.bad, seen, 100*ratio, max, strings.Join(ex, "; ")).WithRecoverable(false).
		With("bad_rows", fmt.Sprint(run.bad)).With("rows", fmt.Sprint(seen))
}

// checkGrowth fails the phase on an anomalous jump in audience size.
func (e *Engine) checkGrowth(ctx context.Context, run *audienceRun, total int64) error {
	g := run.a.Audience.Growth()
	if g <= 0 {
		return nil
	}
	before := int64(1<<62 - 1) // a preview compares with the latest
	if run.ex != nil {
		before = run.ex.ID
	}
	last, lastID, found, err := e.store.LastCompletedAudience(ctx, run.a.ID, before)
	if err != nil || !found || last <= 0 {
		return err
	}
	if float64(total) <= float64(last)*g {
		return nil
	}
	return pb.Errorf(pb.KindValidation, "audience anomaly: %d recipients is %.1f× the %d of execution %d, more than max_growth %g; no push went out (raise max_growth if this is expected)",
		total, float64(total)/float64(last), last, lastID, g).WithRecoverable(false).
		With("previous_execution_id", fmt.Sprint(lastID)).With("previous_size", fmt.Sprint(last))
}

// resolveTokens gives tokenless recipients their devices, in batches.
func (e *Engine) resolveTokens(ctx context.Context, run *audienceRun) error {
	src := e.cfg.Audience.Tokens
	if src == nil {
		return nil
	}
	var after int64
	for {
		page, err := e.store.TokenlessRecipients(ctx, run.list, after, tokenBatch)
		if err != nil || len(page) == 0 {
			return err
		}
		after = page[len(page)-1].ID
		ids := make([]string, 0, len(page))
		for _, r := range page {
			ids = append(ids, r.UserID)
		}
		slices.Sort(ids)
		ids = slices.Compact(ids)
		devices, err := src.Tokens(ctx, ids)
		if err != nil {
			return pb.WrapError(pb.KindExternal, err, "resolve device tokens")
		}
		if err := e.store.InTx(ctx, func(tx *store.Tx) error { return tx.AttachTokens(ctx, run.list, devices) }); err != nil {
			return err
		}
	}
}

// keepArtifacts stores the run's debugging evidence.
func (e *Engine) keepArtifacts(ctx context.Context, run *audienceRun) {
	if run.a.Audience.Type == pb.AudienceStatic || run.ex == nil {
		return
	}
	now := e.now()
	keep := e.cfg.Audience.ArtifactRetention
	put := func(name, content string) {
		if content == "" {
			return
		}
		err := e.store.PutArtifact(ctx, run.ex.ID, store.Artifact{Name: name, Content: content, CreatedAt: now, ExpiresAt: now.Add(keep)})
		if err != nil {
			run.log.Warn("cannot keep a debug artefact", "event", "artifact.error", "name", name, "error", err)
		}
	}
	put("stderr", run.stderr)
	put("exit_status", run.exit)
	put("first_rows", strings.Join(run.first, "\n"))
	put("last_rows", strings.Join(run.last, "\n"))
	if len(run.badRows) > 0 {
		b, _ := json.MarshalIndent(run.badRows, "", "  ")
		put("bad_rows", fmt.Sprintf("%d malformed rows; the first ones:\n%s", run.bad, b))
	}
}

// eventForwarder copies a script's stderr lines and heartbeats into the
// execution's events as they come, off the script's reading path: lines
// that arrive while it stores go together next.
type eventForwarder struct {
	e       *Engine
	ex      *pb.Execution
	mu      sync.Mutex
	pending []*pb.Event
	lines   int
	dropped int
	done    chan struct{}
	// kick says there is something to store: the forwarder stores at
	// once, and what comes while it stores goes together next.
	kick chan struct{}
	wg   sync.WaitGroup
}

func newEventForwarder(e *Engine, ex *pb.Execution) *eventForwarder {
	f := &eventForwarder{e: e, ex: ex, done: make(chan struct{}), kick: make(chan struct{}, 1)}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			select {
			case <-f.done:
				f.flush()
				return
			case <-f.kick:
				f.flush()
			}
		}
	}()
	return f
}

// kicked wakes the forwarder (f.mu held).
func (f *eventForwarder) kicked() {
	select {
	case f.kick <- struct{}{}:
	default: // it will store what is pending anyway
	}
}

func (f *eventForwarder) stderr(line string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines++
	if f.lines > maxForwardedStderr {
		f.dropped++
		return
	}
	f.pending = append(f.pending, &pb.Event{Type: pb.EventLog, Message: line, Data: map[string]string{"stream": "stderr"}})
	f.kicked()
}

func (f *eventForwarder) add(ev *pb.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending = append(f.pending, ev)
	f.kicked()
}

func (f *eventForwarder) flush() {
	f.mu.Lock()
	evs := f.pending
	f.pending = nil
	f.mu.Unlock()
	if f.ex == nil {
		return // a preview: its stderr comes back in the answer
	}
	ctx := context.Background()
	for _, ev := range evs {
		ev.AutomationID, ev.ExecutionID, ev.Phase = f.ex.AutomationID, f.ex.ID, pb.PhaseAudience
		f.e.recordEvent(ctx, ev)
	}
}

func (f *eventForwarder) close() {
	close(f.done)
	f.wg.Wait()
	if f.dropped > 0 && f.ex != nil {
		f.e.recordEvent(context.Background(), &pb.Event{AutomationID: f.ex.AutomationID, ExecutionID: f.ex.ID, Phase: pb.PhaseAudience,
			Type: pb.EventLog, Message: fmt.Sprintf("%d more stderr lines were not copied into events; the stderr artefact keeps the tail", f.dropped)})
	}
}

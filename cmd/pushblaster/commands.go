package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/httpapi"
)

// command is one client subcommand.
type command struct {
	synopsis string
	args     int // positional arguments required
	flags    func(fs *flagSetExt)
	run      func(ctx context.Context, x *cmdCtx) error
}

// flagSetExt lets a command declare extra flags.
type flagSetExt struct {
	file   *string
	force  *bool
	reason *string
	sendAt *string
	status *string
	auto   *string
	limit  *int
	after  *int64
	state  *string
	aud    *string
	user   *string
	prov   *string
}

// cmdCtx is what a running command has.
type cmdCtx struct {
	c      *client
	cf     clientFlags
	args   []string
	x      flagSetExt
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// executionID returns the positional argument as an execution id.
func (x *cmdCtx) executionID() (string, error) {
	id, err := strconv.ParseInt(x.args[0], 10, 64)
	if err != nil || id <= 0 {
		return "", pb.Errorf(pb.KindValidation, "%q is not an execution id; ids are positive integers (see pushblaster execution list)", x.args[0])
	}
	return strconv.FormatInt(id, 10), nil
}

func runGroup(ctx context.Context, group string, cmds map[string]command, args []string, env envFunc, stdin io.Reader, stdout, stderr io.Writer) error {
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintf(stderr, "usage: pushblaster %s COMMAND\n\ncommands:\n", group)
		for _, n := range names {
			fmt.Fprintf(stderr, "  %s %s\n", group, cmds[n].synopsis)
		}
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pushblaster %s: unknown command %q; commands: %s\n", group, args[0], strings.Join(names, ", "))
		return errUsage
	}
	x := &cmdCtx{stdin: stdin, stdout: stdout, stderr: stderr}
	fs := flagSet(group+" "+args[0], stderr, group+" "+cmd.synopsis)
	x.cf.register(fs, env)
	if cmd.flags != nil {
		cmd.flags(&x.x)
		if x.x.file != nil {
			fs.StringVar(x.x.file, "f", "", "JSON file (- for standard input; apply also takes a directory)")
		}
		if x.x.force != nil {
			fs.BoolVar(x.x.force, "force", false, "do it even though something is in progress")
		}
		if x.x.reason != nil {
			fs.StringVar(x.x.reason, "reason", "", "why; recorded with the execution")
		}
		if x.x.sendAt != nil {
			fs.StringVar(x.x.sendAt, "send-at", "", "send time, RFC 3339 (default: now + lead time)")
		}
		if x.x.status != nil {
			fs.StringVar(x.x.status, "status", "", "only executions with this status")
		}
		if x.x.auto != nil {
			fs.StringVar(x.x.auto, "automation", "", "only executions of this automation (id or name)")
		}
		if x.x.limit != nil {
			fs.IntVar(x.x.limit, "limit", 20, "how many")
		}
		if x.x.after != nil {
			fs.Int64Var(x.x.after, "after", 0, "only events after this id")
		}
		if x.x.state != nil {
			fs.StringVar(x.x.state, "state", "", "only deliveries in this state (pending, sending, sent, failed, invalid_token, capped, unknown)")
		}
		if x.x.aud != nil {
			fs.StringVar(x.x.aud, "audience", "", "only the live or the test send")
		}
		if x.x.user != nil {
			fs.StringVar(x.x.user, "user", "", "only this user's")
		}
		if x.x.prov != nil {
			fs.StringVar(x.x.prov, "provider", "", "only this provider's")
		}
	}
	pos, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != cmd.args {
		fmt.Fprintf(stderr, "usage: pushblaster %s %s\n", group, cmd.synopsis)
		return errUsage
	}
	x.args = pos
	if x.c, err = x.cf.client(); err != nil {
		return err
	}
	return cmd.run(ctx, x)
}

// printJSON prints v indented.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runAutomation(ctx context.Context, args []string, env envFunc, stdin io.Reader, stdout, stderr io.Writer) error {
	return runGroup(ctx, "automation", automationCommands, args, env, stdin, stdout, stderr)
}

func withFile(x *flagSetExt)  { x.file = new(string) }
func withForce(x *flagSetExt) { x.force = new(bool) }

var automationCommands = map[string]command{
	"list": {synopsis: "list [--json]", run: func(ctx context.Context, x *cmdCtx) error {
		var list httpapi.AutomationList
		if err := x.c.do(ctx, http.MethodGet, "/api/automations", nil, &list); err != nil {
			return err
		}
		if x.cf.json {
			return printJSON(x.stdout, list)
		}
		tw := tabwriter.NewWriter(x.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tSCHEDULE\tZONE\tMODE\tNEXT SEND\tVERSION")
		for _, a := range list.Automations {
			next := "-"
			switch {
			case a.Paused:
				next = "paused"
			case a.NextSendAt != nil:
				next = when(*a.NextSendAt, a.Location())
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\n", a.ID, a.Name, a.Schedule.Cron, a.Schedule.Timezone, a.Mode, next, a.Version)
		}
		return tw.Flush()
	}},
	"get": {synopsis: "get ID|NAME [--json]", args: 1, run: func(ctx context.Context, x *cmdCtx) error {
		id, err := x.c.automationID(ctx, x.args[0])
		if err != nil {
			return err
		}
		var a pb.Automation
		if err := x.c.do(ctx, http.MethodGet, fmt.Sprintf("/api/automations/%d", id), nil, &a); err != nil {
			return err
		}
		if x.cf.json {
			return printJSON(x.stdout, &a)
		}
		printAutomation(x.stdout, &a)
		return nil
	}},
	"create": {synopsis: "create -f FILE", flags: withFile, run: func(ctx context.Context, x *cmdCtx) error {
		as, err := readAutomations(*x.x.file, x.stdin)
		if err != nil {
			return err
		}
		if len(as) != 1 {
			return pb.Errorf(pb.KindValidation, "create takes one automation, the file has %d; use apply for several", len(as))
		}
		var a pb.Automation
		if err := x.c.do(ctx, http.MethodPost, "/api/automations", as[0], &a); err != nil {
			return err
		}
		return x.printResult(&a, fmt.Sprintf("created automation %d %q; %s", a.ID, a.Name, nextSend(&a)))
	}},
	"apply": {synopsis: "apply -f FILE|DIR   (create or update by name; unchanged definitions stay as they are)", flags: withFile, run: func(ctx context.Context, x *cmdCtx) error {
		as, err := readAutomations(*x.x.file, x.stdin)
		if err != nil {
			return err
		}
		var (
			results []httpapi.ApplyResponse
			failed  []string
		)
		// Apply every definition even if one is refused, and say which:
		// stopping at the first would leave the rest silently unapplied.
		for _, raw := range as {
			var res httpapi.ApplyResponse
			if err := x.c.do(ctx, http.MethodPost, "/api/automations/apply", raw, &res); err != nil {
				if len(as) == 1 {
					return pb.WrapError(pb.KindValidation, err, "apply %s", nameOf(raw))
				}
				failed = append(failed, nameOf(raw))
				fmt.Fprintf(x.stderr, "refused\t%s: %s\n", nameOf(raw), describeError(err))
				continue
			}
			results = append(results, res)
			if !x.cf.json {
				a := res.Automation
				fmt.Fprintf(x.stdout, "%s\t%s (id %d, version %d); %s\n", res.Result, a.Name, a.ID, a.Version, nextSend(a))
			}
		}
		if x.cf.json {
			if err := printJSON(x.stdout, results); err != nil {
				return err
			}
		}
		if len(failed) > 0 {
			return pb.Errorf(pb.KindValidation, "%d of %d definitions refused: %s", len(failed), len(as), strings.Join(failed, ", "))
		}
		return nil
	}},
	"update": {synopsis: "update ID|NAME -f FILE", args: 1, flags: withFile, run: func(ctx context.Context, x *cmdCtx) error {
		id, err := x.c.automationID(ctx, x.args[0])
		if err != nil {
			return err
		}
		as, err := readAutomations(*x.x.file, x.stdin)
		if err != nil {
			return err
		}
		if len(as) != 1 {
			return pb.Errorf(pb.KindValidation, "update takes one automation, the file has %d", len(as))
		}
		var a pb.Automation
		if err := x.c.do(ctx, http.MethodPut, fmt.Sprintf("/api/automations/%d", id), as[0], &a); err != nil {
			return err
		}
		return x.printResult(&a, fmt.Sprintf("updated automation %d to version %d; running executions keep theirs; %s", a.ID, a.Version, nextSend(&a)))
	}},
	"delete": {synopsis: "delete ID|NAME [--force]", args: 1, flags: withForce, run: func(ctx context.Context, x *cmdCtx) error {
		id, err := x.c.automationID(ctx, x.args[0])
		if err != nil {
			return err
		}
		path := fmt.Sprintf("/api/automations/%d", id)
		if *x.x.force {
			path += "?force=true"
		}
		if err := x.c.do(ctx, http.MethodDelete, path, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(x.stdout, "deleted automation %d (its history stays readable)\n", id)
		return nil
	}},
	"preview": {synopsis: "preview ID|NAME [--json]   (run the audience phase without sending)", args: 1, run: func(ctx context.Context, x *cmdCtx) error {
		id, err := x.c.automationID(ctx, x.args[0])
		if err != nil {
			return err
		}
		var p pb.AudiencePreview
		if err := x.c.do(ctx, http.MethodPost, fmt.Sprintf("/api/automations/%d/audience/preview", id), nil, &p); err != nil {
			return err
		}
		if x.cf.json {
			return printJSON(x.stdout, &p)
		}
		printPreview(x.stdout, &p)
		if p.Error != nil {
			return exitError{1}
		}
		return nil
	}},
	"pause":  {synopsis: "pause ID|NAME", args: 1, run: pauseCmd(true)},
	"resume": {synopsis: "resume ID|NAME", args: 1, run: pauseCmd(false)},
	"run": {synopsis: "run ID|NAME [--send-at RFC3339]", args: 1, flags: func(x *flagSetExt) { x.sendAt = new(string) },
		run: func(ctx context.Context, x *cmdCtx) error {
			id, err := x.c.automationID(ctx, x.args[0])
			if err != nil {
				return err
			}
			var p pb.RunParams
			if *x.x.sendAt != "" {
				t, err := time.Parse(time.RFC3339, *x.x.sendAt)
				if err != nil {
					return pb.Errorf(pb.KindValidation, "--send-at=%q is not RFC 3339, e.g. 2026-06-01T09:30:00+02:00", *x.x.sendAt)
				}
				p.SendAt = &t
			}
			var ex pb.Execution
			if err := x.c.do(ctx, http.MethodPost, fmt.Sprintf("/api/automations/%d/run", id), p, &ex); err != nil {
				return err
			}
			return x.printResult(&ex, fmt.Sprintf("started execution %d: audience at %s, send at %s\nfollow it: pushblaster execution get %d",
				ex.ID, when(ex.AudienceAt, time.UTC), when(ex.SendAt, time.UTC), ex.ID))
		}},
}

func (x *cmdCtx) printResult(v any, text string) error {
	if x.cf.json {
		return printJSON(x.stdout, v)
	}
	fmt.Fprintln(x.stdout, text)
	return nil
}

func pauseCmd(paused bool) func(ctx context.Context, x *cmdCtx) error {
	return func(ctx context.Context, x *cmdCtx) error {
		id, err := x.c.automationID(ctx, x.args[0])
		if err != nil {
			return err
		}
		verb := map[bool]string{true: "pause", false: "resume"}[paused]
		var a pb.Automation
		if err := x.c.do(ctx, http.MethodPost, fmt.Sprintf("/api/automations/%d/%s", id, verb), nil, &a); err != nil {
			return err
		}
		return x.printResult(&a, fmt.Sprintf("automation %d %sd; %s", a.ID, verb, nextSend(&a)))
	}
}

func nextSend(a *pb.Automation) string {
	switch {
	case a.Paused:
		return "paused: no fires until resumed"
	case a.NextSendAt == nil:
		return "the schedule does not fire again"
	}
	return "next send " + when(*a.NextSendAt, a.Location())
}

func nameOf(raw json.RawMessage) string {
	var n struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(raw, &n) == nil && n.Name != "" {
		return fmt.Sprintf("%q", n.Name)
	}
	return "automation"
}

// readAutomations reads one automation, a JSON array of them, or (for a
// directory) every *.json file in it, as raw JSON for the server to judge.
func readAutomations(path string, stdin io.Reader) ([]json.RawMessage, error) {
	if path == "" {
		return nil, pb.Errorf(pb.KindValidation, "-f FILE is required (- reads standard input)")
	}
	var files []string
	if path != "-" {
		st, err := os.Stat(path)
		if err != nil {
			return nil, pb.Errorf(pb.KindValidation, "-f %s: %v", path, err)
		}
		if st.IsDir() {
			files, _ = filepath.Glob(filepath.Join(path, "*.json"))
			if len(files) == 0 {
				return nil, pb.Errorf(pb.KindValidation, "-f %s: the directory has no *.json files", path)
			}
			sort.Strings(files)
		} else {
			files = []string{path}
		}
	} else {
		files = []string{"-"}
	}
	var out []json.RawMessage
	for _, f := range files {
		var data []byte
		var err error
		if f == "-" {
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(f)
		}
		if err != nil {
			return nil, pb.Errorf(pb.KindValidation, "read %s: %v", f, err)
		}
		trimmed := strings.TrimSpace(string(data))
		if strings.HasPrefix(trimmed, "[") {
			var many []json.RawMessage
			if err := json.Unmarshal(data, &many); err != nil {
				return nil, pb.WrapError(pb.KindValidation, pb.JSONError(err), "%s", f)
			}
			out = append(out, many...)
			continue
		}
		var one json.RawMessage
		if err := json.Unmarshal(data, &one); err != nil {
			return nil, pb.WrapError(pb.KindValidation, pb.JSONError(err), "%s", f)
		}
		out = append(out, one)
	}
	return out, nil
}

func printAutomation(w io.Writer, a *pb.Automation) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("id", fmt.Sprint(a.ID))
	row("name", a.Name)
	row("version", fmt.Sprint(a.Version))
	row("schedule", fmt.Sprintf("%s (%s)", a.Schedule.Cron, a.Schedule.Timezone))
	row("next send", nextSend(a))
	row("mode", string(a.Mode))
	row("lead time", a.LeadTime.String())
	row("cancellation deadline", a.CancellationDeadline.String()+" before send")
	row("overlap policy", string(a.OverlapPolicy))
	row("catch-up window", a.CatchupWindow.String())
	row("audience", fmt.Sprintf("%s, %d recipients", a.Audience.Type, len(a.Audience.Recipients)))
	row("test audience", fmt.Sprintf("%d recipients", len(a.TestAudience)))
	row("message", fmt.Sprintf("%q / %q", a.Message.Title, a.Message.Body))
	row("provider", a.Delivery.Provider)
	_ = tw.Flush()
}

// when formats an instant in loc with a relative hint.
func when(t time.Time, loc *time.Location) string {
	d := time.Until(t).Round(time.Second)
	rel := "now"
	switch {
	case d > 0:
		rel = "in " + pb.Duration(d).String()
	case d < 0:
		rel = pb.Duration(-d).String() + " ago"
	}
	return fmt.Sprintf("%s (%s)", t.In(loc).Format("2006-01-02 15:04:05 -07:00"), rel)
}

func runExecution(ctx context.Context, args []string, env envFunc, stdout, stderr io.Writer) error {
	return runGroup(ctx, "execution", executionCommands, args, env, nil, stdout, stderr)
}

var executionCommands = map[string]command{
	"watch": watchCommand, // live, over server-sent events (watch.go)
	"list": {synopsis: "list [--automation ID|NAME] [--status S] [--limit N] [--json]",
		flags: func(x *flagSetExt) { x.auto, x.status, x.limit = new(string), new(string), new(int) },
		run: func(ctx context.Context, x *cmdCtx) error {
			q := url.Values{}
			if *x.x.auto != "" {
				id, err := x.c.automationID(ctx, *x.x.auto)
				if err != nil {
					return err
				}
				q.Set("automation_id", strconv.FormatInt(id, 10))
			}
			if *x.x.status != "" {
				q.Set("status", *x.x.status)
			}
			q.Set("limit", strconv.Itoa(*x.x.limit))
			var list httpapi.ExecutionList
			if err := x.c.do(ctx, http.MethodGet, "/api/executions?"+q.Encode(), nil, &list); err != nil {
				return err
			}
			if x.cf.json {
				return printJSON(x.stdout, list)
			}
			tw := tabwriter.NewWriter(x.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tAUTOMATION\tSEND AT\tSTATUS\tPHASE\tSENT\tAUDIENCE\tNOTE")
			for _, ex := range list.Executions {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", ex.ID, ex.AutomationName, when(ex.SendAt, time.UTC),
					ex.Status, ex.Phase, ex.Metrics[pb.MetricSent], ex.Metrics[pb.MetricAudienceSize], executionNote(ex))
			}
			return tw.Flush()
		}},
	"get": {synopsis: "get ID [--json]", args: 1, run: func(ctx context.Context, x *cmdCtx) error {
		id, err := x.executionID()
		if err != nil {
			return err
		}
		var ex pb.Execution
		if err := x.c.do(ctx, http.MethodGet, "/api/executions/"+id, nil, &ex); err != nil {
			return err
		}
		if x.cf.json {
			return printJSON(x.stdout, &ex)
		}
		printExecution(x.stdout, &ex)
		return nil
	}},
	"cancel": {synopsis: "cancel ID [--force] [--reason TEXT]", args: 1,
		flags: func(x *flagSetExt) { x.force, x.reason = new(bool), new(string) },
		run: func(ctx context.Context, x *cmdCtx) error {
			id, err := x.executionID()
			if err != nil {
				return err
			}
			var ex pb.Execution
			p := pb.CancelParams{Force: *x.x.force, Reason: *x.x.reason}
			if err := x.c.do(ctx, http.MethodPost, "/api/executions/"+id+"/cancel", p, &ex); err != nil {
				return err
			}
			return x.printResult(&ex, fmt.Sprintf("execution %d cancelled in phase %s; sent so far: %d", ex.ID, ex.Phase, ex.Metrics[pb.MetricSent]))
		}},
	"artifacts": {synopsis: "artifacts ID [--json]   (stderr, first and last rows, exit status of the audience run)", args: 1,
		run: func(ctx context.Context, x *cmdCtx) error {
			id, err := x.executionID()
			if err != nil {
				return err
			}
			var list httpapi.ArtifactList
			if err := x.c.do(ctx, http.MethodGet, "/api/executions/"+id+"/artifacts", nil, &list); err != nil {
				return err
			}
			if x.cf.json {
				return printJSON(x.stdout, list)
			}
			if len(list.Artifacts) == 0 {
				fmt.Fprintln(x.stdout, "no artefacts (static audiences keep none; others expire after the retention period)")
			}
			for _, a := range list.Artifacts {
				fmt.Fprintf(x.stdout, "== %s (kept until %s)\n%s\n\n", a.Name, a.ExpiresAt.Format(time.RFC3339), strings.TrimRight(a.Content, "\n"))
			}
			return nil
		}},
	"deliveries": {synopsis: "deliveries ID [--state S] [--audience live|test] [--limit N] [--json]   (the ledger: who got the push, who did not and why)", args: 1,
		flags: func(x *flagSetExt) { x.state, x.aud, x.limit = new(string), new(string), new(int) },
		run: func(ctx context.Context, x *cmdCtx) error {
			id, err := x.executionID()
			if err != nil {
				return err
			}
			q := url.Values{}
			q.Set("limit", strconv.Itoa(*x.x.limit))
			if *x.x.state != "" {
				q.Set("state", *x.x.state)
			}
			if *x.x.aud != "" {
				q.Set("audience", *x.x.aud)
			}
			var list httpapi.DeliveryList
			if err := x.c.do(ctx, http.MethodGet, "/api/executions/"+id+"/deliveries?"+q.Encode(), nil, &list); err != nil {
				return err
			}
			if x.cf.json {
				return printJSON(x.stdout, list)
			}
			tw := tabwriter.NewWriter(x.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "AUDIENCE\tUSER\tTOKEN\tSTATE\tATTEMPTS\tCODE\tREASON")
			for _, d := range list.Deliveries {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.Audience, d.UserID, shortToken(d.Token), d.State, d.Attempts, d.Code, d.Reason)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if list.NextCursor != "" {
				fmt.Fprintf(x.stdout, "(first %d rows; use --limit or the API's cursor for more)\n", len(list.Deliveries))
			}
			return nil
		}},
	"events": {synopsis: "events ID [--after N] [--json]", args: 1, flags: func(x *flagSetExt) { x.after = new(int64) },
		run: func(ctx context.Context, x *cmdCtx) error {
			id, err := x.executionID()
			if err != nil {
				return err
			}
			var list httpapi.EventList
			path := fmt.Sprintf("/api/executions/%s/events?after_id=%d", id, *x.x.after)
			if err := x.c.do(ctx, http.MethodGet, path, nil, &list); err != nil {
				return err
			}
			if x.cf.json {
				return printJSON(x.stdout, list)
			}
			for _, ev := range list.Events {
				fmt.Fprintln(x.stdout, formatEvent(ev))
			}
			return nil
		}},
}

func printPreview(w io.Writer, p *pb.AudiencePreview) {
	fmt.Fprintf(w, "audience preview of automation %d (version %d, %s source), in %s\n\n", p.AutomationID, p.AutomationVersion, p.Type, p.Elapsed)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "recipients\t%d\n", p.Size)
	fmt.Fprintf(tw, "without a token\t%d\n", p.NoToken)
	fmt.Fprintf(tw, "duplicates removed\t%d\n", p.DuplicatesRemoved)
	fmt.Fprintf(tw, "malformed rows\t%d\n", p.BadRows)
	_ = tw.Flush()
	for _, b := range p.BadRowExamples {
		fmt.Fprintf(w, "  line %d: %s: %s\n", b.Line, b.Reason, b.Text)
	}
	if len(p.Sample) > 0 {
		fmt.Fprintln(w, "\nsample:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "USER\tTOKEN\tPLATFORM\tTIMEZONE\tLOCALE\tDATA")
		for _, r := range p.Sample {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", r.UserID, r.Token, r.Platform, r.Timezone, r.Locale, r.Data)
		}
		_ = tw.Flush()
	}
	if p.Error != nil {
		fmt.Fprintf(w, "\nthe audience phase would FAIL (%s): %s\n", p.Error.Kind, p.Error.Message)
	} else if p.Note != "" {
		fmt.Fprintf(w, "\n%s\n", p.Note)
	}
}

func executionNote(ex *pb.Execution) string {
	if ex.Error != nil && ex.Status != pb.StatusCancelled {
		return fmt.Sprintf("%s: %s", ex.Error.Kind, ex.Error.Message)
	}
	return ex.Reason
}

func formatEvent(ev *pb.Event) string {
	phase := ""
	if ev.Phase != "" {
		phase = " [" + string(ev.Phase) + "]"
	}
	return fmt.Sprintf("%d  %s  %-8s%s %s", ev.ID, ev.At.Format("15:04:05.000"), ev.Type, phase, ev.Message)
}

func printExecution(w io.Writer, ex *pb.Execution) {
	fmt.Fprintf(w, "execution %d of automation %d %q (version %d), %s fire\n", ex.ID, ex.AutomationID, ex.AutomationName, ex.AutomationVersion, ex.Trigger)
	fmt.Fprintf(w, "status    %s\n", ex.Status)
	if ex.Reason != "" {
		fmt.Fprintf(w, "reason    %s\n", ex.Reason)
	}
	fmt.Fprintf(w, "audience  %s\nwindow    until %s\nsend      %s\n\n", when(ex.AudienceAt, time.UTC), when(ex.CancelDeadline, time.UTC), when(ex.SendAt, time.UTC))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tSTATUS\tSTARTED\tTOOK\tINSTANCE\tATTEMPT\tNOTE")
	for _, p := range ex.Phases {
		started, took := "-", "-"
		if p.StartedAt != nil {
			started = p.StartedAt.UTC().Format("15:04:05.000")
			if p.FinishedAt != nil {
				took = p.FinishedAt.Sub(*p.StartedAt).Round(time.Millisecond).String()
			}
		}
		note := p.Note
		if p.Error != nil {
			note = fmt.Sprintf("%s error: %s", p.Error.Kind, p.Error.Message)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p.Phase, p.Status, started, took, p.Instance, p.Attempt, note)
	}
	_ = tw.Flush()
	if len(ex.Metrics) > 0 {
		keys := make([]string, 0, len(ex.Metrics))
		for k := range ex.Metrics {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprint(w, "\nmetrics  ")
		for i, k := range keys {
			if i > 0 {
				fmt.Fprint(w, ", ")
			}
			fmt.Fprintf(w, "%s %d", k, ex.Metrics[k])
		}
		fmt.Fprintln(w)
	}
	if e := ex.Error; e != nil {
		fmt.Fprintf(w, "\nerror    %s (recoverable: %v", e.Kind, e.Recoverable)
		if e.Phase != "" {
			fmt.Fprintf(w, ", phase %s", e.Phase)
		}
		fmt.Fprintf(w, ")\n         %s\n", e.Message)
		for k, v := range e.Context {
			fmt.Fprintf(w, "         %s: %s\n", k, v)
		}
	}
}

func runSchedule(ctx context.Context, args []string, env envFunc, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "preview" {
		fmt.Fprintln(stderr, "usage: pushblaster schedule preview --cron EXPR [--timezone ZONE] [--count N] [--from RFC3339] [--json]")
		return errUsage
	}
	fs := flagSet("schedule preview", stderr, "schedule preview --cron EXPR [--timezone ZONE] [--count N] [--from RFC3339]")
	expr := fs.String("cron", "", `cron expression, e.g. "30 9 * * 1-5"`)
	zone := fs.String("timezone", pb.DefaultTimezone, "IANA time zone, e.g. Europe/Berlin")
	count := fs.Int("count", 10, "how many send times (1-1000)")
	from := fs.String("from", "", "start after this time, RFC 3339 (default now)")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	out, err := httpapi.PreviewSchedule(*expr, *zone, *from, *count, time.Now())
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SEND TIME (%s)\tUTC OFFSET\tUTC\tDAY\n", *zone)
	for _, s := range out.SendTimes {
		at, _ := time.Parse(time.RFC3339, s.At)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", at.Format("2006-01-02 15:04:05"), s.UTCOffset, s.UTC, s.Weekday)
	}
	return tw.Flush()
}

// shortToken keeps enough of a device token to recognise it in a table.
func shortToken(t string) string {
	if len(t) <= 16 {
		return t
	}
	return t[:6] + "…" + t[len(t)-6:]
}

func runInvalidTokens(ctx context.Context, args []string, env envFunc, stdout, stderr io.Writer) error {
	return runGroup(ctx, "invalid-tokens", invalidTokenCommands, args, env, nil, stdout, stderr)
}

var invalidTokenCommands = map[string]command{
	"list": {synopsis: "list [--user ID] [--provider P] [--limit N] [--json]   (tokens never sent to again)",
		flags: func(x *flagSetExt) { x.user, x.prov, x.limit = new(string), new(string), new(int) },
		run: func(ctx context.Context, x *cmdCtx) error {
			q := url.Values{}
			q.Set("limit", strconv.Itoa(*x.x.limit))
			if *x.x.user != "" {
				q.Set("user_id", *x.x.user)
			}
			if *x.x.prov != "" {
				q.Set("provider", *x.x.prov)
			}
			var list httpapi.InvalidTokenList
			if err := x.c.do(ctx, http.MethodGet, "/api/invalid-tokens?"+q.Encode(), nil, &list); err != nil {
				return err
			}
			if x.cf.json {
				return printJSON(x.stdout, list)
			}
			tw := tabwriter.NewWriter(x.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SINCE\tPROVIDER\tUSER\tTOKEN\tEXECUTION\tREASON")
			for _, t := range list.InvalidTokens {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", t.CreatedAt.Format(time.RFC3339), t.Provider, t.UserID, t.Token, t.ExecutionID, t.Reason)
			}
			return tw.Flush()
		}},
	"delete": {synopsis: "delete TOKEN   (send to it again)", args: 1,
		run: func(ctx context.Context, x *cmdCtx) error {
			if err := x.c.do(ctx, http.MethodDelete, "/api/invalid-tokens/"+url.PathEscape(x.args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(x.stdout, "token %s will be sent to again\n", shortToken(x.args[0]))
			return nil
		}},
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/httpapi"
)

// Exit statuses of pushblaster health.
const (
	exitDegraded    = 1
	exitCritical    = 2
	exitUnreachable = 3
)

// runHealth prints the server's health and exits 0 only when healthy: 1
// degraded, 2 critical, 3 no report (the server did not answer, or the
// command line is wrong).
func runHealth(ctx context.Context, args []string, env envFunc, stdout, stderr io.Writer) error {
	fs := flagSet("health", stderr, "health [--server URL] [--json]   (exit 0 healthy, 1 degraded, 2 critical, 3 no answer)")
	var cf clientFlags
	cf.register(fs, env)
	// Every failure to get a report is "unknown" (3), never one of the
	// health statuses: a probe must not read a typo as "critical".
	pos, err := parseFlags(fs, args)
	if err != nil {
		if ee, ok := err.(exitError); ok && ee.code == 0 {
			return err // -h
		}
		return exitError{exitUnreachable}
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "health takes no arguments, got %q\n", pos)
		return exitError{exitUnreachable}
	}
	c, err := cf.client()
	if err != nil {
		fmt.Fprintf(stderr, "pushblaster health: %s\n", describeError(err))
		return exitError{exitUnreachable}
	}
	var h pb.Health
	if _, err := c.doAccepting(ctx, http.MethodGet, "/api/health", nil, &h, func(s int) bool { return s == http.StatusServiceUnavailable }); err != nil {
		fmt.Fprintf(stderr, "pushblaster health: %s\n", describeError(err))
		return exitError{exitUnreachable}
	}
	if cf.json {
		if err := printJSON(stdout, h); err != nil {
			return err
		}
	} else {
		printHealth(stdout, &h)
	}
	switch h.Status {
	case pb.HealthHealthy:
		return nil
	case pb.HealthDegraded:
		return exitError{exitDegraded}
	}
	return exitError{exitCritical}
}

// printHealth renders a health report for a person.
func printHealth(w io.Writer, h *pb.Health) {
	fmt.Fprintf(w, "%s  instance %s", strings.ToUpper(string(h.Status)), h.InstanceID)
	if h.Version != "" {
		fmt.Fprintf(w, " (%s)", h.Version)
	}
	fmt.Fprintf(w, ", checked %s\n", h.CheckedAt.Format(time.RFC3339))
	for _, p := range h.Problems {
		fmt.Fprintf(w, "  ! %-8s %s: %s\n", p.Status, p.Code, p.Message)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	db := "reachable"
	if !h.Database.Reachable {
		db = "UNREACHABLE"
	}
	fmt.Fprintf(tw, "database\t%s %s, %.1f ms", h.Database.Dialect, db, h.Database.LatencyMS)
	if h.Database.Error != "" {
		fmt.Fprintf(tw, " (%s)", h.Database.Error)
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "pool\t%d/%d in use, %d idle, %d waiting\n", h.DBPool.InUse, h.DBPool.Max, h.DBPool.Idle, h.DBPool.Waiting)
	tick := "never"
	if h.Engine.LastTickAt != nil {
		tick = h.Engine.LastTickAt.Format(time.RFC3339)
	}
	fmt.Fprintf(tw, "engine\trunning %t, last scheduler pass %s\n", h.Engine.Running, tick)
	fmt.Fprintf(tw, "automations\t%s scheduled\n", count(h.ScheduledAutomations))
	fmt.Fprintf(tw, "executions\t%s active, %d overdue\n", count(h.ActiveExecutions), len(h.Overdue))
	if r := h.LastRestoration; r != nil {
		fmt.Fprintf(tw, "restoration\t%s: success %t, %d restored (%d schedules, %d in flight), %d caught up, %d missed",
			r.At.Format(time.RFC3339), r.Success, r.Restored, r.Schedules, r.InFlight, r.CaughtUp, r.Missed)
		if r.Error != "" {
			fmt.Fprintf(tw, " (%s)", r.Error)
		}
		fmt.Fprintln(tw)
	}
	states := make([]string, 0, len(h.Jobs))
	for st := range h.Jobs {
		states = append(states, st)
	}
	sort.Strings(states)
	var jobs []string
	for _, st := range states {
		jobs = append(jobs, fmt.Sprintf("%s %d", st, h.Jobs[st]))
	}
	fmt.Fprintf(tw, "jobs\t%s\n", strings.Join(jobs, ", "))
	fmt.Fprintf(tw, "errors\t%d in the last %s (threshold %d)\n", h.ErrorRate.Count, h.ErrorRate.Window, h.ErrorRate.Threshold)
	for _, in := range h.Instances {
		self := ""
		if in.Self {
			self = " (this one)"
		}
		fmt.Fprintf(tw, "instance\t%s%s on %s pid %d, last heartbeat %s\n", in.ID, self, in.Host, in.PID, in.LastHeartbeat.Format(time.RFC3339))
	}
	_ = tw.Flush()
	for _, o := range h.Overdue {
		fmt.Fprintf(w, "overdue: %s (expected by %s)\n", o.Message, o.ExpectedBy.Format(time.RFC3339))
	}
	for _, j := range h.StuckJobs {
		fmt.Fprintf(w, "stuck job %d (%s, execution %d): %s\n", j.ID, j.Kind, j.ExecutionID, j.Why)
	}
	if len(h.RecentErrors) > 0 {
		fmt.Fprintln(w, "\nrecent errors (pushblaster errors for more):")
		printErrors(w, h.RecentErrors)
	}
}

func count(n *int64) string {
	if n == nil {
		return "?"
	}
	return strconv.FormatInt(*n, 10)
}

// printErrors renders error records as a table.
func printErrors(w io.Writer, errs []pb.ErrorRecord) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAT\tKIND\tAUTOMATION\tEXECUTION\tPHASE\tMESSAGE")
	for _, e := range errs {
		id := strconv.FormatInt(e.ID, 10)
		if !e.Stored {
			id = "(held)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, e.At.Format(time.RFC3339), e.Kind, idOrDash(e.AutomationID), idOrDash(e.ExecutionID), orDash(string(e.Phase)), e.Message)
	}
	_ = tw.Flush()
}

func idOrDash(id int64) string {
	if id == 0 {
		return "-"
	}
	return strconv.FormatInt(id, 10)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// runErrors lists recorded errors, newest first.
func runErrors(ctx context.Context, args []string, env envFunc, stdout, stderr io.Writer) error {
	fs := flagSet("errors", stderr, "errors [--kind K] [--automation ID|NAME] [--execution ID] [--before ID] [--limit N] [--json]")
	var cf clientFlags
	cf.register(fs, env)
	kind := fs.String("kind", "", "only errors of this kind (timeout, abort, external, database, script, validation, internal)")
	auto := fs.String("automation", "", "only this automation's errors (id or name)")
	exec := fs.Int64("execution", 0, "only this execution's errors")
	before := fs.Int64("before", 0, "only errors older than this id (the next page)")
	limit := fs.Int("limit", 20, "how many")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "errors takes no arguments, got %q\n", pos)
		return errUsage
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	q := url.Values{}
	q.Set("limit", strconv.Itoa(*limit))
	if *kind != "" {
		q.Set("kind", *kind)
	}
	if *auto != "" {
		id, err := c.automationID(ctx, *auto)
		if err != nil {
			return err
		}
		q.Set("automation_id", strconv.FormatInt(id, 10))
	}
	if *exec != 0 {
		q.Set("execution_id", strconv.FormatInt(*exec, 10))
	}
	if *before != 0 {
		q.Set("before_id", strconv.FormatInt(*before, 10))
	}
	var list httpapi.ErrorList
	if err := c.do(ctx, http.MethodGet, "/api/errors?"+q.Encode(), nil, &list); err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, list)
	}
	printErrors(stdout, list.Errors)
	if list.NextBeforeID != 0 {
		fmt.Fprintf(stdout, "more: pushblaster errors --before %d\n", list.NextBeforeID)
	}
	return nil
}

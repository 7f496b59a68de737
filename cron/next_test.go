package cron

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"
	"time"
	_ "time/tzdata" // tests must not depend on the host having zoneinfo installed
)

func mustParse(tb testing.TB, expr string) *Schedule {
	tb.Helper()
	s, err := Parse(expr)
	if err != nil {
		tb.Fatalf("Parse(%q): %v", expr, err)
	}
	return s
}

func mustTime(tb testing.TB, s string) time.Time {
	tb.Helper()
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		tb.Fatalf("bad test time %q: %v", s, err)
	}
	return t
}

func mustLoad(tb testing.TB, name string) *time.Location {
	tb.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		tb.Fatalf("LoadLocation(%q): %v", name, err)
	}
	return loc
}

// ruleZone builds a zone with no transition table, only a TZ rule string,
// so Go computes every offset and bound from the rule. That is what
// happens for recent years with Go's own zoneinfo.zip and time/tzdata
// (used where the host has no zoneinfo), and for years past 2037 with
// most system zoneinfo.
func ruleZone(tb testing.TB, name, rule string, stdOffset int32, abbr string) *time.Location {
	tb.Helper()
	// A minimal TZif version 2 file (RFC 8536): one local time type, no
	// transitions, and the rule in the footer; the version 1 and version
	// 2 blocks are identical because neither has any 4- or 8-byte times.
	var b bytes.Buffer
	for range 2 {
		b.WriteString("TZif2")
		b.Write(make([]byte, 15))
		// isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
		for _, n := range []uint32{0, 0, 0, 0, 1, uint32(len(abbr) + 1)} {
			_ = binary.Write(&b, binary.BigEndian, n)
		}
		_ = binary.Write(&b, binary.BigEndian, stdOffset)
		b.Write([]byte{0, 0}) // isdst, abbreviation index
		b.WriteString(abbr + "\x00")
	}
	b.WriteString("\n" + rule + "\n")
	loc, err := time.LoadLocationFromTZData(name, b.Bytes())
	if err != nil {
		tb.Fatalf("LoadLocationFromTZData(%q): %v", rule, err)
	}
	return loc
}

func ruleOnlyNewYork(tb testing.TB) *time.Location {
	return ruleZone(tb, "rules/New_York", "EST5EDT,M3.2.0,M11.1.0", -5*3600, "EST")
}

func ruleOnlySydney(tb testing.TB) *time.Location {
	return ruleZone(tb, "rules/Sydney", "AEST-10AEDT,M10.1.0,M4.1.0/3", 10*3600, "AEST")
}

func ruleOnlyLordHowe(tb testing.TB) *time.Location {
	return ruleZone(tb, "rules/Lord_Howe", "<+1030>-10:30<+11>-11,M10.1.0,M4.1.0", 10*3600+1800, "+1030")
}

// fires lists every fire in (from, until] by chaining Next the way the
// scheduler does, so a duplicated or missing fire shows up as a list
// difference.
func fires(tb testing.TB, s *Schedule, loc *time.Location, from, until time.Time) []string {
	tb.Helper()
	var out []string
	for t := s.Next(from, loc); !t.IsZero() && !t.After(until); t = s.Next(t, loc) {
		out = append(out, t.Format(time.RFC3339))
		if len(out) > 10000 {
			tb.Fatalf("runaway sequence for %q", s)
		}
	}
	return out
}

func diffLists(tb testing.TB, got, want []string) {
	tb.Helper()
	n := max(len(got), len(want))
	bad := len(got) != len(want)
	for i := 0; i < n && !bad; i++ {
		bad = got[i] != want[i]
	}
	if !bad {
		return
	}
	for i := range n {
		g, w := "-", "-"
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		mark := "  "
		if g != w {
			mark = "!!"
		}
		tb.Errorf("%s #%d got %-26s want %s", mark, i, g, w)
	}
}

// checkSequence checks the first len(want) fires after from.
func checkSequence(tb testing.TB, expr string, loc *time.Location, from string, want []string) {
	tb.Helper()
	s := mustParse(tb, expr)
	var got []string
	t := mustTime(tb, from)
	for range want {
		t = s.Next(t, loc)
		if t.IsZero() {
			break
		}
		got = append(got, t.Format(time.RFC3339))
	}
	diffLists(tb, got, want)
}

// TestTransitions lists every fire over whole transition windows. All
// expected instants are written out with their offsets; a fire printed
// with the wrong offset is a fire at the wrong instant.
func TestTransitions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, zone, expr, from, until string
		want                          []string
	}{
		// America/New_York spring forward: 2026-03-08 02:00 EST -> 03:00 EDT.
		{"NY spring fixed 02:30", "America/New_York", "30 2 * * *", "2026-03-07T00:00:00-05:00", "2026-03-10T00:00:00-04:00",
			[]string{"2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"}},
		{"NY spring fixed 02:30 six fields", "America/New_York", "0 30 2 * * *", "2026-03-07T00:00:00-05:00", "2026-03-10T00:00:00-04:00",
			[]string{"2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"}},
		{"NY spring two times in gap", "America/New_York", "0,30 2 * * *", "2026-03-07T00:00:00-05:00", "2026-03-10T00:00:00-04:00",
			[]string{"2026-03-07T02:00:00-05:00", "2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00",
				"2026-03-09T02:00:00-04:00", "2026-03-09T02:30:00-04:00"}},
		{"NY spring four times in gap", "America/New_York", "*/15 2 * * *", "2026-03-07T00:00:00-05:00", "2026-03-10T00:00:00-04:00",
			[]string{"2026-03-07T02:00:00-05:00", "2026-03-07T02:15:00-05:00", "2026-03-07T02:30:00-05:00", "2026-03-07T02:45:00-05:00",
				"2026-03-08T03:00:00-04:00",
				"2026-03-09T02:00:00-04:00", "2026-03-09T02:15:00-04:00", "2026-03-09T02:30:00-04:00", "2026-03-09T02:45:00-04:00"}},
		{"NY spring seconds in gap", "America/New_York", "*/20 30 2 * * *", "2026-03-07T00:00:00-05:00", "2026-03-09T00:00:00-04:00",
			[]string{"2026-03-07T02:30:00-05:00", "2026-03-07T02:30:20-05:00", "2026-03-07T02:30:40-05:00", "2026-03-08T03:00:00-04:00"}},
		{"NY spring gap collapses with genuine 03:00", "America/New_York", "0 2,3 * * *", "2026-03-07T00:00:00-05:00", "2026-03-10T00:00:00-04:00",
			[]string{"2026-03-07T02:00:00-05:00", "2026-03-07T03:00:00-05:00", "2026-03-08T03:00:00-04:00",
				"2026-03-09T02:00:00-04:00", "2026-03-09T03:00:00-04:00"}},
		{"NY spring fixed every hour", "America/New_York", "0 0-23 * * *", "2026-03-07T23:30:00-05:00", "2026-03-08T05:00:00-04:00",
			[]string{"2026-03-08T00:00:00-05:00", "2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00",
				"2026-03-08T04:00:00-04:00", "2026-03-08T05:00:00-04:00"}},
		{"NY spring wildcard :30", "America/New_York", "30 * * * *", "2026-03-08T00:00:00-05:00", "2026-03-08T05:00:00-04:00",
			[]string{"2026-03-08T00:30:00-05:00", "2026-03-08T01:30:00-05:00", "2026-03-08T03:30:00-04:00", "2026-03-08T04:30:00-04:00"}},
		{"NY spring wildcard */15", "America/New_York", "*/15 * * * *", "2026-03-08T00:50:00-05:00", "2026-03-08T03:20:00-04:00",
			[]string{"2026-03-08T01:00:00-05:00", "2026-03-08T01:15:00-05:00", "2026-03-08T01:30:00-05:00", "2026-03-08T01:45:00-05:00",
				"2026-03-08T03:00:00-04:00", "2026-03-08T03:15:00-04:00"}},
		{"NY spring wildcard every other hour", "America/New_York", "0 */2 * * *", "2026-03-07T23:00:00-05:00", "2026-03-08T06:00:00-04:00",
			[]string{"2026-03-08T00:00:00-05:00", "2026-03-08T04:00:00-04:00", "2026-03-08T06:00:00-04:00"}},
		{"NY spring @hourly", "America/New_York", "@hourly", "2026-03-07T23:30:00-05:00", "2026-03-08T04:00:00-04:00",
			[]string{"2026-03-08T00:00:00-05:00", "2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00"}},
		{"NY spring @daily", "America/New_York", "@daily", "2026-03-07T00:00:00-05:00", "2026-03-10T00:00:00-04:00",
			[]string{"2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00", "2026-03-10T00:00:00-04:00"}},

		// America/New_York fall back: 2026-11-01 02:00 EDT -> 01:00 EST.
		{"NY fall fixed 01:30", "America/New_York", "30 1 * * *", "2026-10-31T00:00:00-04:00", "2026-11-03T00:00:00-05:00",
			[]string{"2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"}},
		{"NY fall fixed 01:30 six fields", "America/New_York", "0 30 1 * * *", "2026-10-31T00:00:00-04:00", "2026-11-03T00:00:00-05:00",
			[]string{"2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"}},
		{"NY fall fixed 01:00 and 02:00", "America/New_York", "0 1,2 * * *", "2026-10-31T12:00:00-04:00", "2026-11-02T12:00:00-05:00",
			[]string{"2026-11-01T01:00:00-04:00", "2026-11-01T02:00:00-05:00", "2026-11-02T01:00:00-05:00", "2026-11-02T02:00:00-05:00"}},
		{"NY fall fixed */15 in repeated hour", "America/New_York", "*/15 1 * * *", "2026-10-31T23:00:00-04:00", "2026-11-01T23:00:00-05:00",
			[]string{"2026-11-01T01:00:00-04:00", "2026-11-01T01:15:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T01:45:00-04:00"}},
		{"NY fall fixed every hour", "America/New_York", "0 0-23 * * *", "2026-10-31T23:30:00-04:00", "2026-11-01T04:00:00-05:00",
			[]string{"2026-11-01T00:00:00-04:00", "2026-11-01T01:00:00-04:00", "2026-11-01T02:00:00-05:00",
				"2026-11-01T03:00:00-05:00", "2026-11-01T04:00:00-05:00"}},
		{"NY fall wildcard :30", "America/New_York", "30 * * * *", "2026-11-01T00:00:00-04:00", "2026-11-01T04:00:00-05:00",
			[]string{"2026-11-01T00:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00",
				"2026-11-01T02:30:00-05:00", "2026-11-01T03:30:00-05:00"}},
		{"NY fall wildcard */15", "America/New_York", "*/15 * * * *", "2026-11-01T00:50:00-04:00", "2026-11-01T02:20:00-05:00",
			[]string{"2026-11-01T01:00:00-04:00", "2026-11-01T01:15:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T01:45:00-04:00",
				"2026-11-01T01:00:00-05:00", "2026-11-01T01:15:00-05:00", "2026-11-01T01:30:00-05:00", "2026-11-01T01:45:00-05:00",
				"2026-11-01T02:00:00-05:00", "2026-11-01T02:15:00-05:00"}},
		{"NY fall wildcard every other hour", "America/New_York", "0 */2 * * *", "2026-10-31T23:00:00-04:00", "2026-11-01T06:00:00-05:00",
			[]string{"2026-11-01T00:00:00-04:00", "2026-11-01T02:00:00-05:00", "2026-11-01T04:00:00-05:00", "2026-11-01T06:00:00-05:00"}},
		{"NY fall @hourly", "America/New_York", "@hourly", "2026-10-31T23:30:00-04:00", "2026-11-01T03:00:00-05:00",
			[]string{"2026-11-01T00:00:00-04:00", "2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00",
				"2026-11-01T02:00:00-05:00", "2026-11-01T03:00:00-05:00"}},
		{"NY fall @daily", "America/New_York", "@daily", "2026-10-31T00:00:00-04:00", "2026-11-03T00:00:00-05:00",
			[]string{"2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00", "2026-11-03T00:00:00-05:00"}},

		// Europe/London: 01:00 GMT -> 02:00 BST, 02:00 BST -> 01:00 GMT.
		{"London spring fixed", "Europe/London", "30 1 * * *", "2026-03-28T00:00:00Z", "2026-03-31T00:00:00+01:00",
			[]string{"2026-03-28T01:30:00Z", "2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"}},
		{"London fall fixed", "Europe/London", "30 1 * * *", "2026-10-24T00:00:00+01:00", "2026-10-27T00:00:00Z",
			[]string{"2026-10-24T01:30:00+01:00", "2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00Z"}},
		{"London spring wildcard", "Europe/London", "30 * * * *", "2026-03-29T00:00:00Z", "2026-03-29T03:00:00+01:00",
			[]string{"2026-03-29T00:30:00Z", "2026-03-29T02:30:00+01:00"}},
		{"London fall wildcard", "Europe/London", "30 * * * *", "2026-10-25T00:00:00+01:00", "2026-10-25T02:00:00Z",
			[]string{"2026-10-25T00:30:00+01:00", "2026-10-25T01:30:00+01:00", "2026-10-25T01:30:00Z"}},

		// Europe/Berlin: 02:00 CET -> 03:00 CEST, 03:00 CEST -> 02:00 CET.
		{"Berlin spring fixed", "Europe/Berlin", "0 2 * * *", "2026-03-28T00:00:00+01:00", "2026-03-31T00:00:00+02:00",
			[]string{"2026-03-28T02:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"}},
		{"Berlin fall fixed", "Europe/Berlin", "0 2 * * *", "2026-10-24T00:00:00+02:00", "2026-10-27T00:00:00+01:00",
			[]string{"2026-10-24T02:00:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-26T02:00:00+01:00"}},
		{"Berlin fall fixed half hours", "Europe/Berlin", "*/30 2 * * *", "2026-10-25T00:00:00+02:00", "2026-10-25T12:00:00+01:00",
			[]string{"2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00"}},

		// Australia/Lord_Howe shifts by 30 minutes: 2026-04-05 02:00 +11 -> 01:30 +1030,
		// 2026-10-04 02:00 +1030 -> 02:30 +11.
		{"Lord Howe fall fixed", "Australia/Lord_Howe", "45 1 * * *", "2026-04-04T00:00:00+11:00", "2026-04-07T00:00:00+10:30",
			[]string{"2026-04-04T01:45:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"}},
		{"Lord Howe fall fixed */15", "Australia/Lord_Howe", "*/15 1 * * *", "2026-04-05T00:00:00+11:00", "2026-04-05T12:00:00+10:30",
			[]string{"2026-04-05T01:00:00+11:00", "2026-04-05T01:15:00+11:00", "2026-04-05T01:30:00+11:00", "2026-04-05T01:45:00+11:00"}},
		{"Lord Howe fall wildcard", "Australia/Lord_Howe", "*/15 * * * *", "2026-04-05T01:20:00+11:00", "2026-04-05T02:10:00+10:30",
			[]string{"2026-04-05T01:30:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-05T01:30:00+10:30",
				"2026-04-05T01:45:00+10:30", "2026-04-05T02:00:00+10:30"}},
		{"Lord Howe spring fixed", "Australia/Lord_Howe", "15 2 * * *", "2026-10-03T00:00:00+10:30", "2026-10-06T00:00:00+11:00",
			[]string{"2026-10-03T02:15:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"}},
		{"Lord Howe spring gap collapses with genuine 02:30", "Australia/Lord_Howe", "0,15,30,45 2 * * *", "2026-10-04T00:00:00+10:30", "2026-10-04T12:00:00+11:00",
			[]string{"2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00"}},
		{"Lord Howe spring wildcard", "Australia/Lord_Howe", "*/15 * * * *", "2026-10-04T01:40:00+10:30", "2026-10-04T02:50:00+11:00",
			[]string{"2026-10-04T01:45:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00"}},

		// Australia/Sydney (southern hemisphere): 2026-04-05 03:00 AEDT -> 02:00 AEST,
		// 2026-10-04 02:00 AEST -> 03:00 AEDT.
		{"Sydney fall fixed", "Australia/Sydney", "30 2 * * *", "2026-04-04T00:00:00+11:00", "2026-04-07T00:00:00+10:00",
			[]string{"2026-04-04T02:30:00+11:00", "2026-04-05T02:30:00+11:00", "2026-04-06T02:30:00+10:00"}},
		{"Sydney spring fixed", "Australia/Sydney", "30 2 * * *", "2026-10-03T00:00:00+10:00", "2026-10-06T00:00:00+11:00",
			[]string{"2026-10-03T02:30:00+10:00", "2026-10-04T03:00:00+11:00", "2026-10-05T02:30:00+11:00"}},
		{"Sydney fall morning", "Australia/Sydney", "0 9 * * *", "2026-04-04T00:00:00+11:00", "2026-04-06T00:00:00+10:00",
			[]string{"2026-04-04T09:00:00+11:00", "2026-04-05T09:00:00+10:00"}},

		// Antarctica/Troll shifts by two hours: 2026-03-29 01:00 +00 -> 03:00 +02,
		// 2026-10-25 03:00 +02 -> 01:00 +00.
		{"Troll spring two-hour gap", "Antarctica/Troll", "30 1,2 * * *", "2026-03-28T00:00:00Z", "2026-03-31T00:00:00+02:00",
			[]string{"2026-03-28T01:30:00Z", "2026-03-28T02:30:00Z", "2026-03-29T03:00:00+02:00",
				"2026-03-30T01:30:00+02:00", "2026-03-30T02:30:00+02:00"}},
		{"Troll fall two-hour overlap fixed", "Antarctica/Troll", "30 1,2 * * *", "2026-10-25T00:00:00+02:00", "2026-10-26T12:00:00Z",
			[]string{"2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T01:30:00Z", "2026-10-26T02:30:00Z"}},
		{"Troll fall two-hour overlap wildcard", "Antarctica/Troll", "0 * * * *", "2026-10-25T00:30:00+02:00", "2026-10-25T03:30:00Z",
			[]string{"2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-25T01:00:00Z",
				"2026-10-25T02:00:00Z", "2026-10-25T03:00:00Z"}},

		// America/Havana changes at midnight: 2026-03-08 00:00 CST -> 01:00 CDT,
		// 2026-11-01 01:00 CDT -> 00:00 CST.
		{"Havana spring @daily", "America/Havana", "@daily", "2026-03-06T12:00:00-05:00", "2026-03-10T00:00:00-04:00",
			[]string{"2026-03-07T00:00:00-05:00", "2026-03-08T01:00:00-04:00", "2026-03-09T00:00:00-04:00", "2026-03-10T00:00:00-04:00"}},
		{"Havana spring 00:30", "America/Havana", "30 0 * * *", "2026-03-07T12:00:00-05:00", "2026-03-09T12:00:00-04:00",
			[]string{"2026-03-08T01:00:00-04:00", "2026-03-09T00:30:00-04:00"}},
		{"Havana spring gap collapses with genuine 01:00", "America/Havana", "0 0,1 * * *", "2026-03-06T12:00:00-05:00", "2026-03-09T12:00:00-04:00",
			[]string{"2026-03-07T00:00:00-05:00", "2026-03-07T01:00:00-05:00", "2026-03-08T01:00:00-04:00",
				"2026-03-09T00:00:00-04:00", "2026-03-09T01:00:00-04:00"}},
		{"Havana spring wildcard", "America/Havana", "30 * * * *", "2026-03-07T23:00:00-05:00", "2026-03-08T02:00:00-04:00",
			[]string{"2026-03-07T23:30:00-05:00", "2026-03-08T01:30:00-04:00"}},
		{"Havana fall @daily", "America/Havana", "@daily", "2026-10-31T00:00:00-04:00", "2026-11-03T00:00:00-05:00",
			[]string{"2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00", "2026-11-03T00:00:00-05:00"}},
		{"Havana fall 00:30", "America/Havana", "30 0 * * *", "2026-10-31T12:00:00-04:00", "2026-11-02T12:00:00-05:00",
			[]string{"2026-11-01T00:30:00-04:00", "2026-11-02T00:30:00-05:00"}},
		{"Havana fall wildcard", "America/Havana", "30 * * * *", "2026-10-31T23:50:00-04:00", "2026-11-01T01:40:00-05:00",
			[]string{"2026-11-01T00:30:00-04:00", "2026-11-01T00:30:00-05:00", "2026-11-01T01:30:00-05:00"}},

		// Asia/Beirut: 2026-03-29 00:00 EET -> 01:00 EEST; 2026-10-25 00:00 EEST
		// -> 2026-10-24 23:00 EET, so the repeated hour belongs to the previous day.
		{"Beirut spring @daily", "Asia/Beirut", "@daily", "2026-03-28T00:00:00+02:00", "2026-03-30T00:00:00+03:00",
			[]string{"2026-03-29T01:00:00+03:00", "2026-03-30T00:00:00+03:00"}},
		{"Beirut yearly on the skipped midnight", "Asia/Beirut", "0 0 29 3 *", "2026-01-01T00:00:00+02:00", "2027-12-31T00:00:00+02:00",
			[]string{"2026-03-29T01:00:00+03:00", "2027-03-29T00:00:00+03:00"}},
		{"Beirut fall 23:30 repeated across midnight", "Asia/Beirut", "30 23 * * *", "2026-10-23T00:00:00+03:00", "2026-10-26T00:00:00+02:00",
			[]string{"2026-10-23T23:30:00+03:00", "2026-10-24T23:30:00+03:00", "2026-10-25T23:30:00+02:00"}},
		{"Beirut fall @daily", "Asia/Beirut", "@daily", "2026-10-23T12:00:00+03:00", "2026-10-26T00:00:00+02:00",
			[]string{"2026-10-24T00:00:00+03:00", "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+02:00"}},
		{"Beirut fall wildcard", "Asia/Beirut", "30 * * * *", "2026-10-24T22:00:00+03:00", "2026-10-25T01:00:00+02:00",
			[]string{"2026-10-24T22:30:00+03:00", "2026-10-24T23:30:00+03:00", "2026-10-24T23:30:00+02:00", "2026-10-25T00:30:00+02:00"}},

		// America/Santiago: 2025-09-07 00:00 -04 -> 01:00 -03; 2025-04-06 00:00 -03 -> 2025-04-05 23:00 -04.
		{"Santiago spring @daily", "America/Santiago", "@daily", "2025-09-05T12:00:00-04:00", "2025-09-08T12:00:00-03:00",
			[]string{"2025-09-06T00:00:00-04:00", "2025-09-07T01:00:00-03:00", "2025-09-08T00:00:00-03:00"}},
		{"Santiago fall 23:30", "America/Santiago", "30 23 * * *", "2025-04-04T12:00:00-03:00", "2025-04-06T12:00:00-04:00",
			[]string{"2025-04-04T23:30:00-03:00", "2025-04-05T23:30:00-03:00"}},

		// Pacific/Apia skipped 2011-12-30 entirely: 2011-12-29 23:59:59 -10 was followed by
		// 2011-12-31 00:00:00 +14.
		{"Apia @daily", "Pacific/Apia", "@daily", "2011-12-28T12:00:00-10:00", "2012-01-02T00:00:00+14:00",
			[]string{"2011-12-29T00:00:00-10:00", "2011-12-31T00:00:00+14:00", "2012-01-01T00:00:00+14:00", "2012-01-02T00:00:00+14:00"}},
		{"Apia daily noon", "Pacific/Apia", "0 12 * * *", "2011-12-28T13:00:00-10:00", "2012-01-01T13:00:00+14:00",
			[]string{"2011-12-29T12:00:00-10:00", "2011-12-31T00:00:00+14:00", "2011-12-31T12:00:00+14:00", "2012-01-01T12:00:00+14:00"}},
		{"Apia yearly on the skipped day", "Pacific/Apia", "0 0 30 12 *", "2011-06-01T00:00:00-11:00", "2013-01-01T00:00:00+14:00",
			[]string{"2011-12-31T00:00:00+14:00", "2012-12-30T00:00:00+14:00"}},
		{"Apia fixed every hour of the skipped day", "Pacific/Apia", "0 0-23 30 12 *", "2011-12-01T00:00:00-10:00", "2012-12-30T01:30:00+14:00",
			[]string{"2011-12-31T00:00:00+14:00", "2012-12-30T00:00:00+14:00", "2012-12-30T01:00:00+14:00"}},
		{"Apia wildcard on the skipped day", "Pacific/Apia", "0 * 30 12 *", "2011-12-01T00:00:00-10:00", "2012-12-30T01:30:00+14:00",
			[]string{"2012-12-30T00:00:00+14:00", "2012-12-30T01:00:00+14:00"}},
		{"Apia wildcard across the skipped day", "Pacific/Apia", "30 * * * *", "2011-12-29T22:00:00-10:00", "2011-12-31T02:00:00+14:00",
			[]string{"2011-12-29T22:30:00-10:00", "2011-12-29T23:30:00-10:00", "2011-12-31T00:30:00+14:00", "2011-12-31T01:30:00+14:00"}},

		// No daylight saving.
		{"Tokyo", "Asia/Tokyo", "30 2 * * *", "2026-03-07T00:00:00+09:00", "2026-03-10T00:00:00+09:00",
			[]string{"2026-03-07T02:30:00+09:00", "2026-03-08T02:30:00+09:00", "2026-03-09T02:30:00+09:00"}},
		{"Tokyo wildcard", "Asia/Tokyo", "*/20 * * * *", "2026-11-01T00:50:00+09:00", "2026-11-01T02:00:00+09:00",
			[]string{"2026-11-01T01:00:00+09:00", "2026-11-01T01:20:00+09:00", "2026-11-01T01:40:00+09:00", "2026-11-01T02:00:00+09:00"}},
		{"UTC", "UTC", "30 2 * * *", "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z",
			[]string{"2026-03-07T02:30:00Z", "2026-03-08T02:30:00Z", "2026-03-09T02:30:00Z"}},
		{"UTC wildcard", "UTC", "*/15 * * * *", "2026-11-01T00:50:00Z", "2026-11-01T01:30:00Z",
			[]string{"2026-11-01T01:00:00Z", "2026-11-01T01:15:00Z", "2026-11-01T01:30:00Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			loc := mustLoad(t, tt.zone)
			s := mustParse(t, tt.expr)
			got := fires(t, s, loc, mustTime(t, tt.from), mustTime(t, tt.until))
			diffLists(t, got, tt.want)
		})
	}
}

// TestRuleOnlyZones checks zones whose offsets come from a TZ rule
// string, including December 31 (UTC) of leap years, where Go's
// time.Time.ZoneBounds returns bounds that end before the instant itself
// (an earlier version of this package looped forever there).
func TestRuleOnlyZones(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		loc         func(testing.TB) *time.Location
		expr        string
		from, until string
		want        []string
	}{
		{"NY spring", ruleOnlyNewYork, "30 2 * * *", "2026-03-07T00:00:00-05:00", "2026-03-10T00:00:00-04:00",
			[]string{"2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"}},
		{"NY fall", ruleOnlyNewYork, "30 1 * * *", "2026-10-31T00:00:00-04:00", "2026-11-03T00:00:00-05:00",
			[]string{"2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"}},
		{"NY fall wildcard", ruleOnlyNewYork, "30 * * * *", "2026-11-01T00:00:00-04:00", "2026-11-01T03:00:00-05:00",
			[]string{"2026-11-01T00:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00", "2026-11-01T02:30:00-05:00"}},
		{"NY Dec 31 2024 wildcard", ruleOnlyNewYork, "30 * * * *", "2024-12-30T18:00:00-05:00", "2024-12-30T20:30:00-05:00",
			[]string{"2024-12-30T18:30:00-05:00", "2024-12-30T19:30:00-05:00", "2024-12-30T20:30:00-05:00"}},
		{"NY Dec 31 2024 fixed", ruleOnlyNewYork, "30 2 * * *", "2024-12-30T12:00:00-05:00", "2025-01-02T00:00:00-05:00",
			[]string{"2024-12-31T02:30:00-05:00", "2025-01-01T02:30:00-05:00"}},
		{"NY Dec 31 2028 @daily", ruleOnlyNewYork, "@daily", "2028-12-30T12:00:00-05:00", "2029-01-01T00:00:00-05:00",
			[]string{"2028-12-31T00:00:00-05:00", "2029-01-01T00:00:00-05:00"}},
		{"NY Dec 31 2028 seconds", ruleOnlyNewYork, "*/30 * * * * *", "2028-12-30T18:59:00-05:00", "2028-12-30T19:01:00-05:00",
			[]string{"2028-12-30T18:59:30-05:00", "2028-12-30T19:00:00-05:00", "2028-12-30T19:00:30-05:00", "2028-12-30T19:01:00-05:00"}},
		{"Sydney Dec 31 2028 wildcard", ruleOnlySydney, "30 * * * *", "2028-12-31T10:00:00+11:00", "2028-12-31T12:30:00+11:00",
			[]string{"2028-12-31T10:30:00+11:00", "2028-12-31T11:30:00+11:00", "2028-12-31T12:30:00+11:00"}},
		{"Sydney Dec 31 2028 fixed", ruleOnlySydney, "30 2 * * *", "2028-12-31T12:00:00+11:00", "2029-01-02T00:00:00+11:00",
			[]string{"2029-01-01T02:30:00+11:00"}},
		{"Sydney spring", ruleOnlySydney, "30 2 * * *", "2026-10-03T00:00:00+10:00", "2026-10-06T00:00:00+11:00",
			[]string{"2026-10-03T02:30:00+10:00", "2026-10-04T03:00:00+11:00", "2026-10-05T02:30:00+11:00"}},
		{"Lord Howe Dec 31 2024 fixed", ruleOnlyLordHowe, "0 11 * * *", "2024-12-30T12:00:00+11:00", "2025-01-01T12:00:00+11:00",
			[]string{"2024-12-31T11:00:00+11:00", "2025-01-01T11:00:00+11:00"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := fires(t, mustParse(t, tt.expr), tt.loc(t), mustTime(t, tt.from), mustTime(t, tt.until))
			diffLists(t, got, tt.want)
		})
	}
}

// TestNextSingle checks Next from starting points inside gaps, inside
// overlaps, exactly on fire times and with sub-second precision.
func TestNextSingle(t *testing.T) {
	t.Parallel()
	tests := []struct {
		zone, expr, after, want string
	}{
		{"America/New_York", "30 2 * * *", "2026-03-08T01:59:59-05:00", "2026-03-08T03:00:00-04:00"},
		{"America/New_York", "30 2 * * *", "2026-03-08T06:59:59.5Z", "2026-03-08T03:00:00-04:00"},
		{"America/New_York", "30 2 * * *", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"},
		// 02:59:59.999999999-04:00 is really 01:59:59.999999999 EST, just before the gap.
		{"America/New_York", "30 2 * * *", "2026-03-08T02:59:59.999999999-04:00", "2026-03-08T03:00:00-04:00"},
		// 01:30 EDT is 05:30Z; the EST 01:30 (06:30Z) must never fire.
		{"America/New_York", "30 1 * * *", "2026-11-01T05:29:59Z", "2026-11-01T05:30:00Z"},
		{"America/New_York", "30 1 * * *", "2026-11-01T01:29:59-04:00", "2026-11-01T01:30:00-04:00"},
		{"America/New_York", "30 1 * * *", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"},
		{"America/New_York", "30 1 * * *", "2026-11-01T01:00:00-05:00", "2026-11-02T01:30:00-05:00"},
		{"America/New_York", "30 1 * * *", "2026-11-01T01:29:59-05:00", "2026-11-02T01:30:00-05:00"},
		{"America/New_York", "0 1,2 * * *", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"},
		{"America/New_York", "30 * * * *", "2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00"},
		{"America/New_York", "30 * * * *", "2026-11-01T01:30:00-05:00", "2026-11-01T02:30:00-05:00"},
		// A fire time is never returned for after equal to it, nor for a fraction past it.
		{"UTC", "* * * * * *", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"},
		{"UTC", "* * * * * *", "2026-01-01T00:00:00.5Z", "2026-01-01T00:00:01Z"},
		{"UTC", "0 0 * * *", "2025-12-31T23:59:59.999999999Z", "2026-01-01T00:00:00Z"},
		// after may be given in any location; the result is in loc.
		{"Asia/Tokyo", "0 9 * * *", "2026-03-07T23:00:00Z", "2026-03-08T09:00:00+09:00"},
		{"America/New_York", "0 9 * * *", "2026-03-08T12:00:00+09:00", "2026-03-08T09:00:00-04:00"},
		// Far ahead, where Go evaluates the zone's rule string instead of a transition table.
		{"America/New_York", "30 2 * * *", "2099-03-08T01:00:00-05:00", "2099-03-08T03:00:00-04:00"},
		{"America/New_York", "30 1 * * *", "2099-11-01T01:30:00-04:00", "2099-11-02T01:30:00-05:00"},
	}
	for _, tt := range tests {
		t.Run(tt.zone+" "+tt.expr+" "+tt.after, func(t *testing.T) {
			t.Parallel()
			loc := mustLoad(t, tt.zone)
			got := mustParse(t, tt.expr).Next(mustTime(t, tt.after), loc)
			if !got.Equal(mustTime(t, tt.want)) {
				t.Errorf("Next(%s) = %s, want instant %s", tt.after, got.Format(time.RFC3339Nano), tt.want)
			}
			if got.Location() != loc {
				t.Errorf("Next returned location %v, want %v", got.Location(), loc)
			}
		})
	}
}

func TestNextNilLocationIsUTC(t *testing.T) {
	t.Parallel()
	got := mustParse(t, "0 12 * * *").Next(mustTime(t, "2026-03-08T00:00:00-05:00"), nil)
	if want := "2026-03-08T12:00:00Z"; got.Format(time.RFC3339) != want {
		t.Errorf("Next(nil loc) = %v, want %v", got, want)
	}
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	s := mustParse(t, "*/15 2 * * *")
	loc := mustLoad(t, "America/New_York")
	from := mustTime(t, "2026-03-08T01:00:00-05:00")
	want := mustTime(t, "2026-03-08T03:00:00-04:00")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if got := s.Next(from, loc); !got.Equal(want) {
					t.Errorf("Next = %v, want %v", got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestCivilConversions(t *testing.T) {
	t.Parallel()
	for day := int64(-800000); day <= 800000; day += 37 {
		want := time.Unix(day*secondsPerDay, 0).UTC()
		y, m, d := civilFromDays(day)
		if y != int64(want.Year()) || m != int(want.Month()) || d != want.Day() {
			t.Fatalf("civilFromDays(%d) = %d-%d-%d, want %s", day, y, m, d, want.Format(time.DateOnly))
		}
		if back := daysFromCivil(y, m, d); back != day {
			t.Fatalf("daysFromCivil(%d-%d-%d) = %d, want %d", y, m, d, back, day)
		}
		if wd := weekday(day); wd != int(want.Weekday()) {
			t.Fatalf("weekday(%d) = %d, want %d (%s)", day, wd, want.Weekday(), want.Format(time.DateOnly))
		}
	}
}

func TestNextExtremes(t *testing.T) {
	t.Parallel()
	ny := mustLoad(t, "America/New_York")
	tests := []struct {
		name  string
		expr  string
		loc   *time.Location
		after time.Time
		want  time.Time // zero means no fire
	}{
		{"zero Time", "@yearly", time.UTC, time.Time{}, time.Date(2, 1, 1, 0, 0, 0, 0, time.UTC)},
		// New York local mean time was -4:56:02.
		{"zero Time in local mean time", "@yearly", ny, time.Time{}, mustTime(t, "0001-01-01T04:56:02Z")},
		{"past year 9999", "@yearly", time.UTC, mustTime(t, "9999-06-01T00:00:00Z"), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"absurdly far future", "* * * * *", ny, time.Unix(1<<62, 0), time.Time{}},
		{"absurdly far past", "* * * * *", ny, time.Unix(-1<<62, 0), time.Time{}},
	}
	for _, tt := range tests {
		got := mustParse(t, tt.expr).Next(tt.after, tt.loc)
		if !got.Equal(tt.want) || got.IsZero() != tt.want.IsZero() {
			t.Errorf("%s: Next = %v, want %v", tt.name, got, tt.want)
		}
	}
}

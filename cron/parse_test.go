package cron

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// set builds a bit set from explicit values, so expectations below are
// written out rather than derived from the parser.
func set(vals ...int) uint64 {
	var b uint64
	for _, v := range vals {
		b |= 1 << v
	}
	return b
}

func span(lo, hi, step int) uint64 {
	var b uint64
	for v := lo; v <= hi; v += step {
		b |= 1 << v
	}
	return b
}

var (
	allSec   = span(0, 59, 1)
	allMin   = span(0, 59, 1)
	allHour  = span(0, 23, 1)
	allDOM   = span(1, 31, 1)
	allMonth = span(1, 12, 1)
	allDOW   = span(0, 6, 1)
)

func TestParseAccepts(t *testing.T) {
	t.Parallel()
	type want struct {
		sec, min, hour, dom, month, dow uint64
		domStar, dowStar, wildHour      bool
	}
	tests := []struct {
		expr string
		want want
	}{
		{"* * * * *", want{set(0), allMin, allHour, allDOM, allMonth, allDOW, true, true, true}},
		{"0 0 * * *", want{set(0), set(0), set(0), allDOM, allMonth, allDOW, true, true, false}},
		{"5 4 3 2 1", want{set(0), set(5), set(4), set(3), set(2), set(1), false, false, false}},
		// Six fields: leading seconds.
		{"15 30 2 * * *", want{set(15), set(30), set(2), allDOM, allMonth, allDOW, true, true, false}},
		{"*/20 * * * * *", want{set(0, 20, 40), allMin, allHour, allDOM, allMonth, allDOW, true, true, true}},
		// Ranges, steps, lists.
		{"1-5 * * * *", want{set(0), set(1, 2, 3, 4, 5), allHour, allDOM, allMonth, allDOW, true, true, true}},
		{"*/15 * * * *", want{set(0), set(0, 15, 30, 45), allHour, allDOM, allMonth, allDOW, true, true, true}},
		{"10-30/10 * * * *", want{set(0), set(10, 20, 30), allHour, allDOM, allMonth, allDOW, true, true, true}},
		{"50/3 * * * *", want{set(0), set(50, 53, 56, 59), allHour, allDOM, allMonth, allDOW, true, true, true}},
		{"0 */5 * * *", want{set(0), set(0), set(0, 5, 10, 15, 20), allDOM, allMonth, allDOW, true, true, true}},
		{"0 20/2 * * *", want{set(0), set(0), set(20, 22), allDOM, allMonth, allDOW, true, true, false}},
		{"1,2,10-12,40/10 * * * *", want{set(0), set(1, 2, 10, 11, 12, 40, 50), allHour, allDOM, allMonth, allDOW, true, true, true}},
		{"0 0 */10 * *", want{set(0), set(0), set(0), set(1, 11, 21, 31), allMonth, allDOW, true, true, false}},
		{"0 0 1 */4 *", want{set(0), set(0), set(0), set(1), set(1, 5, 9), allDOW, false, true, false}},
		{"00 09 05 * *", want{set(0), set(0), set(9), set(5), allMonth, allDOW, false, true, false}},
		// Names, case-insensitive, also in ranges and with steps.
		{"0 0 1 jan,Jul,DEC *", want{set(0), set(0), set(0), set(1), set(1, 7, 12), allDOW, false, true, false}},
		{"0 0 1 MAR-may *", want{set(0), set(0), set(0), set(1), set(3, 4, 5), allDOW, false, true, false}},
		{"0 0 * * mon-FRI", want{set(0), set(0), set(0), allDOM, allMonth, set(1, 2, 3, 4, 5), true, false, false}},
		{"0 0 * * SUN,sat", want{set(0), set(0), set(0), allDOM, allMonth, set(0, 6), true, false, false}},
		{"0 0 * * MON-FRI/2", want{set(0), set(0), set(0), allDOM, allMonth, set(1, 3, 5), true, false, false}},
		// 7 is Sunday, alone and in ranges; "a/n" for day-of-week stops at 6.
		{"0 0 * * 7", want{set(0), set(0), set(0), allDOM, allMonth, set(0), true, false, false}},
		{"0 0 * * 5-7", want{set(0), set(0), set(0), allDOM, allMonth, set(0, 5, 6), true, false, false}},
		{"0 0 * * 0-7", want{set(0), set(0), set(0), allDOM, allMonth, allDOW, true, false, false}},
		{"0 0 * * 1/2", want{set(0), set(0), set(0), allDOM, allMonth, set(1, 3, 5), true, false, false}},
		{"0 0 * * 7/2", want{set(0), set(0), set(0), allDOM, allMonth, set(0), true, false, false}},
		{"0 0 * * */2", want{set(0), set(0), set(0), allDOM, allMonth, set(0, 2, 4, 6), true, true, false}},
		// "?" is "*" in the day fields, including for the OR/AND rule.
		{"0 0 ? * MON", want{set(0), set(0), set(0), allDOM, allMonth, set(1), true, false, false}},
		{"0 0 15 * ?", want{set(0), set(0), set(0), set(15), allMonth, allDOW, false, true, false}},
		// Whitespace.
		{"  0   0\t* *  *\n", want{set(0), set(0), set(0), allDOM, allMonth, allDOW, true, true, false}},
		// Descriptors, case-insensitive.
		{"@yearly", want{set(0), set(0), set(0), set(1), set(1), allDOW, false, true, false}},
		{"@ANNUALLY", want{set(0), set(0), set(0), set(1), set(1), allDOW, false, true, false}},
		{"@monthly", want{set(0), set(0), set(0), set(1), allMonth, allDOW, false, true, false}},
		{"@Weekly", want{set(0), set(0), set(0), allDOM, allMonth, set(0), true, false, false}},
		{"@daily", want{set(0), set(0), set(0), allDOM, allMonth, allDOW, true, true, false}},
		{"@midnight", want{set(0), set(0), set(0), allDOM, allMonth, allDOW, true, true, false}},
		{" @hourly ", want{set(0), set(0), allHour, allDOM, allMonth, allDOW, true, true, true}},
		// Feb 29 exists in leap years.
		{"0 0 29 2 *", want{set(0), set(0), set(0), set(29), set(2), allDOW, false, true, false}},
		// Day 31 is fine if any selected month has it.
		{"0 0 31 2,4,5 *", want{set(0), set(0), set(0), set(31), set(2, 4, 5), allDOW, false, true, false}},
		// Under the OR rule day-of-week makes it fire even if the date never exists.
		{"0 0 30 2 MON", want{set(0), set(0), set(0), set(30), set(2), set(1), false, false, false}},
		// Step as large as the field maximum.
		{"*/59 */23 */31 */12 */7", want{set(0), set(0, 59), set(0, 23), set(1), set(1), set(0), true, true, true}},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			t.Parallel()
			s, err := Parse(tt.expr)
			if err != nil {
				t.Fatalf("Parse(%q) error: %v", tt.expr, err)
			}
			got := want{s.second, s.minute, s.hour, s.dom, s.month, s.dow, s.domStar, s.dowStar, s.wildcardHour}
			if got != tt.want {
				t.Errorf("Parse(%q) =\n  %+v\nwant\n  %+v", tt.expr, got, tt.want)
			}
			if s.String() != strings.TrimSpace(tt.expr) {
				t.Errorf("String() = %q, want %q", s.String(), strings.TrimSpace(tt.expr))
			}
			if s.WildcardHour() != tt.want.wildHour {
				t.Errorf("WildcardHour() = %v, want %v", s.WildcardHour(), tt.want.wildHour)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		expr   string
		field  string
		pos    int
		token  string
		reason string // substring of Reason
	}{
		// Whole-expression problems.
		{"", "", 0, "", "empty expression"},
		{"   ", "", 0, "", "empty expression"},
		{"* * *", "", 0, "", "expected 5 fields"},
		{"* * * *", "", 0, "", "got 4"},
		{"0 0 0 * * * 2026", "", 0, "", "year field"},
		{"@fortnightly", "", 1, "@fortnightly", "unknown descriptor"},
		{"@every 5m", "", 1, "@every", "not supported"},
		{"@reboot", "", 1, "@reboot", "not supported"},
		{"@daily 5", "", 8, "5", "must be the whole expression"},
		// Out of range, per field.
		{"60 * * * * *", "second", 1, "60", "out of range 0-59"},
		{"0 60 * * * *", "minute", 3, "60", "out of range 0-59"},
		{"0 25 * * *", "hour", 3, "25", "value 25 is out of range 0-23"},
		{"0 0 0 * *", "day_of_month", 5, "0", "out of range 1-31"},
		{"0 0 32 * *", "day_of_month", 5, "32", "out of range 1-31"},
		{"0 0 * 13 *", "month", 7, "13", "out of range 1-12"},
		{"0 0 * 0 *", "month", 7, "0", "out of range 1-12"},
		{"0 0 * * 8", "day_of_week", 9, "8", "out of range 0-7"},
		{"0 0 * * 99999999999999999999999", "day_of_week", 9, "99999999999999999999999", "out of range"},
		// Out of range inside a range and a list: the token is the bad value.
		{"0 1-25 * * *", "hour", 5, "25", "out of range 0-23"},
		{"0,15,61 * * * *", "minute", 6, "61", "out of range"},
		// Reversed range.
		{"5-2 * * * *", "minute", 1, "5-2", "reversed"},
		{"0 0 * * FRI-MON", "day_of_week", 9, "FRI-MON", "reversed"},
		{"0 0 1 DEC-JAN *", "month", 7, "DEC-JAN", "reversed"},
		// Steps.
		{"*/0 * * * *", "minute", 1, "*/0", "step 0"},
		{"0 1-5/0 * * *", "hour", 3, "1-5/0", "step 0"},
		{"*/60 * * * *", "minute", 1, "*/60", "too large"},
		{"*/ * * * *", "minute", 1, "*/", "missing step"},
		{"*/x * * * *", "minute", 1, "*/x", "not a whole number"},
		{"*/5/2 * * * *", "minute", 1, "*/5/2", "more than one"},
		// Empty list items point at the stray comma.
		{"1,,2 * * * *", "minute", 3, ",", "empty list item"},
		{"0 ,1 * * *", "hour", 3, ",", "empty list item"},
		{"0 1, * * *", "hour", 4, ",", "empty list item"},
		// Garbage.
		{"abc * * * *", "minute", 1, "abc", "invalid value"},
		{"0 0 * * MONDAY", "day_of_week", 9, "MONDAY", "SUN-SAT"},
		{"0 0 * MON *", "month", 7, "MON", "JAN-DEC"},
		{"0 0 L * *", "day_of_month", 5, "L", "Quartz"},
		{"0 0 * * 5#3", "day_of_week", 9, "5#3", "Quartz"},
		{"0 ? * * *", "hour", 3, "?", "only allowed in the day-of-month and day-of-week"},
		{"** * * * *", "minute", 1, "**", "must stand alone"},
		{"*-5 * * * *", "minute", 1, "*", "must stand alone"},
		{"-5 * * * *", "minute", 1, "-5", "malformed range"},
		{"1-2-3 * * * *", "minute", 1, "1-2-3", "malformed range"},
		{"1- * * * *", "minute", 1, "1-", "malformed range"},
		{"+5 * * * *", "minute", 1, "+5", "invalid value"},
		{"1.5 * * * *", "minute", 1, "1.5", "invalid value"},
		// Positions count characters, not bytes, and are relative to the trimmed expression.
		{"  0 ü * * *", "hour", 3, "ü", "invalid value"},
		{"0 0 * * * ü", "day_of_week", 11, "ü", "invalid value"},
		{"0\u00a00 * * 9", "day_of_week", 9, "9", "out of range"},
		// Never fires.
		{"0 0 30 2 *", "day_of_month", 5, "30", "never fires"},
		{"0 0 31 4 *", "day_of_month", 5, "31", "never fires"},
		{"0 0 31 2,4,6,9,11 *", "day_of_month", 5, "31", "never fires"},
		{"0 0 30,31 FEB ?", "day_of_month", 5, "30,31", "never fires"},
		// A day-of-week starting with "*" uses the AND rule, so it cannot rescue the date.
		{"0 0 30 2 */2", "day_of_month", 5, "30", "never fires"},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			t.Parallel()
			s, err := Parse(tt.expr)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want error", tt.expr, s)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse(%q) error %T, want *ParseError", tt.expr, err)
			}
			if pe.Expr != strings.TrimSpace(tt.expr) {
				t.Errorf("Expr = %q, want %q", pe.Expr, strings.TrimSpace(tt.expr))
			}
			if pe.Field != tt.field || pe.Position != tt.pos || pe.Token != tt.token {
				t.Errorf("Field, Position, Token = %q, %d, %q; want %q, %d, %q",
					pe.Field, pe.Position, pe.Token, tt.field, tt.pos, tt.token)
			}
			if !strings.Contains(pe.Reason, tt.reason) {
				t.Errorf("Reason = %q, want it to contain %q", pe.Reason, tt.reason)
			}
			if tt.pos > 0 {
				// Position must really point at Token.
				runes := []rune(pe.Expr)
				if at := string(runes[tt.pos-1:]); !strings.HasPrefix(at, tt.token) {
					t.Errorf("Expr at position %d is %q, which does not start with token %q", tt.pos, at, tt.token)
				}
			}
		})
	}
}

func TestParseErrorMessage(t *testing.T) {
	t.Parallel()
	tests := []struct{ expr, want string }{
		{"0 25 * * *", `cron "0 25 * * *": hour field "25" at position 3: value 25 is out of range 0-23`},
		{"* * *", `cron "* * *": expected 5 fields (minute hour day-of-month month day-of-week), 6 with a leading seconds field, or a descriptor like @daily; got 3`},
		{"0 0 32 * *", `cron "0 0 32 * *": day-of-month field "32" at position 5: value 32 is out of range 1-31`},
		{"@often", `cron "@often": "@often" at position 1: unknown descriptor; use one of @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly, or write 5 fields`},
		{"0 0 30 2 *", `cron "0 0 30 2 *": day-of-month field "30" at position 5: never fires: day-of-month 30 never occurs in February; choose days that exist in the selected months (February has 29 days in leap years, April, June, September and November have 30)`},
	}
	for _, tt := range tests {
		_, err := Parse(tt.expr)
		if err == nil {
			t.Errorf("Parse(%q): no error", tt.expr)
			continue
		}
		if err.Error() != tt.want {
			t.Errorf("Parse(%q) error\n  %s\nwant\n  %s", tt.expr, err.Error(), tt.want)
		}
	}
}

// TestCalendarRules checks the day rules through Next, in UTC where no
// daylight saving interferes.
func TestCalendarRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, expr, from string
		want             []string
	}{
		{"Feb 29 only in leap years", "0 0 29 2 *", "2025-01-01T00:00:00Z",
			[]string{"2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z", "2036-02-29T00:00:00Z"}},
		{"2100 is not a leap year", "0 0 29 2 *", "2097-01-01T00:00:00Z",
			[]string{"2104-02-29T00:00:00Z"}},
		{"day 31 skips short months", "0 12 31 * *", "2026-01-31T12:00:00Z",
			[]string{"2026-03-31T12:00:00Z", "2026-05-31T12:00:00Z", "2026-07-31T12:00:00Z", "2026-08-31T12:00:00Z"}},
		{"OR rule: 13th or Friday", "0 0 13 * FRI", "2026-03-01T00:00:00Z",
			[]string{"2026-03-06T00:00:00Z", "2026-03-13T00:00:00Z", "2026-03-20T00:00:00Z", "2026-03-27T00:00:00Z",
				"2026-04-03T00:00:00Z", "2026-04-10T00:00:00Z", "2026-04-13T00:00:00Z", "2026-04-17T00:00:00Z"}},
		{"OR rule: 1st, 15th or Monday", "0 0 1,15 * MON", "2026-02-28T00:00:00Z",
			[]string{"2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z", "2026-03-15T00:00:00Z",
				"2026-03-16T00:00:00Z", "2026-03-23T00:00:00Z", "2026-03-30T00:00:00Z", "2026-04-01T00:00:00Z"}},
		{"AND rule when day-of-month starts with *", "0 0 */2 * FRI", "2026-03-01T00:00:00Z",
			[]string{"2026-03-13T00:00:00Z", "2026-03-27T00:00:00Z", "2026-04-03T00:00:00Z", "2026-04-17T00:00:00Z", "2026-05-01T00:00:00Z"}},
		{"AND rule with ? day-of-month", "0 0 ? * FRI", "2026-03-01T00:00:00Z",
			[]string{"2026-03-06T00:00:00Z", "2026-03-13T00:00:00Z"}},
		{"AND rule when day-of-week starts with *", "0 0 1-7 * */3", "2026-03-01T00:00:00Z",
			// */3 is Sunday, Wednesday, Saturday; 2026-03-01 itself is excluded (not after).
			[]string{"2026-03-04T00:00:00Z", "2026-03-07T00:00:00Z", "2026-04-01T00:00:00Z", "2026-04-04T00:00:00Z", "2026-04-05T00:00:00Z"}},
		{"7 is Sunday", "0 0 * * 7", "2026-03-02T00:00:00Z",
			[]string{"2026-03-08T00:00:00Z", "2026-03-15T00:00:00Z"}},
		{"Friday through Sunday via 7", "0 0 * * 5-7", "2026-03-02T00:00:00Z",
			[]string{"2026-03-06T00:00:00Z", "2026-03-07T00:00:00Z", "2026-03-08T00:00:00Z", "2026-03-13T00:00:00Z"}},
		{"@weekly is Sunday midnight", "@weekly", "2026-03-02T00:00:00Z",
			[]string{"2026-03-08T00:00:00Z", "2026-03-15T00:00:00Z"}},
		{"@monthly", "@monthly", "2026-01-15T00:00:00Z",
			[]string{"2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"}},
		{"@yearly", "@yearly", "2026-01-01T00:00:00Z",
			[]string{"2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"}},
		{"month names", "0 0 1 FEB,nov *", "2026-01-01T00:00:00Z",
			[]string{"2026-02-01T00:00:00Z", "2026-11-01T00:00:00Z", "2027-02-01T00:00:00Z"}},
		{"year rollover", "59 23 31 12 *", "2026-12-31T23:59:00Z",
			[]string{"2027-12-31T23:59:00Z"}},
		{"seconds", "*/20 0 0 1 1 *", "2026-12-31T23:59:59Z",
			[]string{"2027-01-01T00:00:00Z", "2027-01-01T00:00:20Z", "2027-01-01T00:00:40Z", "2028-01-01T00:00:00Z"}},
		{"before 1970", "0 0 29 2 *", "1899-01-01T00:00:00Z",
			[]string{"1904-02-29T00:00:00Z", "1908-02-29T00:00:00Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkSequence(t, tt.expr, time.UTC, tt.from, tt.want)
		})
	}
}

func TestNextGivesUp(t *testing.T) {
	t.Parallel()
	// Feb 29 AND Sunday ("*/7" starts with "*", so the AND rule applies):
	// 2032-02-29 is a Sunday, the next one is 2060-02-29, beyond ten years.
	s := mustParse(t, "0 0 29 2 */7")
	if got, want := s.Next(mustTime(t, "2026-01-01T00:00:00Z"), time.UTC), mustTime(t, "2032-02-29T00:00:00Z"); !got.Equal(want) {
		t.Errorf("Next = %v, want %v", got, want)
	}
	for _, loc := range []*time.Location{time.UTC, mustLoad(t, "America/New_York")} {
		if got := s.Next(mustTime(t, "2032-02-29T12:00:00Z"), loc); !got.IsZero() {
			t.Errorf("Next in %v = %v, want zero Time (no fire within ten years)", loc, got)
		}
	}
}

package cron

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Schedule is a parsed cron expression. It is immutable and safe for
// concurrent use.
type Schedule struct {
	expr string

	// Bit i is set when value i matches. dow uses bits 0-6 (Sunday is 0;
	// 7 is folded into 0 at parse time).
	second, minute, hour, dom, month, dow uint64

	// domStar and dowStar record whether the field text starts with "*"
	// or "?". That, and not the resulting bit set, decides between the
	// OR and AND day rules, as in cronie: "*/2" is "starred" even though
	// it does not match every day.
	domStar, dowStar bool

	wildcardHour bool
}

// String returns the expression the Schedule was parsed from, with leading
// and trailing white space removed.
func (s *Schedule) String() string { return s.expr }

// WildcardHour reports whether the hour field starts with "*" (as in "*"
// or "*/2"), which includes @hourly. Such schedules follow real elapsed
// time across daylight-saving transitions; all others follow the
// fixed-hour rules described in the package documentation.
func (s *Schedule) WildcardHour() bool { return s.wildcardHour }

// ParseError describes why [Parse] rejected an expression.
type ParseError struct {
	// Expr is the whole expression, with leading and trailing white space
	// removed; Position counts from its start.
	Expr string
	// Field is "second", "minute", "hour", "day_of_month", "month" or
	// "day_of_week", or "" for problems with the expression as a whole
	// (empty, wrong number of fields, unknown descriptor).
	Field string
	// Position is the 1-based character offset in Expr at which Token
	// starts, or 0 if the problem has no particular location.
	Position int
	// Token is the offending text: the bad value, range, or list item
	// with its step, or the stray comma of an empty list item.
	Token string
	// Reason is a human-readable explanation that says how to fix it.
	Reason string
}

// Error formats the error as, for example:
//
//	cron "0 25 * * *": hour field "25" at position 3: value 25 is out of range 0-23
func (e *ParseError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cron %q: ", e.Expr)
	switch {
	case e.Field != "":
		fmt.Fprintf(&b, "%s field %q at position %d: ", strings.ReplaceAll(e.Field, "_", "-"), e.Token, e.Position)
	case e.Token != "":
		fmt.Fprintf(&b, "%q at position %d: ", e.Token, e.Position)
	}
	b.WriteString(e.Reason)
	return b.String()
}

const fieldCountHint = "expected 5 fields (minute hour day-of-month month day-of-week), 6 with a leading seconds field, or a descriptor like @daily"

type fieldKind int

const (
	fSecond fieldKind = iota
	fMinute
	fHour
	fDOM
	fMonth
	fDOW
	numFields
)

type fieldSpec struct {
	name     string // ParseError.Field
	min, max int
	// starMax is the upper end of "*" and of "a/n". It differs from max
	// only for day-of-week, where 7 is an alias for Sunday: "1/2" means
	// Monday, Wednesday, Friday and should not pick up Sunday via 7.
	starMax  int
	names    []string // names[i] has value i+nameBase
	nameBase int
	nameHint string
	// dayField allows "?" and enables the Quartz-extension hint.
	dayField  bool
	rangeNote string
}

var fieldSpecs = [numFields]fieldSpec{
	fSecond: {name: "second", min: 0, max: 59, starMax: 59},
	fMinute: {name: "minute", min: 0, max: 59, starMax: 59},
	fHour:   {name: "hour", min: 0, max: 23, starMax: 23},
	fDOM:    {name: "day_of_month", min: 1, max: 31, starMax: 31, dayField: true},
	fMonth: {name: "month", min: 1, max: 12, starMax: 12, nameBase: 1, nameHint: " or a month name JAN-DEC",
		names: []string{"JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"}},
	fDOW: {name: "day_of_week", min: 0, max: 7, starMax: 6, nameBase: 0, nameHint: " or a day name SUN-SAT", dayField: true,
		rangeNote: " (0 and 7 both mean Sunday)",
		names:     []string{"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"}},
}

var descriptors = map[string]string{
	"@yearly":   "0 0 1 1 *",
	"@annually": "0 0 1 1 *",
	"@monthly":  "0 0 1 * *",
	"@weekly":   "0 0 * * 0",
	"@daily":    "0 0 * * *",
	"@midnight": "0 0 * * *",
	"@hourly":   "0 * * * *",
}

// token is a piece of the expression with its 1-based character position.
type token struct {
	text string
	pos  int
}

// Parse parses a cron expression: five fields (minute hour day-of-month
// month day-of-week), six fields with a leading seconds field, or a
// descriptor such as @daily. See the package documentation for the
// syntax. The returned error, if any, is a *ParseError.
func Parse(expr string) (*Schedule, error) {
	expr = strings.TrimSpace(expr)
	if expr == "" {
		return nil, &ParseError{Expr: expr, Reason: "empty expression; " + fieldCountHint}
	}
	toks := splitFields(expr)

	if strings.HasPrefix(toks[0].text, "@") {
		return parseDescriptor(expr, toks)
	}

	var fields [numFields]token
	switch len(toks) {
	case 5:
		fields[fSecond] = token{text: "0"}
		copy(fields[fMinute:], toks)
	case 6:
		copy(fields[:], toks)
	default:
		reason := fmt.Sprintf("%s; got %d", fieldCountHint, len(toks))
		if len(toks) == 7 {
			reason += " (a trailing year field, as in Quartz, is not supported)"
		}
		return nil, &ParseError{Expr: expr, Reason: reason}
	}
	return parseFields(expr, fields)
}

func parseDescriptor(expr string, toks []token) (*Schedule, error) {
	name := strings.ToLower(toks[0].text)
	switch name {
	case "@every":
		return nil, &ParseError{Expr: expr, Position: toks[0].pos, Token: toks[0].text,
			Reason: `@every is not supported: only calendar schedules are; write a fixed interval as a step, e.g. "*/5 * * * *" for every five minutes`}
	case "@reboot":
		return nil, &ParseError{Expr: expr, Position: toks[0].pos, Token: toks[0].text,
			Reason: "@reboot is not supported: a scheduler has no boot event; use a calendar schedule such as @daily"}
	}
	expansion, ok := descriptors[name]
	if !ok {
		return nil, &ParseError{Expr: expr, Position: toks[0].pos, Token: toks[0].text,
			Reason: "unknown descriptor; use one of @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly, or write 5 fields"}
	}
	if len(toks) > 1 {
		return nil, &ParseError{Expr: expr, Position: toks[1].pos, Token: toks[1].text,
			Reason: fmt.Sprintf("a descriptor must be the whole expression; remove everything after %s", toks[0].text)}
	}
	// The expansions are constants that always parse; an error here is a
	// bug in this file, not in the user's expression.
	var fields [numFields]token
	fields[fSecond] = token{text: "0"}
	for i, f := range strings.Fields(expansion) {
		fields[fMinute+fieldKind(i)] = token{text: f}
	}
	s, err := parseFields(expr, fields)
	if err != nil {
		panic("cron: invalid descriptor expansion " + expansion + ": " + err.Error())
	}
	return s, nil
}

// splitFields splits on runs of white space, remembering where each field
// starts so errors can point at it.
func splitFields(expr string) []token {
	var toks []token
	start, startPos := -1, 0
	pos := 0 // 1-based character position of r
	for i, r := range expr {
		pos++
		if unicode.IsSpace(r) {
			if start >= 0 {
				toks = append(toks, token{text: expr[start:i], pos: startPos})
				start = -1
			}
			continue
		}
		if start < 0 {
			start, startPos = i, pos
		}
	}
	if start >= 0 {
		toks = append(toks, token{text: expr[start:], pos: startPos})
	}
	return toks
}

func parseFields(expr string, fields [numFields]token) (*Schedule, error) {
	s := &Schedule{expr: expr}
	var bits [numFields]uint64
	for k := range numFields {
		b, err := parseField(expr, k, fields[k])
		if err != nil {
			return nil, err
		}
		bits[k] = b
	}
	s.second, s.minute, s.hour, s.dom, s.month = bits[fSecond], bits[fMinute], bits[fHour], bits[fDOM], bits[fMonth]
	s.dow = bits[fDOW]
	if s.dow&(1<<7) != 0 {
		s.dow = s.dow&^(1<<7) | 1
	}
	s.domStar = isStar(fields[fDOM].text)
	s.dowStar = isStar(fields[fDOW].text)
	s.wildcardHour = strings.HasPrefix(fields[fHour].text, "*")

	if err := s.checkFires(expr, fields[fDOM]); err != nil {
		return nil, err
	}
	return s, nil
}

// isStar reports whether a day field counts as unrestricted for the OR/AND
// day rule.
func isStar(field string) bool {
	return strings.HasPrefix(field, "*") || strings.HasPrefix(field, "?")
}

var monthNames = [13]string{1: "January", "February", "March", "April", "May", "June", "July",
	"August", "September", "October", "November", "December"}

// maxDays is the longest each month can be; February counts leap years.
var maxDays = [13]int{1: 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}

// checkFires rejects day-of-month/month combinations that name no real
// date. Under the OR rule a restricted day-of-week always fires, and every
// real date eventually falls on every weekday, so the calendar is the only
// thing that can make a schedule impossible.
func (s *Schedule) checkFires(expr string, domTok token) error {
	if !s.domStar && !s.dowStar {
		return nil
	}
	var months []string
	for m := 1; m <= 12; m++ {
		if s.month&(1<<m) == 0 {
			continue
		}
		if s.dom&(uint64(1)<<(maxDays[m]+1)-1) != 0 {
			return nil
		}
		months = append(months, monthNames[m])
	}
	return &ParseError{Expr: expr, Field: fieldSpecs[fDOM].name, Position: domTok.pos, Token: domTok.text,
		Reason: fmt.Sprintf("never fires: day-of-month %s never occurs in %s; choose days that exist in the selected months (February has 29 days in leap years, April, June, September and November have 30)",
			domTok.text, strings.Join(months, ", "))}
}

// fieldParser parses one field and builds errors that point into expr.
type fieldParser struct {
	expr string
	spec *fieldSpec
}

func (p fieldParser) fail(pos int, text, reason string) error {
	return &ParseError{Expr: p.expr, Field: p.spec.name, Position: pos, Token: text, Reason: reason}
}

func parseField(expr string, k fieldKind, tok token) (uint64, error) {
	p := fieldParser{expr: expr, spec: &fieldSpecs[k]}
	items := strings.Split(tok.text, ",")
	var bits uint64
	off := 0 // byte offset of the current item within tok.text
	for i, item := range items {
		itemPos := tok.pos + utf8.RuneCountInString(tok.text[:off])
		if item == "" {
			// Point at the comma that ends the empty item, or the one
			// before it when the item is last.
			commaPos := itemPos
			if i == len(items)-1 {
				commaPos--
			}
			return 0, p.fail(commaPos, ",", `empty list item; remove the extra comma or put a value on both sides of it, e.g. "1,15"`)
		}
		b, err := p.item(item, itemPos)
		if err != nil {
			return 0, err
		}
		bits |= b
		off += len(item) + 1
	}
	return bits, nil
}

// item parses "*", "?", "v", "a-b", each optionally followed by "/step".
func (p fieldParser) item(item string, pos int) (uint64, error) {
	spec := p.spec
	base, stepText, hasStep := strings.Cut(item, "/")
	step := 1
	if hasStep {
		switch {
		case strings.Contains(stepText, "/"):
			return 0, p.fail(pos, item, `more than one "/"; write a single step, e.g. "*/15" or "0-30/10"`)
		case stepText == "":
			return 0, p.fail(pos, item, `missing step after "/"; write e.g. "*/15"`)
		case !isDigits(stepText):
			return 0, p.fail(pos, item, fmt.Sprintf(`step %q is not a whole number; write e.g. "*/15"`, stepText))
		}
		n, err := strconv.Atoi(stepText)
		switch {
		case err == nil && n == 0:
			return 0, p.fail(pos, item, `step 0 is not allowed; use a step of 1 or more, e.g. "*/5"`)
		case err != nil || n > spec.max:
			return 0, p.fail(pos, item, fmt.Sprintf("step %s is too large; it must be between 1 and %d", stepText, spec.max))
		}
		step = n
	}

	var lo, hi int
	switch {
	case base == "*":
		lo, hi = spec.min, spec.starMax
	case base == "?":
		if !spec.dayField {
			return 0, p.fail(pos, base, `"?" is only allowed in the day-of-month and day-of-week fields; use "*"`)
		}
		lo, hi = spec.min, spec.starMax
	case strings.Contains(base, "-"):
		a, b, _ := strings.Cut(base, "-")
		if a == "" || b == "" || strings.Contains(b, "-") {
			return 0, p.fail(pos, base, fmt.Sprintf(`malformed range; write it as start-end, e.g. "%d-%d" (negative numbers are not allowed)`, spec.min, spec.min+2))
		}
		var err error
		if lo, err = p.value(a, pos); err != nil {
			return 0, err
		}
		if hi, err = p.value(b, pos+utf8.RuneCountInString(a)+1); err != nil {
			return 0, err
		}
		if lo > hi {
			return 0, p.fail(pos, base, fmt.Sprintf(`range %s is reversed; write the smaller value first, or split a wrap-around range into a list such as "%s-%d,%d-%s"`,
				base, a, spec.max, spec.min, b))
		}
	default:
		v, err := p.value(base, pos)
		if err != nil {
			return 0, err
		}
		lo, hi = v, v
		if hasStep {
			// "a/n" runs to the end of the field. 7 (Sunday) is beyond
			// day-of-week's starMax, so it stays a single value.
			hi = max(spec.starMax, v)
		}
	}

	var bits uint64
	for v := lo; v <= hi; v += step {
		bits |= 1 << v
	}
	return bits, nil
}

// value parses a number or a name and checks its range.
func (p fieldParser) value(text string, pos int) (int, error) {
	spec := p.spec
	if isDigits(text) {
		n, err := strconv.Atoi(text)
		if err != nil || n < spec.min || n > spec.max {
			reason := fmt.Sprintf("value %s is out of range %d-%d%s", text, spec.min, spec.max, spec.rangeNote)
			return 0, p.fail(pos, text, reason)
		}
		return n, nil
	}
	upper := strings.ToUpper(text)
	for i, name := range spec.names {
		if upper == name {
			return i + spec.nameBase, nil
		}
	}
	var reason string
	switch {
	case strings.ContainsAny(text, "*?"):
		reason = fmt.Sprintf(`invalid value %q; "*" and "?" must stand alone, optionally followed by a step such as "*/5"`, text)
	case spec.dayField && strings.ContainsAny(upper, "LW#"):
		reason = fmt.Sprintf(`invalid value %q; expected a number %d-%d%s (the Quartz extensions "L", "W" and "#" are not supported)`, text, spec.min, spec.max, spec.nameHint)
	default:
		reason = fmt.Sprintf("invalid value %q; expected a number %d-%d%s", text, spec.min, spec.max, spec.nameHint)
	}
	return 0, p.fail(pos, text, reason)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

package cron

import (
	"math"
	"math/bits"
	"time"
)

// Wall-clock times are handled as "pretend UTC" Unix seconds: the number
// of seconds from 1970-01-01 00:00:00 to the wall reading, ignoring zones.
// Within one zone segment, wall = instant + offset exactly, which turns
// all calendar arithmetic into plain integer arithmetic.

const (
	secondsPerDay = 86400

	// horizon is how far ahead Next searches: ten years, counting the
	// at most three leap days in any ten-year span.
	horizon = (10*365 + 3) * secondsPerDay

	// maxOffset bounds |UTC offset| for any zone in tzdata (the largest,
	// old local mean times, are under 16h). Every instant whose wall
	// reading is W lies in [W-maxOffset, W+maxOffset].
	maxOffset = 26 * 3600

	// unixLimit keeps the integer arithmetic far away from overflow; it
	// is over a billion years.
	unixLimit = 1 << 55
)

// Next returns the smallest fire instant strictly after after, in loc,
// following the daylight-saving rules in the package documentation. It
// returns the zero Time if the schedule does not fire within ten years.
// A nil loc means UTC. Fire instants are whole seconds; the result is
// expressed in loc.
func (s *Schedule) Next(after time.Time, loc *time.Location) time.Time {
	if loc == nil {
		loc = time.UTC
	}
	a := after.Unix() // floor: a fractional after is never a fire time itself
	if a < -unixLimit || a > unixLimit {
		return time.Time{}
	}
	var u int64
	var ok bool
	if s.wildcardHour {
		u, ok = s.nextElapsed(a, loc)
	} else {
		u, ok = s.nextFixed(a, loc)
	}
	if !ok {
		return time.Time{}
	}
	return time.Unix(u, 0).In(loc)
}

// nextElapsed implements wildcard-hour semantics: the first instant > a
// whose wall reading matches. Each zone segment has a constant offset, so
// searching a segment is a pure wall-clock search bounded by its end.
func (s *Schedule) nextElapsed(a int64, loc *time.Location) (int64, bool) {
	limit := a + horizon
	for u := a + 1; u <= limit; {
		off, _, end := segment(u, loc)
		last := min(end-1, limit)
		if w, ok := s.nextWall(u+off, last+off); ok {
			return w - off, true
		}
		if end == math.MaxInt64 {
			break
		}
		u = end
	}
	return 0, false
}

// nextFixed implements fixed-hour semantics: matching wall times are
// resolved to instants (see resolve) and the first resolved instant > a
// wins.
//
// The resolution r(W) is non-decreasing in W, and the wall reading of a
// itself resolves to an instant <= a (its earliest occurrence). So no wall
// time at or before a's own reading can produce an answer, and the search
// can start one second after it; no need to look hours back.
func (s *Schedule) nextFixed(a int64, loc *time.Location) (int64, bool) {
	off, _, _ := segment(a, loc)
	w := a + off + 1
	limit := w + horizon
	for {
		var ok bool
		if w, ok = s.nextWall(w, limit); !ok {
			return 0, false
		}
		inst, off, end := resolve(w, loc)
		if inst > a {
			return inst, true
		}
		// This happens only for wall times that also occur before a:
		// the first pass of a fall-back overlap when a is in the second
		// pass, or a gap whose end is <= a. Every wall time resolved in
		// the same segment up to a's instant is just as stale, so jump
		// past them instead of stepping through them one by one.
		w = max(w+1, min(end, a+1)+off)
	}
}

// resolve maps wall time w to the instant a fixed-hour schedule fires for
// it: the earliest instant whose wall reading is w, or, if w falls into a
// gap, the first instant after the gap. It also returns the offset and
// end of the zone segment that instant belongs to.
func resolve(w int64, loc *time.Location) (inst, off, end int64) {
	// Walk segments forward in time; the first one that contains w-off
	// holds the earliest occurrence. The first segment visited always has
	// start <= w-off (because |off| <= maxOffset), so finding w-off
	// before a later segment's start means w fell between the two.
	u := w - maxOffset
	for {
		o, start, e := segment(u, loc)
		c := w - o
		switch {
		case c < start:
			return start, o, e
		case c < e:
			return c, o, e
		}
		u = e
	}
}

// segment returns the UTC offset in force at instant u and the bounds
// [start, end) of the interval over which it stays in force. Open ends are
// math.MinInt64 / math.MaxInt64.
func segment(u int64, loc *time.Location) (off, start, end int64) {
	t := time.Unix(u, 0).In(loc)
	_, o := t.Zone()
	st, en := t.ZoneBounds()
	start, end = math.MinInt64, math.MaxInt64
	if !st.IsZero() {
		start = st.Unix()
	}
	if !en.IsZero() {
		end = en.Unix()
	}
	if end <= u {
		// Past a zone's last listed transition Go derives bounds from the
		// zone's TZ rule string, and (as of Go 1.26) ends the last
		// segment of a year 365 days after January 1: a day early in
		// leap years, so on December 31 (UTC) of a leap year the bounds
		// exclude u itself and the callers' loops would never advance.
		// With Go's own zoneinfo.zip or time/tzdata, which list no
		// transitions at all for recent years, that is every leap year
		// from 2024 on. In that branch no transition remains in the
		// year, so the offset really holds until the next UTC midnight.
		end = (floorDiv(u, secondsPerDay) + 1) * secondsPerDay
	}
	return int64(o), start, end
}

// nextWall returns the smallest matching wall time in [w, limit].
// Non-matching months, days, hours and minutes are skipped whole.
func (s *Schedule) nextWall(w, limit int64) (int64, bool) {
	for w <= limit {
		day := floorDiv(w, secondsPerDay)
		midnight := day * secondsPerDay
		sod := int(w - midnight)
		y, m, d := civilFromDays(day)

		if s.month&(1<<m) == 0 {
			nm := nextBit(s.month, m+1)
			if nm < 0 {
				y, nm = y+1, nextBit(s.month, 1)
			}
			w = daysFromCivil(y, nm, 1) * secondsPerDay
			continue
		}
		if !s.dayMatches(day, d) {
			w = midnight + secondsPerDay
			continue
		}

		h, mi, sec := sod/3600, sod/60%60, sod%60
		nh := nextBit(s.hour, h)
		switch {
		case nh < 0:
			w = midnight + secondsPerDay
			continue
		case nh != h:
			w = midnight + int64(nh)*3600
			continue
		}
		hourStart := midnight + int64(h)*3600
		nmin := nextBit(s.minute, mi)
		switch {
		case nmin < 0:
			w = hourStart + 3600
			continue
		case nmin != mi:
			w = hourStart + int64(nmin)*60
			continue
		}
		minuteStart := hourStart + int64(mi)*60
		ns := nextBit(s.second, sec)
		if ns < 0 {
			w = minuteStart + 60
			continue
		}
		r := minuteStart + int64(ns)
		return r, r <= limit
	}
	return 0, false
}

// dayMatches applies the Vixie cron day rule: OR when both day fields are
// restricted, AND otherwise.
func (s *Schedule) dayMatches(day int64, dom int) bool {
	domHit := s.dom&(1<<dom) != 0
	dowHit := s.dow&(1<<weekday(day)) != 0
	if !s.domStar && !s.dowStar {
		return domHit || dowHit
	}
	return domHit && dowHit
}

// nextBit returns the lowest set bit of mask at position >= from, or -1.
func nextBit(mask uint64, from int) int {
	if from >= 64 {
		return -1
	}
	m := mask >> from << from
	if m == 0 {
		return -1
	}
	return bits.TrailingZeros64(m)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// weekday returns 0 for Sunday; day 0 (1970-01-01) was a Thursday.
func weekday(day int64) int {
	return int(day + 4 - floorDiv(day+4, 7)*7)
}

// civilFromDays and daysFromCivil convert between days since 1970-01-01
// and proleptic Gregorian dates (Howard Hinnant's algorithms), avoiding
// time.Time allocations and zone lookups in the hot loop.
func civilFromDays(z int64) (y int64, m, d int) {
	z += 719468
	era := floorDiv(z, 146097)
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d = int(doy - (153*mp+2)/5 + 1)
	m = int(mp + 3)
	if m > 12 {
		m -= 12
	}
	y = yoe + era*400
	if m <= 2 {
		y++
	}
	return y, m, d
}

func daysFromCivil(y int64, m, d int) int64 {
	if m <= 2 {
		y--
	}
	era := floorDiv(y, 400)
	yoe := y - era*400
	mp := int64((m + 9) % 12)
	doy := (153*mp+2)/5 + int64(d) - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

package audience

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	pb "github.com/pushblaster/pushblaster"
)

// Row is one parsed recipient.
type Row struct {
	UserID, Token, Platform, Timezone, Locale string
	// Data holds every other column or field, kept as per-recipient
	// template data. Empty values are left out; nil when there are none.
	Data map[string]string
	// Line is the 1-based physical line number in the input.
	Line int64
}

// Limits bounds what a Parser reads and keeps. A zero field takes its
// default.
type Limits struct {
	// MaxLineBytes is the longest line, without its line ending; a longer
	// line is a bad row, skipped without being buffered (default 64 KiB).
	MaxLineBytes int
	// MaxBytes is how much input may be read; reading more fails the parse
	// (default 1 GiB).
	MaxBytes int64
	// BadExamples is how many bad rows are kept as examples (default 5; a
	// negative value keeps none).
	BadExamples int
	// SampleRows is how many of the first and of the last raw lines are
	// kept (default 3 each; a negative value keeps none).
	SampleRows int
}

// Parser defaults and bounds.
const (
	parserDefaultMaxLineBytes = 64 << 10
	parserDefaultMaxBytes     = 1 << 30
	parserDefaultBadExamples  = 5
	parserDefaultSampleRows   = 3
	// parserSampleBytes bounds a raw line kept for debugging.
	parserSampleBytes = 200
	// parserBufferSize is the read buffer; a longer line is read in pieces.
	parserBufferSize = 64 << 10
	// parserQuoteBytes bounds a value quoted in a reason.
	parserQuoteBytes = 64
	// parserMaxZones bounds the cache of time zone lookups, so that an
	// input full of distinct bogus zones cannot grow it without limit.
	parserMaxZones = 1024
)

// withDefaults returns l with every zero field set to its default.
func (l Limits) withDefaults() Limits {
	if l.MaxLineBytes <= 0 {
		l.MaxLineBytes = parserDefaultMaxLineBytes
	}
	l.MaxLineBytes = min(l.MaxLineBytes, math.MaxInt-2) // room for "\r\n" without overflow
	if l.MaxBytes <= 0 {
		l.MaxBytes = parserDefaultMaxBytes
	}
	switch {
	case l.BadExamples == 0:
		l.BadExamples = parserDefaultBadExamples
	case l.BadExamples < 0:
		l.BadExamples = 0
	}
	switch {
	case l.SampleRows == 0:
		l.SampleRows = parserDefaultSampleRows
	case l.SampleRows < 0:
		l.SampleRows = 0
	}
	return l
}

// BadRow is a row that was skipped, and why.
type BadRow struct {
	// Line is the 1-based physical line number.
	Line int64 `json:"line"`
	// Reason says what is wrong, naming the field when one is at fault.
	Reason string `json:"reason"`
	// Text is the raw line, cut to 200 bytes (valid UTF-8: an invalid or
	// NUL byte shows as U+FFFD).
	Text string `json:"text"`
}

// ParseStats describes what a Parser has read so far.
type ParseStats struct {
	// Format is "csv" or "jsonl" (auto-detected); "" before the first
	// non-blank line.
	Format string `json:"format"`
	// Lines counts physical lines read: the header, blank and bad lines
	// included.
	Lines int64 `json:"lines"`
	// Rows counts good rows returned by Next.
	Rows int64 `json:"rows"`
	// BadRows counts rows skipped as malformed.
	BadRows int64 `json:"bad_rows"`
	// Bytes counts bytes consumed from the input.
	Bytes int64 `json:"bytes"`
	// BadExamples are the first bad rows (Limits.BadExamples of them).
	BadExamples []BadRow `json:"bad_examples,omitempty"`
	// FirstLines and LastLines are raw non-blank lines (the header
	// included), cut to 200 bytes, for debugging artefacts: the first
	// Limits.SampleRows lines, and the last ones after those (a line is
	// never in both).
	FirstLines []string `json:"first_lines,omitempty"`
	LastLines  []string `json:"last_lines,omitempty"`
}

// Parser streams recipients out of CSV (with a header line) or JSON Lines,
// one recipient per physical line, in bounded memory. The format is
// detected from the first non-blank line: '{' means JSON Lines. Malformed
// rows are counted, kept as examples and skipped; only problems with the
// whole input (a bad CSV header, too much input, a failing reader) stop it.
//
// Next must be called from one goroutine at a time; Stats may be called
// from any goroutine at any time.
type Parser struct {
	br  *bufio.Reader
	lim Limits

	// buf is the current line: at most keep bytes of it are kept.
	buf  []byte
	keep int
	// lineNo is the number of the current line.
	lineNo int64
	// consumed counts bytes read, for the MaxBytes check.
	consumed int64
	// started is set once a possible byte order mark has been skipped.
	started bool
	// format is the detected format; "" until the first non-blank line.
	format string
	// err is returned by every call once the input is done or failed.
	err error

	// The CSV header: the name of each column and which Row field it fills.
	header   []string
	fields   []parserField
	dataCols int
	// csvr parses one line at a time, fed by csvSrc.
	csvr   *csv.Reader
	csvSrc *parserLineSource

	// zones caches time zone checks: "" for a valid zone, else the reason.
	zones map[string]string

	mu sync.Mutex // guards st, last and samples
	st ParseStats
	// last is a ring of the most recent raw lines after the first ones.
	last    [][]byte
	samples int64 // non-blank lines sampled so far
}

// parserField says which Row field a CSV column or JSON field fills.
type parserField uint8

// Row fields.
const (
	parserFieldData parserField = iota
	parserFieldUserID
	parserFieldToken
	parserFieldPlatform
	parserFieldTimezone
	parserFieldLocale
)

// parserFieldOf maps a column or field name to the Row field it fills.
// assign puts a value of column (or key) name, which is field f, into the
// row: a well-known field, or per-recipient data (empty values omitted).
func (r *Row) assign(f parserField, name, v string, dataHint int) {
	switch f {
	case parserFieldUserID:
		r.UserID = v
	case parserFieldToken:
		r.Token = v
	case parserFieldPlatform:
		r.Platform = v
	case parserFieldTimezone:
		r.Timezone = v
	case parserFieldLocale:
		r.Locale = v
	default:
		if v == "" {
			return
		}
		if r.Data == nil {
			r.Data = make(map[string]string, dataHint)
		}
		r.Data[name] = v
	}
}

func parserFieldOf(name string) parserField {
	switch name {
	case "user_id":
		return parserFieldUserID
	case "token":
		return parserFieldToken
	case "platform":
		return parserFieldPlatform
	case "timezone":
		return parserFieldTimezone
	case "locale":
		return parserFieldLocale
	}
	return parserFieldData
}

// Format names.
const (
	parserFormatCSV   = "csv"
	parserFormatJSONL = "jsonl"
)

// parserBOM is the UTF-8 byte order mark, skipped at the start of the input.
var parserBOM = []byte{0xEF, 0xBB, 0xBF}

// NewParser returns a Parser reading r. It reads at most lim.MaxBytes+1
// bytes from r, so a runaway producer is not drained to its end.
func NewParser(r io.Reader, lim Limits) *Parser {
	lim = lim.withDefaults()
	if lim.MaxBytes < math.MaxInt64 {
		r = io.LimitReader(r, lim.MaxBytes+1)
	}
	return &Parser{
		br:    bufio.NewReaderSize(r, parserBufferSize),
		lim:   lim,
		keep:  max(lim.MaxLineBytes+2, parserSampleBytes), // +2: room for "\r\n"
		zones: map[string]string{},
	}
}

// Next returns the next good row, and io.EOF after the last one. Bad rows
// are counted, kept as examples (see Stats) and skipped. A *pb.Error is
// returned for a problem with the whole input: a CSV header that is
// missing user_id, names a column twice or cannot be parsed; more input
// than Limits.MaxBytes; a failing reader. Once Next has returned an error
// it returns the same error again.
func (p *Parser) Next() (Row, error) {
	for p.err == nil {
		line, long, err := p.readLine()
		if err != nil {
			p.err = err
			break
		}
		if !long && len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		p.sample(line)
		if p.format == "" {
			p.detect(line)
			if p.format == parserFormatCSV {
				if err := p.readHeader(line, long); err != nil {
					p.err = err
					break
				}
				continue
			}
		}
		var row Row
		var reason string
		switch {
		case long:
			reason = fmt.Sprintf("line is longer than %d bytes", p.lim.MaxLineBytes)
		case p.format == parserFormatCSV:
			row, reason = p.parseCSV(line)
		default:
			row, reason = p.parseJSON(line)
		}
		if reason == "" {
			reason = p.check(&row)
		}
		if reason != "" {
			p.bad(reason, line)
			continue
		}
		row.Line = p.lineNo
		p.mu.Lock()
		p.st.Rows++
		p.mu.Unlock()
		return row, nil
	}
	return Row{}, p.err
}

// Stats returns what the parser has read so far. It is safe to call from
// any goroutine, also while Next runs; the slices are copies.
func (p *Parser) Stats() ParseStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.st
	st.BadExamples = append([]BadRow(nil), p.st.BadExamples...)
	st.FirstLines = append([]string(nil), p.st.FirstLines...)
	if n := len(p.last); n > 0 {
		st.LastLines = make([]string, 0, n)
		// The ring's oldest entry is the one the next line overwrites.
		start := int((p.samples - int64(p.lim.SampleRows)) % int64(p.lim.SampleRows))
		if n < p.lim.SampleRows {
			start = 0
		}
		for i := range n {
			st.LastLines = append(st.LastLines, parserSample(p.last[(start+i)%n]))
		}
	}
	return st
}

// readLine reads the next physical line without its line ending. A line
// longer than MaxLineBytes is read to its end but only its first bytes are
// kept, and long is true. It returns io.EOF at the end of the input.
func (p *Parser) readLine() (line []byte, long bool, err error) {
	if !p.started {
		p.started = true
		b, err := p.br.Peek(len(parserBOM))
		if err != nil && err != io.EOF {
			return nil, false, p.readError(err)
		}
		if bytes.Equal(b, parserBOM) {
			_, _ = p.br.Discard(len(parserBOM))
			if err := p.consume(len(parserBOM)); err != nil {
				return nil, false, err
			}
		}
	}
	p.buf = p.buf[:0]
	var n int           // bytes of this line, its line ending included
	var last, prev byte // the last two bytes read
	for {
		chunk, err := p.br.ReadSlice('\n')
		if len(chunk) > 0 {
			n += len(chunk)
			if len(chunk) >= 2 {
				prev = chunk[len(chunk)-2]
			} else {
				prev = last
			}
			last = chunk[len(chunk)-1]
			if room := p.keep - len(p.buf); room > 0 {
				p.buf = append(p.buf, chunk[:min(room, len(chunk))]...)
			}
			if err := p.consume(len(chunk)); err != nil {
				return nil, false, err
			}
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF:
			if n == 0 {
				return nil, false, io.EOF
			}
		case err != nil:
			return nil, false, p.readError(err)
		}
		break
	}
	p.lineNo++
	p.mu.Lock()
	p.st.Lines++
	p.mu.Unlock()
	content := n
	if last == '\n' {
		content--
		last = prev
	}
	if content > 0 && last == '\r' {
		content--
	}
	return p.buf[:min(len(p.buf), content)], content > p.lim.MaxLineBytes, nil
}

// consume records that n more bytes were read and fails once more than
// MaxBytes were.
func (p *Parser) consume(n int) error {
	p.consumed += int64(n)
	p.mu.Lock()
	p.st.Bytes = p.consumed
	p.mu.Unlock()
	if p.consumed > p.lim.MaxBytes {
		return pb.Errorf(pb.KindValidation, "output is larger than %d bytes; raise the limit or emit fewer rows", p.lim.MaxBytes).
			With("limit", strconv.FormatInt(p.lim.MaxBytes, 10)).
			With("line", strconv.FormatInt(p.lineNo+1, 10))
	}
	return nil
}

// readError wraps a failure of the underlying reader; an *pb.Error keeps
// its kind, context errors become abort or timeout.
func (p *Parser) readError(err error) error {
	return pb.WrapError(pb.AsError(err).Kind, err, "reading the audience at line %d", p.lineNo+1)
}

// sample keeps line among the first or the last raw lines.
func (p *Parser) sample(line []byte) {
	k := p.lim.SampleRows
	if k == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.samples++
	if p.samples <= int64(k) {
		p.st.FirstLines = append(p.st.FirstLines, parserSample(line))
		return
	}
	line = line[:min(len(line), parserSampleBytes)]
	i := int((p.samples - int64(k) - 1) % int64(k))
	if i == len(p.last) {
		p.last = append(p.last, make([]byte, 0, parserSampleBytes))
	}
	p.last[i] = append(p.last[i][:0], line...)
}

// bad counts a bad row and keeps it as an example if there is room.
func (p *Parser) bad(reason string, line []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.BadRows++
	if len(p.st.BadExamples) < p.lim.BadExamples {
		p.st.BadExamples = append(p.st.BadExamples, BadRow{Line: p.lineNo, Reason: reason, Text: parserSample(line)})
	}
}

// detect sets the format from the first non-blank line.
func (p *Parser) detect(line []byte) {
	p.format = parserFormatCSV
	if t := bytes.TrimLeft(line, " \t\v\f\r"); len(t) > 0 && t[0] == '{' {
		p.format = parserFormatJSONL
	}
	p.mu.Lock()
	p.st.Format = p.format
	p.mu.Unlock()
}

// headerError is a whole-input error about the CSV header.
func (p *Parser) headerError(field, fieldMsg, format string, args ...any) error {
	e := pb.Errorf(pb.KindValidation, format, args...).With("line", strconv.FormatInt(p.lineNo, 10))
	if field != "" {
		e.Fields = []pb.FieldError{{Field: field, Message: fieldMsg}}
	}
	return e
}

// readHeader parses the CSV header line and sets up the CSV reader.
func (p *Parser) readHeader(line []byte, long bool) error {
	if long {
		return p.headerError("", "", "the CSV header on line %d is longer than %d bytes", p.lineNo, p.lim.MaxLineBytes)
	}
	if reason := parserTextProblem(line); reason != "" {
		return p.headerError("", "", "the CSV header on line %d is invalid: %s", p.lineNo, reason)
	}
	p.csvSrc = &parserLineSource{}
	p.csvr = csv.NewReader(p.csvSrc)
	p.csvr.FieldsPerRecord = -1
	p.csvr.ReuseRecord = true
	p.csvSrc.set(line)
	rec, err := p.csvr.Read()
	if err != nil {
		return p.headerError("", "", "the CSV header on line %d is not valid CSV: %s", p.lineNo, parserCSVReason(err, line))
	}
	quoted := strconv.Quote(parserSample(line))
	seen := make(map[string]int, len(rec))
	p.header = make([]string, len(rec))
	p.fields = make([]parserField, len(rec))
	for i, h := range rec {
		name := strings.ToLower(strings.TrimSpace(h))
		if name == "" {
			return p.headerError("header", fmt.Sprintf("column %d has no name", i+1),
				"column %d of the CSV header has no name (header: %s)", i+1, quoted)
		}
		if j, dup := seen[name]; dup {
			return p.headerError(name, fmt.Sprintf("appears twice in the CSV header (columns %d and %d)", j+1, i+1),
				"the CSV header names column %q twice (columns %d and %d; header: %s)", name, j+1, i+1, quoted)
		}
		seen[name] = i
		p.header[i] = name
		p.fields[i] = parserFieldOf(name)
		if p.fields[i] == parserFieldData {
			p.dataCols++
		}
	}
	if _, ok := seen["user_id"]; !ok {
		return p.headerError("user_id", "is missing from the CSV header "+quoted,
			"the CSV header has no user_id column (header: %s)", quoted)
	}
	return nil
}

// parseCSV parses one CSV data line. It returns the row, or why it is bad.
func (p *Parser) parseCSV(line []byte) (Row, string) {
	if reason := parserTextProblem(line); reason != "" {
		return Row{}, reason
	}
	p.csvSrc.set(line)
	rec, err := p.csvr.Read()
	if err != nil {
		return Row{}, parserCSVReason(err, line)
	}
	if len(rec) != len(p.fields) {
		unit := "fields"
		if len(rec) == 1 {
			unit = "field"
		}
		return Row{}, fmt.Sprintf("%d %s, the header has %d", len(rec), unit, len(p.fields))
	}
	var r Row
	for i, v := range rec {
		v = strings.TrimSpace(v)
		r.assign(p.fields[i], p.header[i], v, p.dataCols)
	}
	if r.UserID == "" {
		return r, "user_id is empty"
	}
	return r, ""
}

// parseJSON parses one JSON Lines line. It returns the row, or why it is
// bad. When several fields are bad, the first by name is reported.
func (p *Parser) parseJSON(line []byte) (Row, string) {
	if reason := parserTextProblem(line); reason != "" {
		return Row{}, reason
	}
	if t := bytes.TrimLeft(line, " \t\v\f\r"); len(t) == 0 || t[0] != '{' {
		var v json.RawMessage
		if err := json.Unmarshal(line, &v); err != nil {
			return Row{}, "not a JSON object: " + err.Error()
		}
		return Row{}, "not a JSON object but " + parserJSONKind(t[0])
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil {
		return Row{}, "not a JSON object: " + err.Error()
	}
	var r Row
	var badKey, badReason string
	flag := func(key, reason string) {
		if badReason == "" || key < badKey {
			badKey, badReason = key, reason
		}
	}
	hasUserID := false
	for k, raw := range obj {
		v, kind := parserJSONValue(raw)
		switch kind {
		case 'n':
			continue
		case '[', '{':
			flag(k, fmt.Sprintf("field %s is %s; values must be strings, numbers or booleans", parserQuote(k), parserJSONKind(kind)))
			continue
		}
		v = strings.TrimSpace(v)
		if strings.IndexByte(v, 0) >= 0 {
			flag(k, fmt.Sprintf("field %s contains a NUL character", parserQuote(k)))
			continue
		}
		switch parserFieldOf(k) {
		case parserFieldUserID:
			if kind == 't' {
				flag(k, "user_id is a boolean; use a string or a number")
				continue
			}
			hasUserID = true
			r.UserID = v
		default:
			r.assign(parserFieldOf(k), k, v, len(obj))
		}
	}
	switch {
	case badReason != "":
		return r, badReason
	case !hasUserID:
		return r, "user_id is missing"
	case r.UserID == "":
		return r, "user_id is empty"
	}
	return r, ""
}

// parserJSONValue renders a JSON value as text and says what it is by its
// first byte: '"' string, '0' number, 't' boolean, 'n' null, '[' array,
// '{' object. Numbers keep their JSON text, so large integers keep every
// digit.
func parserJSONValue(raw json.RawMessage) (string, byte) {
	if len(raw) == 0 {
		return "", 'n'
	}
	switch c := raw[0]; c {
	case '"':
		if bytes.IndexByte(raw, '\\') < 0 {
			return string(raw[1 : len(raw)-1]), '"'
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			// Unreachable: the whole line was valid JSON.
			return string(raw), '"'
		}
		return s, '"'
	case 't', 'f':
		if c == 't' {
			return "true", 't'
		}
		return "false", 't'
	case 'n', '[', '{':
		return "", c
	default:
		return string(raw), '0'
	}
}

// parserJSONKind names the JSON value that starts with c.
func parserJSONKind(c byte) string {
	switch c {
	case '[':
		return "an array"
	case '{':
		return "an object"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// check validates and normalises the fields every recipient shares. It
// returns why the row is bad, or "".
func (p *Parser) check(r *Row) string {
	if r.Platform != "" {
		switch strings.ToLower(r.Platform) {
		case "android":
			r.Platform = "android"
		case "ios":
			r.Platform = "ios"
		case "web":
			r.Platform = "web"
		default:
			return fmt.Sprintf("platform is %s; use android, ios or web", parserQuote(r.Platform))
		}
	}
	if r.Timezone != "" {
		if reason := p.zoneProblem(r.Timezone); reason != "" {
			return reason
		}
	}
	return ""
}

// zoneProblem says why name is not a usable time zone, or "". Answers are
// cached: loading a zone reads a file.
func (p *Parser) zoneProblem(name string) string {
	if reason, ok := p.zones[name]; ok {
		return reason
	}
	reason := ""
	if _, err := pb.LoadLocation(name); err != nil {
		reason = fmt.Sprintf(`timezone %s is not a known IANA time zone; use a name such as "Europe/Berlin" or "UTC"`, parserQuote(name))
		if name == "Local" {
			reason = `timezone "Local" depends on the server's configuration; use an IANA name such as "Europe/Berlin" or "UTC"`
		}
	}
	if len(p.zones) < parserMaxZones && len(name) <= parserQuoteBytes {
		p.zones[name] = reason
	}
	return reason
}

// parserTextProblem says why a line cannot be a row whatever its format:
// invalid UTF-8 or a NUL byte (neither survives storage as text).
func parserTextProblem(line []byte) string {
	if !utf8.Valid(line) {
		i := 0
		for i < len(line) {
			r, size := utf8.DecodeRune(line[i:])
			if r == utf8.RuneError && size <= 1 {
				break
			}
			i += size
		}
		return fmt.Sprintf("line is not valid UTF-8 (byte %d)", i+1)
	}
	if i := bytes.IndexByte(line, 0); i >= 0 {
		return fmt.Sprintf("line contains a NUL byte (byte %d)", i+1)
	}
	return ""
}

// parserCSVReason explains a CSV parse error of one line.
func parserCSVReason(err error, line []byte) string {
	var pe *csv.ParseError
	if !errors.As(err, &pe) {
		return "invalid CSV: " + err.Error()
	}
	switch {
	case errors.Is(pe.Err, csv.ErrQuote) && parserQuoteOpen(line):
		return "a quoted field is not closed on this line (a newline inside quotes is not supported: one recipient per line)"
	case errors.Is(pe.Err, csv.ErrQuote):
		return fmt.Sprintf("invalid CSV: a quoted field has text after its closing quote (byte %d); double a quote inside quotes (\"\")", pe.Column)
	case errors.Is(pe.Err, csv.ErrBareQuote):
		return fmt.Sprintf("invalid CSV: a quote in an unquoted field (byte %d); quote the field and double the quote (\"\")", pe.Column)
	}
	return fmt.Sprintf("invalid CSV: %v (byte %d)", pe.Err, pe.Column)
}

// parserQuoteOpen reports whether a quoted field of line is still open at
// its end.
func parserQuoteOpen(line []byte) bool {
	inQuotes, fieldStart := false, true
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuotes && c == '"':
			if i+1 < len(line) && line[i+1] == '"' {
				i++
			} else {
				inQuotes = false
			}
		case !inQuotes && c == '"' && fieldStart:
			inQuotes = true
		}
		fieldStart = !inQuotes && c == ','
	}
	return inQuotes
}

// parserSample returns at most 200 bytes of the start of line as valid
// UTF-8, with an invalid or NUL byte shown as U+FFFD, so that it can be
// stored and shown anywhere. A character cut at the end is dropped.
func parserSample(line []byte) string {
	line = line[:min(len(line), parserSampleBytes)]
	if utf8.Valid(line) && bytes.IndexByte(line, 0) < 0 {
		return string(line)
	}
	out := make([]byte, 0, parserSampleBytes)
	for i := 0; i < len(line); {
		r, size := utf8.DecodeRune(line[i:])
		if r == utf8.RuneError && size <= 1 && !utf8.FullRune(line[i:]) {
			break // a character cut at the end
		}
		if r == 0 {
			r = utf8.RuneError
		}
		if len(out)+utf8.RuneLen(r) > parserSampleBytes {
			break
		}
		out = utf8.AppendRune(out, r)
		i += size
	}
	return string(out)
}

// parserQuote quotes s for a reason, cut to 64 bytes (marked with "…").
func parserQuote(s string) string {
	if len(s) <= parserQuoteBytes {
		return strconv.Quote(s)
	}
	cut := parserQuoteBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
}

// parserLineSource feeds one line, and a newline, to the CSV reader; then
// it reports io.EOF until the next line is set.
type parserLineSource struct {
	line []byte
	nl   bool
}

// set makes line the next input.
func (s *parserLineSource) set(line []byte) { s.line, s.nl = line, true }

// Read implements io.Reader.
func (s *parserLineSource) Read(b []byte) (int, error) {
	n := copy(b, s.line)
	s.line = s.line[n:]
	if len(s.line) == 0 && s.nl && n < len(b) {
		b[n] = '\n'
		n++
		s.nl = false
	}
	if n == 0 && len(b) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

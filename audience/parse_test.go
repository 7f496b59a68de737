package audience

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
	_ "time/tzdata" // zone checks must not depend on the host's zoneinfo
	"unicode/utf8"

	pb "github.com/pushblaster/pushblaster"
)

// parserParseAll reads every row of in; err is what ended the parse (io.EOF when
// the input was read to its end).
func parserParseAll(t testing.TB, r io.Reader, lim Limits) ([]Row, ParseStats, error) {
	t.Helper()
	p := NewParser(r, lim)
	var rows []Row
	for {
		row, err := p.Next()
		if err != nil {
			return rows, p.Stats(), err
		}
		rows = append(rows, row)
	}
}

// parserMustParse is parserParseAll for an input that must parse to its end.
func parserMustParse(t *testing.T, in string, lim Limits) ([]Row, ParseStats) {
	t.Helper()
	rows, st, err := parserParseAll(t, strings.NewReader(in), lim)
	if err != io.EOF {
		t.Fatalf("Next: got error %v, want io.EOF", err)
	}
	return rows, st
}

const parserTestBOM = "\xEF\xBB\xBF"

func TestParseCSV(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		in        string
		want      []Row
		wantLines int64
	}{
		{
			name: "every field and extra columns into data",
			in: "user_id,token,platform,timezone,locale,first_name,plan\n" +
				"u1,tok1,iOS,Europe/Berlin,de-DE,Anna,gold\n" +
				"u2,,,,,,\n",
			want: []Row{
				{UserID: "u1", Token: "tok1", Platform: "ios", Timezone: "Europe/Berlin", Locale: "de-DE",
					Data: map[string]string{"first_name": "Anna", "plan": "gold"}, Line: 2},
				{UserID: "u2", Line: 3},
			},
			wantLines: 3,
		},
		{
			name:      "BOM, CRLF, blank lines, header case and spaces",
			in:        parserTestBOM + "\r\n\n User_ID , Name \r\nu1,Ann\r\n\r\n  \nu2,Bob\r\n",
			want:      []Row{{UserID: "u1", Data: map[string]string{"name": "Ann"}, Line: 4}, {UserID: "u2", Data: map[string]string{"name": "Bob"}, Line: 7}},
			wantLines: 7,
		},
		{
			name: "quoted commas and quotes",
			in:   "user_id,greeting\nu1,\"Hello, world\"\n\"u,2\",\"say \"\"hi\"\"\"\n",
			want: []Row{
				{UserID: "u1", Data: map[string]string{"greeting": "Hello, world"}, Line: 2},
				{UserID: "u,2", Data: map[string]string{"greeting": `say "hi"`}, Line: 3},
			},
			wantLines: 3,
		},
		{
			name:      "fields trimmed, empty data omitted, last line without newline",
			in:        "user_id,token,a,b\n  u1  ,  t1 ,  , x \nu2,t2,,",
			want:      []Row{{UserID: "u1", Token: "t1", Data: map[string]string{"b": "x"}, Line: 2}, {UserID: "u2", Token: "t2", Line: 3}},
			wantLines: 3,
		},
		{
			name:      "columns in any order",
			in:        "locale,Platform,USER_ID\nfr,Web,42\n",
			want:      []Row{{UserID: "42", Platform: "web", Locale: "fr", Line: 2}},
			wantLines: 2,
		},
		{
			name:      "a stray carriage return in a line is data",
			in:        "user_id,note\nu1,a\rb\r\n",
			want:      []Row{{UserID: "u1", Data: map[string]string{"note": "a\rb"}, Line: 2}},
			wantLines: 2,
		},
		{name: "header only", in: "user_id,token\n", wantLines: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rows, st := parserMustParse(t, tt.in, Limits{})
			if !reflect.DeepEqual(rows, tt.want) {
				t.Errorf("rows:\n got %#v\nwant %#v", rows, tt.want)
			}
			want := ParseStats{Format: "csv", Lines: tt.wantLines, Rows: int64(len(tt.want)), Bytes: int64(len(tt.in))}
			if st.Format != want.Format || st.Lines != want.Lines || st.Rows != want.Rows || st.BadRows != 0 || st.Bytes != want.Bytes {
				t.Errorf("stats: got %+v, want %+v", st, want)
			}
		})
	}
}

func TestParseJSONL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		in        string
		want      []Row
		wantLines int64
	}{
		{
			name: "every field, scalars into data",
			in: `{"user_id":"u1","token":"tok","platform":"Android","timezone":"America/New_York","locale":"en-US",` +
				`"score":12.5,"vip":true,"opt_in":false,"nick":null,"name":" Zoë ","empty":""}` + "\n",
			want: []Row{{UserID: "u1", Token: "tok", Platform: "android", Timezone: "America/New_York", Locale: "en-US",
				Data: map[string]string{"score": "12.5", "vip": "true", "opt_in": "false", "name": "Zoë"}, Line: 1}},
			wantLines: 1,
		},
		{
			name: "numeric user_id keeps every digit",
			in: `{"user_id":1234567890123456789}` + "\n" +
				`{"user_id":12345678901234567890,"n":1e3,"neg":-0.5,"big":9007199254740993}` + "\n",
			want: []Row{
				{UserID: "1234567890123456789", Line: 1},
				{UserID: "12345678901234567890", Data: map[string]string{"n": "1e3", "neg": "-0.5", "big": "9007199254740993"}, Line: 2},
			},
			wantLines: 2,
		},
		{
			name:      "escapes",
			in:        `{"user_id":"a\"b\u00e9","msg":"line\nbreak"}`,
			want:      []Row{{UserID: `a"bé`, Data: map[string]string{"msg": "line\nbreak"}, Line: 1}},
			wantLines: 1,
		},
		{
			name:      "BOM, CRLF, blank lines, surrounding spaces",
			in:        parserTestBOM + "\r\n" + `  {"user_id":"u1"}  ` + "\r\n\r\n" + `{"user_id":" u2 ","platform":"WEB"}`,
			want:      []Row{{UserID: "u1", Line: 2}, {UserID: "u2", Platform: "web", Line: 4}},
			wantLines: 4,
		},
		{
			name:      "keys are case-sensitive",
			in:        `{"user_id":"u1","Token":"x"}`,
			want:      []Row{{UserID: "u1", Data: map[string]string{"Token": "x"}, Line: 1}},
			wantLines: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rows, st := parserMustParse(t, tt.in, Limits{})
			if !reflect.DeepEqual(rows, tt.want) {
				t.Errorf("rows:\n got %#v\nwant %#v", rows, tt.want)
			}
			if st.Format != "jsonl" || st.Lines != tt.wantLines || st.Rows != int64(len(tt.want)) || st.BadRows != 0 || st.Bytes != int64(len(tt.in)) {
				t.Errorf("stats: got %+v; want format jsonl, %d lines, %d rows, 0 bad, %d bytes",
					st, tt.wantLines, len(tt.want), len(tt.in))
			}
		})
	}
}

func TestParserEmptyInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		in        string
		wantLines int64
	}{
		{"nothing", "", 0},
		{"BOM only", parserTestBOM, 0},
		{"blank lines", "\n \r\n\t\n", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rows, st := parserMustParse(t, tt.in, Limits{})
			want := ParseStats{Lines: tt.wantLines, Bytes: int64(len(tt.in))}
			if len(rows) != 0 || !reflect.DeepEqual(st, want) {
				t.Errorf("got rows %v, stats %+v; want none, %+v", rows, st, want)
			}
		})
	}
}

func TestParserBadRows(t *testing.T) {
	t.Parallel()
	const tzHint = `is not a known IANA time zone; use a name such as "Europe/Berlin" or "UTC"`
	const scalars = "; values must be strings, numbers or booleans"
	tests := []struct {
		name    string
		lim     Limits
		in      string
		wantIDs []string // good rows, in order
		wantBad []BadRow
	}{
		{
			name:    "csv field counts",
			in:      "user_id,a,b,c\nu1,1,2,3,4\nu2\nu3,1,2,3\n",
			wantIDs: []string{"u3"},
			wantBad: []BadRow{
				{Line: 2, Reason: "5 fields, the header has 4", Text: "u1,1,2,3,4"},
				{Line: 3, Reason: "1 field, the header has 4", Text: "u2"},
			},
		},
		{
			name:    "csv user_id, platform, timezone",
			in:      "user_id,platform,timezone\n ,ios,\nu2,BlackBerry,\nu3,,Mars/Olympus\nu4,,Local\nu5,IOS,Asia/Tokyo\n",
			wantIDs: []string{"u5"},
			wantBad: []BadRow{
				{Line: 2, Reason: "user_id is empty", Text: " ,ios,"},
				{Line: 3, Reason: `platform is "BlackBerry"; use android, ios or web`, Text: "u2,BlackBerry,"},
				{Line: 4, Reason: `timezone "Mars/Olympus" ` + tzHint, Text: "u3,,Mars/Olympus"},
				{Line: 5, Reason: `timezone "Local" depends on the server's configuration; use an IANA name such as "Europe/Berlin" or "UTC"`, Text: "u4,,Local"},
			},
		},
		{
			name:    "csv quoting",
			in:      "user_id,note\nu1,\"unclosed\nu2,\"a\"b\nu3,a\"b\n\"u4\",\"fine\"\n",
			wantIDs: []string{"u4"},
			wantBad: []BadRow{
				{Line: 2, Reason: "a quoted field is not closed on this line (a newline inside quotes is not supported: one recipient per line)", Text: `u1,"unclosed`},
				{Line: 3, Reason: `invalid CSV: a quoted field has text after its closing quote (byte 6); double a quote inside quotes ("")`, Text: `u2,"a"b`},
				{Line: 4, Reason: `invalid CSV: a quote in an unquoted field (byte 5); quote the field and double the quote ("")`, Text: `u3,a"b`},
			},
		},
		{
			name:    "csv invalid UTF-8 and NUL",
			in:      "user_id,note\nu1,\xff\nu2,a\x00b\nu3,ok\n",
			wantIDs: []string{"u3"},
			wantBad: []BadRow{
				{Line: 2, Reason: "line is not valid UTF-8 (byte 4)", Text: "u1,\uFFFD"},
				{Line: 3, Reason: "line contains a NUL byte (byte 5)", Text: "u2,a\uFFFDb"},
			},
		},
		{
			name:    "long lines",
			lim:     Limits{MaxLineBytes: 10},
			in:      "user_id,x\nu1,456789AB\nu2,4567890\r\nu3,4567890\nu4,45678901",
			wantIDs: []string{"u2", "u3"},
			wantBad: []BadRow{
				{Line: 2, Reason: "line is longer than 10 bytes", Text: "u1,456789AB"},
				{Line: 5, Reason: "line is longer than 10 bytes", Text: "u4,45678901"},
			},
		},
		{
			name: "jsonl lines that are not objects",
			in: `{"user_id":"u0"}` + "\n[1,2]\n\"x\"\n" + `{"user_id":` + "\n" +
				`{"user_id":"u1"} x` + "\nuser_id,token\n",
			wantIDs: []string{"u0"},
			wantBad: []BadRow{
				{Line: 2, Reason: "not a JSON object but an array", Text: "[1,2]"},
				{Line: 3, Reason: "not a JSON object but a string", Text: `"x"`},
				{Line: 4, Reason: "not a JSON object: unexpected end of JSON input", Text: `{"user_id":`},
				{Line: 5, Reason: "not a JSON object: invalid character 'x' after top-level value", Text: `{"user_id":"u1"} x`},
				{Line: 6, Reason: "not a JSON object: invalid character 'u' looking for beginning of value", Text: "user_id,token"},
			},
		},
		{
			name: "jsonl field values",
			in: `{"user_id":"u1","tags":["a"]}` + "\n" +
				`{"user_id":"u2","meta":{"a":1}}` + "\n" +
				`{"z":[1],"a":{}}` + "\n" +
				`{"user_id":"u4","name":"a\u0000b"}` + "\n" +
				`{"user_id":"u5","platform":"Symbian"}` + "\n" +
				`{"user_id":"u6","platform":"iOS","timezone":"Asia/Kolkata"}` + "\n",
			wantIDs: []string{"u6"},
			wantBad: []BadRow{
				{Line: 1, Reason: `field "tags" is an array` + scalars, Text: `{"user_id":"u1","tags":["a"]}`},
				{Line: 2, Reason: `field "meta" is an object` + scalars, Text: `{"user_id":"u2","meta":{"a":1}}`},
				{Line: 3, Reason: `field "a" is an object` + scalars, Text: `{"z":[1],"a":{}}`},
				{Line: 4, Reason: `field "name" contains a NUL character`, Text: `{"user_id":"u4","name":"a\u0000b"}`},
				{Line: 5, Reason: `platform is "Symbian"; use android, ios or web`, Text: `{"user_id":"u5","platform":"Symbian"}`},
			},
		},
		{
			name: "jsonl user_id",
			in: `{"token":"t"}` + "\n" + `{"user_id":null}` + "\n" + `{"user_id":"  "}` + "\n" +
				`{"user_id":true}` + "\n" + `{"user_id":"u5","timezone":"Europe/Nowhere"}` + "\n" + `{"user_id":7}`,
			wantIDs: []string{"7"},
			wantBad: []BadRow{
				{Line: 1, Reason: "user_id is missing", Text: `{"token":"t"}`},
				{Line: 2, Reason: "user_id is missing", Text: `{"user_id":null}`},
				{Line: 3, Reason: "user_id is empty", Text: `{"user_id":"  "}`},
				{Line: 4, Reason: "user_id is a boolean; use a string or a number", Text: `{"user_id":true}`},
				{Line: 5, Reason: `timezone "Europe/Nowhere" ` + tzHint, Text: `{"user_id":"u5","timezone":"Europe/Nowhere"}`},
			},
		},
		{
			name:    "a long value is cut in the reason",
			in:      `{"user_id":"u1","platform":"` + strings.Repeat("x", 70) + `"}`,
			wantBad: []BadRow{{Line: 1, Reason: `platform is "` + strings.Repeat("x", 64) + `"…; use android, ios or web`, Text: `{"user_id":"u1","platform":"` + strings.Repeat("x", 70) + `"}`}},
		},
		{
			name:    "the example text is cut to 200 bytes",
			in:      "user_id\n" + strings.Repeat("é", 150) + ",x\n",
			wantBad: []BadRow{{Line: 2, Reason: "2 fields, the header has 1", Text: strings.Repeat("é", 100)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rows, st := parserMustParse(t, tt.in, tt.lim)
			var ids []string
			for _, r := range rows {
				ids = append(ids, r.UserID)
			}
			if !reflect.DeepEqual(ids, tt.wantIDs) {
				t.Errorf("good rows: got %q, want %q", ids, tt.wantIDs)
			}
			if !reflect.DeepEqual(st.BadExamples, tt.wantBad) {
				t.Errorf("bad examples:\n got %#v\nwant %#v", st.BadExamples, tt.wantBad)
			}
			if st.BadRows != int64(len(tt.wantBad)) || st.Rows != int64(len(tt.wantIDs)) {
				t.Errorf("stats: got %d rows, %d bad; want %d, %d", st.Rows, st.BadRows, len(tt.wantIDs), len(tt.wantBad))
			}
		})
	}
}

func TestParserBadExampleCap(t *testing.T) {
	t.Parallel()
	in := "user_id,platform\n" + strings.Repeat("u,pager\n", 10) + "u1,web\n"
	tests := []struct {
		name      string
		lim       Limits
		wantLines []int64
	}{
		{"default keeps 5", Limits{}, []int64{2, 3, 4, 5, 6}},
		{"explicit 2", Limits{BadExamples: 2}, []int64{2, 3}},
		{"negative keeps none", Limits{BadExamples: -1}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rows, st := parserMustParse(t, in, tt.lim)
			var lines []int64
			for _, b := range st.BadExamples {
				lines = append(lines, b.Line)
				if b.Reason != `platform is "pager"; use android, ios or web` || b.Text != "u,pager" {
					t.Errorf("example %+v", b)
				}
			}
			if !reflect.DeepEqual(lines, tt.wantLines) {
				t.Errorf("example lines: got %v, want %v", lines, tt.wantLines)
			}
			if st.BadRows != 10 || st.Rows != 1 || st.Lines != 12 || len(rows) != 1 || rows[0].Line != 12 {
				t.Errorf("got stats %+v, rows %+v; want 10 bad, 1 row on line 12, 12 lines", st, rows)
			}
		})
	}
}

func TestParserHeaderErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		lim        Limits
		in         string
		wantMsg    string
		wantFields []pb.FieldError
		wantLine   string
	}{
		{
			name:       "no user_id",
			in:         "id,email\nu1,a@example.com\n",
			wantMsg:    `the CSV header has no user_id column (header: "id,email")`,
			wantFields: []pb.FieldError{{Field: "user_id", Message: `is missing from the CSV header "id,email"`}},
			wantLine:   "1",
		},
		{
			name:       "duplicate column after normalising",
			in:         "\n\nuser_id,Email,x, EMAIL\nu1,a,b,c\n",
			wantMsg:    `the CSV header names column "email" twice (columns 2 and 4; header: "user_id,Email,x, EMAIL")`,
			wantFields: []pb.FieldError{{Field: "email", Message: "appears twice in the CSV header (columns 2 and 4)"}},
			wantLine:   "3",
		},
		{
			name:       "unnamed column",
			in:         "user_id,,x\n",
			wantMsg:    `column 2 of the CSV header has no name (header: "user_id,,x")`,
			wantFields: []pb.FieldError{{Field: "header", Message: "column 2 has no name"}},
			wantLine:   "1",
		},
		{
			name:     "unclosed quote",
			in:       "user_id,\"name\nu1,x\n",
			wantMsg:  "the CSV header on line 1 is not valid CSV: a quoted field is not closed on this line (a newline inside quotes is not supported: one recipient per line)",
			wantLine: "1",
		},
		{
			name:     "invalid UTF-8",
			in:       "user_id,\xff\n",
			wantMsg:  "the CSV header on line 1 is invalid: line is not valid UTF-8 (byte 9)",
			wantLine: "1",
		},
		{
			name:     "too long",
			lim:      Limits{MaxLineBytes: 8},
			in:       "user_id,token\nu1,t\n",
			wantMsg:  "the CSV header on line 1 is longer than 8 bytes",
			wantLine: "1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := NewParser(strings.NewReader(tt.in), tt.lim)
			_, err := p.Next()
			var pe *pb.Error
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want a *pb.Error", err)
			}
			if pe.Kind != pb.KindValidation || pe.Recoverable || pe.Message != tt.wantMsg ||
				!reflect.DeepEqual(pe.Fields, tt.wantFields) || !reflect.DeepEqual(pe.Context, map[string]string{"line": tt.wantLine}) {
				t.Errorf("got %#v\nwant kind validation, message %q, fields %v, line %s", pe, tt.wantMsg, tt.wantFields, tt.wantLine)
			}
			if _, again := p.Next(); again != err {
				t.Errorf("second Next: got %v, want the same error", again)
			}
			if st := p.Stats(); st.Format != "csv" || st.Rows != 0 || st.BadRows != 0 {
				t.Errorf("stats: %+v", st)
			}
		})
	}
}

// parserRepeatReader yields n copies of b.
type parserRepeatReader struct {
	b byte
	n int64
}

func (r *parserRepeatReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n)]
	for i := range p {
		p[i] = r.b
	}
	r.n -= int64(len(p))
	return len(p), nil
}

// Not parallel: allocation counters are process-wide, so other tests
// running at the same time would blur the measurement.
func TestParserHugeLineBoundedMemory(t *testing.T) {
	const huge = 50 << 20
	tests := []struct {
		name   string
		head   string
		tail   string
		wantID []string
	}{
		{"csv, then a good row", "user_id,name\nu1,", "\nu2,ok\n", []string{"u2"}},
		{"jsonl, last line without newline", `{"user_id":"u0"}` + "\n" + `{"user_id":"u1","x":"`, `"}`, []string{"u0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := io.MultiReader(strings.NewReader(tt.head), &parserRepeatReader{b: 'x', n: huge}, strings.NewReader(tt.tail))
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			rows, st, err := parserParseAll(t, r, Limits{})
			runtime.ReadMemStats(&after)
			if err != io.EOF {
				t.Fatalf("got %v, want io.EOF", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 10<<20 {
				t.Errorf("allocated %d MB to skip a %d MB line; want well under 10 MB", grew>>20, huge>>20)
			} else {
				t.Logf("allocated %d KB to skip a %d MB line", grew>>10, huge>>20)
			}
			var ids []string
			for _, r := range rows {
				ids = append(ids, r.UserID)
			}
			if !reflect.DeepEqual(ids, tt.wantID) {
				t.Errorf("rows: got %q, want %q", ids, tt.wantID)
			}
			wantText := (tt.head[strings.LastIndexByte(tt.head, '\n')+1:] + strings.Repeat("x", 200))[:200]
			wantBad := []BadRow{{Line: 2, Reason: "line is longer than 65536 bytes", Text: wantText}}
			if !reflect.DeepEqual(st.BadExamples, wantBad) {
				t.Errorf("bad examples: got %+v, want %+v", st.BadExamples, wantBad)
			}
			if want := int64(len(tt.head) + huge + len(tt.tail)); st.Bytes != want || st.BadRows != 1 {
				t.Errorf("stats: got %d bytes, %d bad; want %d, 1", st.Bytes, st.BadRows, want)
			}
		})
	}
}

// parserCountingReader counts the bytes read from it.
type parserCountingReader struct {
	r io.Reader
	n int64
}

func (c *parserCountingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestParserMaxBytes(t *testing.T) {
	t.Parallel()
	const in = "user_id\nu1\nu2\nu3\n" // 17 bytes
	tests := []struct {
		name      string
		in        io.Reader
		max       int64
		wantIDs   []string
		wantErr   string // "" for io.EOF
		wantLine  string
		wantBytes int64
	}{
		{name: "exactly the limit", in: strings.NewReader(in), max: 17, wantIDs: []string{"u1", "u2", "u3"}, wantBytes: 17},
		{
			name: "one byte over", in: strings.NewReader(in), max: 16,
			wantIDs: []string{"u1", "u2"}, wantErr: "output is larger than 16 bytes; raise the limit or emit fewer rows", wantLine: "4", wantBytes: 17,
		},
		{
			name: "mid line", in: strings.NewReader(in), max: 14,
			wantIDs: []string{"u1", "u2"}, wantErr: "output is larger than 14 bytes; raise the limit or emit fewer rows", wantLine: "4", wantBytes: 15,
		},
		{
			name: "inside a long line", in: io.MultiReader(strings.NewReader("user_id\nu1\n"), &parserRepeatReader{b: 'y', n: 1 << 20}),
			max: 100_000, wantIDs: []string{"u1"}, wantErr: "output is larger than 100000 bytes; raise the limit or emit fewer rows", wantLine: "3", wantBytes: 100_001,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := &parserCountingReader{r: tt.in}
			rows, st, err := parserParseAll(t, src, Limits{MaxBytes: tt.max})
			var ids []string
			for _, r := range rows {
				ids = append(ids, r.UserID)
			}
			if !reflect.DeepEqual(ids, tt.wantIDs) {
				t.Errorf("rows: got %q, want %q", ids, tt.wantIDs)
			}
			if st.Bytes != tt.wantBytes || src.n > tt.max+1 {
				t.Errorf("consumed %d bytes, read %d from the source; want %d, at most %d", st.Bytes, src.n, tt.wantBytes, tt.max+1)
			}
			if tt.wantErr == "" {
				if err != io.EOF {
					t.Fatalf("got %v, want io.EOF", err)
				}
				return
			}
			var pe *pb.Error
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want a *pb.Error", err)
			}
			wantCtx := map[string]string{"limit": fmt.Sprint(tt.max), "line": tt.wantLine}
			if pe.Kind != pb.KindValidation || pe.Message != tt.wantErr || !reflect.DeepEqual(pe.Context, wantCtx) {
				t.Errorf("got %#v, want validation %q with context %v", pe, tt.wantErr, wantCtx)
			}
		})
	}
}

// parserFailingReader returns its data, then err.
type parserFailingReader struct {
	data string
	err  error
}

func (f *parserFailingReader) Read(p []byte) (int, error) {
	if f.data == "" {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

func TestParserReadError(t *testing.T) {
	t.Parallel()
	broken := errors.New("pipe broke")
	stalled := pb.Errorf(pb.KindTimeout, "the script was silent for 2m0s")
	tests := []struct {
		name     string
		r        io.Reader
		wantIDs  []string
		wantKind pb.Kind
		wantMsg  string
		wantErr  error
	}{
		{"plain error after rows", &parserFailingReader{"user_id\nu1\n", broken}, []string{"u1"}, pb.KindInternal, "reading the audience at line 3: pipe broke", broken},
		{"error at the first read", &parserFailingReader{"", broken}, nil, pb.KindInternal, "reading the audience at line 1: pipe broke", broken},
		{"cancelled", &parserFailingReader{`{"user_id":"u1"}` + "\n", context.Canceled}, []string{"u1"}, pb.KindAbort, "reading the audience at line 2: context canceled", context.Canceled},
		{"a *pb.Error keeps its kind", &parserFailingReader{"user_id\nu1", stalled}, nil, pb.KindTimeout, "reading the audience at line 2: the script was silent for 2m0s", stalled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rows, _, err := parserParseAll(t, tt.r, Limits{})
			var ids []string
			for _, r := range rows {
				ids = append(ids, r.UserID)
			}
			if !reflect.DeepEqual(ids, tt.wantIDs) {
				t.Errorf("rows: got %q, want %q", ids, tt.wantIDs)
			}
			var pe *pb.Error
			if !errors.As(err, &pe) || pe.Kind != tt.wantKind || pe.Message != tt.wantMsg || !errors.Is(err, tt.wantErr) {
				t.Errorf("got %#v, want %s %q wrapping %v", err, tt.wantKind, tt.wantMsg, tt.wantErr)
			}
		})
	}
}

func TestParserSampleLines(t *testing.T) {
	t.Parallel()
	long := "u6," + strings.Repeat("x", 300)
	tests := []struct {
		name      string
		in        string
		lim       Limits
		wantFirst []string
		wantLast  []string
	}{
		{
			name:      "short input: no line in both",
			in:        "user_id\n\nu1\n",
			wantFirst: []string{"user_id", "u1"},
		},
		{
			name:      "ring full, even count",
			in:        "user_id,n\nu1,1\n\nu2,2\nu3,3\nu4,4\n" + long + "\n",
			lim:       Limits{SampleRows: 2},
			wantFirst: []string{"user_id,n", "u1,1"},
			wantLast:  []string{"u4,4", long[:200]},
		},
		{
			name:      "ring full, odd count",
			in:        "user_id,n\nu1,1\nu2,2\nu3,3\nu4,4\nu5,5\nu6,6\n",
			lim:       Limits{SampleRows: 2},
			wantFirst: []string{"user_id,n", "u1,1"},
			wantLast:  []string{"u5,5", "u6,6"},
		},
		{
			name:      "ring not full, bad lines included",
			in:        "user_id,n\nu1,1\nu2,2,2\nu3\n",
			wantFirst: []string{"user_id,n", "u1,1", "u2,2,2"},
			wantLast:  []string{"u3"},
		},
		{
			name: "negative keeps none",
			in:   "user_id\nu1\nu2\n",
			lim:  Limits{SampleRows: -1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, st := parserMustParse(t, tt.in, tt.lim)
			if !reflect.DeepEqual(st.FirstLines, tt.wantFirst) || !reflect.DeepEqual(st.LastLines, tt.wantLast) {
				t.Errorf("got first %q, last %q; want %q, %q", st.FirstLines, st.LastLines, tt.wantFirst, tt.wantLast)
			}
		})
	}
}

func TestParserSampleText(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{"short ASCII", "abc", "abc"},
		{"cut at 200 bytes", strings.Repeat("a", 250), strings.Repeat("a", 200)},
		{"a character cut at the end is dropped", strings.Repeat("a", 199) + "é", strings.Repeat("a", 199)},
		{"invalid bytes and NUL become U+FFFD", "a\xffb\x00c", "a\uFFFDb\uFFFDc"},
		{"replacements never exceed 200 bytes", strings.Repeat("\xff", 100), strings.Repeat("\uFFFD", 66)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := parserSample([]byte(tt.in)); got != tt.want {
				t.Errorf("parserSample(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// Run with -race: Stats reads what Next writes.
func TestParserStatsConcurrentWithNext(t *testing.T) {
	t.Parallel()
	var in bytes.Buffer
	in.WriteString("user_id,platform\n")
	for i := range 50_000 {
		if i%10 == 9 {
			in.WriteString("bad,pager\n")
			continue
		}
		fmt.Fprintf(&in, "u%d,ios\n", i)
	}
	size := int64(in.Len())
	p := NewParser(&in, Limits{})
	done := make(chan error)
	go func() {
		for {
			if _, err := p.Next(); err != nil {
				done <- err
				return
			}
		}
	}()
	var prev ParseStats
	polls := 0
	for finished := false; !finished; polls++ {
		select {
		case err := <-done:
			if err != io.EOF {
				t.Errorf("Next: %v", err)
			}
			finished = true
		default:
		}
		st := p.Stats()
		if st.Rows+st.BadRows > st.Lines || st.Lines < prev.Lines || st.Rows < prev.Rows || st.Bytes < prev.Bytes || len(st.BadExamples) > 5 {
			t.Fatalf("inconsistent stats %+v after %+v", st, prev)
		}
		prev = st
	}
	if prev.Lines != 50_001 || prev.Rows != 45_000 || prev.BadRows != 5_000 || prev.Bytes != size || prev.Format != "csv" {
		t.Errorf("final stats %+v; want 50001 lines, 45000 rows, 5000 bad, %d bytes", prev, size)
	}
	t.Logf("%d polls", polls)
}

func FuzzParser(f *testing.F) {
	for _, s := range []string{
		"user_id,token,platform,timezone,locale,name\nu1,t,ios,Europe/Berlin,de,Ann\n",
		parserTestBOM + "\r\nuser_id,x\r\n\"u,1\",\"a \"\"b\"\"\"\r\nu2,\"open\n",
		`{"user_id":"u1","a":1,"b":[1],"c":null,"d":true}` + "\n" + `{"user_id":12345678901234567890}` + "\n[]\n",
		"user_id\n" + strings.Repeat("x", 100) + "\n\xff\x00\n",
		"id,id\n",
		"\n\n  {\"user_id\":\"\\u0000\"}",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, small bool) {
		lim := Limits{}
		if small {
			lim = Limits{MaxLineBytes: 32, MaxBytes: 256, BadExamples: 2, SampleRows: 2}
		}
		p := NewParser(bytes.NewReader(data), lim)
		var rows int64
		var err error
		for calls := 0; calls <= len(data)+1; calls++ {
			var r Row
			if r, err = p.Next(); err != nil {
				break
			}
			rows++
			if strings.TrimSpace(r.UserID) != r.UserID || r.UserID == "" || r.Line < 1 {
				t.Fatalf("bad row returned: %+v", r)
			}
			switch r.Platform {
			case "", "android", "ios", "web":
			default:
				t.Fatalf("platform %q returned", r.Platform)
			}
		}
		var pe *pb.Error
		if err != io.EOF && !errors.As(err, &pe) {
			t.Fatalf("Next ended with %v", err)
		}
		st := p.Stats()
		if st.Rows != rows || st.Rows+st.BadRows > st.Lines || st.Bytes > int64(len(data)) {
			t.Fatalf("stats %+v after %d rows of %d bytes", st, rows, len(data))
		}
		maxEx, maxSample := 5, 3
		if small {
			maxEx, maxSample = 2, 2
		}
		if len(st.BadExamples) > maxEx || len(st.FirstLines) > maxSample || len(st.LastLines) > maxSample {
			t.Fatalf("too many examples: %+v", st)
		}
		for _, b := range st.BadExamples {
			if len(b.Text) > 200 || !utf8.ValidString(b.Text) || strings.IndexByte(b.Text, 0) >= 0 || b.Line < 1 || b.Line > st.Lines {
				t.Fatalf("bad example %+v", b)
			}
		}
	})
}

// parserBenchCSV returns rows CSV rows after a header, with extra columns.
func parserBenchCSV(rows int) []byte {
	platforms := []string{"ios", "android", "web"}
	zones := []string{"Europe/Berlin", "America/New_York", "Asia/Tokyo", ""}
	b := []byte("user_id,token,platform,timezone,locale,first_name,score\n")
	for i := range rows {
		b = fmt.Appendf(b, "%d,tok-%08x,%s,%s,en-US,Name%d,%d\n", 1_000_000_000+i, i, platforms[i%3], zones[i%4], i%97, i%1000)
	}
	return b
}

func BenchmarkParserCSV(b *testing.B) {
	const rows = 1_000_000
	in := parserBenchCSV(rows)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	iterations := 0
	for b.Loop() {
		p := NewParser(bytes.NewReader(in), Limits{})
		n := 0
		for {
			_, err := p.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			n++
		}
		if n != rows {
			b.Fatalf("parsed %d rows, want %d", n, rows)
		}
		iterations++
	}
	b.ReportMetric(float64(rows*iterations)/b.Elapsed().Seconds(), "rows/s")
}

func BenchmarkParserJSONL(b *testing.B) {
	const rows = 1_000_000
	var in []byte
	for i := range rows {
		in = fmt.Appendf(in, `{"user_id":%d,"token":"tok-%08x","platform":"ios","timezone":"Europe/Berlin","first_name":"Name%d","score":%d}`+"\n",
			1_000_000_000+i, i, i%97, i%1000)
	}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	iterations := 0
	for b.Loop() {
		p := NewParser(bytes.NewReader(in), Limits{})
		n := 0
		for {
			_, err := p.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			n++
		}
		if n != rows {
			b.Fatalf("parsed %d rows, want %d", n, rows)
		}
		iterations++
	}
	b.ReportMetric(float64(rows*iterations)/b.Elapsed().Seconds(), "rows/s")
}

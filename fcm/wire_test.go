package fcm

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	pb "github.com/pushblaster/pushblaster"
)

// FuzzAppendString checks the hand-written string encoder against
// encoding/json: the output is valid JSON that decodes to the input
// (invalid UTF-8 becoming U+FFFD, as encoding/json does).
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", `q"uote\back`, "nl\ncr\rtab\t", "\x00\x01\x1f\x7f", "é🎉 日本",
		"\u2028\u2029", "bad \xff utf8 \xc3", "<b>&amp;</b>", strings.Repeat("x", 1000)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q encodes to invalid JSON %s: %v", s, b, err)
		}
		want := strings.ToValidUTF8(s, "\uFFFD")
		if !utf8.ValidString(s) {
			// encoding/json replaces each invalid byte, not each run.
			var sb strings.Builder
			for i := 0; i < len(s); {
				r, n := utf8.DecodeRuneInString(s[i:])
				if r == utf8.RuneError && n == 1 {
					sb.WriteRune(utf8.RuneError)
				} else {
					sb.WriteString(s[i : i+n])
				}
				i += n
			}
			want = sb.String()
		}
		if got != want {
			t.Fatalf("%q round-trips to %q, want %q", s, got, want)
		}
		std, _ := json.Marshal(s)
		var viaStd string
		json.Unmarshal(std, &viaStd)
		if got != viaStd {
			t.Fatalf("%q: decodes to %q, encoding/json's to %q", s, got, viaStd)
		}
	})
}

func TestEncodeOmitsEmptyParts(t *testing.T) {
	c := &Client{}
	c.payloads.New = func() any { return &payload{pool: &c.payloads} }
	for _, tc := range []struct {
		msg  pb.Message
		want string
	}{
		{pb.Message{}, `{"message":{"token":"t"}}`},
		{pb.Message{Body: "b"}, `{"message":{"token":"t","notification":{"body":"b"}}}`},
		{pb.Message{Title: "a", Image: "i"}, `{"message":{"token":"t","notification":{"title":"a","image":"i"}}}`},
		{pb.Message{Data: map[string]string{"k": "v"}, Android: json.RawMessage("null"), APNs: json.RawMessage(`{"x":1}`)},
			`{"message":{"token":"t","data":{"k":"v"},"apns":{"x":1}}}`},
	} {
		pl, err := c.encode(&pb.Push{Recipient: pb.Recipient{Token: "t"}, Message: tc.msg})
		if err != nil {
			t.Fatal(err)
		}
		if got := string(pl.buf); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
		pl.release()
	}
}

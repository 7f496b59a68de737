package fcm

import (
	"encoding/json"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	pb "github.com/pushblaster/pushblaster"
)

// payload is one push's request body, encoded once and sent by every
// attempt. Its buffer returns to the pool when the push is done and the
// transport has closed every reader of it, whichever is last: HTTP/2 may
// still be closing a request body after the response arrived.
type payload struct {
	buf  []byte
	refs atomic.Int32
	pool *sync.Pool
}

// payloadReader is one request's body over a payload. Read and Close
// exclude each other so that no Read touches the buffer once Close has
// handed it back (the transport closes a body from another goroutine to
// abort a write).
type payloadReader struct {
	mu     sync.Mutex
	p      *payload
	off    int
	closed bool
}

var errBodyClosed = errors.New("fcm: request body read after close")

func (r *payloadReader) Read(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errBodyClosed
	}
	if r.off >= len(r.p.buf) {
		return 0, io.EOF
	}
	n := copy(b, r.p.buf[r.off:])
	r.off += n
	return n, nil
}

func (r *payloadReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		r.p.release()
	}
	return nil
}

// reader returns a new body over the payload (also the request's
// GetBody, which the transport calls to replay a request it knows was not
// processed, e.g. after a GOAWAY).
func (p *payload) reader() (io.ReadCloser, error) {
	p.refs.Add(1)
	return &payloadReader{p: p}, nil
}

func (p *payload) release() {
	if p.refs.Add(-1) == 0 && cap(p.buf) <= maxPooledBody {
		p.buf = p.buf[:0]
		p.pool.Put(p)
	}
}

// maxPooledBody keeps an unusually large body's buffer out of the pool.
const maxPooledBody = 16 << 10

// encode writes the v1 SendMessageRequest of push into a pooled payload:
// {"message":{"token","notification":{…},"data":{…},"android","apns"}},
// empty parts omitted. It is hand-written because it runs for every push:
// no reflection, no intermediate map, one buffer reused across pushes.
func (c *Client) encode(p *pb.Push) (*payload, *pb.Error) {
	m := &p.Message
	if p.Recipient.Token == "" {
		return nil, pb.ProviderError(pb.CodeInvalidArgument, "fcm: recipient %s has no device token", p.Recipient.UserID)
	}
	for _, o := range []struct {
		name string
		raw  json.RawMessage
	}{{"android", m.Android}, {"apns", m.APNs}} {
		if len(o.raw) > 0 && !json.Valid(o.raw) {
			return nil, pb.ProviderError(pb.CodeInvalidArgument, "fcm: message.%s is not valid JSON", o.name)
		}
	}
	pl := c.payloads.Get().(*payload)
	pl.refs.Store(1)
	b := pl.buf[:0]
	b = append(b, `{"message":{"token":`...)
	b = appendString(b, p.Recipient.Token)
	if m.Title != "" || m.Body != "" || m.Image != "" {
		b = append(b, `,"notification":{`...)
		sep := byte(0)
		for _, f := range [...]struct{ key, val string }{{`"title":`, m.Title}, {`"body":`, m.Body}, {`"image":`, m.Image}} {
			if f.val == "" {
				continue
			}
			if sep != 0 {
				b = append(b, sep)
			}
			b = append(b, f.key...)
			b = appendString(b, f.val)
			sep = ','
		}
		b = append(b, '}')
	}
	if len(m.Data) > 0 {
		b = append(b, `,"data":{`...)
		first := true
		for k, v := range m.Data {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, v)
		}
		b = append(b, '}')
	}
	if isSet(m.Android) {
		b = append(b, `,"android":`...)
		b = append(b, m.Android...)
	}
	if isSet(m.APNs) {
		b = append(b, `,"apns":`...)
		b = append(b, m.APNs...)
	}
	b = append(b, "}}"...)
	pl.buf = b
	return pl, nil
}

func isSet(raw json.RawMessage) bool { return len(raw) > 0 && string(raw) != "null" }

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as encoding/json does
// (minus the HTML escaping FCM has no use for): quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD, U+2028 and
// U+2029 escaped for JavaScript consumers.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

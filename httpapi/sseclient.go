package httpapi

import (
	"bufio"
	"errors"
	"io"
	"strings"
)

// SSEMessage is one block of a server-sent event stream, as a client
// reads it.
type SSEMessage struct {
	ID    string
	HasID bool // an id line was there (it may be empty)
	Event string
	Data  string // data lines joined by newlines
	// Comment is a comment line's text (the heartbeat's).
	Comment string
}

// ReadSSE parses a server-sent event stream (the WHATWG format) and calls
// fn for every block: an event, a comment, or an id alone. It returns
// fn's first error, or nil at the end of the stream.
func ReadSSE(r io.Reader, fn func(SSEMessage) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var (
		m       SSEMessage
		data    []string
		pending bool
	)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil // an unterminated block is dropped, as EventSource does
			}
			return err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			if pending {
				m.Data = strings.Join(data, "\n")
				if err := fn(m); err != nil {
					return err
				}
			}
			m, data, pending = SSEMessage{}, nil, false
			continue
		}
		pending = true
		if c, ok := strings.CutPrefix(line, ":"); ok {
			m.Comment = strings.TrimSpace(c) // a comment: the heartbeat
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			m.ID, m.HasID = value, true
		case "event":
			m.Event = value
		case "data":
			data = append(data, value)
		}
	}
}

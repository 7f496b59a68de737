package pushblaster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Kind classifies an error so that an operator knows at a glance what went
// wrong and whether waiting or retrying can help.
type Kind string

// Error kinds. The first seven classify execution failures; the last three
// only ever describe a rejected API request.
const (
	KindTimeout    Kind = "timeout"    // something took longer than its limit
	KindAbort      Kind = "abort"      // an operator or a shutdown stopped it
	KindExternal   Kind = "external"   // a provider or remote service failed
	KindDatabase   Kind = "database"   // the store could not be read or written
	KindScript     Kind = "script"     // an audience script failed
	KindValidation Kind = "validation" // input or generated data is invalid
	KindInternal   Kind = "internal"   // a bug: please report it

	KindNotFound     Kind = "not_found"    // the named object does not exist
	KindConflict     Kind = "conflict"     // the request clashes with the current state
	KindUnauthorized Kind = "unauthorized" // a bearer token is missing or wrong
)

// FieldError names one invalid input field and why it is invalid.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// Error is the one error type of pushblaster. Adapters translate foreign
// errors into it at their edge; errors.As reads it anywhere.
type Error struct {
	Kind Kind `json:"kind"`
	// Recoverable says whether a retry (of the phase, or of the request)
	// can succeed without anyone changing anything.
	Recoverable bool `json:"recoverable"`
	// Phase is the execution phase the error happened in, if any.
	Phase   Phase             `json:"phase,omitempty"`
	Message string            `json:"message"`
	Context map[string]string `json:"context,omitempty"`
	// Fields lists every invalid field of a rejected input.
	Fields []FieldError `json:"fields,omitempty"`

	err error // the wrapped cause; not serialised (Message carries it)
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(string(e.Kind))
	if e.Phase != "" {
		b.WriteString(" in ")
		b.WriteString(string(e.Phase))
	}
	b.WriteString(": ")
	b.WriteString(e.Message)
	for _, f := range e.Fields {
		fmt.Fprintf(&b, "; %s: %s", f.Field, f.Message)
	}
	return b.String()
}

// Unwrap returns the wrapped cause.
func (e *Error) Unwrap() error { return e.err }

// Errorf returns an *Error of the given kind. Kinds timeout, external and
// database are recoverable by default; use WithRecoverable to change it.
func Errorf(kind Kind, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{
		Kind:        kind,
		Recoverable: defaultRecoverable(kind),
		Message:     err.Error(),
		err:         errors.Unwrap(err),
	}
}

// WrapError wraps err in an *Error of the given kind with a message prefix.
// If err already is an *Error, its kind and recoverability are kept and the
// message is prefixed, so the most specific classification wins.
func WrapError(kind Kind, err error, format string, args ...any) *Error {
	prefix := fmt.Sprintf(format, args...)
	var pe *Error
	if errors.As(err, &pe) {
		out := *pe
		out.Message = prefix + ": " + pe.Message
		out.Context = copyContext(pe.Context)
		out.err = err
		return &out
	}
	return &Error{
		Kind:        kind,
		Recoverable: defaultRecoverable(kind),
		Message:     prefix + ": " + err.Error(),
		err:         err,
	}
}

func defaultRecoverable(kind Kind) bool {
	switch kind {
	case KindTimeout, KindExternal, KindDatabase:
		return true
	}
	return false
}

// WithRecoverable sets the recoverable flag and returns e.
func (e *Error) WithRecoverable(r bool) *Error { e.Recoverable = r; return e }

// WithPhase sets the phase and returns e.
func (e *Error) WithPhase(p Phase) *Error { e.Phase = p; return e }

// With adds a context key/value and returns e.
func (e *Error) With(key, value string) *Error {
	if e.Context == nil {
		e.Context = map[string]string{}
	}
	e.Context[key] = value
	return e
}

func copyContext(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// AsError returns err as an *Error. Context cancellation becomes abort,
// a deadline becomes timeout, and anything unclassified becomes internal.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Kind: KindTimeout, Recoverable: true, Message: err.Error(), err: err}
	case errors.Is(err, context.Canceled):
		return &Error{Kind: KindAbort, Message: err.Error(), err: err}
	}
	return &Error{Kind: KindInternal, Message: err.Error(), err: err}
}

// ErrorKind returns the kind of err, or "" for nil.
func ErrorKind(err error) Kind {
	if err == nil {
		return ""
	}
	return AsError(err).Kind
}

// Validation collects field errors so that one response names every bad
// field at once instead of making the user fix them one by one.
type Validation struct {
	fields []FieldError
}

// Add records that field is invalid. The first reason given for a field
// wins: later checks of a field that already failed to decode would only
// add noise ("is required" after "is a JSON number").
func (v *Validation) Add(field, format string, args ...any) {
	for _, f := range v.fields {
		if f.Field == field {
			return
		}
	}
	v.fields = append(v.fields, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

// Err returns a validation *Error listing every field, or nil if none.
func (v *Validation) Err() error {
	if len(v.fields) == 0 {
		return nil
	}
	fields := append([]FieldError(nil), v.fields...)
	sort.SliceStable(fields, func(i, j int) bool { return fields[i].Field < fields[j].Field })
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.Field
	}
	return &Error{
		Kind:    KindValidation,
		Message: "invalid " + strings.Join(names, ", "),
		Fields:  fields,
	}
}

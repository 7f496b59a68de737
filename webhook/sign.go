package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// DefaultTolerance is how far a request's timestamp may be from the
// receiver's clock when Verify is given no tolerance: long enough for clock
// skew and a slow network, short enough that a captured request is soon
// useless.
const DefaultTolerance = 5 * time.Minute

// Errors Verify wraps; test them with errors.Is.
var (
	// ErrSignature: no v1 signature of the header matches the body and
	// timestamp under the secret.
	ErrSignature = errors.New("webhook signature does not match")
	// ErrTimestamp: the timestamp header is malformed or outside the
	// tolerance.
	ErrTimestamp = errors.New("webhook timestamp is invalid or outside the tolerance")
)

// Sign returns the X-Pushblaster-Signature header value of a request body
// sent at ts (unix seconds): "v1=" and the hex HMAC-SHA256 under secret of
// the timestamp, a dot and the body.
func Sign(secret []byte, ts int64, body []byte) string {
	return sign(secret, strconv.FormatInt(ts, 10), body)
}

func sign(secret []byte, ts string, body []byte) string {
	return "v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verify checks a request a receiver got: header is its
// X-Pushblaster-Signature, ts its X-Pushblaster-Timestamp and body its raw
// body, read before any decoding. It returns nil when one v1 signature of
// the header (several, comma-separated, are accepted so that a secret can be
// rotated) matches, and ts is within tolerance of now (DefaultTolerance if
// tolerance is not positive). Checking the timestamp is what stops a
// captured request from being replayed later.
//
// An error is a *pb.Error of kind unauthorized wrapping ErrSignature or
// ErrTimestamp. Signatures are compared in constant time, so that response
// times do not leak how much of a forged signature was right.
func Verify(secret []byte, header string, ts string, body []byte, now time.Time, tolerance time.Duration) error {
	if len(secret) == 0 {
		return pb.Errorf(pb.KindUnauthorized, "%w: no secret to check it with", ErrSignature)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return pb.Errorf(pb.KindUnauthorized, "%w: %s %q is not unix seconds", ErrTimestamp, HeaderTimestamp, ts)
	}
	want := mac(secret, ts, body)
	ok := false
	for _, part := range strings.Split(header, ",") {
		scheme, sig, found := strings.Cut(strings.TrimSpace(part), "=")
		if !found || scheme != "v1" {
			continue
		}
		got, err := hex.DecodeString(sig)
		if err == nil && hmac.Equal(got, want) {
			ok = true
		}
	}
	if !ok {
		return pb.Errorf(pb.KindUnauthorized, "%w", ErrSignature)
	}
	// The age is checked only once the signature holds, so that the error
	// says "replayed or skewed" only of an authentic request.
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if age := now.Sub(time.Unix(sec, 0)); age > tolerance || age < -tolerance {
		return pb.Errorf(pb.KindUnauthorized, "%w: signed at %s, %s from now, tolerance %s",
			ErrTimestamp, time.Unix(sec, 0).UTC().Format(time.RFC3339), age.Round(time.Second), tolerance)
	}
	return nil
}

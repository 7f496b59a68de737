package fcm

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	pb "github.com/pushblaster/pushblaster"
)

// outcomeKind says what to do after one attempt.
type outcomeKind int

const (
	final   outcomeKind = iota // the push's result is known
	retry                      // transient failure: back off, try again
	quota                      // 429: pause the whole client, try again
	reauth                     // our access token was refused: refresh once, try again
	stopped                    // ctx ended and the request never left: not sent
)

// outcome is one attempt's verdict.
type outcome struct {
	kind  outcomeKind
	state pb.DeliveryState // for final
	err   *pb.Error
	// wait is the least wait before the next attempt: the Retry-After
	// FCM asked for, if any.
	wait time.Duration
}

// apiError is Google's error body: {"error":{"code","message","status",
// "details":[{"@type","errorCode",…}]}}.
type apiError struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
		Details []struct {
			Type      string `json:"@type"`
			ErrorCode string `json:"errorCode"`
			Reason    string `json:"reason"`
		} `json:"details"`
	} `json:"error"`
}

// fcmErrorCode returns the FcmError detail's errorCode, or "".
func (e *apiError) fcmErrorCode() string {
	for _, d := range e.Error.Details {
		// Early responses named the type FcmErrorCode; accept both.
		if strings.HasSuffix(d.Type, "google.firebase.fcm.v1.FcmError") || strings.HasSuffix(d.Type, "google.firebase.fcm.v1.FcmErrorCode") {
			return d.ErrorCode
		}
	}
	return ""
}

// classify turns an FCM error response into an outcome, following
// Google's guidance per error code: the FcmError detail decides where
// there is one, the HTTP status otherwise.
func (c *Client) classify(status int, retryAfter string, body []byte) outcome {
	var ae apiError
	parsed := json.Unmarshal(body, &ae) == nil && (ae.Error.Status != "" || ae.Error.Message != "")
	code := ae.fcmErrorCode()

	// describe quotes FCM's own words, so that the ledger says what FCM
	// said.
	describe := func(pbCode, what string) *pb.Error {
		var e *pb.Error
		if parsed {
			label := ae.Error.Status
			if code != "" && code != label {
				label += " " + code
			}
			e = pb.ProviderError(pbCode, "fcm: %s: HTTP %d %s: %s", what, status, label, ae.Error.Message)
		} else {
			e = pb.ProviderError(pbCode, "fcm: %s: HTTP %d %s: %s", what, status, http.StatusText(status), truncate(body, 200))
		}
		e = e.With("http_status", strconv.Itoa(status))
		if code != "" {
			e = e.With("fcm_error", code)
		}
		return e
	}
	wait, _ := pb.RetryAfter(retryAfter, c.cfg.Now())
	failed := func(pbCode, what string) outcome {
		return outcome{kind: final, state: pb.DeliveryFailed, err: describe(pbCode, what)}
	}

	switch {
	case code == "UNREGISTERED":
		return outcome{kind: final, state: pb.DeliveryInvalidToken,
			err: describe(pb.CodeUnregistered, "the token is no longer registered (app uninstalled or token expired)")}
	case code == "INVALID_ARGUMENT" || (code == "" && ae.Error.Status == "INVALID_ARGUMENT"):
		if isInvalidTokenMessage(ae.Error.Message) {
			return outcome{kind: final, state: pb.DeliveryInvalidToken,
				err: describe(pb.CodeUnregistered, "the token is not a valid FCM registration token")}
		}
		return failed(pb.CodeInvalidArgument, "FCM rejected the message")
	case code == "SENDER_ID_MISMATCH":
		return failed(pb.CodeSenderIDMismatch, "the token belongs to another Firebase project")
	case code == "THIRD_PARTY_AUTH_ERROR":
		return failed(pb.CodeThirdPartyAuth, "the APNs certificate or web push key configured in Firebase was refused")
	case code == "QUOTA_EXCEEDED" || status == http.StatusTooManyRequests:
		return outcome{kind: quota, err: describe(pb.CodeQuotaExceeded, "quota exceeded"), wait: wait}
	case code == "UNAVAILABLE" || status == http.StatusServiceUnavailable ||
		status == http.StatusBadGateway || status == http.StatusGatewayTimeout:
		return outcome{kind: retry, err: describe(pb.CodeUnavailable, "FCM is unavailable"), wait: wait}
	case code == "INTERNAL" || status == http.StatusInternalServerError:
		return outcome{kind: retry, err: describe(pb.CodeInternal, "FCM failed internally"), wait: wait}
	case status == http.StatusUnauthorized:
		// A 401 without THIRD_PARTY_AUTH_ERROR refuses our own access
		// token (expired early, revoked).
		return outcome{kind: reauth, err: describe(pb.CodeUnauthenticated, "FCM refused the access token")}
	}
	return failed(pb.CodeRejected, "unexpected answer")
}

// isInvalidTokenMessage recognises FCM's INVALID_ARGUMENT for a malformed
// registration token ("The registration token is not a valid FCM
// registration token"), which Google's guidance treats like UNREGISTERED.
func isInvalidTokenMessage(m string) bool {
	m = strings.ToLower(m)
	return strings.Contains(m, "registration token") && strings.Contains(m, "not a valid")
}

// truncate returns at most n bytes of b as text for an error message.
func truncate(b []byte, n int) string {
	s := strings.TrimSpace(string(b))
	if len(s) <= n {
		return s
	}
	// Cut at a rune boundary so the message stays valid UTF-8.
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n] + fmt.Sprintf("… (%d bytes)", len(b))
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

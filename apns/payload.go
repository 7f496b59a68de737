package apns

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/payload"

	pb "github.com/pushblaster/pushblaster"
)

// ImageKey is the custom payload key that carries a message's image URL,
// as {"fcm_options": {"image": url}}: where FCM puts it on Apple devices,
// so a Notification Service Extension that calls FirebaseMessaging's
// extension helper (or reads that key itself) downloads and attaches it.
const ImageKey = "fcm_options"

// request is one push, ready to be sent as often as it takes.
type request struct {
	n *apns2.Notification
	// extra holds headers apns2 cannot express: apns2 leaves out an
	// expiration at the epoch, but "apns-expiration: 0" means "deliver
	// now or never", unlike no header at all.
	extra http.Header
}

// override is the message's APNs override, in the shape of FCM's
// ApnsConfig.
type override struct {
	Headers    map[string]json.RawMessage `json:"headers"`
	Payload    json.RawMessage            `json:"payload"`
	FCMOptions struct {
		// Image replaces the message's image, as it does in FCM.
		Image string `json:"image"`
	} `json:"fcm_options"`
}

// request builds the APNs request of p. An error is final for the push
// (invalid_argument): nothing that retrying could fix.
func (s *Sender) request(p *pb.Push) (*request, *pb.Error) {
	m := &p.Message
	tok := p.Recipient.Token
	if tok == "" {
		return nil, invalid("recipient.token", "is empty; the recipient has no APNs device token")
	}
	// APNs tokens are hex; anything else is no APNs token (an FCM token
	// routed here, say) and must not reach the URL path unescaped.
	if strings.IndexFunc(tok, func(r rune) bool { return !isHex(r) }) >= 0 {
		return nil, invalid("recipient.token", "is not an APNs device token (hexadecimal)")
	}

	var ov override
	if raw := bytes.TrimSpace(m.APNs); len(raw) > 0 && string(raw) != "null" {
		if err := json.Unmarshal(raw, &ov); err != nil {
			return nil, invalid("message.apns", "is not an object of FCM's ApnsConfig shape: %v", err)
		}
	}

	image := m.Image
	if ov.FCMOptions.Image != "" {
		image = ov.FCMOptions.Image
	}
	b := payload.NewPayload()
	if m.Title != "" {
		b.AlertTitle(m.Title)
	}
	if m.Body != "" {
		b.AlertBody(m.Body)
	}
	if image != "" {
		// mutable-content lets the app's service extension fetch the
		// image before the notification shows.
		b.MutableContent().Custom(ImageKey, map[string]string{"image": image})
	}
	for k, v := range m.Data {
		switch {
		case k == "aps":
			return nil, invalid("message.data.aps", "would replace the aps dictionary of the APNs payload; rename the key")
		case k == ImageKey && image != "":
			return nil, invalid("message.data."+k, "would replace the image key of the APNs payload; rename the key")
		}
		b.Custom(k, v)
	}
	body, err := json.Marshal(b)
	if err != nil {
		return nil, invalid("message", "cannot be encoded as an APNs payload: %v", err)
	}
	if raw := bytes.TrimSpace(ov.Payload); len(raw) > 0 && string(raw) != "null" {
		if body, err = mergePayload(body, raw); err != nil {
			return nil, invalid("message.apns.payload", "%v", err)
		}
	}

	req := &request{n: &apns2.Notification{
		DeviceToken: tok,
		Topic:       s.topic,
		Payload:     body,
		PushType:    apns2.PushTypeAlert,
	}}
	for name, raw := range ov.Headers {
		field := "message.apns.headers." + name
		v, ok := headerValue(raw)
		if !ok {
			return nil, invalid(field, "must be a string, as in FCM's ApnsConfig")
		}
		switch strings.ToLower(name) {
		case "apns-priority":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return nil, invalid(field, "is %q; use 10 (deliver now) or 5 (deliver when power allows)", v)
			}
			req.n.Priority = n
		case "apns-expiration":
			secs, err := strconv.ParseInt(v, 10, 64)
			if err != nil || secs < 0 {
				return nil, invalid(field, "is %q; use a UNIX time in seconds, or 0 to deliver now or never", v)
			}
			if secs == 0 {
				req.extra = http.Header{"Apns-Expiration": {"0"}}
			} else {
				req.n.Expiration = time.Unix(secs, 0)
			}
		case "apns-collapse-id":
			req.n.CollapseID = v
		case "apns-push-type":
			if v != "" {
				req.n.PushType = apns2.EPushType(v)
			}
		default:
			s.log.Debug("apns: override header ignored", "event", "apns.header_ignored", "header", name)
		}
	}
	return req, nil
}

// invalid is the error of a push that cannot be sent as it is.
func invalid(field, format string, args ...any) *pb.Error {
	return pb.ProviderError(pb.CodeInvalidArgument, "%s %s", field, fmt.Sprintf(format, args...)).With("field", field)
}

func isHex(r rune) bool {
	return '0' <= r && r <= '9' || 'a' <= r && r <= 'f' || 'A' <= r && r <= 'F'
}

// headerValue reads an override header: a string, as FCM requires, or a
// bare number, which people write for apns-priority all the same.
func headerValue(raw json.RawMessage) (string, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		return n.String(), true
	}
	return "", false
}

// mergePayload merges patch over the JSON object base as a JSON merge
// patch (RFC 7386): objects merge key by key, so an override's aps.sound
// keeps the message's aps.alert, any other value replaces, and null
// removes a key (aps.alert: null makes a silent push).
func mergePayload(base, patch []byte) ([]byte, error) {
	var dst map[string]any
	if err := decode(base, &dst); err != nil {
		return nil, err
	}
	var src any
	if err := decode(patch, &src); err != nil {
		return nil, fmt.Errorf("is not JSON: %v", err)
	}
	obj, ok := src.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("must be a JSON object such as {\"aps\": {\"sound\": \"default\"}}")
	}
	mergePatch(dst, obj)
	return json.Marshal(dst)
}

// decode unmarshals data into v, keeping numbers as json.Number.
func decode(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber() // large ids survive the round trip digit for digit
	return d.Decode(v)
}

// mergePatch applies src to dst in place, as RFC 7386 describes.
func mergePatch(dst, src map[string]any) {
	for k, v := range src {
		switch v := v.(type) {
		case nil:
			delete(dst, k)
		case map[string]any:
			sub, ok := dst[k].(map[string]any)
			if !ok {
				sub = map[string]any{}
			}
			mergePatch(sub, v)
			dst[k] = sub
		default:
			dst[k] = v
		}
	}
}

package pushblaster

import (
	"bytes"
	"encoding/json"
	"strings"
	"text/template"
)

// Message is what the push says. Title, body, image and data values are Go
// templates (text/template) over the recipient: {{.user_id}}, {{.locale}},
// {{.platform}}, {{.timezone}} and every extra column of the audience, such
// as {{.first_name}}. A field the recipient lacks renders empty; write
// {{default "there" .first_name}} for a fallback. Templates are checked
// when the automation is saved.
type Message struct {
	Title string `json:"title"`
	Body  string `json:"body"`
	// Image is the URL of an image shown with the notification.
	Image string `json:"image,omitempty"`
	// Data is the string-only key/value payload handed to the app.
	Data map[string]string `json:"data,omitempty"`
	// Android and APNs are provider overrides passed through as they are
	// (FCM's AndroidConfig and ApnsConfig objects).
	Android json.RawMessage `json:"android,omitempty"`
	APNs    json.RawMessage `json:"apns,omitempty"`
}

// MaxPayloadBytes is FCM's limit on a message's notification and data.
const MaxPayloadBytes = 4096

// reservedDataKeys are refused by FCM in data.
var reservedDataKeys = []string{"from", "notification", "message_type"}

// templateFuncs are the functions a message template may call.
var templateFuncs = template.FuncMap{
	// default returns def when v is empty: {{default "there" .first_name}}.
	"default": func(def, v string) string {
		if v == "" {
			return def
		}
		return v
	},
	"upper": strings.ToUpper,
	"lower": strings.ToLower,
	"trim":  strings.TrimSpace,
}

// sampleRecipient is what templates are executed against when an
// automation is saved, so that execution errors surface then too.
var sampleRecipient = Recipient{UserID: "sample-user", Token: "sample-token", Platform: "android",
	Timezone: "UTC", Locale: "en-US"}

func (m *Message) validate(v *Validation, field string) {
	if strings.TrimSpace(m.Title) == "" && strings.TrimSpace(m.Body) == "" {
		v.Add(field, "needs a title or a body")
	}
	t, errs := m.compile(field)
	for _, fe := range errs {
		v.Add(fe.Field, "%s", fe.Message)
	}
	for k := range m.Data {
		lk := strings.ToLower(k)
		switch {
		case k == "":
			v.Add(field+".data", "has an empty key; every data key needs a name")
		case strings.HasPrefix(lk, "google.") || strings.HasPrefix(lk, "gcm."):
			v.Add(field+".data."+k, "uses a prefix FCM reserves (google., gcm.); rename the key")
		default:
			for _, r := range reservedDataKeys {
				if lk == r {
					v.Add(field+".data."+k, "is a key FCM reserves; rename it")
				}
			}
		}
	}
	for name, raw := range map[string]json.RawMessage{"android": m.Android, "apns": m.APNs} {
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			v.Add(field+"."+name, "must be a JSON object (the provider's override as documented by FCM)")
		}
	}
	if t == nil || len(errs) > 0 {
		return
	}
	// A sample rendering catches execution errors and a static payload
	// that alone is over the provider's limit.
	out, err := t.Render(&sampleRecipient)
	if err != nil {
		v.Add(err.(*Error).Context["field"], "%s", err.(*Error).Message)
		return
	}
	if n := out.PayloadSize(); n > MaxPayloadBytes {
		v.Add(field, "renders to %d bytes of title, body, image and data; FCM accepts at most %d", n, MaxPayloadBytes)
	}
}

// PayloadSize approximates what FCM counts against its 4096-byte limit: the
// notification's strings and the data's keys and values.
func (m *Message) PayloadSize() int {
	n := len(m.Title) + len(m.Body) + len(m.Image)
	for k, v := range m.Data {
		n += len(k) + len(v)
	}
	return n
}

// MessageTemplate is a parsed Message, ready to render per recipient.
type MessageTemplate struct {
	msg   Message
	parts []templatePart
}

// templatePart is one templated string of the message and where the
// rendered text goes.
type templatePart struct {
	field string
	tmpl  *template.Template
	set   func(*Message, string)
}

// Compile parses every template of m. A parse error is a validation error
// naming the field.
func (m *Message) Compile() (*MessageTemplate, error) {
	t, errs := m.compile("message")
	if len(errs) > 0 {
		var v Validation
		for _, fe := range errs {
			v.Add(fe.Field, "%s", fe.Message)
		}
		return nil, v.Err()
	}
	return t, nil
}

func (m *Message) compile(field string) (*MessageTemplate, []FieldError) {
	t := &MessageTemplate{msg: *m}
	var errs []FieldError
	add := func(name, src string, set func(*Message, string)) {
		if !strings.Contains(src, "{{") {
			return
		}
		tm, err := template.New(name).Option("missingkey=zero").Funcs(templateFuncs).Parse(src)
		if err != nil {
			errs = append(errs, FieldError{Field: name, Message: "is not a valid template: " + trimTemplateErr(err)})
			return
		}
		t.parts = append(t.parts, templatePart{field: name, tmpl: tm, set: set})
	}
	add(field+".title", m.Title, func(m *Message, s string) { m.Title = s })
	add(field+".body", m.Body, func(m *Message, s string) { m.Body = s })
	add(field+".image", m.Image, func(m *Message, s string) { m.Image = s })
	for k, src := range m.Data {
		add(field+".data."+k, src, func(m *Message, s string) { m.Data[k] = s })
	}
	return t, errs
}

// trimTemplateErr drops the "template: NAME:" prefix (the field already
// names it), keeping line:column and the reason.
func trimTemplateErr(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "template: ")
	if i := strings.Index(s, ":"); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// Render returns the message for r. An error is a validation error with
// code template naming the field.
func (t *MessageTemplate) Render(r *Recipient) (Message, error) {
	out := t.msg
	if len(t.parts) == 0 {
		return out, nil
	}
	if len(out.Data) > 0 {
		out.Data = make(map[string]string, len(t.msg.Data))
		for k, v := range t.msg.Data {
			out.Data[k] = v
		}
	}
	vars := make(map[string]string, len(r.Data)+4)
	for k, v := range r.Data {
		vars[k] = v
	}
	vars["user_id"], vars["platform"], vars["timezone"], vars["locale"] = r.UserID, r.Platform, r.Timezone, r.Locale
	var buf bytes.Buffer
	for _, p := range t.parts {
		buf.Reset()
		if err := p.tmpl.Execute(&buf, vars); err != nil {
			return Message{}, ProviderError(CodeTemplate, "%s does not render for user %s: %s", p.field, r.UserID, trimTemplateErr(err)).
				With("field", p.field)
		}
		p.set(&out, buf.String())
	}
	return out, nil
}

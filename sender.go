package pushblaster

import "context"

// Sender delivers pushes for one provider. The engine writes the ledger
// around every call, so a Sender only reports what happened.
type Sender interface {
	// Send delivers m to every recipient of rs and returns one result per
	// recipient, in order. An error means the whole batch failed (nothing
	// was sent); the engine records it per recipient.
	Send(ctx context.Context, m *Message, rs []Recipient) ([]SendResult, error)
}

// SendResult is one recipient's outcome.
type SendResult struct {
	// Sent is true when the provider accepted the push.
	Sent bool
	// Reason explains a failure in the provider's words.
	Reason string
}

// Package cadence asks a team's own frequency-capping service, the cadence
// service, which recipients of a live send may get the push. The service is
// optional: without a cadence.url nobody asks, and everyone may get it.
//
// # HTTP contract
//
// Before a live send, pushblaster POSTs the recipients' user ids to
// cadence.url in batches of at most cadence.batch_size ids (default 1000),
// up to 4 batches at a time. A user id appears at most once per check.
//
//	POST <cadence.url>
//	Content-Type: application/json
//	Accept: application/json
//
//	{
//	  "automation_id": 42,
//	  "automation": "weekly-digest",
//	  "execution_id": 1234,
//	  "send_at": "2025-06-02T09:00:00Z",
//	  "tags": ["digest", "marketing"],
//	  "user_ids": ["u1", "u2", "u3"]
//	}
//
// "automation" is the automation's name, "send_at" the planned send time in
// RFC 3339, "tags" the automation's tags (omitted when it has none).
//
// The service answers 200 (any 2xx status will do) with the ids that may get
// the push, and optionally why the others may not:
//
//	{"allowed": ["u1", "u3"], "reasons": {"u2": "3 pushes this week"}}
//
// Rules of the answer:
//
//   - An asked id missing from "allowed" is held back (the ledger records it
//     as capped, with its reason if there is one).
//   - "allowed" is required; an empty array holds everyone of the batch
//     back. An answer without it is malformed, so that a service that
//     answers something else is noticed instead of capping everyone.
//   - Ids that were not asked about are ignored, in "allowed" and in
//     "reasons"; so are unknown fields, so the service may add its own.
//   - The same execution may be checked more than once (a phase that is run
//     again after a failure or a restart), so a check must not count as a
//     push sent: count the pushes themselves.
//
// # Timeouts and failures
//
// Every request may take cadence.timeout (default 5s, from 1ms to 1m),
// answer included. pushblaster does not retry a request itself; a check
// fails as a whole when one of its requests fails, and batches not yet asked
// are not asked. A request fails when:
//
//   - no answer arrives within cadence.timeout;
//   - the service cannot be reached (connection refused, reset, DNS);
//   - it answers a status other than 2xx;
//   - its answer is not the JSON above.
//
// cadence.on_error then decides what happens to the whole check:
//
//   - fail (default): the check returns an error of kind external instead
//     of a decision: nothing is decided without the service. The error is recoverable (a later attempt
//     may succeed without anyone changing anything) for timeouts,
//     connection errors, 5xx and 429 answers; not for other 4xx answers or
//     malformed JSON, which need a fix of the service or the configuration.
//     A Retry-After header of the answer is kept in the error's context as
//     "retry_after".
//   - send_all: everyone asked may get the push, as if there were no
//     cadence service.
//   - skip_all: everyone asked is held back.
//
// A fallback is never silent: it is logged as a warning with
// event=cadence.fallback, and Decision.Fallback and Decision.Err report it.
// A check stopped by its caller (an abort, a shutdown) is no failure of the
// service: it returns the caller's error and applies no fallback.
package cadence

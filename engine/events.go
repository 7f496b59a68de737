package engine

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	pb "github.com/pushblaster/pushblaster"
	"github.com/pushblaster/pushblaster/store"
)

// The live event feed. Events are written to the store by whichever
// instance produced them; each instance runs one poller that reads the
// events table in id order and fans every new event out to its local
// subscribers (the SSE streams of its API). Nothing is pushed between
// instances: the table is the bus, so an event made on A reaches B's
// streams within one poll interval.
//
// Ids are given out in one order and may become visible in another: on
// PostgreSQL two transactions take ids 9 and 10 from the identity sequence
// and 10 can commit first. A stream must never jump over 9 (a client that
// resumes with Last-Event-ID 10 would lose it for good), so the poller
// publishes strictly in id order and holds everything above a missing id
// back until that id either shows up or is known never to come:
//
//   - the missing id appears on a later read: published in its place;
//   - PostgreSQL: every transaction that was running when the gap was seen
//     has ended (the snapshot's xmin passed the horizon taken then), and a
//     read after that still does not find it: it was rolled back;
//   - neither within GapTimeout (default 10s): given up, with a warning.
//
// The highest id up to which everything is published or given up is the
// watermark. A subscriber gets it with its subscription: events up to it
// are read from the store (replay), events above it come live, in order,
// with no gap and no duplicate.

// EventOptions tune the live event feed. Zero fields take the defaults.
type EventOptions struct {
	// PollInterval is how often the events table is read (default 200ms):
	// how late an event made on another instance reaches this one's
	// streams.
	PollInterval time.Duration
	// GapTimeout is how long an id missing below visible ones is waited
	// for before streams go past it (default 10s). Only a transaction
	// that takes longer than this to commit after writing an event can
	// lose that event for live streams (it stays in the store and the
	// JSON listing).
	GapTimeout time.Duration
	// ProgressEvery is the least time between two progress events of one
	// execution from this instance (default 1s).
	ProgressEvery time.Duration
	// ProgressClock times ProgressEvery (default: the system clock). The
	// limit protects the store, so it counts real time even when the
	// engine's clock is a test's that races ahead.
	ProgressClock pb.Clock
	// MaxHeld bounds the events held back behind a missing id (default
	// 50,000); past it the oldest gap is given up.
	MaxHeld int
}

// EventStats describe the live event feed of this instance.
type EventStats struct {
	// Subscribers counts the live subscriptions (open SSE streams).
	Subscribers int `json:"subscribers"`
	// Published is the watermark: every event up to this id has been
	// published (or given up).
	Published int64 `json:"published"`
	// Seen is the highest event id read.
	Seen int64 `json:"seen"`
	// Held counts events read but held back behind a missing id.
	Held int `json:"held"`
	// Missing counts ids below Seen not visible yet.
	Missing int64 `json:"missing"`
	// GivenUp counts ids streams went past without seeing them (rolled
	// back, or later than GapTimeout), since start.
	GivenUp int64 `json:"given_up"`
}

// EventReconnect is the type of the last event a subscription gets when
// the feed ends it (too slow, or the instance stopping). It has ID 0 and
// is never stored; its message says why.
const EventReconnect pb.EventType = "reconnect"

// Defaults of EventOptions, and fixed sizes.
const (
	defaultEventPoll = 200 * time.Millisecond
	// minPokeGap spaces the reads a burst of local events asks for.
	minPokeGap            = 5 * time.Millisecond
	defaultGapTimeout     = 10 * time.Second
	defaultProgressEvery  = time.Second
	defaultMaxHeld        = 50000
	defaultSubscribeBuf   = 1024 // at least eventPage: one poll's burst fits
	eventPage             = 1000
	eventStartWindow      = 1000 // ids below the tail re-read at start: transactions in flight then
	eventGapRecheckLimit  = 10000
	eventPollErrorLogging = 30 * time.Second
)

// EventHub is this instance's live event feed: one poller over the events
// table, fanned out to local subscribers. Create it with the engine
// (Engine.Events); the engine starts and stops it.
type EventHub struct {
	e    *Engine
	opts EventOptions

	mu        sync.Mutex
	subs      map[*subscriber]struct{}
	published int64
	stats     EventStats
	running   bool
	cancel    context.CancelFunc
	done      chan struct{}

	// Poller state: only the poller goroutine touches it.
	seen     int64
	held     []*pb.Event // read, not yet published, ascending ids
	gaps     []idGap     // missing ids in (published, seen], ascending
	polls    int64
	fastPath bool // PostgreSQL snapshot horizons are available
	givenUp  int64

	pmu   sync.Mutex
	marks map[int64]*progressMark

	// wake asks the poller to read now: this instance just stored an
	// event (Poke). Other instances' events arrive with the next poll.
	wake chan struct{}
}

// idGap is a run of missing ids [lo, hi] first seen at poll seenAt.
type idGap struct {
	lo, hi   int64
	seenAt   int64     // counted in timed polls (a poke's poll does not count)
	seenTime time.Time // when it was seen
	horizon  uint64    // xmax of a snapshot taken after the gap was seen; 0: not yet
	settled  bool      // every transaction below horizon has ended
}

type subscriber struct {
	f    pb.EventFilter
	ch   chan *pb.Event
	stop func() bool // stops the context.AfterFunc
}

func (s *subscriber) match(ev *pb.Event) bool {
	if s.f.ExecutionID != nil && ev.ExecutionID != *s.f.ExecutionID {
		return false
	}
	if s.f.AutomationID != nil && ev.AutomationID != *s.f.AutomationID {
		return false
	}
	return true
}

type progressMark struct {
	at    time.Time
	total int64 // recipients of the live send; 0 until known
}

func newEventHub(e *Engine) *EventHub {
	return &EventHub{e: e, subs: map[*subscriber]struct{}{}, marks: map[int64]*progressMark{}, opts: eventDefaults(EventOptions{}),
		wake: make(chan struct{}, 1)}
}

func eventDefaults(o EventOptions) EventOptions {
	if o.PollInterval <= 0 {
		o.PollInterval = defaultEventPoll
	}
	if o.GapTimeout <= 0 {
		o.GapTimeout = defaultGapTimeout
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = defaultProgressEvery
	}
	if o.MaxHeld <= 0 {
		o.MaxHeld = defaultMaxHeld
	}
	if o.ProgressClock == nil {
		o.ProgressClock = pb.SystemClock
	}
	return o
}

// Events returns this instance's live event feed.
func (e *Engine) Events() *EventHub { return e.events }

// Subscribe subscribes to this instance's live event feed (see
// EventHub.Subscribe); it makes the engine an httpapi.EventSource.
func (e *Engine) Subscribe(ctx context.Context, f pb.EventFilter, buffer int) (<-chan *pb.Event, int64, error) {
	return e.events.Subscribe(ctx, f, buffer)
}

// Configure sets the feed's options. Call it before the engine starts;
// later calls take effect at the next start.
func (h *EventHub) Configure(o EventOptions) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pmu.Lock()
	defer h.pmu.Unlock()
	h.opts = eventDefaults(o)
}

// Subscribers counts the live subscriptions (for metrics).
func (h *EventHub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// Stats describes the feed.
func (h *EventHub) Stats() EventStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.stats
	st.Subscribers = len(h.subs)
	st.Published = h.published
	return st
}

// Subscribe registers a subscriber for the events f selects (f.AfterID
// and f.Limit are ignored) until ctx ends. It returns the watermark:
// every selected event with a larger id is sent on the channel, in id
// order; those up to it are in the store (read them with ListEvents to
// replay). The channel holds buffer events (default 1024): a subscriber
// that falls that far behind is cut off, so that it never slows the feed
// down. When the feed ends a subscription (cut off, or the feed stopping)
// the last event on the channel has type EventReconnect, ID 0 and a
// message saying why; the channel is closed in every case, also when ctx
// ends. It fails (kind conflict, recoverable) when the feed is not
// running.
func (h *EventHub) Subscribe(ctx context.Context, f pb.EventFilter, buffer int) (<-chan *pb.Event, int64, error) {
	if buffer <= 0 {
		buffer = defaultSubscribeBuf
	}
	// One slot more than the buffer: the reconnect event always fits.
	s := &subscriber{f: pb.EventFilter{ExecutionID: f.ExecutionID, AutomationID: f.AutomationID}, ch: make(chan *pb.Event, buffer+1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.running {
		return nil, 0, pb.Errorf(pb.KindConflict, "the live event feed of instance %s is not running (it is starting or stopping); retry, or connect to another instance", h.e.cfg.InstanceID).
			WithRecoverable(true)
	}
	h.subs[s] = struct{}{}
	// Runs in its own goroutine when ctx ends (at once if it has).
	s.stop = context.AfterFunc(ctx, func() { h.remove(s) })
	return s.ch, h.published, nil
}

func (h *EventHub) remove(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		h.endLocked(s, "")
	}
}

// endLocked ends a subscription, with a reconnect event saying why unless
// why is empty (the subscriber left).
func (h *EventHub) endLocked(s *subscriber, why string) {
	delete(h.subs, s)
	if why != "" {
		s.ch <- &pb.Event{Type: EventReconnect, Message: why, At: h.e.now()}
	}
	close(s.ch)
	if s.stop != nil {
		s.stop()
	}
}

// Start reads the tail of the events table and starts polling. The engine
// calls it; a second call does nothing.
func (h *EventHub) Start(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running {
		return nil
	}
	var tail int64
	if err := h.e.store.Conn().QueryRow(ctx, `SELECT COALESCE(max(id), 0) FROM events`).Scan(&tail); err != nil {
		return pb.WrapError(pb.KindDatabase, err, "read the last event id")
	}
	// Ids just below the tail may belong to transactions still in flight:
	// read them again as if they were new, so none is skipped.
	start := max(0, tail-eventStartWindow)
	h.seen, h.published, h.held, h.gaps, h.polls, h.givenUp = start, start, nil, nil, 0, 0
	h.fastPath = h.e.store.Dialect() == "postgres"
	h.stats = EventStats{Seen: start}
	pollCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h.cancel, h.done, h.running = cancel, make(chan struct{}), true
	go h.loop(pollCtx, h.opts, h.done)
	return nil
}

// Stop ends every subscription with a reconnect event (clients go to
// another instance with their Last-Event-ID) and stops polling. It may be
// called more than once, e.g. by http.Server.RegisterOnShutdown and then
// by Engine.Stop.
func (h *EventHub) Stop() {
	h.mu.Lock()
	if !h.running {
		h.mu.Unlock()
		return
	}
	h.running = false
	for s := range h.subs {
		h.endLocked(s, fmt.Sprintf("instance %s is stopping; reconnect with Last-Event-ID (another instance serves the same events)", h.e.cfg.InstanceID))
	}
	cancel, done := h.cancel, h.done
	h.mu.Unlock()
	cancel()
	<-done
}

func (h *EventHub) loop(ctx context.Context, opts EventOptions, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(opts.PollInterval)
	defer t.Stop()
	maxPolls := max(1, int64(opts.GapTimeout/opts.PollInterval))
	var failingSince, lastReport time.Time
	timed := true
	var last time.Time
	for {
		if !timed {
			// Pokes come in bursts: space their reads a little.
			if wait := minPokeGap - time.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		}
		last = time.Now()
		err := h.poll(ctx, maxPolls, opts, timed)
		switch {
		case err != nil && ctx.Err() == nil:
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if time.Since(lastReport) > eventPollErrorLogging {
				lastReport = time.Now()
				h.e.log.Error("cannot read new events; live streams wait", "event", "events.poll_error", "since", failingSince, "error", err)
			}
		case err == nil && !failingSince.IsZero():
			h.e.log.Info("reading events again", "event", "events.poll_recovered")
			failingSince, lastReport = time.Time{}, time.Time{}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			timed = true
		case <-h.wake:
			timed = false
		}
	}
}

// Poke tells the poller that this instance stored an event, so that live
// streams get it at once instead of at the next poll.
func (h *EventHub) Poke() {
	select {
	case h.wake <- struct{}{}:
	default: // a poke is pending already
	}
}

// poll reads what is new, re-reads the gaps, and publishes in id order as
// far as nothing is missing.
func (h *EventHub) poll(ctx context.Context, maxPolls int64, opts EventOptions, timed bool) error {
	maxHeld := opts.MaxHeld
	if timed {
		h.polls++ // gap timeouts count timed polls only
	}
	n := h.polls
	if h.fastPath && len(h.gaps) > 0 {
		// Taken before the reads below: a transaction that ended before
		// this snapshot is visible to them.
		xmin, xmax, err := h.snapshot(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			h.e.log.Warn("cannot read PostgreSQL snapshots; missing event ids are waited for until the gap timeout", "event", "events.no_snapshot", "error", err)
			h.fastPath = false
		} else {
			for i := range h.gaps {
				g := &h.gaps[i]
				// The horizon is taken one poll after the gap was seen, so
				// that the transaction holding the id has its xid by then.
				if g.horizon == 0 && g.seenAt < n && time.Since(g.seenTime) >= opts.PollInterval {
					g.horizon = xmax
				}
				if g.horizon != 0 && xmin >= g.horizon {
					g.settled = true
				}
			}
		}
	}
	if err := h.recheck(ctx, n, maxPolls); err != nil {
		return err
	}
	for {
		page, err := h.e.store.ListEvents(ctx, pb.EventFilter{AfterID: h.seen, Limit: eventPage})
		if err != nil {
			return err
		}
		for _, ev := range page {
			if ev.ID > h.seen+1 {
				h.gaps = append(h.gaps, idGap{lo: h.seen + 1, hi: ev.ID - 1, seenAt: n, seenTime: time.Now()})
			}
			h.held = append(h.held, ev)
			h.seen = ev.ID
		}
		if len(page) < eventPage {
			break
		}
		// Page by page: a burst is at most a page, which a subscriber's
		// default buffer holds.
		h.publish()
	}
	for len(h.held) > maxHeld && len(h.gaps) > 0 {
		g := h.gaps[0]
		h.gaps = h.gaps[1:]
		h.givenUp += g.hi - g.lo + 1
		h.e.log.Warn("too many events held back behind missing ids; streams go past them", "event", "events.gap_overflow",
			"first_id", g.lo, "last_id", g.hi, "held", len(h.held))
		h.publish()
	}
	h.publish()
	return nil
}

// recheck reads the missing ids again; what is found joins the held
// events, what is known never to come (or waited for too long) is given
// up.
func (h *EventHub) recheck(ctx context.Context, n, maxPolls int64) error {
	if len(h.gaps) == 0 {
		return nil
	}
	var found []*pb.Event
	var kept []idGap
	for _, g := range h.gaps {
		lo := g.lo
		for lo <= g.hi {
			limit := min(g.hi-lo+1, eventGapRecheckLimit)
			page, err := h.e.store.ListEvents(ctx, pb.EventFilter{AfterID: lo - 1, Limit: int(limit)})
			if err != nil {
				return err
			}
			// A full page says nothing about ids past its last one.
			checked := g.hi
			if len(page) == int(limit) {
				checked = min(g.hi, page[len(page)-1].ID)
			}
			for _, ev := range page {
				if ev.ID > g.hi {
					break
				}
				if ev.ID > lo {
					kept = append(kept, idGap{lo: lo, hi: ev.ID - 1, seenAt: g.seenAt, seenTime: g.seenTime, horizon: g.horizon, settled: g.settled})
				}
				found = append(found, ev)
				lo = ev.ID + 1
			}
			if lo <= checked {
				kept = append(kept, idGap{lo: lo, hi: checked, seenAt: g.seenAt, seenTime: g.seenTime, horizon: g.horizon, settled: g.settled})
				lo = checked + 1
			}
		}
	}
	h.gaps = h.gaps[:0]
	for _, g := range kept {
		switch {
		case g.settled:
			// Every transaction that could hold these ids has ended and
			// they are not there: rolled back.
			h.givenUp += g.hi - g.lo + 1
			h.e.log.Debug("event ids never committed (rolled back); streams go past them", "event", "events.gap_rolled_back", "first_id", g.lo, "last_id", g.hi)
		case n-g.seenAt >= maxPolls:
			h.givenUp += g.hi - g.lo + 1
			h.e.log.Warn("event ids missing for the whole gap timeout; live streams go past them (the events stay in the store if they commit later)",
				"event", "events.gap_timeout", "first_id", g.lo, "last_id", g.hi)
		default:
			h.gaps = append(h.gaps, g)
		}
	}
	if len(found) > 0 {
		h.held = append(h.held, found...)
		slices.SortFunc(h.held, func(a, b *pb.Event) int { return cmp.Compare(a.ID, b.ID) })
	}
	return nil
}

// publish fans out the held events below the first gap, in id order, and
// moves the watermark.
func (h *EventHub) publish() {
	h.mu.Lock()
	defer h.mu.Unlock()
	limit := int64(1<<63 - 1)
	if len(h.gaps) > 0 {
		limit = h.gaps[0].lo
	}
	i := 0
	for ; i < len(h.held) && h.held[i].ID < limit; i++ {
		ev := h.held[i]
		for s := range h.subs {
			if !s.match(ev) {
				continue
			}
			if len(s.ch) >= cap(s.ch)-1 {
				h.e.log.Info("event subscriber too slow; cut off (it reconnects with Last-Event-ID)", "event", "events.subscriber_slow", "buffer", cap(s.ch)-1)
				h.endLocked(s, fmt.Sprintf("too slow: %d events behind; reconnect with Last-Event-ID to resume where you are", cap(s.ch)-1))
				continue
			}
			s.ch <- ev
		}
	}
	h.held = h.held[i:]
	if len(h.held) == 0 {
		h.held = nil // let the backing array go
	}
	if len(h.gaps) == 0 {
		h.published = max(h.published, h.seen)
	} else {
		h.published = max(h.published, h.gaps[0].lo-1)
	}
	var missing int64
	for _, g := range h.gaps {
		missing += g.hi - g.lo + 1
	}
	h.stats = EventStats{Seen: h.seen, Held: len(h.held), Missing: missing, GivenUp: h.givenUp}
}

// snapshot returns the xmin and xmax of a fresh PostgreSQL snapshot.
func (h *EventHub) snapshot(ctx context.Context) (xmin, xmax uint64, err error) {
	var lo, hi string
	err = h.e.store.Conn().QueryRow(ctx,
		`SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text FROM pg_current_snapshot() AS s`).Scan(&lo, &hi)
	if err != nil {
		return 0, 0, err
	}
	if xmin, err = strconv.ParseUint(lo, 10, 64); err == nil {
		xmax, err = strconv.ParseUint(hi, 10, 64)
	}
	return xmin, xmax, err
}

// progress records how far a running live send got, as a progress event:
// at most one per execution per ProgressEvery on this instance, so that a
// fast send does not flood the events table. Totals come from the ledger
// (over every instance's batches). A failure is logged, never returned:
// progress is for people, the send goes on.
func (e *Engine) progress(ctx context.Context, r *sendRun) {
	if r.aud != store.AudienceLive || ctx.Err() != nil {
		return
	}
	h, id := e.events, r.ex.ID
	h.pmu.Lock()
	now := h.opts.ProgressClock.Now()
	m := h.marks[id]
	if m != nil && now.Before(m.at.Add(h.opts.ProgressEvery)) {
		h.pmu.Unlock()
		return
	}
	if m == nil {
		if len(h.marks) >= 1000 {
			for k, old := range h.marks {
				if now.Sub(old.at) > 10*time.Minute {
					delete(h.marks, k)
				}
			}
		}
		m = &progressMark{}
		h.marks[id] = m
	}
	m.at = now // taken before the reads: concurrent batches skip
	total := m.total
	h.pmu.Unlock()

	if total == 0 {
		if r.seq < 0 {
			total = int64(len(r.a.TestAudience)) // a test-mode live send
		} else {
			metrics, err := e.store.Metrics(ctx, id)
			if err != nil {
				e.log.Warn("cannot read the audience size for a progress event", "event", "event.error", "execution_id", id, "error", err)
				return
			}
			total = metrics[pb.MetricAudienceSize] - metrics[pb.MetricNoToken]
		}
		h.pmu.Lock()
		m.total = total
		h.pmu.Unlock()
	}
	counts, err := e.liveCounts(ctx, id)
	if err != nil {
		e.log.Warn("cannot count deliveries for a progress event", "event", "event.error", "execution_id", id, "error", err)
		return
	}
	sent, failed := counts[store.DeliverySent], counts[store.DeliveryFailed]
	invalid, capped, unknown := counts[store.DeliveryInvalidToken], counts[store.DeliveryCapped], counts[store.DeliveryUnknown]
	done := sent + failed + invalid + capped + unknown
	total = max(total, done)
	msg := fmt.Sprintf("live send: %d of %d done (sent %d, failed %d", done, total, sent, failed)
	if invalid > 0 {
		msg += fmt.Sprintf(", invalid token %d", invalid)
	}
	if capped > 0 {
		msg += fmt.Sprintf(", capped %d", capped)
	}
	msg += ")"
	e.recordEvent(ctx, &pb.Event{AutomationID: r.ex.AutomationID, ExecutionID: id, Type: pb.EventProgress, Phase: pb.PhaseLiveSend,
		Message: msg, Data: map[string]string{
			"sent": strconv.FormatInt(sent, 10), "failed": strconv.FormatInt(failed, 10),
			pb.MetricInvalidToken: strconv.FormatInt(invalid, 10), pb.MetricCapped: strconv.FormatInt(capped, 10),
			pb.MetricUnknown: strconv.FormatInt(unknown, 10),
			"done":           strconv.FormatInt(done, 10), "total": strconv.FormatInt(total, 10),
		}})
}

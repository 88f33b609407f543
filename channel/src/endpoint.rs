//! One side of a channel pair: the API a server uses.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::db::{self, Entry, RequestDb, RequestId};
use crate::error::{ChannelError, Corruption};
use crate::layout::{PairLayout, N_KICKS, N_SLEEPS, N_STATE};
use crate::notify::{self, Notifier, Waiter};
use crate::pool::Pool;
use crate::region::Region;
use crate::ring::{self, Consumer, Producer};
use crate::wire::{self, Words, FLAGS_KNOWN, FLAG_ONEWAY, FLAG_PAYLOAD, INLINE_WORDS};
use crate::Side;

/// Messages sent after which the deferred kick check runs even if the side stays busy.
pub const KICK_CHECK_EVERY: u32 = 256;
/// Empty polls in a row after which the deferred kick check runs.
pub const KICK_CHECK_IDLE_POLLS: u32 = 64;

/// The accessors that [`Request`] and [`Reply`] share: both are this side's private copy of a
/// message's words, validated when it was taken.
macro_rules! message_accessors {
    () => {
        /// The request's id: what [`Endpoint::send_request`] returned to the requester (0 for
        /// a one-way message).
        #[inline]
        pub fn id(&self) -> RequestId {
            RequestId(self.words[0])
        }
        /// Application operation code of the request.
        #[inline]
        pub fn opcode(&self) -> u16 {
            wire::opcode(&self.words)
        }
        /// The inline words (the requester's in a request, the replier's in a reply).
        #[inline]
        pub fn inline(&self) -> &[u64; INLINE_WORDS] {
            wire::inline(&self.words)
        }
        /// Payload length in bytes (checked to lie inside the request's pool buffer).
        #[inline]
        pub fn payload_len(&self) -> usize {
            payload(&self.words).1 as usize
        }
    };
}

mod payload;
pub use payload::{Payload, PayloadMut};

/// A request received from the peer. Not `Clone`: [`Endpoint::reply`] consumes it, so a
/// request is answered at most once.
///
/// It is this side's private copy of the request's slot, validated when it was taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    words: Words,
}

impl Request {
    message_accessors!();

    /// Whether the request expects no reply.
    #[inline]
    pub fn is_oneway(&self) -> bool {
        wire::flags(&self.words) & FLAG_ONEWAY != 0
    }
}

/// Offset and length of a validated message's payload ((0, 0) without one).
#[inline(always)]
fn payload(w: &Words) -> (u32, u32) {
    if wire::flags(w) & FLAG_PAYLOAD != 0 {
        (wire::payload_off(w), wire::payload_len(w))
    } else {
        (0, 0)
    }
}

/// A reply to one of this endpoint's requests. Not `Clone`: [`Endpoint::free`] consumes it
/// and gives the request's database entry and buffer back.
///
/// This side's private copy of the reply's slot, validated when it was taken, with the
/// opcode of the request as this side's database recorded it.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    words: Words,
}

impl Reply {
    message_accessors!();

    /// Status set by the replier.
    #[inline]
    pub fn status(&self) -> u32 {
        wire::status(&self.words)
    }
}

/// Messages waiting in each of a pair's four queues, from the shared indices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Requests waiting for this side.
    pub requests_in: u32,
    /// Replies waiting for this side.
    pub replies_in: u32,
    /// This side's requests not yet taken by the peer.
    pub requests_out: u32,
    /// This side's replies not yet taken by the peer.
    pub replies_out: u32,
}

/// Notification counters of one side (from its notification area).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Times the side announced that it sleeps ([`Endpoint::wait_for_work`] after its
    /// spins; includes the times the final re-check found work and it did not block). At
    /// least the number of kicks, since a sender kicks at most once per announcement.
    pub sleeps: u64,
    /// Times the peer kicked it.
    pub kicks: u64,
}

/// Read a side's counters (for the VMM, which has the layout but no endpoint).
pub fn counters(region: &Region, layout: &PairLayout, side: Side) -> Counters {
    let n = layout.side(side).notify;
    let get = |off| {
        region
            .u64_at(n + off)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    };
    Counters {
        sleeps: get(N_SLEEPS),
        kicks: get(N_KICKS),
    }
}

/// Messages one side has sent and received since the channel was initialised, from
/// the rings' free-running indices (for the VMM's status view). Counted modulo 2³²;
/// "sent" lags like [`occupancy`] does (the producer stores its `tail` off the fast
/// path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests this side sent.
    pub requests_sent: u32,
    /// Requests this side took from the peer.
    pub requests_received: u32,
    /// Replies this side sent.
    pub replies_sent: u32,
    /// Replies this side took from the peer.
    pub replies_received: u32,
}

/// Totals of `side` (for the VMM, which has the layout but no endpoint).
pub fn totals(region: &Region, layout: &PairLayout, side: Side) -> Totals {
    let get = |off| region.u32_at(off).map_or(0, |a| a.load(Ordering::Relaxed));
    let (mine, peer) = (layout.side(side), layout.side(side.peer()));
    Totals {
        requests_sent: get(peer.requests.tail),
        requests_received: get(mine.requests.head),
        replies_sent: get(peer.replies.tail),
        replies_received: get(mine.replies.head),
    }
}

/// Occupancy of `side`'s queues (for the VMM, which has the layout but no endpoint).
pub fn occupancy(region: &Region, layout: &PairLayout, side: Side) -> Occupancy {
    let mine = layout.side(side);
    let peer = layout.side(side.peer());
    Occupancy {
        requests_in: ring::occupancy(region, &mine.requests),
        replies_in: ring::occupancy(region, &mine.replies),
        requests_out: ring::occupancy(region, &peer.requests),
        replies_out: ring::occupancy(region, &peer.replies),
    }
}

/// One side of a channel pair.
///
/// Every side can both send requests (and receive their replies) and serve the peer's
/// requests. A message is visible to the peer as soon as it is sent; what is deferred is
/// the sender's half of the sleep protocol (see [`KICK_CHECK_EVERY`]), which runs when the
/// endpoint polls without finding work or waits, so a server loop of "poll, handle, reply"
/// never needs an explicit flush. A side that stops sending and does *not* go on polling or
/// waiting must call [`flush`](Self::flush), or a sleeping peer may not be woken.
#[derive(Debug)]
pub struct Endpoint<N: Notifier> {
    region: Region,
    layout: PairLayout,
    side: Side,
    tx_requests: Producer,
    tx_replies: Producer,
    rx_requests: Consumer,
    rx_replies: Consumer,
    db: RequestDb,
    my_pool: Pool,
    peer_pool: Pool,
    my_notify: usize,
    peer_notify: usize,
    notifier: N,
    unchecked: u32,
    idle_polls: u32,
    stale_replies: u64,
    broken: Option<Corruption>,
}

impl<N: Notifier> Endpoint<N> {
    /// Attach to an initialised region as `side`, kicking the peer through `notifier`.
    ///
    /// Validates the header (magic, version, sizes against the region's length) and the
    /// state this side finds (ring indices, request database). An endpoint that restarts
    /// attaches again and continues where its predecessor stopped; its outstanding requests
    /// are listed by [`outstanding`](Self::outstanding).
    pub fn attach(region: Region, side: Side, notifier: N) -> Result<Self, ChannelError> {
        let layout = PairLayout::from_region(&region)?;
        let cfg = *layout.config();
        let mine = *layout.side(side);
        let peer = *layout.side(side.peer());
        let c = ChannelError::Corrupt;
        Ok(Endpoint {
            tx_requests: Producer::attach(&region, peer.requests).map_err(c)?,
            tx_replies: Producer::attach(&region, peer.replies).map_err(c)?,
            rx_requests: Consumer::attach(&region, mine.requests).map_err(c)?,
            rx_replies: Consumer::attach(&region, mine.replies).map_err(c)?,
            db: RequestDb::attach(&region, mine.db, cfg.max_outstanding).map_err(c)?,
            my_pool: Pool::new(mine.pool, cfg.buf_size, cfg.max_outstanding),
            peer_pool: Pool::new(peer.pool, cfg.buf_size, cfg.max_outstanding),
            my_notify: mine.notify,
            peer_notify: peer.notify,
            region,
            layout,
            side,
            notifier,
            unchecked: 0,
            idle_polls: 0,
            stale_replies: 0,
            broken: None,
        })
    }

    /// Which side this endpoint is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The region's layout.
    pub fn layout(&self) -> &PairLayout {
        &self.layout
    }

    /// The notifier given to [`attach`](Self::attach).
    pub fn notifier(&self) -> &N {
        &self.notifier
    }

    /// The corruption that broke this endpoint, if any. A broken endpoint answers every
    /// operation with [`ChannelError::Broken`] and never touches the region again.
    pub fn broken(&self) -> Option<Corruption> {
        self.broken
    }

    /// Bytes available for one request's payload.
    pub fn buffer_size(&self) -> usize {
        self.my_pool.buf_size() as usize
    }

    #[inline(always)]
    fn check(&self) -> Result<(), ChannelError> {
        match self.broken {
            None => Ok(()),
            Some(c) => Err(ChannelError::Broken(c)),
        }
    }

    #[cold]
    fn fail(&mut self, c: Corruption) -> ChannelError {
        self.broken = Some(c);
        ChannelError::Corrupt(c)
    }

    #[inline(always)]
    fn guard<T>(&mut self, r: Result<T, Corruption>) -> Result<T, ChannelError> {
        r.map_err(|c| self.fail(c))
    }

    #[inline(always)]
    fn state_word(region: &Region, notify: usize) -> Result<&AtomicU32, Corruption> {
        region.u32_at(notify + N_STATE).ok_or(Corruption::BadHeader)
    }

    /// The sender half of the notification protocol for every message sent so far, and the
    /// bookkeeping that can wait as long: store the rings' `tail` indices for observers.
    ///
    /// The kick check that must follow a message (fence, read the peer's state) is
    /// *deferred*: it runs when this side waits, flushes or finds a queue full, after
    /// [`KICK_CHECK_IDLE_POLLS`] empty polls in a row, or after [`KICK_CHECK_EVERY`] messages
    /// sent. A full fence costs as much as a cache-line transfer here (it waits for the
    /// stores it orders), so it is kept off the message's critical path; never skipping it
    /// keeps the no-lost-wake-up argument, and the delay it adds to waking a sleeping peer is
    /// a few polls, small next to the wake-up itself.
    #[inline(never)]
    fn kick_check(&mut self) -> Result<(), Corruption> {
        if self.unchecked == 0 {
            return Ok(());
        }
        self.unchecked = 0;
        self.idle_polls = 0;
        // Off the critical path: the indices only this side writes are still its own.
        self.tx_requests.verify()?;
        self.tx_replies.verify()?;
        self.tx_requests.publish();
        self.tx_replies.publish();
        let region = self.region;
        let state = Self::state_word(&region, self.peer_notify)?;
        if notify::sender_must_kick(state) {
            if let Some(k) = region.u64_at(self.peer_notify + N_KICKS) {
                k.fetch_add(1, Ordering::Relaxed);
            }
            self.notifier.kick();
        } else if !notify::is_state(state.load(Ordering::Relaxed)) {
            return Err(Corruption::NotifyState);
        }
        Ok(())
    }

    /// A message was sent (and is visible): count it for the deferred kick check.
    #[inline(always)]
    fn sent(&mut self) -> Result<(), ChannelError> {
        self.unchecked += 1;
        if self.unchecked >= KICK_CHECK_EVERY {
            let r = self.kick_check();
            self.guard(r)?;
        }
        Ok(())
    }

    /// A queue is full: settle the kick check (a sleeping peer would otherwise never make
    /// room) and report it.
    #[cold]
    fn full<T>(&mut self) -> Result<T, ChannelError> {
        let r = self.kick_check();
        self.guard(r)?;
        Err(ChannelError::Full)
    }

    /// An empty poll: after a few in a row, settle any deferred kick check.
    #[inline(always)]
    fn idle(&mut self) -> Result<(), ChannelError> {
        if self.unchecked > 0 {
            self.idle_polls += 1;
            if self.idle_polls >= KICK_CHECK_IDLE_POLLS {
                let r = self.kick_check();
                return self.guard(r);
            }
        }
        Ok(())
    }

    /// Kick the peer now if it sleeps and this side sent it something since it went to sleep.
    /// Call it when done sending and not about to poll or wait (polling and waiting do it
    /// by themselves).
    pub fn flush(&mut self) -> Result<(), ChannelError> {
        self.check()?;
        let r = self.kick_check();
        self.guard(r)
    }

    /// Send a request with `payload` copied into its pool buffer. Returns its id; the reply
    /// comes back through [`poll_reply`](Self::poll_reply).
    ///
    /// Errors: [`ChannelError::NoFreeRequest`] when `max_outstanding` requests are
    /// unfreed, [`ChannelError::Full`] when the peer's request queue is full,
    /// [`ChannelError::PayloadTooLarge`].
    #[inline(always)]
    pub fn send_request(
        &mut self,
        opcode: u16,
        inline: [u64; INLINE_WORDS],
        payload: &[u8],
    ) -> Result<RequestId, ChannelError> {
        self.check()?;
        if payload.len() > self.my_pool.buf_size() as usize {
            return Err(ChannelError::PayloadTooLarge);
        }
        #[allow(clippy::cast_possible_truncation)] // checked against buf_size above
        let len = payload.len() as u32;
        self.commit_request(opcode, inline, len, payload)
    }

    /// Allocate a request's entry and send it with `len` payload bytes: `payload` is copied
    /// into its buffer first, or, when empty, the buffer already holds them
    /// ([`send_request_with`](Self::send_request_with)). `len <= buf_size`.
    #[inline(always)]
    fn commit_request(
        &mut self,
        opcode: u16,
        inline: [u64; INLINE_WORDS],
        len: u32,
        payload: &[u8],
    ) -> Result<RequestId, ChannelError> {
        // Slots of replies we have consumed go back before the peer may need them for the
        // reply to this request (the reply queue holds exactly `max_outstanding`).
        self.rx_replies.publish();
        let entry = Entry {
            opcode,
            payload_off: 0,
            payload_len: len,
            inline,
        };
        let r = self.db.alloc(&entry);
        let Some(id) = self.guard(r)? else {
            return Err(ChannelError::NoFreeRequest);
        };
        let r = self.write_request(id, &entry, payload);
        match self.guard(r)? {
            true => {
                self.sent()?;
                Ok(id)
            }
            false => {
                let r = self.db.free(id, db::SENT);
                self.guard(r)?;
                self.full()
            }
        }
    }

    #[inline(always)]
    fn write_request(
        &mut self,
        id: RequestId,
        entry: &Entry,
        payload: &[u8],
    ) -> Result<bool, Corruption> {
        if !payload.is_empty() {
            let off = self
                .my_pool
                .span(id.index(), entry.payload_off, entry.payload_len)?;
            self.region
                .write_bytes(off, payload)
                .ok_or(Corruption::PayloadBounds)?;
        }
        let w = request_words(id, entry);
        self.tx_requests.push(&w)
    }

    /// Send a one-way message (inline words only, no reply, no database entry). This is the
    /// bare queue: the cheapest way to move 64 bytes.
    #[inline(always)]
    pub fn send_oneway(
        &mut self,
        opcode: u16,
        inline: [u64; INLINE_WORDS],
    ) -> Result<(), ChannelError> {
        self.check()?;
        let w = wire::words(0, wire::control(opcode, FLAG_ONEWAY, 0), 0, &inline);
        let r = self.tx_requests.push(&w);
        if !self.guard(r)? {
            return self.full();
        }
        self.sent()
    }

    /// Take the next request from the peer, if any.
    #[inline(always)]
    pub fn poll_request(&mut self) -> Result<Option<Request>, ChannelError> {
        self.check()?;
        let Some(words) = self.rx_requests.pop() else {
            let r = self.rx_requests.verify();
            self.guard(r)?;
            self.idle()?;
            return Ok(None);
        };
        self.idle_polls = 0;
        let r = self.validate_request(&words);
        self.guard(r)?;
        Ok(Some(Request { words }))
    }

    #[inline(always)]
    fn validate_request(&self, w: &Words) -> Result<(), Corruption> {
        let flags = wire::flags(w);
        let id = RequestId(w[0]);
        if flags & !FLAGS_KNOWN != 0 {
            return Err(Corruption::BadMessage);
        }
        if flags & FLAG_ONEWAY != 0 {
            if id.0 != 0 || flags & FLAG_PAYLOAD != 0 {
                return Err(Corruption::BadMessage);
            }
        } else {
            if id.generation() == 0 || id.index() >= self.layout.config().max_outstanding {
                return Err(Corruption::BadMessage);
            }
            if flags & FLAG_PAYLOAD != 0 {
                self.peer_pool
                    .span(id.index(), wire::payload_off(w), wire::payload_len(w))?;
            }
        }
        Ok(())
    }

    /// Copy the start of `req`'s payload into `dst`; returns the bytes copied.
    pub fn read_request_payload(
        &self,
        req: &Request,
        dst: &mut [u8],
    ) -> Result<usize, ChannelError> {
        self.request_payload(req)?.read(0, dst)
    }

    /// Answer `req`: `payload` (if any) is written into the request's buffer, which goes back
    /// to the requester with the reply. One-way requests cannot be answered.
    #[inline(always)]
    pub fn reply(
        &mut self,
        req: Request,
        status: u32,
        inline: [u64; INLINE_WORDS],
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        self.check()?;
        if req.is_oneway() {
            return Err(ChannelError::InvalidHandle);
        }
        let len = u32::try_from(payload.len()).map_err(|_| ChannelError::PayloadTooLarge)?;
        if !payload.is_empty() {
            let off = self
                .peer_pool
                .span(req.id().index(), 0, len)
                .map_err(|_| ChannelError::PayloadTooLarge)?;
            self.region
                .write_bytes(off, payload)
                .ok_or(ChannelError::PayloadTooLarge)?;
        }
        self.push_reply(req, status, inline, len)
    }

    /// Send the reply to `req` with `len` payload bytes already in the request's buffer.
    #[inline(always)]
    fn push_reply(
        &mut self,
        req: Request,
        status: u32,
        inline: [u64; INLINE_WORDS],
        len: u32,
    ) -> Result<(), ChannelError> {
        let flags = if len > 0 { FLAG_PAYLOAD } else { 0 };
        let w = wire::words(
            req.words[0],
            wire::control(req.opcode(), flags, status),
            wire::payload_span(0, len),
            &inline,
        );
        let r = self.tx_replies.push(&w);
        if !self.guard(r)? {
            // Only a peer that exceeds its own `max_outstanding` can fill its reply queue.
            return self.full();
        }
        self.sent()
    }

    /// Whether the peer's reply queue has room for one more reply. A server that takes a
    /// request only when this holds never has to drop one because [`reply`](Self::reply)
    /// found the queue full: a peer that does not take its replies then waits, with its
    /// requests left in the queue, instead of having them lost.
    #[inline]
    pub fn can_reply(&mut self) -> Result<bool, ChannelError> {
        self.check()?;
        let r = self.tx_replies.has_room();
        self.guard(r)
    }

    /// Take the next reply to one of this side's requests, if any.
    ///
    /// A reply whose id is well-formed but not outstanding (a late answer to an abandoned
    /// request, a duplicate after a resubmission) is dropped and counted by
    /// [`stale_replies`](Self::stale_replies); it frees nothing.
    #[inline(always)]
    pub fn poll_reply(&mut self) -> Result<Option<Reply>, ChannelError> {
        self.check()?;
        // Bounded: at most one ring's worth of stale replies per call.
        for _ in 0..=self.layout.config().max_outstanding {
            let Some(words) = self.rx_replies.pop() else {
                let r = self.rx_replies.verify();
                self.guard(r)?;
                self.idle()?;
                return Ok(None);
            };
            self.idle_polls = 0;
            let r = self.accept_reply(words);
            match self.guard(r)? {
                Some(reply) => return Ok(Some(reply)),
                None => self.stale_replies += 1,
            }
        }
        Ok(None)
    }

    #[inline(always)]
    fn accept_reply(&mut self, mut w: Words) -> Result<Option<Reply>, Corruption> {
        let id = RequestId(w[0]);
        let flags = wire::flags(&w);
        if flags & (!FLAGS_KNOWN | FLAG_ONEWAY) != 0
            || id.index() >= self.layout.config().max_outstanding
        {
            return Err(Corruption::BadMessage);
        }
        if flags & FLAG_PAYLOAD != 0 {
            self.my_pool
                .span(id.index(), wire::payload_off(&w), wire::payload_len(&w))?;
        }
        let Some(opcode) = self.db.take_reply(id)? else {
            return Ok(None);
        };
        // The opcode is the one this side recorded, whatever the peer wrote.
        w[1] = wire::control(opcode, flags, wire::status(&w));
        Ok(Some(Reply { words: w }))
    }

    /// Replies dropped because they named no outstanding request.
    pub fn stale_replies(&self) -> u64 {
        self.stale_replies
    }

    /// Copy the start of `reply`'s payload into `dst`; returns the bytes copied.
    pub fn read_reply_payload(&self, reply: &Reply, dst: &mut [u8]) -> Result<usize, ChannelError> {
        self.reply_payload(reply)?.read(0, dst)
    }

    /// Give a replied request's database entry and buffer back.
    #[inline(always)]
    pub fn free(&mut self, reply: Reply) -> Result<(), ChannelError> {
        self.check()?;
        let r = self.db.free(reply.id(), db::REPLIED);
        if self.guard(r)? {
            Ok(())
        } else {
            // We recorded it as REPLIED when the reply came in: the peer rewrote our entry.
            Err(self.fail(Corruption::RequestDb))
        }
    }

    /// Requests sent and not yet replied (after a restart of either side: the ones to
    /// [`resubmit`](Self::resubmit) or [`abandon`](Self::abandon)).
    pub fn outstanding(&self) -> impl Iterator<Item = RequestId> + '_ {
        (0..self.db.capacity()).filter_map(|i| self.db.sent_at(i).ok().flatten())
    }

    /// Number of requests allocated and not freed (sent, or replied and not yet freed).
    pub fn outstanding_count(&self) -> u32 {
        self.db.outstanding()
    }

    /// Send an outstanding request again, unchanged (payload still in its buffer): for a
    /// peer that restarted and lost it.
    pub fn resubmit(&mut self, id: RequestId) -> Result<(), ChannelError> {
        self.check()?;
        let r = self.db.lookup(id, db::SENT);
        let entry = self.guard(r)?.ok_or(ChannelError::InvalidHandle)?;
        let w = request_words(id, &entry);
        let r = self.tx_requests.push(&w);
        if !self.guard(r)? {
            return self.full();
        }
        self.sent()
    }

    /// Drop every request waiting for this side: what a restarted server does before its
    /// peers [`resubmit`](Self::resubmit) their outstanding requests, so that none is served
    /// twice. (A plain [`attach`](Self::attach) instead delivers again the requests that its
    /// predecessor took without acknowledging.) Returns how many were dropped.
    pub fn discard_requests(&mut self) -> Result<u32, ChannelError> {
        self.check()?;
        let mut n = 0;
        for _ in 0..self.layout.config().queue_depth {
            if self.rx_requests.pop().is_none() {
                break;
            }
            n += 1;
        }
        self.rx_requests.publish();
        Ok(n)
    }

    /// Fail an outstanding request: free its entry and buffer without a reply.
    pub fn abandon(&mut self, id: RequestId) -> Result<(), ChannelError> {
        self.check()?;
        let r = self.db.free(id, db::SENT);
        if self.guard(r)? {
            Ok(())
        } else {
            Err(ChannelError::InvalidHandle)
        }
    }

    /// Whether a request or reply is waiting (one relaxed load per queue at most).
    #[inline]
    pub fn has_incoming(&mut self) -> Result<bool, ChannelError> {
        self.check()?;
        let r = self.incoming();
        self.guard(r)
    }

    #[inline(always)]
    fn incoming(&self) -> Result<bool, Corruption> {
        Ok(self.rx_requests.has_pending() || self.rx_replies.has_pending())
    }

    /// Settle the deferred kick check, poll up to `spins` times, then sleep through `waiter` until
    /// kicked, following the no-lost-wake-up protocol of [`notify`]. Returns whether work is
    /// waiting (`false` after a spurious or timed-out wait: just call again).
    pub fn wait_for_work<W: Waiter + ?Sized>(
        &mut self,
        waiter: &W,
        spins: u32,
    ) -> Result<bool, ChannelError> {
        self.flush()?;
        for _ in 0..spins {
            if self.has_incoming()? {
                return Ok(true);
            }
            core::hint::spin_loop();
        }
        if self.begin_sleep()? {
            return Ok(true);
        }
        waiter.wait();
        self.end_sleep()?;
        self.has_incoming()
    }

    /// Sleeping, step 1, for a receiver that waits on several endpoints at once (one
    /// endpoint: use [`wait_for_work`](Self::wait_for_work)): settle the deferred kick check,
    /// announce that this side sleeps, and re-check its queues. Returns `true` when work
    /// arrived meanwhile; the announcement is then withdrawn. The receiver calls this on
    /// each endpoint; if one returns `true` it calls [`end_sleep`](Self::end_sleep) on
    /// those that returned `false` and polls again; otherwise it blocks until any peer
    /// kicks it, then calls `end_sleep` on every endpoint.
    pub fn begin_sleep(&mut self) -> Result<bool, ChannelError> {
        self.flush()?;
        let region = self.region;
        let r = Self::state_word(&region, self.my_notify);
        let state = self.guard(r)?;
        if let Some(s) = region.u64_at(self.my_notify + N_SLEEPS) {
            s.store(s.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        }
        notify::receiver_prepare_sleep(state);
        let r = self.incoming();
        if self.guard(r)? {
            notify::receiver_cancel_sleep(state);
            return Ok(true);
        }
        Ok(false)
    }

    /// Sleeping, step 2: this side polls again (after [`begin_sleep`](Self::begin_sleep)
    /// returned `false`).
    pub fn end_sleep(&mut self) -> Result<(), ChannelError> {
        let region = self.region;
        let r = Self::state_word(&region, self.my_notify);
        let state = self.guard(r)?;
        notify::receiver_woke(state);
        Ok(())
    }

    /// Occupancy of this pair's queues as seen from this side.
    pub fn occupancy(&self) -> Occupancy {
        occupancy(&self.region, &self.layout, self.side)
    }

    /// This side's notification counters.
    pub fn counters(&self) -> Counters {
        counters(&self.region, &self.layout, self.side)
    }
}

/// The words of request `id` as `entry` records it.
#[inline(always)]
fn request_words(id: RequestId, entry: &Entry) -> Words {
    let flags = if entry.payload_len > 0 {
        FLAG_PAYLOAD
    } else {
        0
    };
    wire::words(
        id.0,
        wire::control(entry.opcode, flags, 0),
        wire::payload_span(entry.payload_off, entry.payload_len),
        &entry.inline,
    )
}

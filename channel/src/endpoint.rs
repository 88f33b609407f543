//! One side of a channel pair: the API a server uses.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::db::{self, Entry, RequestDb, RequestId};
use crate::error::{ChannelError, Corruption};
use crate::layout::{PairLayout, N_KICKS, N_SLEEPS, N_STATE};
use crate::notify::{self, Notifier, Waiter};
use crate::pool::Pool;
use crate::region::Region;
use crate::ring::{self, Consumer, Producer};
use crate::wire::{Message, FLAG_ONEWAY, FLAG_PAYLOAD, INLINE_WORDS};
use crate::Side;

/// Default number of messages staged before the producer index is published.
pub const DEFAULT_PUBLISH_BATCH: u32 = 16;
/// Publications after which the deferred kick check runs even if the side stays busy.
pub const KICK_CHECK_EVERY: u32 = 16;
/// Empty polls in a row after which the deferred kick check runs.
pub const KICK_CHECK_IDLE_POLLS: u32 = 64;

/// A request received from the peer. Not `Clone`: [`Endpoint::reply`] consumes it, so a
/// request is answered at most once.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    id: RequestId,
    opcode: u16,
    oneway: bool,
    inline: [u64; INLINE_WORDS],
    payload_off: u32,
    payload_len: u32,
}

impl Request {
    /// The requester's id for this request (0 for one-way messages).
    pub fn id(&self) -> RequestId {
        self.id
    }
    /// Application operation code.
    pub fn opcode(&self) -> u16 {
        self.opcode
    }
    /// Whether the request expects no reply.
    pub fn is_oneway(&self) -> bool {
        self.oneway
    }
    /// The inline words.
    pub fn inline(&self) -> &[u64; INLINE_WORDS] {
        &self.inline
    }
    /// Payload length in bytes (already checked to lie inside the requester's buffer).
    pub fn payload_len(&self) -> usize {
        self.payload_len as usize
    }
}

/// A reply to one of this endpoint's requests. Not `Clone`: [`Endpoint::free`] consumes it
/// and gives the request's database entry and buffer back.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    id: RequestId,
    opcode: u16,
    status: u32,
    inline: [u64; INLINE_WORDS],
    payload_off: u32,
    payload_len: u32,
}

impl Reply {
    /// The id [`Endpoint::send_request`] returned.
    pub fn id(&self) -> RequestId {
        self.id
    }
    /// Opcode of the original request.
    pub fn opcode(&self) -> u16 {
        self.opcode
    }
    /// Status set by the replier.
    pub fn status(&self) -> u32 {
        self.status
    }
    /// The replier's inline words.
    pub fn inline(&self) -> &[u64; INLINE_WORDS] {
        &self.inline
    }
    /// Length of the reply payload (in the request's buffer).
    pub fn payload_len(&self) -> usize {
        self.payload_len as usize
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
/// requests. Staged messages are published in batches: after
/// [`set_publish_batch`](Self::set_publish_batch) messages, on [`flush`](Self::flush), and
/// whenever the endpoint polls or waits, so a server loop of "poll, handle, reply" never
/// needs an explicit flush. A side that stops sending and does *not* go on polling or
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
    publish_batch: u32,
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
            publish_batch: DEFAULT_PUBLISH_BATCH,
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

    /// Publish after `n` staged messages (1: publish every message; at least 1).
    pub fn set_publish_batch(&mut self, n: u32) {
        self.publish_batch = n.max(1);
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

    /// Publish everything staged. The kick check that must follow a publication (fence, read
    /// the peer's state) is *deferred* to [`kick_check`](Self::kick_check), which runs when
    /// this side waits, flushes or finds a queue full, after [`KICK_CHECK_IDLE_POLLS`] empty
    /// polls in a row, or after [`KICK_CHECK_EVERY`] unchecked publications. A full fence
    /// costs as much as a cache-line transfer here (it waits for the stores it orders), so it
    /// is kept off the message's critical path; never skipping it keeps the
    /// no-lost-wake-up argument, and the delay it adds to waking a sleeping peer is a few
    /// polls, small next to the wake-up itself.
    #[inline]
    fn publish(&mut self) -> Result<(), Corruption> {
        let a = self.tx_requests.publish(&self.region)?;
        let b = self.tx_replies.publish(&self.region)?;
        if a || b {
            self.unchecked += 1;
            if self.unchecked >= KICK_CHECK_EVERY {
                self.kick_check()?;
            }
        }
        Ok(())
    }

    /// The sender half of the notification protocol for every publication so far.
    #[inline]
    fn kick_check(&mut self) -> Result<(), Corruption> {
        if self.unchecked == 0 {
            return Ok(());
        }
        self.unchecked = 0;
        self.idle_polls = 0;
        let region = self.region;
        if notify::sender_must_kick(Self::state_word(&region, self.peer_notify)?) {
            if let Some(k) = region.u64_at(self.peer_notify + N_KICKS) {
                k.fetch_add(1, Ordering::Relaxed);
            }
            self.notifier.kick();
        }
        Ok(())
    }

    #[inline(always)]
    fn staged(&mut self, producer_unpublished: u32) -> Result<(), ChannelError> {
        if producer_unpublished >= self.publish_batch {
            let r = self.publish();
            self.guard(r)?;
        }
        Ok(())
    }

    /// A queue is full: publish what is staged (kicking a sleeping peer, which would
    /// otherwise never make room) and report it.
    #[cold]
    fn full<T>(&mut self) -> Result<T, ChannelError> {
        let r = self.publish().and_then(|()| self.kick_check());
        self.guard(r)?;
        Err(ChannelError::Full)
    }

    /// An empty poll: after a few in a row, settle any deferred kick check.
    #[inline]
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

    /// Publish staged messages now and kick the peer if it sleeps. Call it when done
    /// sending and not about to poll or wait (polling and waiting flush by themselves).
    pub fn flush(&mut self) -> Result<(), ChannelError> {
        self.check()?;
        let r = self.publish().and_then(|()| self.kick_check());
        self.guard(r)
    }

    /// Send a request with `payload` copied into its pool buffer. Returns its id; the reply
    /// comes back through [`poll_reply`](Self::poll_reply).
    ///
    /// Errors: [`ChannelError::NoFreeRequest`] when `max_outstanding` requests are
    /// unfreed, [`ChannelError::Full`] when the peer's request queue is full,
    /// [`ChannelError::PayloadTooLarge`].
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
        // Slots of replies we have consumed go back before the peer may need them for the
        // reply to this request (the reply queue holds exactly `max_outstanding`).
        let r = self.rx_replies.publish(&self.region);
        self.guard(r)?;
        #[allow(clippy::cast_possible_truncation)] // checked against buf_size above
        let entry = Entry {
            opcode,
            payload_off: 0,
            payload_len: payload.len() as u32,
            inline,
        };
        let r = self.db.alloc(&self.region, &entry);
        let Some(id) = self.guard(r)? else {
            return Err(ChannelError::NoFreeRequest);
        };
        let r = self.write_request(id, &entry, payload);
        match self.guard(r)? {
            true => {
                let n = self.tx_requests.unpublished();
                self.staged(n)?;
                Ok(id)
            }
            false => {
                let r = self.db.free(&self.region, id, db::SENT);
                self.guard(r)?;
                self.full()
            }
        }
    }

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
        let msg = Message {
            id: id.0,
            opcode: entry.opcode,
            flags: if entry.payload_len > 0 {
                FLAG_PAYLOAD
            } else {
                0
            },
            status: 0,
            payload_off: entry.payload_off,
            payload_len: entry.payload_len,
            inline: entry.inline,
        };
        self.tx_requests.push(&self.region, &msg)
    }

    /// Send a one-way message (inline words only, no reply, no database entry). This is the
    /// bare queue: the cheapest way to move 64 bytes.
    #[inline]
    pub fn send_oneway(
        &mut self,
        opcode: u16,
        inline: [u64; INLINE_WORDS],
    ) -> Result<(), ChannelError> {
        self.check()?;
        let msg = Message {
            id: 0,
            opcode,
            flags: FLAG_ONEWAY,
            inline,
            ..Message::default()
        };
        let r = self.tx_requests.push(&self.region, &msg);
        if !self.guard(r)? {
            return self.full();
        }
        let n = self.tx_requests.unpublished();
        self.staged(n)
    }

    /// Take the next request from the peer, if any (after publishing what is staged).
    #[inline]
    pub fn poll_request(&mut self) -> Result<Option<Request>, ChannelError> {
        self.check()?;
        let r = self.publish();
        self.guard(r)?;
        let r = self.rx_requests.pop(&self.region);
        let Some(m) = self.guard(r)? else {
            self.idle()?;
            return Ok(None);
        };
        self.idle_polls = 0;
        let r = self.validate_request(&m);
        self.guard(r).map(Some)
    }

    #[inline]
    fn validate_request(&self, m: &Message) -> Result<Request, Corruption> {
        let oneway = m.flags & FLAG_ONEWAY != 0;
        let has_payload = m.flags & FLAG_PAYLOAD != 0;
        let id = RequestId(m.id);
        if oneway {
            if m.id != 0 || has_payload {
                return Err(Corruption::BadMessage);
            }
        } else {
            if id.generation() == 0 || id.index() >= self.layout.config().max_outstanding {
                return Err(Corruption::BadMessage);
            }
            if has_payload {
                self.peer_pool
                    .span(id.index(), m.payload_off, m.payload_len)?;
            }
        }
        let (payload_off, payload_len) = if has_payload {
            (m.payload_off, m.payload_len)
        } else {
            (0, 0)
        };
        Ok(Request {
            id,
            opcode: m.opcode,
            oneway,
            inline: m.inline,
            payload_off,
            payload_len,
        })
    }

    /// Copy the start of `req`'s payload into `dst`; returns the bytes copied.
    pub fn read_request_payload(
        &self,
        req: &Request,
        dst: &mut [u8],
    ) -> Result<usize, ChannelError> {
        self.check()?;
        let n = dst.len().min(req.payload_len as usize);
        if n == 0 {
            return Ok(0);
        }
        let off = self
            .peer_pool
            .span(req.id.index(), req.payload_off, req.payload_len)
            .map_err(ChannelError::Corrupt)?;
        self.region
            .read_bytes(off, &mut dst[..n])
            .ok_or(ChannelError::Corrupt(Corruption::PayloadBounds))?;
        Ok(n)
    }

    /// Answer `req`: `payload` (if any) is written into the request's buffer, which goes back
    /// to the requester with the reply. One-way requests cannot be answered.
    pub fn reply(
        &mut self,
        req: Request,
        status: u32,
        inline: [u64; INLINE_WORDS],
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        self.check()?;
        if req.oneway {
            return Err(ChannelError::InvalidHandle);
        }
        let len = u32::try_from(payload.len()).map_err(|_| ChannelError::PayloadTooLarge)?;
        if !payload.is_empty() {
            let off = self
                .peer_pool
                .span(req.id.index(), 0, len)
                .map_err(|_| ChannelError::PayloadTooLarge)?;
            self.region
                .write_bytes(off, payload)
                .ok_or(ChannelError::PayloadTooLarge)?;
        }
        let msg = Message {
            id: req.id.0,
            opcode: req.opcode,
            flags: if len > 0 { FLAG_PAYLOAD } else { 0 },
            status,
            payload_off: 0,
            payload_len: len,
            inline,
        };
        let r = self.tx_replies.push(&self.region, &msg);
        if !self.guard(r)? {
            // Only a peer that exceeds its own `max_outstanding` can fill its reply queue.
            return self.full();
        }
        let n = self.tx_replies.unpublished();
        self.staged(n)
    }

    /// Take the next reply to one of this side's requests, if any.
    ///
    /// A reply whose id is well-formed but not outstanding (a late answer to an abandoned
    /// request, a duplicate after a resubmission) is dropped and counted by
    /// [`stale_replies`](Self::stale_replies); it frees nothing.
    #[inline]
    pub fn poll_reply(&mut self) -> Result<Option<Reply>, ChannelError> {
        self.check()?;
        let r = self.publish();
        self.guard(r)?;
        // Bounded: at most one ring's worth of stale replies per call.
        for _ in 0..=self.layout.config().max_outstanding {
            let r = self.rx_replies.pop(&self.region);
            let Some(m) = self.guard(r)? else {
                self.idle()?;
                return Ok(None);
            };
            self.idle_polls = 0;
            let r = self.accept_reply(&m);
            match self.guard(r)? {
                Some(reply) => return Ok(Some(reply)),
                None => self.stale_replies += 1,
            }
        }
        Ok(None)
    }

    fn accept_reply(&mut self, m: &Message) -> Result<Option<Reply>, Corruption> {
        let id = RequestId(m.id);
        if m.flags & FLAG_ONEWAY != 0 || id.index() >= self.layout.config().max_outstanding {
            return Err(Corruption::BadMessage);
        }
        let (payload_off, payload_len) = if m.flags & FLAG_PAYLOAD != 0 {
            self.my_pool
                .span(id.index(), m.payload_off, m.payload_len)?;
            (m.payload_off, m.payload_len)
        } else {
            (0, 0)
        };
        let Some(opcode) = self.db.take_reply(&self.region, id)? else {
            return Ok(None);
        };
        Ok(Some(Reply {
            id,
            opcode,
            status: m.status,
            inline: m.inline,
            payload_off,
            payload_len,
        }))
    }

    /// Replies dropped because they named no outstanding request.
    pub fn stale_replies(&self) -> u64 {
        self.stale_replies
    }

    /// Copy the start of `reply`'s payload into `dst`; returns the bytes copied.
    pub fn read_reply_payload(&self, reply: &Reply, dst: &mut [u8]) -> Result<usize, ChannelError> {
        self.check()?;
        let n = dst.len().min(reply.payload_len as usize);
        if n == 0 {
            return Ok(0);
        }
        let off = self
            .my_pool
            .span(reply.id.index(), reply.payload_off, reply.payload_len)
            .map_err(ChannelError::Corrupt)?;
        self.region
            .read_bytes(off, &mut dst[..n])
            .ok_or(ChannelError::Corrupt(Corruption::PayloadBounds))?;
        Ok(n)
    }

    /// Give a replied request's database entry and buffer back.
    pub fn free(&mut self, reply: Reply) -> Result<(), ChannelError> {
        self.check()?;
        let r = self.db.free(&self.region, reply.id, db::REPLIED);
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
        (0..self.db.capacity()).filter_map(|i| self.db.sent_at(&self.region, i).ok().flatten())
    }

    /// Number of requests allocated and not freed (sent, or replied and not yet freed).
    pub fn outstanding_count(&self) -> u32 {
        self.db.outstanding()
    }

    /// Send an outstanding request again, unchanged (payload still in its buffer): for a
    /// peer that restarted and lost it.
    pub fn resubmit(&mut self, id: RequestId) -> Result<(), ChannelError> {
        self.check()?;
        let r = self.db.lookup(&self.region, id, db::SENT);
        let entry = self.guard(r)?.ok_or(ChannelError::InvalidHandle)?;
        let msg = Message {
            id: id.0,
            opcode: entry.opcode,
            flags: if entry.payload_len > 0 {
                FLAG_PAYLOAD
            } else {
                0
            },
            status: 0,
            payload_off: entry.payload_off,
            payload_len: entry.payload_len,
            inline: entry.inline,
        };
        let r = self.tx_requests.push(&self.region, &msg);
        if !self.guard(r)? {
            return self.full();
        }
        let n = self.tx_requests.unpublished();
        self.staged(n)
    }

    /// Drop every request waiting for this side: what a restarted server does before its
    /// peers [`resubmit`](Self::resubmit) their outstanding requests, so that none is served
    /// twice. (A plain [`attach`](Self::attach) instead delivers again the requests that its
    /// predecessor took without acknowledging.) Returns how many were dropped.
    pub fn discard_requests(&mut self) -> Result<u32, ChannelError> {
        self.check()?;
        let mut n = 0;
        for _ in 0..self.layout.config().queue_depth {
            let r = self.rx_requests.pop(&self.region);
            if self.guard(r)?.is_none() {
                break;
            }
            n += 1;
        }
        let r = self.rx_requests.publish(&self.region);
        self.guard(r)?;
        Ok(n)
    }

    /// Fail an outstanding request: free its entry and buffer without a reply.
    pub fn abandon(&mut self, id: RequestId) -> Result<(), ChannelError> {
        self.check()?;
        let r = self.db.free(&self.region, id, db::SENT);
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
        Ok(self.rx_requests.has_pending(&self.region)?
            || self.rx_replies.has_pending(&self.region)?)
    }

    /// Publish what is staged, poll up to `spins` times, then sleep through `waiter` until
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
    /// endpoint: use [`wait_for_work`](Self::wait_for_work)): publish what is staged,
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

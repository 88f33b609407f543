//! The filter over channels: one to ip (below) and one to tcp (above), both speaking the
//! packet protocol. pf is the server of ip's `Deliver`s and tcp's `Send`s and `Config`s,
//! and the client that relays them to the other side:
//!
//! ```text
//!  ip ─Deliver─► pf: private copy, verdict ─ pass ─► Deliver ─► tcp
//!                                          └ refuse ─► Dropped(reason) to ip
//!  tcp's reply (Done, Dropped, Unreachable) ─► pf ─► the same reply to ip's Deliver
//!  tcp ─Send─► (the same, the other way) ─► ip;  tcp ─Config─► ip, its reply to tcp
//! ```
//!
//! The packet is relayed as received (payload and inline words unchanged), from pf's
//! private copy, the one the verdict was on, so a peer cannot change it after the check.
//! The kit's rules hold, as in the ip server: replies first, [`BUDGET`] per channel and
//! pass, a request taken only when its sender's reply queue has room and the other
//! channel has credit for the relayed request (else it is parked; a channel parked
//! because its peer does not take its replies leaves the [`sleep_set`](PfServer::sleep_set)).
//! Every reply is decoded and must fit its request's kind; the held request is answered
//! exactly once: with the other side's reply, or by pf when the other side's channel goes.
use alloc::vec;
use alloc::vec::Vec;

use compart_channel::{ChannelError, Endpoint, Notifier, Request, RequestId};
use compart_kit::server::{Close, Peer, BUDGET};
use compart_proto::packet::{self, DropReason, Reply};

use crate::filter::{Filter, Verdict};
use crate::rules::Dir;
use crate::Instant;

/// Which neighbour a channel leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ip,
    Tcp,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Ip => Side::Tcp,
            Side::Tcp => Side::Ip,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Ip => 0,
            Side::Tcp => 1,
        }
    }
}

/// The kind of a relayed request, which decides the replies that may answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deliver,
    Send,
    Config,
}

#[derive(Debug)]
struct Held {
    /// The original request, from the other channel.
    req: Request,
    kind: Kind,
}

/// Requests relayed on one channel and not yet answered, with the originals they stand
/// for: one slot per request-id index of that channel (at most its `max_outstanding`),
/// so that relaying a packet allocates nothing.
#[derive(Debug, Default)]
struct Holds {
    slots: Vec<Option<(RequestId, Held)>>,
    len: usize,
}

impl Holds {
    fn new(capacity: usize) -> Holds {
        let mut slots = Vec::new();
        slots.resize_with(capacity, || None);
        Holds { slots, len: 0 }
    }

    /// Hold `h` for the relayed request `id` (one of this side's own, outstanding).
    fn insert(&mut self, id: RequestId, h: Held) {
        let i = id.index() as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace((id, h)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, id: RequestId) -> Option<Held> {
        let slot = self.slots.get_mut(id.index() as usize)?;
        if slot.as_ref().is_some_and(|(held, _)| *held == id) {
            self.len -= 1;
            slot.take().map(|(_, h)| h)
        } else {
            None
        }
    }

    fn take_all(&mut self) -> Vec<Held> {
        self.len = 0;
        self.slots
            .iter_mut()
            .filter_map(|s| s.take())
            .map(|(_, h)| h)
            .collect()
    }
}

#[derive(Debug)]
struct Chan {
    peer: Peer,
    side: Side,
    parked: Option<Request>,
    /// `parked` waits because the peer's reply queue is full (its own doing).
    peer_full: bool,
}

/// The pf server: the filter and its two channels.
#[derive(Debug)]
pub struct PfServer<N: Notifier> {
    filter: Filter,
    /// Endpoints, in the same order as `chans`.
    endpoints: Vec<Endpoint<N>>,
    chans: Vec<Chan>,
    /// Per side (`Side::index`): requests relayed on that side's channel and not yet
    /// answered, by their id there, with the original request from the other side.
    held: [Holds; 2],
    buf: Vec<u8>,
    closed: Vec<(Peer, Close)>,
}

impl<N: Notifier> PfServer<N> {
    /// A server of `filter` between ip and tcp (either may be missing: what would go to it
    /// is answered by pf).
    pub fn new(
        filter: Filter,
        ip: Option<(Peer, Endpoint<N>)>,
        tcp: Option<(Peer, Endpoint<N>)>,
    ) -> PfServer<N> {
        let mut s = PfServer {
            filter,
            endpoints: Vec::new(),
            chans: Vec::new(),
            held: [Holds::default(), Holds::default()],
            buf: Vec::new(),
            closed: Vec::new(),
        };
        for ((peer, ep), side) in [(ip, Side::Ip), (tcp, Side::Tcp)]
            .into_iter()
            .filter_map(|(c, s)| c.map(|c| (c, s)))
        {
            if s.buf.len() < ep.buffer_size() {
                s.buf = vec![0; ep.buffer_size()];
            }
            s.held[side.index()] = Holds::new(ep.layout().config().max_outstanding as usize);
            s.endpoints.push(ep);
            s.chans.push(Chan {
                peer,
                side,
                parked: None,
                peer_full: false,
            });
        }
        s
    }

    /// The filter.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Channels still served.
    pub fn len(&self) -> usize {
        self.chans.len()
    }

    /// Whether no channel is left.
    pub fn is_empty(&self) -> bool {
        self.chans.is_empty()
    }

    /// Requests relayed and waiting for the other side's answer.
    pub fn held(&self) -> usize {
        self.held[0].len + self.held[1].len
    }

    /// The channels dropped since the last call, and why.
    pub fn take_closed(&mut self) -> Vec<(Peer, Close)> {
        core::mem::take(&mut self.closed)
    }

    /// The endpoints to sleep on: all but those whose peer does not take its replies.
    pub fn sleep_set(&mut self) -> &mut [Endpoint<N>] {
        let awake =
            compart_kit::server::awake_first(&mut self.chans, &mut self.endpoints, |l| l.peer_full);
        &mut self.endpoints[..awake]
    }

    /// When the filter next has work of its own (a connection to expire).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.filter.next_deadline()
    }

    /// One pass: expiry, then every channel. Returns whether anything was done.
    pub fn poll(&mut self, now: Instant) -> bool {
        self.filter.poll(now);
        let mut busy = false;
        let mut k = 0;
        while k < self.chans.len() {
            match self.serve(k, now) {
                Ok(b) => {
                    busy |= b;
                    k += 1;
                }
                Err(e) => {
                    busy = true;
                    self.close(k, Close::Channel(e));
                }
            }
        }
        for ep in &mut self.endpoints {
            // A channel found broken here is dropped by the next pass.
            let _ = ep.flush();
        }
        busy
    }

    fn find(&self, side: Side) -> Option<usize> {
        self.chans.iter().position(|c| c.side == side)
    }

    /// Drop channel `k`: what it held for the other side is answered, what the other side
    /// relayed for it is forgotten (the late replies are consumed as orphans).
    fn close(&mut self, k: usize, why: Close) {
        self.endpoints.swap_remove(k);
        let chan = self.chans.swap_remove(k);
        let side = chan.side;
        self.held[side.other().index()].take_all();
        let waiting = self.held[side.index()].take_all();
        if let Some(o) = self.find(side.other()) {
            for h in waiting {
                self.filter.counters_mut().peer_gone += 1;
                let (status, inline) = gone(side).encode();
                // A broken channel is found by its next pass.
                let _ = self.endpoints[o].reply(h.req, status, inline, &[]);
            }
        }
        self.closed.push((chan.peer, why));
    }

    fn serve(&mut self, k: usize, now: Instant) -> Result<bool, ChannelError> {
        let mut busy = false;
        let side = self.chans[k].side;
        for _ in 0..BUDGET {
            let Some(reply) = self.endpoints[k].poll_reply()? else {
                break;
            };
            busy = true;
            let id = reply.id();
            let answer = Reply::decode(reply.status(), reply.inline());
            self.endpoints[k].free(reply)?;
            self.relay_reply(side, id, answer);
        }
        self.chans[k].peer_full = false;
        for _ in 0..BUDGET {
            let other = self.find(side.other());
            let credit = match other {
                Some(o) => {
                    // pf sends no one-way messages, so its requests waiting in the other
                    // side's queue are at most its outstanding ones: this bound keeps both
                    // the request ids and that queue from running out.
                    let ep = &self.endpoints[o];
                    let c = ep.layout().config();
                    ep.outstanding_count() < c.max_outstanding.min(c.queue_depth)
                }
                None => true,
            };
            let ep = &mut self.endpoints[k];
            let chan = &mut self.chans[k];
            let req = match chan.parked.take() {
                Some(r) => r,
                None => match ep.poll_request()? {
                    Some(r) => r,
                    None => break,
                },
            };
            let peer_full = !req.is_oneway() && !ep.can_reply()?;
            if peer_full || !credit {
                chan.peer_full = peer_full;
                chan.parked = Some(req);
                break;
            }
            busy = true;
            self.request(k, other, now, req)?;
        }
        Ok(busy)
    }

    /// The other side answered the request it got as `id`: answer the held original.
    fn relay_reply(
        &mut self,
        side: Side,
        id: RequestId,
        answer: Result<Reply, compart_proto::DecodeError>,
    ) {
        let Some(h) = self.held[side.index()].remove(id) else {
            self.filter.counters_mut().orphan_replies += 1;
            return;
        };
        let c = self.filter.counters_mut();
        let answer = match (h.kind, answer) {
            (_, Ok(Reply::Dropped(d))) => {
                c.peer_dropped += 1;
                Reply::Dropped(d)
            }
            (Kind::Deliver, Ok(r @ (Reply::Done | Reply::Unreachable(_))))
            | (Kind::Send, Ok(r @ Reply::Done))
            | (Kind::Config, Ok(r @ Reply::Config(_))) => r,
            _ => {
                c.bad_replies += 1;
                Reply::Dropped(DropReason::Malformed)
            }
        };
        let Some(o) = self.find(side.other()) else {
            return;
        };
        let (status, inline) = answer.encode();
        // A broken channel is found by its next pass.
        let _ = self.endpoints[o].reply(h.req, status, inline, &[]);
    }

    /// A request from channel `k`; `other` is the channel it would be relayed on.
    fn request(
        &mut self,
        k: usize,
        other: Option<usize>,
        now: Instant,
        req: Request,
    ) -> Result<(), ChannelError> {
        let side = self.chans[k].side;
        if req.is_oneway() {
            self.filter.counters_mut().oneway_ignored += 1;
            return Ok(());
        }
        let decoded = packet::Request::decode(req.opcode(), false, req.inline());
        let (kind, dir) = match (side, decoded) {
            (Side::Ip, Ok(packet::Request::Deliver(_))) => (Kind::Deliver, Some(Dir::In)),
            (Side::Tcp, Ok(packet::Request::Send(_))) => (Kind::Send, Some(Dir::Out)),
            (Side::Tcp, Ok(packet::Request::Config)) => (Kind::Config, None),
            _ => {
                self.filter.counters_mut().bad_requests += 1;
                return self.answer(k, req, Reply::Dropped(DropReason::Malformed));
            }
        };
        let Some(o) = other else {
            self.filter.counters_mut().peer_gone += 1;
            return self.answer(k, req, gone(side.other()));
        };
        let n = match dir {
            Some(dir) => {
                let len = req.payload_len().min(self.buf.len());
                let n = self.endpoints[k].read_request_payload(&req, &mut self.buf[..len])?;
                if n > self.endpoints[o].buffer_size() {
                    self.filter.counters_mut().too_large += 1;
                    return self.answer(k, req, Reply::Dropped(DropReason::TooBig));
                }
                if let Verdict::Refuse(why) = self.filter.check(dir, &self.buf[..n], now) {
                    return self.answer(k, req, Reply::Dropped(why.drop_reason()));
                }
                n
            }
            None => {
                self.filter.counters_mut().config_relayed += 1;
                0
            }
        };
        let (op, inline) = (req.opcode(), *req.inline());
        match self.endpoints[o].send_request(op, inline, &self.buf[..n]) {
            Ok(id) => {
                self.held[side.other().index()].insert(id, Held { req, kind });
                Ok(())
            }
            // The other channel's trouble (it is dropped by its own pass if broken).
            Err(_) => {
                self.filter.counters_mut().relay_refused += 1;
                self.answer(k, req, Reply::Dropped(DropReason::NoRoom))
            }
        }
    }

    fn answer(&mut self, k: usize, req: Request, reply: Reply) -> Result<(), ChannelError> {
        let (status, inline) = reply.encode();
        self.endpoints[k].reply(req, status, inline, &[])
    }
}

/// What pf answers for a request whose relay to `gone` cannot happen.
fn gone(gone: Side) -> Reply {
    match gone {
        Side::Ip => Reply::Dropped(DropReason::LinkDown),
        Side::Tcp => Reply::Dropped(DropReason::Refused),
    }
}

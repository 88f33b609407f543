//! The receive loop every compart server runs (the firmware re-exports it as
//! `firmware::server`, with the guest's idle wait plugged in).
//!
//! A [`Server`] holds the guest's channels, each with its peer and its own
//! [`Handler`]. One [`poll`](Server::poll) pass visits every channel and, for each:
//!
//! 1. takes the replies waiting there and hands them to [`Handler::on_reply`]; a reply
//!    that names no outstanding request is consumed and counted by the channel library
//!    ([`Endpoint::stale_replies`]), and by default a handler that sent nothing frees
//!    and counts any reply it gets, so a forged reply never stays queued and never keeps
//!    the server from sleeping;
//! 2. takes requests and hands them to [`Handler::on_request`], but only while the
//!    peer's reply queue has room: a peer that does not take its replies (more requests
//!    in flight than its `max_outstanding`) finds its next request *parked*, and its
//!    channel leaves the set the server sleeps on until the queue has room again;
//! 3. stops after [`BUDGET`] messages, so that a flooding peer gets no more of the
//!    server's time than any other.
//!
//! A handler's [`Close`] or a broken channel (a corrupt region) drops that channel and
//! is reported as an [`Event`]; the others are served on. When a pass finds nothing to
//! do, [`run`](Server::run) calls its idle step on [`sleep_set`](Server::sleep_set): the
//! channels whose peers can wake the server.
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use compart_abi::Role;
use compart_channel::{ChannelError, Endpoint, Notifier, Reply, Request, INLINE_WORDS};

/// Most replies, and most requests, taken from one channel in one pass.
pub const BUDGET: u32 = 32;

/// Who is on the other side of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The channel's position in the boot info.
    pub index: usize,
    /// The peer guest's name.
    pub name: String,
    /// The peer guest's role.
    pub role: Role,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "channel {} to {}", self.index, self.name)
    }
}

/// Why a channel leaves the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The peer is done (it said so in its protocol).
    Done,
    /// The peer broke its protocol in a way that allows no answer.
    Violation(&'static str),
    /// The channel failed: its region is corrupt, or an operation the handler needed was
    /// refused.
    Channel(ChannelError),
}

impl From<ChannelError> for Close {
    fn from(e: ChannelError) -> Close {
        Close::Channel(e)
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Close::Done => f.write_str("done"),
            Close::Violation(why) => write!(f, "protocol violation: {why}"),
            Close::Channel(e) => write!(f, "broken: {e:?}"),
        }
    }
}

/// What the server counted on one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Requests handed to the handler.
    pub requests: u64,
    /// Replies handed to the handler.
    pub replies: u64,
    /// Replies the handler did not expect (see [`Link::drop_reply`]).
    pub unexpected_replies: u64,
    /// Replies the channel library dropped because they named no outstanding request.
    pub stale_replies: u64,
    /// Times a request was parked because the peer's reply queue was full.
    pub throttled: u64,
}

/// Moves the links that are not `throttled` (and their endpoints, kept in step) to the
/// front, and returns how many there are: the sleep set of a server that keeps its
/// links and endpoints side by side (a throttled peer's queued requests would wake it
/// at once, forever).
pub fn awake_first<L, E>(
    links: &mut [L],
    endpoints: &mut [E],
    throttled: impl Fn(&L) -> bool,
) -> usize {
    let mut awake = 0;
    for k in 0..links.len().min(endpoints.len()) {
        if !throttled(&links[k]) {
            links.swap(awake, k);
            endpoints.swap(awake, k);
            awake += 1;
        }
    }
    awake
}

/// A handler's view of its channel while it handles one message.
#[derive(Debug)]
pub struct Link<'a, N: Notifier> {
    /// The channel's endpoint: read payloads and reply through it.
    pub endpoint: &'a mut Endpoint<N>,
    peer: &'a Peer,
    stats: &'a mut LinkStats,
}

impl<N: Notifier> Link<'_, N> {
    /// Who is on the other side.
    pub fn peer(&self) -> &Peer {
        self.peer
    }

    /// Answer `req`.
    pub fn reply(
        &mut self,
        req: Request,
        status: u32,
        inline: [u64; INLINE_WORDS],
        payload: &[u8],
    ) -> Result<(), Close> {
        Ok(self.endpoint.reply(req, status, inline, payload)?)
    }

    /// Consume a reply the handler has no use for (it names no request the handler is
    /// waiting for): free it and count it.
    pub fn drop_reply(&mut self, reply: Reply) -> Result<(), Close> {
        self.stats.unexpected_replies += 1;
        Ok(self.endpoint.free(reply)?)
    }
}

/// What a server does with the messages of one channel.
pub trait Handler<N: Notifier> {
    /// A request from the peer. Answer it through `link` (unless it is one-way), with an
    /// error status if its content is wrong for the protocol, or return [`Close`].
    fn on_request(&mut self, link: &mut Link<'_, N>, req: Request) -> Result<(), Close>;

    /// A reply to one of this side's requests. The default is for handlers that send no
    /// requests: every reply is unexpected, and is consumed and counted.
    fn on_reply(&mut self, link: &mut Link<'_, N>, reply: Reply) -> Result<(), Close> {
        link.drop_reply(reply)
    }

    /// Work that does not come from the peer's messages (a device's rings, for a
    /// driver): called once per pass, after the channel's replies (which may give
    /// credit back) and before its requests, with the channel to send requests and
    /// replies on. Returns whether it did any (the pass then
    /// counts as busy). The default has none.
    fn on_pass(&mut self, _link: &mut Link<'_, N>) -> Result<bool, Close> {
        Ok(false)
    }

    /// The server is about to sleep: arm the handler's other wake-up sources (ask its
    /// device for an interrupt), then re-check them. Returns whether work arrived
    /// meanwhile; the server then polls again instead of sleeping. The default has no
    /// other sources.
    fn before_sleep(&mut self) -> bool {
        false
    }
}

/// Something the server reports about a channel.
#[derive(Debug)]
pub enum Event<'a, H> {
    /// The channel left the server; `handler` is its handler, for a last word.
    Closed {
        /// Who was on the other side.
        peer: &'a Peer,
        /// Why.
        why: Close,
        /// What was counted on it.
        stats: LinkStats,
        /// Its handler.
        handler: &'a H,
    },
    /// The peer's reply queue is full and it has a request waiting: its requests wait,
    /// and it cannot wake the server, until it takes replies.
    Throttled {
        /// Who is on the other side.
        peer: &'a Peer,
    },
    /// A throttled peer's reply queue has room again.
    Resumed {
        /// Who is on the other side.
        peer: &'a Peer,
    },
}

struct LinkState<H> {
    peer: Peer,
    handler: H,
    stats: LinkStats,
    /// A request taken while the peer's reply queue was full, handled first once it has
    /// room.
    parked: Option<Request>,
    /// Whether `parked` was set after the previous pass (to report changes once).
    was_parked: bool,
    /// Set during a pass: the channel is to be dropped, for this reason.
    closing: Option<Close>,
}

impl<H> LinkState<H> {
    /// The handler's view of the channel, and the handler.
    fn split<'a, N: Notifier>(
        &'a mut self,
        endpoint: &'a mut Endpoint<N>,
    ) -> (Link<'a, N>, &'a mut H) {
        let link = Link {
            endpoint,
            peer: &self.peer,
            stats: &mut self.stats,
        };
        (link, &mut self.handler)
    }
}

/// A guest's channels, each with its peer and handler.
pub struct Server<N: Notifier, H> {
    /// Endpoints in the same order as `links`; those of `..awake` have no parked request
    /// (the sleep set).
    endpoints: Vec<Endpoint<N>>,
    links: Vec<LinkState<H>>,
    awake: usize,
}

impl<N: Notifier, H> fmt::Debug for Server<N, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peers: Vec<&Peer> = self.links.iter().map(|l| &l.peer).collect();
        f.debug_struct("Server")
            .field("peers", &peers)
            .field("awake", &self.awake)
            .finish()
    }
}

impl<N: Notifier, H> Default for Server<N, H> {
    fn default() -> Self {
        Server {
            endpoints: Vec::new(),
            links: Vec::new(),
            awake: 0,
        }
    }
}

impl<N: Notifier, H: Handler<N>> Server<N, H> {
    /// A server with no channels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `endpoint`, whose other side is `peer`, with `handler`.
    pub fn add(&mut self, peer: Peer, endpoint: Endpoint<N>, handler: H) {
        let link = LinkState {
            peer,
            handler,
            stats: LinkStats::default(),
            parked: None,
            was_parked: false,
            closing: None,
        };
        self.endpoints.push(endpoint);
        self.links.push(link);
        let last = self.links.len() - 1;
        self.swap(self.awake, last);
        self.awake += 1;
    }

    /// Channels still served.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether no channel is left.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The peers still served.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.links.iter().map(|l| &l.peer)
    }

    /// The endpoints to sleep on: every channel whose peer may wake the server (not the
    /// throttled ones: their queued requests would wake it at once, forever).
    pub fn sleep_set(&mut self) -> &mut [Endpoint<N>] {
        &mut self.endpoints[..self.awake]
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.endpoints.swap(i, j);
        self.links.swap(i, j);
    }

    /// One pass over every channel. Returns whether any message was handled.
    pub fn poll(&mut self, report: &mut dyn FnMut(Event<'_, H>)) -> bool {
        let mut busy = false;
        for k in 0..self.links.len() {
            match self.serve(k) {
                Ok(b) => busy |= b,
                Err(why) => {
                    busy = true;
                    self.links[k].closing = Some(why);
                }
            }
        }
        let mut k = 0;
        while k < self.links.len() {
            let Some(why) = self.links[k].closing.take() else {
                k += 1;
                continue;
            };
            let endpoint = self.endpoints.swap_remove(k);
            let link = self.links.swap_remove(k);
            let mut stats = link.stats;
            stats.stale_replies = endpoint.stale_replies();
            report(Event::Closed {
                peer: &link.peer,
                why,
                stats,
                handler: &link.handler,
            });
        }
        // The sleep set: every channel without a parked request, first.
        self.awake = 0;
        for k in 0..self.links.len() {
            let l = &mut self.links[k];
            let parked = l.parked.is_some();
            if parked != l.was_parked {
                l.was_parked = parked;
                let peer = &l.peer;
                report(if parked {
                    Event::Throttled { peer }
                } else {
                    Event::Resumed { peer }
                });
            }
            if !parked {
                self.swap(self.awake, k);
                self.awake += 1;
            }
        }
        busy
    }

    /// Serve channel `k` for one pass; `Err`: it is to be closed.
    fn serve(&mut self, k: usize) -> Result<bool, Close> {
        let ep = &mut self.endpoints[k];
        let l = &mut self.links[k];
        let mut busy = false;
        for _ in 0..BUDGET {
            let Some(reply) = ep.poll_reply()? else {
                break;
            };
            busy = true;
            l.stats.replies += 1;
            let (mut link, handler) = l.split(ep);
            handler.on_reply(&mut link, reply)?;
        }
        let (mut link, handler) = l.split(ep);
        busy |= handler.on_pass(&mut link)?;
        for _ in 0..BUDGET {
            let (req, was_parked) = match l.parked.take() {
                Some(req) => (req, true),
                None => match ep.poll_request()? {
                    Some(req) => (req, false),
                    None => break,
                },
            };
            if !req.is_oneway() && !ep.can_reply()? {
                if !was_parked {
                    l.stats.throttled += 1;
                }
                l.parked = Some(req);
                break;
            }
            busy = true;
            l.stats.requests += 1;
            let (mut link, handler) = l.split(ep);
            handler.on_request(&mut link, req)?;
        }
        Ok(busy)
    }

    /// Every handler's [`Handler::before_sleep`] (all of them, so each arms its
    /// sources): whether any found work, so the server must not sleep.
    pub fn before_sleep(&mut self) -> bool {
        self.links
            .iter_mut()
            .fold(false, |work, l| l.handler.before_sleep() | work)
    }

    /// Serve until no channel is left: a pass, and when it found nothing to do and no
    /// handler's [`before_sleep`](Self::before_sleep) found work, `idle` on the
    /// [`sleep_set`](Self::sleep_set). An error from `idle` means some channel broke
    /// while the server waited; the next pass finds which, and drops it.
    pub fn run(
        &mut self,
        mut idle: impl FnMut(&mut [Endpoint<N>]) -> Result<(), ChannelError>,
        report: &mut dyn FnMut(Event<'_, H>),
    ) {
        while !self.is_empty() {
            if !self.poll(report) && !self.before_sleep() {
                let _ = idle(self.sleep_set());
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The posix server: application guests' socket calls (the `compart_proto::socket`
//! protocol, with per-application handles) carried out on the tcp server (the same
//! protocol, with tcp's handles).
//!
//! ```text
//!  app ──Request (app handle, FLAG_NONBLOCK)──► posix ──Request (tcp handle)──► tcp
//!  app ◄──Reply / one-way Event (app handle)─── posix ◄──Reply / one-way Event── tcp
//! ```
//!
//! - Handles: each application has its own table; a handle names a slot and its
//!   generation, so an application can only name its own sockets, and a stale or
//!   forged handle is `EBADF`. posix maps each to tcp's handle.
//! - Readiness: posix keeps each socket's readiness as tcp last told it (tcp sends an
//!   `Event` whenever it changes, so the copy is exact but for events in flight);
//!   `Poll` is answered from it, and a socket that becomes readier (gains a bit) is
//!   told to its application as a one-way `Event` with its own handle (what
//!   `Net::wait` sleeps on; an event that finds the application's queue full is sent
//!   at a later pass, see [`Posix::backlogged`]).
//! - Blocking: tcp never blocks (it answers `EAGAIN`). An `Accept`, `Recv` or `Send`
//!   that the readiness says cannot progress is not sent to tcp: a non-blocking one
//!   (`FLAG_NONBLOCK`) is answered `EAGAIN` at once, a blocking one is *parked* on its
//!   socket until tcp's `Event` says it can progress, and then sent (so is one that tcp
//!   answered `EAGAIN` after all). A blocking `Connect` is answered once the connection
//!   is established (or refused). Nobody spins: posix and the application sleep.
//! - Data: a `Send`'s payload goes from the application's pool buffer into tcp's with
//!   one copy (`forward`). posix reads ahead: up to [`AHEAD`] `Recv`s of its own per
//!   socket, whose replies stay in tcp's pool buffers until the application's `Recv`s
//!   are answered from them with one copy (`reply_from`); up to a pool buffer (64 KiB)
//!   per message. A `Send` flagged `FLAG_ALL` is sent again for its rest until tcp
//!   took all of it, and one connection's sends go one at a time, in order.
//! - Death: an application whose channel breaks (a corrupt region: it wrote what no
//!   endpoint writes, or the VMM marked it gone) is dropped: its parked calls are
//!   forgotten and tcp closes its sockets; replies still in flight for it are consumed
//!   (new tcp handles among them closed).
//! - Bounded: at most `max_outstanding` of tcp's channel in flight to tcp (the rest of
//!   the work waits in posix's queues), [`Limits::sockets_per_app`] sockets per
//!   application, [`BUDGET`] requests per application per pass.
//! - `Stats`: posix's counters and tcp's (a `Stats` call to tcp) as one short text.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use compart_channel::{ChannelError, Endpoint, Notifier, Request as ChannelRequest};
use compart_proto::socket::{
    Errno, Event, Reply, Request, FLAG_ALL, FLAG_NONBLOCK, READY_ERROR, READY_HANGUP,
    READY_READABLE, READY_WRITABLE,
};

/// Requests taken from one application in one pass.
pub const BUDGET: usize = 32;

/// posix's `Recv`s per socket at once (held or in flight): while the application
/// takes one, tcp fills the next.
pub const AHEAD: usize = 2;

/// The server's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sockets (listeners and connections) one application may hold.
    pub sockets_per_app: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            sockets_per_app: 1024,
        }
    }
}

/// What the server did, in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Applications dropped because their channel broke.
    pub apps_lost: u64,
    /// Sockets posix closed for lost applications.
    pub closed_for_lost: u64,
    /// Requests from applications (all kinds).
    pub calls: u64,
    /// Requests that did not decode, or named no socket of the application.
    pub refused: u64,
    /// Connections accepted for applications.
    pub accepted: u64,
    /// Connections opened for applications.
    pub connected: u64,
    /// Bytes applications sent (taken by tcp).
    pub bytes_out: u64,
    /// Bytes applications received.
    pub bytes_in: u64,
    /// Calls parked until tcp's readiness changed.
    pub parked: u64,
    /// Readiness events passed on to applications.
    pub events: u64,
    /// Replies or events from tcp that did not decode.
    pub tcp_malformed: u64,
}

/// The tcp server's channel broke: nothing can be served any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpBroken(pub ChannelError);

#[derive(Debug)]
struct Sock {
    tcp: u32,
    listener: bool,
    /// Readiness as tcp last told it.
    ready: u32,
    /// Readiness as the application was last told it.
    told: u32,
    /// A blocking connect waiting for the handshake.
    connecting: bool,
    /// Calls waiting for readiness.
    parked: Vec<Parked>,
    /// A `Send` is in flight to tcp or parked: later ones wait in `sendq`, so that
    /// the bytes go in order.
    sending: bool,
    /// `Send`s waiting for the one in progress.
    sendq: VecDeque<Parked>,
    /// Read ahead: tcp's answers to posix's own `Recv`s (at most [`AHEAD`]), their
    /// data still in tcp's pool buffers, and how much of the first the application has
    /// taken.
    ahead: VecDeque<(compart_channel::Reply, usize)>,
    /// How the stream ended, as tcp's `Recv` said (`Bytes(0)` or an error): every
    /// later `Recv` gets it.
    ended: Option<Reply>,
    /// posix's `Recv`s queued or in flight to tcp.
    fetching: usize,
    /// The application's `Recv`s (request, most bytes, non-blocking) waiting for data.
    recvs: VecDeque<(ChannelRequest, u32, bool)>,
}

impl Sock {
    /// Readiness as the application sees it: tcp's, and readable while posix holds
    /// data or the stream's end.
    fn ready(&self) -> u32 {
        let held = !self.ahead.is_empty() || self.ended.is_some();
        self.ready | if held { READY_READABLE } else { 0 }
    }
}

#[derive(Debug)]
struct Slot {
    generation: u16,
    sock: Option<Sock>,
}

/// How far a `Send` is: whether all of it must go (`FLAG_ALL`), and how much of its
/// payload tcp took so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    all: bool,
    taken: u32,
}

/// An application's call waiting for tcp (in tcp's handles).
#[derive(Debug)]
struct Parked {
    req: ChannelRequest,
    call: Request,
    /// The `READY_*` bits it waits for (hangup and error always wake it).
    wants: u32,
    nonblocking: bool,
    progress: Progress,
}

#[derive(Debug)]
struct App {
    id: u32,
    name: String,
    slots: Vec<Slot>,
    open: usize,
}

/// A call in flight to tcp.
#[derive(Debug)]
struct Pending {
    /// The application's id (0: posix's own call).
    app: u32,
    /// The application's request to answer (`None`: posix's own close).
    req: Option<ChannelRequest>,
    call: Request,
    nonblocking: bool,
    /// The application's handle the call is on (`Accept`'s listener, a stream).
    handle: Option<u32>,
    /// Sent again because the cached readiness said so, not a fresh event: if tcp
    /// answers `EAGAIN` once more, the call waits for an event.
    on_cache: bool,
    progress: Progress,
    /// posix's own read-ahead `Recv` for `handle`.
    ahead: bool,
}

/// A read-ahead `Recv` to send to tcp.
#[derive(Debug, Clone, Copy)]
struct Ahead {
    app: u32,
    handle: u32,
    tcp: u32,
    /// Not asked for by a waiting `Recv`: skipped while tcp's channel is half busy.
    speculative: bool,
}

/// A call ready to go to tcp (new, or parked and woken), already in tcp's handles.
#[derive(Debug)]
struct Ready {
    app: u32,
    req: ChannelRequest,
    call: Request,
    nonblocking: bool,
    handle: Option<u32>,
    on_cache: bool,
    progress: Progress,
}

/// The posix server over the channel to tcp and one channel per application.
#[derive(Debug)]
pub struct Posix<N: Notifier> {
    /// tcp first, then the live applications (`apps[k]`'s endpoint is `eps[k + 1]`).
    eps: Vec<Endpoint<N>>,
    apps: Vec<App>,
    next_app: u32,
    limits: Limits,
    pending: BTreeMap<u64, Pending>,
    /// Calls to send to tcp, in order, as tcp's channel has room.
    queue: VecDeque<Ready>,
    /// Read-ahead `Recv`s to send to tcp (before the queue).
    aheads: VecDeque<Ahead>,
    /// tcp handles to close (of lost applications, orphaned accepts).
    closes: VecDeque<u32>,
    /// tcp handle → (application, its handle), for tcp's events.
    by_tcp: BTreeMap<u32, (u32, u32)>,
    /// Events of tcp handles whose reply (`Listen`, `Connect`, `Accept`) has not been
    /// taken yet (tcp sends a new handle's first event right after its reply).
    early: BTreeMap<u32, u32>,
    /// Applications whose channel broke in this pass (dropped at its end).
    doomed: Vec<u32>,
    /// Names of the applications dropped since [`Posix::take_lost`].
    lost: Vec<String>,
    /// Some event found its application's queue full (see [`Posix::backlogged`]).
    backlogged: bool,
    counters: Counters,
}

/// The handle of slot `k` at `generation`.
fn handle_of(k: usize, generation: u16) -> u32 {
    // k < sockets_per_app ≤ 65535.
    k as u32 | u32::from(generation) << 16
}

impl App {
    fn sock(&mut self, h: u32) -> Option<&mut Sock> {
        let k = (h & 0xffff) as usize;
        match self.slots.get_mut(k) {
            Some(Slot {
                generation,
                sock: Some(s),
            }) if u32::from(*generation) == h >> 16 => Some(s),
            _ => None,
        }
    }

    fn insert(&mut self, sock: Sock, limit: usize) -> Option<u32> {
        if self.open >= limit.min(0xffff) {
            return None;
        }
        let k = match self.slots.iter().position(|s| s.sock.is_none()) {
            Some(k) => k,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    sock: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[k];
        slot.generation = slot.generation.wrapping_add(1).max(1);
        slot.sock = Some(sock);
        self.open += 1;
        Some(handle_of(k, slot.generation))
    }

    fn remove(&mut self, h: u32) -> Option<Sock> {
        self.sock(h)?;
        self.open -= 1;
        self.slots[(h & 0xffff) as usize].sock.take()
    }
}

fn new_sock(tcp: u32, listener: bool) -> Sock {
    Sock {
        tcp,
        listener,
        ready: 0,
        told: 0,
        connecting: false,
        parked: Vec::new(),
        sending: false,
        sendq: VecDeque::new(),
        ahead: VecDeque::new(),
        ended: None,
        fetching: 0,
        recvs: VecDeque::new(),
    }
}

/// What a call waits for when tcp says `EAGAIN`.
fn wants(call: &Request) -> u32 {
    match call {
        Request::Accept { .. } | Request::Recv { .. } => READY_READABLE,
        Request::Send { .. } => READY_WRITABLE,
        _ => 0,
    }
}

impl<N: Notifier> Posix<N> {
    /// A server over `tcp`, the channel to the tcp server.
    pub fn new(tcp: Endpoint<N>, limits: Limits) -> Posix<N> {
        Posix {
            eps: alloc::vec![tcp],
            apps: Vec::new(),
            next_app: 1,
            limits,
            pending: BTreeMap::new(),
            queue: VecDeque::new(),
            aheads: VecDeque::new(),
            closes: VecDeque::new(),
            by_tcp: BTreeMap::new(),
            early: BTreeMap::new(),
            doomed: Vec::new(),
            lost: Vec::new(),
            backlogged: false,
            counters: Counters::default(),
        }
    }

    /// Serve the application `name` on `ep`.
    pub fn add_app(&mut self, name: &str, ep: Endpoint<N>) {
        self.apps.push(App {
            id: self.next_app,
            name: String::from(name),
            slots: Vec::new(),
            open: 0,
        });
        self.next_app += 1;
        self.eps.push(ep);
    }

    /// Every channel (tcp's first), to sleep on.
    pub fn sleep_set(&mut self) -> &mut [Endpoint<N>] {
        &mut self.eps
    }

    /// What the server did.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Applications served now.
    pub fn apps(&self) -> usize {
        self.apps.len()
    }

    /// Sockets the applications hold now.
    pub fn sockets(&self) -> usize {
        self.apps.iter().map(|a| a.open).sum()
    }

    /// Calls parked now.
    pub fn parked_now(&self) -> usize {
        self.apps
            .iter()
            .flat_map(|a| a.slots.iter())
            .filter_map(|s| s.sock.as_ref())
            .map(|s| s.parked.len() + s.sendq.len() + s.recvs.len())
            .sum()
    }
}

/// Answer `req` with `r`; `false` if the application's channel broke.
fn answer<N: Notifier>(ep: &mut Endpoint<N>, req: ChannelRequest, r: Reply) -> bool {
    let (status, w) = r.encode();
    ep.reply(req, status, w, &[]).is_ok()
}

impl<N: Notifier> Posix<N> {
    /// Whether an event waits for room in its application's queue: the channel does
    /// not wake posix when the application makes room, so the glue should poll again
    /// soon (a short deadline) instead of sleeping until the next message.
    pub fn backlogged(&self) -> bool {
        self.backlogged
    }

    /// Names of the applications dropped (their channel broke) since the last call.
    pub fn take_lost(&mut self) -> Vec<String> {
        core::mem::take(&mut self.lost)
    }

    fn app_index(&self, id: u32) -> Option<usize> {
        self.apps.iter().position(|a| a.id == id)
    }

    fn doom(&mut self, id: u32) {
        if !self.doomed.contains(&id) {
            self.doomed.push(id);
        }
    }

    /// Answer application `k`'s `req` on socket `ah` with `EAGAIN`: the application
    /// now waits for an event with one of `bits`, so the next time the socket has one
    /// it is told, even if it had it when last told.
    fn answer_again(&mut self, k: usize, ah: u32, req: ChannelRequest, bits: u32) {
        if let Some(sock) = self.apps[k].sock(ah) {
            sock.told &= !bits;
        }
        self.answer(k, req, Reply::Error(Errno::Again));
    }

    /// Answer application `k`'s `req` with `r`.
    fn answer(&mut self, k: usize, req: ChannelRequest, r: Reply) {
        if !answer(&mut self.eps[k + 1], req, r) {
            let id = self.apps[k].id;
            self.doom(id);
        }
    }

    /// One pass: tcp's replies and events, the applications' calls, calls to tcp as
    /// its channel has room, readiness events to the applications. Returns whether
    /// anything happened; an error means tcp's channel broke.
    pub fn poll(&mut self) -> Result<bool, TcpBroken> {
        let mut busy = self.serve_tcp()?;
        busy |= self.take_calls();
        busy |= self.send_to_tcp()?;
        busy |= self.tell_apps();
        self.eps[0].flush().map_err(TcpBroken)?;
        for k in 0..self.apps.len() {
            if self.eps[k + 1].flush().is_err() {
                let id = self.apps[k].id;
                self.doom(id);
            }
        }
        busy |= !self.doomed.is_empty();
        for id in core::mem::take(&mut self.doomed) {
            self.drop_app(id);
        }
        Ok(busy)
    }

    /// An application's channel broke: forget it, close its sockets.
    fn drop_app(&mut self, id: u32) {
        let Some(k) = self.app_index(id) else { return };
        let app = self.apps.remove(k);
        self.eps.remove(k + 1);
        for sock in app.slots.into_iter().filter_map(|s| s.sock) {
            for (rep, _) in sock.ahead {
                // A broken tcp channel shows at the next poll.
                let _ = self.eps[0].free(rep);
            }
            self.by_tcp.remove(&sock.tcp);
            self.closes.push_back(sock.tcp);
            self.counters.closed_for_lost += 1;
        }
        self.queue.retain(|r| r.app != id);
        self.aheads.retain(|a| a.app != id);
        self.counters.apps_lost += 1;
        self.lost.push(app.name);
    }

    fn serve_tcp(&mut self) -> Result<bool, TcpBroken> {
        let mut busy = false;
        loop {
            let mut any = self.tcp_replies()?;
            while let Some(req) = self.eps[0].poll_request().map_err(TcpBroken)? {
                any = true;
                match Event::decode(req.opcode(), req.is_oneway(), req.inline()) {
                    Ok(e) => self.on_event(e),
                    Err(_) => {
                        self.counters.tcp_malformed += 1;
                        if !req.is_oneway() {
                            let (s, w) = Reply::Error(Errno::Protocol).encode();
                            self.eps[0].reply(req, s, w, &[]).map_err(TcpBroken)?;
                        }
                    }
                }
            }
            // Every reply sent before an event taken now has arrived: take them, then
            // an early event's handle is known or is not one posix will learn.
            any |= self.tcp_replies()?;
            busy |= any;
            if !any {
                break;
            }
        }
        self.early.clear();
        Ok(busy)
    }

    fn tcp_replies(&mut self) -> Result<bool, TcpBroken> {
        let mut any = false;
        while let Some(rep) = self.eps[0].poll_reply().map_err(TcpBroken)? {
            any = true;
            let decoded = Reply::decode(rep.opcode(), rep.status(), rep.inline());
            if let Some(p) = self.pending.remove(&rep.id().0) {
                if p.ahead {
                    self.on_ahead(p, decoded, rep)?;
                    continue;
                }
                self.on_reply(p, decoded, &rep)?;
            }
            self.eps[0].free(rep).map_err(TcpBroken)?;
        }
        Ok(any)
    }

    fn on_event(&mut self, e: Event) {
        let Some(&(id, ah)) = self.by_tcp.get(&e.handle) else {
            self.early.insert(e.handle, e.ready);
            return;
        };
        let Some(k) = self.app_index(id) else { return };
        let Some(sock) = self.apps[k].sock(ah) else {
            return;
        };
        sock.ready = e.ready;
        self.wake(k, ah, false);
    }

    /// Send again (or answer) the parked calls of application `k`'s socket `ah` that
    /// its readiness lets progress.
    fn wake(&mut self, k: usize, ah: u32, on_cache: bool) {
        let id = self.apps[k].id;
        let Some(sock) = self.apps[k].sock(ah) else {
            return;
        };
        let ready = sock.ready;
        if sock.connecting {
            if ready & READY_WRITABLE != 0 {
                sock.connecting = false;
                if let Some(p) = sock.parked.pop() {
                    self.counters.connected += 1;
                    self.answer(k, p.req, Reply::Handle(ah));
                }
            } else if ready & (READY_ERROR | READY_HANGUP) != 0 {
                let sock = self.apps[k].remove(ah);
                if let Some(mut sock) = sock {
                    self.by_tcp.remove(&sock.tcp);
                    self.closes.push_back(sock.tcp);
                    if let Some(p) = sock.parked.pop() {
                        self.answer(k, p.req, Reply::Error(Errno::ConnRefused));
                    }
                }
            }
            return;
        }
        if !sock.recvs.is_empty()
            && sock.fetching == 0
            && sock.ahead.is_empty()
            && ready & (READY_READABLE | READY_HANGUP | READY_ERROR) != 0
        {
            sock.fetching += 1;
            self.aheads.push_back(Ahead {
                app: id,
                handle: ah,
                tcp: sock.tcp,
                speculative: false,
            });
        }
        let mut k2 = 0;
        while k2 < sock.parked.len() {
            let p = &sock.parked[k2];
            if ready & (p.wants | READY_HANGUP | READY_ERROR) != 0 {
                let p = sock.parked.swap_remove(k2);
                self.queue.push_back(Ready {
                    app: id,
                    req: p.req,
                    call: p.call,
                    nonblocking: p.nonblocking,
                    handle: Some(ah),
                    on_cache,
                    progress: p.progress,
                });
            } else {
                k2 += 1;
            }
        }
    }

    /// Whether application `k`'s socket `ah` may let `call` progress, as tcp last
    /// told its readiness (its events keep this exact but for those in flight, which
    /// wake the call when they arrive).
    fn may_progress(&mut self, k: usize, ah: u32, call: &Request) -> bool {
        self.apps[k]
            .sock(ah)
            .is_some_and(|s| s.ready() & (wants(call) | READY_HANGUP | READY_ERROR) != 0)
    }

    fn register(&mut self, k: usize, th: u32, listener: bool) -> Option<u32> {
        let mut sock = new_sock(th, listener);
        if let Some(r) = self.early.remove(&th) {
            sock.ready = r;
        }
        let id = self.apps[k].id;
        let ah = self.apps[k].insert(sock, self.limits.sockets_per_app);
        match ah {
            Some(ah) => {
                self.by_tcp.insert(th, (id, ah));
            }
            None => self.closes.push_back(th),
        }
        ah
    }

    fn on_reply(
        &mut self,
        p: Pending,
        decoded: Result<Reply, compart_proto::DecodeError>,
        rep: &compart_channel::Reply,
    ) -> Result<(), TcpBroken> {
        let k = self.app_index(p.app);
        let (Some(k), Some(req)) = (k, p.req) else {
            // posix's own close, or an application lost meanwhile: a new handle is
            // nobody's.
            if let Ok(Reply::Handle(h) | Reply::Accepted { handle: h, .. }) = decoded {
                self.closes.push_back(h);
            }
            return Ok(());
        };
        let reply = decoded.unwrap_or_else(|_| {
            self.counters.tcp_malformed += 1;
            Reply::Error(Errno::Protocol)
        });
        match (p.call, reply) {
            (Request::Listen { .. }, Reply::Handle(th)) => {
                let r = match self.register(k, th, true) {
                    Some(ah) => Reply::Handle(ah),
                    None => Reply::Error(Errno::NoBuffers),
                };
                self.answer(k, req, r);
            }
            (Request::Connect { .. }, Reply::Handle(th)) => match self.register(k, th, false) {
                None => self.answer(k, req, Reply::Error(Errno::NoBuffers)),
                Some(ah) if p.nonblocking => {
                    self.counters.connected += 1;
                    self.answer(k, req, Reply::Handle(ah));
                }
                Some(ah) => {
                    if let Some(sock) = self.apps[k].sock(ah) {
                        sock.connecting = true;
                        sock.parked.push(Parked {
                            req,
                            call: p.call,
                            wants: READY_WRITABLE,
                            nonblocking: false,
                            progress: Progress::default(),
                        });
                    }
                    self.counters.parked += 1;
                    self.wake(k, ah, true);
                }
            },
            (
                Request::Accept { .. },
                Reply::Accepted {
                    handle: th,
                    address,
                    port,
                },
            ) => {
                let r = match self.register(k, th, false) {
                    Some(ah) => {
                        self.counters.accepted += 1;
                        Reply::Accepted {
                            handle: ah,
                            address,
                            port,
                        }
                    }
                    None => Reply::Error(Errno::NoBuffers),
                };
                self.answer(k, req, r);
            }
            (Request::Send { .. }, Reply::Bytes(n)) => {
                self.counters.bytes_out += u64::from(n);
                let ah = p.handle.unwrap_or(u32::MAX);
                let taken = p.progress.taken.saturating_add(n);
                let len = u32::try_from(req.payload_len()).unwrap_or(u32::MAX);
                if p.progress.all && taken < len && n > 0 {
                    // The rest, as soon as tcp has room.
                    let rest = Parked {
                        req,
                        call: p.call,
                        wants: READY_WRITABLE,
                        nonblocking: false,
                        progress: Progress { all: true, taken },
                    };
                    self.start_send(k, ah, rest);
                } else {
                    let r = Reply::Bytes(if p.progress.all { taken } else { n });
                    self.answer(k, req, r);
                    self.next_send(k, ah);
                }
            }
            (Request::Send { .. }, r) if p.nonblocking || r != Reply::Error(Errno::Again) => {
                let ah = p.handle.unwrap_or(u32::MAX);
                if r == Reply::Error(Errno::Again) {
                    self.answer_again(k, ah, req, READY_WRITABLE);
                } else {
                    self.answer(k, req, r);
                }
                self.next_send(k, ah);
            }
            (Request::Accept { .. }, Reply::Error(Errno::Again)) if p.nonblocking => {
                self.answer_again(k, p.handle.unwrap_or(u32::MAX), req, READY_READABLE);
            }
            (call, Reply::Error(Errno::Again)) if !p.nonblocking && wants(&call) != 0 => {
                let ah = p.handle.unwrap_or(u32::MAX);
                let Some(sock) = self.apps[k].sock(ah) else {
                    self.answer(k, req, Reply::Error(Errno::BadHandle));
                    return Ok(());
                };
                let wanted = wants(&call);
                let cached = sock.ready & (wanted | READY_HANGUP | READY_ERROR) != 0;
                let retry = cached && !p.on_cache;
                sock.parked.push(Parked {
                    req,
                    call,
                    wants: wanted,
                    nonblocking: false,
                    progress: p.progress,
                });
                self.counters.parked += 1;
                if retry {
                    self.wake(k, ah, true);
                }
            }
            (Request::Stats, Reply::Bytes(_)) => {
                let mut theirs = [0u8; 512];
                let n = self.eps[0]
                    .read_reply_payload(rep, &mut theirs)
                    .map_err(TcpBroken)?;
                let mut text = self.stats_text();
                text.push('\n');
                text.push_str(core::str::from_utf8(&theirs[..n]).unwrap_or("tcp: (not text)"));
                let ep = &mut self.eps[k + 1];
                let len = text.len().min(ep.buffer_size());
                let (s, w) = Reply::Bytes(len as u32).encode();
                if ep.reply(req, s, w, &text.as_bytes()[..len]).is_err() {
                    let id = self.apps[k].id;
                    self.doom(id);
                }
            }
            (_, r) => self.answer(k, req, r),
        }
        Ok(())
    }

    /// posix's counters as text.
    pub fn stats_text(&self) -> String {
        let c = &self.counters;
        let connections = self
            .apps
            .iter()
            .flat_map(|a| a.slots.iter())
            .filter(|s| s.sock.as_ref().is_some_and(|s| !s.listener))
            .count();
        let mut t = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            t,
            "posix: apps={} sockets={} connections={connections} accepted={} connected={} bytes_in={} bytes_out={} parked_now={} apps_lost={} closed_for_lost={} calls={} refused={}",
            self.apps.len(),
            self.sockets(),
            c.accepted,
            c.connected,
            c.bytes_in,
            c.bytes_out,
            self.parked_now(),
            c.apps_lost,
            c.closed_for_lost,
            c.calls,
            c.refused
        );
        t
    }

    fn take_calls(&mut self) -> bool {
        let mut busy = false;
        for k in 0..self.apps.len() {
            let id = self.apps[k].id;
            for _ in 0..BUDGET {
                let ep = &mut self.eps[k + 1];
                let req =
                    match ep.can_reply().and_then(
                        |room| {
                            if room {
                                ep.poll_request()
                            } else {
                                Ok(None)
                            }
                        },
                    ) {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(_) => {
                            self.doom(id);
                            break;
                        }
                    };
                busy = true;
                self.counters.calls += 1;
                if req.is_oneway() {
                    // Applications send no one-way messages.
                    self.counters.refused += 1;
                    continue;
                }
                match Request::decode_flags(req.opcode(), false, req.inline()) {
                    Ok((call, flags)) => self.on_call(k, req, call, flags),
                    Err(_) => {
                        self.counters.refused += 1;
                        self.answer(k, req, Reply::Error(Errno::Protocol));
                    }
                }
            }
        }
        busy
    }

    /// An application's call: checked against its table, put in tcp's handles.
    fn on_call(&mut self, k: usize, req: ChannelRequest, call: Request, flags: u64) {
        let nonblocking = flags & FLAG_NONBLOCK != 0;
        let id = self.apps[k].id;
        let tcp_buf = self.eps[0].buffer_size();
        let app_buf = self.eps[k + 1].buffer_size();
        let app = &mut self.apps[k];
        // The socket a call names, and tcp's call on it.
        let stream = |app: &mut App, h: u32| match app.sock(h) {
            Some(s) if !s.listener => Ok(s.tcp),
            _ => Err(Errno::BadHandle),
        };
        let translated: Result<(Request, Option<u32>), Errno> = match call {
            Request::Listen { .. } | Request::Connect { .. } | Request::Stats => Ok((call, None)),
            Request::Accept { listener } => match app.sock(listener) {
                Some(s) if s.listener => Ok((Request::Accept { listener: s.tcp }, Some(listener))),
                _ => Err(Errno::BadHandle),
            },
            Request::Send { handle } => match stream(app, handle) {
                Ok(_) if req.payload_len() > tcp_buf => Err(Errno::Protocol),
                Ok(t) => {
                    let p = Parked {
                        req,
                        call: Request::Send { handle: t },
                        wants: READY_WRITABLE,
                        nonblocking,
                        progress: Progress {
                            all: flags & FLAG_ALL != 0,
                            taken: 0,
                        },
                    };
                    self.submit_send(k, handle, p);
                    return;
                }
                Err(e) => Err(e),
            },
            Request::Recv { handle, max } => match stream(app, handle) {
                Ok(_) => {
                    let max = max.min(u32::try_from(app_buf).unwrap_or(u32::MAX));
                    self.on_recv(k, handle, req, max, nonblocking);
                    return;
                }
                Err(e) => Err(e),
            },
            Request::Shutdown { handle } => {
                stream(app, handle).map(|t| (Request::Shutdown { handle: t }, Some(handle)))
            }
            Request::SetOption {
                handle,
                option,
                value,
            } => stream(app, handle).map(|t| {
                (
                    Request::SetOption {
                        handle: t,
                        option,
                        value,
                    },
                    Some(handle),
                )
            }),
            Request::Poll { handle } => {
                let r = match app.sock(handle) {
                    Some(s) => Reply::Ready(s.ready()),
                    None => Reply::Error(Errno::BadHandle),
                };
                self.answer(k, req, r);
                return;
            }
            Request::Close { handle } => {
                let r = match app.remove(handle) {
                    Some(sock) => {
                        self.by_tcp.remove(&sock.tcp);
                        self.closes.push_back(sock.tcp);
                        for p in sock.parked.into_iter().chain(sock.sendq) {
                            self.answer(k, p.req, Reply::Error(Errno::BadHandle));
                        }
                        for (r, _, _) in sock.recvs {
                            self.answer(k, r, Reply::Error(Errno::BadHandle));
                        }
                        for (rep, _) in sock.ahead {
                            // A broken tcp channel shows at the next poll.
                            let _ = self.eps[0].free(rep);
                        }
                        Reply::Done
                    }
                    None => Reply::Error(Errno::BadHandle),
                };
                self.answer(k, req, r);
                return;
            }
        };
        match translated {
            Ok((call, Some(ah))) if wants(&call) != 0 && !self.may_progress(k, ah, &call) => {
                // tcp said it cannot progress, and will say when it can: answer or
                // park without asking it.
                if nonblocking {
                    self.answer_again(k, ah, req, wants(&call));
                } else if let Some(sock) = self.apps[k].sock(ah) {
                    sock.parked.push(Parked {
                        req,
                        call,
                        wants: wants(&call),
                        nonblocking: false,
                        progress: Progress::default(),
                    });
                    self.counters.parked += 1;
                }
            }
            Ok((call, handle)) => self.queue.push_back(Ready {
                app: id,
                req,
                call,
                nonblocking,
                handle,
                on_cache: false,
                progress: Progress::default(),
            }),
            Err(e) => {
                self.counters.refused += 1;
                self.answer(k, req, Reply::Error(e));
            }
        }
    }

    /// An application's `Recv` of at most `max` bytes: answered from what posix read
    /// ahead, or it waits for posix's `Recv` to tcp (started now if tcp said it has
    /// data; when it says so otherwise). Non-blocking and with nothing on the way, it is
    /// answered `EAGAIN`. posix's `Recv`s to tcp are one at a time per socket, and every
    /// application `Recv` is served from them, so the bytes stay in order.
    fn on_recv(&mut self, k: usize, ah: u32, req: ChannelRequest, max: u32, nonblocking: bool) {
        let id = self.apps[k].id;
        let Some(sock) = self.apps[k].sock(ah) else {
            self.answer(k, req, Reply::Error(Errno::BadHandle));
            return;
        };
        if max == 0 {
            self.answer(k, req, Reply::Error(Errno::Protocol));
            return;
        }
        let can = sock.ready & (READY_READABLE | READY_HANGUP | READY_ERROR) != 0;
        let held = !sock.ahead.is_empty() || sock.ended.is_some();
        let fetching = sock.fetching > 0;
        if !held && !fetching && !can && nonblocking {
            self.answer_again(k, ah, req, READY_READABLE);
            return;
        }
        sock.recvs.push_back((req, max, nonblocking));
        if !held && !fetching && can {
            sock.fetching += 1;
            self.aheads.push_back(Ahead {
                app: id,
                handle: ah,
                tcp: sock.tcp,
                speculative: false,
            });
        } else if !held && !fetching {
            self.counters.parked += 1;
        }
        self.serve_recvs(k, ah);
    }

    /// Answer application `k`'s waiting `Recv`s on `ah` from the data read ahead, and
    /// read ahead again when it is used up and tcp has more.
    fn serve_recvs(&mut self, k: usize, ah: u32) {
        let id = self.apps[k].id;
        let (tcp, apps) = self.eps.split_at_mut(1);
        let Some(sock) = self.apps[k].sock(ah) else {
            return;
        };
        let mut broke = false;
        while !sock.recvs.is_empty() {
            let Some((rep, off)) = sock.ahead.front_mut() else {
                // The data first, then how the stream ended.
                let Some(end) = sock.ended else {
                    break;
                };
                let Some((req, _, _)) = sock.recvs.pop_front() else {
                    break;
                };
                broke |= !answer(&mut apps[k], req, end);
                continue;
            };
            let Some((req, max, _)) = sock.recvs.pop_front() else {
                break;
            };
            let Ok(data) = tcp[0].reply_payload(rep) else {
                broke |= !answer(&mut apps[k], req, Reply::Error(Errno::Protocol));
                continue;
            };
            let part = data.tail(*off).prefix(max as usize);
            let n = part.len();
            let (status, w) = Reply::Bytes(n as u32).encode();
            broke |= apps[k].reply_from(req, status, w, &part).is_err();
            self.counters.bytes_in += n as u64;
            *off += n;
            if *off >= data.len() {
                if let Some((rep, _)) = sock.ahead.pop_front() {
                    // A broken tcp channel shows at the next poll.
                    let _ = tcp[0].free(rep);
                }
            }
        }
        // Read ahead while tcp says it has more, so that the next `Recv` finds it here.
        while sock.ahead.len() + sock.fetching < AHEAD
            && sock.ended.is_none()
            && sock.ready & (READY_READABLE | READY_HANGUP | READY_ERROR) != 0
        {
            let speculative = !sock.ahead.is_empty() || sock.fetching > 0 || sock.recvs.is_empty();
            sock.fetching += 1;
            self.aheads.push_back(Ahead {
                app: id,
                handle: ah,
                tcp: sock.tcp,
                speculative,
            });
        }
        if broke {
            self.doom(id);
        }
    }

    /// Send a read-ahead `Recv` to tcp (unless its socket is gone, or it is speculative
    /// and tcp's channel is half busy). Returns whether it was sent.
    fn send_ahead(&mut self, a: Ahead, cap: u32) -> Result<bool, ChannelError> {
        let Some(k) = self.app_index(a.app) else {
            return Ok(false);
        };
        let max = self.eps[0].buffer_size().min(self.eps[k + 1].buffer_size());
        let busy = self.eps[0].outstanding_count() >= cap / 2;
        let Some(sock) = self.apps[k].sock(a.handle) else {
            return Ok(false);
        };
        if a.speculative && busy {
            sock.fetching = sock.fetching.saturating_sub(1);
            return Ok(false);
        }
        let call = Request::Recv {
            handle: a.tcp,
            max: u32::try_from(max).unwrap_or(u32::MAX).max(1),
        };
        let (op, w) = call.encode();
        let id = self.eps[0].send_request(op, w, &[])?;
        self.pending.insert(
            id.0,
            Pending {
                app: a.app,
                req: None,
                call,
                nonblocking: false,
                handle: Some(a.handle),
                on_cache: false,
                progress: Progress::default(),
                ahead: true,
            },
        );
        Ok(true)
    }

    /// tcp's answer to a read-ahead `Recv`: held for the application's `Recv`s.
    fn on_ahead(
        &mut self,
        p: Pending,
        decoded: Result<Reply, compart_proto::DecodeError>,
        rep: compart_channel::Reply,
    ) -> Result<(), TcpBroken> {
        let ah = p.handle.unwrap_or(u32::MAX);
        let k = self.app_index(p.app);
        let sock = match k {
            Some(k) => self.apps[k].sock(ah),
            None => None,
        };
        let (Some(k), Some(sock)) = (k, sock) else {
            return self.eps[0].free(rep).map_err(TcpBroken);
        };
        sock.fetching = sock.fetching.saturating_sub(1);
        if decoded == Ok(Reply::Error(Errno::Again)) {
            // Fresher than the last event: no data now (tcp's next event says when).
            sock.ready &= !READY_READABLE;
        }
        let len = self.eps[0]
            .reply_payload(&rep)
            .map(|d| d.len())
            .map_err(TcpBroken)?;
        let mut keep = false;
        match decoded {
            Ok(Reply::Bytes(n)) if n > 0 && n as usize == len => keep = true,
            Ok(Reply::Bytes(0)) => sock.ended = Some(Reply::Bytes(0)),
            Ok(Reply::Error(Errno::Again)) if sock.ahead.is_empty() && sock.fetching == 0 => {
                // tcp's readiness was stale: non-blocking callers learn it now, the
                // others wait for tcp's next event.
                let mut waiting = VecDeque::new();
                for (req, max, nonblocking) in core::mem::take(&mut sock.recvs) {
                    if nonblocking {
                        waiting.push_back(Some(req));
                    } else {
                        sock.recvs.push_back((req, max, nonblocking));
                        waiting.push_back(None);
                    }
                }
                for req in waiting.into_iter().flatten() {
                    self.answer_again(k, ah, req, READY_READABLE);
                }
            }
            // Data is held or on its way: the waiting calls get it.
            Ok(Reply::Error(Errno::Again)) => {}
            Ok(Reply::Error(e)) => sock.ended = Some(Reply::Error(e)),
            _ => {
                self.counters.tcp_malformed += 1;
                sock.ended = Some(Reply::Error(Errno::Protocol));
            }
        }
        if keep {
            if let Some(sock) = self.apps[k].sock(ah) {
                sock.ahead.push_back((rep, 0));
            }
        } else {
            self.eps[0].free(rep).map_err(TcpBroken)?;
        }
        self.serve_recvs(k, ah);
        Ok(())
    }

    /// A `Send` of application `k` on its socket `ah`: started now, or after the one in
    /// progress (bytes go in order).
    fn submit_send(&mut self, k: usize, ah: u32, p: Parked) {
        let Some(sock) = self.apps[k].sock(ah) else {
            self.answer(k, p.req, Reply::Error(Errno::BadHandle));
            return;
        };
        if sock.sending {
            sock.sendq.push_back(p);
            return;
        }
        sock.sending = true;
        self.start_send(k, ah, p);
    }

    /// Send (the rest of) the `Send` in progress on `ah` to tcp if its readiness allows,
    /// else park it or, non-blocking, answer `EAGAIN`.
    fn start_send(&mut self, k: usize, ah: u32, p: Parked) {
        let id = self.apps[k].id;
        let Some(sock) = self.apps[k].sock(ah) else {
            self.answer(k, p.req, Reply::Error(Errno::BadHandle));
            return;
        };
        if sock.ready & (READY_WRITABLE | READY_HANGUP | READY_ERROR) != 0 {
            self.queue.push_back(Ready {
                app: id,
                req: p.req,
                call: p.call,
                nonblocking: p.nonblocking,
                handle: Some(ah),
                on_cache: false,
                progress: p.progress,
            });
        } else if p.nonblocking && !p.progress.all {
            self.answer_again(k, ah, p.req, READY_WRITABLE);
            self.next_send(k, ah);
        } else {
            sock.parked.push(p);
            self.counters.parked += 1;
        }
    }

    /// The `Send` in progress on `ah` is answered: start the next.
    fn next_send(&mut self, k: usize, ah: u32) {
        let Some(sock) = self.apps[k].sock(ah) else {
            return;
        };
        sock.sending = false;
        if let Some(p) = sock.sendq.pop_front() {
            sock.sending = true;
            self.start_send(k, ah, p);
        }
    }

    fn send_to_tcp(&mut self) -> Result<bool, TcpBroken> {
        let mut busy = false;
        let cap = self.eps[0].layout().config().max_outstanding;
        while self.eps[0].outstanding_count() < cap {
            if let Some(th) = self.closes.pop_front() {
                let call = Request::Close { handle: th };
                let (op, w) = call.encode();
                match self.eps[0].send_request(op, w, &[]) {
                    Ok(id) => {
                        self.pending.insert(
                            id.0,
                            Pending {
                                app: 0,
                                req: None,
                                call,
                                nonblocking: true,
                                handle: None,
                                on_cache: false,
                                progress: Progress::default(),
                                ahead: false,
                            },
                        );
                        busy = true;
                        continue;
                    }
                    Err(ChannelError::Full | ChannelError::NoFreeRequest) => {
                        self.closes.push_front(th);
                        break;
                    }
                    Err(e) => return Err(TcpBroken(e)),
                }
            }
            if let Some(a) = self.aheads.pop_front() {
                match self.send_ahead(a, cap) {
                    Ok(true) => busy = true,
                    Ok(false) => {}
                    Err(ChannelError::Full | ChannelError::NoFreeRequest) => {
                        self.aheads.push_front(a);
                        break;
                    }
                    Err(e) => return Err(TcpBroken(e)),
                }
                continue;
            }
            let Some(r) = self.queue.pop_front() else {
                break;
            };
            let Some(k) = self.app_index(r.app) else {
                continue;
            };
            let (op, w) = r.call.encode();
            let (tcp, apps) = self.eps.split_at_mut(1);
            let sent = if matches!(r.call, Request::Send { .. }) {
                match apps[k].request_payload(&r.req) {
                    Ok(data) => tcp[0].forward(op, w, &data.tail(r.progress.taken as usize)),
                    Err(_) => {
                        self.doom(r.app);
                        continue;
                    }
                }
            } else {
                tcp[0].send_request(op, w, &[])
            };
            match sent {
                Ok(id) => {
                    busy = true;
                    self.pending.insert(
                        id.0,
                        Pending {
                            app: r.app,
                            req: Some(r.req),
                            call: r.call,
                            nonblocking: r.nonblocking,
                            handle: r.handle,
                            on_cache: r.on_cache,
                            progress: r.progress,
                            ahead: false,
                        },
                    );
                }
                Err(ChannelError::Full | ChannelError::NoFreeRequest) => {
                    self.queue.push_front(r);
                    break;
                }
                Err(ChannelError::PayloadTooLarge) => {
                    self.answer(k, r.req, Reply::Error(Errno::Protocol));
                }
                Err(e) => return Err(TcpBroken(e)),
            }
        }
        Ok(busy)
    }

    /// Tell each application about its sockets that became readier (gained a
    /// `READY_*` bit): what wakes its `Net::wait`. Lost bits are not worth a wake-up;
    /// `Poll` tells them.
    fn tell_apps(&mut self) -> bool {
        let mut busy = false;
        self.backlogged = false;
        let (_, eps) = self.eps.split_at_mut(1);
        for (app, ep) in self.apps.iter_mut().zip(eps.iter_mut()) {
            'app: for (k, slot) in app.slots.iter_mut().enumerate() {
                let Some(sock) = slot.sock.as_mut() else {
                    continue;
                };
                let ready = sock.ready();
                if ready == sock.told || sock.connecting {
                    continue;
                }
                if ready & !sock.told == 0 {
                    sock.told = ready;
                    continue;
                }
                let (op, w) = Event {
                    handle: handle_of(k, slot.generation),
                    ready,
                }
                .encode();
                match ep.send_oneway(op, w) {
                    Ok(()) => {
                        sock.told = ready;
                        self.counters.events += 1;
                        busy = true;
                    }
                    Err(ChannelError::Full) => {
                        self.backlogged = true;
                        break 'app;
                    }
                    Err(_) => {
                        if !self.doomed.contains(&app.id) {
                            self.doomed.push(app.id);
                        }
                        break 'app;
                    }
                }
            }
        }
        busy
    }
}

#[cfg(test)]
mod tests;

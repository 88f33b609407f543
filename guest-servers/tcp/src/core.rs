//! The server core: a smoltcp `Interface` over the [`ChannelDevice`] and a bounded
//! socket table keyed by [`Handle`]s, with the socket calls the posix server will make
//! (listen, accept, connect, send, recv, shutdown, close) answering errno-style
//! [`Error`]s.
//!
//! - A listener keeps `backlog` smoltcp sockets listening on its port; [`Tcp::accept`]
//!   hands out one that has completed its handshake (a new [`Handle`]) and puts a fresh
//!   listening socket in its place.
//! - [`Tcp::close`] frees the handle at once; its socket finishes the close (FIN, and
//!   TIME-WAIT, both smoltcp's) and is removed from the set when it is closed.
//! - A packet to a port nobody listens on is answered RST by smoltcp.
//! - Bounded: at most [`Limits::sockets`] smoltcp sockets (listening, open and closing
//!   together), each with [`Limits::rx_buffer`] + [`Limits::tx_buffer`] bytes.
use alloc::vec::Vec;

use compart_channel::{Endpoint, Notifier};
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};

use crate::device::ChannelDevice;

/// The bounds and settings of the socket table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// smoltcp sockets at once (listening, connected and closing).
    pub sockets: usize,
    /// Receive buffer per socket.
    pub rx_buffer: usize,
    /// Send buffer per socket.
    pub tx_buffer: usize,
    /// Listening sockets per listener at most.
    pub backlog: usize,
    /// smoltcp's delayed ACK (`None`: off).
    pub ack_delay_ms: Option<u64>,
    /// How long a closed connection may take to finish its close (the peer's ACK of
    /// our FIN, the peer's FIN, TIME-WAIT) before it is aborted (RST) and freed, as
    /// Linux's orphan FIN-WAIT-2 timeout.
    pub linger_ms: u64,
    /// How long a connection may take to complete its handshake (a listening socket
    /// in SYN-RECEIVED whose SYN-ACK is never acknowledged, a connect never answered)
    /// before smoltcp gives it up: the listening socket listens again, the connect
    /// fails (`ECONNREFUSED`). Without it a few SYNs from addresses that never answer
    /// would hold a listener's every socket for ever.
    pub handshake_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            sockets: 32,
            rx_buffer: 64 * 1024,
            tx_buffer: 64 * 1024,
            backlog: 4,
            ack_delay_ms: Some(1),
            linger_ms: 60_000,
            handshake_ms: 30_000,
        }
    }
}

/// The interface's configuration (from ip's `Config` answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iface {
    /// The stack's address.
    pub address: [u8; 4],
    /// Its prefix length.
    pub prefix_len: u8,
    /// The IP MTU.
    pub mtu: u32,
    /// Whether the link below completes partial TCP checksums (ip's `TX_CSUM`
    /// offload): then segments go down with the pseudo-header sum only.
    pub tx_checksum_offload: bool,
    /// Whether the link below segments TCP (ip's `TX_TSO4` with `TX_CSUM`): then
    /// segments of up to 64 KiB go down whole.
    pub tso: bool,
}

impl Iface {
    /// The interface ip's `Config` describes, with its link's offloads used only if
    /// `offload`: checksums left to the link with `TX_CSUM`, TSO with `TX_TSO4` too.
    pub fn from_config(c: &compart_proto::packet::Config, offload: bool) -> Iface {
        use compart_proto::packet::offload::{TX_CSUM, TX_TSO4};
        Iface {
            address: c.address,
            prefix_len: c.prefix_len,
            mtu: c.mtu,
            tx_checksum_offload: offload && c.offloads & TX_CSUM != 0,
            tso: offload && c.offloads & (TX_CSUM | TX_TSO4) == TX_CSUM | TX_TSO4,
        }
    }
}

impl Limits {
    /// The defaults, with what the images' command line gives (`sockets=N` 1–1024,
    /// `buf=KIB` 4–4096 of receive and of send buffer each, `backlog=N` up to the
    /// sockets, `handshake=MS` at least 1).
    pub fn from_args(
        sockets: Option<usize>,
        buf_kib: Option<usize>,
        backlog: Option<usize>,
        handshake_ms: Option<u64>,
    ) -> Limits {
        let mut l = Limits::default();
        if let Some(n) = sockets {
            l.sockets = n.clamp(1, 1024);
        }
        if let Some(kib) = buf_kib {
            l.rx_buffer = kib.clamp(4, 4096) * 1024;
            l.tx_buffer = l.rx_buffer;
        }
        if let Some(n) = backlog {
            l.backlog = n.clamp(1, l.sockets);
        }
        if let Some(ms) = handshake_ms {
            l.handshake_ms = ms.max(1);
        }
        l
    }
}

/// What the core did, in all (for `Stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections opened (`connect`).
    pub connected: u64,
    /// Bytes taken for sending.
    pub bytes_out: u64,
    /// Bytes received by the user.
    pub bytes_in: u64,
}

/// A socket option ([`Tcp::set_option`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockOpt {
    /// Send segments at once: Nagle's algorithm off (`TCP_NODELAY`).
    NoDelay(bool),
    /// A receive buffer of at least this many bytes (`SO_RCVBUF`).
    RecvBuffer(usize),
    /// A send buffer of at least this many bytes (`SO_SNDBUF`).
    SendBuffer(usize),
}

/// A socket of the table: a listener or a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle(pub u32);

/// Why a socket call failed (with the errno it stands for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Not now: no connection to accept, no data, no room (`EAGAIN`).
    Again,
    /// No such handle, or the wrong kind (`EBADF`).
    BadHandle,
    /// The table or the listener is full (`ENOBUFS`).
    NoBuffers,
    /// The port is taken (`EADDRINUSE`).
    AddrInUse,
    /// An address or port smoltcp refuses (`EINVAL`).
    Invalid,
    /// The peer answered the connect with RST (`ECONNREFUSED`).
    ConnRefused,
    /// The peer reset the connection (`ECONNRESET`).
    ConnReset,
    /// Not connected yet, or no longer (`ENOTCONN`).
    NotConnected,
    /// Sending after shutdown or the peer's close (`EPIPE`).
    Pipe,
}

impl Error {
    /// The errno of the socket protocol it stands for.
    pub fn errno(self) -> compart_proto::socket::Errno {
        use compart_proto::socket::Errno;
        match self {
            Error::Again => Errno::Again,
            Error::BadHandle => Errno::BadHandle,
            Error::NoBuffers => Errno::NoBuffers,
            Error::AddrInUse => Errno::AddrInUse,
            Error::Invalid => Errno::Invalid,
            Error::ConnRefused => Errno::ConnRefused,
            Error::ConnReset => Errno::ConnReset,
            Error::NotConnected => Errno::NotConnected,
            Error::Pipe => Errno::Pipe,
        }
    }
}

/// Readiness of a handle (what posix's poll waits on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    /// recv would not block (data, end of stream or an error), or accept has one.
    pub readable: bool,
    /// send would not block.
    pub writable: bool,
    /// The peer closed its side, or the connection is gone.
    pub hangup: bool,
    /// The connection was refused or reset.
    pub error: bool,
}

impl Ready {
    /// The socket protocol's `READY_*` bits.
    pub fn bits(self) -> u32 {
        use compart_proto::socket::{READY_ERROR, READY_HANGUP, READY_READABLE, READY_WRITABLE};
        let bit = |b: bool, v: u32| if b { v } else { 0 };
        bit(self.readable, READY_READABLE)
            | bit(self.writable, READY_WRITABLE)
            | bit(self.hangup, READY_HANGUP)
            | bit(self.error, READY_ERROR)
    }
}

#[derive(Debug)]
struct Stream {
    sh: SocketHandle,
    last: State,
    /// How the connection ended badly, once it did.
    failed: Option<Error>,
}

#[derive(Debug)]
enum Entry {
    Listener {
        port: u16,
        /// How many sockets it wants listening (fewer while the table is full).
        backlog: usize,
        waiting: Vec<SocketHandle>,
    },
    Stream(Stream),
}

#[derive(Debug)]
struct Slot {
    generation: u16,
    entry: Option<Entry>,
}

/// The tcp server's core.
pub struct Tcp<N: Notifier> {
    iface: Interface,
    dev: ChannelDevice<N>,
    sockets: SocketSet<'static>,
    live: usize,
    slots: Vec<Slot>,
    /// Closed by the user, finishing their close; when they are aborted if not done
    /// (set at the first pass after the close).
    closing: Vec<(SocketHandle, Option<Instant>)>,
    next_port: u16,
    limits: Limits,
    totals: Totals,
}

impl<N: Notifier> core::fmt::Debug for Tcp<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tcp")
            .field("device", self.dev.counters())
            .field("live", &self.live)
            .field("slots", &self.slots)
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

const EPHEMERAL: core::ops::RangeInclusive<u16> = 49152..=65535;

/// Whether a socket in `s` is still opening its connection.
fn handshaking(s: State) -> bool {
    matches!(s, State::SynSent | State::SynReceived)
}

fn state_failed(last: State, now: State) -> Option<Error> {
    if now != State::Closed {
        return None;
    }
    match last {
        State::SynSent => Some(Error::ConnRefused),
        State::SynReceived
        | State::Established
        | State::FinWait1
        | State::FinWait2
        | State::CloseWait => Some(Error::ConnReset),
        _ => None,
    }
}

impl<N: Notifier> Tcp<N> {
    /// A core on `ep` (the channel to ip) with `iface`'s address; `seed` seeds smoltcp's
    /// initial sequence numbers and ports.
    pub fn new(ep: Endpoint<N>, iface: Iface, mut limits: Limits, now: Instant, seed: u64) -> Self {
        // Handles carry the slot in 16 bits.
        limits.sockets = limits.sockets.min(0xffff);
        let mut dev =
            ChannelDevice::new(ep, iface.mtu as usize, iface.tx_checksum_offload, iface.tso);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut ifc = Interface::new(config, &mut dev, now);
        let addr = Ipv4Address::from(iface.address);
        ifc.update_ip_addrs(|a| {
            // One address: the vector has room for it.
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(addr), iface.prefix_len.min(32)));
        });
        // ip routes; smoltcp only needs a route to accept any destination.
        let _ = ifc.routes_mut().add_default_ipv4_route(addr);
        let span = u64::from(EPHEMERAL.end() - EPHEMERAL.start()) + 1;
        Tcp {
            iface: ifc,
            dev,
            sockets: SocketSet::new(Vec::new()),
            live: 0,
            slots: Vec::new(),
            closing: Vec::new(),
            next_port: EPHEMERAL.start() + (seed % span) as u16,
            limits,
            totals: Totals::default(),
        }
    }

    /// The device (counters, the endpoint to sleep on).
    pub fn device(&mut self) -> &mut ChannelDevice<N> {
        &mut self.dev
    }

    /// Keep another of the server's channels (posix's) with ip's, as one sleep set;
    /// returns its index for [`Tcp::serve_posix`].
    pub fn attach(&mut self, ep: Endpoint<N>) -> usize {
        self.dev.attach(ep)
    }

    /// Serve the socket protocol on the attached channel `k`. An error means that
    /// channel broke; it is dropped (the indices of later ones shift down by one).
    pub fn serve_posix(
        &mut self,
        k: usize,
        posix: &mut crate::posix::Posix,
    ) -> Result<bool, compart_channel::ChannelError> {
        let Some(mut ep) = self.dev.take(k) else {
            return Ok(false);
        };
        let r = posix.serve(self, &mut ep);
        match r {
            Ok(_) => self.dev.put(k, ep),
            Err(_) => {
                self.dev.put(k, ep);
                self.dev.forget(k);
            }
        }
        r
    }

    /// Every channel of the server (ip's first), to sleep on.
    pub fn sleep_set(&mut self) -> &mut [Endpoint<N>] {
        self.dev.endpoints()
    }

    /// smoltcp sockets in use (listening, open and closing).
    pub fn sockets_in_use(&self) -> usize {
        self.live
    }

    /// Connections the user holds (accepted or opened, not yet closed).
    pub fn connections(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.entry, Some(Entry::Stream(_))))
            .count()
    }

    /// What the core did, in all.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Set a connection's option. The buffers are the table's ([`Limits`]), made when
    /// the socket is: a size up to theirs is granted as is (the buffer stays larger,
    /// as Linux may round up), a larger one is refused [`Error::Invalid`].
    pub fn set_option(&mut self, h: Handle, opt: SockOpt) -> Result<(), Error> {
        let (sh, _) = self.stream(h)?;
        match opt {
            SockOpt::NoDelay(on) => {
                self.sockets
                    .get_mut::<tcp::Socket>(sh)
                    .set_nagle_enabled(!on);
                Ok(())
            }
            SockOpt::RecvBuffer(n) if n <= self.limits.rx_buffer => Ok(()),
            SockOpt::SendBuffer(n) if n <= self.limits.tx_buffer => Ok(()),
            SockOpt::RecvBuffer(_) | SockOpt::SendBuffer(_) => Err(Error::Invalid),
        }
    }

    /// One pass: ip's replies, smoltcp's ingress and egress, socket states. Returns
    /// whether anything happened.
    pub fn poll(&mut self, now: Instant) -> bool {
        let mut busy = self.dev.pump();
        self.gate_syns();
        let before = self.dev.counters().clone();
        let r = self.iface.poll(now, &mut self.dev, &mut self.sockets);
        busy |= r == PollResult::SocketStateChanged || *self.dev.counters() != before;
        self.track();
        busy |= self.reap(now);
        self.dev.flush();
        busy
    }

    /// How long until smoltcp needs the next poll (`None`: not before a packet or a
    /// call).
    ///
    /// While ip holds all of the channel's credit, "now" means "when ip answers", which
    /// wakes the server anyway: then only a later deadline counts (the linger times of
    /// closing sockets are checked at the passes those wake-ups cause, or within a
    /// second).
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        let d = self.iface.poll_delay(now, &self.sockets);
        let d = match d {
            Some(d) if d == Duration::ZERO && !self.dev.can_send() => None,
            d => d,
        };
        if self.closing.is_empty() {
            d
        } else {
            let second = Duration::from_secs(1);
            Some(d.map_or(second, |d| d.min(second)))
        }
    }

    /// Tell the device how many SYNs each listener can take now (its sockets still
    /// listening): one beyond would find none and be reset by smoltcp; the device drops
    /// it instead, so the peer retries once the application accepts (as Linux does with
    /// a full accept queue).
    fn gate_syns(&mut self) {
        let gate = self.dev.gate_syns();
        gate.clear();
        for slot in &self.slots {
            if let Some(Entry::Listener { port, waiting, .. }) = &slot.entry {
                let listening = waiting
                    .iter()
                    .filter(|&&sh| self.sockets.get::<tcp::Socket>(sh).state() == State::Listen)
                    .count();
                gate.push((*port, listening));
            }
        }
    }

    fn track(&mut self) {
        for slot in &mut self.slots {
            if let Some(Entry::Stream(s)) = &mut slot.entry {
                let sock = self.sockets.get_mut::<tcp::Socket>(s.sh);
                let now = sock.state();
                if handshaking(s.last) && !handshaking(now) {
                    // Past its handshake: no more timeout (smoltcp's would also abort
                    // an established connection whose peer is quiet for that long).
                    sock.set_timeout(None);
                }
                if s.failed.is_none() {
                    s.failed = state_failed(s.last, now);
                }
                s.last = now;
            }
        }
    }

    /// Remove finished closing sockets, abort those past their linger time; re-arm
    /// listening sockets a reset closed.
    fn reap(&mut self, now: Instant) -> bool {
        let mut any = false;
        let mut k = 0;
        while k < self.closing.len() {
            let (sh, deadline) = &mut self.closing[k];
            let s = self.sockets.get_mut::<tcp::Socket>(*sh);
            if s.state() == State::Closed {
                self.sockets.remove(*sh);
                self.live -= 1;
                self.closing.swap_remove(k);
                any = true;
                continue;
            }
            match deadline {
                None => *deadline = Some(now + Duration::from_millis(self.limits.linger_ms)),
                Some(d) if now >= *d => {
                    // The RST goes out at the next egress; the socket is freed after.
                    s.abort();
                    any = true;
                }
                Some(_) => {}
            }
            k += 1;
        }
        for k in 0..self.slots.len() {
            let Some(Entry::Listener {
                port,
                backlog,
                waiting,
            }) = &mut self.slots[k].entry
            else {
                continue;
            };
            let (port, short) = (*port, *backlog - waiting.len().min(*backlog));
            for &sh in waiting.iter() {
                let s = self.sockets.get_mut::<tcp::Socket>(sh);
                match s.state() {
                    // The port was free when the listener was made.
                    State::Closed => {
                        s.set_timeout(Some(Duration::from_millis(self.limits.handshake_ms)));
                        let _ = s.listen(port);
                    }
                    State::Listen | State::SynReceived => {}
                    // Past its handshake, waiting to be accepted: it may wait as long as
                    // the server takes (the timeout is set again when it listens anew).
                    _ => s.set_timeout(None),
                }
            }
            // A backlog that shrank while the table was full grows back.
            for _ in 0..short {
                let Ok(sh) = self.new_socket() else { break };
                let _ = self.sockets.get_mut::<tcp::Socket>(sh).listen(port);
                if let Some(Entry::Listener { waiting, .. }) = &mut self.slots[k].entry {
                    waiting.push(sh);
                }
                any = true;
            }
        }
        any
    }

    fn new_socket(&mut self) -> Result<SocketHandle, Error> {
        if self.live >= self.limits.sockets {
            return Err(Error::NoBuffers);
        }
        let rx = tcp::SocketBuffer::new(alloc::vec![0; self.limits.rx_buffer]);
        let tx = tcp::SocketBuffer::new(alloc::vec![0; self.limits.tx_buffer]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_ack_delay(self.limits.ack_delay_ms.map(Duration::from_millis));
        // Until the handshake completes (cleared in `track` and `accept`).
        s.set_timeout(Some(Duration::from_millis(self.limits.handshake_ms)));
        self.live += 1;
        Ok(self.sockets.add(s))
    }

    fn drop_socket(&mut self, sh: SocketHandle) {
        self.sockets.remove(sh);
        self.live -= 1;
    }

    fn new_handle(&mut self, entry: Entry) -> Handle {
        let k = match self.slots.iter().position(|s| s.entry.is_none()) {
            Some(k) => k,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[k];
        slot.generation = slot.generation.wrapping_add(1);
        slot.entry = Some(entry);
        // k < sockets ≤ 65536 entries in practice; the table never outgrows live sockets.
        Handle(k as u32 | u32::from(slot.generation) << 16)
    }

    fn slot_ref(&self, h: Handle) -> Result<&Entry, Error> {
        let k = (h.0 & 0xffff) as usize;
        match self.slots.get(k) {
            Some(Slot {
                generation,
                entry: Some(e),
            }) if u32::from(*generation) == h.0 >> 16 => Ok(e),
            _ => Err(Error::BadHandle),
        }
    }

    fn slot(&mut self, h: Handle) -> Result<&mut Entry, Error> {
        let k = (h.0 & 0xffff) as usize;
        match self.slots.get_mut(k) {
            Some(Slot {
                generation,
                entry: Some(e),
            }) if u32::from(*generation) == h.0 >> 16 => Ok(e),
            _ => Err(Error::BadHandle),
        }
    }

    fn stream(&mut self, h: Handle) -> Result<(SocketHandle, Option<Error>), Error> {
        match self.slot(h)? {
            Entry::Stream(s) => Ok((s.sh, s.failed)),
            Entry::Listener { .. } => Err(Error::BadHandle),
        }
    }

    fn port_in_use(&self, port: u16) -> bool {
        use smoltcp::socket::AnySocket;
        self.sockets
            .iter()
            .filter_map(|(_, s)| tcp::Socket::downcast(s))
            .any(|t| {
                t.listen_endpoint().port == port
                    || t.local_endpoint().is_some_and(|e| e.port == port)
            })
    }

    /// Listen on `port` with up to `backlog` connections completing at once.
    pub fn listen(&mut self, port: u16, backlog: usize) -> Result<Handle, Error> {
        if port == 0 {
            return Err(Error::Invalid);
        }
        if self.port_in_use(port) {
            return Err(Error::AddrInUse);
        }
        let backlog = backlog.clamp(1, self.limits.backlog);
        if self.live + backlog > self.limits.sockets {
            return Err(Error::NoBuffers);
        }
        let mut waiting = Vec::with_capacity(backlog);
        for _ in 0..backlog {
            let sh = self.new_socket()?;
            // A non-zero port on a closed socket: listen cannot fail.
            let _ = self.sockets.get_mut::<tcp::Socket>(sh).listen(port);
            waiting.push(sh);
        }
        Ok(self.new_handle(Entry::Listener {
            port,
            backlog,
            waiting,
        }))
    }

    /// A connection on listener `l` that completed its handshake, as a new handle.
    pub fn accept(&mut self, l: Handle) -> Result<Handle, Error> {
        let (port, ready) = match self.slot_ref(l)? {
            Entry::Listener { port, waiting, .. } => {
                let ready = waiting.iter().position(|&sh| {
                    !matches!(
                        self.sockets.get::<tcp::Socket>(sh).state(),
                        State::Listen | State::SynReceived | State::Closed
                    )
                });
                (*port, ready.map(|k| (k, waiting[k])))
            }
            Entry::Stream(_) => return Err(Error::BadHandle),
        };
        let Some((k, sh)) = ready else {
            return Err(Error::Again);
        };
        // Its replacement, if the table has room; otherwise the backlog shrinks.
        let fresh = self.new_socket().ok();
        if let Some(f) = fresh {
            let _ = self.sockets.get_mut::<tcp::Socket>(f).listen(port);
        }
        if let Ok(Entry::Listener { waiting, .. }) = self.slot(l) {
            match fresh {
                Some(f) => waiting[k] = f,
                None => {
                    waiting.swap_remove(k);
                }
            }
        }
        let s = self.sockets.get_mut::<tcp::Socket>(sh);
        s.set_timeout(None);
        let last = s.state();
        self.totals.accepted += 1;
        Ok(self.new_handle(Entry::Stream(Stream {
            sh,
            last,
            failed: None,
        })))
    }

    /// Open a connection to `addr:port` from an ephemeral port. It is connected once
    /// [`Tcp::ready`] says writable; a refusal shows as [`Error::ConnRefused`].
    pub fn connect(&mut self, addr: [u8; 4], port: u16) -> Result<Handle, Error> {
        if port == 0 {
            return Err(Error::Invalid);
        }
        let mut local = None;
        for _ in 0..=(EPHEMERAL.end() - EPHEMERAL.start()) {
            let p = self.next_port;
            self.next_port = if p == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if !self.port_in_use(p) {
                local = Some(p);
                break;
            }
        }
        let local = local.ok_or(Error::NoBuffers)?;
        let sh = self.new_socket()?;
        let remote = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::from(addr)), port);
        let cx = self.iface.context();
        if self
            .sockets
            .get_mut::<tcp::Socket>(sh)
            .connect(cx, remote, local)
            .is_err()
        {
            self.drop_socket(sh);
            return Err(Error::Invalid);
        }
        self.totals.connected += 1;
        Ok(self.new_handle(Entry::Stream(Stream {
            sh,
            last: State::SynSent,
            failed: None,
        })))
    }

    /// Queue `data` for sending; returns how much was taken.
    pub fn send(&mut self, h: Handle, data: &[u8]) -> Result<usize, Error> {
        let (sh, failed) = self.stream(h)?;
        if let Some(e) = failed {
            return Err(e);
        }
        let s = self.sockets.get_mut::<tcp::Socket>(sh);
        match s.state() {
            State::SynSent | State::SynReceived => return Err(Error::Again),
            _ if !s.may_send() => return Err(Error::Pipe),
            _ => {}
        }
        match s.send_slice(data) {
            Ok(0) if !data.is_empty() => Err(Error::Again),
            Ok(n) => {
                self.totals.bytes_out += n as u64;
                Ok(n)
            }
            Err(_) => Err(Error::Pipe),
        }
    }

    /// Received bytes into `buf`; `Ok(0)` is the end of the stream.
    pub fn recv(&mut self, h: Handle, buf: &mut [u8]) -> Result<usize, Error> {
        let (sh, failed) = self.stream(h)?;
        let s = self.sockets.get_mut::<tcp::Socket>(sh);
        if s.can_recv() {
            let n = s.recv_slice(buf).map_err(|_| Error::NotConnected)?;
            self.totals.bytes_in += n as u64;
            return Ok(n);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        match s.state() {
            State::SynSent | State::SynReceived => Err(Error::Again),
            _ if s.may_recv() => Err(Error::Again),
            _ => Ok(0),
        }
    }

    /// Half-close: send FIN after the queued data; receiving goes on.
    pub fn shutdown(&mut self, h: Handle) -> Result<(), Error> {
        let (sh, _) = self.stream(h)?;
        self.sockets.get_mut::<tcp::Socket>(sh).close();
        Ok(())
    }

    /// Close the handle: a listener's waiting connections are reset, a connection is
    /// closed gracefully (FIN, TIME-WAIT) in the background.
    pub fn close(&mut self, h: Handle) -> Result<(), Error> {
        self.slot(h)?;
        let k = (h.0 & 0xffff) as usize;
        match self.slots[k].entry.take() {
            Some(Entry::Listener { waiting, .. }) => {
                for sh in waiting {
                    self.sockets.get_mut::<tcp::Socket>(sh).abort();
                    self.closing.push((sh, None));
                }
            }
            Some(Entry::Stream(s)) => {
                self.sockets.get_mut::<tcp::Socket>(s.sh).close();
                self.closing.push((s.sh, None));
            }
            None => {}
        }
        Ok(())
    }

    /// The handle's readiness.
    pub fn ready(&mut self, h: Handle) -> Result<Ready, Error> {
        let (sh, failed) = match self.slot_ref(h)? {
            Entry::Listener { waiting, .. } => {
                let readable = waiting.iter().any(|&sh| {
                    !matches!(
                        self.sockets.get::<tcp::Socket>(sh).state(),
                        State::Listen | State::SynReceived | State::Closed
                    )
                });
                return Ok(Ready {
                    readable,
                    ..Ready::default()
                });
            }
            Entry::Stream(s) => (s.sh, s.failed),
        };
        let s = self.sockets.get::<tcp::Socket>(sh);
        let connecting = matches!(s.state(), State::SynSent | State::SynReceived);
        Ok(Ready {
            readable: s.can_recv() || (!connecting && !s.may_recv()) || failed.is_some(),
            writable: s.can_send(),
            hangup: !connecting && !s.may_recv(),
            error: failed.is_some(),
        })
    }

    /// The peer of a connection, once it has one.
    pub fn peer(&mut self, h: Handle) -> Result<Option<([u8; 4], u16)>, Error> {
        let (sh, _) = self.stream(h)?;
        Ok(self
            .sockets
            .get::<tcp::Socket>(sh)
            .remote_endpoint()
            .and_then(|e| {
                #[allow(irrefutable_let_patterns)] // IPv4 only, unless proto-ipv6 is on
                let IpAddress::Ipv4(a) = e.addr
                else {
                    return None;
                };
                Some((a.octets(), e.port))
            }))
    }

    /// The state of a connection (for tests and diagnostics).
    pub fn state(&mut self, h: Handle) -> Result<State, Error> {
        let (sh, _) = self.stream(h)?;
        Ok(self.sockets.get::<tcp::Socket>(sh).state())
    }
}

//! An application guest's network: [`PosixNet`] implements the socket API of
//! `compart_sockets` ([`Net`], [`Listener`], [`Stream`]) over the channel to the posix
//! server, in the socket protocol of `compart_proto::socket`.
//!
//! - One call at a time: each socket call is one request, answered by posix; the
//!   application sleeps on the channel ([`Sleep::sleep`]) until the reply comes.
//! - Blocking (the default): posix parks the call until tcp says it can progress, so a
//!   blocked application sleeps instead of spinning. Non-blocking (`set_nonblocking`):
//!   the request carries `FLAG_NONBLOCK` and posix answers `EAGAIN` at once.
//! - Readiness: posix sends a one-way `Event` whenever one of this application's
//!   handles changes readiness; [`Net::wait`] sleeps until one arrives (or a deadline),
//!   and returns at once if one arrived since the last wait, so no wake-up is lost.
//! - Payloads: a `write` sends up to one pool buffer (64 KiB in the stack's topologies)
//!   per request, a `read` receives up to as much; the bytes are copied once each way
//!   between the application's memory and the channel.
//! - Write-behind: a `write` returns as soon as its request is on its way, flagged
//!   `FLAG_ALL` (posix delivers all of it, in order, waiting for room as long as it
//!   takes): the application's pool buffers are its socket's send buffer. Up to
//!   [`BEHIND`] writes are in flight at once (then a write waits for one, or answers
//!   `EAGAIN` if non-blocking); a write that fails shows as the error of the stream's
//!   next `write` or `shutdown`. `shutdown` and dropping wait for the stream's writes
//!   (dropping at most [`DROP_FLUSH_MS`]).
//! - A non-blocking `read` or `accept` that posix answered `EAGAIN` is answered
//!   `EAGAIN` again without asking, until posix sends an event for that handle.
//! - Dropping a stream or listener closes its handle (posix closes tcp's).
//!
//! The firmware supplies the clock and the sleep ([`Sleep`]) and opens the channel
//! (`compart_firmware::net::open`); everything else is here, tested on the host.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use core::cell::RefCell;

use compart_channel::{ChannelError, Endpoint, Notifier, RequestId};
use compart_proto::socket::{
    Errno, Event, Reply, Request, FLAG_ALL, FLAG_NONBLOCK, OPT_NODELAY, OPT_RCVBUF, OPT_SNDBUF,
    READY_ERROR, READY_HANGUP,
};
pub use compart_sockets::{Listener, Net, Peer, Result, SockOpt, Stream};

/// Writes in flight at once at most (fewer if the channel has fewer request entries:
/// two stay free for the other calls).
pub const BEHIND: usize = 14;

/// How long dropping a stream waits for its writes to be delivered before it closes
/// the handle anyway (posix then drops what is left).
pub const DROP_FLUSH_MS: u64 = 10_000;

/// How the application's guest keeps time and sleeps: the firmware's clock and
/// `channel::wait_for_any` in a guest, a host clock and a short sleep in tests.
pub trait Sleep<N: Notifier> {
    /// Milliseconds of a monotonic clock.
    fn now_ms(&self) -> u64;

    /// Sleep until something may have arrived on `ep`, or `deadline_ms` has passed.
    /// May return early.
    fn sleep(&self, ep: &mut Endpoint<N>, deadline_ms: Option<u64>);
}

/// The channel to posix and what it said.
#[derive(Debug)]
struct Client<N: Notifier, S> {
    ep: Endpoint<N>,
    sleep: S,
    /// Readiness events received, in all.
    events: u64,
    /// [`Client::events`] when [`Net::wait`] last returned.
    waited: u64,
    /// One-way messages from posix that did not decode as events.
    malformed: u64,
    /// Writes in flight: request id → the stream's handle.
    behind: BTreeMap<u64, u32>,
    /// Writes in flight at once at most.
    behind_max: usize,
    /// The first failure of a stream's writes in flight, until reported.
    failed: BTreeMap<u32, Errno>,
    /// Events received per handle.
    handle_events: BTreeMap<u32, u64>,
    /// Handles whose last non-blocking `Recv` or `Accept` was `EAGAIN` with no event
    /// for them since: the next one is `EAGAIN` without asking posix (posix tells
    /// every socket that becomes readable).
    idle: BTreeSet<u32>,
}

/// What a broken channel to posix means to a caller: the server is gone (or wrote what
/// no server writes); no call can complete.
fn gone(e: ChannelError) -> Errno {
    match e {
        ChannelError::Full | ChannelError::NoFreeRequest => Errno::Again,
        _ => Errno::Protocol,
    }
}

impl<N: Notifier, S: Sleep<N>> Client<N, S> {
    /// Queue a write of `data` on `handle` (write-behind); `Err(Again)` if `BEHIND`
    /// are in flight and `nonblocking`.
    fn write_behind(&mut self, handle: u32, data: &[u8], nonblocking: bool) -> Result<()> {
        loop {
            self.pump(None).map_err(gone)?;
            if self.behind.len() < self.behind_max {
                break;
            }
            if nonblocking {
                return Err(Errno::Again);
            }
            self.sleep.sleep(&mut self.ep, None);
        }
        let (op, w) = Request::Send { handle }.encode_flags(FLAG_ALL);
        let id = loop {
            match self.ep.send_request(op, w, data) {
                Ok(id) => break id,
                Err(ChannelError::Full | ChannelError::NoFreeRequest) => {
                    self.pump(None).map_err(gone)?;
                    self.sleep.sleep(&mut self.ep, None);
                }
                Err(e) => return Err(gone(e)),
            }
        };
        self.behind.insert(id.0, handle);
        self.ep.flush().map_err(gone)
    }

    /// Wait until none of `handle`'s writes is in flight, or `deadline_ms` passed.
    fn flush_writes(&mut self, handle: u32, deadline_ms: Option<u64>) -> Result<()> {
        loop {
            self.pump(None).map_err(gone)?;
            if !self.behind.values().any(|&h| h == handle) {
                return Ok(());
            }
            if deadline_ms.is_some_and(|d| self.sleep.now_ms() >= d) {
                return Ok(());
            }
            self.sleep.sleep(&mut self.ep, deadline_ms);
        }
    }

    /// A non-blocking `Recv` or `Accept` on `handle`: `EAGAIN` at once if posix said so
    /// last time and has not told of a change since.
    fn nonblocking_call(
        &mut self,
        handle: u32,
        req: Request,
        out: &mut [u8],
    ) -> Result<(Reply, usize)> {
        if self.idle.contains(&handle) {
            return Err(Errno::Again);
        }
        let seen = self.handle_events.get(&handle).copied();
        let r = self.call(req, true, &[], out);
        if r == Err(Errno::Again) && self.handle_events.get(&handle).copied() == seen {
            self.idle.insert(handle);
        }
        r
    }

    /// Forget `handle`'s readiness (it is being closed).
    fn forget(&mut self, handle: u32) {
        self.handle_events.remove(&handle);
        self.idle.remove(&handle);
    }

    /// The failure of one of `handle`'s earlier writes, once.
    fn take_failure(&mut self, handle: u32) -> Result<()> {
        match self.failed.remove(&handle) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Take posix's events and the replies to writes in flight (both count as events:
    /// a finished write makes room), and the reply to `mine` if it came.
    fn pump(
        &mut self,
        mine: Option<RequestId>,
    ) -> core::result::Result<Option<compart_channel::Reply>, ChannelError> {
        self.drain()?;
        while let Some(rep) = self.ep.poll_reply()? {
            if Some(rep.id()) == mine {
                return Ok(Some(rep));
            }
            match self.behind.remove(&rep.id().0) {
                Some(handle) => {
                    let r = Reply::decode(rep.opcode(), rep.status(), rep.inline());
                    let e = match r {
                        Ok(Reply::Bytes(_)) => None,
                        Ok(Reply::Error(e)) => Some(e),
                        _ => Some(Errno::Protocol),
                    };
                    if let Some(e) = e {
                        self.failed.entry(handle).or_insert(e);
                    }
                    self.events += 1;
                }
                None => self.malformed += 1,
            }
            self.ep.free(rep)?;
        }
        Ok(None)
    }

    /// Take posix's events (and anything else it sent one-way), counting them.
    fn drain(&mut self) -> core::result::Result<(), ChannelError> {
        while let Some(req) = self.ep.poll_request()? {
            match Event::decode(req.opcode(), req.is_oneway(), req.inline()) {
                Ok(e) => {
                    self.events += 1;
                    *self.handle_events.entry(e.handle).or_insert(0) += 1;
                    self.idle.remove(&e.handle);
                }
                Err(_) => self.malformed += 1,
            }
            if !req.is_oneway() {
                // posix sends no requests: refuse, so its entry comes back.
                let (status, w) = Reply::Error(Errno::Protocol).encode();
                self.ep.reply(req, status, w, &[])?;
            }
        }
        Ok(())
    }

    /// One socket call: send it, sleep until its reply, copy the reply's payload into
    /// `out`. Returns the reply and the payload bytes copied.
    fn call(
        &mut self,
        req: Request,
        nonblocking: bool,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(Reply, usize)> {
        let flags = if nonblocking { FLAG_NONBLOCK } else { 0 };
        let (op, w) = req.encode_flags(flags);
        let id = loop {
            match self.ep.send_request(op, w, payload) {
                Ok(id) => break id,
                // Only a previous call's reply not yet freed could hold the entry, and
                // none is; a full queue empties as posix takes requests.
                Err(ChannelError::Full | ChannelError::NoFreeRequest) => {
                    self.pump(None).map_err(gone)?;
                    self.sleep.sleep(&mut self.ep, None);
                }
                Err(e) => return Err(gone(e)),
            }
        };
        self.ep.flush().map_err(gone)?;
        loop {
            if let Some(rep) = self.pump(Some(id)).map_err(gone)? {
                let decoded = Reply::decode(rep.opcode(), rep.status(), rep.inline());
                let n = match decoded {
                    Ok(Reply::Bytes(_)) => self.ep.read_reply_payload(&rep, out),
                    _ => Ok(0),
                };
                self.ep.free(rep).map_err(gone)?;
                let n = n.map_err(gone)?;
                return match decoded {
                    Ok(Reply::Error(e)) => Err(e),
                    Ok(r) => Ok((r, n)),
                    Err(_) => Err(Errno::Protocol),
                };
            }
            self.sleep.sleep(&mut self.ep, None);
        }
    }

    /// Sleep until an event arrives after `since` events were counted, or the deadline.
    fn wait_event(&mut self, since: u64, deadline_ms: Option<u64>) -> Result<()> {
        loop {
            self.pump(None).map_err(gone)?;
            if self.events != since {
                return Ok(());
            }
            if deadline_ms.is_some_and(|d| self.sleep.now_ms() >= d) {
                return Ok(());
            }
            self.sleep.sleep(&mut self.ep, deadline_ms);
        }
    }
}

type Shared<N, S> = Rc<RefCell<Client<N, S>>>;

/// The network of an application guest: the socket API over its channel to posix.
#[derive(Debug)]
pub struct PosixNet<N: Notifier, S: Sleep<N>> {
    c: Shared<N, S>,
}

/// A connection through posix. Dropping it closes it.
#[derive(Debug)]
pub struct PosixStream<N: Notifier, S: Sleep<N>> {
    c: Shared<N, S>,
    handle: u32,
    peer: Peer,
    nonblocking: bool,
}

/// A listener through posix. Dropping it closes it.
#[derive(Debug)]
pub struct PosixListener<N: Notifier, S: Sleep<N>> {
    c: Shared<N, S>,
    handle: u32,
    nonblocking: bool,
}

impl<N: Notifier, S: Sleep<N>> PosixNet<N, S> {
    /// The network over `ep`, the channel to posix, with `sleep`'s clock and sleep.
    pub fn new(ep: Endpoint<N>, sleep: S) -> PosixNet<N, S> {
        let entries = ep.layout().config().max_outstanding as usize;
        PosixNet {
            c: Rc::new(RefCell::new(Client {
                ep,
                sleep,
                events: 0,
                waited: 0,
                malformed: 0,
                behind: BTreeMap::new(),
                behind_max: BEHIND.min(entries.saturating_sub(2)),
                failed: BTreeMap::new(),
                handle_events: BTreeMap::new(),
                idle: BTreeSet::new(),
            })),
        }
    }

    /// posix's and tcp's counters (sockets in use, bytes, connections) as a short text
    /// in `buf`; returns its length (cut to `buf`).
    pub fn stats(&mut self, buf: &mut [u8]) -> Result<usize> {
        let (_, n) = self.c.borrow_mut().call(Request::Stats, false, &[], buf)?;
        Ok(n)
    }

    /// Readiness events received from posix so far.
    pub fn events(&self) -> u64 {
        self.c.borrow().events
    }
}

fn close<N: Notifier, S: Sleep<N>>(c: &Shared<N, S>, handle: u32) {
    // Nothing to tell the dropper: a handle posix no longer knows is closed already.
    let _ = c
        .borrow_mut()
        .call(Request::Close { handle }, false, &[], &mut []);
}

impl<N: Notifier, S: Sleep<N>> Drop for PosixStream<N, S> {
    fn drop(&mut self) {
        {
            let mut c = self.c.borrow_mut();
            let deadline = c.sleep.now_ms().saturating_add(DROP_FLUSH_MS);
            // A channel gone is a handle gone: nothing to wait for.
            let _ = c.flush_writes(self.handle, Some(deadline));
            c.failed.remove(&self.handle);
            c.forget(self.handle);
        }
        close(&self.c, self.handle);
    }
}

impl<N: Notifier, S: Sleep<N>> Drop for PosixListener<N, S> {
    fn drop(&mut self) {
        self.c.borrow_mut().forget(self.handle);
        close(&self.c, self.handle);
    }
}

fn poll<N: Notifier, S: Sleep<N>>(c: &Shared<N, S>, handle: u32) -> Result<u32> {
    match c
        .borrow_mut()
        .call(Request::Poll { handle }, false, &[], &mut [])?
    {
        (Reply::Ready(bits), _) => Ok(bits),
        _ => Err(Errno::Protocol),
    }
}

fn bytes(reply: Reply) -> Result<usize> {
    match reply {
        Reply::Bytes(n) => Ok(n as usize),
        _ => Err(Errno::Protocol),
    }
}

impl<N: Notifier, S: Sleep<N>> Stream for PosixStream<N, S> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut c = self.c.borrow_mut();
        let max = buf.len().min(c.ep.buffer_size());
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        let req = Request::Recv {
            handle: self.handle,
            max,
        };
        let (reply, n) = if self.nonblocking {
            c.nonblocking_call(self.handle, req, buf)?
        } else {
            c.call(req, false, &[], buf)?
        };
        drop(c);
        // The payload is what counts; a count beyond it is posix's error.
        match bytes(reply)? {
            k if k == n => Ok(n),
            _ => Err(Errno::Protocol),
        }
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut c = self.c.borrow_mut();
        c.take_failure(self.handle)?;
        let take = buf.len().min(c.ep.buffer_size());
        if c.behind_max > 0 {
            c.write_behind(self.handle, &buf[..take], self.nonblocking)?;
            return Ok(take);
        }
        let req = Request::Send {
            handle: self.handle,
        };
        let (reply, _) = c.call(req, self.nonblocking, &buf[..take], &mut [])?;
        drop(c);
        match bytes(reply)? {
            k if k <= take => Ok(k),
            _ => Err(Errno::Protocol),
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        let req = Request::Shutdown {
            handle: self.handle,
        };
        let mut c = self.c.borrow_mut();
        c.flush_writes(self.handle, None)?;
        c.take_failure(self.handle)?;
        c.call(req, false, &[], &mut [])?;
        Ok(())
    }

    fn set_nonblocking(&mut self, on: bool) -> Result<()> {
        self.nonblocking = on;
        Ok(())
    }

    fn set_option(&mut self, opt: SockOpt) -> Result<()> {
        let (option, value) = match opt {
            SockOpt::NoDelay(on) => (OPT_NODELAY, u32::from(on)),
            SockOpt::RecvBuffer(n) => (OPT_RCVBUF, n),
            SockOpt::SendBuffer(n) => (OPT_SNDBUF, n),
        };
        let req = Request::SetOption {
            handle: self.handle,
            option,
            value,
        };
        self.c.borrow_mut().call(req, false, &[], &mut [])?;
        Ok(())
    }

    fn ready(&mut self) -> Result<u32> {
        poll(&self.c, self.handle)
    }

    fn peer(&self) -> Peer {
        self.peer
    }

    fn wait_ready(&mut self, bits: u32) -> Result<()> {
        loop {
            let since = self.c.borrow().events;
            if poll(&self.c, self.handle)? & (bits | READY_HANGUP | READY_ERROR) != 0 {
                return Ok(());
            }
            self.c.borrow_mut().wait_event(since, None)?;
        }
    }
}

impl<N: Notifier, S: Sleep<N>> Listener for PosixListener<N, S> {
    type Stream = PosixStream<N, S>;

    fn accept(&mut self) -> Result<(PosixStream<N, S>, Peer)> {
        let req = Request::Accept {
            listener: self.handle,
        };
        let mut c = self.c.borrow_mut();
        let reply = if self.nonblocking {
            c.nonblocking_call(self.handle, req, &mut [])?
        } else {
            c.call(req, false, &[], &mut [])?
        };
        drop(c);
        match reply.0 {
            Reply::Accepted {
                handle,
                address,
                port,
            } => {
                let peer = Peer { address, port };
                let s = PosixStream {
                    c: self.c.clone(),
                    handle,
                    peer,
                    nonblocking: false,
                };
                Ok((s, peer))
            }
            _ => Err(Errno::Protocol),
        }
    }

    fn set_nonblocking(&mut self, on: bool) -> Result<()> {
        self.nonblocking = on;
        Ok(())
    }

    fn ready(&mut self) -> Result<u32> {
        poll(&self.c, self.handle)
    }
}

impl<N: Notifier, S: Sleep<N>> Net for PosixNet<N, S> {
    type Stream = PosixStream<N, S>;
    type Listener = PosixListener<N, S>;

    fn listen(&mut self, port: u16, backlog: u32) -> Result<PosixListener<N, S>> {
        if port == 0 {
            return Err(Errno::Invalid);
        }
        let req = Request::Listen { port, backlog };
        match self.c.borrow_mut().call(req, false, &[], &mut [])?.0 {
            Reply::Handle(handle) => Ok(PosixListener {
                c: self.c.clone(),
                handle,
                nonblocking: false,
            }),
            _ => Err(Errno::Protocol),
        }
    }

    fn connect(&mut self, peer: Peer) -> Result<PosixStream<N, S>> {
        if peer.port == 0 {
            return Err(Errno::Invalid);
        }
        let req = Request::Connect {
            address: peer.address,
            port: peer.port,
        };
        match self.c.borrow_mut().call(req, false, &[], &mut [])?.0 {
            Reply::Handle(handle) => Ok(PosixStream {
                c: self.c.clone(),
                handle,
                peer,
                nonblocking: false,
            }),
            _ => Err(Errno::Protocol),
        }
    }

    fn now_ms(&self) -> u64 {
        self.c.borrow().sleep.now_ms()
    }

    fn wait(&mut self, deadline_ms: Option<u64>) {
        let mut c = self.c.borrow_mut();
        let since = c.waited;
        // A broken channel shows at the next call.
        let _ = c.wait_event(since, deadline_ms);
        c.waited = c.events;
    }
}

#[cfg(test)]
mod tests;

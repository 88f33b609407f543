//! The socket protocol (`compart_proto::socket`) served on a channel from the posix
//! server: each request decoded, turned into a call on the [`Tcp`] core, and answered
//! at once (a call that would block answers `EAGAIN`; posix waits on `Poll`).
//!
//! As in the server kit: a request is taken only when the peer's reply queue has room,
//! at most [`BUDGET`] per pass; a request that does not decode, or a payload larger than
//! the scratch buffer, is answered `EPROTO`.
//!
//! Readiness: after each pass, every handle posix holds (those it got from `Listen`,
//! `Connect` and `Accept`, until its `Close`) whose readiness changed since posix was
//! last told gets a one-way `Event`, so posix can sleep instead of polling; one that
//! finds posix's queue full is told at a later pass.
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use compart_channel::{ChannelError, Endpoint, Notifier};
use compart_kit::server::BUDGET;
use compart_proto::socket::{self, Errno, Event, Reply, Request};

use core::fmt::Write as _;

use crate::core::{Error, Handle, Ready, SockOpt, Tcp};

/// The socket protocol's side in the tcp server, for one posix channel.
#[derive(Debug)]
pub struct Posix {
    buf: Vec<u8>,
    /// Handles posix holds, and the readiness it was last told (at most one per
    /// socket of the core's bounded table).
    held: BTreeMap<u32, u32>,
    /// Requests answered `EPROTO`.
    pub malformed: u64,
    /// Events sent.
    pub events: u64,
    /// An event found posix's queue full at the last pass: posix does not wake tcp
    /// when it makes room, so the glue should look again soon.
    pub backlogged: bool,
}

impl Posix {
    /// A server of posix channels whose buffers are `buffer_size` bytes.
    pub fn new(buffer_size: usize) -> Posix {
        Posix {
            buf: vec![0; buffer_size],
            held: BTreeMap::new(),
            malformed: 0,
            events: 0,
            backlogged: false,
        }
    }

    /// Serve up to [`BUDGET`] requests of `ep` on `tcp`. Returns whether any was.
    pub fn serve<N: Notifier, M: Notifier>(
        &mut self,
        tcp: &mut Tcp<M>,
        ep: &mut Endpoint<N>,
    ) -> Result<bool, ChannelError> {
        let mut busy = false;
        for _ in 0..BUDGET {
            if !ep.can_reply()? {
                break;
            }
            let Some(req) = ep.poll_request()? else {
                break;
            };
            busy = true;
            let mut data = 0;
            let answer = match Request::decode(req.opcode(), req.is_oneway(), req.inline()) {
                Ok(r) => self.call(tcp, ep, &req, r, &mut data)?,
                Err(_) => {
                    self.malformed += 1;
                    Reply::Error(Errno::Protocol)
                }
            };
            if req.is_oneway() {
                continue;
            }
            match (answer, req.opcode()) {
                (Reply::Handle(h) | Reply::Accepted { handle: h, .. }, _) => {
                    self.held.insert(h, 0);
                }
                (Reply::Done, socket::OP_CLOSE) => {
                    self.held
                        .remove(&req.inline()[0].try_into().unwrap_or(u32::MAX));
                }
                _ => {}
            }
            let (status, inline) = answer.encode();
            ep.reply(req, status, inline, &self.buf[..data])?;
        }
        busy |= self.notify(tcp, ep)?;
        if busy {
            ep.flush()?;
        }
        Ok(busy)
    }

    /// Tell posix about every held handle whose readiness changed.
    fn notify<N: Notifier, M: Notifier>(
        &mut self,
        tcp: &mut Tcp<M>,
        ep: &mut Endpoint<N>,
    ) -> Result<bool, ChannelError> {
        let mut sent = false;
        self.backlogged = false;
        for (&h, told) in self.held.iter_mut() {
            let now = tcp
                .ready(Handle(h))
                .map_or(socket::READY_ERROR | socket::READY_HANGUP, Ready::bits);
            if now == *told {
                continue;
            }
            let (op, w) = Event {
                handle: h,
                ready: now,
            }
            .encode();
            match ep.send_oneway(op, w) {
                Ok(()) => {
                    *told = now;
                    self.events += 1;
                    sent = true;
                }
                Err(ChannelError::Full) => {
                    self.backlogged = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }
}

impl Posix {
    fn call<N: Notifier, M: Notifier>(
        &mut self,
        tcp: &mut Tcp<M>,
        ep: &mut Endpoint<N>,
        req: &compart_channel::Request,
        r: Request,
        data: &mut usize,
    ) -> Result<Reply, ChannelError> {
        let or_errno = |r: Result<Reply, Error>| r.unwrap_or_else(|e| Reply::Error(e.errno()));
        Ok(match r {
            Request::Listen { port, backlog } => or_errno(
                tcp.listen(port, backlog as usize)
                    .map(|h| Reply::Handle(h.0)),
            ),
            Request::Accept { listener } => or_errno(tcp.accept(Handle(listener)).map(|h| {
                let (address, port) = tcp.peer(h).ok().flatten().unwrap_or(([0; 4], 0));
                Reply::Accepted {
                    handle: h.0,
                    address,
                    port,
                }
            })),
            Request::Connect { address, port } => {
                or_errno(tcp.connect(address, port).map(|h| Reply::Handle(h.0)))
            }
            Request::Send { handle } => {
                if req.payload_len() > self.buf.len() {
                    self.malformed += 1;
                    return Ok(Reply::Error(Errno::Protocol));
                }
                let n = ep.read_request_payload(req, &mut self.buf)?;
                or_errno(
                    tcp.send(Handle(handle), &self.buf[..n])
                        .map(|n| Reply::Bytes(n as u32)),
                )
            }
            Request::Recv { handle, max } => {
                let max = (max as usize).min(self.buf.len());
                match tcp.recv(Handle(handle), &mut self.buf[..max]) {
                    Ok(n) => {
                        *data = n;
                        Reply::Bytes(n as u32)
                    }
                    Err(e) => Reply::Error(e.errno()),
                }
            }
            Request::Shutdown { handle } => {
                or_errno(tcp.shutdown(Handle(handle)).map(|()| Reply::Done))
            }
            Request::Close { handle } => or_errno(tcp.close(Handle(handle)).map(|()| Reply::Done)),
            Request::Poll { handle } => {
                or_errno(tcp.ready(Handle(handle)).map(|r| Reply::Ready(r.bits())))
            }
            Request::SetOption {
                handle,
                option,
                value,
            } => {
                let opt = match option {
                    socket::OPT_NODELAY => SockOpt::NoDelay(value != 0),
                    socket::OPT_RCVBUF => SockOpt::RecvBuffer(value as usize),
                    _ => SockOpt::SendBuffer(value as usize),
                };
                or_errno(tcp.set_option(Handle(handle), opt).map(|()| Reply::Done))
            }
            Request::Stats => {
                *data = self.stats(tcp);
                Reply::Bytes(*data as u32)
            }
        })
    }

    /// The counters as text in the scratch buffer; returns its length.
    fn stats<M: Notifier>(&mut self, tcp: &mut Tcp<M>) -> usize {
        let t = tcp.totals();
        let sockets = tcp.sockets_in_use();
        let connections = tcp.connections();
        let d = tcp.device().counters();
        let mut w = Cursor {
            buf: &mut self.buf,
            len: 0,
        };
        // A text cut at the buffer's end is still a text.
        let _ = write!(
            w,
            "tcp: sockets={sockets} connections={connections} accepted={} connected={} bytes_in={} bytes_out={} rx_packets={} tx_packets={}",
            t.accepted, t.connected, t.bytes_in, t.bytes_out, d.rx_packets, d.tx_packets
        );
        w.len
    }
}

/// A `fmt::Write` into a byte buffer, cutting what does not fit.
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl core::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

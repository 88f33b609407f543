//! The socket protocol (`compart_proto::socket`) served on a channel from the posix
//! server: each request decoded, turned into a call on the [`Tcp`] core, and answered
//! at once (a call that would block answers `EAGAIN`; posix waits on `Poll`).
//!
//! As in the server kit: a request is taken only when the peer's reply queue has room,
//! at most [`BUDGET`] per pass; a request that does not decode, or a payload larger than
//! the scratch buffer, is answered `EPROTO`.
use alloc::vec;
use alloc::vec::Vec;

use compart_channel::{ChannelError, Endpoint, Notifier};
use compart_kit::server::BUDGET;
use compart_proto::socket::{self, Errno, Reply, Request};

use crate::core::{Error, Handle, Tcp};

/// The errno a core error stands for.
pub fn errno(e: Error) -> Errno {
    match e {
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

/// The socket protocol's side in the tcp server, for one posix channel.
#[derive(Debug)]
pub struct Posix {
    buf: Vec<u8>,
    /// Requests answered `EPROTO`.
    pub malformed: u64,
}

impl Posix {
    /// A server of posix channels whose buffers are `buffer_size` bytes.
    pub fn new(buffer_size: usize) -> Posix {
        Posix {
            buf: vec![0; buffer_size],
            malformed: 0,
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
            let (status, inline) = answer.encode();
            ep.reply(req, status, inline, &self.buf[..data])?;
        }
        if busy {
            ep.flush()?;
        }
        Ok(busy)
    }

    fn call<N: Notifier, M: Notifier>(
        &mut self,
        tcp: &mut Tcp<M>,
        ep: &mut Endpoint<N>,
        req: &compart_channel::Request,
        r: Request,
        data: &mut usize,
    ) -> Result<Reply, ChannelError> {
        let or_errno = |r: Result<Reply, Error>| r.unwrap_or_else(|e| Reply::Error(errno(e)));
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
                    Err(e) => Reply::Error(errno(e)),
                }
            }
            Request::Shutdown { handle } => {
                or_errno(tcp.shutdown(Handle(handle)).map(|()| Reply::Done))
            }
            Request::Close { handle } => or_errno(tcp.close(Handle(handle)).map(|()| Reply::Done)),
            Request::Poll { handle } => or_errno(tcp.ready(Handle(handle)).map(|r| {
                let bit = |b: bool, v: u32| if b { v } else { 0 };
                Reply::Ready(
                    bit(r.readable, socket::READY_READABLE)
                        | bit(r.writable, socket::READY_WRITABLE)
                        | bit(r.hangup, socket::READY_HANGUP)
                        | bit(r.error, socket::READY_ERROR),
                )
            })),
        })
    }
}

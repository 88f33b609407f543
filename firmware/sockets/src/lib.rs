//! The socket API of compart applications: [`Net`] opens [`Listener`]s and [`Stream`]s,
//! shaped like `std::net` (blocking by default, non-blocking on request), with the
//! errno-style [`Errno`] of the socket protocol as the error.
//!
//! An application's logic is generic over [`Net`], so one source runs
//! - in an application guest, over the posix server (`compart_firmware::net`),
//! - in the `mono` image, over the stack linked into the same guest,
//! - on the host, over `std::net` ([`StdNet`], feature `std`), in tests against stock
//!   peers.
//!
//! Readiness: a non-blocking call that cannot progress fails with [`Errno::Again`];
//! [`Stream::ready`] / [`Listener::ready`] tell what would not block now (the
//! `READY_*` bits of `compart_proto::socket`), and [`Net::wait`] sleeps until some
//! socket of this application may have changed, or a deadline.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

pub use compart_proto::socket::{
    Errno, READY_ALL, READY_ERROR, READY_HANGUP, READY_READABLE, READY_WRITABLE,
};

#[cfg(feature = "std")]
mod std_net;
#[cfg(feature = "std")]
pub use std_net::{StdListener, StdNet, StdStream};

/// The result of a socket call.
pub type Result<T> = core::result::Result<T, Errno>;

/// An IPv4 endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The address.
    pub address: [u8; 4],
    /// The port.
    pub port: u16,
}

impl core::fmt::Display for Peer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d] = self.address;
        write!(f, "{a}.{b}.{c}.{d}:{}", self.port)
    }
}

/// Options of a connection ([`Stream::set_option`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockOpt {
    /// Send segments at once, without waiting to fill them (`TCP_NODELAY`).
    NoDelay(bool),
    /// The receive buffer's size in bytes (`SO_RCVBUF`; the stack may round it).
    RecvBuffer(u32),
    /// The send buffer's size in bytes (`SO_SNDBUF`; the stack may round it).
    SendBuffer(u32),
}

/// A TCP connection. Dropping it closes it (in the background; queued data is still
/// sent).
pub trait Stream {
    /// Up to `buf.len()` received bytes; `Ok(0)` at the end of the stream (the peer's
    /// FIN). Blocks until there is one byte, unless non-blocking (then [`Errno::Again`]).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize>;

    /// Queue up to `buf.len()` bytes for sending; how many were taken (at least one).
    /// Blocks until there is room for one, unless non-blocking (then [`Errno::Again`]).
    fn write(&mut self, buf: &[u8]) -> Result<usize>;

    /// Send FIN after the queued data; receiving goes on.
    fn shutdown(&mut self) -> Result<()>;

    /// Non-blocking (`true`) or blocking (`false`, the default) calls from now on.
    fn set_nonblocking(&mut self, on: bool) -> Result<()>;

    /// Set an option.
    fn set_option(&mut self, opt: SockOpt) -> Result<()>;

    /// The `READY_*` bits now: readable (data or end of stream), writable, hangup,
    /// error. Never blocks.
    fn ready(&mut self) -> Result<u32>;

    /// The remote endpoint.
    fn peer(&self) -> Peer;

    /// Write all of `buf`, blocking (waiting through [`Errno::Again`] if non-blocking).
    fn write_all(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            match self.write(buf) {
                Ok(0) => return Err(Errno::Pipe),
                Ok(n) => buf = &buf[n..],
                Err(Errno::Again) => self.wait_ready(READY_WRITABLE)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Fill all of `buf`, blocking; [`Errno::Pipe`] if the stream ends first.
    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            match self.read(buf) {
                Ok(0) => return Err(Errno::Pipe),
                Ok(n) => buf = &mut buf[n..],
                Err(Errno::Again) => self.wait_ready(READY_READABLE)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Block until one of `bits` (or hangup, or error) is ready.
    fn wait_ready(&mut self, bits: u32) -> Result<()>;
}

/// A listening socket. Dropping it closes it.
pub trait Listener {
    /// The connections it yields.
    type Stream: Stream;

    /// A completed connection and its peer. Blocks until there is one, unless
    /// non-blocking (then [`Errno::Again`]). The connection is blocking.
    fn accept(&mut self) -> Result<(Self::Stream, Peer)>;

    /// Non-blocking (`true`) or blocking (`false`, the default) `accept` from now on.
    fn set_nonblocking(&mut self, on: bool) -> Result<()>;

    /// [`READY_READABLE`] when `accept` would not block. Never blocks.
    fn ready(&mut self) -> Result<u32>;
}

/// An application's access to the network.
pub trait Net {
    /// Its connections.
    type Stream: Stream;
    /// Its listeners.
    type Listener: Listener<Stream = Self::Stream>;

    /// Listen on `port` (of every local address) with a backlog of `backlog`.
    fn listen(&mut self, port: u16, backlog: u32) -> Result<Self::Listener>;

    /// Open a connection to `peer`, blocking until it is established or refused.
    fn connect(&mut self, peer: Peer) -> Result<Self::Stream>;

    /// Milliseconds of a monotonic clock.
    fn now_ms(&self) -> u64;

    /// Sleep until some socket of this application may have changed readiness, or
    /// `deadline_ms` (of [`Net::now_ms`]) has passed. May return early.
    fn wait(&mut self, deadline_ms: Option<u64>);
}

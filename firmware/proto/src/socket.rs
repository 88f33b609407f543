//! The socket protocol between the `posix` server and `tcp`, and between applications
//! and posix: one socket call per request, answered with its result or an errno.
//!
//! ```text
//!  request   opcode  inline[0]        inline[1]                     inline[2]   payload
//!  Listen    1       0                port << 32                    backlog     –
//!  Accept    2       listener         0                             0           –
//!  Connect   3       0                address (network order) | port << 32   0  –
//!  Send      4       handle           0                             0           the data
//!  Recv      5       handle           0                             max (> 0)   –
//!  Shutdown  6       handle           0                             0           –
//!  Close     7       handle           0                             0           –
//!  Poll      8       handle           0                             0           –
//!  SetOption 10      handle           option (OPT_*)                value       –
//!  Stats     11      0                0                             0           –
//!
//!  inline[3] of any request: flags, FLAG_NONBLOCK (bit 0) and, on Send, FLAG_ALL
//!  (bit 1); only an application sets them (posix → tcp calls never block, so tcp
//!  refuses any).
//!
//!  reply (the request's opcode decides which)   status  inline[0]  inline[1]       inline[2]
//!  Handle      Listen, Connect                  0       handle     0               0
//!  Accepted    Accept                           0       handle     addr | port<<32 0
//!  Bytes       Send (taken), Recv (in payload;  0       0          0               count
//!              0 = end of stream)
//!  Done        Shutdown, Close, SetOption       0       0          0               0
//!  Bytes       Stats (text in payload)          0       0          0               count
//!  Ready       Poll                             0       0          0               READY_* bits
//!  Error       any                              errno   0          0               0
//!
//!  one-way   opcode  inline[0]   inline[2]    dir
//!  Event     9       handle      READY_* bits tcp → posix: a handle's readiness changed
//! ```
//!
//! Handles are the answering server's (`u32`: tcp's towards posix, posix's per-application
//! ones towards an application), addresses IPv4. A `Recv`'s data comes back in
//! the request's own pool buffer (the channel's reply-into-requester-buffer design), at
//! most `max` and at most the buffer. Every inline word not listed is zero, and handles
//! and counts fit in 32 bits; a decoder refuses anything else.
use crate::{DecodeError, Inline, INLINE_WORDS};

/// Opcode of [`Request::Listen`].
pub const OP_LISTEN: u16 = 1;
/// Opcode of [`Request::Accept`].
pub const OP_ACCEPT: u16 = 2;
/// Opcode of [`Request::Connect`].
pub const OP_CONNECT: u16 = 3;
/// Opcode of [`Request::Send`].
pub const OP_SEND: u16 = 4;
/// Opcode of [`Request::Recv`].
pub const OP_RECV: u16 = 5;
/// Opcode of [`Request::Shutdown`].
pub const OP_SHUTDOWN: u16 = 6;
/// Opcode of [`Request::Close`].
pub const OP_CLOSE: u16 = 7;
/// Opcode of [`Request::Poll`].
pub const OP_POLL: u16 = 8;
/// Opcode of the one-way [`Event`].
pub const OP_EVENT: u16 = 9;
/// Opcode of [`Request::SetOption`].
pub const OP_SET_OPTION: u16 = 10;
/// Opcode of [`Request::Stats`].
pub const OP_STATS: u16 = 11;

/// Request flag (inline word 3): answer `EAGAIN` at once instead of waiting (an
/// application's non-blocking call; posix waits on tcp's events otherwise).
pub const FLAG_NONBLOCK: u64 = 1;
/// Request flag (inline word 3) of a `Send`: take all of the payload, waiting for room
/// as long as it takes, before answering (an application's write-behind; posix keeps
/// the sends of one connection in order).
pub const FLAG_ALL: u64 = 2;
/// Every request flag.
pub const FLAGS: u64 = FLAG_NONBLOCK | FLAG_ALL;

/// [`Request::SetOption`]: send segments at once (`TCP_NODELAY`, value 0 or 1).
pub const OPT_NODELAY: u32 = 1;
/// [`Request::SetOption`]: the receive buffer's size in bytes (`SO_RCVBUF`).
pub const OPT_RCVBUF: u32 = 2;
/// [`Request::SetOption`]: the send buffer's size in bytes (`SO_SNDBUF`).
pub const OPT_SNDBUF: u32 = 3;

/// [`Reply::Ready`]: `Recv` (or `Accept`) would not block.
pub const READY_READABLE: u32 = 1;
/// [`Reply::Ready`]: `Send` would not block.
pub const READY_WRITABLE: u32 = 2;
/// [`Reply::Ready`]: the peer closed its side, or the connection is gone.
pub const READY_HANGUP: u32 = 4;
/// [`Reply::Ready`]: the connection was refused or reset.
pub const READY_ERROR: u32 = 8;
/// Every `READY_*` bit.
pub const READY_ALL: u32 = 15;

/// A socket call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Listen on `port` with up to `backlog` handshakes completing at once.
    Listen {
        /// The local port (not 0).
        port: u16,
        /// Connections completing at once (the server may take fewer).
        backlog: u32,
    },
    /// A completed connection of `listener`.
    Accept {
        /// The listener's handle.
        listener: u32,
    },
    /// Open a connection to `address:port`.
    Connect {
        /// The peer's IPv4 address.
        address: [u8; 4],
        /// The peer's port (not 0).
        port: u16,
    },
    /// Queue the payload for sending on `handle`.
    Send {
        /// The connection.
        handle: u32,
    },
    /// Up to `max` received bytes of `handle`, in the reply's payload.
    Recv {
        /// The connection.
        handle: u32,
        /// Bytes wanted at most (not 0).
        max: u32,
    },
    /// Send FIN after the queued data; receiving goes on.
    Shutdown {
        /// The connection.
        handle: u32,
    },
    /// Give the handle up (the connection closes in the background).
    Close {
        /// The listener or connection.
        handle: u32,
    },
    /// The handle's readiness.
    Poll {
        /// The listener or connection.
        handle: u32,
    },
    /// Set option `option` (an `OPT_*`) of a connection to `value`.
    SetOption {
        /// The connection.
        handle: u32,
        /// Which option (`OPT_*`).
        option: u32,
        /// Its value (0 or 1 for [`OPT_NODELAY`], bytes for the buffers).
        value: u32,
    },
    /// The server's counters, as a short text in the reply's payload.
    Stats,
}

fn low32(w: u64) -> Result<u32, DecodeError> {
    u32::try_from(w).map_err(|_| DecodeError::ReservedNotZero)
}

fn zero(words: &[u64]) -> Result<(), DecodeError> {
    if words.iter().any(|&w| w != 0) {
        Err(DecodeError::ReservedNotZero)
    } else {
        Ok(())
    }
}

fn endpoint(w: u64) -> ([u8; 4], u16) {
    ((w as u32).to_be_bytes(), (w >> 32) as u16)
}

fn endpoint_word(address: [u8; 4], port: u16) -> u64 {
    u64::from(u32::from_be_bytes(address)) | u64::from(port) << 32
}

impl Request {
    /// Opcode and inline words.
    pub fn encode(&self) -> (u16, Inline) {
        let mut w = [0; INLINE_WORDS];
        let op = match *self {
            Request::Listen { port, backlog } => {
                w[1] = u64::from(port) << 32;
                w[2] = u64::from(backlog);
                OP_LISTEN
            }
            Request::Accept { listener } => {
                w[0] = u64::from(listener);
                OP_ACCEPT
            }
            Request::Connect { address, port } => {
                w[1] = endpoint_word(address, port);
                OP_CONNECT
            }
            Request::Send { handle } => {
                w[0] = u64::from(handle);
                OP_SEND
            }
            Request::Recv { handle, max } => {
                w[0] = u64::from(handle);
                w[2] = u64::from(max);
                OP_RECV
            }
            Request::Shutdown { handle } => {
                w[0] = u64::from(handle);
                OP_SHUTDOWN
            }
            Request::Close { handle } => {
                w[0] = u64::from(handle);
                OP_CLOSE
            }
            Request::Poll { handle } => {
                w[0] = u64::from(handle);
                OP_POLL
            }
            Request::SetOption {
                handle,
                option,
                value,
            } => {
                w[0] = u64::from(handle);
                w[1] = u64::from(option);
                w[2] = u64::from(value);
                OP_SET_OPTION
            }
            Request::Stats => OP_STATS,
        };
        (op, w)
    }

    /// Opcode and inline words, with `flags` (`FLAG_*`) in inline word 3.
    pub fn encode_flags(&self, flags: u64) -> (u16, Inline) {
        let (op, mut w) = self.encode();
        w[3] = flags;
        (op, w)
    }

    /// The request that `opcode`, `oneway` and `inline` encode, with no flags. Every
    /// socket call expects a reply, so a one-way message is refused.
    pub fn decode(opcode: u16, oneway: bool, w: &Inline) -> Result<Request, DecodeError> {
        match Request::decode_flags(opcode, oneway, w)? {
            (r, 0) => Ok(r),
            _ => Err(DecodeError::ReservedNotZero),
        }
    }

    /// The request and its `FLAG_*` flags (inline word 3) that `opcode`, `oneway` and
    /// `inline` encode.
    pub fn decode_flags(
        opcode: u16,
        oneway: bool,
        w: &Inline,
    ) -> Result<(Request, u64), DecodeError> {
        zero(&w[4..])?;
        let flags = w[3];
        if flags & !FLAGS != 0 || (flags & FLAG_ALL != 0 && opcode != OP_SEND) {
            return Err(DecodeError::ReservedNotZero);
        }
        let req = match opcode {
            OP_LISTEN => {
                zero(&w[..1])?;
                let (addr, port) = endpoint(w[1]);
                if addr != [0; 4] || w[1] >> 48 != 0 || port == 0 {
                    return Err(DecodeError::ReservedNotZero);
                }
                Request::Listen {
                    port,
                    backlog: low32(w[2])?,
                }
            }
            OP_CONNECT => {
                zero(&[w[0], w[2]])?;
                let (address, port) = endpoint(w[1]);
                if w[1] >> 48 != 0 || port == 0 {
                    return Err(DecodeError::ReservedNotZero);
                }
                Request::Connect { address, port }
            }
            OP_RECV => {
                zero(&w[1..2])?;
                let max = low32(w[2])?;
                if max == 0 {
                    return Err(DecodeError::ReservedNotZero);
                }
                Request::Recv {
                    handle: low32(w[0])?,
                    max,
                }
            }
            OP_ACCEPT | OP_SEND | OP_SHUTDOWN | OP_CLOSE | OP_POLL => {
                zero(&w[1..3])?;
                let handle = low32(w[0])?;
                match opcode {
                    OP_ACCEPT => Request::Accept { listener: handle },
                    OP_SEND => Request::Send { handle },
                    OP_SHUTDOWN => Request::Shutdown { handle },
                    OP_CLOSE => Request::Close { handle },
                    _ => Request::Poll { handle },
                }
            }
            OP_SET_OPTION => {
                let option = low32(w[1])?;
                let value = low32(w[2])?;
                let valid = match option {
                    OPT_NODELAY => value <= 1,
                    OPT_RCVBUF | OPT_SNDBUF => true,
                    _ => false,
                };
                if !valid {
                    return Err(DecodeError::ReservedNotZero);
                }
                Request::SetOption {
                    handle: low32(w[0])?,
                    option,
                    value,
                }
            }
            OP_STATS => {
                zero(&w[..3])?;
                Request::Stats
            }
            op => return Err(DecodeError::UnknownOpcode(op)),
        };
        if oneway {
            return Err(DecodeError::WrongKind);
        }
        Ok((req, flags))
    }
}

/// A handle's readiness changed (one-way, tcp → posix): what posix's `poll` waits on,
/// so that it need not ask with `Poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The listener or connection.
    pub handle: u32,
    /// Its `READY_*` bits now.
    pub ready: u32,
}

impl Event {
    /// Opcode and inline words.
    pub fn encode(&self) -> (u16, Inline) {
        let mut w = [0; INLINE_WORDS];
        w[0] = u64::from(self.handle);
        w[2] = u64::from(self.ready);
        (OP_EVENT, w)
    }

    /// The event that `opcode`, `oneway` and `inline` encode (it must be one-way).
    pub fn decode(opcode: u16, oneway: bool, w: &Inline) -> Result<Event, DecodeError> {
        if opcode != OP_EVENT {
            return Err(DecodeError::UnknownOpcode(opcode));
        }
        zero(&w[1..2])?;
        zero(&w[3..])?;
        let ready = low32(w[2])?;
        if ready & !READY_ALL != 0 {
            return Err(DecodeError::ReservedNotZero);
        }
        if !oneway {
            return Err(DecodeError::WrongKind);
        }
        Ok(Event {
            handle: low32(w[0])?,
            ready,
        })
    }
}

/// Why a socket call failed: the Linux errno values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Errno {
    /// Not now: nothing to accept or receive, no room to send (`EAGAIN`).
    Again = 11,
    /// No such handle, or the wrong kind (`EBADF`).
    BadHandle = 9,
    /// The server's socket table is full (`ENOBUFS`).
    NoBuffers = 105,
    /// The port is taken (`EADDRINUSE`).
    AddrInUse = 98,
    /// An argument the server refuses (`EINVAL`).
    Invalid = 22,
    /// The peer refused the connection (`ECONNREFUSED`).
    ConnRefused = 111,
    /// The peer reset the connection (`ECONNRESET`).
    ConnReset = 104,
    /// Not connected (`ENOTCONN`).
    NotConnected = 107,
    /// Sending after shutdown or the peer's close (`EPIPE`).
    Pipe = 32,
    /// The request did not decode, or its payload does not fit (`EPROTO`).
    Protocol = 71,
}

impl Errno {
    /// Every errno of the protocol.
    pub const ALL: [Errno; 10] = [
        Errno::Again,
        Errno::BadHandle,
        Errno::NoBuffers,
        Errno::AddrInUse,
        Errno::Invalid,
        Errno::ConnRefused,
        Errno::ConnReset,
        Errno::NotConnected,
        Errno::Pipe,
        Errno::Protocol,
    ];
}

/// The answer to a socket call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The new handle (`Listen`, `Connect`).
    Handle(u32),
    /// A connection taken from the listener, and its peer (`Accept`).
    Accepted {
        /// The connection's handle.
        handle: u32,
        /// The peer's address.
        address: [u8; 4],
        /// The peer's port.
        port: u16,
    },
    /// Bytes taken (`Send`) or in the payload (`Recv`; 0: end of stream; `Stats`: the
    /// text's length).
    Bytes(u32),
    /// Done (`Shutdown`, `Close`, `SetOption`).
    Done,
    /// `READY_*` bits (`Poll`).
    Ready(u32),
    /// The call failed.
    Error(Errno),
}

impl Reply {
    /// Status and inline words (the opcode is the request's).
    pub fn encode(&self) -> (u32, Inline) {
        let mut w = [0; INLINE_WORDS];
        match *self {
            Reply::Handle(h) => w[0] = u64::from(h),
            Reply::Accepted {
                handle,
                address,
                port,
            } => {
                w[0] = u64::from(handle);
                w[1] = endpoint_word(address, port);
            }
            Reply::Bytes(n) => w[2] = u64::from(n),
            Reply::Done => {}
            Reply::Ready(bits) => w[2] = u64::from(bits),
            Reply::Error(e) => return (e as u32, w),
        }
        (0, w)
    }

    /// The reply to a request of `opcode` that `status` and `inline` encode.
    pub fn decode(opcode: u16, status: u32, w: &Inline) -> Result<Reply, DecodeError> {
        zero(&w[3..])?;
        if status != 0 {
            zero(&w[..3])?;
            return Errno::ALL
                .into_iter()
                .find(|e| *e as u32 == status)
                .map(Reply::Error)
                .ok_or(DecodeError::UnknownStatus(status));
        }
        match opcode {
            OP_LISTEN | OP_CONNECT => {
                zero(&w[1..3])?;
                Ok(Reply::Handle(low32(w[0])?))
            }
            OP_ACCEPT => {
                zero(&w[2..3])?;
                if w[1] >> 48 != 0 {
                    return Err(DecodeError::ReservedNotZero);
                }
                let (address, port) = endpoint(w[1]);
                Ok(Reply::Accepted {
                    handle: low32(w[0])?,
                    address,
                    port,
                })
            }
            OP_SEND | OP_RECV | OP_STATS => {
                zero(&w[..2])?;
                Ok(Reply::Bytes(low32(w[2])?))
            }
            OP_SHUTDOWN | OP_CLOSE | OP_SET_OPTION => {
                zero(&w[..3])?;
                Ok(Reply::Done)
            }
            OP_POLL => {
                zero(&w[..2])?;
                let bits = low32(w[2])?;
                if bits & !READY_ALL != 0 {
                    return Err(DecodeError::ReservedNotZero);
                }
                Ok(Reply::Ready(bits))
            }
            op => Err(DecodeError::UnknownOpcode(op)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use proptest::prelude::*;
    use std::vec;

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (1u16.., any::<u32>()).prop_map(|(port, backlog)| Request::Listen { port, backlog }),
            any::<u32>().prop_map(|listener| Request::Accept { listener }),
            (any::<[u8; 4]>(), 1u16..)
                .prop_map(|(address, port)| Request::Connect { address, port }),
            any::<u32>().prop_map(|handle| Request::Send { handle }),
            (any::<u32>(), 1u32..).prop_map(|(handle, max)| Request::Recv { handle, max }),
            any::<u32>().prop_map(|handle| Request::Shutdown { handle }),
            any::<u32>().prop_map(|handle| Request::Close { handle }),
            any::<u32>().prop_map(|handle| Request::Poll { handle }),
            (any::<u32>(), 0u32..=1).prop_map(|(handle, value)| Request::SetOption {
                handle,
                option: OPT_NODELAY,
                value
            }),
            (any::<u32>(), 2u32..=3, any::<u32>()).prop_map(|(handle, option, value)| {
                Request::SetOption {
                    handle,
                    option,
                    value,
                }
            }),
            Just(Request::Stats),
        ]
    }

    /// A reply and the opcode of a request it answers.
    fn reply() -> impl Strategy<Value = (u16, Reply)> {
        prop_oneof![
            (prop_oneof![Just(OP_LISTEN), Just(OP_CONNECT)], any::<u32>())
                .prop_map(|(op, h)| (op, Reply::Handle(h))),
            (any::<u32>(), any::<[u8; 4]>(), any::<u16>()).prop_map(|(handle, address, port)| (
                OP_ACCEPT,
                Reply::Accepted {
                    handle,
                    address,
                    port
                }
            )),
            (
                prop_oneof![Just(OP_SEND), Just(OP_RECV), Just(OP_STATS)],
                any::<u32>()
            )
                .prop_map(|(op, n)| (op, Reply::Bytes(n))),
            prop_oneof![Just(OP_SHUTDOWN), Just(OP_CLOSE), Just(OP_SET_OPTION)]
                .prop_map(|op| (op, Reply::Done)),
            (0..=READY_ALL).prop_map(|b| (OP_POLL, Reply::Ready(b))),
            (1u16..=11, proptest::sample::select(Errno::ALL.to_vec()))
                .prop_map(|(op, e)| (op, Reply::Error(e))),
        ]
    }

    fn words() -> impl Strategy<Value = Inline> {
        prop_oneof![
            any::<[u64; INLINE_WORDS]>(),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c)| [a, b, c, 0, 0]),
            (any::<u32>(), any::<u64>(), 0u64..20).prop_map(|(a, b, c)| [u64::from(a), b, c, 0, 0]),
            (0u64..3, 0u64..3, 0u64..3).prop_map(|(a, b, c)| [a, b, c, 0, 0]),
            (0u64..3, 0u64..4, 0u64..3, 0u64..3).prop_map(|(a, b, c, d)| [a, b, c, d, 0]),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in request(), flags in 0..=FLAGS) {
            let (op, w) = r.encode();
            prop_assert_eq!(Request::decode(op, false, &w), Ok(r));
            prop_assert_eq!(Request::decode(op, true, &w), Err(DecodeError::WrongKind));
            let flags = if matches!(r, Request::Send { .. }) { flags } else { flags & FLAG_NONBLOCK };
            let (op, w) = r.encode_flags(flags);
            prop_assert_eq!(Request::decode_flags(op, false, &w), Ok((r, flags)));
        }

        #[test]
        fn decoded_requests_encode_to_the_same_words(op in 0u16..13, w in words()) {
            if let Ok((r, flags)) = Request::decode_flags(op, false, &w) {
                prop_assert_eq!(r.encode_flags(flags), (op, w));
            }
        }

        #[test]
        fn events_round_trip(handle in any::<u32>(), ready in 0..=READY_ALL) {
            let e = Event { handle, ready };
            let (op, w) = e.encode();
            prop_assert_eq!(Event::decode(op, true, &w), Ok(e));
            prop_assert_eq!(Event::decode(op, false, &w), Err(DecodeError::WrongKind));
            prop_assert_eq!(Request::decode(op, false, &w), Err(DecodeError::UnknownOpcode(OP_EVENT)));
        }

        #[test]
        fn decoded_events_encode_to_the_same_words(op in 8u16..11, w in words()) {
            if let Ok(e) = Event::decode(op, true, &w) {
                prop_assert_eq!(e.encode(), (op, w));
            }
        }

        #[test]
        fn replies_round_trip((op, r) in reply()) {
            let (s, w) = r.encode();
            prop_assert_eq!(Reply::decode(op, s, &w), Ok(r));
        }

        #[test]
        fn decoded_replies_encode_to_the_same_words(
            op in 0u16..13,
            status in prop_oneof![0u32..120, any::<u32>()],
            w in words(),
        ) {
            if let Ok(r) = Reply::decode(op, status, &w) {
                prop_assert_eq!(r.encode(), (status, w));
            }
        }
    }

    #[test]
    fn connect_packs_the_address_in_network_order_and_refuses_port_zero() {
        let (op, w) = Request::Connect {
            address: [198, 18, 0, 1],
            port: 7,
        }
        .encode();
        assert_eq!((op, w[1]), (OP_CONNECT, 0xc612_0001 | 7 << 32));
        let mut bad = w;
        bad[1] = 0xc612_0001;
        assert_eq!(
            Request::decode(op, false, &bad),
            Err(DecodeError::ReservedNotZero)
        );
        assert_eq!(
            Request::decode(OP_RECV, false, &[1, 0, 0, 0, 0]),
            Err(DecodeError::ReservedNotZero)
        );
        assert_eq!(
            Request::decode(OP_SEND, false, &[1 << 32, 0, 0, 0, 0]),
            Err(DecodeError::ReservedNotZero)
        );
        assert_eq!(
            Reply::decode(OP_SEND, 12, &[0; 5]),
            Err(DecodeError::UnknownStatus(12))
        );
        assert_eq!(
            Reply::decode(OP_POLL, 0, &[0, 0, 16, 0, 0]),
            Err(DecodeError::ReservedNotZero)
        );
    }

    #[test]
    fn flags_other_than_nonblock_and_unknown_options_are_refused() {
        let (op, w) = Request::Recv { handle: 1, max: 9 }.encode_flags(FLAG_NONBLOCK);
        assert_eq!(w[3], 1);
        assert_eq!(
            Request::decode(op, false, &w),
            Err(DecodeError::ReservedNotZero)
        );
        let mut bad = w;
        bad[3] = FLAG_ALL;
        assert_eq!(
            Request::decode_flags(op, false, &bad),
            Err(DecodeError::ReservedNotZero),
            "FLAG_ALL is a Send's only"
        );
        bad[3] = 4;
        assert_eq!(
            Request::decode_flags(op, false, &bad),
            Err(DecodeError::ReservedNotZero)
        );
        for (option, value) in [(0, 0), (4, 0), (OPT_NODELAY, 2)] {
            let (op, w) = Request::SetOption {
                handle: 1,
                option,
                value,
            }
            .encode();
            assert_eq!(
                Request::decode(op, false, &w),
                Err(DecodeError::ReservedNotZero)
            );
        }
    }
}

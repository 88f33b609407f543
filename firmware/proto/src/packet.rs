//! The packet protocol between the `ip` server and the layer above it (`pf`, or `tcp`
//! when there is no filter): one IPv4 packet per message, in the requester's pool
//! buffer, starting with its IP header (no Ethernet header), with its offload metadata
//! in the inline words. As on the frame protocol below ([`crate::frame`]), a packet may
//! be a GSO super-packet of up to 64 KiB.
//!
//! ```text
//!  message            dir        opcode  inline[0]             inline[1]      payload
//!  Request::Deliver   ip → up    1       PacketMeta word 0     PacketMeta w1  IP packet
//!  Request::Send      up → ip    2       PacketMeta word 0     PacketMeta w1  IP packet
//!  Request::Config    up → ip    3       0                     0              –
//!
//!  reply               status  inline[0]                          inline[1]
//!  Reply::Done         0       0                                  0
//!  Reply::Dropped      reason  0                                  0
//!  Reply::Unreachable  16      code (2 protocol, 3 port)          0
//!  Reply::Config       17      address (network order) | prefix<<32   mtu | offloads<<32
//! ```
//!
//! [`PacketMeta`] packs like the frame protocol's `FrameMeta`, but its `csum_start` and
//! `hdr_len` count from the start of the IP header: ip adds or removes the 14 bytes of
//! Ethernet header between the two protocols. Every other inline word is zero.
//!
//! - `Deliver`: a received packet for a protocol the upper layer serves (TCP, UDP, and
//!   ICMP other than echo requests, which ip answers itself). The upper layer answers
//!   `Done`, `Dropped(reason)`, or `Unreachable(Port)` for a packet to a closed port, upon
//!   which ip sends the ICMP error to the packet's source (quoting the header it kept).
//! - `Send`: a packet to transmit. Its source must be the stack's address; ip routes
//!   it, fills in the header checksum, resolves the next hop and fragments it to the
//!   MTU if it may; `Done` means ip took it (the buffer is free again), `Dropped` why not.
//! - `Config`: the interface's configuration, so that it exists once, in ip. Answered
//!   `Config`, or `Dropped(LinkDown)` while the driver has not reported the link.
//!
//! Replies are the credit, as on every data channel.

use crate::frame::{FrameMeta, Gso};
use crate::{DecodeError, Inline, INLINE_WORDS};

/// Opcode of [`Request::Deliver`].
pub const OP_DELIVER: u16 = 1;
/// Opcode of [`Request::Send`].
pub const OP_SEND: u16 = 2;
/// Opcode of [`Request::Config`].
pub const OP_CONFIG: u16 = 3;

/// Status of [`Reply::Unreachable`].
pub const STATUS_UNREACHABLE: u32 = 16;
/// Status of [`Reply::Config`].
pub const STATUS_CONFIG: u32 = 17;

pub use crate::frame::{offload, FLAG_DATA_VALID, FLAG_NEEDS_CSUM};

/// A packet's offload metadata, its offsets counted from the start of the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// `FLAG_*` ([`FLAG_NEEDS_CSUM`], [`FLAG_DATA_VALID`]).
    pub flags: u8,
    /// The segmentation type.
    pub gso: Gso,
    /// ECN marking of a GSO packet's segments.
    pub ecn: bool,
    /// Bytes of IP and transport headers replicated in each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (with [`FLAG_NEEDS_CSUM`]), from the IP header.
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl PacketMeta {
    /// An ordinary packet with complete checksums.
    pub const PLAIN: PacketMeta = PacketMeta {
        flags: 0,
        gso: Gso::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    fn as_frame_meta(&self) -> FrameMeta {
        FrameMeta {
            flags: self.flags,
            gso: self.gso,
            ecn: self.ecn,
            hdr_len: self.hdr_len,
            gso_size: self.gso_size,
            csum_start: self.csum_start,
            csum_offset: self.csum_offset,
        }
    }

    fn of_frame_meta(m: FrameMeta) -> PacketMeta {
        PacketMeta {
            flags: m.flags,
            gso: m.gso,
            ecn: m.ecn,
            hdr_len: m.hdr_len,
            gso_size: m.gso_size,
            csum_start: m.csum_start,
            csum_offset: m.csum_offset,
        }
    }
}

/// A message that expects a [`Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A received packet in the payload (ip → upper layer).
    Deliver(PacketMeta),
    /// A packet to transmit in the payload (upper layer → ip).
    Send(PacketMeta),
    /// The interface's configuration, please (upper layer → ip).
    Config,
}

impl Request {
    /// Opcode and inline words.
    pub fn encode(&self) -> (u16, Inline) {
        let mut w = [0; INLINE_WORDS];
        match *self {
            Request::Deliver(meta) => {
                (w[0], w[1]) = meta.as_frame_meta().words();
                (OP_DELIVER, w)
            }
            Request::Send(meta) => {
                (w[0], w[1]) = meta.as_frame_meta().words();
                (OP_SEND, w)
            }
            Request::Config => (OP_CONFIG, w),
        }
    }

    /// The request that `opcode`, `oneway` and `inline` encode. Every message of this
    /// protocol expects a reply, so a one-way message is refused.
    pub fn decode(opcode: u16, oneway: bool, inline: &Inline) -> Result<Request, DecodeError> {
        if inline[2..].iter().any(|&w| w != 0) {
            return Err(DecodeError::ReservedNotZero);
        }
        let meta = || FrameMeta::from_words(inline[0], inline[1]).map(PacketMeta::of_frame_meta);
        let req = match opcode {
            OP_DELIVER => Request::Deliver(meta()?),
            OP_SEND => Request::Send(meta()?),
            OP_CONFIG => {
                if inline[..2].iter().any(|&w| w != 0) {
                    return Err(DecodeError::ReservedNotZero);
                }
                Request::Config
            }
            op => return Err(DecodeError::UnknownOpcode(op)),
        };
        if oneway {
            return Err(DecodeError::WrongKind);
        }
        Ok(req)
    }
}

/// Why a packet was not taken (the status of a [`Reply::Dropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DropReason {
    /// The message did not decode, or its packet is not a valid IPv4 packet.
    Malformed = 1,
    /// ip has no route to the packet's destination.
    NoRoute = 2,
    /// The receiver has no room for it now.
    NoRoom = 3,
    /// The link is down (the driver has not reported it).
    LinkDown = 4,
    /// The packet is larger than the MTU and may not be fragmented, or its
    /// segmentation offload is one the device does not do.
    TooBig = 5,
    /// Its source address is not the stack's.
    BadSource = 6,
    /// The upper layer refused it (a filter rule, no socket).
    Refused = 7,
}

impl DropReason {
    const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::NoRoute,
        DropReason::NoRoom,
        DropReason::LinkDown,
        DropReason::TooBig,
        DropReason::BadSource,
        DropReason::Refused,
    ];
}

/// Which ICMP destination-unreachable error ip should send for a delivered packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Unreachable {
    /// Nobody serves the packet's protocol (ICMP code 2).
    Protocol = 2,
    /// Nobody listens on the packet's port (ICMP code 3).
    Port = 3,
}

/// The interface's configuration (the answer to [`Request::Config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The stack's IPv4 address.
    pub address: [u8; 4],
    /// Prefix length of the connected network (0–32).
    pub prefix_len: u8,
    /// Bytes of IP packet per frame (without segmentation offload).
    pub mtu: u32,
    /// `offload::*` flags of the link below.
    pub offloads: u32,
}

/// The answer to a packet protocol request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Taken; the request's buffer is free again.
    Done,
    /// Not taken, for this reason.
    Dropped(DropReason),
    /// Not taken: ip is to send this ICMP error to the packet's source.
    Unreachable(Unreachable),
    /// The interface's configuration.
    Config(Config),
}

impl Reply {
    /// Status and inline words (the opcode is the request's).
    pub fn encode(&self) -> (u32, Inline) {
        let mut w = [0; INLINE_WORDS];
        match *self {
            Reply::Done => (0, w),
            Reply::Dropped(d) => (d as u32, w),
            Reply::Unreachable(u) => {
                w[0] = u as u64;
                (STATUS_UNREACHABLE, w)
            }
            Reply::Config(c) => {
                w[0] = u64::from(u32::from_be_bytes(c.address)) | u64::from(c.prefix_len) << 32;
                w[1] = u64::from(c.mtu) | u64::from(c.offloads) << 32;
                (STATUS_CONFIG, w)
            }
        }
    }

    /// The reply that `status` and `inline` encode.
    pub fn decode(status: u32, inline: &Inline) -> Result<Reply, DecodeError> {
        let zero_from = |i: usize| {
            if inline[i..].iter().any(|&w| w != 0) {
                Err(DecodeError::ReservedNotZero)
            } else {
                Ok(())
            }
        };
        match status {
            0 => zero_from(0).map(|()| Reply::Done),
            STATUS_UNREACHABLE => {
                zero_from(1)?;
                match inline[0] {
                    2 => Ok(Reply::Unreachable(Unreachable::Protocol)),
                    3 => Ok(Reply::Unreachable(Unreachable::Port)),
                    _ => Err(DecodeError::ReservedNotZero),
                }
            }
            STATUS_CONFIG => {
                zero_from(2)?;
                let prefix_len = (inline[0] >> 32) as u8;
                if inline[0] >> 40 != 0 || prefix_len > 32 {
                    return Err(DecodeError::ReservedNotZero);
                }
                Ok(Reply::Config(Config {
                    address: (inline[0] as u32).to_be_bytes(),
                    prefix_len,
                    mtu: inline[1] as u32,
                    offloads: (inline[1] >> 32) as u32,
                }))
            }
            s => {
                zero_from(0)?;
                DropReason::ALL
                    .into_iter()
                    .find(|d| *d as u32 == s)
                    .map(Reply::Dropped)
                    .ok_or(DecodeError::UnknownStatus(s))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta() -> impl Strategy<Value = PacketMeta> {
        (
            0u8..4,
            prop_oneof![
                Just(Gso::None),
                Just(Gso::TcpV4),
                Just(Gso::Udp),
                Just(Gso::TcpV6)
            ],
            any::<bool>(),
            any::<(u16, u16, u16, u16)>(),
        )
            .prop_map(
                |(flags, gso, ecn, (hdr_len, gso_size, csum_start, csum_offset))| PacketMeta {
                    flags,
                    gso,
                    ecn,
                    hdr_len,
                    gso_size,
                    csum_start,
                    csum_offset,
                },
            )
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            meta().prop_map(Request::Deliver),
            meta().prop_map(Request::Send),
            Just(Request::Config),
        ]
    }

    fn reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            Just(Reply::Done),
            proptest::sample::select(DropReason::ALL.to_vec()).prop_map(Reply::Dropped),
            prop_oneof![Just(Unreachable::Protocol), Just(Unreachable::Port)]
                .prop_map(Reply::Unreachable),
            (any::<[u8; 4]>(), 0u8..=32, any::<u32>(), 0..=offload::ALL).prop_map(
                |(address, prefix_len, mtu, offloads)| Reply::Config(Config {
                    address,
                    prefix_len,
                    mtu,
                    offloads
                })
            ),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in request()) {
            let (op, w) = r.encode();
            prop_assert_eq!(Request::decode(op, false, &w), Ok(r));
            prop_assert_eq!(Request::decode(op, true, &w), Err(DecodeError::WrongKind));
        }

        #[test]
        fn decoded_requests_encode_to_the_same_words(op in 0u16..6, w in any::<[u64; INLINE_WORDS]>()) {
            if let Ok(r) = Request::decode(op, false, &w) {
                prop_assert_eq!(r.encode(), (op, w));
            }
        }

        #[test]
        fn replies_round_trip(r in reply()) {
            let (s, w) = r.encode();
            prop_assert_eq!(Reply::decode(s, &w), Ok(r));
        }

        #[test]
        fn decoded_replies_encode_to_the_same_words(
            status in prop_oneof![0u32..20, any::<u32>()],
            w in prop_oneof![
                any::<[u64; INLINE_WORDS]>(),
                (any::<u64>(), any::<u64>()).prop_map(|(a, b)| [a, b, 0, 0, 0]),
                (0u64..4).prop_map(|a| [a, 0, 0, 0, 0]),
            ]
        ) {
            if let Ok(r) = Reply::decode(status, &w) {
                prop_assert_eq!(r.encode(), (status, w));
            }
        }
    }

    #[test]
    fn config_packs_the_address_in_network_order() {
        let c = Config {
            address: [198, 18, 0, 2],
            prefix_len: 24,
            mtu: 1500,
            offloads: offload::TX_CSUM,
        };
        let (s, w) = Reply::Config(c).encode();
        assert_eq!(s, STATUS_CONFIG);
        assert_eq!(w[0], 0xc612_0002 | 24 << 32);
        assert_eq!(w[1], 1500 | 1 << 32);
        let mut bad = w;
        bad[0] |= 33 << 32;
        assert_eq!(Reply::decode(s, &bad), Err(DecodeError::ReservedNotZero));
    }

    #[test]
    fn config_requests_carry_no_words_and_unknown_codes_are_refused() {
        assert_eq!(
            Request::decode(OP_CONFIG, false, &[1, 0, 0, 0, 0]),
            Err(DecodeError::ReservedNotZero)
        );
        assert_eq!(
            Reply::decode(STATUS_UNREACHABLE, &[4, 0, 0, 0, 0]),
            Err(DecodeError::ReservedNotZero)
        );
        assert_eq!(
            Reply::decode(8, &[0; 5]),
            Err(DecodeError::UnknownStatus(8))
        );
    }
}

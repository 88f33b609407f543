//! The frame protocol between the `driver` server (which runs a virtio-net device) and
//! the `ip` server: one Ethernet frame per message, in the requester's pool buffer,
//! with the frame's offload metadata (the fields of the virtio-net header) in the
//! inline words. A frame may be a GSO super-frame of up to 64 KiB: with TSO/GRO
//! negotiated, one message carries a whole TCP segment, not one MTU-sized packet
//! (`NETSTACK.md` §0: hand-overs cost far more than bytes).
//!
//! ```text
//!  message              dir          opcode  kind     inline[0]            inline[1]     payload
//!  Request::Link        driver → ip  1       request  mac (48 bits)        mtu | offloads<<32   –
//!  Request::Receive     driver → ip  2       request  FrameMeta word 0     FrameMeta word 1    frame
//!  Request::Transmit    ip → driver  3       request  FrameMeta word 0     FrameMeta word 1    frame
//!  Reply::Done          = req        reply   status 0, all inline words 0 (the buffer is free again)
//!  Reply::Dropped       = req        reply   status DropReason, all inline words 0
//! ```
//!
//! `FrameMeta` word 0 packs `flags | gso_type << 8 | hdr_len << 16 | gso_size << 32 |
//! csum_start << 48`, word 1 holds `csum_offset`; every other inline word is zero.
//! Replies are the credit: a requester has as many frames in flight as its channel has
//! outstanding requests, and a frame's buffer is reused only after its reply.

use crate::{DecodeError, Inline, INLINE_WORDS};

/// Opcode of [`Request::Link`].
pub const OP_LINK: u16 = 1;
/// Opcode of [`Request::Receive`].
pub const OP_RECEIVE: u16 = 2;
/// Opcode of [`Request::Transmit`].
pub const OP_TRANSMIT: u16 = 3;

/// Offload flags of [`Request::Link`]: what the driver negotiated with the device, so
/// that ip knows what it may hand down and what it will receive.
pub mod offload {
    /// The device completes partial checksums of transmitted frames (`NEEDS_CSUM`).
    pub const TX_CSUM: u32 = 1 << 0;
    /// Received frames may carry partial or already validated checksums.
    pub const RX_CSUM: u32 = 1 << 1;
    /// The device segments TCPv4 super-frames it is given (TSO).
    pub const TX_TSO4: u32 = 1 << 2;
    /// The device segments TCPv6 super-frames.
    pub const TX_TSO6: u32 = 1 << 3;
    /// Received TCPv4 segments may arrive coalesced (GRO/LRO).
    pub const RX_TSO4: u32 = 1 << 4;
    /// Received TCPv6 segments may arrive coalesced.
    pub const RX_TSO6: u32 = 1 << 5;
    /// Every flag this protocol defines.
    pub const ALL: u32 = (1 << 6) - 1;
}

/// Flag of [`FrameMeta::flags`]: the L4 checksum is partial, to be completed from
/// `csum_start` + `csum_offset` (virtio's `NEEDS_CSUM`).
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// Flag of [`FrameMeta::flags`] (received frames): the checksum was validated.
pub const FLAG_DATA_VALID: u8 = 2;

/// How a super-frame is segmented ([`FrameMeta::gso`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Gso {
    /// An ordinary frame.
    None = 0,
    /// TCPv4 segments of `gso_size` payload bytes.
    TcpV4 = 1,
    /// UDP fragmentation.
    Udp = 3,
    /// TCPv6 segments.
    TcpV6 = 4,
}

impl Gso {
    fn from_code(c: u8) -> Option<Gso> {
        Some(match c {
            0 => Gso::None,
            1 => Gso::TcpV4,
            3 => Gso::Udp,
            4 => Gso::TcpV6,
            _ => return None,
        })
    }
}

/// A frame's offload metadata: the virtio-net header's fields, less `num_buffers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// `FLAG_*`.
    pub flags: u8,
    /// The segmentation type.
    pub gso: Gso,
    /// ECN marking of a GSO frame's segments.
    pub ecn: bool,
    /// Bytes of headers replicated in each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (with [`FLAG_NEEDS_CSUM`]).
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl FrameMeta {
    /// An ordinary frame with a complete checksum.
    pub const PLAIN: FrameMeta = FrameMeta {
        flags: 0,
        gso: Gso::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    const ECN: u8 = 0x80;

    pub(crate) fn words(&self) -> (u64, u64) {
        let gso = self.gso as u8 | if self.ecn { Self::ECN } else { 0 };
        (
            u64::from(self.flags)
                | u64::from(gso) << 8
                | u64::from(self.hdr_len) << 16
                | u64::from(self.gso_size) << 32
                | u64::from(self.csum_start) << 48,
            u64::from(self.csum_offset),
        )
    }

    pub(crate) fn from_words(w0: u64, w1: u64) -> Result<FrameMeta, DecodeError> {
        let flags = w0 as u8;
        if flags & !(FLAG_NEEDS_CSUM | FLAG_DATA_VALID) != 0 || w1 > u64::from(u16::MAX) {
            return Err(DecodeError::ReservedNotZero);
        }
        let gso_byte = (w0 >> 8) as u8;
        let gso = Gso::from_code(gso_byte & !Self::ECN).ok_or(DecodeError::ReservedNotZero)?;
        Ok(FrameMeta {
            flags,
            gso,
            ecn: gso_byte & Self::ECN != 0,
            hdr_len: (w0 >> 16) as u16,
            gso_size: (w0 >> 32) as u16,
            csum_start: (w0 >> 48) as u16,
            csum_offset: w1 as u16,
        })
    }
}

/// A message that expects a [`Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The link is up (driver → ip, once after the device is initialised).
    Link {
        /// The NIC's MAC address.
        mac: [u8; 6],
        /// Its MTU (bytes of IP packet per frame without GSO).
        mtu: u32,
        /// `offload::*` flags the driver negotiated.
        offloads: u32,
    },
    /// A received frame in the payload (driver → ip).
    Receive(FrameMeta),
    /// A frame to transmit in the payload (ip → driver).
    Transmit(FrameMeta),
}

impl Request {
    /// Opcode and inline words.
    pub fn encode(&self) -> (u16, Inline) {
        let mut w = [0; INLINE_WORDS];
        match *self {
            Request::Link { mac, mtu, offloads } => {
                let mut m = [0; 8];
                m[..6].copy_from_slice(&mac);
                w[0] = u64::from_le_bytes(m);
                w[1] = u64::from(mtu) | u64::from(offloads) << 32;
                (OP_LINK, w)
            }
            Request::Receive(meta) => {
                (w[0], w[1]) = meta.words();
                (OP_RECEIVE, w)
            }
            Request::Transmit(meta) => {
                (w[0], w[1]) = meta.words();
                (OP_TRANSMIT, w)
            }
        }
    }

    /// The request that `opcode`, `oneway` and `inline` encode. Every frame protocol
    /// message expects a reply, so a one-way message is refused.
    pub fn decode(opcode: u16, oneway: bool, inline: &Inline) -> Result<Request, DecodeError> {
        if inline[2..].iter().any(|&w| w != 0) {
            return Err(DecodeError::ReservedNotZero);
        }
        let req = match opcode {
            OP_LINK => {
                if inline[0] >> 48 != 0 {
                    return Err(DecodeError::ReservedNotZero);
                }
                let b = inline[0].to_le_bytes();
                let offloads = (inline[1] >> 32) as u32;
                if offloads & !offload::ALL != 0 {
                    return Err(DecodeError::ReservedNotZero);
                }
                Request::Link {
                    mac: [b[0], b[1], b[2], b[3], b[4], b[5]],
                    mtu: inline[1] as u32,
                    offloads,
                }
            }
            OP_RECEIVE => Request::Receive(FrameMeta::from_words(inline[0], inline[1])?),
            OP_TRANSMIT => Request::Transmit(FrameMeta::from_words(inline[0], inline[1])?),
            op => return Err(DecodeError::UnknownOpcode(op)),
        };
        if oneway {
            return Err(DecodeError::WrongKind);
        }
        Ok(req)
    }
}

/// Why a frame was not taken (the status of a [`Reply::Dropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DropReason {
    /// The message did not decode.
    Malformed = 1,
    /// The frame is shorter than an Ethernet header, or longer than the peer takes.
    BadLength = 2,
    /// The receiver has no room for it now (the device's queue is full).
    NoRoom = 3,
    /// The link is down.
    LinkDown = 4,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::Malformed,
        DropReason::BadLength,
        DropReason::NoRoom,
        DropReason::LinkDown,
    ];
}

/// The answer to a frame protocol request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Taken; the request's buffer is free again.
    Done,
    /// Not taken, for this reason; the buffer is free again.
    Dropped(DropReason),
}

impl Reply {
    /// Status and inline words (the opcode is the request's).
    pub fn encode(&self) -> (u32, Inline) {
        let w = [0; INLINE_WORDS];
        match *self {
            Reply::Done => (0, w),
            Reply::Dropped(d) => (d as u32, w),
        }
    }

    /// The reply that `status` and `inline` encode.
    pub fn decode(status: u32, inline: &Inline) -> Result<Reply, DecodeError> {
        if inline.iter().any(|&w| w != 0) {
            return Err(DecodeError::ReservedNotZero);
        }
        if status == 0 {
            return Ok(Reply::Done);
        }
        DropReason::ALL
            .into_iter()
            .find(|d| *d as u32 == status)
            .map(Reply::Dropped)
            .ok_or(DecodeError::UnknownStatus(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta() -> impl Strategy<Value = FrameMeta> {
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
                |(flags, gso, ecn, (hdr_len, gso_size, csum_start, csum_offset))| FrameMeta {
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
            (any::<[u8; 6]>(), any::<u32>(), 0..=offload::ALL)
                .prop_map(|(mac, mtu, offloads)| Request::Link { mac, mtu, offloads }),
            meta().prop_map(Request::Receive),
            meta().prop_map(Request::Transmit),
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
        fn replies_round_trip_and_random_words_never_panic(
            status in 0u32..8, w in any::<[u64; INLINE_WORDS]>()
        ) {
            if let Ok(r) = Reply::decode(status, &w) {
                prop_assert_eq!(r.encode(), (status, w));
            }
            let (s, zero) = Reply::Dropped(DropReason::NoRoom).encode();
            prop_assert_eq!(Reply::decode(s, &zero), Ok(Reply::Dropped(DropReason::NoRoom)));
        }
    }

    #[test]
    fn meta_words_pack_as_documented() {
        let m = FrameMeta {
            flags: FLAG_NEEDS_CSUM,
            gso: Gso::TcpV4,
            ecn: false,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let (op, w) = Request::Transmit(m).encode();
        assert_eq!(op, OP_TRANSMIT);
        assert_eq!(w[0], 1 | 1 << 8 | 54 << 16 | 1448 << 32 | 34 << 48);
        assert_eq!(w[1], 16);
    }

    #[test]
    fn unknown_gso_types_and_flags_are_refused() {
        let mut w = [0; INLINE_WORDS];
        w[0] = 2 << 8;
        assert_eq!(
            Request::decode(OP_RECEIVE, false, &w),
            Err(DecodeError::ReservedNotZero)
        );
        w[0] = 4;
        assert_eq!(
            Request::decode(OP_RECEIVE, false, &w),
            Err(DecodeError::ReservedNotZero)
        );
        w[0] = 0;
        w[1] = 1 << 16;
        assert_eq!(
            Request::decode(OP_RECEIVE, false, &w),
            Err(DecodeError::ReservedNotZero)
        );
    }
}

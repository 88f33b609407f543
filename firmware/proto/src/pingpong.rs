//! The pingpong protocol: a requester sends numbered pings, each with a checksum of its
//! sequence number and optionally a payload; the server answers each with a pong that
//! carries the sequence number, its own checksum and the payload echoed; a one-way stop
//! ends the conversation.
//!
//! ```text
//!  message         opcode  kind     status  inline[0]  inline[1]              inline[2..5]
//!  Request::Ping   1       request  –       seq        checksum(seq)          0
//!  Request::Stop   2       one-way  –       0          0                      0
//!  Reply::Pong     = req   reply    0       seq        checksum(seq) ^ 1      0
//!  Reply::Refused  = req   reply    Refusal 0          0                      0
//! ```
//!
//! The payload of a ping is [`fill_payload`]'s pattern for its sequence number; a
//! requester checks the echo with [`payload_matches`].

use crate::{DecodeError, Inline, INLINE_WORDS};

/// Opcode of [`Request::Ping`].
pub const OP_PING: u16 = 1;
/// Opcode of [`Request::Stop`].
pub const OP_STOP: u16 = 2;

/// The checksum a ping carries for sequence number `seq` (a pong carries it `^ 1`).
pub fn checksum(seq: u64) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5bd1_e995
}

/// A requester's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Ping number `seq`; expects a reply.
    Ping {
        /// Sequence number: 0, 1, 2, … on each channel.
        seq: u64,
    },
    /// The requester is done (one-way, no reply).
    Stop,
}

impl Request {
    /// Opcode and inline words.
    pub fn encode(&self) -> (u16, Inline) {
        let mut w = [0; INLINE_WORDS];
        match *self {
            Request::Ping { seq } => {
                w[0] = seq;
                w[1] = checksum(seq);
                (OP_PING, w)
            }
            Request::Stop => (OP_STOP, w),
        }
    }

    /// Whether the message is sent one-way (without a reply).
    pub fn is_oneway(&self) -> bool {
        matches!(self, Request::Stop)
    }

    /// The request that `opcode`, `oneway` and `inline` encode.
    pub fn decode(opcode: u16, oneway: bool, inline: &Inline) -> Result<Request, DecodeError> {
        let (req, rest) = match opcode {
            OP_PING => {
                let seq = inline[0];
                if inline[1] != checksum(seq) {
                    return Err(DecodeError::BadChecksum);
                }
                (Request::Ping { seq }, &inline[2..])
            }
            OP_STOP => (Request::Stop, &inline[..]),
            op => return Err(DecodeError::UnknownOpcode(op)),
        };
        if rest.iter().any(|&w| w != 0) {
            return Err(DecodeError::ReservedNotZero);
        }
        if oneway != req.is_oneway() {
            return Err(DecodeError::WrongKind);
        }
        Ok(req)
    }
}

/// Why the server refused a ping (the status of a [`Reply::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Refusal {
    /// The ping's sequence number is not the next one on its channel.
    BadSequence = 1,
    /// Its checksum is wrong.
    BadChecksum = 2,
    /// Its opcode is unknown.
    UnknownOpcode = 3,
    /// Some other field is wrong (a reserved word, or one-way where a reply is due).
    Malformed = 4,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::BadSequence,
        Refusal::BadChecksum,
        Refusal::UnknownOpcode,
        Refusal::Malformed,
    ];

    /// How the server answers a request that failed to decode.
    pub fn of(e: DecodeError) -> Refusal {
        match e {
            DecodeError::BadChecksum => Refusal::BadChecksum,
            DecodeError::UnknownOpcode(_) => Refusal::UnknownOpcode,
            DecodeError::ReservedNotZero
            | DecodeError::UnknownStatus(_)
            | DecodeError::WrongKind => Refusal::Malformed,
        }
    }
}

/// The server's answer to a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Ping `seq` served; its payload is echoed.
    Pong {
        /// The ping's sequence number.
        seq: u64,
    },
    /// The ping was refused; nothing else changes on the channel.
    Refused(Refusal),
}

impl Reply {
    /// Status and inline words (the opcode is the request's).
    pub fn encode(&self) -> (u32, Inline) {
        let mut w = [0; INLINE_WORDS];
        match *self {
            Reply::Pong { seq } => {
                w[0] = seq;
                w[1] = checksum(seq) ^ 1;
                (0, w)
            }
            Reply::Refused(r) => (r as u32, w),
        }
    }

    /// The reply that `status` and `inline` encode.
    pub fn decode(status: u32, inline: &Inline) -> Result<Reply, DecodeError> {
        let (reply, rest) = match status {
            0 => {
                let seq = inline[0];
                if inline[1] != checksum(seq) ^ 1 {
                    return Err(DecodeError::BadChecksum);
                }
                (Reply::Pong { seq }, &inline[2..])
            }
            s => {
                let r = Refusal::ALL
                    .into_iter()
                    .find(|r| *r as u32 == s)
                    .ok_or(DecodeError::UnknownStatus(s))?;
                (Reply::Refused(r), &inline[..])
            }
        };
        if rest.iter().any(|&w| w != 0) {
            return Err(DecodeError::ReservedNotZero);
        }
        Ok(reply)
    }
}

/// Byte `i` of ping `seq`'s payload.
fn payload_byte(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_add(i as u8)
}

/// Writes ping `seq`'s payload pattern into `buf`.
pub fn fill_payload(seq: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = payload_byte(seq, i);
    }
}

/// Whether `buf` is the start of ping `seq`'s payload pattern.
pub fn payload_matches(seq: u64, buf: &[u8]) -> bool {
    buf.iter()
        .enumerate()
        .all(|(i, &b)| b == payload_byte(seq, i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    extern crate std;
    use std::vec::Vec;

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            any::<u64>().prop_map(|seq| Request::Ping { seq }),
            Just(Request::Stop)
        ]
    }

    fn reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            any::<u64>().prop_map(|seq| Reply::Pong { seq }),
            proptest::sample::select(Refusal::ALL.into_iter().collect::<Vec<_>>())
                .prop_map(Reply::Refused),
        ]
    }

    /// Inline words that are often, not only by chance, close to valid ones.
    fn inline() -> impl Strategy<Value = Inline> {
        prop_oneof![
            any::<Inline>(),
            (any::<u64>(), 0..4usize, any::<u64>()).prop_map(|(seq, which, junk)| {
                let mut w = [seq, checksum(seq), 0, 0, 0];
                match which {
                    0 => w[1] ^= 1,
                    1 => w[2 + (junk % 3) as usize] = junk | 1,
                    _ => {}
                }
                w
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in request()) {
            let (op, w) = r.encode();
            prop_assert_eq!(Request::decode(op, r.is_oneway(), &w), Ok(r));
        }

        #[test]
        fn replies_round_trip(r in reply()) {
            let (status, w) = r.encode();
            prop_assert_eq!(Reply::decode(status, &w), Ok(r));
        }

        #[test]
        fn a_decoded_request_is_exactly_what_encode_gives(
            op in prop_oneof![Just(OP_PING), Just(OP_STOP), any::<u16>()],
            oneway in any::<bool>(),
            w in inline(),
        ) {
            if let Ok(r) = Request::decode(op, oneway, &w) {
                prop_assert_eq!(r.encode(), (op, w));
                prop_assert_eq!(r.is_oneway(), oneway);
            }
        }

        #[test]
        fn a_decoded_reply_is_exactly_what_encode_gives(
            status in prop_oneof![0..6u32, any::<u32>()],
            w in inline(),
        ) {
            if let Ok(r) = Reply::decode(status, &w) {
                prop_assert_eq!(r.encode(), (status, w));
            }
        }

        #[test]
        fn the_payload_pattern_is_checked_byte_by_byte(
            seq in any::<u64>(), len in 1..300usize, flip in any::<usize>(),
        ) {
            let mut buf = [0; 300];
            let b = &mut buf[..len];
            fill_payload(seq, b);
            prop_assert!(payload_matches(seq, b));
            b[flip % len] ^= 0x40;
            prop_assert!(!payload_matches(seq, b));
        }
    }

    #[test]
    fn wrong_requests_are_refused_for_their_reason() {
        let (op, mut w) = Request::Ping { seq: 5 }.encode();
        assert_eq!(Request::decode(op, true, &w), Err(DecodeError::WrongKind));
        assert_eq!(
            Request::decode(9, false, &w),
            Err(DecodeError::UnknownOpcode(9))
        );
        w[4] = 1;
        assert_eq!(
            Request::decode(op, false, &w),
            Err(DecodeError::ReservedNotZero)
        );
        w[4] = 0;
        w[1] ^= 1;
        assert_eq!(
            Request::decode(op, false, &w),
            Err(DecodeError::BadChecksum)
        );
        assert_eq!(Refusal::of(DecodeError::BadChecksum), Refusal::BadChecksum);
        assert_eq!(
            Reply::decode(99, &[0; 5]),
            Err(DecodeError::UnknownStatus(99))
        );
    }
}

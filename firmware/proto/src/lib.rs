//! The message formats between compart guests, one module per link.
//!
//! Every message travels in one channel slot: an opcode and [`INLINE_WORDS`] inline
//! words (plus a status word in replies), and optionally a payload in the requester's
//! pool buffer. Each message here is a typed value with an `encode` to those words and a
//! `decode` from them that returns a [`DecodeError`], never panics, and accepts only the
//! words `encode` produces (so `decode(x) == Ok(m)` implies `m.encode() == x`). The
//! words come from a peer guest and are not trusted: the decoders are property-tested on
//! random input.
//!
//! - [`pingpong`]: the checked request/reply traffic of the `pingpong` image, its tests
//!   and benchmarks.
//! - [`frame`]: Ethernet frames and their offload metadata between the `driver` and
//!   `ip` servers.
//! - [`packet`]: IPv4 packets and their offload metadata between the `ip` server and
//!   the layer above it (`pf`, or `tcp`), and the interface's configuration.
//! - [`socket`]: socket calls (listen, accept, connect, send, recv, shutdown, close,
//!   poll, set option, stats) and their errno-style answers between applications,
//!   `posix` and `tcp`, and readiness
//!   events.
#![no_std]
#![forbid(unsafe_code)]

pub mod frame;
pub mod packet;
pub mod pingpong;
pub mod socket;

pub use compart_channel::INLINE_WORDS;

/// The inline words of a message.
pub type Inline = [u64; INLINE_WORDS];

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The opcode is not one of the protocol's.
    UnknownOpcode(u16),
    /// A reply's status is not one of the protocol's.
    UnknownStatus(u32),
    /// The message's checksum word does not match its contents.
    BadChecksum,
    /// A word the protocol reserves is not zero.
    ReservedNotZero,
    /// The message is one-way where the protocol wants a request, or the reverse.
    WrongKind,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::UnknownOpcode(op) => write!(f, "unknown opcode {op}"),
            DecodeError::UnknownStatus(s) => write!(f, "unknown status {s}"),
            DecodeError::BadChecksum => f.write_str("bad checksum"),
            DecodeError::ReservedNotZero => f.write_str("reserved word not zero"),
            DecodeError::WrongKind => f.write_str("one-way where a request is due, or the reverse"),
        }
    }
}

impl core::error::Error for DecodeError {}

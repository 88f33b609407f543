//! Errors reported by a channel endpoint.

use core::fmt;

/// What was found wrong in the shared region.
///
/// A `Corruption` is only ever produced by validating a value read from shared memory (or a
/// handle given back by the caller); the reader never trusts the value it is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The header's magic number is not [`MAGIC`](crate::MAGIC).
    BadMagic,
    /// The header's layout version is not [`VERSION`](crate::VERSION).
    BadVersion,
    /// The header's sizes do not describe a valid layout, or not this region's length.
    BadHeader,
    /// A ring index is impossible: one published by the peer says more entries than the ring
    /// holds, or one that only this side writes was overwritten.
    RingIndex,
    /// The peer's notification state is none of the protocol's states.
    NotifyState,
    /// A message refers to payload bytes outside the sender's pool buffer.
    PayloadBounds,
    /// A reply names a request that is not outstanding (unknown index or stale generation).
    UnknownRequest,
    /// The request database (free list or an entry) is inconsistent.
    RequestDb,
    /// A message carries flags or fields that the protocol does not allow.
    BadMessage,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Corruption::BadMagic => "bad magic number",
            Corruption::BadVersion => "unsupported layout version",
            Corruption::BadHeader => "header sizes do not match the region",
            Corruption::RingIndex => "impossible ring index",
            Corruption::NotifyState => "impossible notification state",
            Corruption::PayloadBounds => "payload outside the pool buffer",
            Corruption::UnknownRequest => "reply to a request that is not outstanding",
            Corruption::RequestDb => "inconsistent request database",
            Corruption::BadMessage => "malformed message",
        })
    }
}

/// Error returned by channel operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The region is too small, misaligned, or the configuration is invalid.
    InvalidConfig(&'static str),
    /// The shared region is corrupt: the endpoint is now broken.
    Corrupt(Corruption),
    /// The endpoint saw a corruption earlier and refuses to touch the region again.
    Broken(Corruption),
    /// The outgoing queue is full; poll, then retry.
    Full,
    /// Every request-database entry (and so every pool buffer) is in use.
    NoFreeRequest,
    /// The payload does not fit in one pool buffer.
    PayloadTooLarge,
    /// The handle (request id, buffer) was not issued by this endpoint or is no longer valid.
    InvalidHandle,
}

impl ChannelError {
    /// The corruption that broke the channel, if this error means the channel is broken.
    pub fn corruption(&self) -> Option<Corruption> {
        match self {
            ChannelError::Corrupt(c) | ChannelError::Broken(c) => Some(*c),
            _ => None,
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::InvalidConfig(why) => write!(f, "invalid channel configuration: {why}"),
            ChannelError::Corrupt(c) => write!(f, "corrupt channel region: {c}"),
            ChannelError::Broken(c) => write!(f, "channel is broken: {c}"),
            ChannelError::Full => f.write_str("channel queue is full"),
            ChannelError::NoFreeRequest => f.write_str("no free request slot"),
            ChannelError::PayloadTooLarge => f.write_str("payload larger than a pool buffer"),
            ChannelError::InvalidHandle => f.write_str("invalid request or buffer handle"),
        }
    }
}

impl core::error::Error for ChannelError {}

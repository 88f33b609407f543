//! The message format: one 64-byte, cache-line-sized slot of a ring.
//!
//! A slot is eight little-endian 64-bit words, each read and written with one atomic access
//! (so a peer writing a slot concurrently can make the message wrong, never the read
//! undefined):
//!
//! ```text
//!  word  bits    field
//!  0     0..64   id            request id (database index | generation << 32); 0 for one-way
//!  1     0..16   opcode        chosen by the application
//!  1     16..24  flags         FLAG_* below
//!  1     24..32  tag           the ring's lap tag (see `ring`); 0 outside the ring
//!  1     32..64  status        reply status (0 in requests)
//!  2     0..32   payload_off   byte offset of the payload inside the sender's pool
//!  2     32..64  payload_len   payload length in bytes (0: no payload)
//!  3..8          inline        five application words
//! ```
//!
//! [`Message::decode`] checks only what the format itself forbids (unknown flags); the
//! endpoint checks ids and payload bounds against its own state.

use crate::error::Corruption;

/// Size of one message slot in bytes: one cache line.
pub const MESSAGE_SIZE: usize = 64;
/// Number of 64-bit words in a slot.
pub const MESSAGE_WORDS: usize = MESSAGE_SIZE / 8;
/// Number of application words carried inline in every message.
pub const INLINE_WORDS: usize = 5;

/// The message is a request that expects no reply (it carries no payload and no id).
pub const FLAG_ONEWAY: u8 = 1 << 0;
/// The message refers to a payload in the pool (`payload_off`, `payload_len`).
pub const FLAG_PAYLOAD: u8 = 1 << 1;
/// All flags defined by this version of the layout.
pub const FLAGS_KNOWN: u8 = FLAG_ONEWAY | FLAG_PAYLOAD;
/// Position of the ring's lap tag in word 1.
pub const TAG_SHIFT: u32 = 24;
/// The ring's lap tag in word 1.
pub const TAG_MASK: u64 = 0xff << TAG_SHIFT;

/// The eight words of a slot, as the rings move them: the endpoints build and read messages
/// at this level (a word at a time), so that a message goes from registers to the slot and
/// back without being repacked on the way.
pub type Words = [u64; MESSAGE_WORDS];

/// Word 1 of a message: `opcode`, `flags` and `status` (the tag is left to the ring).
#[inline(always)]
pub const fn control(opcode: u16, flags: u8, status: u32) -> u64 {
    opcode as u64 | (flags as u64) << 16 | (status as u64) << 32
}

/// Word 2 of a message: the payload's offset and length.
#[inline(always)]
pub const fn payload_span(off: u32, len: u32) -> u64 {
    off as u64 | (len as u64) << 32
}

/// A message's words from its id, control word, payload span and inline words.
#[inline(always)]
pub const fn words(id: u64, control: u64, span: u64, inline: &[u64; INLINE_WORDS]) -> Words {
    [
        id, control, span, inline[0], inline[1], inline[2], inline[3], inline[4],
    ]
}

// Truncating casts are the point of the accessors below: each field is a bit range of a word.
/// The opcode of a message.
#[inline(always)]
#[allow(clippy::cast_possible_truncation)]
pub const fn opcode(w: &Words) -> u16 {
    w[1] as u16
}

/// The flags of a message.
#[inline(always)]
#[allow(clippy::cast_possible_truncation)]
pub const fn flags(w: &Words) -> u8 {
    (w[1] >> 16) as u8
}

/// The status of a message.
#[inline(always)]
#[allow(clippy::cast_possible_truncation)]
pub const fn status(w: &Words) -> u32 {
    (w[1] >> 32) as u32
}

/// The payload offset of a message.
#[inline(always)]
#[allow(clippy::cast_possible_truncation)]
pub const fn payload_off(w: &Words) -> u32 {
    w[2] as u32
}

/// The payload length of a message.
#[inline(always)]
#[allow(clippy::cast_possible_truncation)]
pub const fn payload_len(w: &Words) -> u32 {
    (w[2] >> 32) as u32
}

/// The inline words of a message.
#[inline(always)]
pub const fn inline(w: &Words) -> &[u64; INLINE_WORDS] {
    let [_, _, _, rest @ ..] = w;
    rest
}

/// A decoded message, as it is written to or read from a ring slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Request id (see [`RequestId`](crate::RequestId)); 0 for one-way messages.
    pub id: u64,
    /// Application operation code.
    pub opcode: u16,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Reply status, 0 in requests.
    pub status: u32,
    /// Offset of the payload in the sender's pool (meaningful with [`FLAG_PAYLOAD`]).
    pub payload_off: u32,
    /// Length of the payload in bytes.
    pub payload_len: u32,
    /// Application words carried in the slot itself.
    pub inline: [u64; INLINE_WORDS],
}

impl Message {
    /// Encode into the eight words of a slot.
    #[inline]
    pub fn encode(&self) -> Words {
        words(
            self.id,
            control(self.opcode, self.flags, self.status),
            payload_span(self.payload_off, self.payload_len),
            &self.inline,
        )
    }

    /// Decode the eight words of a slot, rejecting unknown flags.
    #[inline]
    pub fn decode(w: &Words) -> Result<Message, Corruption> {
        if flags(w) & !FLAGS_KNOWN != 0 {
            return Err(Corruption::BadMessage);
        }
        Ok(Message {
            id: w[0],
            opcode: opcode(w),
            flags: flags(w),
            status: status(w),
            payload_off: payload_off(w),
            payload_len: payload_len(w),
            inline: *inline(w),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_is_identity() {
        let m = Message {
            id: 0x1234_5678_9abc_def0,
            opcode: 0xbeef,
            flags: FLAG_PAYLOAD,
            status: 0xdead_beef,
            payload_off: 4096,
            payload_len: 1500,
            inline: [1, 2, 3, 4, u64::MAX],
        };
        assert_eq!(Message::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn unknown_flags_are_rejected() {
        let mut w = Message::default().encode();
        w[1] |= 0x80 << 16;
        assert_eq!(Message::decode(&w), Err(Corruption::BadMessage));
    }
}

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
//!  1     16..32  flags         FLAG_* below
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
pub const FLAG_ONEWAY: u16 = 1 << 0;
/// The message refers to a payload in the pool (`payload_off`, `payload_len`).
pub const FLAG_PAYLOAD: u16 = 1 << 1;
/// All flags defined by this version of the layout.
pub const FLAGS_KNOWN: u16 = FLAG_ONEWAY | FLAG_PAYLOAD;

/// A decoded message, as it is written to or read from a ring slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Request id (see [`RequestId`](crate::RequestId)); 0 for one-way messages.
    pub id: u64,
    /// Application operation code.
    pub opcode: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
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
    pub fn encode(&self) -> [u64; MESSAGE_WORDS] {
        let mut w = [0u64; MESSAGE_WORDS];
        w[0] = self.id;
        w[1] =
            u64::from(self.opcode) | (u64::from(self.flags) << 16) | (u64::from(self.status) << 32);
        w[2] = u64::from(self.payload_off) | (u64::from(self.payload_len) << 32);
        w[3..].copy_from_slice(&self.inline);
        w
    }

    /// Decode the eight words of a slot, rejecting unknown flags.
    #[inline]
    pub fn decode(w: &[u64; MESSAGE_WORDS]) -> Result<Message, Corruption> {
        // Truncating casts are the point here: each field is a bit range of a word.
        #[allow(clippy::cast_possible_truncation)]
        let msg = Message {
            id: w[0],
            opcode: w[1] as u16,
            flags: (w[1] >> 16) as u16,
            status: (w[1] >> 32) as u32,
            payload_off: w[2] as u32,
            payload_len: (w[2] >> 32) as u32,
            inline: [w[3], w[4], w[5], w[6], w[7]],
        };
        if msg.flags & !FLAGS_KNOWN != 0 {
            return Err(Corruption::BadMessage);
        }
        Ok(msg)
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
        w[1] |= 0x8000 << 16;
        assert_eq!(Message::decode(&w), Err(Corruption::BadMessage));
    }
}

//! IPv4 reassembly (RFC 791 §3.2, RFC 815's hole bookkeeping as a bitmap of 8-byte
//! blocks).
//!
//! Datagrams are keyed by (source, destination, identification, protocol). Memory is
//! bounded: at most `reasm_slots` datagrams in reassembly at once, all of them together
//! holding at most `reasm_bytes` bytes, each at most 65 535 bytes in total (a fragment
//! reaching past that is refused: the "ping of death"). A datagram not complete
//! `reasm_timeout_ms` after its first fragment is dropped. Fragments that overlap are
//! accepted, the later bytes winning; fragments that disagree about the datagram's end
//! drop the datagram.
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::wire::{Ipv4Address, Ipv4Packet};

use crate::{Instant, Limits};

/// Largest IPv4 datagram.
const MAX_DATAGRAM: usize = 65_535;
/// Blocks of 8 bytes in the largest payload.
const BLOCKS: usize = MAX_DATAGRAM.div_ceil(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    src: Ipv4Address,
    dst: Ipv4Address,
    ident: u16,
    protocol: u8,
}

#[derive(Debug)]
struct Slot {
    key: Key,
    /// The first fragment's header (options included), once it arrived.
    header: Option<Vec<u8>>,
    /// The payload so far.
    data: Vec<u8>,
    /// One bit per 8-byte block of `data` received.
    filled: Vec<u64>,
    /// The payload's length, once the last fragment arrived.
    end: Option<usize>,
    expires: Instant,
}

impl Slot {
    fn mark(&mut self, start: usize, end: usize) {
        for b in start / 8..end.div_ceil(8) {
            self.filled[b / 64] |= 1 << (b % 64);
        }
    }

    fn complete(&self) -> bool {
        let Some(end) = self.end else { return false };
        self.header.is_some()
            && (0..end.div_ceil(8)).all(|b| self.filled[b / 64] & (1 << (b % 64)) != 0)
    }

    fn bytes(&self) -> usize {
        self.data.len() + self.header.as_ref().map_or(0, Vec::len)
    }
}

/// What became of a fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Kept; the datagram is not complete yet.
    Kept,
    /// The datagram is complete: here it is, a whole IPv4 packet with a valid header.
    Complete(Vec<u8>),
    /// Inconsistent with itself or its datagram (which is dropped too).
    Malformed,
    /// No slot or buffer bytes left.
    NoRoom,
}

/// The datagrams in reassembly.
#[derive(Debug, Default)]
pub struct Reassembler {
    slots: Vec<Slot>,
    bytes: usize,
}

impl Reassembler {
    /// Drop the datagrams whose time is up; returns how many.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let before = self.slots.len();
        let bytes = &mut self.bytes;
        self.slots.retain(|s| {
            let keep = s.expires > now;
            if !keep {
                *bytes -= s.bytes();
            }
            keep
        });
        (before - self.slots.len()) as u64
    }

    /// When the oldest datagram times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().map(|s| s.expires).min()
    }

    /// Datagrams in reassembly, and the bytes they hold.
    pub fn usage(&self) -> (usize, usize) {
        (self.slots.len(), self.bytes)
    }

    fn remove(&mut self, i: usize) {
        let s = self.slots.swap_remove(i);
        self.bytes -= s.bytes();
    }

    /// Add a fragment: `raw` is a checked IPv4 packet (lengths consistent, header
    /// checksum right, no bytes past its total length) with MF set or a non-zero offset.
    pub fn add(&mut self, raw: &[u8], now: Instant, limits: &Limits) -> Outcome {
        let p = Ipv4Packet::new_unchecked(raw);
        let payload = p.payload();
        let start = usize::from(p.frag_offset());
        let end = start + payload.len();
        let header_len = usize::from(p.header_len());
        let more = p.more_frags();
        // Every fragment but the last carries a multiple of 8 bytes, and none may reach
        // past the largest datagram.
        if (more && (payload.is_empty() || !payload.len().is_multiple_of(8)))
            || end + header_len > MAX_DATAGRAM
        {
            return Outcome::Malformed;
        }
        let key = Key {
            src: p.src_addr(),
            dst: p.dst_addr(),
            ident: p.ident(),
            protocol: p.next_header().into(),
        };
        let i = match self.slots.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                if self.slots.len() >= limits.reasm_slots {
                    return Outcome::NoRoom;
                }
                self.slots.push(Slot {
                    key,
                    header: None,
                    data: Vec::new(),
                    filled: vec![0; BLOCKS.div_ceil(64)],
                    end: None,
                    expires: now.after(limits.reasm_timeout_ms),
                });
                self.slots.len() - 1
            }
        };
        let s = &self.slots[i];
        // The datagram's end: set by the last fragment, and nothing may lie past it.
        let inconsistent = match (more, s.end) {
            (false, Some(e)) => e != end,
            (false, None) => s.data.len() > end,
            (true, Some(e)) => end > e,
            (true, None) => false,
        } || (start == 0
            && s.header.as_ref().is_some_and(|h| h.len() != header_len));
        if inconsistent {
            self.remove(i);
            return Outcome::Malformed;
        }
        let header_growth = if start == 0 && s.header.is_none() {
            header_len
        } else {
            0
        };
        let growth = end.saturating_sub(s.data.len()) + header_growth;
        if self.bytes + growth > limits.reasm_bytes {
            self.remove(i);
            return Outcome::NoRoom;
        }
        self.bytes += growth;
        let s = &mut self.slots[i];
        if start == 0 && s.header.is_none() {
            s.header = Some(raw[..header_len].to_vec());
        }
        if s.data.len() < end {
            s.data.resize(end, 0);
        }
        s.data[start..end].copy_from_slice(payload);
        s.mark(start, end);
        if !more {
            s.end = Some(end);
        }
        if !s.complete() {
            return Outcome::Kept;
        }
        let s = self.slots.swap_remove(i);
        self.bytes -= s.bytes();
        let header = s.header.expect("complete");
        let total = header.len() + s.data.len();
        // The first fragment's header may be longer than the others' (options).
        if total > MAX_DATAGRAM {
            return Outcome::Malformed;
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&header);
        out.extend_from_slice(&s.data);
        let mut ip = Ipv4Packet::new_unchecked(&mut out[..]);
        #[allow(clippy::cast_possible_truncation)] // total ≤ MAX_DATAGRAM, checked above
        ip.set_total_len(total as u16);
        ip.clear_flags();
        ip.set_frag_offset(0);
        ip.fill_checksum();
        Outcome::Complete(out)
    }
}

//! The request database: the requester's record of its outstanding requests.
//!
//! Entry `i` of a side's database owns buffer `i` of the same side's pool, so allocating a
//! request id also allocates its payload buffer and a reply gives both back. Ids carry a
//! generation so that a late or forged reply to a reused entry is recognised:
//!
//! ```text
//!   RequestId = generation << 32 | index        (generation never 0, so id 0 is "none")
//!   entry     = { state, generation, next free, opcode|flags, payload off, payload len,
//!                 inline words }                                  (64 bytes: the request)
//!   state     : FREE --alloc--> SENT --reply--> REPLIED --free--> FREE
//! ```
//!
//! The entries live in the owner's part of the shared region so that they survive the restart
//! of either side (after a restart, [`Endpoint::outstanding`](crate::Endpoint::outstanding)
//! lists what to resubmit or fail). The free list is threaded through the entries and its head
//! is private; like everything else in the region, every entry read is validated.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::Corruption;
use crate::layout::DB_ENTRY_LEN;
use crate::region::Region;
use crate::wire::INLINE_WORDS;

/// Entry not in use (on the free list).
pub const FREE: u32 = 0;
/// Request sent, reply not yet received.
pub const SENT: u32 = 1;
/// Reply received, not yet freed by the application.
pub const REPLIED: u32 = 2;

const E_STATE: usize = 0;
const E_GEN: usize = 4;
const E_NEXT: usize = 8;
const E_OPCODE: usize = 12;
const E_OFF: usize = 16;
const E_LEN: usize = 20;
const E_INLINE: usize = 24;

/// Index of a `u32` field among an entry's sixteen 32-bit words.
const fn w(field: usize) -> usize {
    field / 4
}

/// End of the free list.
const NONE: u32 = u32::MAX;

/// Identifies one outstanding request of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl RequestId {
    fn new(index: u32, generation: u32) -> RequestId {
        RequestId(u64::from(generation) << 32 | u64::from(index))
    }

    /// Index of the database entry (and pool buffer).
    #[allow(clippy::cast_possible_truncation)]
    pub fn index(self) -> u32 {
        self.0 as u32
    }

    /// Generation of the entry when the id was issued.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// What the database remembers about an outstanding request: enough to send it again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Opcode of the request.
    pub opcode: u16,
    /// Offset of the payload in the entry's pool buffer.
    pub payload_off: u32,
    /// Payload length of the request (0: none).
    pub payload_len: u32,
    /// Inline words of the request.
    pub inline: [u64; INLINE_WORDS],
}

/// Lay out a fresh database: every entry free, linked in index order.
pub(crate) fn format(region: &Region, base: usize, cap: u32) -> Option<()> {
    for i in 0..cap {
        let e = base + i as usize * DB_ENTRY_LEN;
        region.u32_at(e + E_STATE)?.store(FREE, Ordering::Relaxed);
        region.u32_at(e + E_GEN)?.store(0, Ordering::Relaxed);
        let next = if i + 1 < cap { i + 1 } else { NONE };
        region.u32_at(e + E_NEXT)?.store(next, Ordering::Relaxed);
    }
    Some(())
}

/// The owner's handle on its database.
#[derive(Debug)]
pub struct RequestDb {
    region: Region,
    base: usize,
    cap: u32,
    free_head: u32,
    outstanding: u32,
}

impl RequestDb {
    /// Take over the database at `base`: rebuild the free list from the entries' states (so
    /// that entries still SENT or REPLIED from a previous incarnation stay outstanding).
    pub fn attach(region: &Region, base: usize, cap: u32) -> Result<RequestDb, Corruption> {
        // The per-request accesses below rely on this check, done once.
        let len = (cap as usize)
            .checked_mul(DB_ENTRY_LEN)
            .ok_or(Corruption::RequestDb)?;
        if base % DB_ENTRY_LEN != 0 || !region.contains(base, len) {
            return Err(Corruption::RequestDb);
        }
        let mut db = RequestDb {
            region: *region,
            base,
            cap,
            free_head: NONE,
            outstanding: 0,
        };
        for i in (0..cap).rev() {
            match db.get(i, E_STATE)? {
                FREE => {
                    db.set(i, E_NEXT, db.free_head)?;
                    db.free_head = i;
                }
                SENT | REPLIED => db.outstanding += 1,
                _ => return Err(Corruption::RequestDb),
            }
        }
        Ok(db)
    }

    #[inline(always)]
    fn field(&self, index: u32, field: usize) -> usize {
        self.base + index as usize * DB_ENTRY_LEN + field
    }

    #[inline(always)]
    fn get(&self, index: u32, field: usize) -> Result<u32, Corruption> {
        self.region
            .u32_at(self.field(index, field))
            .map(|a| a.load(Ordering::Relaxed))
            .ok_or(Corruption::RequestDb)
    }

    #[inline(always)]
    fn set(&self, index: u32, field: usize, v: u32) -> Result<(), Corruption> {
        self.region
            .u32_at(self.field(index, field))
            .map(|a| a.store(v, Ordering::Relaxed))
            .ok_or(Corruption::RequestDb)
    }

    /// Entry `index` as sixteen 32-bit words. `index` must be below the capacity (checked by
    /// the caller).
    #[inline(always)]
    fn words(&self, index: u32) -> &[AtomicU32; 16] {
        debug_assert!(index < self.cap);
        // SAFETY: `index < cap` (caller), and `attach` checked that the `cap` entries from
        // `base` lie inside the region, 64-aligned; the 64 bytes of an entry are sixteen
        // `AtomicU32`s as they are eight `AtomicU64`s.
        unsafe {
            &*(self
                .region
                .slot_unchecked(self.field(index, 0))
                .as_ptr()
                .cast::<[AtomicU32; 16]>())
        }
    }

    /// The inline words of entry `index` (bytes 24..64 of the entry). `index` must be below
    /// the capacity.
    #[inline(always)]
    fn inline_words(&self, index: u32) -> &[AtomicU64] {
        debug_assert!(index < self.cap);
        // SAFETY: as in `words`.
        let e = unsafe { self.region.slot_unchecked(self.field(index, 0)) };
        &e[E_INLINE / 8..]
    }

    /// The words of `id`'s entry if the id names an entry in state `state` (in range, live
    /// generation).
    #[inline(always)]
    fn entry_in(&self, id: RequestId, state: u32) -> Option<&[AtomicU32; 16]> {
        let i = id.index();
        if i >= self.cap || id.generation() == 0 {
            return None;
        }
        let e = self.words(i);
        if e[w(E_STATE)].load(Ordering::Relaxed) != state
            || e[w(E_GEN)].load(Ordering::Relaxed) != id.generation()
        {
            return None;
        }
        Some(e)
    }

    /// Index of the entry (and so of the pool buffer) that the next [`alloc`](Self::alloc)
    /// takes, if any is free: a request's payload can be built in its buffer before the
    /// entry is allocated.
    #[inline(always)]
    pub fn next_free(&self) -> Option<u32> {
        // `free_head` is private and only ever set to NONE or an index below `cap`.
        (self.free_head != NONE).then_some(self.free_head)
    }

    /// Allocate an entry for a new request. `Ok(None)`: all entries are in use.
    #[inline(always)]
    pub fn alloc(&mut self, entry: &Entry) -> Result<Option<RequestId>, Corruption> {
        let i = self.free_head;
        if i == NONE {
            return Ok(None);
        }
        if i >= self.cap {
            return Err(Corruption::RequestDb);
        }
        let e = self.words(i);
        if e[w(E_STATE)].load(Ordering::Relaxed) != FREE {
            return Err(Corruption::RequestDb);
        }
        let next = e[w(E_NEXT)].load(Ordering::Relaxed);
        if next != NONE && next >= self.cap {
            return Err(Corruption::RequestDb);
        }
        let generation = match e[w(E_GEN)].load(Ordering::Relaxed).wrapping_add(1) {
            0 => 1,
            g => g,
        };
        e[w(E_GEN)].store(generation, Ordering::Relaxed);
        e[w(E_OPCODE)].store(u32::from(entry.opcode), Ordering::Relaxed);
        e[w(E_OFF)].store(entry.payload_off, Ordering::Relaxed);
        e[w(E_LEN)].store(entry.payload_len, Ordering::Relaxed);
        let inline = self.inline_words(i);
        for (cell, v) in inline.iter().zip(entry.inline) {
            cell.store(v, Ordering::Relaxed);
        }
        e[w(E_STATE)].store(SENT, Ordering::Relaxed);
        self.free_head = next;
        self.outstanding += 1;
        Ok(Some(RequestId::new(i, generation)))
    }

    /// The entry of `id` if it is in state `state`; `None` if `id` does not name such an entry.
    pub fn lookup(&self, id: RequestId, state: u32) -> Result<Option<Entry>, Corruption> {
        let Some(e) = self.entry_in(id, state) else {
            return Ok(None);
        };
        #[allow(clippy::cast_possible_truncation)]
        let mut entry = Entry {
            opcode: e[w(E_OPCODE)].load(Ordering::Relaxed) as u16,
            payload_off: e[w(E_OFF)].load(Ordering::Relaxed),
            payload_len: e[w(E_LEN)].load(Ordering::Relaxed),
            inline: [0; INLINE_WORDS],
        };
        let inline = self.inline_words(id.index());
        for (v, cell) in entry.inline.iter_mut().zip(inline) {
            *v = cell.load(Ordering::Relaxed);
        }
        Ok(Some(entry))
    }

    /// Record the reply to `id`: SENT -> REPLIED, returning the request's opcode.
    /// `Ok(None)`: `id` is not a SENT request (a stale or forged reply; nothing changes).
    #[inline(always)]
    pub fn take_reply(&mut self, id: RequestId) -> Result<Option<u16>, Corruption> {
        let Some(e) = self.entry_in(id, SENT) else {
            return Ok(None);
        };
        #[allow(clippy::cast_possible_truncation)]
        let opcode = e[w(E_OPCODE)].load(Ordering::Relaxed) as u16;
        e[w(E_STATE)].store(REPLIED, Ordering::Relaxed);
        Ok(Some(opcode))
    }

    /// Move `id` from `from` to `to` (SENT -> REPLIED on a reply). `Ok(false)`: `id` is not
    /// in state `from`.
    pub fn transition(&mut self, id: RequestId, from: u32, to: u32) -> Result<bool, Corruption> {
        let Some(e) = self.entry_in(id, from) else {
            return Ok(false);
        };
        e[w(E_STATE)].store(to, Ordering::Relaxed);
        Ok(true)
    }

    /// Return `id` (in state `from`) to the free list. `Ok(false)`: `id` is not in that state.
    #[inline(always)]
    pub fn free(&mut self, id: RequestId, from: u32) -> Result<bool, Corruption> {
        let Some(e) = self.entry_in(id, from) else {
            return Ok(false);
        };
        e[w(E_STATE)].store(FREE, Ordering::Relaxed);
        e[w(E_NEXT)].store(self.free_head, Ordering::Relaxed);
        self.free_head = id.index();
        self.outstanding = self.outstanding.saturating_sub(1);
        Ok(true)
    }

    /// The id of entry `index` if it is SENT (for listing outstanding requests).
    pub fn sent_at(&self, index: u32) -> Result<Option<RequestId>, Corruption> {
        if index >= self.cap || self.get(index, E_STATE)? != SENT {
            return Ok(None);
        }
        Ok(Some(RequestId::new(index, self.get(index, E_GEN)?)))
    }

    /// Entries allocated and not freed.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Number of entries.
    pub fn capacity(&self) -> u32 {
        self.cap
    }
}

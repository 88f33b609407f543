//! The single-producer single-consumer ring of 64-byte messages.
//!
//! The known techniques, in the Lamport/FastForward/rtrb line:
//!
//! * **The slot says whether it is full.** Each message carries in its control word (word 1)
//!   a *lap tag* computed from its index, written last, with release ordering. The consumer
//!   polls the tag of the next slot, so a message costs one cache-line transfer, as in
//!   FastForward, instead of one for a shared index plus one for the slot (Lamport, rtrb).
//! * **Cached peer index.** The producer keeps a private copy of the consumer's index and
//!   reads the shared one only when the copy says the ring is full.
//! * **Batched index publication.** The consumer publishes `head` when it has caught up or
//!   after a quarter of the ring, so that line moves rarely. The producer's `tail` is not
//!   needed to find messages: [`Producer::publish`] stores it for observers (the VMM's
//!   occupancy figures) and for a restarted producer, which also rescans the tags after it.
//! * **No false sharing.** `tail`, `head` and the slots live on different 128-byte spans; each
//!   index is written by one side only, and each slot is one cache line.
//!
//! ```text
//!   tag(i) = ((i >> log2(depth)) + 1) mod 256     (the lap of index i, never 0 in lap 0)
//!   word 1 of slot i & (depth - 1):  opcode | flags << 16 | tag(i) << 24 | status << 32
//! ```
//!
//! A slot holds either the message of index `i` or that of `i - depth` (the producer never
//! runs more than `depth` ahead of the consumer's published head), whose tags differ, so the
//! tag alone tells a new message from an old one; a zeroed ring has tag 0 everywhere, which
//! no message of the first lap carries.
//!
//! Indices are free-running `u32`s (slot = index & (depth - 1)). The peer's index is never
//! trusted: `tail - head` must stay within `0..=depth` from the producer's own, private
//! index, otherwise the ring reports [`Corruption::RingIndex`]. A slot's position comes only
//! from the reader's or writer's private index, so it is in bounds whatever the peer writes:
//! [`Producer::attach`] and [`Consumer::attach`] check once that the ring lies inside the
//! region, and the per-message accesses rely on that check. A peer that forges a tag makes
//! the consumer read whatever the slot holds, which the endpoint validates like any message.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::Corruption;
use crate::layout::RingLayout;
use crate::region::Region;
use crate::wire::{Words, MESSAGE_SIZE, TAG_MASK, TAG_SHIFT};

/// The shared parts of one ring, checked once to lie inside the region.
#[derive(Clone, Copy, Debug)]
struct Shared {
    region: Region,
    ring: RingLayout,
    mask: u32,
    /// log2(depth): index >> shift is the lap.
    shift: u32,
}

impl Shared {
    /// Check that `ring` (its two indices and `depth` slots) lies inside `region`, aligned.
    fn new(region: &Region, ring: RingLayout) -> Result<Shared, Corruption> {
        let slots_len = (ring.depth as usize)
            .checked_mul(MESSAGE_SIZE)
            .ok_or(Corruption::BadHeader)?;
        if !ring.depth.is_power_of_two()
            || region.u32_at(ring.tail).is_none()
            || region.u32_at(ring.head).is_none()
            || ring.slots % MESSAGE_SIZE != 0
            || !region.contains(ring.slots, slots_len)
        {
            return Err(Corruption::BadHeader);
        }
        Ok(Shared {
            region: *region,
            ring,
            mask: ring.depth - 1,
            shift: ring.depth.trailing_zeros(),
        })
    }

    #[inline(always)]
    fn tail(&self) -> &AtomicU32 {
        // SAFETY: `new` checked that `ring.tail` is an aligned `u32` inside the region.
        unsafe { self.region.u32_unchecked(self.ring.tail) }
    }

    #[inline(always)]
    fn head(&self) -> &AtomicU32 {
        // SAFETY: `new` checked that `ring.head` is an aligned `u32` inside the region.
        unsafe { self.region.u32_unchecked(self.ring.head) }
    }

    /// The slot of free-running index `index`.
    #[inline(always)]
    fn slot(&self, index: u32) -> &[AtomicU64; 8] {
        let off = self.ring.slots + (index & self.mask) as usize * MESSAGE_SIZE;
        // SAFETY: `index & mask < depth`, and `new` checked that the `depth` slots from
        // `ring.slots` lie inside the region, 64-aligned (the region's base is too).
        unsafe { self.region.slot_unchecked(off) }
    }

    /// The lap tag of index `index`, in place in word 1.
    #[inline(always)]
    fn tag(&self, index: u32) -> u64 {
        u64::from((index >> self.shift).wrapping_add(1) & 0xff) << TAG_SHIFT
    }

    /// Whether the slot of `index` holds the message of `index`, and its word 1 (loaded with
    /// `order`).
    #[inline(always)]
    fn is_written(&self, index: u32, order: Ordering) -> (bool, u64) {
        let w1 = self.slot(index)[1].load(order);
        (w1 & TAG_MASK == self.tag(index), w1)
    }
}

/// The writing end of a ring (private state; the ring itself is in the region).
#[derive(Debug)]
pub struct Producer {
    shared: Shared,
    /// Next index to write.
    tail: u32,
    /// Last index stored to the shared `tail`.
    published: u32,
    /// Last `head` read from the consumer.
    head_cache: u32,
}

/// The reading end of a ring (private state; the ring itself is in the region).
#[derive(Debug)]
pub struct Consumer {
    shared: Shared,
    /// Next index to read.
    head: u32,
    /// Last index stored to the shared `head`.
    published: u32,
    /// Consumed entries after which `head` is published even if more are waiting.
    batch: u32,
}

impl Producer {
    /// Take over the producing end of `ring` in `region`, continuing where the messages in
    /// the region end: from the shared `tail`, past every slot that already holds the
    /// message of its index (a previous incarnation may have written some without storing
    /// `tail`). In a fresh region that is index 0.
    pub fn attach(region: &Region, ring: RingLayout) -> Result<Producer, Corruption> {
        let shared = Shared::new(region, ring)?;
        let published = shared.tail().load(Ordering::Relaxed);
        let head = shared.head().load(Ordering::Acquire);
        if published.wrapping_sub(head) > ring.depth {
            return Err(Corruption::RingIndex);
        }
        let mut tail = published;
        while tail.wrapping_sub(head) < ring.depth && shared.is_written(tail, Ordering::Relaxed).0 {
            tail = tail.wrapping_add(1);
        }
        Ok(Producer {
            shared,
            tail,
            published,
            head_cache: head,
        })
    }

    /// Write a message into the next slot, visible to the consumer at once. Bits
    /// `TAG_SHIFT..TAG_SHIFT + 8` of `words[1]` are replaced by the slot's tag.
    /// `Ok(false)`: the ring is full.
    #[inline(always)]
    pub fn push(&mut self, words: &Words) -> Result<bool, Corruption> {
        if self.tail.wrapping_sub(self.head_cache) >= self.shared.ring.depth && !self.refresh()? {
            return Ok(false);
        }
        let cells = self.shared.slot(self.tail);
        for i in [0, 2, 3, 4, 5, 6, 7] {
            cells[i].store(words[i], Ordering::Relaxed);
        }
        // Release: the other words happen-before a consumer's acquire load of this one.
        cells[1].store(
            words[1] & !TAG_MASK | self.shared.tag(self.tail),
            Ordering::Release,
        );
        self.tail = self.tail.wrapping_add(1);
        Ok(true)
    }

    /// Whether the next [`push`](Self::push) would find room (reads the consumer's index only
    /// when the cached one says the ring is full).
    #[inline]
    pub fn has_room(&mut self) -> Result<bool, Corruption> {
        if self.tail.wrapping_sub(self.head_cache) < self.shared.ring.depth {
            return Ok(true);
        }
        self.refresh()
    }

    /// The ring looks full: read the consumer's real index. Returns whether there is room.
    #[inline(never)]
    fn refresh(&mut self) -> Result<bool, Corruption> {
        let depth = self.shared.ring.depth;
        let head = self.shared.head().load(Ordering::Acquire);
        // The consumer cannot be ahead of what we produced, nor behind our last view.
        if self.tail.wrapping_sub(head) > depth
            || head.wrapping_sub(self.head_cache) > self.tail.wrapping_sub(self.head_cache)
        {
            return Err(Corruption::RingIndex);
        }
        self.head_cache = head;
        Ok(self.tail.wrapping_sub(head) < depth)
    }

    /// Store `tail` for observers (messages are visible without it). Returns whether
    /// anything was pushed since the last call.
    #[inline(always)]
    pub fn publish(&mut self) -> bool {
        if self.published == self.tail {
            return false;
        }
        self.shared.tail().store(self.tail, Ordering::Release);
        self.published = self.tail;
        true
    }

    /// Check that the shared `tail`, which only this side writes, holds what it stored.
    #[inline]
    pub fn verify(&self) -> Result<(), Corruption> {
        if self.shared.tail().load(Ordering::Relaxed) == self.published {
            Ok(())
        } else {
            Err(Corruption::RingIndex)
        }
    }

    /// Free slots as far as this side knows (may be fewer than the truth).
    pub fn free_slots(&self) -> u32 {
        let depth = self.shared.ring.depth;
        depth - self.tail.wrapping_sub(self.head_cache).min(depth)
    }

    /// The ring's capacity.
    pub fn depth(&self) -> u32 {
        self.shared.ring.depth
    }
}

impl Consumer {
    /// Take over the consuming end of `ring` in `region`, continuing from the shared `head`
    /// (so messages a previous incarnation took without publishing `head` come again).
    pub fn attach(region: &Region, ring: RingLayout) -> Result<Consumer, Corruption> {
        let shared = Shared::new(region, ring)?;
        let head = shared.head().load(Ordering::Relaxed);
        Ok(Consumer {
            shared,
            head,
            published: head,
            batch: (ring.depth / 4).max(1),
        })
    }

    /// Read the next message, if one is there. Its fields are not validated; that is the
    /// endpoint's job. The tag bits of word 1 come back as zero.
    #[inline(always)]
    pub fn pop(&mut self) -> Option<Words> {
        // Acquire: pairs with the producer's release store of word 1.
        let (written, w1) = self.shared.is_written(self.head, Ordering::Acquire);
        if !written {
            // Caught up: give the consumed slots back.
            self.publish();
            return None;
        }
        let cells = self.shared.slot(self.head);
        let mut words: Words = core::array::from_fn(|i| cells[i].load(Ordering::Relaxed));
        words[1] = w1 & !TAG_MASK;
        self.head = self.head.wrapping_add(1);
        if self.head.wrapping_sub(self.published) >= self.batch {
            self.publish();
        }
        Some(words)
    }

    /// Give consumed slots back to the producer.
    #[inline(always)]
    pub fn publish(&mut self) {
        if self.published != self.head {
            // Release: our reads of the slots happen-before the producer reuses them.
            self.shared.head().store(self.head, Ordering::Release);
            self.published = self.head;
        }
    }

    /// Check that the shared `head`, which only this side writes, holds what it stored.
    #[inline]
    pub fn verify(&self) -> Result<(), Corruption> {
        if self.shared.head().load(Ordering::Relaxed) == self.published {
            Ok(())
        } else {
            Err(Corruption::RingIndex)
        }
    }

    /// Whether a message is waiting. Uses a relaxed load: callers that need ordering put a
    /// fence before it.
    #[inline]
    pub fn has_pending(&self) -> bool {
        self.shared.is_written(self.head, Ordering::Relaxed).0
    }
}

/// Entries in a ring as seen by a third party (the VMM), from the shared indices (so
/// messages pushed since the producer last stored `tail` are not counted, and a consumer
/// ahead of the stored `tail` reads as empty). Clamped to `0..=depth`, so a corrupt ring
/// reads as empty or full rather than as nonsense.
pub fn occupancy(region: &Region, ring: &RingLayout) -> u32 {
    let get = |off| region.u32_at(off).map_or(0, |a| a.load(Ordering::Relaxed));
    let n = get(ring.tail).wrapping_sub(get(ring.head));
    // Indices are free-running: a "negative" distance is a consumer ahead of `tail`.
    if n > u32::MAX / 2 {
        0
    } else {
        n.min(ring.depth)
    }
}

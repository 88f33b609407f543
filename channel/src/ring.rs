//! The single-producer single-consumer ring of 64-byte messages.
//!
//! The known techniques, in the Lamport/FastForward/rtrb line:
//!
//! * **No false sharing.** The producer's index (`tail`), the consumer's index (`head`) and
//!   the slots live on different 128-byte spans; each index is written by one side only.
//! * **Cached peer index.** Each side keeps a private copy of the other's index and reads the
//!   shared one only when the copy says the ring is full (producer) or empty (consumer).
//! * **Batched index publication.** The producer writes slots and publishes `tail` once per
//!   batch ([`Producer::publish`]); the consumer publishes `head` when it has caught up with
//!   its cached `tail` or after a quarter of the ring, so the peer's line moves rarely.
//!
//! Indices are free-running `u32`s (slot = index & (depth - 1)). The peer's index is never
//! trusted: `tail - head` must stay within `0..=depth` from the reader's own, private index,
//! otherwise the ring reports [`Corruption::RingIndex`].

use core::sync::atomic::Ordering;

use crate::error::Corruption;
use crate::layout::RingLayout;
use crate::region::Region;
use crate::wire::{Message, MESSAGE_SIZE, MESSAGE_WORDS};

/// The writing end of a ring (private state; the ring itself is in the region).
#[derive(Debug)]
pub struct Producer {
    ring: RingLayout,
    mask: u32,
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
    ring: RingLayout,
    mask: u32,
    /// Next index to read.
    head: u32,
    /// Last index stored to the shared `head`.
    published: u32,
    /// Last `tail` read from the producer.
    tail_cache: u32,
    /// Consumed entries after which `head` is published even if more are cached.
    batch: u32,
}

#[inline(always)]
fn load(region: &Region, off: usize, order: Ordering) -> Result<u32, Corruption> {
    region
        .u32_at(off)
        .map(|a| a.load(order))
        .ok_or(Corruption::BadHeader)
}

#[inline(always)]
fn store(region: &Region, off: usize, v: u32, order: Ordering) -> Result<(), Corruption> {
    region
        .u32_at(off)
        .map(|a| a.store(v, order))
        .ok_or(Corruption::BadHeader)
}

impl Producer {
    /// Take over the producing end, continuing from the indices found in the region (which
    /// are zero in a fresh region, and where a previous incarnation stopped otherwise).
    pub fn attach(region: &Region, ring: RingLayout) -> Result<Producer, Corruption> {
        let tail = load(region, ring.tail, Ordering::Relaxed)?;
        let head = load(region, ring.head, Ordering::Acquire)?;
        if tail.wrapping_sub(head) > ring.depth {
            return Err(Corruption::RingIndex);
        }
        Ok(Producer {
            ring,
            mask: ring.depth - 1,
            tail,
            published: tail,
            head_cache: head,
        })
    }

    /// Write `msg` into the next slot without publishing it. `Ok(false)`: the ring is full
    /// (the caller must then publish what it staged, or the consumer may never see it).
    #[inline]
    pub fn push(&mut self, region: &Region, msg: &Message) -> Result<bool, Corruption> {
        if self.tail.wrapping_sub(self.head_cache) >= self.ring.depth {
            // Looks full: look at the consumer's real index.
            let head = load(region, self.ring.head, Ordering::Acquire)?;
            // The consumer cannot be ahead of what we produced, nor behind our last view.
            if self.tail.wrapping_sub(head) > self.ring.depth
                || head.wrapping_sub(self.head_cache) > self.tail.wrapping_sub(self.head_cache)
            {
                return Err(Corruption::RingIndex);
            }
            self.head_cache = head;
            if self.tail.wrapping_sub(head) >= self.ring.depth {
                return Ok(false);
            }
        }
        let slot = self.ring.slots + (self.tail & self.mask) as usize * MESSAGE_SIZE;
        let words = msg.encode();
        let cells = region.slot_at(slot).ok_or(Corruption::BadHeader)?;
        for (cell, w) in cells.iter().zip(words) {
            cell.store(w, Ordering::Relaxed);
        }
        self.tail = self.tail.wrapping_add(1);
        Ok(true)
    }

    /// Make every pushed message visible to the consumer. Returns whether anything was new.
    #[inline]
    pub fn publish(&mut self, region: &Region) -> Result<bool, Corruption> {
        if self.published == self.tail {
            return Ok(false);
        }
        // Release: the slot writes above happen-before a consumer's acquire load of `tail`.
        store(region, self.ring.tail, self.tail, Ordering::Release)?;
        self.published = self.tail;
        Ok(true)
    }

    /// Messages pushed but not yet published.
    pub fn unpublished(&self) -> u32 {
        self.tail.wrapping_sub(self.published)
    }

    /// Free slots as far as this side knows (may be fewer than the truth).
    pub fn free_slots(&self) -> u32 {
        self.ring.depth - self.tail.wrapping_sub(self.head_cache).min(self.ring.depth)
    }

    /// The ring's capacity.
    pub fn depth(&self) -> u32 {
        self.ring.depth
    }
}

impl Consumer {
    /// Take over the consuming end, continuing from the indices found in the region.
    pub fn attach(region: &Region, ring: RingLayout) -> Result<Consumer, Corruption> {
        let head = load(region, ring.head, Ordering::Relaxed)?;
        let tail = load(region, ring.tail, Ordering::Acquire)?;
        if tail.wrapping_sub(head) > ring.depth {
            return Err(Corruption::RingIndex);
        }
        Ok(Consumer {
            ring,
            mask: ring.depth - 1,
            head,
            published: head,
            tail_cache: head,
            batch: (ring.depth / 4).max(1),
        })
    }

    /// Read the next message, if one is published. The message's fields are not validated
    /// beyond its flags; that is the endpoint's job.
    #[inline]
    pub fn pop(&mut self, region: &Region) -> Result<Option<Message>, Corruption> {
        if self.head == self.tail_cache && !self.refresh(region)? {
            return Ok(None);
        }
        let slot = self.ring.slots + (self.head & self.mask) as usize * MESSAGE_SIZE;
        let cells = region.slot_at(slot).ok_or(Corruption::BadHeader)?;
        let mut words = [0u64; MESSAGE_WORDS];
        for (w, cell) in words.iter_mut().zip(cells) {
            *w = cell.load(Ordering::Relaxed);
        }
        self.head = self.head.wrapping_add(1);
        if self.head.wrapping_sub(self.published) >= self.batch {
            self.publish(region)?;
        }
        Message::decode(&words).map(Some)
    }

    /// Caught up with the cached tail: publish `head` and read the real `tail`.
    /// Returns whether there is something to read.
    #[inline]
    fn refresh(&mut self, region: &Region) -> Result<bool, Corruption> {
        self.publish(region)?;
        let tail = load(region, self.ring.tail, Ordering::Acquire)?;
        if tail.wrapping_sub(self.head) > self.ring.depth {
            return Err(Corruption::RingIndex);
        }
        self.tail_cache = tail;
        Ok(tail != self.head)
    }

    /// Give consumed slots back to the producer.
    #[inline]
    pub fn publish(&mut self, region: &Region) -> Result<(), Corruption> {
        if self.published != self.head {
            // Release: our reads of the slots happen-before the producer reuses them.
            store(region, self.ring.head, self.head, Ordering::Release)?;
            self.published = self.head;
        }
        Ok(())
    }

    /// Whether a message is waiting, reading the producer's index if the cache says empty.
    /// Uses a relaxed load: callers that need ordering put a fence before it.
    #[inline]
    pub fn has_pending(&self, region: &Region) -> Result<bool, Corruption> {
        if self.head != self.tail_cache {
            return Ok(true);
        }
        let tail = load(region, self.ring.tail, Ordering::Relaxed)?;
        if tail.wrapping_sub(self.head) > self.ring.depth {
            return Err(Corruption::RingIndex);
        }
        Ok(tail != self.head)
    }

    /// Messages waiting as far as this side last looked (no shared-memory access).
    pub fn cached_len(&self) -> u32 {
        self.tail_cache.wrapping_sub(self.head)
    }
}

/// Entries in a ring as seen by a third party (the VMM), from the shared indices. Clamped to
/// the depth, so a corrupt ring reads as full rather than as nonsense.
pub fn occupancy(region: &Region, ring: &RingLayout) -> u32 {
    let tail = load(region, ring.tail, Ordering::Relaxed).unwrap_or(0);
    let head = load(region, ring.head, Ordering::Relaxed).unwrap_or(0);
    tail.wrapping_sub(head).min(ring.depth)
}

//! The driver's half of a split virtqueue (virtio 1.2 §2.7) with `EVENT_IDX`.
//!
//! ```text
//!  add(chain)    descriptors from the private free list → desc table; head → avail ring
//!  publish()     avail.idx = new (release); fence; kick iff vring_need_event(avail_event, new, old)
//!  pop_used()    used.idx (acquire) ≠ last_used → entry checked: id a chain in flight? len ≤ offered?
//!  arm()         before halting only: used_event = last_used; fence; re-check used.idx
//! ```
//!
//! While the driver polls it leaves `used_event` where it was, behind the device's
//! progress, so the device's `needs_notification` stays false and it sends no
//! interrupt; only [`SplitQueue::arm`], called right before the driver halts, asks for
//! one (the announce, fence, re-check pattern of the channels' sleep protocol). The
//! device does the same with `avail_event`: while it polls it does not move it, and
//! [`SplitQueue::publish`] then asks for no kick.
//!
//! The driver never reads back what it wrote to the descriptor table (the chain links
//! live in a private array), and every used entry is checked before its id is used.
//! Without `EVENT_IDX` the queue falls back to the ring flags (`NO_INTERRUPT`,
//! `NO_NOTIFY`).

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use compart_abi::virtio::{
    avail_ring_size, desc_table_size, used_ring_size, vring_need_event, DESC_F_NEXT, DESC_F_WRITE,
    DESC_TABLE_ALIGN, USED_RING_ALIGN,
};

use crate::Ram;

/// `avail.flags`: the driver wants no interrupt (without `EVENT_IDX`).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags`: the device wants no kick (without `EVENT_IDX`).
const USED_F_NO_NOTIFY: u16 = 1;

/// Where a queue's three parts lie in guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// The descriptor table (16-byte aligned).
    pub desc: u64,
    /// The available ring (driver area).
    pub avail: u64,
    /// The used ring (device area, 4-byte aligned).
    pub used: u64,
}

impl QueueLayout {
    /// The layout of a queue of `size` entries placed from `base` (16-byte aligned)
    /// on, and the first address after it.
    pub fn at(base: u64, size: u16) -> (QueueLayout, u64) {
        let desc = base.next_multiple_of(DESC_TABLE_ALIGN);
        let avail = desc + desc_table_size(size);
        let used = (avail + avail_ring_size(size)).next_multiple_of(USED_RING_ALIGN);
        let end = used + used_ring_size(size);
        (QueueLayout { desc, avail, used }, end)
    }

    /// Bytes [`at`](Self::at) needs from a 16-byte aligned base.
    pub fn bytes(size: u16) -> u64 {
        let (l, end) = QueueLayout::at(0, size);
        debug_assert_eq!(l.desc, 0);
        end
    }
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it (receive) or reads it (transmit).
    pub device_writes: bool,
}

/// A chain the device has finished with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// The chain's head descriptor (what [`SplitQueue::add`] returned).
    pub head: u16,
    /// Bytes the device wrote into the chain's writable buffers.
    pub len: u32,
}

/// A used entry that does not hold: counted, and the chain it names (if any is in
/// flight) reclaimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadUsed {
    /// The id names no chain in flight (out of range, or not posted): nothing to reclaim.
    UnknownId {
        /// The id the device wrote.
        id: u32,
    },
    /// The length exceeds the chain's writable bytes; the chain is reclaimed anyway.
    TooLong {
        /// The chain's head.
        head: u16,
        /// The length the device wrote.
        len: u32,
    },
}

/// What a queue counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Chains added.
    pub added: u64,
    /// Used entries that held.
    pub used: u64,
    /// Used entries that did not ([`BadUsed`]).
    pub bad_used: u64,
    /// Publications after which the device asked for a kick.
    pub kicks: u64,
}

/// Why a chain could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    /// Fewer free descriptors than the chain has buffers.
    Full,
    /// A chain needs at least one buffer.
    Empty,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Descriptors in the chain.
    descs: u16,
    /// Bytes the device may write.
    writable: u32,
}

/// The driver's half of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue<R: Ram> {
    ram: R,
    size: u16,
    layout: QueueLayout,
    event_idx: bool,
    /// Free descriptor indices.
    free: Vec<u16>,
    /// Private chain links: `next[d]` follows descriptor `d` in its chain.
    next: Vec<u16>,
    /// Per head descriptor: the chain in flight there.
    in_flight: Vec<Option<InFlight>>,
    /// The avail index the next chain takes.
    avail_idx: u16,
    /// The avail index last stored to the ring.
    published: u16,
    /// The used index up to which entries have been taken.
    last_used: u16,
    stats: QueueStats,
}

impl<R: Ram> SplitQueue<R> {
    /// A queue of `size` entries (a power of two) at `layout`, whose memory `ram`
    /// reaches; initialises the rings (the memory need not be zeroed). `event_idx`:
    /// whether `RING_EVENT_IDX` was negotiated.
    pub fn new(ram: R, layout: QueueLayout, size: u16, event_idx: bool) -> SplitQueue<R> {
        assert!(
            size.is_power_of_two(),
            "virtqueue size {size} is not a power of two"
        );
        let zero = vec![0u8; QueueLayout::bytes(size) as usize];
        ram.write(layout.desc, &zero[..desc_table_size(size) as usize]);
        ram.write(layout.avail, &zero[..avail_ring_size(size) as usize]);
        ram.write(layout.used, &zero[..used_ring_size(size) as usize]);
        let q = SplitQueue {
            ram,
            size,
            layout,
            event_idx,
            free: (0..size).rev().collect(),
            next: vec![0; usize::from(size)],
            in_flight: vec![None; usize::from(size)],
            avail_idx: 0,
            published: 0,
            last_used: 0,
            stats: QueueStats::default(),
        };
        // Start as a polling driver: used_event behind (no interrupt yet), or the flag.
        if event_idx {
            q.ram
                .store_u16(q.used_event_addr(), u16::MAX, Ordering::Relaxed);
        } else {
            q.ram
                .store_u16(q.layout.avail, AVAIL_F_NO_INTERRUPT, Ordering::Relaxed);
        }
        q
    }

    /// Its size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where it lies.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// What it counted.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// The memory it works in.
    pub fn ram(&self) -> &R {
        &self.ram
    }

    fn used_event_addr(&self) -> u64 {
        self.layout.avail + 4 + 2 * u64::from(self.size)
    }

    fn avail_event_addr(&self) -> u64 {
        self.layout.used + 4 + 8 * u64::from(self.size)
    }

    /// Put a chain of `bufs` into the available ring (not yet visible to the device:
    /// see [`publish`](Self::publish)). Returns its head.
    pub fn add(&mut self, bufs: &[Buffer]) -> Result<u16, AddError> {
        if bufs.is_empty() {
            return Err(AddError::Empty);
        }
        if bufs.len() > self.free.len() {
            return Err(AddError::Full);
        }
        let descs: Vec<u16> = (0..bufs.len()).filter_map(|_| self.free.pop()).collect();
        let mut writable = 0u32;
        for (i, (b, &d)) in bufs.iter().zip(&descs).enumerate() {
            let last = i + 1 == bufs.len();
            let next = if last { 0 } else { descs[i + 1] };
            let mut flags = if last { 0 } else { DESC_F_NEXT };
            if b.device_writes {
                flags |= DESC_F_WRITE;
                writable = writable.saturating_add(b.len);
            }
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&b.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&b.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.ram.write(self.layout.desc + 16 * u64::from(d), &raw);
            self.next[usize::from(d)] = next;
        }
        let head = descs[0];
        self.in_flight[usize::from(head)] = Some(InFlight {
            descs: bufs.len() as u16,
            writable,
        });
        let slot = u64::from(self.avail_idx % self.size);
        self.ram
            .write(self.layout.avail + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.stats.added += 1;
        Ok(head)
    }

    /// Make the chains added since the last call visible to the device. Returns whether
    /// the device asked to be notified of them (then the caller kicks, a `QUEUE_NOTIFY`
    /// store): with `EVENT_IDX`, when the new index passes the device's `avail_event`.
    pub fn publish(&mut self) -> bool {
        let (old, new) = (self.published, self.avail_idx);
        if old == new {
            return false;
        }
        self.ram
            .store_u16(self.layout.avail + 2, new, Ordering::Release);
        self.published = new;
        // The index store before the event read (the device's enable_notification
        // stores its event, fences, and re-reads our index).
        fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            let event = self
                .ram
                .load_u16(self.avail_event_addr(), Ordering::Relaxed);
            vring_need_event(event, new, old)
        } else {
            self.ram.load_u16(self.layout.used, Ordering::Relaxed) & USED_F_NO_NOTIFY == 0
        };
        if kick {
            self.stats.kicks += 1;
        }
        kick
    }

    /// Whether the device has used entries the driver has not taken.
    pub fn has_used(&self) -> bool {
        self.ram.load_u16(self.layout.used + 2, Ordering::Acquire) != self.last_used
    }

    /// Take the next used entry, checked: `None` when there is none.
    pub fn pop_used(&mut self) -> Option<Result<Used, BadUsed>> {
        let idx = self.ram.load_u16(self.layout.used + 2, Ordering::Acquire);
        if idx == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        self.last_used = self.last_used.wrapping_add(1);
        let mut raw = [0u8; 8];
        self.ram.read(self.layout.used + 4 + 8 * slot, &mut raw);
        let id = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let len = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let chain = usize::try_from(id)
            .ok()
            .and_then(|i| self.in_flight.get_mut(i))
            .and_then(Option::take);
        let Some(chain) = chain else {
            self.stats.bad_used += 1;
            return Some(Err(BadUsed::UnknownId { id }));
        };
        let head = id as u16;
        self.reclaim(head, chain.descs);
        if len > chain.writable {
            self.stats.bad_used += 1;
            return Some(Err(BadUsed::TooLong { head, len }));
        }
        self.stats.used += 1;
        Some(Ok(Used { head, len }))
    }

    fn reclaim(&mut self, head: u16, descs: u16) {
        let mut d = head;
        for _ in 0..descs {
            self.free.push(d);
            d = self.next[usize::from(d)];
        }
    }

    /// Before the driver halts: ask the device for an interrupt at its next used entry
    /// (`used_event = last_used`), then re-check. Returns whether used entries arrived
    /// meanwhile (then the driver must not halt; it polls on, and the request stays
    /// armed until the device passes it).
    pub fn arm(&mut self) -> bool {
        if self.event_idx {
            self.ram
                .store_u16(self.used_event_addr(), self.last_used, Ordering::Relaxed);
        } else {
            self.ram.store_u16(self.layout.avail, 0, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// After waking: without `EVENT_IDX`, ask for no interrupts again while polling
    /// (with it, nothing to do: `used_event` stays behind once the device passed it).
    pub fn disarm(&mut self) {
        if !self.event_idx {
            self.ram
                .store_u16(self.layout.avail, AVAIL_F_NO_INTERRUPT, Ordering::Relaxed);
        }
    }
}

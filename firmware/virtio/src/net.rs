//! The network device (virtio 1.2 §5.1) over a [`Transport`] and two
//! [`SplitQueue`]s, in one arena of driver memory:
//!
//! ```text
//!  arena:  [RX queue][TX queue][RX buffer 0 … n-1][TX slot 0 … m-1]
//!  RX buffer: one device-writable descriptor of RX_BUFFER_SIZE: NetHdr, then the frame
//!  TX slot:   a chain of two descriptors: [NetHdr (12 B)] [frame (≤ MAX_FRAME)]
//! ```
//!
//! Receive buffers hold a whole coalesced segment (`GUEST_TSO4/6` without
//! `MRG_RXBUF`: at least 65 562 bytes, §5.1.6.3.1). A received frame stays in its buffer
//! until the caller has copied it out ([`Net::rx_frame`]) and posts the buffer again
//! ([`Net::rx_repost`]); a transmit slot stays the device's until its used entry comes
//! back ([`Net::tx_poll`]). Nothing is visible to the device before [`Net::flush`],
//! which kicks a queue only if the device asked for it (`EVENT_IDX`).

use alloc::vec;
use alloc::vec::Vec;

use compart_abi::virtio::{
    feature, NetHdr, DEVICE_ID_NET, F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_TSO4,
    F_HOST_TSO6, F_MAC, F_MTU, F_RING_EVENT_IDX, F_VERSION_1, NET_HDR_SIZE, RX_QUEUE, TX_QUEUE,
};

use crate::queue::{BadUsed, Buffer, QueueLayout, QueueStats, SplitQueue};
use crate::transport::{InitError, Transport};
use crate::{Mmio, Ram};

/// The features the driver takes when the device offers them: virtio 1.x, the MAC and
/// MTU in configuration space, notification suppression, and the checksum and
/// segmentation offloads both ways (no `MRG_RXBUF`: receive buffers are large).
pub const WANTED: u64 = feature(F_VERSION_1)
    | feature(F_MAC)
    | feature(F_MTU)
    | feature(F_RING_EVENT_IDX)
    | feature(F_CSUM)
    | feature(F_GUEST_CSUM)
    | feature(F_HOST_TSO4)
    | feature(F_HOST_TSO6)
    | feature(F_GUEST_TSO4)
    | feature(F_GUEST_TSO6);

/// The largest frame either way: an Ethernet header and a 64 KiB IP packet (a GSO
/// super-frame), with room for a VLAN tag.
pub const MAX_FRAME: usize = 65_550;
/// Bytes of one receive buffer: the header and the largest frame, rounded to 64.
pub const RX_BUFFER_SIZE: usize = (NET_HDR_SIZE + MAX_FRAME).next_multiple_of(64);
/// Offset of the frame in a transmit slot (after its header).
pub const TX_FRAME_OFFSET: usize = 64;
/// Bytes of one transmit slot.
pub const TX_SLOT_SIZE: usize = TX_FRAME_OFFSET + MAX_FRAME.next_multiple_of(64);

const _: () = assert!(RX_BUFFER_SIZE >= 65_562);

/// How many buffers and how large queues, within what the device allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Receive queue size.
    pub rx_size: u16,
    /// Transmit queue size.
    pub tx_size: u16,
    /// Receive buffers (≤ `rx_size`).
    pub rx_buffers: u16,
    /// Transmit slots (≤ `tx_size / 2`: two descriptors each).
    pub tx_slots: u16,
}

fn floor_pow2(n: u16) -> u16 {
    if n == 0 {
        0
    } else {
        1 << (15 - n.leading_zeros())
    }
}

impl Plan {
    /// `rx_buffers` receive buffers and `tx_slots` transmit slots (both at least 1),
    /// fewer if the queues the device offers (`QUEUE_NUM_MAX`: `rx_max`, `tx_max`) are
    /// smaller.
    pub fn new(
        rx_max: u16,
        tx_max: u16,
        rx_buffers: u16,
        tx_slots: u16,
    ) -> Result<Plan, InitError> {
        if rx_max == 0 {
            return Err(InitError::NoQueue(RX_QUEUE));
        }
        if tx_max < 2 {
            return Err(InitError::NoQueue(TX_QUEUE));
        }
        let rx_size = rx_buffers
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << 15);
        let rx_size = rx_size.min(floor_pow2(rx_max));
        let tx_size = tx_slots
            .max(1)
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(1 << 15);
        let tx_size = tx_size.min(floor_pow2(tx_max));
        Ok(Plan {
            rx_size,
            tx_size,
            rx_buffers: rx_buffers.clamp(1, rx_size),
            tx_slots: tx_slots.clamp(1, tx_size / 2),
        })
    }

    /// Bytes of arena (from a 4 KiB aligned base) this plan needs.
    pub fn arena_bytes(&self) -> u64 {
        self.parts(0).4
    }

    /// Receive buffers that fit in `bytes` of arena with `tx_slots` slots, at most
    /// `rx_max` (what to ask for when memory, not the queue, is the limit).
    pub fn rx_buffers_for(bytes: u64, tx_slots: u16, rx_max: u16) -> u16 {
        let fixed = 2 * QueueLayout::bytes(rx_max.max(1)).next_multiple_of(4096)
            + u64::from(tx_slots) * TX_SLOT_SIZE as u64;
        let n = bytes.saturating_sub(fixed) / RX_BUFFER_SIZE as u64;
        u16::try_from(n).unwrap_or(u16::MAX).min(rx_max)
    }

    /// RX queue, TX queue, first RX buffer, first TX slot, end.
    fn parts(&self, base: u64) -> (QueueLayout, QueueLayout, u64, u64, u64) {
        let (rx, end) = QueueLayout::at(base, self.rx_size);
        let (tx, end) = QueueLayout::at(end.next_multiple_of(4096), self.tx_size);
        let rx_bufs = end.next_multiple_of(4096);
        let tx_slots = rx_bufs + u64::from(self.rx_buffers) * RX_BUFFER_SIZE as u64;
        let end = tx_slots + u64::from(self.tx_slots) * TX_SLOT_SIZE as u64;
        (rx, tx, rx_bufs, tx_slots, end)
    }
}

/// A received frame, still in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxFrame {
    /// The buffer holding it (give it back with [`Net::rx_repost`]).
    pub buffer: u16,
    /// Its virtio-net header, as the device wrote it (not yet checked).
    pub hdr: NetHdr,
    /// Bytes of frame after the header.
    pub len: usize,
}

/// A used entry the device should not have written (counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadEntry {
    /// The queue refused it ([`BadUsed`]).
    Used(BadUsed),
    /// A receive entry shorter than the virtio-net header (the buffer is posted again).
    Short {
        /// The length the device wrote.
        len: u32,
    },
}

/// Why a frame was not queued for transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError<E> {
    /// Every transmit slot is the device's.
    NoSlot,
    /// The frame is longer than [`MAX_FRAME`].
    TooLong,
    /// Filling the slot failed.
    Fill(E),
}

/// What the device counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames received (used receive entries that held).
    pub rx_frames: u64,
    /// Their bytes (after the header).
    pub rx_bytes: u64,
    /// Frames the device has transmitted (used transmit entries).
    pub tx_frames: u64,
    /// Their bytes (after the header).
    pub tx_bytes: u64,
    /// Used entries that did not hold, both queues.
    pub bad_used: u64,
    /// `QUEUE_NOTIFY` stores.
    pub kicks: u64,
}

/// The network device, set up and running (`DRIVER_OK`).
#[derive(Debug)]
pub struct Net<R: Ram + Clone, M: Mmio> {
    transport: Transport<M>,
    ram: R,
    rx: SplitQueue<R>,
    tx: SplitQueue<R>,
    rx_addr: Vec<u64>,
    /// Per RX head: the buffer posted there.
    rx_of_head: Vec<u16>,
    tx_addr: Vec<u64>,
    tx_len: Vec<u32>,
    tx_free: Vec<u16>,
    /// Per TX head: the slot posted there.
    tx_of_head: Vec<u16>,
    stats: NetStats,
    rx_short: u64,
}

impl<R: Ram + Clone, M: Mmio> Net<R, M> {
    /// Reset and negotiate with the network device behind `mmio` ([`WANTED`]).
    pub fn probe(mmio: M) -> Result<Transport<M>, InitError> {
        Transport::init(mmio, DEVICE_ID_NET, WANTED)
    }

    /// Set the device's queues up per `plan` in the arena at `base` (its
    /// [`Plan::arena_bytes`], reached through `ram`), post every receive buffer, and
    /// start the device (`DRIVER_OK`). On an error the device is left `FAILED`.
    pub fn start(
        transport: Transport<M>,
        ram: R,
        base: u64,
        plan: Plan,
    ) -> Result<Net<R, M>, InitError> {
        let (rx_l, tx_l, rx_bufs, tx_slots, _) = plan.parts(base);
        let event_idx = transport.has(F_RING_EVENT_IDX);
        for (q, size, l) in [
            (RX_QUEUE, plan.rx_size, &rx_l),
            (TX_QUEUE, plan.tx_size, &tx_l),
        ] {
            if let Err(e) = transport.setup_queue(q, size, l) {
                transport.fail();
                return Err(e);
            }
        }
        let mut net = Net {
            rx: SplitQueue::new(ram.clone(), rx_l, plan.rx_size, event_idx),
            tx: SplitQueue::new(ram.clone(), tx_l, plan.tx_size, event_idx),
            ram,
            rx_addr: (0..u64::from(plan.rx_buffers))
                .map(|i| rx_bufs + i * RX_BUFFER_SIZE as u64)
                .collect(),
            rx_of_head: vec![0; usize::from(plan.rx_size)],
            tx_addr: (0..u64::from(plan.tx_slots))
                .map(|i| tx_slots + i * TX_SLOT_SIZE as u64)
                .collect(),
            tx_len: vec![0; usize::from(plan.tx_slots)],
            tx_free: (0..plan.tx_slots).rev().collect(),
            tx_of_head: vec![0; usize::from(plan.tx_size)],
            stats: NetStats::default(),
            rx_short: 0,
            transport,
        };
        for b in 0..plan.rx_buffers {
            net.rx_repost(b);
        }
        net.transport.driver_ok();
        net.flush();
        Ok(net)
    }

    /// The transport (negotiated features, configuration space).
    pub fn transport(&self) -> &Transport<M> {
        &self.transport
    }

    /// What the device counted so far.
    pub fn stats(&self) -> NetStats {
        let (r, t) = (self.rx.stats(), self.tx.stats());
        NetStats {
            bad_used: r.bad_used + t.bad_used + self.rx_short,
            ..self.stats
        }
    }

    /// The queues' own counters (receive, transmit).
    pub fn queue_stats(&self) -> (QueueStats, QueueStats) {
        (self.rx.stats(), self.tx.stats())
    }

    /// Receive buffers and transmit slots.
    pub fn buffers(&self) -> (usize, usize) {
        (self.rx_addr.len(), self.tx_addr.len())
    }

    /// Post receive buffer `buffer` (again); visible after [`flush`](Self::flush).
    pub fn rx_repost(&mut self, buffer: u16) {
        let addr = self.rx_addr[usize::from(buffer)];
        let b = Buffer {
            addr,
            len: RX_BUFFER_SIZE as u32,
            device_writes: true,
        };
        // Each buffer is posted at most once and the queue has a descriptor per buffer.
        let head = self
            .rx
            .add(&[b])
            .expect("a free receive descriptor per buffer");
        self.rx_of_head[usize::from(head)] = buffer;
    }

    /// The next received frame, or a bad entry (counted; its buffer, if known, is
    /// posted again).
    pub fn rx_poll(&mut self) -> Option<Result<RxFrame, BadEntry>> {
        let used = match self.rx.pop_used()? {
            Ok(u) => u,
            Err(bad) => {
                if let BadUsed::TooLong { head, .. } = bad {
                    self.rx_repost(self.rx_of_head[usize::from(head)]);
                }
                return Some(Err(BadEntry::Used(bad)));
            }
        };
        let buffer = self.rx_of_head[usize::from(used.head)];
        if (used.len as usize) < NET_HDR_SIZE {
            self.rx_short += 1;
            self.rx_repost(buffer);
            return Some(Err(BadEntry::Short { len: used.len }));
        }
        let mut h = [0; NET_HDR_SIZE];
        self.ram.read(self.rx_addr[usize::from(buffer)], &mut h);
        let len = used.len as usize - NET_HDR_SIZE;
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += len as u64;
        Some(Ok(RxFrame {
            buffer,
            hdr: NetHdr::from_bytes(&h),
            len,
        }))
    }

    /// Run `f` on the bytes of received frame `frame` (before its buffer is posted again).
    pub fn rx_frame<T>(&self, frame: &RxFrame, f: impl FnOnce(&[u8]) -> T) -> T {
        let addr = self.rx_addr[usize::from(frame.buffer)] + NET_HDR_SIZE as u64;
        self.ram.with_bytes(addr, frame.len.min(MAX_FRAME), f)
    }

    /// Free transmit slots.
    pub fn tx_free(&self) -> usize {
        self.tx_free.len()
    }

    /// Queue a frame of `len` bytes with header `hdr`: `fill` writes the frame into the
    /// slot. Returns the slot, which [`tx_poll`](Self::tx_poll) names when the device is
    /// done with it. Visible to the device after [`flush`](Self::flush).
    pub fn tx_send<E>(
        &mut self,
        hdr: &NetHdr,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<u16, TxError<E>> {
        if len > MAX_FRAME {
            return Err(TxError::TooLong);
        }
        let Some(&slot) = self.tx_free.last() else {
            return Err(TxError::NoSlot);
        };
        let addr = self.tx_addr[usize::from(slot)];
        let frame = addr + TX_FRAME_OFFSET as u64;
        self.ram
            .with_bytes_mut(frame, len, fill)
            .map_err(TxError::Fill)?;
        self.ram.write(addr, &hdr.to_bytes());
        let chain = [
            Buffer {
                addr,
                len: NET_HDR_SIZE as u32,
                device_writes: false,
            },
            Buffer {
                addr: frame,
                len: len as u32,
                device_writes: false,
            },
        ];
        // Two descriptors per slot and a queue of at least twice the slots.
        let head = self
            .tx
            .add(&chain)
            .expect("two free transmit descriptors per slot");
        self.tx_free.pop();
        self.tx_len[usize::from(slot)] = len as u32;
        self.tx_of_head[usize::from(head)] = slot;
        Ok(slot)
    }

    /// The next transmit slot the device is done with, or a bad entry (counted).
    pub fn tx_poll(&mut self) -> Option<Result<u16, BadEntry>> {
        match self.tx.pop_used()? {
            Ok(u) => Some(Ok(self.tx_done(u.head))),
            // A transmit chain has no writable bytes: any length but 0 is "too long",
            // but the device is done with the chain all the same.
            Err(BadUsed::TooLong { head, .. }) => Some(Ok(self.tx_done(head))),
            Err(bad) => Some(Err(BadEntry::Used(bad))),
        }
    }

    fn tx_done(&mut self, head: u16) -> u16 {
        let slot = self.tx_of_head[usize::from(head)];
        self.tx_free.push(slot);
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += u64::from(self.tx_len[usize::from(slot)]);
        slot
    }

    /// Make everything posted visible to the device, and kick each queue whose device
    /// side asked for it. Returns the kicks made.
    pub fn flush(&mut self) -> u32 {
        let mut kicks = 0;
        if self.rx.publish() {
            self.transport.notify(RX_QUEUE);
            kicks += 1;
        }
        if self.tx.publish() {
            self.transport.notify(TX_QUEUE);
            kicks += 1;
        }
        self.stats.kicks += u64::from(kicks);
        kicks
    }

    /// Whether the transmit queue has used entries waiting.
    pub fn has_tx_used(&self) -> bool {
        self.tx.has_used()
    }

    /// Whether either queue has used entries waiting.
    pub fn has_used(&self) -> bool {
        self.rx.has_used() || self.tx.has_used()
    }

    /// Before halting: ask for an interrupt on both queues, then re-check. Returns
    /// whether used entries are waiting on the receive and on the transmit queue (then
    /// the caller polls instead of halting).
    pub fn arm(&mut self) -> (bool, bool) {
        (self.rx.arm(), self.tx.arm())
    }

    /// After waking (see [`SplitQueue::disarm`]).
    pub fn disarm(&mut self) {
        self.rx.disarm();
        self.tx.disarm();
    }
}

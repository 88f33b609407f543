//! The virtio-net device: what it offers (from what its TAP accepts and the topology
//! allows), its configuration space (MAC, MTU), and the data path one round at a time
//! for its thread (`net_thread.rs`): transmit chains go to the TAP, frames from the TAP
//! go into receive chains, and the driver is interrupted only when `EVENT_IDX` says
//! it asked to be.
//!
//! Frames cross with their 12-byte `virtio_net_hdr_v1` unchanged (the TAP uses the
//! same header, `TUNSETVNETHDRSZ(12)`); the device only sets `num_buffers = 1` on
//! receive. Each frame is copied once between guest memory and the device's buffer,
//! through `vm-memory`'s bounds-checked accessors, after its chain was checked
//! (`chain.rs`). A refused chain is handed back unused (length 0) and counted; a ring
//! the device cannot follow any more (an available index that jumps past the queue
//! size, a head outside the table) stops that device until the driver resets it
//! (`DEVICE_NEEDS_RESET`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use compart_abi::virtio::*;
use virtio_queue::{Error as QueueError, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{self, BadChain, Direction, Segment};
use super::tap::{NetBackend, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use super::VirtioDevice;
use crate::guest_events::{EventKind, GuestEvents};

/// Largest Ethernet frame the device moves: a 64 KiB IP packet (GSO) and its
/// Ethernet header.
pub const MAX_FRAME: usize = 65_535 + 14;
/// Largest chain content: header and frame.
pub const MAX_CHAIN_BYTES: usize = NET_HDR_SIZE + MAX_FRAME;
/// Chains a round takes from one queue at most, so that both directions progress.
const BATCH: usize = 256;

/// A NIC's settings, validated by the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Its name in logs and status (`nic[i]` or the TAP's name).
    pub name: String,
    /// MAC address the guest uses.
    pub mac: [u8; 6],
    /// MTU reported to the guest.
    pub mtu: u16,
    /// `QUEUE_NUM_MAX` of both queues (a power of two).
    pub queue_size: u16,
    /// The `TUN_F_*` offloads the topology allows (the device offers what the TAP also
    /// accepts).
    pub offloads: u32,
}

/// What a NIC has done, for `ctl status` (free-running totals since start).
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames from the guest written to the TAP.
    pub tx_packets: AtomicU64,
    /// Their bytes (without the virtio header).
    pub tx_bytes: AtomicU64,
    /// Frames from the guest dropped (TAP refused them, or offloads not negotiated).
    pub tx_drops: AtomicU64,
    /// Frames from the TAP delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Their bytes (without the virtio header).
    pub rx_bytes: AtomicU64,
    /// Frames from the TAP dropped (larger than the guest's buffer).
    pub rx_drops: AtomicU64,
    /// Descriptor chains refused.
    pub bad_chains: AtomicU64,
    /// Queue notifications (kicks) the device thread received.
    pub notifications: AtomicU64,
    /// Used-buffer interrupts sent to the guest.
    pub interrupts: AtomicU64,
    /// Time the device thread spent processing, in nanoseconds.
    pub busy_ns: AtomicU64,
    /// Times the device thread woke from sleep.
    pub wakeups: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What one round of processing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    /// Something was done, or more is waiting: run another round before sleeping.
    pub busy: bool,
    /// The guest has posted receive buffers and the TAP had nothing: wake on the TAP.
    pub wants_rx_frames: bool,
}

struct Active {
    queues: [Queue; 2],
    mem: GuestMemoryMmap,
    features: u64,
}

/// The network device behind a virtio-mmio transport.
pub struct Net {
    config: NetConfig,
    backend: Box<dyn NetBackend>,
    offered: u64,
    active: Option<Active>,
    broken: bool,
    /// Notifications were re-armed before the last sleep; suppress them again while
    /// busy (without EVENT_IDX that is the used ring's NO_NOTIFY flag).
    armed: bool,
    isr: u32,
    irq: Arc<EventFd>,
    kicks: [Arc<EventFd>; 2],
    wake: Arc<EventFd>,
    counters: Arc<NetCounters>,
    events: Arc<GuestEvents>,
    sizes: [u16; 2],
    buf: Vec<u8>,
    segs: Vec<Segment>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("config", &self.config)
            .field("offered", &format_args!("{:#x}", self.offered))
            .field("active", &self.active.is_some())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// The feature bits a device offers for a host side that accepts `accepted`
/// `TUN_F_*` offloads and a topology that allows `allowed`.
pub fn offered_features(accepted: u32, allowed: u32) -> u64 {
    let tun = accepted & allowed;
    let mut f = feature(F_VERSION_1) | feature(F_RING_EVENT_IDX) | feature(F_MAC) | feature(F_MTU);
    if tun & TUN_F_CSUM != 0 {
        f |= feature(F_CSUM) | feature(F_GUEST_CSUM);
        if tun & TUN_F_TSO4 != 0 {
            f |= feature(F_HOST_TSO4) | feature(F_GUEST_TSO4);
        }
        if tun & TUN_F_TSO6 != 0 {
            f |= feature(F_HOST_TSO6) | feature(F_GUEST_TSO6);
        }
    }
    f
}

/// The `TUN_F_*` offloads the TAP may use for a driver that acknowledged `features`:
/// it may hand the guest what the guest said it takes (`GUEST_*`).
pub fn tap_offloads(features: u64) -> u32 {
    let has = |b| features & feature(b) != 0;
    let mut t = 0;
    if has(F_GUEST_CSUM) {
        t |= TUN_F_CSUM;
        if has(F_GUEST_TSO4) {
            t |= TUN_F_TSO4;
        }
        if has(F_GUEST_TSO6) {
            t |= TUN_F_TSO6;
        }
    }
    t
}

impl Net {
    /// A device for `config` on `backend`. `irq` is the used-buffer interrupt (an
    /// irqfd), `kicks` the receive and transmit queue notifies (ioeventfds), `wake`
    /// wakes the device thread when the driver activates or resets the device.
    pub fn new(
        config: NetConfig,
        backend: Box<dyn NetBackend>,
        irq: Arc<EventFd>,
        kicks: [Arc<EventFd>; 2],
        wake: Arc<EventFd>,
        events: Arc<GuestEvents>,
    ) -> Net {
        let offered = offered_features(backend.accepted_offloads(), config.offloads);
        let sizes = [config.queue_size; 2];
        Net {
            config,
            backend,
            offered,
            active: None,
            broken: false,
            armed: false,
            isr: 0,
            irq,
            kicks,
            wake,
            counters: Arc::default(),
            events,
            sizes,
            buf: vec![0; MAX_CHAIN_BYTES],
            segs: Vec::with_capacity(64),
        }
    }

    /// The counters (shared with status).
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// The NIC's settings.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The features the driver acknowledged, once active.
    pub fn acked_features(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.features)
    }

    /// The host side, for the device thread to wait on.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.backend.fd()
    }

    fn wake_thread(&self) {
        if let Err(e) = self.wake.write(1) {
            log::warn!("nic {}: cannot wake its thread: {e}", self.config.name);
        }
    }

    fn refuse(&self, queue: u16, head: u16, why: BadChain) {
        add(&self.counters.bad_chains, 1);
        let name = &self.config.name;
        let q = if queue == RX_QUEUE {
            "receive"
        } else {
            "transmit"
        };
        self.events.record(EventKind::RefusedDescriptorChain, || {
            format!("nic {name}: {q} chain at descriptor {head} refused: {why}")
        });
    }

    fn break_ring(&mut self, queue: u16, e: &QueueError) {
        add(&self.counters.bad_chains, 1);
        self.broken = true;
        let name = &self.config.name;
        let q = if queue == RX_QUEUE {
            "receive"
        } else {
            "transmit"
        };
        self.events.record(EventKind::RefusedDescriptorChain, || {
            format!("nic {name}: {q} ring broken ({e}); the device needs a reset")
        });
    }

    /// The next available chain head of `queue`, `None` when there is none or the
    /// ring is broken (then `self.broken`).
    fn next_head(&mut self, queue: u16) -> Option<u16> {
        let a = self.active.as_mut()?;
        let q = &mut a.queues[queue as usize];
        let r = q
            .iter(&a.mem)
            .map(|mut it| it.next().map(|c| c.head_index()));
        match r {
            Ok(head) => head,
            Err(e) => {
                self.break_ring(queue, &e);
                None
            }
        }
    }

    /// Returns chain `head` of `queue` as used with `len` bytes written.
    fn put_used(&mut self, queue: u16, head: u16, len: u32) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        match a.queues[queue as usize].add_used(&a.mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                self.break_ring(queue, &e);
                false
            }
        }
    }

    fn walk(
        &mut self,
        queue: u16,
        head: u16,
        direction: Direction,
        max: usize,
    ) -> Result<u64, BadChain> {
        let a = self.active.as_ref().expect("only called while active");
        let q = &a.queues[queue as usize];
        chain::walk(
            &a.mem,
            vm_memory::GuestAddress(q.desc_table()),
            q.size(),
            head,
            direction,
            max as u64,
            &mut self.segs,
        )
    }

    /// Whether the frame in `buf[..n]` may go out: GSO only as negotiated.
    fn tx_allowed(&self, n: usize) -> bool {
        let f = self.active.as_ref().map_or(0, |a| a.features);
        let hdr = NetHdr::from_bytes(self.buf[..NET_HDR_SIZE].try_into().expect("12 bytes"));
        let has = |b| f & feature(b) != 0;
        let gso_ok = match hdr.gso_type & !GSO_ECN {
            GSO_NONE => true,
            GSO_TCPV4 => has(F_HOST_TSO4),
            GSO_TCPV6 => has(F_HOST_TSO6),
            _ => false,
        };
        let csum_ok = hdr.flags & NET_HDR_F_NEEDS_CSUM == 0 || has(F_CSUM);
        gso_ok && csum_ok && n > NET_HDR_SIZE
    }

    /// Moves transmit chains to the backend; returns how many were used.
    fn transmit(&mut self) -> usize {
        let mut used = 0;
        while used < BATCH && !self.broken {
            let Some(head) = self.next_head(TX_QUEUE) else {
                break;
            };
            match self.walk(TX_QUEUE, head, Direction::DeviceReads, MAX_CHAIN_BYTES) {
                Ok(n) if n as usize <= NET_HDR_SIZE => {
                    self.refuse(TX_QUEUE, head, BadChain::TooSmall(n));
                }
                Ok(n) => {
                    let n = n as usize;
                    let a = self.active.as_ref().expect("active");
                    let mut at = 0;
                    let mut ok = true;
                    for &(addr, len) in &self.segs {
                        let len = len as usize;
                        ok &= a.mem.read_slice(&mut self.buf[at..at + len], addr).is_ok();
                        at += len;
                    }
                    if !ok {
                        self.refuse(TX_QUEUE, head, BadChain::Table);
                    } else if !self.tx_allowed(n) {
                        add(&self.counters.tx_drops, 1);
                    } else {
                        match self.backend.send(&self.buf[..n]) {
                            Ok(()) => {
                                add(&self.counters.tx_packets, 1);
                                add(&self.counters.tx_bytes, (n - NET_HDR_SIZE) as u64);
                            }
                            Err(_) => add(&self.counters.tx_drops, 1),
                        }
                    }
                }
                Err(why) => self.refuse(TX_QUEUE, head, why),
            }
            if !self.put_used(TX_QUEUE, head, 0) {
                break;
            }
            used += 1;
        }
        used
    }

    /// Moves frames from the backend into receive chains; returns how many chains
    /// were used and whether buffers are left waiting for frames.
    fn receive(&mut self) -> (usize, bool) {
        let mut used = 0;
        // Frames dropped do not use a chain; bound them too, so that a flood of
        // oversized frames cannot hold the device lock.
        let mut attempts = 0;
        while used < BATCH && attempts < 2 * BATCH && !self.broken {
            attempts += 1;
            let Some(head) = self.next_head(RX_QUEUE) else {
                return (used, false);
            };
            let cap = match self.walk(RX_QUEUE, head, Direction::DeviceWrites, u32::MAX as usize) {
                Ok(cap) if cap as usize >= NET_HDR_SIZE => cap as usize,
                Ok(cap) => {
                    self.refuse(RX_QUEUE, head, BadChain::TooSmall(cap));
                    if !self.put_used(RX_QUEUE, head, 0) {
                        break;
                    }
                    used += 1;
                    continue;
                }
                Err(why) => {
                    self.refuse(RX_QUEUE, head, why);
                    if !self.put_used(RX_QUEUE, head, 0) {
                        break;
                    }
                    used += 1;
                    continue;
                }
            };
            let n = match self.backend.recv(&mut self.buf) {
                Ok(n) if n > NET_HDR_SIZE => n,
                Ok(_) => {
                    self.unpop(RX_QUEUE);
                    add(&self.counters.rx_drops, 1);
                    continue;
                }
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::debug!("nic {}: reading the TAP: {e}", self.config.name);
                    }
                    self.unpop(RX_QUEUE);
                    return (used, true);
                }
            };
            if n > cap {
                // The guest's buffer is too small for this frame: drop the frame,
                // keep the buffer for the next one.
                self.unpop(RX_QUEUE);
                add(&self.counters.rx_drops, 1);
                continue;
            }
            self.buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            let a = self.active.as_ref().expect("active");
            let mut at = 0;
            for &(addr, len) in &self.segs {
                if at >= n {
                    break;
                }
                let take = (len as usize).min(n - at);
                // The chain was checked to lie in guest RAM; a failure here is one more
                // reason to refuse it.
                if a.mem.write_slice(&self.buf[at..at + take], addr).is_err() {
                    break;
                }
                at += take;
            }
            if at < n {
                self.refuse(RX_QUEUE, head, BadChain::Table);
                if !self.put_used(RX_QUEUE, head, 0) {
                    break;
                }
            } else {
                if !self.put_used(RX_QUEUE, head, n as u32) {
                    break;
                }
                add(&self.counters.rx_packets, 1);
                add(&self.counters.rx_bytes, (n - NET_HDR_SIZE) as u64);
            }
            used += 1;
        }
        (used, false)
    }

    fn unpop(&mut self, queue: u16) {
        if let Some(a) = self.active.as_mut() {
            a.queues[queue as usize].go_to_previous_position();
        }
    }

    /// Interrupts the driver if `queue` has new used buffers it asked to hear about.
    fn signal(&mut self, queue: u16) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        match a.queues[queue as usize].needs_notification(&a.mem) {
            Ok(true) => {
                self.isr |= 1;
                add(&self.counters.interrupts, 1);
                if let Err(e) = self.irq.write(1) {
                    log::warn!("nic {}: cannot raise its interrupt: {e}", self.config.name);
                }
            }
            Ok(false) => {}
            Err(e) => self.break_ring(queue, &e),
        }
    }

    /// Asks the driver not to notify `queue` while the device is busy (a no-op with
    /// EVENT_IDX, where not moving `avail_event` does it).
    fn quiet(&mut self, queue: u16) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if let Err(e) = a.queues[queue as usize].disable_notification(&a.mem) {
            self.break_ring(queue, &e);
        }
    }

    /// Re-arms notifications of `queue` before sleeping; `true` if chains arrived
    /// meanwhile.
    fn rearm(&mut self, queue: u16) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        match a.queues[queue as usize].enable_notification(&a.mem) {
            Ok(more) => more,
            Err(e) => {
                self.break_ring(queue, &e);
                false
            }
        }
    }

    /// One round: transmit, receive, interrupt if asked, and before reporting idle
    /// re-arm notifications and re-check (the "announce, re-check, sleep" protocol;
    /// with `EVENT_IDX` the driver does not kick while the device does not move
    /// `avail_event`).
    pub fn process(&mut self) -> Round {
        if self.active.is_none() || self.broken {
            return Round::default();
        }
        if self.armed {
            self.armed = false;
            self.quiet(TX_QUEUE);
            self.quiet(RX_QUEUE);
        }
        let sent = self.transmit();
        let (received, waiting) = self.receive();
        if sent > 0 {
            self.signal(TX_QUEUE);
        }
        if received > 0 {
            self.signal(RX_QUEUE);
        }
        if self.broken {
            return Round::default();
        }
        if sent + received > 0 {
            return Round {
                busy: true,
                wants_rx_frames: waiting,
            };
        }
        self.armed = true;
        let tx_more = self.rearm(TX_QUEUE);
        // Buffers waiting for frames: the TAP wakes the thread, not a kick.
        let rx_more = !waiting && self.rearm(RX_QUEUE);
        Round {
            busy: (tx_more || rx_more) && !self.broken,
            wants_rx_frames: waiting,
        }
    }
}

impl VirtioDevice for Net {
    fn device_id(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn device_features(&self) -> u64 {
        self.offered
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) -> bool {
        let mut cfg = [0u8; NET_CONFIG_SIZE as usize];
        cfg[..6].copy_from_slice(&self.config.mac);
        cfg[NET_CONFIG_MAX_VQ_PAIRS as usize..][..2].copy_from_slice(&1u16.to_le_bytes());
        cfg[NET_CONFIG_MTU as usize..][..2].copy_from_slice(&self.config.mtu.to_le_bytes());
        let Some(src) = (offset as usize)
            .checked_add(data.len())
            .and_then(|end| cfg.get(offset as usize..end))
        else {
            return false;
        };
        data.copy_from_slice(src);
        true
    }

    fn accept_features(&self, f: u64) -> bool {
        let has = |b| f & feature(b) != 0;
        // virtio 1.2 §5.1.3.1: TSO needs the matching checksum feature.
        !((has(F_GUEST_TSO4) || has(F_GUEST_TSO6)) && !has(F_GUEST_CSUM))
            && !((has(F_HOST_TSO4) || has(F_HOST_TSO6)) && !has(F_CSUM))
    }

    fn activate(&mut self, features: u64, queues: Vec<Queue>, mem: &GuestMemoryMmap) {
        let Ok(mut queues) = <[Queue; 2]>::try_from(queues) else {
            self.broken = true;
            return;
        };
        let event_idx = features & feature(F_RING_EVENT_IDX) != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let tun = tap_offloads(features);
        if let Err(e) = self.backend.set_offload(tun) {
            log::warn!(
                "nic {}: the TAP refused offloads {tun:#x} ({e}); the guest may see frames it did not ask for",
                self.config.name
            );
        }
        log::debug!(
            "nic {}: active, features {features:#x}, TAP offloads {tun:#x}",
            self.config.name
        );
        self.active = Some(Active {
            queues,
            mem: mem.clone(),
            features,
        });
        self.broken = false;
        self.wake_thread();
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        self.isr = 0;
        if let Err(e) = self.backend.set_offload(0) {
            log::debug!("nic {}: clearing TAP offloads: {e}", self.config.name);
        }
        self.wake_thread();
    }

    fn notify(&mut self, queue: u16) {
        if let Some(k) = self.kicks.get(queue as usize) {
            let _ = k.write(1);
        }
    }

    fn interrupt_status(&self) -> u32 {
        self.isr
    }

    fn ack_interrupt(&mut self, bits: u32) {
        self.isr &= !bits;
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use vm_memory::{Address, GuestAddress};

    use super::*;

    const MEM: usize = 0x10_0000;
    const RXQ: GuestAddress = GuestAddress(0x1000);
    const TXQ: GuestAddress = GuestAddress(0x4000);
    const QSIZE: u16 = 16;

    /// A host side in memory: frames to hand the device, frames it sent.
    #[derive(Debug, Default)]
    struct Wire {
        to_guest: VecDeque<Vec<u8>>,
        from_guest: Vec<Vec<u8>>,
        offloads: u32,
    }

    #[derive(Debug, Clone, Default)]
    struct Fake(Arc<Mutex<Wire>>);

    impl NetBackend for Fake {
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut w = self.0.lock().unwrap();
            let f = w.to_guest.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
            buf[..f.len()].copy_from_slice(&f);
            Ok(f.len())
        }
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            self.0.lock().unwrap().from_guest.push(frame.to_vec());
            Ok(())
        }
        fn set_offload(&mut self, flags: u32) -> io::Result<()> {
            self.0.lock().unwrap().offloads = flags;
            Ok(())
        }
        fn accepted_offloads(&self) -> u32 {
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        }
        fn fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
    }

    struct Rig {
        mem: GuestMemoryMmap,
        net: Net,
        wire: Fake,
        irq: Arc<EventFd>,
    }

    fn efd() -> Arc<EventFd> {
        Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    fn config() -> NetConfig {
        NetConfig {
            name: "t0".into(),
            mac: [2, 0, 0, 0, 0, 2],
            mtu: 1500,
            queue_size: QSIZE,
            offloads: TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
        }
    }

    /// A device activated with `features` on two mock queues.
    fn rig(features: u64) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let wire = Fake::default();
        let irq = efd();
        let mut net = Net::new(
            config(),
            Box::new(wire.clone()),
            irq.clone(),
            [efd(), efd()],
            efd(),
            Arc::new(GuestEvents::new("t")),
        );
        let (rx, tx) = (driver_queue(RXQ), driver_queue(TXQ));
        assert!(rx.is_valid(&mem) && tx.is_valid(&mem));
        net.activate(features, vec![rx, tx], &mem);
        Rig {
            mem,
            net,
            wire,
            irq,
        }
    }

    fn desc(
        mem: &GuestMemoryMmap,
        base: GuestAddress,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        mem.write_obj(raw, base.unchecked_add(16 * u64::from(i)))
            .unwrap();
    }

    /// The available and used rings of the queue at `base`: descriptor table at
    /// `base`, available ring 1 KiB on, used ring 2 KiB on. (virtio-queue's
    /// `MockSplitQueue` places its used ring over the available ring's `used_event`,
    /// which makes it useless for testing `EVENT_IDX`.)
    fn rings(base: GuestAddress) -> (GuestAddress, GuestAddress) {
        (base.unchecked_add(0x400), base.unchecked_add(0x800))
    }

    /// A ready queue of the driver at `base`.
    fn driver_queue(base: GuestAddress) -> Queue {
        let (avail, used) = rings(base);
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_desc_table_address(Some(base.0 as u32), Some(0));
        q.set_avail_ring_address(Some(avail.0 as u32), Some(0));
        q.set_used_ring_address(Some(used.0 as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn avail_ring(base: GuestAddress) -> GuestAddress {
        rings(base).0
    }

    fn used_ring(base: GuestAddress) -> GuestAddress {
        rings(base).1
    }

    /// Offers `heads` on the queue at `base` (after those offered before).
    fn offer(mem: &GuestMemoryMmap, base: GuestAddress, heads: &[u16]) {
        let a = avail_ring(base);
        let idx: u16 = mem.read_obj(a.unchecked_add(2)).unwrap();
        for (k, &h) in heads.iter().enumerate() {
            let slot = (idx as usize + k) % QSIZE as usize;
            mem.write_obj(h, a.unchecked_add(4 + 2 * slot as u64))
                .unwrap();
        }
        mem.write_obj(idx.wrapping_add(heads.len() as u16), a.unchecked_add(2))
            .unwrap();
    }

    fn set_used_event(mem: &GuestMemoryMmap, base: GuestAddress, v: u16) {
        mem.write_obj(v, avail_ring(base).unchecked_add(4 + 2 * u64::from(QSIZE)))
            .unwrap();
    }

    fn used(mem: &GuestMemoryMmap, base: GuestAddress) -> (u16, Vec<(u32, u32)>) {
        let u = used_ring(base);
        let idx: u16 = mem.read_obj(u.unchecked_add(2)).unwrap();
        let elems = (0..idx.min(QSIZE))
            .map(|i| {
                let e = u.unchecked_add(4 + 8 * u64::from(i));
                (
                    mem.read_obj(e).unwrap(),
                    mem.read_obj(e.unchecked_add(4)).unwrap(),
                )
            })
            .collect();
        (idx, elems)
    }

    fn avail_event(mem: &GuestMemoryMmap, base: GuestAddress) -> u16 {
        mem.read_obj(used_ring(base).unchecked_add(4 + 8 * u64::from(QSIZE)))
            .unwrap()
    }

    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; NET_HDR_SIZE + len];
        f[..NET_HDR_SIZE].fill(0);
        f
    }

    const BASE: u64 = feature(F_VERSION_1) | feature(F_MAC) | feature(F_MTU);

    #[test]
    fn offered_features_follow_what_the_tap_accepts_and_the_topology_allows() {
        let all = offered_features(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, u32::MAX);
        for b in [
            F_VERSION_1,
            F_RING_EVENT_IDX,
            F_MAC,
            F_MTU,
            F_CSUM,
            F_GUEST_CSUM,
        ] {
            assert_ne!(all & feature(b), 0, "bit {b}");
        }
        for b in [F_HOST_TSO4, F_HOST_TSO6, F_GUEST_TSO4, F_GUEST_TSO6] {
            assert_ne!(all & feature(b), 0, "bit {b}");
        }
        for b in [F_MRG_RXBUF, F_STATUS, F_RING_INDIRECT_DESC] {
            assert_eq!(all & feature(b), 0, "bit {b} is never offered");
        }
        let csum_only = offered_features(TUN_F_CSUM | TUN_F_TSO4, TUN_F_CSUM);
        assert_eq!(csum_only & feature(F_GUEST_TSO4), 0);
        assert_ne!(csum_only & feature(F_GUEST_CSUM), 0);
        let none = offered_features(0, u32::MAX);
        assert_eq!(none & (feature(F_CSUM) | feature(F_GUEST_TSO4)), 0);
        // TSO without checksum offload is never offered, whatever the TAP says.
        assert_eq!(
            offered_features(TUN_F_TSO4, u32::MAX) & feature(F_HOST_TSO4),
            0
        );
    }

    #[test]
    fn tap_offloads_are_what_the_driver_acknowledged_it_takes() {
        let f = feature(F_GUEST_CSUM) | feature(F_GUEST_TSO4) | feature(F_HOST_TSO6);
        assert_eq!(tap_offloads(f), TUN_F_CSUM | TUN_F_TSO4);
        assert_eq!(tap_offloads(feature(F_GUEST_TSO4)), 0, "TSO needs csum");
        let r = rig(BASE | feature(F_GUEST_CSUM) | feature(F_GUEST_TSO6));
        assert_eq!(r.wire.0.lock().unwrap().offloads, TUN_F_CSUM | TUN_F_TSO6);
    }

    #[test]
    fn tso_without_its_checksum_feature_is_not_accepted() {
        let r = rig(BASE);
        assert!(r
            .net
            .accept_features(BASE | feature(F_GUEST_CSUM) | feature(F_GUEST_TSO4)));
        assert!(!r.net.accept_features(BASE | feature(F_GUEST_TSO4)));
        assert!(!r.net.accept_features(BASE | feature(F_HOST_TSO6)));
    }

    #[test]
    fn config_space_holds_mac_and_mtu() {
        let r = rig(BASE);
        let mut mac = [0u8; 6];
        assert!(r.net.read_config(NET_CONFIG_MAC, &mut mac));
        assert_eq!(mac, [2, 0, 0, 0, 0, 2]);
        let mut mtu = [0u8; 2];
        assert!(r.net.read_config(NET_CONFIG_MTU, &mut mtu));
        assert_eq!(u16::from_le_bytes(mtu), 1500);
        assert!(!r.net.read_config(NET_CONFIG_SIZE - 1, &mut mtu));
        assert!(!r.net.read_config(u64::MAX, &mut mtu));
    }

    #[test]
    fn a_transmit_chain_reaches_the_backend_header_and_all_and_is_returned_used() {
        let mut r = rig(BASE);
        let f = frame(60, 0xab);
        r.mem
            .write_slice(&f[..NET_HDR_SIZE], GuestAddress(0x10000))
            .unwrap();
        r.mem
            .write_slice(&f[NET_HDR_SIZE..], GuestAddress(0x20000))
            .unwrap();
        desc(&r.mem, TXQ, 0, 0x10000, NET_HDR_SIZE as u32, DESC_F_NEXT, 5);
        desc(&r.mem, TXQ, 5, 0x20000, 60, 0, 0);
        offer(&r.mem, TXQ, &[0]);
        let round = r.net.process();
        assert!(round.busy);
        assert_eq!(r.wire.0.lock().unwrap().from_guest, vec![f]);
        assert_eq!(used(&r.mem, TXQ), (1, vec![(0, 0)]));
        let c = r.net.counters();
        assert_eq!((count(&c.tx_packets), count(&c.tx_bytes)), (1, 60));
        assert_eq!(count(&c.interrupts), 1);
        assert_eq!(r.irq.read().unwrap(), 1);
        assert_eq!(r.net.interrupt_status(), 1);
        assert!(!r.net.process().busy, "nothing left");
    }

    #[test]
    fn gso_frames_are_dropped_unless_host_tso_was_negotiated() {
        let mut r = rig(BASE);
        let mut f = frame(60, 1);
        f[1] = GSO_TCPV4;
        r.mem.write_slice(&f, GuestAddress(0x10000)).unwrap();
        desc(&r.mem, TXQ, 0, 0x10000, f.len() as u32, 0, 0);
        offer(&r.mem, TXQ, &[0]);
        r.net.process();
        assert!(r.wire.0.lock().unwrap().from_guest.is_empty());
        assert_eq!(count(&r.net.counters().tx_drops), 1);
        assert_eq!(used(&r.mem, TXQ).0, 1, "the chain is still returned");
    }

    #[test]
    fn a_frame_from_the_backend_fills_a_receive_chain_with_num_buffers_set() {
        let mut r = rig(BASE);
        let f = frame(100, 0x5a);
        r.wire.0.lock().unwrap().to_guest.push_back(f.clone());
        desc(&r.mem, RXQ, 3, 0x30000, 64, DESC_F_WRITE | DESC_F_NEXT, 4);
        desc(&r.mem, RXQ, 4, 0x40000, 2048, DESC_F_WRITE, 0);
        offer(&r.mem, RXQ, &[3]);
        r.net.process();
        let mut got = vec![0u8; f.len()];
        r.mem
            .read_slice(&mut got[..64], GuestAddress(0x30000))
            .unwrap();
        r.mem
            .read_slice(&mut got[64..], GuestAddress(0x40000))
            .unwrap();
        let mut want = f;
        want[10] = 1;
        assert_eq!(got, want);
        assert_eq!(used(&r.mem, RXQ), (1, vec![(3, 112)]));
        let c = r.net.counters();
        assert_eq!((count(&c.rx_packets), count(&c.rx_bytes)), (1, 100));
    }

    #[test]
    fn receive_buffers_without_frames_wait_for_the_tap_and_a_too_small_one_drops_the_frame() {
        let mut r = rig(BASE);
        desc(&r.mem, RXQ, 0, 0x30000, 64, DESC_F_WRITE, 0);
        offer(&r.mem, RXQ, &[0]);
        let round = r.net.process();
        assert_eq!(
            round,
            Round {
                busy: false,
                wants_rx_frames: true
            }
        );
        r.wire.0.lock().unwrap().to_guest.push_back(frame(200, 1));
        let round = r.net.process();
        assert!(
            round.wants_rx_frames,
            "the buffer is kept for the next frame"
        );
        assert_eq!(count(&r.net.counters().rx_drops), 1);
        assert_eq!(used(&r.mem, RXQ).0, 0);
        r.wire.0.lock().unwrap().to_guest.push_back(frame(20, 1));
        r.net.process();
        assert_eq!(used(&r.mem, RXQ), (1, vec![(0, 32)]));
    }

    #[test]
    fn with_event_idx_the_driver_is_interrupted_only_when_used_event_is_passed() {
        let mut r = rig(BASE | feature(F_RING_EVENT_IDX));
        for i in 0..3u16 {
            r.mem
                .write_slice(&frame(20, 1), GuestAddress(0x10000 + 0x100 * u64::from(i)))
                .unwrap();
            desc(&r.mem, TXQ, i, 0x10000 + 0x100 * u64::from(i), 32, 0, 0);
        }
        set_used_event(&r.mem, TXQ, 5);
        offer(&r.mem, TXQ, &[0]);
        r.net.process();
        assert_eq!(
            count(&r.net.counters().interrupts),
            0,
            "used_event 5 not reached"
        );
        set_used_event(&r.mem, TXQ, 1);
        offer(&r.mem, TXQ, &[1]);
        r.net.process();
        assert_eq!(count(&r.net.counters().interrupts), 1);
        // Idle: the device re-armed by publishing avail_event = next_avail.
        assert!(!r.net.process().busy);
        assert_eq!(avail_event(&r.mem, TXQ), 2);
        assert_eq!(avail_event(&r.mem, RXQ), 0);
    }

    #[test]
    fn without_event_idx_notifications_are_off_while_busy_and_on_before_sleeping() {
        let mut r = rig(BASE);
        let flags = |m: &GuestMemoryMmap| -> u16 { m.read_obj(used_ring(TXQ)).unwrap() };
        assert!(!r.net.process().busy);
        assert_eq!(flags(&r.mem), 0, "armed before sleeping");
        r.mem
            .write_slice(&frame(20, 1), GuestAddress(0x10000))
            .unwrap();
        desc(&r.mem, TXQ, 0, 0x10000, 32, 0, 0);
        offer(&r.mem, TXQ, &[0]);
        assert!(r.net.process().busy);
        assert_eq!(flags(&r.mem), 1, "VRING_USED_F_NO_NOTIFY while busy");
        assert!(!r.net.process().busy);
        assert_eq!(flags(&r.mem), 0);
    }

    #[test]
    fn malformed_chains_are_refused_counted_returned_and_touch_nothing_outside_the_used_ring() {
        let mut r = rig(BASE);
        // Outside guest RAM; across its end; a loop; more than a frame; the wrong
        // direction; too small for a header.
        desc(&r.mem, TXQ, 0, 0x4000_0000, 100, 0, 0);
        desc(&r.mem, TXQ, 1, MEM as u64 - 8, 64, 0, 0);
        desc(&r.mem, TXQ, 2, 0x10000, 64, DESC_F_NEXT, 3);
        desc(&r.mem, TXQ, 3, 0x10000, 64, DESC_F_NEXT, 2);
        desc(&r.mem, TXQ, 4, 0x10000, 0x20000, 0, 0);
        desc(&r.mem, TXQ, 5, 0x10000, 100, DESC_F_WRITE, 0);
        desc(&r.mem, TXQ, 6, 0x10000, 4, 0, 0);
        desc(&r.mem, TXQ, 7, u64::MAX - 16, u32::MAX, DESC_F_INDIRECT, 0);
        offer(&r.mem, TXQ, &[0, 1, 2, 4, 5, 6, 7]);
        let snapshot = |m: &GuestMemoryMmap| {
            let mut v = vec![0u8; MEM];
            m.read_slice(&mut v, GuestAddress(0)).unwrap();
            let u = used_ring(TXQ).0 as usize;
            v[u..u + 4 + 8 * QSIZE as usize].fill(0);
            v
        };
        let before = snapshot(&r.mem);
        r.net.process();
        assert!(
            r.wire.0.lock().unwrap().from_guest.is_empty(),
            "nothing went out"
        );
        assert_eq!(count(&r.net.counters().bad_chains), 7);
        let (idx, elems) = used(&r.mem, TXQ);
        assert_eq!(idx, 7);
        assert!(elems.iter().all(|&(_, len)| len == 0));
        assert!(snapshot(&r.mem) == before, "only the used ring changed");
        assert!(
            !r.net.needs_reset(),
            "refused chains do not break the device"
        );
    }

    #[test]
    fn a_receive_chain_the_device_may_not_write_keeps_the_frame_on_the_tap() {
        let mut r = rig(BASE);
        r.wire.0.lock().unwrap().to_guest.push_back(frame(20, 1));
        desc(&r.mem, RXQ, 0, 0x30000, 2048, 0, 0);
        offer(&r.mem, RXQ, &[0]);
        r.net.process();
        assert_eq!(count(&r.net.counters().bad_chains), 1);
        assert_eq!(r.wire.0.lock().unwrap().to_guest.len(), 1);
        assert_eq!(used(&r.mem, RXQ), (1, vec![(0, 0)]));
    }

    #[test]
    fn a_jumping_available_index_or_a_head_outside_the_table_stops_the_device_until_reset() {
        let mut r = rig(BASE);
        r.mem
            .write_obj(100u16, avail_ring(TXQ).unchecked_add(2))
            .unwrap();
        r.net.process();
        assert!(r.net.needs_reset());
        assert_eq!(
            r.net.process(),
            Round::default(),
            "a broken device does nothing"
        );
        r.net.reset();
        assert!(!r.net.needs_reset());

        let mut r = rig(BASE);
        offer(&r.mem, TXQ, &[200]);
        r.net.process();
        assert!(r.net.needs_reset());
        assert_eq!(
            count(&r.net.counters().bad_chains),
            2,
            "the chain and the ring"
        );
        assert!(r.wire.0.lock().unwrap().from_guest.is_empty());
    }
}

//! The virtio-mmio (version 2) register file: the device status state machine,
//! feature negotiation, and queue set-up, as the virtio 1.2 specification (§4.2.2,
//! §3.1) describes them. It serves the MMIO exits of one NIC's window and hands the
//! queues to the device at `DRIVER_OK`.
//!
//! Everything here comes from the guest and is checked: registers are 32-bit and
//! aligned (other accesses are refused), the status only grows until the driver writes
//! 0 (reset), features can only be written between `DRIVER` and `FEATURES_OK`,
//! `FEATURES_OK` sticks only for a subset of what was offered that includes
//! `VERSION_1`, queue registers only change while their queue is not ready, sizes are
//! powers of two not above `QUEUE_NUM_MAX`, and `DRIVER_OK` activates the device only if
//! every queue is ready, aligned and inside guest RAM (else `DEVICE_NEEDS_RESET`). A
//! refused access changes nothing and is counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use compart_abi::virtio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::VirtioDevice;
use crate::devices::BusDevice;
use crate::guest_events::{EventKind, GuestEvents};

/// A device behind its virtio-mmio registers.
#[derive(Debug)]
pub struct MmioTransport<D> {
    device: D,
    mem: GuestMemoryMmap,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    queue_sel: u32,
    queues: Vec<Queue>,
    /// Each queue's descriptor table, available and used ring addresses as the
    /// driver wrote them; checked and handed to the queue at `DRIVER_OK`.
    addrs: Vec<[u64; 3]>,
    active: bool,
    refused: Arc<AtomicU64>,
    events: Arc<GuestEvents>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device`, reset, whose queues live in `mem`; refused accesses are counted as
    /// the guest's `events`.
    pub fn new(device: D, mem: GuestMemoryMmap, events: Arc<GuestEvents>) -> MmioTransport<D> {
        let queues = Self::fresh_queues(&device);
        let addrs = vec![[0; 3]; queues.len()];
        MmioTransport {
            device,
            mem,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            queue_sel: 0,
            queues,
            addrs,
            active: false,
            refused: Arc::default(),
            events,
        }
    }

    fn fresh_queues(device: &D) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .map(|&n| Queue::new(n).expect("device queue sizes are powers of two ≤ 32768"))
            .collect()
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, to drive it (its thread).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        let mut s = self.status;
        if self.device.needs_reset() {
            s |= STATUS_DEVICE_NEEDS_RESET;
        }
        s
    }

    /// Whether the device runs (the driver set `DRIVER_OK` and activation worked).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Register accesses refused so far (shared, for status).
    pub fn refused(&self) -> Arc<AtomicU64> {
        self.refused.clone()
    }

    fn refuse(&self, offset: u64, len: usize, write: bool) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.events.record(EventKind::RefusedDeviceAccess, || {
            let what = if write { "write" } else { "read" };
            format!("virtio-mmio {what} of {len} byte(s) at offset {offset:#x} refused")
        });
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = Self::fresh_queues(&self.device);
        self.addrs = vec![[0; 3]; self.queues.len()];
        self.active = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
    }

    fn read_reg(&mut self, offset: u64) -> Option<u32> {
        let features = self.device.device_features();
        Some(match offset {
            MMIO_MAGIC_VALUE => MAGIC,
            MMIO_VERSION => VERSION,
            MMIO_DEVICE_ID => self.device.device_id(),
            MMIO_VENDOR_ID => VENDOR_ID,
            MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            MMIO_QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size())),
            MMIO_QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready())),
            MMIO_INTERRUPT_STATUS => self.device.interrupt_status(),
            MMIO_STATUS => self.status(),
            MMIO_CONFIG_GENERATION => 0,
            _ => return None,
        })
    }

    fn write_reg(&mut self, offset: u64, v: u32) -> bool {
        match offset {
            MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            MMIO_DRIVER_FEATURES => {
                let open =
                    self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0;
                if !open || self.driver_features_sel > 1 {
                    return false;
                }
                let shift = 32 * self.driver_features_sel;
                self.driver_features &= !(0xffff_ffffu64 << shift);
                self.driver_features |= u64::from(v) << shift;
            }
            MMIO_QUEUE_SEL => self.queue_sel = v,
            MMIO_QUEUE_NOTIFY => {
                if v as usize >= self.queues.len() || !self.active {
                    return false;
                }
                self.device.notify(v as u16);
            }
            MMIO_INTERRUPT_ACK => self.device.ack_interrupt(v),
            MMIO_STATUS => return self.write_status(v),
            MMIO_QUEUE_NUM
            | MMIO_QUEUE_READY
            | MMIO_QUEUE_DESC_LOW
            | MMIO_QUEUE_DESC_HIGH
            | MMIO_QUEUE_DRIVER_LOW
            | MMIO_QUEUE_DRIVER_HIGH
            | MMIO_QUEUE_DEVICE_LOW
            | MMIO_QUEUE_DEVICE_HIGH => return self.write_queue(offset, v),
            _ => return false,
        }
        true
    }

    /// Queue registers: only after `FEATURES_OK`, before `DRIVER_OK`, while the
    /// selected queue is not ready (except `QUEUE_READY` itself).
    fn write_queue(&mut self, offset: u64, v: u32) -> bool {
        let open = self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return false;
        };
        if !open || (q.ready() && offset != MMIO_QUEUE_READY) {
            return false;
        }
        match offset {
            MMIO_QUEUE_NUM => return u16::try_from(v).is_ok_and(|n| q.try_set_size(n).is_ok()),
            MMIO_QUEUE_READY => match v {
                0 | 1 => q.set_ready(v == 1),
                _ => return false,
            },
            MMIO_QUEUE_DESC_LOW
            | MMIO_QUEUE_DESC_HIGH
            | MMIO_QUEUE_DRIVER_LOW
            | MMIO_QUEUE_DRIVER_HIGH
            | MMIO_QUEUE_DEVICE_LOW
            | MMIO_QUEUE_DEVICE_HIGH => {
                let which = ((offset - MMIO_QUEUE_DESC_LOW) / 0x10) as usize;
                let high = offset & 4 != 0;
                let a = &mut self.addrs[self.queue_sel as usize][which];
                *a = if high {
                    (*a & 0xffff_ffff) | (u64::from(v) << 32)
                } else {
                    (*a & !0xffff_ffff) | u64::from(v)
                };
            }
            _ => return false,
        }
        true
    }

    /// The status state machine (virtio 1.2 §3.1.1).
    fn write_status(&mut self, v: u32) -> bool {
        if v == 0 {
            self.reset();
            return true;
        }
        let known = STATUS_ACKNOWLEDGE
            | STATUS_DRIVER
            | STATUS_FEATURES_OK
            | STATUS_DRIVER_OK
            | STATUS_FAILED;
        // Bits are only ever added, and only known ones; DRIVER needs ACKNOWLEDGE,
        // FEATURES_OK needs DRIVER, DRIVER_OK needs FEATURES_OK.
        if v & !known != 0 || v & self.status != self.status {
            return false;
        }
        let has = |b| v & b != 0;
        if (has(STATUS_DRIVER) && !has(STATUS_ACKNOWLEDGE))
            || (has(STATUS_FEATURES_OK) && !has(STATUS_DRIVER))
            || (has(STATUS_DRIVER_OK) && !has(STATUS_FEATURES_OK))
        {
            return false;
        }
        let added = v & !self.status;
        let mut v = v;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.device.device_features();
            let f = self.driver_features;
            let ok = f & !offered == 0
                && f & feature(F_VERSION_1) != 0
                && self.device.accept_features(f);
            if !ok {
                // The driver reads the status back and sees FEATURES_OK unset.
                v &= !STATUS_FEATURES_OK;
                if has(STATUS_DRIVER_OK) {
                    return false;
                }
            }
        }
        self.status = v;
        if added & STATUS_DRIVER_OK != 0 {
            let mem = &self.mem;
            // virtio 1.2 §2.7: descriptor table 16-, available ring 2-, used ring
            // 4-byte aligned (virtio-queue's try_set_* check it), and every ring in
            // guest RAM (is_valid).
            let mut ok = true;
            for (q, a) in self.queues.iter_mut().zip(&self.addrs) {
                ok &= q.try_set_desc_table_address(GuestAddress(a[0])).is_ok()
                    && q.try_set_avail_ring_address(GuestAddress(a[1])).is_ok()
                    && q.try_set_used_ring_address(GuestAddress(a[2])).is_ok()
                    && q.is_valid(mem);
            }
            if ok {
                let queues = std::mem::take(&mut self.queues);
                self.device.activate(self.driver_features, queues, mem);
                self.queues = Self::fresh_queues(&self.device);
                self.active = true;
            } else {
                self.status |= STATUS_DEVICE_NEEDS_RESET;
            }
        }
        true
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= MMIO_CONFIG {
            if !self.device.read_config(offset - MMIO_CONFIG, data) {
                self.refuse(offset, data.len(), false);
            }
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            self.refuse(offset, data.len(), false);
            return;
        }
        match self.read_reg(offset) {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()),
            None => self.refuse(offset, 4, false),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // The configuration space is read-only; registers are 32-bit and aligned.
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.refuse(offset, data.len(), true);
            return;
        };
        if offset >= MMIO_CONFIG
            || offset & 3 != 0
            || !self.write_reg(offset, u32::from_le_bytes(bytes))
        {
            self.refuse(offset, 4, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    /// A device that records what the transport tells it.
    #[derive(Debug, Default)]
    struct Probe {
        activated: Option<(u64, Vec<u16>)>,
        resets: u32,
        notified: Vec<u16>,
        isr: u32,
    }

    impl VirtioDevice for Probe {
        fn device_id(&self) -> u32 {
            DEVICE_ID_NET
        }
        fn device_features(&self) -> u64 {
            feature(F_VERSION_1) | feature(F_MAC) | feature(F_RING_EVENT_IDX)
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 256]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) -> bool {
            let cfg = [1u8, 2, 3, 4, 5, 6];
            let Some(src) = cfg.get(offset as usize..offset as usize + data.len()) else {
                return false;
            };
            data.copy_from_slice(src);
            true
        }
        fn accept_features(&self, _: u64) -> bool {
            true
        }
        fn activate(&mut self, features: u64, queues: Vec<Queue>, _: &GuestMemoryMmap) {
            self.activated = Some((features, queues.iter().map(|q| q.size()).collect()));
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated = None;
        }
        fn notify(&mut self, queue: u16) {
            self.notified.push(queue);
        }
        fn interrupt_status(&self) -> u32 {
            self.isr
        }
        fn ack_interrupt(&mut self, bits: u32) {
            self.isr &= !bits;
        }
        fn needs_reset(&self) -> bool {
            false
        }
    }

    fn transport() -> MmioTransport<Probe> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        MmioTransport::new(Probe::default(), mem, Arc::new(GuestEvents::new("t")))
    }

    fn rd(t: &mut MmioTransport<Probe>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport<Probe>, off: u64, v: u32) {
        t.write(0, off, &v.to_le_bytes());
    }

    fn refused(t: &MmioTransport<Probe>) -> u64 {
        t.refused.load(Ordering::Relaxed)
    }

    /// Negotiates `features`, sets up both queues of `size` at valid addresses.
    fn bring_up(t: &mut MmioTransport<Probe>, features: u64, size: u32) {
        wr(t, MMIO_STATUS, STATUS_ACKNOWLEDGE);
        wr(t, MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, MMIO_DRIVER_FEATURES_SEL, 0);
        wr(t, MMIO_DRIVER_FEATURES, features as u32);
        wr(t, MMIO_DRIVER_FEATURES_SEL, 1);
        wr(t, MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            MMIO_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for q in 0..2u32 {
            let base = 0x1_0000 + q * 0x1_0000;
            wr(t, MMIO_QUEUE_SEL, q);
            wr(t, MMIO_QUEUE_NUM, size);
            wr(t, MMIO_QUEUE_DESC_LOW, base);
            wr(t, MMIO_QUEUE_DRIVER_LOW, base + 0x4000);
            wr(t, MMIO_QUEUE_DEVICE_LOW, base + 0x8000);
            wr(t, MMIO_QUEUE_READY, 1);
        }
    }

    const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn identification_registers_read_as_the_abi_says() {
        let mut t = transport();
        assert_eq!(rd(&mut t, MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(rd(&mut t, MMIO_VERSION), 2);
        assert_eq!(rd(&mut t, MMIO_DEVICE_ID), DEVICE_ID_NET);
        assert_eq!(rd(&mut t, MMIO_VENDOR_ID), VENDOR_ID);
        assert_eq!(
            rd(&mut t, MMIO_DEVICE_FEATURES),
            (1 << F_MAC) | (1 << F_RING_EVENT_IDX)
        );
        wr(&mut t, MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, MMIO_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        let mut mac = [0u8; 6];
        t.read(0, MMIO_CONFIG, &mut mac);
        assert_eq!(mac, [1, 2, 3, 4, 5, 6]);
        assert_eq!(refused(&t), 0);
    }

    #[test]
    fn a_full_bring_up_activates_the_device_with_the_acked_features_and_queue_sizes() {
        let mut t = transport();
        let f = feature(F_VERSION_1) | feature(F_RING_EVENT_IDX);
        bring_up(&mut t, f, 64);
        assert!(t.device().activated.is_none(), "not before DRIVER_OK");
        wr(&mut t, MMIO_STATUS, ALL_OK);
        assert_eq!(rd(&mut t, MMIO_STATUS), ALL_OK);
        assert_eq!(t.device().activated, Some((f, vec![64, 64])));
        assert!(t.is_active());
        assert_eq!(refused(&t), 0);
        wr(&mut t, MMIO_QUEUE_NOTIFY, 1);
        wr(&mut t, MMIO_QUEUE_NOTIFY, 2);
        assert_eq!(t.device().notified, vec![1]);
        assert_eq!(refused(&t), 1, "queue 2 does not exist");
    }

    #[test]
    fn features_not_offered_or_without_version_1_leave_features_ok_unset() {
        let mut t = transport();
        bring_up(&mut t, feature(F_VERSION_1) | feature(F_CSUM), 64);
        assert_eq!(rd(&mut t, MMIO_STATUS) & STATUS_FEATURES_OK, 0);
        let mut t = transport();
        bring_up(&mut t, feature(F_MAC), 64);
        assert_eq!(rd(&mut t, MMIO_STATUS) & STATUS_FEATURES_OK, 0);
        // Queue set-up before FEATURES_OK is refused, and so is DRIVER_OK.
        assert!(refused(&t) > 0);
        wr(&mut t, MMIO_STATUS, ALL_OK);
        assert!(t.device().activated.is_none());
    }

    #[test]
    fn status_bits_only_grow_in_order_until_a_reset() {
        let mut t = transport();
        wr(&mut t, MMIO_STATUS, STATUS_DRIVER);
        assert_eq!(rd(&mut t, MMIO_STATUS), 0, "DRIVER without ACKNOWLEDGE");
        wr(&mut t, MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, MMIO_STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(rd(&mut t, MMIO_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(
            &mut t,
            MMIO_STATUS,
            0x200 | STATUS_ACKNOWLEDGE | STATUS_DRIVER,
        );
        assert_eq!(refused(&t), 3);
        wr(&mut t, MMIO_STATUS, 0);
        assert_eq!(rd(&mut t, MMIO_STATUS), 0);
        assert_eq!(t.device().resets, 1);
    }

    #[test]
    fn queue_sizes_must_be_powers_of_two_within_the_maximum() {
        let mut t = transport();
        bring_up(&mut t, feature(F_VERSION_1), 64);
        wr(&mut t, MMIO_QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, MMIO_QUEUE_NUM_MAX), 256);
        let before = refused(&t);
        wr(&mut t, MMIO_QUEUE_READY, 0);
        for bad in [0, 3, 512, 0x1_0000] {
            wr(&mut t, MMIO_QUEUE_NUM, bad);
        }
        assert_eq!(refused(&t), before + 4);
        wr(&mut t, MMIO_QUEUE_NUM, 128);
        wr(&mut t, MMIO_QUEUE_READY, 1);
        wr(&mut t, MMIO_QUEUE_NUM, 64);
        assert_eq!(refused(&t), before + 5, "a ready queue keeps its size");
        wr(&mut t, MMIO_STATUS, ALL_OK);
        assert_eq!(t.device().activated.as_ref().unwrap().1, vec![128, 64]);
    }

    #[test]
    fn queues_outside_guest_memory_make_driver_ok_need_a_reset() {
        let mut t = transport();
        bring_up(&mut t, feature(F_VERSION_1), 64);
        wr(&mut t, MMIO_QUEUE_SEL, 1);
        wr(&mut t, MMIO_QUEUE_READY, 0);
        wr(&mut t, MMIO_QUEUE_DEVICE_LOW, 0x0fff_0000);
        wr(&mut t, MMIO_QUEUE_READY, 1);
        wr(&mut t, MMIO_STATUS, ALL_OK);
        assert!(t.device().activated.is_none());
        assert_ne!(rd(&mut t, MMIO_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        wr(&mut t, MMIO_STATUS, 0);
        assert_eq!(rd(&mut t, MMIO_STATUS), 0);
    }

    #[test]
    fn misaligned_rings_make_driver_ok_need_a_reset() {
        for (reg, addr) in [
            (MMIO_QUEUE_DESC_LOW, 0x1_0008),
            (MMIO_QUEUE_DRIVER_LOW, 0x1_4001),
            (MMIO_QUEUE_DEVICE_LOW, 0x1_8002),
        ] {
            let mut t = transport();
            bring_up(&mut t, feature(F_VERSION_1), 64);
            wr(&mut t, MMIO_QUEUE_SEL, 0);
            wr(&mut t, MMIO_QUEUE_READY, 0);
            wr(&mut t, reg, addr);
            wr(&mut t, MMIO_QUEUE_READY, 1);
            wr(&mut t, MMIO_STATUS, ALL_OK);
            assert!(t.device().activated.is_none(), "register {reg:#x}");
            assert_ne!(rd(&mut t, MMIO_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        }
    }

    #[test]
    fn odd_widths_unknown_registers_and_config_writes_are_refused() {
        let mut t = transport();
        let mut two = [0u8; 2];
        t.read(0, MMIO_MAGIC_VALUE, &mut two);
        assert_eq!(two, [0, 0]);
        t.write(0, MMIO_STATUS, &[1]);
        t.write(0, MMIO_CONFIG, &[0; 4]);
        assert_eq!(rd(&mut t, 0x0ec), 0);
        let mut past = [0u8; 4];
        t.read(0, MMIO_CONFIG + 4, &mut past);
        assert_eq!(refused(&t), 5);
        assert_eq!(rd(&mut t, MMIO_STATUS), 0);
    }

    #[test]
    fn interrupt_ack_clears_the_acknowledged_bits() {
        let mut t = transport();
        t.device_mut().isr = 3;
        assert_eq!(rd(&mut t, MMIO_INTERRUPT_STATUS), 3);
        wr(&mut t, MMIO_INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, MMIO_INTERRUPT_STATUS), 2);
    }
}

//! Host stand-ins for the two hardware accessors (feature `host`), for tests:
//!
//! - [`MmapRam`]: guest memory as a `vm-memory` `GuestMemoryMmap`, the type the VMM's
//!   device works on;
//! - [`TestDevice`]: a virtio-mmio network device's register file whose queues are
//!   `virtio-queue`'s device side (`Queue`), so the driver is tested against an
//!   independent implementation of the ring protocol, not against itself.

extern crate std;

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;
use std::vec::Vec;

use compart_abi::virtio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::{Mmio, Ram};

/// Guest memory of `len` bytes from guest-physical `base`.
#[derive(Debug)]
pub struct MmapRam {
    /// The memory, for the device side.
    pub mem: GuestMemoryMmap,
}

impl MmapRam {
    /// Anonymous memory at `[base, base + len)`.
    pub fn new(base: u64, len: usize) -> MmapRam {
        MmapRam {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(base), len)]).expect("guest memory"),
        }
    }
}

impl Ram for MmapRam {
    fn load_u16(&self, addr: u64, order: Ordering) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(addr), order)
                .expect("address in RAM"),
        )
    }
    fn store_u16(&self, addr: u64, value: u16, order: Ordering) {
        self.mem
            .store(value.to_le(), GuestAddress(addr), order)
            .expect("address in RAM")
    }
    fn read(&self, addr: u64, dst: &mut [u8]) {
        self.mem
            .read_slice(dst, GuestAddress(addr))
            .expect("address in RAM")
    }
    fn write(&self, addr: u64, src: &[u8]) {
        self.mem
            .write_slice(src, GuestAddress(addr))
            .expect("address in RAM")
    }
    fn with_bytes<T>(&self, addr: u64, len: usize, f: impl FnOnce(&[u8]) -> T) -> T {
        let mut v = std::vec![0; len];
        self.read(addr, &mut v);
        f(&v)
    }
    fn with_bytes_mut<T>(&self, addr: u64, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
        let mut v = std::vec![0; len];
        self.read(addr, &mut v);
        let r = f(&mut v);
        self.write(addr, &v);
        r
    }
}

/// A network device's virtio-mmio registers with `virtio-queue` queues behind them.
#[derive(Debug)]
pub struct TestDevice {
    /// Feature bits offered.
    pub offered: u64,
    /// `QUEUE_NUM_MAX` of both queues.
    pub queue_max: u16,
    /// Configuration space: MAC.
    pub mac: [u8; 6],
    /// Configuration space: MTU.
    pub mtu: u16,
    /// Whether the device clears `FEATURES_OK` (refuses any feature set).
    pub refuse_features: bool,
    status: Cell<u32>,
    dev_sel: Cell<u32>,
    drv_sel: Cell<u32>,
    driver_features: Cell<u64>,
    queue_sel: Cell<u32>,
    queues: [RefCell<Queue>; 2],
    notifies: [Cell<u64>; 2],
    /// Register accesses other than `QUEUE_NOTIFY` (exits, in a guest).
    pub exits: Cell<u64>,
    /// Whether `INTERRUPT_STATUS` or `INTERRUPT_ACK` was ever touched.
    pub touched_interrupt_regs: Cell<bool>,
}

impl TestDevice {
    /// A device offering `offered`, queues of up to `queue_max`.
    pub fn new(offered: u64, queue_max: u16) -> TestDevice {
        let q = || RefCell::new(Queue::new(queue_max).expect("queue size"));
        TestDevice {
            offered,
            queue_max,
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            mtu: 1500,
            refuse_features: false,
            status: Cell::new(0),
            dev_sel: Cell::new(0),
            drv_sel: Cell::new(0),
            driver_features: Cell::new(0),
            queue_sel: Cell::new(0),
            queues: [q(), q()],
            notifies: [Cell::new(0), Cell::new(0)],
            exits: Cell::new(0),
            touched_interrupt_regs: Cell::new(false),
        }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status.get()
    }

    /// The features the driver wrote.
    pub fn driver_features(&self) -> u64 {
        self.driver_features.get()
    }

    /// `QUEUE_NOTIFY` stores for queue `q` so far.
    pub fn notifies(&self, q: u16) -> u64 {
        self.notifies[usize::from(q)].get()
    }

    /// Device side of queue `q`.
    pub fn queue(&self, q: u16) -> std::cell::RefMut<'_, Queue> {
        self.queues[usize::from(q)].borrow_mut()
    }

    fn sel(&self) -> Option<&RefCell<Queue>> {
        self.queues.get(self.queue_sel.get() as usize)
    }

    /// Take every transmitted frame (header, frame bytes) and mark it used.
    pub fn take_tx(&self, mem: &GuestMemoryMmap) -> Vec<(NetHdr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut q = self.queue(TX_QUEUE);
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut bytes = Vec::new();
            for d in chain {
                let mut b = std::vec![0; d.len() as usize];
                mem.read_slice(&mut b, d.addr()).expect("descriptor in RAM");
                bytes.extend_from_slice(&b);
            }
            let h: [u8; NET_HDR_SIZE] = bytes[..NET_HDR_SIZE].try_into().expect("a header");
            out.push((NetHdr::from_bytes(&h), bytes[NET_HDR_SIZE..].to_vec()));
            q.add_used(mem, head, 0).expect("add used");
        }
        out
    }

    /// Write `hdr` and `frame` into the next receive buffer and mark it used; `false`
    /// if the driver has posted none.
    pub fn deliver_rx(&self, mem: &GuestMemoryMmap, hdr: &NetHdr, frame: &[u8]) -> bool {
        let mut q = self.queue(RX_QUEUE);
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            return false;
        };
        let head = chain.head_index();
        let mut data = hdr.to_bytes().to_vec();
        data.extend_from_slice(frame);
        let mut written = 0;
        for d in chain {
            assert!(d.is_write_only(), "receive buffers are device-writable");
            let n = (d.len() as usize).min(data.len() - written);
            mem.write_slice(&data[written..written + n], d.addr())
                .expect("descriptor in RAM");
            written += n;
        }
        assert_eq!(written, data.len(), "the frame fits the buffer");
        q.add_used(mem, head, written as u32).expect("add used");
        true
    }

    /// Whether queue `q` must interrupt the driver now (`needs_notification`).
    pub fn needs_interrupt(&self, mem: &GuestMemoryMmap, q: u16) -> bool {
        self.queue(q)
            .needs_notification(mem)
            .expect("used_event readable")
    }

    /// Before the device sleeps: ask for kicks on queue `q`; `true` if buffers are
    /// already waiting (`enable_notification`).
    pub fn enable_kicks(&self, mem: &GuestMemoryMmap, q: u16) -> bool {
        self.queue(q)
            .enable_notification(mem)
            .expect("rings writable")
    }
}

impl Mmio for TestDevice {
    fn read32(&self, offset: u64) -> u32 {
        self.exits.set(self.exits.get() + 1);
        match offset {
            MMIO_MAGIC_VALUE => MAGIC,
            MMIO_VERSION => VERSION,
            MMIO_DEVICE_ID => DEVICE_ID_NET,
            MMIO_VENDOR_ID => VENDOR_ID,
            MMIO_DEVICE_FEATURES => match self.dev_sel.get() {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            MMIO_QUEUE_NUM_MAX => self.sel().map_or(0, |_| u32::from(self.queue_max)),
            MMIO_QUEUE_READY => self.sel().map_or(0, |q| u32::from(q.borrow().ready())),
            MMIO_INTERRUPT_STATUS => {
                self.touched_interrupt_regs.set(true);
                0
            }
            MMIO_STATUS => self.status.get(),
            MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write32(&self, offset: u64, v: u32) {
        if offset != MMIO_QUEUE_NOTIFY {
            self.exits.set(self.exits.get() + 1);
        }
        let sel = |f: &dyn Fn(&mut Queue)| {
            if let Some(q) = self.sel() {
                f(&mut q.borrow_mut());
            }
        };
        match offset {
            MMIO_DEVICE_FEATURES_SEL => self.dev_sel.set(v),
            MMIO_DRIVER_FEATURES_SEL => self.drv_sel.set(v),
            MMIO_DRIVER_FEATURES => {
                let f = self.driver_features.get();
                self.driver_features.set(match self.drv_sel.get() {
                    0 => f & !0xffff_ffff | u64::from(v),
                    1 => f & 0xffff_ffff | u64::from(v) << 32,
                    _ => f,
                });
            }
            MMIO_QUEUE_SEL => self.queue_sel.set(v),
            MMIO_QUEUE_NUM => sel(&|q| q.set_size(v as u16)),
            MMIO_QUEUE_DESC_LOW => sel(&|q| q.set_desc_table_address(Some(v), None)),
            MMIO_QUEUE_DESC_HIGH => sel(&|q| q.set_desc_table_address(None, Some(v))),
            MMIO_QUEUE_DRIVER_LOW => sel(&|q| q.set_avail_ring_address(Some(v), None)),
            MMIO_QUEUE_DRIVER_HIGH => sel(&|q| q.set_avail_ring_address(None, Some(v))),
            MMIO_QUEUE_DEVICE_LOW => sel(&|q| q.set_used_ring_address(Some(v), None)),
            MMIO_QUEUE_DEVICE_HIGH => sel(&|q| q.set_used_ring_address(None, Some(v))),
            MMIO_QUEUE_READY => sel(&|q| q.set_ready(v == 1)),
            MMIO_QUEUE_NOTIFY => {
                if let Some(n) = self.notifies.get(v as usize) {
                    n.set(n.get() + 1);
                }
            }
            MMIO_INTERRUPT_ACK => self.touched_interrupt_regs.set(true),
            MMIO_STATUS => {
                if v == 0 {
                    self.status.set(0);
                    self.driver_features.set(0);
                    for q in &self.queues {
                        q.borrow_mut().reset();
                    }
                    return;
                }
                let mut v = v;
                if v & STATUS_FEATURES_OK != 0 && self.status.get() & STATUS_FEATURES_OK == 0 {
                    let f = self.driver_features.get();
                    if self.refuse_features || f & !self.offered != 0 {
                        v &= !STATUS_FEATURES_OK;
                    } else {
                        let event_idx = f & feature(F_RING_EVENT_IDX) != 0;
                        for q in &self.queues {
                            q.borrow_mut().set_event_idx(event_idx);
                        }
                    }
                }
                self.status.set(v);
            }
            _ => {}
        }
    }

    fn read8(&self, offset: u64) -> u8 {
        self.exits.set(self.exits.get() + 1);
        match offset.checked_sub(MMIO_CONFIG + NET_CONFIG_MAC) {
            Some(i) if i < 6 => self.mac[i as usize],
            _ => 0,
        }
    }

    fn read16(&self, offset: u64) -> u16 {
        self.exits.set(self.exits.get() + 1);
        if offset == MMIO_CONFIG + NET_CONFIG_MTU {
            self.mtu
        } else {
            0
        }
    }
}

//! The guest's virtio devices: the two hardware accessors `compart-virtio` is generic
//! over (host-tested there against `virtio-queue`), and opening a NIC from the boot
//! info.
//!
//! - [`GuestRam`]: the arena of rings and buffers the driver shares with the device,
//!   allocated once from the heap and never freed; guests are identity-mapped, so a
//!   pointer *is* the guest-physical address the device is given. Every access is
//!   bounds-checked against the arena.
//! - [`MmioWindow`]: a NIC's virtio-mmio register page. Each load or store is an exit to
//!   the VMM (≈ 21.5 µs), except a `QUEUE_NOTIFY` store (an ioeventfd, ≈ 7.5 µs): the
//!   driver uses it at initialisation and to kick.
//!
//! The device's interrupt arrives on the NIC's vector (`NicInfo::vector`) as an MSI;
//! the ring-0 interrupt entry treats every vector ≥ 32 alike, so it just ends the
//! halt, like a doorbell.

use alloc::alloc::{alloc_zeroed, Layout};
use core::sync::atomic::{AtomicU16, Ordering};

pub use compart_virtio::*;

use compart_abi::virtio as abi_virtio;
use compart_abi::{NicInfo, MAX_NICS, NIC_MMIO_GPA, NIC_MMIO_SIZE, PAGE_SIZE};

/// An arena of guest RAM shared with a device.
#[derive(Debug, Clone, Copy)]
pub struct GuestRam {
    base: u64,
    len: u64,
}

impl GuestRam {
    /// A zeroed, page-aligned arena of `len` bytes from the heap, kept for the guest's
    /// life (a device may write it until it is reset); `None` if the heap has no room.
    pub fn allocate(len: u64) -> Option<GuestRam> {
        let size = usize::try_from(len).ok()?.max(1);
        let layout = Layout::from_size_align(size, PAGE_SIZE as usize).ok()?;
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        if p.is_null() {
            return None;
        }
        Some(GuestRam {
            base: p as u64,
            len: size as u64,
        })
    }

    /// Its first guest-physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty (never: an arena has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pointer to `[addr, addr + len)`, which must lie in the arena.
    fn at(&self, addr: u64, len: usize) -> *mut u8 {
        let end = addr.checked_add(len as u64);
        assert!(
            addr >= self.base && end.is_some_and(|e| e <= self.base + self.len),
            "virtio: access {addr:#x}+{len} outside the arena {:#x}+{}",
            self.base,
            self.len
        );
        addr as *mut u8
    }
}

impl Ram for GuestRam {
    fn load_u16(&self, addr: u64, order: Ordering) -> u16 {
        let p = self.at(addr, 2);
        assert!(p as usize % 2 == 0, "virtio: unaligned ring index");
        // SAFETY: `p` lies in the arena (checked), which stays allocated for the guest's
        // life, and is 2-aligned; the device accesses ring words only atomically (or
        // as plain aligned stores, which are atomic on x86), so every access to it
        // is atomic.
        unsafe { AtomicU16::from_ptr(p.cast()) }.load(order)
    }

    fn store_u16(&self, addr: u64, value: u16, order: Ordering) {
        let p = self.at(addr, 2);
        assert!(p as usize % 2 == 0, "virtio: unaligned ring index");
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU16::from_ptr(p.cast()) }.store(value, order)
    }

    fn read(&self, addr: u64, dst: &mut [u8]) {
        let p = self.at(addr, dst.len());
        // SAFETY: the source lies in the arena (checked) and `dst` is a distinct Rust
        // buffer; the bytes are ones the device has handed back (a used entry, read
        // after the acquire load of `used.idx`), so it does not write them now.
        unsafe { core::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) }
    }

    fn write(&self, addr: u64, src: &[u8]) {
        let p = self.at(addr, src.len());
        // SAFETY: the destination lies in the arena (checked); the driver writes only
        // descriptors, ring slots and buffers the device does not own (not published
        // yet, or given back), and publishes them with a release store afterwards.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) }
    }

    fn with_bytes<T>(&self, addr: u64, len: usize, f: impl FnOnce(&[u8]) -> T) -> T {
        let p = self.at(addr, len);
        // SAFETY: `[p, p + len)` lies in the arena (checked), which outlives the call;
        // it is a buffer the device gave back and does not write until the driver
        // posts it again, which cannot happen while `f` holds the slice (the driver
        // is single-threaded and `f` gets no access to the queue).
        f(unsafe { core::slice::from_raw_parts(p, len) })
    }

    fn with_bytes_mut<T>(&self, addr: u64, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
        let p = self.at(addr, len);
        // SAFETY: as in `with_bytes`, for a buffer not posted to the device: nothing
        // else reads or writes it while `f` runs, and no other slice of it is alive
        // (the arena's bytes are reached only through these calls, one at a time).
        f(unsafe { core::slice::from_raw_parts_mut(p, len) })
    }
}

/// A NIC's virtio-mmio register window.
#[derive(Debug, Clone, Copy)]
pub struct MmioWindow {
    base: u64,
}

impl MmioWindow {
    /// The window of `nic`, if the boot info puts it where the ABI says NIC windows are.
    pub fn of(nic: &NicInfo) -> Option<MmioWindow> {
        let last = NIC_MMIO_GPA + (MAX_NICS as u64 - 1) * NIC_MMIO_SIZE;
        let ok = nic.mmio_gpa >= NIC_MMIO_GPA
            && nic.mmio_gpa <= last
            && (nic.mmio_gpa - NIC_MMIO_GPA) % NIC_MMIO_SIZE == 0;
        ok.then_some(MmioWindow { base: nic.mmio_gpa })
    }

    fn reg(&self, offset: u64, width: u64) -> u64 {
        assert!(
            offset % width == 0 && offset + width <= NIC_MMIO_SIZE,
            "virtio: register {offset:#x} outside the window"
        );
        self.base + offset
    }
}

impl Mmio for MmioWindow {
    fn read32(&self, offset: u64) -> u32 {
        let a = self.reg(offset, 4);
        // SAFETY: `a` is an aligned register of the NIC window the VMM serves (checked
        // against the ABI's NIC range): not memory, an MMIO exit; a load has no other
        // effect on guest memory.
        unsafe { core::ptr::read_volatile(a as *const u32) }
    }

    fn write32(&self, offset: u64, value: u32) {
        let a = self.reg(offset, 4);
        // SAFETY: as in `read32`; the store reaches the device's register file (or,
        // for QUEUE_NOTIFY, its ioeventfd), never guest memory.
        unsafe { core::ptr::write_volatile(a as *mut u32, value) }
    }

    fn read8(&self, offset: u64) -> u8 {
        let a = self.reg(offset, 1);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::read_volatile(a as *const u8) }
    }

    fn read16(&self, offset: u64) -> u16 {
        let a = self.reg(offset, 2);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::read_volatile(a as *const u16) }
    }
}

/// Why a NIC could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Its register window is not where NIC windows are.
    BadWindow(u64),
    /// The device refused (or is not a network device).
    Device(transport::InitError),
    /// The heap has no room for the arena.
    NoMemory(u64),
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OpenError::BadWindow(a) => write!(f, "register window {a:#x} is not a NIC window"),
            OpenError::Device(e) => write!(f, "{e}"),
            OpenError::NoMemory(n) => write!(f, "no heap for {n} bytes of rings and buffers"),
        }
    }
}

/// A running network device of this guest.
pub type Nic = net::Net<GuestRam, MmioWindow>;

/// Open the network device `nic` with up to `rx_buffers` receive buffers (fewer if the
/// heap, keeping `keep_free` bytes for everything else, or the queue is smaller) and
/// `tx_slots` transmit slots.
pub fn open_net(
    nic: &NicInfo,
    rx_buffers: Option<u16>,
    tx_slots: u16,
    keep_free: u64,
) -> Result<Nic, OpenError> {
    let window = MmioWindow::of(nic).ok_or(OpenError::BadWindow(nic.mmio_gpa))?;
    let t = net::Net::<GuestRam, _>::probe(window).map_err(OpenError::Device)?;
    let (rx_max, tx_max) = (
        t.queue_max(abi_virtio::RX_QUEUE),
        t.queue_max(abi_virtio::TX_QUEUE),
    );
    let heap = crate::heap::free().saturating_sub(keep_free);
    let fit = net::Plan::rx_buffers_for(heap, tx_slots, rx_max);
    let rx = rx_buffers.map_or(fit, |n| n.min(fit));
    let plan = net::Plan::new(rx_max, tx_max, rx, tx_slots).map_err(|e| {
        t.fail();
        OpenError::Device(e)
    })?;
    let bytes = plan.arena_bytes();
    let Some(ram) = GuestRam::allocate(bytes) else {
        t.fail();
        return Err(OpenError::NoMemory(bytes));
    };
    net::Net::start(t, ram, ram.base(), plan).map_err(OpenError::Device)
}

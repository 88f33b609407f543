//! The guest side of compart's virtio-net device (`compart_abi::virtio` is the
//! contract): everything but the two hardware accessors, so that it is tested on the
//! host against an independent device side (`virtio-queue`).
//!
//! - [`Ram`]: how the driver reaches the memory it shares with the device (rings and
//!   buffers). In a guest that is identity-mapped RAM (`firmware::virtio`); on the host
//!   a `vm-memory` `GuestMemoryMmap` ([`host`]).
//! - [`queue`]: the driver's half of a split virtqueue with `EVENT_IDX`: descriptors
//!   from a private free list, `avail` published with a release store, kicks only when
//!   [`vring_need_event`](compart_abi::virtio::vring_need_event) says the device asked
//!   for one, `used` entries checked before use, and `used_event` left behind while the
//!   driver polls (set only by [`arm`](queue::SplitQueue::arm) before it halts).
//! - [`transport`]: virtio-mmio (version 2) initialisation over [`Mmio`]: reset,
//!   feature negotiation, queue setup, `DRIVER_OK`.
//! - [`net`]: the network device: receive buffers large enough for coalesced
//!   segments, transmit slots of header and frame, counters.
//!
//! Nothing the device writes is trusted: a used entry whose id is not a chain in
//! flight, or whose length exceeds what the chain offered, is counted and skipped.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod net;
pub mod queue;
pub mod transport;

#[cfg(feature = "host")]
pub mod host;

use core::sync::atomic::Ordering;

/// The memory the driver shares with the device, addressed by guest-physical address.
///
/// Addresses are always ones the driver chose (inside the arena it handed the device);
/// nothing read from the device becomes an address. An implementation may panic on an
/// address outside its memory: that is a bug of the driver, not a hostile device.
pub trait Ram {
    /// Atomic 16-bit load (ring indices).
    fn load_u16(&self, addr: u64, order: Ordering) -> u16;
    /// Atomic 16-bit store (ring indices, flags, event indices).
    fn store_u16(&self, addr: u64, value: u16, order: Ordering);
    /// Copy `dst.len()` bytes from `addr`.
    fn read(&self, addr: u64, dst: &mut [u8]);
    /// Copy `src` to `addr`.
    fn write(&self, addr: u64, src: &[u8]);
    /// Run `f` on the `len` bytes at `addr` (a buffer the device has given back and
    /// does not write until it is posted again).
    fn with_bytes<T>(&self, addr: u64, len: usize, f: impl FnOnce(&[u8]) -> T) -> T;
    /// Run `f` on the `len` bytes at `addr`, for writing (a buffer not posted).
    fn with_bytes_mut<T>(&self, addr: u64, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T;
}

impl<R: Ram + ?Sized> Ram for &R {
    fn load_u16(&self, addr: u64, order: Ordering) -> u16 {
        (**self).load_u16(addr, order)
    }
    fn store_u16(&self, addr: u64, value: u16, order: Ordering) {
        (**self).store_u16(addr, value, order)
    }
    fn read(&self, addr: u64, dst: &mut [u8]) {
        (**self).read(addr, dst)
    }
    fn write(&self, addr: u64, src: &[u8]) {
        (**self).write(addr, src)
    }
    fn with_bytes<T>(&self, addr: u64, len: usize, f: impl FnOnce(&[u8]) -> T) -> T {
        (**self).with_bytes(addr, len, f)
    }
    fn with_bytes_mut<T>(&self, addr: u64, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
        (**self).with_bytes_mut(addr, len, f)
    }
}

/// A device's register window (virtio-mmio). In a guest each access is an exit to
/// the VMM (≈ 21.5 µs), except `QUEUE_NOTIFY`, an in-kernel ioeventfd: the driver
/// touches the window at initialisation and for kicks only.
pub trait Mmio {
    /// 32-bit load from register `offset`.
    fn read32(&self, offset: u64) -> u32;
    /// 32-bit store to register `offset`.
    fn write32(&self, offset: u64, value: u32);
    /// 8-bit load (configuration space).
    fn read8(&self, offset: u64) -> u8;
    /// 16-bit load (configuration space).
    fn read16(&self, offset: u64) -> u16;
}

impl<M: Mmio + ?Sized> Mmio for &M {
    fn read32(&self, offset: u64) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        (**self).write32(offset, value)
    }
    fn read8(&self, offset: u64) -> u8 {
        (**self).read8(offset)
    }
    fn read16(&self, offset: u64) -> u16 {
        (**self).read16(offset)
    }
}

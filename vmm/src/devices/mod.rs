//! Devices a guest reaches through MMIO exits: the [`BusDevice`] interface and the
//! [`bus::MmioBus`] that routes each access to the device whose range holds it.
//!
//! Only accesses that need the VMM come here. Doorbells and (next) virtqueue notifies
//! are ioeventfds handled in the kernel, and interrupts are irqfds
//! (`vstate/interrupts.rs`); what reaches a device on the bus is its register file,
//! such as virtio-mmio configuration. An access no device serves is a failure of that
//! guest (`vstate/exits.rs`), never of the VMM.
//!
//! The interface follows cloud-hypervisor's `vm-device` bus: a device sees the base of
//! its range and the offset into it, and the bytes of one access.

pub mod bus;
pub mod virtio;

/// A device behind a range of guest-physical addresses.
///
/// `data` is the access as the guest made it (1, 2, 4 or 8 bytes, little-endian).
/// The defaults read zeroes and ignore writes, for devices with write-only or
/// read-only registers. Values in `data` come from the guest: a device validates them
/// and never panics on them.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` into the range that starts at
    /// `base`; the device fills `data`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let _ = (base, offset);
        data.fill(0);
    }

    /// A guest write of `data` at `offset` into the range that starts at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let _ = (base, offset, data);
    }
}

//! virtio devices: our own virtio-mmio transport ([`mmio`], modelled on rust-vmm's
//! unpublished `virtio-device` crate), the network device ([`net`]) on
//! `virtio-queue`'s split queues, its host side ([`tap`]) and its thread
//! ([`net_thread`]). The register layout, feature bits and the MSI deviation are the
//! contract in `compart_abi::virtio`.
//!
//! ```text
//!  guest: MMIO registers ──exit──► MmioTransport ─ status, features, queue set-up
//!         QUEUE_NOTIFY     ──ioeventfd (datamatch = queue)──► device thread wakes
//!         used buffers     ◄──irqfd MSI (NIC_VECTOR + i)─── device thread
//!  device thread: TX chains → TAP; TAP → RX chains; EVENT_IDX both ways
//! ```

pub mod chain;
pub mod mmio;
pub mod net;
pub mod net_thread;
pub mod tap;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// What a virtio device tells its transport, and what the transport hands it.
pub trait VirtioDevice: Send {
    /// `DEVICE_ID`.
    fn device_id(&self) -> u32;
    /// The feature bits it offers.
    fn device_features(&self) -> u64;
    /// The largest size of each of its queues, in queue order.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads `data.len()` bytes of its configuration space at `offset`; `false` if
    /// the access is outside it.
    fn read_config(&self, offset: u64, data: &mut [u8]) -> bool;
    /// Whether the driver's `features` (a subset of what was offered) are a set the
    /// device can work with (checked when the driver sets `FEATURES_OK`).
    fn accept_features(&self, features: u64) -> bool;
    /// The driver set `DRIVER_OK`: take the queues (set up and valid) and start.
    fn activate(&mut self, features: u64, queues: Vec<Queue>, mem: &GuestMemoryMmap);
    /// The driver reset the device: stop using the queues.
    fn reset(&mut self);
    /// A `QUEUE_NOTIFY` that reached the VMM instead of the ioeventfd.
    fn notify(&mut self, queue: u16);
    /// Bits of `INTERRUPT_STATUS` (bit 0: used buffers) that the device has raised.
    fn interrupt_status(&self) -> u32;
    /// Clears the bits the driver acknowledged.
    fn ack_interrupt(&mut self, bits: u32);
    /// Whether the device hit a driver error it cannot recover from
    /// (`DEVICE_NEEDS_RESET`).
    fn needs_reset(&self) -> bool;
}

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

#[cfg(test)]
mod tests {
    use compart_abi::virtio as abi;
    use virtio_bindings::{virtio_config, virtio_ids, virtio_mmio, virtio_net, virtio_ring};

    /// The contract in `compart_abi::virtio` is written by hand (it is `no_std` and
    /// shared with guests); Linux's headers, as `virtio-bindings` carries them, say
    /// the same.
    #[test]
    fn the_abi_contract_matches_linuxs_virtio_headers() {
        let mmio = [
            (abi::MMIO_MAGIC_VALUE, virtio_mmio::VIRTIO_MMIO_MAGIC_VALUE),
            (abi::MMIO_VERSION, virtio_mmio::VIRTIO_MMIO_VERSION),
            (abi::MMIO_DEVICE_ID, virtio_mmio::VIRTIO_MMIO_DEVICE_ID),
            (abi::MMIO_VENDOR_ID, virtio_mmio::VIRTIO_MMIO_VENDOR_ID),
            (
                abi::MMIO_DEVICE_FEATURES,
                virtio_mmio::VIRTIO_MMIO_DEVICE_FEATURES,
            ),
            (
                abi::MMIO_DEVICE_FEATURES_SEL,
                virtio_mmio::VIRTIO_MMIO_DEVICE_FEATURES_SEL,
            ),
            (
                abi::MMIO_DRIVER_FEATURES,
                virtio_mmio::VIRTIO_MMIO_DRIVER_FEATURES,
            ),
            (
                abi::MMIO_DRIVER_FEATURES_SEL,
                virtio_mmio::VIRTIO_MMIO_DRIVER_FEATURES_SEL,
            ),
            (abi::MMIO_QUEUE_SEL, virtio_mmio::VIRTIO_MMIO_QUEUE_SEL),
            (
                abi::MMIO_QUEUE_NUM_MAX,
                virtio_mmio::VIRTIO_MMIO_QUEUE_NUM_MAX,
            ),
            (abi::MMIO_QUEUE_NUM, virtio_mmio::VIRTIO_MMIO_QUEUE_NUM),
            (abi::MMIO_QUEUE_READY, virtio_mmio::VIRTIO_MMIO_QUEUE_READY),
            (
                abi::MMIO_QUEUE_NOTIFY,
                virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY,
            ),
            (
                abi::MMIO_INTERRUPT_STATUS,
                virtio_mmio::VIRTIO_MMIO_INTERRUPT_STATUS,
            ),
            (
                abi::MMIO_INTERRUPT_ACK,
                virtio_mmio::VIRTIO_MMIO_INTERRUPT_ACK,
            ),
            (abi::MMIO_STATUS, virtio_mmio::VIRTIO_MMIO_STATUS),
            (
                abi::MMIO_QUEUE_DESC_LOW,
                virtio_mmio::VIRTIO_MMIO_QUEUE_DESC_LOW,
            ),
            (
                abi::MMIO_QUEUE_DESC_HIGH,
                virtio_mmio::VIRTIO_MMIO_QUEUE_DESC_HIGH,
            ),
            (
                abi::MMIO_QUEUE_DRIVER_LOW,
                virtio_mmio::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
            ),
            (
                abi::MMIO_QUEUE_DRIVER_HIGH,
                virtio_mmio::VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
            ),
            (
                abi::MMIO_QUEUE_DEVICE_LOW,
                virtio_mmio::VIRTIO_MMIO_QUEUE_USED_LOW,
            ),
            (
                abi::MMIO_QUEUE_DEVICE_HIGH,
                virtio_mmio::VIRTIO_MMIO_QUEUE_USED_HIGH,
            ),
            (
                abi::MMIO_CONFIG_GENERATION,
                virtio_mmio::VIRTIO_MMIO_CONFIG_GENERATION,
            ),
            (abi::MMIO_CONFIG, virtio_mmio::VIRTIO_MMIO_CONFIG),
        ];
        for (ours, linux) in mmio {
            assert_eq!(ours, u64::from(linux), "register {ours:#x}");
        }
        assert_eq!(abi::DEVICE_ID_NET, virtio_ids::VIRTIO_ID_NET);
        let status = [
            (
                abi::STATUS_ACKNOWLEDGE,
                virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE,
            ),
            (abi::STATUS_DRIVER, virtio_config::VIRTIO_CONFIG_S_DRIVER),
            (
                abi::STATUS_DRIVER_OK,
                virtio_config::VIRTIO_CONFIG_S_DRIVER_OK,
            ),
            (
                abi::STATUS_FEATURES_OK,
                virtio_config::VIRTIO_CONFIG_S_FEATURES_OK,
            ),
            (
                abi::STATUS_DEVICE_NEEDS_RESET,
                virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET,
            ),
            (abi::STATUS_FAILED, virtio_config::VIRTIO_CONFIG_S_FAILED),
        ];
        for (ours, linux) in status {
            assert_eq!(ours, linux);
        }
        let features = [
            (abi::F_CSUM, virtio_net::VIRTIO_NET_F_CSUM),
            (abi::F_GUEST_CSUM, virtio_net::VIRTIO_NET_F_GUEST_CSUM),
            (abi::F_MTU, virtio_net::VIRTIO_NET_F_MTU),
            (abi::F_MAC, virtio_net::VIRTIO_NET_F_MAC),
            (abi::F_GUEST_TSO4, virtio_net::VIRTIO_NET_F_GUEST_TSO4),
            (abi::F_GUEST_TSO6, virtio_net::VIRTIO_NET_F_GUEST_TSO6),
            (abi::F_HOST_TSO4, virtio_net::VIRTIO_NET_F_HOST_TSO4),
            (abi::F_HOST_TSO6, virtio_net::VIRTIO_NET_F_HOST_TSO6),
            (abi::F_MRG_RXBUF, virtio_net::VIRTIO_NET_F_MRG_RXBUF),
            (abi::F_STATUS, virtio_net::VIRTIO_NET_F_STATUS),
            (
                abi::F_RING_INDIRECT_DESC,
                virtio_ring::VIRTIO_RING_F_INDIRECT_DESC,
            ),
            (abi::F_RING_EVENT_IDX, virtio_ring::VIRTIO_RING_F_EVENT_IDX),
            (abi::F_VERSION_1, virtio_config::VIRTIO_F_VERSION_1),
        ];
        for (ours, linux) in features {
            assert_eq!(ours, linux);
        }
        assert_eq!(u32::from(abi::DESC_F_NEXT), virtio_ring::VRING_DESC_F_NEXT);
        assert_eq!(
            u32::from(abi::DESC_F_WRITE),
            virtio_ring::VRING_DESC_F_WRITE
        );
        assert_eq!(
            u32::from(abi::DESC_F_INDIRECT),
            virtio_ring::VRING_DESC_F_INDIRECT
        );
        assert_eq!(
            u32::from(abi::NET_HDR_F_NEEDS_CSUM),
            virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM
        );
        assert_eq!(
            u32::from(abi::NET_HDR_F_DATA_VALID),
            virtio_net::VIRTIO_NET_HDR_F_DATA_VALID
        );
        assert_eq!(
            u32::from(abi::GSO_TCPV4),
            virtio_net::VIRTIO_NET_HDR_GSO_TCPV4
        );
        assert_eq!(
            u32::from(abi::GSO_TCPV6),
            virtio_net::VIRTIO_NET_HDR_GSO_TCPV6
        );
        assert_eq!(u32::from(abi::GSO_UDP), virtio_net::VIRTIO_NET_HDR_GSO_UDP);
        assert_eq!(
            abi::NET_HDR_SIZE,
            std::mem::size_of::<virtio_net::virtio_net_hdr_v1>()
        );
        assert_eq!(
            abi::NET_CONFIG_MTU,
            std::mem::offset_of!(virtio_net::virtio_net_config, mtu) as u64
        );
        assert_eq!(
            abi::NET_CONFIG_MAX_VQ_PAIRS,
            std::mem::offset_of!(virtio_net::virtio_net_config, max_virtqueue_pairs) as u64
        );
        assert_eq!(
            abi::NET_CONFIG_STATUS,
            std::mem::offset_of!(virtio_net::virtio_net_config, status) as u64
        );
    }
}

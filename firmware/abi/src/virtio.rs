//! The virtio-net device as compart exposes it: a virtio-mmio (version 2) register file
//! per NIC at [`crate::NIC_MMIO_GPA`], split virtqueues in the driver guest's RAM, and
//! the `virtio_net_hdr_v1` that precedes every frame. The VMM's device
//! (`vmm/src/devices/virtio/`) and the guest's driver (`firmware/src/virtio/`) both use
//! these definitions; values are those of the virtio 1.2 specification (§2.7 split
//! virtqueues, §4.2.2 MMIO registers, §5.1 network device).
//!
//! # compart's deviation: interrupts are MSIs
//!
//! virtio-mmio signals used buffers with a level-triggered interrupt that the driver
//! acknowledges by reading `INTERRUPT_STATUS` and writing `INTERRUPT_ACK`. Each of those
//! accesses is an exit to the VMM's user space (≈ 21.5 µs on our hosts), so compart
//! delivers the interrupt as an MSI on the vector the boot info names
//! ([`crate::NicInfo::vector`]) to vCPU 0, and the driver treats it as a pure wake-up:
//! it checks its used rings and **never reads `INTERRUPT_STATUS` or writes
//! `INTERRUPT_ACK`** on the data path. The device keeps both registers correct anyway,
//! so a standard driver works (slowly).
//!
//! `QUEUE_NOTIFY` is an ioeventfd with the queue index as datamatch: a notify costs one
//! in-kernel exit and wakes the device thread only when it sleeps. With
//! [`F_RING_EVENT_IDX`] negotiated, both sides suppress notifications while the other
//! is busy (`avail_event` / `used_event` and [`vring_need_event`]).

/// `MAGIC_VALUE`: reads "virt".
pub const MMIO_MAGIC_VALUE: u64 = 0x000;
/// `VERSION`: reads 2 (virtio-mmio version 2, "modern").
pub const MMIO_VERSION: u64 = 0x004;
/// `DEVICE_ID`: reads [`DEVICE_ID_NET`].
pub const MMIO_DEVICE_ID: u64 = 0x008;
/// `VENDOR_ID`.
pub const MMIO_VENDOR_ID: u64 = 0x00c;
/// `DEVICE_FEATURES`: 32 feature bits, selected by `DEVICE_FEATURES_SEL`.
pub const MMIO_DEVICE_FEATURES: u64 = 0x010;
/// `DEVICE_FEATURES_SEL`: 0 = bits 0–31, 1 = bits 32–63.
pub const MMIO_DEVICE_FEATURES_SEL: u64 = 0x014;
/// `DRIVER_FEATURES`: the driver's acknowledged bits, selected by `DRIVER_FEATURES_SEL`.
pub const MMIO_DRIVER_FEATURES: u64 = 0x020;
/// `DRIVER_FEATURES_SEL`.
pub const MMIO_DRIVER_FEATURES_SEL: u64 = 0x024;
/// `QUEUE_SEL`: the queue the `QUEUE_*` registers below refer to.
pub const MMIO_QUEUE_SEL: u64 = 0x030;
/// `QUEUE_NUM_MAX`: the largest size the selected queue may have.
pub const MMIO_QUEUE_NUM_MAX: u64 = 0x034;
/// `QUEUE_NUM`: the size the driver chose (a power of two ≤ `QUEUE_NUM_MAX`).
pub const MMIO_QUEUE_NUM: u64 = 0x038;
/// `QUEUE_READY`.
pub const MMIO_QUEUE_READY: u64 = 0x044;
/// `QUEUE_NOTIFY`: a write of a queue index tells the device that queue has buffers.
pub const MMIO_QUEUE_NOTIFY: u64 = 0x050;
/// `INTERRUPT_STATUS` (not read by compart's driver, see the module doc).
pub const MMIO_INTERRUPT_STATUS: u64 = 0x060;
/// `INTERRUPT_ACK` (not written by compart's driver).
pub const MMIO_INTERRUPT_ACK: u64 = 0x064;
/// `STATUS`: the device status bits (`STATUS_*`); writing 0 resets the device.
pub const MMIO_STATUS: u64 = 0x070;
/// `QUEUE_DESC_LOW`/`HIGH`: guest-physical address of the descriptor table.
pub const MMIO_QUEUE_DESC_LOW: u64 = 0x080;
/// High half of the descriptor table address.
pub const MMIO_QUEUE_DESC_HIGH: u64 = 0x084;
/// `QUEUE_DRIVER_LOW`/`HIGH`: guest-physical address of the available ring.
pub const MMIO_QUEUE_DRIVER_LOW: u64 = 0x090;
/// High half of the available ring address.
pub const MMIO_QUEUE_DRIVER_HIGH: u64 = 0x094;
/// `QUEUE_DEVICE_LOW`/`HIGH`: guest-physical address of the used ring.
pub const MMIO_QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// High half of the used ring address.
pub const MMIO_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// `CONFIG_GENERATION`: changes whenever the configuration space changes.
pub const MMIO_CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device-specific configuration space ([`NET_CONFIG_MAC`], …).
pub const MMIO_CONFIG: u64 = 0x100;

/// The value of `MAGIC_VALUE`: "virt" in little-endian byte order.
pub const MAGIC: u32 = u32::from_le_bytes(*b"virt");
/// The virtio-mmio version compart implements.
pub const VERSION: u32 = 2;
/// `DEVICE_ID` of a network card.
pub const DEVICE_ID_NET: u32 = 1;
/// `VENDOR_ID` of compart's devices ("CPRT").
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"CPRT");

/// Device status: the guest has noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status: the guest knows how to drive it.
pub const STATUS_DRIVER: u32 = 2;
/// Device status: the driver is set up and ready.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status: the device hit an error it cannot recover from.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
/// Device status: the guest gave up on the device.
pub const STATUS_FAILED: u32 = 128;

/// Feature bit: the device takes frames with a partial checksum (the driver may leave
/// the L4 checksum to it, `NEEDS_CSUM`).
pub const F_CSUM: u32 = 0;
/// Feature bit: the driver takes frames with a partial or already checked checksum.
pub const F_GUEST_CSUM: u32 = 1;
/// Feature bit: the configuration space holds the MTU.
pub const F_MTU: u32 = 3;
/// Feature bit: the configuration space holds the MAC address.
pub const F_MAC: u32 = 5;
/// Feature bit: the driver takes TCPv4 segments larger than the MTU (receive coalescing).
pub const F_GUEST_TSO4: u32 = 7;
/// Feature bit: the driver takes TCPv6 segments larger than the MTU.
pub const F_GUEST_TSO6: u32 = 8;
/// Feature bit: the device segments TCPv4 segments larger than the MTU.
pub const F_HOST_TSO4: u32 = 11;
/// Feature bit: the device segments TCPv6 segments larger than the MTU.
pub const F_HOST_TSO6: u32 = 12;
/// Feature bit: the driver merges receive buffers (not offered by compart).
pub const F_MRG_RXBUF: u32 = 15;
/// Feature bit: the configuration space holds a link status (not offered by compart).
pub const F_STATUS: u32 = 16;
/// Feature bit: descriptors may point to indirect tables (not offered by compart).
pub const F_RING_INDIRECT_DESC: u32 = 28;
/// Feature bit: `used_event` / `avail_event` notification suppression.
pub const F_RING_EVENT_IDX: u32 = 29;
/// Feature bit: virtio 1.x ("modern") semantics; compart requires it.
pub const F_VERSION_1: u32 = 32;

/// The bit of feature `bit` in a 64-bit feature word.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// Offset of the MAC address (6 bytes) in the configuration space.
pub const NET_CONFIG_MAC: u64 = 0;
/// Offset of the link status (u16) in the configuration space.
pub const NET_CONFIG_STATUS: u64 = 6;
/// Offset of `max_virtqueue_pairs` (u16) in the configuration space.
pub const NET_CONFIG_MAX_VQ_PAIRS: u64 = 8;
/// Offset of the MTU (u16) in the configuration space.
pub const NET_CONFIG_MTU: u64 = 10;
/// Size of the configuration space compart's device exposes.
pub const NET_CONFIG_SIZE: u64 = 12;

/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Number of queues of compart's network device (one receive/transmit pair).
pub const NET_QUEUES: u16 = 2;
/// The largest queue size compart's device offers (`QUEUE_NUM_MAX`).
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// The header before every frame on both queues (`struct virtio_net_hdr_v1`, 12
/// bytes, little-endian fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// `NET_HDR_F_*`.
    pub flags: u8,
    /// `GSO_*`: how a frame larger than the MTU is to be segmented.
    pub gso_type: u8,
    /// Length of the headers to replicate in each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (with [`NET_HDR_F_NEEDS_CSUM`]).
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
    /// Number of merged buffers (1 without [`F_MRG_RXBUF`]).
    pub num_buffers: u16,
}

/// Size of [`NetHdr`] on the queues.
pub const NET_HDR_SIZE: usize = 12;
const _: () = assert!(core::mem::size_of::<NetHdr>() == NET_HDR_SIZE);

impl NetHdr {
    /// The header's bytes as they travel on a queue.
    pub fn to_bytes(&self) -> [u8; NET_HDR_SIZE] {
        let mut b = [0; NET_HDR_SIZE];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// A header read from a queue (any bytes are a header; their meaning is checked by
    /// whoever acts on it).
    pub fn from_bytes(b: &[u8; NET_HDR_SIZE]) -> NetHdr {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }
}

/// Header flag: the L4 checksum is partial; complete it from `csum_start`.
pub const NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Header flag (receive): the checksum has been validated.
pub const NET_HDR_F_DATA_VALID: u8 = 2;
/// GSO type: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// GSO type: TCPv4.
pub const GSO_TCPV4: u8 = 1;
/// GSO type: UDP (fragmentation offload).
pub const GSO_UDP: u8 = 3;
/// GSO type: TCPv6.
pub const GSO_TCPV6: u8 = 4;
/// GSO flag: the frame carries ECN-marked segments.
pub const GSO_ECN: u8 = 0x80;

/// A split-virtqueue descriptor (16 bytes, in the driver's descriptor table).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// `DESC_F_*`.
    pub flags: u16,
    /// The next descriptor of the chain, with [`DESC_F_NEXT`].
    pub next: u16,
}
const _: () = assert!(core::mem::size_of::<Descriptor>() == 16);

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer (receive buffers).
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect table (not offered by compart).
pub const DESC_F_INDIRECT: u16 = 4;

/// Required alignment of the descriptor table.
pub const DESC_TABLE_ALIGN: u64 = 16;
/// Required alignment of the available ring.
pub const AVAIL_RING_ALIGN: u64 = 2;
/// Required alignment of the used ring.
pub const USED_RING_ALIGN: u64 = 4;

/// Bytes of a descriptor table of `size` entries.
pub const fn desc_table_size(size: u16) -> u64 {
    16 * size as u64
}
/// Bytes of an available ring of `size` entries: flags, idx, ring, `used_event`.
pub const fn avail_ring_size(size: u16) -> u64 {
    4 + 2 * size as u64 + 2
}
/// Bytes of a used ring of `size` entries: flags, idx, ring of (id, len), `avail_event`.
pub const fn used_ring_size(size: u16) -> u64 {
    4 + 8 * size as u64 + 2
}

/// Whether an index moving from `old` to `new` passes `event`, the other side's
/// "notify me once you pass this" index (the virtio spec's `vring_need_event`, with
/// wrapping 16-bit arithmetic).
pub const fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_follows_the_spec_across_the_wrap() {
        // The event index lies in (old, new]: notify.
        assert!(vring_need_event(5, 6, 5));
        assert!(vring_need_event(0xffff, 2, 0xfffe));
        assert!(vring_need_event(1, 2, 0xfffe));
        // It lies behind old or ahead of new: do not.
        assert!(!vring_need_event(4, 6, 5));
        assert!(!vring_need_event(6, 6, 5));
        assert!(!vring_need_event(3, 2, 0xfffe));
        // Nothing added: never.
        assert!(!vring_need_event(7, 7, 7));
    }

    #[test]
    fn net_header_bytes_round_trip() {
        let h = NetHdr {
            flags: NET_HDR_F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 1,
        };
        assert_eq!(NetHdr::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[2..4], 54u16.to_le_bytes());
    }

    #[test]
    fn ring_sizes_match_the_spec() {
        assert_eq!(desc_table_size(256), 4096);
        assert_eq!(avail_ring_size(256), 518);
        assert_eq!(used_ring_size(256), 2054);
        assert_eq!(feature(F_VERSION_1), 1 << 32);
    }
}

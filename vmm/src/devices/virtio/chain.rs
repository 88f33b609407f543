//! Walking a descriptor chain the guest offered, trusting nothing: every descriptor
//! index lies inside the table, a chain has at most as many descriptors as the queue
//! has entries (so a loop ends), indirect descriptors (not offered) are refused, each
//! buffer lies entirely inside guest RAM, buffers go one way (readable for the device
//! on transmit, writable on receive) and the total fits the device's limit. A chain
//! that breaks a rule is refused as a whole; the device hands it back unused and
//! counts it.
//!
//! `virtio-queue`'s own iterator follows indirect tables and ends a too-long chain
//! silently; the device needs to tell a bad chain from a short one, so it walks the
//! table itself and uses `virtio-queue` for the rings.

use std::fmt;

use compart_abi::virtio::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Which way a chain's buffers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The device reads them (transmit).
    DeviceReads,
    /// The device writes them (receive).
    DeviceWrites,
}

/// Why a chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadChain {
    /// A descriptor index (the head or a `next`) is outside the table.
    IndexOutOfRange(u16),
    /// More descriptors than the queue has entries: a loop.
    TooLong,
    /// An indirect descriptor (not negotiated).
    Indirect,
    /// A buffer not inside guest RAM.
    OutsideMemory {
        /// Its guest-physical address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A buffer the device may not use that way (a writable one to transmit, a
    /// read-only one to receive into).
    WrongDirection,
    /// The buffers add up to more than the device takes.
    TooBig(u64),
    /// The buffers cannot even hold a net header.
    TooSmall(u64),
    /// The descriptor table itself cannot be read.
    Table,
}

impl fmt::Display for BadChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadChain::IndexOutOfRange(i) => write!(f, "descriptor index {i} outside the table"),
            BadChain::TooLong => f.write_str("chain longer than the queue (a loop)"),
            BadChain::Indirect => f.write_str("indirect descriptor (not negotiated)"),
            BadChain::OutsideMemory { addr, len } => {
                write!(f, "buffer {addr:#x}+{len:#x} outside guest memory")
            }
            BadChain::WrongDirection => f.write_str("buffer of the wrong direction"),
            BadChain::TooBig(n) => write!(f, "chain of {n} bytes, more than the device takes"),
            BadChain::TooSmall(n) => write!(f, "chain of {n} bytes, too small for a frame"),
            BadChain::Table => f.write_str("descriptor table not readable"),
        }
    }
}

/// One buffer of a chain: guest-physical address and length, checked to lie in RAM.
pub type Segment = (GuestAddress, u32);

/// Walks the chain at `head` of the descriptor table at `table` (`size` entries),
/// filling `out` with its buffers; returns their total length.
pub fn walk(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    head: u16,
    direction: Direction,
    max_total: u64,
    out: &mut Vec<Segment>,
) -> Result<u64, BadChain> {
    out.clear();
    let mut index = head;
    let mut total = 0u64;
    for _ in 0..size {
        if index >= size {
            return Err(BadChain::IndexOutOfRange(index));
        }
        let at = table
            .checked_add(16 * u64::from(index))
            .ok_or(BadChain::Table)?;
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, at).map_err(|_| BadChain::Table)?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & DESC_F_INDIRECT != 0 {
            return Err(BadChain::Indirect);
        }
        let writes = flags & DESC_F_WRITE != 0;
        if writes != (direction == Direction::DeviceWrites) {
            return Err(BadChain::WrongDirection);
        }
        let access = if writes {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let inside = len == 0 || mem.check_range(GuestAddress(addr), len as usize, access);
        if !inside {
            return Err(BadChain::OutsideMemory { addr, len });
        }
        total += u64::from(len);
        if total > max_total {
            return Err(BadChain::TooBig(total));
        }
        if len > 0 {
            out.push((GuestAddress(addr), len));
        }
        if flags & DESC_F_NEXT == 0 {
            return Ok(total);
        }
        index = next;
    }
    Err(BadChain::TooLong)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: GuestAddress = GuestAddress(0x1000);

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, TABLE.unchecked_add(16 * u64::from(i)))
            .unwrap();
    }

    fn walk_tx(mem: &GuestMemoryMmap, head: u16) -> Result<(u64, Vec<Segment>), BadChain> {
        let mut out = Vec::new();
        walk(
            mem,
            TABLE,
            8,
            head,
            Direction::DeviceReads,
            0x10000,
            &mut out,
        )
        .map(|n| (n, out))
    }

    #[test]
    fn a_good_chain_yields_its_buffers_and_total() {
        let m = mem();
        put(&m, 0, 0x8000, 12, DESC_F_NEXT, 3);
        put(&m, 3, 0x9000, 100, 0, 0);
        let (n, segs) = walk_tx(&m, 0).unwrap();
        assert_eq!(n, 112);
        assert_eq!(
            segs,
            vec![(GuestAddress(0x8000), 12), (GuestAddress(0x9000), 100)]
        );
    }

    #[test]
    fn a_looped_chain_is_refused_after_as_many_descriptors_as_the_queue_has() {
        let m = mem();
        put(&m, 0, 0x8000, 1, DESC_F_NEXT, 1);
        put(&m, 1, 0x8000, 1, DESC_F_NEXT, 0);
        assert_eq!(walk_tx(&m, 0), Err(BadChain::TooLong));
    }

    #[test]
    fn indices_buffers_directions_sizes_and_indirection_are_checked() {
        let m = mem();
        assert_eq!(walk_tx(&m, 8), Err(BadChain::IndexOutOfRange(8)));
        put(&m, 0, 0x8000, 1, DESC_F_NEXT, 200);
        assert_eq!(walk_tx(&m, 0), Err(BadChain::IndexOutOfRange(200)));
        put(&m, 0, 0xf_fff0, 0x20, 0, 0);
        assert!(matches!(
            walk_tx(&m, 0),
            Err(BadChain::OutsideMemory { .. })
        ));
        put(&m, 0, u64::MAX - 4, 0x20, 0, 0);
        assert!(matches!(
            walk_tx(&m, 0),
            Err(BadChain::OutsideMemory { .. })
        ));
        put(&m, 0, 0x8000, 0x20, DESC_F_WRITE, 0);
        assert_eq!(walk_tx(&m, 0), Err(BadChain::WrongDirection));
        put(&m, 0, 0x8000, 0x20, DESC_F_INDIRECT, 0);
        assert_eq!(walk_tx(&m, 0), Err(BadChain::Indirect));
        put(&m, 0, 0x8000, 0x8000, DESC_F_NEXT, 1);
        put(&m, 1, 0x8000, 0x8001, 0, 0);
        assert_eq!(walk_tx(&m, 0), Err(BadChain::TooBig(0x10001)));
        let mut out = Vec::new();
        assert_eq!(
            walk(
                &m,
                GuestAddress(0xf_fff8),
                8,
                0,
                Direction::DeviceReads,
                1,
                &mut out
            ),
            Err(BadChain::Table)
        );
    }
}

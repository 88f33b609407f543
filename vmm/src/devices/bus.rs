//! The MMIO bus: guest-physical ranges, each served by one device.
//!
//! Ranges never overlap (an insertion that would is refused), so an address has at
//! most one device. The bus is built before a guest's vCPUs start and shared by them
//! (`Arc<MmioBus>`); each device has its own lock, so vCPUs touching different
//! devices do not wait for each other.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use super::BusDevice;

/// A device shared between the bus and whoever else drives it (its event thread).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be put on the bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The range is empty or wraps past the end of the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// First address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap {
        /// First address.
        base: u64,
        /// Length.
        len: u64,
        /// First address of the device already there.
        other: u64,
    },
}

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Guest-physical ranges and their devices.
#[derive(Default)]
pub struct MmioBus {
    /// Keyed by the range's first address.
    ranges: BTreeMap<u64, Entry>,
}

impl fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.ranges
                    .iter()
                    .map(|(base, e)| format!("{base:#x}+{:#x}", e.len)),
            )
            .finish()
    }
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> MmioBus {
        MmioBus::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The last range starting below `end` is the only one that can overlap.
        if let Some((&other, e)) = self.ranges.range(..end).next_back() {
            if other + e.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device whose range holds the whole access `[addr, addr + len)`, with its
    /// range's base.
    fn find(&self, addr: u64, len: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, e) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= e.len);
        fits.then_some((base, &e.device))
    }

    /// A guest read at `addr`: the device fills `data`. Returns `false` when no device
    /// serves the whole access (then `data` is unchanged).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, device)) => {
                lock(device).read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// A guest write of `data` at `addr`. Returns `false` when no device serves the
    /// whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, device)) => {
                lock(device).write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

/// A device whose lock was poisoned (a panic in another access) is still served: its
/// state is the device's own, and the panic has been reported where it happened.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A device that records every access and reads back what was written last.
    #[derive(Debug, Default)]
    pub(crate) struct Recorder {
        pub(crate) accesses: Vec<(u64, u64, Vec<u8>, bool)>,
        pub(crate) last: Vec<u8>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            self.accesses.push((base, offset, data.to_vec(), false));
            for (d, s) in data
                .iter_mut()
                .zip(self.last.iter().chain(std::iter::repeat(&0)))
            {
                *d = *s;
            }
        }

        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.accesses.push((base, offset, data.to_vec(), true));
            self.last = data.to_vec();
        }
    }

    #[test]
    fn an_access_reaches_the_device_whose_range_holds_it_with_its_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        assert!(bus.write(0x1010, &[1, 2, 3, 4]));
        let mut back = [0u8; 4];
        assert!(bus.read(0x10fc, &mut back));
        assert_eq!(back, [1, 2, 3, 4]);
        let d = dev.lock().unwrap();
        assert_eq!(d.accesses[0], (0x1000, 0x10, vec![1, 2, 3, 4], true));
        assert_eq!((d.accesses[1].0, d.accesses[1].1), (0x1000, 0xfc));
    }

    #[test]
    fn accesses_outside_every_range_or_across_its_end_are_not_served() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        let mut data = [0xaau8; 4];
        assert!(!bus.read(0xfff, &mut data[..1]));
        assert!(!bus.read(0x1100, &mut data));
        assert!(!bus.write(0x10fd, &[0; 4]), "crosses the range's end");
        assert!(!bus.write(u64::MAX, &[0; 8]), "wraps");
        assert_eq!(data, [0xaa; 4], "unserved reads leave the buffer alone");
        assert!(dev.lock().unwrap().accesses.is_empty());
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused() {
        let mut bus = MmioBus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default())) as SharedDevice;
        bus.insert(0x1000, 0x100, dev()).unwrap();
        assert_eq!(
            bus.insert(0x10ff, 1, dev()),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 1,
                other: 0x1000
            })
        );
        assert!(matches!(
            bus.insert(0xf00, 0x101, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x2000, 0, dev()),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(0x1100, 0x100, dev()).unwrap();
        bus.insert(0xf00, 0x100, dev()).unwrap();
    }
}

//! Guest-physical memory as the reader sees it: bounds-checked byte ranges.

/// Read access to guest-physical memory.
///
/// Implementations return `None` for any range they do not hold entirely; the reader turns
/// that into [`Error::OutOfBounds`](crate::Error::OutOfBounds) and never reads around it.
pub trait PhysMem {
    /// The `len` bytes at guest-physical address `gpa`.
    fn read(&self, gpa: u64, len: usize) -> Option<&[u8]>;
}

/// A byte slice holding guest-physical memory from `base` on.
///
/// In a guest with identity-mapped RAM this is all of RAM (`base` 0); in tests it is the
/// blob the VMM builds, at the address it is meant for.
#[derive(Clone, Copy, Debug)]
pub struct PhysSlice<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl<'a> PhysSlice<'a> {
    /// `bytes` is the memory at guest-physical `base` and up.
    pub const fn new(base: u64, bytes: &'a [u8]) -> Self {
        Self { base, bytes }
    }
}

impl PhysMem for PhysSlice<'_> {
    fn read(&self, gpa: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(gpa.checked_sub(self.base)?).ok()?;
        self.bytes.get(start..start.checked_add(len)?)
    }
}

/// A slice is guest-physical memory from address 0.
impl PhysMem for [u8] {
    fn read(&self, gpa: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(gpa).ok()?;
        self.get(start..start.checked_add(len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_only() {
        let bytes = [1u8, 2, 3, 4];
        let mem = PhysSlice::new(0x1000, &bytes);
        assert_eq!(mem.read(0x1001, 2), Some(&bytes[1..3]));
        assert_eq!(mem.read(0x1000, 4), Some(&bytes[..]));
        assert_eq!(mem.read(0x1001, 4), None);
        assert_eq!(mem.read(0xFFF, 1), None);
        assert_eq!(mem.read(u64::MAX, 2), None);
        assert_eq!(mem.read(0x1004, usize::MAX), None);
        assert_eq!(bytes[..].read(2, 2), Some(&bytes[2..4]));
    }
}

//! The shared region: raw memory that both endpoints map, addressed by offsets only.
//!
//! Two endpoints in different address spaces see the same bytes at different addresses, so
//! nothing inside the region is ever a pointer. Every access goes through a [`Region`]
//! method that checks the offset against the region's length and alignment, and uses an
//! atomic or volatile access: the peer may write any byte at any time, which must make the
//! *values* wrong, never the access undefined.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64};

use crate::error::ChannelError;

/// Alignment the region's base address must have (one cache line).
pub const REGION_ALIGN: usize = 64;

/// A mapping of the shared region in this address space.
///
/// `Region` is a plain (pointer, length) pair and is `Copy`: the obligation that the mapping
/// stays valid was taken once, by the caller of [`Region::from_raw`].
#[derive(Clone, Copy, Debug)]
pub struct Region {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Region` only hands out atomics and volatile copies of memory that the caller of
// `from_raw` promised stays mapped; such accesses are sound from any thread.
unsafe impl Send for Region {}
// SAFETY: as above; every shared access is atomic or volatile.
unsafe impl Sync for Region {}

impl Region {
    /// Wrap `len` bytes of shared memory starting at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be mapped readable and writable for as long as this `Region` or
    /// any copy of it (or any endpoint built on it) is used, and must not be accessed through
    /// Rust references by this process while it is (other processes may write it freely).
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Result<Region, ChannelError> {
        let base = NonNull::new(ptr).ok_or(ChannelError::InvalidConfig("null region"))?;
        if ptr as usize % REGION_ALIGN != 0 {
            return Err(ChannelError::InvalidConfig(
                "region base is not cache-line aligned",
            ));
        }
        if len > isize::MAX as usize || (ptr as usize).checked_add(len).is_none() {
            return Err(ChannelError::InvalidConfig("region length overflows"));
        }
        Ok(Region { base, len })
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base address in this address space (for the embedder's bookkeeping only).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    #[inline(always)]
    fn check(&self, off: usize, size: usize, align: usize) -> Option<*mut u8> {
        let end = off.checked_add(size)?;
        if end > self.len || off % align != 0 {
            return None;
        }
        // SAFETY: `off + size <= len` so the result stays inside the mapping.
        Some(unsafe { self.base.as_ptr().add(off) })
    }

    /// The 32-bit atomic at `off`, if it lies inside the region and is aligned.
    #[inline(always)]
    pub fn u32_at(&self, off: usize) -> Option<&AtomicU32> {
        let p = self.check(off, 4, 4)?;
        // SAFETY: `p` is in bounds and 4-aligned (the base is 64-aligned); the memory stays
        // mapped (contract of `from_raw`) and is only accessed atomically or volatilely.
        Some(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// Whether `len` bytes from `off` lie inside the region.
    #[inline]
    pub fn contains(&self, off: usize, len: usize) -> bool {
        self.check(off, len, 1).is_some()
    }

    /// The 32-bit atomic at `off`, without the checks of [`u32_at`](Self::u32_at).
    ///
    /// # Safety
    ///
    /// `off` must be 4-aligned and `off + 4 <= len()` (checked once, for example with
    /// `u32_at`, by the code that computed `off`).
    #[inline(always)]
    pub unsafe fn u32_unchecked(&self, off: usize) -> &AtomicU32 {
        debug_assert!(self.check(off, 4, 4).is_some());
        // SAFETY: in bounds and aligned (caller's contract); the memory stays mapped and is
        // only accessed atomically or volatilely (contract of `from_raw`).
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    /// The 64-byte slot at `off`, without the checks of [`slot_at`](Self::slot_at).
    ///
    /// # Safety
    ///
    /// `off` must be 8-aligned and `off + 64 <= len()` (checked once by the code that
    /// computed `off`).
    #[inline(always)]
    pub unsafe fn slot_unchecked(&self, off: usize) -> &[AtomicU64; 8] {
        debug_assert!(self.check(off, 64, 8).is_some());
        // SAFETY: `off..off + 64` is in bounds and 8-aligned (caller's contract); eight
        // `AtomicU64`s are those 64 bytes; the memory stays mapped and is only accessed
        // atomically or volatilely (contract of `from_raw`).
        unsafe { &*self.base.as_ptr().add(off).cast::<[AtomicU64; 8]>() }
    }

    /// The 64-bit atomic at `off`, if it lies inside the region and is aligned.
    #[inline(always)]
    pub fn u64_at(&self, off: usize) -> Option<&AtomicU64> {
        let p = self.check(off, 8, 8)?;
        // SAFETY: as in `u32_at`, with 8-byte alignment.
        Some(unsafe { AtomicU64::from_ptr(p.cast()) })
    }

    /// The eight 64-bit atomics of the 64-byte slot at `off`, if it lies inside the region
    /// and is aligned (one bounds check for a whole message).
    #[inline(always)]
    pub fn slot_at(&self, off: usize) -> Option<&[AtomicU64; 8]> {
        let p = self.check(off, 64, 8)?;
        // SAFETY: `p..p + 64` is in bounds and 8-aligned; `AtomicU64` has the size and
        // alignment of `u64`, so eight of them are the 64 bytes there; the memory stays
        // mapped (contract of `from_raw`) and is only accessed atomically or volatilely.
        Some(unsafe { &*p.cast::<[AtomicU64; 8]>() })
    }

    /// Copy `dst.len()` bytes starting at region offset `off` into `dst`, volatilely.
    ///
    /// Returns `None` (copying nothing) if the range is not inside the region.
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) -> Option<()> {
        let src = self.check(off, dst.len(), 1)?;
        let mut i = 0;
        // Bytes up to an 8-aligned source, then words, then the tail.
        while i < dst.len() && (src as usize + i) % 8 != 0 {
            // SAFETY: `src + i` is inside the checked range.
            dst[i] = unsafe { src.add(i).read_volatile() };
            i += 1;
        }
        while i + 8 <= dst.len() {
            // SAFETY: inside the checked range and 8-aligned by the loop above.
            let w = unsafe { src.add(i).cast::<u64>().read_volatile() };
            dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
            i += 8;
        }
        while i < dst.len() {
            // SAFETY: `src + i` is inside the checked range.
            dst[i] = unsafe { src.add(i).read_volatile() };
            i += 1;
        }
        Some(())
    }

    /// Copy `src` into the region at offset `off`, volatilely.
    ///
    /// Returns `None` (copying nothing) if the range is not inside the region.
    pub fn write_bytes(&self, off: usize, src: &[u8]) -> Option<()> {
        let dst = self.check(off, src.len(), 1)?;
        let mut i = 0;
        while i < src.len() && (dst as usize + i) % 8 != 0 {
            // SAFETY: `dst + i` is inside the checked range.
            unsafe { dst.add(i).write_volatile(src[i]) };
            i += 1;
        }
        while i + 8 <= src.len() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&src[i..i + 8]);
            // SAFETY: inside the checked range and 8-aligned by the loop above.
            unsafe {
                dst.add(i)
                    .cast::<u64>()
                    .write_volatile(u64::from_ne_bytes(w))
            };
            i += 8;
        }
        while i < src.len() {
            // SAFETY: `dst + i` is inside the checked range.
            unsafe { dst.add(i).write_volatile(src[i]) };
            i += 1;
        }
        Some(())
    }

    /// Fill `len` bytes at offset `off` with `byte`, volatilely.
    pub fn fill(&self, off: usize, len: usize, byte: u8) -> Option<()> {
        let dst = self.check(off, len, 1)?;
        for i in 0..len {
            // SAFETY: `dst + i` is inside the checked range.
            unsafe { dst.add(i).write_volatile(byte) };
        }
        Some(())
    }
}

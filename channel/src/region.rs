//! The shared region: raw memory that both endpoints map, addressed by offsets only.
//!
//! Two endpoints in different address spaces see the same bytes at different addresses, so
//! nothing inside the region is ever a pointer. Every access goes through a [`Region`]
//! method that checks the offset against the region's length and alignment, and uses an
//! atomic or volatile access, or a `rep movsb` in an `asm!` block for long copies: the peer
//! may write any byte at any time, which must make the *values* wrong, never the access
//! undefined.

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

// SAFETY: a `Region` only hands out atomics and volatile or `asm!` copies of memory that the
// caller of `from_raw` promised stays mapped; such accesses are sound from any thread.
unsafe impl Send for Region {}
// SAFETY: as above; every shared access is atomic, volatile or inside an `asm!` block.
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

    /// Copy `dst.len()` bytes starting at region offset `off` into `dst` (the peer may write
    /// them meanwhile: the bytes are then unspecified, the copy stays in bounds). Copies of
    /// [`BULK_COPY_MIN`] bytes or more use `rep movsb` on x86_64.
    ///
    /// Returns `None` (copying nothing) if the range is not inside the region.
    #[inline]
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) -> Option<()> {
        let src = self.check(off, dst.len(), 1)?;
        // SAFETY: `src..src + len` is inside the region (checked) and shared; `dst` is
        // borrowed mutably, so private, and `len` bytes long.
        unsafe { copy_shared(dst.as_mut_ptr(), src, dst.len(), Shared::Src) };
        Some(())
    }

    /// Copy `src` into the region at offset `off` (`rep movsb` from [`BULK_COPY_MIN`] bytes on
    /// x86_64).
    ///
    /// Returns `None` (copying nothing) if the range is not inside the region.
    #[inline]
    pub fn write_bytes(&self, off: usize, src: &[u8]) -> Option<()> {
        let dst = self.check(off, src.len(), 1)?;
        // SAFETY: `dst..dst + len` is inside the region (checked) and shared; `src` is
        // borrowed, so nobody writes it, and `len` bytes long.
        unsafe { copy_shared(dst, src.as_ptr(), src.len(), Shared::Dst) };
        Some(())
    }

    /// Copy `len` bytes at offset `src_off` of region `src` to offset `off` of this region:
    /// one copy from one shared region into another (or between two places of one region;
    /// the bytes of overlapping ranges come out unspecified, never out of bounds).
    ///
    /// Returns `None` (copying nothing) if either range is not inside its region.
    #[inline]
    pub fn copy_from(&self, off: usize, src: &Region, src_off: usize, len: usize) -> Option<()> {
        let d = self.check(off, len, 1)?;
        let s = src.check(src_off, len, 1)?;
        // SAFETY: both ranges are inside their regions (checked), which stay mapped
        // (contract of `from_raw`).
        unsafe { copy_between_shared(d, s, len) };
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

/// Copies of at least this many bytes use `rep movsb` on x86_64; shorter ones (and all on
/// other targets) 8-byte volatile accesses, which start faster.
pub const BULK_COPY_MIN: usize = 256;

/// Which side of a [`copy_shared`] is the shared memory (the other is private).
#[derive(Clone, Copy)]
enum Shared {
    Src,
    Dst,
}

/// Copy `len` bytes from `src` to `dst`, where the side named by `shared` may be memory that
/// another party writes meanwhile, and the other side is private to this thread. The bytes
/// copied from shared memory are then unspecified; the copy itself stays defined: the shared
/// side is only accessed volatilely or inside an `asm!` block, never through a reference.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the private side
/// must not be accessed by anyone else during the copy.
#[inline(always)]
unsafe fn copy_shared(dst: *mut u8, src: *const u8, len: usize, shared: Shared) {
    #[cfg(target_arch = "x86_64")]
    if len >= BULK_COPY_MIN {
        // SAFETY: the caller's contract.
        unsafe { rep_movsb(dst, src, len) };
        return;
    }
    let at = match shared {
        Shared::Src => src as usize,
        Shared::Dst => dst as usize,
    };
    let head = at.wrapping_neg() % 8;
    let mut i = 0;
    // Bytes up to an 8-aligned shared address, then words, then the tail.
    while i < len && i < head {
        // SAFETY: `i < len`: inside both ranges (caller's contract).
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
    while i + 8 <= len {
        // SAFETY: `i + 8 <= len`: inside both ranges. The shared side is 8-aligned here
        // (the loop above) and accessed volatilely; the private side, unaligned, is nobody
        // else's (caller's contract).
        unsafe {
            match shared {
                Shared::Src => {
                    let w = src.add(i).cast::<u64>().read_volatile();
                    dst.add(i).cast::<u64>().write_unaligned(w);
                }
                Shared::Dst => {
                    let w = src.add(i).cast::<u64>().read_unaligned();
                    dst.add(i).cast::<u64>().write_volatile(w);
                }
            }
        }
        i += 8;
    }
    while i < len {
        // SAFETY: `i < len`: inside both ranges.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
}

/// Copy `len` bytes between two ranges of shared memory (see [`copy_shared`]): with
/// `rep movsb` when long enough on x86_64, else through a private buffer on the stack.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `len` bytes.
#[inline]
unsafe fn copy_between_shared(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if len >= BULK_COPY_MIN {
        // SAFETY: the caller's contract.
        unsafe { rep_movsb(dst, src, len) };
        return;
    }
    let mut tmp = [0u8; BULK_COPY_MIN];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(tmp.len());
        // SAFETY: `done + n <= len`, inside both ranges (caller's contract); `tmp` is a
        // private buffer of at least `n` bytes.
        unsafe {
            copy_shared(tmp.as_mut_ptr(), src.add(done), n, Shared::Src);
            copy_shared(dst.add(done), tmp.as_ptr(), n, Shared::Dst);
        }
        done += n;
    }
}

/// Copy `len` bytes with `rep movsb`, which on processors with fast-string copies (ERMS,
/// FSRM) runs at the memory system's speed from a few hundred bytes up.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `len` bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rep_movsb(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: `rep movsb` reads `rcx` bytes from `rsi` upwards and writes them to `rdi`
    // upwards (the direction flag is clear on entry to every `asm!` block, as Rust
    // requires), so it touches exactly `src..src + len` and `dst..dst + len`, which the
    // caller guarantees are valid; if they overlap the bytes come out unspecified, which is
    // not undefined behaviour for an asm block. It uses no stack and leaves the flags alone;
    // rcx, rsi and rdi are clobbered and declared so. Memory is neither `nomem` nor
    // `readonly`, so the compiler assumes the block reads and writes any memory.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
}

//! Plain old data: structures of the contract that cross the wall as raw bytes.
//!
//! The proof that a structure may be viewed as bytes, and rebuilt from any bytes, is
//! written once, in [`Pod`]'s provided methods; each structure of the contract only
//! states, with `unsafe impl`, that it meets the trait's conditions (and asserts its
//! size, which is how "no padding" is checked at build time). This follows rust-vmm
//! vm-memory's `ByteValued`.

use core::mem::size_of;

/// A type whose values are nothing but their bytes.
///
/// # Safety
///
/// Implement it only for a type that is `#[repr(C)]` (or `#[repr(transparent)]`),
/// has no padding bytes (so every byte of a value is initialised), and whose fields
/// are all integers, arrays of integers or other `Pod` types (so every bit pattern is
/// a valid value: no `bool`, `char`, enum, reference or pointer).
pub unsafe trait Pod: Copy + 'static {
    /// The value's bytes, as they are stored in guest memory.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: the slice covers exactly the value, which is borrowed for the
        // slice's lifetime; by the trait's contract it has no padding, so every one of
        // its size_of::<Self>() bytes is initialised, and u8 needs no alignment.
        unsafe {
            core::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>())
        }
    }

    /// The value held by the first `size_of::<Self>()` bytes of `bytes`, or `None`
    /// when `bytes` is shorter. The bytes need no alignment and may come from anyone
    /// (a guest, a file): any content is a valid value, to be validated by the caller.
    fn read_from(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.get(..size_of::<Self>())?;
        // SAFETY: `bytes` has size_of::<Self>() readable bytes; read_unaligned copies
        // them without an alignment requirement; by the trait's contract every bit
        // pattern is a valid Self.
        Some(unsafe { bytes.as_ptr().cast::<Self>().read_unaligned() })
    }
}

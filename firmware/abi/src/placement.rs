//! The placement page's sequence lock, both halves: the VMM writes a
//! [`PlacementPage`] while guests may read it, and a reader keeps only what it read
//! between two equal, even values of `generation`.
//!
//! ```text
//!   writer (the VMM, one at a time)         reader (the guest)
//!   g = generation                          g1 = generation        (acquire)
//!   generation = g + 1 (odd)                if g1 is odd: busy
//!   fence(release)                          read magic, count, entry
//!   store every other field                 fence(acquire)
//!   generation = g + 2  (release)           g2 = generation
//!                                           consistent iff g1 == g2
//! ```
//!
//! A field the reader loads from the writer's stores is ordered after the odd value
//! (release fence → acquire fence), so the reader's second look sees the generation
//! changed; a reader that saw the even value stored last sees every field before it.
//! Written once, generic over [`PageAccess`], so that the loom model in
//! `tests/loom.rs` checks this very code (with a negative control per fence).

use core::sync::atomic::Ordering;

use crate::{PlacementEntry, PlacementPage, MAX_VCPUS};

/// How many times [`read`] tries before it gives up on a page being rewritten.
pub const READ_ATTEMPTS: u32 = 1000;

/// Access to the memory holding a placement page, abstracted so that the model
/// checker can substitute its atomics.
pub trait PageAccess {
    /// Atomic load of `generation`.
    fn load_generation(&self, order: Ordering) -> u64;
    /// Atomic store of `generation`.
    fn store_generation(&self, value: u64, order: Ordering);
    /// A fence of the same memory model as the generation word.
    fn fence(order: Ordering);
    /// Stores every field of `page` except `generation` (readers may see them torn;
    /// the sequence lock makes them discard such reads).
    fn store_fields(&self, page: &PlacementPage);
    /// Loads `magic`, `vcpu_count` and entry `vcpu` (below `MAX_VCPUS`).
    fn load_entry(&self, vcpu: usize) -> (u64, u32, PlacementEntry);
}

impl PlacementPage {
    /// A page listing `entries` (at most `MAX_VCPUS` of them), generation 0.
    pub fn new(entries: &[PlacementEntry]) -> PlacementPage {
        let mut page = PlacementPage {
            magic: PlacementPage::MAGIC,
            generation: 0,
            vcpu_count: entries.len().min(MAX_VCPUS as usize) as u32,
            _reserved: 0,
            vcpus: [PlacementEntry::EMPTY; MAX_VCPUS as usize],
        };
        for (slot, e) in page.vcpus.iter_mut().zip(entries) {
            *slot = *e;
        }
        page
    }
}

/// Writer: replaces the page's entries by `entries`. There must be one writer at a
/// time per page.
pub fn write<P: PageAccess>(page: &P, entries: &[PlacementEntry]) {
    let fields = PlacementPage::new(entries);
    let g = page.load_generation(Ordering::Relaxed) | 1;
    page.store_generation(g, Ordering::Relaxed);
    P::fence(Ordering::Release);
    page.store_fields(&fields);
    page.store_generation(g + 1, Ordering::Release);
}

/// What one look at the page found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// A consistent entry of a valid page.
    Entry(PlacementEntry),
    /// A consistent page that has no such vCPU, or no valid page at all.
    Absent,
    /// The writer was at work: look again.
    Busy,
}

/// Reader, one attempt: vCPU `vcpu`'s entry if the page stayed still meanwhile.
pub fn look<P: PageAccess>(page: &P, vcpu: u32) -> Look {
    let before = page.load_generation(Ordering::Acquire);
    if before % 2 == 1 {
        return Look::Busy;
    }
    let index = (vcpu as usize).min(MAX_VCPUS as usize - 1);
    let (magic, count, entry) = page.load_entry(index);
    P::fence(Ordering::Acquire);
    if page.load_generation(Ordering::Relaxed) != before {
        return Look::Busy;
    }
    if magic == PlacementPage::MAGIC && vcpu < count.min(MAX_VCPUS) {
        Look::Entry(entry)
    } else {
        Look::Absent
    }
}

/// Reader: vCPU `vcpu`'s entry, looking up to [`READ_ATTEMPTS`] times while the page
/// is being rewritten; `None` when there is no such entry or the writer never paused.
pub fn read<P: PageAccess>(page: &P, vcpu: u32) -> Option<PlacementEntry> {
    for _ in 0..READ_ATTEMPTS {
        match look(page, vcpu) {
            Look::Entry(e) => return Some(e),
            Look::Absent => return None,
            Look::Busy => core::hint::spin_loop(),
        }
    }
    None
}

/// A placement page in memory shared with the other side: the generation through an
/// atomic, the other fields through volatile copies (the other side is another
/// process or a guest, which the compiler cannot see).
#[derive(Debug, Clone, Copy)]
pub struct RawPage(*mut PlacementPage);

impl RawPage {
    /// The page at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must be 8-byte aligned and point to `size_of::<PlacementPage>()` bytes
    /// that stay mapped while the `RawPage` is used, readable, and writable if
    /// [`write()`] is called; other parties access them only through this protocol.
    pub const unsafe fn new(ptr: *mut PlacementPage) -> RawPage {
        RawPage(ptr)
    }

    fn generation(&self) -> &core::sync::atomic::AtomicU64 {
        // SAFETY: by `new`'s contract the page is mapped and aligned, so its
        // generation field is an aligned u64 that lives as long as `self` is used;
        // every party accesses it atomically.
        unsafe {
            core::sync::atomic::AtomicU64::from_ptr(core::ptr::addr_of_mut!((*self.0).generation))
        }
    }
}

impl PageAccess for RawPage {
    fn load_generation(&self, order: Ordering) -> u64 {
        self.generation().load(order)
    }

    fn store_generation(&self, value: u64, order: Ordering) {
        self.generation().store(value, order)
    }

    fn fence(order: Ordering) {
        core::sync::atomic::fence(order)
    }

    fn store_fields(&self, page: &PlacementPage) {
        let p = self.0;
        // SAFETY: by `new`'s contract the page is mapped, writable and aligned; the
        // fields are plain integers, written volatilely because the reader is outside
        // this program; the sequence lock makes readers discard torn values.
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).magic), page.magic);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).vcpu_count), page.vcpu_count);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*p)._reserved), page._reserved);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).vcpus), page.vcpus);
        }
    }

    fn load_entry(&self, vcpu: usize) -> (u64, u32, PlacementEntry) {
        let p = self.0.cast_const();
        let vcpu = vcpu.min(MAX_VCPUS as usize - 1);
        // SAFETY: by `new`'s contract the page is mapped, readable and aligned, and
        // `vcpu` is in bounds; the fields are plain integers (any value is valid), read
        // volatilely because the writer is outside this program.
        unsafe {
            (
                core::ptr::read_volatile(core::ptr::addr_of!((*p).magic)),
                core::ptr::read_volatile(core::ptr::addr_of!((*p).vcpu_count)),
                core::ptr::read_volatile(core::ptr::addr_of!((*p).vcpus[vcpu])),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(poll_us: u32) -> PlacementEntry {
        PlacementEntry {
            poll_us,
            ..PlacementEntry::EMPTY
        }
    }

    #[repr(align(8))]
    struct Page(PlacementPage);

    #[test]
    fn writes_leave_an_even_generation_and_readers_get_the_entries() {
        let mut mem = Page(PlacementPage::new(&[]));
        // SAFETY: `mem` is an aligned PlacementPage that outlives `page`.
        let page = unsafe { RawPage::new(&mut mem.0) };
        assert_eq!(read(&page, 0), None, "an empty page lists no vCPU");
        write(&page, &[entry(7), entry(9)]);
        write(&page, &[entry(5), entry(3)]);
        assert_eq!(page.load_generation(Ordering::Relaxed), 4);
        assert_eq!(read(&page, 0), Some(entry(5)));
        assert_eq!(read(&page, 1), Some(entry(3)));
        assert_eq!(read(&page, 2), None);
        assert_eq!(read(&page, u32::MAX), None);
    }

    #[test]
    fn an_odd_generation_or_a_wrong_magic_is_never_read() {
        let mut mem = Page(PlacementPage::new(&[entry(1)]));
        // SAFETY: as above.
        let page = unsafe { RawPage::new(&mut mem.0) };
        page.store_generation(3, Ordering::Relaxed);
        assert_eq!(look(&page, 0), Look::Busy);
        assert_eq!(read(&page, 0), None);
        page.store_generation(4, Ordering::Relaxed);
        assert_eq!(look(&page, 0), Look::Entry(entry(1)));
        mem.0.magic = 0;
        // SAFETY: as above.
        let page = unsafe { RawPage::new(&mut mem.0) };
        assert_eq!(look(&page, 0), Look::Absent);
    }
}

//! Where this guest's vCPUs run, from the placement page the VMM maintains: whether a
//! vCPU owns its host core (poll for work before sleeping) or shares it (sleep as soon
//! as there is no work). The VMM kicks the guest after every change. The page is read
//! through the sequence lock in `compart_abi::placement`.

use compart_abi::placement::{self, PageAccess, RawPage};
use compart_abi::{PlacementEntry, PlacementPage, PLACEMENT_GPA};

use crate::boot_info;

fn page() -> Option<RawPage> {
    (boot_info().placement_page == PLACEMENT_GPA).then(|| {
        // SAFETY: the VMM maps the placement page read-only at PLACEMENT_GPA (page
        // aligned) for the guest's lifetime; we only read it, through the lock.
        unsafe { RawPage::new(PLACEMENT_GPA as *mut PlacementPage) }
    })
}

/// Whether the VMM gave this guest a placement page.
pub fn present() -> bool {
    boot_info().placement_page == PLACEMENT_GPA
}

/// The page's generation: changes whenever the VMM rewrites it (0 without a page).
pub fn generation() -> u64 {
    page().map_or(0, |p| {
        p.load_generation(core::sync::atomic::Ordering::Acquire)
    })
}

/// vCPU `vcpu`'s current entry, read consistently (retrying while the VMM writes).
pub fn entry(vcpu: u32) -> Option<PlacementEntry> {
    placement::read(&page()?, vcpu)
}

/// How long vCPU `vcpu` should poll for work before sleeping, in microseconds.
pub fn poll_us(vcpu: u32) -> u32 {
    entry(vcpu).map_or(0, |e| e.poll_us)
}

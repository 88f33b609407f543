//! Where this guest's vCPUs run, from the placement page the VMM maintains: whether a
//! vCPU owns its host core (poll for work before sleeping) or shares it (sleep as soon
//! as there is no work). The VMM kicks the guest after every change.

use core::sync::atomic::{fence, AtomicU64, Ordering};

use compart_abi::{PlacementEntry, PlacementPage, PLACEMENT_GPA};

use crate::boot_info;

fn page() -> Option<*const PlacementPage> {
    (boot_info().placement_page == PLACEMENT_GPA).then_some(PLACEMENT_GPA as *const PlacementPage)
}

/// The page's generation: changes whenever the VMM rewrites it (0 without a page).
pub fn generation() -> u64 {
    match page() {
        // SAFETY: the placement page is mapped read-only at PLACEMENT_GPA for the
        // guest's lifetime; the generation is an aligned u64 the VMM updates atomically.
        Some(p) => unsafe {
            (*(core::ptr::addr_of!((*p).generation) as *const AtomicU64)).load(Ordering::Acquire)
        },
        None => 0,
    }
}

/// vCPU `vcpu`'s current entry, read consistently (retrying while the VMM writes).
pub fn entry(vcpu: u32) -> Option<PlacementEntry> {
    let p = page()?;
    for _ in 0..1000 {
        let before = generation();
        if before % 2 == 1 {
            core::hint::spin_loop();
            continue;
        }
        // SAFETY: as in `generation`; the entry is plain data read volatilely, and
        // checked for consistency with the generation afterwards.
        let (magic, count, e) = unsafe {
            (
                core::ptr::read_volatile(core::ptr::addr_of!((*p).magic)),
                core::ptr::read_volatile(core::ptr::addr_of!((*p).vcpu_count)),
                core::ptr::read_volatile(core::ptr::addr_of!((*p).vcpus[(vcpu as usize) % 16])),
            )
        };
        fence(Ordering::Acquire);
        if generation() == before {
            return (magic == PlacementPage::MAGIC && vcpu < count).then_some(e);
        }
    }
    None
}

/// How long vCPU `vcpu` should poll for work before sleeping, in microseconds.
pub fn poll_us(vcpu: u32) -> u32 {
    entry(vcpu).map_or(0, |e| e.poll_us)
}

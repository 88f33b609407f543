//! The global allocator, over the heap range the VMM describes in the boot info.

use compart_abi::BootInfo;
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

pub(crate) fn init(info: &BootInfo) {
    // SAFETY: the VMM reserved [heap_start, heap_start + heap_size) for the heap: it
    // is guest RAM, identity-mapped, used by nothing else; init runs once, on vCPU 0,
    // before anything allocates.
    unsafe {
        HEAP.lock()
            .init(info.heap_start as *mut u8, info.heap_size as usize)
    };
}

/// Bytes of heap not allocated (some may be fragmented).
pub(crate) fn free() -> u64 {
    HEAP.lock().free() as u64
}

//! x86-64 machine state the VMM prepares so that a guest starts in ring 3, in long
//! mode, with no ring-0 code run before its first instruction (see `compart-abi` for
//! the guest-physical layout this writes).

pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod paging;
pub mod regs;

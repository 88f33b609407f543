//! Privileged operations, performed for ring 3 by the ring-0 stub (see `entry.rs` and
//! "Entering ring 0" in `compart_abi`). A halt enters ring 0 through its own gate
//! (`int3`) and comes back through the interrupt that ends it: about four emulated
//! instructions. An MSR access traps with #GP and the stub executes it: an exception
//! round trip through emulated ring 0 with some twenty instructions, so MSRs belong
//! off the fast path.

/// Sleeps until an interrupt arrives (a doorbell, the timer, or the VMM's kick).
/// Afterwards the P-state driver follows a new platform limit if the VMM announced
/// one (see [`crate::pstate`]): every guest that waits honours it.
pub fn halt() {
    halt_only();
    crate::pstate::follow_platform();
}

/// [`halt`] without looking at the platform's limit (secondary vCPUs, exit paths).
pub(crate) fn halt_only() {
    // SAFETY: `int3` enters the halt gate, whose stub halts with interrupts enabled;
    // the interrupt returns to the next instruction with our registers, flags and
    // stack as they were (ring 0 runs on its own stack).
    unsafe { core::arch::asm!("int3", options(nomem, nostack, preserves_flags)) };
}

/// Reads an MSR. `None` when the VMM refused the access.
pub fn read_msr(msr: u32) -> Option<u64> {
    let (lo, hi): (u32, u32);
    let refused: u8;
    // SAFETY: `rdmsr` traps to the stub, which reads MSR ecx into edx:eax and
    // reports a refusal in CF.
    unsafe {
        core::arch::asm!("rdmsr", "setc {r}",
            in("ecx") msr, out("eax") lo, out("edx") hi, r = out(reg_byte) refused,
            options(nomem, nostack));
    }
    (refused == 0).then_some(u64::from(hi) << 32 | u64::from(lo))
}

/// Writes an MSR. `false` when the VMM refused the value.
pub fn write_msr(msr: u32, value: u64) -> bool {
    let refused: u8;
    // SAFETY: `wrmsr` traps to the stub, which writes edx:eax to MSR ecx and
    // reports a refusal in CF.
    unsafe {
        core::arch::asm!("wrmsr", "setc {r}",
            in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
            r = out(reg_byte) refused, options(nomem, nostack));
    }
    refused == 0
}

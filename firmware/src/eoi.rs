//! Whether this host needs the guest's end-of-interrupt.
//!
//! An interrupt stays in service in the local APIC until the guest writes the EOI
//! register, and blocks every interrupt of equal or lower priority until then. On
//! hardware-virtualised KVM that is how it works, and the interrupt entry's EOI store
//! is one exit (none with APICv/AVIC). The nested host we develop on completes an
//! interrupt itself when it delivers it, so the store only costs an emulated
//! instruction and an MMIO exit on every wake-up (≈ 4.5 µs here).
//!
//! [`probe`] finds out at boot: it sends itself an interrupt, halts through the entry
//! without the EOI, and reads whether the interrupt is still in service. Only if it
//! is not does it point every interrupt gate at that entry; otherwise it completes
//! the probe's interrupt and leaves the gates as the VMM built them.

use core::sync::atomic::{AtomicBool, Ordering};

use compart_abi::{IDT_GPA, TIMER_VECTOR};

use crate::{lapic, ring0};

// Labels in `entry.rs`; only their addresses are taken.
extern "C" {
    static compart_irq_entry: u8;
    static compart_irq_entry_no_eoi: u8;
}

static HOST_COMPLETES: AtomicBool = AtomicBool::new(false);

/// Whether the boot probe found that the host completes interrupts on delivery (so
/// interrupts enter without an EOI).
pub fn host_completes_interrupts() -> bool {
    HOST_COMPLETES.load(Ordering::Relaxed)
}

/// Points interrupt gate `vector` at `handler`.
fn set_gate(vector: u8, handler: u64) {
    let gate = (IDT_GPA + 16 * u64::from(vector)) as *mut u64;
    // SAFETY: the IDT is 256 16-byte gates at IDT_GPA, identity-mapped and writable
    // by the guest (it is the guest's own table). Only the low quadword changes: the
    // firmware's entries share their upper 32 address bits (checked below), so one
    // aligned 8-byte store switches the gate atomically for any vCPU that takes it.
    unsafe {
        let high = core::ptr::read_volatile(gate.add(1)) & 0xffff_ffff;
        assert_eq!(
            high,
            handler >> 32,
            "firmware entries share their upper address bits"
        );
        let low = core::ptr::read_volatile(gate);
        // Offset bits 0–15 are bits 0–15 of the gate, bits 16–31 its bits 48–63.
        let low =
            (low & 0x0000_ffff_ffff_0000) | (handler & 0xffff) | ((handler >> 16) & 0xffff) << 48;
        core::ptr::write_volatile(gate, low);
    }
}

/// The addresses of the interrupt entries with and without the EOI.
fn entries() -> (u64, u64) {
    (
        core::ptr::addr_of!(compart_irq_entry) as u64,
        core::ptr::addr_of!(compart_irq_entry_no_eoi) as u64,
    )
}

/// Points interrupt `vector` (32–255) at the entry with the EOI or at the one without,
/// whatever the probe chose: for tests that exercise both entries on any host. The
/// entry without the EOI is only safe for a vector where [`host_completes_interrupts`].
///
/// # Panics
/// If `vector` is an exception vector (below 32).
pub fn use_entry(vector: u8, with_eoi: bool) {
    assert!(vector >= 32, "vector {vector} is an exception");
    let (with, without) = entries();
    set_gate(vector, if with_eoi { with } else { without });
}

/// Runs the probe (once, on vCPU 0 before the guest's main): costs a self-interrupt,
/// one halt and a few APIC accesses.
pub(crate) fn probe() {
    let (with_eoi, without) = entries();
    set_gate(TIMER_VECTOR, without);
    lapic::send_self(TIMER_VECTOR);
    // Another interrupt (a kick) may end the halt first; halt until ours came.
    ring0::halt();
    while lapic::pending(TIMER_VECTOR) {
        ring0::halt();
    }
    let completes = !lapic::in_service(TIMER_VECTOR);
    if completes {
        for v in 32..=255u8 {
            set_gate(v, without);
        }
    } else {
        lapic::end_of_interrupt();
        set_gate(TIMER_VECTOR, with_eoi);
    }
    HOST_COMPLETES.store(completes, Ordering::Relaxed);
}

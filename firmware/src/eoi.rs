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
//! is not does it have every interrupt gate point at that entry; otherwise it
//! completes the probe's interrupt and leaves the gates as the VMM built them. The IDT
//! is not writable from ring 3, so the gates change through the VMM
//! (`ports::IRQ_ENTRY`), which takes the entries from the image's header.
//!
//! Only a guest of one vCPU probes: ring 3 reaches the APIC page only there
//! ([`compart_abi::lapic_user_accessible`]). Others keep the EOI.

use core::sync::atomic::{AtomicBool, Ordering};

use compart_abi::{lapic_user_accessible, ports, IrqEntry, TIMER_VECTOR};

use crate::{boot_info, lapic, ring0};

static HOST_COMPLETES: AtomicBool = AtomicBool::new(false);

/// Whether the boot probe found that the host completes interrupts on delivery (so
/// interrupts enter without an EOI).
pub fn host_completes_interrupts() -> bool {
    HOST_COMPLETES.load(Ordering::Relaxed)
}

/// Asks the VMM to point the gates of `request` at the entry it names.
fn request(request: IrqEntry) {
    // SAFETY: IRQ_ENTRY is one of the ports ring 3 may write; the VMM rewrites the
    // IDT, which this guest only reads (one vCPU: no gate changes under another).
    unsafe { crate::outl(ports::IRQ_ENTRY, request.encode()) };
}

/// Points interrupt `vector` (32–255) at the entry with the EOI or at the one without,
/// whatever the probe chose: for tests that exercise both entries on any host. The
/// entry without the EOI is only safe for a vector where [`host_completes_interrupts`].
///
/// # Panics
/// If `vector` is an exception vector (below 32), or the guest has more than one
/// vCPU (its gates are the VMM's to keep).
pub fn use_entry(vector: u8, with_eoi: bool) {
    assert!(vector >= 32, "vector {vector} is an exception");
    assert!(
        lapic_user_accessible(boot_info().vcpu_count),
        "only a guest of one vCPU chooses its interrupt entries"
    );
    request(IrqEntry {
        vector: Some(vector),
        without_eoi: !with_eoi,
    });
}

/// Runs the probe (once, on vCPU 0 before the guest's main): costs a self-interrupt,
/// one halt, a few APIC accesses and two exits to the VMM.
pub(crate) fn probe() {
    if !lapic_user_accessible(boot_info().vcpu_count) {
        return;
    }
    request(IrqEntry {
        vector: Some(TIMER_VECTOR),
        without_eoi: true,
    });
    lapic::send_self(TIMER_VECTOR);
    // Another interrupt (a kick) may end the halt first; halt until ours came.
    ring0::halt_only();
    while lapic::pending(TIMER_VECTOR) {
        ring0::halt_only();
    }
    let completes = !lapic::in_service(TIMER_VECTOR);
    if completes {
        request(IrqEntry {
            vector: None,
            without_eoi: true,
        });
    } else {
        lapic::end_of_interrupt();
        request(IrqEntry {
            vector: Some(TIMER_VECTOR),
            without_eoi: false,
        });
    }
    HOST_COMPLETES.store(completes, Ordering::Relaxed);
}

//! The local APIC, reached from ring 3 with plain loads and stores in a guest of one
//! vCPU (`compart_abi::lapic_user_accessible`: there its page is mapped for ring 3),
//! and KVM's in-kernel LAPIC serves every access without an exit to the VMM
//! (`compart_abi::lapic` has the registers). In a guest of more vCPUs every access
//! here faults: the firmware does not use it there.

use compart_abi::lapic;

/// Reads the 32-bit APIC register at offset `reg`.
pub fn read(reg: u64) -> u32 {
    // SAFETY: the APIC page is identity-mapped MMIO (user-accessible in a one-vCPU
    // guest; in others the access faults and stops the guest); every register
    // offset in `compart_abi::lapic` is 16-byte aligned inside it.
    unsafe { core::ptr::read_volatile((lapic::BASE_GPA + reg) as *const u32) }
}

/// Writes the 32-bit APIC register at offset `reg`.
pub fn write(reg: u64, value: u32) {
    // SAFETY: as in `read`; a store changes only the APIC's state.
    unsafe { core::ptr::write_volatile((lapic::BASE_GPA + reg) as *mut u32, value) };
}

/// Bit `vector` of the 256-bit register group starting at `base` (ISR, IRR).
fn bit(base: u64, vector: u8) -> bool {
    read(base + 0x10 * u64::from(vector / 32)) & (1 << (vector % 32)) != 0
}

/// Sends interrupt `vector` to this vCPU itself. Ring 3 runs with interrupts off,
/// so it stays pending until the next halt.
pub fn send_self(vector: u8) {
    write(lapic::ICR_LOW, lapic::ICR_SELF | u32::from(vector));
}

/// Whether interrupt `vector` is in service (delivered, not yet completed by an EOI).
pub fn in_service(vector: u8) -> bool {
    bit(lapic::ISR_BASE, vector)
}

/// Whether interrupt `vector` is pending (requested, not yet delivered).
pub fn pending(vector: u8) -> bool {
    bit(lapic::IRR_BASE, vector)
}

/// Completes the highest-priority interrupt in service.
pub fn end_of_interrupt() {
    write(lapic::EOI, 0);
}

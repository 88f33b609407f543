//! Local APIC registers the VMM sets before a vCPU first runs. KVM hands the APIC
//! state over as its 1 KiB register page (`KVM_GET_LAPIC`/`KVM_SET_LAPIC`), each
//! register a little-endian 32-bit value at its offset (Intel SDM vol. 3, §11.4.1).

use kvm_bindings::kvm_lapic_state;

/// Spurious-interrupt vector register: bits 7:0 the spurious vector, bit 8 the APIC
/// software enable. While software-disabled the APIC accepts no interrupt (doorbells,
/// the placement kick).
pub const APIC_SVR: usize = compart_abi::lapic::SVR as usize;

const SVR_SOFTWARE_ENABLE: u32 = compart_abi::lapic::SVR_ENABLE;

/// Register `reg` of the page.
pub fn get_reg(lapic: &kvm_lapic_state, reg: usize) -> u32 {
    let b = &lapic.regs[reg..reg + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

/// Sets register `reg` of the page to `value`.
pub fn set_reg(lapic: &mut kvm_lapic_state, reg: usize, value: u32) {
    for (slot, byte) in lapic.regs[reg..reg + 4].iter_mut().zip(value.to_le_bytes()) {
        *slot = byte as _;
    }
}

/// Software-enables the APIC, with `spurious_vector` as its spurious vector.
pub fn software_enable(lapic: &mut kvm_lapic_state, spurious_vector: u8) {
    set_reg(
        lapic,
        APIC_SVR,
        SVR_SOFTWARE_ENABLE | u32::from(spurious_vector),
    );
}

/// LVT timer mode bits (17–18): TSC-deadline.
const LVT_TSC_DEADLINE: u32 = 0b10 << 17;

/// Puts the APIC timer in TSC-deadline mode on `vector`: a write of a TSC value to
/// IA32_TSC_DEADLINE then interrupts at that time (KVM's in-kernel APIC serves the
/// MSR). The firmware of a guest that cannot reach its APIC page from ring 3 arms its
/// timer this way through the ring-0 stub; one that can reprograms the LVT itself.
pub fn tsc_deadline_timer(lapic: &mut kvm_lapic_state, vector: u8) {
    set_reg(
        lapic,
        compart_abi::lapic::LVT_TIMER as usize,
        LVT_TSC_DEADLINE | u32::from(vector),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_enable_sets_the_svr_enable_bit_and_vector_and_nothing_else() {
        let mut lapic = kvm_lapic_state::default();
        software_enable(&mut lapic, 0xff);
        assert_eq!(get_reg(&lapic, APIC_SVR), 0x1ff);
        assert_eq!(lapic.regs[APIC_SVR] as u8, 0xff, "little-endian");
        let set = lapic.regs.iter().filter(|&&b| b != 0).count();
        assert_eq!(set, 2, "only the SVR's two low bytes");
    }
}

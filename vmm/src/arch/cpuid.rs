//! The CPUID a guest's vCPUs report. Starts from what KVM supports and gives each vCPU
//! its own APIC id. (Ring-3 CPUID is not virtualised on every host we run on, so guests
//! learn their platform from the boot info and ACPI; this is for correctness wherever
//! it is.)

use kvm_bindings::CpuId;

/// Adjusts KVM's supported CPUID for vCPU `apic_id` of a guest with `vcpus` vCPUs.
pub fn for_vcpu(mut cpuid: CpuId, apic_id: u32, vcpus: u32) -> CpuId {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors.
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((vcpus & 0xff) << 16);
            }
            0xb | 0x1f => {
                // EDX: x2APIC id of this logical processor.
                e.edx = apic_id;
            }
            _ => {}
        }
    }
    cpuid
}

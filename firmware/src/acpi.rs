//! The platform as the VMM's ACPI tables describe it: each processor's P-states
//! (`_PSS`), the fastest one allowed (`_PPC`), its dependency domain (`_PSD`) and the
//! MSRs that control it (`_PCT`). Read once, checksums verified, by
//! `compart-acpi-reader`; the tables lie in the ABI's ACPI area.

use compart_abi::{ACPI_GPA, ACPI_SIZE};
use compart_acpi_reader::{AcpiInfo, PhysSlice};
pub use compart_acpi_reader::{Coordination, Error, PState, Pct, ProcessorInfo, Psd};

use crate::{boot_info, println};

/// Why the guest has no platform description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// The boot info carries no RSDP.
    NoTables,
    /// The tables are malformed.
    Invalid(Error),
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AcpiError::NoTables => f.write_str("the VMM gave no ACPI tables"),
            AcpiError::Invalid(e) => write!(f, "invalid ACPI tables: {e}"),
        }
    }
}

static INFO: spin::Once<Result<AcpiInfo, AcpiError>> = spin::Once::new();

/// The parsed tables (parsed on first use).
pub fn info() -> Result<&'static AcpiInfo, AcpiError> {
    INFO.call_once(|| {
        let rsdp = boot_info().acpi_rsdp;
        if rsdp == 0 {
            return Err(AcpiError::NoTables);
        }
        // SAFETY: the ACPI area is guest RAM reserved by the ABI, identity-mapped,
        // written by the VMM before boot and never written afterwards.
        let area =
            unsafe { core::slice::from_raw_parts(ACPI_GPA as *const u8, ACPI_SIZE as usize) };
        AcpiInfo::parse(&PhysSlice::new(ACPI_GPA, area), rsdp).map_err(AcpiError::Invalid)
    })
    .as_ref()
    .map_err(|e| *e)
}

/// The processor of vCPU `vcpu` (its local APIC id is its index).
pub fn processor(vcpu: u32) -> Option<&'static ProcessorInfo> {
    info().ok()?.processor_by_apic_id(vcpu)
}

/// The P-states vCPU `vcpu` offers, P0 first (empty without tables).
pub fn pstates(vcpu: u32) -> &'static [PState] {
    processor(vcpu).map_or(&[], |p| p.pstates())
}

/// Prints every processor's P-state objects (at boot, from vCPU 0).
pub(crate) fn report() {
    let info = match info() {
        Ok(i) => i,
        Err(e) => {
            println!("acpi: {e}");
            return;
        }
    };
    for p in info.processors() {
        let (pct, psd) = (p.pct(), p.psd());
        println!(
            "acpi: {} uid {} apic {}: _PCT control MSR {:#x} status MSR {:#x}; _PSD domain {} {} of {}; _PPC {}",
            p.name(),
            p.uid(),
            p.apic_id(),
            pct.control_msr,
            pct.status_msr,
            psd.domain,
            psd.coordination.name(),
            psd.num_processors,
            p.ppc()
        );
        for (i, s) in p.pstates().iter().enumerate() {
            println!(
                "acpi: {}   P{i}: {} MHz {} mW latency {} us bus-master {} us control {:#x} status {:#x}",
                p.name(),
                s.frequency_mhz,
                s.power_mw,
                s.transition_latency_us,
                s.bus_master_latency_us,
                s.control,
                s.status
            );
        }
    }
}

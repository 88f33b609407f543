//! Each guest's ACPI tables: one processor per vCPU with the topology's P-state ladder,
//! the guest's `_PPC`, and `_PSD` domains that follow its pinning and the host's
//! frequency domains. The tables are built by `compart-acpi` and placed at the ABI's
//! `ACPI_GPA`; the boot info carries the RSDP address.

use compart_abi::{ACPI_GPA, ACPI_SIZE};
use compart_acpi::{
    psd_from_pinning, AcpiTables, GuestAcpiConfig, IoApicConfig, PsdDomain, VcpuAcpi,
};

/// Where KVM's in-kernel I/O APIC sits (the abi asserts it is below 4 GiB).
const IO_APIC_GPA: u32 = compart_abi::ioapic::BASE_GPA as u32;

use crate::topology::{GuestConfig, HostCore, Topology};

/// Why a guest's tables could not be built.
#[derive(Debug, thiserror::Error)]
#[error("guest {guest}: cannot build its ACPI tables")]
pub struct AcpiError {
    /// Guest name.
    pub guest: String,
    /// The cause.
    #[source]
    pub source: compart_acpi::BuildError,
}

/// The `_PSD` entry of each of `guest`'s vCPUs when they run on `vcpu_cores`: a vCPU
/// pinned to a single core is in that core's host frequency domain; one allowed on
/// several cores may run anywhere, so it is a domain of its own.
pub fn guest_psd(
    topology: &Topology,
    guest: &GuestConfig,
    vcpu_cores: &[Vec<HostCore>],
) -> Vec<PsdDomain> {
    let pins: Vec<Option<u32>> = vcpu_cores
        .iter()
        .map(|cores| match cores.as_slice() {
            [one] => Some(one.0),
            _ => None,
        })
        .collect();
    psd_from_pinning(&pins, &topology.freq_domains, guest.coordination)
}

/// The ACPI description of `guest`.
pub fn guest_config(topology: &Topology, guest: &GuestConfig) -> GuestAcpiConfig {
    let vcpus = guest_psd(topology, guest, &guest.vcpu_cores)
        .into_iter()
        .zip(0u32..)
        .map(|(psd, i)| VcpuAcpi {
            apic_id: i,
            uid: i,
            psd,
        })
        .collect();
    let mut config = GuestAcpiConfig::new(vcpus, topology.pstates.clone());
    config.ppc = guest.ppc;
    // KVM_CREATE_IRQCHIP gives every VM an I/O APIC; the MADT says where.
    config.io_apic = Some(IoApicConfig {
        id: 0,
        address: IO_APIC_GPA,
        gsi_base: 0,
    });
    config
}

/// Builds `guest`'s tables for `ACPI_GPA`.
pub fn guest_tables(topology: &Topology, guest: &GuestConfig) -> Result<AcpiTables, AcpiError> {
    compart_acpi::build(&guest_config(topology, guest), ACPI_GPA, ACPI_SIZE as usize).map_err(
        |source| AcpiError {
            guest: guest.name.clone(),
            source,
        },
    )
}

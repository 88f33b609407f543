//! What the VMM tells this crate about one guest: its processors, their `_PSD` domains,
//! the P-state ladder and the identifiers written into table headers.

use std::collections::HashMap;

use crate::pstate::PStateTable;

/// Most processors a guest may have: devices are named `C000` to `CFFF`.
pub const MAX_VCPUS: usize = 0x1000;

/// `_PSD` CoordType: the contract's (`compart_abi::acpi`), shared with the reader.
pub use compart_abi::acpi::Coordination;

/// One processor's `_PSD` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PsdDomain {
    /// Dependency domain number.
    pub domain: u32,
    /// Who coordinates the domain.
    pub coordination: Coordination,
    /// Number of processors in the domain.
    pub num_processors: u32,
}

/// One vCPU as ACPI describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VcpuAcpi {
    /// Local APIC id (x2APIC id if above 254).
    pub apic_id: u32,
    /// ACPI processor UID: the device's `_UID` and the MADT entry's processor UID.
    pub uid: u32,
    /// The vCPU's P-state dependency.
    pub psd: PsdDomain,
}

/// Identifiers written into every table header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OemIds {
    /// OEM ID (RSDP and every table).
    pub oem_id: [u8; 6],
    /// OEM table ID.
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: u32,
}

impl Default for OemIds {
    fn default() -> Self {
        Self {
            oem_id: *b"COMPRT",
            oem_table_id: *b"COMPART ",
            oem_revision: 1,
        }
    }
}

/// An I/O APIC to describe in the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoApicConfig {
    /// I/O APIC id.
    pub id: u8,
    /// Guest-physical address of its registers (usually 0xFEC0_0000).
    pub address: u32,
    /// First global system interrupt it serves.
    pub gsi_base: u32,
}

/// Everything the tables of one guest say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestAcpiConfig {
    /// Header identifiers.
    pub oem: OemIds,
    /// The guest's processors; the i-th becomes `\_SB.Cxxx` with xxx = i in hex.
    pub vcpus: Vec<VcpuAcpi>,
    /// The P-states every processor offers.
    pub pstates: PStateTable,
    /// `_PPC`: index of the highest-performance state the guest may use now.
    pub ppc: u32,
    /// An I/O APIC, if the VM has one.
    pub io_apic: Option<IoApicConfig>,
    /// Guest-physical address of the local APICs (0xFEE0_0000 on x86).
    pub local_apic_address: u32,
}

impl GuestAcpiConfig {
    /// A guest with these processors and P-states, all states allowed, default
    /// identifiers and no I/O APIC.
    pub fn new(vcpus: Vec<VcpuAcpi>, pstates: PStateTable) -> Self {
        Self {
            oem: OemIds::default(),
            vcpus,
            pstates,
            ppc: 0,
            io_apic: None,
            // Below 4 GiB, as the abi asserts.
            local_apic_address: compart_abi::lapic::BASE_GPA as u32,
        }
    }

    /// Checks what an OS checks and what the tables can encode.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus.is_empty() {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus.len() > MAX_VCPUS {
            return Err(ConfigError::TooManyVcpus(self.vcpus.len()));
        }
        let states = self.pstates.len();
        if usize::try_from(self.ppc).map_or(true, |ppc| ppc >= states) {
            return Err(ConfigError::PpcOutOfRange {
                ppc: self.ppc,
                states,
            });
        }
        let mut apic_ids = HashMap::new();
        let mut uids = HashMap::new();
        let mut domains: HashMap<u32, (usize, PsdDomain, u32)> = HashMap::new();
        for (index, vcpu) in self.vcpus.iter().enumerate() {
            if vcpu.apic_id == u32::MAX {
                return Err(ConfigError::InvalidApicId { index });
            }
            if let Some(first) = apic_ids.insert(vcpu.apic_id, index) {
                return Err(ConfigError::DuplicateApicId {
                    index,
                    first,
                    apic_id: vcpu.apic_id,
                });
            }
            if let Some(first) = uids.insert(vcpu.uid, index) {
                return Err(ConfigError::DuplicateUid {
                    index,
                    first,
                    uid: vcpu.uid,
                });
            }
            let psd = vcpu.psd;
            if psd.num_processors == 0 {
                return Err(ConfigError::EmptyDomain {
                    index,
                    domain: psd.domain,
                });
            }
            let entry = domains.entry(psd.domain).or_insert((index, psd, 0));
            let (first, declared, count) = entry;
            if declared.coordination != psd.coordination
                || declared.num_processors != psd.num_processors
            {
                return Err(ConfigError::DomainDisagreement {
                    domain: psd.domain,
                    index,
                    first: *first,
                });
            }
            *count += 1;
            if *count > psd.num_processors {
                return Err(ConfigError::DomainOverfull {
                    domain: psd.domain,
                    count: *count,
                    num_processors: psd.num_processors,
                });
            }
        }
        Ok(())
    }
}

/// Why a guest's ACPI description is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A guest needs at least one processor.
    #[error("guest has no vCPUs")]
    NoVcpus,
    /// More vCPUs than processor device names.
    #[error("guest has {0} vCPUs, at most {MAX_VCPUS} are supported")]
    TooManyVcpus(usize),
    /// `_PPC` names a state that does not exist.
    #[error("_PPC {ppc} is out of range: the table has {states} P-states")]
    PpcOutOfRange {
        /// The `_PPC` value.
        ppc: u32,
        /// Number of P-states.
        states: usize,
    },
    /// 0xFFFF_FFFF is not an x2APIC id.
    #[error("vCPU {index}: APIC id 0xffffffff is invalid")]
    InvalidApicId {
        /// vCPU index.
        index: usize,
    },
    /// Two vCPUs share an APIC id.
    #[error("vCPU {index} repeats APIC id {apic_id} of vCPU {first}")]
    DuplicateApicId {
        /// vCPU index.
        index: usize,
        /// First vCPU with this id.
        first: usize,
        /// The id.
        apic_id: u32,
    },
    /// Two vCPUs share a processor UID.
    #[error("vCPU {index} repeats processor UID {uid} of vCPU {first}")]
    DuplicateUid {
        /// vCPU index.
        index: usize,
        /// First vCPU with this UID.
        first: usize,
        /// The UID.
        uid: u32,
    },
    /// `_PSD` NumProcessors of 0.
    #[error("vCPU {index}: _PSD domain {domain} declares 0 processors")]
    EmptyDomain {
        /// vCPU index.
        index: usize,
        /// Domain number.
        domain: u32,
    },
    /// Processors of one domain must agree on CoordType and NumProcessors.
    #[error("vCPU {index} disagrees with vCPU {first} on the coordination type or processor count of _PSD domain {domain}")]
    DomainDisagreement {
        /// Domain number.
        domain: u32,
        /// vCPU index.
        index: usize,
        /// First vCPU in the domain.
        first: usize,
    },
    /// More of this guest's vCPUs in a domain than it declares.
    #[error("_PSD domain {domain} holds {count} vCPUs but declares {num_processors} processors")]
    DomainOverfull {
        /// Domain number.
        domain: u32,
        /// vCPUs found in it so far.
        count: u32,
        /// Its NumProcessors.
        num_processors: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder;
    use crate::units::Mhz;

    fn vcpu(apic_id: u32, domain: u32, coordination: Coordination, n: u32) -> VcpuAcpi {
        VcpuAcpi {
            apic_id,
            uid: apic_id,
            psd: PsdDomain {
                domain,
                coordination,
                num_processors: n,
            },
        }
    }

    fn config(vcpus: Vec<VcpuAcpi>) -> GuestAcpiConfig {
        GuestAcpiConfig::new(vcpus, ladder::default_ladder(Mhz(2000)))
    }

    #[test]
    fn accepts_a_shared_domain() {
        let c = config(vec![
            vcpu(0, 0, Coordination::SwAll, 2),
            vcpu(1, 0, Coordination::SwAll, 2),
        ]);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn accepts_a_domain_shared_with_processors_outside_the_guest() {
        let c = config(vec![vcpu(0, 0, Coordination::HwAll, 4)]);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn rejects_no_vcpus() {
        assert_eq!(config(vec![]).validate(), Err(ConfigError::NoVcpus));
    }

    #[test]
    fn rejects_ppc_beyond_the_table() {
        let mut c = config(vec![vcpu(0, 0, Coordination::SwAny, 1)]);
        c.ppc = 5;
        assert_eq!(
            c.validate(),
            Err(ConfigError::PpcOutOfRange { ppc: 5, states: 5 })
        );
    }

    #[test]
    fn rejects_domain_members_disagreeing_on_coordination() {
        let c = config(vec![
            vcpu(0, 3, Coordination::SwAll, 2),
            vcpu(1, 3, Coordination::SwAny, 2),
        ]);
        assert_eq!(
            c.validate(),
            Err(ConfigError::DomainDisagreement {
                domain: 3,
                index: 1,
                first: 0
            })
        );
    }

    #[test]
    fn rejects_domain_members_disagreeing_on_count() {
        let c = config(vec![
            vcpu(0, 3, Coordination::SwAll, 2),
            vcpu(1, 3, Coordination::SwAll, 3),
        ]);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DomainDisagreement { .. })
        ));
    }

    #[test]
    fn rejects_more_vcpus_in_a_domain_than_declared() {
        let c = config(vec![
            vcpu(0, 0, Coordination::SwAll, 1),
            vcpu(1, 0, Coordination::SwAll, 1),
        ]);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DomainOverfull { count: 2, .. })
        ));
    }

    #[test]
    fn rejects_duplicate_apic_ids_and_uids() {
        let mut c = config(vec![
            vcpu(0, 0, Coordination::SwAll, 1),
            vcpu(0, 1, Coordination::SwAll, 1),
        ]);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DuplicateApicId { .. })
        ));
        c.vcpus[1].apic_id = 1;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DuplicateUid { .. })
        ));
    }

    #[test]
    fn rejects_zero_processor_domains() {
        let c = config(vec![vcpu(0, 0, Coordination::SwAll, 0)]);
        assert!(matches!(c.validate(), Err(ConfigError::EmptyDomain { .. })));
    }
}

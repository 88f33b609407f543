//! Reader of the ACPI tables the compart VMM gives its guests.
//!
//! The firmware finds its processors and their P-states the way an OS does on real
//! hardware (thesis §3.1): from the RSDP it follows the XSDT to the FADT, MADT and DSDT,
//! verifies every checksum, lists the processors of the MADT and reads each processor
//! device's `_PCT`, `_PSS`, `_PPC` and `_PSD` from the DSDT.
//!
//! `no_std`, no allocation, no dependencies: results live in fixed arrays
//! ([`AcpiInfo<N>`] holds up to `N` processors, each up to [`MAX_PSTATES`] states). Tables
//! are untrusted input: every offset and length is checked and bad tables give an
//! [`Error`], never a panic. The DSDT is read by a strict reader of the AML subset the VMM
//! emits ([`aml`]), not an interpreter.
//!
//! ```
//! # use compart_acpi_reader::{AcpiInfo, Error, PhysSlice};
//! # fn read(ram: &[u8], rsdp_gpa: u64) -> Result<(), Error> {
//! let mem = PhysSlice::new(0, ram); // identity-mapped guest RAM
//! let info: AcpiInfo = AcpiInfo::parse(&mem, rsdp_gpa)?;
//! for state in info.pstates() {
//!     let _ = (state.frequency_mhz, state.control);
//! }
//! # Ok(())
//! # }
//! ```

#![no_std]

pub mod aml;
mod error;
mod mem;
mod tables;

pub use error::{AmlError, Error, Sig};
pub use mem::{PhysMem, PhysSlice};

/// Most P-states per processor.
pub const MAX_PSTATES: usize = 16;
/// Default processor capacity of [`AcpiInfo`].
pub const DEFAULT_MAX_PROCESSORS: usize = 8;

/// One `_PSS` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PState {
    /// Core frequency in MHz.
    pub frequency_mhz: u32,
    /// Typical power in mW.
    pub power_mw: u32,
    /// Worst-case transition latency in µs.
    pub transition_latency_us: u32,
    /// Worst-case bus-master latency in µs.
    pub bus_master_latency_us: u32,
    /// Value to write to the control register (`_PCT` control MSR) to enter the state.
    pub control: u64,
    /// Value the status register (`_PCT` status MSR) reads in the state.
    pub status: u64,
}

impl PState {
    const ZERO: PState = PState {
        frequency_mhz: 0,
        power_mw: 0,
        transition_latency_us: 0,
        bus_master_latency_us: 0,
        control: 0,
        status: 0,
    };
}

/// `_PSD` CoordType: the contract's (`compart_abi::acpi`), shared with the writer.
pub use compart_abi::acpi::Coordination;

/// A processor's `_PSD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Psd {
    /// Dependency domain.
    pub domain: u32,
    /// Who coordinates it.
    pub coordination: Coordination,
    /// Processors in the domain.
    pub num_processors: u32,
}

/// A processor's `_PCT`: the MSRs (Functional Fixed Hardware registers whose address
/// field carries the MSR number) to write a `_PSS` control value to and to read the
/// status from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pct {
    /// Performance-control MSR (IA32_PERF_CTL, 0x199, from our VMM).
    pub control_msr: u32,
    /// Performance-status MSR (IA32_PERF_STATUS, 0x198, from our VMM).
    pub status_msr: u32,
}

/// One processor: its MADT identity and its P-state objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessorInfo {
    name: [u8; 4],
    uid: u32,
    apic_id: u32,
    enabled: bool,
    sta: u64,
    pct: Pct,
    pstates: [PState; MAX_PSTATES],
    pstate_count: usize,
    ppc: u32,
    psd: Psd,
}

impl ProcessorInfo {
    const EMPTY: ProcessorInfo = ProcessorInfo {
        name: [0; 4],
        uid: 0,
        apic_id: 0,
        enabled: false,
        sta: 0,
        pct: Pct {
            control_msr: 0,
            status_msr: 0,
        },
        pstates: [PState::ZERO; MAX_PSTATES],
        pstate_count: 0,
        ppc: 0,
        psd: Psd {
            domain: 0,
            coordination: Coordination::HwAll,
            num_processors: 0,
        },
    };

    /// Device name in the namespace (`C000`, …).
    pub fn name(&self) -> Sig {
        Sig(self.name)
    }

    /// ACPI processor UID (`_UID`, the MADT processor UID).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Local APIC (or x2APIC) id from the MADT.
    pub fn apic_id(&self) -> u32 {
        self.apic_id
    }

    /// Whether the MADT marks the processor enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// `_STA` (0x0F when absent, as ACPI says).
    pub fn sta(&self) -> u64 {
        self.sta
    }

    /// The performance control and status registers.
    pub fn pct(&self) -> Pct {
        self.pct
    }

    /// All P-states, P0 (fastest) first.
    pub fn pstates(&self) -> &[PState] {
        &self.pstates[..self.pstate_count]
    }

    /// `_PPC`: index of the fastest state the platform allows now.
    pub fn ppc(&self) -> u32 {
        self.ppc
    }

    /// The states allowed now (`_PPC` and slower).
    pub fn allowed_pstates(&self) -> &[PState] {
        let ppc = usize::try_from(self.ppc).unwrap_or(usize::MAX);
        self.pstates().get(ppc..).unwrap_or(&[])
    }

    /// The P-state dependency.
    pub fn psd(&self) -> Psd {
        self.psd
    }
}

/// Everything the reader learned from a guest's tables: up to `N` processors.
#[derive(Clone, Debug)]
pub struct AcpiInfo<const N: usize = DEFAULT_MAX_PROCESSORS> {
    processors: [ProcessorInfo; N],
    count: usize,
    local_apic_address: u32,
}

impl<const N: usize> AcpiInfo<N> {
    /// Reads the tables whose RSDP is at guest-physical `rsdp_gpa` in `mem`.
    ///
    /// Verifies the checksums of the RSDP, XSDT, FADT, MADT and DSDT; every processor
    /// device (`_HID "ACPI0007"`) of the DSDT must carry `_UID`, `_PCT`, `_PSS`, `_PPC`
    /// and `_PSD` of the shapes ACPI prescribes, with `_PPC` naming a state of `_PSS`,
    /// and have a MADT entry with its UID.
    pub fn parse<M: PhysMem + ?Sized>(mem: &M, rsdp_gpa: u64) -> Result<Self, Error> {
        tables::parse(mem, rsdp_gpa)
    }

    /// The processors, in DSDT order.
    pub fn processors(&self) -> impl Iterator<Item = &ProcessorInfo> + '_ {
        self.processors[..self.count].iter()
    }

    /// The processor with this local APIC id.
    pub fn processor_by_apic_id(&self, apic_id: u32) -> Option<&ProcessorInfo> {
        self.processors().find(|p| p.apic_id == apic_id)
    }

    /// The P-states of the first processor (a guest server's only one), P0 first; empty
    /// if there are no processors.
    pub fn pstates(&self) -> &[PState] {
        self.processors().next().map_or(&[], |p| p.pstates())
    }

    /// The MADT's local APIC address.
    pub fn local_apic_address(&self) -> u32 {
        self.local_apic_address
    }
}

//! ACPI tables for compart guests.
//!
//! A guest learns its processors and their P-states the way an OS on real hardware does
//! (thesis §3.1): from ACPI. This crate turns a guest's CPU description
//! ([`GuestAcpiConfig`]: vCPUs with APIC ids and `_PSD` domains, a [`PStateTable`], `_PPC`)
//! into an RSDP, an XSDT, a hardware-reduced FADT, a MADT and a DSDT with one processor
//! device (`_HID "ACPI0007"`) per vCPU carrying `_PCT`, `_PSS`, `_PPC` and `_PSD`
//! (see [`dsdt`] for the exact objects). Tables are built on `acpi_tables`; where it is
//! wrong (the Generic Register descriptor) or missing (DSDT, x2APIC) we emit bytes ourselves.
//!
//! ```
//! use compart_acpi::{build, ladder, Coordination, GuestAcpiConfig, Mhz, PsdDomain, VcpuAcpi};
//!
//! let vcpu = VcpuAcpi {
//!     apic_id: 0,
//!     uid: 0,
//!     psd: PsdDomain { domain: 0, coordination: Coordination::HwAll, num_processors: 1 },
//! };
//! let config = GuestAcpiConfig::new(vec![vcpu], ladder::default_ladder(Mhz(2000)));
//! let tables = build(&config, 0x18_0000, 512 * 1024).unwrap();
//! assert_eq!(tables.rsdp_gpa(), 0x18_0000);
//! // The VMM copies tables.bytes() to guest memory at tables.base_gpa().
//! ```
//!
//! Where the ladder and the domains come from when the topology file does not say is in
//! [`host`] (cpufreq, `/proc/cpuinfo`) and [`ladder`] (the default rule).

pub mod config;
pub mod domains;
pub mod dsdt;
pub mod dump;
pub mod ladder;
pub mod pstate;
pub mod tables;
pub mod units;

pub use config::{
    ConfigError, Coordination, GuestAcpiConfig, IoApicConfig, OemIds, PsdDomain, VcpuAcpi,
};
pub use domains::{psd_from_pinning, HostFreqDomains};
pub use dump::write_dump;
pub use pstate::{PState, PStateError, PStateTable, MAX_PSTATES};
pub use tables::{build, AcpiTable, AcpiTables, BuildError};
pub use units::{Mhz, Micros, MilliWatts};

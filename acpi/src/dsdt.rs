//! The DSDT: one processor device per vCPU carrying its P-state objects.
//!
//! For vCPU *i* (xxx = *i* in hex) the table holds, in this order:
//!
//! ```text
//! Scope (\_SB) {
//!     Device (Cxxx) {
//!         Name (_HID, "ACPI0007")        // processor device (no legacy Processor op)
//!         Name (_UID, uid)               // = the MADT entry's processor UID
//!         Name (_STA, 0x0F)              // present, enabled, shown in UI, functioning
//!         Name (_PCT, Package () {
//!             ResourceTemplate () { Register (FFixedHW, 64, 0, 0x199, 4) },  // IA32_PERF_CTL
//!             ResourceTemplate () { Register (FFixedHW, 64, 0, 0x198, 4) },  // IA32_PERF_STATUS
//!         })
//!         Name (_PSS, Package () { Package () { MHz, mW, latency, bus-master latency,
//!                                               control, status }, ... })
//!         Name (_PPC, ppc)
//!         Name (_PSD, Package () { Package () { 5, 0, domain, coordination, processors } })
//!     }
//! }
//! ```
//!
//! Every object is a `Name`, none a `Method`, so a reader needs no interpreter.
//!
//! `_PCT` uses Functional Fixed Hardware registers, as real Intel and AMD firmware does; the
//! meaning of an FFH register's fields belongs to the platform. Ours puts the MSR number in
//! the address field (bit width 64, bit offset 0, access size 4 = QWORD): our firmware
//! takes the MSR to write from there, and an OS that ignores it (Linux's acpi-cpufreq uses
//! IA32_PERF_CTL for FFH) reaches the same register.

use acpi_tables::aml::{Name, Package, Path, ResourceTemplate, Scope};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use crate::config::{GuestAcpiConfig, VcpuAcpi};

/// IA32_PERF_CTL: the performance-control MSR named by `_PCT` (the contract's).
pub const IA32_PERF_CTL: u32 = compart_abi::msr::PERF_CTL;
/// IA32_PERF_STATUS: the performance-status MSR named by `_PCT` (the contract's).
pub const IA32_PERF_STATUS: u32 = compart_abi::msr::PERF_STATUS;
use compart_abi::acpi::generic_register;
/// Address space id of Functional Fixed Hardware (the contract's).
pub use compart_abi::acpi::ADDRESS_SPACE_FFH;
/// `_HID` of a processor device.
pub const PROCESSOR_HID: &str = "ACPI0007";
/// `_STA` of our processors: present, enabled, shown in UI, functioning.
pub const PROCESSOR_STA: u8 = 0x0F;
/// DSDT revision 2: integers are 64 bits wide.
pub const DSDT_REVISION: u8 = 2;
/// `_PSD` NumEntries and Revision (ACPI 6.5 §8.4.5.5; Linux rejects anything else).
pub const PSD_NUM_ENTRIES: u32 = 5;
/// `_PSD` revision.
pub const PSD_REVISION: u32 = 0;

/// A Generic Register descriptor (ACPI 6.5 §6.4.3.7) naming an MSR in FFH space.
///
/// Emitted here rather than with `acpi_tables::aml::Register`, which in 0.2.1 writes the
/// descriptor length as 0x12 where the specification says 0x0C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FfhMsrRegister {
    /// The MSR number, carried in the address field.
    pub msr: u32,
}

impl FfhMsrRegister {
    /// Large resource item name of a Generic Register descriptor.
    pub const DESCRIPTOR: u8 = generic_register::DESCRIPTOR;
    /// Its length field: the bytes after the 3-byte header.
    pub const LENGTH: u16 = generic_register::LENGTH;
    /// Register bit width: MSRs are 64 bits.
    pub const BIT_WIDTH: u8 = generic_register::MSR_BIT_WIDTH;
    /// Access size 4: QWORD.
    pub const ACCESS_SIZE: u8 = generic_register::ACCESS_SIZE_QWORD;
}

impl Aml for FfhMsrRegister {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(Self::DESCRIPTOR);
        sink.word(Self::LENGTH);
        sink.byte(ADDRESS_SPACE_FFH);
        sink.byte(Self::BIT_WIDTH);
        sink.byte(0); // bit offset
        sink.byte(Self::ACCESS_SIZE);
        sink.qword(u64::from(self.msr));
    }
}

/// The device name of the `index`-th processor: `C000`, `C001`, … `CFFF`.
pub fn processor_name(index: usize) -> String {
    format!("C{index:03X}")
}

/// One processor device and its P-state objects.
struct ProcessorDevice<'a> {
    name: String,
    vcpu: &'a VcpuAcpi,
    config: &'a GuestAcpiConfig,
}

impl Aml for ProcessorDevice<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid = Name::new(Path::new("_HID"), &PROCESSOR_HID);
        let uid = Name::new(Path::new("_UID"), &self.vcpu.uid);
        let sta = Name::new(Path::new("_STA"), &PROCESSOR_STA);

        let control = FfhMsrRegister { msr: IA32_PERF_CTL };
        let status = FfhMsrRegister {
            msr: IA32_PERF_STATUS,
        };
        let control = ResourceTemplate::new(vec![&control]);
        let status = ResourceTemplate::new(vec![&status]);
        let pct = Name::new(Path::new("_PCT"), &Package::new(vec![&control, &status]));

        let fields: Vec<[u64; 6]> = self
            .config
            .pstates
            .states()
            .iter()
            .map(|s| s.pss_fields())
            .collect();
        let entries: Vec<Package> = fields
            .iter()
            .map(|f| Package::new(f.iter().map(|v| v as &dyn Aml).collect()))
            .collect();
        let pss = Name::new(
            Path::new("_PSS"),
            &Package::new(entries.iter().map(|p| p as &dyn Aml).collect()),
        );

        let ppc = Name::new(Path::new("_PPC"), &self.config.ppc);

        let psd = self.vcpu.psd;
        let psd_fields = [
            PSD_NUM_ENTRIES,
            PSD_REVISION,
            psd.domain,
            psd.coordination.acpi_value(),
            psd.num_processors,
        ];
        let psd_entry = Package::new(psd_fields.iter().map(|v| v as &dyn Aml).collect());
        let psd = Name::new(Path::new("_PSD"), &Package::new(vec![&psd_entry]));

        acpi_tables::aml::Device::new(
            Path::new(&self.name),
            vec![&hid, &uid, &sta, &pct, &pss, &ppc, &psd],
        )
        .to_aml_bytes(sink);
    }
}

/// The DSDT of a (validated) guest configuration.
pub(crate) fn dsdt(config: &GuestAcpiConfig) -> Vec<u8> {
    let devices: Vec<ProcessorDevice> = config
        .vcpus
        .iter()
        .enumerate()
        .map(|(index, vcpu)| ProcessorDevice {
            name: processor_name(index),
            vcpu,
            config,
        })
        .collect();
    let scope = Scope::new(
        Path::new("\\_SB_"),
        devices.iter().map(|d| d as &dyn Aml).collect(),
    );
    let mut body = Vec::new();
    scope.to_aml_bytes(&mut body);

    let oem = &config.oem;
    let mut sdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        oem.oem_id,
        oem.oem_table_id,
        oem.oem_revision,
    );
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffh_register_descriptor_has_the_spec_length() {
        let mut bytes = Vec::new();
        FfhMsrRegister { msr: IA32_PERF_CTL }.to_aml_bytes(&mut bytes);
        assert_eq!(
            bytes,
            [0x82, 0x0C, 0x00, 0x7F, 64, 0, 4, 0x99, 0x01, 0, 0, 0, 0, 0, 0]
        );
        // The length field counts the bytes after the 3-byte header.
        assert_eq!(bytes.len() - 3, usize::from(FfhMsrRegister::LENGTH));
    }

    #[test]
    fn processor_names_are_four_characters() {
        assert_eq!(processor_name(0), "C000");
        assert_eq!(processor_name(10), "C00A");
        assert_eq!(processor_name(0xFFF), "CFFF");
    }
}

//! Laying out one guest's tables: RSDP, XSDT, FADT, MADT and DSDT, contiguous in one blob
//! meant to be copied to guest-physical memory at a base address.
//!
//! ```text
//! base + 0      RSDP (revision 2, 36 bytes) ──► XSDT
//!               XSDT ──► FADT, MADT
//!               FADT (hardware-reduced, 6.5) ──X_DSDT──► DSDT
//!               MADT (local APIC / x2APIC per vCPU, optional I/O APIC)
//!               DSDT (processor devices, see `dsdt`)
//! ```
//!
//! Every table starts on a 16-byte boundary (the RSDP must; the others follow suit).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::config::{ConfigError, GuestAcpiConfig};
use crate::dsdt;

/// Alignment of every table in the blob.
pub const TABLE_ALIGN: u64 = 16;
/// MADT revision of ACPI 6.2–6.4.
pub const MADT_REVISION: u8 = 5;
/// The largest APIC id a (non-x2) local APIC entry carries; 0xFF means broadcast.
const MAX_XAPIC_ID: u32 = 0xFE;

/// Pseudo-signature of the RSDP (it has an 8-byte one, `"RSD PTR "`).
pub const RSDP_SIGNATURE: [u8; 4] = *b"RSDP";

/// Why tables could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The guest description breaks a rule.
    #[error("invalid guest ACPI description")]
    Config(#[from] ConfigError),
    /// The tables do not fit in the space reserved for them.
    #[error("ACPI tables need {size} bytes, only {max} are reserved")]
    TooLarge {
        /// Bytes needed.
        size: usize,
        /// Bytes reserved.
        max: usize,
    },
    /// The base address must be 16-byte aligned.
    #[error("ACPI base address {0:#x} is not 16-byte aligned")]
    UnalignedBase(u64),
    /// The tables would run past the end of the address space.
    #[error("ACPI tables at {0:#x} overflow the address space")]
    AddressOverflow(u64),
}

/// One table in the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiTable<'a> {
    /// Its signature (`RSDP` for the root pointer).
    pub signature: [u8; 4],
    /// Its guest-physical address.
    pub gpa: u64,
    /// Its bytes.
    pub bytes: &'a [u8],
}

impl AcpiTable<'_> {
    /// The signature as text (signatures are ASCII).
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.signature).into_owned()
    }
}

/// A guest's tables, laid out for one guest-physical base address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    base_gpa: u64,
    bytes: Vec<u8>,
    /// (signature, offset, length), in address order.
    layout: Vec<([u8; 4], usize, usize)>,
}

impl AcpiTables {
    /// Where the blob must be copied.
    pub fn base_gpa(&self) -> u64 {
        self.base_gpa
    }

    /// Guest-physical address of the RSDP: what the boot info gives the guest.
    pub fn rsdp_gpa(&self) -> u64 {
        self.base_gpa
    }

    /// The blob, to copy to [`base_gpa`](Self::base_gpa).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Every table with its address, RSDP first.
    pub fn tables(&self) -> impl Iterator<Item = AcpiTable<'_>> + '_ {
        self.layout
            .iter()
            .map(|&(signature, offset, len)| AcpiTable {
                signature,
                gpa: self.base_gpa + offset as u64,
                bytes: &self.bytes[offset..offset + len],
            })
    }

    /// The table with this signature.
    pub fn table(&self, signature: &[u8; 4]) -> Option<AcpiTable<'_>> {
        self.tables().find(|t| &t.signature == signature)
    }
}

/// Builds the tables of `config` for the blob to sit at `base_gpa`, in at most `max_size`
/// bytes.
pub fn build(
    config: &GuestAcpiConfig,
    base_gpa: u64,
    max_size: usize,
) -> Result<AcpiTables, BuildError> {
    config.validate()?;
    if base_gpa % TABLE_ALIGN != 0 {
        return Err(BuildError::UnalignedBase(base_gpa));
    }
    let oem = &config.oem;

    // Tables without addresses inside first, so that the layout is known.
    let dsdt = dsdt::dsdt(config);
    let madt = madt(config);
    let xsdt_len = 36 + 2 * 8;
    let fadt_len = acpi_tables::fadt::FADT::len();

    let mut offset = 0usize;
    let mut layout = Vec::new();
    for (signature, len) in [
        (RSDP_SIGNATURE, Rsdp::len()),
        (*b"XSDT", xsdt_len),
        (*b"FACP", fadt_len),
        (*b"APIC", madt.len()),
        (*b"DSDT", dsdt.len()),
    ] {
        layout.push((signature, offset, len));
        offset = (offset + len).next_multiple_of(TABLE_ALIGN as usize);
    }
    let size = layout.last().map_or(0, |&(_, o, l)| o + l);
    if size > max_size {
        return Err(BuildError::TooLarge {
            size,
            max: max_size,
        });
    }
    if base_gpa.checked_add(size as u64).is_none() {
        return Err(BuildError::AddressOverflow(base_gpa));
    }
    let gpa = |index: usize| base_gpa + layout[index].1 as u64;
    let (xsdt_gpa, fadt_gpa, madt_gpa, dsdt_gpa) = (gpa(1), gpa(2), gpa(3), gpa(4));

    let fadt = FADTBuilder::new(oem.oem_id, oem.oem_table_id, oem.oem_revision)
        .dsdt_64(dsdt_gpa)
        .flag(Flags::HwReducedAcpi)
        .finalize();
    let mut xsdt = XSDT::new(oem.oem_id, oem.oem_table_id, oem.oem_revision);
    xsdt.add_entry(fadt_gpa);
    xsdt.add_entry(madt_gpa);
    let rsdp = Rsdp::new(oem.oem_id, xsdt_gpa);

    let mut bytes = vec![0u8; size];
    let mut place = |index: usize, table: &[u8]| {
        let (_, offset, len) = layout[index];
        debug_assert_eq!(len, table.len());
        bytes[offset..offset + len].copy_from_slice(table);
    };
    place(0, &aml_bytes(&rsdp));
    place(1, &aml_bytes(&xsdt));
    place(2, &aml_bytes(&fadt));
    place(3, &madt);
    place(4, &dsdt);
    Ok(AcpiTables {
        base_gpa,
        bytes,
        layout,
    })
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// MADT (ACPI 6.5 §5.2.12): one enabled local APIC per vCPU, or an x2APIC entry when the
/// APIC id or UID does not fit the 8-bit fields; no PC-AT 8259s (flags 0).
fn madt(config: &GuestAcpiConfig) -> Vec<u8> {
    let oem = &config.oem;
    let mut sdt = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        oem.oem_id,
        oem.oem_table_id,
        oem.oem_revision,
    );
    sdt.write_u32(36, config.local_apic_address);
    sdt.write_u32(40, 0); // flags: no PCAT_COMPAT
    for vcpu in &config.vcpus {
        match (u8::try_from(vcpu.apic_id), u8::try_from(vcpu.uid)) {
            (Ok(apic_id), Ok(uid)) if vcpu.apic_id <= MAX_XAPIC_ID => sdt.append_slice(&aml_bytes(
                &ProcessorLocalApic::new(uid, apic_id, EnabledStatus::Enabled),
            )),
            _ => sdt.append_slice(&x2apic_entry(vcpu.apic_id, vcpu.uid)),
        }
    }
    if let Some(io) = config.io_apic {
        sdt.append_slice(&aml_bytes(&IoApic::new(io.id, io.address, io.gsi_base)));
    }
    sdt.as_slice().to_vec()
}

/// Processor Local x2APIC structure (type 9, 16 bytes); `acpi_tables` 0.2.1 has none.
fn x2apic_entry(apic_id: u32, uid: u32) -> [u8; 16] {
    let mut entry = [0u8; 16];
    entry[0] = 9;
    entry[1] = 16;
    // bytes 2..4 reserved
    entry[4..8].copy_from_slice(&apic_id.to_le_bytes());
    entry[8..12].copy_from_slice(&1u32.to_le_bytes()); // flags: enabled
    entry[12..16].copy_from_slice(&uid.to_le_bytes());
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Coordination, IoApicConfig, PsdDomain, VcpuAcpi};
    use crate::ladder;
    use crate::units::Mhz;

    const BASE: u64 = 0x18_0000;
    const MAX: usize = 512 * 1024;

    fn config(n: u32, coordination: Coordination) -> GuestAcpiConfig {
        let vcpus = (0..n)
            .map(|i| VcpuAcpi {
                apic_id: i,
                uid: i,
                psd: PsdDomain {
                    domain: 0,
                    coordination,
                    num_processors: n,
                },
            })
            .collect();
        GuestAcpiConfig::new(vcpus, ladder::default_ladder(Mhz(2400)))
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_checksums_to_zero() {
        let tables = build(&config(4, Coordination::SwAny), BASE, MAX).unwrap();
        for table in tables.tables() {
            assert_eq!(sum(table.bytes), 0, "{}", table.name());
        }
        let rsdp = tables.table(&RSDP_SIGNATURE).unwrap();
        assert_eq!(sum(&rsdp.bytes[..20]), 0, "RSDP first 20 bytes");
    }

    #[test]
    fn tables_are_aligned_contiguous_and_in_order() {
        let tables = build(&config(2, Coordination::SwAll), BASE, MAX).unwrap();
        let names: Vec<String> = tables.tables().map(|t| t.name()).collect();
        assert_eq!(names, ["RSDP", "XSDT", "FACP", "APIC", "DSDT"]);
        let mut end = BASE;
        for table in tables.tables() {
            assert_eq!(table.gpa % TABLE_ALIGN, 0);
            assert!(table.gpa >= end && table.gpa < end + TABLE_ALIGN);
            end = table.gpa + table.bytes.len() as u64;
        }
        assert_eq!(end, BASE + tables.bytes().len() as u64);
    }

    #[test]
    fn header_lengths_match_table_sizes() {
        let tables = build(&config(4, Coordination::HwAll), BASE, MAX).unwrap();
        for table in tables.tables().skip(1) {
            assert_eq!(u32_at(table.bytes, 4) as usize, table.bytes.len());
            assert_eq!(&table.bytes[..4], &table.signature);
        }
        let rsdp = tables.table(&RSDP_SIGNATURE).unwrap();
        assert_eq!(&rsdp.bytes[..8], b"RSD PTR ");
        assert_eq!(rsdp.bytes[15], 2, "revision");
        assert_eq!(u32_at(rsdp.bytes, 20), 36, "length");
    }

    #[test]
    fn pointers_chain_rsdp_xsdt_fadt_dsdt() {
        let tables = build(&config(1, Coordination::HwAll), BASE, MAX).unwrap();
        let gpa = |sig: &[u8; 4]| tables.table(sig).unwrap().gpa;
        let rsdp = tables.table(&RSDP_SIGNATURE).unwrap().bytes;
        assert_eq!(u64_at(rsdp, 24), gpa(b"XSDT"));
        let xsdt = tables.table(b"XSDT").unwrap().bytes;
        assert_eq!(
            (u64_at(xsdt, 36), u64_at(xsdt, 44)),
            (gpa(b"FACP"), gpa(b"APIC"))
        );
        let fadt = tables.table(b"FACP").unwrap().bytes;
        assert_eq!(fadt.len(), 276);
        assert_eq!(u64_at(fadt, 140), gpa(b"DSDT"), "X_DSDT");
        assert_eq!(u32_at(fadt, 112) & (1 << 20), 1 << 20, "HW_REDUCED_ACPI");
    }

    #[test]
    fn madt_has_one_enabled_local_apic_per_vcpu() {
        let tables = build(&config(4, Coordination::SwAll), BASE, MAX).unwrap();
        let madt = tables.table(b"APIC").unwrap().bytes;
        assert_eq!(madt.len(), 44 + 4 * 8);
        assert_eq!(u32_at(madt, 36), 0xFEE0_0000);
        for i in 0..4 {
            let e = &madt[44 + 8 * i..52 + 8 * i];
            assert_eq!(
                e[..4],
                [0, 8, i as u8, i as u8],
                "type, length, uid, apic id"
            );
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
    }

    #[test]
    fn madt_uses_x2apic_entries_for_large_ids_and_adds_io_apic() {
        let mut c = config(2, Coordination::SwAll);
        c.vcpus[1].apic_id = 300;
        c.io_apic = Some(IoApicConfig {
            id: 0,
            address: 0xFEC0_0000,
            gsi_base: 0,
        });
        let tables = build(&c, BASE, MAX).unwrap();
        let madt = tables.table(b"APIC").unwrap().bytes;
        assert_eq!(madt.len(), 44 + 8 + 16 + 12);
        let x2 = &madt[52..68];
        assert_eq!((x2[0], x2[1]), (9, 16));
        assert_eq!((u32_at(x2, 4), u32_at(x2, 8), u32_at(x2, 12)), (300, 1, 1));
        assert_eq!((madt[68], madt[69]), (1, 12));
        assert_eq!(u32_at(madt, 72), 0xFEC0_0000);
    }

    #[test]
    fn dsdt_is_revision_2_and_names_every_processor() {
        let tables = build(&config(4, Coordination::SwAll), BASE, MAX).unwrap();
        let dsdt = tables.table(b"DSDT").unwrap().bytes;
        assert_eq!(dsdt[8], 2);
        for name in ["C000", "C001", "C002", "C003"] {
            assert!(dsdt.windows(4).any(|w| w == name.as_bytes()), "{name}");
        }
        assert_eq!(dsdt.windows(8).filter(|w| w == b"ACPI0007").count(), 4);
    }

    #[test]
    fn rejects_too_small_a_reservation_and_unaligned_bases() {
        let c = config(1, Coordination::SwAll);
        assert!(matches!(
            build(&c, BASE, 64),
            Err(BuildError::TooLarge { max: 64, .. })
        ));
        assert!(matches!(
            build(&c, BASE + 8, MAX),
            Err(BuildError::UnalignedBase(_))
        ));
    }

    #[test]
    fn rejects_invalid_configs() {
        let mut c = config(1, Coordination::SwAll);
        c.ppc = 9;
        assert!(matches!(build(&c, BASE, MAX), Err(BuildError::Config(_))));
    }

    #[test]
    fn dumps_every_table_to_a_file() {
        let dir = std::env::temp_dir().join(format!("compart-acpi-dump-{}", std::process::id()));
        let tables = build(&config(2, Coordination::SwAny), BASE, MAX).unwrap();
        let paths = crate::write_dump(&tables, &dir).unwrap();
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["rsdp.dat", "xsdt.dat", "facp.dat", "apic.dat", "dsdt.dat"]
        );
        for (path, table) in paths.iter().zip(tables.tables()) {
            assert_eq!(std::fs::read(path).unwrap(), table.bytes);
        }
        if std::env::var_os("COMPART_KEEP_DUMP").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

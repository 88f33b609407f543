//! Finding and verifying the tables: RSDP → XSDT → FADT (→ DSDT) and MADT.

use compart_abi::le::{u32_at, u64_at};

use crate::aml::{self, Cursor, DeviceObjects};
use crate::error::{Error, Sig};
use crate::{AcpiInfo, PhysMem, ProcessorInfo};

const HEADER_LEN: usize = 36;
const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;
/// FADT offsets (ACPI 6.5 §5.2.9).
const FADT_DSDT: usize = 40;
const FADT_X_DSDT: usize = 140;
/// MADT entries start after the header, local APIC address and flags.
const MADT_ENTRIES: usize = 44;
/// Most MADT processor entries remembered while matching UIDs.
const MAX_MADT_ENTRIES: usize = 256;
/// `_STA` when the object is absent: present, enabled, shown, functioning.
const DEFAULT_STA: u64 = 0x0F;

fn read<M: PhysMem + ?Sized>(mem: &M, gpa: u64, len: usize) -> Result<&[u8], Error> {
    mem.read(gpa, len).ok_or(Error::OutOfBounds { gpa, len })
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// The whole table at `gpa`, with its signature, length and checksum verified.
fn table<'m, M: PhysMem + ?Sized>(
    mem: &'m M,
    gpa: u64,
    signature: &[u8; 4],
) -> Result<&'m [u8], Error> {
    let header = read(mem, gpa, HEADER_LEN)?;
    let found = [header[0], header[1], header[2], header[3]];
    if &found != signature {
        return Err(Error::BadSignature {
            expected: Sig(*signature),
            found: Sig(found),
        });
    }
    let length = u32_at(header, 4).unwrap_or(0);
    let len = usize::try_from(length).unwrap_or(usize::MAX);
    if len < HEADER_LEN {
        return Err(Error::BadLength {
            table: Sig(found),
            length,
        });
    }
    let bytes = read(mem, gpa, len)?;
    if sum(bytes) != 0 {
        return Err(Error::BadChecksum { table: Sig(found) });
    }
    Ok(bytes)
}

/// The signature of the table at `gpa`, if it can be read.
fn signature_at<M: PhysMem + ?Sized>(mem: &M, gpa: u64) -> Result<[u8; 4], Error> {
    let b = read(mem, gpa, 4)?;
    Ok([b[0], b[1], b[2], b[3]])
}

/// One processor entry of the MADT.
#[derive(Clone, Copy, Debug)]
struct MadtCpu {
    uid: u32,
    apic_id: u32,
    enabled: bool,
}

pub(crate) fn parse<M: PhysMem + ?Sized, const N: usize>(
    mem: &M,
    rsdp_gpa: u64,
) -> Result<AcpiInfo<N>, Error> {
    // RSDP (ACPI 6.5 §5.2.5.3): checksum over the first 20 bytes, extended checksum over
    // `length` bytes.
    let rsdp = read(mem, rsdp_gpa, RSDP_V1_LEN)?;
    if &rsdp[..8] != b"RSD PTR " {
        return Err(Error::BadRsdpSignature);
    }
    if sum(rsdp) != 0 {
        return Err(Error::BadChecksum {
            table: Sig(*b"RSDP"),
        });
    }
    let revision = rsdp[15];
    if revision < 2 {
        return Err(Error::UnsupportedRsdpRevision(revision));
    }
    let rsdp = read(mem, rsdp_gpa, RSDP_V2_LEN)?;
    let length = u32_at(rsdp, 20).unwrap_or(0);
    let len = usize::try_from(length).unwrap_or(usize::MAX);
    if len < RSDP_V2_LEN {
        return Err(Error::BadLength {
            table: Sig(*b"RSDP"),
            length,
        });
    }
    let rsdp = read(mem, rsdp_gpa, len)?;
    if sum(rsdp) != 0 {
        return Err(Error::BadChecksum {
            table: Sig(*b"RSDP"),
        });
    }
    let xsdt_gpa = u64_at(rsdp, 24).unwrap_or(0);

    // XSDT: 64-bit pointers after the header.
    let xsdt = table(mem, xsdt_gpa, b"XSDT")?;
    let entries = &xsdt[HEADER_LEN..];
    if entries.len() % 8 != 0 {
        return Err(Error::BadLength {
            table: Sig(*b"XSDT"),
            length: u32_at(xsdt, 4).unwrap_or(0),
        });
    }
    let mut fadt_gpa = None;
    let mut madt_gpa = None;
    for entry in entries.chunks_exact(8) {
        let gpa = u64_at(entry, 0).unwrap_or(0);
        match &signature_at(mem, gpa)? {
            b"FACP" if fadt_gpa.is_none() => fadt_gpa = Some(gpa),
            b"APIC" if madt_gpa.is_none() => madt_gpa = Some(gpa),
            _ => {}
        }
    }
    let fadt = table(
        mem,
        fadt_gpa.ok_or(Error::MissingTable(Sig(*b"FACP")))?,
        b"FACP",
    )?;
    let madt = table(
        mem,
        madt_gpa.ok_or(Error::MissingTable(Sig(*b"APIC")))?,
        b"APIC",
    )?;

    // DSDT: X_DSDT when the FADT is long enough to have it and it is set, else DSDT.
    let dsdt_gpa = match u64_at(fadt, FADT_X_DSDT) {
        Some(x) if x != 0 => x,
        _ => u64::from(u32_at(fadt, FADT_DSDT).unwrap_or(0)),
    };
    if dsdt_gpa == 0 {
        return Err(Error::MissingTable(Sig(*b"DSDT")));
    }
    let dsdt = table(mem, dsdt_gpa, b"DSDT")?;

    // MADT processors.
    let mut cpus = [MadtCpu {
        uid: 0,
        apic_id: 0,
        enabled: false,
    }; MAX_MADT_ENTRIES];
    let mut cpu_count = 0;
    let local_apic_address = u32_at(madt, 36).ok_or(Error::BadLength {
        table: Sig(*b"APIC"),
        length: u32_at(madt, 4).unwrap_or(0),
    })?;
    let mut offset = MADT_ENTRIES;
    while offset < madt.len() {
        let bad = Error::BadMadtEntry { offset };
        let kind = *madt.get(offset).ok_or(bad)?;
        let len = usize::from(*madt.get(offset + 1).ok_or(bad)?);
        let entry = madt.get(offset..offset + len).ok_or(bad)?;
        let cpu = match (kind, len) {
            (0, 8) => Some(MadtCpu {
                uid: u32::from(entry[2]),
                apic_id: u32::from(entry[3]),
                enabled: u32_at(entry, 4).ok_or(bad)? & 1 != 0,
            }),
            (9, 16) => Some(MadtCpu {
                uid: u32_at(entry, 12).ok_or(bad)?,
                apic_id: u32_at(entry, 4).ok_or(bad)?,
                enabled: u32_at(entry, 8).ok_or(bad)? & 1 != 0,
            }),
            (0, _) | (9, _) => return Err(bad),
            _ if len < 2 => return Err(bad),
            _ => None,
        };
        if let Some(cpu) = cpu {
            let slot = cpus.get_mut(cpu_count).ok_or(Error::TooManyProcessors {
                max: MAX_MADT_ENTRIES,
            })?;
            *slot = cpu;
            cpu_count += 1;
        }
        offset += len;
    }
    let cpus = &cpus[..cpu_count];

    // DSDT processors.
    let mut info = AcpiInfo::<N> {
        processors: [ProcessorInfo::EMPTY; N],
        count: 0,
        local_apic_address,
    };
    let wide = dsdt[8] >= 2;
    let mut cursor = Cursor::new(&dsdt[HEADER_LEN..], HEADER_LEN, wide);
    aml::walk(&mut cursor, 0, None, &mut |device: &DeviceObjects| {
        if !device.is_processor {
            return Ok(());
        }
        let missing = |object: &[u8; 4]| Error::MissingObject {
            device: Sig(device.name),
            object: Sig(*object),
        };
        let uid = device.uid.ok_or(missing(b"_UID"))?;
        let pct = device.pct.ok_or(missing(b"_PCT"))?;
        let (pstates, pstate_count) = device.pss.ok_or(missing(b"_PSS"))?;
        let ppc = device.ppc.ok_or(missing(b"_PPC"))?;
        let psd = device.psd.ok_or(missing(b"_PSD"))?;
        if usize::try_from(ppc).map_or(true, |p| p >= pstate_count) {
            return Err(Error::InvalidObject {
                device: Sig(device.name),
                object: Sig(*b"_PPC"),
            });
        }
        let cpu = cpus
            .iter()
            .find(|c| c.uid == uid)
            .ok_or(Error::ProcessorNotInMadt { uid })?;
        if info.processors().any(|p| p.uid == uid) {
            return Err(Error::DuplicateUid(uid));
        }
        let slot = info
            .processors
            .get_mut(info.count)
            .ok_or(Error::TooManyProcessors { max: N })?;
        *slot = ProcessorInfo {
            name: device.name,
            uid,
            apic_id: cpu.apic_id,
            enabled: cpu.enabled,
            sta: device.sta.unwrap_or(DEFAULT_STA),
            pct,
            pstates,
            pstate_count,
            ppc,
            psd,
        };
        info.count += 1;
        Ok(())
    })?;
    Ok(info)
}

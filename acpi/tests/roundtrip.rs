//! Tables built by `compart-acpi` read back by the guest firmware's reader
//! (`compart-acpi-reader`), and the reader facing corrupted tables.

use compart_acpi::{
    build, ladder, AcpiTables, Coordination, GuestAcpiConfig, IoApicConfig, Mhz, Micros,
    MilliWatts, PState, PStateTable, PsdDomain, VcpuAcpi,
};
use compart_acpi_reader::{self as reader, AcpiInfo, Error, PhysSlice};

const BASE: u64 = 0x18_0000;
const MAX: usize = 512 * 1024;

/// `n` vCPUs with APIC ids 0.., spread over `domains` domains of one coordination type.
fn guest(n: u32, domains: u32, coordination: Coordination) -> GuestAcpiConfig {
    let per_domain = n.div_ceil(domains);
    let vcpus = (0..n)
        .map(|i| VcpuAcpi {
            apic_id: i,
            uid: i,
            psd: PsdDomain {
                domain: i / per_domain,
                coordination,
                num_processors: per_domain.min(n - (i / per_domain) * per_domain),
            },
        })
        .collect();
    GuestAcpiConfig::new(vcpus, ladder::default_ladder(Mhz(2600)))
}

fn parse<const N: usize>(tables: &AcpiTables) -> Result<AcpiInfo<N>, Error> {
    AcpiInfo::<N>::parse(
        &PhysSlice::new(tables.base_gpa(), tables.bytes()),
        tables.rsdp_gpa(),
    )
}

fn reader_pstate(s: &PState) -> reader::PState {
    reader::PState {
        frequency_mhz: s.frequency.0,
        power_mw: s.power.0,
        transition_latency_us: s.transition_latency.0,
        bus_master_latency_us: s.bus_master_latency.0,
        control: s.control,
        status: s.status,
    }
}

/// Builds `config`, reads it back and checks every field the reader reports.
fn assert_round_trip<const N: usize>(config: &GuestAcpiConfig) {
    let tables = build(config, BASE, MAX).expect("build");
    let info = parse::<N>(&tables).expect("parse");
    let expected: Vec<reader::PState> = config.pstates.states().iter().map(reader_pstate).collect();
    assert_eq!(info.processors().count(), config.vcpus.len());
    for (i, (cpu, vcpu)) in info.processors().zip(&config.vcpus).enumerate() {
        assert_eq!(cpu.name().to_string(), format!("C{i:03X}"));
        assert_eq!(cpu.uid(), vcpu.uid);
        assert_eq!(cpu.apic_id(), vcpu.apic_id);
        assert!(cpu.enabled());
        assert_eq!(cpu.sta(), 0x0F);
        assert_eq!(cpu.pct().control_msr, 0x199);
        assert_eq!(cpu.pct().status_msr, 0x198);
        assert_eq!(cpu.pstates(), expected.as_slice());
        assert_eq!(cpu.ppc(), config.ppc);
        assert_eq!(cpu.allowed_pstates(), &expected[config.ppc as usize..]);
        let psd = cpu.psd();
        assert_eq!(psd.domain, vcpu.psd.domain);
        // One type on both sides (compart_abi::acpi); the value went through the AML.
        assert_eq!(psd.coordination, vcpu.psd.coordination);
        assert_eq!(psd.num_processors, vcpu.psd.num_processors);
        assert_eq!(info.processor_by_apic_id(vcpu.apic_id), Some(cpu));
    }
    assert_eq!(info.pstates(), expected.as_slice());
    assert_eq!(info.local_apic_address(), 0xFEE0_0000);
}

#[test]
fn one_two_and_four_vcpus_in_every_coordination_type_read_back_exactly() {
    for n in [1, 2, 4] {
        for coordination in Coordination::ALL {
            assert_round_trip::<4>(&guest(n, 1, coordination));
            assert_round_trip::<4>(&guest(n, n, coordination));
        }
    }
}

#[test]
fn several_domains_read_back_exactly() {
    assert_round_trip::<8>(&guest(8, 4, Coordination::SwAny));
    assert_round_trip::<8>(&guest(4, 2, Coordination::HwAll));
}

#[test]
fn ppc_reads_back() {
    let mut config = guest(2, 1, Coordination::SwAll);
    config.ppc = 3;
    assert_round_trip::<2>(&config);
}

#[test]
fn sixteen_states_with_dword_extremes_read_back() {
    let states = (0..16u32)
        .map(|i| PState {
            frequency: Mhz(u32::MAX - i),
            power: MilliWatts(u32::MAX - i),
            transition_latency: Micros(i * 1000),
            bus_master_latency: Micros(u32::MAX),
            control: u64::from(u32::MAX - i),
            status: u64::from(i) << 24,
        })
        .collect();
    let mut config = guest(1, 1, Coordination::HwAll);
    config.pstates = PStateTable::new(states).unwrap();
    config.ppc = 15;
    assert_round_trip::<1>(&config);
}

#[test]
fn x2apic_ids_uids_and_an_io_apic_read_back() {
    let mut config = guest(3, 3, Coordination::SwAll);
    config.vcpus[1].apic_id = 300;
    config.vcpus[2].uid = 70_000;
    config.io_apic = Some(IoApicConfig {
        id: 0,
        address: 0xFEC0_0000,
        gsi_base: 0,
    });
    assert_round_trip::<3>(&config);
}

#[test]
fn many_vcpus_read_back() {
    assert_round_trip::<64>(&guest(64, 8, Coordination::SwAny));
}

#[test]
fn a_default_host_ladder_reads_back() {
    let mut config = guest(2, 2, Coordination::HwAll);
    config.pstates = compart_acpi::ladder::default_ladder(compart_acpi::Mhz(2600));
    assert_round_trip::<2>(&config);
}

#[test]
fn tables_read_from_whole_guest_memory() {
    let tables = build(&guest(2, 1, Coordination::SwAll), BASE, MAX).unwrap();
    let mut ram = vec![0u8; 4 << 20];
    ram[BASE as usize..BASE as usize + tables.bytes().len()].copy_from_slice(tables.bytes());
    let info: AcpiInfo = AcpiInfo::parse(&ram[..], tables.rsdp_gpa()).unwrap();
    assert_eq!(info.processors().count(), 2);
}

#[test]
fn more_processors_than_capacity_is_an_error() {
    let tables = build(&guest(4, 1, Coordination::SwAll), BASE, MAX).unwrap();
    assert_eq!(
        parse::<2>(&tables).unwrap_err(),
        Error::TooManyProcessors { max: 2 }
    );
}

// ---- corruption ----

/// (offset, length) of every table in the blob.
fn spans(tables: &AcpiTables) -> Vec<(usize, usize)> {
    tables
        .tables()
        .map(|t| ((t.gpa - tables.base_gpa()) as usize, t.bytes.len()))
        .collect()
}

/// Recomputes the checksums of every table in `blob` (laid out as `tables`), so that the
/// reader gets past them to the contents.
fn fix_checksums(tables: &AcpiTables, blob: &mut [u8]) {
    for (i, (offset, len)) in spans(tables).into_iter().enumerate() {
        let end = (offset + len).min(blob.len());
        if offset + 36 > end {
            continue; // truncated away
        }
        if i == 0 {
            // RSDP: first 20 bytes, then all 36.
            blob[offset + 8] = 0;
            blob[offset + 32] = 0;
            let s: u8 = blob[offset..offset + 20]
                .iter()
                .fold(0, |a, b| a.wrapping_add(*b));
            blob[offset + 8] = 0u8.wrapping_sub(s);
            let s: u8 = blob[offset..end].iter().fold(0, |a, b| a.wrapping_add(*b));
            blob[offset + 32] = 0u8.wrapping_sub(s);
        } else {
            blob[offset + 9] = 0;
            let s: u8 = blob[offset..end].iter().fold(0, |a, b| a.wrapping_add(*b));
            blob[offset + 9] = 0u8.wrapping_sub(s);
        }
    }
}

fn parse_blob(blob: &[u8]) -> Result<AcpiInfo<4>, Error> {
    AcpiInfo::<4>::parse(&PhysSlice::new(BASE, blob), BASE)
}

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn any_flipped_byte_inside_a_table_fails_its_checksum() {
    let tables = build(&guest(2, 1, Coordination::SwAny), BASE, MAX).unwrap();
    let spans = spans(&tables);
    for offset in 0..tables.bytes().len() {
        let mut blob = tables.bytes().to_vec();
        blob[offset] ^= 0x5A;
        let inside = spans.iter().any(|&(o, l)| (o..o + l).contains(&offset));
        let result = parse_blob(&blob);
        if inside {
            assert!(result.is_err(), "flip at {offset:#x} went unnoticed");
        } else {
            assert!(
                result.is_ok(),
                "flip in padding at {offset:#x} broke parsing"
            );
        }
    }
}

#[test]
fn any_truncation_is_an_error() {
    let tables = build(&guest(2, 2, Coordination::HwAll), BASE, MAX).unwrap();
    for len in 0..tables.bytes().len() {
        let result = parse_blob(&tables.bytes()[..len]);
        assert!(
            matches!(result, Err(Error::OutOfBounds { .. })),
            "truncated to {len}: {result:?}"
        );
    }
}

#[test]
fn random_corruption_with_valid_checksums_never_panics() {
    let tables = build(&guest(4, 2, Coordination::SwAll), BASE, MAX).unwrap();
    let spans = spans(&tables);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let mut blob = tables.bytes().to_vec();
        // Mostly the DSDT (where the AML reader works), sometimes any table.
        let (offset, len) = if rng.below(4) == 0 {
            spans[rng.below(spans.len())]
        } else {
            spans[4]
        };
        for _ in 0..1 + rng.below(4) {
            let at = offset + rng.below(len);
            blob[at] = match rng.below(3) {
                0 => rng.next() as u8,
                1 => blob[at] ^ (1 << rng.below(8)),
                _ => [0x00, 0x01, 0xFF, 0x12, 0x11, 0x10, 0x5B, 0x82, 0x7F][rng.below(9)],
            };
        }
        if rng.below(8) == 0 {
            let cut = rng.below(blob.len());
            blob.truncate(cut);
        }
        fix_checksums(&tables, &mut blob);
        match parse_blob(&blob) {
            Ok(_) => ok += 1,
            Err(e) => {
                let _ = e.to_string();
                err += 1;
            }
        }
    }
    assert!(err > 0 && ok + err == 20_000);
}

/// Replaces the first occurrence of `from` in the DSDT with `to` (same length) and fixes
/// the checksums.
fn patch_dsdt(tables: &AcpiTables, from: &[u8], to: &[u8]) -> Vec<u8> {
    let (offset, len) = spans(tables)[4];
    let mut blob = tables.bytes().to_vec();
    let at = blob[offset..offset + len]
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in DSDT")
        + offset;
    blob[at..at + to.len()].copy_from_slice(to);
    fix_checksums(tables, &mut blob);
    blob
}

#[test]
fn acpi_tables_register_length_is_refused() {
    // acpi_tables 0.2.1's aml::Register writes 0x12 where the spec says 0x0C.
    let tables = build(&guest(1, 1, Coordination::SwAll), BASE, MAX).unwrap();
    let blob = patch_dsdt(
        &tables,
        &[0x82, 0x0C, 0x00, 0x7F],
        &[0x82, 0x12, 0x00, 0x7F],
    );
    assert!(matches!(
        parse_blob(&blob),
        Err(Error::InvalidObject { object, .. }) if object.to_string() == "_PCT"
    ));
}

#[test]
fn unknown_coordination_type_is_refused() {
    let tables = build(&guest(1, 1, Coordination::SwAny), BASE, MAX).unwrap();
    let blob = patch_dsdt(&tables, &[0x0A, 0xFD], &[0x0A, 0xFB]);
    assert!(matches!(
        parse_blob(&blob),
        Err(Error::InvalidObject { object, .. }) if object.to_string() == "_PSD"
    ));
}

#[test]
fn processor_without_pss_is_refused() {
    let tables = build(&guest(1, 1, Coordination::SwAny), BASE, MAX).unwrap();
    let blob = patch_dsdt(&tables, b"_PSS", b"XPSS");
    assert!(matches!(
        parse_blob(&blob),
        Err(Error::MissingObject { object, .. }) if object.to_string() == "_PSS"
    ));
}

#[test]
fn processor_missing_from_madt_is_refused() {
    let tables = build(&guest(1, 1, Coordination::SwAny), BASE, MAX).unwrap();
    // _UID Zero becomes One: no MADT entry has UID 1.
    let blob = patch_dsdt(&tables, b"_UID\x00", b"_UID\x01");
    assert_eq!(
        parse_blob(&blob).unwrap_err(),
        Error::ProcessorNotInMadt { uid: 1 }
    );
}

#[test]
fn bad_rsdp_is_refused() {
    let tables = build(&guest(1, 1, Coordination::SwAny), BASE, MAX).unwrap();
    let mut blob = tables.bytes().to_vec();
    blob[0] = b'X';
    assert_eq!(parse_blob(&blob).unwrap_err(), Error::BadRsdpSignature);
    let mut blob = tables.bytes().to_vec();
    blob[15] = 0; // ACPI 1.0 RSDP
    fix_checksums(&tables, &mut blob);
    assert_eq!(
        parse_blob(&blob).unwrap_err(),
        Error::UnsupportedRsdpRevision(0)
    );
    assert!(matches!(
        AcpiInfo::<1>::parse(&PhysSlice::new(BASE, tables.bytes()), BASE + 16),
        Err(Error::BadRsdpSignature)
    ));
}

//! Identity page tables covering `MAPPED_LIMIT`, with access rights per area so that
//! ring 3 cannot take over ring 0: the structures ring 0 runs on (IDT, page tables,
//! GDT, TSS, ring-0 stacks, the APICs) are supervisor-only, and nothing is executable
//! but the image's code segments (EFER.NXE and the XD bit). The low 2 MiB and the
//! 2 MiB regions the image's segments span use 4 KiB pages, so that the page at 0
//! can be left out (null dereferences fault) and each image segment gets its own
//! rights; the rest uses 2 MiB pages. Addresses with no RAM behind them reach the VMM
//! as MMIO exits. Upper levels allow everything; the leaf entries decide.

use compart_abi::{
    ioapic, lapic, ACPI_GPA, ACPI_SIZE, BOOT_INFO_GPA, CHANNELS_GPA, CHANNEL_STRIDE,
    CONSOLE_BUF_GPA, DOORBELLS_GPA, IDT_GPA, IMAGE_GPA, MAPPED_LIMIT, MAX_CHANNELS, MAX_IMAGE_SIZE,
    PAGE_SIZE, PAGE_TABLES_GPA, PAGE_TABLE_PAGES, PERCPU_GPA, PLACEMENT_GPA,
};

use crate::loader::Segment;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
/// Execute-disable (needs EFER.NXE).
const NO_EXECUTE: u64 = 1 << 63;
/// Table entries above the leaves: the leaves alone decide.
const TABLE: u64 = PRESENT | WRITABLE | USER;
/// Ring-3 data: readable, writable, not executable.
const USER_DATA: u64 = PRESENT | WRITABLE | USER | NO_EXECUTE;

const TWO_MIB: u64 = 2 << 20;
/// Page tables for the image: one per 2 MiB.
const IMAGE_PTS: u64 = MAX_IMAGE_SIZE / TWO_MIB;

/// What a guest-physical address is, as far as the fixed layout tells.
pub fn area(gpa: u64) -> &'static str {
    let within = |start: u64, len: u64| (start..start + len).contains(&gpa);
    if gpa < PAGE_SIZE {
        "the null page"
    } else if within(BOOT_INFO_GPA, PAGE_SIZE) {
        "the boot info"
    } else if within(CONSOLE_BUF_GPA, PAGE_SIZE) {
        "the console buffer"
    } else if within(IDT_GPA, PAGE_SIZE) {
        "the IDT"
    } else if within(PAGE_TABLES_GPA, PAGE_TABLE_PAGES * PAGE_SIZE) {
        "the guest's page tables"
    } else if within(PERCPU_GPA, ACPI_GPA - PERCPU_GPA) {
        "a vCPU's GDT, TSS or ring-0 stacks"
    } else if within(ACPI_GPA, ACPI_SIZE) {
        "the ACPI tables"
    } else if gpa < IMAGE_GPA {
        "unused low memory"
    } else if within(ioapic::BASE_GPA, TWO_MIB) || within(lapic::BASE_GPA, TWO_MIB) {
        "the APICs"
    } else if within(CHANNELS_GPA, MAX_CHANNELS as u64 * CHANNEL_STRIDE) {
        "a channel region"
    } else if within(PLACEMENT_GPA, PAGE_SIZE) {
        "the placement page"
    } else if within(DOORBELLS_GPA, MAX_CHANNELS as u64 * PAGE_SIZE) {
        "a doorbell page"
    } else {
        "the image, a stack, the heap or a device"
    }
}

/// Whether the page tables deny ring 3 the page at `gpa`.
pub fn supervisor_only(gpa: u64) -> bool {
    let apic =
        |base: u64| (base & !(TWO_MIB - 1)..(base & !(TWO_MIB - 1)) + TWO_MIB).contains(&gpa);
    (gpa < IMAGE_GPA && low_page(gpa & !(PAGE_SIZE - 1)) & USER == 0)
        || apic(ioapic::BASE_GPA)
        || apic(lapic::BASE_GPA)
}

/// The leaf flags of the 4 KiB page at `gpa` below 2 MiB.
fn low_page(gpa: u64) -> u64 {
    let within = |start: u64, len: u64| (start..start + len).contains(&gpa);
    if gpa < PAGE_SIZE {
        0
    } else if within(BOOT_INFO_GPA, PAGE_SIZE) || within(ACPI_GPA, ACPI_SIZE) {
        PRESENT | USER | NO_EXECUTE
    } else if within(CONSOLE_BUF_GPA, PAGE_SIZE) {
        USER_DATA
    } else if within(IDT_GPA, PAGE_SIZE) || within(PAGE_TABLES_GPA, PAGE_TABLE_PAGES * PAGE_SIZE) {
        // Supervisor, read-only even for ring 0 (CR0.WP): nothing writes them.
        PRESENT | NO_EXECUTE
    } else {
        // Per-vCPU GDT, TSS and ring-0 stacks (the CPU and the stub write them), and
        // unused pages.
        PRESENT | WRITABLE | NO_EXECUTE
    }
}

/// The leaf flags of the 4 KiB page at `gpa` in the image's range: the union of the
/// rights of the segments that touch it; ring-3 data (stacks, heap) where none does.
fn image_page(gpa: u64, segments: &[Segment]) -> u64 {
    let touching = segments
        .iter()
        .filter(|s| s.start < gpa + PAGE_SIZE && gpa < s.end);
    let mut flags = None;
    for s in touching {
        let f = flags.get_or_insert(PRESENT | USER | NO_EXECUTE);
        if s.writable {
            *f |= WRITABLE;
        }
        if s.executable {
            *f &= !NO_EXECUTE;
        }
    }
    flags.unwrap_or(USER_DATA)
}

/// The page-table pages for an image with `segments`, to be written at
/// `PAGE_TABLES_GPA`: PML4, PDPT, 4 PDs, the PT of the low 2 MiB, and one PT per 2 MiB
/// the image's segments span (at most `MAX_IMAGE_SIZE` worth): the rest of the image
/// range, stacks and heap, is ring-3 data in 2 MiB pages, so a small image costs the
/// guest no page-table page it does not need (each written page is resident memory).
/// `lapic_user`: ring 3 may reach the local APIC (a guest of one vCPU).
pub fn page_tables(segments: &[Segment], lapic_user: bool) -> Vec<u8> {
    const GIB: u64 = 1 << 30;
    const PDS: u64 = MAPPED_LIMIT / GIB;
    let image_pts = segments
        .iter()
        .map(|s| s.end.saturating_sub(IMAGE_GPA).div_ceil(TWO_MIB))
        .max()
        .unwrap_or(0)
        .min(IMAGE_PTS);
    let pages = PAGE_TABLE_PAGES - IMAGE_PTS + image_pts;
    let mut mem = vec![0u8; (pages * PAGE_SIZE) as usize];
    let page_gpa = |i: u64| PAGE_TABLES_GPA + i * PAGE_SIZE;
    let mut set = |page: u64, index: u64, value: u64| {
        let at = (page * PAGE_SIZE + index * 8) as usize;
        mem[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    let (pml4, pdpt, first_pd, low_pt) = (0, 1, 2, 2 + PDS);
    let image_pt = |i: u64| low_pt + 1 + i;
    set(pml4, 0, page_gpa(pdpt) | TABLE);
    for gib in 0..PDS {
        set(pdpt, gib, page_gpa(first_pd + gib) | TABLE);
        for i in 0..512 {
            let addr = gib * GIB + i * TWO_MIB;
            let entry = if addr == 0 {
                page_gpa(low_pt) | TABLE
            } else if (IMAGE_GPA..IMAGE_GPA + image_pts * TWO_MIB).contains(&addr) {
                page_gpa(image_pt((addr - IMAGE_GPA) / TWO_MIB)) | TABLE
            } else if addr == lapic::BASE_GPA & !(TWO_MIB - 1) && lapic_user {
                // A one-vCPU guest's local APIC: ring 3 arms its timer and probes the
                // EOI itself (see `compart_abi::lapic_user_accessible`).
                addr | USER_DATA | HUGE
            } else if addr == ioapic::BASE_GPA & !(TWO_MIB - 1)
                || addr == lapic::BASE_GPA & !(TWO_MIB - 1)
            {
                // The APICs: ring 0 acknowledges interrupts; ring 3 must not send
                // IPIs (an INIT/SIPI would start a sibling vCPU outside ring 3).
                addr | PRESENT | WRITABLE | NO_EXECUTE | HUGE
            } else if addr == PLACEMENT_GPA & !(TWO_MIB - 1) {
                // The placement page is a read-only slot; say so before KVM has to.
                addr | PRESENT | USER | NO_EXECUTE | HUGE
            } else {
                addr | USER_DATA | HUGE
            };
            set(first_pd + gib, i, entry);
        }
    }
    for i in 0..512 {
        set(low_pt, i, (i * PAGE_SIZE) | low_page(i * PAGE_SIZE));
    }
    for pt in 0..image_pts {
        for i in 0..512 {
            let addr = IMAGE_GPA + pt * TWO_MIB + i * PAGE_SIZE;
            set(image_pt(pt), i, addr | image_page(addr, segments));
        }
    }
    mem
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an access may do, as the MMU computes it from every level.
    #[derive(Debug, PartialEq, Eq)]
    struct Rights {
        user: bool,
        writable: bool,
        executable: bool,
    }

    /// Walks the tables as the MMU would: the frame and the combined rights.
    fn translate(tables: &[u8], va: u64) -> Option<(u64, Rights)> {
        let entry = |gpa: u64, index: u64| {
            let at = (gpa - PAGE_TABLES_GPA + index * 8) as usize;
            u64::from_le_bytes(tables[at..at + 8].try_into().unwrap())
        };
        let frame = |e: u64| e & 0x000f_ffff_ffff_f000;
        let mut rights = Rights {
            user: true,
            writable: true,
            executable: true,
        };
        let mut apply = |e: u64| {
            rights.user &= e & USER != 0;
            rights.writable &= e & WRITABLE != 0;
            rights.executable &= e & NO_EXECUTE == 0;
        };
        let e4 = entry(PAGE_TABLES_GPA, (va >> 39) & 511);
        if e4 & PRESENT == 0 {
            return None;
        }
        apply(e4);
        let e3 = entry(frame(e4), (va >> 30) & 511);
        if e3 & PRESENT == 0 {
            return None;
        }
        apply(e3);
        let e2 = entry(frame(e3), (va >> 21) & 511);
        if e2 & PRESENT == 0 {
            return None;
        }
        apply(e2);
        if e2 & HUGE != 0 {
            let pa = (e2 & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff);
            return Some((pa, rights));
        }
        let e1 = entry(frame(e2), (va >> 12) & 511);
        if e1 & PRESENT == 0 {
            return None;
        }
        apply(e1);
        Some((frame(e1) | (va & 0xfff), rights))
    }

    fn rights(user: bool, writable: bool, executable: bool) -> Rights {
        Rights {
            user,
            writable,
            executable,
        }
    }

    const SEGMENTS: [Segment; 3] = [
        Segment {
            start: IMAGE_GPA,
            end: IMAGE_GPA + 0x3040,
            writable: false,
            executable: true,
        },
        Segment {
            start: IMAGE_GPA + 0x4000,
            end: IMAGE_GPA + 0x4800,
            writable: false,
            executable: false,
        },
        Segment {
            start: IMAGE_GPA + 0x5000,
            end: IMAGE_GPA + 0x6010,
            writable: true,
            executable: false,
        },
    ];

    #[test]
    fn identity_maps_everything_but_the_null_page() {
        let t = page_tables(&SEGMENTS, false);
        assert!(translate(&t, 0).is_none());
        assert!(translate(&t, 0xfff).is_none());
        for va in [
            0x1000,
            0x2345,
            0x1f_ffff,
            0x20_0000,
            0x12_3456,
            IMAGE_GPA + MAX_IMAGE_SIZE - 1,
            IMAGE_GPA + MAX_IMAGE_SIZE,
            0x4000_1234,
            0xfee0_00b0,
            MAPPED_LIMIT - 1,
        ] {
            assert_eq!(translate(&t, va).map(|(pa, _)| pa), Some(va), "{va:#x}");
        }
    }

    #[test]
    fn ring_zero_structures_are_supervisor_only_and_nothing_there_executes() {
        let t = page_tables(&SEGMENTS, false);
        let gdt = compart_abi::percpu_gpa(3) + compart_abi::percpu::GDT;
        for (va, want) in [
            (IDT_GPA, rights(false, false, false)),
            (PAGE_TABLES_GPA, rights(false, false, false)),
            (
                PAGE_TABLES_GPA + (PAGE_TABLE_PAGES - 1) * PAGE_SIZE,
                rights(false, false, false),
            ),
            (gdt, rights(false, true, false)),
            (lapic::BASE_GPA + lapic::EOI, rights(false, true, false)),
            (ioapic::BASE_GPA, rights(false, true, false)),
            (BOOT_INFO_GPA, rights(true, false, false)),
            (ACPI_GPA, rights(true, false, false)),
            (CONSOLE_BUF_GPA, rights(true, true, false)),
        ] {
            assert_eq!(translate(&t, va).unwrap().1, want, "{va:#x} ({})", area(va));
        }
    }

    #[test]
    fn image_pages_get_their_segments_rights_and_the_rest_is_data() {
        let t = page_tables(&SEGMENTS, false);
        for (va, want) in [
            (IMAGE_GPA, rights(true, false, true)),
            (IMAGE_GPA + 0x3fff, rights(true, false, true)),
            (IMAGE_GPA + 0x4000, rights(true, false, false)),
            (IMAGE_GPA + 0x5000, rights(true, true, false)),
            (IMAGE_GPA + 0x6000, rights(true, true, false)),
            // Stacks and heap after the image, in its 4 KiB range and beyond.
            (IMAGE_GPA + 0x7000, rights(true, true, false)),
            (
                IMAGE_GPA + MAX_IMAGE_SIZE + 0x1000,
                rights(true, true, false),
            ),
            (CHANNELS_GPA, rights(true, true, false)),
            (PLACEMENT_GPA, rights(true, false, false)),
            (DOORBELLS_GPA, rights(true, true, false)),
        ] {
            assert_eq!(translate(&t, va).unwrap().1, want, "{va:#x}");
        }
    }

    #[test]
    fn only_the_2_mib_regions_the_image_spans_get_4_kib_page_tables() {
        // SEGMENTS end within the first 2 MiB: one image PT, the rest huge data pages.
        let small = page_tables(&SEGMENTS, false);
        assert_eq!(
            small.len() as u64,
            (PAGE_TABLE_PAGES - IMAGE_PTS + 1) * PAGE_SIZE
        );
        let big = [Segment {
            start: IMAGE_GPA,
            end: IMAGE_GPA + 5 * TWO_MIB + 1,
            writable: false,
            executable: true,
        }];
        let t = page_tables(&big, false);
        assert_eq!(
            t.len() as u64,
            (PAGE_TABLE_PAGES - IMAGE_PTS + 6) * PAGE_SIZE
        );
        assert_eq!(
            translate(&t, IMAGE_GPA + 5 * TWO_MIB).unwrap().1,
            rights(true, false, true)
        );
        assert_eq!(
            translate(&t, IMAGE_GPA + 6 * TWO_MIB).unwrap().1,
            rights(true, true, false),
            "past the image: ring-3 data"
        );
    }

    #[test]
    fn only_a_one_vcpu_guest_reaches_its_local_apic_from_ring_3() {
        let eoi = lapic::BASE_GPA + lapic::EOI;
        let one = page_tables(&SEGMENTS, true);
        assert_eq!(translate(&one, eoi).unwrap().1, rights(true, true, false));
        // The I/O APIC and everything ring 0 runs on stay as they are.
        assert_eq!(
            translate(&one, ioapic::BASE_GPA).unwrap().1,
            rights(false, true, false)
        );
        assert_eq!(
            translate(&one, IDT_GPA).unwrap().1,
            rights(false, false, false)
        );
        let several = page_tables(&SEGMENTS, false);
        assert_eq!(
            translate(&several, eoi).unwrap().1,
            rights(false, true, false)
        );
    }

    #[test]
    fn areas_are_named_for_failure_messages() {
        assert_eq!(area(PAGE_TABLES_GPA + 0x10), "the guest's page tables");
        assert_eq!(area(IDT_GPA), "the IDT");
        assert_eq!(area(0), "the null page");
        assert_eq!(area(PLACEMENT_GPA + 8), "the placement page");
    }
}

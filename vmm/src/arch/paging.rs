//! Identity page tables covering `MAPPED_LIMIT`, every level with the user bit so that
//! ring 3 reaches all of it. The first 2 MiB use 4 KiB pages so the page at 0 can be
//! left out (null dereferences fault); the rest uses 2 MiB pages. Addresses with no
//! RAM behind them reach the VMM as MMIO exits.

use compart_abi::{MAPPED_LIMIT, PAGE_SIZE, PAGE_TABLES_GPA, PAGE_TABLE_PAGES};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const FLAGS: u64 = PRESENT | WRITABLE | USER;

/// The page-table pages, to be written at `PAGE_TABLES_GPA`: PML4, PDPT, 4 PDs, 1 PT.
pub fn page_tables() -> Vec<u8> {
    const GIB: u64 = 1 << 30;
    const PDS: u64 = MAPPED_LIMIT / GIB;
    let mut mem = vec![0u8; (PAGE_TABLE_PAGES * PAGE_SIZE) as usize];
    let page_gpa = |i: u64| PAGE_TABLES_GPA + i * PAGE_SIZE;
    let mut set = |page: u64, index: u64, value: u64| {
        let at = (page * PAGE_SIZE + index * 8) as usize;
        mem[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    let (pml4, pdpt, first_pd, pt) = (0, 1, 2, 2 + PDS);
    set(pml4, 0, page_gpa(pdpt) | FLAGS);
    for gib in 0..PDS {
        set(pdpt, gib, page_gpa(first_pd + gib) | FLAGS);
        for i in 0..512 {
            let addr = gib * GIB + i * (2 << 20);
            if addr == 0 {
                set(first_pd, 0, page_gpa(pt) | FLAGS);
            } else {
                set(first_pd + gib, i, addr | FLAGS | HUGE);
            }
        }
    }
    for i in 1..512 {
        set(pt, i, (i * PAGE_SIZE) | FLAGS);
    }
    mem
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables as the MMU would.
    fn translate(tables: &[u8], va: u64) -> Option<u64> {
        let entry = |gpa: u64, index: u64| {
            let at = (gpa - PAGE_TABLES_GPA + index * 8) as usize;
            u64::from_le_bytes(tables[at..at + 8].try_into().unwrap())
        };
        let frame = |e: u64| e & 0x000f_ffff_ffff_f000;
        let e4 = entry(PAGE_TABLES_GPA, (va >> 39) & 511);
        if e4 & PRESENT == 0 || e4 & USER == 0 {
            return None;
        }
        let e3 = entry(frame(e4), (va >> 30) & 511);
        if e3 & PRESENT == 0 {
            return None;
        }
        let e2 = entry(frame(e3), (va >> 21) & 511);
        if e2 & PRESENT == 0 {
            return None;
        }
        if e2 & HUGE != 0 {
            return Some((e2 & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff));
        }
        let e1 = entry(frame(e2), (va >> 12) & 511);
        (e1 & PRESENT != 0 && e1 & USER != 0).then(|| frame(e1) | (va & 0xfff))
    }

    #[test]
    fn identity_maps_everything_but_the_null_page() {
        let t = page_tables();
        assert_eq!(translate(&t, 0), None);
        assert_eq!(translate(&t, 0xfff), None);
        for va in [
            0x1000,
            0x2345,
            0x1f_ffff,
            0x20_0000,
            0x12_3456,
            0x4000_1234,
            0xfee0_00b0,
            MAPPED_LIMIT - 1,
        ] {
            assert_eq!(translate(&t, va), Some(va), "{va:#x}");
        }
    }
}

//! Loads a guest image (a static ELF64 executable linked at `IMAGE_GPA`) into guest
//! memory and checks its firmware header. The image is untrusted input: every offset
//! and size is checked against the file and against guest memory before use.

use compart_abi::le::{u16_at, u32_at, u64_at};
use compart_abi::{
    FirmwareHeader, Pod, ABI_VERSION, EXCEPTION_STUB_SIZE, IMAGE_GPA, MAX_IMAGE_SIZE, PAGE_SIZE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Why an image cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    /// The file is not a 64-bit little-endian x86-64 ELF executable.
    #[error("not a 64-bit x86-64 ELF executable ({0})")]
    NotElf(&'static str),
    /// A header or segment lies outside the file.
    #[error("truncated or malformed ELF: {0}")]
    Malformed(&'static str),
    /// A segment does not fit where guests may be loaded.
    #[error(
        "segment at {addr:#x} (+{size:#x} bytes) lies outside guest memory [{start:#x}, {end:#x})"
    )]
    OutOfRange {
        /// Segment start.
        addr: u64,
        /// Segment size in memory.
        size: u64,
        /// First loadable address.
        start: u64,
        /// End of guest memory.
        end: u64,
    },
    /// The image lacks a valid compart firmware header.
    #[error("no valid compart firmware header at {IMAGE_GPA:#x}: {0} (is it linked with firmware/link.ld?)")]
    BadHeader(&'static str),
}

/// What the VMM needs to know about a loaded image.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The checked firmware header.
    pub header: FirmwareHeader,
    /// First page-aligned address after the image.
    pub end: u64,
    /// Its loaded segments, with the access rights the page tables give them.
    pub segments: Vec<Segment>,
}

/// One loaded segment: guest-physical `[start, end)` and what the ELF allows on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First byte.
    pub start: u64,
    /// First byte after it.
    pub end: u64,
    /// PF_W: ring 3 may write it.
    pub writable: bool,
    /// PF_X: it may be executed.
    pub executable: bool,
}

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

/// Loads `elf` into `mem` (whose RAM ends at `mem_end`) and returns its header.
/// Segment bytes beyond the file size (`.bss`) are zeroed.
pub fn load(elf: &[u8], mem: &GuestMemoryMmap, mem_end: u64) -> Result<LoadedImage, LoadError> {
    if elf.get(0..4) != Some(b"\x7fELF".as_slice()) {
        return Err(LoadError::NotElf("bad magic"));
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(LoadError::NotElf("not ELF64 little-endian"));
    }
    if u16_at(elf, 16) != Some(2) {
        return Err(LoadError::NotElf("not an executable (ET_EXEC)"));
    }
    if u16_at(elf, 18) != Some(62) {
        return Err(LoadError::NotElf("not x86-64"));
    }
    let entry = u64_at(elf, 24).ok_or(LoadError::Malformed("header"))?;
    let phoff = u64_at(elf, 32).ok_or(LoadError::Malformed("header"))?;
    let phentsize = u16_at(elf, 54).ok_or(LoadError::Malformed("header"))?;
    let phnum = u16_at(elf, 56).ok_or(LoadError::Malformed("header"))?;
    if phentsize < 56 {
        return Err(LoadError::Malformed("program header entry too small"));
    }

    let mut end = IMAGE_GPA;
    let mut segments = Vec::new();
    // The page tables map the image in 4 KiB pages up to MAX_IMAGE_SIZE.
    let mem_end = mem_end.min(IMAGE_GPA + MAX_IMAGE_SIZE);
    for i in 0..u64::from(phnum) {
        let at = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|a| usize::try_from(a).ok())
            .ok_or(LoadError::Malformed("program header offset"))?;
        let ph = at
            .checked_add(56)
            .and_then(|e| elf.get(at..e))
            .ok_or(LoadError::Malformed("program header outside the file"))?;
        if u32_at(ph, 0) != Some(PT_LOAD) {
            continue;
        }
        let flags = u32_at(ph, 4).unwrap();
        let (offset, paddr) = (u64_at(ph, 8).unwrap(), u64_at(ph, 24).unwrap());
        let (filesz, memsz) = (u64_at(ph, 32).unwrap(), u64_at(ph, 40).unwrap());
        if filesz > memsz {
            return Err(LoadError::Malformed(
                "segment file size exceeds memory size",
            ));
        }
        let seg_end = paddr.checked_add(memsz);
        if paddr < IMAGE_GPA || seg_end.is_none_or(|e| e > mem_end) {
            return Err(LoadError::OutOfRange {
                addr: paddr,
                size: memsz,
                start: IMAGE_GPA,
                end: mem_end,
            });
        }
        let data = usize::try_from(offset)
            .ok()
            .and_then(|o| elf.get(o..o.checked_add(usize::try_from(filesz).ok()?)?))
            .ok_or(LoadError::Malformed("segment data outside the file"))?;
        // The ranges were checked against guest RAM above, so these cannot fail.
        mem.write_slice(data, GuestAddress(paddr))
            .map_err(|_| LoadError::Malformed("segment write"))?;
        let zeros = vec![0u8; (memsz - filesz) as usize];
        mem.write_slice(&zeros, GuestAddress(paddr + filesz))
            .map_err(|_| LoadError::Malformed("segment write"))?;
        end = end.max(paddr + memsz);
        segments.push(Segment {
            start: paddr,
            end: paddr + memsz,
            writable: flags & PF_W != 0,
            executable: flags & PF_X != 0,
        });
    }
    if segments.is_empty() {
        return Err(LoadError::Malformed("no loadable segment"));
    }
    let end = end.next_multiple_of(PAGE_SIZE);

    let header: FirmwareHeader = read_header(mem)?;
    let inside = |a: u64| (IMAGE_GPA..end).contains(&a);
    if header.magic != FirmwareHeader::MAGIC {
        return Err(LoadError::BadHeader("wrong magic"));
    }
    if header.abi_version != ABI_VERSION {
        return Err(LoadError::BadHeader("built against another ABI version"));
    }
    if header.size as usize != core::mem::size_of::<FirmwareHeader>() {
        return Err(LoadError::BadHeader("wrong header size"));
    }
    if header.entry != entry {
        return Err(LoadError::BadHeader("entry point differs from the ELF's"));
    }
    if ![header.entry, header.irq_entry, header.irq_entry_no_eoi]
        .into_iter()
        .all(inside)
        || !inside(header.exception_stubs + 32 * EXCEPTION_STUB_SIZE - 1)
    {
        return Err(LoadError::BadHeader(
            "an entry point lies outside the image",
        ));
    }
    Ok(LoadedImage {
        header,
        end,
        segments,
    })
}

fn read_header(mem: &GuestMemoryMmap) -> Result<FirmwareHeader, LoadError> {
    let mut raw = [0u8; core::mem::size_of::<FirmwareHeader>()];
    mem.read_slice(&mut raw, GuestAddress(IMAGE_GPA))
        .map_err(|_| LoadError::BadHeader("not loaded"))?;
    FirmwareHeader::read_from(&raw).ok_or(LoadError::BadHeader("not loaded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    fn image(name: &str) -> &'static [u8] {
        crate::images::BUILTIN_IMAGES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    }

    #[test]
    fn built_in_image_loads_with_a_valid_header() {
        let m = mem();
        let l = load(image("idle"), &m, 4 << 20).unwrap();
        assert!(l.end > IMAGE_GPA && l.end < 4 << 20);
        assert!(l.header.entry >= IMAGE_GPA);
    }

    #[test]
    fn segments_carry_the_elf_access_rights() {
        let l = load(image("selftest"), &mem(), 4 << 20).unwrap();
        let code = l.segments.iter().find(|s| s.executable).unwrap();
        assert!(!code.writable, "{code:?}");
        assert!((code.start..code.end).contains(&l.header.entry));
        let data = l.segments.iter().find(|s| s.writable).unwrap();
        assert!(!data.executable, "{data:?}");
        assert!(l
            .segments
            .iter()
            .all(|s| s.start >= IMAGE_GPA && s.end <= l.end));
    }

    #[test]
    fn non_elf_is_rejected() {
        assert_eq!(
            load(b"hello", &mem(), 4 << 20).unwrap_err(),
            LoadError::NotElf("bad magic")
        );
    }

    #[test]
    fn image_larger_than_memory_is_rejected() {
        let e = load(image("idle"), &mem(), IMAGE_GPA + 0x1000).unwrap_err();
        assert!(matches!(e, LoadError::OutOfRange { .. }), "{e}");
    }

    #[test]
    fn truncated_or_corrupted_images_never_panic() {
        let good = image("selftest");
        for cut in (0..good.len()).step_by(97) {
            let _ = load(&good[..cut], &mem(), 4 << 20);
        }
        let mut bad = good.to_vec();
        for i in (0..bad.len().min(4096)).step_by(3) {
            bad[i] ^= 0xa5;
            let _ = load(&bad, &mem(), 4 << 20);
        }
    }
}

//! Descriptor tables: one GDT and TSS per vCPU (each vCPU has its own ring-0 and
//! interrupt stacks), and the IDT all vCPUs share.

use compart_abi::{
    percpu, percpu_gpa, ports, selectors, FirmwareHeader, EXCEPTION_STUB_SIZE, GP_VECTOR,
    HALT_VECTOR,
};

/// A flat 64-bit code or data segment descriptor.
const fn segment(dpl: u64, code: bool) -> u64 {
    let access = if code { 0x9a } else { 0x92 } | (dpl << 5);
    // Limit 0xfffff with 4 KiB granularity; L for code, D/B for data.
    let flags: u64 = if code { 0xa } else { 0xc };
    0xffff | (access << 40) | (0xf << 48) | (flags << 52)
}

/// The GDT of one vCPU, in selector order (see `compart_abi::selectors`).
pub fn gdt(vcpu: u32) -> [u64; selectors::GDT_ENTRIES] {
    let tss_base = percpu_gpa(vcpu) + percpu::TSS;
    let tss_limit = percpu::TSS_SIZE + percpu::IO_BITMAP_SIZE - 1;
    // 64-bit available TSS (type 9), present, DPL 0.
    let tss_low = (tss_limit & 0xffff)
        | ((tss_base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((tss_limit >> 16) & 0xf) << 48)
        | (((tss_base >> 24) & 0xff) << 56);
    let tss_high = tss_base >> 32;
    [
        0,
        segment(0, true),
        segment(0, false),
        segment(3, false),
        segment(3, true),
        tss_low,
        tss_high,
    ]
}

/// The hardware TSS of one vCPU followed by its I/O permission bitmap, which opens
/// exactly the 32-bit registers at `open_ports` (each `ports::WIDTH` ports) to ring 3.
pub fn tss_and_io_bitmap(vcpu: u32, open_ports: &[u16]) -> Vec<u8> {
    let base = percpu_gpa(vcpu);
    let mut t = vec![0u8; (percpu::TSS_SIZE + percpu::IO_BITMAP_SIZE) as usize];
    // RSP0 at offset 4, IST1 at offset 36, I/O map base at offset 102.
    t[4..12].copy_from_slice(&(base + percpu::RING0_STACK_TOP).to_le_bytes());
    t[36..44].copy_from_slice(&(base + percpu::IST1_STACK_TOP).to_le_bytes());
    t[102..104].copy_from_slice(&(percpu::TSS_SIZE as u16).to_le_bytes());
    let bitmap = &mut t[percpu::TSS_SIZE as usize..];
    bitmap.fill(0xff);
    for &reg in open_ports {
        for p in reg..reg.saturating_add(ports::WIDTH) {
            bitmap[usize::from(p / 8)] &= !(1 << (p % 8));
        }
    }
    t
}

/// One 16-byte interrupt gate.
fn gate(handler: u64, dpl: u8, ist: u8) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&selectors::KERNEL_CODE.to_le_bytes());
    g[4] = ist & 7;
    // Present, DPL, 64-bit interrupt gate (type 0xE): IF is cleared on entry.
    g[5] = 0x80 | ((dpl & 3) << 5) | 0xe;
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// Offset of interrupt gate `vector` in the IDT.
pub fn gate_offset(vector: u8) -> u64 {
    16 * u64::from(vector)
}

/// An interrupt gate (32–255) to `handler`, as [`idt`] builds it.
pub fn interrupt_gate(handler: u64) -> [u8; 16] {
    gate(handler, 0, 0)
}

/// The IDT: the firmware's exception stubs for vectors 0–31 and its interrupt entry
/// for 32–255. Only the halt gate may be called from ring 3 (`int3`). The ring-0 stub
/// (#GP) must be able to nest, and an interrupt arrives only inside a halt and
/// returns through the halt's frame on the same stack, so those gates have no IST;
/// the other exceptions use IST1 (see "Entering ring 0" in `compart_abi`).
pub fn idt(header: &FirmwareHeader) -> Vec<u8> {
    let mut idt = Vec::with_capacity(256 * 16);
    for vector in 0..=255u8 {
        let stub = header.exception_stubs + u64::from(vector) * EXCEPTION_STUB_SIZE;
        let g = match vector {
            HALT_VECTOR => gate(stub, 3, 0),
            GP_VECTOR => gate(stub, 0, 0),
            0..=31 => gate(stub, 0, 1),
            _ => interrupt_gate(header.irq_entry),
        };
        idt.extend_from_slice(&g);
    }
    idt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_code_segment_is_64_bit_ring_3() {
        let d = gdt(0)[usize::from(selectors::USER_CODE >> 3)];
        assert_eq!(d, 0x00af_fa00_0000_ffff);
        let k = gdt(0)[usize::from(selectors::KERNEL_CODE >> 3)];
        assert_eq!(k, 0x00af_9a00_0000_ffff);
        let ud = gdt(0)[usize::from(selectors::USER_DATA >> 3)];
        assert_eq!(ud, 0x00cf_f200_0000_ffff);
    }

    #[test]
    fn tss_descriptor_points_at_the_vcpus_tss() {
        let g = gdt(2);
        let base = percpu_gpa(2) + percpu::TSS;
        let low = g[5];
        let decoded = ((low >> 16) & 0xff_ffff) | (((low >> 56) & 0xff) << 24) | (g[6] << 32);
        assert_eq!(decoded, base);
        assert_eq!((low >> 40) & 0xff, 0x89);
    }

    #[test]
    fn io_bitmap_opens_only_the_given_ports() {
        let t = tss_and_io_bitmap(0, &[0x500, 0x508]);
        let bm = &t[percpu::TSS_SIZE as usize..];
        let open = |p: u16| bm[usize::from(p / 8)] & (1 << (p % 8)) == 0;
        assert!((0x500..0x504).chain(0x508..0x50c).all(open));
        assert!(!open(0x504) && !open(0x50c) && !open(0x3f8) && !open(0xffff));
        assert_eq!(*bm.last().unwrap(), 0xff, "terminating byte");
    }

    #[test]
    fn only_the_halt_gate_is_callable_from_ring_3() {
        let h = FirmwareHeader {
            magic: FirmwareHeader::MAGIC,
            abi_version: 1,
            size: 0,
            entry: 0x20_0040,
            exception_stubs: 0x20_0100,
            irq_entry: 0x20_0500,
            irq_entry_no_eoi: 0x20_0510,
        };
        let idt = idt(&h);
        let g = |v: usize| &idt[v * 16..v * 16 + 16];
        assert_eq!(g(3)[5], 0xee, "present, DPL 3, interrupt gate");
        assert!(
            (0..256).filter(|&v| v != 3).all(|v| g(v)[5] == 0x8e),
            "present, DPL 0, interrupt gate"
        );
        assert_eq!(g(14)[4], 1, "exceptions run on IST1");
        assert_eq!(g(13)[4], 0, "the #GP stub nests on its own stack");
        assert_eq!(g(3)[4], 0, "the halt stays on the ring-0 stack");
        assert!(
            (32..256).all(|v| g(v)[4] == 0),
            "interrupts land below the halt's frame"
        );
        let off = |b: &[u8]| {
            u64::from(u16::from_le_bytes([b[0], b[1]]))
                | u64::from(u16::from_le_bytes([b[6], b[7]])) << 16
                | u64::from(u32::from_le_bytes([b[8], b[9], b[10], b[11]])) << 32
        };
        assert_eq!(off(g(14)), 0x20_0100 + 14 * EXCEPTION_STUB_SIZE);
        assert_eq!(off(g(3)), 0x20_0100 + 3 * EXCEPTION_STUB_SIZE);
        assert_eq!(off(g(0x40)), 0x20_0500);
    }
}

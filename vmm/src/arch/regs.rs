//! The initial register state of a vCPU: long mode with paging, ring 3, interrupts
//! off (they are enabled only inside the ring-0 stub's halt), SSE usable.

use compart_abi::{percpu, percpu_gpa, selectors, BOOT_INFO_GPA, IDT_GPA, PAGE_TABLES_GPA};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// No-execute enable: the page tables' XD bit keeps data, stacks and heap from running.
const EFER_NXE: u64 = 1 << 11;

fn flat(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        // Execute/read accessed, or read/write accessed.
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl: (selector & 3) as u8,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// Special registers of vCPU `vcpu`, starting from what KVM reported for it.
pub fn sregs(mut s: kvm_sregs, vcpu: u32) -> kvm_sregs {
    let area = percpu_gpa(vcpu);
    let data = flat(selectors::USER_DATA, false);
    s.cs = flat(selectors::USER_CODE, true);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = kvm_segment {
        base: area + percpu::TSS,
        limit: (percpu::TSS_SIZE + percpu::IO_BITMAP_SIZE - 1) as u32,
        selector: selectors::TSS,
        type_: 11, // 64-bit TSS, busy
        present: 1,
        ..Default::default()
    };
    s.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
    s.gdt.base = area + percpu::GDT;
    s.gdt.limit = (selectors::GDT_ENTRIES * 8 - 1) as u16;
    s.idt.base = IDT_GPA;
    s.idt.limit = 256 * 16 - 1;
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = PAGE_TABLES_GPA;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s.efer = EFER_LME | EFER_LMA | EFER_NXE;
    s
}

/// General registers: entry point, stack, and the entry arguments (boot info, vCPU).
pub fn regs(entry: u64, stack_top: u64, vcpu: u32) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack_top,
        rdi: BOOT_INFO_GPA,
        rsi: u64::from(vcpu),
        // Reserved bit 1 only: IF = 0 and IOPL = 0 in ring 3.
        rflags: 0x2,
        ..Default::default()
    }
}

/// x87 and SSE control words at their reset values.
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

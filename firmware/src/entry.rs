//! The image's first bytes and its only hand-written code: the firmware header, the
//! ring-3 entry point, and ring 0: the exception stubs (the #BP stub is the halt gate;
//! the #GP handler performs `hlt`, `rdmsr` and `wrmsr` for ring 3) and the interrupt
//! entries, which return to ring 3 straight through the halt's frame.
//!
//! Ring-0 code here uses general-purpose registers only: no SSE, no x87, no Rust
//! (the compiler may emit SSE), because guest ring 0 may be emulated.

use compart_abi::{
    lapic, msr, ports, FirmwareHeader, ABI_VERSION, EXCEPTION_STUB_SIZE, GP_VECTOR, HALT_VECTOR,
    IMAGE_GPA,
};

core::arch::global_asm!(
    // --- the firmware header, at IMAGE_GPA (see the linker script) ---
    ".pushsection .compart_header, \"a\"",
    ".balign 8",
    ".quad {magic}",
    ".long {version}",
    ".long {header_size}",
    ".quad _start",
    ".quad compart_exception_stubs",
    ".quad compart_irq_entry",
    ".quad compart_irq_entry_no_eoi",
    ".popsection",
    // The link address the ABI expects; firmware/link.ld asserts that it links there.
    ".globl compart_abi_image_gpa",
    ".set compart_abi_image_gpa, {image_gpa}",

    // --- ring-3 entry: rdi = boot info, rsi = vCPU index, rsp = top of stack ---
    ".pushsection .text.compart_entry, \"ax\"",
    ".global _start",
    "_start:",
    "    and rsp, -16",
    "    xor ebp, ebp",
    "    call compart_rust_start",
    "2:  jmp 2b",
    ".popsection",

    // --- ring 0 from here on ---
    ".pushsection .text.compart_ring0, \"ax\"",

    // Exception stubs, {stub_size} bytes apart: push a zero error code where the CPU
    // pushes none, then the vector. The halt gate's stub is the halt itself: `int3`
    // is a trap, so the frame's RIP is already past it, and the interrupt that ends
    // the `hlt` returns through this frame (see compart_irq_entry). The `sti` shadow
    // covers `hlt`, so no interrupt is taken in between. The `iretq` runs only if
    // `hlt` ever ends without an interrupt.
    ".balign {stub_size}",
    ".global compart_exception_stubs",
    "compart_exception_stubs:",
    ".irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".balign {stub_size}",
    ".if \\vec == {halt}",
    "    sti",
    "    hlt",
    "    iretq",
    ".elseif (\\vec == 8) || (\\vec == 10) || (\\vec == 11) || (\\vec == 12) || (\\vec == 13) || (\\vec == 14) || (\\vec == 17) || (\\vec == 21) || (\\vec == 29) || (\\vec == 30)",
    "    push \\vec",
    "    jmp compart_exception_common",
    ".else",
    "    push 0",
    "    push \\vec",
    "    jmp compart_exception_common",
    ".endif",
    ".endr",

    // Stack: [rsp] vector, +8 error code, +16 RIP, +24 CS, +32 RFLAGS, +40 RSP, +48 SS.
    "compart_exception_common:",
    "    cmp qword ptr [rsp], {gp}",
    "    jne 90f",
    "    push rax",
    // (one push: RIP is at +24, CS at +32)
    // A nested #GP on the stub's own rdmsr/wrmsr: the VMM refused the access.
    "    mov rax, [rsp + 24]",
    "    cmp rax, offset compart_rdmsr_insn",
    "    je 30f",
    "    cmp rax, offset compart_wrmsr_insn",
    "    je 30f",
    // Only ring 3's own privileged instructions are performed for it.
    "    test qword ptr [rsp + 32], 3",
    "    jz 89f",
    "    cmp byte ptr [rax], 0xf4",
    "    je 10f",
    "    cmp word ptr [rax], 0x320f",
    "    je 11f",
    "    cmp word ptr [rax], 0x300f",
    "    je 12f",
    "89: pop rax",
    "    jmp 90f",
    // hlt: step past it and drop vector and error code first, so that the hardware
    // frame is on top when the interrupt returns through it, as for the halt gate.
    "10: pop rax",
    "    add qword ptr [rsp + 16], 1",
    "    add rsp, 16",
    "    sti",
    "    hlt",
    "    iretq",
    // rdmsr / wrmsr with ring 3's own ecx, edx:eax, on the contract's MSRs only
    // (compart_abi::msr::INTERCEPTED, and TSC_DEADLINE for the timer of a guest whose
    // APIC page ring 3 cannot reach): any other MSR (EFER, LSTAR, …) would hand ring 0
    // to ring 3, so it is refused like an access the VMM refuses.
    "11: pop rax",
    "    cmp ecx, {msr_aperf}",
    "    je 13f",
    "    cmp ecx, {msr_mperf}",
    "    je 13f",
    "    cmp ecx, {msr_perf_status}",
    "    je 13f",
    "    cmp ecx, {msr_perf_ctl}",
    "    je 13f",
    "    cmp ecx, {msr_tsc_deadline}",
    "    jne compart_msr_refused",
    "13:",
    ".global compart_rdmsr_insn",
    "compart_rdmsr_insn:",
    "    rdmsr",
    "    jmp 20f",
    // (Most frequent first: every emulated compare costs about a microsecond here.)
    "12: pop rax",
    "    cmp ecx, {msr_perf_ctl}",
    "    je 14f",
    "    cmp ecx, {msr_tsc_deadline}",
    "    je 14f",
    "    cmp ecx, {msr_mperf}",
    "    je 14f",
    "    cmp ecx, {msr_aperf}",
    "    je 14f",
    "    cmp ecx, {msr_perf_status}",
    "    jne compart_msr_refused",
    "14:",
    ".global compart_wrmsr_insn",
    "compart_wrmsr_insn:",
    "    wrmsr",
    // Success: skip the 2-byte instruction, CF clear.
    "20: add qword ptr [rsp + 16], 2",
    "    and qword ptr [rsp + 32], -2",
    "    add rsp, 16",
    "    iretq",
    // Refused: the nested #GP returns to compart_msr_refused in the outer handler, which skips the
    // instruction with CF set.
    "30: mov qword ptr [rsp + 24], offset compart_msr_refused",
    "    pop rax",
    "    add rsp, 16",
    "    iretq",
    "compart_msr_refused:",
    "    add qword ptr [rsp + 16], 2",
    "    or qword ptr [rsp + 32], 1",
    "    add rsp, 16",
    "    iretq",
    // Anything else is fatal: report it and stop this vCPU.
    "90: mov rax, [rsp]",
    "    mov rdi, [rsp + 8]",
    "    mov rsi, [rsp + 16]",
    "    mov rcx, cr2",
    "    mov dx, {fault_port}",
    "    out dx, al",
    "91: cli",
    "    hlt",
    "    jmp 91b",

    // External interrupts (doorbells, kicks, the timer) only end a halt. Interrupts
    // are enabled only in the halt's `sti; hlt`, so the interrupted context is always
    // a halt whose frame is at the interrupted RSP ([rsp + 24]): acknowledge, switch
    // to that frame, and return to ring 3 through it in one `iretq`. The frame
    // restores ring 3's RFLAGS, so interrupts are off again.
    ".global compart_irq_entry",
    "compart_irq_entry:",
    "    push rax",
    "    mov eax, {eoi}",
    "    mov dword ptr [rax], 0",
    "    pop rax",
    // The same without the EOI, where the host completes interrupts on delivery
    // (`eoi.rs` probes that at boot and points the gates here).
    ".global compart_irq_entry_no_eoi",
    "compart_irq_entry_no_eoi:",
    "    mov rsp, [rsp + 24]",
    "    iretq",
    ".popsection",

    magic = const FirmwareHeader::MAGIC,
    version = const ABI_VERSION,
    header_size = const core::mem::size_of::<FirmwareHeader>(),
    stub_size = const EXCEPTION_STUB_SIZE,
    gp = const GP_VECTOR,
    halt = const HALT_VECTOR,
    eoi = const lapic::BASE_GPA + lapic::EOI,
    fault_port = const ports::FAULT,
    image_gpa = const IMAGE_GPA,
    msr_mperf = const msr::MPERF,
    msr_aperf = const msr::APERF,
    msr_perf_status = const msr::PERF_STATUS,
    msr_perf_ctl = const msr::PERF_CTL,
    msr_tsc_deadline = const msr::TSC_DEADLINE,
);

// The stub's allow-list above names each MSR of the contract.
const _: () = assert!(
    msr::INTERCEPTED[0].0 == msr::MPERF
        && msr::INTERCEPTED[0].1 == 2
        && msr::APERF == msr::MPERF + 1
        && msr::INTERCEPTED[1].0 == msr::PERF_STATUS
        && msr::INTERCEPTED[1].1 == 2
        && msr::PERF_CTL == msr::PERF_STATUS + 1
        && msr::INTERCEPTED.len() == 2
);

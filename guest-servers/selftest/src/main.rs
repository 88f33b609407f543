//! A guest that exercises the runtime and the VMM's failure handling. Its command line
//! says what to do:
//!
//! - `exit=N`: print a greeting and exit with status N (default 0);
//! - `lines=N`: print N numbered lines first;
//! - `panic`: panic (the VMM reports message and location);
//! - `page-fault`: read address 0 (not present: an exception the VMM reports);
//! - `write-page-tables`, `write-idt`: try to overwrite the page tables or the IDT
//!   (supervisor-only: the VMM reports the page fault);
//! - `exec-stack`: try to run code from the stack (no-execute: a page fault);
//! - `foreign-msr`: try to read EFER and write LSTAR through the ring-0 stub (refused:
//!   only the contract's MSRs are accessed for ring 3) and report the outcome;
//! - `heap`: allocate, use and free a vector, then exit 0;
//! - `halt`: sleep in `hlt` until stopped;
//! - `spin=MS`: compute for MS milliseconds without halting or waiting (a busy guest,
//!   which follows a new `_PPC` only once it halts or waits);
//! - `freq=A,B,…`: for each P-state index, set it, run a fixed compute loop and print
//!   its wall time (TSC) and the APERF/MPERF ratio;
//! - `switch=N`: time N P-state switches (P0 ↔ the slowest allowed state);
//! - `pstate-control=V`: write the raw control value V (hex) and report the outcome;
//! - `read-lapic`: read the local APIC's SVR from ring 3 (a guest of several vCPUs
//!   must fault: its APIC page is supervisor-only);
//! - `flood=MS`: write an invalid PERF_CTL value as fast as it can for MS milliseconds
//!   (a hostile guest: the VMM must not slow the others or its log).
//! - `wake=N`: N times each through the halt gate (`int3`) and through `hlt` (#GP),
//!   and through the interrupt entry with the EOI and (where the host allows it)
//!   without: send itself an interrupt, halt, and check that the wake-up came back to
//!   ring 3 right after the halt, with registers intact; print the time per
//!   halt-and-wake;
//! - `eoi`: print what the boot probe found (whether interrupts enter without EOI);
//! - `sleep=A,B,…`: sleep A, B, … microseconds on the APIC timer (no doorbell) and
//!   print the time slept and the error of each;
//! - `timer-modes`: compare the two ways to arm a deadline (APIC one-shot count by
//!   MMIO from ring 3, TSC-deadline MSR through the ring-0 stub): cost to arm, and
//!   whether each ends a halt;
//! - `tick=US`: open every channel and wait on them with a deadline every US
//!   microseconds, forever (an idle server with a periodic timer; it serves nothing,
//!   so its peers must stay quiet);
//! - `nic`: print each NIC of the boot info and what its virtio-mmio registers say
//!   (identification, offered features, MAC and MTU from the configuration space),
//!   and the IPv4 configuration; `nic-misuse`: also make accesses the device refuses
//!   (a 2-byte register read, a write to a read-only register, a config write);
//! - `nic-rx=MS`, `nic-hostile=MS`: drive NIC 0 with a bare driver (`nicdrv.rs`):
//!   receive for MS milliseconds, or attack the device with malformed rings.
#![no_std]
#![no_main]

extern crate alloc;

mod nicdrv;

use core::time::Duration;

use compart_firmware::channel::{self, Channel};
use compart_firmware::cmdline::{self, Hex};
use compart_firmware::pstate;
use compart_firmware::time::{self, Instant};
use compart_firmware::{abi, lapic, println, ring0, BootInfo};

compart_firmware::entry!(main);

fn main(info: &'static BootInfo) -> i32 {
    let mut status = 0;
    // The command line is a script: each word in turn. A value that does not parse
    // falls back to the command's default, as it always has.
    for word in cmdline::args().words() {
        let value = word.value.unwrap_or("");
        match word.key {
            "exit" => status = word.parse().unwrap_or(-1),
            "lines" => {
                let n: u32 = word.parse().unwrap_or(0);
                for i in 0..n {
                    println!("line {i}");
                }
            }
            "panic" => panic!("deliberate panic (cmdline `{}`)", info.cmdline()),
            "page-fault" => {
                // SAFETY: deliberately reads the unmapped page at 0 to fault.
                let v = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
                println!("read {v} from address 0?!");
            }
            "write-page-tables" => write_ring0_page("page tables", abi::PAGE_TABLES_GPA),
            "write-idt" => write_ring0_page("IDT", abi::IDT_GPA),
            "exec-stack" => exec_stack(),
            "foreign-msr" => foreign_msr(),
            "read-lapic" => println!("read-lapic: SVR {:#x}", lapic::read(abi::lapic::SVR)),
            "heap" => {
                let v: alloc::vec::Vec<u64> = (0..10_000u64).collect();
                let sum: u64 = v.iter().sum();
                println!("heap ok: sum {sum}");
            }
            "freq" => freq(value),
            "switch" => switch(word.parse().unwrap_or(100)),
            "flood" => flood(word.parse().unwrap_or(1000)),
            "nic" => nics(info, false),
            "nic-misuse" => nics(info, true),
            "nic-rx" => nicdrv::rx(info, word.parse().unwrap_or(1000)),
            "nic-hostile" => {
                if !nicdrv::hostile(info, word.parse().unwrap_or(1000)) {
                    status = 1;
                }
            }
            "pstate-control" => {
                let Hex(v) = word.parse().unwrap_or(Hex(0));
                match pstate::write_control(v) {
                    Ok(()) => println!(
                        "pstate control {v:#x} accepted, now P{:?}",
                        pstate::current()
                    ),
                    Err(e) => println!(
                        "pstate control {v:#x} refused: {e:?}, still P{:?}",
                        pstate::current()
                    ),
                }
            }
            "wake" => {
                if !wake(value.parse().unwrap_or(1000)) {
                    status = 1;
                }
            }
            "eoi" => println!(
                "eoi: host completes interrupts on delivery: {}",
                compart_firmware::eoi::host_completes_interrupts()
            ),
            "sleep" => sleep(value),
            "timer-modes" => timer_modes(),
            "tick" => tick(value.parse().unwrap_or(1000)),
            "halt" => loop {
                ring0::halt();
            },
            "spin" => {
                let ms = value.parse().unwrap_or(1000);
                println!("spin: {ms} ms without halting");
                let end = Instant::now() + Duration::from_millis(ms);
                while Instant::now() < end {
                    core::hint::spin_loop();
                }
                println!("spin: done");
            }
            _ => match word.value {
                Some(v) => println!("unknown command `{}={v}`", word.key),
                None => println!("unknown command `{}`", word.key),
            },
        }
    }
    println!(
        "hello from {} ({}), exiting with {status}",
        info.name(),
        info.role()
    );
    status
}

/// Tries to zero the first word of a structure ring 0 runs on; the page tables make
/// the store fault, so the line after it must never appear.
fn write_ring0_page(what: &str, gpa: u64) {
    // SAFETY: deliberately attacks this guest's own ring 0; the store must fault.
    unsafe { core::ptr::write_volatile(gpa as *mut u64, 0) };
    println!("overwrote the {what} at {gpa:#x}?!");
}

/// Tries to run a `ret` written onto the stack; the stack is no-execute, so the call
/// faults and the line after it must never appear.
fn exec_stack() {
    let code = core::hint::black_box([0xc3u8; 16]);
    // SAFETY: deliberately jumps to data; the fetch must fault (no-execute page).
    unsafe { core::arch::asm!("call {0}", in(reg) code.as_ptr(), clobber_abi("C")) };
    println!("executed code on the stack at {:p}?!", code.as_ptr());
}

/// Asks the ring-0 stub for MSRs outside the contract, which would give ring 0 away
/// (EFER.SCE with LSTAR pointing at ring-3 code makes `syscall` run it in ring 0).
fn foreign_msr() {
    const IA32_EFER: u32 = 0xc000_0080;
    const IA32_LSTAR: u32 = 0xc000_0082;
    let outcome = |allowed: bool| if allowed { "allowed" } else { "refused" };
    let efer = ring0::read_msr(IA32_EFER).is_some();
    let lstar = ring0::write_msr(IA32_LSTAR, abi::IMAGE_GPA);
    println!(
        "foreign msr: EFER read {}, LSTAR write {}",
        outcome(efer),
        outcome(lstar)
    );
}

/// A fixed amount of integer work the compiler cannot elide.
fn work(iterations: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..iterations {
        x = core::hint::black_box(x.rotate_left(7) ^ i).wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    x
}

fn freq(list: &str) {
    // Calibrate at the current (start-up) speed: about 150 ms of work.
    let t = Instant::now();
    work(10_000_000);
    let per_million = (t.elapsed().as_nanos() / 10).max(1);
    let iterations = (1_000_000 * 150_000_000 / per_million) as u64;
    for idx in list.split(',').filter_map(|s| s.parse::<usize>().ok()) {
        if let Err(e) = pstate::set(idx) {
            println!("freq P{idx}: cannot set: {e:?}");
            continue;
        }
        let before = pstate::sample();
        let t = Instant::now();
        work(iterations);
        let wall = t.elapsed();
        let after = pstate::sample();
        let ratio = match (before, after) {
            (Some(b), Some(a)) => a.ratio_since(&b),
            _ => 0.0,
        };
        println!(
            "freq P{idx} {} MHz: status P{:?} loop {} us aperf/mperf {} permille",
            pstate::states().get(idx).map_or(0, |s| s.frequency_mhz),
            pstate::current(),
            wall.as_micros(),
            (ratio * 1000.0) as u64
        );
    }
}

/// Times `n` switches between P0 and the slowest state: from the guest's write to
/// the write returning with the new state in effect (the VMM applies it before the
/// vCPU resumes; under soft scaling the vCPU may then sleep out its period, which is
/// the new speed taking effect and is included).
fn switch(n: u32) {
    let slowest = pstate::states().len().saturating_sub(1);
    let mut times = alloc::vec::Vec::with_capacity(n as usize);
    for i in 0..n {
        let target = if i % 2 == 0 { slowest } else { 0 };
        let t = Instant::now();
        if pstate::set(target).is_err() {
            println!("switch: P{target} refused");
            return;
        }
        times.push(t.elapsed());
    }
    times.sort_unstable();
    let at = |q: usize| times[(times.len() - 1) * q / 100].as_nanos();
    println!(
        "switch {n}: p50 {} ns p90 {} ns max {} ns",
        at(50),
        at(90),
        at(100)
    );
}

/// Writes a PERF_CTL value no `_PSS` lists, in a loop, for `ms` milliseconds; every
/// write should be refused.
fn flood(ms: u64) {
    let end = Instant::now() + Duration::from_millis(ms);
    let (mut refused, mut accepted) = (0u64, 0u64);
    while Instant::now() < end {
        match pstate::write_control(0xdead) {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    println!("flood: {refused} writes refused, {accepted} accepted in {ms} ms");
}

/// How a halt enters ring 0.
#[derive(Debug, Clone, Copy)]
enum HaltRoute {
    /// The halt gate (what `ring0::halt` uses).
    Int3,
    /// A privileged `hlt`, through the #GP stub.
    Hlt,
}

/// RFLAGS as ring 3 reads it. (On a host that runs ring 3 natively, as this one
/// does, IF reads 1 whatever the guest's virtual IF is.)
fn rflags() -> u64 {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack; changes nothing else.
    unsafe { core::arch::asm!("pushfq", "pop {f}", f = out(reg) flags) };
    flags
}

/// RFLAGS bits the compiler's code does not change between two reads: TF, IF, DF.
const CONTROL_FLAGS: u64 = 0x700;

/// Halts once through `route` with interrupt `vector` already pending, and checks
/// where the wake-up returned: to ring 3 (CS.RPL 3), with IF, TF, DF and `rax`/`rdx`
/// as they were. Returns the fault found.
fn halt_and_check(route: HaltRoute, vector: u8, marker: u64) -> Option<&'static str> {
    lapic::send_self(vector);
    let before = rflags();
    let (a, b, cs, flags): (u64, u64, u64, u64);
    // SAFETY: both halt routes return to the next instruction with every register
    // but the outputs declared here unchanged (that is what is being checked);
    // `pushfq`/`pop` use the stack, so the block is not `nostack`.
    unsafe {
        match route {
            HaltRoute::Int3 => core::arch::asm!(
                "int3", "mov {cs}, cs", "pushfq", "pop {fl}",
                inout("rax") marker => a, inout("rdx") !marker => b,
                cs = out(reg) cs, fl = out(reg) flags),
            HaltRoute::Hlt => core::arch::asm!(
                "hlt", "mov {cs}, cs", "pushfq", "pop {fl}",
                inout("rax") marker => a, inout("rdx") !marker => b,
                cs = out(reg) cs, fl = out(reg) flags),
        }
    }
    if cs & 3 != 3 {
        Some("not in ring 3")
    } else if (flags ^ before) & CONTROL_FLAGS != 0 {
        Some("IF, TF or DF changed")
    } else if a != marker || b != !marker {
        Some("registers changed")
    } else {
        None
    }
}

/// `wake=N`; false when a halt returned wrongly.
fn wake(n: u32) -> bool {
    /// A vector nothing else uses: only this test sends it.
    const VECTOR: u8 = 0x30;
    // Interrupts are taken only inside a halt (its entry returns through the halt's
    // frame, so one taken in ring 3 would be fatal): a pending one must wait.
    lapic::send_self(VECTOR);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1) {}
    if !lapic::pending(VECTOR) {
        println!("wake: an interrupt was taken in ring 3");
        return false;
    }
    ring0::halt();
    println!("wake: an interrupt stays pending in ring 3 until the halt");
    // Both interrupt entries, whichever the boot probe chose: the one with the EOI
    // (what hardware-virtualised KVM uses) and, where the host allows it, the one
    // without.
    let completes = compart_firmware::eoi::host_completes_interrupts();
    for with_eoi in [true, false].into_iter().filter(|&e| e || completes) {
        compart_firmware::eoi::use_entry(VECTOR, with_eoi);
        let entry = if with_eoi { "with EOI" } else { "without EOI" };
        for route in [HaltRoute::Int3, HaltRoute::Hlt] {
            let t = Instant::now();
            for i in 0..n {
                let marker = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                if let Some(fault) = halt_and_check(route, VECTOR, marker) {
                    println!("wake {route:?} {entry}: halt {i} returned wrongly: {fault}");
                    return false;
                }
            }
            let ns = t.elapsed().as_nanos() / u128::from(n.max(1));
            println!("wake {route:?} {entry}: {n} halts returned to ring 3 right after the halt, {ns} ns per halt-and-wake");
        }
    }
    true
}

fn sleep(list: &str) {
    for us in list.split(',').filter_map(|s| s.parse::<u64>().ok()) {
        let asked = Duration::from_micros(us);
        let t = Instant::now();
        time::sleep(asked);
        let slept = t.elapsed();
        let error = slept.as_nanos() as i128 - asked.as_nanos() as i128;
        println!(
            "sleep {us} us: slept {} ns, error {error:+} ns",
            slept.as_nanos()
        );
    }
}

/// Mean cost of `f` over `n` calls, in nanoseconds.
fn cost(n: u32, mut f: impl FnMut()) -> u128 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() / u128::from(n)
}

/// Halts once and reports how long after `deadline` the halt ended (negative: before).
fn woke_after(deadline: Instant) -> i128 {
    ring0::halt();
    let now = Instant::now();
    if now >= deadline {
        now.duration_since(deadline).as_nanos() as i128
    } else {
        -(deadline.duration_since(now).as_nanos() as i128)
    }
}

fn timer_modes() {
    use abi::lapic as r;
    const TSC_DEADLINE: u32 = 0x6e0;
    let lvt = u32::from(abi::TIMER_VECTOR);
    // A sleep first, so that the firmware has measured the timer and set it up.
    time::sleep(Duration::from_micros(100));
    let far = u32::MAX;
    let arm = cost(1000, || lapic::write(r::TIMER_INITIAL_COUNT, far));
    lapic::write(r::TIMER_INITIAL_COUNT, 0);
    let late = {
        let deadline = Instant::now() + Duration::from_micros(200);
        time::halt_until(deadline);
        let now = Instant::now();
        now.duration_since(deadline).as_nanos()
    };
    println!(
        "timer one-shot (MMIO store from ring 3): arm {arm} ns, a 200 us halt ended {late} ns late"
    );
    // TSC-deadline mode: LVT mode 0b10; the deadline is a wrmsr through the stub.
    lapic::write(r::LVT_TIMER, lvt | 2 << 17);
    let mode = lapic::read(r::LVT_TIMER) >> 17 & 3;
    let accepted = ring0::write_msr(TSC_DEADLINE, 0);
    let arm = cost(1000, || {
        ring0::write_msr(TSC_DEADLINE, u64::MAX);
    });
    let deadline = Instant::now() + Duration::from_micros(200);
    let woke = if mode == 2 && accepted {
        ring0::write_msr(TSC_DEADLINE, deadline.tsc());
        woke_after(deadline)
    } else {
        0
    };
    ring0::write_msr(TSC_DEADLINE, 0);
    lapic::write(r::LVT_TIMER, lvt);
    println!(
        "timer TSC-deadline (wrmsr 0x6e0 through the stub): LVT mode {mode}, MSR accepted {accepted}, arm {arm} ns, a 200 us halt ended {woke} ns after the deadline"
    );
}

fn tick(period_us: u64) {
    let mut chans: alloc::vec::Vec<Channel> = (0..channel::count())
        .filter_map(|i| channel::open(i).ok())
        .collect();
    println!(
        "tick: waiting on {} channel(s) with a deadline every {period_us} us",
        chans.len()
    );
    let period = Duration::from_micros(period_us.max(1));
    let mut next = Instant::now() + period;
    loop {
        match channel::wait_for_any(&mut chans, Some(next)) {
            Ok(channel::Wake::Deadline) => next = next + period,
            Ok(channel::Wake::Work) => {}
            Err(e) => {
                println!("tick: a channel broke: {e:?}");
                chans.clear();
            }
        }
    }
}

/// A register of a NIC's virtio-mmio window.
fn reg(base: u64, offset: u64) -> *mut u32 {
    (base + offset) as *mut u32
}

fn nics(info: &BootInfo, misuse: bool) {
    use abi::virtio::*;
    println!("nics: {}", info.nics().len());
    for (i, n) in info.nics().iter().enumerate() {
        let base = n.mmio_gpa;
        // SAFETY: the boot info names a register window the VMM serves (every
        // access is an MMIO exit); these are 32-bit reads and writes of registers
        // inside it.
        let (magic, version, id, vendor, lo, hi) = unsafe {
            let r = |o| core::ptr::read_volatile(reg(base, o));
            let magic = r(MMIO_MAGIC_VALUE);
            let version = r(MMIO_VERSION);
            let id = r(MMIO_DEVICE_ID);
            let vendor = r(MMIO_VENDOR_ID);
            core::ptr::write_volatile(reg(base, MMIO_DEVICE_FEATURES_SEL), 0);
            let lo = r(MMIO_DEVICE_FEATURES);
            core::ptr::write_volatile(reg(base, MMIO_DEVICE_FEATURES_SEL), 1);
            let hi = r(MMIO_DEVICE_FEATURES);
            (magic, version, id, vendor, lo, hi)
        };
        let mut mac = [0u8; 6];
        for (k, b) in mac.iter_mut().enumerate() {
            // SAFETY: one-byte reads of the configuration space, inside the window.
            *b = unsafe {
                core::ptr::read_volatile(
                    (base + MMIO_CONFIG + NET_CONFIG_MAC + k as u64) as *const u8,
                )
            };
        }
        // SAFETY: a 2-byte read of the configuration space's MTU, inside the window.
        let mtu = unsafe {
            core::ptr::read_volatile((base + MMIO_CONFIG + NET_CONFIG_MTU) as *const u16)
        };
        println!(
            "nic {i}: window {base:#x}+{:#x} vector {:#x} queue {} boot-info mac {:02x?} mtu {}",
            n.mmio_size, n.vector, n.queue_size, n.mac, n.mtu
        );
        println!(
            "nic {i}: magic {magic:#x} version {version} device {id} vendor {vendor:#x} features {:#x} config mac {mac:02x?} mtu {mtu}",
            (u64::from(hi) << 32) | u64::from(lo)
        );
        if misuse {
            // SAFETY: accesses inside the window that the device must refuse (a
            // 2-byte register read, a write to MAGIC, a write to the configuration
            // space); each is an MMIO exit and changes nothing.
            unsafe {
                let _ = core::ptr::read_volatile((base + MMIO_MAGIC_VALUE) as *const u16);
                core::ptr::write_volatile(reg(base, MMIO_MAGIC_VALUE), 0);
                core::ptr::write_volatile(reg(base, MMIO_CONFIG), 0);
            }
            println!("nic {i}: misused");
        }
    }
    let v4 = &info.ipv4;
    if v4.is_set() {
        println!(
            "ipv4: {:?}/{} gateway {:?} routes {}",
            v4.address,
            v4.prefix_len,
            (v4.has_gateway == 1).then_some(v4.gateway),
            v4.routes().len()
        );
    } else {
        println!("ipv4: none");
    }
}

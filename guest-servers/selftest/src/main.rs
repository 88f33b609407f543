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
//! - `freq=A,B,…`: for each P-state index, set it, run a fixed compute loop and print
//!   its wall time (TSC) and the APERF/MPERF ratio;
//! - `switch=N`: time N P-state switches (P0 ↔ the slowest allowed state);
//! - `pstate-control=V`: write the raw control value V (hex) and report the outcome;
//! - `flood=MS`: write an invalid PERF_CTL value as fast as it can for MS milliseconds
//!   (a hostile guest: the VMM must not slow the others or its log).
#![no_std]
#![no_main]

extern crate alloc;

use compart_firmware::cmdline::{self, Hex};
use compart_firmware::pstate::{self, rdtsc};
use compart_firmware::{abi, println, ring0, BootInfo};

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
            "heap" => {
                let v: alloc::vec::Vec<u64> = (0..10_000u64).collect();
                let sum: u64 = v.iter().sum();
                println!("heap ok: sum {sum}");
            }
            "freq" => freq(info, value),
            "switch" => switch(info, word.parse().unwrap_or(100)),
            "flood" => flood(info, word.parse().unwrap_or(1000)),
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
            "halt" => loop {
                ring0::halt();
            },
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

fn tsc_us(info: &BootInfo, ticks: u64) -> u64 {
    ticks * 1000 / info.tsc_khz.max(1)
}

fn freq(info: &BootInfo, list: &str) {
    // Calibrate at the current (start-up) speed: about 150 ms of work.
    let t = rdtsc();
    work(10_000_000);
    let per_million = ((rdtsc() - t) / 10).max(1);
    let iterations = 1_000_000 * (150 * info.tsc_khz.max(1)) / per_million;
    for idx in list.split(',').filter_map(|s| s.parse::<usize>().ok()) {
        if let Err(e) = pstate::set(idx) {
            println!("freq P{idx}: cannot set: {e:?}");
            continue;
        }
        let before = pstate::sample();
        let t = rdtsc();
        work(iterations);
        let wall = rdtsc() - t;
        let after = pstate::sample();
        let ratio = match (before, after) {
            (Some(b), Some(a)) => a.ratio_since(&b),
            _ => 0.0,
        };
        println!(
            "freq P{idx} {} MHz: status P{:?} loop {} us aperf/mperf {} permille",
            pstate::states().get(idx).map_or(0, |s| s.frequency_mhz),
            pstate::current(),
            tsc_us(info, wall),
            (ratio * 1000.0) as u64
        );
    }
}

/// Times `n` switches between P0 and the slowest state: from the guest's write to
/// the write returning with the new state in effect (the VMM applies it before the
/// vCPU resumes; under soft scaling the vCPU may then sleep out its period, which is
/// the new speed taking effect and is included).
fn switch(info: &BootInfo, n: u32) {
    let slowest = pstate::states().len().saturating_sub(1);
    let mut times = alloc::vec::Vec::with_capacity(n as usize);
    for i in 0..n {
        let target = if i % 2 == 0 { slowest } else { 0 };
        let t = rdtsc();
        if pstate::set(target).is_err() {
            println!("switch: P{target} refused");
            return;
        }
        times.push(rdtsc() - t);
    }
    times.sort_unstable();
    let at = |q: usize| tsc_us(info, times[(times.len() - 1) * q / 100] * 1000);
    println!(
        "switch {n}: p50 {} ns p90 {} ns max {} ns",
        at(50),
        at(90),
        at(100)
    );
}

/// Writes a PERF_CTL value no `_PSS` lists, in a loop, for `ms` milliseconds; every
/// write should be refused.
fn flood(info: &BootInfo, ms: u64) {
    let end = rdtsc() + ms * info.tsc_khz.max(1);
    let (mut refused, mut accepted) = (0u64, 0u64);
    while rdtsc() < end {
        match pstate::write_control(0xdead) {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    println!("flood: {refused} writes refused, {accepted} accepted in {ms} ms");
}

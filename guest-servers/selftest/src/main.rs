//! A guest that exercises the runtime and the VMM's failure handling. Its command line
//! says what to do:
//!
//! - `exit=N`: print a greeting and exit with status N (default 0);
//! - `lines=N`: print N numbered lines first;
//! - `panic`: panic (the VMM reports message and location);
//! - `page-fault`: read address 0 (not present: an exception the VMM reports);
//! - `triple-fault`: wipe the IDT and execute `ud2`, so the CPU shuts down;
//! - `heap`: allocate, use and free a vector, then exit 0;
//! - `halt`: sleep in `hlt` until stopped;
//! - `freq=A,B,…`: for each P-state index, set it, run a fixed compute loop and print
//!   its wall time (TSC) and the APERF/MPERF ratio;
//! - `switch=N`: time N P-state switches (P0 ↔ the slowest allowed state);
//! - `pstate-control=V`: write the raw control value V (hex) and report the outcome;
//! - `flood=MS`: write an invalid PERF_CTL value as fast as it can for MS milliseconds
//!   (a hostile guest: the VMM must not slow the others or its log);
//! - `nic`: print each NIC of the boot info and what its virtio-mmio registers say
//!   (identification, offered features, MAC and MTU from the configuration space),
//!   and the IPv4 configuration; `nic-misuse`: also make accesses the device refuses
//!   (a 2-byte register read, a write to a read-only register, a config write).
#![no_std]
#![no_main]

extern crate alloc;

use compart_firmware::pstate::{self, rdtsc};
use compart_firmware::{abi, println, ring0, BootInfo};

compart_firmware::entry!(main);

fn main(info: &'static BootInfo) -> i32 {
    let mut status = 0;
    for word in info.cmdline().split_whitespace() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        match key {
            "exit" => status = value.parse().unwrap_or(-1),
            "lines" => {
                let n: u32 = value.parse().unwrap_or(0);
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
            "triple-fault" => {
                // SAFETY: deliberately destroys this guest: with no valid IDT gate
                // the #UD escalates to #GP, #DF and a CPU shutdown.
                unsafe {
                    core::ptr::write_bytes(abi::IDT_GPA as *mut u8, 0, 256 * 16);
                    core::arch::asm!("ud2");
                }
            }
            "heap" => {
                let v: alloc::vec::Vec<u64> = (0..10_000u64).collect();
                let sum: u64 = v.iter().sum();
                println!("heap ok: sum {sum}");
            }
            "freq" => freq(info, value),
            "switch" => switch(info, value.parse().unwrap_or(100)),
            "flood" => flood(info, value.parse().unwrap_or(1000)),
            "nic" => nics(info, false),
            "nic-misuse" => nics(info, true),
            "pstate-control" => {
                let v = u64::from_str_radix(value.trim_start_matches("0x"), 16).unwrap_or(0);
                match pstate::write_control(v) {
                    Ok(()) => println!("pstate control {v:#x} accepted, now P{:?}", pstate::current()),
                    Err(e) => println!("pstate control {v:#x} refused: {e:?}, still P{:?}", pstate::current()),
                }
            }
            "halt" => loop {
                ring0::halt();
            },
            _ => println!("unknown command `{word}`"),
        }
    }
    println!("hello from {} ({}), exiting with {status}", info.name(), info.role());
    status
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

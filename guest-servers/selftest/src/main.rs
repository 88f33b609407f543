//! A guest that exercises the runtime and the VMM's failure handling. Its command line
//! says what to do:
//!
//! - `exit=N`: print a greeting and exit with status N (default 0);
//! - `lines=N`: print N numbered lines first;
//! - `panic`: panic (the VMM reports message and location);
//! - `page-fault`: read address 0 (not present: an exception the VMM reports);
//! - `triple-fault`: wipe the IDT and execute `ud2`, so the CPU shuts down;
//! - `heap`: allocate, use and free a vector, then exit 0;
//! - `halt`: sleep in `hlt` until stopped.
#![no_std]
#![no_main]

extern crate alloc;

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
            "halt" => loop {
                ring0::halt();
            },
            _ => println!("unknown command `{word}`"),
        }
    }
    println!("hello from {} ({}), exiting with {status}", info.name(), info.role());
    status
}

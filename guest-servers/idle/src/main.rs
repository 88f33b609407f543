//! A server that does nothing yet: it reports its role and the host cores it is
//! pinned to, then sleeps in `hlt` until the VMM stops it. The default topology runs
//! the five stack roles with it until their real servers exist.
#![no_std]
#![no_main]

use compart_firmware::{println, ring0, BootInfo};

compart_firmware::entry!(main);

fn main(info: &'static BootInfo) -> i32 {
    println!(
        "role {} up: {} vCPU(s), {} KiB RAM, vCPU 0 on host core(s) {:?}; idle",
        info.role(),
        info.vcpu_count,
        info.mem_size / 1024,
        info.host_cores(0)
    );
    loop {
        ring0::halt();
    }
}

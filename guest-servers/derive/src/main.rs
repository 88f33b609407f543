//! A guest whose code comes partly from a proc macro: it serialises a report of its
//! boot info to JSON with `#[derive(Serialize, Deserialize)]` (serde, no_std, through
//! serde-json-core), prints it, parses it back, and exits 0 when the round trip gives
//! the same value.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use compart_firmware::{println, BootInfo};
use serde::{Deserialize, Serialize};

compart_firmware::entry!(main);

/// What this guest reports about itself.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Report<'a> {
    name: &'a str,
    role: &'a str,
    channels: u32,
    vcpus: u32,
    memory_mib: u64,
    cmdline: &'a str,
}

fn main(info: &'static BootInfo) -> i32 {
    let report = Report {
        name: info.name(),
        role: info.role(),
        channels: info.channel_count,
        vcpus: info.vcpu_count,
        memory_mib: info.mem_size >> 20,
        cmdline: info.cmdline(),
    };
    let mut buf = [0u8; 256];
    let n = serde_json_core::to_slice(&report, &mut buf).expect("the report fits");
    let json = core::str::from_utf8(&buf[..n]).expect("JSON is UTF-8");
    println!("derive: {json}");
    let (back, used): (Report, usize) =
        serde_json_core::from_slice(&buf[..n]).expect("the report parses back");
    assert_eq!((back, used), (report, n), "derive: round trip");
    println!("derive: round trip ok");
    0
}

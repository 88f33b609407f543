//! The stream application's image (glue to come with compart_firmware::net).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

compart_firmware::entry!(main);

fn main(_info: &'static compart_firmware::BootInfo) -> i32 {
    0
}

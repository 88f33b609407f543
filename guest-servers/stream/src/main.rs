//! The stream application's image: the library's [`run`] over the posix server
//! (`compart_firmware::net`), its reports on the console.
//!
//! - Needs a channel to a guest of role `posix`.
//! - `server=ADDR port=P`, then `time=S` or `bytes=N`, `block=KIB`, `interval=S`,
//!   `linger=MS` (see [`Config`]). Exits 0 after a transfer, 1 if it failed.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use compart_firmware::{cmdline, net, println, BootInfo};
use stream::{run, Config, Limit};

compart_firmware::entry!(main);

fn main(_info: &'static BootInfo) -> i32 {
    let config = Config::from_args(&cmdline::args()).unwrap_or_else(|e| panic!("stream: {e}"));
    let mut net = net::open();
    match config.limit {
        Limit::Millis(ms) => println!("stream: to {} for {ms} ms", config.server),
        Limit::Bytes(n) => println!("stream: to {}, {n} bytes", config.server),
    }
    match run(&mut net, &config, |r| println!("stream: interval: {r}")) {
        Ok(r) => {
            let how = if r.acknowledged {
                "the server closed after the last byte"
            } else {
                "the server did not close within the linger time"
            };
            println!("stream: sent {r} ({how})");
            0
        }
        Err(e) => {
            println!("stream: {e}");
            1
        }
    }
}

//! The iperf3 image: the library's server or client over the posix server
//! (`compart_firmware::net`), its reports on the console.
//!
//! - `mode=server [port=5201] [tests=N] …`: serves stock `iperf3 -c` clients; exits 0
//!   after N tests, or runs forever.
//! - `mode=client server=A.B.C.D [port=5201] [time=10] [bytes=N] [parallel=1]
//!   [reverse=true] [len=128K] …`: one test against (stock) `iperf3 -s`; exits 0 when it
//!   completed, 1 when it failed (the reason printed).
//!
//! The full list of arguments is in the library's `config` module.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::fmt;

use compart_firmware::{net, print, println, time, BootInfo};
use iperf3::server::Server;
use iperf3::{client, Config};

compart_firmware::entry!(main);

/// The console as a `fmt::Write`.
struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        print!("{s}");
        Ok(())
    }
}

fn main(info: &'static BootInfo) -> i32 {
    let config = match Config::parse(info.cmdline()) {
        Ok(c) => c,
        Err(e) => {
            println!("iperf3: {e}");
            return 2;
        }
    };
    let mut net = net::open();
    match config {
        Config::Server(cfg) => {
            let mut server = match Server::listen(&mut net, cfg) {
                Ok(s) => s,
                Err(e) => {
                    println!("iperf3: {e}");
                    return 1;
                }
            };
            match server.run(&mut net, &mut Console) {
                Ok(()) => 0,
                Err(e) => {
                    println!("iperf3: {e}");
                    1
                }
            }
        }
        Config::Client(cfg) => {
            // The cookie differs per run.
            let seed = time::Instant::now().tsc();
            match client::run(&mut net, &cfg, seed, &mut Console) {
                Ok(_) => 0,
                Err(e) => {
                    println!("iperf3: error - {e}");
                    1
                }
            }
        }
    }
}

//! The http application's image: the library's [`Server`] over the posix server
//! (`compart_firmware::net`), with posix's and tcp's counters on the status page.
//!
//! - Needs a channel to a guest of role `posix`.
//! - `port=80 body_mib=100 conns=256 idle_ms=30000 backlog=64` (see [`Config`]).
//! - `stats=MS` (default 1000; 0: none): when idle and its counters changed, it prints them
//!   (`http: counters: …`) at most once per MS milliseconds.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use core::fmt::Write as _;

use compart_firmware::net::{self, PosixNet};
use compart_firmware::{cmdline, println, BootInfo};
use compart_sockets::Net as _;
use http::{Config, Counters, Server};

compart_firmware::entry!(main);

/// The stack's counters for the status page: posix's answer to `Stats`.
fn stack_stats(net: &mut PosixNet, out: &mut String) {
    let mut buf = [0u8; 2048];
    match net.stats(&mut buf) {
        Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
        Err(e) => {
            let _ = write!(out, "unavailable ({e:?})");
        }
    }
}

fn main(_info: &'static BootInfo) -> i32 {
    let args = cmdline::args();
    let config = Config::from_args(&args).unwrap_or_else(|e| panic!("http: {e}"));
    let stats_ms: u64 = args
        .get("stats")
        .unwrap_or_else(|e| panic!("http: {e}"))
        .unwrap_or(1000);
    let port = config.port;
    let mut srv = Server::new(net::open(), config, stack_stats)
        .unwrap_or_else(|e| panic!("http: cannot listen on port {port}: {e:?}"));
    println!("http: serving on port {port}");
    let mut printed = Counters::default();
    let mut last_ms = 0u64;
    loop {
        if srv.poll() {
            continue;
        }
        // Idle: print changed counters, or wake when they may be printed.
        let mut deadline = srv.next_deadline();
        if stats_ms > 0 && *srv.counters() != printed {
            let due = last_ms.saturating_add(stats_ms);
            let now = srv.net().now_ms();
            if now >= due {
                printed = srv.counters().clone();
                last_ms = now;
                println!("http: counters: {printed} open={}", srv.open_connections());
            } else {
                deadline = Some(deadline.map_or(due, |d| d.min(due)));
            }
        }
        srv.net().wait(deadline);
    }
}

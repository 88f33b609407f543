//! The echo application's image: [`Echo`] over the posix server
//! (`compart_firmware::net`).
//!
//! - `port=P` (default 7): the port it listens on.
//! - `conns=N` (default 256): connections served at once (more wait in the backlog).
//! - `backlog=N` (default 256): handshakes completing at once (tcp may take fewer).
//! - `exit_after=N`: end the guest at once (`exit`, no destructors: nothing is closed)
//!   once N connections were accepted, to show that posix closes a lost application's
//!   sockets.
//! - `stats=MS` (default 1000): when idle and the counters changed, print them (with
//!   posix's and tcp's, from a `Stats` call) at most once per MS milliseconds.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use compart_firmware::cmdline;
use compart_firmware::{net, println, BootInfo};
use compart_sockets::Net;
use echo::Echo;

compart_firmware::entry!(main);

fn main(_info: &'static BootInfo) -> i32 {
    let args = cmdline::args();
    let port: u16 = args.value("port").unwrap_or(7);
    let conns: usize = args.value("conns").unwrap_or(256);
    let backlog: u32 = args.value("backlog").unwrap_or(256);
    let exit_after: Option<u64> = args.value("exit_after");
    let stats_ms: u64 = args.value("stats").unwrap_or(1000);
    let mut net = net::open();
    let mut echo = Echo::new(&mut net, port, backlog, conns)
        .unwrap_or_else(|e| panic!("echo: listen on port {port}: {e:?}"));
    println!("echo: serving port {port}, up to {conns} connections at once");
    let mut printed = echo.counters();
    let mut last = net.now_ms();
    loop {
        let busy = echo.step();
        let c = echo.counters();
        if exit_after.is_some_and(|n| c.accepted >= n) {
            println!(
                "echo: exiting after {} connections, {} still open",
                c.accepted,
                echo.connections()
            );
            // At once, as a crash would: no destructor runs, nothing is closed.
            compart_firmware::exit(0);
        }
        if busy {
            continue;
        }
        let now = net.now_ms();
        if c != printed && now >= last + stats_ms {
            let mut text = [0u8; 1024];
            let n = net.stats(&mut text).unwrap_or(0);
            println!(
                "echo: counters: accepted={} finished={} failed={} bytes={} open={}",
                c.accepted,
                c.finished,
                c.failed,
                c.bytes,
                echo.connections()
            );
            for line in core::str::from_utf8(&text[..n]).unwrap_or("").lines() {
                println!("echo: {line}");
            }
            printed = c;
            last = now;
        }
        let deadline = (c != printed).then_some(last + stats_ms);
        net.wait(deadline);
    }
}

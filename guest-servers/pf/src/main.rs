//! The pf server's image: the library's [`PfServer`] over this guest's channels.
//!
//! - ip is the peer of role `ip`, tcp the peer of role `tcp`; either may be missing (what
//!   would go to it is answered by pf: `Dropped(LinkDown)` without ip, `Dropped(Refused)`
//!   without tcp).
//! - `rules=…` and `default=allow|deny` (see the library's `rules` module; default: no
//!   rules, deny), `conns=N` the connection table's size (1–65536, default 4096; each
//!   entry takes about 180 bytes of heap at most, so 65536 need a guest of ≥ 16 MiB).
//! - The connection timeouts and the scan interval, in milliseconds (1 or more), by the
//!   names of [`Limits`]' fields: `tcp_opening_ms=`, `tcp_established_ms=`,
//!   `tcp_closing_ms=`, `tcp_closed_ms=`, `udp_first_ms=`, `udp_ms=`, `icmp_ms=`,
//!   `scan_interval_ms=` (defaults in `Limits::default`).
//! - `stats=MS` (default 1000; 0: every time): when the server goes idle and its counters
//!   changed, it prints them (`pf: counters: name=value …`), at most once per MS
//!   milliseconds. `poll=US` overrides the placement's poll budget.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use compart_firmware::channel;
use compart_firmware::cmdline;
use compart_firmware::server::Role;
use compart_firmware::time;
use compart_firmware::{println, BootInfo};
use pf::{Counters, Filter, Instant, Limits, PfServer, Rules};

compart_firmware::entry!(main);

/// Most entries `conns=` may ask for (about 180 bytes of heap each, at most).
const MAX_CONNS: usize = 65536;

fn main(_info: &'static BootInfo) -> i32 {
    let args = cmdline::args();
    let rules = Rules::parse(args.value("rules").unwrap_or(""), args.value("default"))
        .unwrap_or_else(|e| panic!("pf: {e}"));
    let conns: usize = args
        .value("conns")
        .unwrap_or(Limits::default().conntrack_entries);
    if !(1..=MAX_CONNS).contains(&conns) {
        panic!("pf: conns={conns}: expected 1-{MAX_CONNS}");
    }
    let mut limits = Limits {
        conntrack_entries: conns,
        ..Limits::default()
    };
    for key in Limits::TIMEOUT_KEYS {
        if let Some(ms) = args.value::<u64>(key) {
            if ms == 0 {
                panic!("pf: {key}=0: expected 1 or more milliseconds");
            }
            if let Some(t) = limits.timeout_mut(key) {
                *t = ms;
            }
        }
    }
    let stats_ms: u64 = args.value("stats").unwrap_or(1000);
    let poll: Option<u32> = args.value("poll");
    println!(
        "pf: {rules}, table of {} connections",
        limits.conntrack_entries
    );
    let ip = channel::open_by_role(Role::Ip).ok();
    let tcp = channel::open_by_role(Role::Tcp).ok();
    for (what, c) in [("ip", &ip), ("tcp", &tcp)] {
        match c {
            Some((peer, _)) => println!("pf: {what} on {peer}"),
            None => println!("pf: no channel to {what}"),
        }
    }
    let mut srv = PfServer::new(Filter::new(rules, limits), ip, tcp);
    let mut printed = Counters::default();
    let mut last_print = Instant::ZERO;
    while !srv.is_empty() {
        let t = time::clock();
        let busy = srv.poll(t);
        for (peer, why) in srv.take_closed() {
            println!("pf: {peer} {why}; dropping it");
        }
        if busy {
            continue;
        }
        let counters = srv.filter().counters();
        if *counters != printed && t.millis() >= last_print.millis().saturating_add(stats_ms) {
            let table = srv.filter().table();
            println!(
                "pf: counters: {counters} conns={} conns_peak={}",
                table.len(),
                table.peak()
            );
            printed = counters.clone();
            last_print = t;
        }
        idle(&mut srv, poll);
    }
    println!("pf: no channel left; counters: {}", srv.filter().counters());
    0
}

/// Waits for work or the filter's next deadline (a connection to expire), whichever comes
/// first, on the firmware's timer.
fn idle(srv: &mut PfServer<channel::Doorbell>, poll: Option<u32>) {
    let deadline = srv.next_deadline().map(time::at);
    // A channel that broke while we waited is found and dropped by the next pass.
    let _ = match poll {
        Some(us) => channel::wait_for_any_polling(srv.sleep_set(), us, deadline),
        None => channel::wait_for_any(srv.sleep_set(), deadline),
    };
}

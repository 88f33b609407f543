//! The tcp server's image: the library's [`Tcp`] core over the channel to ip.
//!
//! - The layer below is the peer of role `pf`, else `ip` (required); the interface's
//!   address and MTU come from its `Config` answer (asked again every 100 ms while the
//!   link is down).
//! - The posix server, if there is a channel to one (role `posix`), is served the
//!   socket protocol (`compart_proto::socket`).
//! - `handshake=MS` (default 30000): how long a connection may take to complete its
//!   handshake before it is given up.
//! - Offloads: TCP checksums are left to the link when ip's `Config` says it has
//!   `TX_CSUM`, and segments of up to 64 KiB go down whole with `TX_TSO4` too;
//!   `offload=false` turns both off.
//! - `sockets=N` (default 32) smoltcp sockets at most, `buf=KIB` (default 64) of
//!   receive and of send buffer each: the heap needs about N × 2 × KIB KiB.
//! - `backlog=N` (default 4): listening sockets a listener keeps at most (handshakes
//!   completing at once; a SYN that finds none is answered RST).
//! - `stats=MS` (default 1000): when idle and the device's counters changed, print them
//!   at most once per MS milliseconds. `poll=US` overrides the placement's poll budget.
//! - Idle: `channel::wait_for_any` on the channels until smoltcp's `poll_delay`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use core::time::Duration;

use compart_firmware::channel::{self, Channel};
use compart_firmware::cmdline;
use compart_firmware::server::Role;
use compart_firmware::time;
use compart_firmware::{println, BootInfo};
use compart_proto::packet;
use tcp::device::DeviceCounters;
use tcp::{ConfigQuery, Iface, Instant, Limits, Tcp};

compart_firmware::entry!(main);

/// The stack's clock: microseconds of the firmware's monotonic clock (the TSC). The one
/// place time is read.
fn now() -> Instant {
    Instant::from_micros(i64::try_from(time::micros()).unwrap_or(i64::MAX))
}

fn wait(chans: &mut [Channel], poll: Option<u32>, deadline: Option<time::Instant>) {
    // A broken channel is found by the next poll.
    let _ = match poll {
        Some(us) => channel::wait_for_any_polling(chans, us, deadline),
        None => channel::wait_for_any(chans, deadline),
    };
}

/// Ask ip for the interface's configuration until it has one (the link is up), again
/// every [`tcp::config::RETRY_MS`] while it answers anything else; packets ip delivers
/// meanwhile are refused (there is no socket yet). Sleeps on the channel in between.
fn config(ch: &mut Channel, poll: Option<u32>) -> packet::Config {
    let mut q = ConfigQuery::new();
    let mut said = false;
    loop {
        match q.poll(ch, time::clock().millis()) {
            Ok(Some(c)) => return c,
            Ok(None) => {}
            Err(e) => panic!("tcp: channel to ip broke: {e:?}"),
        }
        if let (Some(other), false) = (&q.odd_answer, said) {
            println!("tcp: ip answered Config with {other:?}; asking again");
            said = true;
        }
        let retry = q
            .retry_at_ms()
            .map(|ms| time::at(compart_kit::clock::Instant::from_millis(ms)));
        wait(core::slice::from_mut(ch), poll, retry);
    }
}

fn main(info: &'static BootInfo) -> i32 {
    let _ = info;
    let args = cmdline::args();
    let stats_ms: u64 = args.value("stats").unwrap_or(1000);
    let poll: Option<u32> = args.value("poll");
    let (peer, mut ch) = [Role::Pf, Role::Ip]
        .into_iter()
        .find_map(|r| channel::open_by_role(r).ok())
        .unwrap_or_else(|| panic!("tcp: no channel to a pf or ip server"));
    println!("tcp: lower layer on {} ({})", peer, peer.role.name());
    let c = config(&mut ch, poll);
    let [a, b, cc, d] = c.address;
    let iface = Iface::from_config(&c, args.value::<bool>("offload").unwrap_or(true));
    let (tx_csum, tso) = (iface.tx_checksum_offload, iface.tso);
    println!(
        "tcp: address {a}.{b}.{cc}.{d}/{}, mtu {}, offloads {:#x}: {}, {}",
        c.prefix_len,
        c.mtu,
        c.offloads,
        if tx_csum {
            "TCP checksums left to the link"
        } else {
            "TCP checksums computed here"
        },
        if tso {
            "segments of up to 64 KiB (TSO)"
        } else {
            "MTU-sized segments"
        }
    );
    let limits = Limits::from_args(
        args.value("sockets"),
        args.value("buf"),
        args.value("backlog"),
        args.value("handshake"),
    );
    println!(
        "tcp: up to {} sockets of {} KiB + {} KiB, backlog {}",
        limits.sockets,
        limits.rx_buffer / 1024,
        limits.tx_buffer / 1024,
        limits.backlog
    );
    let mut tcp = Tcp::new(ch, iface, limits, now(), time::Instant::now().tsc());
    let mut posix = channel::open_by_role(Role::Posix).ok().map(|(peer, ep)| {
        println!("tcp: posix on {peer}");
        let p = tcp::posix::Posix::new(ep.buffer_size());
        (tcp.attach(ep), p)
    });
    let mut printed = DeviceCounters::default();
    let mut last_print = Instant::from_millis(0);
    loop {
        let t = now();
        let mut busy = tcp.poll(t);
        if let Some((k, p)) = posix.as_mut() {
            match tcp.serve_posix(*k, p) {
                Ok(b) => busy |= b,
                Err(e) => {
                    println!("tcp: channel to posix broke: {e:?}; dropping it");
                    posix = None;
                    busy = true;
                }
            }
        }
        if let Some(e) = tcp.device().error() {
            println!(
                "tcp: channel to ip broke: {e:?}; counters: {:?}",
                tcp.device().counters()
            );
            return 1;
        }
        if busy {
            continue;
        }
        let counters = tcp.device().counters().clone();
        if counters != printed && t.total_millis() >= last_print.total_millis() + stats_ms as i64 {
            println!(
                "tcp: counters: rx={} tx={} deferred={} rx_malformed={} rx_too_big={} tx_dropped_by_ip={} bad_replies={} syn_backlog_full={} sockets={}",
                counters.rx_packets,
                counters.tx_packets,
                counters.tx_deferred,
                counters.rx_malformed,
                counters.rx_too_big,
                counters.tx_dropped_by_ip,
                counters.bad_replies,
                counters.rx_syn_backlog_full,
                tcp.sockets_in_use()
            );
            printed = counters;
            last_print = t;
        }
        let mut delay = tcp.poll_delay(t);
        if posix.as_ref().is_some_and(|(_, p)| p.backlogged) {
            // posix's queue is full of events: look again in 1 ms.
            let ms = tcp::Duration::from_millis(1);
            delay = Some(delay.map_or(ms, |d| d.min(ms)));
        }
        let deadline =
            delay.map(|d| time::Instant::now() + Duration::from_micros(d.total_micros()));
        wait(tcp.sleep_set(), poll, deadline);
    }
}

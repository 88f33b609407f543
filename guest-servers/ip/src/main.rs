//! The ip server's image: the library's [`IpServer`] over this guest's channels.
//!
//! - The driver is the peer of role `driver` (required); the upper layer the peer of
//!   role `pf`, else `tcp` (optional: without one, TCP and UDP are answered "protocol
//!   unreachable", and ping still works).
//! - The address comes from the boot info (`BootInfo.ipv4`, the topology's `[[nic]]`);
//!   `addr=198.18.0.2/24` and `gw=198.18.0.1` on the command line override it.
//! - `stats=MS` (default 1000; 0: every time): when the server goes idle and its
//!   counters changed, it prints them (`ip: counters: name=value …`), at most once
//!   per MS milliseconds. `poll=US` overrides the placement's poll budget.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use compart_firmware::channel;
use compart_firmware::cmdline;
use compart_firmware::server::Role;
use compart_firmware::time;
use compart_firmware::{println, BootInfo};
use ip::stack::Link;
use ip::{Counters, Instant, Ip, IpServer, Limits, Settings};

compart_firmware::entry!(main);

fn main(info: &'static BootInfo) -> i32 {
    let args = cmdline::args();
    let settings = Settings::with_override(
        Settings::from_boot_info(&info.ipv4),
        args.value("addr"),
        args.value("gw"),
    )
    .unwrap_or_else(|e| panic!("ip: {e}"));
    let stats_ms: u64 = args.value("stats").unwrap_or(1000);
    let poll: Option<u32> = args.value("poll");
    println!(
        "ip: address {}/{}, gateway {}, {} static route(s)",
        settings.address(),
        settings.cidr.prefix_len(),
        settings
            .gateway
            .map_or(alloc::string::String::from("none"), |g| alloc::format!(
                "{g}"
            )),
        settings.routes.len()
    );
    let driver = channel::open_by_role(Role::Driver)
        .unwrap_or_else(|e| panic!("ip: no channel to a driver: {e:?}"));
    println!("ip: driver on {}", driver.0);
    let upper = [Role::Pf, Role::Tcp]
        .into_iter()
        .find_map(|r| channel::open_by_role(r).ok());
    match &upper {
        Some((peer, _)) => println!("ip: upper layer on {} ({})", peer, peer.role.name()),
        None => println!("ip: no upper layer: TCP and UDP are answered protocol unreachable"),
    }
    let mut srv = IpServer::new(Ip::new(settings, Limits::default()), driver, upper);
    let mut link: Option<Link> = None;
    let mut printed = Counters::default();
    let mut last_print = Instant::ZERO;
    while !srv.is_empty() {
        let t = time::clock();
        let busy = srv.poll(t);
        for (peer, why) in srv.take_closed() {
            println!("ip: {peer} {why}; dropping it");
        }
        if srv.ip().link() != link {
            link = srv.ip().link();
            if let Some(l) = link {
                println!(
                    "ip: link up: mac {} mtu {} offloads {:#x}; gratuitous ARP sent",
                    l.mac, l.mtu, l.offloads
                );
            }
        }
        if busy {
            continue;
        }
        let counters = srv.ip().counters();
        if *counters != printed && t.millis() >= last_print.millis().saturating_add(stats_ms) {
            println!("ip: counters: {counters}");
            printed = counters.clone();
            last_print = t;
        }
        idle(&mut srv, poll);
    }
    println!("ip: no channel left; counters: {}", srv.ip().counters());
    0
}

/// Waits for work or the stack's next deadline (an ARP retry, a cache or reassembly
/// expiry), whichever comes first, on the firmware's timer.
fn idle(srv: &mut IpServer<channel::Doorbell>, poll: Option<u32>) {
    let deadline = srv.ip().next_deadline().map(time::at);
    // A channel that broke while we waited is found and dropped by the next pass.
    let _ = match poll {
        Some(us) => channel::wait_for_any_polling(srv.sleep_set(), us, deadline),
        None => channel::wait_for_any(srv.sleep_set(), deadline),
    };
}

//! The posix server's image: the library's [`Posix`] over the channel to tcp (the peer
//! of role `tcp`, required) and one channel per application (every peer of role
//! `app`).
//!
//! - `sockets=N` (default 1024): sockets one application may hold.
//! - `stats=MS` (default 1000): when idle and the counters changed, print them
//!   (`posix: counters: …`) at most once per MS milliseconds, and each application
//!   dropped because its channel broke. `poll=US` overrides the placement's poll
//!   budget.
//! - Idle: `channel::wait_for_any` on all the channels (no deadline: every change
//!   comes as a message; 1 ms while an application's queue is too full for an event).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use core::time::Duration;

use compart_firmware::channel;
use compart_firmware::cmdline;
use compart_firmware::server::Role;
use compart_firmware::time;
use compart_firmware::{println, BootInfo};
use posix::{Limits, Posix};

compart_firmware::entry!(main);

fn main(_info: &'static BootInfo) -> i32 {
    let args = cmdline::args();
    let mut limits = Limits::default();
    if let Some(n) = args.value::<usize>("sockets") {
        limits.sockets_per_app = n.clamp(1, 65535);
    }
    let stats_ms: u64 = args.value("stats").unwrap_or(1000);
    let poll: Option<u32> = args.value("poll");
    let (peer, tcp) = channel::open_by_role(Role::Tcp)
        .unwrap_or_else(|e| panic!("posix: no channel to a tcp server: {e:?}"));
    println!("posix: tcp on {peer}");
    let mut srv = Posix::new(tcp, limits);
    let (open, unusable) = channel::open_all();
    for (peer, e) in unusable {
        println!("posix: channel to {peer} unusable: {e:?}");
    }
    for (peer, ep) in open {
        if peer.role == Role::App {
            println!("posix: application {peer}");
            srv.add_app(&peer.name, ep);
        } else {
            println!(
                "posix: ignoring the channel to {peer} (role {})",
                peer.role.name()
            );
        }
    }
    println!(
        "posix: serving {} applications, up to {} sockets each",
        srv.apps(),
        limits.sockets_per_app
    );
    let mut printed = srv.counters();
    let mut last_print = time::Instant::now();
    loop {
        let busy = srv
            .poll()
            .unwrap_or_else(|e| panic!("posix: channel to tcp broke: {:?}", e.0));
        for name in srv.take_lost() {
            println!("posix: application {name} lost (its channel broke); its sockets are closed");
        }
        if busy {
            continue;
        }
        let c = srv.counters();
        let now = time::Instant::now();
        if c != printed && now.duration_since(last_print) >= Duration::from_millis(stats_ms) {
            let text = srv.stats_text();
            println!("posix: counters: {}", text.trim_start_matches("posix: "));
            printed = c;
            last_print = now;
        }
        let mut deadline = (c != printed).then(|| now + Duration::from_millis(stats_ms));
        if srv.backlogged() {
            // An application's queue is full of events: look again in 1 ms.
            deadline = Some(now + Duration::from_millis(1));
        }
        let set = srv.sleep_set();
        // A broken channel is found by the next poll.
        let _ = match poll {
            Some(us) => channel::wait_for_any_polling(set, us, deadline),
            None => channel::wait_for_any(set, deadline),
        };
    }
}

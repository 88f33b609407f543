//! Channel benchmark, one run: round trips per second (window 64: throughput; window 1:
//! 1/latency) between two guests on dedicated cores and on one shared core, against the
//! same channel library between two host threads placed the same way; and the cost of
//! a doorbell: round trips where the receiver always sleeps (guest ↔ guest, and a host
//! thread ↔ a guest through the same eventfds).
//!
//! `cargo bench -p compart-tests --bench channels`

use std::os::fd::AsRawFd;
use std::time::Duration;

use compart_channel::host::pin_current_thread;
use compart_channel::{Endpoint, Notifier, Region, Side, Waiter};
use compart_tests::{require_kvm, topology, Capture};

mod common;
use common::{host_threads, ping};

fn guests(cores: [u32; 2], poll: Option<u32>, n: u64, window: u64) -> f64 {
    let poll = poll.map(|p| format!(" poll={p}")).unwrap_or_default();
    let t = topology(&format!(
        "[[guest]]\nname = \"ping\"\nrole = \"app\"\nimage = \"pingpong\"\ncores = [{}]\n\
         cmdline = \"role=ping n={n} window={window}{poll}\"\n\
         [[guest]]\nname = \"pong\"\nrole = \"app\"\nimage = \"pingpong\"\ncores = [{}]\n\
         cmdline = \"role=pong{poll}\"\n\
         [[channel]]\na = \"ping\"\nb = \"pong\"\nqueue_depth = 64\nmax_outstanding = 64\n",
        cores[0], cores[1]
    ));
    let capture = Capture::default();
    compart_vmm::start(&t, capture.sink()).unwrap().wait();
    let line = capture
        .of("ping")
        .into_iter()
        .find(|l| l.contains("phase 0 done"))
        .expect("ping finished");
    let rest = &line[line.find(" us, ").unwrap() + 5..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// A host thread on side A of a guest's channel, through the VMM's own eventfds.
struct Kick<'a>(&'a vmm_sys_util::eventfd::EventFd);
impl Notifier for Kick<'_> {
    fn kick(&self) {
        let _ = self.0.write(1);
    }
}
struct Sleep<'a>(&'a vmm_sys_util::eventfd::EventFd);
impl Waiter for Sleep<'_> {
    fn wait(&self) {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; 100 ms timeout.
        unsafe { libc::poll(&mut p, 1, 100) };
        let _ = self.0.read();
    }
}

fn host_thread_to_guest(n: u64) -> f64 {
    let t = topology(
        "[[guest]]\nname = \"host-side\"\nrole = \"app\"\nimage = \"idle\"\ncores = [0]\n\
         [[guest]]\nname = \"pong\"\nrole = \"app\"\nimage = \"pingpong\"\ncores = [1]\ncmdline = \"role=pong poll=0\"\n\
         [[channel]]\na = \"host-side\"\nb = \"pong\"\nqueue_depth = 64\nmax_outstanding = 64\n",
    );
    let capture = Capture::default();
    let mut vmm = compart_vmm::start(&t, capture.sink()).unwrap();
    capture.wait_for("pong", "channel 0 to", Duration::from_secs(20));
    let side = vmm.take_channel_side_a(0).unwrap();
    pin_current_thread(0).unwrap();
    let region: Region = side.memory.region();
    let mut a = Endpoint::attach(region, Side::A, Kick(&side.kick_peer)).unwrap();
    let rate = ping(&mut a, &Sleep(&side.wake_me), 0, n, 1);
    capture.wait_for("pong", "stop after", Duration::from_secs(20));
    vmm.handle().stop();
    vmm.wait();
    rate
}

fn row(what: &str, rate: f64) {
    println!(
        "  {what:<58} {:>12.0} round trips/s  {:>9.2} us each",
        rate,
        1e6 / rate
    );
}

fn main() {
    if !require_kvm() {
        return;
    }
    let spin = 1_000_000;
    println!("channel round trips, 64-byte messages (host threads and guests in the same run)");
    println!("dedicated cores (0 and 1), receivers poll:");
    row(
        "host threads, window 64",
        host_threads([0, 1], spin, 2_000_000, 64),
    );
    row(
        "guests,       window 64",
        guests([0, 1], None, 2_000_000, 64),
    );
    row(
        "host threads, window 1",
        host_threads([0, 1], spin, 300_000, 1),
    );
    row("guests,       window 1", guests([0, 1], None, 300_000, 1));
    println!("one shared core (0), receivers sleep when out of work:");
    row(
        "host threads, window 64",
        host_threads([0, 0], 0, 300_000, 64),
    );
    row("guests,       window 64", guests([0, 0], None, 300_000, 64));
    row("host threads, window 1", host_threads([0, 0], 0, 20_000, 1));
    row("guests,       window 1", guests([0, 0], None, 20_000, 1));
    println!("doorbells: dedicated cores, every message wakes a sleeping receiver (two wake-ups a round trip):");
    row(
        "host thread <-> host thread (eventfd)",
        host_threads([0, 1], 0, 20_000, 1),
    );
    row(
        "guest <-> guest (ioeventfd -> irqfd)",
        guests([0, 1], Some(0), 20_000, 1),
    );
    row(
        "host thread <-> guest (eventfd -> irqfd, ioeventfd -> eventfd)",
        host_thread_to_guest(20_000),
    );
}

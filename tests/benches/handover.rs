//! Hand-over benchmark: the cost of passing the core between two parties that share it.
//! Two `pingpong` guests pinned to host core 0, 64-byte messages, window 1, receivers
//! sleeping as soon as they are out of work (`poll=0`), so every round trip hands the
//! core over twice; against two host threads on core 0 waking each other through
//! eventfds. The cases alternate rep by rep, so both see the same machine; each prints
//! the median round trip with min–max over the reps, and for the guests the halts
//! (sleeps announced, both sides, from the channel's own counters) and the CPU time of
//! both vCPU threads per round trip.
//!
//! `cargo bench -p compart-tests --bench handover` (`COMPART_BENCH_RUNS` reps, default
//! 7; `COMPART_BENCH_ROUND_TRIPS` per rep, default 20 000). With
//! `COMPART_BENCH_PING_NICE=N` a third case runs the guests with ping's vCPU thread at
//! nice N (a scheduling-weight experiment: the VMM itself leaves nice alone).

use std::time::Duration;

use compart_tests::{bench_runs, require_kvm, thread_cpu_ns, topology, Capture};
use compart_vmm::{ControlRequest, ControlResponse};

mod common;

const TIMEOUT: Duration = Duration::from_secs(120);

/// One guest rep: microseconds, halts and vCPU CPU microseconds per round trip.
struct GuestRep {
    us: f64,
    halts: f64,
    cpu_us: f64,
}

/// Sum of the sleep counters of every channel side in a status report.
fn sleeps(status: &ControlResponse) -> u64 {
    match status {
        ControlResponse::Status(report) => report
            .guests
            .iter()
            .flat_map(|g| &g.channels)
            .map(|c| c.totals.sleeps)
            .sum(),
        other => panic!("not a status report: {other}"),
    }
}

/// Sets the nice value of thread `tid` of this process.
fn set_nice(tid: i32, nice: i32) {
    // SAFETY: setpriority reads only its integer arguments; a thread id is a valid
    // PRIO_PROCESS target on Linux.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    assert_eq!(
        r,
        0,
        "setpriority({tid}, {nice}): {}",
        std::io::Error::last_os_error()
    );
}

fn guests(n: u64, ping_nice: Option<i32>) -> GuestRep {
    // Ping stops after its one timed phase and waits for a placement change that never
    // comes, so both vCPU threads are still alive (and idle) when their CPU time is read.
    let t = topology(&format!(
        "[[guest]]\nname = \"ping\"\nrole = \"app\"\nimage = \"pingpong\"\ncores = [0]\n\
         cmdline = \"role=ping n={n} window=1 phases=2 poll=0\"\n\
         [[guest]]\nname = \"pong\"\nrole = \"app\"\nimage = \"pingpong\"\ncores = [0]\n\
         cmdline = \"role=pong poll=0\"\n\
         [[channel]]\na = \"ping\"\nb = \"pong\"\nqueue_depth = 64\nmax_outstanding = 64\n"
    ));
    let capture = Capture::default();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
    let handle = vmm.handle();
    capture.wait_for("pong", "channel 0 to ping open", TIMEOUT);
    capture.wait_for("ping", "channel 0 to pong open", TIMEOUT);
    let threads = compart_tests::poll(TIMEOUT, "two vCPU threads", || {
        let v = vmm.vcpu_threads();
        (v.len() == 2).then_some(v)
    });
    if let Some(nice) = ping_nice {
        set_nice(
            threads.iter().find(|t| t.guest == "ping").unwrap().tid,
            nice,
        );
    }
    let tids: Vec<i32> = threads.iter().map(|t| t.tid).collect();
    // Control requests are served by the thread that waits for the VMM.
    let waiter = std::thread::spawn(move || vmm.wait());
    let cpu = || tids.iter().map(|&t| thread_cpu_ns(t)).sum::<u64>();
    let status = || handle.request(ControlRequest::Status, TIMEOUT).unwrap();
    let (cpu0, sleeps0) = (cpu(), sleeps(&status()));
    capture.wait_for("ping", "phase 0 done", TIMEOUT);
    capture.wait_for("ping", "waiting for a placement change", TIMEOUT);
    let (cpu1, sleeps1) = (cpu(), sleeps(&status()));
    let line = capture
        .of("ping")
        .into_iter()
        .find(|l| l.contains("phase 0 done"))
        .unwrap();
    let us: f64 = line[line.find(" round trips in ").unwrap() + 16..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    handle.stop();
    waiter.join().unwrap();
    let n = n as f64;
    GuestRep {
        us: us / n,
        halts: (sleeps1 - sleeps0) as f64 / n,
        cpu_us: (cpu1 - cpu0) as f64 / 1000.0 / n,
    }
}

/// Median, min and max.
fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    if !require_kvm() {
        return;
    }
    let reps = bench_runs(7).max(5);
    let n: u64 = std::env::var("COMPART_BENCH_ROUND_TRIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let nice: Option<i32> = std::env::var("COMPART_BENCH_PING_NICE")
        .ok()
        .and_then(|v| v.parse().ok());
    println!("hand-overs on one shared core (0): window 1, receivers sleep at once, {reps} reps x {n} round trips, interleaved");
    let (mut threads, mut guest, mut niced) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let h = 1e6 / common::host_threads([0, 0], 0, n, 1);
        let g = guests(n, None);
        print!(
            "  rep {rep}: host threads {h:.2} us, guests {:.2} us ({:.2} halts, {:.1} us vCPU CPU)",
            g.us, g.halts, g.cpu_us
        );
        if let Some(nice) = nice {
            let g = guests(n, Some(nice));
            print!(
                ", ping at nice {nice} {:.2} us ({:.2} halts, {:.1} us vCPU CPU)",
                g.us, g.halts, g.cpu_us
            );
            niced.push(g);
        }
        println!();
        threads.push(h);
        guest.push(g);
    }
    let row = |what: &str, v: Vec<f64>, unit: &str| {
        let (med, min, max) = summary(v);
        println!("  {what:<44} {med:>9.2} {unit} (min {min:.2}, max {max:.2})");
    };
    println!("medians over {reps} reps:");
    row("host threads (eventfd), round trip", threads, "us");
    for (what, reps) in [("guests", guest), ("guests, ping niced", niced)] {
        if reps.is_empty() {
            continue;
        }
        row(
            &format!("{what}, round trip"),
            reps.iter().map(|g| g.us).collect(),
            "us",
        );
        row(
            &format!("{what}, halts per round trip"),
            reps.iter().map(|g| g.halts).collect(),
            "  ",
        );
        row(
            &format!("{what}, vCPU CPU time per round trip"),
            reps.iter().map(|g| g.cpu_us).collect(),
            "us",
        );
    }
}

//! The workloads that `benches/channel.rs` times, both under criterion and in paired trials:
//! the client (or producer) on core 0 and the server (or consumer) on core 1, the server
//! started 200 µs before the clock, the time taken over `n` round trips or messages.
//!
//! # Why paired trials
//!
//! On a shared or nested VM the cost of moving a cache line between two vCPUs changes by
//! 2–4× from one second to the next (the host moves the vCPUs between its cores). Criterion
//! measures each benchmark for seconds at its own moment, so the ratio of two of its figures
//! mixes the two moments. [`paired_report`] runs every workload for a few milliseconds, one
//! after the other, in each of many trials, and reports the median of the per-trial ratios:
//! both sides of each ratio saw the same machine.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use compart_channel::host::{pin_current_thread, SharedMemory};
use compart_channel::{
    initialize, ChannelError, Endpoint, NoKick, PairConfig, PairLayout, Region, Side,
};

/// Round trips: 64 slots (as for `rtrb` and crossbeam), so that the ring stays in cache.
pub const RT_CONFIG: PairConfig = PairConfig::new(64, 64, 64);
/// One-way throughput: deep queues.
pub const ONE_WAY_DEPTH: u32 = 1024;
pub const ONE_WAY_CONFIG: PairConfig = PairConfig::new(ONE_WAY_DEPTH, 64, 64);
pub const CLIENT_CORE: usize = 0;
pub const SERVER_CORE: usize = 1;

/// A workload: the time `n` round trips or messages take.
pub type Workload = fn(u64) -> Duration;

/// The 64-byte message the other queues carry.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct Msg(pub [u64; 8]);

/// A cache line to itself.
#[repr(align(128))]
pub struct Line(pub AtomicU64);

/// One 64-byte slot of a bare ring.
#[repr(align(64))]
pub struct Slot(pub AtomicU64);

/// Pin the calling thread (unless COMPART_BENCH_NO_PIN is set). A machine without that core
/// refuses; then the thread stays where it is.
pub fn pin(core: usize) {
    if std::env::var_os("COMPART_BENCH_NO_PIN").is_none() {
        let _ = pin_current_thread(core);
    }
}

/// A fresh, initialised channel pair.
pub fn fresh_pair(config: &PairConfig) -> (Arc<SharedMemory>, Region) {
    let size = PairLayout::new(config).unwrap().size();
    let mem = Arc::new(SharedMemory::create("bench", size).unwrap());
    let region = mem.region();
    initialize(&region, config).unwrap();
    (mem, region)
}

/// A fresh channel pair and its two endpoints: the server (side B) and the client (side A).
pub fn endpoints(config: &PairConfig) -> (Arc<SharedMemory>, Endpoint<NoKick>, Endpoint<NoKick>) {
    let (mem, region) = fresh_pair(config);
    let server = Endpoint::attach(region, Side::B, NoKick).unwrap();
    let client = Endpoint::attach(region, Side::A, NoKick).unwrap();
    (mem, server, client)
}

/// Run `server` on the server core while the caller (on the client core) runs `client`;
/// the elapsed time covers both up to the server's completion.
pub fn two_threads<S, C>(server: S, client: C) -> Duration
where
    S: FnOnce() + Send + 'static,
    C: FnOnce(),
{
    let h = thread::spawn(move || {
        pin(SERVER_CORE);
        server();
    });
    // Let the server thread get going (pinned and spinning) before timing.
    thread::sleep(Duration::from_micros(200));
    let start = Instant::now();
    client();
    h.join().unwrap();
    start.elapsed()
}

/// The physical floor of a round trip: one cache line each way, bare atomics.
pub fn floor(n: u64) -> Duration {
    let ping = Arc::new(Line(AtomicU64::new(0)));
    let pong = Arc::new(Line(AtomicU64::new(0)));
    let (ping2, pong2) = (ping.clone(), pong.clone());
    two_threads(
        move || {
            for i in 1..=n {
                while ping2.0.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
                pong2.0.store(i, Ordering::Release);
            }
        },
        || {
            for i in 1..=n {
                ping.0.store(i, Ordering::Release);
                while pong.0.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
            }
        },
    )
}

/// The physical cost of a ring: the floor's loop, but each direction moves on to the next
/// of 64 cache lines with every message, as a 64-slot ring does. On the development
/// machine, lines a lap old cost more to hand over than one line handed back and forth.
pub fn ring_floor(n: u64) -> Duration {
    const DEPTH: usize = 64;
    let ring = || {
        Arc::new(
            (0..DEPTH)
                .map(|_| Slot(AtomicU64::new(0)))
                .collect::<Vec<_>>(),
        )
    };
    let (ping, pong) = (ring(), ring());
    let (ping2, pong2) = (ping.clone(), pong.clone());
    two_threads(
        move || {
            for i in 1..=n {
                let k = i as usize % DEPTH;
                while ping2[k].0.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
                pong2[k].0.store(i, Ordering::Release);
            }
        },
        || {
            for i in 1..=n {
                let k = i as usize % DEPTH;
                ping[k].0.store(i, Ordering::Release);
                while pong[k].0.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
            }
        },
    )
}

/// A compart request and its reply.
pub fn compart_request_reply(n: u64) -> Duration {
    let (_mem, mut server, mut client) = endpoints(&RT_CONFIG);
    two_threads(
        move || {
            let mut k = 0;
            while k < n {
                match server.poll_request().unwrap() {
                    Some(r) => {
                        let v = r.inline()[0];
                        server.reply(r, 0, [v, 0, 0, 0, 0], &[]).unwrap();
                        k += 1;
                    }
                    None => std::hint::spin_loop(),
                }
            }
            server.flush().unwrap();
        },
        || {
            for i in 0..n {
                client.send_request(1, [i, 0, 0, 0, 0], &[]).unwrap();
                loop {
                    if let Some(rep) = client.poll_reply().unwrap() {
                        black_box(rep.inline()[0]);
                        client.free(rep).unwrap();
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
        },
    )
}

/// One-way compart messages used as a ping-pong: the rings' round trip without the request
/// database.
pub fn compart_oneway_ping_pong(n: u64) -> Duration {
    let (_mem, mut server, mut client) = endpoints(&RT_CONFIG);
    two_threads(
        move || {
            let mut k = 0;
            while k < n {
                match server.poll_request().unwrap() {
                    Some(r) => {
                        server.send_oneway(2, *r.inline()).unwrap();
                        k += 1;
                    }
                    None => std::hint::spin_loop(),
                }
            }
            server.flush().unwrap();
        },
        || {
            for i in 0..n {
                client.send_oneway(1, [i, 0, 0, 0, 0]).unwrap();
                loop {
                    if let Some(m) = client.poll_request().unwrap() {
                        black_box(m.inline()[0]);
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
        },
    )
}

/// An `rtrb` queue each way, 64-byte messages.
pub fn rtrb_pair(n: u64) -> Duration {
    let (mut p1, mut c1) = rtrb::RingBuffer::<Msg>::new(64);
    let (mut p2, mut c2) = rtrb::RingBuffer::<Msg>::new(64);
    two_threads(
        move || {
            let mut k = 0;
            while k < n {
                match c1.pop() {
                    Ok(m) => {
                        let _ = p2.push(m);
                        k += 1;
                    }
                    Err(_) => std::hint::spin_loop(),
                }
            }
        },
        || {
            for i in 0..n {
                let _ = p1.push(Msg([i, 0, 0, 0, 0, 0, 0, 0]));
                loop {
                    if let Ok(m) = c2.pop() {
                        black_box(m.0[0]);
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
        },
    )
}

/// A bounded crossbeam channel each way, 64-byte messages.
pub fn crossbeam_pair(n: u64) -> Duration {
    let (s1, r1) = crossbeam_channel::bounded::<Msg>(64);
    let (s2, r2) = crossbeam_channel::bounded::<Msg>(64);
    two_threads(
        move || {
            for _ in 0..n {
                let m = r1.recv().unwrap();
                s2.send(m).unwrap();
            }
        },
        || {
            for i in 0..n {
                s1.send(Msg([i, 0, 0, 0, 0, 0, 0, 0])).unwrap();
                black_box(r2.recv().unwrap().0[0]);
            }
        },
    )
}

/// `n` one-way compart messages from the client core to the server core.
pub fn compart_one_way(n: u64) -> Duration {
    let (_mem, mut rx, mut tx) = endpoints(&ONE_WAY_CONFIG);
    two_threads(
        move || {
            let mut k = 0;
            while k < n {
                match rx.poll_request().unwrap() {
                    Some(r) => {
                        black_box(r.inline()[0]);
                        k += 1;
                    }
                    None => std::hint::spin_loop(),
                }
            }
        },
        || {
            for i in 0..n {
                loop {
                    match tx.send_oneway(1, [i, 0, 0, 0, 0]) {
                        Ok(()) => break,
                        Err(ChannelError::Full) => std::hint::spin_loop(),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            tx.flush().unwrap();
        },
    )
}

/// `n` one-way 64-byte `rtrb` messages from the client core to the server core.
pub fn rtrb_one_way(n: u64) -> Duration {
    let (mut p, mut q) = rtrb::RingBuffer::<Msg>::new(ONE_WAY_DEPTH as usize);
    two_threads(
        move || {
            let mut k = 0;
            while k < n {
                match q.pop() {
                    Ok(m) => {
                        black_box(m.0[0]);
                        k += 1;
                    }
                    Err(_) => std::hint::spin_loop(),
                }
            }
        },
        || {
            for i in 0..n {
                let mut m = Msg([i, 0, 0, 0, 0, 0, 0, 0]);
                while let Err(rtrb::PushError::Full(back)) = p.push(m) {
                    m = back;
                    std::hint::spin_loop();
                }
            }
        },
    )
}

/// `n` one-way 64-byte messages through a bounded crossbeam channel.
pub fn crossbeam_one_way(n: u64) -> Duration {
    let (s, r) = crossbeam_channel::bounded::<Msg>(ONE_WAY_DEPTH as usize);
    two_threads(
        move || {
            for _ in 0..n {
                black_box(r.recv().unwrap().0[0]);
            }
        },
        || {
            for i in 0..n {
                s.send(Msg([i, 0, 0, 0, 0, 0, 0, 0])).unwrap();
            }
        },
    )
}

/// Quartiles (p25, median, p75) of `v`.
fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: usize| v[(v.len() - 1) * q / 4];
    [at(1), at(2), at(3)]
}

/// Run `workloads` (`n` each) one after the other in each of `trials` trials, rotating their
/// order from trial to trial; returns each workload's per-trial time per item, in ns.
fn trials(workloads: &[Workload], n: u64, trials: usize) -> Vec<Vec<f64>> {
    let mut per = vec![Vec::with_capacity(trials); workloads.len()];
    for t in 0..trials {
        for k in 0..workloads.len() {
            let w = (k + t) % workloads.len();
            per[w].push(workloads[w](n).as_nanos() as f64 / n as f64);
        }
    }
    per
}

/// The paired comparison: round trips against the cache-line floor, one-way throughput
/// against `rtrb`, each as the median (and quartiles) of per-trial ratios. Trials:
/// `COMPART_BENCH_TRIALS` (default 60).
pub fn paired_report() {
    pin(CLIENT_CORE);
    let n_trials = std::env::var("COMPART_BENCH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60usize)
        .max(1);
    let fmt = |q: [f64; 3]| format!("{:>7.1} {:>7.1} {:>7.1}", q[0], q[1], q[2]);
    let fmt2 = |q: [f64; 3]| format!("{:>6.2} {:>6.2} {:>6.2}", q[0], q[1], q[2]);

    let rt: [(&str, Workload); 6] = [
        ("ping-pong floor", floor),
        ("64-line ring floor", ring_floor),
        ("compart request-reply", compart_request_reply),
        ("compart one-way ping-pong", compart_oneway_ping_pong),
        ("rtrb", rtrb_pair),
        ("crossbeam-channel", crossbeam_pair),
    ];
    let n = 20_000;
    let per = trials(&rt.map(|(_, w)| w), n, n_trials);
    println!();
    println!("paired round trips, 64-byte messages: {n_trials} trials of {n} round trips");
    println!(
        "{:<27} {:>23}   {:>20}",
        "", "ns per round trip", "÷ floor, per trial"
    );
    println!(
        "{:<27} {:>7} {:>7} {:>7}   {:>6} {:>6} {:>6}",
        "", "p25", "median", "p75", "p25", "median", "p75"
    );
    for (k, (name, _)) in rt.iter().enumerate() {
        let ratio: Vec<f64> = per[k].iter().zip(&per[0]).map(|(a, f)| a / f).collect();
        println!(
            "{name:<27} {}   {}",
            fmt(quartiles(per[k].clone())),
            fmt2(quartiles(ratio))
        );
    }

    let ow: [(&str, Workload); 3] = [
        ("compart", compart_one_way),
        ("rtrb", rtrb_one_way),
        ("crossbeam-channel", crossbeam_one_way),
    ];
    let n = 200_000;
    let per = trials(&ow.map(|(_, w)| w), n, n_trials);
    println!();
    println!("paired one-way throughput, 64-byte messages: {n_trials} trials of {n} messages");
    println!(
        "{:<27} {:>23}   {:>20}",
        "", "M messages/s", "÷ rtrb, per trial"
    );
    println!(
        "{:<27} {:>7} {:>7} {:>7}   {:>6} {:>6} {:>6}",
        "", "p25", "median", "p75", "p25", "median", "p75"
    );
    let rate = |v: &Vec<f64>| v.iter().map(|ns| 1e3 / ns).collect::<Vec<f64>>();
    for (k, (name, _)) in ow.iter().enumerate() {
        let ratio: Vec<f64> = per[1].iter().zip(&per[k]).map(|(r, a)| r / a).collect();
        println!(
            "{name:<27} {}   {}",
            fmt(quartiles(rate(&per[k]))),
            fmt2(quartiles(ratio))
        );
    }
}

//! 64-byte messages between two threads pinned to different cores: one-way throughput and
//! round-trip latency of compart channels, `rtrb` and `crossbeam-channel`, and a bare
//! cache-line ping-pong as the physical floor of a round trip.
//!
//! `cargo bench -p compart-channel --bench channel` (≈ 1 minute).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use compart_channel::host::{pin_current_thread, SharedMemory};
use compart_channel::{initialize, ChannelError, Endpoint, NoKick, PairConfig, PairLayout, Side};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const DEPTH: u32 = 1024;
/// Throughput: deep queues. Round trips: 64 slots (as for `rtrb` and crossbeam), so that
/// the ring stays in cache.
const CONFIG: PairConfig = PairConfig::new(DEPTH, 64, 64);
const RT_CONFIG: PairConfig = PairConfig::new(64, 64, 64);
const CLIENT_CORE: usize = 0;
const SERVER_CORE: usize = 1;

/// The 64-byte message the other queues carry.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Msg([u64; 8]);

#[repr(align(128))]
struct Line(AtomicU64);

/// Pin the calling thread (unless COMPART_BENCH_NO_PIN is set). A machine without that core
/// refuses; then the thread stays where it is.
fn pin(core: usize) {
    if std::env::var_os("COMPART_BENCH_NO_PIN").is_none() {
        let _ = pin_current_thread(core);
    }
}

fn fresh_pair(config: &PairConfig) -> (Arc<SharedMemory>, compart_channel::Region) {
    let size = PairLayout::new(config).unwrap().size();
    let mem = Arc::new(SharedMemory::create("bench", size).unwrap());
    let region = mem.region();
    initialize(&region, config).unwrap();
    (mem, region)
}

/// Run `server` on the server core while the caller (on the client core) runs `client`;
/// the elapsed time covers both up to the server's completion.
fn two_threads<S, C>(server: S, client: C) -> Duration
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

fn one_way(c: &mut Criterion) {
    pin(CLIENT_CORE);
    let mut g = c.benchmark_group("one_way_64B");
    g.throughput(Throughput::Elements(1));

    g.bench_function("compart", |b| {
        b.iter_custom(|iters| {
            let (_mem, region) = fresh_pair(&CONFIG);
            let mut rx = Endpoint::attach(region, Side::B, NoKick).unwrap();
            let mut tx = Endpoint::attach(region, Side::A, NoKick).unwrap();
            two_threads(
                move || {
                    let mut n = 0;
                    while n < iters {
                        match rx.poll_request().unwrap() {
                            Some(r) => {
                                black_box(r.inline()[0]);
                                n += 1;
                            }
                            None => std::hint::spin_loop(),
                        }
                    }
                },
                || {
                    for i in 0..iters {
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
        })
    });

    g.bench_function("rtrb", |b| {
        b.iter_custom(|iters| {
            let (mut p, mut q) = rtrb::RingBuffer::<Msg>::new(DEPTH as usize);
            two_threads(
                move || {
                    let mut n = 0;
                    while n < iters {
                        match q.pop() {
                            Ok(m) => {
                                black_box(m.0[0]);
                                n += 1;
                            }
                            Err(_) => std::hint::spin_loop(),
                        }
                    }
                },
                || {
                    for i in 0..iters {
                        let mut m = Msg([i, 0, 0, 0, 0, 0, 0, 0]);
                        while let Err(rtrb::PushError::Full(back)) = p.push(m) {
                            m = back;
                            std::hint::spin_loop();
                        }
                    }
                },
            )
        })
    });

    g.bench_function("crossbeam-channel", |b| {
        b.iter_custom(|iters| {
            let (s, r) = crossbeam_channel::bounded::<Msg>(DEPTH as usize);
            two_threads(
                move || {
                    for _ in 0..iters {
                        black_box(r.recv().unwrap().0[0]);
                    }
                },
                || {
                    for i in 0..iters {
                        s.send(Msg([i, 0, 0, 0, 0, 0, 0, 0])).unwrap();
                    }
                },
            )
        })
    });
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    pin(CLIENT_CORE);
    let mut g = c.benchmark_group("round_trip_64B");
    g.throughput(Throughput::Elements(1));

    g.bench_function("ping-pong floor", |b| {
        b.iter_custom(|iters| {
            let ping = Arc::new(Line(AtomicU64::new(0)));
            let pong = Arc::new(Line(AtomicU64::new(0)));
            let (ping2, pong2) = (ping.clone(), pong.clone());
            two_threads(
                move || {
                    for i in 1..=iters {
                        while ping2.0.load(Ordering::Acquire) != i {
                            std::hint::spin_loop();
                        }
                        pong2.0.store(i, Ordering::Release);
                    }
                },
                || {
                    for i in 1..=iters {
                        ping.0.store(i, Ordering::Release);
                        while pong.0.load(Ordering::Acquire) != i {
                            std::hint::spin_loop();
                        }
                    }
                },
            )
        })
    });

    g.bench_function("compart request-reply", |b| {
        b.iter_custom(|iters| {
            let (_mem, region) = fresh_pair(&RT_CONFIG);
            let mut server = Endpoint::attach(region, Side::B, NoKick).unwrap();
            let mut client = Endpoint::attach(region, Side::A, NoKick).unwrap();
            client.set_publish_batch(1);
            server.set_publish_batch(1);
            two_threads(
                move || {
                    let mut n = 0;
                    while n < iters {
                        match server.poll_request().unwrap() {
                            Some(r) => {
                                let v = r.inline()[0];
                                // Published by the next poll, which is immediate.
                                server.reply(r, 0, [v, 0, 0, 0, 0], &[]).unwrap();
                                n += 1;
                            }
                            None => std::hint::spin_loop(),
                        }
                    }
                    server.flush().unwrap();
                },
                || {
                    for i in 0..iters {
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
        })
    });

    g.bench_function("compart one-way ping-pong", |b| {
        b.iter_custom(|iters| {
            let (_mem, region) = fresh_pair(&RT_CONFIG);
            let mut server = Endpoint::attach(region, Side::B, NoKick).unwrap();
            let mut client = Endpoint::attach(region, Side::A, NoKick).unwrap();
            client.set_publish_batch(1);
            server.set_publish_batch(1);
            two_threads(
                move || {
                    let mut n = 0;
                    while n < iters {
                        match server.poll_request().unwrap() {
                            Some(r) => {
                                server.send_oneway(2, *r.inline()).unwrap();
                                n += 1;
                            }
                            None => std::hint::spin_loop(),
                        }
                    }
                    server.flush().unwrap();
                },
                || {
                    for i in 0..iters {
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
        })
    });

    g.bench_function("rtrb", |b| {
        b.iter_custom(|iters| {
            let (mut p1, mut c1) = rtrb::RingBuffer::<Msg>::new(64);
            let (mut p2, mut c2) = rtrb::RingBuffer::<Msg>::new(64);
            two_threads(
                move || {
                    let mut n = 0;
                    while n < iters {
                        match c1.pop() {
                            Ok(m) => {
                                let _ = p2.push(m);
                                n += 1;
                            }
                            Err(_) => std::hint::spin_loop(),
                        }
                    }
                },
                || {
                    for i in 0..iters {
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
        })
    });

    g.bench_function("crossbeam-channel", |b| {
        b.iter_custom(|iters| {
            let (s1, r1) = crossbeam_channel::bounded::<Msg>(64);
            let (s2, r2) = crossbeam_channel::bounded::<Msg>(64);
            two_threads(
                move || {
                    for _ in 0..iters {
                        let m = r1.recv().unwrap();
                        s2.send(m).unwrap();
                    }
                },
                || {
                    for i in 0..iters {
                        s1.send(Msg([i, 0, 0, 0, 0, 0, 0, 0])).unwrap();
                        black_box(r2.recv().unwrap().0[0]);
                    }
                },
            )
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = one_way, round_trip
}
criterion_main!(benches);

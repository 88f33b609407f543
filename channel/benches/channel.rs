//! 64-byte messages between two threads pinned to different cores: one-way throughput and
//! round-trip latency of compart channels, `rtrb` and `crossbeam-channel`, and a bare
//! cache-line ping-pong as the physical floor of a round trip.
//!
//! `cargo bench -p compart-channel --bench channel` (≈ 1 minute).

use std::hint::black_box;
use std::time::Duration;

use compart_channel::{ChannelError, Endpoint, NoKick, PairConfig, Side};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod common;

use common::{fresh_pair, pin, two_threads, Msg, CLIENT_CORE};

const DEPTH: u32 = 1024;
/// Throughput: deep queues.
const CONFIG: PairConfig = PairConfig::new(DEPTH, 64, 64);
const RT_CONFIG: PairConfig = common::RT_CONFIG;

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

    g.bench_function("ping-pong floor", |b| b.iter_custom(common::floor));

    g.bench_function("compart request-reply", |b| {
        b.iter_custom(common::compart_request_reply)
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

    g.bench_function("rtrb", |b| b.iter_custom(common::rtrb_pair));

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

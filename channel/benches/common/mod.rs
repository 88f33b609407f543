//! The round-trip workloads that both `benches/channel.rs` (under criterion) and
//! `examples/round_trip_pairs.rs` (paired trials) time, kept in one place so that the
//! two always measure the same loops: the client on core 0 and the server on core 1,
//! the server started 200 µs before the clock, the time taken over `n` round trips.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use compart_channel::host::{pin_current_thread, SharedMemory};
use compart_channel::{initialize, Endpoint, NoKick, PairConfig, PairLayout, Region, Side};

/// Round trips: 64 slots (as for `rtrb` and crossbeam), so that the ring stays in cache.
pub const RT_CONFIG: PairConfig = PairConfig::new(64, 64, 64);
pub const CLIENT_CORE: usize = 0;
pub const SERVER_CORE: usize = 1;

/// The 64-byte message the other queues carry.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct Msg(pub [u64; 8]);

/// A cache line to itself.
#[repr(align(128))]
pub struct Line(pub AtomicU64);

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

/// The physical floor: one cache line each way, bare atomics.
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

/// A compart request and its reply, with publication after every message.
pub fn compart_request_reply(n: u64) -> Duration {
    let (_mem, region) = fresh_pair(&RT_CONFIG);
    let mut server = Endpoint::attach(region, Side::B, NoKick).unwrap();
    let mut client = Endpoint::attach(region, Side::A, NoKick).unwrap();
    client.set_publish_batch(1);
    server.set_publish_batch(1);
    two_threads(
        move || {
            let mut k = 0;
            while k < n {
                match server.poll_request().unwrap() {
                    Some(r) => {
                        let v = r.inline()[0];
                        // Published by the next poll, which is immediate.
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

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
    initialize, ChannelError, Endpoint, NoKick, PairConfig, PairLayout, Region, Request, RequestId,
    Side,
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

/// Spin until `f` yields a value.
#[inline(always)]
pub fn spin_until<T>(mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        std::hint::spin_loop();
    }
}

/// The server's loop: take `n` requests from `ep` as they come and `handle` each, then
/// settle the kick check.
#[inline(always)]
pub fn serve(
    ep: &mut Endpoint<NoKick>,
    n: u64,
    mut handle: impl FnMut(&mut Endpoint<NoKick>, Request),
) {
    for _ in 0..n {
        let r = spin_until(|| ep.poll_request().unwrap());
        handle(ep, r);
    }
    ep.flush().unwrap();
}

/// Retry `send` while the queue is full.
#[inline(always)]
pub fn send_retrying(mut send: impl FnMut() -> Result<(), ChannelError>) {
    spin_until(|| match send() {
        Ok(()) => Some(()),
        Err(ChannelError::Full) => None,
        Err(e) => panic!("{e}"),
    })
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
            serve(&mut server, n, |ep, r| {
                let v = r.inline()[0];
                ep.reply(r, 0, [v, 0, 0, 0, 0], &[]).unwrap();
            })
        },
        || {
            for i in 0..n {
                client.send_request(1, [i, 0, 0, 0, 0], &[]).unwrap();
                let rep = spin_until(|| client.poll_reply().unwrap());
                black_box(rep.inline()[0]);
                client.free(rep).unwrap();
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
            serve(&mut server, n, |ep, r| {
                ep.send_oneway(2, *r.inline()).unwrap()
            })
        },
        || {
            for i in 0..n {
                client.send_oneway(1, [i, 0, 0, 0, 0]).unwrap();
                let m = spin_until(|| client.poll_request().unwrap());
                black_box(m.inline()[0]);
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
            for _ in 0..n {
                let m = spin_until(|| c1.pop().ok());
                let _ = p2.push(m);
            }
        },
        || {
            for i in 0..n {
                let _ = p1.push(Msg([i, 0, 0, 0, 0, 0, 0, 0]));
                black_box(spin_until(|| c2.pop().ok()).0[0]);
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
            for _ in 0..n {
                black_box(spin_until(|| rx.poll_request().unwrap()).inline()[0]);
            }
        },
        || {
            for i in 0..n {
                send_retrying(|| tx.send_oneway(1, [i, 0, 0, 0, 0]));
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
            for _ in 0..n {
                black_box(spin_until(|| q.pop().ok()).0[0]);
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

/// 64 KiB segments (NETSTACK.md: every message between servers carries one): buffers of
/// 64 KiB, a window of 64 outstanding requests.
pub const SEGMENT: usize = 1 << 16;
pub const SEGMENT_CONFIG: PairConfig = PairConfig::new(256, 64, SEGMENT as u32);
const WINDOW: usize = 64;

/// The bytes a segment carries: what a server has in private memory to send (a socket
/// buffer, a received frame).
fn segment_source() -> Vec<u8> {
    (0..SEGMENT).map(|i| (i * 7 + 3) as u8).collect()
}

/// The floor of a segment: a bare `copy_nonoverlapping` of 64 KiB from private memory into
/// one of 64 private buffers in turn (4 MiB: as much memory as a pool of 64 buffers).
pub fn memcpy_floor(n: u64) -> Duration {
    let src = segment_source();
    // Written now, so that no page is first touched (faulted in) while timed.
    let mut dst = vec![1u8; SEGMENT * WINDOW];
    let start = Instant::now();
    for i in 0..n as usize {
        let d = &mut dst[i % WINDOW * SEGMENT..][..SEGMENT];
        d.copy_from_slice(black_box(&src));
        black_box(d.as_ptr());
    }
    start.elapsed()
}

/// `Region::write_bytes` of 64 KiB into the 64 pool buffers of one side in turn: the bulk copy
/// the endpoints use (`rep movsb` on x86_64), against `memcpy_floor`.
pub fn region_copy(n: u64) -> Duration {
    let (_mem, region) = fresh_pair(&SEGMENT_CONFIG);
    let pool = PairLayout::new(&SEGMENT_CONFIG).unwrap().side(Side::A).pool;
    let src = segment_source();
    let start = Instant::now();
    for i in 0..n as usize {
        region
            .write_bytes(pool + i % WINDOW * SEGMENT, black_box(&src))
            .unwrap();
    }
    start.elapsed()
}

/// The same copies with 8-byte volatile stores, as `Region::write_bytes` did before it used
/// `rep movsb`.
pub fn volatile_word_copy(n: u64) -> Duration {
    let (_mem, region) = fresh_pair(&SEGMENT_CONFIG);
    let pool = PairLayout::new(&SEGMENT_CONFIG).unwrap().side(Side::A).pool;
    assert!(region.contains(pool, SEGMENT * WINDOW));
    let src = segment_source();
    let start = Instant::now();
    for i in 0..n as usize {
        let base = pool + i % WINDOW * SEGMENT;
        for (k, w) in black_box(&src).chunks_exact(8).enumerate() {
            let v = u64::from_ne_bytes(w.try_into().unwrap());
            // SAFETY: `base + 8k .. + 8` lies inside the pool, which lies inside the region
            // (asserted above); the pool starts page-aligned and SEGMENT is a multiple of 8,
            // so the address is 8-aligned; `_mem` keeps the mapping alive.
            unsafe {
                region
                    .as_ptr()
                    .add(base + 8 * k)
                    .cast::<u64>()
                    .write_volatile(v)
            };
        }
    }
    start.elapsed()
}

/// Keep up to a window of requests in flight: `send` the `n` requests (it gets their
/// number; a full queue or window makes it fail, to be retried), freeing replies as they
/// come, and run `between` at every turn.
fn stream(
    client: &mut Endpoint<NoKick>,
    n: u64,
    mut send: impl FnMut(&mut Endpoint<NoKick>, u64) -> Result<RequestId, ChannelError>,
    mut between: impl FnMut(),
) {
    let (mut sent, mut replied) = (0, 0);
    while replied < n {
        between();
        if sent < n {
            match send(client, sent) {
                Ok(_) => {
                    sent += 1;
                    continue;
                }
                Err(ChannelError::Full | ChannelError::NoFreeRequest) => {}
                Err(e) => panic!("{e}"),
            }
        }
        match client.poll_reply().unwrap() {
            Some(rep) => {
                client.free(rep).unwrap();
                replied += 1;
            }
            None => std::hint::spin_loop(),
        }
    }
    client.flush().unwrap();
}

/// The server of a segment stream: reads the first 64 bytes of each segment (its headers,
/// as a server parses them) and replies without payload (the credit).
fn segment_server(mut server: Endpoint<NoKick>, n: u64) -> impl FnOnce() + Send {
    move || {
        serve(&mut server, n, |ep, r| {
            let mut head = [0u8; 64];
            ep.read_request_payload(&r, &mut head).unwrap();
            black_box(head);
            ep.reply(r, 0, [0; 5], &[]).unwrap();
        })
    }
}

/// 64 KiB segments sent the plain way: built in private memory (a copy from the source),
/// then copied into the pool by `send_request`.
pub fn segment_plain_copy(n: u64) -> Duration {
    let (_mem, server, mut client) = endpoints(&SEGMENT_CONFIG);
    let src = segment_source();
    let mut private = vec![1u8; SEGMENT]; // pages touched before the clock
    two_threads(segment_server(server, n), || {
        stream(
            &mut client,
            n,
            |ep, i| {
                private.copy_from_slice(black_box(&src));
                ep.send_request(1, [i, 0, 0, 0, 0], &private)
            },
            || {},
        )
    })
}

/// 64 KiB segments built in place: one copy from the source into the pool buffer.
pub fn segment_in_place(n: u64) -> Duration {
    let (_mem, server, mut client) = endpoints(&SEGMENT_CONFIG);
    let src = segment_source();
    two_threads(segment_server(server, n), || {
        stream(
            &mut client,
            n,
            |ep, i| {
                ep.send_request_with(1, [i, 0, 0, 0, 0], SEGMENT, |buf| {
                    buf.write(0, black_box(&src))?;
                    Ok(SEGMENT)
                })
            },
            || {},
        )
    })
}

/// A relay between two channels on two cores: the client sends 64 KiB segments in place on
/// channel X; the relay (server core) passes each on into channel Y with `pass`; the client
/// also serves Y (reading each segment's headers, replying); the relay answers X's request
/// when Y's reply comes back. Per segment: the client's copy in, the relay's hop, two round
/// trips of messages.
fn relay(n: u64, mut pass: Hop) -> Duration {
    let (_mx, mut relay_x, mut client_x) = endpoints(&SEGMENT_CONFIG);
    let (_my, mut client_y, mut relay_y) = endpoints(&SEGMENT_CONFIG);
    let src = segment_source();
    two_threads(
        move || {
            // X's requests by the index of their copy on Y (below `max_outstanding`).
            let mut waiting: Vec<Option<Request>> = (0..WINDOW).map(|_| None).collect();
            let mut done = 0;
            while done < n {
                if let Some(req) = relay_x.poll_request().unwrap() {
                    let id = pass(&relay_x, &mut relay_y, &req);
                    waiting[id.index() as usize] = Some(req);
                }
                if let Some(rep) = relay_y.poll_reply().unwrap() {
                    let req = waiting[rep.id().index() as usize].take().unwrap();
                    relay_x.reply(req, 0, [0; 5], &[]).unwrap();
                    relay_y.free(rep).unwrap();
                    done += 1;
                }
            }
            relay_x.flush().unwrap();
            relay_y.flush().unwrap();
        },
        || {
            let mut head = [0u8; 64];
            let mut served = 0;
            stream(
                &mut client_x,
                n,
                |ep, i| {
                    ep.send_request_with(1, [i, 0, 0, 0, 0], SEGMENT, |buf| {
                        buf.write(0, black_box(&src))?;
                        Ok(SEGMENT)
                    })
                },
                || {
                    while let Some(r) = client_y.poll_request().unwrap() {
                        client_y.read_request_payload(&r, &mut head).unwrap();
                        client_y.reply(r, 0, [0; 5], &[]).unwrap();
                        served += 1;
                    }
                },
            );
            // X's replies follow Y's, so every segment was served on Y.
            assert_eq!(served, n);
            client_y.flush().unwrap();
        },
    )
}

/// A relay's hop: pass request `req`, received on `x`, on into `y`; returns the new id.
type Hop = Box<dyn FnMut(&Endpoint<NoKick>, &mut Endpoint<NoKick>, &Request) -> RequestId + Send>;

/// The hop the plain way: read the payload into private memory, send it from there (two
/// copies).
fn hop_copy() -> Hop {
    let mut private = vec![1u8; SEGMENT]; // pages touched before the clock
    Box::new(move |x, y, req| {
        let len = x.read_request_payload(req, &mut private).unwrap();
        y.send_request(2, *req.inline(), &private[..len]).unwrap()
    })
}

/// The hop with `forward`: one copy, pool to pool.
fn hop_forward() -> Hop {
    Box::new(|x, y, req| {
        let p = x.request_payload(req).unwrap();
        y.forward(2, *req.inline(), &p).unwrap()
    })
}

/// The two-thread relay, hopping the plain way.
pub fn relay_plain_copy(n: u64) -> Duration {
    relay(n, hop_copy())
}

/// The two-thread relay, hopping with `forward`.
pub fn relay_forward(n: u64) -> Duration {
    relay(n, hop_forward())
}

/// One thread plays every part, one segment at a time: the client's send in place on X, the
/// relay's hop into Y, the next server's reply on Y (reading 64 bytes of headers), and the
/// replies back. This is the CPU cost of a hop with its buffers in cache; the two-thread
/// relay above is a pipeline, as fast as its slower core.
fn hop_one_thread(n: u64, mut pass: Hop) -> Duration {
    let (_mx, mut relay_x, mut client_x) = endpoints(&SEGMENT_CONFIG);
    let (_my, mut client_y, mut relay_y) = endpoints(&SEGMENT_CONFIG);
    let src = segment_source();
    let mut head = [0u8; 64];
    let start = Instant::now();
    for i in 0..n {
        client_x
            .send_request_with(1, [i, 0, 0, 0, 0], SEGMENT, |buf| {
                buf.write(0, black_box(&src))?;
                Ok(SEGMENT)
            })
            .unwrap();
        let req = relay_x.poll_request().unwrap().unwrap();
        pass(&relay_x, &mut relay_y, &req);
        let r = client_y.poll_request().unwrap().unwrap();
        client_y.read_request_payload(&r, &mut head).unwrap();
        client_y.reply(r, 0, [0; 5], &[]).unwrap();
        let rep = relay_y.poll_reply().unwrap().unwrap();
        relay_y.free(rep).unwrap();
        relay_x.reply(req, 0, [0; 5], &[]).unwrap();
        let rep = client_x.poll_reply().unwrap().unwrap();
        client_x.free(rep).unwrap();
    }
    start.elapsed()
}

/// One thread, hopping the plain way.
pub fn hop_one_thread_plain_copy(n: u64) -> Duration {
    hop_one_thread(n, hop_copy())
}

/// One thread, hopping with `forward`.
pub fn hop_one_thread_forward(n: u64) -> Duration {
    hop_one_thread(n, hop_forward())
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

/// Which paired trials to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sections {
    All,
    /// 64-byte messages only.
    Messages,
    /// 64 KiB segments only.
    Segments,
}

/// The paired comparison: round trips against the cache-line floor, one-way throughput
/// against `rtrb`, 64 KiB segments against a bare memcpy and against the plain copies, each
/// as the median (and quartiles) of per-trial ratios. Trials: `COMPART_BENCH_TRIALS`
/// (default 60).
pub fn paired_report(sections: Sections) {
    pin(CLIENT_CORE);
    let n_trials = std::env::var("COMPART_BENCH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60usize)
        .max(1);

    if sections != Sections::Segments {
        paired_messages(n_trials);
    }
    if sections != Sections::Messages {
        paired_segments(n_trials);
    }
}

fn fmt(q: [f64; 3]) -> String {
    format!("{:>7.1} {:>7.1} {:>7.1}", q[0], q[1], q[2])
}

fn fmt2(q: [f64; 3]) -> String {
    format!("{:>6.2} {:>6.2} {:>6.2}", q[0], q[1], q[2])
}

/// Quartiles of the per-trial ratios `a / b`.
fn ratios(a: &[f64], b: &[f64]) -> [f64; 3] {
    quartiles(a.iter().zip(b).map(|(a, b)| a / b).collect())
}

fn paired_segments(n_trials: usize) {
    let seg: [(&str, Workload); 9] = [
        ("memcpy (floor)", memcpy_floor),
        ("region copy (rep movsb)", region_copy),
        ("volatile 8-byte stores", volatile_word_copy),
        ("send: private, copy in", segment_plain_copy),
        ("send in place", segment_in_place),
        ("relay: copy out, copy in", relay_plain_copy),
        ("relay: forward", relay_forward),
        ("1 thread: copy out, in", hop_one_thread_plain_copy),
        ("1 thread: forward", hop_one_thread_forward),
    ];
    let n = 1000;
    let per = trials(&seg.map(|(_, w)| w), n, n_trials);
    println!();
    println!(
        "paired 64 KiB segments: {n_trials} trials of {n} segments (window {WINDOW}; \
         the relays' times include the client's send in place and the next hop's reply)"
    );
    println!(
        "{:<27} {:>23}   {:>20}   {:>6}",
        "", "ns per segment", "÷ memcpy, per trial", "GB/s"
    );
    println!(
        "{:<27} {:>7} {:>7} {:>7}   {:>6} {:>6} {:>6}   {:>6}",
        "", "p25", "median", "p75", "p25", "median", "p75", "median"
    );
    for (k, (name, _)) in seg.iter().enumerate() {
        let q = quartiles(per[k].clone());
        println!(
            "{name:<27} {}   {}   {:>6.1}",
            fmt(q),
            fmt2(ratios(&per[k], &per[0])),
            SEGMENT as f64 / q[1]
        );
    }
    println!();
    println!(
        "{:<47} {:>6} {:>6} {:>6}",
        "per-trial ratios", "p25", "median", "p75"
    );
    for (what, a, b) in [
        ("region copy ÷ volatile 8-byte stores", 1, 2),
        ("send in place ÷ send: private, copy in", 4, 3),
        ("relay: forward ÷ relay: copy out, copy in", 6, 5),
        ("1 thread: forward ÷ 1 thread: copy out, in", 8, 7),
    ] {
        println!("{what:<47} {}", fmt2(ratios(&per[a], &per[b])));
    }
}

fn paired_messages(n_trials: usize) {
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

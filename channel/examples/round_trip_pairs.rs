//! Paired round-trip measurement: the ping-pong floor, a compart request→reply and an
//! `rtrb` queue pair, run one after the other in each of 40 trials, so that all three see the
//! same machine state. On a shared or nested VM the cross-core latency itself changes by 4×
//! from one moment to the next (vCPU placement on the host); criterion measures each benchmark
//! at a different moment, so the ratio of two of its figures can be off by that much, while
//! the per-trial ratios here are not. Same pinning (client core 0, server core 1), same loop
//! structure and timing as `benches/channel.rs`.
//!
//! `cargo run --release -p compart-channel --example round_trip_pairs`
use compart_channel::host::{pin_current_thread, SharedMemory};
use compart_channel::{initialize, Endpoint, NoKick, PairConfig, PairLayout, Side};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[repr(align(128))]
struct Line(AtomicU64);

fn floor(n: u64) -> f64 {
    let ping = Arc::new(Line(AtomicU64::new(0)));
    let pong = Arc::new(Line(AtomicU64::new(0)));
    let (p2, q2) = (ping.clone(), pong.clone());
    let h = std::thread::spawn(move || {
        let _ = pin_current_thread(1);
        for i in 1..=n {
            while p2.0.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            q2.0.store(i, Ordering::Release);
        }
    });
    std::thread::sleep(std::time::Duration::from_micros(200));
    let t = Instant::now();
    for i in 1..=n {
        ping.0.store(i, Ordering::Release);
        while pong.0.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
    }
    h.join().unwrap();
    t.elapsed().as_nanos() as f64 / n as f64
}

fn compart(n: u64) -> f64 {
    let config = PairConfig::new(64, 64, 64);
    let size = PairLayout::new(&config).unwrap().size();
    let mem = Arc::new(SharedMemory::create("rt", size).unwrap());
    let region = mem.region();
    initialize(&region, &config).unwrap();
    let mut server = Endpoint::attach(region, Side::B, NoKick).unwrap();
    let mut client = Endpoint::attach(region, Side::A, NoKick).unwrap();
    client.set_publish_batch(1);
    server.set_publish_batch(1);
    let m2 = mem.clone();
    let h = std::thread::spawn(move || {
        let _m = m2;
        let _ = pin_current_thread(1);
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
    });
    std::thread::sleep(std::time::Duration::from_micros(200));
    let t = Instant::now();
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
    h.join().unwrap();
    t.elapsed().as_nanos() as f64 / n as f64
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Msg([u64; 8]);

fn rtrb_pair(n: u64) -> f64 {
    let (mut p1, mut c1) = rtrb::RingBuffer::<Msg>::new(64);
    let (mut p2, mut c2) = rtrb::RingBuffer::<Msg>::new(64);
    let h = std::thread::spawn(move || {
        let _ = pin_current_thread(1);
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
    });
    std::thread::sleep(std::time::Duration::from_micros(200));
    let t = Instant::now();
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
    h.join().unwrap();
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let _ = pin_current_thread(0);
    let n = 200_000;
    let (mut f, mut c, mut q, mut rc, mut rq) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..40 {
        let a = floor(n);
        let b = compart(n);
        let d = rtrb_pair(n);
        f.push(a);
        c.push(b);
        q.push(d);
        rc.push(b / a);
        rq.push(d / a);
    }
    for v in [&mut f, &mut c, &mut q, &mut rc, &mut rq] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    let s = |v: &Vec<f64>| (v[0], v[v.len() / 4], v[v.len() / 2]);
    println!("min / p25 / median over 40 trials of {n} round trips");
    println!("ping-pong floor           ns: {:.1?}", s(&f));
    println!("compart request-reply     ns: {:.1?}", s(&c));
    println!("rtrb pair                 ns: {:.1?}", s(&q));
    println!("compart / floor, per trial  : {:.2?}", s(&rc));
    println!("rtrb / floor, per trial     : {:.2?}", s(&rq));
}

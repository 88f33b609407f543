//! Paired round-trip measurement: the ping-pong floor, a compart request→reply and an
//! `rtrb` queue pair, run one after the other in each of 40 trials, so that all three see the
//! same machine state. On a shared or nested VM the cross-core latency itself changes by 4×
//! from one moment to the next (vCPU placement on the host); criterion measures each benchmark
//! at a different moment, so the ratio of two of its figures can be off by that much, while
//! the per-trial ratios here are not. Same pinning (client core 0, server core 1), same loops and
//! timing as `benches/channel.rs` (both use `benches/common`).
//!
//! `cargo run --release -p compart-channel --example round_trip_pairs`
#[path = "../benches/common/mod.rs"]
mod common;

fn per_round_trip(n: u64, run: fn(u64) -> std::time::Duration) -> f64 {
    run(n).as_nanos() as f64 / n as f64
}

fn main() {
    common::pin(common::CLIENT_CORE);
    let n = 200_000;
    let (mut f, mut c, mut q, mut rc, mut rq) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..40 {
        let a = per_round_trip(n, common::floor);
        let b = per_round_trip(n, common::compart_request_reply);
        let d = per_round_trip(n, common::rtrb_pair);
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

//! P-state benchmark on the soft backend: for every step of the host's ladder, the
//! wall time of a fixed compute loop against P0's in the same run (expected: f0/f
//! times longer; P0 is measured first, as a warm-up, and last) and the guest's own
//! APERF/MPERF; and the switch latency from a
//! guest's PERF_CTL write to the new speed in effect.
//!
//! `cargo bench -p compart-tests --bench pstate` (COMPART_BENCH_RUNS, default 3).

use compart_tests::{require_kvm, topology, Capture};

fn field(line: &str, key: &str) -> u64 {
    let rest = &line[line.find(key).unwrap() + key.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

fn main() {
    if !require_kvm() {
        return;
    }
    let runs = compart_tests::bench_runs(3);
    let host = compart_vmm::host_facts();
    let ladder = host.host_ladder.clone();
    let n = ladder.len();
    let all: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let core = host.online_cores.last().unwrap().0;
    let t = topology(&format!(
        "[pstates]\nbackend = \"soft\"\n[[guest]]\nname = \"bench\"\nrole = \"app\"\nimage = \"selftest\"\n\
         cores = [{core}]\ncmdline = \"freq=0,{},0 switch=400\"\n",
        all.join(",")
    ));
    let mut loop_us = vec![u64::MAX; n];
    let mut permille = vec![Vec::new(); n];
    let mut switch = Vec::new();
    for _ in 0..runs {
        let capture = Capture::default();
        compart_vmm::start(&t, capture.sink()).unwrap().wait();
        for l in capture.of("bench") {
            if let Some(rest) = l.strip_prefix("freq P") {
                let p: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
                loop_us[p] = loop_us[p].min(field(&l, " loop "));
                permille[p].push(field(&l, " aperf/mperf "));
            } else if l.starts_with("switch ") {
                switch.push(l);
            }
        }
    }
    println!(
        "soft scaling accuracy (best of {runs} runs; baseline P0 in the same run; period 10 ms)"
    );
    println!("  state     MHz  expected×  measured×   error   APERF/MPERF‰ (expected)");
    let f0 = f64::from(ladder.p0().frequency.0);
    for (i, s) in ladder.states().iter().enumerate() {
        let f = f64::from(s.frequency.0);
        let expected = f0 / f;
        let measured = loop_us[i] as f64 / loop_us[0] as f64;
        let am = permille[i].iter().sum::<u64>() as f64 / permille[i].len().max(1) as f64;
        println!(
            "  P{i}    {:6}   {expected:7.3}    {measured:7.3}  {:+6.2} %   {am:7.1} ({:.1})",
            s.frequency.0,
            (measured / expected - 1.0) * 100.0,
            f / f0 * 1000.0
        );
    }
    println!(
        "P-state switch latency, P0 <-> P{} (guest PERF_CTL write to return, new state in effect):",
        n - 1
    );
    for s in switch {
        println!("  {s}");
    }
}

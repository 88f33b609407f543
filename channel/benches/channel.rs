//! Between two threads pinned to different cores: 64-byte messages (one-way throughput and
//! round-trip latency of compart channels, `rtrb` and `crossbeam-channel`, and a bare
//! cache-line ping-pong as the physical floor of a round trip), and 64 KiB segments (sent
//! in place or built privately and copied in, relayed into a second channel with `forward`
//! or by copying out and in, against a bare memcpy as the floor).
//!
//! `cargo bench -p compart-channel --bench channel` (≈ 2 minutes) runs criterion on every
//! workload, then the paired trials of `common::paired_report`, whose per-trial ratios are
//! the like-for-like comparison on a machine whose speed changes while criterion runs. A
//! filter argument runs only the criterion benchmarks it matches; the filter `paired` runs
//! only the paired trials, `paired-64B` and `paired-64KiB` only those of one size.

use std::time::Duration;

use criterion::{Criterion, Throughput};

mod common;

use common::{pin, Sections, Workload, CLIENT_CORE};

fn group(c: &mut Criterion, name: &str, workloads: &[(&str, Workload)]) {
    pin(CLIENT_CORE);
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    for &(id, w) in workloads {
        g.bench_function(id, |b| b.iter_custom(w));
    }
    g.finish();
}

fn one_way(c: &mut Criterion) {
    group(
        c,
        "one_way_64B",
        &[
            ("compart", common::compart_one_way),
            ("rtrb", common::rtrb_one_way),
            ("crossbeam-channel", common::crossbeam_one_way),
        ],
    );
}

fn round_trip(c: &mut Criterion) {
    group(
        c,
        "round_trip_64B",
        &[
            ("ping-pong floor", common::floor),
            ("64-line ring floor", common::ring_floor),
            ("compart request-reply", common::compart_request_reply),
            (
                "compart one-way ping-pong",
                common::compart_oneway_ping_pong,
            ),
            ("rtrb", common::rtrb_pair),
            ("crossbeam-channel", common::crossbeam_pair),
        ],
    );
}

fn segments(c: &mut Criterion) {
    pin(CLIENT_CORE);
    let mut g = c.benchmark_group("segment_64KiB");
    g.throughput(Throughput::Bytes(common::SEGMENT as u64));
    for (id, w) in [
        ("memcpy floor", common::memcpy_floor as Workload),
        ("region copy", common::region_copy),
        ("send plain copy", common::segment_plain_copy),
        ("send in place", common::segment_in_place),
        ("relay plain copy", common::relay_plain_copy),
        ("relay forward", common::relay_forward),
        (
            "one-thread hop plain copy",
            common::hop_one_thread_plain_copy,
        ),
        ("one-thread hop forward", common::hop_one_thread_forward),
    ] {
        g.bench_function(id, |b| b.iter_custom(w));
    }
    g.finish();
}

fn main() {
    // The first argument that is not an option is criterion's filter.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    if !filter.starts_with("paired") {
        let mut c = Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .configure_from_args();
        one_way(&mut c);
        round_trip(&mut c);
        segments(&mut c);
        c.final_summary();
    }
    match filter.as_str() {
        "" | "paired" => common::paired_report(Sections::All),
        "paired-64B" => common::paired_report(Sections::Messages),
        "paired-64KiB" => common::paired_report(Sections::Segments),
        _ => {}
    }
}

//! Model check of the placement page's sequence lock (`compart_abi::placement`) with
//! loom: over every interleaving (and every allowed weak-memory outcome) of the writer
//! and a reader, a reader that accepts what it read never holds a torn entry.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p compart-abi --release --test loom`
//!
//! The page is modelled by loom atomics: the generation, and two words of vCPU 0's
//! entry (`poll_us` and `host_cores[0]`) that every write sets to the same value, so a
//! torn read shows as two different values. The protocol steps are the crate's own
//! generic functions; the negative controls drop one fence each and must be caught.
#![cfg(loom)]

use compart_abi::placement::{self, Look, PageAccess};
use compart_abi::{PlacementEntry, PlacementPage};
use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;

/// The modelled page; `WRITER_FENCE`/`READER_FENCE` false make the release (writer)
/// or acquire (reader) fence a no-op, for the negative controls.
struct Page<const WRITER_FENCE: bool, const READER_FENCE: bool> {
    generation: AtomicU64,
    poll_us: AtomicU32,
    core: AtomicU32,
}

impl<const W: bool, const R: bool> PageAccess for Page<W, R> {
    fn load_generation(&self, order: Ordering) -> u64 {
        self.generation.load(order)
    }
    fn store_generation(&self, value: u64, order: Ordering) {
        self.generation.store(value, order)
    }
    fn fence(order: Ordering) {
        let dropped = match order {
            Ordering::Release => !W,
            Ordering::Acquire => !R,
            _ => false,
        };
        if !dropped {
            fence(order);
        }
    }
    fn store_fields(&self, page: &PlacementPage) {
        self.poll_us.store(page.vcpus[0].poll_us, Ordering::Relaxed);
        self.core
            .store(page.vcpus[0].host_cores[0], Ordering::Relaxed);
    }
    fn load_entry(&self, vcpu: usize) -> (u64, u32, PlacementEntry) {
        assert_eq!(vcpu, 0);
        let mut e = PlacementEntry::EMPTY;
        e.poll_us = self.poll_us.load(Ordering::Relaxed);
        e.host_cores[0] = self.core.load(Ordering::Relaxed);
        (PlacementPage::MAGIC, 1, e)
    }
}

fn entry(v: u32) -> PlacementEntry {
    let mut e = PlacementEntry::EMPTY;
    e.poll_us = v;
    e.host_cores[0] = v;
    e
}

/// The writer rewrites the page `writes` times (values 1, 2, …) while a reader looks
/// twice; every look it accepts must be untorn and no older than one it accepted
/// before, and after the writer is done the last write is what a look finds.
fn model<const W: bool, const R: bool>(writes: u32) {
    let mut builder = loom::model::Builder::new();
    // Bounded preemptions keep the search to seconds, as in the channel's model;
    // LOOM_MAX_PREEMPTIONS overrides it.
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(move || {
        let page = Arc::new(Page::<W, R> {
            generation: AtomicU64::new(0),
            poll_us: AtomicU32::new(0),
            core: AtomicU32::new(0),
        });
        let writer = {
            let page = page.clone();
            thread::spawn(move || {
                for v in 1..=writes {
                    placement::write(&*page, &[entry(v)]);
                }
            })
        };
        let mut last = 0;
        for _ in 0..2 {
            match placement::look(&*page, 0) {
                Look::Entry(e) => {
                    assert_eq!(e.poll_us, e.host_cores[0], "torn entry accepted");
                    assert!(e.poll_us >= last, "an older entry after a newer one");
                    last = e.poll_us;
                }
                Look::Busy => {}
                Look::Absent => panic!("the page always has vCPU 0"),
            }
        }
        writer.join().unwrap();
        assert_eq!(placement::look(&*page, 0), Look::Entry(entry(writes)));
    });
}

#[test]
fn a_reader_never_accepts_a_torn_entry_during_one_write() {
    model::<true, true>(1);
}

#[test]
fn a_reader_never_accepts_a_torn_or_older_entry_during_two_writes() {
    model::<true, true>(2);
}

#[test]
#[should_panic(expected = "torn entry accepted")]
fn the_model_catches_a_missing_writer_fence() {
    model::<false, true>(1);
}

#[test]
#[should_panic(expected = "torn entry accepted")]
fn the_model_catches_a_missing_reader_fence() {
    model::<true, false>(1);
}

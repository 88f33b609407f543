//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use compart_channel::{initialize, Notifier, PairConfig, PairLayout, Region};

/// Page-aligned, heap-allocated memory for a region.
#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

/// A region in private memory, with its backing store.
pub struct Mem {
    pages: Vec<Page>,
    pub region: Region,
    pub layout: PairLayout,
}

impl Mem {
    /// A fresh, initialised region for `config`.
    pub fn new(config: PairConfig) -> Mem {
        let size = PairLayout::new(&config).unwrap().size();
        let mut pages: Vec<Page> = (0..size.div_ceil(4096)).map(|_| Page([0; 4096])).collect();
        // SAFETY: `pages` lives as long as `Mem` and is only accessed through the region.
        let region = unsafe { Region::from_raw(pages.as_mut_ptr().cast(), size) }.unwrap();
        let layout = initialize(&region, &config).unwrap();
        Mem {
            pages,
            region,
            layout,
        }
    }
}

/// A notifier that counts kicks and passes them on.
#[derive(Debug)]
pub struct CountingKick<N>(pub AtomicU64, pub N);

impl<N: Notifier> Notifier for CountingKick<N> {
    fn kick(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
        self.1.kick();
    }
}

impl<N> CountingKick<N> {
    pub fn new(n: N) -> Self {
        CountingKick(AtomicU64::new(0), n)
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A notifier for single-threaded tests, counting kicks.
#[derive(Debug, Default)]
pub struct LocalKick(pub Cell<u64>);

impl Notifier for LocalKick {
    fn kick(&self) {
        self.0.set(self.0.get() + 1);
    }
}

/// A deadline for bounding test loops.
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline(Instant::now() + d)
    }

    /// Panics (failing the test) once the deadline has passed.
    #[track_caller]
    pub fn check(&self, what: &str) {
        assert!(Instant::now() < self.0, "timed out: {what}");
    }
}

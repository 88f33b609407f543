//! Events a guest causes (a refused MSR write, a P-state change, later a bad
//! descriptor), counted and logged so that no guest can slow the VMM or another
//! guest with them: the first occurrence of each kind is logged in full, then at most
//! one summary per [`SUMMARY_PERIOD`] says how many followed, and a last one when the
//! guest ends. A guest that writes an invalid PERF_CTL value in a loop produces a few
//! log lines, not one per write.
//!
//! Counting is two atomic additions; deciding to log is one atomic compare. Callers
//! record events after releasing any lock that other guests' vCPUs need, so that the
//! cost of writing a log line falls on the guest that caused it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The least time between two summaries of one kind of event of one guest.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(1);

/// A kind of event a guest causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A write to an intercepted MSR that the VMM refused (the guest saw #GP).
    RefusedMsrWrite,
    /// A change of a vCPU's effective P-state.
    PStateChange,
    /// A virtqueue descriptor chain the device refused (outside guest memory, looped,
    /// too long or too big, the wrong direction), or a broken ring.
    RefusedDescriptorChain,
    /// A device register access the device refused (wrong width, unknown register,
    /// out of order).
    RefusedDeviceAccess,
}

impl EventKind {
    /// Every kind, in the order status reports them.
    pub const ALL: [EventKind; 4] = [
        EventKind::RefusedMsrWrite,
        EventKind::PStateChange,
        EventKind::RefusedDescriptorChain,
        EventKind::RefusedDeviceAccess,
    ];

    /// How people read it, plural.
    pub fn plural(self) -> &'static str {
        match self {
            EventKind::RefusedMsrWrite => "refused MSR writes",
            EventKind::PStateChange => "P-state changes",
            EventKind::RefusedDescriptorChain => "refused descriptor chains",
            EventKind::RefusedDeviceAccess => "refused device register accesses",
        }
    }

    fn level(self) -> log::Level {
        match self {
            EventKind::RefusedMsrWrite
            | EventKind::RefusedDescriptorChain
            | EventKind::RefusedDeviceAccess => log::Level::Warn,
            EventKind::PStateChange => log::Level::Info,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plural())
    }
}

fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One kind of event of one guest.
#[derive(Debug, Default)]
struct Counter {
    total: AtomicU64,
    /// Events since the last line logged about this kind.
    unreported: AtomicU64,
    /// When the next summary may be logged (ns since the process epoch).
    next_summary_ns: AtomicU64,
}

/// The event counters of one guest (shared by its vCPU threads).
#[derive(Debug)]
pub struct GuestEvents {
    guest: String,
    counters: [Counter; EventKind::ALL.len()],
}

impl GuestEvents {
    /// Counters at zero for guest `guest`.
    pub fn new(guest: &str) -> GuestEvents {
        GuestEvents {
            guest: guest.to_string(),
            counters: Default::default(),
        }
    }

    /// The guest's name.
    pub fn guest(&self) -> &str {
        &self.guest
    }

    fn counter(&self, kind: EventKind) -> &Counter {
        &self.counters[kind as usize]
    }

    /// Counts one event of `kind`; logs `detail()` if it is the first, or a summary
    /// if [`SUMMARY_PERIOD`] has passed since the last line about this kind. Returns
    /// whether a line was logged.
    pub fn record(&self, kind: EventKind, detail: impl FnOnce() -> String) -> bool {
        let c = self.counter(kind);
        let total = c.total.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ns();
        let period = SUMMARY_PERIOD.as_nanos() as u64;
        if total == 1 {
            c.next_summary_ns.store(now + period, Ordering::Relaxed);
            log::log!(kind.level(), "guest {}: {}", self.guest, detail());
            return true;
        }
        c.unreported.fetch_add(1, Ordering::Relaxed);
        let due = c.next_summary_ns.load(Ordering::Relaxed);
        if now < due
            || c.next_summary_ns
                .compare_exchange(due, now + period, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        let n = c.unreported.swap(0, Ordering::Relaxed);
        log::log!(
            kind.level(),
            "guest {}: {n} more {kind} ({total} in all); the latest: {}",
            self.guest,
            detail()
        );
        true
    }

    /// Logs how many events of each kind were not reported yet (when the guest ends).
    pub fn flush(&self) {
        for kind in EventKind::ALL {
            let c = self.counter(kind);
            let n = c.unreported.swap(0, Ordering::Relaxed);
            if n > 0 {
                log::log!(
                    kind.level(),
                    "guest {}: {n} more {kind} ({} in all)",
                    self.guest,
                    c.total.load(Ordering::Relaxed)
                );
            }
        }
    }

    /// How many events of `kind` there were.
    pub fn total(&self, kind: EventKind) -> u64 {
        self.counter(kind).total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_its_first_event_then_at_most_one_summary_a_period() {
        let events = GuestEvents::new("flooder");
        let start = Instant::now();
        let mut logged = 0;
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            logged += u32::from(events.record(EventKind::RefusedMsrWrite, || "write".into()));
            n += 1;
        }
        assert!(n > 1000, "the loop ran {n} times");
        assert_eq!(events.total(EventKind::RefusedMsrWrite), n);
        // 300 ms: the first event, and no summary yet (the period is a second).
        assert_eq!(logged, 1);
        assert_eq!(events.total(EventKind::PStateChange), 0);
    }

    #[test]
    fn a_summary_follows_once_the_period_has_passed() {
        let events = GuestEvents::new("g");
        assert!(events.record(EventKind::PStateChange, String::new));
        assert!(!events.record(EventKind::PStateChange, String::new));
        let c = events.counter(EventKind::PStateChange);
        // Pretend the period is over.
        c.next_summary_ns.store(0, Ordering::Relaxed);
        assert!(events.record(EventKind::PStateChange, String::new));
        assert_eq!(c.unreported.load(Ordering::Relaxed), 0);
        assert!(!events.record(EventKind::PStateChange, String::new));
        assert_eq!(events.total(EventKind::PStateChange), 4);
    }
}

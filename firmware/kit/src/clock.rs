//! The clock of a server's logic: milliseconds since some start, as the glue reads them
//! from the firmware's monotonic clock (`firmware::time`) and passes them in, so that
//! the logic's timers (ARP and reassembly timeouts, connection-tracking expiry) are
//! tested on the host with time under the test's control.

/// A point in time, in milliseconds since some start (the glue's clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The clock's start.
    pub const ZERO: Instant = Instant(0);

    /// `ms` milliseconds after the clock's start.
    pub const fn from_millis(ms: u64) -> Instant {
        Instant(ms)
    }

    /// Milliseconds since the clock's start.
    pub const fn millis(self) -> u64 {
        self.0
    }

    /// `ms` milliseconds later (saturating).
    pub const fn after(self, ms: u64) -> Instant {
        Instant(self.0.saturating_add(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_count_milliseconds_and_saturate() {
        let t = Instant::from_millis(5);
        assert_eq!(t.after(10).millis(), 15);
        assert!(Instant::ZERO < t);
        assert_eq!(Instant::from_millis(u64::MAX).after(1).millis(), u64::MAX);
    }
}

//! Virtual APERF and MPERF of one vCPU, served whatever the backend: MPERF counts at
//! fmax and APERF at the effective frequency during the guest's C0 time, so
//! ΔAPERF/ΔMPERF = f/fmax exactly as Linux's `scaling_cur_freq` reads it. They advance
//! from the vCPU thread's CPU time.

/// CPU time the calling thread has used, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Virtual APERF/MPERF of one vCPU, advanced from the thread's CPU time.
#[derive(Debug)]
pub struct PerfCounters {
    aperf: u64,
    mperf: u64,
    last_cpu_ns: u64,
}

impl PerfCounters {
    /// Counters at zero, from now.
    pub fn new() -> Self {
        PerfCounters {
            aperf: 0,
            mperf: 0,
            last_cpu_ns: thread_cpu_ns(),
        }
    }

    /// Advances both counters over the CPU time used since the last call, at the
    /// effective frequency `f_mhz` of maximum `fmax_mhz`. With soft scaling the
    /// guest's C0 time is the CPU time used divided by f/fmax (it ran only that
    /// share of the wall time); with real scaling it is the CPU time itself.
    pub fn advance(&mut self, f_mhz: u32, fmax_mhz: u32, soft: bool) {
        let now = thread_cpu_ns();
        let cpu = now.saturating_sub(self.last_cpu_ns);
        self.last_cpu_ns = now;
        let (f, fmax) = (u128::from(f_mhz.max(1)), u128::from(fmax_mhz.max(1)));
        let c0_ns = if soft {
            u128::from(cpu) * fmax / f
        } else {
            u128::from(cpu)
        };
        // cycles = ns · MHz / 1000
        self.aperf = self.aperf.wrapping_add((c0_ns * f / 1000) as u64);
        self.mperf = self.mperf.wrapping_add((c0_ns * fmax / 1000) as u64);
    }

    /// APERF.
    pub fn aperf(&self) -> u64 {
        self.aperf
    }

    /// MPERF.
    pub fn mperf(&self) -> u64 {
        self.mperf
    }
}

impl Default for PerfCounters {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Busy for `d` of wall time (for tests that need CPU time to pass).
    pub(crate) fn spin(d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn counters_ratio_is_the_frequency_ratio() {
        let mut c = PerfCounters::new();
        spin(Duration::from_millis(20));
        c.advance(1000, 2000, true);
        let r = c.aperf() as f64 / c.mperf() as f64;
        assert!((r - 0.5).abs() < 1e-6, "{r}");
        let (a, m) = (c.aperf(), c.mperf());
        spin(Duration::from_millis(20));
        c.advance(2000, 2000, true);
        assert_eq!(
            c.aperf() - a,
            c.mperf() - m,
            "at fmax they advance together"
        );
    }
}

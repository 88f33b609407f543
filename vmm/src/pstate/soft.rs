//! Soft frequency scaling (after VirtualPower, SOSP 2007): where the host cannot change
//! a core's frequency, a vCPU at f runs only f/fmax of every period and sleeps for the
//! rest, so its work progresses at f/fmax of full speed.
//!
//! The vCPU thread throttles itself. At the start of a period it arms a one-shot
//! CLOCK_MONOTONIC timer (a high-resolution timer; CPU-time timers only fire on the
//! scheduler tick) that delivers the kick signal to that thread when its quota of
//! `period · f/fmax` would be used up. The signal makes `KVM_RUN` return; the thread
//! checks how much CPU it really used (a halted or descheduled vCPU used less, and is
//! re-armed for the rest), and once the quota is spent sleeps to the end of the period.
//! The period is [`DEFAULT_PERIOD`]; the benchmark `pstate` measures the accuracy.
//!
//! [`Counters`] virtualises APERF and MPERF: MPERF counts at fmax and APERF at the
//! effective frequency during the guest's C0 time, so ΔAPERF/ΔMPERF = f/fmax exactly
//! as Linux's `scaling_cur_freq` reads it.

use std::time::{Duration, Instant};

/// Length of a duty-cycle period.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(10);

fn thread_cpu_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The duty-cycle state of one vCPU thread.
#[derive(Debug)]
pub struct Throttle {
    timer: libc::timer_t,
    period: Duration,
    period_start: Instant,
    cpu_at_start: u64,
    armed: bool,
}

// SAFETY: timer_t is an opaque kernel timer id; the Throttle is created and used by
// one vCPU thread only (it is moved into the thread before first use).
unsafe impl Send for Throttle {}

impl Throttle {
    /// A throttle for the calling thread, whose timer raises `signal` in it.
    pub fn for_current_thread(signal: libc::c_int, period: Duration) -> std::io::Result<Self> {
        // SAFETY: sigevent is plain data (with private padding); zeroed is valid.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = signal;
        // SAFETY: gettid has no preconditions.
        ev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid clock, event and out-pointer; the timer is deleted in Drop.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Throttle {
            timer,
            period,
            period_start: Instant::now(),
            cpu_at_start: thread_cpu_ns(),
            armed: false,
        })
    }

    fn arm(&mut self, after: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                // At least 1 ns: an all-zero value would disarm.
                tv_nsec: (after.subsec_nanos().max(u32::from(after.is_zero()))) as libc::c_long,
            },
        };
        // SAFETY: our own live timer and a valid itimerspec.
        unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) };
        self.armed = true;
    }

    fn disarm(&mut self) {
        if self.armed {
            // SAFETY: an all-zero itimerspec disarms our own live timer.
            let zero: libc::itimerspec = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::timer_settime(self.timer, 0, &zero, std::ptr::null_mut()) };
            self.armed = false;
        }
    }

    /// Called before every `KVM_RUN`: with `ratio` = f/fmax of the vCPU, either arms
    /// the timer for the rest of this period's quota or, when the quota is spent,
    /// sleeps to the end of the period (returning early if `stop()` turns true is not
    /// needed: a period is short). A ratio of 1 runs unthrottled.
    pub fn before_run(&mut self, ratio: f64) {
        if ratio >= 1.0 {
            self.disarm();
            return;
        }
        let now = Instant::now();
        if now >= self.period_start + self.period {
            self.period_start = now;
            self.cpu_at_start = thread_cpu_ns();
        }
        let quota = self.period.mul_f64(ratio.max(0.001));
        let used = Duration::from_nanos(thread_cpu_ns().saturating_sub(self.cpu_at_start));
        if used >= quota {
            let end = self.period_start + self.period;
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            self.period_start = end.max(Instant::now());
            self.cpu_at_start = thread_cpu_ns();
            self.arm(quota);
        } else {
            self.arm(quota - used);
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // SAFETY: deleting our own timer once.
        unsafe { libc::timer_delete(self.timer) };
    }
}

/// Virtual APERF/MPERF of one vCPU, advanced from the thread's CPU time.
#[derive(Debug)]
pub struct Counters {
    aperf: u64,
    mperf: u64,
    last_cpu_ns: u64,
}

impl Counters {
    /// Counters at zero, from now.
    pub fn new() -> Self {
        Counters {
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

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn counters_ratio_is_the_frequency_ratio() {
        let mut c = Counters::new();
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

    #[test]
    fn throttle_caps_a_busy_thread_at_its_ratio() {
        extern "C" fn ignore(_: libc::c_int) {}
        let sig = libc::SIGRTMIN() + 1;
        // SAFETY: installs a handler that does nothing, so the timer only interrupts.
        unsafe { libc::signal(sig, ignore as *const () as libc::sighandler_t) };
        let mut t = Throttle::for_current_thread(sig, Duration::from_millis(10)).unwrap();
        let start = Instant::now();
        let cpu0 = thread_cpu_ns();
        while start.elapsed() < Duration::from_millis(300) {
            t.before_run(0.25);
            // "Guest" work: spin until the timer's signal would end KVM_RUN, i.e.
            // for a slice of the remaining quota.
            spin(Duration::from_micros(500));
        }
        let share = (thread_cpu_ns() - cpu0) as f64 / start.elapsed().as_nanos() as f64;
        assert!((0.15..0.40).contains(&share), "busy share {share}");
    }
}

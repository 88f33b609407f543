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
//! APERF and MPERF, which every backend serves, are in
//! [`perf_counters`](super::perf_counters).

use std::time::{Duration, Instant};

/// Length of a duty-cycle period, unless the topology names one.
pub use crate::topology::DEFAULT_SOFT_PERIOD as DEFAULT_PERIOD;

use super::perf_counters::thread_cpu_ns;

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
        let r = unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) };
        // Fails only for an invalid timer or value, and both are ours and valid.
        debug_assert_eq!(r, 0, "timer_settime");
        self.armed = true;
    }

    fn disarm(&mut self) {
        if self.armed {
            // SAFETY: an all-zero itimerspec disarms our own live timer.
            let zero: libc::itimerspec = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let r = unsafe { libc::timer_settime(self.timer, 0, &zero, std::ptr::null_mut()) };
            debug_assert_eq!(r, 0, "timer_settime");
            self.armed = false;
        }
    }

    /// Called before every `KVM_RUN`: with `ratio` = f/fmax of the vCPU, either arms
    /// the timer for the rest of this period's quota or, when the quota is spent,
    /// sleeps to the end of the period (at most one period, so a stop request waits no
    /// longer than that). A ratio of 1 runs unthrottled.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pstate::perf_counters::tests::spin;

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

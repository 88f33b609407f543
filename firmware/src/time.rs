//! Time: a monotonic clock from the TSC, and sleeping until a deadline on the local
//! APIC timer.
//!
//! [`Instant`] counts TSC ticks (`rdtsc` is native in ring 3: reading the clock costs
//! nanoseconds); the TSC frequency comes from the boot info (`tsc_khz`, from KVM).
//! A deadline wakes a halt through the APIC timer in one-shot mode, armed with one
//! store to its initial-count register from ring 3, which KVM's in-kernel LAPIC
//! serves without an exit to the VMM (≈ 2.6 µs here); the timer's rate against the
//! TSC is measured once, on first use (0.5 ms of the first wait). The TSC-deadline
//! mode works here too, but its MSR needs the ring-0 stub's `wrmsr`, a #GP round trip
//! through emulated ring 0 (≈ 27 µs here) for every deadline: that is the way of a
//! guest with more than one vCPU, whose APIC page ring 3 cannot reach
//! ([`compart_abi::lapic_user_accessible`]); the VMM leaves its timer in TSC-deadline
//! mode on [`TIMER_VECTOR`].
//!
//! The timer state here belongs to vCPU 0's APIC: vCPU 0 is the only vCPU that runs
//! guest code (the others halt until the guest stops).

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use compart_abi::{lapic as regs, lapic_user_accessible, msr, TIMER_VECTOR};

use crate::{boot_info, lapic, pstate::rdtsc, ring0};

/// A point in time on this guest's monotonic clock (the TSC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

/// TSC ticks per millisecond.
pub fn tsc_khz() -> u64 {
    boot_info().tsc_khz.max(1)
}

fn to_duration(ticks: u64) -> Duration {
    let ns = u128::from(ticks) * 1_000_000 / u128::from(tsc_khz());
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

fn to_ticks(d: Duration) -> Option<u64> {
    u64::try_from(d.as_nanos() * u128::from(tsc_khz()) / 1_000_000).ok()
}

impl Instant {
    /// Now.
    pub fn now() -> Instant {
        Instant(rdtsc())
    }

    /// Time since `self` (zero if `self` is later than now).
    pub fn elapsed(&self) -> Duration {
        Instant::now().duration_since(*self)
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        to_duration(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, or `None` if that is beyond the clock's range.
    pub fn checked_add(&self, d: Duration) -> Option<Instant> {
        self.0.checked_add(to_ticks(d)?).map(Instant)
    }

    /// The TSC value of this instant.
    pub fn tsc(&self) -> u64 {
        self.0
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;

    /// # Panics
    /// If the result is beyond the clock's range (hundreds of years).
    fn add(self, d: Duration) -> Instant {
        self.checked_add(d).expect("instant out of range")
    }
}

impl core::ops::Sub for Instant {
    type Output = Duration;

    fn sub(self, earlier: Instant) -> Duration {
        self.duration_since(earlier)
    }
}

/// Now, on the millisecond clock the server kit's logic takes its time as
/// ([`compart_kit::clock::Instant`]): milliseconds of this clock.
pub fn clock() -> compart_kit::clock::Instant {
    compart_kit::clock::Instant::from_millis(Instant::now().0 / tsc_khz())
}

/// Now, in microseconds of this clock (for logic with a finer clock than [`clock`]'s,
/// such as smoltcp's).
pub fn micros() -> u64 {
    u64::try_from(u128::from(Instant::now().0) * 1000 / u128::from(tsc_khz())).unwrap_or(u64::MAX)
}

/// The instant of this clock that [`clock`] reads as `t` (for a wait until a deadline
/// of the logic).
pub fn at(t: compart_kit::clock::Instant) -> Instant {
    Instant(t.millis().saturating_mul(tsc_khz()))
}

/// APIC timer counts per TSC tick, as a 32.32 fixed-point number; 0 until measured.
static TIMER_RATE: AtomicU64 = AtomicU64::new(0);
/// The deadline (TSC) the timer is armed for; 0 when none is pending.
static ARMED: AtomicU64 = AtomicU64::new(0);

/// Measures the APIC timer's rate against the TSC over 0.5 ms (the timer masked),
/// then sets it up as a one-shot timer on [`TIMER_VECTOR`].
fn timer_rate() -> u64 {
    let rate = TIMER_RATE.load(Ordering::Relaxed);
    if rate != 0 {
        return rate;
    }
    lapic::write(regs::TIMER_DIVIDE, regs::DIVIDE_BY_1);
    lapic::write(regs::LVT_TIMER, regs::LVT_MASKED | u32::from(TIMER_VECTOR));
    lapic::write(regs::TIMER_INITIAL_COUNT, u32::MAX);
    let (t0, c0) = (rdtsc(), lapic::read(regs::TIMER_CURRENT_COUNT));
    while rdtsc().wrapping_sub(t0) < tsc_khz() / 2 {
        core::hint::spin_loop();
    }
    let (t1, c1) = (rdtsc(), lapic::read(regs::TIMER_CURRENT_COUNT));
    lapic::write(regs::TIMER_INITIAL_COUNT, 0);
    lapic::write(regs::LVT_TIMER, u32::from(TIMER_VECTOR));
    let rate = ((u64::from(c0.wrapping_sub(c1)) << 32) / t1.wrapping_sub(t0).max(1)).max(1);
    TIMER_RATE.store(rate, Ordering::Relaxed);
    rate
}

/// Arms the APIC timer to interrupt at `deadline` (or as close before it as the
/// timer's range allows: a halt it ends early is simply re-armed by the caller).
/// One store, unless the timer is still armed for exactly this deadline.
///
/// "Still armed" needs care: nothing clears [`ARMED`] when the timer fires, and a
/// one-shot count can fire before its deadline (it is capped at `u32::MAX` ticks, and
/// the rate was measured over 0.5 ms), so in one-shot mode the shortcut also asks the
/// APIC whether the count is still running. Without that, a timer that fired early
/// was never re-armed and the guest halted until some other interrupt (seen as pf
/// expiring its entries only when the next packet came, and tcp asking ip for its
/// configuration once and never again). A TSC deadline fires exactly at its deadline,
/// so there a future deadline is still pending.
fn arm(deadline: Instant) {
    let armed = ARMED.load(Ordering::Relaxed);
    let user_apic = lapic_user_accessible(boot_info().vcpu_count);
    if armed == deadline.0
        && armed > rdtsc()
        && (!user_apic || lapic::read(regs::TIMER_CURRENT_COUNT) != 0)
    {
        return;
    }
    if !user_apic {
        // Ring 3 cannot reach this guest's APIC page: the VMM left the timer in
        // TSC-deadline mode, armed through the stub's `wrmsr` (≈ 27 µs here).
        ring0::write_msr(msr::TSC_DEADLINE, deadline.0.max(1));
        ARMED.store(deadline.0, Ordering::Relaxed);
        return;
    }
    // The first use measures the rate first (that time counts against the deadline).
    let rate = timer_rate();
    let ticks = deadline.0.saturating_sub(rdtsc());
    let count = (u128::from(ticks) * u128::from(rate)) >> 32;
    let count = u32::try_from(count).unwrap_or(u32::MAX).max(1);
    lapic::write(regs::TIMER_INITIAL_COUNT, count);
    ARMED.store(deadline.0, Ordering::Relaxed);
}

/// Halts until an interrupt (a doorbell, a kick) or `deadline`, whichever comes
/// first; returns at once if the deadline has passed. May return early (another
/// interrupt): callers check the clock.
pub fn halt_until(deadline: Instant) {
    if Instant::now() >= deadline {
        return;
    }
    arm(deadline);
    ring0::halt();
}

/// Sleeps until `deadline`, halting (no exit to the VMM while asleep).
pub fn sleep_until(deadline: Instant) {
    while Instant::now() < deadline {
        halt_until(deadline);
    }
}

/// Sleeps for `d`.
pub fn sleep(d: Duration) {
    sleep_until(Instant::now() + d);
}

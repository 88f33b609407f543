//! Frequency scaling as an OS does it: pick a `_PSS` entry, write its control value to
//! the `_PCT` control register (IA32_PERF_CTL), read the effective state back from the
//! status register, and measure the speed actually delivered with APERF/MPERF.
//!
//! A write affects the vCPU that executes it. The VMM refuses values `_PSS` does not
//! list or `_PPC` does not allow; the write then reports [`PStateError::Refused`].
//!
//! # The platform's limit
//!
//! As an OS's driver does, this one honours the platform's performance limit, `_PPC`:
//! the guest runs at the state it chose ([`set`]; until then as fast as the limit
//! allows, or in the slower state the platform started it in) but never faster than
//! the limit. At boot ([`init`]) it reads the limit and requests its state through
//! PERF_CTL. The VMM changes the limit live the way firmware signals
//! `Notify(processor, 0x80)`: it writes the new value into the vCPU's entry of the
//! placement page (`PlacementEntry::ppc`, under the page's sequence lock) and kicks
//! the guest. After every halt, and before every channel wait, [`follow_platform`]
//! compares the page's generation with the one it saw last (one load); when the limit
//! changed it requests the state the guest's choice and the new limit give, through
//! the same PERF_CTL write, which is also the VMM's acknowledgement. Servers need no
//! code for this: every guest that waits honours it.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use compart_abi::msr::{APERF as MSR_APERF, MPERF as MSR_MPERF};

use crate::ring0::{read_msr, write_msr};
use crate::{acpi, placement, println};

/// The state the guest chose ([`set`]), before the limit applies.
static CHOSEN: AtomicUsize = AtomicUsize::new(0);
/// The limit last followed.
static LIMIT: AtomicUsize = AtomicUsize::new(0);
/// The placement page's generation last looked at; [`NOT_STARTED`] until [`init`].
static SEEN: AtomicU64 = AtomicU64::new(NOT_STARTED);
const NOT_STARTED: u64 = u64::MAX;

/// Why a P-state could not be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PStateError {
    /// The guest has no usable ACPI description.
    NoTables,
    /// There is no P-state with that index.
    NoSuchState(usize),
    /// The platform refused the request.
    Refused,
}

fn processor() -> Result<&'static acpi::ProcessorInfo, PStateError> {
    acpi::processor(0).ok_or(PStateError::NoTables)
}

/// The P-states, P0 (fastest) first.
pub fn states() -> &'static [acpi::PState] {
    acpi::pstates(0)
}

/// Asks for P-state `n` on the calling vCPU; once accepted it is the guest's choice,
/// which later limits apply to.
pub fn set(n: usize) -> Result<(), PStateError> {
    let p = processor()?;
    let s = p.pstates().get(n).ok_or(PStateError::NoSuchState(n))?;
    write_control(s.control)?;
    CHOSEN.store(n, Ordering::Relaxed);
    Ok(())
}

/// The platform's limit now (`_PPC`): the placement page's live value, else (no page)
/// the ACPI tables'. `None` when the page cannot be read now (the VMM kept rewriting
/// it) or names a state `_PSS` does not have.
fn limit_now(p: &acpi::ProcessorInfo) -> Option<usize> {
    let ppc = if placement::present() {
        placement::entry(0)?.ppc as usize
    } else {
        p.ppc() as usize
    };
    (ppc < p.pstates().len()).then_some(ppc)
}

/// The state the guest's choice and the limit give.
fn target() -> usize {
    CHOSEN
        .load(Ordering::Relaxed)
        .max(LIMIT.load(Ordering::Relaxed))
}

/// Requests [`target`] and says so (`what` tells why).
fn request_target(p: &acpi::ProcessorInfo, what: core::fmt::Arguments<'_>) {
    let t = target();
    let outcome = match p.pstates().get(t).map(|s| write_control(s.control)) {
        Some(Ok(())) => "accepted",
        _ => "refused",
    };
    println!(
        "pstate: {what}: requested P{t}, {outcome}, now P{}",
        current().map_or(-1, |c| c as i64)
    );
}

/// At boot, on vCPU 0 before the guest's main: reads the limit and the state the
/// platform started the vCPU in, and requests that state through PERF_CTL.
pub(crate) fn init() {
    let Ok(p) = processor() else { return };
    if p.pstates().is_empty() {
        return;
    }
    let generation = placement::generation();
    let limit = limit_now(p).unwrap_or(p.pstates().len() - 1);
    let start = current().unwrap_or(limit);
    LIMIT.store(limit, Ordering::Relaxed);
    // Started slower than the limit: the platform's start state is the choice.
    CHOSEN.store(if start > limit { start } else { 0 }, Ordering::Relaxed);
    SEEN.store(generation, Ordering::Relaxed);
    request_target(
        p,
        format_args!("_PPC P{limit} at boot, started in P{start}"),
    );
}

/// Follows a new platform limit, if the VMM announced one since the last look (see
/// the module's documentation). Called after every halt and before every channel
/// wait, on vCPU 0 (the only one running guest code); costs one load otherwise.
pub fn follow_platform() {
    let seen = SEEN.load(Ordering::Relaxed);
    if seen == NOT_STARTED {
        return;
    }
    let generation = placement::generation();
    if generation == seen {
        return;
    }
    let Ok(p) = processor() else { return };
    // Unreadable or invalid: look again next time.
    let Some(limit) = limit_now(p) else { return };
    SEEN.store(generation, Ordering::Relaxed);
    if limit == LIMIT.swap(limit, Ordering::Relaxed) {
        return;
    }
    request_target(p, format_args!("_PPC now P{limit}"));
}

/// Writes a raw control value (for testing what the platform accepts).
pub fn write_control(value: u64) -> Result<(), PStateError> {
    let p = processor()?;
    if write_msr(p.pct().control_msr, value) {
        Ok(())
    } else {
        Err(PStateError::Refused)
    }
}

/// The state the calling vCPU runs at, from the status register.
pub fn current() -> Option<usize> {
    let p = processor().ok()?;
    let status = read_msr(p.pct().status_msr)?;
    p.pstates().iter().position(|s| s.status == status)
}

/// A reading of the performance counters and the time-stamp counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerfSample {
    /// APERF: cycles at the actual frequency.
    pub aperf: u64,
    /// MPERF: cycles at the maximum frequency.
    pub mperf: u64,
    /// TSC.
    pub tsc: u64,
}

/// Reads APERF, MPERF and the TSC.
pub fn sample() -> Option<PerfSample> {
    let mperf = read_msr(MSR_MPERF)?;
    let aperf = read_msr(MSR_APERF)?;
    Some(PerfSample {
        aperf,
        mperf,
        tsc: rdtsc(),
    })
}

impl PerfSample {
    /// ΔAPERF/ΔMPERF since `earlier`: the delivered share of the maximum frequency.
    pub fn ratio_since(&self, earlier: &PerfSample) -> f64 {
        let da = self.aperf.wrapping_sub(earlier.aperf) as f64;
        let dm = self.mperf.wrapping_sub(earlier.mperf) as f64;
        if dm == 0.0 {
            0.0
        } else {
            da / dm
        }
    }

    /// The effective frequency since `earlier`, as Linux's `scaling_cur_freq`
    /// computes it: P0's frequency × ΔAPERF/ΔMPERF.
    pub fn mhz_since(&self, earlier: &PerfSample) -> u32 {
        let fmax = states().first().map_or(0, |s| s.frequency_mhz);
        (f64::from(fmax) * self.ratio_since(earlier)) as u32
    }
}

/// The time-stamp counter (runs natively in ring 3).
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads a counter; no memory is touched.
    unsafe { core::arch::x86_64::_rdtsc() }
}

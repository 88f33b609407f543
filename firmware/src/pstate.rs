//! Frequency scaling as an OS does it: pick a `_PSS` entry, write its control value to
//! the `_PCT` control register (IA32_PERF_CTL), read the effective state back from the
//! status register, and measure the speed actually delivered with APERF/MPERF.
//!
//! A write affects the vCPU that executes it. The VMM refuses values `_PSS` does not
//! list or `_PPC` does not allow; the write then reports [`PStateError::Refused`].

use compart_abi::msr::{APERF as MSR_APERF, MPERF as MSR_MPERF};

use crate::acpi;
use crate::ring0::{read_msr, write_msr};

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

/// Asks for P-state `n` on the calling vCPU.
pub fn set(n: usize) -> Result<(), PStateError> {
    let p = processor()?;
    let s = p.pstates().get(n).ok_or(PStateError::NoSuchState(n))?;
    write_control(s.control)
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

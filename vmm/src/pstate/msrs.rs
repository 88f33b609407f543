//! The P-state MSRs as one vCPU sees them: KVM's MSR filter sends every guest access
//! of PERF_CTL, PERF_STATUS, APERF and MPERF here ([`intercept`]), and [`VcpuMsrs`]
//! answers them on the vCPU's own thread.
//!
//! - PERF_CTL writes go to the [`PStateController`]; a value it refuses makes the
//!   guest's `wrmsr` fault (its firmware reports a refusal);
//! - PERF_CTL and PERF_STATUS reads return the last request and the effective state;
//! - APERF and MPERF are virtual counters of this vCPU ([`PerfCounters`]);
//! - before each `KVM_RUN`, a soft-scaled vCPU checks its duty-cycle quota
//!   ([`Throttle`]).
//!
//! Refused writes and P-state changes are guest-caused events: counted, and logged
//! rate-limited (`crate::guest_events`) after the controller's lock is released.

use std::sync::Arc;

use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};

use super::perf_counters::PerfCounters;
use super::soft::Throttle;
use super::{PStateController, VcpuFreq, INTERCEPTED, MSR_APERF, MSR_MPERF, MSR_PERF_CTL};
use crate::guest_events::{EventKind, GuestEvents};

/// Sends guest accesses of the P-state MSRs to the VMM: user-space MSR exits for
/// filtered MSRs, and a filter that denies (that is, forwards) exactly those. Without
/// the filter KVM answers some itself.
pub fn intercept(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    let cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)?;
    let deny = [0u8; 1];
    let ranges: Vec<MsrFilterRange<'_>> = INTERCEPTED
        .iter()
        .map(|&(base, count)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base,
            msr_count: count,
            bitmap: &deny,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
}

/// The P-state MSRs of one vCPU, owned by its thread.
#[derive(Debug)]
pub struct VcpuMsrs {
    guest: usize,
    vcpu: usize,
    freq: Arc<VcpuFreq>,
    controller: Arc<PStateController>,
    events: Arc<GuestEvents>,
    throttle: Option<Throttle>,
    counters: PerfCounters,
    /// The effective frequency the counters last advanced at.
    counted_mhz: u32,
}

impl VcpuMsrs {
    /// The MSRs of vCPU `vcpu` of guest `guest`, for the calling thread (the soft
    /// throttle's timer signals this thread with `kick_signal`).
    pub fn for_current_thread(
        guest: usize,
        vcpu: usize,
        controller: Arc<PStateController>,
        events: Arc<GuestEvents>,
        kick_signal: libc::c_int,
    ) -> VcpuMsrs {
        let throttle = if controller.is_soft() {
            match Throttle::for_current_thread(kick_signal, controller.soft_period()) {
                Ok(t) => Some(t),
                Err(e) => {
                    log::warn!(
                        "guest {} vCPU {vcpu}: no soft-scaling timer ({e}); it runs at full speed",
                        events.guest()
                    );
                    None
                }
            }
        } else {
            None
        };
        let freq = controller.vcpu_freq(guest, vcpu);
        VcpuMsrs {
            guest,
            vcpu,
            counted_mhz: freq.effective_mhz(),
            freq,
            controller,
            events,
            throttle,
            counters: PerfCounters::new(),
        }
    }

    /// Before each `KVM_RUN`: the counters catch up with a frequency change (this
    /// vCPU's request, or another one of its domain), and a soft-scaled vCPU takes
    /// its duty cycle.
    pub fn before_run(&mut self) {
        let now = self.freq.effective_mhz();
        if now != self.counted_mhz {
            self.advance();
            self.counted_mhz = now;
        }
        if let Some(t) = &mut self.throttle {
            t.before_run(self.freq.ratio());
        }
    }

    fn advance(&mut self) {
        self.counters.advance(
            self.counted_mhz,
            self.freq.fmax_mhz(),
            self.controller.is_soft(),
        );
    }

    /// A guest `rdmsr` of an intercepted MSR; `None` makes it fault.
    pub fn read(&mut self, msr: u32) -> Option<u64> {
        match msr {
            MSR_APERF | MSR_MPERF => {
                self.advance();
                Some(if msr == MSR_APERF {
                    self.counters.aperf()
                } else {
                    self.counters.mperf()
                })
            }
            msr => self.controller.read_msr(self.guest, self.vcpu, msr),
        }
    }

    /// A guest `wrmsr` of `value` to an intercepted MSR; `false` makes it fault.
    pub fn write(&mut self, msr: u32, value: u64) -> bool {
        if msr != MSR_PERF_CTL {
            self.refused(msr, value, "the register is read-only");
            return false;
        }
        // Count the time so far at the old frequency first.
        self.advance();
        match self.controller.write_perf_ctl(self.guest, self.vcpu, value) {
            Ok(changes) => {
                for c in changes {
                    self.events
                        .record(EventKind::PStateChange, || c.to_string());
                }
                true
            }
            Err(refusal) => {
                self.refused(msr, value, &refusal.to_string());
                false
            }
        }
    }

    fn refused(&self, msr: u32, value: u64, why: &str) {
        let vcpu = self.vcpu;
        self.events.record(EventKind::RefusedMsrWrite, || {
            format!("vCPU {vcpu}: write of {value:#x} to MSR {msr:#x} refused: {why}")
        });
    }
}

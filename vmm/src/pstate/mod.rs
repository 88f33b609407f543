//! Frequency requests from guests, mapped onto the host (thesis §3.2).
//!
//! A guest asks for a P-state the way an OS asks real hardware: it writes the control
//! value of a `_PSS` entry to IA32_PERF_CTL (the register its `_PCT` names). KVM's MSR
//! filter sends that write, and reads of IA32_PERF_STATUS, APERF and MPERF, to the
//! VMM (`vstate/vcpu.rs`), which asks the [`PStateController`]:
//!
//! 1. [`coordination`]: the value must be a `_PSS` control value `_PPC` allows (else
//!    the guest gets #GP, which its firmware reports as a refused write); the vCPU's
//!    request is resolved with the others of its `_PSD` domain into effective states;
//! 2. [`backend`]: the effective frequencies are applied to the host — cpufreq limits or
//!    the host's PERF_CTL per core (the fastest any vCPU on the core needs), or soft
//!    scaling, where each vCPU thread duty-cycles itself ([`soft`]);
//! 3. every change is logged and kept for the status view ([`PStateController::status`]).
//!
//! Status reads return the effective state's `_PSS` status value; APERF/MPERF advance
//! so that ΔAPERF/ΔMPERF is the effective over the maximum frequency.

pub mod backend;
pub mod coordination;
pub mod soft;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use compart_acpi::Mhz;

use crate::topology::{HostCore, Topology};
use backend::FreqBackend;
use coordination::{Change, GuestPStates, Refusal};

// The MSRs of the contract (compart_abi::msr), under the names the exit handling uses.
pub use compart_abi::msr::{
    APERF as MSR_APERF, INTERCEPTED, MPERF as MSR_MPERF, PERF_CTL as MSR_PERF_CTL,
    PERF_STATUS as MSR_PERF_STATUS,
};

/// What a vCPU thread needs on its fast path: its effective and maximum frequency.
#[derive(Debug)]
pub struct VcpuFreq {
    effective_mhz: AtomicU32,
    fmax_mhz: u32,
}

impl VcpuFreq {
    /// Effective frequency.
    pub fn effective_mhz(&self) -> u32 {
        self.effective_mhz.load(Ordering::Relaxed)
    }

    /// Maximum frequency (P0).
    pub fn fmax_mhz(&self) -> u32 {
        self.fmax_mhz
    }

    /// Effective over maximum frequency.
    pub fn ratio(&self) -> f64 {
        f64::from(self.effective_mhz()) / f64::from(self.fmax_mhz.max(1))
    }
}

/// One vCPU's P-state, for the status view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuPState {
    /// Guest name.
    pub guest: String,
    /// vCPU index.
    pub vcpu: usize,
    /// Requested state.
    pub requested: usize,
    /// Effective state.
    pub effective: usize,
    /// Effective frequency.
    pub mhz: u32,
    /// Backend applying it.
    pub backend: &'static str,
}

#[derive(Debug)]
struct GuestEntry {
    name: String,
    states: GuestPStates,
    freqs: Vec<Arc<VcpuFreq>>,
    cores: Vec<Vec<HostCore>>,
}

/// The P-states of every guest and the backend that applies them.
#[derive(Debug)]
pub struct PStateController {
    backend: Box<dyn FreqBackend>,
    soft_period: std::time::Duration,
    guests: Mutex<Vec<GuestEntry>>,
}

impl PStateController {
    /// Every guest of `topology` at its start-up P-state, applied through `backend`.
    pub fn new(topology: &Topology, backend: Box<dyn FreqBackend>) -> Self {
        let fmax = topology.pstates.p0().frequency.0;
        let guests = topology
            .guests
            .iter()
            .map(|g| {
                let psd = crate::acpi::guest_psd(topology, g);
                let states = GuestPStates::new(
                    topology.pstates.clone(),
                    g.ppc as usize,
                    psd,
                    g.initial_pstate as usize,
                );
                let mhz = states.ladder().states()[states.effective(0)].frequency.0;
                GuestEntry {
                    name: g.name.clone(),
                    freqs: (0..g.vcpus())
                        .map(|_| {
                            Arc::new(VcpuFreq {
                                effective_mhz: AtomicU32::new(mhz),
                                fmax_mhz: fmax,
                            })
                        })
                        .collect(),
                    states,
                    cores: g.vcpu_cores.clone(),
                }
            })
            .collect();
        let c = PStateController {
            backend,
            soft_period: topology.soft_period,
            guests: Mutex::new(guests),
        };
        c.apply_to_host(&c.guests.lock().unwrap());
        c
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The duty-cycle period of soft scaling.
    pub fn soft_period(&self) -> std::time::Duration {
        self.soft_period
    }

    /// Whether vCPU threads throttle themselves.
    pub fn is_soft(&self) -> bool {
        self.backend.is_soft()
    }

    /// The fast-path view of one vCPU.
    pub fn vcpu_freq(&self, guest: usize, vcpu: usize) -> Arc<VcpuFreq> {
        self.guests.lock().unwrap()[guest].freqs[vcpu].clone()
    }

    /// A guest read of an intercepted P-state MSR (not APERF/MPERF, which the vCPU
    /// thread keeps): PERF_CTL reads back the last request, PERF_STATUS the effective
    /// state's status value.
    pub fn read_msr(&self, guest: usize, vcpu: usize, msr: u32) -> Option<u64> {
        let guests = self.guests.lock().unwrap();
        let g = guests.get(guest)?;
        let states = g.states.ladder().states();
        match msr {
            MSR_PERF_CTL => Some(states[g.states.requested(vcpu)].control),
            MSR_PERF_STATUS => Some(states[g.states.effective(vcpu)].status),
            _ => None,
        }
    }

    /// A guest write of `value` to PERF_CTL on vCPU `vcpu` of guest `guest`.
    pub fn write_perf_ctl(&self, guest: usize, vcpu: usize, value: u64) -> Result<(), Refusal> {
        let mut guests = self.guests.lock().unwrap();
        let g = &mut guests[guest];
        let changes = match g.states.request(vcpu, value) {
            Ok(c) => c,
            Err(refusal) => {
                log::warn!(
                    "guest {} vCPU {vcpu}: P-state request refused: {refusal}",
                    g.name
                );
                return Err(refusal);
            }
        };
        let requested = g.states.requested(vcpu);
        let d = g.states.domain(vcpu);
        log::debug!(
            "guest {} vCPU {vcpu}: requests P{requested} (control {value:#x}); _PSD domain {} {}",
            g.name,
            d.domain,
            d.coordination.name()
        );
        self.apply_changes(g, &changes);
        self.apply_to_host(&guests);
        Ok(())
    }

    fn apply_changes(&self, g: &GuestEntry, changes: &[Change]) {
        for c in changes {
            let mhz = g.states.ladder().states()[c.to].frequency.0;
            g.freqs[c.vcpu].effective_mhz.store(mhz, Ordering::Relaxed);
            let d = g.states.domain(c.vcpu);
            log::info!(
                "guest {} vCPU {}: requested P{}, effective P{} -> P{} ({mhz} MHz; _PSD domain {} {}), backend {}",
                g.name,
                c.vcpu,
                g.states.requested(c.vcpu),
                c.from,
                c.to,
                d.domain,
                d.coordination.name(),
                self.backend.name()
            );
        }
    }

    /// Real backends: each host core runs at the fastest frequency any vCPU allowed
    /// on it needs.
    fn apply_to_host(&self, guests: &[GuestEntry]) {
        if self.backend.is_soft() {
            return;
        }
        let mut per_core: std::collections::BTreeMap<HostCore, u32> = Default::default();
        for g in guests {
            for (v, cores) in g.cores.iter().enumerate() {
                let mhz = g.freqs[v].effective_mhz();
                for c in cores {
                    let e = per_core.entry(*c).or_default();
                    *e = (*e).max(mhz);
                }
            }
        }
        for (core, mhz) in per_core {
            if let Err(e) = self.backend.set_core(core, Mhz(mhz)) {
                log::warn!(
                    "host core {core}: cannot set {mhz} MHz through {}: {e}",
                    self.backend.name()
                );
            }
        }
    }

    /// Guest `guest`'s vCPU `vcpu` now runs on `cores`: its `_PSD` domain follows the
    /// new pinning and effective states are resolved again.
    pub fn repin(&self, topology: &Topology, guest: usize, vcpu: usize, cores: Vec<HostCore>) {
        let mut guests = self.guests.lock().unwrap();
        let g = &mut guests[guest];
        g.cores[vcpu] = cores;
        let mut config = topology.guests[guest].clone();
        config.vcpu_cores = g.cores.clone();
        let psd = crate::acpi::guest_psd(topology, &config);
        let changes = g.states.set_domains(psd);
        self.apply_changes(g, &changes);
        self.apply_to_host(&guests);
    }

    /// Every vCPU's current P-state.
    pub fn status(&self) -> Vec<VcpuPState> {
        let guests = self.guests.lock().unwrap();
        guests
            .iter()
            .flat_map(|g| {
                (0..g.freqs.len()).map(move |v| VcpuPState {
                    guest: g.name.clone(),
                    vcpu: v,
                    requested: g.states.requested(v),
                    effective: g.states.effective(v),
                    mhz: g.freqs[v].effective_mhz(),
                    backend: self.backend.name(),
                })
            })
            .collect()
    }
}

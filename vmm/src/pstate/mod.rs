//! Frequency requests from guests, mapped onto the host (thesis §3.2).
//!
//! A guest asks for a P-state the way an OS asks real hardware: it writes the control
//! value of a `_PSS` entry to IA32_PERF_CTL (the register its `_PCT` names). KVM's MSR
//! filter sends that write, and reads of IA32_PERF_STATUS, APERF and MPERF, to the
//! vCPU's [`msrs::VcpuMsrs`] (the emulation of those registers), which asks the
//! [`PStateController`]:
//!
//! 1. [`coordination`]: the value must be a `_PSS` control value `_PPC` allows (else
//!    the guest gets #GP, which its firmware reports as a refused write); the vCPU's
//!    request is resolved with the others of its `_PSD` domain into effective states;
//! 2. [`backend`]: the effective frequencies are applied to the host — cpufreq limits or
//!    the host's PERF_CTL per core (the fastest any vCPU on the core needs), or soft
//!    scaling, where each vCPU thread duty-cycles itself ([`soft`]);
//! 3. every change is kept for the status view ([`PStateController::status`]) and
//!    counted and logged rate-limited by the guest's vCPU thread
//!    (`crate::guest_events`), after the controller's locks are released.
//!
//! Each guest's P-state bookkeeping has its own lock, so a guest that floods PERF_CTL
//! only ever waits for itself. Status reads return the effective state's `_PSS`
//! status value; APERF/MPERF ([`perf_counters`]) advance so that ΔAPERF/ΔMPERF is the
//! effective over the maximum frequency.

pub mod backend;
pub mod coordination;
pub mod msrs;
pub mod perf_counters;
pub mod soft;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use compart_acpi::{Coordination, Mhz};

use crate::placement::Assignment;
use crate::topology::{coordination_name, HostCore, Topology};
use backend::FreqBackend;
pub use coordination::PpcOutOfRange;
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
    /// The guest's `_PPC` now: the fastest state it may request.
    pub ppc: usize,
    /// Whether the vCPU has requested a state since `_PPC` last changed.
    pub followed: bool,
}

/// A vCPU whose effective state changed, as a log line tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeReport {
    /// vCPU index.
    pub vcpu: usize,
    /// The state it requested last.
    pub requested: usize,
    /// Effective state before.
    pub from: usize,
    /// Effective state now.
    pub to: usize,
    /// Its frequency.
    pub mhz: u32,
    /// Its `_PSD` domain.
    pub domain: u32,
    /// The domain's coordination.
    pub coordination: Coordination,
    /// The backend applying it.
    pub backend: &'static str,
}

impl std::fmt::Display for ChangeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vCPU {}: requested P{}, effective P{} -> P{} ({} MHz; _PSD domain {} {}), backend {}",
            self.vcpu,
            self.requested,
            self.from,
            self.to,
            self.mhz,
            self.domain,
            coordination_name(self.coordination),
            self.backend
        )
    }
}

#[derive(Debug)]
struct GuestEntry {
    name: String,
    states: GuestPStates,
}

/// The P-states of every guest and the backend that applies them.
#[derive(Debug)]
pub struct PStateController {
    backend: Box<dyn FreqBackend>,
    soft_period: std::time::Duration,
    /// One lock per guest: a guest's requests never wait for another guest.
    guests: Vec<Mutex<GuestEntry>>,
    /// Signalled (per guest) after every accepted request, for [`Self::wait_followed`].
    requests: Vec<Condvar>,
    /// Each guest's vCPUs' effective frequencies (atomics, read without a lock).
    freqs: Vec<Vec<Arc<VcpuFreq>>>,
    /// Serialises applying frequencies to the host (real backends only).
    host: Mutex<()>,
    /// Where each vCPU runs (the runtime's record, read here).
    assignment: Arc<RwLock<Assignment>>,
    topology: Topology,
}

impl PStateController {
    /// Every guest of `topology` at its start-up P-state, applied through `backend`;
    /// `_PSD` domains and host cores follow `assignment`.
    pub fn new(
        topology: &Topology,
        backend: Box<dyn FreqBackend>,
        assignment: Arc<RwLock<Assignment>>,
    ) -> Self {
        let placed = assignment.read().unwrap().clone();
        let fmax = topology.pstates.p0().frequency.0;
        let mut guests = Vec::new();
        let mut freqs = Vec::new();
        for (i, g) in topology.guests.iter().enumerate() {
            let psd = crate::acpi::guest_psd(topology, g, placed.guest(i));
            let states = GuestPStates::new(
                topology.pstates.clone(),
                g.ppc as usize,
                psd,
                g.initial_pstate as usize,
            );
            let mhz = states.ladder().states()[states.effective(0)].frequency.0;
            freqs.push(
                (0..g.vcpus())
                    .map(|_| {
                        Arc::new(VcpuFreq {
                            effective_mhz: AtomicU32::new(mhz),
                            fmax_mhz: fmax,
                        })
                    })
                    .collect(),
            );
            guests.push(Mutex::new(GuestEntry {
                name: g.name.clone(),
                states,
            }));
        }
        let c = PStateController {
            backend,
            soft_period: topology.soft_period,
            requests: guests.iter().map(|_| Condvar::new()).collect(),
            guests,
            freqs,
            host: Mutex::new(()),
            assignment,
            topology: topology.clone(),
        };
        c.apply_to_host();
        c
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
        self.freqs[guest][vcpu].clone()
    }

    fn guest(&self, guest: usize) -> std::sync::MutexGuard<'_, GuestEntry> {
        self.guests[guest].lock().unwrap()
    }

    /// A guest read of an intercepted P-state MSR (not APERF/MPERF, which the vCPU
    /// thread keeps): PERF_CTL reads back the last request, PERF_STATUS the effective
    /// state's status value.
    pub fn read_msr(&self, guest: usize, vcpu: usize, msr: u32) -> Option<u64> {
        let g = self.guests.get(guest)?.lock().unwrap();
        let states = g.states.ladder().states();
        match msr {
            MSR_PERF_CTL => Some(states[g.states.requested(vcpu)].control),
            MSR_PERF_STATUS => Some(states[g.states.effective(vcpu)].status),
            _ => None,
        }
    }

    /// A guest write of `value` to PERF_CTL on vCPU `vcpu` of guest `guest`. Returns
    /// the vCPUs whose effective state changed, for the caller to report once no lock
    /// is held; logs nothing itself.
    pub fn write_perf_ctl(
        &self,
        guest: usize,
        vcpu: usize,
        value: u64,
    ) -> Result<Vec<ChangeReport>, Refusal> {
        let reports = {
            let mut g = self.guest(guest);
            let changes = g.states.request(vcpu, value)?;
            self.requests[guest].notify_all();
            self.apply_changes(guest, &g, &changes)
        };
        if !reports.is_empty() {
            self.apply_to_host();
        }
        Ok(reports)
    }

    fn apply_changes(&self, guest: usize, g: &GuestEntry, changes: &[Change]) -> Vec<ChangeReport> {
        changes
            .iter()
            .map(|c| {
                let mhz = g.states.ladder().states()[c.to].frequency.0;
                self.freqs[guest][c.vcpu]
                    .effective_mhz
                    .store(mhz, Ordering::Relaxed);
                let d = g.states.domain(c.vcpu);
                ChangeReport {
                    vcpu: c.vcpu,
                    requested: g.states.requested(c.vcpu),
                    from: c.from,
                    to: c.to,
                    mhz,
                    domain: d.domain,
                    coordination: d.coordination,
                    backend: self.backend.name(),
                }
            })
            .collect()
    }

    /// Real backends: each host core runs at the fastest frequency any vCPU allowed
    /// on it needs. Takes no guest's lock.
    fn apply_to_host(&self) {
        if self.backend.is_soft() {
            return;
        }
        let _host = self.host.lock().unwrap();
        let mut per_core: std::collections::BTreeMap<HostCore, u32> = Default::default();
        {
            let assignment = self.assignment.read().unwrap();
            for (i, freqs) in self.freqs.iter().enumerate() {
                for (cores, f) in assignment.guest(i).iter().zip(freqs) {
                    for c in cores {
                        let e = per_core.entry(*c).or_default();
                        *e = (*e).max(f.effective_mhz());
                    }
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

    /// Guest `guest`'s vCPUs were moved (the assignment says where to): its `_PSD`
    /// domains follow the new pinning and effective states are resolved again.
    pub fn repin(&self, guest: usize) {
        let cores = self.assignment.read().unwrap().guest(guest).to_vec();
        let psd = crate::acpi::guest_psd(&self.topology, &self.topology.guests[guest], &cores);
        let (name, reports) = {
            let mut g = self.guest(guest);
            let changes = g.states.set_domains(psd);
            (g.name.clone(), self.apply_changes(guest, &g, &changes))
        };
        self.apply_to_host();
        for r in reports {
            log::info!("guest {name} {r}");
        }
    }

    /// The index of the guest named `name`.
    pub fn guest_index(&self, name: &str) -> Option<usize> {
        self.guests
            .iter()
            .position(|g| g.lock().unwrap().name == name)
    }

    /// Guest `guest`'s `_PPC` now.
    pub fn ppc(&self, guest: usize) -> usize {
        self.guest(guest).states.ppc()
    }

    /// Sets guest `guest`'s `_PPC` (the live limit; its ACPI `_PPC` is the start
    /// value). Only the limit changes: the guest's vCPUs keep their states until they
    /// request new ones, which the caller asks for by notifying the guest (the
    /// placement page and its kick). Returns whether the limit changed.
    pub fn set_ppc(&self, guest: usize, ppc: usize) -> Result<bool, PpcOutOfRange> {
        self.guest(guest).states.set_ppc(ppc)
    }

    /// Waits until every vCPU of guest `guest` has requested a state since `_PPC`
    /// last changed, or `timeout` passes; returns whether they all did.
    pub fn wait_followed(&self, guest: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.guest(guest);
        loop {
            let n = self.freqs[guest].len();
            if (0..n).all(|v| g.states.followed(v)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self.requests[guest].wait_timeout(g, left).unwrap().0;
        }
    }

    /// Every vCPU of guest `guest`, as [`Self::status`] reports them.
    pub fn guest_status(&self, guest: usize) -> Vec<VcpuPState> {
        let g = self.guest(guest);
        (0..self.freqs[guest].len())
            .map(|v| VcpuPState {
                guest: g.name.clone(),
                vcpu: v,
                requested: g.states.requested(v),
                effective: g.states.effective(v),
                mhz: self.freqs[guest][v].effective_mhz(),
                backend: self.backend.name(),
                ppc: g.states.ppc(),
                followed: g.states.followed(v),
            })
            .collect()
    }

    /// Every vCPU's current P-state.
    pub fn status(&self) -> Vec<VcpuPState> {
        (0..self.guests.len())
            .flat_map(|i| self.guest_status(i))
            .collect()
    }
}

//! Running a topology: build every guest, start every vCPU thread, then coordinate
//! from the calling thread — apply each guest's failure policy, stop everything on
//! request, and report how each guest ended.
//!
//! This file holds the public types (errors, guest states, the handle, the outcome),
//! [`RunningVmm`] and its accessors. The jobs are in their own files:
//!
//! - `start.rs`: [`start()`], building every guest and its NICs, then spawning the vCPU
//!   threads;
//! - `coordinator.rs`: the coordinator loop ([`RunningVmm::wait`],
//!   [`RunningVmm::serve_pending`]), the failure policy, stopping, and `Drop`;
//! - `moves.rs`: live moves of a guest onto other cores (`ctl move`);
//! - `ppc.rs`: live P-state limits (`ctl pstate --ppc`), and the handle's wait for the
//!   guest to follow them;
//! - `status.rs`: the status report behind `ctl status`.

mod coordinator;
mod moves;
mod ppc;
mod start;
mod status;

pub use start::{open_kvm, start};

use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::channels::Channels;
use crate::control::{ControlError, ControlRequest, ControlResponse};
use crate::devices::virtio::net_thread::{NetThread, SharedNet};
use crate::host::HostCore;
use crate::host_net::{HostNet, HostNetError};
use crate::placement::Assignment;
use crate::pstate::{PStateController, VcpuPState};
use crate::topology::{GuestConfig, Topology};
use crate::vstate::vcpu::{Failure, GuestShared, VcpuEvent, VcpuThread};
use crate::vstate::vm::{BuildError, Vm, Wiring};
use compart_abi::PlacementEntry;

/// Exit status of `compart run` when a guest failed.
pub const EXIT_GUEST_FAILED: i32 = 70;

/// Why the VMM could not start.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm (is KVM available on this host, and may this user use it?)")]
    NoKvm(#[source] kvm_ioctls::Error),
    /// A KVM system call failed.
    #[error("{what} failed")]
    Kvm {
        /// The call.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A guest could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Channels could not be set up.
    #[error(transparent)]
    Channels(#[from] crate::channels::ChannelSetupError),
    /// A guest's ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] crate::acpi::AcpiError),
    /// A NIC's host side could not be set up.
    #[error(transparent)]
    HostNet(#[from] HostNetError),
    /// A thread could not be started or set up.
    #[error("{what}")]
    Thread {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How a guest ended (or that it is still running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestState {
    /// Running.
    Running,
    /// It exited with a status.
    Exited(i32),
    /// It failed.
    Failed(Failure),
    /// The VMM stopped it.
    Stopped,
}

impl std::fmt::Display for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestState::Running => f.write_str("running"),
            GuestState::Exited(status) => write!(f, "exited with status {status}"),
            GuestState::Failed(failure) => write!(f, "failed: {failure}"),
            GuestState::Stopped => f.write_str("stopped"),
        }
    }
}

/// One vCPU thread, for inspection (affinity, CPU time) from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuThreadInfo {
    /// Guest name.
    pub guest: String,
    /// vCPU index.
    pub vcpu: u32,
    /// Linux thread id.
    pub tid: i32,
    /// Host cores it is pinned to.
    pub cores: Vec<HostCore>,
}

enum Msg {
    Vcpu(VcpuEvent),
    Stop,
    Control(
        ControlRequest,
        Sender<Result<ControlResponse, ControlError>>,
    ),
}

/// Talks to a running VMM from other threads (a signal thread, the control socket, a
/// test): stop it, or send it a [`ControlRequest`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct VmmHandle {
    tx: Sender<Msg>,
    /// For waiting on guests' P-state requests without the coordinator.
    pstates: Arc<PStateController>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Vcpu(e) => write!(f, "{e:?}"),
            Msg::Stop => f.write_str("Stop"),
            Msg::Control(r, _) => write!(f, "{r:?}"),
        }
    }
}

impl VmmHandle {
    /// Requests a clean stop; returns at once.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }

    /// Sends a control request and waits (at most `timeout`) for the answer. A
    /// [`ControlRequest::SetPpc`] then waits (at most `timeout` and
    /// [`crate::control::PPC_WAIT`] again) for the guest to request a state within the
    /// new limit, and fails with [`ControlError::PpcNotFollowed`] if it does not.
    pub fn request(
        &self,
        request: ControlRequest,
        timeout: Duration,
    ) -> Result<ControlResponse, ControlError> {
        let (tx, rx) = channel();
        self.tx
            .send(Msg::Control(request, tx))
            .map_err(|_| ControlError::Stopped)?;
        let answer = rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => ControlError::Timeout,
            RecvTimeoutError::Disconnected => ControlError::Stopped,
        })??;
        match answer {
            ControlResponse::PState(report) => self.follow_ppc(report, timeout),
            other => Ok(other),
        }
    }
}

struct RunningGuest {
    config: GuestConfig,
    vm: Vm,
    wiring: Wiring,
    shared: Arc<GuestShared>,
    threads: Vec<VcpuThread>,
    state: GuestState,
}

impl RunningGuest {
    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in &self.threads {
            t.kick();
        }
    }

    fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.handle.is_none())
    }
}

/// A NIC of a running topology: its device and its thread.
struct RunningNic {
    /// Index in the topology's NICs.
    index: usize,
    /// The guest that drives it.
    guest: usize,
    device: SharedNet,
    thread: NetThread,
}

/// A started topology.
pub struct RunningVmm {
    topology: Topology,
    channels: Channels,
    /// Where each vCPU runs now: the one record, shared with the P-state controller.
    assignment: Arc<RwLock<Assignment>>,
    /// The placement entries last written, derived from `assignment`.
    placement: Vec<Vec<PlacementEntry>>,
    pstates: Arc<PStateController>,
    guests: Vec<RunningGuest>,
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    first_nonzero_exit: Option<i32>,
    /// NIC devices and their threads; their threads stop when these drop.
    nics: Vec<RunningNic>,
    /// What was created on the host for the NICs; removed when this drops, after the
    /// NICs above (fields drop in order).
    _host_net: HostNet,
}

impl std::fmt::Debug for RunningVmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningVmm")
            .field("guests", &self.guests.len())
            .finish_non_exhaustive()
    }
}

/// One side of a channel, for a host thread.
#[derive(Debug, Clone)]
pub struct HostChannelSide {
    /// The shared region (keeps it mapped).
    pub memory: Arc<compart_channel::host::SharedMemory>,
    /// Its layout.
    pub layout: compart_channel::PairLayout,
    /// Writing 1 wakes the guest on the other side.
    pub kick_peer: Arc<vmm_sys_util::eventfd::EventFd>,
    /// The other side's doorbell: readable when it rang.
    pub wake_me: Arc<vmm_sys_util::eventfd::EventFd>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Every guest, in topology order, with how it ended.
    pub guests: Vec<(String, GuestState)>,
    first_nonzero_exit: Option<i32>,
}

impl RunOutcome {
    /// The exit status for `compart run`: [`EXIT_GUEST_FAILED`] if a guest failed;
    /// otherwise the first non-zero guest exit status (1 when it does not fit 1–255);
    /// otherwise 0 (every guest exited 0 or was stopped on request).
    pub fn exit_code(&self) -> i32 {
        if self
            .guests
            .iter()
            .any(|(_, s)| matches!(s, GuestState::Failed(_)))
        {
            return EXIT_GUEST_FAILED;
        }
        match self.first_nonzero_exit {
            Some(s) if (1..=255).contains(&s) => s,
            Some(_) => 1,
            None => 0,
        }
    }

    /// How guest `name` ended.
    pub fn state(&self, name: &str) -> Option<&GuestState> {
        self.guests.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
}

impl RunningVmm {
    /// A handle that stops or controls this VMM from another thread.
    pub fn handle(&self) -> VmmHandle {
        VmmHandle {
            tx: self.tx.clone(),
            pstates: self.pstates.clone(),
        }
    }

    /// Hands side A of channel `index` to a host thread (benchmarks, tools): its region
    /// and layout, the eventfd that wakes side B, and the one side B rings. Side A's
    /// guest no longer gets that doorbell's interrupt (its irqfd is removed, so that the
    /// host thread sees the rings); it must leave the channel alone (run the `idle`
    /// image, for example).
    pub fn take_channel_side_a(&mut self, index: usize) -> Option<HostChannelSide> {
        let c = self.channels.list.get(index)?;
        let a = &mut self.guests[c.guests[0]];
        match a.vm.disconnect_irqfd(&c.kicks[1]) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                log::warn!(
                    "guest {}: cannot remove its channel irqfd: {e}",
                    a.config.name
                );
                return None;
            }
        }
        Some(HostChannelSide {
            memory: c.memory.clone(),
            layout: c.layout,
            kick_peer: c.kicks[0].clone(),
            wake_me: c.kicks[1].clone(),
        })
    }

    /// Every vCPU's current P-state and the backend applying it.
    pub fn pstates(&self) -> Vec<VcpuPState> {
        self.pstates.status()
    }

    /// The vCPU threads that have started so far.
    pub fn vcpu_threads(&self) -> Vec<VcpuThreadInfo> {
        let assignment = self.assignment.read().unwrap();
        self.guests
            .iter()
            .enumerate()
            .flat_map(|(i, g)| {
                let assignment = &assignment;
                g.threads.iter().filter_map(move |t| {
                    let tid = t.tid.load(Ordering::Acquire);
                    (tid != 0).then(|| VcpuThreadInfo {
                        guest: g.config.name.clone(),
                        vcpu: t.index,
                        tid,
                        cores: assignment.vcpu(i, t.index as usize).to_vec(),
                    })
                })
            })
            .collect()
    }
}

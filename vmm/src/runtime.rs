//! Running a topology: build every guest, start every vCPU thread, then coordinate
//! from the calling thread — apply each guest's failure policy, stop everything on
//! request, and report how each guest ended.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;

use crate::channels::Channels;
use crate::console::ConsoleSink;
use crate::control::{
    ChannelStatus, ChannelTotals, ControlError, ControlRequest, ControlResponse, EventTotals,
    GuestStatus, NicStatus, QueueDepth, StateReport, StatusReport, VcpuStatus,
};
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::net_thread::{NetThread, SharedNet};
use crate::guest_events::EventKind;
use crate::host::pin_thread;
use crate::host::{core_list, HostCore};
use crate::host_net::{HostNet, HostNetError};
use crate::placement::{self, Assignment, Placement};
use crate::pstate::{PStateController, VcpuPState};
use crate::topology::{FailurePolicy, GuestConfig, Topology};
use crate::vstate::vcpu::{install_kick_handler, Failure, GuestShared, VcpuEvent, VcpuThread};
use crate::vstate::vm::{BuildContext, BuildError, GuestVm, NicWiring, Vm, Wiring};
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
pub struct VmmHandle(Sender<Msg>);

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
        let _ = self.0.send(Msg::Stop);
    }

    /// Sends a control request and waits (at most `timeout`) for the answer.
    pub fn request(
        &self,
        request: ControlRequest,
        timeout: Duration,
    ) -> Result<ControlResponse, ControlError> {
        let (tx, rx) = channel();
        self.0
            .send(Msg::Control(request, tx))
            .map_err(|_| ControlError::Stopped)?;
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => ControlError::Timeout,
            RecvTimeoutError::Disconnected => ControlError::Stopped,
        })?
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

/// Opens `/dev/kvm`.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    Kvm::new().map_err(VmmError::NoKvm)
}

/// Builds every guest of `topology` and starts their vCPUs. Nothing runs unless every
/// guest could be built.
pub fn start(topology: &Topology, sink: ConsoleSink) -> Result<RunningVmm, VmmError> {
    let kvm = open_kvm()?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmmError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    install_kick_handler().map_err(|source| VmmError::Thread {
        what: "installing the vCPU kick signal handler".into(),
        source,
    })?;

    let (backend, notes) = crate::pstate::backend::select(
        topology.freq_backend,
        std::path::Path::new("/"),
        &topology.host_cores,
    );
    for n in notes {
        log::info!("{n}");
    }
    log::info!("frequency backend: {}", backend.name());
    let assignment = Arc::new(RwLock::new(Assignment::from_topology(topology)));
    let pstates = Arc::new(PStateController::new(topology, backend, assignment.clone()));

    let channels = Channels::create(topology)?;
    let (host_net, backends) = HostNet::open(topology)?;
    let nic_wirings = nic_wirings(topology, backends)?;
    let placement_entries = assignment.read().unwrap().placement();
    let ctx = BuildContext {
        kvm: &kvm,
        cpuid: &cpuid,
        pstates: &pstates,
        sink,
    };
    // Tables, placement pages and wiring first (cheap, and their errors are clearer
    // before any VM exists); then the VMs, one thread each: some KVM set-up calls wait
    // for an RCU grace period (the MSR filter ≈ 12 ms here), and those waits overlap.
    let mut prepared = Vec::with_capacity(topology.guests.len());
    for (i, g) in topology.guests.iter().enumerate() {
        let tables = crate::acpi::guest_tables(topology, g)?;
        let page = Placement::new(&g.name).map_err(|source| VmmError::Thread {
            what: format!("guest {}: creating its placement page", g.name),
            source,
        })?;
        page.write(&placement_entries[i]);
        let wiring = Wiring {
            channels: channels.of_guest(topology, i),
            placement: Arc::new(page),
            nics: topology
                .nics_of(i)
                .into_iter()
                .map(|n| nic_wirings[n].clone())
                .collect(),
            ipv4: topology.ipv4_of(i).cloned(),
        };
        prepared.push((tables, wiring));
    }
    let results: Vec<Result<GuestVm, BuildError>> = std::thread::scope(|s| {
        let handles: Vec<_> = topology
            .guests
            .iter()
            .zip(&prepared)
            .enumerate()
            .map(|(i, (g, (tables, wiring)))| {
                let (ctx, entries) = (&ctx, &placement_entries[i]);
                s.spawn(move || {
                    let vm = GuestVm::build(ctx, i, g, tables, wiring)?;
                    placement::apply_halt_poll(&g.name, &vm.vm, entries);
                    Ok(vm)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a guest-building thread panicked"))
            .collect()
    });
    let mut built = Vec::with_capacity(results.len());
    for r in results {
        built.push(r?);
    }
    let wirings: Vec<Wiring> = prepared.into_iter().map(|(_, w)| w).collect();

    // Every NIC's device thread, before any vCPU runs.
    let mut nics = Vec::with_capacity(topology.nics.len());
    for (g, vm) in built.iter_mut().enumerate() {
        for (slot, device) in std::mem::take(&mut vm.nics).into_iter().enumerate() {
            let index = topology.nics_of(g)[slot];
            let w = &nic_wirings[index];
            let cores = topology.guests[g].vcpu_cores[0].clone();
            let thread = NetThread::spawn(device.clone(), w.kicks.clone(), w.wake.clone(), cores)
                .map_err(|source| VmmError::Thread {
                what: format!("nic {}: starting its device thread", w.config.name),
                source,
            })?;
            nics.push(RunningNic {
                index,
                guest: g,
                device,
                thread,
            });
        }
    }

    let (tx, rx) = channel();
    let mut vmm = RunningVmm {
        topology: topology.clone(),
        channels,
        assignment,
        placement: placement_entries,
        pstates,
        guests: Vec::new(),
        rx,
        tx: tx.clone(),
        first_nonzero_exit: None,
        nics,
        _host_net: host_net,
    };
    for ((g, config), wiring) in built.into_iter().zip(&topology.guests).zip(wirings) {
        log::debug!(
            "guest {}: image ends at {:#x}, heap {:#x}+{:#x}",
            config.name,
            g.layout.image_end,
            g.layout.heap_start,
            g.layout.heap_size
        );
        vmm.guests.push(RunningGuest {
            config: config.clone(),
            vm: g.vm,
            wiring,
            shared: g.shared,
            threads: Vec::new(),
            state: GuestState::Running,
        });
        let guest = vmm.guests.last_mut().expect("just pushed");
        for vcpu in g.vcpus {
            let (name, index) = (config.name.clone(), vcpu.index);
            let tx = tx.clone();
            match vcpu.spawn(move |e| {
                let _ = tx.send(Msg::Vcpu(e));
            }) {
                Ok(t) => guest.threads.push(t),
                Err(source) => {
                    vmm.stop_all();
                    vmm.wait();
                    return Err(VmmError::Thread {
                        what: format!("guest {name}: starting the thread of vCPU {index}"),
                        source,
                    });
                }
            }
        }
    }
    Ok(vmm)
}

/// Each NIC's settings, host side and eventfds, in topology order.
fn nic_wirings(
    topology: &Topology,
    backends: Vec<Box<dyn crate::devices::virtio::tap::NetBackend>>,
) -> Result<Vec<Arc<NicWiring>>, VmmError> {
    let efd = |name: &str| {
        vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
            .map(Arc::new)
            .map_err(|source| VmmError::Thread {
                what: format!("nic {name}: creating its eventfds"),
                source,
            })
    };
    topology
        .nics
        .iter()
        .zip(backends)
        .map(|(n, backend)| {
            let name = n.host_name();
            Ok(Arc::new(NicWiring {
                config: NetConfig {
                    name: name.to_string(),
                    mac: n.mac,
                    mtu: n.mtu,
                    queue_size: n.queue_size,
                    offloads: n.offloads,
                },
                backend: std::sync::Mutex::new(Some(backend)),
                irq: efd(name)?,
                kicks: [efd(name)?, efd(name)?],
                wake: efd(name)?,
            }))
        })
        .collect()
}

impl Drop for RunningVmm {
    /// No vCPU may run once its guest's `Vm`, and the memory behind the VM's slots,
    /// are gone: a VMM dropped without [`RunningVmm::wait`] stops its guests and joins
    /// every vCPU thread before the guests (and their `Vm`s) drop.
    fn drop(&mut self) {
        if self.guests.iter().all(RunningGuest::finished) {
            return;
        }
        self.stop_all();
        while !self.guests.iter().all(RunningGuest::finished) {
            for t in self.guests.iter_mut().flat_map(|g| &mut g.threads) {
                match t.handle.take() {
                    Some(h) if h.is_finished() => {
                        let _ = h.join();
                    }
                    Some(h) => {
                        t.handle = Some(h);
                        // Again and again: a kick is lost if it lands before the thread
                        // has registered its kvm_run.
                        t.kick();
                    }
                    None => {}
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl RunningVmm {
    /// A handle that stops or controls this VMM from another thread.
    pub fn handle(&self) -> VmmHandle {
        VmmHandle(self.tx.clone())
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

    /// Moves every vCPU of `name` onto `cores`: re-pins the threads, records the new
    /// assignment, rewrites the placement pages that change (and kicks those guests),
    /// adapts KVM halt polling, and lets the P-state controller follow the new `_PSD`
    /// domains.
    fn move_guest(
        &mut self,
        name: &str,
        cores: Vec<HostCore>,
    ) -> Result<ControlResponse, ControlError> {
        let index = self
            .guests
            .iter()
            .position(|g| g.config.name == name)
            .ok_or_else(|| ControlError::NoSuchGuest {
                guest: name.to_string(),
            })?;
        if cores.is_empty() {
            return Err(ControlError::InvalidCores {
                reason: "name at least one core".into(),
            });
        }
        if let Some(c) = cores.iter().find(|c| !self.topology.host_cores.contains(c)) {
            return Err(ControlError::InvalidCores {
                reason: format!(
                    "core {c} is not one of the stack's host cores ({})",
                    core_list(&self.topology.host_cores)
                ),
            });
        }
        let g = &mut self.guests[index];
        if g.state != GuestState::Running {
            return Err(ControlError::NotRunning {
                guest: name.to_string(),
            });
        }
        for t in &g.threads {
            let tid = t.tid.load(Ordering::Acquire);
            if tid != 0 {
                pin_thread(tid, &cores).map_err(|e| ControlError::Pin {
                    guest: name.to_string(),
                    vcpu: t.index,
                    reason: e.to_string(),
                })?;
            }
        }
        for n in self.nics.iter().filter(|n| n.guest == index) {
            let tid = n.thread.tid();
            if tid != 0 {
                if let Err(e) = pin_thread(tid, &cores) {
                    log::warn!(
                        "nic {}: cannot move its thread with guest {name}: {e}",
                        self.topology.nics[n.index].host_name()
                    );
                }
            }
        }
        self.assignment.write().unwrap().move_guest(index, &cores);
        self.pstates.repin(index);
        let placed: Vec<placement::PlacedGuest<'_>> = self
            .guests
            .iter()
            .map(|g| placement::PlacedGuest {
                name: &g.config.name,
                vm: &g.vm,
                page: &g.wiring.placement,
            })
            .collect();
        let fresh = placement::apply(
            &self.assignment.read().unwrap(),
            &self.placement,
            index,
            &placed,
        );
        self.placement = fresh;
        let moved = ControlResponse::Moved {
            guest: name.to_string(),
            cores,
            dedicated: self.placement[index].iter().all(|e| e.dedicated == 1),
        };
        log::info!("{moved}");
        Ok(moved)
    }

    /// Per guest its state, per vCPU its thread, cores, placement, P-state and exits,
    /// per channel the current queue depths and the totals, and the events it caused.
    fn status(&self) -> StatusReport {
        let pstates = self.pstates.status();
        let assignment = self.assignment.read().unwrap();
        let guests = self
            .guests
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let vcpus = g
                    .threads
                    .iter()
                    .map(|t| {
                        let v = t.index as usize;
                        let p = pstates
                            .iter()
                            .find(|p| p.guest == g.config.name && p.vcpu == v);
                        VcpuStatus {
                            index: t.index,
                            tid: t.tid.load(Ordering::Acquire),
                            cores: assignment.vcpu(i, v).to_vec(),
                            dedicated: self.placement[i][v].dedicated == 1,
                            pstate: p.map_or(0, |p| p.effective),
                            mhz: p.map_or(0, |p| p.mhz),
                            backend: p.map_or("?", |p| p.backend).to_string(),
                            exits: t.exits.load(Ordering::Relaxed),
                        }
                    })
                    .collect();
                let channels = g
                    .wiring
                    .channels
                    .iter()
                    .map(|c| {
                        let layout = &self.channels.list[c.index].layout;
                        let region = c.memory.region();
                        let o = compart_channel::occupancy(&region, layout, c.side);
                        let n = compart_channel::counters(&region, layout, c.side);
                        let t = compart_channel::totals(&region, layout, c.side);
                        ChannelStatus {
                            peer: c.peer.clone(),
                            side: match c.side {
                                compart_channel::Side::A => "a",
                                compart_channel::Side::B => "b",
                            }
                            .to_string(),
                            depth: QueueDepth {
                                requests_in: o.requests_in,
                                requests_out: o.requests_out,
                                replies_in: o.replies_in,
                                replies_out: o.replies_out,
                            },
                            totals: ChannelTotals {
                                requests_sent: t.requests_sent,
                                requests_received: t.requests_received,
                                replies_sent: t.replies_sent,
                                replies_received: t.replies_received,
                                sleeps: n.sleeps,
                                kicks: n.kicks,
                            },
                        }
                    })
                    .collect();
                let nics = self
                    .nics
                    .iter()
                    .filter(|n| n.guest == i)
                    .map(|n| self.nic_status(n))
                    .collect();
                let events = &g.shared.events;
                GuestStatus {
                    name: g.config.name.clone(),
                    role: g.config.role.to_string(),
                    state: match &g.state {
                        GuestState::Running => StateReport::Running,
                        GuestState::Exited(status) => StateReport::Exited { status: *status },
                        GuestState::Failed(f) => StateReport::Failed {
                            failure: f.to_string(),
                        },
                        GuestState::Stopped => StateReport::Stopped,
                    },
                    vcpus,
                    channels,
                    nics,
                    events: EventTotals {
                        refused_msr_writes: events.total(EventKind::RefusedMsrWrite),
                        pstate_changes: events.total(EventKind::PStateChange),
                        refused_descriptor_chains: events.total(EventKind::RefusedDescriptorChain),
                        refused_device_accesses: events.total(EventKind::RefusedDeviceAccess),
                    },
                }
            })
            .collect();
        StatusReport { guests }
    }

    fn nic_status(&self, n: &RunningNic) -> NicStatus {
        let config = &self.topology.nics[n.index];
        let d = n.device.lock().unwrap_or_else(|p| p.into_inner());
        let net = d.device();
        let c = net.counters();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        NicStatus {
            name: config.host_name().to_string(),
            netns: config.netns.clone(),
            active: d.is_active(),
            features: net.acked_features().unwrap_or(0),
            thread_tid: n.thread.tid(),
            running: n.thread.is_running(),
            tx_packets: get(&c.tx_packets),
            tx_bytes: get(&c.tx_bytes),
            tx_drops: get(&c.tx_drops),
            rx_packets: get(&c.rx_packets),
            rx_bytes: get(&c.rx_bytes),
            rx_drops: get(&c.rx_drops),
            bad_chains: get(&c.bad_chains),
            refused_accesses: get(&d.refused()),
            notifications: get(&c.notifications),
            interrupts: get(&c.interrupts),
            wakeups: get(&c.wakeups),
            busy_us: get(&c.busy_ns) / 1000,
        }
    }

    fn stop_all(&mut self) {
        for g in &mut self.guests {
            if g.state == GuestState::Running {
                g.state = GuestState::Stopped;
            }
            g.stop();
        }
    }

    /// Coordinates until every guest has ended, then reports how each did.
    pub fn wait(mut self) -> RunOutcome {
        while !self.guests.iter().all(RunningGuest::finished) {
            // Block until something happens; while a guest is being stopped, wake up
            // now and then to kick its vCPUs again (a kick can only be lost if it
            // lands before a vCPU thread has registered its kvm_run).
            let stopping = self
                .guests
                .iter()
                .any(|g| g.shared.stop.load(Ordering::Acquire) && !g.finished());
            let msg = if stopping {
                self.rx.recv_timeout(Duration::from_millis(20))
            } else {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            match msg {
                Ok(msg) => self.on_message(msg),
                Err(RecvTimeoutError::Timeout) => {
                    for g in &self.guests {
                        if g.shared.stop.load(Ordering::Acquire) {
                            g.threads.iter().for_each(VcpuThread::kick);
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        RunOutcome {
            guests: self
                .guests
                .iter()
                .map(|g| (g.config.name.clone(), g.state.clone()))
                .collect(),
            first_nonzero_exit: self.first_nonzero_exit,
        }
    }

    /// Serves every message already queued (vCPU events, stop and control requests)
    /// without blocking, and returns how many there were: for a caller that
    /// coordinates from its own loop instead of [`RunningVmm::wait`].
    pub fn serve_pending(&mut self) -> usize {
        let mut n = 0;
        while let Ok(msg) = self.rx.try_recv() {
            self.on_message(msg);
            n += 1;
        }
        n
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Stop => {
                log::info!("stopping all guests");
                self.stop_all();
            }
            Msg::Vcpu(e) => self.on_event(e),
            Msg::Control(request, reply) => {
                let answer = match request {
                    ControlRequest::Move { guest, cores } => self.move_guest(&guest, cores),
                    ControlRequest::Status => Ok(ControlResponse::Status(self.status())),
                    ControlRequest::Stop => {
                        log::info!("stopping all guests (control request)");
                        self.stop_all();
                        Ok(ControlResponse::Stopping)
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn on_event(&mut self, e: VcpuEvent) {
        match e {
            VcpuEvent::Exited { guest, status } => {
                let g = &mut self.guests[guest];
                log::info!("guest {}: exited with status {status}", g.config.name);
                if g.state == GuestState::Running {
                    g.state = GuestState::Exited(status);
                    if status != 0 && self.first_nonzero_exit.is_none() {
                        self.first_nonzero_exit = Some(status);
                    }
                }
                g.stop();
            }
            VcpuEvent::Failed {
                guest,
                vcpu,
                failure,
            } => {
                let g = &mut self.guests[guest];
                let what = if failure.is_panic() {
                    "panicked"
                } else {
                    "failed"
                };
                log::error!("guest {}: vCPU {vcpu} {what}: {failure}", g.config.name);
                if g.state == GuestState::Running {
                    g.state = GuestState::Failed(failure);
                }
                g.stop();
                match g.config.on_failure {
                    FailurePolicy::StopAll => {
                        log::error!(
                            "guest {}: failure policy stop-all: stopping every guest",
                            g.config.name
                        );
                        self.stop_all();
                    }
                    FailurePolicy::StopGuest => log::warn!(
                        "guest {}: failure policy stop-guest: it stays stopped, the others run on",
                        g.config.name
                    ),
                }
            }
            VcpuEvent::Finished { guest, vcpu } => {
                let g = &mut self.guests[guest];
                if let Some(t) = g.threads.iter_mut().find(|t| t.index == vcpu) {
                    if let Some(h) = t.handle.take() {
                        let _ = h.join();
                    }
                }
                // A guest that has ended drives its NICs no more.
                if g.finished() {
                    for n in self.nics.iter_mut().filter(|n| n.guest == guest) {
                        n.thread.stop();
                    }
                }
            }
        }
    }
}

//! Starting a topology: open KVM, select the frequency backend, create the channels
//! and the NICs' host side, build every guest (tables, placement page, wiring, then
//! the VMs in parallel), start every NIC's device thread, and only then spawn the
//! vCPU threads. Nothing runs unless every guest could be built.

use std::sync::mpsc::channel;
use std::sync::{Arc, RwLock};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;

use super::{GuestState, Msg, RunningGuest, RunningNic, RunningVmm, VmmError};
use crate::channels::Channels;
use crate::console::ConsoleSink;
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::net_thread::NetThread;
use crate::host_net::HostNet;
use crate::placement::{self, Assignment, Placement};
use crate::pstate::PStateController;
use crate::topology::Topology;
use crate::vstate::vcpu::install_kick_handler;
use crate::vstate::vm::{BuildContext, BuildError, GuestVm, NicWiring, Wiring};

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
    let mut placement_entries = assignment.read().unwrap().placement();
    // Each vCPU's live `_PPC` starts as its ACPI `_PPC` (the controller's, clamped).
    for (i, entries) in placement_entries.iter_mut().enumerate() {
        let ppc = pstates.ppc(i) as u32;
        entries.iter_mut().for_each(|e| e.ppc = ppc);
    }
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

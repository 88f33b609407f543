//! One KVM VM per guest: its RAM, the boot state the VMM writes into it (boot info,
//! page tables, descriptor tables), its in-kernel interrupt controller and vCPUs.

use std::mem::ManuallyDrop;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use std::sync::Mutex;

use compart_abi::virtio::{MMIO_QUEUE_NOTIFY, NET_QUEUES};
use compart_abi::{
    fill_str_field, percpu, percpu_gpa, ports, BootInfo, Ipv4Config, Ipv4Route, NicInfo, Pod,
    BOOT_INFO_GPA, CONSOLE_BUF_GPA, CONSOLE_BUF_SIZE, IDT_GPA, MAX_CORES_LISTED, MAX_ROUTES,
    MIN_HEAP_SIZE, NIC_MMIO_GPA, NIC_MMIO_SIZE, NIC_VECTOR, PAGE_TABLES_GPA, PLACEMENT_GPA,
    PLACEMENT_VECTOR, RING3_STACK_SIZE, SPURIOUS_VECTOR,
};
use compart_channel::host::SharedMemory;
use kvm_bindings::{kvm_userspace_memory_region, CpuId, KVM_MEM_READONLY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use compart_acpi::AcpiTables;

use crate::arch;
use crate::channels::GuestChannel;
use crate::console::{ConsoleSink, GuestConsole};
use crate::devices::bus::MmioBus;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{Net, NetConfig};
use crate::devices::virtio::net_thread::SharedNet;
use crate::devices::virtio::tap::NetBackend;
use crate::guest_events::GuestEvents;
use crate::loader::{self, LoadError};
use crate::placement::Placement;
use crate::pstate::PStateController;
use crate::topology::{GuestConfig, Ipv4Settings};
use crate::vstate::interrupts::{self, Datamatch, InterruptError, MsiRoutes};
use crate::vstate::vcpu::{GuestShared, Vcpu};

/// Where Intel VMX wants its three-page TSS area: just below the 4 GiB boundary, in
/// space the guest does not use (ignored on AMD).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Why a guest VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Allocating guest RAM failed.
    #[error("guest {guest}: cannot allocate {mib} MiB of guest memory: {reason}")]
    Memory {
        /// Guest name.
        guest: String,
        /// Size asked for.
        mib: u32,
        /// The cause.
        reason: String,
    },
    /// A KVM call failed.
    #[error("guest {guest}: {what} failed")]
    Kvm {
        /// Guest name.
        guest: String,
        /// The call.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Interrupts could not be connected.
    #[error("guest {guest}: cannot connect its interrupts")]
    Interrupts {
        /// Guest name.
        guest: String,
        /// The cause.
        #[source]
        source: InterruptError,
    },
    /// The image cannot be read.
    #[error("guest {guest}: cannot read image {image}")]
    ImageRead {
        /// Guest name.
        guest: String,
        /// The image.
        image: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image cannot be loaded.
    #[error("guest {guest}: cannot load image {image}")]
    Image {
        /// Guest name.
        guest: String,
        /// The image.
        image: String,
        /// The cause.
        #[source]
        source: LoadError,
    },
    /// A device could not be put on the guest's bus.
    #[error("guest {guest}: cannot attach NIC {nic}: {reason}")]
    Device {
        /// Guest name.
        guest: String,
        /// The NIC.
        nic: String,
        /// Why.
        reason: String,
    },
    /// Guest RAM is too small for the image, stacks and heap.
    #[error(
        "guest {guest}: {mib} MiB cannot hold its image (ends at {image_end:#x}), {vcpus} \
         vCPU stack(s) of {stack_kib} KiB and a heap of at least {heap_kib} KiB; raise memory_mib"
    )]
    TooSmall {
        /// Guest name.
        guest: String,
        /// RAM.
        mib: u32,
        /// End of the image.
        image_end: u64,
        /// vCPU count.
        vcpus: u32,
        /// Stack size.
        stack_kib: u64,
        /// Least heap.
        heap_kib: u64,
    },
}

/// Where the VMM put a guest's image, stacks and heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLayout {
    /// First address after the image.
    pub image_end: u64,
    /// Heap start.
    pub heap_start: u64,
    /// Heap size.
    pub heap_size: u64,
}

impl GuestLayout {
    /// Top of vCPU `i`'s ring-3 stack.
    pub fn stack_top(&self, i: u32) -> u64 {
        self.image_end + (u64::from(i) + 1) * RING3_STACK_SIZE
    }
}

/// One guest's KVM VM and everything registered in it: guest RAM and every shared
/// region mapped as a memory slot (channel regions, the placement page, later device
/// memory), the slot allocator, the MSI routes with their GSI allocator, and the
/// eventfds connected to them. [`Vm::add_ram`] and [`Vm::map_shared`] are the only
/// paths that register memory, so "every mapping outlives the VM's use of it" holds
/// by construction: `Drop` closes the VM first, then the mappings go (and the running
/// VMM joins the VM's vCPU threads before that; see `RunningVmm`'s `Drop`).
#[derive(Debug)]
pub struct Vm {
    /// Closed first, in `Drop`; the fields below drop after it.
    fd: ManuallyDrop<VmFd>,
    /// Guest RAM.
    memory: Option<GuestMemoryMmap>,
    /// Shared regions mapped as slots.
    shared: Vec<Arc<SharedMemory>>,
    next_slot: u32,
    msi: MsiRoutes,
    /// Eventfds registered as irqfds, with their GSI.
    irqfds: Vec<(Arc<EventFd>, u32)>,
    /// Eventfds registered as ioeventfds, kept open with the VM.
    ioeventfds: Vec<Arc<EventFd>>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // SAFETY: this is the only place `fd` is dropped, and nothing uses it after:
        // the struct is being dropped, and the other fields drop when this returns.
        unsafe { ManuallyDrop::drop(&mut self.fd) };
    }
}

impl Vm {
    /// A new VM of `kvm`, with nothing registered yet.
    pub fn new(kvm: &Kvm) -> Result<Vm, kvm_ioctls::Error> {
        let fd = kvm.create_vm()?;
        // Intel needs it; AMD and software KVM ignore it. Failure only matters on
        // Intel, where KVM_RUN would then fail with a clear error.
        if let Err(e) = fd.set_tss_address(KVM_TSS_ADDRESS) {
            log::debug!("KVM_SET_TSS_ADDR: {e}");
        }
        Ok(Vm {
            fd: ManuallyDrop::new(fd),
            memory: None,
            shared: Vec::new(),
            next_slot: 0,
            msi: MsiRoutes::default(),
            irqfds: Vec::new(),
            ioeventfds: Vec::new(),
        })
    }

    /// KVM's VM, for the calls that register nothing (vCPUs, irqchip, capabilities).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    fn set_slot(
        &mut self,
        gpa: u64,
        len: u64,
        host: u64,
        flags: u32,
    ) -> Result<u32, kvm_ioctls::Error> {
        let slot = self.next_slot;
        let r = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: both callers pass a mapping [host, host + len) that they have just
        // stored in `self` (RAM in `memory`, a region in `shared`), which keeps it
        // mapped as long as `self` lives. When `self` drops, `Drop` closes the VM fd
        // first, and no vCPU of the VM runs any more by then: `RunningVmm` joins every
        // vCPU thread before its guests' `Vm`s drop, and a `GuestVm` that never ran
        // has no running vCPU. So no guest access reaches the slot after the mapping
        // is gone.
        unsafe { self.fd.set_user_memory_region(r) }?;
        self.next_slot += 1;
        Ok(slot)
    }

    /// Registers guest RAM (once), each of its regions as a slot.
    pub fn add_ram(&mut self, memory: GuestMemoryMmap) -> Result<(), kvm_ioctls::Error> {
        assert!(self.memory.is_none(), "guest RAM is registered once");
        let regions: Vec<(u64, u64, u64)> = memory
            .iter()
            .map(|region| {
                let host = memory
                    .get_host_address(region.start_addr())
                    .expect("the region's own start is inside guest memory");
                (region.start_addr().0, region.len(), host as u64)
            })
            .collect();
        self.memory = Some(memory);
        for (gpa, len, host) in regions {
            self.set_slot(gpa, len, host, 0)?;
        }
        Ok(())
    }

    /// Maps `region` at `gpa` (read-only to the guest if `read_only`); returns its slot.
    pub fn map_shared(
        &mut self,
        gpa: u64,
        region: Arc<SharedMemory>,
        read_only: bool,
    ) -> Result<u32, kvm_ioctls::Error> {
        let (len, host) = (region.len() as u64, region.region().as_ptr() as u64);
        self.shared.push(region);
        let flags = if read_only { KVM_MEM_READONLY } else { 0 };
        self.set_slot(gpa, len, host, flags)
    }

    /// Allocates a GSI routed to `vector` on vCPU `dest_apic` (see [`Vm::apply_routes`]).
    pub fn route_msi(&mut self, dest_apic: u8, vector: u8) -> Result<u32, InterruptError> {
        self.msi.add(dest_apic, vector)
    }

    /// Sets every route allocated so far, in one call.
    pub fn apply_routes(&self) -> Result<(), InterruptError> {
        self.msi.apply(&self.fd)
    }

    /// Makes a write to `fd` raise `gsi`.
    pub fn connect_irqfd(&mut self, fd: Arc<EventFd>, gsi: u32) -> Result<(), InterruptError> {
        interrupts::register_irqfd(&self.fd, &fd, gsi)?;
        self.irqfds.push((fd, gsi));
        Ok(())
    }

    /// Stops `fd` raising its GSI; `Ok(false)` if it was not connected.
    pub fn disconnect_irqfd(&mut self, fd: &Arc<EventFd>) -> Result<bool, InterruptError> {
        let Some(i) = self.irqfds.iter().position(|(f, _)| Arc::ptr_eq(f, fd)) else {
            return Ok(false);
        };
        interrupts::unregister_irqfd(&self.fd, fd, self.irqfds[i].1)?;
        self.irqfds.remove(i);
        Ok(true)
    }

    /// Makes a guest store to `gpa` (that `datamatch` selects) signal `fd`.
    pub fn connect_ioeventfd(
        &mut self,
        fd: Arc<EventFd>,
        gpa: u64,
        datamatch: Datamatch,
    ) -> Result<(), InterruptError> {
        interrupts::register_mmio_ioeventfd(&self.fd, &fd, gpa, datamatch)?;
        self.ioeventfds.push(fd);
        Ok(())
    }

    /// Sets KVM's halt polling for the VM: worth its CPU time on a dedicated core,
    /// harmful on a shared one (it keeps the sharer off the core).
    pub fn set_halt_poll(&self, ns: u64) -> Result<(), kvm_ioctls::Error> {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_HALT_POLL,
            args: [ns, 0, 0, 0],
            ..Default::default()
        };
        self.fd.enable_cap(&cap)
    }
}

/// A built guest VM whose vCPUs have not started yet.
#[derive(Debug)]
pub struct GuestVm {
    /// The VM and everything registered in it; kept while the guest runs.
    pub vm: Vm,
    /// What the vCPU threads share.
    pub shared: Arc<GuestShared>,
    /// The vCPUs, to be moved onto their threads.
    pub vcpus: Vec<Vcpu>,
    /// Memory layout.
    pub layout: GuestLayout,
    /// Its NICs' devices, in boot-info order, for their threads.
    pub nics: Vec<SharedNet>,
}

/// What every guest of a run is built with.
#[derive(Clone)]
pub struct BuildContext<'a> {
    /// `/dev/kvm`.
    pub kvm: &'a Kvm,
    /// KVM's supported CPUID.
    pub cpuid: &'a CpuId,
    /// Where vCPUs send their P-state requests.
    pub pstates: &'a Arc<PStateController>,
    /// Where console lines go.
    pub sink: ConsoleSink,
}

impl std::fmt::Debug for BuildContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext").finish_non_exhaustive()
    }
}

impl GuestVm {
    /// Builds guest `index` of the topology. Order matters for start-up cost: the
    /// in-kernel irqchip is created after the memory slots (the other way round every
    /// later slot change costs milliseconds).
    pub fn build(
        ctx: &BuildContext<'_>,
        index: usize,
        config: &GuestConfig,
        acpi: &AcpiTables,
        wiring: &Wiring,
    ) -> Result<GuestVm, BuildError> {
        let name = &config.name;
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(0),
            config.memory_bytes() as usize,
        )])
        .map_err(|e| BuildError::Memory {
            guest: name.clone(),
            mib: config.memory_mib,
            reason: e.to_string(),
        })?;
        let (image, layout) = load_image(config, &memory)?;
        let mut vm = register(ctx.kvm, config, memory.clone(), wiring)?;

        // The NICs' register windows on the bus; their queue notifies as ioeventfds
        // (datamatch: the queue index), so that a notify never reaches the VMM.
        let events = Arc::new(GuestEvents::new(name));
        let mut bus = MmioBus::new();
        let mut nics = Vec::with_capacity(wiring.nics.len());
        for (slot, nic) in wiring.nics.iter().enumerate() {
            let base = NIC_MMIO_GPA + slot as u64 * NIC_MMIO_SIZE;
            let device_err = |reason: String| BuildError::Device {
                guest: name.clone(),
                nic: nic.config.name.clone(),
                reason,
            };
            let backend = nic
                .backend
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .ok_or_else(|| device_err("its host side was already taken".into()))?;
            let net = Net::new(
                nic.config.clone(),
                backend,
                nic.irq.clone(),
                nic.kicks.clone(),
                nic.wake.clone(),
                events.clone(),
            );
            let transport: SharedNet = Arc::new(Mutex::new(MmioTransport::new(
                net,
                memory.clone(),
                events.clone(),
            )));
            bus.insert(base, NIC_MMIO_SIZE, transport.clone())
                .map_err(|e| device_err(e.to_string()))?;
            for q in 0..NET_QUEUES {
                vm.connect_ioeventfd(
                    nic.kicks[q as usize].clone(),
                    base + MMIO_QUEUE_NOTIFY,
                    Datamatch::U32(u32::from(q)),
                )
                .map_err(|source| BuildError::Interrupts {
                    guest: name.clone(),
                    source,
                })?;
            }
            nics.push(transport);
        }

        let shared = Arc::new(GuestShared {
            index,
            name: name.clone(),
            stop: AtomicBool::new(false),
            memory,
            console: GuestConsole::new(ctx.sink.clone()),
            events,
            mmio: Arc::new(bus),
            irq_entries: (config.vcpus() == 1)
                .then_some((image.header.irq_entry, image.header.irq_entry_no_eoi)),
        });
        let vcpus = (0..config.vcpus())
            .map(|i| {
                Ok(Vcpu {
                    fd: create_vcpu(ctx, &vm, config, i, image.header.entry, &layout)?,
                    index: i,
                    guest: shared.clone(),
                    cores: config.vcpu_cores[i as usize].clone(),
                    pstates: ctx.pstates.clone(),
                })
            })
            .collect::<Result<Vec<Vcpu>, BuildError>>()?;
        // KVM knows the TSC rate the guest sees (rdtsc runs natively).
        let tsc_khz = match vcpus.first().map(|v| v.fd.get_tsc_khz()) {
            Some(Ok(khz)) => u64::from(khz),
            _ => 0,
        };
        write_boot_state(
            &shared.memory,
            config,
            &layout,
            &image,
            acpi,
            tsc_khz,
            wiring,
        );
        Ok(GuestVm {
            vm,
            shared,
            vcpus,
            layout,
            nics,
        })
    }
}

fn kvm_err(guest: &str, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    let guest = guest.to_string();
    move |source| BuildError::Kvm {
        guest,
        what,
        source,
    }
}

/// Loads the guest's image into `memory` and places the ring-3 stacks and the heap
/// after it; refuses a guest whose RAM cannot hold them.
fn load_image(
    config: &GuestConfig,
    memory: &GuestMemoryMmap,
) -> Result<(loader::LoadedImage, GuestLayout), BuildError> {
    let (name, size) = (&config.name, config.memory_bytes());
    let image_bytes =
        crate::images::read(&config.image).map_err(|source| BuildError::ImageRead {
            guest: name.clone(),
            image: config.image.to_string(),
            source,
        })?;
    let image = loader::load(&image_bytes, memory, size).map_err(|source| BuildError::Image {
        guest: name.clone(),
        image: config.image.to_string(),
        source,
    })?;
    let vcpus = config.vcpus();
    let stacks_end = image.end + u64::from(vcpus) * RING3_STACK_SIZE;
    if stacks_end + MIN_HEAP_SIZE > size {
        return Err(BuildError::TooSmall {
            guest: name.clone(),
            mib: config.memory_mib,
            image_end: image.end,
            vcpus,
            stack_kib: RING3_STACK_SIZE / 1024,
            heap_kib: MIN_HEAP_SIZE / 1024,
        });
    }
    let layout = GuestLayout {
        image_end: image.end,
        heap_start: stacks_end,
        heap_size: size - stacks_end,
    };
    Ok((image, layout))
}

/// The VM with everything registered, in the order start-up cost needs: memory slots
/// (RAM, channel regions, the read-only placement page), then the in-kernel irqchip,
/// then interrupts and the MSR filter.
fn register(
    kvm: &Kvm,
    config: &GuestConfig,
    memory: GuestMemoryMmap,
    wiring: &Wiring,
) -> Result<Vm, BuildError> {
    let name = &config.name;
    let mut vm = Vm::new(kvm).map_err(kvm_err(name, "KVM_CREATE_VM"))?;
    vm.add_ram(memory)
        .map_err(kvm_err(name, "KVM_SET_USER_MEMORY_REGION"))?;
    for c in &wiring.channels {
        vm.map_shared(c.region_gpa(), c.memory.clone(), false)
            .map_err(kvm_err(name, "KVM_SET_USER_MEMORY_REGION (channel)"))?;
    }
    vm.map_shared(PLACEMENT_GPA, wiring.placement.memory.clone(), true)
        .map_err(kvm_err(name, "KVM_SET_USER_MEMORY_REGION (placement)"))?;
    vm.fd()
        .create_irq_chip()
        .map_err(kvm_err(name, "KVM_CREATE_IRQCHIP"))?;
    connect_interrupts(&mut vm, wiring).map_err(|source| BuildError::Interrupts {
        guest: name.clone(),
        source,
    })?;
    crate::pstate::msrs::intercept(vm.fd()).map_err(kvm_err(name, "KVM_X86_SET_MSR_FILTER"))?;
    Ok(vm)
}

/// vCPU `i` in its start state: CPUID, long mode in ring 3, its entry and stack, FPU,
/// and a software-enabled local APIC.
fn create_vcpu(
    ctx: &BuildContext<'_>,
    vm: &Vm,
    config: &GuestConfig,
    i: u32,
    entry: u64,
    layout: &GuestLayout,
) -> Result<VcpuFd, BuildError> {
    let err = |what| kvm_err(&config.name, what);
    let fd = vm
        .fd()
        .create_vcpu(u64::from(i))
        .map_err(err("KVM_CREATE_VCPU"))?;
    let cpuid = arch::cpuid::for_vcpu(ctx.cpuid.clone(), i, config.vcpus());
    fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
    let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    fd.set_sregs(&arch::regs::sregs(sregs, i))
        .map_err(err("KVM_SET_SREGS"))?;
    fd.set_regs(&arch::regs::regs(entry, layout.stack_top(i), i))
        .map_err(err("KVM_SET_REGS"))?;
    fd.set_fpu(&arch::regs::fpu()).map_err(err("KVM_SET_FPU"))?;
    let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    // Doorbells and the placement kick need an enabled APIC; spurious vector 0xff.
    arch::lapic::software_enable(&mut lapic, SPURIOUS_VECTOR);
    arch::lapic::tsc_deadline_timer(&mut lapic, compart_abi::TIMER_VECTOR);
    fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
    Ok(fd)
}

/// What connects a guest to the others and to the host: its channels, its
/// placement page, the NICs it drives and (for an ip server) its IPv4 configuration.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// Its channels, in boot-info order.
    pub channels: Vec<GuestChannel>,
    /// Its placement page.
    pub placement: Arc<Placement>,
    /// The NICs it drives, in boot-info order.
    pub nics: Vec<Arc<NicWiring>>,
    /// The IPv4 configuration its boot info carries.
    pub ipv4: Option<Ipv4Settings>,
}

/// One NIC of a guest before the guest is built: its settings, its host side (taken
/// by the build), and the eventfds of its interrupt, queue notifies and thread wake-up.
#[derive(Debug)]
pub struct NicWiring {
    /// Settings.
    pub config: NetConfig,
    /// The host side, until the device takes it.
    pub backend: Mutex<Option<Box<dyn NetBackend>>>,
    /// Used-buffer interrupt: an irqfd on `NIC_VECTOR + slot`.
    pub irq: Arc<EventFd>,
    /// Receive and transmit queue notifies: ioeventfds.
    pub kicks: [Arc<EventFd>; 2],
    /// Wakes the device thread on activation and reset.
    pub wake: Arc<EventFd>,
}

/// Every channel's wake-up, the placement kick and each NIC's used-buffer interrupt
/// as an MSI into vCPU 0 (routes first, set in one call, then the irqfds), and each
/// channel's doorbell page as an ioeventfd.
fn connect_interrupts(vm: &mut Vm, wiring: &Wiring) -> Result<(), InterruptError> {
    let mut gsis = Vec::with_capacity(wiring.channels.len());
    for c in &wiring.channels {
        gsis.push(vm.route_msi(0, c.vector())?);
    }
    let placement_gsi = vm.route_msi(0, PLACEMENT_VECTOR)?;
    let mut nic_gsis = Vec::with_capacity(wiring.nics.len());
    for slot in 0..wiring.nics.len() {
        nic_gsis.push(vm.route_msi(0, NIC_VECTOR + slot as u8)?);
    }
    vm.apply_routes()?;
    for (n, gsi) in wiring.nics.iter().zip(nic_gsis) {
        vm.connect_irqfd(n.irq.clone(), gsi)?;
    }
    for (c, gsi) in wiring.channels.iter().zip(gsis) {
        vm.connect_irqfd(c.wake_me.clone(), gsi)?;
        vm.connect_ioeventfd(c.kick_peer.clone(), c.doorbell_gpa(), Datamatch::Any)?;
    }
    vm.connect_irqfd(wiring.placement.kick.clone(), placement_gsi)
}

/// An IPv4 configuration as the boot info carries it (routes were validated to fit).
pub fn ipv4_info(v4: &Ipv4Settings) -> Ipv4Config {
    let mut c = Ipv4Config::EMPTY;
    c.address = v4.address.addr.octets();
    c.prefix_len = v4.address.prefix_len;
    if let Some(g) = v4.gateway {
        c.has_gateway = 1;
        c.gateway = g.octets();
    }
    c.route_count = v4.routes.len().min(MAX_ROUTES) as u8;
    for (slot, (dest, via)) in c.routes.iter_mut().zip(&v4.routes) {
        *slot = Ipv4Route {
            dest: dest.addr.octets(),
            prefix_len: dest.prefix_len,
            via: via.octets(),
            ..Ipv4Route::EMPTY
        };
    }
    c
}

/// Writes boot info, ACPI tables, page tables, IDT and per-vCPU GDT/TSS. All addresses
/// are fixed by the ABI and below the 2 MiB the topology guarantees every guest has.
fn write_boot_state(
    mem: &GuestMemoryMmap,
    config: &GuestConfig,
    layout: &GuestLayout,
    image: &loader::LoadedImage,
    acpi: &AcpiTables,
    tsc_khz: u64,
    wiring: &Wiring,
) {
    let mut info = BootInfo::empty();
    info.placement_page = PLACEMENT_GPA;
    info.channel_count = wiring.channels.len() as u32;
    for (slot, c) in info.channels.iter_mut().zip(&wiring.channels) {
        *slot = c.info();
    }
    info.nic_count = wiring.nics.len() as u32;
    for (slot, (entry, n)) in info.nics.iter_mut().zip(&wiring.nics).enumerate() {
        *entry = NicInfo {
            mmio_gpa: NIC_MMIO_GPA + slot as u64 * NIC_MMIO_SIZE,
            mmio_size: NIC_MMIO_SIZE,
            vector: u32::from(NIC_VECTOR) + slot as u32,
            mtu: u32::from(n.config.mtu),
            mac: n.config.mac,
            queue_size: u32::from(n.config.queue_size),
            ..NicInfo::EMPTY
        };
    }
    if let Some(v4) = &wiring.ipv4 {
        info.ipv4 = ipv4_info(v4);
    }
    info.tsc_khz = tsc_khz;
    info.acpi_rsdp = acpi.rsdp_gpa();
    // Lengths were validated with the topology.
    info.name_len = fill_str_field(&mut info.name, &config.name).unwrap_or(0);
    info.role_len = fill_str_field(&mut info.role, config.role.as_str()).unwrap_or(0);
    info.cmdline_len = fill_str_field(&mut info.cmdline, &config.cmdline).unwrap_or(0);
    info.mem_size = config.memory_bytes();
    info.heap_start = layout.heap_start;
    info.heap_size = layout.heap_size;
    info.console_buf = CONSOLE_BUF_GPA;
    info.console_buf_size = CONSOLE_BUF_SIZE;
    info.vcpu_count = config.vcpus();
    for (i, cores) in config.vcpu_cores.iter().enumerate() {
        let v = &mut info.vcpus[i];
        v.apic_id = i as u32;
        v.host_core_count = cores.len().min(MAX_CORES_LISTED) as u32;
        for (slot, c) in v.host_cores.iter_mut().zip(cores) {
            *slot = c.0;
        }
    }
    let write = |bytes: &[u8], gpa: u64| {
        mem.write_slice(bytes, GuestAddress(gpa))
            .expect("fixed ABI addresses lie in the low 2 MiB of every guest");
    };
    write(info.as_bytes(), BOOT_INFO_GPA);
    // Built for ACPI_GPA and at most ACPI_SIZE bytes (see crate::acpi).
    write(acpi.bytes(), acpi.base_gpa());
    write(
        &arch::paging::page_tables(
            &image.segments,
            compart_abi::lapic_user_accessible(config.vcpus()),
        ),
        PAGE_TABLES_GPA,
    );
    write(&arch::gdt::idt(&image.header), IDT_GPA);
    for i in 0..config.vcpus() {
        let gdt: Vec<u8> = arch::gdt::gdt(i)
            .iter()
            .flat_map(|d| d.to_le_bytes())
            .collect();
        write(&gdt, percpu_gpa(i) + percpu::GDT);
        write(
            &arch::gdt::tss_and_io_bitmap(i, &ports::RING3),
            percpu_gpa(i) + percpu::TSS,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::interrupts::tests::kvm_for_test;

    #[test]
    fn a_vm_numbers_its_slots_and_knows_its_irqfds() {
        let Some(kvm) = kvm_for_test() else {
            return;
        };
        let mut vm = Vm::new(&kvm).unwrap();
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        vm.add_ram(ram).unwrap();
        let page = Arc::new(
            SharedMemory::create("compart-vm-test", compart_abi::PAGE_SIZE as usize).unwrap(),
        );
        assert_eq!(vm.map_shared(1 << 30, page.clone(), true).unwrap(), 1);
        assert_eq!(vm.map_shared(2 << 30, page, false).unwrap(), 2);
        vm.fd().create_irq_chip().unwrap();
        let gsi = vm.route_msi(0, 0x40).unwrap();
        vm.apply_routes().unwrap();
        let (a, b) = (
            Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        );
        vm.connect_irqfd(a.clone(), gsi).unwrap();
        assert!(!vm.disconnect_irqfd(&b).unwrap(), "b was never connected");
        assert!(vm.disconnect_irqfd(&a).unwrap());
        assert!(!vm.disconnect_irqfd(&a).unwrap(), "only once");
    }

    #[test]
    fn an_ipv4_configuration_reaches_the_boot_info_in_network_byte_order() {
        let v4 = Ipv4Settings {
            address: "198.18.0.2/24".parse().unwrap(),
            gateway: Some("198.18.0.1".parse().unwrap()),
            routes: vec![(
                "198.19.0.0/16".parse().unwrap(),
                "198.18.0.254".parse().unwrap(),
            )],
        };
        let c = ipv4_info(&v4);
        assert!(c.is_set());
        assert_eq!((c.address, c.prefix_len), ([198, 18, 0, 2], 24));
        assert_eq!((c.has_gateway, c.gateway), (1, [198, 18, 0, 1]));
        assert_eq!(c.routes().len(), 1);
        assert_eq!(c.routes()[0].dest, [198, 19, 0, 0]);
        assert_eq!(c.routes()[0].prefix_len, 16);
        assert_eq!(c.routes()[0].via, [198, 18, 0, 254]);
        let none = ipv4_info(&Ipv4Settings {
            gateway: None,
            routes: vec![],
            ..v4
        });
        assert_eq!(none.has_gateway, 0);
        assert_eq!(none.route_count, 0);
    }
}

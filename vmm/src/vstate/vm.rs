//! One KVM VM per guest: its RAM, the boot state the VMM writes into it (boot info,
//! page tables, descriptor tables), its in-kernel interrupt controller and vCPUs.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use compart_abi::{
    fill_str_field, percpu, percpu_gpa, ports, BootInfo, Pod, BOOT_INFO_GPA, CONSOLE_BUF_GPA,
    CONSOLE_BUF_SIZE, IDT_GPA, MAX_CHANNELS, MAX_CORES_LISTED, MIN_HEAP_SIZE, PAGE_SIZE,
    PAGE_TABLES_GPA, PLACEMENT_GPA, PLACEMENT_VECTOR, RING3_STACK_SIZE, SPURIOUS_VECTOR,
};
use kvm_bindings::{
    kvm_irq_routing_msi, kvm_userspace_memory_region, CpuId, KvmIrqRouting, KVM_IRQ_ROUTING_MSI,
    KVM_MEM_READONLY,
};
use kvm_ioctls::{
    IoEventAddress, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, NoDatamatch,
    VmFd,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use compart_acpi::AcpiTables;

use crate::arch;
use crate::channels::{GuestChannel, FIRST_GSI};
use crate::console::{ConsoleSink, GuestConsole};
use crate::loader::{self, LoadError};
use crate::placement::Placement;
use crate::pstate::PStateController;
use crate::topology::GuestConfig;
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
    #[error("guest {guest}: {what} failed: {source}")]
    Kvm {
        /// Guest name.
        guest: String,
        /// The call.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The image cannot be read.
    #[error("guest {guest}: cannot read image {image}: {source}")]
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
    #[error("guest {guest}: image {image}: {source}")]
    Image {
        /// Guest name.
        guest: String,
        /// The image.
        image: String,
        /// The cause.
        #[source]
        source: LoadError,
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

/// A built guest VM whose vCPUs have not started yet.
#[derive(Debug)]
pub struct GuestVm {
    /// KVM's VM; kept open while the guest runs.
    pub vm: VmFd,
    /// What the vCPU threads share.
    pub shared: Arc<GuestShared>,
    /// The vCPUs, to be moved onto their threads.
    pub vcpus: Vec<Vcpu>,
    /// Memory layout.
    pub layout: GuestLayout,
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
        let (kvm, supported_cpuid, pstates) = (ctx.kvm, ctx.cpuid, ctx.pstates);
        let sink = ctx.sink.clone();
        let name = &config.name;
        let kvm_err = |what| {
            move |source| BuildError::Kvm {
                guest: name.clone(),
                what,
                source,
            }
        };
        let size = config.memory_bytes();
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])
            .map_err(|e| BuildError::Memory {
                guest: name.clone(),
                mib: config.memory_mib,
                reason: e.to_string(),
            })?;

        let image_bytes =
            crate::images::read(&config.image).map_err(|source| BuildError::ImageRead {
                guest: name.clone(),
                image: config.image.to_string(),
                source,
            })?;
        let image =
            loader::load(&image_bytes, &memory, size).map_err(|source| BuildError::Image {
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

        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        // Intel needs it; AMD and software KVM ignore it. Failure only matters on
        // Intel, where KVM_RUN would then fail with a clear error.
        if let Err(e) = vm.set_tss_address(KVM_TSS_ADDRESS) {
            log::debug!("guest {name}: KVM_SET_TSS_ADDR: {e}");
        }
        for (slot, region) in memory.iter().enumerate() {
            let host = memory
                .get_host_address(region.start_addr())
                .expect("the region's own start is inside guest memory");
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping [host, host + len) belongs to `memory`, which the
            // guest's shared state keeps alive at least as long as the VM fd.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        // Channel regions (shared with the peer) and the placement page (read-only).
        let mut slot = memory.iter().count() as u32;
        for c in &wiring.channels {
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: c.region_gpa(),
                memory_size: c.memory.len() as u64,
                userspace_addr: c.memory.region().as_ptr() as u64,
            };
            // SAFETY: the region's mapping is kept alive by the guest (GuestVm holds
            // the Arc) for as long as the VM exists.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (channel)"))?;
            slot += 1;
        }
        let r = kvm_userspace_memory_region {
            slot,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: PLACEMENT_GPA,
            memory_size: PAGE_SIZE,
            userspace_addr: wiring.placement.memory.region().as_ptr() as u64,
        };
        // SAFETY: the placement page is kept alive by the guest (GuestVm holds the
        // Arc) for as long as the VM exists; the guest may only read it.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (placement)"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        connect_doorbells(&vm, wiring).map_err(kvm_err("doorbell setup"))?;
        intercept_pstate_msrs(&vm).map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))?;

        let shared = Arc::new(GuestShared {
            index,
            name: name.clone(),
            stop: AtomicBool::new(false),
            memory,
            console: GuestConsole::new(sink),
        });

        let mut vcpu_list = Vec::with_capacity(vcpus as usize);
        for i in 0..vcpus {
            let fd = vm
                .create_vcpu(u64::from(i))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = arch::cpuid::for_vcpu(supported_cpuid.clone(), i, vcpus);
            fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            fd.set_sregs(&arch::regs::sregs(sregs, i))
                .map_err(kvm_err("KVM_SET_SREGS"))?;
            fd.set_regs(&arch::regs::regs(
                image.header.entry,
                layout.stack_top(i),
                i,
            ))
            .map_err(kvm_err("KVM_SET_REGS"))?;
            fd.set_fpu(&arch::regs::fpu())
                .map_err(kvm_err("KVM_SET_FPU"))?;
            let mut lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
            // Spurious-interrupt vector register: software-enable the local APIC so
            // that doorbell interrupts are accepted, spurious vector 0xff.
            let svr = compart_abi::lapic::SVR_ENABLE | u32::from(SPURIOUS_VECTOR);
            for (k, b) in svr.to_le_bytes().iter().enumerate() {
                lapic.regs[compart_abi::lapic::SVR as usize + k] = *b as _;
            }
            fd.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
            vcpu_list.push(Vcpu {
                fd,
                index: i,
                guest: shared.clone(),
                cores: config.vcpu_cores[i as usize].clone(),
                freq: pstates.vcpu_freq(index, i as usize),
                pstates: pstates.clone(),
            });
        }
        // KVM knows the TSC rate the guest sees (rdtsc runs natively).
        let tsc_khz = match vcpu_list.first().map(|v| v.fd.get_tsc_khz()) {
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
            vcpus: vcpu_list,
            layout,
        })
    }
}

/// What connects a guest to the others: its channels and its placement page.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// Its channels, in boot-info order.
    pub channels: Vec<GuestChannel>,
    /// Its placement page.
    pub placement: Arc<Placement>,
}

/// MSI routes into vCPU 0 for every channel's wake-up and the placement kick, the
/// wake-ups as irqfds, and each channel's doorbell page as an ioeventfd.
fn connect_doorbells(vm: &VmFd, wiring: &Wiring) -> Result<(), kvm_ioctls::Error> {
    let placement_gsi = FIRST_GSI + MAX_CHANNELS as u32;
    let mut routes: Vec<(u32, u8)> = wiring
        .channels
        .iter()
        .map(|c| (c.gsi(), c.vector()))
        .collect();
    routes.push((placement_gsi, PLACEMENT_VECTOR));
    let mut table =
        KvmIrqRouting::new(routes.len()).map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
    for (entry, &(gsi, vector)) in table.as_mut_slice().iter_mut().zip(&routes) {
        entry.gsi = gsi;
        entry.type_ = KVM_IRQ_ROUTING_MSI;
        // Fixed delivery, physical destination APIC id 0, edge-triggered.
        entry.u.msi = kvm_irq_routing_msi {
            address_lo: compart_abi::lapic::BASE_GPA as u32,
            address_hi: 0,
            data: u32::from(vector),
            ..Default::default()
        };
    }
    vm.set_gsi_routing(&table)?;
    for c in &wiring.channels {
        vm.register_irqfd(&c.wake_me, c.gsi())?;
        vm.register_ioevent(
            &c.kick_peer,
            &IoEventAddress::Mmio(c.doorbell_gpa()),
            NoDatamatch,
        )?;
    }
    vm.register_irqfd(&wiring.placement.kick, placement_gsi)?;
    Ok(())
}

/// Sets KVM's halt polling for the VM: worth its CPU time on a dedicated core, harmful
/// on a shared one (it keeps the sharer off the core).
pub fn set_halt_poll(vm: &VmFd, ns: u64) -> Result<(), kvm_ioctls::Error> {
    let cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_HALT_POLL,
        args: [ns, 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)
}

/// Sends guest accesses of the P-state MSRs (PERF_CTL, PERF_STATUS, APERF, MPERF) to
/// the VMM: user-space MSR exits for filtered MSRs, and a filter that denies (that
/// is, forwards) exactly those. Without the filter KVM answers some itself.
fn intercept_pstate_msrs(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    let cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)?;
    let deny = [0u8; 1];
    let ranges: Vec<MsrFilterRange<'_>> = crate::pstate::INTERCEPTED
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
    write(&arch::paging::page_tables(&image.segments), PAGE_TABLES_GPA);
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

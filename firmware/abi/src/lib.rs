//! The contract between the `compart` VMM and the guests it runs.
//!
//! Everything both sides of the wall must agree on is defined here, once: the fixed
//! guest-physical layout and each area's access rights, the boot-info page the VMM
//! fills in before the first instruction, the firmware header every guest image
//! starts with, the I/O ports a guest uses to talk to the VMM, and the operations of
//! the ring-0 stub; the MSRs of the P-state interface ([`msr`]) and the APICs
//! ([`lapic`], [`ioapic`]); the ACPI values the table writer and the guest's reader
//! share ([`acpi`]); the placement page's sequence lock, both halves ([`placement`]);
//! and, once for all of these structures, the proof that they may cross the wall as
//! raw bytes ([`Pod`]). [`le`] reads little-endian integers from untrusted bytes.
//!
//! ```text
//!  guest-physical memory (identity-mapped; 4 KiB pages below 2 MiB + MAX_IMAGE_SIZE,
//!  2 MiB pages above; access rights per area: S = supervisor only, U = ring 3 too,
//!  RO = read-only, X = executable, everything else no-execute)
//!
//!  0x0000_0000  ┌──────────────────────────┐ not present, so null dereferences fault
//!  0x0000_1000  │ BootInfo                 │ U RO   written by the VMM
//!  0x0000_2000  │ console buffer           │ U      guest writes a line, then OUT CONSOLE
//!  0x0000_3000  │ IDT (256 gates)          │ S RO   written by the VMM
//!  0x0000_4000  │ page tables              │ S RO   PML4, PDPT, 4 PDs, 1 + 8 PTs
//!  0x0010_0000  │ per-vCPU areas           │ S      GDT, TSS + I/O bitmap, ring-0 stacks
//!  0x0018_0000  │ ACPI tables              │ U RO   RSDP, XSDT, FADT, MADT, DSDT
//!  0x0020_0000  │ guest image              │ U      per ELF segment: RO unless W, X if X;
//!               │                          │        starts with a FirmwareHeader
//!               │ ring-3 stacks, heap      │ U      placed by the VMM after the image
//!  mem_size     └──────────────────────────┘
//!  0xC000_0000  │ channel regions          │ U      channel i at CHANNELS_GPA + i·CHANNEL_STRIDE
//!  0xE000_0000  │ placement page           │ U RO   a read-only slot, written by the VMM
//!  0xF000_0000  │ doorbell pages           │ U      a write to page i kicks channel i's peer
//!  0xFEC0_0000  │ I/O APIC                 │ S      ioapic::BASE_GPA
//!  0xFEE0_0000  │ local APIC               │ S/U    lapic::BASE_GPA; U with one vCPU
//! ```
//!
//! Ring 3 can therefore neither rewrite what ring 0 runs on (page tables, IDT, GDT,
//! TSS, ring-0 stacks, the APIC) nor execute anything but the image's code.
//!
//! Guests run in ring 3 (see `DESIGN.md`: ring 0 is emulated instruction by instruction
//! on the machines we target). The VMM prepares the whole long-mode state so that the
//! first guest instruction is a ring-3 instruction at the image's entry point, with
//! `rdi` = address of [`BootInfo`] and `rsi` = the vCPU index.
//!
//! # Entering ring 0
//!
//! **Halting** is the one operation on the fast path, so it has its own gate: ring 3
//! executes `int3` ([`HALT_VECTOR`], a DPL-3 interrupt gate) and the gate's stub is
//! just `sti; hlt`. The interrupt that ends the halt returns to ring 3 directly,
//! through the halt's own frame (its entry reloads RSP from the interrupted frame and
//! executes `iretq` once), so a halt costs two event deliveries and about four ring-0
//! instructions. A plain `hlt` in ring 3 also halts (through #GP, below) and returns
//! the same way, past the `hlt`.
//!
//! The other privileged instructions, `rdmsr` and `wrmsr`, ring 3 executes itself.
//! That raises #GP, whose ring-0 handler (the firmware's stub) checks the faulting
//! instruction, performs it, and returns past it. They keep their architectural
//! registers (`ecx` = MSR, `edx:eax` = value); the stub returns with CF set when the
//! access was refused (the VMM made it fault) and with CF clear otherwise. Neither
//! `syscall` nor `int n` is used: not every host we run on delivers them to a guest's
//! ring 0 (`int3` is delivered everywhere). The #GP and halt gates and every interrupt
//! gate have no IST: the stub takes a nested #GP (a refused access) on its own stack,
//! and an interrupt, which only ever arrives inside a halt, lands below the halt's
//! frame. The other exception gates use IST1.
//!
//! In a guest of one vCPU, ring 3 also reaches the local APIC directly (see
//! [`lapic_user_accessible`] for why only there): the firmware arms the APIC timer and
//! reads the in-service register with plain loads and stores, which the in-kernel
//! LAPIC serves without an exit to the VMM. Its interrupt gates it changes through the
//! VMM ([`ports::IRQ_ENTRY`]): the IDT is not writable from ring 3.
#![no_std]

pub mod acpi;
pub mod le;
pub mod placement;
mod pod;
pub mod virtio;

pub use pod::Pod;

/// Size of a small page.
pub const PAGE_SIZE: u64 = 0x1000;

/// Guest-physical address of the [`BootInfo`] page.
pub const BOOT_INFO_GPA: u64 = 0x1000;
/// Guest-physical address of the console buffer (one page).
pub const CONSOLE_BUF_GPA: u64 = 0x2000;
/// Size of the console buffer: the longest line a single `OUT CONSOLE` can carry.
pub const CONSOLE_BUF_SIZE: u64 = PAGE_SIZE;
/// Guest-physical address of the IDT (256 16-byte gates).
pub const IDT_GPA: u64 = 0x3000;
/// Guest-physical address of the page tables (PML4 first).
pub const PAGE_TABLES_GPA: u64 = 0x4000;
/// Number of 4 KiB pages the page tables occupy: PML4, PDPT, four PDs, one PT for
/// the low 2 MiB and one per 2 MiB of [`MAX_IMAGE_SIZE`] (the image is mapped in
/// 4 KiB pages so that each of its segments gets its own access rights).
pub const PAGE_TABLE_PAGES: u64 = 7 + MAX_IMAGE_SIZE / (2 << 20);
/// How much guest-physical address space the page tables map (identity). Accesses
/// above guest RAM but below this limit reach the VMM as MMIO.
pub const MAPPED_LIMIT: u64 = 4 << 30;

/// First per-vCPU area.
pub const PERCPU_GPA: u64 = 0x10_0000;
/// Size of one per-vCPU area.
pub const PERCPU_STRIDE: u64 = 0x8000;
/// Largest vCPU count of one guest.
pub const MAX_VCPUS: u32 = 16;
/// Offsets inside a per-vCPU area.
pub mod percpu {
    /// The GDT (see [`crate::selectors`]).
    pub const GDT: u64 = 0x0;
    /// The 64-bit TSS; its I/O permission bitmap follows it directly.
    pub const TSS: u64 = 0x100;
    /// Size of the hardware TSS without the I/O bitmap.
    pub const TSS_SIZE: u64 = 104;
    /// The I/O permission bitmap (8 KiB, one bit per port, 0 = allowed) plus the
    /// terminating all-ones byte.
    pub const IO_BITMAP: u64 = TSS + TSS_SIZE;
    /// Size of the I/O permission bitmap including its terminating byte.
    pub const IO_BITMAP_SIZE: u64 = 8192 + 1;
    /// Top of the ring-0 stack (TSS.RSP0): the #GP, halt and interrupt gates have no
    /// IST, so that the stub may take a nested #GP (a refused MSR access) on its own
    /// stack and an interrupt lands below the halt's frame.
    pub const RING0_STACK_TOP: u64 = 0x5000;
    /// Top of the interrupt stack (TSS.IST1) for the other exceptions.
    pub const IST1_STACK_TOP: u64 = 0x8000;
}

/// Guest-physical address of the ACPI tables area.
pub const ACPI_GPA: u64 = 0x18_0000;
/// Size of the ACPI tables area.
pub const ACPI_SIZE: u64 = 0x8_0000;
/// Guest-physical address where the guest image is loaded (its link address, which
/// `firmware/link.ld` must match); it starts with a [`FirmwareHeader`].
pub const IMAGE_GPA: u64 = 0x20_0000;
/// Most bytes an image's segments may span from [`IMAGE_GPA`].
pub const MAX_IMAGE_SIZE: u64 = 16 << 20;
/// Size of each vCPU's ring-3 stack, placed by the VMM after the image.
pub const RING3_STACK_SIZE: u64 = 0x1_0000;
/// The least heap the VMM gives a guest; a guest whose memory cannot hold its image,
/// its stacks and this much heap is rejected.
pub const MIN_HEAP_SIZE: u64 = 0x4_0000;

/// Where channel regions are mapped: channel `i` (in boot-info order) at
/// `CHANNELS_GPA + i * CHANNEL_STRIDE`. Shared memory with the peer guest.
pub const CHANNELS_GPA: u64 = 0xC000_0000;
/// Distance between two channel regions: the largest region a channel may have. 32 MiB
/// holds a data channel of 64 KiB segments (`buf_size` 65 600: 64 KiB and headroom) with
/// up to 128 requests outstanding per side (16.09 MiB; 8.06 MiB with 64).
pub const CHANNEL_STRIDE: u64 = 0x200_0000;
/// Most channels one guest may have.
pub const MAX_CHANNELS: usize = 8;
/// The placement page (see [`PlacementPage`]).
pub const PLACEMENT_GPA: u64 = 0xE000_0000;
/// Doorbell pages: a 32-bit write (any value) to `DOORBELLS_GPA + i * PAGE_SIZE` kicks
/// the peer of channel `i`, entirely in the kernel (no exit to the VMM's user space).
pub const DOORBELLS_GPA: u64 = 0xF000_0000;
/// The interrupt vector on which channel `i`'s peer kicks this guest: `DOORBELL_VECTOR
/// + i`. It only wakes a halted vCPU 0; the firmware's handler just acknowledges it.
pub const DOORBELL_VECTOR: u8 = 0x40;
/// The vector on which the VMM kicks a guest after changing its placement entry (its
/// cores or its `_PPC` limit).
pub const PLACEMENT_VECTOR: u8 = 0x3f;

/// Where NIC register files are mapped: NIC `i` of a guest (in boot-info order) has its
/// virtio-mmio registers ([`virtio`]) at `NIC_MMIO_GPA + i * NIC_MMIO_SIZE`. Not memory:
/// every access is an MMIO exit served by the VMM's device (≈ 50 at initialisation,
/// none on the data path), except `QUEUE_NOTIFY`, an in-kernel ioeventfd.
pub const NIC_MMIO_GPA: u64 = 0xD000_0000;
/// Size of one NIC's register window.
pub const NIC_MMIO_SIZE: u64 = PAGE_SIZE;
/// Most NICs one guest may drive.
pub const MAX_NICS: usize = 2;
/// The vector on which NIC `i`'s device signals used buffers: `NIC_VECTOR + i`, an MSI
/// into vCPU 0 that only wakes it (see [`virtio`], "compart's deviation").
pub const NIC_VECTOR: u8 = 0x50;
/// Most static routes an IPv4 configuration carries.
pub const MAX_ROUTES: usize = 8;

const _: () = assert!(CHANNELS_GPA + MAX_CHANNELS as u64 * CHANNEL_STRIDE <= PLACEMENT_GPA);
const _: () = assert!(DOORBELLS_GPA + MAX_CHANNELS as u64 * PAGE_SIZE < ioapic::BASE_GPA);

/// The local APIC (xAPIC, memory-mapped), as KVM's in-kernel irqchip places it and as
/// the MADT describes it. Register offsets are from [`lapic::BASE_GPA`].
pub mod lapic {
    /// Guest-physical address of every vCPU's local APIC (below 4 GiB: the MADT's and
    /// an MSI address's 32-bit fields hold it).
    pub const BASE_GPA: u64 = 0xFEE0_0000;
    /// End-of-interrupt register: write 0 to acknowledge the interrupt in service.
    pub const EOI: u64 = 0xB0;
    /// Spurious-interrupt vector register: bits 7:0 the vector, bit 8 software-enable.
    pub const SVR: u64 = 0xF0;
    /// The SVR's APIC software-enable bit.
    pub const SVR_ENABLE: u32 = 1 << 8;
    /// In-service register: 8 registers of 32 vectors each, 16 bytes apart.
    pub const ISR_BASE: u64 = 0x100;
    /// Interrupt request register (pending vectors), laid out like the ISR.
    pub const IRR_BASE: u64 = 0x200;
    /// Interrupt command register, low half: a write sends the interrupt.
    pub const ICR_LOW: u64 = 0x300;
    /// Local vector table entry of the timer: vector, mask (bit 16), mode (bits 17–18).
    pub const LVT_TIMER: u64 = 0x320;
    /// Timer initial count: a write starts the count-down (0 stops the timer).
    pub const TIMER_INITIAL_COUNT: u64 = 0x380;
    /// Timer current count.
    pub const TIMER_CURRENT_COUNT: u64 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u64 = 0x3E0;
    /// ICR: fixed delivery to this APIC itself (destination shorthand "self").
    pub const ICR_SELF: u32 = 1 << 18;
    /// LVT: the entry is masked.
    pub const LVT_MASKED: u32 = 1 << 16;
    /// Timer divide configuration value for "divide by 1".
    pub const DIVIDE_BY_1: u32 = 0b1011;
}

/// The I/O APIC of KVM's in-kernel irqchip.
pub mod ioapic {
    /// Guest-physical address of its registers (below 4 GiB, as for the local APIC).
    pub const BASE_GPA: u64 = 0xFEC0_0000;
}

// Both APICs below 4 GiB (32-bit address fields) and inside the mapped range.
const _: () = assert!(ioapic::BASE_GPA < lapic::BASE_GPA);
const _: () = assert!(lapic::BASE_GPA + PAGE_SIZE <= u32::MAX as u64 + 1);
const _: () = assert!(lapic::BASE_GPA < MAPPED_LIMIT);

/// Model-specific registers of the contract: the ones the guest uses to scale its
/// frequency (named by its `_PCT`) and to measure it, and that the VMM therefore
/// intercepts.
pub mod msr {
    /// IA32_MPERF: counts at the maximum frequency while the vCPU runs.
    pub const MPERF: u32 = 0xE7;
    /// IA32_APERF: counts at the actual frequency while the vCPU runs.
    pub const APERF: u32 = 0xE8;
    /// IA32_PERF_STATUS: the effective P-state's `_PSS` status value (`_PCT` status).
    pub const PERF_STATUS: u32 = 0x198;
    /// IA32_PERF_CTL: write a `_PSS` control value to request that P-state (`_PCT`
    /// control).
    pub const PERF_CTL: u32 = 0x199;
    /// The MSRs the VMM intercepts, as (first, count) ranges: MPERF and APERF,
    /// PERF_STATUS and PERF_CTL. Every other MSR stays with KVM.
    pub const INTERCEPTED: [(u32, u32); 2] = [(MPERF, 2), (PERF_STATUS, 2)];
    /// AMD's P-state current-limit MSR. AMD's own P-state MSRs (this one to
    /// [`AMD_PSTATE_DEF0`]) are not part of the guest's interface: its `_PCT` names
    /// PERF_CTL/PERF_STATUS on every host, so they are not intercepted.
    pub const AMD_PSTATE_CURRENT_LIMIT: u32 = 0xC001_0061;
    /// AMD's P-state control MSR (see [`AMD_PSTATE_CURRENT_LIMIT`]).
    pub const AMD_PSTATE_CONTROL: u32 = 0xC001_0062;
    /// AMD's P-state status MSR.
    pub const AMD_PSTATE_STATUS: u32 = 0xC001_0063;
    /// AMD's first P-state definition MSR.
    pub const AMD_PSTATE_DEF0: u32 = 0xC001_0064;
    /// IA32_TSC_DEADLINE: the local APIC timer's deadline (TSC) in TSC-deadline mode.
    /// Served by KVM's in-kernel APIC (not intercepted); the ring-0 stub performs it
    /// for the timer of guests whose APIC page ring 3 cannot reach (see
    /// [`crate::lapic_user_accessible`]).
    pub const TSC_DEADLINE: u32 = 0x6E0;
}

/// One channel as a guest sees it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ChannelInfo {
    /// Guest-physical address of the shared region (a `compart-channel` pair, already
    /// initialised by the VMM).
    pub region_gpa: u64,
    /// Its size in bytes.
    pub region_size: u64,
    /// Write here to kick the peer.
    pub doorbell_gpa: u64,
    /// This guest's side of the pair: [`ChannelInfo::SIDE_A`] or
    /// [`ChannelInfo::SIDE_B`].
    pub side: u32,
    /// The vector on which the peer kicks this guest.
    pub vector: u32,
    /// Length of `peer`.
    pub peer_len: u32,
    /// The peer guest's [`Role`] code (0, [`Role::Unknown`], from a VMM that did not say).
    pub peer_role: u32,
    /// The peer guest's name, UTF-8, `peer_len` bytes.
    pub peer: [u8; NAME_LEN],
}

impl ChannelInfo {
    /// An unused entry.
    pub const EMPTY: ChannelInfo = ChannelInfo {
        region_gpa: 0,
        region_size: 0,
        doorbell_gpa: 0,
        side: 0,
        vector: 0,
        peer_len: 0,
        peer_role: 0,
        peer: [0; NAME_LEN],
    };

    /// `side` of the guest on side A of the pair.
    pub const SIDE_A: u32 = 0;
    /// `side` of the guest on side B of the pair.
    pub const SIDE_B: u32 = 1;

    /// The peer's name, or `"?"`.
    pub fn peer(&self) -> &str {
        str_field(&self.peer, self.peer_len)
    }

    /// The peer's role ([`Role::Unknown`] for a code this ABI does not define).
    pub fn peer_role(&self) -> Role {
        Role::from_code(self.peer_role)
    }
    /// This guest's side, or `None` when `side` holds neither value.
    pub fn side(&self) -> Option<ChannelSide> {
        match self.side {
            Self::SIDE_A => Some(ChannelSide::A),
            Self::SIDE_B => Some(ChannelSide::B),
            _ => None,
        }
    }
}

/// A guest's side of a channel pair, as [`ChannelInfo::side`] decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelSide {
    /// Side A ([`ChannelInfo::SIDE_A`]).
    A,
    /// Side B ([`ChannelInfo::SIDE_B`]).
    B,
}

/// What a guest is in the network stack: the topology's `role`, as a code in
/// [`ChannelInfo::peer_role`] (a guest's own role is the string [`BootInfo::role`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Not said, or a code this ABI does not define.
    Unknown = 0,
    /// The NIC driver server.
    Driver = 1,
    /// The IP server.
    Ip = 2,
    /// The packet filter server.
    Pf = 3,
    /// The TCP server.
    Tcp = 4,
    /// The POSIX socket server.
    Posix = 5,
    /// An application.
    App = 6,
}

impl Role {
    /// Every role a topology can give, in code order.
    pub const ALL: [Role; 6] = [
        Role::Driver,
        Role::Ip,
        Role::Pf,
        Role::Tcp,
        Role::Posix,
        Role::App,
    ];

    /// The role's name as topology files and [`BootInfo::role`] spell it. (The VMM's
    /// `topology::Role`, which serde parses, lists the same names; `vmm/src/channels.rs`
    /// maps it onto this one and tests that every name here is one there.)
    pub fn name(self) -> &'static str {
        match self {
            Role::Unknown => "?",
            Role::Driver => "driver",
            Role::Ip => "ip",
            Role::Pf => "pf",
            Role::Tcp => "tcp",
            Role::Posix => "posix",
            Role::App => "app",
        }
    }

    /// The role named `name`, if any.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The role of code `code`; [`Role::Unknown`] for a code this ABI does not define.
    pub fn from_code(code: u32) -> Role {
        Role::ALL
            .into_iter()
            .find(|r| *r as u32 == code)
            .unwrap_or(Role::Unknown)
    }
}

/// A NIC the guest drives (a `[[nic]]` of the topology whose `guest` is this guest).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicInfo {
    /// Guest-physical address of its virtio-mmio register window.
    pub mmio_gpa: u64,
    /// Size of that window.
    pub mmio_size: u64,
    /// The vector its used-buffer interrupts arrive on (MSI to vCPU 0).
    pub vector: u32,
    /// The MTU the device reports (also in its configuration space).
    pub mtu: u32,
    /// Its MAC address (also in its configuration space).
    pub mac: [u8; 6],
    /// Reserved, zero.
    pub _reserved: [u8; 2],
    /// The queue size the device offers (`QUEUE_NUM_MAX`).
    pub queue_size: u32,
    /// Reserved, zero.
    pub _reserved2: u32,
}

impl NicInfo {
    /// An unused entry.
    pub const EMPTY: NicInfo = NicInfo {
        mmio_gpa: 0,
        mmio_size: 0,
        vector: 0,
        mtu: 0,
        mac: [0; 6],
        _reserved: [0; 2],
        queue_size: 0,
        _reserved2: 0,
    };
}

/// An IPv4 route: packets for `dest/prefix_len` go to the router `via`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Route {
    /// Destination network, in network byte order.
    pub dest: [u8; 4],
    /// Its prefix length (0–32).
    pub prefix_len: u8,
    /// Reserved, zero.
    pub _reserved: [u8; 3],
    /// The next hop, in network byte order.
    pub via: [u8; 4],
}

impl Ipv4Route {
    /// An unused entry.
    pub const EMPTY: Ipv4Route = Ipv4Route {
        dest: [0; 4],
        prefix_len: 0,
        _reserved: [0; 3],
        via: [0; 4],
    };
}

/// The IPv4 configuration of the interface an ip server serves (from its NIC's
/// `address`, `gateway` and `routes` in the topology). `prefix_len == 0 && address ==
/// [0; 4]` means none was given.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Config {
    /// The stack's address, in network byte order.
    pub address: [u8; 4],
    /// Prefix length of the connected network (0–32).
    pub prefix_len: u8,
    /// 1 when `gateway` is set.
    pub has_gateway: u8,
    /// Number of valid entries in `routes`.
    pub route_count: u8,
    /// Reserved, zero.
    pub _reserved: u8,
    /// The default gateway, in network byte order.
    pub gateway: [u8; 4],
    /// Static routes, `route_count` valid entries.
    pub routes: [Ipv4Route; MAX_ROUTES],
    /// Reserved, zero (keeps the size a multiple of 8).
    pub _reserved2: [u8; 4],
}

impl Ipv4Config {
    /// No configuration.
    pub const EMPTY: Ipv4Config = Ipv4Config {
        address: [0; 4],
        prefix_len: 0,
        has_gateway: 0,
        route_count: 0,
        _reserved: 0,
        gateway: [0; 4],
        routes: [Ipv4Route::EMPTY; MAX_ROUTES],
        _reserved2: [0; 4],
    };

    /// Whether an address was configured.
    pub fn is_set(&self) -> bool {
        self.address != [0; 4] || self.prefix_len != 0
    }

    /// The valid routes.
    pub fn routes(&self) -> &[Ipv4Route] {
        &self.routes[..(self.route_count as usize).min(MAX_ROUTES)]
    }
}

/// Where a vCPU runs, as the VMM tells the guest.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementEntry {
    /// 1 when the vCPU has its host core to itself: poll for up to `poll_us` before
    /// sleeping. 0 when it shares the core: sleep as soon as there is no work.
    pub dedicated: u32,
    /// How long to poll for work before sleeping, in microseconds.
    pub poll_us: u32,
    /// Number of valid entries in `host_cores`.
    pub host_core_count: u32,
    /// The vCPU's performance limit now: the fastest P-state (an index into `_PSS`)
    /// the platform allows, the live value of its `_PPC`. When the VMM changes it, it
    /// rewrites the page and kicks the guest (the analogue of ACPI's
    /// `Notify(processor, 0x80)`); the firmware's P-state driver then requests a state
    /// within the new limit through PERF_CTL (see the firmware's `pstate` module).
    pub ppc: u32,
    /// Host cores the vCPU may run on now.
    pub host_cores: [u32; MAX_CORES_LISTED],
}

impl PlacementEntry {
    /// An unused entry: shared, no polling, no cores.
    pub const EMPTY: PlacementEntry = PlacementEntry {
        dedicated: 0,
        poll_us: 0,
        host_core_count: 0,
        ppc: 0,
        host_cores: [0; MAX_CORES_LISTED],
    };
}

/// The placement page: read-only to the guest (a read-only memory slot), rewritten by
/// the VMM whenever it moves the guest's vCPUs or changes their `_PPC` limit, after
/// which it kicks the guest on [`PLACEMENT_VECTOR`]. `generation` is a sequence lock:
/// odd while the VMM writes; a reader retries until it reads the same even value
/// before and after. Both halves are in [`placement`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PlacementPage {
    /// [`PlacementPage::MAGIC`].
    pub magic: u64,
    /// Sequence number, even when stable.
    pub generation: u64,
    /// Number of valid entries.
    pub vcpu_count: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// One entry per vCPU.
    pub vcpus: [PlacementEntry; MAX_VCPUS as usize],
}

impl PlacementPage {
    /// "PLACEMNT" in little-endian byte order.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"PLACEMNT");
}

const _: () = assert!(core::mem::size_of::<PlacementPage>() as u64 <= PAGE_SIZE);

/// GDT selectors, the same in every per-vCPU GDT.
pub mod selectors {
    /// Ring-0 64-bit code.
    pub const KERNEL_CODE: u16 = 0x08;
    /// Ring-0 data.
    pub const KERNEL_DATA: u16 = 0x10;
    /// Ring-3 data (with RPL 3).
    pub const USER_DATA: u16 = 0x18 | 3;
    /// Ring-3 64-bit code (with RPL 3).
    pub const USER_CODE: u16 = 0x20 | 3;
    /// The TSS (a 16-byte system descriptor).
    pub const TSS: u16 = 0x28;
    /// Number of 8-byte GDT slots (the TSS takes two).
    pub const GDT_ENTRIES: usize = 7;
}

/// I/O ports a guest uses to talk to the VMM. Each is a 32-bit register, 4 ports
/// apart (a 32-bit `OUT` checks the permission of all four bytes it touches). The
/// ring-3 ports are open in every vCPU's I/O permission bitmap; all other ports fault
/// in ring 3.
pub mod ports {
    /// `OUT` with `eax` = number of bytes of the console buffer to print.
    pub const CONSOLE: u16 = 0x500;
    /// `OUT` with `eax` = exit status: the guest is done.
    pub const EXIT: u16 = 0x504;
    /// `OUT` with `eax` = number of bytes of the console buffer holding the panic
    /// message (including its location): the guest panicked.
    pub const PANIC: u16 = 0x508;
    /// Ring 0 only: an unexpected exception. Registers: `rax` = vector, `rdi` = error
    /// code, `rsi` = faulting RIP, `rcx` = CR2.
    pub const FAULT: u16 = 0x50c;
    /// `OUT` with `eax` = an [`IrqEntry`](crate::IrqEntry) request: which of the
    /// firmware's two interrupt entries (with or without the EOI) interrupt gates use.
    /// The VMM rewrites the IDT (which ring 3 cannot write) from the entries the
    /// image's [`FirmwareHeader`](crate::FirmwareHeader) declares; only a guest with
    /// one vCPU may ask (with more, a gate could change under a sibling taking it).
    pub const IRQ_ENTRY: u16 = 0x510;
    /// Width in ports of each register.
    pub const WIDTH: u16 = 4;
    /// The ports ring 3 may use (each with its [`WIDTH`] bytes).
    pub const RING3: [u16; 4] = [CONSOLE, EXIT, PANIC, IRQ_ENTRY];
}

/// A request on [`ports::IRQ_ENTRY`]: bits 0–7 the vector (32–255), bit 8 set for the
/// entry without the EOI, bit 9 set for every vector 32–255 instead of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqEntry {
    /// The vector, or `None` for every interrupt vector.
    pub vector: Option<u8>,
    /// The entry without the EOI (where the host completes interrupts on delivery).
    pub without_eoi: bool,
}

impl IrqEntry {
    const WITHOUT_EOI: u32 = 1 << 8;
    const ALL: u32 = 1 << 9;

    /// The value the guest writes.
    pub const fn encode(self) -> u32 {
        let v = match self.vector {
            Some(v) => v as u32,
            None => Self::ALL,
        };
        v | if self.without_eoi {
            Self::WITHOUT_EOI
        } else {
            0
        }
    }

    /// The request a guest wrote, or `None` for a value that is none (unknown bits, an
    /// exception vector).
    pub const fn decode(value: u32) -> Option<IrqEntry> {
        if value & !(0xff | Self::WITHOUT_EOI | Self::ALL) != 0 {
            return None;
        }
        let without_eoi = value & Self::WITHOUT_EOI != 0;
        if value & Self::ALL != 0 {
            if value & 0xff != 0 {
                return None;
            }
            return Some(IrqEntry {
                vector: None,
                without_eoi,
            });
        }
        let v = (value & 0xff) as u8;
        if v < 32 {
            return None;
        }
        Some(IrqEntry {
            vector: Some(v),
            without_eoi,
        })
    }
}

/// Whether ring 3 may reach the local APIC's page in a guest of `vcpus` vCPUs. With
/// one vCPU it may: the firmware arms its timer with one store (≈ 2.6 µs against ≈ 27 µs
/// through the stub's `wrmsr`) and probes whether the host needs the EOI, and the worst
/// it can do with the APIC is stop itself (an INIT restarts it in real mode at the reset
/// vector, where no RAM is; SMRAM is supervisor-only). With more it may not: an
/// INIT/SIPI pair would start a sibling vCPU in real mode, that is with ring 0's
/// privileges, at a page ring 3 wrote; those guests arm their timer in TSC-deadline
/// mode through the stub ([`msr::TSC_DEADLINE`]) and keep the EOI.
pub const fn lapic_user_accessible(vcpus: u32) -> bool {
    vcpus == 1
}

/// The #GP vector, whose handler is the ring-0 stub.
pub const GP_VECTOR: u8 = 13;
/// The halt gate: `int3` from ring 3 halts until the next interrupt (DPL 3).
pub const HALT_VECTOR: u8 = 3;
/// The vector of the local APIC timer (a guest's deadline).
pub const TIMER_VECTOR: u8 = 0x3e;
/// The vector of the spurious interrupt (LAPIC SVR).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// The header every guest image starts with, at [`IMAGE_GPA`]. The VMM reads it after
/// loading the image and builds the IDT from its entry points; every address must lie
/// inside the loaded image.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FirmwareHeader {
    /// [`FirmwareHeader::MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Size of this structure.
    pub size: u32,
    /// Ring-3 entry point (`rdi` = boot info, `rsi` = vCPU index, `rsp` = stack top).
    pub entry: u64,
    /// Ring-0 handlers of the 32 exception vectors, [`EXCEPTION_STUB_SIZE`] bytes apart.
    /// The #GP handler is the ring-0 stub (see the crate doc, "Entering ring 0").
    pub exception_stubs: u64,
    /// Ring-0 handler of all external interrupts (vectors 32..=255), with the EOI. It
    /// returns to ring 3 through the frame of the halt it ended. The VMM builds the IDT
    /// with it.
    pub irq_entry: u64,
    /// The same without the EOI, for hosts that complete interrupts on delivery: the
    /// gates use it once the firmware asks through [`ports::IRQ_ENTRY`].
    pub irq_entry_no_eoi: u64,
}

impl FirmwareHeader {
    /// "COMPART\0" in little-endian byte order.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"COMPART\0");
}

/// Distance between two exception stubs of the firmware.
pub const EXCEPTION_STUB_SIZE: u64 = 32;

/// Version of this ABI; the VMM refuses images built against another. 4: the page
/// tables give each area its access rights (see the memory map), the ring-0 stub
/// performs `rdmsr`/`wrmsr` only on the MSRs of [`msr::INTERCEPTED`], and ring 3
/// halts through the [`HALT_VECTOR`] gate, woken interrupts returning straight to it.
pub const ABI_VERSION: u32 = 4;

/// Maximum length of a guest's name.
pub const NAME_LEN: usize = 32;
/// Maximum length of a guest's role.
pub const ROLE_LEN: usize = 16;
/// Maximum length of a guest's command line.
pub const CMDLINE_LEN: usize = 256;
/// Maximum number of host cores listed for one vCPU.
pub const MAX_CORES_LISTED: usize = 16;

/// Facts about one vCPU, as the guest sees them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VcpuInfo {
    /// Local APIC id.
    pub apic_id: u32,
    /// Number of valid entries in `host_cores`.
    pub host_core_count: u32,
    /// Host cores this vCPU's thread is pinned to at boot.
    pub host_cores: [u32; MAX_CORES_LISTED],
}

/// The boot-info page: everything a guest learns from the VMM at boot. It is written
/// before the first instruction and not changed afterwards.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// [`BootInfo::MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Size of this structure.
    pub size: u32,
    /// Guest name, UTF-8, `name_len` bytes.
    pub name: [u8; NAME_LEN],
    /// Length of `name`.
    pub name_len: u32,
    /// Length of `role`.
    pub role_len: u32,
    /// Guest role (`driver`, `ip`, …), UTF-8, `role_len` bytes.
    pub role: [u8; ROLE_LEN],
    /// Bytes of guest RAM, from guest-physical 0.
    pub mem_size: u64,
    /// First byte of the heap.
    pub heap_start: u64,
    /// Size of the heap.
    pub heap_size: u64,
    /// Guest-physical address of the console buffer.
    pub console_buf: u64,
    /// Size of the console buffer.
    pub console_buf_size: u64,
    /// Guest-physical address of the ACPI RSDP, or 0 when the guest has no tables.
    pub acpi_rsdp: u64,
    /// Guest-physical address of the placement page, or 0 when there is none.
    pub placement_page: u64,
    /// Frequency of the time-stamp counter (`rdtsc`) in kHz, or 0 when unknown.
    pub tsc_khz: u64,
    /// Number of valid entries in `channels`.
    pub channel_count: u32,
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// Per-vCPU facts, `vcpu_count` valid entries.
    pub vcpus: [VcpuInfo; MAX_VCPUS as usize],
    /// Length of `cmdline`.
    pub cmdline_len: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// The guest's command line from the topology, UTF-8, `cmdline_len` bytes.
    pub cmdline: [u8; CMDLINE_LEN],
    /// The guest's channels, `channel_count` valid entries.
    pub channels: [ChannelInfo; MAX_CHANNELS],
    /// Number of valid entries in `nics`.
    pub nic_count: u32,
    /// Reserved, zero.
    pub _reserved_nic: u32,
    /// The NICs this guest drives (role `driver`), `nic_count` valid entries.
    pub nics: [NicInfo; MAX_NICS],
    /// The IPv4 configuration of the interface this guest serves (role `ip`: the
    /// `address`, `gateway` and `routes` of the NIC whose driver is its channel peer).
    pub ipv4: Ipv4Config,
}

impl BootInfo {
    /// "BOOTINFO" in little-endian byte order.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"BOOTINFO");

    /// An all-zero boot info with magic, version and size set.
    pub const fn empty() -> Self {
        BootInfo {
            magic: Self::MAGIC,
            abi_version: ABI_VERSION,
            size: core::mem::size_of::<BootInfo>() as u32,
            name: [0; NAME_LEN],
            name_len: 0,
            role_len: 0,
            role: [0; ROLE_LEN],
            mem_size: 0,
            heap_start: 0,
            heap_size: 0,
            console_buf: 0,
            console_buf_size: 0,
            acpi_rsdp: 0,
            placement_page: 0,
            tsc_khz: 0,
            channel_count: 0,
            vcpu_count: 0,
            vcpus: [VcpuInfo {
                apic_id: 0,
                host_core_count: 0,
                host_cores: [0; MAX_CORES_LISTED],
            }; MAX_VCPUS as usize],
            cmdline_len: 0,
            _reserved: 0,
            cmdline: [0; CMDLINE_LEN],
            channels: [ChannelInfo::EMPTY; MAX_CHANNELS],
            nic_count: 0,
            _reserved_nic: 0,
            nics: [NicInfo::EMPTY; MAX_NICS],
            ipv4: Ipv4Config::EMPTY,
        }
    }

    /// The valid NIC entries.
    pub fn nics(&self) -> &[NicInfo] {
        &self.nics[..(self.nic_count as usize).min(MAX_NICS)]
    }

    /// The valid channel entries.
    pub fn channels(&self) -> &[ChannelInfo] {
        &self.channels[..(self.channel_count as usize).min(MAX_CHANNELS)]
    }

    /// The guest's name, or `"?"` when it is not valid UTF-8.
    pub fn name(&self) -> &str {
        str_field(&self.name, self.name_len)
    }

    /// The guest's role, or `"?"` when it is not valid UTF-8.
    pub fn role(&self) -> &str {
        str_field(&self.role, self.role_len)
    }

    /// The guest's command line, or `"?"` when it is not valid UTF-8.
    pub fn cmdline(&self) -> &str {
        str_field(&self.cmdline, self.cmdline_len)
    }

    /// The host cores vCPU `vcpu` is pinned to (empty for an unknown vCPU).
    pub fn host_cores(&self, vcpu: u32) -> &[u32] {
        if vcpu >= self.vcpu_count.min(MAX_VCPUS) {
            return &[];
        }
        let v = &self.vcpus[vcpu as usize];
        &v.host_cores[..(v.host_core_count as usize).min(MAX_CORES_LISTED)]
    }
}

fn str_field(bytes: &[u8], len: u32) -> &str {
    let len = (len as usize).min(bytes.len());
    core::str::from_utf8(&bytes[..len]).unwrap_or("?")
}

/// Copies `src` into a fixed field, returning the stored length, or `None` when it
/// does not fit.
pub fn fill_str_field(dst: &mut [u8], src: &str) -> Option<u32> {
    let b = src.as_bytes();
    if b.len() > dst.len() {
        return None;
    }
    dst[..b.len()].copy_from_slice(b);
    dst[b.len()..].fill(0);
    Some(b.len() as u32)
}

/// Guest-physical address of vCPU `index`'s area.
pub const fn percpu_gpa(index: u32) -> u64 {
    PERCPU_GPA + index as u64 * PERCPU_STRIDE
}

// The layout must hold together; these fail the build of both sides if it does not.
const _: () = assert!(core::mem::size_of::<BootInfo>() as u64 <= PAGE_SIZE);

// The structures that cross the wall as bytes. Each is repr(C), made only of integers,
// integer arrays and the Pod structures before it, and has no padding: its size is
// asserted to be the sum of its fields' sizes.
// SAFETY: as stated above; the assert checks the padding.
unsafe impl Pod for VcpuInfo {}
const _: () = assert!(core::mem::size_of::<VcpuInfo>() == 8 + 4 * MAX_CORES_LISTED);
// SAFETY: as above.
unsafe impl Pod for ChannelInfo {}
const _: () = assert!(core::mem::size_of::<ChannelInfo>() == 3 * 8 + 4 * 4 + NAME_LEN);
// SAFETY: as above.
unsafe impl Pod for BootInfo {}
const _: () = assert!(
    core::mem::size_of::<BootInfo>()
        == 8 + 2 * 4
            + NAME_LEN
            + 2 * 4
            + ROLE_LEN
            + 8 * 8
            + 2 * 4
            + MAX_VCPUS as usize * core::mem::size_of::<VcpuInfo>()
            + 2 * 4
            + CMDLINE_LEN
            + MAX_CHANNELS * core::mem::size_of::<ChannelInfo>()
            + 2 * 4
            + MAX_NICS * core::mem::size_of::<NicInfo>()
            + core::mem::size_of::<Ipv4Config>()
);
// SAFETY: as above.
unsafe impl Pod for NicInfo {}
const _: () = assert!(core::mem::size_of::<NicInfo>() == 2 * 8 + 2 * 4 + 6 + 2 + 2 * 4);
// SAFETY: as above.
unsafe impl Pod for Ipv4Route {}
const _: () = assert!(core::mem::size_of::<Ipv4Route>() == 12);
// SAFETY: as above.
unsafe impl Pod for Ipv4Config {}
const _: () = assert!(core::mem::size_of::<Ipv4Config>() == 16 + 12 * MAX_ROUTES);
// SAFETY: as above.
unsafe impl Pod for PlacementEntry {}
const _: () = assert!(core::mem::size_of::<PlacementEntry>() == 4 * 4 + 4 * MAX_CORES_LISTED);
// SAFETY: as above.
unsafe impl Pod for PlacementPage {}
const _: () = assert!(
    core::mem::size_of::<PlacementPage>()
        == 2 * 8 + 2 * 4 + MAX_VCPUS as usize * core::mem::size_of::<PlacementEntry>()
);
// SAFETY: as above.
unsafe impl Pod for FirmwareHeader {}
const _: () = assert!(core::mem::size_of::<FirmwareHeader>() == 8 + 2 * 4 + 4 * 8);
const _: () = assert!(CHANNELS_GPA + MAX_CHANNELS as u64 * CHANNEL_STRIDE <= NIC_MMIO_GPA);
const _: () = assert!(NIC_MMIO_GPA + MAX_NICS as u64 * NIC_MMIO_SIZE <= PLACEMENT_GPA);
const _: () = assert!(PAGE_TABLES_GPA + PAGE_TABLE_PAGES * PAGE_SIZE <= PERCPU_GPA);
const _: () = assert!(PERCPU_GPA + MAX_VCPUS as u64 * PERCPU_STRIDE <= ACPI_GPA);
const _: () = assert!(ACPI_GPA + ACPI_SIZE <= IMAGE_GPA);
const _: () = assert!(percpu::IO_BITMAP + percpu::IO_BITMAP_SIZE <= 0x3000);
const _: () = assert!(IDT_GPA + 256 * 16 <= PAGE_TABLES_GPA);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_info_string_fields_round_trip() {
        let mut b = BootInfo::empty();
        b.name_len = fill_str_field(&mut b.name, "driver").unwrap();
        b.cmdline_len = fill_str_field(&mut b.cmdline, "exit=3").unwrap();
        assert_eq!(b.name(), "driver");
        assert_eq!(b.cmdline(), "exit=3");
        assert!(fill_str_field(&mut b.role, "a-role-much-too-long").is_none());
    }

    #[test]
    fn roles_round_trip_through_name_and_code_and_unknown_codes_are_unknown() {
        for r in Role::ALL {
            assert_eq!(Role::from_name(r.name()), Some(r));
            assert_eq!(Role::from_code(r as u32), r);
        }
        assert_eq!(Role::from_name("?"), None);
        assert_eq!(Role::from_code(0), Role::Unknown);
        assert_eq!(Role::from_code(7), Role::Unknown);
        assert_eq!(Role::from_code(u32::MAX), Role::Unknown);
        let mut c = ChannelInfo::EMPTY;
        c.peer_role = 0xdead;
        assert_eq!(c.peer_role(), Role::Unknown);
    }

    #[test]
    fn pod_values_round_trip_through_their_bytes() {
        let mut b = BootInfo::empty();
        b.name_len = fill_str_field(&mut b.name, "tcp").unwrap();
        b.channels[7].peer_len = 9;
        b.vcpus[15].host_cores[15] = 0xdead_beef;
        let bytes = b.as_bytes();
        assert_eq!(bytes.len(), core::mem::size_of::<BootInfo>());
        assert_eq!(bytes[..8], BootInfo::MAGIC.to_le_bytes());
        let back = BootInfo::read_from(bytes).unwrap();
        assert_eq!(back.as_bytes(), bytes);
        assert_eq!(back.name(), "tcp");
        assert_eq!(back.vcpus[15].host_cores[15], 0xdead_beef);
    }

    #[test]
    fn pod_reads_unaligned_bytes_and_refuses_short_ones() {
        let h = FirmwareHeader {
            magic: FirmwareHeader::MAGIC,
            abi_version: ABI_VERSION,
            size: 48,
            entry: 0x20_1000,
            exception_stubs: 0x20_2000,
            irq_entry: 0x20_3000,
            irq_entry_no_eoi: 0x20_3010,
        };
        let mut raw = [0u8; 49];
        raw[1..].copy_from_slice(h.as_bytes());
        let back = FirmwareHeader::read_from(&raw[1..]).unwrap();
        assert_eq!(
            (back.magic, back.entry, back.irq_entry),
            (h.magic, h.entry, h.irq_entry)
        );
        assert!(FirmwareHeader::read_from(&raw[1..48]).is_none());
    }

    #[test]
    fn irq_entry_requests_round_trip_and_others_are_refused() {
        for vector in [None, Some(32), Some(0x40), Some(255)] {
            for without_eoi in [false, true] {
                let r = IrqEntry {
                    vector,
                    without_eoi,
                };
                assert_eq!(IrqEntry::decode(r.encode()), Some(r));
            }
        }
        for bad in [0, 13, 31, 1 << 10, (1 << 9) | 0x40, u32::MAX] {
            assert_eq!(IrqEntry::decode(bad), None, "{bad:#x}");
        }
    }

    #[test]
    fn channel_sides_decode_and_unknown_values_are_refused() {
        let mut c = ChannelInfo::EMPTY;
        assert_eq!(c.side(), Some(ChannelSide::A));
        c.side = ChannelInfo::SIDE_B;
        assert_eq!(c.side(), Some(ChannelSide::B));
        c.side = 2;
        assert_eq!(c.side(), None);
    }

    #[test]
    fn boot_info_lengths_from_memory_are_clamped() {
        let mut b = BootInfo::empty();
        b.name_len = u32::MAX;
        b.vcpu_count = u32::MAX;
        b.vcpus[0].host_core_count = u32::MAX;
        assert_eq!(b.name().len(), NAME_LEN);
        assert_eq!(b.host_cores(0).len(), MAX_CORES_LISTED);
        assert!(b.host_cores(MAX_VCPUS).is_empty());
    }
}

//! The contract between the `compart` VMM and the guests it runs.
//!
//! Everything both sides of the wall must agree on is defined here, once: the fixed
//! guest-physical layout, the boot-info page the VMM fills in before the first
//! instruction, the firmware header every guest image starts with, the I/O ports a
//! guest uses to talk to the VMM, and the operations of the ring-0 stub.
//!
//! ```text
//!  guest-physical memory (identity-mapped, user-accessible, 4 KiB pages below 2 MiB,
//!  2 MiB pages above; the page at 0 is not present so that null dereferences fault)
//!
//!  0x0000_0000  ┌──────────────────────────┐ not present
//!  0x0000_1000  │ BootInfo                 │ written by the VMM
//!  0x0000_2000  │ console buffer           │ guest writes a line, then OUT CONSOLE
//!  0x0000_3000  │ IDT (256 gates)          │ written by the VMM
//!  0x0000_4000  │ page tables              │ PML4, PDPT, 4 PDs, 1 PT
//!  0x0010_0000  │ per-vCPU areas           │ GDT, TSS + I/O bitmap, ring-0 stacks
//!  0x0018_0000  │ ACPI tables              │ RSDP, XSDT, FADT, MADT, DSDT
//!  0x0020_0000  │ guest image              │ starts with a FirmwareHeader
//!               │ ring-3 stacks, heap      │ placed by the VMM after the image
//!  mem_size     └──────────────────────────┘
//!  0xC000_0000  │ channel regions          │ channel i at CHANNELS_GPA + i·CHANNEL_STRIDE
//!  0xE000_0000  │ placement page           │ read-only to the guest, written by the VMM
//!  0xF000_0000  │ doorbell pages           │ a write to page i kicks channel i's peer
//!  0xFEE0_0000  │ local APIC               │
//! ```
//!
//! Guests run in ring 3 (see `DESIGN.md`: ring 0 is emulated instruction by instruction
//! on the machines we target). The VMM prepares the whole long-mode state so that the
//! first guest instruction is a ring-3 instruction at the image's entry point, with
//! `rdi` = address of [`BootInfo`] and `rsi` = the vCPU index.
//!
//! # Entering ring 0
//!
//! Ring 3 executes the privileged instruction itself (`hlt`, `rdmsr`, `wrmsr`). That
//! raises #GP, whose ring-0 handler (the firmware's stub) checks the faulting
//! instruction, performs it, and returns past it. `rdmsr` and `wrmsr` keep their
//! architectural registers (`ecx` = MSR, `edx:eax` = value); the stub returns with CF
//! set when the access was refused (the VMM made it fault) and with CF clear
//! otherwise. Neither `syscall` nor `int n` is used: not every host we run on delivers
//! them to a guest's ring 0. The #GP gate has no IST, so the stub takes a nested #GP
//! (a refused access) on its own stack; every other gate uses IST1.
#![no_std]

pub mod virtio;

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
/// Number of 4 KiB pages the page tables occupy: PML4, PDPT, four PDs and one PT.
pub const PAGE_TABLE_PAGES: u64 = 7;
/// How much guest-physical address space the page tables map (identity, user bit set).
/// Accesses above guest RAM but below this limit reach the VMM as MMIO.
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
    /// Top of the ring-0 stack (TSS.RSP0): the #GP gate has no IST, so that the stub
    /// may take a nested #GP (a refused MSR access) on its own stack.
    pub const RING0_STACK_TOP: u64 = 0x5000;
    /// Top of the interrupt stack (TSS.IST1) for exceptions and interrupts.
    pub const IST1_STACK_TOP: u64 = 0x8000;
}

/// Guest-physical address of the ACPI tables area.
pub const ACPI_GPA: u64 = 0x18_0000;
/// Size of the ACPI tables area.
pub const ACPI_SIZE: u64 = 0x8_0000;
/// Guest-physical address where the guest image is loaded; it starts with a
/// [`FirmwareHeader`].
pub const IMAGE_GPA: u64 = 0x20_0000;
/// Size of each vCPU's ring-3 stack, placed by the VMM after the image.
pub const RING3_STACK_SIZE: u64 = 0x1_0000;
/// The least heap the VMM gives a guest; a guest whose memory cannot hold its image,
/// its stacks and this much heap is rejected.
pub const MIN_HEAP_SIZE: u64 = 0x4_0000;

/// Where channel regions are mapped: channel `i` (in boot-info order) at
/// `CHANNELS_GPA + i * CHANNEL_STRIDE`. Shared memory with the peer guest.
pub const CHANNELS_GPA: u64 = 0xC000_0000;
/// Distance between two channel regions: the largest region a channel may have.
pub const CHANNEL_STRIDE: u64 = 0x100_0000;
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
/// The vector on which the VMM kicks a guest after changing its placement entry.
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
const _: () = assert!(DOORBELLS_GPA + MAX_CHANNELS as u64 * PAGE_SIZE < 0xFEC0_0000);

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
    /// This guest's side of the pair: 0 = A, 1 = B.
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

    /// The peer's name, or `"?"`.
    pub fn peer(&self) -> &str {
        str_field(&self.peer, self.peer_len)
    }

    /// The peer's role ([`Role::Unknown`] for a code this ABI does not define).
    pub fn peer_role(&self) -> Role {
        Role::from_code(self.peer_role)
    }
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
#[derive(Debug, Clone, Copy)]
pub struct PlacementEntry {
    /// 1 when the vCPU has its host core to itself: poll for up to `poll_us` before
    /// sleeping. 0 when it shares the core: sleep as soon as there is no work.
    pub dedicated: u32,
    /// How long to poll for work before sleeping, in microseconds.
    pub poll_us: u32,
    /// Number of valid entries in `host_cores`.
    pub host_core_count: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Host cores the vCPU may run on now.
    pub host_cores: [u32; MAX_CORES_LISTED],
}

/// The placement page: read-only to the guest (a read-only memory slot), rewritten by
/// the VMM whenever it moves the guest's vCPUs, after which it kicks the guest on
/// [`PLACEMENT_VECTOR`]. `generation` is a sequence lock: odd while the VMM writes;
/// a reader retries until it reads the same even value before and after.
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
    /// Width in ports of each register.
    pub const WIDTH: u16 = 4;
    /// The ports ring 3 may use (each with its [`WIDTH`] bytes).
    pub const RING3: [u16; 3] = [CONSOLE, EXIT, PANIC];
}

/// The #GP vector, whose handler is the ring-0 stub.
pub const GP_VECTOR: u8 = 13;
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
    /// Ring-0 handler of all external interrupts (vectors 32..=255).
    pub irq_entry: u64,
}

impl FirmwareHeader {
    /// "COMPART\0" in little-endian byte order.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"COMPART\0");
}

/// Distance between two exception stubs of the firmware.
pub const EXCEPTION_STUB_SIZE: u64 = 32;

/// Version of this ABI; the VMM refuses images built against another.
pub const ABI_VERSION: u32 = 3;

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

    /// The structure's bytes, as the VMM writes them into guest memory.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: BootInfo is repr(C), made only of integers and integer arrays, and
        // has no padding (its size is asserted below to be the sum of its fields), so
        // every byte is initialised.
        unsafe {
            core::slice::from_raw_parts(
                (self as *const BootInfo).cast::<u8>(),
                core::mem::size_of::<BootInfo>(),
            )
        }
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
// The sum of BootInfo's fields: no padding anywhere (see `BootInfo::as_bytes`).
const _: () = assert!(
    core::mem::size_of::<BootInfo>()
        == 1560 + 72 * MAX_CHANNELS + 8 + 40 * MAX_NICS + 16 + 12 * MAX_ROUTES
);
const _: () = assert!(core::mem::size_of::<NicInfo>() == 40);
const _: () = assert!(core::mem::size_of::<Ipv4Config>() == 16 + 12 * MAX_ROUTES);
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

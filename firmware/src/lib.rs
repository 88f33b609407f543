//! The runtime every compart guest links.
//!
//! A guest image is a `#![no_std] #![no_main]` binary that names its main function
//! with [`entry!`]. The VMM loads the image, prepares long mode and starts every vCPU
//! directly in ring 3 at [`_start`](entry) (see `compart-abi`). From there this crate
//! provides:
//!
//! - [`pstate`]: ask for a P-state through `_PCT`, and measure the delivered speed
//!   with APERF/MPERF;
//! - [`channel`]: the guest's fast-path channels, found by peer name or role, with
//!   doorbells that wake a sleeping peer and an idle wait that polls or sleeps as
//!   [`placement`] says;
//! - [`server`]: the receive loop a server runs over all its channels, with a handler
//!   per channel (from `compart-kit`, host-tested there);
//! - [`cmdline`]: the command line as typed `key=value` arguments;
//! - [`net`]: an application's sockets (`compart_sockets::{Net, Listener, Stream}`)
//!   over the channel to the posix server;
//! - [`console`]: `print!`/`println!` to the VMM's console, a line per VM exit;
//! - [`acpi`]: the platform as the VMM's ACPI tables describe it: processors and
//!   their P-states (`_PSS`, `_PPC`, `_PSD`, `_PCT`), printed at boot;
//! - a heap (`alloc` works) over the memory the boot info hands over;
//! - a panic handler that reports message and location to the VMM;
//! - [`ring0`]: the few privileged operations (halt until an interrupt, MSR access),
//!   performed by the ring-0 stub when ring 3 traps on them (a halt through its own
//!   gate, `int3`, and back through the interrupt that ends it). The stub is hand-written
//!   assembly without SSE, because ring 0 is emulated instruction by instruction on
//!   the machines we target and the emulator cannot execute SSE;
//! - [`time`]: a monotonic clock from the TSC ([`time::Instant`]), and sleeping until
//!   a deadline on the local APIC timer, with no exit to the VMM;
//! - [`eoi`]: whether this host needs the interrupt entry's EOI (probed at boot);
//! - [`lapic`]: the local APIC, which ring 3 reaches directly (self-interrupts, the
//!   in-service register);
//! - [`virtio`]: the guest's virtio devices (the network device of a driver server),
//!   its logic from `compart-virtio`, host-tested there;
//! - [`exit`]: end the guest with a status the VMM reports.
#![no_std]
// Only guests run this crate: the host workspace lints it (`cargo clippy --workspace
// --all-targets`), and its test build, which could not link a panic handler and an
// allocator into a test binary, is empty.
#![cfg(not(test))]

extern crate alloc;

pub mod acpi;
pub mod channel;
pub mod cmdline;
pub mod console;
mod entry;
pub mod eoi;
mod heap;
pub mod lapic;
mod mem;
pub mod net;
mod panic;
pub mod placement;
pub mod pstate;
pub mod ring0;
pub mod server;
pub mod time;
pub mod virtio;

pub use compart_abi as abi;
pub use compart_abi::BootInfo;

/// Port output of a 32-bit value: the guest's way to call the VMM.
///
/// # Safety
/// `port` must be one of the ports the VMM opened for ring 3 (`abi::ports::RING3`),
/// with `value` meaning what that port expects; any other port faults.
#[inline(always)]
pub(crate) unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller guarantees the port is open to ring 3; `out` touches no
    // memory and no other register.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") value,
            options(nomem, nostack, preserves_flags));
    }
}

/// Ends the guest: the VMM stops all its vCPUs and records `status`.
pub fn exit(status: i32) -> ! {
    channel::hang_up();
    console::flush();
    // SAFETY: EXIT is a ring-3 port; its value is the exit status.
    unsafe { outl(abi::ports::EXIT, status as u32) };
    // The VMM does not resume a guest that exited; halt if it ever does.
    loop {
        ring0::halt_only();
    }
}

/// The boot info the VMM handed over, valid from the first instruction on.
pub fn boot_info() -> &'static BootInfo {
    // SAFETY: the VMM writes a BootInfo at BOOT_INFO_GPA before the first
    // instruction and never changes it; memory is identity-mapped.
    unsafe { &*(abi::BOOT_INFO_GPA as *const BootInfo) }
}

/// Names the guest's main function: `fn main(info: &'static BootInfo) -> i32`. It runs
/// on vCPU 0 once the heap and console are ready; its return value is the guest's exit
/// status. Other vCPUs sleep in `hlt`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub extern "Rust" fn compart_main(info: &'static $crate::BootInfo) -> i32 {
            let main: fn(&'static $crate::BootInfo) -> i32 = $main;
            main(info)
        }
    };
}

extern "Rust" {
    fn compart_main(info: &'static BootInfo) -> i32;
}

/// Called by the assembly entry point on every vCPU.
#[no_mangle]
extern "C" fn compart_rust_start(info: *const BootInfo, vcpu: u64) -> ! {
    // SAFETY: see `boot_info`; the pointer is the same fixed address.
    let info: &'static BootInfo = unsafe { &*info };
    if info.magic != BootInfo::MAGIC || info.abi_version != abi::ABI_VERSION {
        // Nothing is set up; the console is the only thing that can still work.
        console::write_raw(b"firmware: boot info has the wrong magic or ABI version\n");
        exit(-1);
    }
    if vcpu != 0 {
        // Secondary vCPUs have no work yet; they sleep until the guest is stopped.
        loop {
            ring0::halt_only();
        }
    }
    heap::init(info);
    eoi::probe();
    acpi::report();
    pstate::init();
    // SAFETY: `compart_main` is defined by the guest image through `entry!`.
    let status = unsafe { compart_main(info) };
    exit(status)
}

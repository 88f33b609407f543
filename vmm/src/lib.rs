//! `compart`: a KVM virtual machine monitor that runs the servers of an operating
//! system's network stack as tiny, pinned, isolated guests.
//!
//! The pieces, in the order a run uses them:
//!
//! - [`topology`]: the TOML topology file, parsed and validated against this host;
//! - [`images`] and [`loader`]: the guest images built into the binary, loaded into
//!   guest memory with their firmware header checked;
//! - [`arch`]: the x86-64 state that starts a guest directly in ring 3;
//! - [`acpi`]: each guest's ACPI tables (processors, P-states, `_PSD` domains);
//! - [`vstate`]: one KVM VM per guest, one pinned thread per vCPU, and the dispatch of
//!   each vCPU exit to [`guest_ports`], the P-state MSRs (`pstate::msrs`) or the
//!   guest's MMIO bus of [`devices`];
//! - [`guest_events`]: what a guest causes, counted and logged rate-limited;
//! - [`host`]: facts about the host and pinning threads to its cores;
//! - [`pstate`]: guests' frequency requests (intercepted MSRs), `_PSD` coordination,
//!   and the host backends (cpufreq, msr, soft scaling);
//! - [`channels`] and [`placement`]: shared regions and in-kernel doorbells between
//!   guests, and the page that tells each guest whether it owns its core;
//! - [`console`]: guest output as prefixed, sanitised lines;
//! - [`runtime`]: start a topology, coordinate failures and stops, moves, report outcomes;
//! - [`control`]: the control socket behind `compart ctl`;
//! - [`eval`]: `compart eval`, the thesis's figures measured on this host.
//!
//! `docs/ARCHITECTURE.md` describes how they fit together.

pub mod acpi;
pub mod arch;
pub mod channels;
pub mod console;
pub mod control;
pub mod devices;
pub mod eval;
pub mod guest_events;
pub mod guest_ports;
pub mod host;
pub mod host_net;
pub mod images;
pub mod loader;
pub mod logger;
pub mod placement;
pub mod pstate;
pub mod runtime;
pub mod topology;
pub mod vstate;

pub use control::{ControlError, ControlRequest, ControlResponse};
pub use runtime::{start, GuestState, RunOutcome, RunningVmm, VcpuThreadInfo, VmmError, VmmHandle};
pub use topology::{HostFacts, Topology};

/// What validation knows about this host and this binary.
pub fn host_facts() -> HostFacts {
    let root = std::path::Path::new("/");
    let ladder = host::ladder(root, 0);
    log::debug!(
        "host P-state ladder ({} states) from {}",
        ladder.table.len(),
        ladder.source
    );
    HostFacts {
        online_cores: host::online_host_cores(),
        builtin_images: images::builtin_names(),
        host_ladder: ladder.table,
        freq_domains: host::freq_domains(root),
        interfaces: host::names_in(root.join("sys/class/net")),
        netns: host::names_in(root.join("run/netns")),
    }
}

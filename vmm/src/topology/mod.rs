//! The topology file: which guests run, with what memory and vCPUs, pinned where.
//!
//! Parsing (TOML via serde, unknown keys rejected) and validation against this host
//! live here, and nowhere else, in three parts: this module has the validated types
//! the rest of the VMM uses ([`Topology`], [`GuestConfig`], [`ChannelConfig`]); `file`
//! has the serde representation of the file; `validate` turns one into the other
//! with one function per section (`[host]`, `[pstates]`, `[[guest]]`, `[[channel]]`,
//! `[[nic]]`). Validation collects every problem it finds, each one named by its key
//! path (`guest[2].cores`) and the guest's name, so that a user fixes a file in one
//! pass. A `Topology` is immutable once validated: where vCPUs run *now* is
//! `placement::Assignment`.
//!
//! ```toml
//! [host]
//! cores = [0, 1]            # host cores the stack may use (default: all online)
//!
//! [[guest]]
//! name = "driver"           # unique; [a-z0-9_-], at most 32 bytes
//! role = "driver"           # driver | ip | pf | tcp | posix | app
//! image = "idle"            # a built-in image, or a path to an ELF image
//! memory_mib = 4            # guest RAM (default 4)
//! vcpus = 1                 # default 1, at most 16
//! cores = [0]               # host cores every vCPU may run on (default: host.cores)
//! # vcpu_cores = [[0], [1]] # or one core set per vCPU
//! on_failure = "stop-all"   # or "stop-guest": leave it stopped, keep the others
//! cmdline = ""              # handed to the guest in its boot info
//! ppc = 0                   # _PPC: the fastest P-state the guest may use (0 = P0)
//! pstate = 0                # the P-state it starts in (default: its _PPC)
//! coordination = "hw-all"   # this guest's _PSD type (default: pstates.coordination)
//!
//! [pstates]                 # optional: the P-states every guest's ACPI tables offer
//! coordination = "hw-all"   # sw-all | sw-any | hw-all (default hw-all)
//! backend = "auto"          # auto | cpufreq | msr | soft: how frequencies reach the host
//! soft_period_us = 10000    # soft scaling's duty-cycle period (1 ms to 1 s)
//! ladder = [                # P0 first, strictly falling; default: from the host
//!     { mhz = 2600, power_mw = 10000 },
//!     { mhz = 1300, power_mw = 2800, latency_us = 10 },
//! ]
//! ```
//!
//! A ladder entry's control and status values are its index (P0 = 0). `_PSD` domains
//! follow the pinning: vCPUs pinned to single cores of one host frequency domain share
//! a domain; a vCPU allowed on several cores has a domain of its own.
//!
//! ```toml
//! [[channel]]               # a fast-path channel pair between two guests
//! a = "ping"                # side A
//! b = "pong"                # side B
//! queue_depth = 64          # request-queue slots (power of two; default 64)
//! max_outstanding = 16      # requests in flight per side (power of two; default 16)
//! buf_size = 256            # payload buffer bytes (multiple of 64; default 256)
//! ```
//!
//! `[[nic]]` is reserved for the NIC configuration; until the VMM implements it a file
//! that uses it is rejected with a message saying so, rather than silently ignored.

mod file;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use compart_acpi::{Coordination, HostFreqDomains, PStateTable};
use compart_channel::{PairConfig, Side};

/// Default guest RAM.
pub const DEFAULT_MEMORY_MIB: u32 = 4;
/// Smallest guest RAM: the fixed low 2 MiB plus room for an image, stacks and heap.
pub const MIN_MEMORY_MIB: u32 = 3;
/// Largest guest RAM; guests are meant to be tiny, and the address space above RAM
/// (up to 4 GiB) is kept for device and doorbell pages.
pub const MAX_MEMORY_MIB: u32 = 2048;

pub use crate::host::{core_list, HostCore};

/// The `_PSD` coordination types with the names topology files (and the VMM's logs)
/// give them: [`Coordination::name`], the one spelling on both sides of the wall.
pub const COORDINATION_NAMES: [(Coordination, &str); 3] = [
    (Coordination::SwAll, Coordination::SwAll.name()),
    (Coordination::SwAny, Coordination::SwAny.name()),
    (Coordination::HwAll, Coordination::HwAll.name()),
];

/// How a topology file spells `c`.
pub fn coordination_name(c: Coordination) -> &'static str {
    c.name()
}

/// The coordination type a topology file calls `name`.
pub fn coordination_from_name(name: &str) -> Option<Coordination> {
    COORDINATION_NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(c, _)| *c)
}

/// Soft scaling's duty-cycle period, unless `pstates.soft_period_us` names one.
pub const DEFAULT_SOFT_PERIOD: Duration = Duration::from_millis(10);

/// Which backend the topology asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The best one this host supports.
    #[default]
    Auto,
    /// Host cpufreq limits.
    Cpufreq,
    /// Host IA32_PERF_CTL through /dev/cpu/N/msr.
    Msr,
    /// Duty-cycling the vCPU thread.
    Soft,
}

/// What a guest is in the network stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The NIC driver server.
    Driver,
    /// The IP server (Ethernet, ARP, IPv4, ICMP, routing).
    Ip,
    /// The packet filter server.
    Pf,
    /// The TCP server.
    Tcp,
    /// The POSIX socket server.
    Posix,
    /// An application.
    App,
}

impl Role {
    /// The role as the boot info codes it. (The topology keeps its own `Role` for
    /// serde; this match is exhaustive, and a test checks that the names agree.)
    pub fn abi(self) -> compart_abi::Role {
        match self {
            Role::Driver => compart_abi::Role::Driver,
            Role::Ip => compart_abi::Role::Ip,
            Role::Pf => compart_abi::Role::Pf,
            Role::Tcp => compart_abi::Role::Tcp,
            Role::Posix => compart_abi::Role::Posix,
            Role::App => compart_abi::Role::App,
        }
    }

    /// The role's name as written in topology files and boot info (the ABI's
    /// spelling, [`compart_abi::Role::name`]).
    pub fn as_str(self) -> &'static str {
        self.abi().name()
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Cpufreq => "cpufreq",
            BackendChoice::Msr => "msr",
            BackendChoice::Soft => "soft",
        })
    }
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailurePolicy::StopAll => "stop-all",
            FailurePolicy::StopGuest => "stop-guest",
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the VMM does when a guest fails (panics, faults, triple-faults, or makes an
/// exit the VMM cannot serve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Stop every guest and end the run.
    #[default]
    StopAll,
    /// Leave the failed guest stopped and keep the others running.
    StopGuest,
}

/// Where a guest's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An image built into the `compart` binary (from `guest-servers/`).
    BuiltIn(String),
    /// An ELF file on the host.
    File(PathBuf),
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::BuiltIn(n) => write!(f, "{n} (built-in)"),
            ImageSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One validated guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// Unique name, also the console prefix.
    pub name: String,
    /// Role in the stack.
    pub role: Role,
    /// The image it runs.
    pub image: ImageSource,
    /// RAM in MiB.
    pub memory_mib: u32,
    /// Host cores each vCPU may run on, one set per vCPU.
    pub vcpu_cores: Vec<Vec<HostCore>>,
    /// Failure policy.
    pub on_failure: FailurePolicy,
    /// Command line handed to the guest.
    pub cmdline: String,
    /// `_PPC`: index of the fastest P-state the guest may use.
    pub ppc: u32,
    /// `_PSD` coordination type of the guest's processors.
    pub coordination: Coordination,
    /// The P-state its vCPUs start in.
    pub initial_pstate: u32,
}

impl GuestConfig {
    /// Number of vCPUs.
    pub fn vcpus(&self) -> u32 {
        self.vcpu_cores.len() as u32
    }

    /// RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }
}

/// A validated topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The host cores the stack may use.
    pub host_cores: Vec<HostCore>,
    /// The guests, in file order.
    pub guests: Vec<GuestConfig>,
    /// The P-state ladder every guest's ACPI tables offer.
    pub pstates: PStateTable,
    /// The host's frequency domains, which `_PSD` domains follow.
    pub freq_domains: HostFreqDomains,
    /// How guests' frequencies reach the host.
    pub freq_backend: BackendChoice,
    /// Soft scaling's duty-cycle period.
    pub soft_period: std::time::Duration,
    /// Channels between guests.
    pub channels: Vec<ChannelConfig>,
}

/// One validated channel pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Index of the guest on side A.
    pub a: usize,
    /// Index of the guest on side B.
    pub b: usize,
    /// Queue and pool sizes.
    pub pair: PairConfig,
}

impl Topology {
    /// The channels of guest `guest`, in the order its boot info lists them: (channel
    /// index in the topology, this guest's side).
    pub fn channels_of(&self, guest: usize) -> Vec<(usize, Side)> {
        self.channels
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                if c.a == guest {
                    Some((i, Side::A))
                } else if c.b == guest {
                    Some((i, Side::B))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// What validation needs to know about the host and the binary.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Cores online on this host.
    pub online_cores: Vec<HostCore>,
    /// Names of the images built into the binary.
    pub builtin_images: Vec<String>,
    /// The P-state ladder the host offers (used when the topology gives none).
    pub host_ladder: PStateTable,
    /// The host's frequency domains.
    pub freq_domains: HostFreqDomains,
}

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `guest[1].cores`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Why a topology file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file cannot be read.
    #[error("cannot read topology file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid topology file.
    #[error("{path}: not a valid topology file:\n{message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// The file parsed but describes something this host cannot run.
    #[error("{path}: invalid topology:\n{}", list(.problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Topology {
    /// Reads and validates a topology file against this host.
    pub fn load(path: &Path, host: &HostFacts) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, host).map_err(|e| match e {
            ParseFailure::Syntax(message) => TopologyError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ParseFailure::Invalid(problems) => TopologyError::Invalid {
                path: path.to_path_buf(),
                problems,
            },
        })
    }

    /// Parses and validates topology text. Relative image paths are taken relative to
    /// `base` (the file's directory).
    pub fn parse(text: &str, base: &Path, host: &HostFacts) -> Result<Topology, ParseFailure> {
        let file: file::FileRepr =
            toml::from_str(text).map_err(|e| ParseFailure::Syntax(e.to_string()))?;
        validate::validate(file, base, host).map_err(ParseFailure::Invalid)
    }
}

/// Why [`Topology::parse`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseFailure {
    /// Not TOML, or not of the topology's shape (the parser's message).
    Syntax(String),
    /// Of the right shape, but wrong for this host.
    Invalid(Vec<Problem>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use compart_acpi::{Mhz, Micros, MilliWatts};

    fn host() -> HostFacts {
        HostFacts {
            online_cores: vec![HostCore(0), HostCore(1)],
            builtin_images: vec!["idle".into(), "selftest".into()],
            host_ladder: compart_acpi::ladder::default_ladder(Mhz(2000)),
            freq_domains: HostFreqDomains::from_sets(vec![vec![0], vec![1]]),
        }
    }

    fn parse(text: &str) -> Result<Topology, ParseFailure> {
        Topology::parse(text, Path::new("."), &host())
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ParseFailure::Invalid(p)) => p.iter().map(|p| p.to_string()).collect(),
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    fn syntax(text: &str) -> String {
        match parse(text) {
            Err(ParseFailure::Syntax(m)) => m,
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_guest_gets_the_defaults() {
        let t = parse("[[guest]]\nname = \"a\"\nrole = \"app\"\nimage = \"idle\"\n").unwrap();
        assert_eq!(t.host_cores, vec![HostCore(0), HostCore(1)]);
        let g = &t.guests[0];
        assert_eq!(g.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(g.vcpu_cores, vec![vec![HostCore(0), HostCore(1)]]);
        assert_eq!(g.on_failure, FailurePolicy::StopAll);
        assert_eq!(g.image, ImageSource::BuiltIn("idle".into()));
    }

    #[test]
    fn full_guest_is_read_as_written() {
        let t = parse(
            r#"
            [host]
            cores = [1]
            [[guest]]
            name = "tcp-0"
            role = "tcp"
            image = "selftest"
            memory_mib = 8
            vcpus = 2
            cores = [1]
            on_failure = "stop-guest"
            cmdline = "exit=3"
            "#,
        )
        .unwrap();
        let g = &t.guests[0];
        assert_eq!(g.role, Role::Tcp);
        assert_eq!(g.vcpu_cores, vec![vec![HostCore(1)], vec![HostCore(1)]]);
        assert_eq!(g.on_failure, FailurePolicy::StopGuest);
        assert_eq!(g.cmdline, "exit=3");
        assert_eq!(g.memory_bytes(), 8 << 20);
    }

    #[test]
    fn per_vcpu_core_sets_set_the_vcpu_count() {
        let t = parse(
            "[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\nvcpu_cores = [[0], [1]]\n",
        )
        .unwrap();
        assert_eq!(t.guests[0].vcpus(), 2);
        assert_eq!(t.guests[0].vcpu_cores[1], vec![HostCore(1)]);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let m =
            syntax("[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\nmemroy_mib = 4\n");
        assert!(m.contains("unknown field `memroy_mib`"), "{m}");
        assert!(m.contains("line 5"), "{m}");
    }

    #[test]
    fn unknown_role_lists_the_roles() {
        let m = syntax("[[guest]]\nname = \"a\"\nrole = \"dns\"\nimage = \"idle\"\n");
        assert!(m.contains("unknown variant `dns`"), "{m}");
        assert!(m.contains("posix"), "{m}");
    }

    #[test]
    fn unknown_image_names_the_built_in_ones() {
        let p = problems("[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"nope\"\n");
        assert_eq!(
            p,
            vec!["guest[0] (a).image: unknown image `nope` (built-in images: idle, selftest; a file path must contain `/`)"]
        );
    }

    #[test]
    fn missing_image_file_is_reported() {
        let p = problems("[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"./no/such.elf\"\n");
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("guest[0] (a).image: no image file at "),
            "{p:?}"
        );
    }

    #[test]
    fn role_without_a_server_image_needs_an_image() {
        let p = problems("[[guest]]\nname = \"a\"\nrole = \"tcp\"\n");
        assert_eq!(
            p,
            vec!["guest[0] (a).image: no built-in server image for role `tcp` yet; name one with `image` (built-in images: idle, selftest)"]
        );
    }

    #[test]
    fn core_absent_on_this_host_is_reported() {
        let p = problems("[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\ncores = [7]\n");
        assert_eq!(
            p,
            vec!["guest[0] (a).cores: core 7 is not online on this host (online: 0-1)"]
        );
    }

    #[test]
    fn core_outside_host_cores_is_reported() {
        let p = problems(
            "[host]\ncores = [0]\n[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\ncores = [1]\n",
        );
        assert_eq!(
            p,
            vec!["guest[0] (a).cores: core 1 is not one of host.cores (0)"]
        );
    }

    #[test]
    fn host_core_not_online_is_reported() {
        let p = problems("[host]\ncores = [0, 5]\n[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\ncores = [0]\n");
        assert_eq!(
            p,
            vec!["host.cores: core 5 is not online on this host (online: 0-1)"]
        );
    }

    #[test]
    fn duplicate_names_are_reported() {
        let p = problems(
            "[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\n[[guest]]\nname = \"a\"\nrole = \"pf\"\nimage = \"idle\"\n",
        );
        assert_eq!(p, vec!["guest[1] (a).name: duplicate guest name `a`"]);
    }

    #[test]
    fn memory_too_small_and_too_many_vcpus_are_both_reported() {
        let p = problems(
            "[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\nmemory_mib = 1\nvcpus = 17\n",
        );
        assert_eq!(
            p,
            vec![
                "guest[0] (a).memory_mib: 1 MiB is out of range (3 to 2048 MiB)",
                "guest[0] (a).vcpus: 17 is out of range (1 to 16)",
            ]
        );
    }

    #[test]
    fn vcpu_core_sets_must_match_the_vcpu_count() {
        let p = problems(
            "[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\nvcpus = 3\nvcpu_cores = [[0], [1]]\n",
        );
        assert_eq!(
            p,
            vec!["guest[0] (a).vcpu_cores: lists 2 core sets for 3 vCPU(s)"]
        );
    }

    #[test]
    fn bad_names_are_reported() {
        let p = problems("[[guest]]\nname = \"Big Name\"\nrole = \"ip\"\nimage = \"idle\"\n");
        assert_eq!(
            p,
            vec!["guest[0] (Big Name).name: may use only lowercase letters, digits, `-` and `_`"]
        );
    }

    #[test]
    fn reserved_sections_are_refused_not_ignored() {
        let p = problems(
            "[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\n[[nic]]\nname = \"x\"\n",
        );
        assert_eq!(
            p,
            vec!["nic: reserved: this version of compart does not implement it yet"]
        );
    }

    const TWO: &str = "[[guest]]\nname = \"p\"\nrole = \"app\"\nimage = \"idle\"\n\
                       [[guest]]\nname = \"q\"\nrole = \"app\"\nimage = \"idle\"\n";

    #[test]
    fn channels_connect_two_guests_with_default_sizes() {
        let t = parse(&format!("{TWO}[[channel]]\na = \"p\"\nb = \"q\"\n")).unwrap();
        assert_eq!(t.channels.len(), 1);
        assert_eq!((t.channels[0].a, t.channels[0].b), (0, 1));
        assert_eq!(t.channels[0].pair, PairConfig::new(64, 16, 256));
        assert_eq!(t.channels_of(1), vec![(0, Side::B)]);
    }

    #[test]
    fn channel_problems_are_reported() {
        let p = problems(&format!(
            "{TWO}[[channel]]\na = \"p\"\nb = \"zz\"\n[[channel]]\na = \"p\"\nb = \"q\"\nqueue_depth = 3\n"
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0], "channel[0] (p-zz).b: no guest named `zz`");
        assert!(
            p[1].starts_with("channel[1] (p-q).queue_depth: invalid sizes: "),
            "{p:?}"
        );
    }

    #[test]
    fn pstates_default_to_the_host_ladder_and_hw_all() {
        let t = parse("[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\n").unwrap();
        assert_eq!(t.pstates, host().host_ladder);
        assert_eq!(t.guests[0].coordination, Coordination::HwAll);
        assert_eq!(t.guests[0].ppc, 0);
    }

    #[test]
    fn explicit_ladder_and_coordination_are_used() {
        let t = parse(
            r#"
            [pstates]
            coordination = "sw-any"
            ladder = [{ mhz = 3000, power_mw = 12000 }, { mhz = 1500, power_mw = 4000, latency_us = 20 }]
            [[guest]]
            name = "a"
            role = "ip"
            image = "idle"
            ppc = 1
            pstate = 1
            [[guest]]
            name = "b"
            role = "ip"
            image = "idle"
            coordination = "sw-all"
            "#,
        )
        .unwrap();
        let s = t.pstates.states();
        assert_eq!(
            (s[0].frequency, s[0].power, s[0].control),
            (Mhz(3000), MilliWatts(12000), 0)
        );
        assert_eq!(
            (s[1].frequency, s[1].transition_latency, s[1].status),
            (Mhz(1500), Micros(20), 1)
        );
        assert_eq!(t.guests[0].coordination, Coordination::SwAny);
        assert_eq!(t.guests[0].ppc, 1);
        assert_eq!(t.guests[0].initial_pstate, 1);
        assert_eq!(t.guests[1].coordination, Coordination::SwAll);
        assert_eq!(t.freq_backend, BackendChoice::Auto);
    }

    #[test]
    fn every_coordination_name_reads_back_as_its_type_and_others_are_refused() {
        for (c, name) in COORDINATION_NAMES {
            let t = parse(&format!(
                "[pstates]\ncoordination = \"{name}\"\n[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\n"
            ))
            .unwrap();
            assert_eq!(t.guests[0].coordination, c);
            assert_eq!(coordination_name(c), name);
        }
        let m = syntax(
            "[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\ncoordination = \"sw_all\"\n",
        );
        assert!(m.contains("unknown variant `sw_all`"), "{m}");
    }

    #[test]
    fn bad_ladder_and_ppc_are_reported() {
        let p = problems(
            "[pstates]\nladder = [{ mhz = 1000, power_mw = 1 }, { mhz = 2000, power_mw = 2 }]\n\
             [[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\nppc = 9\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("pstates.ladder: "), "{p:?}");
        assert_eq!(
            p[1],
            "guest[0] (a).ppc: P9 does not exist: the ladder has 5 P-states (P0 to P4)"
        );
    }

    #[test]
    fn start_up_pstate_must_be_allowed_by_ppc() {
        let p = problems(
            "[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\nppc = 2\npstate = 1\n",
        );
        assert_eq!(
            p,
            vec!["guest[0] (a).pstate: P1 is not one the guest may use (P2 to P4)"]
        );
    }

    #[test]
    fn frequency_backend_can_be_named() {
        let t = parse("[pstates]\nbackend = \"soft\"\n[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\n").unwrap();
        assert_eq!(t.freq_backend, BackendChoice::Soft);
        let m = syntax("[pstates]\nbackend = \"turbo\"\n[[guest]]\nname = \"a\"\nrole = \"ip\"\nimage = \"idle\"\n");
        assert!(m.contains("unknown variant `turbo`"), "{m}");
    }

    #[test]
    fn empty_topology_is_reported() {
        assert_eq!(problems(""), vec!["guest: the topology has no guests"]);
    }

    #[test]
    fn shipped_default_topology_is_valid() {
        let text = include_str!("../../../topologies/default.toml");
        let t = parse(text).unwrap();
        let roles: Vec<Role> = t.guests.iter().map(|g| g.role).collect();
        assert_eq!(
            roles,
            vec![Role::Driver, Role::Ip, Role::Pf, Role::Tcp, Role::Posix]
        );
    }
}

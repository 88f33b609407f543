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
//! ```toml
//! [[nic]]                   # a virtio-net device, driven by a guest of role `driver`
//! guest = "driver"          # the guest that drives it
//! tap = "cpt0"              # a TAP (opened, or created with IFF_VNET_HDR), or…
//! # host_interface = "eth1" # …an existing interface, through a macvtap on it
//! netns = "cpt-test"        # optional: the network namespace of the TAP / interface
//! peer_address = "198.18.0.1/24" # optional (tap only): the Linux side's address, link up
//! mac = "02:00:00:00:00:02" # the guest's MAC (default 02:43:50:00:00:<index + 2>)
//! mtu = 1500                # default 1500
//! offloads = ["csum", "tso4", "tso6"] # allowed offloads (default all the TAP accepts)
//! queue_size = 256          # QUEUE_NUM_MAX of both queues (power of two ≤ 1024)
//! address = "198.18.0.2/24" # the stack's IPv4 address, for the ip server
//! gateway = "198.18.0.1"    # optional default gateway
//! routes = [{ dest = "10.0.0.0/8", via = "198.18.0.1" }] # optional static routes
//! ```

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
    /// NICs, in file order.
    pub nics: Vec<NicConfig>,
}

/// What a NIC's host side is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicBackend {
    /// A TAP of this name, opened or created.
    Tap(String),
    /// An existing interface, attached through a macvtap the VMM creates on it.
    HostInterface(String),
}

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The address.
    pub addr: std::net::Ipv4Addr,
    /// Prefix length, 0–32.
    pub prefix_len: u8,
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Ipv4Net, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not an address/prefix-length (a.b.c.d/n)"))?;
        let addr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let prefix_len = l
            .parse::<u8>()
            .ok()
            .filter(|&n| n <= 32)
            .ok_or_else(|| format!("`{l}` is not a prefix length (0 to 32)"))?;
        Ok(Ipv4Net { addr, prefix_len })
    }
}

/// The IPv4 configuration the ip server of a NIC gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Settings {
    /// The stack's address on the NIC's network.
    pub address: Ipv4Net,
    /// The default gateway.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Static routes: destination network, next hop.
    pub routes: Vec<(Ipv4Net, std::net::Ipv4Addr)>,
}

/// One validated `[[nic]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicConfig {
    /// Index of the guest (role `driver`) that drives it.
    pub guest: usize,
    /// The host side.
    pub backend: NicBackend,
    /// The network namespace the host side is in (created if missing, for a TAP).
    pub netns: Option<String>,
    /// The address of the TAP's Linux side.
    pub peer_address: Option<Ipv4Net>,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u16,
    /// The `TUN_F_*` offloads allowed.
    pub offloads: u32,
    /// `QUEUE_NUM_MAX`.
    pub queue_size: u16,
    /// What the ip server is told.
    pub ipv4: Option<Ipv4Settings>,
}

impl NicConfig {
    /// The host-side interface's name (the TAP, or the interface under the macvtap).
    pub fn host_name(&self) -> &str {
        match &self.backend {
            NicBackend::Tap(n) | NicBackend::HostInterface(n) => n,
        }
    }
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
    /// The NICs guest `guest` drives, in the order its boot info lists them: (NIC
    /// index in the topology).
    pub fn nics_of(&self, guest: usize) -> Vec<usize> {
        (0..self.nics.len())
            .filter(|&i| self.nics[i].guest == guest)
            .collect()
    }

    /// The IPv4 configuration guest `guest` gets in its boot info: if it is an ip
    /// server, that of the first NIC with an address whose driver guest it has a
    /// channel to; if it drives NICs and has no channel to an ip server (a whole
    /// stack in one guest, the `mono` image), that of its own first NIC with one.
    pub fn ipv4_of(&self, guest: usize) -> Option<&Ipv4Settings> {
        let role = self.guests[guest].role;
        if role == Role::Driver {
            let has_ip = self.channels.iter().any(|c| {
                (c.a == guest && self.guests[c.b].role == Role::Ip)
                    || (c.b == guest && self.guests[c.a].role == Role::Ip)
            });
            if has_ip {
                return None;
            }
            return self
                .nics
                .iter()
                .filter(|n| n.guest == guest)
                .find_map(|n| n.ipv4.as_ref());
        }
        if role != Role::Ip {
            return None;
        }
        let peers: Vec<usize> = self
            .channels
            .iter()
            .filter_map(|c| match (c.a == guest, c.b == guest) {
                (true, _) => Some(c.b),
                (_, true) => Some(c.a),
                _ => None,
            })
            .collect();
        self.nics
            .iter()
            .filter(|n| peers.contains(&n.guest))
            .find_map(|n| n.ipv4.as_ref())
    }

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
    /// Network interfaces in the VMM's namespace (for `host_interface`).
    pub interfaces: Vec<String>,
    /// Network namespaces (names under `/run/netns`).
    pub netns: Vec<String>,
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
            interfaces: vec!["lo".into(), "eth0".into()],
            netns: vec!["ns1".into()],
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

    const STACK: &str = "[[guest]]\nname = \"drv\"\nrole = \"driver\"\nimage = \"idle\"\n\
        [[guest]]\nname = \"ip\"\nrole = \"ip\"\nimage = \"idle\"\n\
        [[guest]]\nname = \"app\"\nrole = \"app\"\nimage = \"idle\"\n\
        [[channel]]\na = \"drv\"\nb = \"ip\"\n";

    #[test]
    fn a_nic_gets_its_defaults_and_its_address_goes_to_the_ip_server_of_its_driver() {
        let t = parse(&format!(
            "{STACK}[[nic]]\nguest = \"drv\"\ntap = \"cpt0\"\nnetns = \"cpt-x\"\n\
             peer_address = \"198.18.0.1/24\"\naddress = \"198.18.0.2/24\"\n\
             gateway = \"198.18.0.1\"\nroutes = [{{ dest = \"198.19.0.0/16\", via = \"198.18.0.1\" }}]\n"
        ))
        .unwrap();
        let n = &t.nics[0];
        assert_eq!(n.guest, 0);
        assert_eq!(n.backend, NicBackend::Tap("cpt0".into()));
        assert_eq!(n.netns.as_deref(), Some("cpt-x"));
        assert_eq!((n.mtu, n.queue_size), (1500, 256));
        assert_eq!(n.mac, [0x02, 0x43, 0x50, 0, 0, 2]);
        assert_eq!(n.offloads, 0x07);
        assert_eq!(n.peer_address.unwrap().to_string(), "198.18.0.1/24");
        assert_eq!(t.nics_of(0), vec![0]);
        assert!(t.nics_of(1).is_empty());
        let ip = t
            .ipv4_of(1)
            .expect("the ip server has a channel to the driver");
        assert_eq!(ip.address.to_string(), "198.18.0.2/24");
        assert_eq!(ip.gateway, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(ip.routes.len(), 1);
        assert!(t.ipv4_of(0).is_none() && t.ipv4_of(2).is_none());
    }

    #[test]
    fn a_driver_without_an_ip_server_gets_its_own_nics_address() {
        let t = parse(
            "[[guest]]\nname = \"mono\"\nrole = \"driver\"\nimage = \"idle\"\n\
             [[nic]]\nguest = \"mono\"\ntap = \"cpt0\"\naddress = \"198.18.0.2/24\"\n",
        )
        .unwrap();
        assert_eq!(
            t.ipv4_of(0).map(|c| c.address.to_string()).as_deref(),
            Some("198.18.0.2/24")
        );
    }

    #[test]
    fn every_nic_problem_is_reported_with_its_key_path() {
        let p = problems(&format!(
            "{STACK}[[nic]]\nguest = \"app\"\ntap = \"a-name-far-too-long\"\n\
             mac = \"01:00:00:00:00:01\"\nmtu = 10\nqueue_size = 300\n\
             offloads = [\"tso4\", \"ufo\"]\naddress = \"198.18.0.300/24\"\n\
             [[nic]]\nguest = \"nobody\"\nhost_interface = \"eth9\"\npeer_address = \"1.2.3.4/8\"\n\
             [[nic]]\nguest = \"drv\"\ntap = \"t0\"\ngateway = \"x\"\n\
             [[nic]]\nguest = \"drv\"\ntap = \"t0\"\nhost_interface = \"eth0\"\n\
             [[nic]]\nguest = \"drv\"\nhost_interface = \"eth0\"\nnetns = \"nope\"\n"
        ));
        let want = [
            "nic[0] (a-name-far-too-long).guest: guest `app` has role `app`; a NIC is driven by a guest of role `driver`",
            "nic[0] (a-name-far-too-long).tap: `a-name-far-too-long` must be 1 to 15 bytes long",
            "nic[0] (a-name-far-too-long).address: `198.18.0.300` is not an IPv4 address",
            "nic[0] (a-name-far-too-long).mac: `01:00:00:00:00:01` is a multicast or zero address",
            "nic[0] (a-name-far-too-long).mtu: 10 is out of range (68 to 65535)",
            "nic[0] (a-name-far-too-long).queue_size: 300 is not a power of two from 2 to 1024",
            "nic[0] (a-name-far-too-long).offloads: unknown offload `ufo` (csum, tso4, tso6)",
            "nic[0] (a-name-far-too-long).offloads: tso4 and tso6 need csum",
            "nic[1] (eth9).guest: no guest named `nobody`",
            "nic[1] (eth9).host_interface: no interface `eth9` on this host",
            "nic[1] (eth9).peer_address: only a TAP has a Linux side compart configures",
            "nic[2] (t0).gateway: `x` is not an IPv4 address",
            "nic[2] (t0).address: a gateway or routes need the NIC's `address`",
            "nic[3] (t0).tap: give either `tap` or `host_interface`, not both",
            "nic[4] (eth0).netns: no network namespace `nope` (an existing interface lives in an existing namespace)",
            "nic[4] (eth0).guest: guest `drv` drives more than 2 NICs",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
    }

    #[test]
    fn two_nics_on_one_tap_are_refused() {
        let p = problems(&format!(
            "{STACK}[[nic]]\nguest = \"drv\"\ntap = \"t0\"\n[[nic]]\nguest = \"drv\"\ntap = \"t0\"\n"
        ));
        assert_eq!(
            p,
            vec!["nic[1] (t0).tap: `t0` is already the host side of another NIC"]
        );
        // The same name in another namespace is another interface.
        parse(&format!(
            "{STACK}[[nic]]\nguest = \"drv\"\ntap = \"t0\"\n[[nic]]\nguest = \"drv\"\ntap = \"t0\"\nnetns = \"b\"\n"
        ))
        .unwrap();
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
    fn shipped_default_topology_is_the_stack_with_http_and_iperf3_on_a_tap_in_netns_compart() {
        let text = include_str!("../../../topologies/default.toml");
        let mut h = host();
        h.builtin_images = ["driver", "ip", "pf", "tcp", "posix", "http", "iperf3"]
            .map(String::from)
            .to_vec();
        let t = Topology::parse(text, Path::new("."), &h).unwrap();
        let roles: Vec<Role> = t.guests.iter().map(|g| g.role).collect();
        assert_eq!(
            roles,
            vec![
                Role::Driver,
                Role::Ip,
                Role::Pf,
                Role::Tcp,
                Role::Posix,
                Role::App,
                Role::App
            ]
        );
        assert_eq!(t.channels.len(), 6);
        assert_eq!(t.nics[0].netns.as_deref(), Some("compart"));
    }

    #[test]
    fn shipped_idle_topology_is_five_idle_roles() {
        let t = parse(include_str!("../../../topologies/idle.toml")).unwrap();
        let roles: Vec<Role> = t.guests.iter().map(|g| g.role).collect();
        assert_eq!(
            roles,
            vec![Role::Driver, Role::Ip, Role::Pf, Role::Tcp, Role::Posix]
        );
        assert!(t.nics.is_empty());
    }
}

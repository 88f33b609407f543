//! From the file (`file.rs`) to a [`Topology`]: one function per section, each adding
//! what is wrong to [`Problems`] and returning what it could make of the section, so
//! that every problem of a file is reported at once.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use compart_abi::virtio::MAX_QUEUE_SIZE;
use compart_abi::{
    CHANNEL_STRIDE, CMDLINE_LEN, MAX_CHANNELS, MAX_CORES_LISTED, MAX_NICS, MAX_ROUTES, MAX_VCPUS,
    NAME_LEN,
};
use compart_acpi::ladder::{DEFAULT_BUS_MASTER_LATENCY, DEFAULT_TRANSITION_LATENCY};
use compart_acpi::{Coordination, Mhz, Micros, MilliWatts, PState, PStateTable};
use compart_channel::{PairConfig, PairLayout};

use super::file::{ChannelRepr, FileRepr, GuestRepr, HostRepr, NicRepr, PStatesRepr};
use super::{
    core_list, ChannelConfig, GuestConfig, HostCore, HostFacts, ImageSource, Ipv4Net, Ipv4Settings,
    NicBackend, NicConfig, Problem, Role, Topology, DEFAULT_MEMORY_MIB, DEFAULT_SOFT_PERIOD,
    MAX_MEMORY_MIB, MIN_MEMORY_MIB,
};
use crate::devices::virtio::net::MAX_FRAME;
use crate::devices::virtio::tap::{IFNAME_MAX, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};

/// Longest network namespace name compart takes (a file name under `/run/netns`).
const NETNS_NAME_MAX: usize = 64;

/// Every problem found so far.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Validates `file` against `host`; relative image paths are taken from `base`.
pub(super) fn validate(
    file: FileRepr,
    base: &Path,
    host: &HostFacts,
) -> Result<Topology, Vec<Problem>> {
    let mut p = Problems::default();
    let ps = pstates(file.pstates.as_ref(), host, &mut p);
    let cores = host_cores(&file.host, host, &mut p);
    if file.guests.is_empty() {
        p.add("guest", "the topology has no guests");
    }
    let ctx = GuestContext {
        base,
        host,
        host_cores: &cores,
        pstates: &ps,
    };
    let mut names = BTreeSet::new();
    let guests: Vec<GuestConfig> = file
        .guests
        .into_iter()
        .enumerate()
        .map(|(i, g)| guest(i, g, &mut names, &ctx, &mut p))
        .collect();
    let channels = channels(&file.channels, &guests, &mut p);
    let nics = nics(&file.nics, &guests, &channels, host, &mut p);
    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(Topology {
        channels,
        nics,
        host_cores: cores,
        guests,
        pstates: ps.ladder,
        freq_domains: host.freq_domains.clone(),
        freq_backend: ps.backend,
        soft_period: ps.soft_period,
    })
}

/// Offload names in `[[nic]].offloads`, and their `TUN_F_*` bits.
const OFFLOADS: [(&str, u32); 3] = [
    ("csum", TUN_F_CSUM),
    ("tso4", TUN_F_TSO4),
    ("tso6", TUN_F_TSO6),
];

/// A name `ip` and the kernel take for an interface or namespace: 1 to `max` bytes
/// of letters, digits, `-`, `_` and `.`.
fn net_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max {
        return Err(format!("`{name}` must be 1 to {max} bytes long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || name.starts_with('.')
    {
        return Err(format!(
            "`{name}` may use only letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

fn mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    Some(m)
}

/// Every `[[nic]]`: a driver guest that exists, one host side, names Linux takes,
/// no host side used twice, values in range, addresses that parse.
fn nics(
    file: &[NicRepr],
    guests: &[GuestConfig],
    channels: &[ChannelConfig],
    host: &HostFacts,
    p: &mut Problems,
) -> Vec<NicConfig> {
    let mut out = Vec::new();
    let mut per_guest = vec![0usize; guests.len()];
    let mut host_sides = BTreeSet::new();
    for (i, n) in file.iter().enumerate() {
        let label = n
            .tap
            .as_deref()
            .or(n.host_interface.as_deref())
            .unwrap_or("?");
        let at = |key: &str| format!("nic[{i}] ({label}).{key}");
        let guest = guests.iter().position(|g| g.name == n.guest);
        match guest {
            None => p.add(at("guest"), format!("no guest named `{}`", n.guest)),
            Some(g) if guests[g].role != Role::Driver => p.add(
                at("guest"),
                format!(
                    "guest `{}` has role `{}`; a NIC is driven by a guest of role `driver`",
                    n.guest, guests[g].role
                ),
            ),
            Some(g) => {
                per_guest[g] += 1;
                if per_guest[g] == MAX_NICS + 1 {
                    p.add(
                        at("guest"),
                        format!("guest `{}` drives more than {MAX_NICS} NICs", n.guest),
                    );
                }
            }
        }
        if let Some(ns) = &n.netns {
            if let Err(e) = net_name(ns, NETNS_NAME_MAX) {
                p.add(at("netns"), e);
            }
        }
        let backend = match (&n.tap, &n.host_interface) {
            (Some(t), None) => {
                if let Err(e) = net_name(t, IFNAME_MAX) {
                    p.add(at("tap"), e);
                }
                NicBackend::Tap(t.clone())
            }
            (None, Some(h)) => {
                if let Err(e) = net_name(h, IFNAME_MAX) {
                    p.add(at("host_interface"), e);
                }
                match &n.netns {
                    None if !host.interfaces.contains(h) => p.add(
                        at("host_interface"),
                        format!("no interface `{h}` on this host"),
                    ),
                    Some(ns) if !host.netns.contains(ns) => p.add(
                        at("netns"),
                        format!("no network namespace `{ns}` (an existing interface lives in an existing namespace)"),
                    ),
                    _ => {}
                }
                if n.peer_address.is_some() {
                    p.add(
                        at("peer_address"),
                        "only a TAP has a Linux side compart configures",
                    );
                }
                NicBackend::HostInterface(h.clone())
            }
            (Some(_), Some(_)) => {
                p.add(at("tap"), "give either `tap` or `host_interface`, not both");
                NicBackend::Tap(String::new())
            }
            (None, None) => {
                p.add(at("tap"), "give `tap` or `host_interface`");
                NicBackend::Tap(String::new())
            }
        };
        let side = (n.netns.clone(), n.tap.clone().or(n.host_interface.clone()));
        if side.1.is_some() && !host_sides.insert(side.clone()) {
            p.add(
                at(if n.tap.is_some() {
                    "tap"
                } else {
                    "host_interface"
                }),
                format!(
                    "`{}` is already the host side of another NIC",
                    side.1.unwrap_or_default()
                ),
            );
        }
        let mut parse_net = |key: &str, v: &Option<String>| {
            v.as_ref().and_then(|s| match s.parse::<Ipv4Net>() {
                Ok(a) => Some(a),
                Err(e) => {
                    p.add(at(key), e);
                    None
                }
            })
        };
        let peer_address = parse_net("peer_address", &n.peer_address);
        let address = parse_net("address", &n.address);
        let mac = match &n.mac {
            None => [0x02, 0x43, 0x50, 0, 0, (i as u8).wrapping_add(2)],
            Some(s) => match mac(s) {
                Some(m) if m[0] & 1 == 0 && m != [0; 6] => m,
                Some(_) => {
                    p.add(at("mac"), format!("`{s}` is a multicast or zero address"));
                    [0; 6]
                }
                None => {
                    p.add(
                        at("mac"),
                        format!("`{s}` is not a MAC address (aa:bb:cc:dd:ee:ff)"),
                    );
                    [0; 6]
                }
            },
        };
        let mtu = n.mtu.unwrap_or(1500);
        if !(68..=MAX_FRAME as u32 - 14).contains(&mtu) {
            p.add(
                at("mtu"),
                format!("{mtu} is out of range (68 to {})", MAX_FRAME - 14),
            );
        }
        let queue_size = n.queue_size.unwrap_or(256);
        if !queue_size.is_power_of_two() || !(2..=u32::from(MAX_QUEUE_SIZE)).contains(&queue_size) {
            p.add(
                at("queue_size"),
                format!("{queue_size} is not a power of two from 2 to {MAX_QUEUE_SIZE}"),
            );
        }
        let mut offloads = 0;
        match &n.offloads {
            None => offloads = OFFLOADS.iter().fold(0, |a, (_, b)| a | b),
            Some(list) => {
                for name in list {
                    match OFFLOADS.iter().find(|(k, _)| k == name) {
                        Some((_, b)) => offloads |= b,
                        None => p.add(
                            at("offloads"),
                            format!("unknown offload `{name}` (csum, tso4, tso6)"),
                        ),
                    }
                }
                if offloads & (TUN_F_TSO4 | TUN_F_TSO6) != 0 && offloads & TUN_F_CSUM == 0 {
                    p.add(at("offloads"), "tso4 and tso6 need csum");
                }
            }
        }
        let gateway = n.gateway.as_ref().and_then(|g| match g.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                p.add(at("gateway"), format!("`{g}` is not an IPv4 address"));
                None
            }
        });
        if address.is_none() && (n.gateway.is_some() || !n.routes.is_empty()) {
            p.add(
                at("address"),
                "a gateway or routes need the NIC's `address`",
            );
        }
        if n.routes.len() > MAX_ROUTES {
            p.add(
                at("routes"),
                format!("{} routes; at most {MAX_ROUTES}", n.routes.len()),
            );
        }
        let mut routes = Vec::new();
        for (k, r) in n.routes.iter().enumerate() {
            let key = format!("routes[{k}]");
            let dest = r.dest.parse::<Ipv4Net>();
            let via = r.via.parse::<std::net::Ipv4Addr>();
            match (dest, via) {
                (Ok(d), Ok(v)) => routes.push((d, v)),
                (Err(e), _) => p.add(at(&format!("{key}.dest")), e),
                (_, Err(_)) => p.add(
                    at(&format!("{key}.via")),
                    format!("`{}` is not an IPv4 address", r.via),
                ),
            }
        }
        out.push(NicConfig {
            guest: guest.unwrap_or(0),
            backend,
            netns: n.netns.clone(),
            peer_address,
            mac,
            mtu: mtu.min(u32::from(u16::MAX)) as u16,
            offloads,
            queue_size: queue_size.min(u32::from(MAX_QUEUE_SIZE)) as u16,
            ipv4: address.map(|address| Ipv4Settings {
                address,
                gateway,
                routes,
            }),
        });
    }
    // An ip server that two NICs with addresses feed would get two configurations.
    for (g, cfg) in guests.iter().enumerate() {
        if cfg.role != Role::Ip {
            continue;
        }
        let peers: Vec<usize> = channels
            .iter()
            .filter_map(|c| match (c.a == g, c.b == g) {
                (true, _) => Some(c.b),
                (_, true) => Some(c.a),
                _ => None,
            })
            .collect();
        let feeding = out
            .iter()
            .filter(|n| n.ipv4.is_some() && peers.contains(&n.guest))
            .count();
        if feeding > 1 {
            p.add(
                format!("guest[{g}] ({})", cfg.name),
                format!("ip server `{}` has channels to {feeding} NICs' drivers with an address; it serves one", cfg.name),
            );
        }
    }
    out
}

/// What `[pstates]` says, defaults filled in.
struct PStates {
    ladder: PStateTable,
    coordination: Coordination,
    backend: super::BackendChoice,
    soft_period: Duration,
}

/// `[pstates]`: the ladder (else the host's), coordination, backend, soft period.
fn pstates(file: Option<&PStatesRepr>, host: &HostFacts, p: &mut Problems) -> PStates {
    let coordination = file
        .and_then(|f| f.coordination)
        .unwrap_or(Coordination::HwAll);
    let ladder = match file.and_then(|f| f.ladder.as_ref()) {
        None => host.host_ladder.clone(),
        Some(ladder) => {
            let states = ladder
                .iter()
                .enumerate()
                .map(|(i, s)| PState {
                    frequency: Mhz(s.mhz),
                    power: MilliWatts(s.power_mw),
                    transition_latency: s.latency_us.map_or(DEFAULT_TRANSITION_LATENCY, Micros),
                    bus_master_latency: s
                        .bus_master_latency_us
                        .map_or(DEFAULT_BUS_MASTER_LATENCY, Micros),
                    control: i as u64,
                    status: i as u64,
                })
                .collect();
            PStateTable::new(states).unwrap_or_else(|e| {
                p.add("pstates.ladder", e.to_string());
                host.host_ladder.clone()
            })
        }
    };
    let soft_period_us = file
        .and_then(|f| f.soft_period_us)
        .unwrap_or(DEFAULT_SOFT_PERIOD.as_micros() as u64);
    if !(1_000..=1_000_000).contains(&soft_period_us) {
        p.add(
            "pstates.soft_period_us",
            format!("{soft_period_us} µs is out of range (1000 to 1000000)"),
        );
    }
    PStates {
        ladder,
        coordination,
        backend: file.map_or_else(Default::default, |f| f.backend),
        soft_period: Duration::from_micros(soft_period_us),
    }
}

/// `[host]`: the cores the stack may use (default: every online core).
fn host_cores(file: &HostRepr, host: &HostFacts, p: &mut Problems) -> Vec<HostCore> {
    let Some(cores) = &file.cores else {
        return host.online_cores.clone();
    };
    if cores.is_empty() {
        p.add("host.cores", "must name at least one core");
    }
    let mut seen = BTreeSet::new();
    for &c in cores {
        if !host.online_cores.contains(&HostCore(c)) {
            p.add(
                "host.cores",
                format!(
                    "core {c} is not online on this host (online: {})",
                    core_list(&host.online_cores)
                ),
            );
        } else if !seen.insert(c) {
            p.add("host.cores", format!("core {c} is listed twice"));
        }
    }
    cores.iter().map(|&c| HostCore(c)).collect()
}

/// What every guest is checked against.
struct GuestContext<'a> {
    /// Relative image paths start here.
    base: &'a Path,
    host: &'a HostFacts,
    /// The validated `host.cores`.
    host_cores: &'a [HostCore],
    pstates: &'a PStates,
}

/// One `[[guest]]`; `names` are the guest names seen so far.
fn guest(
    i: usize,
    g: GuestRepr,
    names: &mut BTreeSet<String>,
    ctx: &GuestContext<'_>,
    p: &mut Problems,
) -> GuestConfig {
    let (host, ps) = (ctx.host, ctx.pstates);
    let at = |key: &str| format!("guest[{i}] ({}).{key}", g.name);

    if g.name.is_empty() || g.name.len() > NAME_LEN {
        p.add(at("name"), format!("must be 1 to {NAME_LEN} bytes long"));
    } else if !g
        .name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        p.add(
            at("name"),
            "may use only lowercase letters, digits, `-` and `_`",
        );
    } else if !names.insert(g.name.clone()) {
        p.add(at("name"), format!("duplicate guest name `{}`", g.name));
    }

    let image = image(&g, ctx.base, host, &at, p);

    let memory_mib = g.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
        p.add(
            at("memory_mib"),
            format!("{memory_mib} MiB is out of range ({MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB)"),
        );
    }

    let vcpus = g.vcpus.unwrap_or(match &g.vcpu_cores {
        Some(v) => v.len() as u32,
        None => 1,
    });
    if vcpus == 0 || vcpus > MAX_VCPUS {
        p.add(
            at("vcpus"),
            format!("{vcpus} is out of range (1 to {MAX_VCPUS})"),
        );
    }

    let vcpu_cores = vcpu_cores(&g, vcpus, host, ctx.host_cores, &at, p);

    if g.cmdline.len() > CMDLINE_LEN {
        p.add(
            at("cmdline"),
            format!("is {} bytes long; at most {CMDLINE_LEN}", g.cmdline.len()),
        );
    }

    let states = ps.ladder.len();
    if g.ppc as usize >= states {
        p.add(
            at("ppc"),
            format!(
                "P{} does not exist: the ladder has {states} P-states (P0 to P{})",
                g.ppc,
                states - 1
            ),
        );
    }
    let initial_pstate = g.pstate.unwrap_or(g.ppc);
    if (g.ppc as usize) < states && (initial_pstate < g.ppc || initial_pstate as usize >= states) {
        p.add(
            at("pstate"),
            format!(
                "P{initial_pstate} is not one the guest may use (P{} to P{})",
                g.ppc,
                states - 1
            ),
        );
    }

    GuestConfig {
        initial_pstate,
        ppc: g.ppc,
        coordination: g.coordination.unwrap_or(ps.coordination),
        name: g.name,
        role: g.role,
        image,
        memory_mib,
        vcpu_cores,
        on_failure: g.on_failure,
        cmdline: g.cmdline,
    }
}

/// A guest's `image`: a file (a path with `/`, or `.elf`), a built-in image, or by
/// default the built-in image named after its role.
fn image(
    g: &GuestRepr,
    base: &Path,
    host: &HostFacts,
    at: &dyn Fn(&str) -> String,
    p: &mut Problems,
) -> ImageSource {
    match &g.image {
        Some(s) if s.contains('/') || s.ends_with(".elf") => {
            let path = base.join(s);
            if !path.is_file() {
                p.add(at("image"), format!("no image file at {}", path.display()));
            }
            ImageSource::File(path)
        }
        Some(s) => {
            if !host.builtin_images.iter().any(|b| b == s) {
                p.add(
                    at("image"),
                    format!(
                        "unknown image `{s}` (built-in images: {}; a file path must contain `/`)",
                        host.builtin_images.join(", ")
                    ),
                );
            }
            ImageSource::BuiltIn(s.clone())
        }
        None => {
            let by_role = g.role.as_str();
            if host.builtin_images.iter().any(|b| b == by_role) {
                ImageSource::BuiltIn(by_role.to_string())
            } else {
                p.add(
                    at("image"),
                    format!(
                        "no built-in server image for role `{by_role}` yet; name one with `image` (built-in images: {})",
                        host.builtin_images.join(", ")
                    ),
                );
                ImageSource::BuiltIn(String::new())
            }
        }
    }
}

/// A guest's `cores` or `vcpu_cores`: one core set per vCPU, each inside `host.cores`.
fn vcpu_cores(
    g: &GuestRepr,
    vcpus: u32,
    host: &HostFacts,
    host_cores: &[HostCore],
    at: &dyn Fn(&str) -> String,
    p: &mut Problems,
) -> Vec<Vec<HostCore>> {
    let check_set = |p: &mut Problems, key: &str, set: &[u32]| {
        if set.is_empty() {
            p.add(at(key), "a core set must name at least one core");
        }
        if set.len() > MAX_CORES_LISTED {
            p.add(
                at(key),
                format!("a core set may name at most {MAX_CORES_LISTED} cores"),
            );
        }
        for &c in set {
            if !host_cores.contains(&HostCore(c)) {
                let why = if host.online_cores.contains(&HostCore(c)) {
                    format!(
                        "core {c} is not one of host.cores ({})",
                        core_list(host_cores)
                    )
                } else {
                    format!(
                        "core {c} is not online on this host (online: {})",
                        core_list(&host.online_cores)
                    )
                };
                p.add(at(key), why);
            }
        }
        let mut v: Vec<HostCore> = set.iter().map(|&c| HostCore(c)).collect();
        v.sort();
        v.dedup();
        v
    };
    match (&g.cores, &g.vcpu_cores) {
        (Some(_), Some(_)) => {
            p.add(
                at("vcpu_cores"),
                "give either `cores` or `vcpu_cores`, not both",
            );
            Vec::new()
        }
        (_, Some(per)) => {
            if per.len() as u32 != vcpus {
                p.add(
                    at("vcpu_cores"),
                    format!("lists {} core sets for {vcpus} vCPU(s)", per.len()),
                );
            }
            per.iter().map(|s| check_set(p, "vcpu_cores", s)).collect()
        }
        (Some(set), None) => {
            let set = check_set(p, "cores", set);
            vec![set; vcpus.min(MAX_VCPUS) as usize]
        }
        (None, None) => {
            let set = host_cores
                .iter()
                .copied()
                .take(MAX_CORES_LISTED)
                .collect::<Vec<_>>();
            vec![set; vcpus.min(MAX_VCPUS) as usize]
        }
    }
}

/// Every `[[channel]]`: two different guests that exist, sizes the channel library
/// accepts and a region stride holds, at most `MAX_CHANNELS` per guest.
fn channels(file: &[ChannelRepr], guests: &[GuestConfig], p: &mut Problems) -> Vec<ChannelConfig> {
    let mut channels = Vec::new();
    let mut per_guest = vec![0usize; guests.len()];
    for (i, c) in file.iter().enumerate() {
        let at = |key: &str| format!("channel[{i}] ({}-{}).{key}", c.a, c.b);
        let find = |name: &str| guests.iter().position(|g| g.name == name);
        let (a, b) = (find(&c.a), find(&c.b));
        if a.is_none() {
            p.add(at("a"), format!("no guest named `{}`", c.a));
        }
        if b.is_none() {
            p.add(at("b"), format!("no guest named `{}`", c.b));
        }
        if c.a == c.b {
            p.add(at("b"), "a channel connects two different guests");
        }
        let pair = PairConfig::new(
            c.queue_depth.unwrap_or(64),
            c.max_outstanding.unwrap_or(16),
            c.buf_size.unwrap_or(256),
        );
        match PairLayout::new(&pair) {
            Err(e) => p.add(at("queue_depth"), format!("invalid sizes: {e}")),
            Ok(l) if l.size() as u64 > CHANNEL_STRIDE => p.add(
                at("buf_size"),
                format!(
                    "the region would take {} bytes; at most {CHANNEL_STRIDE} (lower max_outstanding or buf_size)",
                    l.size()
                ),
            ),
            Ok(_) => {}
        }
        if let (Some(a), Some(b)) = (a, b) {
            for g in [a, b] {
                per_guest[g] += 1;
                if per_guest[g] == MAX_CHANNELS + 1 {
                    p.add(
                        at("a"),
                        format!(
                            "guest `{}` has more than {MAX_CHANNELS} channels",
                            guests[g].name
                        ),
                    );
                }
            }
            if a != b {
                channels.push(ChannelConfig { a, b, pair });
            }
        }
    }
    channels
}

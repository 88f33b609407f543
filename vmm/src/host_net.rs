//! The host side of the topology's NICs, set up before any guest is built and torn
//! down when the VMM ends: network namespaces a NIC names (created when missing, and
//! then deleted again), TAPs (opened or created, in their namespace), the address and
//! link state of a TAP's Linux side (`peer_address`), and macvtaps on existing
//! interfaces (`host_interface`: passthrough mode where the kernel allows it, else
//! bridge; deleted again). Namespaces, addresses and macvtaps are set with `ip`
//! (iproute2), the tool users check them with; TAPs are opened directly
//! (`devices/virtio/tap.rs`).

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::devices::virtio::tap::{if_index, NetBackend, Tap, TapError};
use crate::topology::{ImageSource, NicBackend, NicConfig, Topology};

/// Why a NIC's host side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    /// An `ip` command failed.
    #[error("nic {nic}: `{command}` failed: {stderr}")]
    Ip {
        /// The NIC's host-side name.
        nic: String,
        /// The command.
        command: String,
        /// What ip said (or why it did not run).
        stderr: String,
    },
    /// The TAP could not be opened.
    #[error("nic {nic}: cannot open its TAP")]
    Tap {
        /// The NIC's host-side name.
        nic: String,
        /// The cause.
        #[source]
        source: TapError,
    },
    /// The interface a macvtap would attach to is not there.
    #[error("nic {nic}: no interface `{interface}` in {netns}")]
    NoInterface {
        /// The NIC's host-side name.
        nic: String,
        /// The interface.
        interface: String,
        /// Where it was looked for.
        netns: String,
    },
}

/// What compart created on the host, removed again on drop (macvtaps first, then
/// namespaces).
#[derive(Debug, Default)]
pub struct HostNet {
    macvtaps: Vec<(Option<String>, String)>,
    namespaces: Vec<String>,
}

impl Drop for HostNet {
    fn drop(&mut self) {
        for (ns, name) in self.macvtaps.drain(..).rev() {
            if let Err(e) = ip(ns.as_deref(), &["link", "del", &name], &name) {
                log::warn!("{e}");
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run_ip(&["netns", "del", &ns], &ns) {
                log::warn!("{e}");
            }
        }
    }
}

impl HostNet {
    /// Sets up every NIC's host side; returns what was created (to be dropped when the
    /// VMM ends) and one backend per NIC, in topology order. On error, what was
    /// created so far is removed.
    pub fn open(topology: &Topology) -> Result<(HostNet, Vec<Box<dyn NetBackend>>), HostNetError> {
        let mut host = HostNet::default();
        let mut backends: Vec<Box<dyn NetBackend>> = Vec::new();
        for (i, nic) in topology.nics.iter().enumerate() {
            backends.push(host.open_one(i, nic)?);
        }
        Ok((host, backends))
    }

    fn open_one(&mut self, i: usize, nic: &NicConfig) -> Result<Box<dyn NetBackend>, HostNetError> {
        let name = nic.host_name();
        let ns = nic.netns.as_deref();
        if let Some(ns) = ns {
            if !netns_path(ns).exists() && !self.namespaces.iter().any(|n| n == ns) {
                run_ip(&["netns", "add", ns], name)?;
                self.namespaces.push(ns.to_string());
                log::info!("nic {name}: created network namespace {ns}");
            }
        }
        match &nic.backend {
            NicBackend::Tap(tap) => {
                let t = Tap::open_in(tap, ns).map_err(|source| HostNetError::Tap {
                    nic: name.to_string(),
                    source,
                })?;
                if let Some(a) = nic.peer_address {
                    ip(ns, &["addr", "replace", &a.to_string(), "dev", tap], name)?;
                    ip(ns, &["link", "set", tap, "up"], name)?;
                }
                log::info!(
                    "nic {name}: TAP {tap}{}, offloads it accepts {:#x}",
                    ns.map(|n| format!(" in {n}")).unwrap_or_default(),
                    t.accepted_offloads()
                );
                Ok(Box::new(t))
            }
            NicBackend::HostInterface(lower) => {
                let mv = format!("cmv{}n{i}", std::process::id() % 1_000_000);
                if in_netns(ns, || if_index(lower)).flatten().is_none() {
                    return Err(HostNetError::NoInterface {
                        nic: name.to_string(),
                        interface: lower.clone(),
                        netns: ns.map_or("the VMM's network namespace".into(), |n| {
                            format!("network namespace {n}")
                        }),
                    });
                }
                let mac = mac_string(&nic.mac);
                let add = |mode: &str| {
                    ip(
                        ns,
                        &[
                            "link", "add", "link", lower, "name", &mv, "address", &mac, "type",
                            "macvtap", "mode", mode,
                        ],
                        name,
                    )
                };
                if let Err(e) = add("passthru") {
                    log::info!("nic {name}: macvtap passthru refused ({e}); using bridge mode");
                    add("bridge")?;
                }
                self.macvtaps.push((ns.map(str::to_string), mv.clone()));
                ip(ns, &["link", "set", &mv, "up"], name)?;
                let index = in_netns(ns, || if_index(&mv)).flatten().ok_or_else(|| {
                    HostNetError::NoInterface {
                        nic: name.to_string(),
                        interface: mv.clone(),
                        netns: ns.unwrap_or("the VMM's namespace").to_string(),
                    }
                })?;
                let node = PathBuf::from(format!("/dev/tap{index}"));
                // devtmpfs makes the node as the macvtap appears; allow it a moment.
                let start = Instant::now();
                while !node.exists() && start.elapsed() < Duration::from_secs(1) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let t = Tap::open_macvtap(&node, &mv).map_err(|source| HostNetError::Tap {
                    nic: name.to_string(),
                    source,
                })?;
                log::info!("nic {name}: macvtap {mv} on {lower}, {}", node.display());
                Ok(Box::new(t))
            }
        }
    }
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `f` in network namespace `ns` (on a short-lived thread), or here; `None` if
/// the namespace cannot be entered.
fn in_netns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> Option<T> {
    let Some(ns) = ns else { return Some(f()) };
    let file = std::fs::File::open(netns_path(ns)).ok()?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns with an open namespace file and CLONE_NEWNET changes only
            // this thread's network namespace; the thread ends after `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return None;
            }
            Some(f())
        })
        .join()
        .ok()
        .flatten()
    })
}

/// `ip [-n NS] ARGS…`.
fn ip(ns: Option<&str>, args: &[&str], nic: &str) -> Result<(), HostNetError> {
    let mut all = Vec::new();
    if let Some(ns) = ns {
        all.extend(["-n", ns]);
    }
    all.extend_from_slice(args);
    run_ip(&all, nic)
}

fn run_ip(args: &[&str], nic: &str) -> Result<(), HostNetError> {
    let command = format!("ip {}", args.join(" "));
    let fail = |stderr: String| HostNetError::Ip {
        nic: nic.to_string(),
        command: command.clone(),
        stderr,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e: io::Error| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// `port=N` of a command line, if given and a port.
fn cmdline_port(cmdline: &str) -> Option<u16> {
    cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
}

/// Where the stack of each NIC with an `address` is, and how to reach it from the host,
/// for `compart run` to print once the guests are up: one line per such NIC,
/// `the stack is at 198.18.0.2 (netns compart) — try: ip netns exec compart curl
/// http://198.18.0.2/status`. The commands are those of the topology's applications
/// (the built-in `http` and `iperf3` images, at their `port=`), else `ping`.
pub fn reach_hints(topology: &Topology) -> Vec<String> {
    topology
        .nics
        .iter()
        .filter_map(|nic| {
            let a = nic.ipv4.as_ref()?.address.addr;
            let (ns, prefix) = match &nic.netns {
                Some(ns) => (format!(" (netns {ns})"), format!("ip netns exec {ns} ")),
                None => (String::new(), String::new()),
            };
            let mut tries: Vec<String> = topology
                .guests
                .iter()
                .filter_map(|g| {
                    let ImageSource::BuiltIn(image) = &g.image else {
                        return None;
                    };
                    let port = cmdline_port(&g.cmdline);
                    match (image.as_str(), port) {
                        ("http", Some(p)) if p != 80 => Some(format!("curl http://{a}:{p}/status")),
                        ("http", _) => Some(format!("curl http://{a}/status")),
                        ("iperf3", Some(p)) if p != 5201 => Some(format!("iperf3 -c {a} -p {p}")),
                        ("iperf3", _) => Some(format!("iperf3 -c {a}")),
                        _ => None,
                    }
                })
                .map(|t| format!("{prefix}{t}"))
                .collect();
            if tries.is_empty() {
                tries.push(format!("{prefix}ping {a}"));
            }
            Some(format!(
                "the stack is at {a}{ns} — try: {}",
                tries.join("; ")
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{HostCore, HostFacts};
    use compart_acpi::{HostFreqDomains, Mhz};

    fn topology(text: &str) -> Topology {
        let host = HostFacts {
            online_cores: vec![HostCore(0), HostCore(1)],
            builtin_images: vec!["driver".into(), "http".into(), "iperf3".into()],
            host_ladder: compart_acpi::ladder::default_ladder(Mhz(2000)),
            freq_domains: HostFreqDomains::from_sets(vec![vec![0], vec![1]]),
            interfaces: vec!["lo".into()],
            netns: vec![],
        };
        Topology::parse(text, Path::new("."), &host).unwrap()
    }

    const DRIVER: &str = "[[guest]]\nname = \"d\"\nrole = \"driver\"\nimage = \"driver\"\n";
    const NIC: &str =
        "[[nic]]\nguest = \"d\"\ntap = \"t0\"\nnetns = \"ns\"\naddress = \"198.18.0.2/24\"\n";

    #[test]
    fn the_hint_names_the_address_the_namespace_and_the_apps_commands() {
        let t = topology(&format!(
            "{DRIVER}[[guest]]\nname = \"w\"\nrole = \"app\"\nimage = \"http\"\n\
             [[guest]]\nname = \"i\"\nrole = \"app\"\nimage = \"iperf3\"\ncmdline = \"port=5300\"\n{NIC}"
        ));
        assert_eq!(
            reach_hints(&t),
            vec![
                "the stack is at 198.18.0.2 (netns ns) — try: ip netns exec ns curl \
                 http://198.18.0.2/status; ip netns exec ns iperf3 -c 198.18.0.2 -p 5300"
            ]
        );
    }

    #[test]
    fn without_apps_the_hint_is_ping_and_a_nic_without_address_has_none() {
        let t = topology(&format!("{DRIVER}{NIC}"));
        assert_eq!(
            reach_hints(&t),
            vec!["the stack is at 198.18.0.2 (netns ns) — try: ip netns exec ns ping 198.18.0.2"]
        );
        let t = topology(&format!("{DRIVER}[[nic]]\nguest = \"d\"\ntap = \"t0\"\n"));
        assert!(reach_hints(&t).is_empty());
    }
}

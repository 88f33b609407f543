//! Network benchmark: stock `ping` against the compart stack beside a Linux peer
//! baseline measured in the same run.
//!
//! - **Baseline**: two namespaces joined by a veth pair (198.18.10.1 ↔ 198.18.10.2);
//!   `ping -i 0.002` RTT p50/p99 from the per-reply times, and a flood
//!   (`ping -f -c N`) in echo requests answered per second.
//! - **compart**: the topology in `COMPART_NET_BENCH_TOPOLOGY` (a `[[nic]]` on a TAP
//!   with `netns`, `peer_address` and `address`, its driver guest and an ip server,
//!   e.g. `topologies/wire.toml` with the real `driver` and `ip` images) is started;
//!   the same pings run from the NIC's namespace to the stack's address, and during
//!   the flood the driver guest's vCPU exits/s and the NIC's interrupts/s (from
//!   `ctl status`) are printed. Unset, the output says so and only the baseline runs.
//!   A relative path is taken from the workspace root.
//!
//! `cargo bench -p compart-tests --bench net` (root; `COMPART_BENCH_PINGS` per RTT run,
//! default 2000; `COMPART_BENCH_FLOOD` flood requests, default 20000).

use std::process::Command;
use std::time::{Duration, Instant};

use compart_tests::netns::NetNs;
use compart_tests::Capture;
use compart_vmm::control::StatusReport;
use compart_vmm::{ControlRequest, ControlResponse, Topology, VmmHandle};

const TOPOLOGY_VAR: &str = "COMPART_NET_BENCH_TOPOLOGY";

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `ip netns exec NS ping ARGS… DEST` and returns its standard output; panics
/// with its output if it fails.
fn ping(ns: &str, args: &[&str], dest: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping"])
        .args(args)
        .arg(dest)
        .output()
        .expect("ping (iputils-ping) runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "ping {args:?} {dest} in {ns} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Per-reply round-trip times (`time=0.045 ms`) in microseconds, sorted.
fn reply_times(out: &str) -> Vec<f64> {
    let mut v: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// From ping's summary: (transmitted, received, time in ms).
fn summary(out: &str) -> (u64, u64, u64) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no summary in: {out}"));
    let num = |key: &str| -> u64 {
        let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}"));
        line[..at]
            .split([' ', ','])
            .rfind(|w| !w.is_empty())
            .and_then(|w| w.trim_end_matches("ms").parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    let time = line
        .rsplit("time ")
        .next()
        .and_then(|t| t.trim().trim_end_matches("ms").parse().ok())
        .unwrap_or_else(|| panic!("time in {line}"));
    (num(" packets transmitted"), num(" received"), time)
}

/// One side's figures.
struct Figures {
    p50_us: f64,
    p99_us: f64,
    replies: usize,
    flood_per_s: f64,
    flood_lost: u64,
}

/// RTTs, then the flood, which `during_flood` runs (with what it measures around it).
fn measure(
    ns: &str,
    dest: &str,
    pings: u64,
    flood: u64,
    during_flood: impl FnOnce(&mut dyn FnMut()),
) -> Figures {
    let times = reply_times(&ping(
        ns,
        &["-c", &pings.to_string(), "-i", "0.002", "-W", "1"],
        dest,
    ));
    assert!(!times.is_empty(), "no replies from {dest}");
    let mut result = None;
    let mut run = || {
        let out = ping(ns, &["-f", "-q", "-c", &flood.to_string(), "-W", "1"], dest);
        result = Some(summary(&out));
    };
    during_flood(&mut run);
    let (sent, received, ms) = result.expect("during_flood runs the flood");
    Figures {
        p50_us: quantile(&times, 0.5),
        p99_us: quantile(&times, 0.99),
        replies: times.len(),
        flood_per_s: received as f64 / (ms.max(1) as f64 / 1000.0),
        flood_lost: sent - received,
    }
}

fn print(name: &str, f: &Figures, pings: u64, flood: u64) {
    println!(
        "{name:<10} rtt p50 {:>7.1} us  p99 {:>7.1} us  ({} of {pings} replies)   flood {:>8.0} replies/s ({} of {flood} lost)",
        f.p50_us, f.p99_us, f.replies, f.flood_per_s, f.flood_lost
    );
}

fn status(handle: &VmmHandle) -> StatusReport {
    match handle
        .request(ControlRequest::Status, Duration::from_secs(10))
        .unwrap()
    {
        ControlResponse::Status(r) => r,
        other => panic!("not a status report: {other:?}"),
    }
}

fn baseline(pings: u64, flood: u64) {
    let a = NetNs::new("nbench-a").unwrap();
    let b = NetNs::new("nbench-b").unwrap();
    a.ip(&[
        "link",
        "add",
        "cbv0",
        "type",
        "veth",
        "peer",
        "name",
        "cbv1",
        "netns",
        b.name(),
    ])
    .unwrap();
    a.ip(&["addr", "add", "198.18.10.1/24", "dev", "cbv0"])
        .unwrap();
    b.ip(&["addr", "add", "198.18.10.2/24", "dev", "cbv1"])
        .unwrap();
    a.ip(&["link", "set", "cbv0", "up"]).unwrap();
    b.ip(&["link", "set", "cbv1", "up"]).unwrap();
    let f = measure(a.name(), "198.18.10.2", pings, flood, |run| run());
    print("linux veth", &f, pings, flood);
}

fn compart(path: &str, pings: u64, flood: u64) {
    // Relative paths are from the workspace root (cargo runs benches in tests/).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = &root.join(path).display().to_string();
    let t = Topology::load(std::path::Path::new(path), &compart_vmm::host_facts())
        .unwrap_or_else(|e| panic!("{TOPOLOGY_VAR}={path}: {e}"));
    let (nic_index, nic) = t
        .nics
        .iter()
        .enumerate()
        .find(|(_, n)| n.netns.is_some() && n.peer_address.is_some() && n.ipv4.is_some())
        .unwrap_or_else(|| panic!("{path}: no [[nic]] with netns, peer_address and address"));
    let ns = nic.netns.clone().unwrap();
    let dest = nic.ipv4.as_ref().unwrap().address.addr.to_string();
    let driver = t.guests[nic.guest].name.clone();
    let capture = Capture::default();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
    let handle = vmm.handle();
    let waiter = std::thread::spawn(move || vmm.wait());
    // The stack answers once driver and ip are up: at most 30 one-second tries.
    let up = (0..30).any(|_| {
        Command::new("ip")
            .args(["netns", "exec", &ns, "ping", "-c", "1", "-W", "1", &dest])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !up {
        handle.stop();
        let _ = waiter.join();
        panic!("the compart stack at {dest} never answered a ping; console: {capture:?}");
    }
    // Which NIC of its driver guest this is.
    let slot = t
        .nics_of(nic.guest)
        .iter()
        .position(|&i| i == nic_index)
        .unwrap();
    let f = measure(&ns, &dest, pings, flood, |run| {
        let before = status(&handle);
        let start = Instant::now();
        run();
        let secs = start.elapsed().as_secs_f64();
        let after = status(&handle);
        let g = |r: &StatusReport| r.guests.iter().find(|g| g.name == driver).unwrap().clone();
        let (b, a) = (g(&before), g(&after));
        let exits =
            |g: &compart_vmm::control::GuestStatus| g.vcpus.iter().map(|v| v.exits).sum::<u64>();
        println!(
            "compart    during the flood ({secs:.2} s): driver `{driver}` vCPU exits {:.0}/s, NIC {} interrupts {:.0}/s, notifications {:.0}/s",
            (exits(&a) - exits(&b)) as f64 / secs,
            a.nics[slot].name,
            (a.nics[slot].interrupts - b.nics[slot].interrupts) as f64 / secs,
            (a.nics[slot].notifications - b.nics[slot].notifications) as f64 / secs,
        );
    });
    print("compart", &f, pings, flood);
    handle.stop();
    waiter.join().unwrap();
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("net bench: needs root (network namespaces); nothing measured");
        return;
    }
    let pings = env_or("COMPART_BENCH_PINGS", 2000);
    let flood = env_or("COMPART_BENCH_FLOOD", 20000);
    baseline(pings, flood);
    match std::env::var(TOPOLOGY_VAR) {
        Ok(path) if !path.is_empty() => {
            if !compart_tests::require_kvm() {
                return;
            }
            compart(&path, pings, flood);
        }
        _ => println!(
            "compart    not measured: {TOPOLOGY_VAR} is not set (a topology with a [[nic]] on a TAP in a netns, \
             with peer_address and address, and its driver and ip servers, e.g. topologies/wire.toml with the real images)"
        ),
    }
}

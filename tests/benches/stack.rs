//! Stack benchmark: what isolation costs. Stock `iperf3 -c` (same binary, same
//! options, from a network namespace) against three servers, in one run:
//!
//! - **linux**: Linux TCP over a veth pair between two namespaces, stock `iperf3 -s`;
//! - **full**: the whole decomposed compart stack on a TAP — `driver` (core 0), `ip`
//!   and `tcp` (core 1), `posix` and the `iperf3` application image (core 0): every
//!   segment crosses four guest boundaries (skipped, and said so, if it does not come
//!   up);
//! - **split**: the decomposed compart stack on a TAP — the `driver` server (core 0),
//!   `ip` and the iperf3 application over a tcp core (the `mono` image in the tcp
//!   role: the tcp server's code with the application linked in; core 1): every
//!   segment crosses two guest boundaries;
//! - **mono**: the same driver, ip and tcp code and the same application linked into
//!   one guest (the `mono` image with the NIC; core 1).
//! - **full\***, **split\***, **mono\***: the same with every guest on both cores
//!   (`cores = [0, 1]`): no vCPU has a core to itself, so none polls (each sleeps as
//!   soon as it runs out of work), and a vCPU and its NIC's device thread (which runs
//!   on its guest's cores) can run at once.
//!
//! Each measures 1 and 4 streams (`-P 4`), both directions (`-R`: the server sends),
//! parsed from `iperf3 -J`: Gbit/s at the receiver, the sender's retransmits (where it
//! reports them), the client's CPU; for compart also each vCPU and NIC thread's CPU
//! time per second (`/proc/self/task/TID/schedstat`, the VMM runs in this process)
//! and each vCPU's exits to the VMM per second (`ctl status`). Configurations are
//! interleaved per repetition (linux, full, split, mono), ratios to linux are per
//! repetition, medians printed last.
//!
//! `cargo bench -p compart-tests --bench stack` (root). `COMPART_BENCH_RUNS`
//! repetitions (default 1), `COMPART_STACK_SECS` per iperf3 run (default 3);
//! `COMPART_STACK_ONLY=split,mono` picks the compart configurations (linux always runs).
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use compart_tests::netns::NetNs;
use compart_tests::Capture;
use compart_vmm::control::StatusReport;
use compart_vmm::{ControlRequest, ControlResponse, VmmHandle};

const PORT: u16 = 5201;
/// The compart stacks' addresses (on the TAP, in the NIC's namespace).
const STACK: &str = "198.18.20.2";
const PEER: &str = "198.18.20.1";
/// The veth pair of the Linux baseline.
const LINUX_SERVER: &str = "198.18.21.1";
const LINUX_CLIENT: &str = "198.18.21.2";
/// The tcp core's sockets: 32 of 256 KiB receive and 256 KiB send buffer.
const TCP_ARGS: &str = "sockets=32 buf=256";
const CHANNEL: &str = "queue_depth = 64\nmax_outstanding = 16\nbuf_size = 65600\n";

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One iperf3 test's figures.
#[derive(Debug, Clone, Default)]
struct Figures {
    gbps: f64,
    retransmits: Option<u64>,
    client_cpu: f64,
    /// The server's CPU in cores: for linux the `iperf3 -s` process as iperf3 reports
    /// it (not the softirq work of its TCP, which is charged elsewhere: not
    /// comparable); for compart every vCPU and NIC thread of the VMM.
    server_cores: f64,
    /// Thread name → share of a core it ran, and share of the time it waited for one
    /// while runnable (compart only).
    busy: Vec<(String, f64, f64)>,
    /// vCPU thread name → exits per second (compart only).
    exits: Vec<(String, f64)>,
    /// Cores busy on the whole host during the test, and of them this process's (the
    /// VMM's threads); the rest is the client, the Linux server, and anyone else.
    host_cores: f64,
    own_cores: f64,
}

/// (busy, total) jiffies of all host CPUs (`/proc/stat`).
fn host_jiffies() -> (u64, u64) {
    compart_vmm::eval::measure::host_jiffies().expect("/proc/stat")
}

/// CPU time of this process in jiffies (`/proc/self/stat` utime + stime).
fn own_jiffies() -> u64 {
    compart_vmm::eval::measure::own_jiffies(false).expect("/proc/self/stat")
}

/// `f()` with the host's and this process's load over it filled in.
fn with_load(f: impl FnOnce() -> Figures) -> Figures {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (h0, _) = host_jiffies();
    let o0 = own_jiffies();
    let start = Instant::now();
    let mut r = f();
    let secs = start.elapsed().as_secs_f64();
    let (h1, _) = host_jiffies();
    r.host_cores = (h1 - h0) as f64 / hz / secs;
    r.own_cores = (own_jiffies() - o0) as f64 / hz / secs;
    r
}

/// What one iperf3 test is: streams and direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Case {
    streams: u32,
    reverse: bool,
}

impl Case {
    fn label(self) -> String {
        format!(
            "-P {} {}",
            self.streams,
            if self.reverse {
                "-R (server sends)"
            } else {
                "   (client sends)"
            }
        )
    }
}

const CASES: [Case; 4] = [
    Case {
        streams: 1,
        reverse: false,
    },
    Case {
        streams: 1,
        reverse: true,
    },
    Case {
        streams: 4,
        reverse: false,
    },
    Case {
        streams: 4,
        reverse: true,
    },
];

/// Runs the iperf3 client in `ns` against `addr` and parses its JSON.
fn iperf3(ns: &str, addr: &str, case: Case, secs: u64) -> Figures {
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        ns.into(),
        "timeout".into(),
        (secs + 20).to_string(),
        "iperf3".into(),
        "-c".into(),
        addr.into(),
        "-p".into(),
        PORT.to_string(),
        "-t".into(),
        secs.to_string(),
        "-P".into(),
        case.streams.to_string(),
        "-J".into(),
        "--connect-timeout".into(),
        "3000".into(),
    ];
    if case.reverse {
        args.push("-R".into());
    }
    let out = Command::new("ip")
        .args(&args)
        .output()
        .expect("iperf3 runs (apt-get install iperf3)");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "iperf3 {args:?}: no JSON ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if let Some(err) = v.get("error") {
        panic!("iperf3 {} {}: {err}", addr, case.label());
    }
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no end.sum_received.bits_per_second in {text}"));
    Figures {
        gbps: bps / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
        client_cpu: end["cpu_utilization_percent"]["host_total"]
            .as_f64()
            .unwrap_or(0.0),
        server_cores: end["cpu_utilization_percent"]["remote_total"]
            .as_f64()
            .unwrap_or(0.0)
            / 100.0,
        ..Figures::default()
    }
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

/// Nanoseconds thread `tid` of this process ran, and waited on a run queue
/// (`/proc/self/task/TID/schedstat`, read as `compart eval` reads it).
fn schedstat(tid: i32) -> (u64, u64) {
    compart_vmm::eval::measure::schedstat(tid)
        .unwrap_or_else(|| panic!("reading schedstat of thread {tid}"))
}

/// The threads whose CPU time is counted: (name, tid, is a vCPU).
fn threads(r: &StatusReport) -> Vec<(String, i32, bool)> {
    let mut t = Vec::new();
    for g in &r.guests {
        for v in &g.vcpus {
            t.push((format!("{}-v{}", g.name, v.index), v.tid, true));
        }
        for n in &g.nics {
            t.push((format!("nic-{}", g.name), n.thread_tid, false));
        }
    }
    t
}

fn exits_of(r: &StatusReport) -> BTreeMap<String, u64> {
    r.guests
        .iter()
        .flat_map(|g| {
            g.vcpus
                .iter()
                .map(move |v| (format!("{}-v{}", g.name, v.index), v.exits))
        })
        .collect()
}

/// A compart topology started, its iperf3 server listening.
struct Compart {
    /// The coordinator (`RunningVmm::wait`, which also serves `ctl status`).
    waiter: std::thread::JoinHandle<compart_vmm::RunOutcome>,
    handle: VmmHandle,
    ns: String,
}

impl Compart {
    /// Starts `text` and waits until guest `app_guest` says its iperf3 server listens
    /// and the stack answers a ping; why not, if it does not within 30 s.
    fn start(text: &str, app_guest: &str, ns: &str) -> Result<Compart, String> {
        let t = compart_tests::topology(text);
        let capture = Capture::default();
        let vmm = compart_vmm::start(&t, capture.sink()).map_err(|e| e.to_string())?;
        let handle = vmm.handle();
        let waiter = std::thread::spawn(move || vmm.wait());
        let fail = |why: String, handle: &VmmHandle, waiter: std::thread::JoinHandle<_>| {
            handle.stop();
            let _ = waiter.join();
            Err(why)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let listening = || {
            capture
                .of(app_guest)
                .iter()
                .any(|l| l.contains("Server listening on"))
        };
        while !listening() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The console's last lines but the firmware's ACPI report.
        let tail = || {
            let lines: Vec<String> = capture
                .lines()
                .into_iter()
                .filter(|l| !l.text.starts_with("acpi:"))
                .map(|l| format!("[{}] {}", l.guest, l.text))
                .collect();
            lines[lines.len().saturating_sub(20)..].join(" | ")
        };
        if !listening() {
            return fail(
                format!("`{app_guest}` never listened in 30 s; console: {}", tail()),
                &handle,
                waiter,
            );
        }
        let up = (0..30).any(|_| {
            Command::new("ip")
                .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", STACK])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !up {
            return fail(
                format!("the stack at {STACK} never answered; console: {}", tail()),
                &handle,
                waiter,
            );
        }
        Ok(Compart {
            waiter,
            handle,
            ns: ns.to_string(),
        })
    }

    fn measure(&self, case: Case, secs: u64) -> Figures {
        with_load(|| self.measure_inner(case, secs))
    }

    fn measure_inner(&self, case: Case, secs: u64) -> Figures {
        let before = status(&self.handle);
        let th = threads(&before);
        let cpu0: Vec<(u64, u64)> = th.iter().map(|t| schedstat(t.1)).collect();
        let start = Instant::now();
        let mut f = iperf3(&self.ns, STACK, case, secs);
        let wall = start.elapsed().as_secs_f64();
        let after = status(&self.handle);
        for (t, (run0, wait0)) in th.iter().zip(cpu0) {
            let (run1, wait1) = schedstat(t.1);
            f.busy.push((
                t.0.clone(),
                (run1 - run0) as f64 / 1e9 / wall,
                (wait1 - wait0) as f64 / 1e9 / wall,
            ));
        }
        f.server_cores = f.busy.iter().map(|b| b.1).sum();
        let (e0, e1) = (exits_of(&before), exits_of(&after));
        for (name, n) in e1 {
            f.exits.push((
                name.clone(),
                (n - e0.get(&name).copied().unwrap_or(0)) as f64 / wall,
            ));
        }
        f
    }

    fn stop(self) {
        self.handle.stop();
        self.waiter.join().expect("the VMM's coordinator");
    }
}

/// The NIC of the compart topologies: the same TAP, namespace and addresses for both.
fn nic(guest: &str) -> String {
    format!(
        "[[nic]]\nguest = \"{guest}\"\ntap = \"cbst0\"\nnetns = \"cbst-c\"\n\
         peer_address = \"{PEER}/24\"\nmac = \"02:00:00:00:00:02\"\nmtu = 1500\n\
         queue_size = 256\naddress = \"{STACK}/24\"\ngateway = \"{PEER}\"\n"
    )
}

/// `pinned` cores, or both cores for every guest (`0, 1`) when floating.
fn at(pinned: &str, floating: bool) -> &str {
    if floating {
        "0, 1"
    } else {
        pinned
    }
}

/// driver (core 0), ip and the iperf3 app over a tcp core (core 1); or all of them on
/// both cores.
fn split_topology(floating: bool) -> String {
    let (c0, c1) = (at("0", floating), at("1", floating));
    format!(
        "[host]\ncores = [0, 1]\n\
         [[guest]]\nname = \"driver\"\nrole = \"driver\"\nimage = \"driver\"\nmemory_mib = 32\ncores = [{c0}]\n\
         [[guest]]\nname = \"ip\"\nrole = \"ip\"\nimage = \"ip\"\nmemory_mib = 16\ncores = [{c1}]\n\
         [[guest]]\nname = \"tcp\"\nrole = \"tcp\"\nimage = \"mono\"\nmemory_mib = 48\ncores = [{c1}]\n\
         cmdline = \"app=iperf3 port={PORT} {TCP_ARGS}\"\n\
         [[channel]]\na = \"driver\"\nb = \"ip\"\n{CHANNEL}\
         [[channel]]\na = \"ip\"\nb = \"tcp\"\n{CHANNEL}{}",
        nic("driver")
    )
}

/// The whole decomposed stack: driver (core 0), ip and tcp (core 1), posix and the
/// iperf3 application image over it (core 0); or all of them on both cores.
fn full_topology(floating: bool) -> String {
    let (c0, c1) = (at("0", floating), at("1", floating));
    format!(
        "[host]\ncores = [0, 1]\n\
         [[guest]]\nname = \"driver\"\nrole = \"driver\"\nimage = \"driver\"\nmemory_mib = 32\ncores = [{c0}]\n\
         [[guest]]\nname = \"ip\"\nrole = \"ip\"\nimage = \"ip\"\nmemory_mib = 16\ncores = [{c1}]\n\
         [[guest]]\nname = \"tcp\"\nrole = \"tcp\"\nimage = \"tcp\"\nmemory_mib = 48\ncores = [{c1}]\n\
         cmdline = \"{TCP_ARGS}\"\n\
         [[guest]]\nname = \"posix\"\nrole = \"posix\"\nimage = \"posix\"\nmemory_mib = 16\ncores = [{c0}]\n\
         [[guest]]\nname = \"iperf3\"\nrole = \"app\"\nimage = \"iperf3\"\nmemory_mib = 16\ncores = [{c0}]\n\
         cmdline = \"mode=server port={PORT}\"\n\
         [[channel]]\na = \"driver\"\nb = \"ip\"\n{CHANNEL}\
         [[channel]]\na = \"ip\"\nb = \"tcp\"\n{CHANNEL}\
         [[channel]]\na = \"tcp\"\nb = \"posix\"\n{CHANNEL}\
         [[channel]]\na = \"posix\"\nb = \"iperf3\"\n{CHANNEL}{}",
        nic("driver")
    )
}

/// The whole stack in one guest on `cores` (its vCPU and its NIC's thread both).
fn mono_topology(cores: &str) -> String {
    format!(
        "[host]\ncores = [0, 1]\n\
         [[guest]]\nname = \"mono\"\nrole = \"driver\"\nimage = \"mono\"\nmemory_mib = 64\ncores = [{cores}]\n\
         cmdline = \"app=iperf3 port={PORT} {TCP_ARGS}\"\n{}",
        nic("mono")
    )
}

/// The Linux baseline's namespaces, with `iperf3 -s` running in the server's.
struct Linux {
    server_ns: NetNs,
    client_ns: NetNs,
    server: Child,
}

impl Linux {
    fn start() -> Linux {
        let a = NetNs::new("stack-srv").unwrap();
        let b = NetNs::new("stack-cli").unwrap();
        a.ip(&[
            "link",
            "add",
            "cbsv0",
            "type",
            "veth",
            "peer",
            "name",
            "cbsv1",
            "netns",
            b.name(),
        ])
        .unwrap();
        a.ip(&["addr", "add", &format!("{LINUX_SERVER}/24"), "dev", "cbsv0"])
            .unwrap();
        b.ip(&["addr", "add", &format!("{LINUX_CLIENT}/24"), "dev", "cbsv1"])
            .unwrap();
        a.ip(&["link", "set", "cbsv0", "up"]).unwrap();
        b.ip(&["link", "set", "cbsv1", "up"]).unwrap();
        let server = Command::new("ip")
            .args(["netns", "exec", a.name(), "iperf3", "-s", "-p"])
            .arg(PORT.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s runs");
        // Listening within a second or two.
        let up = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            Command::new("ip")
                .args(["netns", "exec", b.name(), "bash", "-c"])
                .arg(format!(
                    "timeout 1 bash -c '</dev/tcp/{LINUX_SERVER}/{PORT}' 2>/dev/null"
                ))
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(up, "iperf3 -s in {} never listened", a.name());
        // That probe connection is one iperf3 -s drops; let it.
        std::thread::sleep(Duration::from_millis(200));
        Linux {
            server_ns: a,
            client_ns: b,
            server,
        }
    }

    fn measure(&self, case: Case, secs: u64) -> Figures {
        with_load(|| iperf3(self.client_ns.name(), LINUX_SERVER, case, secs))
    }

    fn settings(&self) -> String {
        let read = |ns: &str, what: &str| {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "cat", what])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace('\t', " "))
                .unwrap_or_default();
            out
        };
        let ns = self.server_ns.name();
        let feats = Command::new("ip")
            .args(["netns", "exec", ns, "ethtool", "-k", "cbsv0"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| {
                        [
                            "tcp-segmentation-offload:",
                            "generic-segmentation-offload:",
                            "generic-receive-offload:",
                            "tx-checksumming:",
                        ]
                        .iter()
                        .any(|k| l.starts_with(k))
                    })
                    .map(|l| l.replace(": ", "=").trim().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        format!(
            "veth mtu 1500, offloads {}, tcp_rmem [{}] tcp_wmem [{}], congestion control {}",
            if feats.is_empty() {
                "Linux's defaults (ethtool not installed)".to_string()
            } else {
                feats
            },
            read(ns, "/proc/sys/net/ipv4/tcp_rmem"),
            read(ns, "/proc/sys/net/ipv4/tcp_wmem"),
            read(ns, "/proc/sys/net/ipv4/tcp_congestion_control"),
        )
    }
}

impl Drop for Linux {
    fn drop(&mut self) {
        // Our own child, by its id.
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn print_row(config: &str, case: Case, f: &Figures) {
    let retr = f.retransmits.map_or("-".to_string(), |r| r.to_string());
    let busy: Vec<String> = f
        .busy
        .iter()
        .map(|(n, b, w)| format!("{n} {:.0}% (+{:.0}% waiting)", b * 100.0, w * 100.0))
        .collect();
    let exits: Vec<String> = f
        .exits
        .iter()
        .map(|(n, e)| format!("{n} {e:.0}/s"))
        .collect();
    println!(
        "{config:<6} {:<22} {:>6.2} Gbit/s  retr {retr:>5}  {} {:.2} cores ({:.3} per Gbit/s)  client cpu {:>3.0}%  host {:.2} cores (VMM {:.2}){}{}",
        case.label(),
        f.gbps,
        if f.busy.is_empty() {
            "iperf3 -s process"
        } else {
            "VMM threads"
        },
        f.server_cores,
        f.server_cores / f.gbps,
        f.client_cpu,
        f.host_cores,
        f.own_cores,
        if busy.is_empty() {
            String::new()
        } else {
            format!("  busy: {}", busy.join(", "))
        },
        if exits.is_empty() {
            String::new()
        } else {
            format!("  exits: {}", exits.join(", "))
        },
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("stack bench: needs root (network namespaces, TAP); nothing measured");
        return;
    }
    if !compart_tests::require_kvm() {
        return;
    }
    let reps = compart_tests::bench_runs(1);
    let secs = env_or("COMPART_STACK_SECS", 3);
    let only = std::env::var("COMPART_STACK_ONLY").unwrap_or_default();
    println!(
        "stack bench: iperf3 {} -t {secs}, {reps} repetition(s); the 2 host cores are shared by \
         the client, the servers and the VMM's threads (nothing else is pinned)",
        String::from_utf8_lossy(
            &Command::new("iperf3")
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .lines()
        .next()
        .unwrap_or("?")
    );
    println!(
        "compart: TAP with IFF_VNET_HDR, offloads csum+tso4+tso6 offered to the guest, mtu 1500, \
         256-entry queues; channels of 16 × 65 600 B; tcp core (smoltcp 0.14, Reno) {TCP_ARGS} KiB; \
         full: driver, posix, iperf3 core 0, ip + tcp core 1; split: driver core 0, ip + tcp/app core 1; mono: core 1; \
         starred: every guest on cores 0-1"
    );
    let linux = Linux::start();
    println!("linux:   {}", linux.settings());
    // ratios[config][case] over repetitions.
    let mut ratios: BTreeMap<(&str, Case), Vec<f64>> = BTreeMap::new();
    let mut gbps: BTreeMap<(&str, Case), Vec<f64>> = BTreeMap::new();
    // Server cores per Gbit/s.
    let mut cost: BTreeMap<(&str, Case), Vec<f64>> = BTreeMap::new();
    for rep in 0..reps {
        println!("-- repetition {} of {reps}", rep + 1);
        let mut base = BTreeMap::new();
        for case in CASES {
            let f = linux.measure(case, secs);
            print_row("linux", case, &f);
            base.insert(case, f.gbps);
            gbps.entry(("linux", case)).or_default().push(f.gbps);
            cost.entry(("linux", case))
                .or_default()
                .push(f.server_cores / f.gbps);
        }
        for (config, text, guest) in [
            ("full", full_topology(false), "iperf3"),
            ("split", split_topology(false), "tcp"),
            ("mono", mono_topology("1"), "mono"),
            ("full*", full_topology(true), "iperf3"),
            ("split*", split_topology(true), "tcp"),
            ("mono*", mono_topology("0, 1"), "mono"),
        ] {
            if !only.is_empty() && !only.split(',').any(|c| c == config) {
                continue;
            }
            let c = match Compart::start(&text, guest, "cbst-c") {
                Ok(c) => c,
                Err(why) => {
                    println!("{config:<6} not measured: {why}");
                    continue;
                }
            };
            if rep == 0 {
                let placed: Vec<String> = status(&c.handle)
                    .guests
                    .iter()
                    .flat_map(|g| {
                        g.vcpus.iter().map(move |v| {
                            format!(
                                "{}-v{} on {} ({})",
                                g.name,
                                v.index,
                                v.cores
                                    .iter()
                                    .map(|c| c.to_string())
                                    .collect::<Vec<_>>()
                                    .join(","),
                                if v.dedicated {
                                    "dedicated: polls 1 ms"
                                } else {
                                    "shared: sleeps at once"
                                }
                            )
                        })
                    })
                    .collect();
                println!("{config:<6} placement: {}", placed.join(", "));
            }
            for case in CASES {
                let f = c.measure(case, secs);
                print_row(config, case, &f);
                ratios
                    .entry((config, case))
                    .or_default()
                    .push(f.gbps / base[&case]);
                gbps.entry((config, case)).or_default().push(f.gbps);
                cost.entry((config, case))
                    .or_default()
                    .push(f.server_cores / f.gbps);
            }
            c.stop();
        }
    }
    println!(
        "-- medians over {reps} repetition(s): Gbit/s, (the ratio to linux of the same repetition), [compart: VMM thread cores per Gbit/s]"
    );
    for case in CASES {
        let g = |c: &str| median(gbps.get(&(c, case)).cloned().unwrap_or_default());
        let r = |c: &str| median(ratios.get(&(c, case)).cloned().unwrap_or_default());
        let k = |c: &str| median(cost.get(&(c, case)).cloned().unwrap_or_default());
        let mut line = format!("{:<22} linux {:>6.2}", case.label(), g("linux"));
        for c in ["full", "split", "mono", "full*", "split*", "mono*"] {
            if gbps.contains_key(&(c, case)) {
                line += &format!("   {c} {:>6.2} ({:.3}×) [{:.2}]", g(c), r(c), k(c));
            }
        }
        println!("{line}");
    }
}

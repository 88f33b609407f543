//! The packet filter in the path: `driver`, `ip`, `pf`, `tcp`, `posix` and the echo
//! application (`guest-servers/echo`, port 7) on the VMM's virtio-net device, bash's
//! `/dev/tcp` and `ping` in a network namespace as the Linux peer. An allowed port is
//! served and its replies come back through the connection table (also in the shipped
//! `topologies/filter.toml`); a denied one gets no
//! connection, and pf counts what it refused; a connection the stack opens (the
//! `stream` client application, to `nc -l` in the namespace) gets its replies back
//! through its entry, which expires after the close; a SYN flood (raw frames from forged sources) fills the table to its
//! limit and no further, and service resumes once it stops. Every command is bounded
//! by `timeout` or its own deadline, every loop in count and time.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compart_tests::netns::{exec_in, ping_received, require_netns, NetNs};
use compart_tests::rawnet::{flags, mac_of, RawPeer, RawReceiver, RawSender, Rng};
use compart_tests::stack::{topology_text, Server, DRIVER, IP};
use compart_tests::{boot, kvm_test, send_in_batches, topology, wait_for_empty_pf_table};
use compart_vmm::GuestState;

const UP: Duration = Duration::from_secs(20);
const STACK: &str = "198.18.0.2";
/// The posix server and the echo application on port 7 above tcp, on core 0.
const POSIX: Server<'static> = Server::new("posix", 16, 0);
const ECHO: Server<'static> = Server::app("echo", 32, 0).with("port=7");

/// The stack with `pf` between ip and tcp, filtering with `rules`, and the echo
/// application on port 7.
fn stack(tap: &str, ns: &str, rules: &str) -> String {
    let pf_cmdline = format!("{rules} stats=0");
    topology_text(
        &[
            DRIVER,
            IP,
            Server::new("pf", 16, 1).with(&pf_cmdline),
            Server::new("tcp", 32, 1).with("sockets=8 buf=256"),
            POSIX,
            ECHO,
        ],
        &format!(
            "tap = \"{tap}\"\nnetns = \"{ns}\"\npeer_address = \"198.18.0.1/24\"\n\
             mac = \"02:00:00:00:00:02\"\naddress = \"{STACK}/24\""
        ),
    )
}

/// A namespace and TAP name for test `tag`, unique to this process.
fn names(tag: &str) -> (String, String) {
    let pid = std::process::id() % 100_000;
    (format!("cpt-{tag}-{pid}"), format!("cf{tag}{pid}"))
}

/// One line echoed through `/dev/tcp` on port 7, within 5 s.
fn echo_line(ns: &str) -> (bool, String) {
    exec_in(
        ns,
        "timeout",
        &[
            "5",
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{STACK}/7; echo through pf >&3; read -r l <&3; echo \"[$l]\""
            ),
        ],
    )
}

kvm_test! {
    fn pf_lets_an_allowed_port_through_and_its_replies_back() {
        if !require_netns() {
            return;
        }
        let (ns, tap) = names("pfa");
        let (vmm, capture) = boot(&topology(&stack(
            &tap,
            &ns,
            "rules=in:tcp:7,in:icmp default=deny",
        )));
        capture.wait_for("echo", "echo: serving port 7", UP);
        capture.wait_for("ip", "gratuitous ARP sent", UP);
        let (ok, out) = echo_line(&ns);
        assert!(ok && out.contains("[through pf]"), "{out}");
        let (ok, out) = exec_in(&ns, "ping", &["-c", "3", "-w", "10", STACK]);
        assert!(ok && ping_received(&out) == 3, "{out}");
        compart_tests::poll(UP, "pf's counters", || {
            (capture.counter("pf", "conn_created") >= 1).then_some(())
        });
        assert!(capture.counter("pf", "in_passed") >= 2, "{:?}", capture.of("pf"));
        assert!(capture.counter("pf", "out_tracked") >= 1, "replies on the tracked connection: {:?}", capture.of("pf"));
        assert_eq!(capture.counter("pf", "in_denied_rule"), 0, "{:?}", capture.of("pf"));
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    /// The shipped `topologies/filter.toml` (on a TAP and namespace of this test): the
    /// echo application on port 7 served through pf, and ping answered.
    fn the_shipped_filter_topology_echoes_through_pf() {
        if !require_netns() {
            return;
        }
        let (ns, tap) = names("pfs");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/filter.toml");
        let text = std::fs::read_to_string(path).expect("topologies/filter.toml");
        let text = text
            .replace("tap = \"cpt2\"", &format!("tap = \"{tap}\""))
            .replace("netns = \"cpt-filter\"", &format!("netns = \"{ns}\""));
        assert!(text.contains(&tap) && text.contains(&ns), "the topology changed");
        let (vmm, capture) = boot(&topology(&text));
        capture.wait_for("echo", "echo: serving port 7", UP);
        capture.wait_for("ip", "gratuitous ARP sent", UP);
        let (ok, out) = echo_line(&ns);
        assert!(ok && out.contains("[through pf]"), "{out}");
        let (ok, out) = exec_in(&ns, "ping", &["-c", "3", "-w", "10", STACK]);
        assert!(ok && ping_received(&out) == 3, "{out}");
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn pf_refuses_a_denied_port_and_counts_it() {
        if !require_netns() {
            return;
        }
        let (ns, tap) = names("pfd");
        let (vmm, capture) = boot(&topology(&stack(&tap, &ns, "rules=in:icmp default=deny")));
        capture.wait_for("echo", "echo: serving port 7", UP);
        capture.wait_for("ip", "gratuitous ARP sent", UP);
        // The echo application listens on 7, but pf lets no TCP in: the SYNs go unanswered.
        let (ok, out) = echo_line(&ns);
        assert!(!ok && !out.contains("[through pf]"), "a denied port was served: {out}");
        // ICMP is allowed, so the stack still answers ping.
        let (ok, out) = exec_in(&ns, "ping", &["-c", "3", "-w", "10", STACK]);
        assert!(ok && ping_received(&out) == 3, "{out}");
        compart_tests::poll(UP, "pf to count the refused SYNs", || {
            (capture.counter("pf", "in_denied_rule") >= 1).then_some(())
        });
        assert_eq!(capture.counter("pf", "conn_created"), 0, "{:?}", capture.of("pf"));
        vmm.handle().stop();
        vmm.wait();
    }
}

/// The stack with pf filtering by `pf_cmdline`, tcp running `tcp_cmdline`, posix and
/// the echo application on port 7 and the applications `apps`, on a TAP in namespace
/// `ns` (made by the test), the namespace as gateway.
fn stack_in(
    tap: &str,
    ns: &str,
    pf_cmdline: &str,
    tcp_cmdline: &str,
    apps: &[Server<'_>],
) -> String {
    let mut servers = vec![
        DRIVER,
        IP,
        Server::new("pf", 16, 1).with(pf_cmdline),
        Server::new("tcp", 32, 1).with(tcp_cmdline),
        POSIX,
        ECHO,
    ];
    servers.extend_from_slice(apps);
    topology_text(
        &servers,
        &format!(
            "tap = \"{tap}\"\nnetns = \"{ns}\"\npeer_address = \"198.18.0.1/24\"\n\
             gateway = \"198.18.0.1\"\nmac = \"02:00:00:00:00:02\"\naddress = \"{STACK}/24\""
        ),
    )
}

/// Bytes the `stream` client sends out through pf.
const OUT_BYTES: u64 = 1_000_000;

kvm_test! {
    /// The `stream` client application connects to `nc -l` in the namespace through
    /// pf, whose rules let only outbound TCP to port 9000 out (and nothing TCP in), and
    /// sends it 1 MB: the connection's replies come back through its table entry (the
    /// SYN-ACK, the ACKs, nc's FIN after the last byte), an inbound connection to the
    /// echo application is still refused, and the entry expires once the connection has
    /// closed.
    fn pf_lets_the_replies_of_an_outbound_connection_in_and_its_entry_expires() {
        if !require_netns() {
            return;
        }
        let ns = NetNs::new("pfo").unwrap();
        let tap = format!("cfo{}", std::process::id() % 100_000);
        // The listener first (on any address: the TAP's comes with the stack); the
        // client does not retry.
        let mut nc = Command::new("ip")
            .args(["netns", "exec", ns.name(), "timeout", "60", "nc", "-l", "9000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = nc.stdout.take().unwrap();
        let counter = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0u64;
            while let Ok(k @ 1..) = out.read(&mut buf) {
                n += k as u64;
            }
            n
        });
        compart_tests::poll(Duration::from_secs(10), "nc listening", || {
            let (_, ss) = exec_in(ns.name(), "ss", &["-ltn"]);
            ss.contains(":9000").then_some(())
        });
        let stream = format!("server=198.18.0.1 port=9000 bytes={OUT_BYTES}");
        let (vmm, capture) = boot(&topology(&stack_in(
            &tap,
            ns.name(),
            "rules=out:tcp:9000,in:icmp default=deny tcp_closing_ms=2000 tcp_closed_ms=1000 stats=0",
            "stats=0 sockets=8 buf=64",
            &[Server::app("stream", 16, 0).with(&stream)],
        )));
        capture.wait_for("stream", "stream: sent ", Duration::from_secs(60));
        let report = capture
            .of("stream")
            .into_iter()
            .find(|l| l.starts_with("stream: sent "))
            .unwrap_or_default();
        assert!(
            report.starts_with(&format!("stream: sent {OUT_BYTES} bytes in "))
                && report.contains("(the server closed after the last byte)"),
            "{report}; tcp: {:?}; pf: {:?}",
            capture.of("tcp"),
            capture.of("pf")
        );
        assert_eq!(counter.join().unwrap(), OUT_BYTES);
        let _ = nc.wait();
        compart_tests::poll(UP, "pf's counters", || {
            (capture.counter("pf", "conn_created") >= 1).then_some(())
        });
        assert_eq!(capture.counter("pf", "conn_created"), 1, "{:?}", capture.of("pf").last());
        assert!(capture.counter("pf", "in_tracked") >= 3, "SYN-ACK, ACKs, FIN: {:?}", capture.of("pf").last());
        assert_eq!(capture.counter("pf", "in_denied_rule"), 0, "{:?}", capture.of("pf").last());
        // The entry lets only that connection in: a connection to the echo port is not.
        std::thread::sleep(Duration::from_millis(1500));
        let (ok, out) = echo_line(ns.name());
        assert!(!ok && !out.contains("[through pf]"), "an inbound connection was served: {out}");
        compart_tests::poll(UP, "pf to count the refused SYNs", || {
            (capture.counter("pf", "in_denied_rule") >= 1).then_some(())
        });
        // …and the closed connection's entry has expired (seen at those SYNs at the latest).
        let last = capture.of("pf").last().cloned().unwrap_or_default();
        assert!(last.contains(" conns=0 ") && capture.counter("pf", "conn_expired") == 1, "{last}");
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    /// A SYN flood from forged sources (raw frames, 5000 SYNs to the allowed port) fills
    /// pf's table of 64 to its limit and no further, every connection past it refused and
    /// counted, without a guest failing; once the flood stops the entries time out (2 s
    /// opening, 1 s closed here), tcp's half-open ones too, and a new connection is served.
    fn a_syn_flood_fills_pf_table_to_its_limit_and_service_resumes_after_it() {
        if !require_netns() {
            return;
        }
        let ns = NetNs::new("pff").unwrap();
        let tap = format!("cff{}", std::process::id() % 100_000);
        let (vmm, capture) = boot(&topology(&stack_in(
            &tap,
            ns.name(),
            "rules=in:tcp:7,in:icmp default=deny conns=64 tcp_opening_ms=2000 tcp_closed_ms=1000 stats=0",
            "stats=0 sockets=8 buf=64 handshake=2000",
            &[],
        )));
        let handle = vmm.handle();
        let waiter = std::thread::spawn(move || vmm.wait());
        capture.wait_for("echo", "echo: serving port 7", UP);
        capture.wait_for("ip", "gratuitous ARP sent", UP);
        let mac = mac_of(ns.name(), &tap).unwrap();
        let peer = ns
            .run_in(|| -> std::io::Result<RawPeer> {
                Ok(RawPeer {
                    tx: RawSender::open(&tap)?,
                    rx: RawReceiver::open(&tap)?,
                    mac,
                    stack_mac: [2, 0, 0, 0, 0, 2],
                    stack: [198, 18, 0, 2],
                })
            })
            .unwrap()
            .unwrap();
        let mut rng = Rng::new(0x5f10);
        let flood: Vec<Vec<u8>> = (0..5000)
            .map(|_| {
                let src = [198, 19, rng.below(256) as u8, 1 + rng.below(254) as u8];
                let sport = 1024 + rng.below(60000) as u16;
                let seq = rng.next_u64() as u32;
                peer.segment(src, sport, 7, seq, 0, flags::SYN, 65535, &[]).frame()
            })
            .collect();
        let start = Instant::now();
        let sent = send_in_batches(&peer.tx, &handle, flood, 200);
        let took = start.elapsed();
        let pf = capture.of("pf");
        let most = pf
            .iter()
            .filter_map(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("conns=")?.parse::<u64>().ok()))
            .max()
            .unwrap_or(0);
        eprintln!(
            "{sent} SYNs in {took:?}; pf: {:?}; at most {most} entries in {} counter lines",
            pf.last(),
            pf.len()
        );
        assert!(most <= 64, "the table held {most} entries");
        assert_eq!(capture.counter("pf", "conns_peak"), 64, "{:?}", pf.last());
        assert!(capture.counter("pf", "in_table_full") > 0, "{:?}", pf.last());
        // Service resumes once the half-open connections time out (pf's and tcp's).
        let resumed = Instant::now();
        let mut served = None;
        for _ in 0..20 {
            let (ok, out) = echo_line(ns.name());
            if ok && out.contains("[through pf]") {
                served = Some(resumed.elapsed());
                break;
            }
            if resumed.elapsed() > Duration::from_secs(40) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let served = served.unwrap_or_else(|| panic!("no echo after the flood: {:?}", capture.of("pf").last()));
        eprintln!("echo served again {served:?} after the flood");
        wait_for_empty_pf_table(&capture, &peer);
        assert!(capture.counter("pf", "conn_expired") >= 64, "{:?}", capture.of("pf").last());
        for g in ["driver", "ip", "pf", "tcp", "posix", "echo"] {
            assert!(!capture.of(g).iter().any(|l| l.contains("panicked")), "{g}: {:?}", capture.of(g));
        }
        handle.stop();
        let outcome = waiter.join().unwrap();
        for g in ["driver", "ip", "pf", "tcp", "posix", "echo"] {
            assert_eq!(outcome.state(g), Some(&GuestState::Stopped), "{g}: {outcome:?}");
        }
    }
}

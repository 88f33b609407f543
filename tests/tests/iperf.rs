//! The iperf3 application end to end, against stock `iperf3` in a network namespace:
//! the whole stack (`driver`, `ip`, `pf`, `tcp`, `posix`) with the `iperf3` image as
//! its application (role `app`).
//!
//! - Our server: stock `iperf3 -c` measures it plain, with `-R` and with `-P 4`; a
//!   window (`-w`) beyond tcp's buffers is refused with iperf3's error.
//! - Our client: it measures stock `iperf3 -s -1` both ways.
//!
//! Each run reports throughput > 0 and no error; the figures are printed. The two tests
//! take turns (they would share the two cores otherwise). Every command is bounded by
//! `timeout`, every wait by a deadline.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use compart_tests::netns::{exec_in, require_netns, NetNs};
use compart_tests::stack::{topology_text, Server, DRIVER, IP};
use compart_tests::{boot, kvm_test, poll, topology};

const UP: Duration = Duration::from_secs(30);
const STACK: &str = "198.18.0.2";
const PEER: &str = "198.18.0.1";

/// pf lets in iperf3's port (our server) and out to it (our client), nothing else.
const PF_RULES: &str = "rules=in:tcp:5201,out:tcp:5201 default=deny";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The stack with the iperf3 image on `app`'s command line, its NIC a TAP in `ns`
/// (as `topologies/iperf.toml`).
fn stack(tap: &str, ns: &str, app: &str) -> String {
    topology_text(
        &[
            DRIVER,
            IP,
            Server::new("pf", 16, 1).with(PF_RULES),
            Server::new("tcp", 64, 1).with("sockets=32 buf=256"),
            Server::new("posix", 16, 0),
            Server::app("iperf3", 32, 0).with(app),
        ],
        &format!(
            "mac = \"02:00:00:00:00:02\"\naddress = \"{STACK}/24\"\ngateway = \"{PEER}\"\n\
             tap = \"{tap}\"\nnetns = \"{ns}\"\npeer_address = \"{PEER}/24\""
        ),
    )
}

/// The rate in Mbit/s of the last `role` line (`sender`/`receiver`) of an iperf3
/// report, the `[SUM]` line if there is one.
fn mbits(report: &str, role: &str) -> Option<f64> {
    let lines: Vec<&str> = report
        .lines()
        .filter(|l| l.trim_end().ends_with(role) && l.contains("bits/sec"))
        .collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("[SUM]"))
        .or(lines.last())?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| w.ends_with("bits/sec"))?;
    let value: f64 = words.get(at.checked_sub(1)?)?.parse().ok()?;
    let scale = match words[at] {
        "bits/sec" => 1e-6,
        "Kbits/sec" => 1e-3,
        "Mbits/sec" => 1.0,
        "Gbits/sec" => 1e3,
        _ => return None,
    };
    Some(value * scale)
}

/// A process killed when dropped (a failed test leaves nothing running).
struct Killed(Option<Child>);

impl Killed {
    /// Whether it succeeded, and its output, waiting at most `limit` for it to end.
    fn finish(mut self, limit: Duration) -> (bool, String) {
        let mut child = self.0.take().expect("not finished yet");
        let ended = poll(limit, "the process to end", || child.try_wait().unwrap());
        let o = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (ended.success(), text)
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

kvm_test! {
    fn stock_iperf3_clients_measure_our_server_plain_reverse_and_with_four_streams() {
        if !require_netns() {
            return;
        }
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let pid = std::process::id() % 100_000;
        let (ns, tap) = (format!("cpt-ipfs-{pid}"), format!("ctipfs{pid}"));
        let (vmm, capture) = boot(&topology(&stack(&tap, &ns, "mode=server port=5201 interval=0")));
        capture.wait_for("iperf3", "Server listening on 5201", UP);
        let mut figures = Vec::new();
        for (n, (label, extra)) in [("plain", &[][..]), ("-R", &["-R"][..]), ("-P 4", &["-P", "4"][..])]
            .into_iter()
            .enumerate()
        {
            let mut args = vec!["40", "iperf3", "-c", STACK, "-p", "5201", "-t", "5", "-f", "m"];
            args.extend_from_slice(extra);
            let (ok, out) = exec_in(&ns, "timeout", &args);
            let ours = capture.of("iperf3").join("\n");
            assert!(ok && out.contains("iperf Done."), "iperf3 -c {label}:\n{out}\nour server:\n{ours}");
            assert!(!out.contains("error"), "{out}");
            let (sent, received) = (mbits(&out, "sender"), mbits(&out, "receiver"));
            assert!(
                sent.is_some_and(|r| r > 0.0) && received.is_some_and(|r| r > 0.0),
                "iperf3 -c {label} measured nothing:\n{out}"
            );
            if label == "-P 4" {
                assert_eq!(out.lines().filter(|l| l.ends_with("receiver")).count(), 5, "{out}");
            }
            // Our server finished this test too (its summary), with no error so far.
            poll(UP, "our server's summary", || {
                let lines = capture.of("iperf3");
                (lines.iter().filter(|l| l.contains("CPU Utilization")).count() > n).then_some(())
            });
            let ours = capture.of("iperf3").join("\n");
            assert!(!ours.contains("error"), "{ours}");
            figures.push(format!(
                "stock iperf3 -c {label} ↔ our server: sender {:.0} Mbit/s, receiver {:.0} Mbit/s",
                sent.unwrap(),
                received.unwrap()
            ));
        }
        // A window beyond tcp's 256 KiB buffers is refused with iperf3's error, and
        // the server goes on.
        let (ok, out) = exec_in(
            &ns,
            "timeout",
            &["40", "iperf3", "-c", STACK, "-p", "5201", "-t", "1", "-w", "1M"],
        );
        assert!(!ok && out.contains("window size"), "iperf3 -c -w 1M:\n{out}");
        poll(UP, "our server's error", || {
            let lines = capture.of("iperf3");
            (lines.iter().filter(|l| l.contains("Server listening")).count() > 4).then_some(())
        });
        assert!(capture.of("iperf3").iter().any(|l| l.contains("iperf3: error - the window")));
        vmm.handle().stop();
        vmm.wait();
        for f in figures {
            println!("{f}");
        }
    }

    fn our_client_measures_a_stock_iperf3_server_both_ways() {
        if !require_netns() {
            return;
        }
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        // The namespace is made first, so that the stock server listens before our
        // client (which connects as soon as it boots) looks for it.
        let ns = NetNs::new("ipfc").expect("a network namespace");
        let pid = std::process::id() % 100_000;
        let mut figures = Vec::new();
        for (n, reverse) in [false, true].into_iter().enumerate() {
            let server = Command::new("ip")
                .args(["netns", "exec", ns.name(), "timeout", "60", "iperf3", "-s", "-1", "-p", "5201", "-f", "m"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("iperf3 -s starts (scripts/test.sh installs it)");
            let server = Killed(Some(server));
            poll(Duration::from_secs(10), "iperf3 -s listening", || {
                let (_, out) = exec_in(ns.name(), "ss", &["-ltnH", "sport", "= :5201"]);
                out.contains("5201").then_some(())
            });
            let tap = format!("ctipc{pid}{n}");
            let app = format!("mode=client server={PEER} port=5201 time=5 reverse={reverse} interval=0");
            let (vmm, capture) = boot(&topology(&stack(&tap, ns.name(), &app)));
            let ours = poll(Duration::from_secs(60), "our client's end", || {
                let lines = capture.of("iperf3");
                lines
                    .iter()
                    .any(|l| l.contains("iperf Done.") || l.contains("iperf3: error"))
                    .then(|| lines.join("\n"))
            });
            vmm.handle().stop();
            vmm.wait();
            let label = if reverse { "reverse" } else { "plain" };
            assert!(ours.contains("iperf Done.") && !ours.contains("error"), "our client {label}:\n{ours}");
            let (sent, received) = (mbits(&ours, "sender"), mbits(&ours, "receiver"));
            assert!(
                sent.is_some_and(|r| r > 0.0) && received.is_some_and(|r| r > 0.0),
                "our client {label} measured nothing:\n{ours}"
            );
            // The stock server completed the test and measured the same direction.
            let (ok, text) = server.finish(Duration::from_secs(20));
            assert!(ok && !text.contains("error"), "iperf3 -s {label}:\n{text}");
            // A stock server prints its own side only: receiver, or sender in reverse.
            let side = if reverse { "sender" } else { "receiver" };
            assert!(mbits(&text, side).is_some_and(|r| r > 0.0), "iperf3 -s {label}:\n{text}");
            figures.push(format!(
                "our client {label} ↔ stock iperf3 -s: sender {:.0} Mbit/s, receiver {:.0} Mbit/s",
                sent.unwrap(),
                received.unwrap()
            ));
        }
        for f in figures {
            println!("{f}");
        }
    }
}

#[test]
fn rates_are_read_from_iperf3_reports() {
    let stock = "[  5]   0.00-5.00   sec   500 MBytes   839 Mbits/sec    0             sender\n\
                 [  5]   0.00-5.04   sec   499 MBytes   831 Mbits/sec                  receiver\n";
    assert_eq!(mbits(stock, "sender"), Some(839.0));
    assert_eq!(mbits(stock, "receiver"), Some(831.0));
    let ours = "[  1]   0.00-5.00   sec  4.84 GBytes  2.08 Gbits/sec  sender\n\
                [  3]   0.00-5.00   sec  4.84 GBytes  2.08 Gbits/sec  sender\n\
                [SUM]   0.00-5.00   sec  9.68 GBytes  4.16 Gbits/sec  sender\n";
    assert_eq!(mbits(ours, "sender"), Some(4160.0));
    assert_eq!(mbits(ours, "receiver"), None);
}

#[test]
fn the_example_iperf_topology_is_valid_and_serves_on_5201() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/iperf.toml");
    let t = compart_vmm::Topology::load(&path, &compart_vmm::host_facts()).unwrap();
    let app = t.guests.iter().find(|g| g.name == "iperf3").unwrap();
    assert_eq!(app.role.as_str(), "app");
    assert_eq!(app.cmdline, "mode=server port=5201");
    assert_eq!(t.ipv4_of(1).unwrap().address.to_string(), "198.18.0.2/24");
}

//! The packet filter in the path: `driver`, `ip`, `pf` and `tcp` (its temporary echo
//! service on port 7) on the VMM's virtio-net device, bash's `/dev/tcp` and `ping` in a
//! network namespace as the Linux peer. An allowed port is served and its replies come
//! back through the connection table; a denied one gets no connection, and pf counts
//! what it refused. Every command is bounded by `timeout` or its own deadline.

use std::time::Duration;

use compart_tests::netns::{exec_in, ping_received, require_netns};
use compart_tests::stack::{topology_text, Server, DRIVER, IP};
use compart_tests::{boot, kvm_test, topology};

const UP: Duration = Duration::from_secs(20);
const STACK: &str = "198.18.0.2";

/// The stack with `pf` between ip and tcp, filtering with `rules`.
fn stack(tap: &str, ns: &str, rules: &str) -> String {
    let pf_cmdline = format!("{rules} stats=0");
    topology_text(
        &[
            DRIVER,
            IP,
            Server::new("pf", 16, 1).with(&pf_cmdline),
            Server::new("tcp", 32, 1).with("echo=7 sockets=8 buf=256"),
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
        capture.wait_for("tcp", "echo service on port 7", UP);
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
    fn pf_refuses_a_denied_port_and_counts_it() {
        if !require_netns() {
            return;
        }
        let (ns, tap) = names("pfd");
        let (vmm, capture) = boot(&topology(&stack(&tap, &ns, "rules=in:icmp default=deny")));
        capture.wait_for("tcp", "echo service on port 7", UP);
        capture.wait_for("ip", "gratuitous ARP sent", UP);
        // tcp listens on 7, but pf lets no TCP in: the SYNs go unanswered.
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

//! The wire end to end: the `driver` server on the VMM's virtio-net device, the `ip`
//! server behind it, and stock Linux tools (`ping`, `arping`) in a network namespace
//! as the peer. Each test names its own namespace and TAP (the VMM creates and deletes
//! the namespace; the host side of `host_interface` is a veth pair in a namespace the
//! test makes), with addresses from 198.18.0.0/15. Every command is bounded by its
//! own count and deadline.

use std::time::Duration;

use compart_tests::netns::{exec_in as in_ns, ping_received as received, require_netns, NetNs};
use compart_tests::stack::{topology_text, DRIVER, IP};
use compart_tests::{boot, kvm_test, topology, Capture};

const UP: Duration = Duration::from_secs(20);

/// The stack's address and MAC in these tests, and the Linux peer's address.
const STACK: &str = "198.18.0.2";
const STACK_MAC: &str = "02:00:00:00:00:02";
const PEER: &str = "198.18.0.1";

/// A driver and an ip server, the NIC given by `nic` (its backend keys).
fn stack(nic: &str) -> String {
    topology_text(
        &[DRIVER, IP.with("stats=0")],
        &format!("mac = \"{STACK_MAC}\"\naddress = \"{STACK}/24\"\ngateway = \"{PEER}\"\n{nic}"),
    )
}

/// A namespace name and a TAP name for test `tag`, unique to this process (a TAP name
/// has at most 15 bytes).
fn names(tag: &str) -> (String, String) {
    let pid = std::process::id() % 100_000;
    (format!("cpt-{tag}-{pid}"), format!("ct{tag}{pid}"))
}

/// Boots `text` and waits until the ip server has the link.
fn up(text: &str) -> (compart_vmm::RunningVmm, Capture) {
    let (vmm, capture) = boot(&topology(text));
    capture.wait_for("driver", "driver: link up", UP);
    capture.wait_for("ip", "gratuitous ARP sent", UP);
    (vmm, capture)
}

kvm_test! {
    fn the_stack_answers_a_thousand_pings_without_loss_and_large_and_fragmented_ones() {
        if !require_netns() {
            return;
        }
        let (ns, tap) = names("ping");
        let (vmm, capture) = up(&stack(&format!(
            "tap = \"{tap}\"\nnetns = \"{ns}\"\npeer_address = \"{PEER}/24\"\n"
        )));
        let (ok, out) = in_ns(&ns, "ping", &["-c", "1000", "-i", "0.002", "-w", "30", "-q", STACK]);
        assert!(ok && received(&out) == 1000, "{out}");
        assert!(out.contains(" 0% packet loss"), "{out}");
        // 1472 bytes of ICMP payload fill one 1500-byte packet; 8000 are fragmented
        // towards the stack, reassembled there, and the reply fragmented back.
        for size in ["1472", "8000"] {
            let (ok, out) = in_ns(&ns, "ping", &["-c", "3", "-s", size, "-w", "10", STACK]);
            assert!(ok && received(&out) == 3, "ping -s {size}: {out}");
        }
        // The last counters line may trail the last reply: wait for it.
        compart_tests::poll(UP, "the ip server's counters", || {
            (capture.counter("ip", "icmp_echo_replied") >= 1006).then_some(())
        });
        assert_eq!(capture.counter("ip", "frag_reassembled"), 3);
        assert!(capture.counter("ip", "frag_tx") >= 3 * 6, "{:?}", capture.of("ip"));
        for bad in ["ip_bad_checksum", "rx_malformed", "tx_queue_full", "arp_unresolved"] {
            assert_eq!(capture.counter("ip", bad), 0, "{bad}: {:?}", capture.of("ip"));
        }
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn arping_is_answered_and_the_stack_resolves_its_peer_by_itself() {
        if !require_netns() {
            return;
        }
        let (ns, tap) = names("arp");
        let (vmm, capture) = up(&stack(&format!(
            "tap = \"{tap}\"\nnetns = \"{ns}\"\npeer_address = \"{PEER}/24\"\n"
        )));
        // Linux is given the stack's MAC, so it never asks for it: to answer a ping the
        // stack must resolve the peer's MAC itself (it has not heard from the peer yet).
        let (ok, out) = in_ns(
            &ns,
            "ip",
            &["neigh", "replace", STACK, "lladdr", STACK_MAC, "dev", &tap, "nud", "permanent"],
        );
        assert!(ok, "{out}");
        let (ok, out) = in_ns(&ns, "ping", &["-c", "3", "-w", "10", STACK]);
        assert!(ok && received(&out) == 3, "{out}");
        compart_tests::poll(UP, "the ip server's counters", || {
            (capture.counter("ip", "icmp_echo_replied") >= 3).then_some(())
        });
        assert!(
            capture.counter("ip", "arp_requests_sent") >= 2
                && capture.counter("ip", "arp_learnt") >= 1
                && capture.counter("ip", "arp_replies_sent") == 0,
            "the stack asked for the peer (besides its gratuitous ARP), learnt it, and was \
             never asked: {:?}",
            capture.of("ip")
        );
        // And it answers ARP: arping gets three replies with its MAC.
        let (ok, out) = in_ns(&ns, "arping", &["-c", "3", "-w", "10", "-I", &tap, STACK]);
        assert!(ok, "arping: {out}");
        assert!(out.to_lowercase().contains(STACK_MAC), "{out}");
        // (iputils' arping says "Received 3 response(s)", Habets' "3 packets received".)
        assert!(
            out.contains("Received 3 response") || out.contains("3 packets received"),
            "{out}"
        );
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn the_stack_answers_through_a_host_interface() {
        if !require_netns() {
            return;
        }
        // A veth pair in a namespace of the test's stands in for a host NIC: the
        // VMM puts a macvtap on one end; Linux pings from the other.
        let ns = NetNs::new("hif").expect("a namespace");
        let pid = std::process::id() % 100_000;
        let (nic_end, peer_end) = (format!("hv{pid}"), format!("hp{pid}"));
        ns.add_veth(&nic_end, &peer_end).expect("a veth pair");
        ns.ip(&["addr", "add", &format!("{PEER}/24"), "dev", &peer_end])
            .expect("an address");
        let (vmm, _capture) = up(&stack(&format!(
            "host_interface = \"{nic_end}\"\nnetns = \"{}\"\n",
            ns.name()
        )));
        let (ok, out) = in_ns(ns.name(), "ping", &["-c", "5", "-w", "10", STACK]);
        assert!(ok && received(&out) == 5, "{out}");
        vmm.handle().stop();
        vmm.wait();
    }
}

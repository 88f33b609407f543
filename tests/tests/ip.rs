//! The ip server in a guest, with a guest playing its driver (the `framepeer` image)
//! until the real driver exists: link, gratuitous ARP, ARP, `ping -s 1472` and a
//! fragmented `ping -s 8000` whose reply leaves fragmented, all over a channel.

use std::time::Duration;

use compart_tests::{poll, require_kvm, topology, Capture};
use compart_vmm::GuestState;

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn ip_answers_arp_and_pings_fragmented_or_not_from_a_guest_playing_the_driver() {
    if !require_kvm() {
        return;
    }
    let t = topology(
        r#"
        [[guest]]
        name = "driver"
        role = "driver"
        image = "framepeer"
        cores = [0]
        cmdline = "n=20"

        [[guest]]
        name = "ip"
        role = "ip"
        image = "ip"
        memory_mib = 16
        cores = [1]
        cmdline = "addr=198.18.0.2/24 gw=198.18.0.1 stats=0"

        [[channel]]
        a = "driver"
        b = "ip"
        buf_size = 2048
        "#,
    );
    let capture = Capture::default();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
    let handle = vmm.handle();
    let waiter = std::thread::spawn(move || vmm.wait());
    capture.wait_for("driver", "framepeer: all replies right", TIMEOUT);
    capture.wait_for("ip", "icmp_echo_replied=22", TIMEOUT);
    handle.stop();
    poll(TIMEOUT, "the VMM to stop", || {
        waiter.is_finished().then_some(())
    });
    let outcome = waiter.join().unwrap();
    // The driver may be stopped between its last line and its exit.
    assert!(
        matches!(
            outcome.state("driver"),
            Some(GuestState::Exited(0) | GuestState::Stopped)
        ),
        "{outcome:?}"
    );
    let ip = capture.of("ip");
    assert!(
        ip.iter()
            .any(|l| l.contains("ip: link up: mac 02-00-00-00-00-02 mtu 1500")),
        "{ip:?}"
    );
    let counters = ip
        .iter()
        .rev()
        .find(|l| l.starts_with("ip: counters:"))
        .expect("a counters line");
    for want in ["frag_reassembled=1", "frag_tx=6", "arp_replies_sent=1"] {
        assert!(counters.contains(want), "{want} in {counters}");
    }
    for unwanted in ["malformed", "bad_", "queue_full", "unresolved"] {
        assert!(!counters.contains(unwanted), "{unwanted} in {counters}");
    }
}

/// The ip server's counter `name` in a `ip: counters: …` line (0 when absent).
fn counter(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .map_or(0, |v| v.parse().unwrap())
}

const HOSTILE: u64 = 100_000;

/// 10⁵ hostile frames from a guest playing the driver (`framepeer hostile=N`, frames
/// from `compart-netgen`): ip takes every one (each answered `Done`), counts each
/// under exactly one first-level outcome, and still answers a ping afterwards.
#[test]
fn ip_counts_every_one_of_100000_hostile_frames_and_still_answers_a_ping() {
    if !require_kvm() {
        return;
    }
    let t = topology(&format!(
        r#"
        [[guest]]
        name = "driver"
        role = "driver"
        image = "framepeer"
        cores = [0]
        memory_mib = 8
        cmdline = "n=0 hostile={HOSTILE} seed=5"

        [[guest]]
        name = "ip"
        role = "ip"
        image = "ip"
        memory_mib = 16
        cores = [1]
        cmdline = "addr=198.18.0.2/24 gw=198.18.0.1 stats=0"

        [[channel]]
        a = "driver"
        b = "ip"
        buf_size = 9216
        "#
    ));
    let capture = Capture::default();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
    let handle = vmm.handle();
    let waiter = std::thread::spawn(move || vmm.wait());
    let long = Duration::from_secs(300);
    capture.wait_for("driver", "hostile frames sent", long);
    // Frames ip received: the ARP request, the 1472-byte ping, the 8000-byte one in
    // 6 fragments, the hostile ones and the last ping.
    let total = 1 + 1 + 6 + HOSTILE + 1;
    let want = format!("rx_frames={total} ");
    capture.wait_until(long, &want, |ls| {
        ls.iter()
            .any(|l| l.guest == "ip" && format!("{} ", l.text).contains(&want))
    });
    handle.stop();
    waiter.join().unwrap();
    let ip = capture.of("ip");
    let line = ip
        .iter()
        .rev()
        .find(|l| format!("{l} ").contains(&want))
        .unwrap();
    eprintln!("{line}");
    // Every frame ends under exactly one first-level outcome.
    let c = |n| counter(line, n);
    let outcomes = c("rx_runt")
        + c("rx_link_down")
        + c("rx_not_for_us")
        + c("rx_bad_src_mac")
        + c("rx_unknown_ethertype")
        + c("arp_rx")
        + c("ip_rx");
    assert_eq!(outcomes, total, "{line}");
    // The attack reached every layer.
    for n in [
        "rx_not_for_us",
        "rx_unknown_ethertype",
        "arp_malformed",
        "arp_conflict",
        "ip_malformed",
        "ip_bad_checksum",
        "frag_rx",
        "frag_no_room",
        "icmp_malformed",
    ] {
        assert!(c(n) > 0, "{n} in {line}");
    }
    assert!(c("icmp_echo_replied") >= 3, "{line}");
}

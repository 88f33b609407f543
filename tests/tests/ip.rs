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

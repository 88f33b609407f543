//! The `mono` image end to end, on the VMM's virtio-net device with bash's `/dev/tcp`
//! in a network namespace as the Linux peer, in both of its compositions: the whole
//! stack (driver, ip and tcp linked into one guest, its address from the NIC's
//! `[[nic]]`), and only tcp over the driver and ip servers. In each, its echo
//! application (over compart-sockets' `Net`) returns a line and 4 MiB intact, and a
//! connect to a closed port is refused; and the iperf3 application (the same crate
//! the posix-backed image runs) serves stock `iperf3 -c` both ways, 1 and 4 streams.
//! Every command is bounded by `timeout`.

use std::time::Duration;

use compart_tests::netns::{exec_in, require_netns};
use compart_tests::{boot, kvm_test, topology};

const UP: Duration = Duration::from_secs(20);
const STACK: &str = "198.18.0.2";
const PEER: &str = "198.18.0.1";
const CHANNEL: &str = "queue_depth = 64\nmax_outstanding = 16\nbuf_size = 65600\n";

fn nic(guest: &str, tap: &str, ns: &str) -> String {
    format!(
        "[[nic]]\nguest = \"{guest}\"\nmac = \"02:00:00:00:00:02\"\naddress = \"{STACK}/24\"\n\
         gateway = \"{PEER}\"\ntap = \"{tap}\"\nnetns = \"{ns}\"\npeer_address = \"{PEER}/24\"\n"
    )
}

/// The whole stack in one guest on core 1, running `app`.
fn whole(tap: &str, ns: &str, app: &str) -> String {
    format!(
        "[host]\ncores = [0, 1]\n[[guest]]\nname = \"mono\"\nrole = \"driver\"\nimage = \"mono\"\n\
         memory_mib = 64\ncores = [1]\ncmdline = \"{app} sockets=32 buf=256\"\n{}",
        nic("mono", tap, ns)
    )
}

/// The driver server on core 0, ip and the image as tcp on core 1.
fn split(tap: &str, ns: &str) -> String {
    format!(
        "[host]\ncores = [0, 1]\n\
         [[guest]]\nname = \"driver\"\nrole = \"driver\"\nimage = \"driver\"\nmemory_mib = 16\ncores = [0]\n\
         [[guest]]\nname = \"ip\"\nrole = \"ip\"\nimage = \"ip\"\nmemory_mib = 16\ncores = [1]\n\
         [[guest]]\nname = \"tcp\"\nrole = \"tcp\"\nimage = \"mono\"\nmemory_mib = 32\ncores = [1]\n\
         cmdline = \"app=echo port=7 sockets=8 buf=256\"\n\
         [[channel]]\na = \"driver\"\nb = \"ip\"\n{CHANNEL}\
         [[channel]]\na = \"ip\"\nb = \"tcp\"\n{CHANNEL}{}",
        nic("driver", tap, ns)
    )
}

/// Runs a bash script inside namespace `ns`, bounded by 30 s; its status and output.
fn bash_in(ns: &str, script: &str) -> (bool, String) {
    exec_in(ns, "timeout", &["30", "bash", "-c", script])
}

/// Boots `text`, waits for the echo application in guest `guest`, and checks a line,
/// 4 MiB echoed with checksum and segmentation offloads in use, and a refused port.
fn echo_through(text: &str, guest: &str, ns: &str, tag: &str) {
    let (vmm, capture) = boot(&topology(text));
    capture.wait_for(guest, "mono: echo on port 7", UP);
    let tcp_line = capture
        .of(guest)
        .into_iter()
        .find(|l| l.starts_with("mono: tcp at"))
        .unwrap_or_default();
    assert!(
        tcp_line.contains("checksums left to the link") && tcp_line.contains("TSO"),
        "{tcp_line}"
    );
    let (ok, out) = bash_in(
        ns,
        &format!("exec 3<>/dev/tcp/{STACK}/7; echo hello mono >&3; read -r l <&3; echo \"[$l]\""),
    );
    assert!(
        ok && out.contains("[hello mono]"),
        "{out}; console: {capture:?}"
    );
    let dir = std::env::temp_dir().join(format!("cpt-mono-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, out) = bash_in(
        ns,
        &format!(
            "set -e; cd {d}; head -c 4194304 /dev/urandom > sent; \
             exec 3<>/dev/tcp/{STACK}/7; (cat sent >&3) & head -c 4194304 <&3 > got; \
             wait; cmp sent got && echo same",
            d = dir.display()
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok && out.contains("same"), "{out}");
    let (ok, out) = bash_in(ns, &format!("exec 3<>/dev/tcp/{STACK}/9"));
    assert!(!ok && out.contains("refused"), "{out}");
    vmm.handle().stop();
    vmm.wait();
}

kvm_test! {
    fn the_whole_stack_in_one_guest_echoes_a_line_and_4_mib_and_refuses_a_closed_port() {
        if !require_netns() {
            return;
        }
        let pid = std::process::id() % 100_000;
        let (ns, tap) = (format!("cpt-mono-{pid}"), format!("ctmono{pid}"));
        echo_through(&whole(&tap, &ns, "app=echo port=7"), "mono", &ns, "whole");
    }
}

kvm_test! {
    fn the_image_as_tcp_over_the_driver_and_ip_servers_echoes_the_same() {
        if !require_netns() {
            return;
        }
        let pid = std::process::id() % 100_000;
        let (ns, tap) = (format!("cpt-monos-{pid}"), format!("ctmons{pid}"));
        echo_through(&split(&tap, &ns), "tcp", &ns, "split");
    }
}

kvm_test! {
    fn stock_iperf3_measures_the_whole_stack_both_ways_with_one_and_four_streams() {
        if !require_netns() {
            return;
        }
        let pid = std::process::id() % 100_000;
        let (ns, tap) = (format!("cpt-monoi-{pid}"), format!("ctmoni{pid}"));
        let (vmm, capture) = boot(&topology(&whole(&tap, &ns, "app=iperf3 port=5201")));
        capture.wait_for("mono", "mono: iperf3 on port 5201", UP);
        for extra in ["", "-R", "-P 4", "-P 4 -R"] {
            let (ok, out) = exec_in(
                &ns,
                "timeout",
                &["30", "bash", "-c", &format!("iperf3 -c {STACK} -t 3 {extra} -f m")],
            );
            // The receiver's line (iperf3 prints sender and receiver summaries).
            let receiver = out
                .lines()
                .rfind(|l| l.contains("receiver"))
                .unwrap_or_default()
                .to_string();
            let mbits: f64 = receiver
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .find(|w| w[1] == "Mbits/sec")
                .and_then(|w| w[0].parse().ok())
                .unwrap_or(0.0);
            assert!(
                ok && mbits > 10.0,
                "iperf3 {extra}: {out}; console: {capture:?}"
            );
        }
        vmm.handle().stop();
        vmm.wait();
    }
}

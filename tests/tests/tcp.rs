//! The tcp server end to end: `driver`, `ip` and `tcp` (its temporary echo service on
//! port 7) on the VMM's virtio-net device, and bash's `/dev/tcp` in a network namespace
//! as the Linux peer: a line and 4 MiB echoed back intact (in TSO super-segments), and a connect to a closed
//! port refused (smoltcp's RST). Every command is bounded by `timeout`.

use std::time::Duration;

use compart_tests::netns::{exec_in, require_netns};
use compart_tests::stack::{topology_text, Server, DRIVER, IP};
use compart_tests::{boot, kvm_test, topology};

const UP: Duration = Duration::from_secs(20);
const STACK: &str = "198.18.0.2";
const PEER: &str = "198.18.0.1";

fn stack(tap: &str, ns: &str) -> String {
    topology_text(
        &[
            DRIVER,
            IP,
            Server::new("tcp", 32, 1).with("echo=7 stats=0 sockets=8 buf=256"),
        ],
        &format!(
            "mac = \"02:00:00:00:00:02\"\naddress = \"{STACK}/24\"\ngateway = \"{PEER}\"\n\
             tap = \"{tap}\"\nnetns = \"{ns}\"\npeer_address = \"{PEER}/24\""
        ),
    )
}

/// Runs a bash script inside namespace `ns`, bounded by 30 s; its status and output.
fn bash_in(ns: &str, script: &str) -> (bool, String) {
    exec_in(ns, "timeout", &["30", "bash", "-c", script])
}

kvm_test! {
    fn the_echo_service_returns_a_line_and_4_mib_with_offloads_and_a_closed_port_is_refused() {
        if !require_netns() {
            return;
        }
        let pid = std::process::id() % 100_000;
        let (ns, tap) = (format!("cpt-tcp-{pid}"), format!("cttcp{pid}"));
        let (vmm, capture) = boot(&topology(&stack(&tap, &ns)));
        capture.wait_for("tcp", "tcp: echo service on port 7", UP);
        // The TAP takes checksum and segmentation offloads: tcp uses both.
        let offloads = capture
            .of("tcp")
            .into_iter()
            .find(|l| l.starts_with("tcp: address"))
            .unwrap_or_default();
        assert!(
            offloads.contains("TCP checksums left to the link")
                && offloads.contains("segments of up to 64 KiB (TSO)"),
            "{offloads}"
        );

        let (ok, out) = bash_in(
            &ns,
            &format!("exec 3<>/dev/tcp/{STACK}/7; echo hello compart >&3; read -r l <&3; echo \"[$l]\""),
        );
        assert!(ok && out.contains("[hello compart]"), "{out}");

        let dir = std::env::temp_dir().join(format!("cpt-tcp-{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (ok, out) = bash_in(
            &ns,
            &format!(
                "set -e; cd {d}; head -c 4194304 /dev/urandom > sent; \
                 exec 3<>/dev/tcp/{STACK}/7; (cat sent >&3) & head -c 4194304 <&3 > got; \
                 wait; cmp sent got && echo same",
                d = dir.display()
            ),
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ok && out.contains("same"), "{out}");

        let (ok, out) = bash_in(&ns, &format!("exec 3<>/dev/tcp/{STACK}/9"));
        assert!(!ok && out.contains("refused"), "{out}");

        // The device lost nothing and refused nothing (stats=0: a line whenever idle).
        compart_tests::poll(UP, "the tcp server's counters", || {
            capture
                .of("tcp")
                .iter()
                .rev()
                .find(|l| l.starts_with("tcp: counters: "))
                .filter(|l| l.contains("tx_dropped_by_ip=0") && l.contains("rx_malformed=0"))
                .map(|_| ())
        });
        vmm.handle().stop();
        vmm.wait();
    }
}

//! The stream application end to end: driver, ip, tcp, posix and the `stream` client,
//! which connects out through the stack to stock `nc -l` in a network namespace and
//! sends it 50 MB; nc receives every byte and the client reports its throughput once
//! nc has closed. Every wait is bounded (`timeout`, the capture's deadlines).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use compart_tests::netns::{require_netns, NetNs};
use compart_tests::stack::{topology_text, Server, DRIVER, IP};
use compart_tests::{boot, kvm_test, topology};

const BYTES: u64 = 50_000_000;

fn stack(tap: &str, ns: &str) -> String {
    let mut t = topology_text(
        &[
            DRIVER,
            IP,
            Server::new("tcp", 32, 1).with("sockets=8 buf=256"),
            Server::new("posix", 16, 1),
        ],
        &format!(
            "mac = \"02:00:00:00:00:02\"\naddress = \"198.18.0.2/24\"\ntap = \"{tap}\"\n\
             netns = \"{ns}\"\npeer_address = \"198.18.0.1/24\""
        ),
    );
    t.push_str(&format!(
        "\n[[guest]]\nname = \"stream\"\nrole = \"app\"\nimage = \"stream\"\nmemory_mib = 16\n\
         cores = [0]\ncmdline = \"server=198.18.0.1 port=5001 bytes={BYTES}\"\n\
         on_failure = \"stop-guest\"\n\n[[channel]]\na = \"posix\"\nb = \"stream\"\n\
         queue_depth = 64\nmax_outstanding = 16\nbuf_size = 65600\n"
    ));
    t
}

kvm_test! {
    fn the_stream_client_sends_50_mb_through_the_stack_to_stock_nc() {
        if !require_netns() {
            return;
        }
        // The namespace first, with nc listening in it; compart puts its TAP there.
        let ns = NetNs::new("stream").unwrap();
        let tap = format!("cst{}", std::process::id() % 100_000);
        let mut nc = Command::new("ip")
            .args(["netns", "exec", ns.name(), "timeout", "60", "nc", "-l", "5001"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("nc runs");
        let mut out = nc.stdout.take().unwrap();
        let counter = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0u64;
            while let Ok(k @ 1..) = out.read(&mut buf) {
                n += k as u64;
            }
            n
        });
        // nc is listening before the client connects (it does not retry).
        compart_tests::poll(Duration::from_secs(10), "nc listening", || {
            let (_, ss) = compart_tests::netns::exec_in(ns.name(), "ss", &["-ltn"]);
            ss.contains(":5001").then_some(())
        });
        let (vmm, capture) = boot(&topology(&stack(&tap, ns.name())));
        capture.wait_for("stream", "stream: sent ", Duration::from_secs(60));
        let report = capture
            .of("stream")
            .into_iter()
            .find(|l| l.starts_with("stream: sent "))
            .unwrap();
        assert!(
            report.starts_with(&format!("stream: sent {BYTES} bytes in "))
                && report.contains("(the server closed after the last byte)"),
            "{report}"
        );
        eprintln!("{report}");
        assert_eq!(counter.join().unwrap(), BYTES);
        let _ = nc.wait();
        vmm.handle().stop();
        vmm.wait();
    }
}

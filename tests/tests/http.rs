//! The shipped default topology end to end: driver, ip, pf, tcp, posix, and the http
//! and iperf3 applications, on a TAP in a network namespace, with stock curl as the
//! client. The status page carries posix's and tcp's counters; a 100 MiB body crosses
//! every server with the sha256 of the pattern it is made of; 200 connections at once
//! are all served; bad requests get their status. Each test boots
//! `topologies/default.toml` with its namespace and TAP renamed to ones of this
//! process, so that it never meets a running `compart run` (namespace `compart`), and
//! one stack runs at a time. Every command is bounded by `timeout` or curl's
//! `--max-time`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use compart_tests::netns::{exec_in, require_netns};
use compart_tests::{boot, kvm_test, topology, Capture};
use compart_vmm::RunningVmm;

const UP: Duration = Duration::from_secs(30);
const STACK: &str = "198.18.0.2";
/// `/body`'s size in the default topology (`body_mib=100`).
const BODY: usize = 100 << 20;

/// One stack at a time: each is six guests on the host's two cores.
static ONE_STACK: Mutex<()> = Mutex::new(());

/// `topologies/default.toml`, booted in namespace `cpt-h{tag}-PID` on TAP `ch{tag}PID`,
/// up once http listens; the namespace's name.
fn boot_default(tag: &str) -> (String, RunningVmm, Capture) {
    let pid = std::process::id() % 100_000;
    let (ns, tap) = (format!("cpt-h{tag}-{pid}"), format!("ch{tag}{pid}"));
    let shipped = include_str!("../../topologies/default.toml");
    for key in ["netns = \"compart\"", "tap = \"compart0\""] {
        assert!(shipped.contains(key), "default.toml has {key}");
    }
    let text = shipped
        .replace("netns = \"compart\"", &format!("netns = \"{ns}\""))
        .replace("tap = \"compart0\"", &format!("tap = \"{tap}\""));
    let (vmm, capture) = boot(&topology(&text));
    capture.wait_for("http", "http: serving on port 80", UP);
    (ns, vmm, capture)
}

/// `curl ARGS` in `ns`, at most 120 s; whether it succeeded, and its output.
fn curl(ns: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec![
        "120",
        "curl",
        "--silent",
        "--show-error",
        "--max-time",
        "110",
    ];
    all.extend_from_slice(args);
    exec_in(ns, "timeout", &all)
}

fn url(path: &str) -> String {
    format!("http://{STACK}{path}")
}

/// The sha256 (hex) of `len` bytes of the server's pattern: byte i is i mod 251.
fn pattern_sha256(len: usize) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    let period: Vec<u8> = (0..251u32).map(|i| i as u8).collect();
    let block: Vec<u8> = period.iter().copied().cycle().take(251 * 4096).collect();
    let stdin = child.stdin.as_mut().unwrap();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        stdin.write_all(&block[..n]).unwrap();
        left -= n;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

kvm_test! {
    fn the_default_topology_boots_and_serves_its_status_page_head_and_bad_requests() {
        if !require_netns() {
            return;
        }
        let _one = ONE_STACK.lock().unwrap_or_else(|e| e.into_inner());
        let (ns, vmm, _capture) = boot_default("st");
        let (ok, page) = curl(&ns, &[&url("/status")]);
        assert!(ok, "{page}");
        assert!(page.starts_with("compart http server\n"), "{page}");
        assert!(page.contains("http: accepted=1 "), "{page}");
        // The stack's counters, from posix's Stats answer (two applications).
        assert!(page.contains("stack: posix: apps=2 "), "{page}");
        assert!(page.contains("tcp: sockets="), "{page}");

        let (ok, head) = curl(&ns, &["--head", &url("/body")]);
        assert!(ok && head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {BODY}\r\n")), "{head}");

        let code = |args: &[&str]| {
            let mut a = vec!["--output", "/dev/null", "--write-out", "%{http_code}"];
            a.extend_from_slice(args);
            curl(&ns, &a).1
        };
        assert_eq!(code(&[&url("/nothing-here")]), "404");
        assert_eq!(code(&["--request", "POST", &url("/status")]), "405");
        let (ok, bad) = exec_in(
            &ns,
            "timeout",
            &[
                "10",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{STACK}/80; printf 'GARBAGE\\r\\n\\r\\n' >&3; cat <&3"),
            ],
        );
        assert!(ok && bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");
        assert!(bad.contains("Connection: close\r\n"), "{bad}");

        let (_, page) = curl(&ns, &[&url("/status")]);
        assert!(page.contains(" ok=2 not_found=2 bad=1 "), "{page}");
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn curl_downloads_100_mib_through_the_whole_stack_with_the_patterns_sha256() {
        if !require_netns() {
            return;
        }
        let _one = ONE_STACK.lock().unwrap_or_else(|e| e.into_inner());
        let (ns, vmm, _capture) = boot_default("dl");
        let want = pattern_sha256(BODY);
        let (ok, out) = exec_in(
            &ns,
            "timeout",
            &[
                "120",
                "bash",
                "-c",
                &format!(
                    "set -o pipefail; curl --silent --show-error --fail --max-time 110 \
                     --write-out '%{{stderr}}size=%{{size_download}} speed=%{{speed_download}}\\n' \
                     {} | sha256sum",
                    url("/body")
                ),
            ],
        );
        assert!(ok, "{out}");
        assert!(out.contains(&format!("size={BODY} ")), "{out}");
        assert!(out.contains(&format!("{want}  -")), "want {want}: {out}");
        let speed = out
            .split("speed=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?");
        eprintln!("100 MiB through the default topology: {speed} bytes/s");
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn two_hundred_connections_at_once_are_all_served() {
        if !require_netns() {
            return;
        }
        let _one = ONE_STACK.lock().unwrap_or_else(|e| e.into_inner());
        let (ns, vmm, _capture) = boot_default("pa");
        let urls: Vec<String> = (0..200).map(|i| url(&format!("/bytes/{}", i * 1000))).collect();
        let mut args = vec![
            "--parallel",
            "--parallel-max",
            "200",
            "--parallel-immediate",
            "--write-out",
            "%{http_code} %{size_download}\\n",
        ];
        for u in &urls {
            args.extend(["--output", "/dev/null", u.as_str()]);
        }
        let (ok, out) = curl(&ns, &args);
        assert!(ok, "{out}");
        let mut served: Vec<u64> = out
            .lines()
            .filter_map(|l| l.strip_prefix("200 "))
            .map(|n| n.parse().unwrap())
            .collect();
        served.sort_unstable();
        let want: Vec<u64> = (0..200).map(|i| i * 1000).collect();
        assert_eq!(served, want, "{out}");
        let (_, page) = curl(&ns, &[&url("/status")]);
        assert!(page.contains(" requests=200 ok=200 "), "{page}");
        assert!(page.contains(" errors=0"), "{page}");
        vmm.handle().stop();
        vmm.wait();
    }
}

//! The whole stack to an application: `topologies/echo.toml` (driver → ip → pf → tcp →
//! posix → the echo application on port 7) on the VMM's virtio-net device, with stock
//! `nc` in a network namespace as the Linux peer: 100 MB echoed back identical through
//! posix (its rate printed), 200 connections open at once all served, and an
//! application that ends with connections open has them closed by posix. Every command
//! is bounded by `timeout`.

use std::time::Duration;

use compart_tests::netns::{exec_in, require_netns};
use compart_tests::{boot, kvm_test, poll, topology, Capture};

const UP: Duration = Duration::from_secs(30);

/// One stack at a time: the 200 connects and the measured rates need the cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}
const STACK: &str = "198.18.0.2";

/// The shipped topology on a TAP and namespace of this test, the application with
/// `echo_cmdline`.
fn stack(tag: &str, echo_cmdline: &str) -> (String, String) {
    let pid = std::process::id() % 100_000;
    let (ns, tap) = (format!("cpt-{tag}-{pid}"), format!("cp{tag}{pid}"));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/echo.toml");
    let text = std::fs::read_to_string(path).expect("topologies/echo.toml");
    let text = text
        .replace("tap = \"cpt1\"", &format!("tap = \"{tap}\""))
        .replace("netns = \"cpt-echo\"", &format!("netns = \"{ns}\""))
        .replace(
            "cmdline = \"port=7\"",
            &format!("cmdline = \"{echo_cmdline}\""),
        );
    assert!(
        text.contains(echo_cmdline) && text.contains(&ns),
        "the topology changed"
    );
    (text, ns)
}

/// Runs a bash script inside namespace `ns`, bounded by `secs`; its status and output.
fn bash_in(ns: &str, secs: u32, script: &str) -> (bool, String) {
    exec_in(ns, "timeout", &[&secs.to_string(), "bash", "-c", script])
}

fn up(capture: &Capture) {
    capture.wait_for("echo", "echo: serving port 7", UP);
}

/// A scratch directory of this test, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("cpt-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Seconds `nc -N` takes to send `file` to `port` and receive it back (into `back`),
/// and whether `back` is identical (sha256).
fn echo_file(ns: &str, dir: &std::path::Path, port: u16) -> (f64, String) {
    let (ok, out) = bash_in(
        ns,
        200,
        &format!(
            "set -e; cd {d}; rm -f back; s=$(date +%s.%N); \
             nc -N -w 30 {STACK} {port} < sent > back; e=$(date +%s.%N); \
             a=$(sha256sum < sent); b=$(sha256sum < back); \
             echo \"secs=$(echo \"$e - $s\" | bc -l) bytes=$(stat -c %s back)\"; \
             [ \"$a\" = \"$b\" ] && echo identical",
            d = dir.display()
        ),
    );
    assert!(ok, "nc to port {port}: {out}");
    let secs = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("secs=")?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no time in {out}"));
    (secs, out)
}

kvm_test! {
    fn the_echo_application_returns_100_mb_identical_through_posix() {
        if !require_netns() {
            return;
        }
        let _one = one_at_a_time();
        let (text, ns) = stack("px", "port=7");
        let (vmm, capture) = boot(&topology(&text));
        up(&capture);
        let dir = Scratch::new("px");
        let (ok, out) = bash_in(
            &ns,
            30,
            &format!("head -c 100000000 /dev/urandom > {}/sent", dir.0.display()),
        );
        assert!(ok, "{out}");
        let (posix_secs, out) = echo_file(&ns, &dir.0, 7);
        assert!(out.contains("bytes=100000000") && out.contains("identical"), "through posix: {out}");
        println!(
            "100 MB echoed: through posix and the application {posix_secs:.2} s ({:.1} MB/s each way)",
            100.0 / posix_secs
        );
        let text = capture.of("echo").join("\n");
        assert!(!text.contains("panicked"), "{text}");
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn two_hundred_connections_open_at_once_are_all_served() {
        if !require_netns() {
            return;
        }
        let _one = one_at_a_time();
        let (text, ns) = stack("pc", "port=7 stats=100");
        let (vmm, capture) = boot(&topology(&text));
        up(&capture);
        let dir = Scratch::new("pc");
        // Each client sends 20 kB, holds its side open for 15 s (so that all 200 are
        // open together), then half-closes and reads to the end.
        let (ok, out) = bash_in(
            &ns,
            120,
            &format!(
                "cd {d}; head -c 20000 /dev/urandom > sent; \
                 for i in $(seq 1 200); do \
                   ( (cat sent; sleep 15) | nc -N -w 60 {STACK} 7 > back.$i ) & \
                 done; wait; n=0; \
                 for i in $(seq 1 200); do cmp -s sent back.$i && n=$((n+1)); done; \
                 echo \"identical=$n\"",
                d = dir.0.display()
            ),
        );
        assert!(ok && out.contains("identical=200"), "{out}");
        let open = capture
            .of("echo")
            .iter()
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("open=")?.parse::<u64>().ok())
            })
            .max()
            .unwrap_or(0);
        assert_eq!(open, 200, "all 200 were open at once: {:?}", capture.of("echo"));
        // All closed afterwards, in posix and in tcp.
        poll(UP, "posix's counters after the clients", || {
            let c = capture.of("posix").join("\n");
            let last = capture.of("posix").into_iter().rev().find(|l| l.starts_with("posix: counters:"))?;
            (last.contains(" connections=0 ") && last.contains(" accepted=200 ")).then_some(c)
        });
        vmm.handle().stop();
        vmm.wait();
    }
}

kvm_test! {
    fn an_application_that_ends_has_its_connections_closed_by_posix() {
        if !require_netns() {
            return;
        }
        let _one = one_at_a_time();
        let (text, ns) = stack("pl", "port=7 exit_after=3");
        let (vmm, capture) = boot(&topology(&text));
        up(&capture);
        // Three connections held open; the application ends when it accepts the third.
        let (ok, out) = bash_in(
            &ns,
            60,
            &format!(
                "for i in 1 2 3; do ( (echo hi; sleep 8) | nc -w 30 {STACK} 7 > /dev/null ) & sleep 0.3; done; \
                 for t in $(seq 1 100); do \
                   e=$(ss -Htn state established '( dport = :7 )' | wc -l); \
                   [ \"$e\" = 0 ] && break; sleep 0.1; done; \
                 echo \"established=$e\"; ss -Htn '( dport = :7 )'; kill $(jobs -p) 2>/dev/null; true"
            ),
        );
        capture.wait_for("echo", "echo: exiting after 3 connections, 3 still open", UP);
        capture.wait_for("posix", "posix: application echo lost", UP);
        assert!(ok && out.contains("established=0"), "the stack closed them: {out}");
        let counters = poll(UP, "posix's counters after the loss", || {
            capture
                .of("posix")
                .into_iter()
                .rev()
                .find(|l| l.starts_with("posix: counters:") && l.contains("apps_lost=1"))
        });
        assert!(
            counters.contains("closed_for_lost=4") && counters.contains(" sockets=0 "),
            "the listener and the three connections: {counters}"
        );
        vmm.handle().stop();
        vmm.wait();
    }
}

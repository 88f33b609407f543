//! Helpers for tests and benchmarks that boot real guests: the KVM requirement,
//! topologies from text, console capture, and per-thread facts from `/proc`.
//!
//! A test that boots guests is written
//!
//! ```text
//! kvm_test! {
//!     /// What it checks.
//!     fn a_guest_does_what_it_should() {
//!         let (vmm, capture) = boot(&topology("[[guest]]\nname = \"g\"\n…"));
//!         let outcome = vmm.wait();
//!         …
//!     }
//! }
//! ```
//!
//! [`kvm_test!`] makes it a `#[test]` that fails with a clear message without
//! `/dev/kvm`, and that `COMPART_SKIP_KVM_TESTS=1` (at build time, see `build.rs`)
//! marks ignored, so a run that skipped it says so. [`boot`] is the usual start:
//! topology from text, a console capture, a running VMM.

pub mod netns;
pub mod rawnet;
pub mod stack;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use compart_vmm::console::{ConsoleLine, ConsoleSink};
use compart_vmm::topology::ParseFailure;
use compart_vmm::{RunningVmm, Topology};

/// Set to `1` to skip (rather than fail) the tests that need `/dev/kvm`: those declared
/// with [`kvm_test!`] are then reported as ignored.
pub const SKIP_VAR: &str = "COMPART_SKIP_KVM_TESTS";

/// Whether the calling test may use KVM. Without `/dev/kvm` it fails, with a message
/// saying why, unless [`SKIP_VAR`] is `1`, in which case it says on stderr that the
/// test is skipped (past the test harness's capture, so that the skip shows) and
/// returns `false`: the test should return early.
pub fn require_kvm() -> bool {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    match opened {
        Ok(_) => true,
        Err(e) if std::env::var(SKIP_VAR).as_deref() == Ok("1") => {
            use std::io::Write;
            let test = std::thread::current().name().unwrap_or("?").to_string();
            // Straight to the process's stderr: the harness captures only eprintln!.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: /dev/kvm is not usable ({e}) and {SKIP_VAR}=1"
            );
            false
        }
        Err(e) => panic!(
            "/dev/kvm is not usable ({e}): this test boots real guests under KVM. \
             Run it as a user who may open /dev/kvm, or set {SKIP_VAR}=1 to skip it"
        ),
    }
}

/// Declares tests that boot guests under KVM: each `fn` becomes a `#[test]` (its
/// attributes and doc comments kept) that is reported as ignored when this crate was
/// built with `COMPART_SKIP_KVM_TESTS=1`, and otherwise fails with a clear message if
/// `/dev/kvm` is not usable (see [`require_kvm`]). Usable from other packages' tests
/// too: the choice is made here, not where the macro expands.
#[cfg(not(compart_skip_kvm))]
#[macro_export]
macro_rules! kvm_test {
    ($($tests:tt)*) => { $crate::__kvm_tests!([] $($tests)*); };
}

/// See the other `kvm_test`: this is the one built with `COMPART_SKIP_KVM_TESTS=1`.
#[cfg(compart_skip_kvm)]
#[macro_export]
macro_rules! kvm_test {
    ($($tests:tt)*) => {
        $crate::__kvm_tests!(
            [#[ignore = "needs /dev/kvm; skipped because COMPART_SKIP_KVM_TESTS=1"]]
            $($tests)*
        );
    };
}

/// The body of `kvm_test!`, one test at a time, with the extra attributes (`ignore`)
/// in brackets.
#[doc(hidden)]
#[macro_export]
macro_rules! __kvm_tests {
    ([$($extra:tt)*]) => {};
    ([$($extra:tt)*] $(#[$meta:meta])* fn $name:ident() $body:block $($rest:tt)*) => {
        #[test]
        $($extra)*
        $(#[$meta])*
        fn $name() {
            if !$crate::require_kvm() {
                return;
            }
            $body
        }
        $crate::__kvm_tests!([$($extra)*] $($rest)*);
    };
}

/// NIC 0 of guest 0 (the driver of a stack topology), from a typed status report.
pub fn nic_status(handle: &compart_vmm::VmmHandle) -> compart_vmm::control::NicStatus {
    match handle
        .request(compart_vmm::ControlRequest::Status, Duration::from_secs(10))
        .unwrap()
    {
        compart_vmm::ControlResponse::Status(r) => r.guests[0].nics[0].clone(),
        other => panic!("not a status report: {other:?}"),
    }
}

/// Sends `frames` through `sender` in batches of `batch`, each only once the VMM's NIC
/// (see [`nic_status`]) has taken the last (received or dropped), within 10 s a batch or
/// the test fails. Returns how many were sent.
pub fn send_in_batches(
    sender: &rawnet::RawSender,
    handle: &compart_vmm::VmmHandle,
    frames: impl IntoIterator<Item = Vec<u8>>,
    batch: usize,
) -> u64 {
    let base = nic_status(handle);
    let before = base.rx_packets + base.rx_drops;
    let mut sent = 0u64;
    let mut frames = frames.into_iter().peekable();
    while frames.peek().is_some() {
        for f in frames.by_ref().take(batch) {
            sender
                .send(&f)
                .unwrap_or_else(|e| panic!("sending {} bytes: {e}", f.len()));
            sent += 1;
        }
        let batch_start = Instant::now();
        loop {
            let nic = nic_status(handle);
            if nic.rx_packets + nic.rx_drops >= before + sent {
                break;
            }
            assert!(
                batch_start.elapsed() < Duration::from_secs(10),
                "after {sent} frames sent: {nic:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    sent
}

/// Waits until the last `pf: counters:` line shows an empty connection table
/// (` conns=0 `), within 30 s, or the test fails. Every 2 s `peer` sends a stray ACK to
/// port 7 from a forged address (passed by an `in:tcp:7` rule, it opens nothing): pf
/// takes expired entries out at its deadline or, at the latest, at the next packet, and
/// prints its counters after each packet.
pub fn wait_for_empty_pf_table(capture: &Capture, peer: &rawnet::RawPeer) {
    let start = Instant::now();
    for probe in 0..15u16 {
        if capture
            .of("pf")
            .last()
            .is_some_and(|l| l.contains(" conns=0 "))
        {
            return;
        }
        if start.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
        let ack = rawnet::flags::ACK;
        let stray = peer.segment([198, 19, 9, 9], 1000 + probe, 7, 1, 1, ack, 512, &[]);
        peer.send(&stray)
            .unwrap_or_else(|e| panic!("sending a stray ACK: {e}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = capture.of("pf").last().cloned();
    assert!(
        last.as_deref().is_some_and(|l| l.contains(" conns=0 ")),
        "pf's table does not empty: {last:?}"
    );
}

/// Starts the VMM on `topology` with every console line captured; panics if it
/// cannot start.
pub fn boot(topology: &Topology) -> (RunningVmm, Capture) {
    let capture = Capture::default();
    let vmm = compart_vmm::start(topology, capture.sink())
        .unwrap_or_else(|e| panic!("the VMM does not start: {e}"));
    (vmm, capture)
}

/// A topology from text, validated against this host; panics with the problems.
pub fn topology(text: &str) -> Topology {
    match Topology::parse(text, Path::new("."), &compart_vmm::host_facts()) {
        Ok(t) => t,
        Err(ParseFailure::Syntax(m)) => panic!("topology does not parse: {m}"),
        Err(ParseFailure::Invalid(p)) => panic!("topology is invalid: {p:?}"),
    }
}

/// The shipped `topologies/idle.toml`: an idle stand-in for each of the five roles, no NIC.
pub fn idle_topology() -> Topology {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/idle.toml");
    Topology::load(&path, &compart_vmm::host_facts()).expect("idle topology loads")
}

/// Collects console lines and lets a test wait for them.
#[derive(Clone, Default)]
pub struct Capture {
    inner: Arc<(Mutex<Vec<ConsoleLine>>, Condvar)>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.lines()
                    .iter()
                    .map(|l| format!("[{}] {}", l.guest, l.text)),
            )
            .finish()
    }
}

impl Capture {
    /// A sink that records into this capture.
    pub fn sink(&self) -> ConsoleSink {
        let inner = self.inner.clone();
        Arc::new(move |line: ConsoleLine| {
            let (lines, cv) = &*inner;
            lines.lock().unwrap().push(line);
            cv.notify_all();
        })
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<ConsoleLine> {
        self.inner.0.lock().unwrap().clone()
    }

    /// Counter `name` in the last `GUEST: counters: name=value …` line of `guest` (the
    /// servers print their non-zero counters that way); 0 when absent.
    pub fn counter(&self, guest: &str, name: &str) -> u64 {
        let prefix = format!("{guest}: counters: ");
        self.of(guest)
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .and_then(|c| {
                c.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Lines of one guest.
    pub fn of(&self, guest: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.guest == guest)
            .map(|l| l.text)
            .collect()
    }

    /// Waits until `pred` holds for the lines seen so far; panics after `timeout`.
    pub fn wait_until(&self, timeout: Duration, what: &str, pred: impl Fn(&[ConsoleLine]) -> bool) {
        let deadline = Instant::now() + timeout;
        let (lines, cv) = &*self.inner;
        let mut guard = lines.lock().unwrap();
        while !pred(&guard) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?} waiting for {what}; console: {:?}",
                guard
                    .iter()
                    .map(|l| format!("[{}] {}", l.guest, l.text))
                    .collect::<Vec<_>>()
            );
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// Waits for a line of `guest` containing `text`.
    pub fn wait_for(&self, guest: &str, text: &str, timeout: Duration) {
        self.wait_until(timeout, &format!("[{guest}] …{text}…"), |ls| {
            ls.iter().any(|l| l.guest == guest && l.text.contains(text))
        });
    }
}

/// CPU time a thread of this process has used, in nanoseconds (from
/// `/proc/self/task/TID/schedstat`).
pub fn thread_cpu_ns(tid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .unwrap_or_else(|e| panic!("reading schedstat of thread {tid}: {e}"));
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat starts with the time on CPU")
}

/// The share of one core that thread `tid` uses over the next `window` (0.0 to 1.0).
pub fn cpu_share(tid: i32, window: std::time::Duration) -> f64 {
    let before = thread_cpu_ns(tid);
    std::thread::sleep(window);
    (thread_cpu_ns(tid) - before) as f64 / window.as_nanos() as f64
}

/// The CPU list a thread of process `pid` may run on (`Cpus_allowed_list`).
pub fn thread_affinity(pid: u32, tid: i32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap_or_else(|e| panic!("reading status of thread {tid}: {e}"));
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .expect("status has Cpus_allowed_list")
}

/// How many times a benchmark repeats its measurement: `COMPART_BENCH_RUNS`, or
/// `default`.
pub fn bench_runs(default: usize) -> usize {
    std::env::var("COMPART_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until `f` returns `Some`, polling every 10 ms; panics after `timeout`.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

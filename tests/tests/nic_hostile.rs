//! The virtio-net device under attack, with no real driver: a hostile driver guest
//! (`selftest nic-hostile`) feeds it malformed rings while a pingpong pair on the
//! same VMM completes its round trips, and a raw socket on the TAP's Linux side sends
//! 10⁵ random and mutated frames to a guest that only receives (`selftest nic-rx`):
//! every frame is delivered or counted as dropped.
//!
//! Its own test binary: it installs a logger that records every line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use compart_tests::netns::{require_netns, NetNs};
use compart_tests::rawnet::{FrameGen, RawSender, Target};
use compart_tests::{kvm_test, nic_status, topology, Capture};
use compart_vmm::{GuestState, VmmHandle};

static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Recorder;

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Info {
            LOG.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn install_logger() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_boxed_logger(Box::new(Recorder)).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// The number just before `phrase` in `line`.
fn count_before(line: &str, phrase: &str) -> u64 {
    let at = line
        .find(phrase)
        .unwrap_or_else(|| panic!("no `{phrase}` in {line}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count before `{phrase}` in {line}"))
}

const ATTACK_MS: u64 = 3000;

kvm_test! {
    /// A driver guest that feeds its NIC malformed rings for 3 s (buffers outside
    /// RAM, loops, huge lengths, `next` and heads outside the table, index jumps,
    /// queues outside RAM, read-only register writes, resets in flight, bad receive
    /// chains met by frames a raw socket sends to the TAP) neither
    /// stops the VMM nor another guest: a pingpong pair completes its round trips
    /// meanwhile, the refusals are counted in status, the log holds a few lines
    /// about them, and the device sends a valid frame afterwards.
    fn a_hostile_driver_neither_stops_the_vmm_nor_another_guest_nor_floods_the_log() {
        if !require_netns() {
            return;
        }
        install_logger();
        let ns = NetNs::new("hostile").unwrap();
        let t = topology(&format!(
            "[[guest]]\nname = \"hdrv\"\nrole = \"driver\"\nimage = \"selftest\"\n\
             cmdline = \"nic-hostile={ATTACK_MS}\"\nmemory_mib = 8\ncores = [1]\n\
             [[guest]]\nname = \"ping\"\nrole = \"app\"\nimage = \"pingpong\"\ncores = [0]\n\
             cmdline = \"role=ping n=2000 window=8 payload=16\"\n\
             [[guest]]\nname = \"pong\"\nrole = \"app\"\nimage = \"pingpong\"\ncores = [0]\n\
             cmdline = \"role=pong\"\n\
             [[guest]]\nname = \"keeper\"\nrole = \"app\"\nimage = \"idle\"\n\
             [[channel]]\na = \"ping\"\nb = \"pong\"\n\
             [[nic]]\nguest = \"hdrv\"\ntap = \"cpt5\"\nnetns = \"{}\"\n\
             peer_address = \"198.18.5.1/24\"\nqueue_size = 64\n",
            ns.name()
        ));
        let capture = Capture::default();
        let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
        let handle = vmm.handle();
        let waiter = std::thread::spawn(move || vmm.wait());
        let start = Instant::now();
        // Frames for the receive chains it posts: one a millisecond from the TAP's
        // Linux side, until the attack ends (at most 60 s).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = ns.run_in(|| RawSender::open("cpt5")).unwrap().unwrap();
        let feeder = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut frame = vec![0xff; 6];
                frame.extend_from_slice(&[2, 0, 0, 0, 5, 1, 0x88, 0xb5]);
                frame.resize(60, 0);
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && start.elapsed() < Duration::from_secs(60)
                {
                    sent += u64::from(sender.send(&frame).is_ok());
                    std::thread::sleep(Duration::from_millis(1));
                }
                sent
            })
        };
        // (`keeper` keeps the VMM running once the others have ended.)
        // During the attack: status answers, and the pair completes.
        capture.wait_for("ping", "2000 round trips, none lost", Duration::from_secs(60));
        let during = nic_status(&handle);
        capture.wait_for("hdrv", "nic-hostile:", Duration::from_secs(60));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let fed = feeder.join().unwrap();
        let lines = capture.lines();
        let pos = |guest: &str, text: &str| {
            lines
                .iter()
                .position(|l| l.guest == guest && l.text.contains(text))
                .unwrap()
        };
        assert!(
            pos("ping", "round trips") < pos("hdrv", "nic-hostile:"),
            "the pair completed while the attack ran"
        );
        assert!(during.bad_chains > 0, "{during:?}");
        let report = capture.of("hdrv").into_iter().find(|l| l.starts_with("nic-hostile:")).unwrap();
        eprintln!("{report} (after {:?})", start.elapsed());
        assert!(report.ends_with("a valid frame after: sent"), "{report}");
        let rounds = count_before(&report, " rounds in");
        let seen = count_before(&report, " bad chains handed back");
        let rx_seen = count_before(&report, " bad receive chains refused");
        let broken = count_before(&report, " rings broken");
        let writes = count_before(&report, " refused register writes");
        assert!(rounds >= 10, "{report}");
        // Most bad chains come back refused in time (each waits ≤ 50 ms).
        assert!(seen >= 8 * rounds / 2, "{report}");
        assert!(broken >= rounds / 2, "{report}");
        assert!(fed > 0 && rx_seen > 0, "{fed} frames sent to the TAP: {report}");

        let nic = nic_status(&handle);
        eprintln!("{nic:?}");
        // Every bad chain the guest saw refused was counted (and more: those a reset
        // overtook, and each broken ring).
        assert!(
            nic.bad_chains >= seen + rx_seen + broken * 2 / 3,
            "{nic:?} vs {report}"
        );
        // No frame went into a bad receive chain.
        assert_eq!(nic.rx_packets, 0, "{nic:?}");
        assert_eq!(nic.refused_accesses, writes, "{nic:?} vs {report}");
        assert!(nic.tx_packets >= 1, "the valid frame went out: {nic:?}");
        handle.stop();
        let outcome = waiter.join().unwrap();
        // It may be stopped between its last line and its exit.
        assert!(
            matches!(
                outcome.state("hdrv"),
                Some(GuestState::Exited(0) | GuestState::Stopped)
            ),
            "{outcome:?}"
        );
        assert_eq!(outcome.state("ping"), Some(&GuestState::Exited(0)), "{outcome:?}");

        // The log: per kind (refused chains, refused accesses) the first event, a
        // summary at most once a second, and a last count at the end.
        let log = LOG.lock().unwrap().clone();
        let about: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("hdrv") || l.contains("cpt5"))
            .collect();
        let bound = 2 * (2 + ATTACK_MS.div_ceil(1000) as usize + 1);
        eprintln!(
            "{} bad chains and {} refused accesses, {} log lines about them",
            nic.bad_chains,
            nic.refused_accesses,
            about.len()
        );
        assert!(
            !about.is_empty() && about.len() <= bound,
            "{} log lines (at most {bound}): {about:#?}",
            about.len()
        );
    }
}

const FRAMES: usize = 100_000;
const BATCH: usize = 200;

/// Turns IPv6 off in `ns` (no router solicitations, no DAD): with no address either,
/// the only frames on its TAP are the test's.
fn quiet_ipv6(ns: &NetNs) {
    for key in ["all", "default"] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns.name(), "sysctl", "-qw"])
            .arg(format!("net.ipv6.conf.{key}.disable_ipv6=1"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

/// Sends [`FRAMES`] frames of `frames` through `sender`, [`BATCH`] at a time, each batch
/// only once the device has taken the last (`compart_tests::send_in_batches`). Returns
/// the frames sent and how many were longer than a 1500-byte MTU frame.
fn send_in_batches(sender: &RawSender, handle: &VmmHandle, frames: &mut FrameGen) -> (u64, u64) {
    let mut oversize = 0u64;
    let frames = frames
        .by_ref()
        .take(FRAMES)
        .inspect(|f| oversize += u64::from(f.len() > 14 + 1500));
    let sent = compart_tests::send_in_batches(sender, handle, frames, BATCH);
    (sent, oversize)
}

kvm_test! {
    /// 10⁵ random and mutated frames (truncated headers, wrong lengths, versions and
    /// checksums, bogus ARP, overlapping and endless fragments, jumbo frames over the
    /// MTU) from a raw socket on the TAP's Linux side reach a guest that only
    /// receives: each is delivered to its receive ring or counted as a drop (those
    /// longer than its buffers, which hold header + 14 + MTU), none lost uncounted.
    fn every_raw_frame_sent_to_the_tap_is_delivered_or_counted_as_dropped() {
        if !require_netns() {
            return;
        }
        install_logger();
        let ns = NetNs::new("raw").unwrap();
        // No IPv6 (router solicitations, DAD) and no address: the only frames on the
        // TAP are the test's.
        quiet_ipv6(&ns);
        let t = topology(&format!(
            "[[guest]]\nname = \"rdrv\"\nrole = \"driver\"\nimage = \"selftest\"\n\
             cmdline = \"nic-rx=300000\"\nmemory_mib = 8\n\
             [[nic]]\nguest = \"rdrv\"\ntap = \"cpt6\"\nnetns = \"{}\"\n\
             mac = \"02:00:00:00:06:02\"\nmtu = 1500\nqueue_size = 64\n",
            ns.name()
        ));
        let capture = Capture::default();
        let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
        let handle = vmm.handle();
        let waiter = std::thread::spawn(move || vmm.wait());
        capture.wait_for("rdrv", "nic-rx: ready", Duration::from_secs(30));
        // The Linux side takes jumbo frames; the guest's buffers do not.
        ns.ip(&["link", "set", "cpt6", "mtu", "9000", "up"]).unwrap();
        let sender = ns.run_in(|| RawSender::open("cpt6")).unwrap().unwrap();
        let target = Target {
            mac: [2, 0, 0, 0, 6, 2],
            ip: [198, 18, 6, 2],
            peer_mac: [2, 0, 0, 0, 6, 1],
            peer_ip: [198, 18, 6, 1],
        };
        let mut frames = FrameGen::new(12, target, 1500);
        let start = Instant::now();
        let mut nic = nic_status(&handle);
        assert_eq!(nic.rx_packets + nic.rx_drops, 0, "nothing before the test's frames: {nic:?}");
        let (sent, oversize) = send_in_batches(&sender, &handle, &mut frames);
        let took = start.elapsed();
        // A last look: nothing more arrives.
        std::thread::sleep(Duration::from_millis(200));
        nic = nic_status(&handle);
        eprintln!(
            "{sent} frames in {took:?} ({:.0}/s): {} delivered, {} dropped ({oversize} over the MTU)",
            sent as f64 / took.as_secs_f64(),
            nic.rx_packets,
            nic.rx_drops
        );
        assert_eq!(nic.rx_packets + nic.rx_drops, sent, "{nic:?}");
        assert_eq!(nic.rx_drops, oversize, "exactly the frames longer than the buffers: {nic:?}");
        assert_eq!(nic.bad_chains, 0, "{nic:?}");
        handle.stop();
        waiter.join().unwrap();
    }
}

kvm_test! {
    /// The same 10⁵ hostile frames at the real stack (the driver and ip servers): both
    /// keep running, the device accounts for every frame, every frame the device
    /// delivered reaches ip's counters, and the stack still answers a ping.
    fn the_stack_survives_100000_hostile_frames_counts_them_and_still_answers_ping() {
        if !require_netns() {
            return;
        }
        install_logger();
        let ns = NetNs::new("hst").unwrap();
        quiet_ipv6(&ns);
        let t = topology(&format!(
            "[[guest]]\nname = \"driver\"\nrole = \"driver\"\nimage = \"driver\"\nmemory_mib = 16\ncores = [0]\n\
             [[guest]]\nname = \"ip\"\nrole = \"ip\"\nimage = \"ip\"\nmemory_mib = 16\ncores = [1]\n\
             cmdline = \"stats=0\"\n\
             [[channel]]\na = \"driver\"\nb = \"ip\"\nqueue_depth = 64\nmax_outstanding = 16\n\
             buf_size = 65600\n\
             [[nic]]\nguest = \"driver\"\ntap = \"cpt7\"\nnetns = \"{}\"\n\
             mac = \"02:00:00:00:07:02\"\naddress = \"198.18.7.2/24\"\n",
            ns.name()
        ));
        let capture = Capture::default();
        let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
        let handle = vmm.handle();
        let waiter = std::thread::spawn(move || vmm.wait());
        capture.wait_for("ip", "gratuitous ARP sent", Duration::from_secs(30));
        ns.ip(&["link", "set", "cpt7", "mtu", "9000", "up"]).unwrap();
        let sender = ns.run_in(|| RawSender::open("cpt7")).unwrap().unwrap();
        let target = Target {
            mac: [2, 0, 0, 0, 7, 2],
            ip: [198, 18, 7, 2],
            peer_mac: [2, 0, 0, 0, 7, 1],
            peer_ip: [198, 18, 7, 1],
        };
        let base = nic_status(&handle);
        let mut frames = FrameGen::new(7, target, 1500);
        let (sent, _) = send_in_batches(&sender, &handle, &mut frames);
        let nic = nic_status(&handle);
        assert_eq!(
            nic.rx_packets + nic.rx_drops - base.rx_packets - base.rx_drops,
            sent,
            "the device accounts for every frame: {nic:?}"
        );
        // Every frame the device delivered reaches ip (the driver passes them all on:
        // it has credit for 16 at a time and waits for ip's replies, never drops).
        let delivered = nic.rx_packets;
        compart_tests::poll(Duration::from_secs(30), "ip to count every frame", || {
            (capture.counter("ip", "rx_frames") >= delivered).then_some(())
        });
        assert_eq!(capture.counter("ip", "rx_frames"), delivered, "{:?}", capture.of("ip").last());
        // The stack is whole: it answers a ping from the namespace.
        ns.ip(&["addr", "add", "198.18.7.1/24", "dev", "cpt7"]).unwrap();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns.name(), "ping", "-c", "3", "-w", "10", "198.18.7.2"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(" 0% packet loss"), "{text}");
        for g in ["driver", "ip"] {
            assert!(
                !capture.of(g).iter().any(|l| l.contains("panicked")),
                "{g}: {:?}",
                capture.of(g)
            );
        }
        handle.stop();
        let outcome = waiter.join().unwrap();
        for g in ["driver", "ip"] {
            assert_eq!(outcome.state(g), Some(&GuestState::Stopped), "{g}: {outcome:?}");
        }
    }
}

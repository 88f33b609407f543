//! The tcp server end to end: `driver`, `ip`, `tcp`, `posix` and the echo application
//! (`guest-servers/echo`, port 7) on the VMM's virtio-net device, and bash's `/dev/tcp`
//! in a network namespace as the Linux peer: a line and 4 MiB echoed back intact (tcp
//! sending TSO super-segments), and a connect to a closed port refused (smoltcp's RST);
//! and hostile TCP from raw frames (forged segments on a connection, a zero window, RST
//! and SYN storms, 10⁴ half-open connections, random segments), through ip alone and
//! through pf, after which every server is up and every table within its bound. Every command is bounded by `timeout`, every loop in count
//! and time.

use std::time::Duration;

use compart_tests::netns::{exec_in, ping_received, require_netns, NetNs};
use compart_tests::rawnet::{flags, mac_of, RawPeer, RawReceiver, RawSender, Rng, Segment};
use compart_tests::stack::{topology_text, Server, DRIVER, IP};
use compart_tests::{
    boot, kvm_test, nic_status, send_in_batches, topology, wait_for_empty_pf_table,
};
use compart_vmm::GuestState;

const UP: Duration = Duration::from_secs(20);
const STACK: &str = "198.18.0.2";
const PEER: &str = "198.18.0.1";
/// The posix server and the echo application on port 7 above tcp, on core 0.
const POSIX: Server<'static> = Server::new("posix", 16, 0);
const ECHO: Server<'static> = Server::app("echo", 32, 0).with("port=7");

fn stack(tap: &str, ns: &str) -> String {
    topology_text(
        &[
            DRIVER,
            IP,
            Server::new("tcp", 32, 1).with("stats=0 sockets=8 buf=256"),
            POSIX,
            ECHO,
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
    fn the_echo_application_returns_a_line_and_4_mib_with_offloads_and_a_closed_port_is_refused() {
        if !require_netns() {
            return;
        }
        let pid = std::process::id() % 100_000;
        let (ns, tap) = (format!("cpt-tcp-{pid}"), format!("cttcp{pid}"));
        let (vmm, capture) = boot(&topology(&stack(&tap, &ns)));
        capture.wait_for("echo", "echo: serving port 7", UP);
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

/// The stack for the hostile tests: driver, ip, optionally pf (TCP to port 7 and ICMP
/// in, a table of 256 connections, short timeouts), tcp (8 sockets, a 2 s handshake
/// time), posix and the echo application on port 7, on a TAP in namespace `ns`, with a gateway (the namespace) so
/// that forged sources off the link are answered through it.
fn hostile_stack(tap: &str, ns: &str, with_pf: bool) -> String {
    let pf = Server::new("pf", 16, 1).with(
        "rules=in:tcp:7,in:icmp default=deny conns=256 tcp_opening_ms=3000 \
         tcp_closing_ms=2000 tcp_closed_ms=1000 stats=0",
    );
    let tcp = Server::new("tcp", 32, 1).with("stats=0 sockets=8 buf=64 handshake=2000");
    let servers: &[Server<'_>] = if with_pf {
        &[DRIVER, IP, pf, tcp, POSIX, ECHO]
    } else {
        &[DRIVER, IP, tcp, POSIX, ECHO]
    };
    topology_text(
        servers,
        &format!(
            "mac = \"02:00:00:00:00:02\"\naddress = \"{STACK}/24\"\ngateway = \"{PEER}\"\n\
             tap = \"{tap}\"\nnetns = \"{ns}\"\npeer_address = \"{PEER}/24\""
        ),
    )
}

const STACK_IP: [u8; 4] = [198, 18, 0, 2];
const STACK_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// SYNs never completed, from forged sources.
const HALF_OPEN: usize = 10_000;

/// A forged source off the link: 198.19.x.y.
fn forged(rng: &mut Rng) -> [u8; 4] {
    [198, 19, rng.below(256) as u8, 1 + rng.below(254) as u8]
}

/// One echo through `/dev/tcp` from the namespace, retried (the listener's sockets
/// may still be held by half-open connections until their handshake time) up to 20
/// times within 40 s.
fn echo_works_again(ns: &str) -> (bool, String) {
    let start = std::time::Instant::now();
    let mut out = String::new();
    for _ in 0..20 {
        let (ok, o) = bash_in_for(
            ns,
            5,
            &format!("exec 3<>/dev/tcp/{STACK}/7; echo after the storm >&3; read -r l <&3; echo \"[$l]\""),
        );
        if ok && o.contains("[after the storm]") {
            return (true, o);
        }
        out = o;
        if start.elapsed() > Duration::from_secs(40) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    (false, out)
}

/// Runs a bash script inside namespace `ns`, bounded by `secs`.
fn bash_in_for(ns: &str, secs: u32, script: &str) -> (bool, String) {
    exec_in(ns, "timeout", &[&secs.to_string(), "bash", "-c", script])
}

/// The hostile-TCP run, with or without pf (see the two tests).
fn hostile_tcp(tag: &str, with_pf: bool) {
    let ns = NetNs::new(tag).unwrap();
    let tap = format!("ch{tag}{}", std::process::id() % 100_000);
    let (vmm, capture) = boot(&topology(&hostile_stack(&tap, ns.name(), with_pf)));
    let handle = vmm.handle();
    // The thread that waits for the VMM also serves its status requests.
    let waiter = std::thread::spawn(move || vmm.wait());
    capture.wait_for("echo", "echo: serving port 7", UP);
    capture.wait_for("ip", "gratuitous ARP sent", UP);
    let mac = mac_of(ns.name(), &tap).unwrap();
    let peer = ns
        .run_in(|| -> std::io::Result<RawPeer> {
            Ok(RawPeer {
                tx: RawSender::open(&tap)?,
                rx: RawReceiver::open(&tap)?,
                mac,
                stack_mac: STACK_MAC,
                stack: STACK_IP,
            })
        })
        .unwrap()
        .unwrap();
    let secs = Duration::from_secs;

    // A connection of our own, from a forged address: the raw peer works.
    let src = [198, 19, 0, 7];
    let mut c = peer
        .connect(src, 40000, 7, secs(10))
        .unwrap()
        .expect("the stack answers the raw SYN with a SYN-ACK");
    peer.write(&mut c, b"abc", 8192).unwrap();
    assert_eq!(peer.read(&mut c, 3, 8192, secs(5)).unwrap(), b"abc");

    // Data outside the window, ACKs of data never sent, in-window data with a bad
    // checksum, SYNs and out-of-window RSTs on the connection: none of it is taken.
    let mut frames = Vec::new();
    for k in 0..200u32 {
        let far = c.snd_nxt.wrapping_add(0x8000_0000).wrapping_add(k * 1000);
        let evil = peer.segment(
            src,
            40000,
            7,
            far,
            c.rcv_nxt,
            flags::ACK | flags::PSH,
            8192,
            b"EVIL",
        );
        frames.push(evil.frame());
        let unsent = c.rcv_nxt.wrapping_add(1_000_000 + k);
        frames.push(
            peer.segment(src, 40000, 7, c.snd_nxt, unsent, flags::ACK, 8192, &[])
                .frame(),
        );
        frames.push(
            peer.on(&c, flags::ACK | flags::PSH, 8192, b"BAD!")
                .frame_with_bad_checksum(),
        );
        let rst = c.snd_nxt.wrapping_add(0x4000_0000).wrapping_add(k);
        frames.push(
            peer.segment(src, 40000, 7, rst, 0, flags::RST, 0, &[])
                .frame(),
        );
        frames.push(
            peer.segment(src, 40000, 7, far, 0, flags::SYN, 8192, &[])
                .frame(),
        );
    }
    let forged_on_conn = send_in_batches(&peer.tx, &handle, frames, 100);
    peer.write(&mut c, b"def", 8192).unwrap();
    assert_eq!(
        peer.read(&mut c, 3, 8192, secs(5)).unwrap(),
        b"def",
        "only the in-window data with a good checksum is echoed"
    );
    if with_pf {
        // pf did not forget the connection for a forged RST (and start it over at the
        // forged SYN after it): it made one entry, for the real SYN.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            capture.counter("pf", "conn_created"),
            1,
            "{:?}",
            capture.of("pf").last()
        );
    }

    // A zero window: the echo waits, sending nothing but probes of one byte (which go
    // unacknowledged), then flows once the window opens.
    peer.send(&peer.on(&c, flags::ACK, 0, &[])).unwrap();
    peer.write(&mut c, b"ghi", 0).unwrap();
    let (mut segments, mut longest) = (0, 0);
    peer.rx
        .wait_for(secs(2), |s| {
            if s.src == STACK_IP && s.dst == src && !s.payload.is_empty() {
                segments += 1;
                longest = longest.max(s.payload.len());
            }
            false
        })
        .unwrap();
    assert!(
        longest <= 1,
        "{segments} segments into a zero window, the longest {longest} bytes"
    );
    peer.send(&peer.on(&c, flags::ACK, 8192, &[])).unwrap();
    let got = peer.read(&mut c, 3, 8192, secs(10)).unwrap();
    assert_eq!(got, b"ghi");

    // Storms from forged sources: RSTs, 10⁴ SYNs never completed, and random segments
    // (random flags, numbers, windows, ports, options, data offsets and data; a quarter
    // with bad checksums).
    let mut rng = Rng::new(0x7cb0 + u64::from(with_pf));
    let mut storm = Vec::new();
    for _ in 0..2000 {
        let (s, sport) = (forged(&mut rng), 1024 + rng.below(60000) as u16);
        let seq = rng.next_u64() as u32;
        storm.push(
            peer.segment(s, sport, 7, seq, 0, flags::RST, 0, &[])
                .frame(),
        );
    }
    for _ in 0..HALF_OPEN {
        let (s, sport) = (forged(&mut rng), 1024 + rng.below(60000) as u16);
        let seq = rng.next_u64() as u32;
        storm.push(
            peer.segment(s, sport, 7, seq, 0, flags::SYN, 65535, &[])
                .frame(),
        );
    }
    for _ in 0..5000 {
        let (s, sport) = (forged(&mut rng), rng.below(65536) as u16);
        let dport = if rng.below(2) == 0 {
            7
        } else {
            rng.below(65536) as u16
        };
        let len = rng.below(65) as usize;
        let seg = peer.segment(
            s,
            sport,
            dport,
            rng.next_u64() as u32,
            rng.next_u64() as u32,
            rng.below(64) as u8,
            rng.below(65536) as u16,
            &rng.bytes(len),
        );
        // A third with random option bytes, a few with a data offset that lies.
        let seg = match rng.below(12) {
            n @ 0..=3 => Segment {
                options: rng.bytes(1 + (n as usize) * 12),
                ..seg
            },
            4 => Segment {
                data_offset: Some(rng.below(16) as u8),
                ..seg
            },
            _ => seg,
        };
        storm.push(if rng.below(4) == 0 {
            seg.frame_with_bad_checksum()
        } else {
            seg.frame()
        });
    }
    let start = std::time::Instant::now();
    let stormed = send_in_batches(&peer.tx, &handle, storm, 200);
    let took = start.elapsed();

    // Our connection lived through it all.
    peer.write(&mut c, b"jkl", 8192).unwrap();
    assert_eq!(peer.read(&mut c, 3, 8192, secs(10)).unwrap(), b"jkl");
    peer.send(&peer.on(&c, flags::RST, 0, &[])).unwrap();

    // Every server is up: the stack answers ping, and a new echo connection works once
    // the half-open ones have timed out.
    let (ok, out) = exec_in(ns.name(), "ping", &["-c", "3", "-w", "10", STACK]);
    assert!(ok && ping_received(&out) == 3, "{out}");
    let (ok, out) = echo_works_again(ns.name());
    assert!(
        ok,
        "no echo after the storm: {out}; tcp: {:?}",
        capture.of("tcp")
    );

    // Nothing past its limit: tcp's socket table (8, the echo application's listening
    // sockets among them), pf's connection table (256, and filled to it by the SYNs).
    let nic = nic_status(&handle);
    let tcp_lines = capture.of("tcp");
    let most_sockets = tcp_lines
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("sockets=")?.parse::<u32>().ok())
        })
        .max()
        .unwrap_or(0);
    assert!(
        (1..=8).contains(&most_sockets),
        "sockets in use at most {most_sockets}: {tcp_lines:?}"
    );
    eprintln!(
        "{forged_on_conn} forged segments on the connection, {stormed} storm frames in {took:?} \
         ({:.0}/s); NIC rx {} dropped {}; tcp rx {} tx {}, at most {most_sockets} sockets",
        stormed as f64 / took.as_secs_f64(),
        nic.rx_packets,
        nic.rx_drops,
        capture.counter("tcp", "rx"),
        capture.counter("tcp", "tx"),
    );
    if with_pf {
        let pf = capture.of("pf");
        let peak = capture.counter("pf", "conns_peak");
        assert_eq!(
            peak,
            256,
            "the SYNs fill the table to its limit: {:?}",
            pf.last()
        );
        assert!(
            capture.counter("pf", "in_table_full") > 0,
            "{:?}",
            pf.last()
        );
        // The table empties as its entries time out (1–3 s here).
        wait_for_empty_pf_table(&capture, &peer);
        eprintln!("pf: {:?}", capture.of("pf").last());
        assert!(capture.counter("pf", "conn_expired") > 0);
    }
    for g in ["driver", "ip", "pf", "tcp", "posix", "echo"] {
        assert!(
            !capture.of(g).iter().any(|l| l.contains("panicked")),
            "{g}: {:?}",
            capture.of(g)
        );
    }
    handle.stop();
    let outcome = waiter.join().unwrap();
    for g in ["driver", "ip", "tcp", "posix", "echo"]
        .into_iter()
        .chain(with_pf.then_some("pf"))
    {
        assert_eq!(
            outcome.state(g),
            Some(&GuestState::Stopped),
            "{g}: {outcome:?}"
        );
    }
}

kvm_test! {
    /// Hostile TCP through ip: out-of-window data, ACKs of unsent data, bad checksums,
    /// SYNs and RSTs on an established connection (raw frames from a forged address),
    /// a zero window, then RST and SYN storms (10⁴ half-open connections) and random
    /// segments. The connection lives through it, every guest stays up, ping and a new
    /// echo connection work afterwards, the socket table stays within its 8.
    fn hostile_tcp_through_ip_leaves_every_server_up_and_every_table_bounded() {
        if !require_netns() {
            return;
        }
        hostile_tcp("hti", false);
    }
}

kvm_test! {
    /// The same through pf: also its connection table fills to its limit (256) and no
    /// further, and empties again as the entries time out.
    fn hostile_tcp_through_pf_leaves_every_server_up_and_every_table_bounded() {
        if !require_netns() {
            return;
        }
        hostile_tcp("htp", true);
    }
}

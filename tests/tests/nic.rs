//! The virtio-net device against a real TAP in a namespace the test creates: a
//! driver written here (register bring-up through the MMIO transport, rings in guest
//! memory) sends a UDP datagram that a socket in the namespace receives, and receives
//! one that a socket there sends, through the device thread, its kicks and its
//! interrupt.

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compart_abi::virtio::*;
use compart_tests::netns::{require_netns, NetNs};
use compart_vmm::devices::virtio::mmio::MmioTransport;
use compart_vmm::devices::virtio::net::{Net, NetConfig};
use compart_vmm::devices::virtio::net_thread::NetThread;
use compart_vmm::devices::virtio::tap::Tap;
use compart_vmm::devices::BusDevice;
use compart_vmm::guest_events::GuestEvents;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const QSIZE: u16 = 16;
const RXQ: u64 = 0x1000;
const TXQ: u64 = 0x4000;
const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const GUEST_IP: [u8; 4] = [198, 18, 0, 2];
const HOST_IP: [u8; 4] = [198, 18, 0, 1];

fn efd() -> Arc<EventFd> {
    Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
}

fn wr(t: &mut MmioTransport<Net>, off: u64, v: u32) {
    t.write(0, off, &v.to_le_bytes());
}

fn rd(t: &mut MmioTransport<Net>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(0, off, &mut b);
    u32::from_le_bytes(b)
}

/// What a driver does at start: status, features, both queues, DRIVER_OK.
fn bring_up(t: &mut MmioTransport<Net>, features: u64) {
    assert_eq!(rd(t, MMIO_MAGIC_VALUE), MAGIC);
    wr(t, MMIO_STATUS, STATUS_ACKNOWLEDGE);
    wr(t, MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(t, MMIO_DEVICE_FEATURES_SEL, 1);
    let offered = u64::from(rd(t, MMIO_DEVICE_FEATURES)) << 32;
    wr(t, MMIO_DEVICE_FEATURES_SEL, 0);
    let offered = offered | u64::from(rd(t, MMIO_DEVICE_FEATURES));
    assert_eq!(offered & features, features, "offered {offered:#x}");
    wr(t, MMIO_DRIVER_FEATURES_SEL, 0);
    wr(t, MMIO_DRIVER_FEATURES, features as u32);
    wr(t, MMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    wr(t, MMIO_STATUS, s);
    assert_eq!(rd(t, MMIO_STATUS), s);
    for (q, base) in [(RX_QUEUE, RXQ), (TX_QUEUE, TXQ)] {
        wr(t, MMIO_QUEUE_SEL, u32::from(q));
        wr(t, MMIO_QUEUE_NUM, u32::from(QSIZE));
        wr(t, MMIO_QUEUE_DESC_LOW, base as u32);
        wr(t, MMIO_QUEUE_DRIVER_LOW, base as u32 + 0x400);
        wr(t, MMIO_QUEUE_DEVICE_LOW, base as u32 + 0x800);
        wr(t, MMIO_QUEUE_READY, 1);
    }
    wr(t, MMIO_STATUS, s | STATUS_DRIVER_OK);
    assert_eq!(rd(t, MMIO_STATUS), s | STATUS_DRIVER_OK);
}

fn desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16) {
    let d = Descriptor {
        addr,
        len,
        flags,
        next: 0,
    };
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&d.addr.to_le_bytes());
    b[8..12].copy_from_slice(&d.len.to_le_bytes());
    b[12..14].copy_from_slice(&d.flags.to_le_bytes());
    mem.write_slice(&b, GuestAddress(table + 16 * u64::from(i)))
        .unwrap();
}

fn offer(mem: &GuestMemoryMmap, table: u64, head: u16) {
    let avail = GuestAddress(table + 0x400);
    let idx: u16 = mem.read_obj(GuestAddress(avail.0 + 2)).unwrap();
    let slot = u64::from(idx % QSIZE);
    mem.write_obj(head, GuestAddress(avail.0 + 4 + 2 * slot))
        .unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(avail.0 + 2))
        .unwrap();
}

fn used_idx(mem: &GuestMemoryMmap, table: u64) -> u16 {
    mem.read_obj(GuestAddress(table + 0x800 + 2)).unwrap()
}

fn used_elem(mem: &GuestMemoryMmap, table: u64, i: u16) -> (u32, u32) {
    let e = table + 0x800 + 4 + 8 * u64::from(i % QSIZE);
    (
        mem.read_obj(GuestAddress(e)).unwrap(),
        mem.read_obj(GuestAddress(e + 4)).unwrap(),
    )
}

/// Ethernet + IPv4 + UDP, checksum 0 (none) for UDP.
fn udp_frame(payload: &[u8], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&HOST_IP);
    let sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn frames_cross_a_real_tap_both_ways_through_the_device_thread() {
    if !require_netns() {
        return;
    }
    let ns = NetNs::new("nic").unwrap();
    let tap = Tap::open_in("cpt0", Some(ns.name())).unwrap();
    ns.ip(&["link", "set", "cpt0", "address", "02:00:00:00:00:01"])
        .unwrap();
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "cpt0"])
        .unwrap();
    ns.ip(&["link", "set", "cpt0", "up"]).unwrap();
    ns.ip(&[
        "neigh",
        "add",
        "198.18.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "cpt0",
    ])
    .unwrap();

    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (irq, kicks, wake) = (efd(), [efd(), efd()], efd());
    let net = Net::new(
        NetConfig {
            name: "cpt0".into(),
            mac: GUEST_MAC,
            mtu: 1500,
            queue_size: QSIZE,
            offloads: u32::MAX,
        },
        Box::new(tap),
        irq.clone(),
        kicks.clone(),
        wake.clone(),
        Arc::new(GuestEvents::new("test")),
    );
    let counters = net.counters();
    let device = Arc::new(Mutex::new(MmioTransport::new(
        net,
        mem.clone(),
        Arc::new(GuestEvents::new("test")),
    )));
    let mut thread = NetThread::spawn(device.clone(), kicks.clone(), wake, Vec::new()).unwrap();
    bring_up(
        &mut device.lock().unwrap(),
        feature(F_VERSION_1) | feature(F_MAC) | feature(F_RING_EVENT_IDX),
    );

    ns.run_in(|| {
        // Guest → namespace.
        let sock = UdpSocket::bind("198.18.0.1:9999").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = vec![0u8; NET_HDR_SIZE];
        out.extend(udp_frame(b"from the guest", 7777, 9999));
        mem.write_slice(&out, GuestAddress(0x10000)).unwrap();
        desc(&mem, TXQ, 0, 0x10000, out.len() as u32, 0);
        offer(&mem, TXQ, 0);
        kicks[1].write(1).unwrap();
        let mut got = [0u8; 64];
        let (n, from) = sock.recv_from(&mut got).unwrap();
        assert_eq!(&got[..n], b"from the guest");
        assert_eq!(from.to_string(), "198.18.0.2:7777");
        wait_until("the transmit chain comes back", || used_idx(&mem, TXQ) == 1);

        // Namespace → guest: post receive buffers, kick, send.
        for i in 0..4u16 {
            desc(
                &mem,
                RXQ,
                i,
                0x20000 + 0x1000 * u64::from(i),
                0x1000,
                DESC_F_WRITE,
            );
            offer(&mem, RXQ, i);
        }
        kicks[0].write(1).unwrap();
        sock.send_to(b"to the guest", "198.18.0.2:7777").unwrap();
        // The kernel may also send its own frames (IPv6 router solicitations, say):
        // look at every frame received until the datagram is among them.
        let mut seen = 0;
        let mut found = false;
        wait_until("the datagram reaches a receive buffer", || {
            while seen < used_idx(&mem, RXQ) {
                let (id, len) = used_elem(&mem, RXQ, seen);
                seen += 1;
                let mut f = vec![0u8; len as usize];
                mem.read_slice(&mut f, GuestAddress(0x20000 + 0x1000 * u64::from(id)))
                    .unwrap();
                let hdr = NetHdr::from_bytes(f[..NET_HDR_SIZE].try_into().unwrap());
                assert_eq!(hdr.num_buffers, 1);
                let eth = &f[NET_HDR_SIZE..];
                if eth.len() > 42 && eth[12..14] == [8, 0] && eth[23] == 17 {
                    assert_eq!(eth[0..6], GUEST_MAC);
                    assert_eq!(&eth[36..38], &7777u16.to_be_bytes());
                    assert_eq!(&eth[42..], b"to the guest");
                    found = true;
                }
            }
            found
        });
    })
    .unwrap();

    // The interrupt fired (used_event stayed 0, so the first used buffer of each
    // queue asked for one), and the counters saw both frames.
    assert!(irq.read().unwrap() >= 2);
    let c = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(c(&counters.tx_packets), 1);
    assert!(c(&counters.rx_packets) >= 1);
    assert_eq!(c(&counters.bad_chains), 0);
    assert!(c(&counters.notifications) >= 1);
    assert!(c(&counters.interrupts) >= 2);
    thread.stop();
    drop(ns);
}

#[test]
fn a_nic_in_a_namespace_the_vmm_creates_is_wired_reported_and_removed_with_it() {
    if !compart_tests::require_kvm() || !require_netns() {
        return;
    }
    let ns = format!("cpt-rt-{}", std::process::id());
    let t = compart_tests::topology(&format!(
        "[[guest]]\nname = \"drv\"\nrole = \"driver\"\nimage = \"idle\"\n\
         [[guest]]\nname = \"ip\"\nrole = \"ip\"\nimage = \"idle\"\n\
         [[channel]]\na = \"drv\"\nb = \"ip\"\n\
         [[nic]]\nguest = \"drv\"\ntap = \"cpt1\"\nnetns = \"{ns}\"\n\
         peer_address = \"198.18.1.1/24\"\naddress = \"198.18.1.2/24\"\n"
    ));
    let capture = compart_tests::Capture::default();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
    capture.wait_for("drv", "idle", Duration::from_secs(10));
    let handle = vmm.handle();
    let addr = std::process::Command::new("ip")
        .args(["-n", &ns, "-o", "addr", "show", "dev", "cpt1"])
        .output()
        .unwrap();
    let addr = String::from_utf8_lossy(&addr.stdout).to_string();
    assert!(addr.contains("198.18.1.1/24"), "{addr}");
    let waiter = std::thread::spawn(move || vmm.wait());
    let status = handle
        .request(compart_vmm::ControlRequest::Status, Duration::from_secs(10))
        .unwrap();
    let compart_vmm::ControlResponse::Status(report) = status else {
        panic!("{status:?}")
    };
    let nic = &report.guests[0].nics[0];
    assert_eq!(nic.name, "cpt1");
    assert_eq!(nic.netns.as_deref(), Some(ns.as_str()));
    assert!(!nic.active, "the idle image drives nothing");
    assert!(nic.running);
    assert!(nic.thread_tid > 0);
    assert!(report.guests[1].nics.is_empty());
    handle.stop();
    waiter.join().unwrap();
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&ns),
        "the namespace compart created is gone"
    );
}

/// The MAC of interface `dev` in `ns`, from `ip -o link show`.
fn mac_of(ns: &NetNs, dev: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-o", "link", "show", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let after = text.split("link/ether ").nth(1).expect("an Ethernet link");
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(after[..17].split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

#[test]
fn a_host_interface_is_attached_through_a_macvtap_that_goes_with_the_vmm() {
    if !require_netns() {
        return;
    }
    let ns = NetNs::new("mvt").unwrap();
    // cve0 stands in for the host's NIC; cve1 is the wire's other end.
    ns.add_veth("cve0", "cve1").unwrap();
    ns.ip(&["addr", "add", "198.18.2.1/24", "dev", "cve1"])
        .unwrap();
    ns.ip(&[
        "neigh",
        "add",
        "198.18.2.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "cve1",
    ])
    .unwrap();
    let t = compart_tests::topology(&format!(
        "[[guest]]\nname = \"drv\"\nrole = \"driver\"\nimage = \"idle\"\n\
         [[nic]]\nguest = \"drv\"\nhost_interface = \"cve0\"\nnetns = \"{}\"\n\
         mac = \"02:00:00:00:00:02\"\n",
        ns.name()
    ));
    let (host, mut backends) = compart_vmm::host_net::HostNet::open(&t).unwrap();
    let links = |kind: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", ns.name(), "-o", "link", "show", "type", kind])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(links("macvtap").contains("@cve0"), "{}", links("macvtap"));
    let tap = &mut backends[0];

    // Out through the macvtap and cve0 to a socket on cve1's address.
    let peer_mac = mac_of(&ns, "cve1");
    let got = ns
        .run_in(|| {
            let sock = UdpSocket::bind("198.18.2.1:9999").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut f = vec![0u8; NET_HDR_SIZE];
            let mut eth = udp_frame(b"via macvtap", 7777, 9999);
            eth[0..6].copy_from_slice(&peer_mac);
            // udp_frame addresses 198.18.0.x; use this test's network.
            eth[26..30].copy_from_slice(&[198, 18, 2, 2]);
            eth[30..34].copy_from_slice(&[198, 18, 2, 1]);
            eth[24..26].copy_from_slice(&[0, 0]);
            let sum: u32 = eth[14..34]
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            let sum = (sum & 0xffff) + (sum >> 16);
            let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
            eth[24..26].copy_from_slice(&sum.to_be_bytes());
            f.extend(eth);
            tap.send(&f).unwrap();
            let mut buf = [0u8; 64];
            let n = sock.recv(&mut buf).unwrap();
            // And back: a datagram to the guest's address arrives on the macvtap.
            sock.send_to(b"to the macvtap", "198.18.2.2:7777").unwrap();
            buf[..n].to_vec()
        })
        .unwrap();
    assert_eq!(got, b"via macvtap");
    let mut buf = vec![0u8; 70000];
    let mut found = false;
    wait_until("the datagram reaches the macvtap", || {
        while let Ok(n) = tap.recv(&mut buf) {
            let eth = &buf[NET_HDR_SIZE..n];
            found |= eth.len() > 42 && eth[12..14] == [8, 0] && &eth[42..] == b"to the macvtap";
        }
        found
    });
    drop(backends);
    drop(host);
    assert!(!links("macvtap").contains("@cve0"), "the macvtap is gone");
}

#[test]
fn a_guest_reads_its_nic_through_mmio_exits_and_its_ip_server_gets_the_address() {
    if !compart_tests::require_kvm() || !require_netns() {
        return;
    }
    let ns = NetNs::new("mmio").unwrap();
    let t = compart_tests::topology(&format!(
        "[[guest]]\nname = \"drv\"\nrole = \"driver\"\nimage = \"selftest\"\ncmdline = \"nic-misuse halt\"\ncores = [1]\n\
         [[guest]]\nname = \"ip\"\nrole = \"ip\"\nimage = \"selftest\"\ncmdline = \"nic halt\"\n\
         [[channel]]\na = \"drv\"\nb = \"ip\"\n\
         [[nic]]\nguest = \"drv\"\ntap = \"cpt3\"\nnetns = \"{}\"\nmac = \"02:00:00:00:03:02\"\n\
         mtu = 9000\nqueue_size = 128\naddress = \"198.18.3.2/24\"\ngateway = \"198.18.3.1\"\n",
        ns.name()
    ));
    let capture = compart_tests::Capture::default();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
    let handle = vmm.handle();
    let waiter = std::thread::spawn(move || vmm.wait());
    capture.wait_for("drv", "misused", Duration::from_secs(20));
    capture.wait_for("ip", "ipv4:", Duration::from_secs(20));
    let drv = capture.of("drv").join("\n");
    assert!(
        drv.contains("nic 0: window 0xd0000000+0x1000 vector 0x50 queue 128 boot-info mac [02, 00, 00, 00, 03, 02] mtu 9000"),
        "{drv}"
    );
    assert!(
        drv.contains("nic 0: magic 0x74726976 version 2 device 1 vendor 0x54525043 features 0x1"),
        "{drv}"
    );
    assert!(
        drv.contains("config mac [02, 00, 00, 00, 03, 02] mtu 9000"),
        "{drv}"
    );
    let ip = capture.of("ip").join("\n");
    assert!(ip.contains("nics: 0"), "{ip}");
    assert!(
        ip.contains("ipv4: [198, 18, 3, 2]/24 gateway Some([198, 18, 3, 1]) routes 0"),
        "{ip}"
    );
    let status = handle
        .request(compart_vmm::ControlRequest::Status, Duration::from_secs(10))
        .unwrap();
    let compart_vmm::ControlResponse::Status(report) = status else {
        panic!("{status:?}")
    };
    let g = &report.guests[0];
    assert_eq!(g.nics[0].refused_accesses, 3, "{:?}", g.nics[0]);
    assert_eq!(g.events.refused_device_accesses, 3);
    assert!(!g.nics[0].active);
    // The device thread runs where its driver guest runs, and moves with it.
    let tid = g.nics[0].thread_tid;
    assert_eq!(compart_tests::thread_affinity(std::process::id(), tid), "1");
    handle
        .request(
            compart_vmm::ControlRequest::Move {
                guest: "drv".into(),
                cores: vec![compart_vmm::host::HostCore(0)],
            },
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(compart_tests::thread_affinity(std::process::id(), tid), "0");
    handle.stop();
    let outcome = waiter.join().unwrap();
    assert_eq!(outcome.exit_code(), 0, "{outcome:?}");
}

#[test]
fn the_example_wire_topology_is_valid_and_feeds_its_ip_server() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/wire.toml");
    let t = compart_vmm::Topology::load(&path, &compart_vmm::host_facts()).unwrap();
    assert_eq!(t.nics_of(0), vec![0]);
    let ip = t.ipv4_of(1).unwrap();
    assert_eq!(ip.address.to_string(), "198.18.0.2/24");
}

#[test]
fn a_nics_thread_stops_when_its_driver_guest_ends() {
    if !compart_tests::require_kvm() || !require_netns() {
        return;
    }
    let ns = NetNs::new("end").unwrap();
    let t = compart_tests::topology(&format!(
        "[[guest]]\nname = \"drv\"\nrole = \"driver\"\nimage = \"selftest\"\ncmdline = \"exit=0\"\n\
         on_failure = \"stop-guest\"\n\
         [[guest]]\nname = \"other\"\nrole = \"app\"\nimage = \"idle\"\n\
         [[nic]]\nguest = \"drv\"\ntap = \"cpt4\"\nnetns = \"{}\"\n",
        ns.name()
    ));
    let capture = compart_tests::Capture::default();
    let vmm = compart_vmm::start(&t, capture.sink()).unwrap();
    let handle = vmm.handle();
    let waiter = std::thread::spawn(move || vmm.wait());
    compart_tests::poll(Duration::from_secs(10), "the NIC thread stops", || {
        let Ok(compart_vmm::ControlResponse::Status(r)) =
            handle.request(compart_vmm::ControlRequest::Status, Duration::from_secs(10))
        else {
            return None;
        };
        (!r.guests[0].nics[0].running).then_some(())
    });
    handle.stop();
    waiter.join().unwrap();
}

//! Two tcp cores over host channel regions, with the test playing ip between them: it
//! forwards each `Send` of one as a `Deliver` to the other (only while the other has
//! credit, so nothing is dropped), and answers `Send` `Done` once forwarded.
extern crate std;

use alloc::vec;
use alloc::vec::Vec;

use compart_channel::host::SharedMemory;
use compart_channel::{initialize, ChannelError, Endpoint, NoKick, PairConfig, PairLayout, Side};
use compart_proto::packet::{self, DropReason, PacketMeta};
use proptest::prelude::*;
use smoltcp::socket::tcp::State;
use smoltcp::wire::{IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpPacket};

use crate::testing::EchoPeer;
use crate::{ConfigQuery, Error, Iface, Instant, Limits, Tcp};

const A: [u8; 4] = [198, 18, 0, 2];
const B: [u8; 4] = [198, 18, 0, 3];

/// A channel: ip's endpoint (side A) and tcp's (side B).
fn pair(name: &str, max_outstanding: u32) -> (SharedMemory, Endpoint<NoKick>, Endpoint<NoKick>) {
    pair_sized(name, max_outstanding, 2048)
}

fn pair_sized(
    name: &str,
    max_outstanding: u32,
    buf_size: u32,
) -> (SharedMemory, Endpoint<NoKick>, Endpoint<NoKick>) {
    let config = PairConfig::new(64, max_outstanding, buf_size);
    let size = PairLayout::new(&config).unwrap().size();
    let mem = SharedMemory::create(name, size.next_multiple_of(4096)).unwrap();
    initialize(&mem.region(), &config).unwrap();
    let ip = Endpoint::attach(mem.region(), Side::A, NoKick).unwrap();
    let tcp = Endpoint::attach(mem.region(), Side::B, NoKick).unwrap();
    (mem, ip, tcp)
}

fn core(ep: Endpoint<NoKick>, address: [u8; 4], seed: u64) -> Tcp<NoKick> {
    core_with(ep, address, seed, Limits::default(), false)
}

fn core_with(
    ep: Endpoint<NoKick>,
    address: [u8; 4],
    seed: u64,
    limits: Limits,
    tx_checksum_offload: bool,
) -> Tcp<NoKick> {
    let iface = Iface {
        address,
        prefix_len: 24,
        mtu: 1500,
        tx_checksum_offload,
        tso: false,
    };
    Tcp::new(ep, iface, limits, Instant::from_millis(0), seed)
}

/// A packet on its way from one side to the other, held while the other has no credit.
struct Held {
    req: compart_channel::Request,
    /// Passed on as it came: a partial checksum is completed by the receiving device.
    meta: PacketMeta,
    bytes: Vec<u8>,
}

struct Wire {
    _mem: Vec<SharedMemory>,
    /// ip's endpoints towards core 0 and core 1.
    ip: [Endpoint<NoKick>; 2],
    held: [Option<Held>; 2],
    /// Forwarded packets, per direction (0 → 1, 1 → 0).
    forwarded: [u64; 2],
    /// Deliveries answered other than `Done`.
    refused: u64,
    /// Packets sent with a partial checksum.
    partial: u64,
    /// Packets sent as TCP super-segments (checked: segment size, header length).
    gso: u64,
}

impl Wire {
    /// Move what each side sent to the other; returns whether anything moved.
    fn pump(&mut self) -> bool {
        let mut busy = false;
        for to in 0..2 {
            while let Some(r) = self.ip[to].poll_reply().unwrap() {
                if packet::Reply::decode(r.status(), r.inline()) != Ok(packet::Reply::Done) {
                    self.refused += 1;
                }
                self.ip[to].free(r).unwrap();
                busy = true;
            }
        }
        for from in 0..2 {
            let to = 1 - from;
            loop {
                let held = match self.held[from].take() {
                    Some(h) => h,
                    None => {
                        let Some(req) = self.ip[from].poll_request().unwrap() else {
                            break;
                        };
                        let d =
                            packet::Request::decode(req.opcode(), req.is_oneway(), req.inline());
                        let Ok(packet::Request::Send(meta)) = d else {
                            panic!("tcp sends only Send: {d:?}");
                        };
                        if meta.gso == compart_proto::frame::Gso::TcpV4 {
                            assert_eq!(meta.gso_size, 1460);
                            assert_eq!((meta.csum_start, meta.hdr_len), (20, 40));
                            assert!(req.payload_len() > 1500);
                            self.gso += 1;
                        } else {
                            assert_eq!(meta.gso, compart_proto::frame::Gso::None);
                            assert!(req.payload_len() <= 1500);
                        }
                        if meta.flags & packet::FLAG_NEEDS_CSUM != 0 {
                            self.partial += 1;
                        }
                        let mut bytes = vec![0; req.payload_len()];
                        self.ip[from]
                            .read_request_payload(&req, &mut bytes)
                            .unwrap();
                        Held { req, meta, bytes }
                    }
                };
                let (op, w) = packet::Request::Deliver(held.meta).encode();
                match self.ip[to].send_request(op, w, &held.bytes) {
                    Ok(_) => {}
                    Err(ChannelError::NoFreeRequest | ChannelError::Full) => {
                        self.held[from] = Some(held);
                        break;
                    }
                    Err(e) => panic!("{e:?}"),
                }
                let (s, w) = packet::Reply::Done.encode();
                self.ip[from].reply(held.req, s, w, &[]).unwrap();
                self.forwarded[from] += 1;
                busy = true;
            }
        }
        busy
    }
}

struct Rig {
    wire: Wire,
    tcp: [Tcp<NoKick>; 2],
    now: u64,
}

fn rig(max_outstanding: u32) -> Rig {
    rig_with(max_outstanding, Limits::default(), false)
}

/// A rig whose core 0 has `limits`, both cores leaving TCP checksums to "ip" if
/// `tx_csum`.
fn rig_with(max_outstanding: u32, limits: Limits, tx_csum: bool) -> Rig {
    let (m0, ip0, t0) = pair("tcp-a", max_outstanding);
    let (m1, ip1, t1) = pair("tcp-b", max_outstanding);
    Rig {
        wire: Wire {
            _mem: vec![m0, m1],
            ip: [ip0, ip1],
            held: [None, None],
            forwarded: [0, 0],
            refused: 0,
            partial: 0,
            gso: 0,
        },
        tcp: [
            core_with(t0, A, 1, limits, tx_csum),
            core_with(t1, B, 2, Limits::default(), tx_csum),
        ],
        now: 0,
    }
}

impl Rig {
    /// One round: both cores, then the wire; time advances 1 ms a round.
    fn round(&mut self) {
        self.step(1);
    }

    /// One round, then time advances `ms`.
    fn step(&mut self, ms: u64) {
        let t = Instant::from_millis(self.now as i64);
        self.tcp[0].poll(t);
        self.tcp[1].poll(t);
        self.wire.pump();
        self.now += ms;
    }
}

#[test]
fn a_closed_connection_whose_peer_never_closes_is_aborted_after_its_linger_time() {
    let mut r = rig(16);
    let l = r.tcp[0].listen(80, 1).unwrap();
    let c = r.tcp[1].connect(A, 80).unwrap();
    let mut s = Err(Error::Again);
    for _ in 0..100 {
        r.round();
        s = r.tcp[0].accept(l);
        if s.is_ok() {
            break;
        }
    }
    let s = s.expect("accepted");
    assert!(!r.tcp[0].ready(l).unwrap().readable);
    assert_eq!(r.tcp[1].send(c, b"hello"), Ok(5));
    let in_use = r.tcp[1].sockets_in_use();
    r.tcp[1].close(c).unwrap();
    for _ in 0..100 {
        r.round();
    }
    // Our FIN was acknowledged; the peer keeps its side open (and unread).
    let mut buf = [0; 16];
    assert_eq!(r.tcp[0].recv(s, &mut buf), Ok(5));
    assert_eq!(r.tcp[0].recv(s, &mut buf), Ok(0));
    assert_eq!(r.tcp[0].state(s), Ok(State::CloseWait));
    assert_eq!(r.tcp[1].sockets_in_use(), in_use);
    // 59 s later it still lingers; after 60 s it is aborted, the peer sees the reset.
    for _ in 0..590 {
        r.step(100);
    }
    assert_eq!(r.tcp[1].sockets_in_use(), in_use);
    for _ in 0..30 {
        r.step(100);
    }
    assert_eq!(r.tcp[1].sockets_in_use(), in_use - 1);
    assert_eq!(r.tcp[0].send(s, b"x"), Err(Error::ConnReset));
    assert!(r.tcp[0].ready(s).unwrap().error);
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 11)) as u8
}

#[test]
fn a_few_mib_stream_through_an_echo_comes_back_intact() {
    const LEN: usize = 3 * 1024 * 1024;
    let mut r = rig(16);
    let mut echo = EchoPeer::new(&mut r.tcp[0], 7);
    let c = r.tcp[1].connect(A, 7).unwrap();
    let (mut sent, mut got) = (0usize, 0usize);
    let mut buf = vec![0; 8192];
    let chunk: Vec<u8> = (0..LEN).map(pattern).collect();
    for _ in 0..200_000 {
        r.round();
        echo.step(&mut r.tcp[0]);
        if sent < LEN {
            match r.tcp[1].send(c, &chunk[sent..LEN.min(sent + 8192)]) {
                Ok(n) => sent += n,
                Err(Error::Again) => {}
                Err(e) => panic!("send: {e:?}"),
            }
        }
        loop {
            match r.tcp[1].recv(c, &mut buf) {
                Ok(0) => panic!("end of stream before all came back"),
                Ok(n) => {
                    for (k, b) in buf[..n].iter().enumerate() {
                        assert_eq!(*b, pattern(got + k), "byte {}", got + k);
                    }
                    got += n;
                }
                Err(Error::Again) => break,
                Err(e) => panic!("recv: {e:?}"),
            }
        }
        if got == LEN {
            break;
        }
    }
    assert_eq!(got, LEN, "sent {sent}");
    assert_eq!(echo.connections(), 1);
    // Nothing was lost between the servers: no delivery refused, no send dropped.
    assert_eq!(r.wire.refused, 0);
    for t in &mut r.tcp {
        let c = t.device().counters();
        assert_eq!(
            (c.rx_malformed, c.tx_dropped_by_ip, c.tx_too_big),
            (0, 0, 0)
        );
    }
    assert!(r.wire.forwarded[1] > (LEN / 1460) as u64);

    // Client closes; the echo sees the end and closes; the client reads the end, and
    // its socket goes through TIME-WAIT to closed and is reaped.
    r.tcp[1].shutdown(c).unwrap();
    let mut eof = false;
    for _ in 0..1000 {
        r.round();
        echo.step(&mut r.tcp[0]);
        if r.tcp[1].recv(c, &mut buf) == Ok(0) {
            eof = true;
            break;
        }
    }
    assert!(eof);
    assert_eq!(echo.connections(), 0);
    assert_eq!(r.tcp[1].state(c), Ok(State::TimeWait));
    let before = r.tcp[1].sockets_in_use();
    r.tcp[1].close(c).unwrap();
    assert_eq!(r.tcp[1].recv(c, &mut buf), Err(Error::BadHandle));
    for _ in 0..12_000 {
        r.round();
    }
    assert_eq!(r.tcp[1].sockets_in_use(), before - 1);
}

#[test]
fn with_transmit_checksums_offloaded_segments_go_partial_and_are_completed_on_receipt() {
    const LEN: usize = 1024 * 1024;
    let mut r = rig_with(16, Limits::default(), true);
    let mut echo = EchoPeer::new(&mut r.tcp[0], 7);
    let c = r.tcp[1].connect(A, 7).unwrap();
    let data: Vec<u8> = (0..LEN).map(pattern).collect();
    let (mut sent, mut back) = (0, Vec::new());
    let mut buf = vec![0; 8192];
    for _ in 0..100_000 {
        r.round();
        echo.step(&mut r.tcp[0]);
        if let Ok(n) = r.tcp[1].send(c, &data[sent..]) {
            sent += n;
        }
        while let Ok(n) = r.tcp[1].recv(c, &mut buf) {
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        if back.len() == LEN {
            break;
        }
    }
    assert!(back == data, "{} of {LEN} bytes came back", back.len());
    // Every segment went partial (the handshake too), and each one's checksum,
    // completed by the receiving device, passed smoltcp's check.
    let total = r.wire.forwarded[0] + r.wire.forwarded[1];
    assert_eq!(r.wire.partial, total);
    assert!(total > 2 * (LEN / 1460) as u64);
}

#[test]
fn with_tso_super_segments_go_down_whole_with_their_segment_size() {
    const LEN: usize = 2 * 1024 * 1024;
    let (m0, ip0, t0) = pair_sized("tcp-tso-a", 16, 65600);
    let (m1, ip1, t1) = pair_sized("tcp-tso-b", 16, 65600);
    let iface = |address| Iface {
        address,
        prefix_len: 24,
        mtu: 1500,
        tx_checksum_offload: true,
        tso: true,
    };
    let limits = Limits {
        rx_buffer: 256 * 1024,
        tx_buffer: 256 * 1024,
        ..Limits::default()
    };
    let t = Instant::from_millis(0);
    let mut r = Rig {
        wire: Wire {
            _mem: vec![m0, m1],
            ip: [ip0, ip1],
            held: [None, None],
            forwarded: [0, 0],
            refused: 0,
            partial: 0,
            gso: 0,
        },
        tcp: [
            Tcp::new(t0, iface(A), limits.clone(), t, 1),
            Tcp::new(t1, iface(B), limits, t, 2),
        ],
        now: 0,
    };
    let l = r.tcp[0].listen(80, 1).unwrap();
    let c = r.tcp[1].connect(A, 80).unwrap();
    let data: Vec<u8> = (0..LEN).map(pattern).collect();
    let (mut sent, mut got, mut s) = (0, Vec::new(), None);
    let mut buf = vec![0; 65536];
    for _ in 0..100_000 {
        r.round();
        if s.is_none() {
            s = r.tcp[0].accept(l).ok();
        }
        if let Ok(n) = r.tcp[1].send(c, &data[sent..]) {
            sent += n;
        }
        if let Some(s) = s {
            while let Ok(n) = r.tcp[0].recv(s, &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        if got.len() == LEN {
            break;
        }
    }
    assert!(got == data, "{} of {LEN} bytes arrived", got.len());
    // Far fewer packets than MSS-sized segments: the sender's went down whole.
    assert!(
        r.wire.forwarded[1] < (LEN / 1460 / 4) as u64,
        "{} packets for {LEN} bytes",
        r.wire.forwarded[1]
    );
    assert!(r.wire.gso > 0);
}

#[test]
fn a_connect_to_a_closed_port_is_refused_by_rst() {
    let mut r = rig(16);
    let c = r.tcp[1].connect(A, 9).unwrap();
    let mut result = Err(Error::Again);
    for _ in 0..100 {
        r.round();
        result = r.tcp[1].send(c, b"x");
        if result != Err(Error::Again) {
            break;
        }
    }
    assert_eq!(result, Err(Error::ConnRefused));
    assert!(r.tcp[1].ready(c).unwrap().error);
    assert_eq!(r.tcp[1].recv(c, &mut [0; 4]), Err(Error::ConnRefused));
}

#[test]
fn a_small_window_of_credit_slows_the_stream_but_loses_nothing() {
    // Two outstanding requests per side: the devices run out of credit all the time.
    let mut r = rig(2);
    let mut echo = EchoPeer::new(&mut r.tcp[0], 7);
    let c = r.tcp[1].connect(A, 7).unwrap();
    let data: Vec<u8> = (0..200_000).map(pattern).collect();
    let (mut sent, mut back) = (0, Vec::new());
    let mut buf = vec![0; 4096];
    for _ in 0..100_000 {
        r.round();
        echo.step(&mut r.tcp[0]);
        if let Ok(n) = r.tcp[1].send(c, &data[sent..]) {
            sent += n;
        }
        while let Ok(n) = r.tcp[1].recv(c, &mut buf) {
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        if back.len() == data.len() {
            break;
        }
    }
    assert!(
        back == data,
        "{} of {} bytes came back",
        back.len(),
        data.len()
    );
    assert_eq!(r.wire.refused, 0);
}

#[test]
fn handles_are_checked_and_the_table_is_bounded() {
    let mut r = rig(16);
    let l = r.tcp[0].listen(80, 4).unwrap();
    assert_eq!(r.tcp[0].listen(80, 1), Err(Error::AddrInUse));
    assert_eq!(r.tcp[0].listen(0, 1), Err(Error::Invalid));
    assert_eq!(r.tcp[0].send(l, b"x"), Err(Error::BadHandle));
    assert_eq!(r.tcp[0].accept(l), Err(Error::Again));
    assert_eq!(
        r.tcp[0].accept(crate::Handle(l.0 ^ 1 << 16)),
        Err(Error::BadHandle)
    );
    let mut opened = Vec::new();
    loop {
        match r.tcp[0].connect(B, 1000) {
            Ok(h) => opened.push(h),
            Err(e) => {
                assert_eq!(e, Error::NoBuffers);
                break;
            }
        }
    }
    assert_eq!(r.tcp[0].sockets_in_use(), Limits::default().sockets);
    assert_eq!(opened.len(), Limits::default().sockets - 4);
    // A closed handle is not reused by its generation.
    r.tcp[0].close(opened[0]).unwrap();
    assert_eq!(r.tcp[0].close(opened[0]), Err(Error::BadHandle));
}

#[test]
fn a_backlog_that_shrank_while_the_table_was_full_grows_back() {
    let limits = Limits {
        sockets: 3,
        linger_ms: 1000,
        ..Limits::default()
    };
    let mut r = rig_with(16, limits, false);
    let l = r.tcp[0].listen(80, 2).unwrap();
    let accept = |r: &mut Rig| {
        let c = r.tcp[1].connect(A, 80).unwrap();
        for _ in 0..50 {
            r.round();
            if let Ok(h) = r.tcp[0].accept(l) {
                return (c, h);
            }
        }
        panic!("not accepted");
    };
    let (_c1, s1) = accept(&mut r);
    let (_c2, _s2) = accept(&mut r);
    // 2 accepted, 1 listening: the table is full, the backlog shrank to one.
    assert_eq!(r.tcp[0].sockets_in_use(), 3);
    r.tcp[0].close(s1).unwrap();
    for _ in 0..3000 {
        r.round();
    }
    // s1's socket is gone (aborted after its linger time: its peer never closed), and
    // the listener has two listening sockets again: two clients can complete at once.
    assert_eq!(r.tcp[0].sockets_in_use(), 3);
    let c3 = r.tcp[1].connect(A, 80).unwrap();
    let c4 = r.tcp[1].connect(A, 80).unwrap();
    for _ in 0..50 {
        r.round();
    }
    assert_eq!(r.tcp[1].state(c3), Ok(State::Established));
    assert_eq!(r.tcp[1].state(c4), Ok(State::Established));
    assert!(r.tcp[0].accept(l).is_ok());
}

fn tcp_syn(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    tcp_syn_from(src, 40000, dst, dport)
}

fn tcp_syn_from(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    let repr = Ipv4Repr {
        src_addr: Ipv4Address::from(src),
        dst_addr: Ipv4Address::from(dst),
        next_header: IpProtocol::Tcp,
        payload_len: 20,
        hop_limit: 64,
    };
    let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
    repr.emit(&mut ip, &smoltcp::phy::ChecksumCapabilities::default());
    let mut t = TcpPacket::new_unchecked(&mut p[20..]);
    t.set_src_port(sport);
    t.set_dst_port(dport);
    t.set_seq_number(smoltcp::wire::TcpSeqNumber(1000));
    t.set_header_len(20);
    t.set_syn(true);
    t.set_window_len(1000);
    t.fill_checksum(
        &smoltcp::wire::IpAddress::from(Ipv4Address::from(src)),
        &smoltcp::wire::IpAddress::from(Ipv4Address::from(dst)),
    );
    p
}

/// Connects core 1 to core 0's port 80; whether it is established within 100 rounds.
fn connects(r: &mut Rig) -> bool {
    let c = r.tcp[1].connect(A, 80).unwrap();
    for _ in 0..100 {
        r.round();
        if r.tcp[1].state(c) == Ok(State::Established) {
            let _ = r.tcp[1].close(c);
            return true;
        }
    }
    let _ = r.tcp[1].close(c);
    false
}

#[test]
fn half_open_connections_hold_a_listener_only_until_their_handshake_times_out() {
    let limits = Limits {
        handshake_ms: 5000,
        ..Limits::default()
    };
    let mut r = rig_with(16, limits, false);
    let l = r.tcp[0].listen(80, 2).unwrap();
    assert!(connects(&mut r), "a first connection");
    for _ in 0..5 {
        r.round();
    }
    let _ = r.tcp[0].accept(l).unwrap();
    // Two SYNs from an address that never answers (its SYN-ACKs go nowhere): both
    // listening sockets wait in SYN-RECEIVED, and the next client is refused.
    for sport in [40000, 40001] {
        let syn = tcp_syn_from([198, 18, 0, 9], sport, A, 80);
        let (op, w) = packet::Request::Deliver(PacketMeta::PLAIN).encode();
        r.wire.ip[0].send_request(op, w, &syn).unwrap();
    }
    for _ in 0..10 {
        r.round();
    }
    assert!(!connects(&mut r), "both listening sockets are half open");
    // 4 s on, still held; past the handshake time both listen again.
    for _ in 0..40 {
        r.step(100);
    }
    assert!(!connects(&mut r), "still half open");
    for _ in 0..20 {
        r.step(100);
    }
    assert!(connects(&mut r), "the listener serves again");
    for _ in 0..5 {
        r.round();
    }
    assert!(r.tcp[0].accept(l).is_ok());
    // An accepted connection has no handshake timeout: quiet for longer, it stays.
    let c = r.tcp[1].connect(A, 80).unwrap();
    let mut s = Err(Error::Again);
    for _ in 0..100 {
        r.round();
        s = r.tcp[0].accept(l);
        if s.is_ok() {
            break;
        }
    }
    let s = s.expect("accepted");
    for _ in 0..100 {
        r.step(100);
    }
    assert_eq!(r.tcp[0].state(s), Ok(State::Established));
    assert_eq!(r.tcp[1].state(c), Ok(State::Established));
    assert_eq!(r.tcp[1].send(c, b"still here"), Ok(10));
    for _ in 0..20 {
        r.round();
    }
    let mut buf = [0; 16];
    assert_eq!(r.tcp[0].recv(s, &mut buf), Ok(10));
}

#[test]
fn an_established_connection_waits_to_be_accepted_past_the_handshake_time() {
    let limits = Limits {
        handshake_ms: 2000,
        ..Limits::default()
    };
    let mut r = rig_with(16, limits, false);
    let l = r.tcp[0].listen(80, 1).unwrap();
    let c = r.tcp[1].connect(A, 80).unwrap();
    // 10 s, the client silent and the server not accepting.
    for _ in 0..100 {
        r.step(100);
    }
    assert_eq!(r.tcp[1].state(c), Ok(State::Established));
    let s = r.tcp[0].accept(l).expect("still there to accept");
    assert_eq!(r.tcp[0].state(s), Ok(State::Established));
    // The listener's fresh socket still gives half-open connections up.
    let syn = tcp_syn_from([198, 18, 0, 9], 40000, A, 80);
    let (op, w) = packet::Request::Deliver(PacketMeta::PLAIN).encode();
    r.wire.ip[0].send_request(op, w, &syn).unwrap();
    for _ in 0..10 {
        r.round();
    }
    assert!(!connects(&mut r), "the one listening socket is half open");
    for _ in 0..30 {
        r.step(100);
    }
    assert!(
        connects(&mut r),
        "and listens again after the handshake time"
    );
}

#[test]
fn a_connect_nobody_answers_is_given_up_after_the_handshake_time() {
    let limits = Limits {
        handshake_ms: 3000,
        ..Limits::default()
    };
    let mut r = rig_with(16, limits, false);
    let used = r.tcp[0].sockets_in_use();
    // Core 0 connects to an address nobody has: its SYNs go nowhere.
    let c = r.tcp[0].connect([198, 18, 0, 9], 80).unwrap();
    for _ in 0..25 {
        r.step(100);
    }
    assert_eq!(r.tcp[0].state(c), Ok(State::SynSent));
    for _ in 0..10 {
        r.step(100);
    }
    assert_eq!(r.tcp[0].send(c, b"x"), Err(Error::ConnRefused));
    r.tcp[0].close(c).unwrap();
    r.round();
    assert_eq!(r.tcp[0].sockets_in_use(), used);
}

#[test]
fn an_outbound_connection_carries_data_both_ways_until_it_is_closed() {
    let mut r = rig(16);
    let mut echo = EchoPeer::new(&mut r.tcp[1], 7);
    let c = r.tcp[0].connect(B, 7).unwrap();
    let mut sent = false;
    let mut got = Vec::new();
    let mut buf = [0; 64];
    for _ in 0..200 {
        r.round();
        echo.step(&mut r.tcp[1]);
        if !sent {
            sent = r.tcp[0].send(c, b"hello from the stack") == Ok(20);
        }
        if let Ok(n) = r.tcp[0].recv(c, &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(got, b"hello from the stack");
    assert_eq!(echo.connections(), 1);
    r.tcp[0].shutdown(c).unwrap();
    let mut eof = false;
    for _ in 0..200 {
        r.round();
        echo.step(&mut r.tcp[1]);
        if r.tcp[0].recv(c, &mut buf) == Ok(0) {
            eof = true;
            break;
        }
    }
    assert!(eof, "the peer closes after our FIN");
    assert_eq!(echo.connections(), 0);
    r.tcp[0].close(c).unwrap();
}

#[test]
fn a_syn_to_a_closed_port_from_ip_is_answered_rst_and_partial_checksums_are_completed() {
    let (_m, mut ip, t) = pair("tcp-syn", 16);
    let mut tcp = core(t, A, 3);
    // A SYN whose checksum ip marks as partial: the field holds only the pseudo-header
    // sum (the sum the device completes).
    let mut syn = tcp_syn(B, A, 9);
    let full = TcpPacket::new_unchecked(&syn[20..]).checksum();
    let mut t = TcpPacket::new_unchecked(&mut syn[20..]);
    t.set_checksum(0);
    let body: u16 = {
        let mut s: u32 = 0;
        for c in syn[20..].chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    };
    // pseudo = ~full - body (ones' complement arithmetic).
    let mut pseudo = u32::from(!full) + u32::from(!body);
    while pseudo > 0xffff {
        pseudo = (pseudo & 0xffff) + (pseudo >> 16);
    }
    syn[36..38].copy_from_slice(&(pseudo as u16).to_be_bytes());
    let meta = PacketMeta {
        flags: packet::FLAG_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..PacketMeta::PLAIN
    };
    let (op, w) = packet::Request::Deliver(meta).encode();
    ip.send_request(op, w, &syn).unwrap();
    tcp.poll(Instant::from_millis(1));
    let r = ip.poll_reply().unwrap().expect("answered");
    assert_eq!(
        packet::Reply::decode(r.status(), r.inline()),
        Ok(packet::Reply::Done)
    );
    ip.free(r).unwrap();
    let req = ip.poll_request().unwrap().expect("an RST");
    let mut out = vec![0; req.payload_len()];
    ip.read_request_payload(&req, &mut out).unwrap();
    let p = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert_eq!(p.dst_addr(), Ipv4Address::from(B));
    let seg = TcpPacket::new_checked(p.payload()).unwrap();
    assert!(seg.rst() && seg.ack());
    assert_eq!(seg.ack_number(), smoltcp::wire::TcpSeqNumber(1001));
    assert!(seg.verify_checksum(
        &smoltcp::wire::IpAddress::from(Ipv4Address::from(A)),
        &smoltcp::wire::IpAddress::from(Ipv4Address::from(B))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hostile_deliveries_are_answered_and_never_panic(
        packets in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..1600), any::<[u64; 2]>(), any::<bool>()),
            1..40,
        )
    ) {
        let (_m, mut ip, t) = pair("tcp-hostile", 16);
        let mut tcp = core(t, A, 4);
        let _l = tcp.listen(7, 2).unwrap();
        let mut answered = 0;
        let mut sent = 0;
        for (mut bytes, words, valid_header) in packets {
            if valid_header && bytes.len() >= 20 {
                // Make some of them get past the IP header check into TCP.
                let syn = tcp_syn(B, A, 7);
                bytes[..20].copy_from_slice(&syn[..20]);
                let total = bytes.len() as u16;
                let mut h = Ipv4Packet::new_unchecked(&mut bytes[..]);
                h.set_total_len(total);
                h.fill_checksum();
            }
            let (op, mut w) = packet::Request::Deliver(PacketMeta::PLAIN).encode();
            if words[0] & 1 == 1 {
                w[0] = words[0];
                w[1] = words[1];
            }
            ip.send_request(op, w, &bytes).unwrap();
            sent += 1;
            for k in 0..3 {
                tcp.poll(Instant::from_millis(k));
            }
            while let Some(r) = ip.poll_reply().unwrap() {
                answered += 1;
                ip.free(r).unwrap();
            }
            while let Some(req) = ip.poll_request().unwrap() {
                let (s, w) = packet::Reply::Done.encode();
                ip.reply(req, s, w, &[]).unwrap();
            }
        }
        prop_assert_eq!(answered, sent);
        prop_assert!(tcp.device().error().is_none());
    }
}

/// The test playing posix on a socket-protocol channel to core 0 (attached to it as
/// channel `k`).
struct PosixPeer {
    _mem: SharedMemory,
    posix: Endpoint<NoKick>,
    k: usize,
    served: crate::posix::Posix,
}

fn posix_peer(r: &mut Rig) -> PosixPeer {
    let (mem, posix, srv) = pair("tcp-posix", 16);
    let size = srv.buffer_size();
    let k = r.tcp[0].attach(srv);
    assert_eq!(r.tcp[0].sleep_set().len(), 2);
    PosixPeer {
        _mem: mem,
        posix,
        k,
        served: crate::posix::Posix::new(size),
    }
}

impl PosixPeer {
    /// Let the server tell its events, and take them.
    fn events(&mut self, r: &mut Rig) -> Vec<compart_proto::socket::Event> {
        r.tcp[0].serve_posix(self.k, &mut self.served).unwrap();
        let mut out = Vec::new();
        while let Some(req) = self.posix.poll_request().unwrap() {
            assert!(req.is_oneway());
            out.push(
                compart_proto::socket::Event::decode(req.opcode(), true, req.inline()).unwrap(),
            );
        }
        out
    }

    /// Make a call and return its answer and the reply's payload.
    fn call(
        &mut self,
        r: &mut Rig,
        req: compart_proto::socket::Request,
        payload: &[u8],
    ) -> (compart_proto::socket::Reply, Vec<u8>) {
        let (op, w) = req.encode();
        self.posix.send_request(op, w, payload).unwrap();
        assert!(r.tcp[0].serve_posix(self.k, &mut self.served).unwrap());
        let rep = self.posix.poll_reply().unwrap().expect("answered at once");
        let got =
            compart_proto::socket::Reply::decode(rep.opcode(), rep.status(), rep.inline()).unwrap();
        let mut data = vec![0; rep.payload_len()];
        self.posix.read_reply_payload(&rep, &mut data).unwrap();
        self.posix.free(rep).unwrap();
        (got, data)
    }
}

#[test]
fn the_socket_protocol_listens_accepts_receives_sends_and_closes() {
    use compart_proto::socket::{Errno, Reply, Request, READY_READABLE, READY_WRITABLE};
    let mut r = rig(16);
    let mut p = posix_peer(&mut r);
    let (Reply::Handle(l), _) = p.call(
        &mut r,
        Request::Listen {
            port: 5000,
            backlog: 2,
        },
        &[],
    ) else {
        panic!("listen");
    };
    assert_eq!(
        p.call(
            &mut r,
            Request::Listen {
                port: 5000,
                backlog: 2
            },
            &[]
        )
        .0,
        Reply::Error(Errno::AddrInUse)
    );
    assert_eq!(
        p.call(&mut r, Request::Accept { listener: l }, &[]).0,
        Reply::Error(Errno::Again)
    );
    assert_eq!(p.events(&mut r), []);
    let c = r.tcp[1].connect(A, 5000).unwrap();
    for _ in 0..20 {
        r.round();
    }
    // The listener became readable: posix is told once.
    let ev = compart_proto::socket::Event {
        handle: l,
        ready: READY_READABLE,
    };
    assert_eq!(p.events(&mut r), [ev]);
    assert_eq!(p.events(&mut r), []);
    let (
        Reply::Accepted {
            handle,
            address,
            port,
        },
        _,
    ) = p.call(&mut r, Request::Accept { listener: l }, &[])
    else {
        panic!("accept");
    };
    assert_eq!(address, B);
    assert!(port >= 49152, "an ephemeral port: {port}");
    assert_eq!(r.tcp[1].send(c, b"ping over posix"), Ok(15));
    for _ in 0..20 {
        r.round();
    }
    assert_eq!(
        p.call(&mut r, Request::Poll { handle }, &[]).0,
        Reply::Ready(READY_READABLE | READY_WRITABLE)
    );
    let (got, data) = p.call(&mut r, Request::Recv { handle, max: 4 }, &[]);
    assert_eq!((got, &data[..]), (Reply::Bytes(4), &b"ping"[..]));
    let (got, data) = p.call(&mut r, Request::Recv { handle, max: 100 }, &[]);
    assert_eq!((got, &data[..]), (Reply::Bytes(11), &b" over posix"[..]));
    assert_eq!(
        p.call(&mut r, Request::Recv { handle, max: 100 }, &[]).0,
        Reply::Error(Errno::Again)
    );
    assert_eq!(
        p.call(&mut r, Request::Send { handle }, b"pong").0,
        Reply::Bytes(4)
    );
    assert_eq!(
        p.call(&mut r, Request::Shutdown { handle }, &[]).0,
        Reply::Done
    );
    for _ in 0..20 {
        r.round();
    }
    let mut buf = [0; 16];
    assert_eq!(r.tcp[1].recv(c, &mut buf), Ok(4));
    assert_eq!(&buf[..4], b"pong");
    assert_eq!(r.tcp[1].recv(c, &mut buf), Ok(0));
    r.tcp[1].close(c).unwrap();
    for _ in 0..20 {
        r.round();
    }
    assert_eq!(
        p.call(&mut r, Request::Recv { handle, max: 100 }, &[]).0,
        Reply::Bytes(0)
    );
    assert_eq!(
        p.call(&mut r, Request::Send { handle }, b"late").0,
        Reply::Error(Errno::Pipe)
    );
    assert_eq!(
        p.call(&mut r, Request::Close { handle }, &[]).0,
        Reply::Done
    );
    assert_eq!(
        p.call(&mut r, Request::Close { handle }, &[]).0,
        Reply::Error(Errno::BadHandle)
    );
    // A connect to a closed port through the protocol: refused, seen by Poll and Send.
    let (Reply::Handle(h), _) = p.call(
        &mut r,
        Request::Connect {
            address: B,
            port: 9,
        },
        &[],
    ) else {
        panic!("connect");
    };
    for _ in 0..20 {
        r.round();
    }
    assert_eq!(
        p.call(&mut r, Request::Send { handle: h }, b"x").0,
        Reply::Error(Errno::ConnRefused)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hostile_socket_requests_are_answered_and_never_panic(
        reqs in proptest::collection::vec((0u16..10, any::<[u64; 5]>(), 0usize..3000), 1..40)
    ) {
        let mut r = rig(16);
        let mut p = posix_peer(&mut r);
        let _ = r.tcp[0].listen(7, 2);
        let mut answered = 0;
        for (op, mut w, len) in &reqs {
            // Small handles and ports, so some calls reach real sockets.
            w[0] &= 0x3_ffff;
            if op % 2 == 0 {
                w[1] &= 0xffff_0000_ffff_ffff;
                w[2] &= 0xffff;
                w[3] = 0;
                w[4] = 0;
            }
            let len = (*len).min(p.posix.buffer_size());
            p.posix.send_request(*op, w, &vec![0x5a; len]).unwrap();
            r.tcp[0].serve_posix(p.k, &mut p.served).unwrap();
            r.round();
            while let Some(rep) = p.posix.poll_reply().unwrap() {
                answered += 1;
                p.posix.free(rep).unwrap();
            }
        }
        prop_assert_eq!(answered, reqs.len());
    }
}

#[test]
fn the_interface_takes_the_links_offloads_only_when_asked_and_limits_are_clamped() {
    use packet::offload::{TX_CSUM, TX_TSO4};
    let c = |offloads| packet::Config {
        address: A,
        prefix_len: 24,
        mtu: 1500,
        offloads,
    };
    let both = Iface::from_config(&c(TX_CSUM | TX_TSO4), true);
    assert_eq!((both.address, both.prefix_len, both.mtu), (A, 24, 1500));
    assert!(both.tx_checksum_offload && both.tso);
    let csum = Iface::from_config(&c(TX_CSUM), true);
    assert!(csum.tx_checksum_offload && !csum.tso);
    // TSO without checksum offload is not taken.
    let tso_only = Iface::from_config(&c(TX_TSO4), true);
    assert!(!tso_only.tx_checksum_offload && !tso_only.tso);
    let off = Iface::from_config(&c(TX_CSUM | TX_TSO4), false);
    assert!(!off.tx_checksum_offload && !off.tso);
    assert_eq!(Limits::from_args(None, None, None, None), Limits::default());
    let l = Limits::from_args(Some(5000), Some(1), Some(9999), Some(0));
    assert_eq!((l.sockets, l.rx_buffer, l.tx_buffer), (1024, 4096, 4096));
    assert_eq!((l.backlog, l.handshake_ms), (1024, 1));
}

#[test]
fn a_syn_beyond_the_backlog_is_dropped_not_reset_and_its_retry_is_served_after_accept() {
    let mut r = rig(16);
    let l = r.tcp[0].listen(80, 1).unwrap();
    let first = r.tcp[1].connect(A, 80).unwrap();
    for _ in 0..20 {
        r.round();
    }
    assert_eq!(r.tcp[1].state(first), Ok(State::Established));
    // The listener's one socket holds a connection not yet accepted: a second SYN
    // finds none listening. Dropped, the client keeps trying (no RST, no refusal).
    let second = r.tcp[1].connect(A, 80).unwrap();
    for _ in 0..20 {
        r.round();
    }
    assert_eq!(r.tcp[1].state(second), Ok(State::SynSent));
    assert!(r.tcp[0].device().counters().rx_syn_backlog_full >= 1);
    // Accepting re-arms the backlog; the client's retransmitted SYN (after its RTO)
    // completes.
    r.tcp[0].accept(l).unwrap();
    for _ in 0..40 {
        r.step(100);
        if r.tcp[1].state(second) == Ok(State::Established) {
            break;
        }
    }
    assert_eq!(r.tcp[1].state(second), Ok(State::Established));
    for _ in 0..5 {
        r.round();
    }
    assert!(r.tcp[0].accept(l).is_ok());
    // A closed port is still reset at once.
    let closed = r.tcp[1].connect(A, 81).unwrap();
    for _ in 0..20 {
        r.round();
    }
    assert_eq!(r.tcp[1].send(closed, b"x"), Err(Error::ConnRefused));
}

#[test]
fn the_config_query_refuses_early_packets_retries_link_down_and_returns_the_config() {
    let (_m, mut ip, mut t) = pair("tcp-config", 16);
    let mut q = ConfigQuery::new();
    // A packet delivered before there is a socket is refused.
    let (op, w) = packet::Request::Deliver(PacketMeta::PLAIN).encode();
    ip.send_request(op, w, &[0; 20]).unwrap();
    assert_eq!(q.poll(&mut t, 0).unwrap(), None);
    let r = ip.poll_reply().unwrap().expect("refused");
    assert_eq!(
        packet::Reply::decode(r.status(), r.inline()),
        Ok(packet::Reply::Dropped(DropReason::Refused))
    );
    ip.free(r).unwrap();
    // ip: link down; the query asks again only after RETRY_MS.
    let answer = |ip: &mut Endpoint<NoKick>, reply: packet::Reply| {
        let req = ip.poll_request().unwrap().expect("a Config request");
        assert_eq!(
            packet::Request::decode(req.opcode(), req.is_oneway(), req.inline()),
            Ok(packet::Request::Config)
        );
        let (s, w) = reply.encode();
        ip.reply(req, s, w, &[]).unwrap();
    };
    answer(&mut ip, packet::Reply::Dropped(DropReason::LinkDown));
    assert_eq!(q.poll(&mut t, 1).unwrap(), None);
    assert_eq!(q.poll(&mut t, 50).unwrap(), None);
    assert!(
        ip.poll_request().unwrap().is_none(),
        "no retry before 100 ms"
    );
    assert_eq!(q.poll(&mut t, 101).unwrap(), None);
    let c = packet::Config {
        address: A,
        prefix_len: 24,
        mtu: 1500,
        offloads: packet::offload::TX_CSUM,
    };
    answer(&mut ip, packet::Reply::Config(c));
    assert_eq!(q.poll(&mut t, 102).unwrap(), Some(c));
    assert!(q.odd_answer.is_none());
}

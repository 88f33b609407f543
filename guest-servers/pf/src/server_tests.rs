//! The relay over host-side channel regions: test endpoints stand in for ip (below) and
//! tcp (above), speaking the packet protocol.
extern crate std;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use compart_channel::host::SharedMemory;
use compart_channel::{initialize, Endpoint, NoKick, PairConfig, PairLayout, Side};
use compart_kit::server::{Close, Peer, Role};
use compart_proto::frame::Gso;
use compart_proto::packet::{self, Config, DropReason, PacketMeta, Reply, Unreachable};
use proptest::prelude::*;

use crate::tests::{icmp, tcp, udp, ACK, FAR, SYN, SYNACK, US};
use crate::{Filter, Instant, Limits, PfServer, Rules};

const BUF: u32 = 16384;
const WINDOW: u32 = 16;

fn pair(name: &str) -> (SharedMemory, Endpoint<NoKick>, Endpoint<NoKick>) {
    pair_of(name, 64, WINDOW)
}

fn pair_of(
    name: &str,
    depth: u32,
    window: u32,
) -> (SharedMemory, Endpoint<NoKick>, Endpoint<NoKick>) {
    let config = PairConfig::new(depth, window, BUF);
    let size = PairLayout::new(&config).unwrap().size();
    let mem = SharedMemory::create(name, size.next_multiple_of(4096)).unwrap();
    initialize(&mem.region(), &config).unwrap();
    let a = Endpoint::attach(mem.region(), Side::A, NoKick).unwrap();
    let b = Endpoint::attach(mem.region(), Side::B, NoKick).unwrap();
    (mem, a, b)
}

fn peer(index: usize, name: &str, role: Role) -> Peer {
    Peer {
        index,
        name: String::from(name),
        role,
    }
}

struct Rig {
    mem: Vec<SharedMemory>,
    ip: Endpoint<NoKick>,
    tcp: Endpoint<NoKick>,
    srv: PfServer<NoKick>,
}

fn rig(rules: &str) -> Rig {
    rig_of(rules, 64, WINDOW)
}

/// With a request queue of `tcp_depth` and `tcp_window` requests in flight at most from
/// pf to tcp.
fn rig_of(rules: &str, tcp_depth: u32, tcp_window: u32) -> Rig {
    let (m1, ip, i) = pair("pf-ip");
    let (m2, tcp, t) = pair_of("pf-tcp", tcp_depth, tcp_window);
    let filter = Filter::new(Rules::parse(rules, None).unwrap(), Limits::default());
    let srv = PfServer::new(
        filter,
        Some((peer(0, "ip", Role::Ip), i)),
        Some((peer(1, "tcp", Role::Tcp), t)),
    );
    Rig {
        mem: vec![m1, m2],
        ip,
        tcp,
        srv,
    }
}

/// A request a test peer took: its decoded request, payload and the handle to answer.
type Taken = (packet::Request, Vec<u8>, compart_channel::Request);

fn take(ep: &mut Endpoint<NoKick>) -> Vec<Taken> {
    let mut out = Vec::new();
    while let Some(req) = ep.poll_request().unwrap() {
        let r = packet::Request::decode(req.opcode(), req.is_oneway(), req.inline()).unwrap();
        let mut buf = vec![0; req.payload_len()];
        ep.read_request_payload(&req, &mut buf).unwrap();
        out.push((r, buf, req));
    }
    out
}

fn answer(ep: &mut Endpoint<NoKick>, req: compart_channel::Request, reply: Reply) {
    let (s, w) = reply.encode();
    ep.reply(req, s, w, &[]).unwrap();
}

fn replies(ep: &mut Endpoint<NoKick>) -> Vec<Reply> {
    let mut out = Vec::new();
    while let Some(r) = ep.poll_reply().unwrap() {
        out.push(Reply::decode(r.status(), r.inline()).unwrap());
        ep.free(r).unwrap();
    }
    out
}

fn send(ep: &mut Endpoint<NoKick>, req: packet::Request, payload: &[u8]) {
    let (op, w) = req.encode();
    ep.send_request(op, w, payload).unwrap();
}

const TSO: PacketMeta = PacketMeta {
    flags: packet::FLAG_NEEDS_CSUM,
    gso: Gso::TcpV4,
    ecn: false,
    hdr_len: 40,
    gso_size: 1448,
    csum_start: 20,
    csum_offset: 16,
};

impl Rig {
    fn poll(&mut self) {
        for _ in 0..4 {
            self.srv.poll(Instant::from_millis(1));
        }
    }
}

#[test]
fn allowed_packets_are_relayed_unchanged_and_the_answers_come_back() {
    let mut r = rig("in:tcp:5201");
    let syn = tcp(FAR, 40000, US, 5201, SYN, 0);
    send(&mut r.ip, packet::Request::Deliver(PacketMeta::PLAIN), &syn);
    r.poll();
    let mut up = take(&mut r.tcp);
    assert_eq!(up.len(), 1);
    let (req, bytes, handle) = up.pop().unwrap();
    assert_eq!(req, packet::Request::Deliver(PacketMeta::PLAIN));
    assert_eq!(bytes, syn);
    assert!(replies(&mut r.ip).is_empty(), "held until tcp answers");
    assert_eq!(r.srv.held(), 1);
    answer(&mut r.tcp, handle, Reply::Done);
    r.poll();
    assert_eq!(replies(&mut r.ip), [Reply::Done]);
    assert_eq!(r.srv.held(), 0);
    assert_eq!(replies(&mut r.tcp), []);

    // tcp's SYN/ACK goes down on the connection's entry, its metadata (TSO) unchanged.
    let synack = tcp(US, 5201, FAR, 40000, SYNACK, 3000);
    send(&mut r.tcp, packet::Request::Send(TSO), &synack);
    r.poll();
    let (req, bytes, handle) = take(&mut r.ip).pop().unwrap();
    assert_eq!((req, bytes), (packet::Request::Send(TSO), synack));
    answer(&mut r.ip, handle, Reply::Dropped(DropReason::NoRoute));
    r.poll();
    assert_eq!(replies(&mut r.tcp), [Reply::Dropped(DropReason::NoRoute)]);

    // A closed port: tcp says unreachable, ip hears it.
    send(
        &mut r.ip,
        packet::Request::Deliver(PacketMeta::PLAIN),
        &tcp(FAR, 1, US, 5201, SYN, 0),
    );
    r.poll();
    let (_, _, handle) = take(&mut r.tcp).pop().unwrap();
    answer(&mut r.tcp, handle, Reply::Unreachable(Unreachable::Port));
    r.poll();
    assert_eq!(replies(&mut r.ip), [Reply::Unreachable(Unreachable::Port)]);
    let c = r.srv.filter().counters();
    assert_eq!(
        (c.in_passed, c.out_passed, c.out_tracked, c.peer_dropped),
        (2, 1, 1, 1)
    );
}

#[test]
fn refused_packets_are_answered_by_pf_and_never_reach_the_other_side() {
    let mut r = rig("out:tcp:80");
    send(
        &mut r.ip,
        packet::Request::Deliver(PacketMeta::PLAIN),
        &tcp(FAR, 1, US, 22, SYN, 0),
    );
    send(
        &mut r.tcp,
        packet::Request::Send(PacketMeta::PLAIN),
        &udp(US, 1, FAR, 53),
    );
    send(
        &mut r.tcp,
        packet::Request::Send(PacketMeta::PLAIN),
        &[0x45, 0, 0],
    );
    r.poll();
    assert_eq!(replies(&mut r.ip), [Reply::Dropped(DropReason::Refused)]);
    assert_eq!(
        replies(&mut r.tcp),
        [
            Reply::Dropped(DropReason::Refused),
            Reply::Dropped(DropReason::Malformed)
        ]
    );
    assert!(take(&mut r.ip).is_empty() && take(&mut r.tcp).is_empty());
    // An outbound connection lets its reply up; an unrelated one stays out.
    send(
        &mut r.tcp,
        packet::Request::Send(PacketMeta::PLAIN),
        &tcp(US, 999, FAR, 80, SYN, 0),
    );
    r.poll();
    let (_, _, h) = take(&mut r.ip).pop().unwrap();
    answer(&mut r.ip, h, Reply::Done);
    send(
        &mut r.ip,
        packet::Request::Deliver(PacketMeta::PLAIN),
        &tcp(FAR, 80, US, 999, SYNACK, 0),
    );
    send(
        &mut r.ip,
        packet::Request::Deliver(PacketMeta::PLAIN),
        &tcp(FAR, 80, US, 998, ACK, 0),
    );
    r.poll();
    assert_eq!(take(&mut r.tcp).len(), 1);
    assert_eq!(replies(&mut r.ip), [Reply::Dropped(DropReason::Refused)]);
    let c = r.srv.filter().counters();
    assert_eq!(
        (c.in_denied_rule, c.out_denied_rule, c.out_malformed),
        (2, 1, 1)
    );
}

#[test]
fn config_goes_to_ip_and_its_answer_back_to_tcp() {
    let mut r = rig("");
    send(&mut r.tcp, packet::Request::Config, &[]);
    r.poll();
    let (req, bytes, h) = take(&mut r.ip).pop().unwrap();
    assert_eq!((req, bytes.len()), (packet::Request::Config, 0));
    let cfg = Config {
        address: US,
        prefix_len: 24,
        mtu: 1500,
        offloads: packet::offload::ALL,
    };
    answer(&mut r.ip, h, Reply::Config(cfg));
    r.poll();
    assert_eq!(replies(&mut r.tcp), [Reply::Config(cfg)]);
    assert_eq!(r.srv.filter().counters().config_relayed, 1);
}

#[test]
fn wrong_requests_and_replies_are_refused_and_counted() {
    let mut r = rig("in:any,out:any");
    // Wrong direction, unknown opcode, bad inline words; a one-way message is ignored.
    send(
        &mut r.ip,
        packet::Request::Send(PacketMeta::PLAIN),
        &udp(FAR, 1, US, 2),
    );
    send(&mut r.ip, packet::Request::Config, &[]);
    send(
        &mut r.tcp,
        packet::Request::Deliver(PacketMeta::PLAIN),
        &udp(US, 1, FAR, 2),
    );
    r.tcp.send_request(9, [0; 5], &[]).unwrap();
    r.tcp
        .send_request(packet::OP_SEND, [0, 0, 1, 0, 0], &[])
        .unwrap();
    r.ip.send_oneway(packet::OP_DELIVER, [0; 5]).unwrap();
    r.poll();
    let malformed = Reply::Dropped(DropReason::Malformed);
    assert_eq!(replies(&mut r.ip), [malformed, malformed]);
    assert_eq!(replies(&mut r.tcp), [malformed, malformed, malformed]);
    let c = r.srv.filter().counters();
    assert_eq!((c.bad_requests, c.oneway_ignored), (5, 1));
    // Replies that do not fit their request: Config to a Deliver, Unreachable to a Send,
    // an undecodable status.
    send(
        &mut r.ip,
        packet::Request::Deliver(PacketMeta::PLAIN),
        &udp(FAR, 1, US, 2),
    );
    send(
        &mut r.tcp,
        packet::Request::Send(PacketMeta::PLAIN),
        &udp(US, 3, FAR, 4),
    );
    send(
        &mut r.tcp,
        packet::Request::Send(PacketMeta::PLAIN),
        &udp(US, 5, FAR, 6),
    );
    r.poll();
    let (_, _, h) = take(&mut r.tcp).pop().unwrap();
    let cfg = Config {
        address: US,
        prefix_len: 24,
        mtu: 1500,
        offloads: 0,
    };
    answer(&mut r.tcp, h, Reply::Config(cfg));
    let mut down = take(&mut r.ip);
    let (_, _, h2) = down.pop().unwrap();
    let (_, _, h1) = down.pop().unwrap();
    answer(&mut r.ip, h1, Reply::Unreachable(Unreachable::Port));
    r.ip.reply(h2, 99, [0; 5], &[]).unwrap();
    r.poll();
    assert_eq!(replies(&mut r.ip), [malformed]);
    assert_eq!(replies(&mut r.tcp), [malformed, malformed]);
    assert_eq!(r.srv.filter().counters().bad_replies, 3);
    assert_eq!(r.srv.held(), 0);
    assert_eq!(r.srv.len(), 2, "both channels stay");
}

#[test]
fn a_slow_tcp_slows_ip_down_and_loses_nothing() {
    // ip has 16 requests in flight at most, pf only 4 towards tcp (its window, or its
    // request queue): the rest wait in ip's queue or parked in pf, none is refused; tcp
    // answers only every other round.
    slow_tcp(64, 4);
    slow_tcp(4, 16);
}

fn slow_tcp(depth: u32, window: u32) {
    let mut r = rig_of("in:icmp", depth, window);
    let mut sent = 0u16;
    let mut delivered = Vec::new();
    let mut holding = Vec::new();
    let mut answered = 0;
    for round in 0..100 {
        while r.ip.outstanding_count() < WINDOW && sent < 100 {
            let p = icmp(FAR, US, 0, sent, &[7; 8]);
            send(&mut r.ip, packet::Request::Deliver(PacketMeta::PLAIN), &p);
            sent += 1;
        }
        r.poll();
        assert!(r.srv.held() <= 4);
        for (_, bytes, h) in take(&mut r.tcp) {
            delivered.push(bytes);
            holding.push(h);
        }
        if round % 2 == 1 {
            for h in holding.drain(..) {
                answer(&mut r.tcp, h, Reply::Done);
            }
        }
        r.poll();
        let got = replies(&mut r.ip);
        assert!(got.iter().all(|g| *g == Reply::Done), "{got:?}");
        answered += got.len();
    }
    assert_eq!(sent, 100);
    assert_eq!(answered, 100);
    assert_eq!(delivered.len(), 100);
    // In order: the echo identifier is the sequence number.
    for (i, p) in delivered.iter().enumerate() {
        assert_eq!(u16::from_be_bytes([p[24], p[25]]), i as u16);
    }
    assert_eq!(r.srv.held(), 0);
    assert_eq!(r.srv.filter().counters().relay_refused, 0);
}

#[test]
fn when_tcp_goes_its_held_packets_are_answered_and_new_ones_refused() {
    let mut r = rig("in:any");
    for port in 0..3 {
        send(
            &mut r.ip,
            packet::Request::Deliver(PacketMeta::PLAIN),
            &udp(FAR, port, US, 53),
        );
    }
    r.poll();
    assert_eq!(r.srv.held(), 3);
    // tcp's region is scribbled over: its channel breaks.
    let region = r.mem[1].region();
    region.fill(0, region.len(), 0xff).unwrap();
    r.poll();
    let closed = r.srv.take_closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].0.role, Role::Tcp);
    assert!(matches!(closed[0].1, Close::Channel(_)));
    assert_eq!(replies(&mut r.ip), [Reply::Dropped(DropReason::Refused); 3]);
    send(
        &mut r.ip,
        packet::Request::Deliver(PacketMeta::PLAIN),
        &udp(FAR, 9, US, 53),
    );
    r.poll();
    assert_eq!(replies(&mut r.ip), [Reply::Dropped(DropReason::Refused)]);
    assert_eq!(r.srv.filter().counters().peer_gone, 4);
    assert_eq!(r.srv.held(), 0);
}

#[test]
fn without_ip_tcp_hears_link_down() {
    let (_m, mut tcp_ep, t) = pair("pf-tcp-alone");
    let filter = Filter::new(Rules::allow_all(), Limits::default());
    let mut srv = PfServer::new(filter, None, Some((peer(0, "tcp", Role::Tcp), t)));
    send(&mut tcp_ep, packet::Request::Config, &[]);
    send(
        &mut tcp_ep,
        packet::Request::Send(PacketMeta::PLAIN),
        &udp(US, 1, FAR, 2),
    );
    srv.poll(Instant::ZERO);
    assert_eq!(
        replies(&mut tcp_ep),
        [Reply::Dropped(DropReason::LinkDown); 2]
    );
}

/// A test peer's next message: a valid request (of either direction) or random words.
fn arb_message() -> impl Strategy<Value = (u16, [u64; 5], Vec<u8>)> {
    let packet = prop_oneof![
        Just(tcp(FAR, 80, US, 5201, SYN, 10)),
        Just(tcp(US, 5201, FAR, 80, SYNACK, 10)),
        Just(udp(US, 1, FAR, 53)),
        Just(icmp(FAR, US, 0, 1, &[1, 2])),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    let words = prop_oneof![
        4 => Just([0u64; 5]),
        1 => any::<[u64; 5]>(),
    ];
    (0u16..5, words, packet)
}

fn arb_reply() -> impl Strategy<Value = (u32, [u64; 5])> {
    prop_oneof![
        Just(Reply::Done.encode()),
        Just(Reply::Dropped(DropReason::NoRoom).encode()),
        Just(Reply::Unreachable(Unreachable::Port).encode()),
        (0u32..20, any::<[u64; 5]>()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever both peers send and answer, every request gets exactly one reply and pf
    /// holds nothing once they stop.
    #[test]
    fn every_request_is_answered_once(
        from_ip in proptest::collection::vec(arb_message(), 0..40),
        from_tcp in proptest::collection::vec(arb_message(), 0..40),
        answers in proptest::collection::vec(arb_reply(), 1..16),
    ) {
        let mut r = rig("in:tcp:5201,out:any");
        let (mut sent, mut got) = ([0usize; 2], [0usize; 2]);
        let mut queues = [from_ip.into_iter(), from_tcp.into_iter()];
        let mut a = 0;
        for _ in 0..200 {
            for (side, q) in queues.iter_mut().enumerate() {
                let ep = if side == 0 { &mut r.ip } else { &mut r.tcp };
                while ep.outstanding_count() < WINDOW {
                    let Some((op, w, payload)) = q.next() else { break };
                    if ep.send_request(op, w, &payload).is_ok() {
                        sent[side] += 1;
                    }
                }
            }
            r.srv.poll(Instant::from_millis(1));
            for (side, count) in got.iter_mut().enumerate() {
                let ep = if side == 0 { &mut r.ip } else { &mut r.tcp };
                while let Some(req) = ep.poll_request().unwrap() {
                    let (s, w) = answers[a % answers.len()];
                    a += 1;
                    ep.reply(req, s, w, &[]).unwrap();
                }
                while let Some(rep) = ep.poll_reply().unwrap() {
                    *count += 1;
                    ep.free(rep).unwrap();
                }
            }
        }
        prop_assert_eq!(sent, got);
        prop_assert_eq!(r.srv.held(), 0);
        prop_assert_eq!(r.srv.len(), 2);
    }
}

//! The stack, frame by frame: frames built with `smoltcp::wire`'s emitters (and by
//! hand where they must be wrong), what comes out parsed back the same way.
extern crate std;

use alloc::vec;
use alloc::vec::Vec;

use compart_proto::frame::{offload, FrameMeta, Gso, FLAG_NEEDS_CSUM};
use compart_proto::packet::{DropReason, PacketMeta, Unreachable};
use proptest::prelude::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address, Ipv4Packet,
    Ipv4Repr,
};

use crate::config::{parse_address, parse_cidr, Route, Settings};
use crate::stack::TxFrame;
use crate::{Instant, Ip, Limits};

pub const US_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
pub const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
pub const US: Ipv4Address = Ipv4Address::new(198, 18, 0, 2);
pub const PEER: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);

pub fn settings() -> Settings {
    Settings::new(
        parse_cidr("198.18.0.2/24").unwrap(),
        Some(PEER),
        vec![Route {
            dest: parse_cidr("10.0.0.0/8").unwrap(),
            via: parse_address("198.18.0.9").unwrap(),
        }],
    )
    .unwrap()
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// A stack whose link is up (MTU 1500, no offloads), the gratuitous ARP taken.
fn stack_with(limits: Limits, offloads: u32) -> Ip {
    let mut ip = Ip::new(settings(), limits);
    ip.link_up(t(0), US_MAC.0, 1500, offloads).unwrap();
    drain(&mut ip);
    ip
}

fn stack() -> Ip {
    stack_with(Limits::default(), 0)
}

pub fn drain(ip: &mut Ip) -> Vec<TxFrame> {
    core::iter::from_fn(|| ip.pop_tx()).collect()
}

pub fn eth(
    dst: EthernetAddress,
    src: EthernetAddress,
    ty: EthernetProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype: ty,
    };
    let mut f = vec![0; repr.buffer_len() + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut f[..]);
    repr.emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    f
}

pub fn arp(op: ArpOperation, sha: EthernetAddress, spa: Ipv4Address, tpa: Ipv4Address) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: op,
        source_hardware_addr: sha,
        source_protocol_addr: spa,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: tpa,
    };
    let mut p = vec![0; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut p[..]));
    let dst = if op == ArpOperation::Request {
        EthernetAddress::BROADCAST
    } else {
        US_MAC
    };
    eth(dst, sha, EthernetProtocol::Arp, &p)
}

pub fn ipv4(
    src: Ipv4Address,
    dst: Ipv4Address,
    proto: IpProtocol,
    payload: &[u8],
    ident: u16,
) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut v = vec![0; repr.buffer_len() + payload.len()];
    let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
    repr.emit(&mut p, &ChecksumCapabilities::default());
    p.set_ident(ident);
    p.set_dont_frag(false);
    p.payload_mut().copy_from_slice(payload);
    p.fill_checksum();
    v
}

pub fn echo_request(ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident,
        seq_no,
        data,
    };
    let mut v = vec![0; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut v[..]),
        &ChecksumCapabilities::default(),
    );
    v
}

/// `pattern(n)`: n bytes that differ from position to position.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The frame of an echo request from the peer, of `size` data bytes (`ping -s size`).
fn ping_packet(size: usize, seq: u16) -> Vec<u8> {
    ipv4(
        PEER,
        US,
        IpProtocol::Icmp,
        &echo_request(0x77, seq, &pattern(size)),
        seq,
    )
}

pub fn to_us(packet: &[u8]) -> Vec<u8> {
    eth(US_MAC, PEER_MAC, EthernetProtocol::Ipv4, packet)
}

/// The test's own fragmentation: `packet` (a 20-byte header) in pieces of at most
/// `mtu` bytes.
fn fragments(packet: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let payload = &packet[20..];
    let step = (mtu - 20) / 8 * 8;
    payload
        .chunks(step)
        .enumerate()
        .map(|(i, chunk)| {
            let mut v = packet[..20].to_vec();
            v.extend_from_slice(chunk);
            let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
            p.set_total_len((20 + chunk.len()) as u16);
            p.set_frag_offset((i * step) as u16);
            p.set_more_frags((i + 1) * step < payload.len());
            p.fill_checksum();
            v
        })
        .collect()
}

/// The test's own reassembly of frames a stack sent: the IP packet, checked.
fn reassemble(frames: &[TxFrame]) -> Vec<u8> {
    let mut parts: Vec<(usize, bool, Vec<u8>, Vec<u8>)> = frames
        .iter()
        .map(|f| {
            let e = EthernetFrame::new_checked(&f.frame[..]).unwrap();
            let p = Ipv4Packet::new_checked(e.payload()).unwrap();
            assert!(p.verify_checksum());
            let hl = usize::from(p.header_len());
            (
                usize::from(p.frag_offset()),
                p.more_frags(),
                e.payload()[..hl].to_vec(),
                p.payload().to_vec(),
            )
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut data = Vec::new();
    for (off, _, _, d) in &parts {
        assert_eq!(*off, data.len(), "fragments are contiguous");
        data.extend_from_slice(d);
    }
    assert!(!parts.last().unwrap().1, "the last fragment has MF clear");
    let mut out = parts[0].2.clone();
    out.extend_from_slice(&data);
    let mut p = Ipv4Packet::new_unchecked(&mut out[..]);
    p.set_total_len((parts[0].2.len() + data.len()) as u16);
    p.clear_flags();
    p.set_frag_offset(0);
    out
}

fn assert_echo_reply(packet: &[u8], seq: u16, size: usize) {
    let p = Ipv4Packet::new_checked(packet).unwrap();
    assert_eq!((p.src_addr(), p.dst_addr()), (US, PEER));
    assert_eq!(p.next_header(), IpProtocol::Icmp);
    let icmp = Icmpv4Packet::new_checked(p.payload()).unwrap();
    assert!(icmp.verify_checksum(), "ICMP checksum");
    let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
    let data = pattern(size);
    assert_eq!(
        repr,
        Icmpv4Repr::EchoReply {
            ident: 0x77,
            seq_no: seq,
            data: &data
        }
    );
}

/// Make the stack learn the peer's MAC from its ARP request for us.
fn learn_peer(ip: &mut Ip) {
    ip.receive(
        t(1),
        FrameMeta::PLAIN,
        &arp(ArpOperation::Request, PEER_MAC, PEER, US),
    );
    drain(ip);
}

#[test]
fn the_link_is_announced_with_a_gratuitous_arp() {
    let mut ip = Ip::new(settings(), Limits::default());
    assert_eq!(ip.config(), None);
    ip.link_up(t(0), US_MAC.0, 1500, 0).unwrap();
    let out = drain(&mut ip);
    assert_eq!(out.len(), 1);
    let e = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    assert_eq!(
        (e.dst_addr(), e.src_addr()),
        (EthernetAddress::BROADCAST, US_MAC)
    );
    let ArpRepr::EthernetIpv4 {
        operation,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&ArpPacket::new_checked(e.payload()).unwrap()).unwrap()
    else {
        panic!()
    };
    assert_eq!(operation, ArpOperation::Request);
    assert_eq!((source_protocol_addr, target_protocol_addr), (US, US));
    assert_eq!(ip.config().unwrap().mtu, 1500);
    assert!(
        ip.link_up(t(0), [1, 0, 0, 0, 0, 0], 1500, 0).is_err(),
        "multicast MAC"
    );
    assert!(ip.link_up(t(0), US_MAC.0, 67, 0).is_err(), "MTU below 68");
}

#[test]
fn an_arp_request_for_us_is_answered_and_its_sender_learnt() {
    let mut ip = stack();
    ip.receive(
        t(5),
        FrameMeta::PLAIN,
        &arp(ArpOperation::Request, PEER_MAC, PEER, US),
    );
    let out = drain(&mut ip);
    assert_eq!(out.len(), 1);
    let e = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    assert_eq!(e.dst_addr(), PEER_MAC);
    let repr = ArpRepr::parse(&ArpPacket::new_checked(e.payload()).unwrap()).unwrap();
    assert_eq!(
        repr,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: US_MAC,
            source_protocol_addr: US,
            target_hardware_addr: PEER_MAC,
            target_protocol_addr: PEER,
        }
    );
    assert_eq!(ip.counters().arp_learnt, 1);
    assert_eq!(ip.arp_cache().len(), 1);
    // For someone else: not answered, and its sender not learnt.
    let other = Ipv4Address::new(198, 18, 0, 3);
    let third = EthernetAddress([2, 0, 0, 0, 0, 3]);
    ip.receive(
        t(5),
        FrameMeta::PLAIN,
        &arp(ArpOperation::Request, third, other, PEER),
    );
    assert!(drain(&mut ip).is_empty());
    assert_eq!(ip.counters().arp_not_for_us, 1);
    assert_eq!(ip.arp_cache().len(), 1);
    // Someone claiming our address.
    ip.receive(
        t(5),
        FrameMeta::PLAIN,
        &arp(ArpOperation::Reply, third, US, US),
    );
    assert_eq!(ip.counters().arp_conflict, 1);
}

#[test]
fn ping_s_1472_is_answered_in_one_full_sized_frame() {
    let mut ip = stack();
    learn_peer(&mut ip);
    let packet = ping_packet(1472, 1);
    assert_eq!(packet.len(), 1500);
    ip.receive(t(2), FrameMeta::PLAIN, &to_us(&packet));
    let out = drain(&mut ip);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].frame.len(), 1514);
    let e = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    assert_eq!((e.dst_addr(), e.src_addr()), (PEER_MAC, US_MAC));
    assert!(Ipv4Packet::new_checked(e.payload())
        .unwrap()
        .verify_checksum());
    assert_echo_reply(e.payload(), 1, 1472);
    assert_eq!(ip.counters().icmp_echo_replied, 1);
}

#[test]
fn a_fragmented_ping_s_8000_is_reassembled_and_answered_in_fragments_of_the_mtu() {
    let mut ip = stack();
    learn_peer(&mut ip);
    let packet = ping_packet(8000, 9);
    let mut frags = fragments(&packet, 1500);
    assert_eq!(frags.len(), 6);
    // Out of order, with a duplicate: still one datagram.
    frags.swap(0, 4);
    frags.push(frags[2].clone());
    for f in &frags[..frags.len() - 1] {
        ip.receive(t(3), FrameMeta::PLAIN, &to_us(f));
    }
    let out = drain(&mut ip);
    assert_eq!(ip.counters().frag_reassembled, 1);
    assert!(out.len() >= 6, "{} frames", out.len());
    assert!(out.iter().all(|f| f.frame.len() <= 1514));
    let reply = reassemble(&out);
    assert_echo_reply(&reply, 9, 8000);
    assert_eq!(ip.counters().frag_tx, out.len() as u64);
    // The duplicate after completion starts a new datagram that never completes.
    ip.receive(t(4), FrameMeta::PLAIN, &to_us(&frags[6]));
    assert_eq!(ip.reassembly_usage().0, 1);
    ip.poll(t(4 + Limits::default().reasm_timeout_ms));
    assert_eq!(ip.reassembly_usage(), (0, 0));
    assert_eq!(ip.counters().frag_timeout, 1);
}

#[test]
fn reassembly_is_bounded_in_datagrams_bytes_and_size() {
    let limits = Limits {
        reasm_slots: 2,
        reasm_bytes: 3200,
        ..Limits::default()
    };
    let mut ip = stack_with(limits, 0);
    learn_peer(&mut ip);
    let packets: Vec<Vec<u8>> = (0..3u16)
        .map(|ident| ipv4(PEER, US, IpProtocol::Udp, &pattern(3000), ident))
        .collect();
    for p in &packets {
        ip.receive(t(2), FrameMeta::PLAIN, &to_us(&fragments(p, 1500)[0]));
    }
    assert_eq!(ip.counters().frag_no_room, 1, "no third slot");
    assert_eq!(ip.reassembly_usage(), (2, 3000));
    // The rest of the first would need 1520 bytes more: over the limit, and it goes.
    ip.receive(
        t(2),
        FrameMeta::PLAIN,
        &to_us(&fragments(&packets[0], 1500)[1]),
    );
    assert_eq!(ip.counters().frag_no_room, 2, "no bytes");
    assert_eq!(ip.reassembly_usage(), (1, 1500));
    // Ping of death: a fragment reaching past 65 535 bytes.
    let mut big = ipv4(PEER, US, IpProtocol::Icmp, &pattern(1000), 99);
    let mut p = Ipv4Packet::new_unchecked(&mut big[..]);
    p.set_frag_offset(65_000);
    p.fill_checksum();
    ip.receive(t(2), FrameMeta::PLAIN, &to_us(&big));
    // A non-last fragment whose length is not a multiple of 8.
    let mut odd = ipv4(PEER, US, IpProtocol::Icmp, &pattern(1001), 98);
    let mut p = Ipv4Packet::new_unchecked(&mut odd[..]);
    p.set_more_frags(true);
    p.fill_checksum();
    ip.receive(t(2), FrameMeta::PLAIN, &to_us(&odd));
    assert_eq!(ip.counters().frag_malformed, 2);
    assert!(ip.reassembly_usage().1 <= 4000);
}

#[test]
fn a_reply_waits_for_arp_and_goes_once_the_neighbour_answers() {
    let mut ip = stack();
    ip.receive(t(10), FrameMeta::PLAIN, &to_us(&ping_packet(56, 3)));
    let out = drain(&mut ip);
    assert_eq!(out.len(), 1, "an ARP request, no reply yet");
    let e = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    assert_eq!(e.ethertype(), EthernetProtocol::Arp);
    assert_eq!(ip.arp_cache().waiting().0, 1);
    assert_eq!(ip.next_deadline(), Some(t(1010)));
    ip.receive(
        t(20),
        FrameMeta::PLAIN,
        &arp(ArpOperation::Reply, PEER_MAC, PEER, US),
    );
    let out = drain(&mut ip);
    assert_eq!(out.len(), 1);
    let e = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    assert_eq!(e.dst_addr(), PEER_MAC);
    assert_echo_reply(e.payload(), 3, 56);
    assert_eq!(ip.arp_cache().waiting(), (0, 0));
}

#[test]
fn a_neighbour_that_never_answers_costs_three_requests_then_its_packets() {
    let mut ip = stack();
    ip.receive(t(0), FrameMeta::PLAIN, &to_us(&ping_packet(56, 1)));
    ip.receive(t(0), FrameMeta::PLAIN, &to_us(&ping_packet(56, 2)));
    assert_eq!(drain(&mut ip).len(), 1);
    ip.poll(t(1000));
    ip.poll(t(2000));
    assert_eq!(drain(&mut ip).len(), 2, "two retries");
    ip.poll(t(3000));
    assert!(drain(&mut ip).is_empty());
    assert_eq!(ip.counters().arp_unresolved, 2);
    assert_eq!(ip.counters().arp_requests_sent, 4, "gratuitous + 3");
    assert_eq!(ip.next_deadline(), None);
}

#[test]
fn the_arp_cache_is_bounded_and_entries_expire() {
    let limits = Limits {
        arp_entries: 4,
        ..Limits::default()
    };
    let mut ip = stack_with(limits.clone(), 0);
    for i in 0..10u8 {
        let mac = EthernetAddress([2, 0, 0, 0, 1, i]);
        let ip_addr = Ipv4Address::new(198, 18, 0, 10 + i);
        ip.receive(
            t(u64::from(i)),
            FrameMeta::PLAIN,
            &arp(ArpOperation::Request, mac, ip_addr, US),
        );
    }
    assert_eq!(ip.arp_cache().len(), 4);
    assert_eq!(ip.counters().arp_evicted, 6);
    ip.poll(t(9 + limits.arp_ttl_ms));
    assert!(ip.arp_cache().is_empty());
}

#[test]
fn pending_packets_are_bounded() {
    let limits = Limits {
        arp_pending_packets: 3,
        ..Limits::default()
    };
    let mut ip = stack_with(limits, 0);
    for seq in 0..5 {
        ip.receive(t(0), FrameMeta::PLAIN, &to_us(&ping_packet(56, seq)));
    }
    assert_eq!(ip.arp_cache().waiting().0, 3);
    assert_eq!(ip.counters().arp_pending_full, 2);
}

#[test]
fn a_protocol_nobody_serves_is_counted_and_answered_protocol_unreachable() {
    let mut ip = stack();
    learn_peer(&mut ip);
    let gre = ipv4(PEER, US, IpProtocol::Unknown(47), &pattern(40), 5);
    ip.receive(t(2), FrameMeta::PLAIN, &to_us(&gre));
    // No upper layer: TCP is nobody's either.
    let tcp = ipv4(PEER, US, IpProtocol::Tcp, &pattern(40), 6);
    ip.receive(t(2), FrameMeta::PLAIN, &to_us(&tcp));
    assert_eq!(ip.counters().no_protocol, 2);
    let out = drain(&mut ip);
    assert_eq!(out.len(), 2);
    let e = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    let p = Ipv4Packet::new_checked(e.payload()).unwrap();
    let icmp = Icmpv4Packet::new_checked(p.payload()).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (Icmpv4Message::DstUnreachable, Unreachable::Protocol as u8)
    );
    assert_eq!(&icmp.data()[..28], &gre[..28], "quotes header + 8 bytes");
    assert_eq!(ip.counters().icmp_errors_sent, 2);
}

#[test]
fn icmp_errors_are_rate_limited() {
    let limits = Limits {
        icmp_errors_per_s: 2,
        ..Limits::default()
    };
    let mut ip = stack_with(limits, 0);
    learn_peer(&mut ip);
    for i in 0..5 {
        let p = ipv4(PEER, US, IpProtocol::Unknown(99), &[0; 8], i);
        ip.receive(t(2000), FrameMeta::PLAIN, &to_us(&p));
    }
    assert_eq!(ip.counters().icmp_errors_sent, 2);
    assert_eq!(ip.counters().icmp_errors_limited, 3);
}

#[test]
fn with_an_upper_layer_tcp_goes_up_with_its_offload_metadata_shifted() {
    let mut ip = stack();
    ip.set_upper(true);
    let tcp = ipv4(PEER, US, IpProtocol::Tcp, &pattern(40), 6);
    let meta = FrameMeta {
        flags: compart_proto::frame::FLAG_DATA_VALID,
        ..FrameMeta::PLAIN
    };
    ip.receive(t(2), meta, &to_us(&tcp));
    let up = ip.pop_up().unwrap();
    assert_eq!(up.packet, tcp);
    assert_eq!(up.meta.flags, compart_proto::packet::FLAG_DATA_VALID);
    // A partial checksum: csum_start counts from the IP header above.
    let meta = FrameMeta {
        flags: FLAG_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..FrameMeta::PLAIN
    };
    ip.receive(t(2), meta, &to_us(&tcp));
    assert_eq!(ip.pop_up().unwrap().meta.csum_start, 20);
    // Metadata that points outside the packet.
    let bad = FrameMeta {
        csum_start: 70,
        ..meta
    };
    ip.receive(t(2), bad, &to_us(&tcp));
    assert_eq!(ip.counters().rx_bad_meta, 1);
    assert!(ip.pop_up().is_none());
}

#[test]
fn wrong_headers_are_counted_under_their_reason() {
    let mut ip = stack();
    learn_peer(&mut ip);
    let good = ping_packet(56, 1);
    let mut cases: Vec<(Vec<u8>, fn(&crate::Counters) -> u64)> = Vec::new();
    let mut bad_sum = good.clone();
    bad_sum[10] ^= 1;
    cases.push((to_us(&bad_sum), |c| c.ip_bad_checksum));
    let mut v6 = good.clone();
    v6[0] = 0x65;
    cases.push((to_us(&v6), |c| c.ip_malformed));
    cases.push((to_us(&good[..30]), |c| c.ip_malformed));
    cases.push((
        to_us(&ipv4(
            PEER,
            Ipv4Address::new(198, 18, 0, 7),
            IpProtocol::Icmp,
            &[0; 8],
            1,
        )),
        |c| c.ip_not_for_us,
    ));
    cases.push((
        to_us(&ipv4(
            Ipv4Address::new(224, 0, 0, 1),
            US,
            IpProtocol::Icmp,
            &[0; 8],
            1,
        )),
        |c| c.ip_bad_src,
    ));
    cases.push((
        eth(
            EthernetAddress([2, 9, 9, 9, 9, 9]),
            PEER_MAC,
            EthernetProtocol::Ipv4,
            &good,
        ),
        |c| c.rx_not_for_us,
    ));
    cases.push((
        eth(US_MAC, PEER_MAC, EthernetProtocol::Unknown(0x86dd), &good),
        |c| c.rx_unknown_ethertype,
    ));
    cases.push((vec![0; 13], |c| c.rx_runt));
    // An echo request to the network's broadcast address is not answered (smurf).
    let to_all = ipv4(
        PEER,
        Ipv4Address::new(198, 18, 0, 255),
        IpProtocol::Icmp,
        &echo_request(1, 1, &[0; 8]),
        1,
    );
    cases.push((
        eth(
            EthernetAddress::BROADCAST,
            PEER_MAC,
            EthernetProtocol::Ipv4,
            &to_all,
        ),
        |c| c.ip_broadcast,
    ));
    let mut icmp_sum = good.clone();
    icmp_sum[30] ^= 0xff;
    cases.push((to_us(&icmp_sum), |c| c.icmp_malformed));
    let mut arp_short = arp(ArpOperation::Request, PEER_MAC, PEER, US);
    arp_short.truncate(30);
    cases.push((arp_short, |c| c.arp_malformed));
    for (i, (frame, counter)) in cases.into_iter().enumerate() {
        let before = counter(ip.counters());
        ip.receive(t(2), FrameMeta::PLAIN, &frame);
        assert_eq!(counter(ip.counters()), before + 1, "case {i}");
        assert!(drain(&mut ip).is_empty(), "case {i}: nothing sent");
    }
    // Ethernet padding after the IP packet is ignored.
    let mut padded = to_us(&ping_packet(4, 2));
    padded.extend_from_slice(&[0; 20]);
    ip.receive(t(2), FrameMeta::PLAIN, &padded);
    assert_eq!(drain(&mut ip).len(), 1);
}

fn tcp_from_us(dst: Ipv4Address, len: usize, df: bool) -> Vec<u8> {
    let mut v = ipv4(US, dst, IpProtocol::Tcp, &pattern(len), 40);
    let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
    p.set_dont_frag(df);
    p.set_checksum(0); // ip fills it in
    v
}

#[test]
fn packets_from_above_are_routed_checked_and_fragmented() {
    let mut ip = stack();
    learn_peer(&mut ip);
    // Off the connected network: through the gateway (the peer), whose MAC we know.
    let p = tcp_from_us(Ipv4Address::new(8, 8, 8, 8), 100, true);
    assert_eq!(ip.send(t(2), PacketMeta::PLAIN, &p), Ok(()));
    let out = drain(&mut ip);
    let e = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    assert_eq!(e.dst_addr(), PEER_MAC);
    assert!(Ipv4Packet::new_checked(e.payload())
        .unwrap()
        .verify_checksum());
    // Via the static route: ARP for its router.
    assert_eq!(
        ip.send(
            t(2),
            PacketMeta::PLAIN,
            &tcp_from_us(Ipv4Address::new(10, 1, 1, 1), 100, true)
        ),
        Ok(())
    );
    let out = drain(&mut ip);
    let e = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    let ArpRepr::EthernetIpv4 {
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&ArpPacket::new_checked(e.payload()).unwrap()).unwrap()
    else {
        panic!()
    };
    assert_eq!(target_protocol_addr, Ipv4Address::new(198, 18, 0, 9));
    // Too big with DF; fragmented without.
    let big = tcp_from_us(PEER, 3000, true);
    assert_eq!(
        ip.send(t(2), PacketMeta::PLAIN, &big),
        Err(DropReason::TooBig)
    );
    let big = tcp_from_us(PEER, 3000, false);
    assert_eq!(ip.send(t(2), PacketMeta::PLAIN, &big), Ok(()));
    let out = drain(&mut ip);
    assert_eq!(out.len(), 3);
    let mut want = big.clone();
    Ipv4Packet::new_unchecked(&mut want[..]).fill_checksum();
    let mut got = reassemble(&out);
    Ipv4Packet::new_unchecked(&mut got[..]).fill_checksum();
    assert_eq!(got, want);
    // Not from us; malformed; no route (no gateway).
    let mut spoofed = big.clone();
    spoofed[12] = 1;
    assert_eq!(
        ip.send(t(2), PacketMeta::PLAIN, &spoofed),
        Err(DropReason::BadSource)
    );
    assert_eq!(
        ip.send(t(2), PacketMeta::PLAIN, &big[..100]),
        Err(DropReason::Malformed)
    );
    let mut no_gw = Ip::new(
        Settings::new(settings().cidr, None, vec![]).unwrap(),
        Limits::default(),
    );
    no_gw.link_up(t(0), US_MAC.0, 1500, 0).unwrap();
    let off_net = tcp_from_us(Ipv4Address::new(8, 8, 8, 8), 10, true);
    assert_eq!(
        no_gw.send(t(2), PacketMeta::PLAIN, &off_net),
        Err(DropReason::NoRoute)
    );
}

/// A TCP packet from us with a partial checksum (the pseudo-header sum in its field),
/// as smoltcp makes one with checksum offload.
fn partial_tcp(len: usize) -> (Vec<u8>, PacketMeta) {
    let mut v = tcp_from_us(PEER, len, false);
    let tcp_len = v.len() - 20;
    let pseudo =
        smoltcp::wire::checksum::pseudo_header_v4(&US, &PEER, IpProtocol::Tcp, tcp_len as u32);
    v[36..38].copy_from_slice(&pseudo.to_be_bytes());
    let meta = PacketMeta {
        flags: compart_proto::packet::FLAG_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..PacketMeta::PLAIN
    };
    (v, meta)
}

fn tcp_checksum_ok(packet: &[u8]) -> bool {
    let p = Ipv4Packet::new_checked(packet).unwrap();
    let tcp = p.payload();
    let pseudo = smoltcp::wire::checksum::pseudo_header_v4(
        &p.src_addr(),
        &p.dst_addr(),
        IpProtocol::Tcp,
        tcp.len() as u32,
    );
    smoltcp::wire::checksum::combine(&[pseudo, smoltcp::wire::checksum::data(tcp)]) == 0xffff
}

#[test]
fn partial_checksums_are_offloaded_when_the_device_can_and_completed_when_not() {
    let (v, meta) = partial_tcp(200);
    let mut ip = stack();
    learn_peer(&mut ip);
    ip.send(t(2), meta, &v).unwrap();
    let out = drain(&mut ip);
    assert_eq!(out[0].meta, FrameMeta::PLAIN);
    assert!(tcp_checksum_ok(&out[0].frame[14..]));
    let mut ip = stack_with(Limits::default(), offload::TX_CSUM);
    learn_peer(&mut ip);
    ip.send(t(2), meta, &v).unwrap();
    let out = drain(&mut ip);
    assert_eq!(
        (
            out[0].meta.flags,
            out[0].meta.csum_start,
            out[0].meta.csum_offset
        ),
        (FLAG_NEEDS_CSUM, 34, 16)
    );
    // Fragmenting it completes the checksum first.
    let (v, meta) = partial_tcp(4000);
    ip.send(t(2), meta, &v).unwrap();
    let out = drain(&mut ip);
    assert!(out.len() > 1 && out.iter().all(|f| f.meta == FrameMeta::PLAIN));
    assert!(tcp_checksum_ok(&reassemble(&out)));
}

#[test]
fn gso_super_packets_go_whole_to_a_device_that_segments_and_are_refused_otherwise() {
    let (v, mut meta) = partial_tcp(30_000);
    meta.gso = Gso::TcpV4;
    meta.gso_size = 1448;
    meta.hdr_len = 40;
    let mut ip = stack();
    learn_peer(&mut ip);
    assert_eq!(ip.send(t(2), meta, &v), Err(DropReason::TooBig));
    let mut ip = stack_with(Limits::default(), offload::TX_CSUM | offload::TX_TSO4);
    learn_peer(&mut ip);
    ip.send(t(2), meta, &v).unwrap();
    let out = drain(&mut ip);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].meta.gso, out[0].meta.gso_size, out[0].meta.hdr_len),
        (Gso::TcpV4, 1448, 54)
    );
}

#[test]
fn options_marked_copy_are_kept_in_every_fragment_and_the_others_only_in_the_first() {
    let mut ip = stack();
    learn_peer(&mut ip);
    // A header with options: NOP, record route (7, not copied, 7 bytes), and a copied
    // option (0x94, router alert, 4 bytes), padded to 32 bytes.
    let mut v = tcp_from_us(PEER, 3000, false);
    let opts = [1u8, 7, 7, 4, 0, 0, 0, 0, 0x94, 4, 0, 0];
    v.splice(20..20, opts.iter().copied());
    let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
    p.set_header_len(32);
    p.set_total_len(3032);
    ip.send(t(2), PacketMeta::PLAIN, &v).unwrap();
    let out = drain(&mut ip);
    let headers: Vec<usize> = out
        .iter()
        .map(|f| {
            usize::from(
                Ipv4Packet::new_checked(&f.frame[14..])
                    .unwrap()
                    .header_len(),
            )
        })
        .collect();
    assert_eq!(headers[0], 32);
    assert!(headers[1..].iter().all(|&h| h == 24), "{headers:?}");
    assert_eq!(&out[1].frame[14 + 20..14 + 24], &[0x94, 4, 0, 0]);
    // Options that run past the header: refused.
    let mut bad = v.clone();
    bad[22] = 40;
    assert_eq!(
        ip.send(t(2), PacketMeta::PLAIN, &bad),
        Err(DropReason::Malformed)
    );
    assert!(drain(&mut ip).is_empty());
}

/// A valid frame of some kind, to mutate.
fn sample(kind: u8, n: usize) -> Vec<u8> {
    match kind % 4 {
        0 => arp(ArpOperation::Request, PEER_MAC, PEER, US),
        1 => to_us(&ping_packet(n, 1)),
        2 => to_us(&fragments(&ping_packet(n.max(1600), 2), 1500)[0]),
        _ => to_us(&ipv4(PEER, US, IpProtocol::Tcp, &pattern(n), 3)),
    }
}

fn meta_strategy() -> impl Strategy<Value = FrameMeta> {
    (
        0u8..4,
        prop_oneof![Just(Gso::None), Just(Gso::TcpV4), Just(Gso::Udp)],
        any::<(u16, u16, u16, u16)>(),
    )
        .prop_map(
            |(flags, gso, (hdr_len, gso_size, csum_start, csum_offset))| FrameMeta {
                flags,
                gso,
                ecn: false,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
            },
        )
}

/// What must hold after any input: the queues and caches within their limits.
fn within_limits(ip: &Ip, limits: &Limits) {
    assert!(ip.arp_cache().len() <= limits.arp_entries);
    let (n, bytes) = ip.arp_cache().waiting();
    assert!(
        n <= limits.arp_pending_hops * limits.arp_pending_packets
            && bytes <= limits.arp_pending_bytes
    );
    let (slots, bytes) = ip.reassembly_usage();
    assert!(slots <= limits.reasm_slots && bytes <= limits.reasm_bytes);
}

proptest! {
    #[test]
    fn random_frames_never_panic(
        payloads in proptest::collection::vec((0u8..4, proptest::collection::vec(any::<u8>(), 0..1600)), 1..20),
        meta in meta_strategy(), upper in any::<bool>(),
    ) {
        let mut ip = stack();
        ip.set_upper(upper);
        learn_peer(&mut ip);
        // Random bytes behind a header that gets them past Ethernet, mostly.
        let frames = payloads.iter().map(|(kind, p)| match kind {
            0 => eth(US_MAC, PEER_MAC, EthernetProtocol::Ipv4, p),
            1 => eth(EthernetAddress::BROADCAST, PEER_MAC, EthernetProtocol::Arp, p),
            2 => {
                // An IPv4 header that checks out, random behind it.
                let mut v = ipv4(PEER, US, IpProtocol::Icmp, p, 1);
                if let Some(&b) = p.first() {
                    let mut h = Ipv4Packet::new_unchecked(&mut v[..]);
                    h.set_next_header(IpProtocol::from(b % 20));
                    h.set_more_frags(b & 0x20 != 0);
                    h.fill_checksum();
                }
                to_us(&v)
            }
            _ => p.clone(),
        });
        for (i, f) in frames.enumerate() {
            ip.receive(t(i as u64 * 500), meta, &f);
            ip.receive(t(i as u64 * 500), FrameMeta::PLAIN, &f);
        }
        within_limits(&ip, &Limits::default());
        drain(&mut ip);
        while ip.pop_up().is_some() {}
    }

    #[test]
    fn mutated_frames_never_panic_and_every_frame_is_accounted_for(
        kind in any::<u8>(), n in 0usize..3000,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(), meta in meta_strategy(), upper in any::<bool>(),
    ) {
        let limits = Limits { reasm_slots: 2, arp_entries: 2, ..Limits::default() };
        let mut ip = stack_with(limits.clone(), offload::TX_CSUM);
        ip.set_upper(upper);
        let mut f = sample(kind, n);
        for (at, x) in flips {
            let at = at % f.len();
            f[at] ^= x;
        }
        f.truncate(cut % (f.len() + 1) + 14.min(f.len()));
        ip.receive(t(1), meta, &f);
        ip.receive(t(1), FrameMeta::PLAIN, &f);
        within_limits(&ip, &limits);
        prop_assert_eq!(ip.counters().rx_frames, 2);
        for tx in drain(&mut ip) {
            prop_assert!(tx.frame.len() <= 1514, "nothing sent beyond the MTU");
        }
    }

    #[test]
    fn packets_from_above_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..3000), meta in meta_strategy(),
        len in 20usize..3000, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
    ) {
        let mut ip = stack_with(Limits::default(), offload::TX_CSUM | offload::TX_TSO4);
        learn_peer(&mut ip);
        let pmeta = PacketMeta { flags: meta.flags, gso: meta.gso, ecn: meta.ecn, hdr_len: meta.hdr_len, gso_size: meta.gso_size, csum_start: meta.csum_start, csum_offset: meta.csum_offset };
        let _ = ip.send(t(2), pmeta, &bytes);
        let mut v = tcp_from_us(PEER, len, false);
        for (at, x) in flips {
            let at = at % v.len();
            v[at] ^= x;
        }
        let _ = ip.send(t(2), pmeta, &v);
        let _ = ip.send(t(2), PacketMeta::PLAIN, &v);
        for tx in drain(&mut ip) {
            prop_assert!(tx.frame.len() <= 1514 || tx.meta.gso != Gso::None);
        }
    }
}

#[test]
fn a_datagram_whose_first_header_pushes_it_past_64_kib_is_dropped() {
    let mut ip = stack();
    learn_peer(&mut ip);
    let frag = |off: usize, len: usize, more: bool, options: usize| {
        let mut v = ipv4(PEER, US, IpProtocol::Udp, &pattern(len), 77);
        v.splice(20..20, core::iter::repeat_n(1u8, options));
        let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
        p.set_header_len((20 + options) as u8);
        p.set_total_len((20 + options + len) as u16);
        p.set_frag_offset(off as u16);
        p.set_more_frags(more);
        p.fill_checksum();
        to_us(&v)
    };
    // The first fragment with a 60-byte header, the rest with 20: each fragment fits,
    // the whole would be 60 + 65 515 bytes.
    ip.receive(t(1), FrameMeta::PLAIN, &frag(0, 8, true, 40));
    let mut off = 8;
    while off < 65_504 {
        let n = 1480.min(65_504 - off);
        ip.receive(t(1), FrameMeta::PLAIN, &frag(off, n, true, 0));
        off += n;
    }
    ip.receive(t(1), FrameMeta::PLAIN, &frag(65_504, 11, false, 0));
    assert_eq!(ip.counters().frag_malformed, 1);
    assert_eq!(ip.counters().frag_reassembled, 0);
    assert_eq!(ip.reassembly_usage(), (0, 0));
}

#[test]
fn an_arp_probe_for_our_address_is_answered_and_teaches_nothing() {
    let mut ip = stack();
    let probe = arp(
        ArpOperation::Request,
        PEER_MAC,
        Ipv4Address::UNSPECIFIED,
        US,
    );
    ip.receive(t(1), FrameMeta::PLAIN, &probe);
    let out = drain(&mut ip);
    assert_eq!(out.len(), 1, "the prober learns the address is taken");
    assert!(ip.arp_cache().is_empty());
    assert_eq!(ip.counters().arp_replies_sent, 1);
}

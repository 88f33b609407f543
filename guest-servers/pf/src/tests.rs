//! The filter, packet by packet: rules, the connection table, parsing of hostile packets.
extern crate std;

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use crate::conntrack::{State, TcpState};
use crate::filter::Refusal;
use crate::flow::{self, Key, Kind, ParseError, TcpFlags, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::rules::{Action, Dir, Proto, Rules};
use crate::{Filter, Instant, Limits, Verdict};

pub const US: [u8; 4] = [198, 18, 0, 2];
pub const PEER: [u8; 4] = [198, 18, 0, 1];
pub const FAR: [u8; 4] = [10, 1, 2, 3];

pub fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// An IPv4 packet (header checksum filled in) around `l4`.
pub fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
    let len = 20 + l4.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let mut v = smoltcp::wire::Ipv4Packet::new_unchecked(&mut p[..]);
    v.fill_checksum();
    p[20..].copy_from_slice(l4);
    p
}

pub const SYN: TcpFlags = TcpFlags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
pub const SYNACK: TcpFlags = TcpFlags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
pub const ACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};
pub const FINACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};
pub const RST: TcpFlags = TcpFlags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
};

pub fn tcp(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    f: TcpFlags,
    data: usize,
) -> Vec<u8> {
    tcp_at(src, sport, dst, dport, f, 0, 0, data)
}

/// A TCP segment with sequence number `seq` and window `window`.
#[allow(clippy::too_many_arguments)]
pub fn tcp_at(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    f: TcpFlags,
    seq: u32,
    window: u16,
    data: usize,
) -> Vec<u8> {
    let mut l4 = vec![0u8; 20 + data];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[4..8].copy_from_slice(&seq.to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = u8::from(f.fin) | u8::from(f.syn) << 1 | u8::from(f.rst) << 2 | u8::from(f.ack) << 4;
    l4[14..16].copy_from_slice(&window.to_be_bytes());
    ipv4(PROTO_TCP, src, dst, &l4)
}

pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut l4 = vec![0u8; 12];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[4..6].copy_from_slice(&12u16.to_be_bytes());
    ipv4(PROTO_UDP, src, dst, &l4)
}

pub fn icmp(src: [u8; 4], dst: [u8; 4], ty: u8, ident: u16, data: &[u8]) -> Vec<u8> {
    let mut l4 = vec![ty, 0, 0, 0];
    l4.extend_from_slice(&ident.to_be_bytes());
    l4.extend_from_slice(&[0, 1]);
    l4.extend_from_slice(data);
    ipv4(PROTO_ICMP, src, dst, &l4)
}

fn filter(rules: &str, default: Option<&str>) -> Filter {
    Filter::new(Rules::parse(rules, default).unwrap(), Limits::default())
}

fn pass(f: &mut Filter, dir: Dir, p: &[u8], ms: u64) -> bool {
    f.check(dir, p, t(ms)) == Verdict::Pass
}

#[test]
fn rules_parse_print_and_refuse_nonsense() {
    let r = Rules::parse(
        "in:tcp:5201,in:tcp:8000-8080:198.18.0.0/24,in:icmp,deny:out:udp:53,allow:out:any:10.0.0.1",
        None,
    )
    .unwrap();
    assert_eq!(r.rules().len(), 5);
    assert_eq!(r.default_action(), Action::Deny);
    assert_eq!(r.rules()[1].ports, Some((8000, 8080)));
    assert_eq!(r.rules()[1].net, Some(([198, 18, 0, 0], 24)));
    assert_eq!(r.rules()[3].action, Action::Deny);
    assert_eq!(r.rules()[4].proto, Proto::Any);
    assert_eq!(r.rules()[4].net, Some(([10, 0, 0, 1], 32)));
    assert_eq!(
        alloc::format!("{r}"),
        "rules=allow:in:tcp:5201,allow:in:tcp:8000-8080:198.18.0.0/24,allow:in:icmp,\
         deny:out:udp:53,allow:out:any:10.0.0.1/32 default=deny"
    );
    // What it prints parses back to the same rules.
    let printed = alloc::format!("{r}");
    let text = printed
        .strip_prefix("rules=")
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(Rules::parse(text, None).unwrap(), r);
    assert_eq!(Rules::parse("", Some("allow")).unwrap(), Rules::allow_all());
    for bad in [
        "up:tcp",
        "in:sctp",
        "in:icmp:80",
        "in:tcp:70000",
        "in:tcp:9-8",
        "in:tcp:1.2.3",
        "in:tcp:1.2.3.4/33",
        "in:tcp:1.2.3.4:80",
        "in:tcp:80:81",
        "in:tcp:1.2.3.4:5.6.7.8",
        "in:tcp:256.0.0.1",
        "in:tcp:+1",
        "in:tcp:1.2.3.4/+8",
        "deny",
    ] {
        let e = Rules::parse(&alloc::format!("in:any,{bad}"), None).unwrap_err();
        assert_eq!(e.index, 1, "{bad}");
    }
    assert!(Rules::parse("", Some("maybe")).is_err());
    let many = vec!["in:any"; 65].join(",");
    assert_eq!(Rules::parse(&many, None).unwrap_err().why, "too many rules");
}

#[test]
fn rules_match_direction_protocol_ports_and_the_other_ends_network() {
    let mut f = filter(
        "in:tcp:5201,in:tcp:8000-8080:198.18.0.0/24,in:icmp,deny:out:udp:53,out:any",
        None,
    );
    assert!(pass(&mut f, Dir::In, &tcp(FAR, 40000, US, 5201, SYN, 0), 0));
    assert!(!pass(
        &mut f,
        Dir::In,
        &tcp(FAR, 40000, US, 5202, SYN, 0),
        0
    ));
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp(PEER, 40000, US, 8000, SYN, 0),
        0
    ));
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp(PEER, 40000, US, 8080, SYN, 0),
        0
    ));
    assert!(!pass(
        &mut f,
        Dir::In,
        &tcp(PEER, 40000, US, 8081, SYN, 0),
        0
    ));
    assert!(
        !pass(&mut f, Dir::In, &tcp(FAR, 40001, US, 8000, SYN, 0), 0),
        "not from 198.18.0.0/24"
    );
    assert!(
        !pass(&mut f, Dir::In, &udp(FAR, 40000, US, 5201), 0),
        "udp is not tcp"
    );
    assert!(
        pass(&mut f, Dir::In, &icmp(FAR, US, 13, 1, &[0; 12]), 0),
        "any icmp"
    );
    assert!(
        !pass(&mut f, Dir::Out, &udp(US, 5000, FAR, 53), 0),
        "denied before out:any"
    );
    assert!(pass(&mut f, Dir::Out, &udp(US, 5000, FAR, 54), 0));
    assert!(
        pass(&mut f, Dir::Out, &ipv4(47, US, FAR, &[0; 8]), 0),
        "any protocol"
    );
    let c = f.counters();
    assert_eq!((c.in_passed, c.in_denied_rule), (4, 4));
    assert_eq!((c.out_passed, c.out_denied_rule), (2, 1));
}

#[test]
fn an_outbound_connection_lets_its_replies_in_and_nothing_else() {
    let mut f = filter("out:any", None);
    let syn = tcp(US, 40000, FAR, 80, SYN, 0);
    assert!(pass(&mut f, Dir::Out, &syn, 0));
    assert_eq!(f.counters().conn_created, 1);
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp(FAR, 80, US, 40000, SYNACK, 0),
        1
    ));
    assert!(pass(&mut f, Dir::Out, &tcp(US, 40000, FAR, 80, ACK, 0), 2));
    let key = Key::new(Dir::Out, PROTO_TCP, US, 40000, FAR, 80);
    assert_eq!(
        f.table().get(&key, t(2)).unwrap().state,
        State::Tcp(TcpState::Established)
    );
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp(FAR, 80, US, 40000, ACK, 1000),
        3
    ));
    // Unrelated inbound: another port, another host, another protocol, a forged SYN/ACK.
    assert!(!pass(&mut f, Dir::In, &tcp(FAR, 80, US, 40001, ACK, 0), 4));
    assert!(!pass(&mut f, Dir::In, &tcp(PEER, 80, US, 40000, ACK, 0), 4));
    assert!(!pass(&mut f, Dir::In, &udp(FAR, 80, US, 40000), 4));
    assert!(!pass(
        &mut f,
        Dir::In,
        &tcp(FAR, 81, US, 40000, SYNACK, 0),
        4
    ));
    assert_eq!(f.counters().in_denied_rule, 4);
    assert_eq!(f.counters().in_tracked, 2);
    // Closing: both FINs, then the last ACK; the entry is then closed, and times out fast.
    assert!(pass(
        &mut f,
        Dir::Out,
        &tcp(US, 40000, FAR, 80, FINACK, 0),
        5
    ));
    assert_eq!(
        f.table().get(&key, t(5)).unwrap().state,
        State::Tcp(TcpState::Closing)
    );
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp(FAR, 80, US, 40000, FINACK, 0),
        6
    ));
    assert!(pass(&mut f, Dir::Out, &tcp(US, 40000, FAR, 80, ACK, 0), 7));
    assert_eq!(
        f.table().get(&key, t(7)).unwrap().state,
        State::Tcp(TcpState::Closed)
    );
    let closed = Limits::default().tcp_closed_ms;
    assert!(f.table().get(&key, t(7 + closed)).is_none());
    assert!(!pass(
        &mut f,
        Dir::In,
        &tcp(FAR, 80, US, 40000, ACK, 0),
        7 + closed
    ));
}

#[test]
fn udp_and_echo_are_tracked_and_icmp_errors_about_tracked_packets_are_related() {
    let mut f = filter("out:udp,out:icmp", None);
    assert!(pass(&mut f, Dir::Out, &udp(US, 5353, FAR, 53), 0));
    assert!(pass(&mut f, Dir::In, &udp(FAR, 53, US, 5353), 1));
    assert!(!pass(&mut f, Dir::In, &udp(FAR, 54, US, 5353), 1));
    assert!(pass(&mut f, Dir::Out, &icmp(US, FAR, 8, 0x77, b"ping"), 2));
    assert!(pass(&mut f, Dir::In, &icmp(FAR, US, 0, 0x77, b"ping"), 3));
    assert!(
        !pass(&mut f, Dir::In, &icmp(FAR, US, 0, 0x78, b"ping"), 3),
        "another ident"
    );
    // A router says our datagram's port is unreachable, quoting it.
    let sent = udp(US, 5353, FAR, 53);
    let err = icmp(PEER, US, 3, 0, &sent[..28]);
    assert!(pass(&mut f, Dir::In, &err, 4));
    assert_eq!(f.counters().related, 1);
    // …not about a packet of no tracked connection, nor with a cut quote.
    let other = udp(US, 5354, FAR, 53);
    assert!(!pass(
        &mut f,
        Dir::In,
        &icmp(PEER, US, 3, 0, &other[..28]),
        4
    ));
    assert!(!pass(
        &mut f,
        Dir::In,
        &icmp(PEER, US, 11, 0, &sent[..24]),
        4
    ));
    assert_eq!(f.counters().conn_created, 2);
}

#[test]
fn entries_expire_per_protocol_and_state_and_scans_take_them_out() {
    let l = Limits::default();
    let mut f = filter("out:any", None);
    assert!(pass(&mut f, Dir::Out, &udp(US, 1, FAR, 2), 0));
    assert!(pass(&mut f, Dir::Out, &tcp(US, 1, FAR, 2, SYN, 0), 0));
    assert!(pass(&mut f, Dir::Out, &icmp(US, FAR, 8, 5, &[]), 0));
    assert_eq!(f.table().len(), 3);
    assert_eq!(f.next_deadline(), Some(t(l.icmp_ms)));
    let udp_key = Key::new(Dir::Out, PROTO_UDP, US, 1, FAR, 2);
    // The reply resets UDP's timer to the longer one.
    assert!(pass(&mut f, Dir::In, &udp(FAR, 2, US, 1), 10_000));
    assert_eq!(
        f.table().get(&udp_key, t(10_000)).unwrap().expires,
        t(10_000 + l.udp_ms)
    );
    f.poll(t(l.icmp_ms));
    assert_eq!(f.table().len(), 2, "the echo went");
    f.poll(t(l.tcp_opening_ms));
    assert_eq!(f.table().len(), 1, "the half-open connection went");
    // The next scan is a scan interval later at the earliest, and then the UDP flow goes.
    assert!(f.next_deadline().unwrap() >= t(l.tcp_opening_ms + l.scan_interval_ms));
    assert!(!pass(
        &mut f,
        Dir::In,
        &udp(FAR, 2, US, 1),
        10_000 + l.udp_ms
    ));
    f.poll(t(10_000 + l.udp_ms + l.scan_interval_ms));
    assert!(f.table().is_empty());
    assert_eq!(f.next_deadline(), None);
    assert_eq!(f.table().expired(), 3);
    assert_eq!(
        f.counters().conn_expired,
        3,
        "counted, so the image prints it"
    );
    assert_eq!(f.table().peak(), 3);
}

#[test]
fn every_timeout_has_its_command_line_key() {
    let mut l = Limits::default();
    for (k, key) in Limits::TIMEOUT_KEYS.iter().enumerate() {
        *l.timeout_mut(key).unwrap() = 1 + k as u64;
    }
    let want = Limits {
        conntrack_entries: l.conntrack_entries,
        tcp_opening_ms: 1,
        tcp_established_ms: 2,
        tcp_closing_ms: 3,
        tcp_closed_ms: 4,
        udp_first_ms: 5,
        udp_ms: 6,
        icmp_ms: 7,
        scan_interval_ms: 8,
    };
    assert_eq!(l, want);
    assert_eq!(l.timeout_mut("conntrack_entries"), None);
    assert_eq!(l.timeout_mut("tcp_opening"), None);
}

#[test]
fn a_full_table_refuses_new_connections_counts_them_and_keeps_the_old() {
    let limits = Limits {
        conntrack_entries: 8,
        ..Limits::default()
    };
    let mut f = Filter::new(Rules::parse("out:any,in:tcp:80", None).unwrap(), limits);
    for port in 0..8 {
        assert!(pass(&mut f, Dir::Out, &udp(US, 1000 + port, FAR, 53), 0));
    }
    for port in 0..20 {
        assert_eq!(
            f.check(Dir::Out, &udp(US, 2000 + port, FAR, 53), t(1)),
            Verdict::Refuse(Refusal::TableFull)
        );
    }
    assert_eq!(
        f.check(Dir::In, &tcp(FAR, 1, US, 80, SYN, 0), t(1)),
        Verdict::Refuse(Refusal::TableFull)
    );
    assert_eq!(f.table().len(), 8);
    assert_eq!(f.counters().out_table_full, 20);
    assert_eq!(f.counters().in_table_full, 1);
    // The old ones still pass, both ways; a packet that opens nothing still passes.
    assert!(pass(&mut f, Dir::In, &udp(FAR, 53, US, 1003), 2));
    assert!(pass(&mut f, Dir::Out, &tcp(US, 9, FAR, 9, ACK, 0), 2));
    // Once they expire, new ones get in again.
    let later = Limits::default().udp_ms + 10;
    assert!(pass(&mut f, Dir::Out, &udp(US, 3000, FAR, 53), later));
    assert_eq!(f.table().len(), 1);
    assert_eq!(f.table().peak(), 8, "never above its bound");
    assert_eq!(f.counters().conn_expired, 8);
}

#[test]
fn rsts_and_fins_outside_the_window_close_nothing_and_those_inside_do() {
    let mut f = filter("in:tcp:7", None);
    let key = Key::new(Dir::In, PROTO_TCP, FAR, 5000, US, 7);
    let state = |f: &Filter, ms| f.table().get(&key, t(ms)).unwrap().state;
    // FAR opens from 1000 (window 4096), we answer from 9000 (window 8192); 100 bytes
    // each way.
    let (isn, our) = (1000u32, 9000u32);
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp_at(FAR, 5000, US, 7, SYN, isn, 4096, 0),
        0
    ));
    assert!(pass(
        &mut f,
        Dir::Out,
        &tcp_at(US, 7, FAR, 5000, SYNACK, our, 8192, 0),
        1
    ));
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp_at(FAR, 5000, US, 7, ACK, isn + 1, 4096, 100),
        2
    ));
    assert!(pass(
        &mut f,
        Dir::Out,
        &tcp_at(US, 7, FAR, 5000, ACK, our + 1, 8192, 100),
        3
    ));
    assert_eq!(state(&f, 3), State::Tcp(TcpState::Established));
    // Blind RSTs and FINs, both ways, far from where either end is: they pass (each end
    // answers them as RFC 5961 says) but the connection stays established, and a SYN
    // after them does not start it over.
    for k in 0..50u32 {
        let far = isn.wrapping_add(0x8000_0000).wrapping_add(k * 7919);
        assert!(pass(
            &mut f,
            Dir::In,
            &tcp_at(FAR, 5000, US, 7, RST, far, 0, 0),
            4
        ));
        assert!(pass(
            &mut f,
            Dir::In,
            &tcp_at(FAR, 5000, US, 7, FINACK, far, 0, 0),
            4
        ));
        let ours = our.wrapping_add(0x4000_0000).wrapping_add(k);
        assert!(pass(
            &mut f,
            Dir::Out,
            &tcp_at(US, 7, FAR, 5000, RST, ours, 0, 0),
            4
        ));
        // Forged data far ahead does not drag the window along for a later RST.
        assert!(pass(
            &mut f,
            Dir::In,
            &tcp_at(FAR, 5000, US, 7, ACK, far, 0, 100),
            4
        ));
    }
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp_at(FAR, 5000, US, 7, SYN, isn + 0x9000_0000, 4096, 0),
        5
    ));
    assert_eq!(state(&f, 5), State::Tcp(TcpState::Established));
    assert_eq!(f.table().get(&key, t(5)).unwrap().out_of_window, 150);
    assert_eq!(f.counters().conn_created, 1);
    // A RST where the sender is (a little behind its highest byte, within the window)
    // closes it.
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp_at(FAR, 5000, US, 7, RST, isn + 51, 0, 0),
        6
    ));
    assert_eq!(state(&f, 6), State::Tcp(TcpState::Closed));
}

#[test]
fn fins_in_the_window_close_a_connection_with_scaled_windows_whatever_a_forged_syn_says() {
    let mut f = filter("in:tcp:7", None);
    let key = Key::new(Dir::In, PROTO_TCP, FAR, 5001, US, 7);
    // SYNs with window scale 7 both ways: 1000 << 7 = 128000 of window.
    let mut syn = tcp_at(FAR, 5001, US, 7, SYN, 10, 1000, 4);
    let mut synack = tcp_at(US, 7, FAR, 5001, SYNACK, 20, 1000, 4);
    for p in [&mut syn, &mut synack] {
        p[32] = 6 << 4; // a 24-byte header: the option takes the 4 data bytes
        p[40..44].copy_from_slice(&[3, 3, 7, 0]); // window scale 7, end of options
    }
    assert_eq!(flow::parse(&syn).unwrap().seg.wscale, Some(7));
    assert!(pass(&mut f, Dir::In, &syn, 0));
    assert!(pass(&mut f, Dir::Out, &synack, 1));
    // A forged SYN without the option does not turn the scaling off.
    let forged = tcp_at(FAR, 5001, US, 7, SYN, 0x8000_0000, 1000, 0);
    assert!(pass(&mut f, Dir::In, &forged, 1));
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp_at(FAR, 5001, US, 7, ACK, 11, 1000, 0),
        2
    ));
    assert!(pass(
        &mut f,
        Dir::Out,
        &tcp_at(US, 7, FAR, 5001, ACK, 21, 1000, 0),
        3
    ));
    // 100 000 past the sender's highest byte: inside the scaled window, outside 64 KiB.
    assert!(pass(
        &mut f,
        Dir::In,
        &tcp_at(FAR, 5001, US, 7, FINACK, 100_011, 1000, 0),
        4
    ));
    assert_eq!(
        f.table().get(&key, t(4)).unwrap().state,
        State::Tcp(TcpState::Closing)
    );
    assert!(pass(
        &mut f,
        Dir::Out,
        &tcp_at(US, 7, FAR, 5001, FINACK, 21, 1000, 0),
        5
    ));
    assert_eq!(
        f.table().get(&key, t(5)).unwrap().state,
        State::Tcp(TcpState::Closed)
    );
}

#[test]
fn a_syn_on_a_closed_connection_starts_over_by_the_rules() {
    let mut f = filter("in:tcp:80", None);
    assert!(pass(&mut f, Dir::In, &tcp(FAR, 5, US, 80, SYN, 0), 0));
    assert!(
        pass(&mut f, Dir::Out, &tcp(US, 80, FAR, 5, SYNACK, 0), 0),
        "reply to an allowed inbound"
    );
    assert!(pass(&mut f, Dir::In, &tcp(FAR, 5, US, 80, RST, 0), 1));
    let key = Key::new(Dir::In, PROTO_TCP, FAR, 5, US, 80);
    assert_eq!(
        f.table().get(&key, t(1)).unwrap().state,
        State::Tcp(TcpState::Closed)
    );
    assert!(pass(&mut f, Dir::In, &tcp(FAR, 5, US, 80, SYN, 0), 2));
    assert_eq!(
        f.table().get(&key, t(2)).unwrap().state,
        State::Tcp(TcpState::Opening)
    );
    assert_eq!(f.counters().conn_created, 2);
    // Without a rule, a stray SYN/ACK out (no tracked connection) is refused.
    assert!(!pass(&mut f, Dir::Out, &tcp(US, 81, FAR, 5, SYNACK, 0), 3));
}

#[test]
fn malformed_packets_and_fragments_are_refused_by_reason() {
    let mut f = Filter::new(Rules::allow_all(), Limits::default());
    let good = tcp(US, 1, FAR, 2, SYN, 0);
    let mut frag = good.clone();
    frag[6] = 0x20; // more fragments
    let mut v6 = good.clone();
    v6[0] = 0x65;
    let mut long = good.clone();
    long[2..4].copy_from_slice(&100u16.to_be_bytes());
    let cut_tcp = ipv4(PROTO_TCP, US, FAR, &[0; 12]);
    let cut_udp = ipv4(PROTO_UDP, US, FAR, &[0; 4]);
    let cut_icmp = ipv4(PROTO_ICMP, US, FAR, &[8, 0, 0]);
    for p in [
        &[][..],
        &good[..10],
        &v6,
        &long,
        &cut_tcp,
        &cut_udp,
        &cut_icmp,
    ] {
        assert_eq!(
            f.check(Dir::Out, p, t(0)),
            Verdict::Refuse(Refusal::Malformed)
        );
    }
    assert_eq!(
        f.check(Dir::In, &frag, t(0)),
        Verdict::Refuse(Refusal::Fragment)
    );
    assert_eq!(flow::parse(&frag), Err(ParseError::Fragment));
    assert_eq!(f.counters().out_malformed, 7);
    assert_eq!(f.counters().in_fragment, 1);
    assert!(f.table().is_empty());
    let parsed = flow::parse(&good).unwrap();
    assert_eq!(parsed.kind, Kind::Tcp(SYN));
    assert_eq!((parsed.sport, parsed.dport), (1, 2));
}

fn arb_flags() -> impl Strategy<Value = TcpFlags> {
    any::<(bool, bool, bool, bool)>().prop_map(|(syn, ack, fin, rst)| TcpFlags {
        syn,
        ack,
        fin,
        rst,
    })
}

fn arb_addr() -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![Just(US), Just(PEER), Just(FAR), any::<[u8; 4]>()]
}

/// Well-formed packets of every kind the filter tells apart, and random and mutated bytes.
fn arb_packet() -> impl Strategy<Value = Vec<u8>> {
    let port = prop_oneof![Just(80u16), Just(5201), 1u16..4, any::<u16>()];
    prop_oneof![
        (
            arb_addr(),
            port.clone(),
            arb_addr(),
            port.clone(),
            arb_flags(),
            0usize..64
        )
            .prop_map(|(s, sp, d, dp, f, n)| tcp(s, sp, d, dp, f, n)),
        (arb_addr(), port.clone(), arb_addr(), port.clone())
            .prop_map(|(s, sp, d, dp)| udp(s, sp, d, dp)),
        (
            arb_addr(),
            arb_addr(),
            prop_oneof![Just(0u8), Just(8), Just(3), Just(11), any::<u8>()],
            0u16..4,
            proptest::collection::vec(any::<u8>(), 0..48)
        )
            .prop_map(|(s, d, ty, id, data)| icmp(s, d, ty, id, &data)),
        proptest::collection::vec(any::<u8>(), 0..80),
        (proptest::collection::vec(any::<u8>(), 20..80), any::<u8>()).prop_map(|(mut p, ihl)| {
            p[0] = 0x40 | (ihl & 0x0f);
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            p[6] = 0;
            p[7] = 0;
            p
        }),
    ]
}

fn arb_dir() -> impl Strategy<Value = Dir> {
    prop_oneof![Just(Dir::In), Just(Dir::Out)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_packets_never_panic_and_the_table_stays_bounded(
        rules in proptest::sample::select(vec!["", "out:any", "in:tcp:80,out:tcp,in:icmp", "deny:in:udp,in:any:198.18.0.0/24"]),
        packets in proptest::collection::vec((arb_dir(), arb_packet(), 0u64..200_000), 1..64),
    ) {
        let limits = Limits { conntrack_entries: 6, ..Limits::default() };
        let mut f = Filter::new(Rules::parse(rules, None).unwrap(), limits);
        let mut now = 0;
        for (dir, p, dt) in packets {
            now += dt;
            let _ = f.check(dir, &p, t(now));
            f.poll(t(now));
            prop_assert!(f.table().len() <= 6);
            prop_assert!(f.table().peak() <= 6);
            if let Some(d) = f.next_deadline() {
                prop_assert!(f.table().iter(d).count() <= f.table().len());
            }
        }
    }

    #[test]
    fn allow_all_passes_every_whole_packet_and_deny_all_none(
        packets in proptest::collection::vec((arb_dir(), arb_packet()), 1..64),
    ) {
        let big = Limits { conntrack_entries: 1000, ..Limits::default() };
        let mut allow = Filter::new(Rules::allow_all(), big.clone());
        let mut deny = Filter::new(Rules::deny_all(), big);
        for (dir, p) in packets {
            let parsed = flow::parse(&p);
            let a = allow.check(dir, &p, t(0));
            let d = deny.check(dir, &p, t(0));
            match parsed {
                Ok(_) => {
                    prop_assert_eq!(a, Verdict::Pass);
                    prop_assert_eq!(d, Verdict::Refuse(Refusal::Rule));
                }
                Err(ParseError::Malformed) => {
                    prop_assert_eq!(a, Verdict::Refuse(Refusal::Malformed));
                    prop_assert_eq!(d, Verdict::Refuse(Refusal::Malformed));
                }
                Err(ParseError::Fragment) => {
                    prop_assert_eq!(a, Verdict::Refuse(Refusal::Fragment));
                    prop_assert_eq!(d, Verdict::Refuse(Refusal::Fragment));
                }
            }
        }
        prop_assert!(deny.table().is_empty());
    }

    #[test]
    fn rule_text_never_panics(text in "[a-z0-9:.,/*-]{0,60}") {
        let _ = Rules::parse(&text, None);
    }
}

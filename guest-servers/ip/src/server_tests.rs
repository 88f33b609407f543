//! The server over host-side channel regions: test endpoints stand in for the driver
//! and for the upper layer, speaking the frame and packet protocols.
extern crate std;

use alloc::string::String;
use alloc::vec::Vec;

use compart_channel::host::SharedMemory;
use compart_channel::{initialize, Endpoint, NoKick, PairConfig, PairLayout, Side};
use compart_kit::server::{Peer, Role};
use compart_proto::frame::{self, FrameMeta};
use compart_proto::packet::{self, PacketMeta, Unreachable};
use smoltcp::wire::{
    ArpOperation, EthernetFrame, Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet,
};

use crate::tests::{arp, echo_request, ipv4, pattern, to_us, PEER, PEER_MAC, US, US_MAC};
use crate::{Instant, Ip, IpServer, Limits};

const BUF: u32 = 16384;

/// A channel: the test's endpoint (side A) and the server's (side B).
fn pair(name: &str) -> (SharedMemory, Endpoint<NoKick>, Endpoint<NoKick>) {
    let config = PairConfig::new(64, 16, BUF);
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
    _mem: Vec<SharedMemory>,
    driver: Endpoint<NoKick>,
    upper: Option<Endpoint<NoKick>>,
    srv: IpServer<NoKick>,
}

fn rig(with_upper: bool, limits: Limits) -> Rig {
    let (m1, driver, d) = pair("ip-driver");
    let mut mem = alloc::vec![m1];
    let upper = with_upper.then(|| {
        let (m2, upper, u) = pair("ip-upper");
        mem.push(m2);
        (upper, u)
    });
    let ip = Ip::new(crate::tests::settings(), limits);
    let (upper, u) = match upper {
        Some((a, b)) => (Some(a), Some((peer(1, "tcp", Role::Tcp), b))),
        None => (None, None),
    };
    let srv = IpServer::new(ip, (peer(0, "driver", Role::Driver), d), u);
    Rig {
        _mem: mem,
        driver,
        upper,
        srv,
    }
}

impl Rig {
    fn poll(&mut self) {
        for _ in 0..4 {
            self.srv.poll(Instant::from_millis(1));
        }
    }

    /// Send a driver request and return the server's answer to it.
    fn driver_send(&mut self, req: frame::Request, payload: &[u8]) -> frame::Reply {
        let (op, inline) = req.encode();
        self.driver.send_request(op, inline, payload).unwrap();
        self.poll();
        let r = self.driver.poll_reply().unwrap().expect("a reply");
        let got = frame::Reply::decode(r.status(), r.inline()).unwrap();
        self.driver.free(r).unwrap();
        got
    }

    fn receive(&mut self, frame: &[u8]) {
        assert_eq!(
            self.driver_send(frame::Request::Receive(FrameMeta::PLAIN), frame),
            frame::Reply::Done
        );
    }

    /// Frames the server asked the driver to transmit, answered `Done` unless `hold`.
    fn transmitted(
        &mut self,
        hold: bool,
    ) -> Vec<(FrameMeta, Vec<u8>, Option<compart_channel::Request>)> {
        let mut out = Vec::new();
        while let Some(req) = self.driver.poll_request().unwrap() {
            let frame::Request::Transmit(meta) =
                frame::Request::decode(req.opcode(), req.is_oneway(), req.inline()).unwrap()
            else {
                panic!("ip sends only Transmit");
            };
            let mut buf = alloc::vec![0; req.payload_len()];
            self.driver.read_request_payload(&req, &mut buf).unwrap();
            if hold {
                out.push((meta, buf, Some(req)));
            } else {
                let (s, w) = frame::Reply::Done.encode();
                self.driver.reply(req, s, w, &[]).unwrap();
                out.push((meta, buf, None));
            }
        }
        out
    }

    fn link_up(&mut self) {
        let link = frame::Request::Link {
            mac: US_MAC.0,
            mtu: 1500,
            offloads: 0,
        };
        assert_eq!(self.driver_send(link, &[]), frame::Reply::Done);
        assert_eq!(self.transmitted(false).len(), 1, "the gratuitous ARP");
        self.receive(&arp(ArpOperation::Request, PEER_MAC, PEER, US));
        assert_eq!(self.transmitted(false).len(), 1, "the ARP reply");
    }
}

fn ping(size: usize, seq: u16) -> Vec<u8> {
    to_us(&ipv4(
        PEER,
        US,
        IpProtocol::Icmp,
        &echo_request(0x77, seq, &pattern(size)),
        seq,
    ))
}

#[test]
fn the_driver_reports_the_link_and_a_ping_is_answered_over_the_channel() {
    let mut r = rig(false, Limits::default());
    r.link_up();
    r.receive(&ping(1472, 1));
    let out = r.transmitted(false);
    assert_eq!(out.len(), 1);
    let e = EthernetFrame::new_checked(&out[0].1[..]).unwrap();
    assert_eq!(e.dst_addr(), PEER_MAC);
    let p = Ipv4Packet::new_checked(e.payload()).unwrap();
    assert_eq!(p.dst_addr(), PEER);
    let icmp = Icmpv4Packet::new_checked(p.payload()).unwrap();
    assert_eq!(icmp.msg_type(), Icmpv4Message::EchoReply);
    assert_eq!(icmp.data(), &pattern(1472)[..]);
    r.poll();
    assert_eq!(r.srv.ip().counters().driver_dropped, 0);
    assert_eq!(r.srv.ip().counters().icmp_echo_replied, 1);
}

#[test]
fn driver_messages_that_do_not_decode_are_refused_and_counted() {
    let mut r = rig(false, Limits::default());
    r.driver.send_request(99, [0; 5], &[]).unwrap();
    r.poll();
    let rep = r.driver.poll_reply().unwrap().unwrap();
    assert_eq!(
        frame::Reply::decode(rep.status(), rep.inline()),
        Ok(frame::Reply::Dropped(frame::DropReason::Malformed))
    );
    r.driver.free(rep).unwrap();
    let bad_link = frame::Request::Link {
        mac: [0xff; 6],
        mtu: 1500,
        offloads: 0,
    };
    assert_eq!(
        r.driver_send(bad_link, &[]),
        frame::Reply::Dropped(frame::DropReason::Malformed)
    );
    r.driver.send_oneway(frame::OP_RECEIVE, [0; 5]).unwrap();
    r.poll();
    assert_eq!(r.srv.ip().counters().driver_malformed, 3);
    assert_eq!(r.srv.ip().counters().rx_link_down, 0);
    assert_eq!(r.srv.len(), 1, "the driver channel stays");
}

#[test]
fn the_upper_layer_gets_tcp_sends_packets_asks_the_config_and_closes_ports() {
    let mut r = rig(true, Limits::default());
    r.link_up();
    let segment = ipv4(PEER, US, IpProtocol::Tcp, &pattern(60), 7);
    r.receive(&to_us(&segment));
    let upper = r.upper.as_mut().unwrap();
    let req = upper.poll_request().unwrap().expect("a delivered packet");
    assert_eq!(
        packet::Request::decode(req.opcode(), req.is_oneway(), req.inline()),
        Ok(packet::Request::Deliver(PacketMeta::PLAIN))
    );
    let mut got = alloc::vec![0; req.payload_len()];
    upper.read_request_payload(&req, &mut got).unwrap();
    assert_eq!(got, segment);
    // Closed port: ip sends the ICMP error, quoting the segment's head.
    let (s, w) = packet::Reply::Unreachable(Unreachable::Port).encode();
    upper.reply(req, s, w, &[]).unwrap();
    r.poll();
    let out = r.transmitted(false);
    assert_eq!(out.len(), 1);
    let e = EthernetFrame::new_checked(&out[0].1[..]).unwrap();
    let icmp =
        Icmpv4Packet::new_checked(Ipv4Packet::new_checked(e.payload()).unwrap().payload()).unwrap();
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (Icmpv4Message::DstUnreachable, 3)
    );
    assert_eq!(&icmp.data()[..28], &segment[..28]);
    // The configuration.
    let upper = r.upper.as_mut().unwrap();
    let (op, w) = packet::Request::Config.encode();
    upper.send_request(op, w, &[]).unwrap();
    r.poll();
    let upper = r.upper.as_mut().unwrap();
    let rep = upper.poll_reply().unwrap().unwrap();
    let packet::Reply::Config(c) = packet::Reply::decode(rep.status(), rep.inline()).unwrap()
    else {
        panic!("a config")
    };
    upper.free(rep).unwrap();
    assert_eq!(
        (c.address, c.prefix_len, c.mtu),
        ([198, 18, 0, 2], 24, 1500)
    );
    // A packet to send.
    let mut out_pkt = ipv4(US, PEER, IpProtocol::Tcp, &pattern(100), 1);
    Ipv4Packet::new_unchecked(&mut out_pkt[..]).set_checksum(0);
    let (op, w) = packet::Request::Send(PacketMeta::PLAIN).encode();
    upper.send_request(op, w, &out_pkt).unwrap();
    r.poll();
    let upper = r.upper.as_mut().unwrap();
    let rep = upper.poll_reply().unwrap().unwrap();
    assert_eq!(
        packet::Reply::decode(rep.status(), rep.inline()),
        Ok(packet::Reply::Done)
    );
    upper.free(rep).unwrap();
    let out = r.transmitted(false);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].1[14 + 20..], &pattern(100)[..]);
    assert_eq!(r.srv.ip().counters().up_unreachable, 1);
}

#[test]
fn a_driver_that_holds_its_transmits_slows_ip_down_and_loses_nothing() {
    let limits = Limits {
        queue_bytes: 140_000,
        ..Limits::default()
    };
    let mut r = rig(false, limits);
    r.link_up();
    let mut held = Vec::new();
    let n = 100u16;
    let mut sent = 0u16;
    // Send pings while the server takes them; hold every transmit.
    while sent < n {
        let (op, w) = frame::Request::Receive(FrameMeta::PLAIN).encode();
        match r.driver.send_request(op, w, &ping(1000, sent)) {
            Ok(_) => sent += 1,
            Err(_) => {
                // Out of request ids: take the replies that came back.
                r.poll();
                let mut got = false;
                while let Some(rep) = r.driver.poll_reply().unwrap() {
                    r.driver.free(rep).unwrap();
                    got = true;
                }
                held.extend(r.transmitted(true));
                if !got {
                    break;
                }
            }
        }
    }
    r.poll();
    held.extend(r.transmitted(true));
    // The server stopped taking frames while its queue was full: the driver could not
    // send them all, and nothing was dropped.
    assert!(
        sent < n,
        "ip took all {sent} pings with every transmit held"
    );
    assert_eq!(r.srv.ip().counters().tx_queue_full, 0);
    assert_eq!(
        held.len(),
        16,
        "as many transmits as the channel allows in flight"
    );
    // The driver catches up: every ping it got in gets its reply.
    for (_, _, req) in held {
        let (s, w) = frame::Reply::Done.encode();
        r.driver.reply(req.unwrap(), s, w, &[]).unwrap();
    }
    let mut replies = 16usize;
    for _ in 0..100 {
        r.poll();
        while let Some(rep) = r.driver.poll_reply().unwrap() {
            r.driver.free(rep).unwrap();
        }
        replies += r.transmitted(false).len();
    }
    assert_eq!(replies as u64, r.srv.ip().counters().icmp_echo_replied);
    assert_eq!(r.srv.ip().counters().icmp_echo_replied, u64::from(sent));
}

#[test]
fn an_upper_layer_that_does_not_take_its_replies_is_left_out_of_the_sleep_set() {
    let mut r = rig(true, Limits::default());
    r.link_up();
    let upper = r.upper.as_mut().unwrap();
    let (op, w) = packet::Request::Config.encode();
    while upper.send_request(op, w, &[]).is_ok() {}
    r.poll();
    assert_eq!(r.srv.sleep_set().len(), 2);
    // Every request is answered and no reply taken: send them all again (a hog).
    let upper = r.upper.as_mut().unwrap();
    let ids: Vec<_> = upper.outstanding().collect();
    assert_eq!(ids.len(), 16);
    for id in ids {
        upper.resubmit(id).unwrap();
    }
    r.poll();
    assert_eq!(r.srv.sleep_set().len(), 1, "only the driver wakes ip now");
    // It takes its replies: served again.
    let upper = r.upper.as_mut().unwrap();
    while let Some(rep) = upper.poll_reply().unwrap() {
        upper.free(rep).unwrap();
    }
    r.poll();
    assert_eq!(r.srv.sleep_set().len(), 2);
    let upper = r.upper.as_mut().unwrap();
    while upper.poll_reply().unwrap().is_some() {}
    assert!(
        upper.stale_replies() > 0,
        "the second round's replies name freed ids"
    );
    assert_eq!(r.srv.len(), 2);
}

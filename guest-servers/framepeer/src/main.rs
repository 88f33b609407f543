//! Plays the driver for an ip server (the peer of role `ip`), over the frame protocol
//! (`compart_proto::frame`), as the KVM tests need until the real driver exists:
//!
//! 1. reports the link (`Link`: MAC `02:00:00:00:00:02`, MTU 1500, no offloads) and
//!    expects the gratuitous ARP for the stack's address;
//! 2. as the neighbour `198.18.0.1` (`02:00:00:00:00:01`), asks ARP for the stack's
//!    address and expects the reply;
//! 3. pings it with 1472 data bytes (one 1514-byte frame each way), then with 8000
//!    (six fragments in, the reply fragmented to the MTU on the way out, which this
//!    peer reassembles), and with `n=N` more 56-byte pings;
//!
//! checking every frame ip sends; then prints `framepeer: all replies right`;
//! 4. with `hostile=N`, sends N hostile frames (`compart-netgen`, seed `seed=S`:
//!    random, mutated, truncated, wrong lengths and checksums, bogus ARP,
//!    overlapping and endless fragments, over the MTU; each cut to the channel's
//!    buffer), discarding whatever ip sends back, then pings once more and checks the
//!    reply (`framepeer: N hostile frames sent; ip still answers`);
//!
//! and exits 0. Any wrong frame stops the guest with a panic naming it.
//! `addr=a.b.c.d` is the stack's address (default 198.18.0.2).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use compart_firmware::channel::{self, Channel};
use compart_firmware::cmdline;
use compart_firmware::server::Role;
use compart_firmware::{println, BootInfo};
use compart_netgen::{FrameGen, Target};
use compart_proto::frame::{FrameMeta, Reply, Request};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
};

compart_firmware::entry!(main);

const STACK_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
const PEER: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);

/// The channel to ip, and the frames ip sent that were not looked at yet.
struct Driver {
    ch: Channel,
    sent: VecDeque<Vec<u8>>,
    replies: u64,
}

impl Driver {
    /// Handle everything waiting: transmits (kept, answered `Done`) and replies.
    fn pump(&mut self) {
        while let Some(r) = self.ch.poll_reply().expect("poll_reply") {
            assert_eq!(
                Reply::decode(r.status(), r.inline()),
                Ok(Reply::Done),
                "framepeer: ip's reply"
            );
            self.ch.free(r).expect("free");
            self.replies += 1;
        }
        while let Some(req) = self.ch.poll_request().expect("poll_request") {
            let decoded = Request::decode(req.opcode(), req.is_oneway(), req.inline());
            assert_eq!(
                decoded,
                Ok(Request::Transmit(FrameMeta::PLAIN)),
                "framepeer: ip's request"
            );
            let mut f = vec![0; req.payload_len()];
            self.ch.read_request_payload(&req, &mut f).expect("payload");
            let (s, w) = Reply::Done.encode();
            self.ch.reply(req, s, w, &[]).expect("reply");
            self.sent.push_back(f);
        }
    }

    fn wait(&mut self) {
        channel::wait_for_any(core::slice::from_mut(&mut self.ch), None).expect("wait");
    }

    /// Send `req` and wait for ip's reply to it.
    fn request(&mut self, req: Request, payload: &[u8]) {
        let (op, w) = req.encode();
        self.ch.send_request(op, w, payload).expect("send");
        let want = self.replies + 1;
        self.pump();
        while self.replies < want {
            self.wait();
            self.pump();
        }
    }

    /// The next `n` frames ip sends.
    fn frames(&mut self, n: usize) -> Vec<Vec<u8>> {
        self.pump();
        while self.sent.len() < n {
            self.wait();
            self.pump();
        }
        self.sent.drain(..n).collect()
    }
}

fn eth(dst: EthernetAddress, ty: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: PEER_MAC,
        dst_addr: dst,
        ethertype: ty,
    };
    let mut f = vec![0; repr.buffer_len() + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut f[..]);
    repr.emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    f
}

fn data(n: usize, seq: u16) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ seq as u8)
        .collect()
}

/// The echo request `seq` with `size` data bytes, as IP packet(s) of at most 1500 bytes.
fn ping(us: Ipv4Address, size: usize, seq: u16) -> Vec<Vec<u8>> {
    let d = data(size, seq);
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 0x4242,
        seq_no: seq,
        data: &d,
    };
    let mut body = vec![0; icmp.buffer_len()];
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(&mut body[..]),
        &ChecksumCapabilities::default(),
    );
    let step = 1480;
    body.chunks(step)
        .enumerate()
        .map(|(i, chunk)| {
            let repr = Ipv4Repr {
                src_addr: PEER,
                dst_addr: us,
                next_header: IpProtocol::Icmp,
                payload_len: chunk.len(),
                hop_limit: 64,
            };
            let mut v = vec![0; 20 + chunk.len()];
            let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
            repr.emit(&mut p, &ChecksumCapabilities::default());
            p.set_ident(seq);
            p.set_dont_frag(false);
            p.set_frag_offset((i * step) as u16);
            p.set_more_frags((i + 1) * step < body.len());
            p.payload_mut().copy_from_slice(chunk);
            p.fill_checksum();
            v
        })
        .collect()
}

/// Check the frames of the echo reply `seq` (fragments in order) and return their count.
fn check_reply(us: Ipv4Address, frames: &[Vec<u8>], size: usize, seq: u16) {
    let mut body = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        assert!(
            f.len() <= 1514,
            "framepeer: reply {seq} frame {i}: {} bytes",
            f.len()
        );
        let e = EthernetFrame::new_checked(&f[..]).expect("ethernet");
        assert_eq!(
            (e.dst_addr(), e.src_addr()),
            (PEER_MAC, STACK_MAC),
            "framepeer: reply {seq} MACs"
        );
        let p = Ipv4Packet::new_checked(e.payload()).expect("ipv4");
        assert!(
            p.verify_checksum(),
            "framepeer: reply {seq} frame {i}: header checksum"
        );
        assert_eq!(
            (p.src_addr(), p.dst_addr()),
            (us, PEER),
            "framepeer: reply {seq} addresses"
        );
        assert_eq!(
            usize::from(p.frag_offset()),
            body.len(),
            "framepeer: reply {seq} frame {i}: offset"
        );
        assert_eq!(
            p.more_frags(),
            i + 1 < frames.len(),
            "framepeer: reply {seq} frame {i}: MF"
        );
        body.extend_from_slice(p.payload());
    }
    let icmp = Icmpv4Packet::new_checked(&body[..]).expect("icmp");
    let d = data(size, seq);
    let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).expect("echo reply");
    assert_eq!(
        repr,
        Icmpv4Repr::EchoReply {
            ident: 0x4242,
            seq_no: seq,
            data: &d
        },
        "framepeer: reply {seq}"
    );
}

fn main(_info: &'static BootInfo) -> i32 {
    let args = cmdline::args();
    let us = args
        .get::<&str>("addr")
        .unwrap_or_else(|e| panic!("framepeer: {e}"))
        .map_or(Ipv4Address::new(198, 18, 0, 2), |a| {
            a.parse()
                .unwrap_or_else(|_| panic!("framepeer: addr={a} is no address"))
        });
    let n: u16 = args
        .get_or("n", 10)
        .unwrap_or_else(|e| panic!("framepeer: {e}"));
    let (peer, ch) = channel::open_by_role(Role::Ip).unwrap_or_else(|e| panic!("framepeer: {e:?}"));
    println!("framepeer: playing the driver for {peer}");
    let mut d = Driver {
        ch,
        sent: VecDeque::new(),
        replies: 0,
    };
    d.request(
        Request::Link {
            mac: STACK_MAC.0,
            mtu: 1500,
            offloads: 0,
        },
        &[],
    );
    let garp = d.frames(1).remove(0);
    let e = EthernetFrame::new_checked(&garp[..]).expect("ethernet");
    let repr = ArpRepr::parse(&ArpPacket::new_checked(e.payload()).expect("arp")).expect("arp");
    let ArpRepr::EthernetIpv4 {
        operation,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = repr
    else {
        panic!("framepeer: not an Ethernet/IPv4 ARP packet");
    };
    assert_eq!(e.dst_addr(), EthernetAddress::BROADCAST);
    assert_eq!(
        (operation, source_protocol_addr, target_protocol_addr),
        (ArpOperation::Request, us, us),
        "framepeer: the gratuitous ARP"
    );
    println!("framepeer: gratuitous ARP for {us} seen");

    let who_has = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: PEER_MAC,
        source_protocol_addr: PEER,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: us,
    };
    let mut a = vec![0; who_has.buffer_len()];
    who_has.emit(&mut ArpPacket::new_unchecked(&mut a[..]));
    d.request(
        Request::Receive(FrameMeta::PLAIN),
        &eth(EthernetAddress::BROADCAST, EthernetProtocol::Arp, &a),
    );
    let reply = d.frames(1).remove(0);
    let e = EthernetFrame::new_checked(&reply[..]).expect("ethernet");
    let repr = ArpRepr::parse(&ArpPacket::new_checked(e.payload()).expect("arp")).expect("arp");
    assert_eq!(
        repr,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: STACK_MAC,
            source_protocol_addr: us,
            target_hardware_addr: PEER_MAC,
            target_protocol_addr: PEER,
        },
        "framepeer: the ARP reply"
    );
    println!("framepeer: ARP reply seen");

    let mut cases: Vec<(usize, u16, usize)> = vec![(1472, 1, 1), (8000, 2, 6)];
    cases.extend((0..n).map(|i| (56, 3 + i, 1)));
    for (size, seq, frames_out) in cases {
        for p in ping(us, size, seq) {
            d.request(
                Request::Receive(FrameMeta::PLAIN),
                &eth(STACK_MAC, EthernetProtocol::Ipv4, &p),
            );
        }
        let frames = d.frames(frames_out);
        check_reply(us, &frames, size, seq);
        println!(
            "framepeer: echo reply {seq} ({size} bytes) right, in {} frame(s)",
            frames.len()
        );
    }
    println!("framepeer: all replies right");
    let hostile: u32 = args
        .get_or("hostile", 0)
        .unwrap_or_else(|e| panic!("framepeer: {e}"));
    if hostile > 0 {
        let seed: u64 = args
            .get_or("seed", 1)
            .unwrap_or_else(|e| panic!("framepeer: {e}"));
        attack(&mut d, us, hostile, seed);
    }
    d.ch.flush().expect("flush");
    0
}

/// `hostile=N`: N hostile frames, then one ping whose reply must be right.
fn attack(d: &mut Driver, us: Ipv4Address, n: u32, seed: u64) {
    let target = Target {
        mac: STACK_MAC.0,
        ip: us.octets(),
        peer_mac: PEER_MAC.0,
        peer_ip: PEER.octets(),
    };
    let max = d.ch.buffer_size();
    let mut frames = FrameGen::new(seed, target, 1500);
    let mut cut = 0u32;
    for f in frames.by_ref().take(n as usize) {
        cut += u32::from(f.len() > max);
        d.request(Request::Receive(FrameMeta::PLAIN), &f[..f.len().min(max)]);
        d.sent.clear();
    }
    // ip may still be sending answers to the attack: look for the echo reply among
    // at most 10 000 frames.
    const SEQ: u16 = 0xbeef;
    for p in ping(us, 56, SEQ) {
        d.request(
            Request::Receive(FrameMeta::PLAIN),
            &eth(STACK_MAC, EthernetProtocol::Ipv4, &p),
        );
    }
    for _ in 0..10_000 {
        let f = d.frames(1).remove(0);
        if is_echo_reply(&f, SEQ) {
            check_reply(us, &[f], 56, SEQ);
            println!(
                "framepeer: {n} hostile frames sent ({cut} cut to the {max}-byte buffer); ip still answers"
            );
            return;
        }
    }
    panic!("framepeer: no echo reply {SEQ} after the hostile frames");
}

/// Whether `f` is an ICMP echo reply with sequence number `seq`.
fn is_echo_reply(f: &[u8], seq: u16) -> bool {
    let Ok(e) = EthernetFrame::new_checked(f) else {
        return false;
    };
    let Ok(p) = Ipv4Packet::new_checked(e.payload()) else {
        return false;
    };
    let Ok(icmp) = Icmpv4Packet::new_checked(p.payload()) else {
        return false;
    };
    p.next_header() == IpProtocol::Icmp
        && icmp.msg_type() == smoltcp::wire::Icmpv4Message::EchoReply
        && icmp.echo_seq_no() == seq
}

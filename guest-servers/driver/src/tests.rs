//! The frame pump on the host: the device is `compart_virtio::host::TestDevice` (its
//! queues are virtio-queue's device side), ip is the other end of a host-side channel.

extern crate std;

use std::boxed::Box;
use std::vec::Vec;

use compart_abi::virtio::*;
use compart_channel::host::SharedMemory;
use compart_channel::{initialize, Endpoint, NoKick, PairConfig, PairLayout, Side};
use compart_kit::server::{Event, Peer, Role, Server};
use compart_proto::frame::{Reply as FrameReply, Request as FrameRequest};
use compart_virtio::host::{MmapRam, TestDevice};
use compart_virtio::net::{Plan, WANTED};
use virtio_queue::QueueT;
use vm_memory_shim::write_used;

use super::*;

type Ram = &'static MmapRam;
type Dev = &'static TestDevice;

struct Rig {
    ram: Ram,
    dev: Dev,
    _mem: SharedMemory,
    ip: Endpoint<NoKick>,
    server: Server<NoKick, Driver<Ram, Dev>>,
}

const WINDOW: u32 = 8;

fn rig_with(offered: u64, rx: u16, tx: u16) -> Rig {
    let ram: Ram = Box::leak(Box::new(MmapRam::new(0, 24 << 20)));
    let dev: Dev = Box::leak(Box::new(TestDevice::new(offered, 256)));
    let t = Net::<Ram, Dev>::probe(dev).unwrap();
    let plan = Plan::new(t.queue_max(0), t.queue_max(1), rx, tx).unwrap();
    let net = Net::start(t, ram, 0x10_0000, plan).unwrap();
    let config = PairConfig::new(64, WINDOW, 65_600);
    let size = PairLayout::new(&config).unwrap().size();
    let mem = SharedMemory::create("driver-test", size.next_multiple_of(4096)).unwrap();
    initialize(&mem.region(), &config).unwrap();
    let ip = Endpoint::attach(mem.region(), Side::A, NoKick).unwrap();
    let ep = Endpoint::attach(mem.region(), Side::B, NoKick).unwrap();
    let mut server = Server::new();
    let peer = Peer {
        index: 0,
        name: std::string::String::from("ip"),
        role: Role::Ip,
    };
    server.add(peer, ep, Driver::new(net, [2, 0, 0, 0, 0, 1], 9000));
    Rig {
        ram,
        dev,
        _mem: mem,
        ip,
        server,
    }
}

fn rig() -> Rig {
    rig_with(WANTED, 16, 4)
}

impl Rig {
    fn poll(&mut self) -> bool {
        self.server.poll(&mut |e| {
            if let Event::Closed { why, .. } = e {
                panic!("the channel closed: {why}");
            }
        })
    }

    fn stats(&mut self) -> Stats {
        let mut s = None;
        // The handler is inside the server: close the channel (a one-way message is a
        // protocol violation) to get it back.
        let (op, w) = FrameRequest::Transmit(FrameMeta::PLAIN).encode();
        self.ip.send_oneway(op, w).unwrap();
        self.server.poll(&mut |e| {
            if let Event::Closed { handler, .. } = e {
                s = Some(handler.stats());
            }
        });
        s.expect("stats are read after a close")
    }

    /// Requests ip received: (request, decoded, payload).
    fn ip_requests(&mut self) -> Vec<(compart_channel::Request, FrameRequest, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(r) = self.ip.poll_request().unwrap() {
            let d = FrameRequest::decode(r.opcode(), r.is_oneway(), r.inline()).unwrap();
            let mut p = std::vec![0; r.payload_len()];
            self.ip.read_request_payload(&r, &mut p).unwrap();
            out.push((r, d, p));
        }
        out
    }

    /// ip answers everything it has with Done.
    fn ip_ack_all(&mut self) -> usize {
        let reqs = self.ip_requests();
        let n = reqs.len();
        for (r, _, _) in reqs {
            let (s, w) = FrameReply::Done.encode();
            self.ip.reply(r, s, w, &[]).unwrap();
        }
        n
    }

    /// ip's replies so far, decoded and freed.
    fn ip_replies(&mut self) -> Vec<FrameReply> {
        let mut out = Vec::new();
        while let Some(r) = self.ip.poll_reply().unwrap() {
            out.push(FrameReply::decode(r.status(), r.inline()).unwrap());
            self.ip.free(r).unwrap();
        }
        out
    }

    fn transmit(&mut self, meta: FrameMeta, frame: &[u8]) {
        let (op, w) = FrameRequest::Transmit(meta).encode();
        self.ip.send_request(op, w, frame).unwrap();
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

fn tso() -> FrameMeta {
    FrameMeta {
        flags: FLAG_NEEDS_CSUM,
        gso: Gso::TcpV4,
        ecn: false,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    }
}

#[test]
fn the_link_goes_up_first_with_what_was_negotiated() {
    let mut r = rig();
    assert!(r.poll());
    let reqs = r.ip_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].1,
        FrameRequest::Link {
            mac: r.dev.mac,
            mtu: 1500,
            offloads: offload::ALL
        }
    );
    let mut few = rig_with(feature(F_VERSION_1) | feature(F_CSUM), 4, 1);
    few.poll();
    match few.ip_requests()[0].1 {
        FrameRequest::Link { mac, mtu, offloads } => {
            // Without MAC and MTU features, the boot info's values.
            assert_eq!(
                (mac, mtu, offloads),
                ([2, 0, 0, 0, 0, 1], 9000, offload::TX_CSUM)
            );
        }
        ref other => panic!("not a link: {other:?}"),
    }
}

#[test]
fn received_frames_reach_ip_with_their_metadata_and_bytes() {
    let mut r = rig();
    r.poll();
    r.ip_ack_all();
    let gro = NetHdr {
        flags: NET_HDR_F_DATA_VALID,
        gso_type: GSO_TCPV4 | GSO_ECN,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 0,
        csum_offset: 0,
        num_buffers: 1,
    };
    let sizes = [60, 1514, MAX_FRAME];
    for (i, &n) in sizes.iter().enumerate() {
        assert!(r.dev.deliver_rx(&r.ram.mem, &gro, &frame(n, i as u8)));
    }
    assert!(r.poll());
    let reqs = r.ip_requests();
    assert_eq!(reqs.len(), 3);
    for (i, (_, d, p)) in reqs.iter().enumerate() {
        let FrameRequest::Receive(m) = d else {
            panic!("not a receive: {d:?}")
        };
        assert_eq!((m.flags, m.gso, m.ecn), (FLAG_DATA_VALID, Gso::TcpV4, true));
        assert_eq!((m.hdr_len, m.gso_size), (66, 1448));
        assert_eq!(*p, frame(sizes[i], i as u8));
    }
    // The buffers went back to the device at once: all 16 can be filled again.
    let mut n = 0;
    while r.dev.deliver_rx(&r.ram.mem, &NetHdr::default(), &[0; 60]) {
        n += 1;
    }
    assert_eq!(n, 16);
}

#[test]
fn frames_ip_has_no_credit_for_wait_in_order_and_the_driver_may_sleep_meanwhile() {
    let mut r = rig();
    for i in 0..12u8 {
        assert!(r
            .dev
            .deliver_rx(&r.ram.mem, &NetHdr::default(), &frame(100, i)));
    }
    r.poll();
    // The window is 8: the link and 7 frames.
    let first = r.ip_requests();
    assert_eq!(first.len(), 8);
    assert!(!r.poll(), "waiting for credit is not work");
    assert!(
        !r.server.before_sleep(),
        "the device has nothing ip can take"
    );
    for (q, _, _) in first {
        let (s, w) = FrameReply::Done.encode();
        r.ip.reply(q, s, w, &[]).unwrap();
    }
    assert!(r.poll());
    let rest = r.ip_requests();
    assert_eq!(rest.len(), 5);
    for (k, (_, _, p)) in rest.iter().enumerate() {
        assert_eq!(*p, frame(100, 7 + k as u8), "in order");
    }
}

#[test]
fn transmitted_frames_reach_the_device_and_are_answered_once_it_used_them() {
    let mut r = rig();
    r.poll();
    r.ip_ack_all();
    let big = frame(MAX_FRAME, 1);
    let small = frame(60, 2);
    r.transmit(tso(), &big);
    r.transmit(FrameMeta::PLAIN, &small);
    r.poll();
    r.poll();
    let before: Vec<_> = r.ip_replies();
    assert!(
        !before.contains(&FrameReply::Done),
        "no Done before the device used the frame"
    );
    let sent = r.dev.take_tx(&r.ram.mem);
    let hdr = NetHdr {
        flags: NET_HDR_F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    assert_eq!(sent, [(hdr, big), (NetHdr::default(), small)]);
    r.poll();
    assert_eq!(r.ip_replies(), [FrameReply::Done, FrameReply::Done]);
}

#[test]
fn transmit_requests_the_device_cannot_take_are_dropped_for_their_reason() {
    let mut r = rig_with(WANTED & !feature(F_CSUM) & !feature(F_HOST_TSO4), 4, 2);
    r.poll();
    r.ip_ack_all();
    let (op, w) = FrameRequest::Receive(FrameMeta::PLAIN).encode();
    r.ip.send_request(op, w, &frame(60, 0)).unwrap();
    r.ip.send_request(77, [0; 5], &[]).unwrap();
    r.transmit(FrameMeta::PLAIN, &frame(10, 0));
    r.transmit(tso(), &frame(2000, 0));
    let csum_only = FrameMeta {
        gso: Gso::None,
        ..tso()
    };
    r.transmit(csum_only, &frame(2000, 0));
    let tcp6 = FrameMeta {
        flags: 0,
        gso: Gso::TcpV6,
        ..tso()
    };
    // TSO6 was negotiated: fine. Then slots: 2, so the next two fill them and the
    // third finds none.
    r.transmit(tcp6, &frame(3000, 0));
    r.transmit(FrameMeta::PLAIN, &frame(60, 0));
    r.transmit(FrameMeta::PLAIN, &frame(60, 0));
    r.poll();
    use DropReason::*;
    assert_eq!(
        r.ip_replies(),
        [
            FrameReply::Dropped(Malformed),
            FrameReply::Dropped(Malformed),
            FrameReply::Dropped(BadLength),
            FrameReply::Dropped(Malformed),
            FrameReply::Dropped(Malformed),
            FrameReply::Dropped(NoRoom),
        ]
    );
    assert_eq!(r.dev.take_tx(&r.ram.mem).len(), 2);
    r.poll();
    assert_eq!(r.ip_replies(), [FrameReply::Done, FrameReply::Done]);
    let s = r.stats();
    assert_eq!((s.tx_malformed, s.tx_bad_length, s.tx_no_room), (4, 1, 1));
    assert_eq!((s.tx_frames, s.tx_bytes), (2, 3060));
}

mod vm_memory_shim {
    use compart_virtio::host::MmapRam;
    use compart_virtio::Ram;
    use core::sync::atomic::Ordering;

    /// Write a used entry into a device queue's used ring at `next`, and publish it,
    /// as a broken device would.
    pub fn write_used(ram: &MmapRam, used_ring: u64, size: u16, next: u16, id: u32, len: u32) {
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&id.to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        ram.write(used_ring + 4 + 8 * u64::from(next % size), &e);
        ram.store_u16(used_ring + 2, next.wrapping_add(1), Ordering::Release);
    }
}

#[test]
fn what_a_broken_device_writes_is_counted_and_the_driver_carries_on() {
    let mut r = rig();
    r.poll();
    r.ip_ack_all();
    // Used entries naming no posted buffer.
    for id in [16, 9999, u32::MAX] {
        let mut q = r.dev.queue(RX_QUEUE);
        let (used, size, next) = (q.used_ring(), q.size(), q.next_used());
        write_used(r.ram, used, size, next, id, 100);
        q.set_next_used(next.wrapping_add(1));
    }
    // A runt, a header with an unknown GSO type, and one with an unknown flag.
    r.dev.deliver_rx(&r.ram.mem, &NetHdr::default(), &[1; 5]);
    let bad_gso = NetHdr {
        gso_type: 2,
        ..NetHdr::default()
    };
    r.dev.deliver_rx(&r.ram.mem, &bad_gso, &[1; 60]);
    let bad_flag = NetHdr {
        flags: 4,
        ..NetHdr::default()
    };
    r.dev.deliver_rx(&r.ram.mem, &bad_flag, &[1; 60]);
    // And a good frame after all that.
    r.dev
        .deliver_rx(&r.ram.mem, &NetHdr::default(), &frame(70, 3));
    r.poll();
    let reqs = r.ip_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].2, frame(70, 3));
    // The dropped frames' buffers were posted again (the unknown ids took none):
    // all 16 are the device's.
    let mut n = 0;
    while r.dev.deliver_rx(&r.ram.mem, &NetHdr::default(), &[0; 60]) {
        n += 1;
    }
    assert_eq!(n, 16);
    let s = r.stats();
    assert_eq!((s.bad_used, s.rx_runts, s.rx_bad_header), (3, 1, 2));
}

#[test]
fn kicks_only_for_a_sleeping_device_and_interrupts_only_for_a_sleeping_driver() {
    let mut r = rig();
    r.poll();
    r.ip_ack_all();
    let kicks = r.dev.notifies(TX_QUEUE);
    // The device polls (it never asked): transmitting needs no kick.
    for _ in 0..3 {
        r.transmit(FrameMeta::PLAIN, &frame(60, 0));
        r.poll();
        r.dev.take_tx(&r.ram.mem);
        r.poll();
    }
    assert!(
        r.dev.notifies(TX_QUEUE) <= kicks + 1,
        "only the first publication may kick"
    );
    let kicks = r.dev.notifies(TX_QUEUE);
    // The device goes to sleep: the next frame kicks it once, the one after not.
    assert!(!r.dev.enable_kicks(&r.ram.mem, TX_QUEUE));
    r.transmit(FrameMeta::PLAIN, &frame(60, 0));
    r.transmit(FrameMeta::PLAIN, &frame(60, 0));
    r.poll();
    assert_eq!(r.dev.notifies(TX_QUEUE), kicks + 1);
    r.dev.take_tx(&r.ram.mem);
    // The driver polls: the device's used entries need no interrupt…
    assert!(!r.dev.needs_interrupt(&r.ram.mem, TX_QUEUE));
    r.poll();
    r.ip_replies();
    // …until it arms before sleeping; then the next received frame interrupts.
    assert!(!r.server.before_sleep());
    r.dev
        .deliver_rx(&r.ram.mem, &NetHdr::default(), &frame(60, 0));
    assert!(r.dev.needs_interrupt(&r.ram.mem, RX_QUEUE));
    assert!(r.poll());
    let s = r.stats();
    assert_eq!((s.arms, s.device_wakeups), (1, 1));
    assert!(!r.dev.touched_interrupt_regs.get());
}

#[test]
fn an_ip_that_does_not_take_its_replies_holds_up_its_own_frames_and_nothing_else() {
    let mut r = rig();
    r.poll();
    r.ip_ack_all();
    r.ip_replies();
    // One request, resubmitted without taking a reply: 4 fill the transmit slots, the
    // others are answered NoRoom until ip's reply queue (8) is full.
    let (op, w) = FrameRequest::Transmit(FrameMeta::PLAIN).encode();
    let id = r.ip.send_request(op, w, &frame(60, 0)).unwrap();
    for _ in 0..12 {
        r.ip.resubmit(id).unwrap();
        r.poll();
    }
    assert_eq!(r.dev.take_tx(&r.ram.mem).len(), 4);
    // The device is done with all four, but there is no room to say so: the channel
    // stays, the completions wait, and the driver may sleep.
    r.poll();
    assert!(!r.server.before_sleep());
    // Once ip takes its replies, the completions go out.
    let mut got = 0;
    while r.ip.poll_reply().unwrap().is_some() {
        got += 1;
    }
    assert_eq!(got, 1, "the other replies name a request already answered");
    assert_eq!(r.ip.stale_replies(), 7);
    assert!(r.poll());
    let s = r.stats();
    assert_eq!((s.tx_frames, s.tx_no_room), (4, 8));
}

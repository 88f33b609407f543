//! The network device's driver against a virtio-mmio register file whose queues are
//! `virtio-queue`'s: initialisation and feature negotiation, frames both ways with
//! their headers (64 KiB coalesced segments included), and no register access on the
//! data path but kicks.

use compart_abi::virtio::*;
use compart_virtio::host::{MmapRam, TestDevice};
use compart_virtio::net::{self, Net, Plan, TxError, MAX_FRAME, WANTED};
use compart_virtio::transport::{InitError, Transport};
use compart_virtio::Mmio;
use virtio_queue::QueueT;

const ARENA: u64 = 0x10_0000;

fn offered_all() -> u64 {
    WANTED | feature(F_MRG_RXBUF) | feature(F_STATUS)
}

fn start<'a>(
    dev: &'a TestDevice,
    ram: &'a MmapRam,
    rx: u16,
    tx: u16,
) -> Net<&'a MmapRam, &'a TestDevice> {
    let t = Net::<&MmapRam, _>::probe(dev).unwrap();
    let plan = Plan::new(t.queue_max(RX_QUEUE), t.queue_max(TX_QUEUE), rx, tx).unwrap();
    Net::start(t, ram, ARENA, plan).unwrap()
}

#[test]
fn negotiation_takes_what_the_device_offers_of_what_the_driver_wants() {
    let dev = TestDevice::new(offered_all(), 256);
    let t = Transport::init(&dev, DEVICE_ID_NET, WANTED).unwrap();
    assert_eq!(t.features(), WANTED, "no MRG_RXBUF, no STATUS");
    assert_eq!(dev.driver_features(), WANTED);
    assert_ne!(dev.status() & STATUS_FEATURES_OK, 0);
    assert_eq!(t.net_mac(), Some(dev.mac));
    assert_eq!(t.net_mtu(), Some(1500));

    let few = feature(F_VERSION_1) | feature(F_CSUM) | feature(F_HOST_TSO4);
    let dev = TestDevice::new(few, 256);
    let t = Transport::init(&dev, DEVICE_ID_NET, WANTED).unwrap();
    assert_eq!(t.features(), few);
    assert_eq!(t.net_mac(), None, "no MAC feature, no MAC read");
}

#[test]
fn devices_that_cannot_be_driven_are_refused_and_left_failed() {
    let dev = TestDevice::new(WANTED & !feature(F_VERSION_1), 256);
    assert_eq!(
        Transport::init(&dev, DEVICE_ID_NET, WANTED).err(),
        Some(InitError::NoVersion1)
    );
    assert_ne!(dev.status() & STATUS_FAILED, 0);

    let mut dev = TestDevice::new(WANTED, 256);
    dev.refuse_features = true;
    assert_eq!(
        Transport::init(&dev, DEVICE_ID_NET, WANTED).err(),
        Some(InitError::FeaturesRefused)
    );
    assert_ne!(dev.status() & STATUS_FAILED, 0);

    assert_eq!(
        Transport::init(&dev, 2, WANTED).err(),
        Some(InitError::WrongDevice(DEVICE_ID_NET))
    );

    #[derive(Debug)]
    struct Nothing;
    impl Mmio for Nothing {
        fn read32(&self, _: u64) -> u32 {
            0
        }
        fn write32(&self, _: u64, _: u32) {}
        fn read8(&self, _: u64) -> u8 {
            0
        }
        fn read16(&self, _: u64) -> u16 {
            0
        }
    }
    assert_eq!(
        Transport::init(Nothing, DEVICE_ID_NET, WANTED).err(),
        Some(InitError::BadMagic(0))
    );
}

#[test]
fn plans_fit_the_device_queues_and_memory() {
    let p = Plan::new(64, 1024, 100, 40).unwrap();
    assert_eq!((p.rx_size, p.rx_buffers), (64, 64));
    assert_eq!((p.tx_size, p.tx_slots), (128, 40));
    let p = Plan::new(1024, 1024, 3, 1).unwrap();
    assert_eq!(
        (p.rx_size, p.rx_buffers, p.tx_size, p.tx_slots),
        (4, 3, 2, 1)
    );
    assert_eq!(Plan::new(0, 8, 1, 1), Err(InitError::NoQueue(RX_QUEUE)));
    // Memory for n buffers gives n buffers.
    let n = Plan::rx_buffers_for(20 << 20, 16, 1024);
    let p = Plan::new(1024, 1024, n, 16).unwrap();
    assert!(p.arena_bytes() <= 20 << 20);
    assert!(Plan::new(1024, 1024, n + 1, 16).unwrap().arena_bytes() > (20 << 20) - 65_600);
}

#[test]
fn the_queues_the_device_sees_are_the_plans_and_receive_buffers_are_posted() {
    let dev = TestDevice::new(offered_all(), 256);
    let ram = MmapRam::new(0, 16 << 20);
    let n = start(&dev, &ram, 8, 4);
    assert_ne!(dev.status() & STATUS_DRIVER_OK, 0);
    assert_eq!(n.buffers(), (8, 4));
    assert_eq!(dev.queue(RX_QUEUE).size(), 8);
    assert_eq!(dev.queue(TX_QUEUE).size(), 8);
    assert!(dev.queue(RX_QUEUE).event_idx_enabled());
    // The first publication of the receive buffers kicked the device once.
    assert_eq!(dev.notifies(RX_QUEUE), 1);
    let mut got = 0;
    while dev.deliver_rx(&ram.mem, &NetHdr::default(), &[1; 60]) {
        got += 1;
    }
    assert_eq!(got, 8);
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn frames_travel_both_ways_with_their_headers_and_no_register_access_but_kicks() {
    let dev = TestDevice::new(offered_all(), 256);
    let ram = MmapRam::new(0, 32 << 20);
    let mut n = start(&dev, &ram, 8, 4);
    let exits = dev.exits.get();
    let gso = NetHdr {
        flags: NET_HDR_F_DATA_VALID,
        gso_type: GSO_TCPV4,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 1,
    };
    for round in 0..50u8 {
        // Receive: sizes from a runt to a whole 64 KiB coalesced segment.
        let sizes = [60, 1514, 9000, MAX_FRAME, 14];
        for (i, &len) in sizes.iter().enumerate() {
            assert!(dev.deliver_rx(&ram.mem, &gso, &frame(len, round ^ i as u8)));
        }
        for (i, &len) in sizes.iter().enumerate() {
            let f = n.rx_poll().unwrap().unwrap();
            assert_eq!(f.hdr, gso);
            assert_eq!(f.len, len);
            assert!(n.rx_frame(&f, |b| b == frame(len, round ^ i as u8).as_slice()));
            n.rx_repost(f.buffer);
        }
        assert!(n.rx_poll().is_none());
        // Transmit: a plain frame and a TSO super-frame.
        let big = frame(MAX_FRAME, round);
        let small = frame(60, !round);
        for (h, f) in [(NetHdr::default(), &small), (gso, &big)] {
            n.tx_send::<()>(&h, f.len(), |b| {
                b.copy_from_slice(f);
                Ok(())
            })
            .unwrap();
        }
        n.flush();
        let sent = dev.take_tx(&ram.mem);
        assert_eq!(sent, vec![(NetHdr::default(), small), (gso, big)]);
        let mut done = 0;
        while let Some(s) = n.tx_poll() {
            s.unwrap();
            done += 1;
        }
        assert_eq!(done, 2);
        assert_eq!(n.tx_free(), 4);
    }
    assert_eq!(
        dev.exits.get(),
        exits,
        "no register access on the data path"
    );
    assert!(!dev.touched_interrupt_regs.get());
    let s = n.stats();
    assert_eq!((s.rx_frames, s.tx_frames, s.bad_used), (250, 100, 0));
    assert_eq!(s.tx_bytes, 50 * (60 + MAX_FRAME as u64));
    // The device never slept (it never called enable_notification): after the first
    // kick of each queue, none.
    assert_eq!(dev.notifies(RX_QUEUE) + dev.notifies(TX_QUEUE), s.kicks);
    assert!(s.kicks <= 2, "kicks: {}", s.kicks);
}

#[test]
fn transmit_slots_run_out_and_oversized_frames_are_refused() {
    let dev = TestDevice::new(offered_all(), 256);
    let ram = MmapRam::new(0, 16 << 20);
    let mut n = start(&dev, &ram, 2, 2);
    let ok = |b: &mut [u8]| -> Result<(), ()> {
        b.fill(7);
        Ok(())
    };
    assert_eq!(
        n.tx_send(&NetHdr::default(), MAX_FRAME + 1, ok),
        Err(TxError::TooLong)
    );
    n.tx_send(&NetHdr::default(), 100, ok).unwrap();
    n.tx_send(&NetHdr::default(), 100, ok).unwrap();
    assert_eq!(n.tx_send(&NetHdr::default(), 100, ok), Err(TxError::NoSlot));
    assert_eq!(
        n.tx_send(&NetHdr::default(), 100, |_| Err::<(), _>("no")),
        Err(TxError::NoSlot)
    );
    n.flush();
    assert_eq!(dev.take_tx(&ram.mem).len(), 2);
    assert!(n.tx_poll().unwrap().is_ok());
    assert_eq!(
        n.tx_send(&NetHdr::default(), 100, |_| Err::<(), _>("no")),
        Err(TxError::Fill("no"))
    );
    assert_eq!(n.tx_free(), 1, "a failed fill keeps its slot");
}

#[test]
fn a_receive_entry_shorter_than_the_header_is_counted_and_its_buffer_reposted() {
    let dev = TestDevice::new(offered_all(), 256);
    let ram = MmapRam::new(0, 16 << 20);
    let mut n = start(&dev, &ram, 1, 1);
    {
        let mut q = dev.queue(RX_QUEUE);
        let ch = q.pop_descriptor_chain(&ram.mem).unwrap();
        q.add_used(&ram.mem, ch.head_index(), 5).unwrap();
    }
    assert_eq!(n.rx_poll(), Some(Err(net::BadEntry::Short { len: 5 })));
    n.flush();
    assert!(dev.deliver_rx(&ram.mem, &NetHdr::default(), &[9; 64]));
    assert_eq!(n.rx_poll().unwrap().unwrap().len, 64);
    assert_eq!(n.stats().bad_used, 1);
}

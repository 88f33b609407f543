//! The driver's split virtqueue against `virtio-queue`'s device side: chains travel
//! both ways past the 16-bit index wrap, kicks and interrupts are suppressed while the
//! other side polls and never missed when it sleeps, and used entries the driver did
//! not ask for are counted, never trusted.

use std::sync::atomic::Ordering;

use compart_virtio::host::MmapRam;
use compart_virtio::queue::{BadUsed, Buffer, QueueLayout, SplitQueue, Used};
use compart_virtio::Ram;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const BASE: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;

/// Driver and device sides of one queue of `size` in fresh memory.
fn pair(ram: &MmapRam, size: u16, event_idx: bool) -> (SplitQueue<&MmapRam>, Queue) {
    let (layout, _) = QueueLayout::at(BASE, size);
    let drv = SplitQueue::new(ram, layout, size, event_idx);
    let mut dev = Queue::new(size).unwrap();
    dev.set_size(size);
    dev.set_desc_table_address(Some(layout.desc as u32), Some(0));
    dev.set_avail_ring_address(Some(layout.avail as u32), Some(0));
    dev.set_used_ring_address(Some(layout.used as u32), Some(0));
    dev.set_event_idx(event_idx);
    dev.set_ready(true);
    assert!(dev.is_valid(&ram.mem));
    (drv, dev)
}

fn ram() -> MmapRam {
    MmapRam::new(0, 4 << 20)
}

/// One chain in data slot `slot`: a readable buffer of 8 bytes, a writable one of 64.
fn chain(slot: u64) -> [Buffer; 2] {
    [
        Buffer {
            addr: DATA + slot * 128,
            len: 8,
            device_writes: false,
        },
        Buffer {
            addr: DATA + slot * 128 + 64,
            len: 64,
            device_writes: true,
        },
    ]
}

#[test]
fn chains_and_used_entries_round_trip_past_the_index_wrap() {
    let ram = ram();
    let size = 8;
    let (mut drv, mut dev) = pair(&ram, size, true);
    let mut seq = 0u64;
    let mut done = 0u64;
    let mut batch = 1;
    while done < 70_000 {
        // A batch of 1..=4 chains (two descriptors each: the queue holds 4).
        let mut heads = Vec::new();
        for _ in 0..batch {
            let slot = seq % 4;
            let c = chain(slot);
            ram.write(c[0].addr, &seq.to_le_bytes());
            heads.push((drv.add(&c).unwrap(), seq));
            seq += 1;
        }
        drv.publish();
        for &(head, s) in &heads {
            let ch = dev.pop_descriptor_chain(&ram.mem).expect("a chain");
            assert_eq!(ch.head_index(), head);
            let descs: Vec<_> = ch.collect();
            assert_eq!(descs.len(), 2);
            let v: u64 = ram.mem.read_obj(descs[0].addr()).unwrap();
            assert_eq!(v, s);
            assert!(!descs[0].is_write_only() && descs[1].is_write_only());
            let len = (s % 64) as u32;
            dev.add_used(&ram.mem, head, len).unwrap();
        }
        for &(head, s) in &heads {
            let u = drv.pop_used().expect("a used entry").expect("a good one");
            assert_eq!(
                u,
                Used {
                    head,
                    len: (s % 64) as u32
                }
            );
            done += 1;
        }
        assert!(drv.pop_used().is_none());
        assert_eq!(drv.free_descriptors(), usize::from(size));
        batch = batch % 4 + 1;
    }
    assert_eq!(u64::from(dev.next_used()), done % 65_536);
    assert_eq!(drv.stats().used, done);
    assert_eq!(drv.stats().bad_used, 0);
}

/// Add and publish one chain in slot 0; returns whether the driver had to kick.
fn send_one(drv: &mut SplitQueue<&MmapRam>) -> bool {
    drv.add(&chain(0)).unwrap();
    drv.publish()
}

fn serve_one(dev: &mut Queue, drv: &mut SplitQueue<&MmapRam>, ram: &MmapRam) {
    let ch = dev.pop_descriptor_chain(&ram.mem).expect("a chain");
    dev.add_used(&ram.mem, ch.head_index(), 0).unwrap();
    drv.pop_used().unwrap().unwrap();
}

#[test]
fn a_polling_device_gets_no_kicks_and_a_sleeping_one_every_kick_across_the_wrap() {
    let ram = ram();
    let (mut drv, mut dev) = pair(&ram, 8, true);
    // The device has never said anything: avail_event is 0, so the first index (1)
    // passes it and the driver kicks; after that the device polls and leaves the
    // event behind, and the driver is silent until its index comes round to the
    // event again, 65 536 chains later (one spurious kick per wrap, as the spec has it).
    let mut kicks = 0;
    for _ in 0..70_000 {
        kicks += u32::from(send_one(&mut drv));
        serve_one(&mut dev, &mut drv, &ram);
    }
    assert_eq!(kicks, 2);
    // Now a device that sleeps after each chain (enable_notification, and it found
    // nothing) must be kicked for every one, across the wrap too.
    for i in 0..70_000 {
        assert!(
            !dev.enable_notification(&ram.mem).unwrap(),
            "nothing waiting"
        );
        assert!(send_one(&mut drv), "missed kick at chain {i}");
        // A second chain before the device woke needs no second kick.
        if i % 7 == 0 {
            assert!(!send_one(&mut drv));
            serve_one(&mut dev, &mut drv, &ram);
        }
        serve_one(&mut dev, &mut drv, &ram);
    }
    assert_eq!(drv.stats().kicks, 2 + 70_000);
}

#[test]
fn the_device_interrupts_only_after_the_driver_armed_and_never_misses_an_armed_one() {
    let ram = ram();
    let (mut drv, mut dev) = pair(&ram, 8, true);
    // A polling driver leaves used_event behind: no interrupt for 60 000 entries.
    for _ in 0..60_000 {
        send_one(&mut drv);
        let ch = dev.pop_descriptor_chain(&ram.mem).unwrap();
        dev.add_used(&ram.mem, ch.head_index(), 0).unwrap();
        assert!(!dev.needs_notification(&ram.mem).unwrap());
        drv.pop_used().unwrap().unwrap();
    }
    // A driver about to halt arms; the next used entry interrupts, across the wrap.
    for i in 0..70_000 {
        send_one(&mut drv);
        assert!(!drv.arm(), "nothing used yet");
        let ch = dev.pop_descriptor_chain(&ram.mem).unwrap();
        dev.add_used(&ram.mem, ch.head_index(), 0).unwrap();
        assert!(
            dev.needs_notification(&ram.mem).unwrap(),
            "missed interrupt {i}"
        );
        // The driver wakes and polls: a second entry before it re-arms does not
        // interrupt again.
        if i % 5 == 0 {
            send_one(&mut drv);
            let ch = dev.pop_descriptor_chain(&ram.mem).unwrap();
            dev.add_used(&ram.mem, ch.head_index(), 0).unwrap();
            assert!(!dev.needs_notification(&ram.mem).unwrap());
            drv.pop_used().unwrap().unwrap();
        }
        drv.pop_used().unwrap().unwrap();
    }
}

#[test]
fn arming_with_entries_already_used_says_so() {
    let ram = ram();
    let (mut drv, mut dev) = pair(&ram, 8, true);
    send_one(&mut drv);
    let ch = dev.pop_descriptor_chain(&ram.mem).unwrap();
    dev.add_used(&ram.mem, ch.head_index(), 0).unwrap();
    assert!(drv.arm(), "a used entry is waiting: do not halt");
    drv.pop_used().unwrap().unwrap();
    assert!(!drv.arm());
}

#[test]
fn without_event_idx_the_ring_flags_suppress_both_ways() {
    let ram = ram();
    let (mut drv, mut dev) = pair(&ram, 8, false);
    // The device polls (NO_NOTIFY set): no kick.
    dev.disable_notification(&ram.mem).unwrap();
    assert!(!send_one(&mut drv));
    let ch = dev.pop_descriptor_chain(&ram.mem).unwrap();
    dev.add_used(&ram.mem, ch.head_index(), 0).unwrap();
    // virtio-queue does not honour NO_INTERRUPT (it always says notify); the flag is
    // what a driver can do, and it is set while polling, cleared by arm.
    let flags = ram.load_u16(drv.layout().avail, Ordering::Relaxed);
    assert_eq!(flags, 1);
    assert!(drv.arm());
    assert_eq!(ram.load_u16(drv.layout().avail, Ordering::Relaxed), 0);
    drv.disarm();
    assert_eq!(ram.load_u16(drv.layout().avail, Ordering::Relaxed), 1);
    drv.pop_used().unwrap().unwrap();
    dev.enable_notification(&ram.mem).unwrap();
    assert!(send_one(&mut drv));
}

/// Write a used entry (`id`, `len`) at the device's next position, as a broken or
/// hostile device would.
fn forge_used(ram: &MmapRam, drv: &SplitQueue<&MmapRam>, dev: &mut Queue, id: u32, len: u32) {
    let used = drv.layout().used;
    let slot = u64::from(dev.next_used() % drv.size());
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&id.to_le_bytes());
    e[4..].copy_from_slice(&len.to_le_bytes());
    ram.mem
        .write_slice(&e, GuestAddress(used + 4 + 8 * slot))
        .unwrap();
    let next = dev.next_used().wrapping_add(1);
    dev.set_next_used(next);
    ram.store_u16(used + 2, next, Ordering::Release);
}

#[test]
fn used_entries_the_driver_did_not_post_are_counted_and_skipped() {
    let ram = ram();
    let (mut drv, mut dev) = pair(&ram, 8, true);
    forge_used(&ram, &drv, &mut dev, 8, 0);
    forge_used(&ram, &drv, &mut dev, u32::MAX, 0);
    forge_used(&ram, &drv, &mut dev, 3, 0);
    for id in [8, u32::MAX, 3] {
        assert_eq!(drv.pop_used(), Some(Err(BadUsed::UnknownId { id })));
    }
    // A real chain, then the device claims more bytes than it offered, then the same
    // id again (no longer in flight).
    let head = drv.add(&chain(0)).unwrap();
    drv.publish();
    let ch = dev.pop_descriptor_chain(&ram.mem).unwrap();
    assert_eq!(ch.head_index(), head);
    forge_used(&ram, &drv, &mut dev, u32::from(head), 65);
    forge_used(&ram, &drv, &mut dev, u32::from(head), 1);
    assert_eq!(
        drv.pop_used(),
        Some(Err(BadUsed::TooLong { head, len: 65 }))
    );
    assert_eq!(
        drv.pop_used(),
        Some(Err(BadUsed::UnknownId {
            id: u32::from(head)
        }))
    );
    assert_eq!(drv.pop_used(), None);
    assert_eq!(drv.stats().bad_used, 5);
    // The too-long chain was reclaimed: the queue is whole and goes on working.
    assert_eq!(drv.free_descriptors(), 8);
    send_one(&mut drv);
    serve_one(&mut dev, &mut drv, &ram);
}

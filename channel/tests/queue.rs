//! The SPSC ring against a model queue.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use common::Mem;
use compart_channel::ring::{Consumer, Producer};
use compart_channel::{Message, PairConfig, Side};
use proptest::prelude::*;

fn msg(seq: u64) -> Message {
    Message {
        id: 0,
        opcode: 1,
        flags: compart_channel::wire::FLAG_ONEWAY,
        inline: [seq, !seq, seq.rotate_left(7), 3, 4],
        ..Message::default()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Push(u8),
    Publish,
    Pop(u8),
    ConsumerPublish,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..20).prop_map(Op::Push),
        1 => Just(Op::Publish),
        3 => (1u8..20).prop_map(Op::Pop),
        1 => Just(Op::ConsumerPublish),
    ]
}

proptest! {
    /// Whatever the interleaving of pushes, pops and index publications, the consumer sees
    /// exactly the pushed messages, in order, and the producer reports the ring full exactly
    /// when the consumer's published index leaves it no room.
    #[test]
    fn ring_behaves_like_a_bounded_fifo(depth_log in 1u32..6, ops in prop::collection::vec(op(), 1..200)) {
        let depth = 1u32 << depth_log;
        let mem = Mem::new(PairConfig::new(depth, 2, 64));
        let ring = mem.layout.side(Side::B).requests;
        let r = mem.region;
        let mut p = Producer::attach(&r, ring).unwrap();
        let mut c = Consumer::attach(&r, ring).unwrap();
        let shared_head = || u64::from(r.u32_at(ring.head).unwrap().load(Ordering::Relaxed));
        let mut pushed = 0u64;
        let mut popped = 0u64;
        let mut model: VecDeque<u64> = VecDeque::new();
        for op in ops {
            match op {
                Op::Push(n) => for _ in 0..n {
                    let room = pushed - shared_head() < u64::from(depth);
                    let ok = p.push(&msg(pushed).encode()).unwrap();
                    prop_assert_eq!(ok, room);
                    if ok {
                        model.push_back(pushed);
                        pushed += 1;
                    }
                },
                Op::Publish => {
                    p.publish();
                    prop_assert_eq!(
                        u64::from(r.u32_at(ring.tail).unwrap().load(Ordering::Relaxed)),
                        pushed
                    );
                }
                Op::Pop(n) => for _ in 0..n {
                    match c.pop() {
                        Some(m) => {
                            let want = model.pop_front().unwrap();
                            prop_assert_eq!(m, msg(want).encode());
                            popped += 1;
                        }
                        None => {
                            prop_assert_eq!(popped, pushed);
                            // Caught up: everything consumed is given back.
                            prop_assert_eq!(shared_head(), popped);
                        }
                    }
                },
                Op::ConsumerPublish => c.publish(),
            }
        }
    }
}

#[test]
fn a_message_is_visible_as_soon_as_it_is_pushed() {
    let mem = Mem::new(PairConfig::new(8, 2, 64));
    let ring = mem.layout.side(Side::A).requests;
    let r = mem.region;
    let mut p = Producer::attach(&r, ring).unwrap();
    let mut c = Consumer::attach(&r, ring).unwrap();
    assert_eq!(c.pop(), None, "a zeroed ring is empty");
    assert!(!c.has_pending());
    assert!(p.push(&msg(0).encode()).unwrap());
    assert!(c.has_pending());
    assert_eq!(c.pop(), Some(msg(0).encode()));
    assert_eq!(c.pop(), None);
    assert_eq!(compart_channel::ring::occupancy(&r, &ring), 0);
}

#[test]
fn a_full_ring_refuses_and_then_accepts_after_a_pop() {
    let mem = Mem::new(PairConfig::new(4, 2, 64));
    let ring = mem.layout.side(Side::A).requests;
    let r = mem.region;
    let mut p = Producer::attach(&r, ring).unwrap();
    let mut c = Consumer::attach(&r, ring).unwrap();
    for i in 0..4 {
        assert!(p.push(&msg(i).encode()).unwrap());
    }
    assert!(!p.push(&msg(4).encode()).unwrap());
    p.publish();
    assert_eq!(compart_channel::ring::occupancy(&r, &ring), 4);
    assert_eq!(c.pop(), Some(msg(0).encode()));
    c.publish();
    assert!(p.push(&msg(4).encode()).unwrap());
    p.publish();
    assert_eq!(compart_channel::ring::occupancy(&r, &ring), 4);
}

#[test]
fn indices_wrap_around_u32() {
    let mem = Mem::new(PairConfig::new(4, 2, 64));
    let ring = mem.layout.side(Side::A).requests;
    let r = mem.region;
    // Start both indices just below the wrap point.
    let start = u32::MAX - 5;
    r.u32_at(ring.tail).unwrap().store(start, Ordering::Relaxed);
    r.u32_at(ring.head).unwrap().store(start, Ordering::Relaxed);
    let mut p = Producer::attach(&r, ring).unwrap();
    let mut c = Consumer::attach(&r, ring).unwrap();
    for i in 0..20 {
        assert!(p.push(&msg(i).encode()).unwrap());
        assert_eq!(c.pop(), Some(msg(i).encode()));
    }
    assert_eq!(c.pop(), None);
}

/// The lap tag is eight bits: run through more than 256 laps, with the ring full at times,
/// and never see an old message as new.
#[test]
fn lap_tags_tell_new_from_old_through_their_wrap_around() {
    let depth = 4u32;
    let mem = Mem::new(PairConfig::new(depth, 2, 64));
    let ring = mem.layout.side(Side::A).requests;
    let r = mem.region;
    let mut p = Producer::attach(&r, ring).unwrap();
    let mut c = Consumer::attach(&r, ring).unwrap();
    let mut next = 0u64;
    let mut want = 0u64;
    for round in 0..(300 * depth) {
        let burst = 1 + round % depth;
        for _ in 0..burst {
            if p.push(&msg(next).encode()).unwrap() {
                next += 1;
            }
        }
        while let Some(m) = c.pop() {
            assert_eq!(m, msg(want).encode());
            want += 1;
        }
        assert_eq!(want, next);
    }
    assert!(next > 256 * u64::from(depth));
}

/// A producer that restarts without having stored `tail` continues after the messages its
/// predecessor wrote, so none is overwritten or sent twice.
#[test]
fn a_restarted_producer_continues_after_the_messages_already_written() {
    let mem = Mem::new(PairConfig::new(8, 2, 64));
    let ring = mem.layout.side(Side::A).requests;
    let r = mem.region;
    let mut c = Consumer::attach(&r, ring).unwrap();
    let mut old = Producer::attach(&r, ring).unwrap();
    for i in 0..3 {
        assert!(old.push(&msg(i).encode()).unwrap());
    }
    assert_eq!(c.pop(), Some(msg(0).encode()));
    // A new producer, the old one gone without publishing `tail`.
    let mut p = Producer::attach(&r, ring).unwrap();
    assert_eq!(p.free_slots(), 8 - 3);
    assert!(p.push(&msg(3).encode()).unwrap());
    for i in 1..4 {
        assert_eq!(c.pop(), Some(msg(i).encode()));
    }
    assert_eq!(c.pop(), None);
}

//! The SPSC ring against a model queue.

mod common;

use std::collections::VecDeque;

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
    /// Whatever the interleaving of pushes, pops and publications, the consumer sees exactly
    /// the published messages, in order, and the producer never overwrites an unread slot.
    #[test]
    fn ring_behaves_like_a_bounded_fifo(depth_log in 1u32..6, ops in prop::collection::vec(op(), 1..200)) {
        let depth = 1u32 << depth_log;
        let mem = Mem::new(PairConfig::new(depth, 2, 64));
        let ring = mem.layout.side(Side::B).requests;
        let r = mem.region;
        let mut p = Producer::attach(&r, ring).unwrap();
        let mut c = Consumer::attach(&r, ring).unwrap();
        let mut pushed = 0u64;
        let mut published = 0u64; // messages the consumer may see
        let mut popped = 0u64;
        let mut model: VecDeque<u64> = VecDeque::new();
        for op in ops {
            match op {
                Op::Push(n) => for _ in 0..n {
                    let full_by_truth = pushed - popped >= u64::from(depth);
                    let ok = p.push(&r, &msg(pushed)).unwrap();
                    // A full ring is only reported when the consumer truly has no room (as
                    // far as it has published); then the producer must publish.
                    if !ok {
                        p.publish(&r).unwrap();
                        published = pushed;
                    }
                    if ok {
                        prop_assert!(!full_by_truth);
                        model.push_back(pushed);
                        pushed += 1;
                    }
                    published = published.max(pushed - u64::from(p.unpublished()));
                },
                Op::Publish => {
                    p.publish(&r).unwrap();
                    published = pushed;
                }
                Op::Pop(n) => for _ in 0..n {
                    match c.pop(&r).unwrap() {
                        Some(m) => {
                            prop_assert!(popped < published);
                            let want = model.pop_front().unwrap();
                            prop_assert_eq!(m, msg(want));
                            popped += 1;
                        }
                        None => prop_assert_eq!(popped, published),
                    }
                },
                Op::ConsumerPublish => c.publish(&r).unwrap(),
            }
        }
    }
}

#[test]
fn consumer_sees_nothing_until_the_producer_publishes() {
    let mem = Mem::new(PairConfig::new(8, 2, 64));
    let ring = mem.layout.side(Side::A).requests;
    let r = mem.region;
    let mut p = Producer::attach(&r, ring).unwrap();
    let mut c = Consumer::attach(&r, ring).unwrap();
    assert!(p.push(&r, &msg(0)).unwrap());
    assert_eq!(c.pop(&r).unwrap(), None);
    assert!(p.publish(&r).unwrap());
    assert_eq!(c.pop(&r).unwrap(), Some(msg(0)));
}

#[test]
fn a_full_ring_refuses_and_then_accepts_after_a_pop() {
    let mem = Mem::new(PairConfig::new(4, 2, 64));
    let ring = mem.layout.side(Side::A).requests;
    let r = mem.region;
    let mut p = Producer::attach(&r, ring).unwrap();
    let mut c = Consumer::attach(&r, ring).unwrap();
    for i in 0..4 {
        assert!(p.push(&r, &msg(i)).unwrap());
    }
    assert!(!p.push(&r, &msg(4)).unwrap());
    p.publish(&r).unwrap();
    assert_eq!(c.pop(&r).unwrap(), Some(msg(0)));
    c.publish(&r).unwrap();
    assert!(p.push(&r, &msg(4)).unwrap());
    p.publish(&r).unwrap();
    assert_eq!(compart_channel::ring::occupancy(&r, &ring), 4);
}

#[test]
fn indices_wrap_around_u32() {
    let mem = Mem::new(PairConfig::new(4, 2, 64));
    let ring = mem.layout.side(Side::A).requests;
    let r = mem.region;
    // Start both indices just below the wrap point.
    let start = u32::MAX - 5;
    r.u32_at(ring.tail)
        .unwrap()
        .store(start, std::sync::atomic::Ordering::Relaxed);
    r.u32_at(ring.head)
        .unwrap()
        .store(start, std::sync::atomic::Ordering::Relaxed);
    let mut p = Producer::attach(&r, ring).unwrap();
    let mut c = Consumer::attach(&r, ring).unwrap();
    for i in 0..20 {
        assert!(p.push(&r, &msg(i)).unwrap());
        p.publish(&r).unwrap();
        assert_eq!(c.pop(&r).unwrap(), Some(msg(i)));
    }
}

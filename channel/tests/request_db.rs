//! The request database and the pool, against a model.

mod common;

use std::collections::BTreeMap;

use common::Mem;
use compart_channel::db::{self, Entry, RequestDb, RequestId};
use compart_channel::pool::Pool;
use compart_channel::{Corruption, PairConfig, Side};
use proptest::prelude::*;

fn entry(op: u16, len: u32) -> Entry {
    Entry {
        opcode: op,
        payload_off: 0,
        payload_len: len,
        inline: [u64::from(op), 1, 2, 3, u64::from(len)],
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(u16),
    Reply(usize),
    Free(usize),
    Stale(usize),
}

proptest! {
    /// Ids are unique among live requests, lookups return what was stored, a full database
    /// says so, and ids that are freed (stale generations) are never accepted again.
    #[test]
    fn database_tracks_outstanding_requests(ops in prop::collection::vec(prop_oneof![
        3 => any::<u16>().prop_map(Op::Alloc),
        2 => any::<usize>().prop_map(Op::Reply),
        2 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::Stale),
    ], 1..300)) {
        let cap = 8u32;
        let mem = Mem::new(PairConfig::new(8, cap, 64));
        let r = mem.region;
        let mut d = RequestDb::attach(&r, mem.layout.side(Side::A).db, cap).unwrap();
        let mut live: BTreeMap<RequestId, (u16, u32)> = BTreeMap::new(); // id -> (opcode, state)
        let mut dead: Vec<RequestId> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc(code) => match d.alloc(&entry(code, 7)).unwrap() {
                    Some(id) => {
                        prop_assert!(id.index() < cap);
                        prop_assert!(live.keys().all(|k| k.index() != id.index()));
                        live.insert(id, (code, db::SENT));
                    }
                    None => prop_assert_eq!(live.len(), cap as usize),
                },
                Op::Reply(k) if !live.is_empty() => {
                    let id = *live.keys().nth(k % live.len()).unwrap();
                    let (code, state) = live[&id];
                    let ok = d.transition(id, db::SENT, db::REPLIED).unwrap();
                    prop_assert_eq!(ok, state == db::SENT);
                    if ok {
                        prop_assert_eq!(d.lookup(id, db::REPLIED).unwrap(), Some(entry(code, 7)));
                        live.insert(id, (code, db::REPLIED));
                    }
                }
                Op::Free(k) if !live.is_empty() => {
                    let id = *live.keys().nth(k % live.len()).unwrap();
                    let (_, state) = live[&id];
                    prop_assert!(d.free(id, state).unwrap());
                    live.remove(&id);
                    dead.push(id);
                }
                Op::Stale(k) if !dead.is_empty() => {
                    let id = dead[k % dead.len()];
                    prop_assert_eq!(d.lookup(id, db::SENT).unwrap(), None);
                    prop_assert!(!d.transition(id, db::SENT, db::REPLIED).unwrap());
                }
                _ => {}
            }
            prop_assert_eq!(d.outstanding() as usize, live.len());
        }
        // A new incarnation sees the same outstanding requests.
        let again = RequestDb::attach(&r, mem.layout.side(Side::A).db, cap).unwrap();
        prop_assert_eq!(again.outstanding() as usize, live.len());
        let mut sent: Vec<RequestId> = (0..cap).filter_map(|i| again.sent_at(i).unwrap()).collect();
        let want: Vec<RequestId> = live.iter().filter(|(_, v)| v.1 == db::SENT).map(|(k, _)| *k).collect();
        sent.sort();
        prop_assert_eq!(sent, want);
    }

    /// A pool span is accepted exactly when it lies inside one buffer.
    #[test]
    fn pool_accepts_exactly_the_spans_inside_a_buffer(index in 0u32..10, off in any::<u32>(), len in any::<u32>()) {
        let p = Pool::new(8192, 2048, 8);
        let inside = index < 8 && u64::from(off) + u64::from(len) <= 2048;
        match p.span(index, off, len) {
            Ok(at) => {
                prop_assert!(inside);
                prop_assert_eq!(at, 8192 + index as usize * 2048 + off as usize);
            }
            Err(e) => {
                prop_assert!(!inside);
                prop_assert_eq!(e, Corruption::PayloadBounds);
            }
        }
    }
}

#[test]
fn ids_are_never_zero_and_generations_advance() {
    let mem = Mem::new(PairConfig::new(8, 2, 64));
    let r = mem.region;
    let mut d = RequestDb::attach(&r, mem.layout.side(Side::B).db, 2).unwrap();
    let a = d.alloc(&entry(1, 0)).unwrap().unwrap();
    assert_ne!(a.0, 0);
    assert!(d.free(a, db::SENT).unwrap());
    let b = d.alloc(&entry(1, 0)).unwrap().unwrap();
    assert_eq!(a.index(), b.index());
    assert_ne!(a.generation(), b.generation());
}

#[test]
fn a_corrupt_free_list_is_reported() {
    let mem = Mem::new(PairConfig::new(8, 4, 64));
    let r = mem.region;
    let base = mem.layout.side(Side::A).db;
    let mut d = RequestDb::attach(&r, base, 4).unwrap();
    // Entry 0's "next free" now points far outside the database.
    r.u32_at(base + 8)
        .unwrap()
        .store(1000, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(d.alloc(&entry(1, 0)), Err(Corruption::RequestDb));
}

#[test]
fn take_reply_accepts_each_sent_request_once() {
    let mem = Mem::new(PairConfig::new(8, 2, 64));
    let r = mem.region;
    let mut d = RequestDb::attach(&r, mem.layout.side(Side::A).db, 2).unwrap();
    let a = d.alloc(&entry(9, 0)).unwrap().unwrap();
    // Wrong generation, out-of-range index, generation 0: not outstanding, nothing changes.
    let stale = RequestId(u64::from(a.generation().wrapping_add(1)) << 32 | u64::from(a.index()));
    assert_eq!(d.take_reply(stale), Ok(None));
    assert_eq!(d.take_reply(RequestId(1 << 32 | 7)), Ok(None));
    assert_eq!(d.take_reply(RequestId(u64::from(a.index()))), Ok(None));
    assert_eq!(d.lookup(a, db::SENT).unwrap().map(|e| e.opcode), Some(9));
    // The real id: once, and the entry is then REPLIED.
    assert_eq!(d.take_reply(a), Ok(Some(9)));
    assert_eq!(d.take_reply(a), Ok(None));
    assert!(d.lookup(a, db::REPLIED).unwrap().is_some());
    assert!(d.free(a, db::REPLIED).unwrap());
}

//! The endpoint API: requests, replies, payloads, batching, notification, restarts, errors.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{CountingKick, Deadline, LocalKick, Mem};
use compart_channel::host::EventFd;
use compart_channel::{
    initialize, ChannelError, Corruption, Endpoint, NoKick, PairConfig, PairLayout, Region, Side,
    SpinWait, MAGIC,
};

fn pair(config: PairConfig) -> (Mem, Endpoint<NoKick>, Endpoint<NoKick>) {
    let mem = Mem::new(config);
    let a = Endpoint::attach(mem.region, Side::A, NoKick).unwrap();
    let b = Endpoint::attach(mem.region, Side::B, NoKick).unwrap();
    (mem, a, b)
}

#[test]
fn a_request_and_its_reply_carry_payloads_both_ways() {
    let (_m, mut a, mut b) = pair(PairConfig::new(16, 4, 2048));
    let payload: Vec<u8> = (0..1500u32).map(|i| (i * 7) as u8).collect();
    let id = a.send_request(42, [1, 2, 3, 4, 5], &payload).unwrap();
    a.flush().unwrap();
    let req = b.poll_request().unwrap().unwrap();
    assert_eq!(
        (req.id(), req.opcode(), *req.inline()),
        (id, 42, [1, 2, 3, 4, 5])
    );
    let mut got = vec![0u8; 2048];
    assert_eq!(b.read_request_payload(&req, &mut got).unwrap(), 1500);
    assert_eq!(&got[..1500], &payload[..]);
    b.reply(req, 9, [6; 5], b"answer").unwrap();
    b.flush().unwrap();
    let rep = a.poll_reply().unwrap().unwrap();
    assert_eq!(
        (rep.id(), rep.opcode(), rep.status(), rep.payload_len()),
        (id, 42, 9, 6)
    );
    let mut buf = [0u8; 16];
    assert_eq!(a.read_reply_payload(&rep, &mut buf).unwrap(), 6);
    assert_eq!(&buf[..6], b"answer");
    assert_eq!(a.outstanding_count(), 1);
    a.free(rep).unwrap();
    assert_eq!(a.outstanding_count(), 0);
}

#[test]
fn both_sides_can_be_requester_and_server_at_once() {
    let (_m, mut a, mut b) = pair(PairConfig::new(8, 4, 64));
    let ia = a.send_request(1, [0; 5], b"").unwrap();
    let ib = b.send_request(2, [0; 5], b"").unwrap();
    b.flush().unwrap();
    let ra = a.poll_request().unwrap().unwrap(); // also publishes A's request
    let rb = b.poll_request().unwrap().unwrap();
    assert_eq!((ra.opcode(), rb.opcode()), (2, 1));
    a.reply(ra, 0, [0; 5], b"").unwrap();
    b.reply(rb, 0, [0; 5], b"").unwrap();
    a.flush().unwrap();
    b.flush().unwrap();
    assert_eq!(a.poll_reply().unwrap().unwrap().id(), ia);
    assert_eq!(b.poll_reply().unwrap().unwrap().id(), ib);
}

#[test]
fn oneway_messages_arrive_in_order_and_cannot_be_answered() {
    let (_m, mut a, mut b) = pair(PairConfig::new(64, 4, 64));
    for i in 0..50 {
        a.send_oneway(3, [i, 0, 0, 0, 0]).unwrap();
    }
    a.flush().unwrap();
    for i in 0..50 {
        let m = b.poll_request().unwrap().unwrap();
        assert!(m.is_oneway());
        assert_eq!(m.inline()[0], i);
        if i == 0 {
            assert_eq!(b.reply(m, 0, [0; 5], b""), Err(ChannelError::InvalidHandle));
        }
    }
    assert!(b.poll_request().unwrap().is_none());
}

#[test]
fn a_message_is_visible_as_soon_as_it_is_sent() {
    let (_m, mut a, mut b) = pair(PairConfig::new(64, 4, 64));
    for i in 0..3 {
        a.send_oneway(1, [i; 5]).unwrap();
        let m = b.poll_request().unwrap().expect("visible without a flush");
        assert_eq!(m.inline(), &[i; 5]);
    }
    let id = a.send_request(2, [7; 5], b"").unwrap();
    let req = b.poll_request().unwrap().expect("visible without a flush");
    b.reply(req, 0, [8; 5], b"").unwrap();
    let rep = a.poll_reply().unwrap().expect("visible without a flush");
    assert_eq!((rep.id(), rep.inline()), (id, &[8; 5]));
    a.free(rep).unwrap();
    assert!(b.poll_request().unwrap().is_none());
}

#[test]
fn a_full_queue_and_a_full_database_are_reported_without_losing_anything() {
    let (_m, mut a, mut b) = pair(PairConfig::new(4, 8, 64));
    for _ in 0..4 {
        a.send_request(1, [0; 5], b"x").unwrap();
    }
    assert_eq!(a.send_request(1, [0; 5], b"x"), Err(ChannelError::Full));
    assert_eq!(
        a.outstanding_count(),
        4,
        "a refused request frees its entry"
    );
    let mut reqs = Vec::new();
    while let Some(r) = b.poll_request().unwrap() {
        reqs.push(r);
    }
    assert_eq!(reqs.len(), 4);
    for _ in 0..4 {
        a.send_request(1, [0; 5], b"x").unwrap();
    }
    assert_eq!(
        a.send_request(1, [0; 5], b"x"),
        Err(ChannelError::NoFreeRequest)
    );
    assert_eq!(
        a.send_request(1, [0; 5], &[0; 65]),
        Err(ChannelError::PayloadTooLarge)
    );
}

#[test]
fn replies_never_wait_for_space_when_the_requester_keeps_up() {
    // Reply queue of A has max_outstanding = 2 slots; run many cycles through it.
    let (_m, mut a, mut b) = pair(PairConfig::new(2, 2, 64));
    for round in 0..1000u64 {
        let i1 = a.send_request(1, [round; 5], b"").unwrap();
        let i2 = a.send_request(1, [round; 5], b"").unwrap();
        a.flush().unwrap();
        let r1 = b.poll_request().unwrap().unwrap();
        let r2 = b.poll_request().unwrap().unwrap();
        b.reply(r2, 2, [0; 5], b"").unwrap();
        b.reply(r1, 1, [0; 5], b"").unwrap();
        b.flush().unwrap();
        let x = a.poll_reply().unwrap().unwrap();
        let y = a.poll_reply().unwrap().unwrap();
        assert_eq!((x.id(), y.id()), (i2, i1));
        a.free(x).unwrap();
        a.free(y).unwrap();
    }
}

#[test]
fn can_reply_says_whether_a_reply_would_fit_and_sees_room_made_by_the_requester() {
    // A's reply queue has max_outstanding = 2 slots; A resubmits its requests without
    // taking the replies, so B can be asked for a third reply that has no room.
    let (_m, mut a, mut b) = pair(PairConfig::new(8, 2, 64));
    let i1 = a.send_request(1, [1; 5], b"").unwrap();
    let i2 = a.send_request(1, [2; 5], b"").unwrap();
    a.resubmit(i1).unwrap();
    a.flush().unwrap();
    for _ in 0..2 {
        assert_eq!(b.can_reply(), Ok(true));
        let r = b.poll_request().unwrap().unwrap();
        b.reply(r, 0, [0; 5], b"").unwrap();
    }
    assert_eq!(b.can_reply(), Ok(false));
    let third = b.poll_request().unwrap().unwrap();
    // A takes one reply (and publishes its head by catching up): room again.
    let x = a.poll_reply().unwrap().unwrap();
    assert_eq!(x.id(), i1);
    let y = a.poll_reply().unwrap().unwrap();
    assert_eq!(y.id(), i2);
    assert_eq!(a.poll_reply(), Ok(None));
    assert_eq!(b.can_reply(), Ok(true));
    b.reply(third, 0, [0; 5], b"").unwrap();
}

#[test]
fn a_sender_kicks_only_a_sleeping_receiver_and_only_once() {
    let mem = Mem::new(PairConfig::new(64, 4, 64));
    let mut a = Endpoint::attach(mem.region, Side::A, LocalKick::default()).unwrap();
    let mut b = Endpoint::attach(mem.region, Side::B, LocalKick::default()).unwrap();
    a.send_oneway(1, [0; 5]).unwrap();
    a.flush().unwrap();
    assert_eq!(a.notifier().0.get(), 0, "B polls: no kick");
    while b.poll_request().unwrap().is_some() {}
    // B goes to sleep (SpinWait returns at once, leaving B marked as sleeping until it
    // stores POLLING on return; simulate the blocked state by setting the word directly).
    assert!(!b.wait_for_work(&SpinWait, 10).unwrap());
    let state = mem.layout.side(Side::B).notify;
    mem.region
        .u32_at(state)
        .unwrap()
        .store(compart_channel::notify::SLEEPING, Ordering::Relaxed);
    a.send_oneway(1, [0; 5]).unwrap();
    a.flush().unwrap();
    a.send_oneway(1, [0; 5]).unwrap();
    a.flush().unwrap();
    assert_eq!(a.notifier().0.get(), 1, "one kick per sleep");
    assert_eq!(b.counters().kicks, 1);
    assert_eq!(b.counters().sleeps, 1);
    assert!(
        b.wait_for_work(&SpinWait, 10).unwrap(),
        "work found while spinning"
    );
    assert_eq!(
        b.counters().sleeps,
        1,
        "no sleep announced when spinning finds work"
    );
    assert!(
        b.wait_for_work(&SpinWait, 0).unwrap(),
        "work found by the re-check"
    );
    assert_eq!(
        b.counters().sleeps,
        2,
        "announced, then cancelled by the re-check"
    );
}

#[test]
fn a_busy_sender_checks_for_a_sleeping_receiver_after_a_few_idle_polls() {
    let mem = Mem::new(PairConfig::new(64, 4, 64));
    let mut a = Endpoint::attach(mem.region, Side::A, LocalKick::default()).unwrap();
    let state = mem.layout.side(Side::B).notify;
    mem.region
        .u32_at(state)
        .unwrap()
        .store(compart_channel::notify::SLEEPING, Ordering::Relaxed);
    a.send_oneway(1, [0; 5]).unwrap();
    // The check is deferred off the critical path...
    for _ in 0..compart_channel::KICK_CHECK_IDLE_POLLS - 1 {
        assert!(a.poll_request().unwrap().is_none());
    }
    assert_eq!(a.notifier().0.get(), 0);
    // ...to the sender's idle time, never skipped.
    assert!(a.poll_request().unwrap().is_none());
    assert_eq!(a.notifier().0.get(), 1);
}

#[test]
fn occupancy_counts_published_messages() {
    let (m, mut a, mut b) = pair(PairConfig::new(64, 4, 64));
    for _ in 0..10 {
        a.send_oneway(1, [0; 5]).unwrap();
    }
    a.flush().unwrap();
    assert_eq!(b.occupancy().requests_in, 10);
    assert_eq!(a.occupancy().requests_out, 10);
    assert_eq!(
        compart_channel::occupancy(&m.region, &m.layout, Side::B).requests_in,
        10
    );
    for _ in 0..10 {
        b.poll_request().unwrap().unwrap();
    }
    b.poll_request().unwrap(); // caught up: publishes the head
    assert_eq!(a.occupancy().requests_out, 0);
}

#[test]
fn totals_count_every_message_sent_and_taken_while_occupancy_returns_to_zero() {
    let (m, mut a, mut b) = pair(PairConfig::new(8, 4, 64));
    for _ in 0..3 {
        for _ in 0..8 {
            a.send_oneway(1, [0; 5]).unwrap();
        }
        a.flush().unwrap();
        while b.poll_request().unwrap().is_some() {}
        b.poll_request().unwrap(); // caught up: publishes the head
    }
    let t = |side| compart_channel::totals(&m.region, &m.layout, side);
    assert_eq!(
        (t(Side::A).requests_sent, t(Side::B).requests_received),
        (24, 24)
    );
    assert_eq!(
        (t(Side::A).requests_received, t(Side::B).requests_sent),
        (0, 0)
    );
    assert_eq!(
        a.occupancy().requests_out,
        0,
        "depth is current, not cumulative"
    );
}

#[test]
fn a_restarted_requester_finds_its_outstanding_requests() {
    let (m, mut a, mut b) = pair(PairConfig::new(16, 8, 64));
    let ids: Vec<_> = (0..3)
        .map(|i| a.send_request(5, [i; 5], b"keep").unwrap())
        .collect();
    a.flush().unwrap();
    // A crashes (an endpoint has no destructor: it just stops) and attaches again.
    let mut a = Endpoint::attach(m.region, Side::A, NoKick).unwrap();
    let mut out: Vec<_> = a.outstanding().collect();
    out.sort();
    assert_eq!(out, ids);
    // The server still answers them; the new incarnation accepts the replies.
    while let Some(r) = b.poll_request().unwrap() {
        b.reply(r, 0, [0; 5], b"").unwrap();
    }
    b.flush().unwrap();
    for _ in 0..3 {
        let rep = a.poll_reply().unwrap().unwrap();
        a.free(rep).unwrap();
    }
    assert_eq!(a.outstanding_count(), 0);
}

#[test]
fn requests_lost_by_a_restarted_server_are_resubmitted_or_abandoned() {
    let (m, mut a, mut b) = pair(PairConfig::new(16, 8, 64));
    let i1 = a.send_request(5, [1; 5], b"one").unwrap();
    let i2 = a.send_request(6, [2; 5], b"two").unwrap();
    a.flush().unwrap();
    // The server takes both and dies without answering.
    b.poll_request().unwrap().unwrap();
    b.poll_request().unwrap().unwrap();
    // B crashes and restarts.
    let mut b = Endpoint::attach(m.region, Side::B, NoKick).unwrap();
    assert_eq!(b.discard_requests().unwrap(), 2);
    let mut out: Vec<_> = a.outstanding().collect();
    out.sort();
    assert_eq!(out, [i1, i2]);
    a.resubmit(i1).unwrap();
    a.abandon(i2).unwrap();
    a.flush().unwrap();
    let r = b.poll_request().unwrap().unwrap();
    assert_eq!((r.id(), r.opcode(), *r.inline()), (i1, 5, [1; 5]));
    let mut buf = [0u8; 3];
    b.read_request_payload(&r, &mut buf).unwrap();
    assert_eq!(&buf, b"one");
    assert!(b.poll_request().unwrap().is_none());
    assert_eq!(a.resubmit(i2), Err(ChannelError::InvalidHandle));
}

#[test]
fn attach_rejects_an_uninitialised_or_mismatched_region() {
    let config = PairConfig::new(16, 8, 64);
    let mem = Mem::new(config);
    let r = mem.region;
    let size = PairLayout::new(&config).unwrap().size();
    // SAFETY: a shorter view of the same live memory.
    let short = unsafe { Region::from_raw(r.as_ptr(), size - 64) }.unwrap();
    assert_eq!(
        Endpoint::attach(short, Side::A, NoKick).err(),
        Some(ChannelError::Corrupt(Corruption::BadHeader))
    );
    r.u32_at(8).unwrap().store(99, Ordering::Relaxed);
    assert_eq!(
        Endpoint::attach(r, Side::A, NoKick).err(),
        Some(ChannelError::Corrupt(Corruption::BadVersion))
    );
    initialize(&r, &config).unwrap();
    r.u32_at(24).unwrap().store(1 << 20, Ordering::Relaxed);
    assert_eq!(
        Endpoint::attach(r, Side::A, NoKick).err(),
        Some(ChannelError::Corrupt(Corruption::BadHeader))
    );
    r.u64_at(0).unwrap().store(!MAGIC, Ordering::Relaxed);
    assert_eq!(
        Endpoint::attach(r, Side::A, NoKick).err(),
        Some(ChannelError::Corrupt(Corruption::BadMagic))
    );
    assert!(initialize(&short, &config).is_err());
}

#[test]
fn an_impossible_head_breaks_the_channel_for_good() {
    let (m, mut a, mut b) = pair(PairConfig::new(16, 8, 64));
    for _ in 0..16 {
        a.send_oneway(1, [0; 5]).unwrap();
    }
    // The ring looks full to A, which reads B's index: one that B cannot have written.
    let ring = m.layout.side(Side::B).requests;
    m.region
        .u32_at(ring.head)
        .unwrap()
        .store(1000, Ordering::Relaxed);
    assert_eq!(
        a.send_oneway(1, [0; 5]),
        Err(ChannelError::Corrupt(Corruption::RingIndex))
    );
    assert_eq!(a.broken(), Some(Corruption::RingIndex));
    assert_eq!(
        a.poll_reply(),
        Err(ChannelError::Broken(Corruption::RingIndex))
    );
    assert_eq!(
        a.send_oneway(1, [0; 5]),
        Err(ChannelError::Broken(Corruption::RingIndex))
    );
    // B never trusted A's side of the ring: it reads the messages there, then nothing.
    let mut n = 0;
    while b.poll_request().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 16);
}

#[test]
fn a_forged_tail_changes_only_what_observers_see() {
    let (m, mut a, mut b) = pair(PairConfig::new(16, 8, 64));
    a.send_oneway(1, [5; 5]).unwrap();
    let ring = m.layout.side(Side::B).requests;
    m.region
        .u32_at(ring.tail)
        .unwrap()
        .store(1000, Ordering::Relaxed);
    assert_eq!(b.occupancy().requests_in, 16, "clamped to the depth");
    assert_eq!(b.poll_request().unwrap().unwrap().inline(), &[5; 5]);
    assert!(b.poll_request().unwrap().is_none());
    assert_eq!(b.broken(), None);
}

#[test]
fn a_payload_outside_the_buffer_is_refused_before_it_is_read() {
    let (m, mut a, mut b) = pair(PairConfig::new(16, 8, 64));
    a.send_request(1, [0; 5], b"abc").unwrap();
    a.flush().unwrap();
    // Rewrite the slot's payload length (word 2, high half) to exceed the buffer.
    let slot = m.layout.side(Side::B).requests.slots;
    m.region
        .u64_at(slot + 16)
        .unwrap()
        .store(1000 << 32, Ordering::Relaxed);
    assert_eq!(
        b.poll_request(),
        Err(ChannelError::Corrupt(Corruption::PayloadBounds))
    );
}

#[test]
fn a_late_or_forged_reply_is_dropped_and_frees_nothing() {
    let (m, mut a, mut b) = pair(PairConfig::new(16, 8, 64));
    let id = a.send_request(1, [0; 5], b"").unwrap();
    a.flush().unwrap();
    let r = b.poll_request().unwrap().unwrap();
    b.reply(r, 0, [0; 5], b"").unwrap();
    b.flush().unwrap();
    // Forge: change the id's generation in the reply slot.
    let ring = m.layout.side(Side::A).replies;
    m.region
        .u64_at(ring.slots)
        .unwrap()
        .store(id.0 + (7 << 32), Ordering::Relaxed);
    assert_eq!(a.poll_reply(), Ok(None));
    assert_eq!(a.stale_replies(), 1);
    assert_eq!(a.outstanding().collect::<Vec<_>>(), [id]);
    // An id whose index is outside the database is malformed, not stale.
    let r = b.send_request(1, [0; 5], b"").unwrap();
    let _ = r;
    b.flush().unwrap();
    let req = a.poll_request().unwrap().unwrap();
    a.reply(req, 0, [0; 5], b"").unwrap();
    a.flush().unwrap();
    let ring_b = m.layout.side(Side::B).replies;
    m.region
        .u64_at(ring_b.slots)
        .unwrap()
        .store(1 << 32 | 1000, Ordering::Relaxed);
    assert_eq!(
        b.poll_reply(),
        Err(ChannelError::Corrupt(Corruption::BadMessage))
    );
}

#[test]
fn two_threads_exchange_requests_sleeping_and_waking_through_eventfds() {
    const N: u64 = 200_000;
    let config = PairConfig::new(64, 32, 128);
    let mem = Arc::new(Mem::new(config));
    let kick_b = Arc::new(EventFd::new(Some(Duration::from_millis(50))).unwrap());
    let kick_a = Arc::new(EventFd::new(Some(Duration::from_millis(50))).unwrap());
    let server = {
        let (mem, kick_a, kick_b) = (mem.clone(), kick_a.clone(), kick_b.clone());
        std::thread::spawn(move || {
            let mut b = Endpoint::attach(mem.region, Side::B, &*kick_a).unwrap();
            let deadline = Deadline::after(Duration::from_secs(60));
            let mut served = 0u64;
            let mut buf = [0u8; 8];
            while served < N {
                deadline.check("server");
                match b.poll_request().unwrap() {
                    Some(r) => {
                        b.read_request_payload(&r, &mut buf).unwrap();
                        assert_eq!(u64::from_le_bytes(buf), r.inline()[0]);
                        let v = r.inline()[0];
                        b.reply(r, 0, [v + 1, 0, 0, 0, 0], &(v * 3).to_le_bytes())
                            .unwrap();
                        served += 1;
                    }
                    None => {
                        b.wait_for_work(&*kick_b, 100).unwrap();
                    }
                }
            }
            b.flush().unwrap();
            b.counters()
        })
    };
    let mut a = Endpoint::attach(mem.region, Side::A, CountingKick::new(&*kick_b)).unwrap();
    let deadline = Deadline::after(Duration::from_secs(60));
    let (mut sent, mut got) = (0u64, 0u64);
    let mut buf = [0u8; 8];
    while got < N {
        deadline.check("client");
        while sent < N && sent - got < 16 {
            a.send_request(1, [sent, 0, 0, 0, 0], &sent.to_le_bytes())
                .unwrap();
            sent += 1;
        }
        // Now and then pause so that the server falls asleep and must be woken.
        if sent % 4096 == 0 {
            a.flush().unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        match a.poll_reply().unwrap() {
            Some(rep) => {
                a.read_reply_payload(&rep, &mut buf).unwrap();
                assert_eq!(u64::from_le_bytes(buf), (rep.inline()[0] - 1) * 3);
                a.free(rep).unwrap();
                got += 1;
            }
            None => {
                a.wait_for_work(&*kick_a, 100).unwrap();
            }
        }
    }
    let server_counters = server.join().unwrap();
    assert!(server_counters.sleeps > 0, "server never slept");
    assert_eq!(server_counters.kicks, a.notifier().count());
    assert!(server_counters.kicks <= server_counters.sleeps);
    assert!(a.notifier().count() > 0, "server was never kicked");
}

#[test]
fn a_poll_loop_publishes_replies_without_explicit_flushes() {
    const N: u64 = 100_000;
    let mem = Arc::new(Mem::new(PairConfig::new(1024, 64, 64)));
    let server = {
        let mem = mem.clone();
        std::thread::spawn(move || {
            let mut b = Endpoint::attach(mem.region, Side::B, NoKick).unwrap();
            let deadline = Deadline::after(Duration::from_secs(20));
            let mut n = 0;
            while n < N {
                deadline.check("server");
                if let Some(r) = b.poll_request().unwrap() {
                    let v = r.inline()[0];
                    b.reply(r, 0, [v, 0, 0, 0, 0], &[]).unwrap();
                    n += 1;
                }
            }
            b.flush().unwrap();
        })
    };
    let mut a = Endpoint::attach(mem.region, Side::A, NoKick).unwrap();
    let deadline = Deadline::after(Duration::from_secs(20));
    for i in 0..N {
        a.send_request(1, [i, 0, 0, 0, 0], &[]).unwrap();
        loop {
            deadline.check("client");
            if let Some(rep) = a.poll_reply().unwrap() {
                assert_eq!(rep.inline()[0], i);
                a.free(rep).unwrap();
                break;
            }
        }
    }
    server.join().unwrap();
}

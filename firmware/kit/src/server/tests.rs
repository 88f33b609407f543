//! The loop against host-side channel regions: the peers are endpoints (or raw ring
//! writers) driven by the test itself.

extern crate std;

use std::vec::Vec;

use compart_channel::host::SharedMemory;
use compart_channel::ring::Producer;
use compart_channel::{initialize, NoKick, PairConfig, PairLayout, Side};
use core::sync::atomic::Ordering;

use super::*;

const OP_ECHO: u16 = 1;
const OP_STOP: u16 = 2;
const OP_BAD: u16 = 3;

/// Answers OP_ECHO with its inline words, refuses OP_BAD with status 1 and closes on a
/// one-way OP_STOP; counts what it served.
#[derive(Debug, Default)]
struct Echo {
    served: u64,
}

impl Handler<NoKick> for Echo {
    fn on_request(&mut self, link: &mut Link<'_, NoKick>, req: Request) -> Result<(), Close> {
        match (req.opcode(), req.is_oneway()) {
            (OP_STOP, true) => Err(Close::Done),
            (OP_ECHO, false) => {
                self.served += 1;
                let inline = *req.inline();
                link.reply(req, 0, inline, &[])
            }
            (_, false) => link.reply(req, 1, [0; INLINE_WORDS], &[]),
            (_, true) => Err(Close::Violation("unknown one-way message")),
        }
    }
}

struct Pair {
    mem: SharedMemory,
    layout: PairLayout,
    /// The peer's side (A); the server has side B.
    peer: Endpoint<NoKick>,
}

fn pair(config: PairConfig) -> (Pair, Endpoint<NoKick>) {
    let size = PairLayout::new(&config).unwrap().size();
    let mem = SharedMemory::create("server-test", size.next_multiple_of(4096)).unwrap();
    let layout = initialize(&mem.region(), &config).unwrap();
    let peer = Endpoint::attach(mem.region(), Side::A, NoKick).unwrap();
    let server = Endpoint::attach(mem.region(), Side::B, NoKick).unwrap();
    (Pair { mem, layout, peer }, server)
}

/// A server over `n` fresh channels (peers named p0, p1, …).
fn server(n: usize, config: PairConfig) -> (Vec<Pair>, Server<NoKick, Echo>) {
    let mut s = Server::new();
    let mut pairs = Vec::new();
    for index in 0..n {
        let (p, ep) = pair(config);
        let peer = Peer {
            index,
            name: std::format!("p{index}"),
            role: Role::App,
        };
        s.add(peer, ep, Echo::default());
        pairs.push(p);
    }
    (pairs, s)
}

/// What the reports said, as text.
fn poll(s: &mut Server<NoKick, Echo>) -> (bool, Vec<std::string::String>) {
    let mut events = Vec::new();
    let busy = s.poll(&mut |e| {
        events.push(match e {
            Event::Closed {
                peer,
                why,
                stats,
                handler,
            } => std::format!(
                "{} closed: {why}; {} requests, {} stale, {} unexpected, served {}",
                peer.name,
                stats.requests,
                stats.stale_replies,
                stats.unexpected_replies,
                handler.served
            ),
            Event::Throttled { peer } => std::format!("{} throttled", peer.name),
            Event::Resumed { peer } => std::format!("{} resumed", peer.name),
        })
    });
    (busy, events)
}

fn config() -> PairConfig {
    PairConfig::new(64, 4, 64)
}

#[test]
fn requests_are_answered_and_a_stop_closes_only_its_channel() {
    let (mut p, mut s) = server(2, config());
    for (i, pair) in p.iter_mut().enumerate() {
        pair.peer.send_request(OP_ECHO, [i as u64; 5], b"").unwrap();
    }
    p[0].peer.send_oneway(OP_STOP, [0; 5]).unwrap();
    let (busy, events) = poll(&mut s);
    assert!(busy);
    assert_eq!(
        events,
        ["p0 closed: done; 2 requests, 0 stale, 0 unexpected, served 1"]
    );
    assert_eq!(s.len(), 1);
    for (i, pair) in p.iter_mut().enumerate() {
        let r = pair.peer.poll_reply().unwrap().unwrap();
        assert_eq!((r.status(), r.inline()[0]), (0, i as u64));
    }
    assert_eq!(poll(&mut s), (false, Vec::new()));
}

#[test]
fn a_wrong_request_gets_an_error_reply_and_the_channel_stays() {
    let (mut p, mut s) = server(1, config());
    p[0].peer.send_request(OP_BAD, [7; 5], b"").unwrap();
    p[0].peer.send_request(OP_ECHO, [8; 5], b"").unwrap();
    poll(&mut s);
    let r = p[0].peer.poll_reply().unwrap().unwrap();
    assert_eq!(r.status(), 1);
    let r = p[0].peer.poll_reply().unwrap().unwrap();
    assert_eq!((r.status(), r.inline()[0]), (0, 8));
    assert_eq!(s.len(), 1);
}

#[test]
fn forged_replies_are_consumed_and_counted_so_the_server_can_sleep() {
    let (mut p, mut s) = server(2, config());
    // Side A produces the server's (side B's) reply queue; write it without any request.
    let ring = p[0].layout.side(Side::B).replies;
    let mut forger = Producer::attach(&p[0].mem.region(), ring).unwrap();
    for i in 0..4u64 {
        // Index i of the server's database, generation 1: well-formed, not outstanding.
        let id = i | 1 << 32;
        assert!(forger
            .push(&[id, u64::from(OP_ECHO), 0, 0, 0, 0, 0, 0])
            .unwrap());
    }
    assert!(s.sleep_set()[0].has_incoming().unwrap());
    poll(&mut s);
    for ep in s.sleep_set() {
        assert!(
            !ep.has_incoming().unwrap(),
            "a forged reply is still queued"
        );
    }
    // The server still serves that peer; when it leaves, its forgeries are counted.
    p[0].peer.send_request(OP_ECHO, [1; 5], b"").unwrap();
    p[0].peer.send_oneway(OP_STOP, [0; 5]).unwrap();
    let (_, events) = poll(&mut s);
    assert_eq!(
        events,
        ["p0 closed: done; 2 requests, 4 stale, 0 unexpected, served 1"]
    );
}

#[test]
fn a_peer_that_never_takes_its_replies_is_throttled_and_cannot_wake_the_server() {
    let (mut p, mut s) = server(2, config());
    // Four requests (max_outstanding), then the same four again: more in flight than the
    // reply queue holds.
    let ids: Vec<_> = (0..4)
        .map(|i| p[0].peer.send_request(OP_ECHO, [i; 5], b"").unwrap())
        .collect();
    for &id in &ids {
        p[0].peer.resubmit(id).unwrap();
    }
    let (_, events) = poll(&mut s);
    assert_eq!(events, ["p0 throttled"]);
    // The throttled peer is out of the sleep set; the other is in it and served.
    assert_eq!(s.sleep_set().len(), 1);
    p[1].peer.send_request(OP_ECHO, [9; 5], b"").unwrap();
    assert!(s.sleep_set()[0].has_incoming().unwrap());
    let (busy, events) = poll(&mut s);
    assert!(busy && events.is_empty(), "{events:?}");
    assert_eq!(p[1].peer.poll_reply().unwrap().unwrap().inline()[0], 9);
    let (busy, _) = poll(&mut s);
    assert!(!busy, "a throttled peer keeps the server busy");
    // Once it takes its replies, its waiting requests are served.
    for _ in 0..4 {
        let r = p[0].peer.poll_reply().unwrap().unwrap();
        p[0].peer.free(r).unwrap();
    }
    assert_eq!(p[0].peer.poll_reply(), Ok(None));
    let (busy, events) = poll(&mut s);
    assert!(busy);
    assert_eq!(events, ["p0 resumed"]);
    assert_eq!(s.sleep_set().len(), 2);
}

#[test]
fn a_flooding_peer_gets_one_budget_per_pass() {
    let (mut p, mut s) = server(1, PairConfig::new(64, 64, 64));
    for i in 0..64 {
        p[0].peer.send_request(OP_ECHO, [i; 5], b"").unwrap();
    }
    poll(&mut s);
    let mut got = 0;
    while let Some(r) = p[0].peer.poll_reply().unwrap() {
        p[0].peer.free(r).unwrap();
        got += 1;
    }
    assert_eq!(got, BUDGET);
}

#[test]
fn a_corrupt_channel_is_dropped_and_reported_and_the_others_are_served() {
    let (mut p, mut s) = server(2, config());
    // The peer sends a request, then sets a flag the protocol does not know in its slot.
    p[0].peer.send_request(OP_ECHO, [1; 5], b"").unwrap();
    let ring = p[0].layout.side(Side::B).requests;
    let region = p[0].mem.region();
    let word1 = region.u64_at(ring.slots + 8).unwrap();
    word1.fetch_or(0x80 << 16, Ordering::Relaxed);
    p[1].peer.send_request(OP_ECHO, [2; 5], b"").unwrap();
    let (_, events) = poll(&mut s);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].starts_with("p0 closed: broken: Corrupt(BadMessage); 0 requests"),
        "{events:?}"
    );
    assert_eq!(
        s.peers().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["p1"]
    );
    assert_eq!(p[1].peer.poll_reply().unwrap().unwrap().inline()[0], 2);
}

/// A handler with a "device": `work` items to send the peer (one-way, one a pass,
/// from `on_pass`), and `late` more that turn up when the server arms before sleeping.
/// It closes once it armed twice.
#[derive(Debug, Default)]
struct Device {
    work: u64,
    late: u64,
    arms: u64,
}

impl Handler<NoKick> for Device {
    fn on_request(&mut self, _: &mut Link<'_, NoKick>, _: Request) -> Result<(), Close> {
        Err(Close::Violation("no requests expected"))
    }

    fn on_pass(&mut self, link: &mut Link<'_, NoKick>) -> Result<bool, Close> {
        if self.work > 0 {
            link.endpoint
                .send_oneway(OP_ECHO, [self.work, 0, 0, 0, 0])?;
            self.work -= 1;
            return Ok(true);
        }
        if self.arms >= 2 {
            return Err(Close::Done);
        }
        Ok(false)
    }

    fn before_sleep(&mut self) -> bool {
        self.arms += 1;
        if self.late > 0 {
            self.work = std::mem::take(&mut self.late);
            return true;
        }
        false
    }
}

#[test]
fn work_beside_the_channel_keeps_the_server_busy_and_what_arming_finds_keeps_it_awake() {
    let (mut p, ep) = pair(config());
    let mut s = Server::new();
    let peer = Peer {
        index: 0,
        name: std::string::String::from("p0"),
        role: Role::App,
    };
    s.add(
        peer,
        ep,
        Device {
            work: 3,
            late: 2,
            arms: 0,
        },
    );
    let mut idles = 0;
    let mut arms = 0;
    s.run(
        |_| {
            idles += 1;
            Ok(())
        },
        &mut |e| {
            if let Event::Closed { handler, .. } = e {
                arms = handler.arms;
            }
        },
    );
    // Three items, the server arms and finds two more (no sleep), sends them, arms
    // again and finds none: it sleeps once, then the handler closes.
    let mut got = Vec::new();
    while let Some(r) = p.peer.poll_request().unwrap() {
        got.push(r.inline()[0]);
    }
    assert_eq!(got, [3, 2, 1, 2, 1]);
    assert_eq!((idles, arms), (1, 2));
}

#[test]
fn awake_first_moves_the_unthrottled_links_and_their_endpoints_to_the_front_in_step() {
    let mut links = [(0, true), (1, false), (2, true), (3, false)];
    let mut endpoints = [10, 11, 12, 13];
    let n = awake_first(&mut links, &mut endpoints, |l| l.1);
    assert_eq!(n, 2);
    assert_eq!(links[..n].iter().map(|l| l.0).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(endpoints[..n], [11, 13]);
    for (l, e) in links.iter().zip(&endpoints) {
        assert_eq!(l.0 + 10, *e, "links and endpoints stay in step");
    }
}

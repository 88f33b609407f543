//! Ping-pong over fast-path channels (`compart_proto::pingpong`): the traffic of the
//! channel tests and benchmarks, and the peers that misbehave against a server.
//!
//! - `role=pong` (the default): serve every channel with the library's [`Pong`] in
//!   `firmware::server` until each has sent stop or broken: replies carry the ping's
//!   sequence number and checksum and echo its payload; a wrong ping gets an error reply.
//! - `role=ping n=N phases=P window=W payload=B`: in each of P phases, complete N
//!   requests with at most W in flight (every request carries B payload bytes),
//!   checking that replies come back exactly once, in order, with the right checksum
//!   and payload; print the phase's rate; between phases wait until the VMM changes
//!   this guest's placement (a live move); then stop the peer and exit 0.
//! - `role=quiet`: open the channel and never send (an idle peer).
//! - `role=vandal`: complete one honest round trip, then overwrite the whole region
//!   with pseudo-random bytes, ring the peer, and exit 0 (the other side must report
//!   the channel broken and carry on with the others).
//! - `role=liar n=N`: send N well-formed but wrong pings (out of sequence, bad
//!   checksum, unknown opcode, in turn), check that each is refused for its reason,
//!   then stop and exit 0.
//! - `role=hog`: send pings and never take a reply: resubmit them until the server's
//!   request queue is full, then sleep for good (the server must throttle it).
//! - `role=forger n=N`: write N replies the server never asked for into its reply
//!   queue (the ring format, bypassing the endpoint), ringing it, then stop and exit 0.
//! - `poll=US` (any role): poll this long before sleeping instead of what the
//!   placement page says (`poll=0` sleeps at once: every message needs a doorbell).
//!
//! Every role but `pong` (which serves all) drives one channel: the first one to the
//! guest named by `to=NAME`, or to a guest of role `to-role=ROLE`, or channel 0.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use ::pingpong::Pong;
use alloc::collections::VecDeque;
use compart_channel::ring::Producer;
use compart_channel::{ChannelError, Notifier};
use compart_firmware::channel::{self, Channel};
use compart_firmware::cmdline::{self, Args};
use compart_firmware::pstate::rdtsc;
use compart_firmware::server::{self, Close, Event};
use compart_firmware::{abi, placement, println, ring0, BootInfo};
use compart_proto::pingpong::{self, Refusal, Reply, Request};
use core::sync::atomic::Ordering;

compart_firmware::entry!(main);

/// `key`'s value, or `default`; a value that does not parse stops the guest.
fn arg<'a, T: cmdline::FromArg<'a>>(args: &Args<'a>, key: &str, default: T) -> T {
    args.get_or(key, default)
        .unwrap_or_else(|e| panic!("pingpong: {e}"))
}

fn main(info: &'static BootInfo) -> i32 {
    let args = cmdline::args();
    let role: &str = arg(&args, "role", "pong");
    let poll = args
        .get::<u32>("poll")
        .unwrap_or_else(|e| panic!("pingpong: {e}"));
    assert!(
        channel::count() > 0,
        "{role}: the topology gives this guest no channel"
    );
    if role == "pong" {
        return pong(poll);
    }
    let opened = match (arg(&args, "to", ""), arg(&args, "to-role", "")) {
        ("", "") => channel::open(0).map(|ch| (channel::peer_of(0).expect("channel 0"), ch)),
        (name, "") => channel::open_to(name),
        (_, role) => match abi::Role::from_name(role) {
            Some(r) => channel::open_by_role(r),
            None => panic!("{role}: `to-role={role}` is no role"),
        },
    };
    let (peer, mut ch) = opened.unwrap_or_else(|e| panic!("{role}: no usable channel: {e:?}"));
    println!("{role}: {peer} open (its role: {})", peer.role.name());
    let c = Client {
        ch: &mut ch,
        index: peer.index,
        poll,
    };
    match role {
        "ping" => c.ping(info, &args),
        "vandal" => c.vandal(),
        "liar" => c.liar(arg(&args, "n", 3000)),
        "hog" => c.hog(),
        "forger" => c.forger(arg(&args, "n", 10_000)),
        "quiet" => halt_forever(),
        _ => panic!("pingpong: unknown role `{role}`"),
    }
}

fn halt_forever() -> ! {
    loop {
        ring0::halt();
    }
}

fn pong(poll: Option<u32>) -> i32 {
    let (mut srv, unusable) = server::serve_all(|peer, _| {
        println!("pong: {peer} open");
        Pong::new()
    });
    for (peer, e) in &unusable {
        println!("pong: {peer} unusable: {e:?}");
    }
    let total = srv.len() + unusable.len();
    let mut broken = unusable.len();
    let mut served = 0u64;
    server::run(&mut srv, poll, &mut |event| match event {
        Event::Closed {
            peer,
            why,
            stats,
            handler,
        } => {
            served += handler.served();
            match why {
                Close::Channel(e) => {
                    broken += 1;
                    println!("pong: {peer} broken: {e:?}; dropping it");
                }
                why => println!(
                    "pong: {peer} closed ({why}): {} served, {} refused, {} stale and {} unexpected replies",
                    handler.served(),
                    handler.refused(),
                    stats.stale_replies,
                    stats.unexpected_replies
                ),
            }
        }
        Event::Throttled { peer } => {
            println!("pong: {peer} throttled: its reply queue is full")
        }
        Event::Resumed { peer } => println!("pong: {peer} resumed"),
    });
    println!("pong: stop after {served} requests on {total} channel(s), {broken} broken");
    0
}

/// Whether a send went out: `false` when a queue or the database is full.
fn sent(r: Result<(), ChannelError>) -> bool {
    match r {
        Ok(()) => true,
        Err(ChannelError::Full | ChannelError::NoFreeRequest) => false,
        Err(e) => panic!("send failed: {e:?}"),
    }
}

/// A role that drives one channel.
struct Client<'a> {
    ch: &'a mut Channel,
    /// The channel's position in the boot info.
    index: usize,
    poll: Option<u32>,
}

impl Client<'_> {
    /// Waits for work with the `poll=` override, or as the placement page says.
    fn idle(&mut self) {
        let poll = self.poll.unwrap_or_else(|| placement::poll_us(0));
        channel::wait_for_any_polling(core::slice::from_mut(self.ch), poll, None).expect("wait");
    }

    /// Sends `req`; `false` when the queue or the database is full.
    fn send(&mut self, req: Request, payload: &[u8]) -> bool {
        let (op, inline) = req.encode();
        if req.is_oneway() {
            sent(self.ch.send_oneway(op, inline))
        } else {
            self.send_raw(op, inline, payload)
        }
    }

    /// Sends a request with any opcode and words; `false` when a queue is full.
    fn send_raw(&mut self, op: u16, inline: [u64; 5], payload: &[u8]) -> bool {
        sent(self.ch.send_request(op, inline, payload).map(|_| ()))
    }

    fn stop(&mut self) {
        while !self.send(Request::Stop, &[]) {
            self.idle();
        }
        self.ch.flush().expect("flush");
    }

    fn ping(mut self, info: &BootInfo, args: &Args<'_>) -> i32 {
        let n: u64 = arg(args, "n", 100_000);
        let phases: u64 = arg(args, "phases", 1);
        let window = arg::<u64>(args, "window", 16).max(1);
        // Up to a whole buffer (64 KiB segments for the network stack's channels).
        let payload = arg::<usize>(args, "payload", 0).min(self.ch.buffer_size());
        let mut out = alloc::vec![0u8; payload];
        let mut back = alloc::vec![0u8; payload];
        let mut next_send = 0u64;
        let mut next_reply = 0u64;
        for phase in 0..phases {
            let target = next_reply + n;
            let start = rdtsc();
            let counters0 = self.ch.counters();
            while next_reply < target {
                let mut progressed = false;
                while next_send < target && next_send - next_reply < window {
                    pingpong::fill_payload(next_send, &mut out[..payload]);
                    if !self.send(Request::Ping { seq: next_send }, &out[..payload]) {
                        break;
                    }
                    next_send += 1;
                    progressed = true;
                }
                self.ch.flush().expect("flush");
                while let Some(reply) = self.ch.poll_reply().expect("poll_reply") {
                    let got = Reply::decode(reply.status(), reply.inline());
                    assert_eq!(
                        got,
                        Ok(Reply::Pong { seq: next_reply }),
                        "ping: reply {next_reply}"
                    );
                    if payload > 0 {
                        let n = self
                            .ch
                            .read_reply_payload(&reply, &mut back[..payload])
                            .expect("payload");
                        assert!(
                            n == payload && pingpong::payload_matches(next_reply, &back[..n]),
                            "ping: payload of reply {next_reply}"
                        );
                    }
                    self.ch.free(reply).expect("free");
                    next_reply += 1;
                    progressed = true;
                }
                if !progressed {
                    self.idle();
                }
            }
            // Read the placement generation before reporting the phase: the VMM may move
            // us as soon as it sees the report, and that move must count as the change.
            let gen = placement::generation();
            let us = rdtsc().wrapping_sub(start) * 1000 / info.tsc_khz.max(1);
            let c = self.ch.counters();
            let dedicated = placement::entry(0).is_some_and(|e| e.dedicated == 1);
            println!(
                "ping: phase {phase} done: {n} round trips in {us} us, {} per second, window {window}, {} on core(s) {:?}; peer sleeps {} kicks {}",
                n * 1_000_000 / us.max(1),
                if dedicated { "dedicated" } else { "shared" },
                placement::entry(0).map(|e| e.host_cores[0]),
                c.sleeps.wrapping_sub(counters0.sleeps),
                c.kicks.wrapping_sub(counters0.kicks),
            );
            if phase + 1 < phases {
                println!("ping: waiting for a placement change");
                while placement::generation() == gen {
                    ring0::halt();
                }
            }
        }
        self.stop();
        println!("ping: {next_reply} round trips, none lost, reordered or duplicated");
        0
    }

    fn vandal(mut self) -> i32 {
        // Be a normal peer first, so that the other side is attached and serving.
        assert!(self.send(Request::Ping { seq: 0 }, &[]));
        loop {
            if let Some(r) = self.ch.poll_reply().expect("poll") {
                self.ch.free(r).expect("free");
                break;
            }
            self.idle();
        }
        let region = channel::raw_region(self.index).expect("the channel's region");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for off in (0..region.len()).step_by(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if let Some(w) = region.u64_at(off) {
                w.store(x, Ordering::Relaxed);
            }
        }
        self.ch.notifier().kick();
        println!(
            "vandal: scribbled over {} bytes of the channel to {}",
            region.len(),
            channel::peer(self.index)
        );
        0
    }

    fn liar(mut self, n: u64) -> i32 {
        // In turn: a sequence number from far ahead, a bad checksum, an unknown opcode.
        let wrong = |i: u64| -> (u16, [u64; 5], Refusal) {
            let (op, mut inline) = Request::Ping { seq: u64::MAX - i }.encode();
            match i % 3 {
                0 => (op, inline, Refusal::BadSequence),
                1 => {
                    inline[1] ^= 1 << (i % 64);
                    (op, inline, Refusal::BadChecksum)
                }
                _ => (0x7f00 | (i % 256) as u16, inline, Refusal::UnknownOpcode),
            }
        };
        let mut expect: VecDeque<Refusal> = VecDeque::new();
        let (mut sent, mut refused) = (0u64, 0u64);
        while refused < n {
            let mut progressed = false;
            while sent < n {
                let (op, inline, why) = wrong(sent);
                if !self.send_raw(op, inline, &[]) {
                    break;
                }
                expect.push_back(why);
                sent += 1;
                progressed = true;
            }
            self.ch.flush().expect("flush");
            while let Some(r) = self.ch.poll_reply().expect("poll_reply") {
                let want = expect.pop_front().expect("a reply to a request sent");
                assert_eq!(
                    Reply::decode(r.status(), r.inline()),
                    Ok(Reply::Refused(want)),
                    "liar: reply {refused}"
                );
                self.ch.free(r).expect("free");
                refused += 1;
                progressed = true;
            }
            if !progressed {
                self.idle();
            }
        }
        self.stop();
        println!("liar: {n} wrong requests, each refused for its reason");
        0
    }

    fn hog(mut self) -> i32 {
        let mut sent = 0u64;
        while self.send(Request::Ping { seq: sent }, &[]) {
            sent += 1;
        }
        // Every request is outstanding and none is taken back: send them again, as many
        // as the server's request queue holds. The server can answer only the first
        // round (the replies fill this side's reply queue); the rest must wait in its
        // queue, not be lost and not keep it busy.
        let ids: alloc::vec::Vec<_> = self.ch.outstanding().collect();
        let again = u64::from(self.ch.layout().config().queue_depth);
        let mut resent = 0u64;
        for &id in ids.iter().cycle() {
            if resent == again {
                break;
            }
            loop {
                match self.ch.resubmit(id) {
                    Ok(()) => break,
                    // The server has not taken the first round yet.
                    Err(ChannelError::Full) => core::hint::spin_loop(),
                    Err(e) => panic!("hog: resubmit failed: {e:?}"),
                }
            }
            resent += 1;
        }
        self.ch.flush().expect("flush");
        println!("hog: {sent} requests sent and {resent} again; never taking a reply");
        halt_forever()
    }

    fn forger(mut self, n: u64) -> i32 {
        // The server's reply queue is written by this side: take over its producing end
        // (this side's endpoint never replies, so nothing else writes it) and fill it
        // with replies to requests the server never sent.
        let layout = *self.ch.layout();
        let max = u64::from(layout.config().max_outstanding);
        let ring = layout.side(self.ch.side().peer()).replies;
        let region = channel::raw_region(self.index).expect("the channel's region");
        let mut forged = Producer::attach(&region, ring).expect("reply ring");
        let mut i = 0u64;
        while i < n {
            // A well-formed id (an index of the server's database, a generation that is
            // not 0) that names no request the server sent.
            let id = (i % max) | (1 + i / max % 0xffff) << 32;
            let (status, inline) = Reply::Pong { seq: i }.encode();
            let words = [
                id,
                u64::from(pingpong::OP_PING) | u64::from(status) << 32,
                0,
                inline[0],
                inline[1],
                inline[2],
                inline[3],
                inline[4],
            ];
            if forged.push(&words).expect("push") {
                i += 1;
            } else {
                // Full: ring the server (it may sleep) and let it drain.
                self.ch.notifier().kick();
                core::hint::spin_loop();
            }
        }
        self.ch.notifier().kick();
        self.stop();
        println!("forger: {n} forged replies");
        0
    }
}

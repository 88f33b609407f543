//! Ping-pong over a fast-path channel: the traffic of the channel tests and benchmarks.
//!
//! - `role=pong`: serve requests on every channel until each has sent a stop message:
//!   each reply carries the request's sequence number and a checksum of it, and echoes
//!   its payload. One receive loop polls all channels and sleeps when all are idle.
//! - `role=ping n=N phases=P window=W payload=B`: in each of P phases, complete N
//!   requests with at most W in flight (every request carries B payload bytes),
//!   checking that replies come back exactly once, in order, with the right checksum
//!   and payload; print the phase's rate; between phases wait until the VMM changes
//!   this guest's placement (a live move); then stop the peer and exit 0.
//! - `role=quiet`: open the channel and never send (an idle peer).
//! - `poll=US` (either role): poll this long before sleeping instead of what the
//!   placement page says (`poll=0` sleeps at once: every message needs a doorbell).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use compart_channel::INLINE_WORDS;
use compart_firmware::channel::{self, Channel};
use compart_firmware::pstate::rdtsc;
use compart_firmware::{placement, println, ring0, BootInfo};

compart_firmware::entry!(main);

const OP_PING: u16 = 1;
const OP_STOP: u16 = 2;

fn checksum(seq: u64) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5bd1_e995
}

fn arg(info: &BootInfo, key: &str, default: u64) -> u64 {
    info.cmdline()
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main(info: &'static BootInfo) -> i32 {
    let role = info
        .cmdline()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("role="))
        .unwrap_or("pong");
    let mut chans: Vec<Channel> = (0..channel::count())
        .map(|i| match channel::open(i) {
            Ok(c) => {
                println!("{role}: channel {i} to {} open", channel::peer(i));
                c
            }
            Err(e) => panic!("cannot open channel {i}: {e:?}"),
        })
        .collect();
    assert!(!chans.is_empty(), "{role}: the topology gives this guest no channel");
    match role {
        "ping" => ping(info, &mut chans[0]),
        "pong" => pong(info, &mut chans),
        _ => loop {
            ring0::halt();
        },
    }
}

/// Waits for work on `chans` with the `poll=` override, or as the placement page says.
fn idle(info: &BootInfo, chans: &mut [Channel]) -> Result<(), compart_channel::ChannelError> {
    let poll = match arg(info, "poll", u64::MAX) {
        u64::MAX => placement::poll_us(0),
        us => us as u32,
    };
    channel::wait_for_any(chans, poll)
}

fn pong(info: &BootInfo, chans: &mut [Channel]) -> i32 {
    let mut expected: Vec<u64> = chans.iter().map(|_| 0).collect();
    let mut stopped: Vec<bool> = chans.iter().map(|_| false).collect();
    let mut served = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        let mut busy = false;
        for (i, ch) in chans.iter_mut().enumerate() {
            while let Some(req) = ch
                .poll_request()
                .unwrap_or_else(|e| panic!("pong: channel {i} broken: {e:?}"))
            {
                busy = true;
                if req.opcode() == OP_STOP {
                    stopped[i] = true;
                    continue;
                }
                let seq = req.inline()[0];
                assert_eq!(seq, expected[i], "pong: channel {i}: request {seq} arrived, expected {}", expected[i]);
                assert_eq!(req.inline()[1], checksum(seq), "pong: channel {i}: bad checksum on request {seq}");
                expected[i] += 1;
                let n = req.payload_len().min(buf.len());
                if n > 0 {
                    ch.read_request_payload(&req, &mut buf[..n]).expect("payload in bounds");
                }
                let mut inline = [0u64; INLINE_WORDS];
                inline[0] = seq;
                inline[1] = checksum(seq) ^ 1;
                ch.reply(req, 0, inline, &buf[..n]).expect("reply");
                served += 1;
            }
        }
        if stopped.iter().all(|&s| s) {
            println!("pong: stop after {served} requests on {} channel(s)", chans.len());
            return 0;
        }
        if !busy {
            idle(info, chans).unwrap_or_else(|e| panic!("pong: channel broken while waiting: {e:?}"));
        }
    }
}

fn ping(info: &BootInfo, ch: &mut Channel) -> i32 {
    let n = arg(info, "n", 100_000);
    let phases = arg(info, "phases", 1);
    let window = arg(info, "window", 16).max(1);
    let payload = arg(info, "payload", 0) as usize;
    let mut next_send = 0u64;
    let mut next_reply = 0u64;
    let mut out = [0u8; 4096];
    let mut back = [0u8; 4096];
    let payload = payload.min(ch.buffer_size()).min(out.len());
    for phase in 0..phases {
        let target = next_reply + n;
        let start = rdtsc();
        let counters0 = ch.counters();
        while next_reply < target {
            let mut progressed = false;
            while next_send < target && next_send - next_reply < window {
                let mut inline = [0u64; INLINE_WORDS];
                inline[0] = next_send;
                inline[1] = checksum(next_send);
                for (i, b) in out[..payload].iter_mut().enumerate() {
                    *b = (next_send as u8).wrapping_add(i as u8);
                }
                match ch.send_request(OP_PING, inline, &out[..payload]) {
                    Ok(_) => {
                        next_send += 1;
                        progressed = true;
                    }
                    Err(compart_channel::ChannelError::Full)
                    | Err(compart_channel::ChannelError::NoFreeRequest) => break,
                    Err(e) => panic!("ping: send failed: {e:?}"),
                }
            }
            ch.flush().expect("flush");
            while let Some(reply) = ch.poll_reply().expect("poll_reply") {
                let seq = reply.inline()[0];
                assert_eq!(seq, next_reply, "ping: reply {seq} arrived, expected {next_reply}");
                assert_eq!(reply.inline()[1], checksum(seq) ^ 1, "ping: bad checksum on reply {seq}");
                if payload > 0 {
                    let got = ch.read_reply_payload(&reply, &mut back[..payload]).expect("payload");
                    assert_eq!(&back[..got], &out_for(seq, payload)[..got], "ping: payload of reply {seq}");
                }
                ch.free(reply).expect("free");
                next_reply += 1;
                progressed = true;
            }
            if !progressed {
                idle(info, core::slice::from_mut(ch)).expect("wait");
            }
        }
        // Read the placement generation before reporting the phase: the VMM may move
        // us as soon as it sees the report, and that move must count as the change.
        let gen = placement::generation();
        let us = rdtsc().wrapping_sub(start) * 1000 / info.tsc_khz.max(1);
        let c = ch.counters();
        println!(
            "ping: phase {phase} done: {n} round trips in {us} us, {} per second, window {window}, {} on core(s) {:?}; peer sleeps {} kicks {}",
            n * 1_000_000 / us.max(1),
            if placement::entry(0).is_some_and(|e| e.dedicated == 1) { "dedicated" } else { "shared" },
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
    ch.send_oneway(OP_STOP, [0; INLINE_WORDS]).expect("stop");
    ch.flush().expect("flush");
    println!("ping: {} round trips, none lost, reordered or duplicated", next_reply);
    0
}

fn out_for(seq: u64, len: usize) -> [u8; 4096] {
    let mut b = [0u8; 4096];
    for (i, x) in b[..len].iter_mut().enumerate() {
        *x = (seq as u8).wrapping_add(i as u8);
    }
    b
}

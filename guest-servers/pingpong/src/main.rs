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
//! - `role=vandal`: complete one honest round trip on channel 0, then overwrite the
//!   whole region with pseudo-random bytes, ring the peer, and exit 0 (a hostile peer:
//!   the other side must report the channel broken and carry on with the others).
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
    // A channel that cannot be opened (its peer wrecked it already) counts as broken.
    let total = channel::count();
    let mut chans: Vec<(usize, Channel)> = Vec::new();
    for i in 0..total {
        match channel::open(i) {
            Ok(c) => {
                println!("{role}: channel {i} to {} open", channel::peer(i));
                chans.push((i, c));
            }
            Err(e) => println!("{role}: channel {i} to {} unusable: {e:?}", channel::peer(i)),
        }
    }
    assert!(total > 0, "{role}: the topology gives this guest no channel");
    match role {
        "ping" => match chans.first_mut() {
            Some((0, ch)) => ping(info, ch),
            _ => panic!("ping: channel 0 is unusable"),
        },
        "pong" => pong(info, chans, total),
        "vandal" => match chans.first_mut() {
            Some((0, ch)) => vandal(info, ch),
            _ => panic!("vandal: channel 0 is unusable"),
        },
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
    channel::wait_for_any_polling(chans, poll, None).map(drop)
}

fn vandal(info: &BootInfo, ch: &mut Channel) -> i32 {
    // Be a normal peer first, so that the other side is attached and serving.
    ch.send_request(OP_PING, [0, checksum(0), 0, 0, 0], &[]).expect("send");
    loop {
        if let Some(r) = ch.poll_reply().expect("poll") {
            ch.free(r).expect("free");
            break;
        }
        idle(info, core::slice::from_mut(ch)).expect("wait");
    }
    let c = &info.channels()[0];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for off in (0..c.region_size).step_by(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // SAFETY: deliberately scribbles over this guest's own mapping of the shared
        // region (in bounds: off < region_size); the peer must survive it.
        unsafe { core::ptr::write_volatile((c.region_gpa + off) as *mut u64, x) };
    }
    // SAFETY: the doorbell page of channel 0, registered for this guest.
    unsafe { core::ptr::write_volatile(c.doorbell_gpa as *mut u32, 1) };
    println!("vandal: scribbled over {} bytes of the channel to {}", c.region_size, c.peer());
    0
}

fn pong(info: &BootInfo, opened: Vec<(usize, Channel)>, total: usize) -> i32 {
    // Channels still in service, with their boot-info index and next sequence number.
    // One leaves when its peer sends stop, or when it breaks (a hostile or buggy peer):
    // that is reported, and the others are still served.
    let mut broken = total - opened.len();
    let (mut ids, mut chans): (Vec<usize>, Vec<Channel>) = opened.into_iter().unzip();
    let mut expected: Vec<u64> = alloc::vec![0; chans.len()];
    let mut served = 0u64;
    let mut buf = [0u8; 4096];
    while !chans.is_empty() {
        let mut busy = false;
        let mut k = 0;
        while k < chans.len() {
            let (i, ch) = (ids[k], &mut chans[k]);
            let mut done = false;
            loop {
                let req = match ch.poll_request() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        println!("pong: channel {i} to {} broken: {e:?}; dropping it", channel::peer(i));
                        broken += 1;
                        done = true;
                        break;
                    }
                };
                busy = true;
                if req.opcode() == OP_STOP {
                    done = true;
                    break;
                }
                let seq = req.inline()[0];
                assert_eq!(seq, expected[k], "pong: channel {i}: request {seq} arrived, expected {}", expected[k]);
                assert_eq!(req.inline()[1], checksum(seq), "pong: channel {i}: bad checksum on request {seq}");
                expected[k] += 1;
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
            if done {
                let _ = chans[k].flush();
                chans.swap_remove(k);
                ids.swap_remove(k);
                expected.swap_remove(k);
            } else {
                k += 1;
            }
        }
        if !busy && !chans.is_empty() {
            if let Err(e) = idle(info, &mut chans) {
                // The next poll finds which channel broke, and drops it.
                println!("pong: a channel broke while waiting: {e:?}");
            }
        }
    }
    println!("pong: stop after {served} requests on {total} channel(s), {broken} broken");
    0
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

//! What the benchmarks that compare guests with host threads share: the host side of
//! the ping-pong (the same requests, checks and stop message as the `pingpong` image)
//! and two host threads running it over one memfd region.

use std::time::{Duration, Instant};

use compart_channel::host::{pin_current_thread, EventFd, SharedMemory};
use compart_channel::{
    initialize, ChannelError, Endpoint, Notifier, PairConfig, PairLayout, Side, Waiter,
    INLINE_WORDS,
};

const OP_PING: u16 = 1;
const OP_STOP: u16 = 2;
/// No measurement may take longer than this.
const DEADLINE: Duration = Duration::from_secs(120);

/// The pingpong image's request checksum (its pong checks it).
fn checksum(seq: u64) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5bd1_e995
}

/// Drives side A: `n` round trips with at most `window` in flight; returns round trips
/// per second.
pub fn ping<N: Notifier, W: Waiter>(
    ep: &mut Endpoint<N>,
    waiter: &W,
    spins: u32,
    n: u64,
    window: u64,
) -> f64 {
    let (mut sent, mut done) = (0u64, 0u64);
    let start = Instant::now();
    while done < n {
        assert!(
            start.elapsed() < DEADLINE,
            "ping: {done} of {n} round trips after {DEADLINE:?}"
        );
        let mut progressed = false;
        while sent < n && sent - done < window {
            match ep.send_request(OP_PING, [sent, checksum(sent), 0, 0, 0], &[]) {
                Ok(_) => {
                    sent += 1;
                    progressed = true;
                }
                Err(ChannelError::Full | ChannelError::NoFreeRequest) => break,
                Err(e) => panic!("send: {e:?}"),
            }
        }
        ep.flush().unwrap();
        while let Some(r) = ep.poll_reply().unwrap() {
            assert_eq!(r.inline()[0], done);
            assert_eq!(r.inline()[1], checksum(done) ^ 1);
            ep.free(r).unwrap();
            done += 1;
            progressed = true;
        }
        if !progressed {
            ep.wait_for_work(waiter, spins).unwrap();
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    ep.send_oneway(OP_STOP, [0; INLINE_WORDS]).unwrap();
    ep.flush().unwrap();
    rate
}

fn pong<N: Notifier, W: Waiter>(ep: &mut Endpoint<N>, waiter: &W, spins: u32) {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "pong: no stop after {DEADLINE:?}"
        );
        match ep.poll_request().unwrap() {
            Some(r) if r.opcode() == OP_STOP => return,
            Some(r) => {
                let mut inline = *r.inline();
                inline[1] ^= 1;
                ep.reply(r, 0, inline, &[]).unwrap();
            }
            None => {
                ep.wait_for_work(waiter, spins).unwrap();
            }
        }
    }
}

/// Two host threads over one memfd region, pinned to `cores`, waking through eventfds.
pub fn host_threads(cores: [usize; 2], spins: u32, n: u64, window: u64) -> f64 {
    let config = PairConfig::new(64, 64, 256);
    let size = PairLayout::new(&config).unwrap().size();
    let mem = SharedMemory::create("bench", size).unwrap();
    initialize(&mem.region(), &config).unwrap();
    let timeout = Some(Duration::from_millis(100));
    let (wake_a, wake_b) = (
        EventFd::new(timeout).unwrap(),
        EventFd::new(timeout).unwrap(),
    );
    let region = mem.region();
    std::thread::scope(|s| {
        let (wa, wb) = (&wake_a, &wake_b);
        s.spawn(move || {
            pin_current_thread(cores[1]).unwrap();
            let mut b = Endpoint::attach(region, Side::B, wa).unwrap();
            pong(&mut b, wb, spins);
        });
        pin_current_thread(cores[0]).unwrap();
        let mut a = Endpoint::attach(region, Side::A, wb).unwrap();
        ping(&mut a, wa, spins, n, window)
    })
}

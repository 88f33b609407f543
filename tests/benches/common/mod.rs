//! What the benchmarks that compare guests with host threads share: the host side of
//! the ping-pong (the `pingpong` image's protocol, `compart_proto::pingpong`, with the
//! same checks) and two host threads running it over one memfd region.

use std::time::{Duration, Instant};

use compart_channel::host::{pin_current_thread, EventFd, SharedMemory};
use compart_channel::{
    initialize, ChannelError, Endpoint, Notifier, PairConfig, PairLayout, Side, Waiter,
};
use compart_proto::pingpong;

/// No measurement may take longer than this.
const DEADLINE: Duration = Duration::from_secs(120);

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
            let (op, inline) = pingpong::Request::Ping { seq: sent }.encode();
            match ep.send_request(op, inline, &[]) {
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
            assert_eq!(
                pingpong::Reply::decode(r.status(), r.inline()),
                Ok(pingpong::Reply::Pong { seq: done })
            );
            ep.free(r).unwrap();
            done += 1;
            progressed = true;
        }
        if !progressed {
            ep.wait_for_work(waiter, spins).unwrap();
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let (op, inline) = pingpong::Request::Stop.encode();
    ep.send_oneway(op, inline).unwrap();
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
            Some(r) => match pingpong::Request::decode(r.opcode(), r.is_oneway(), r.inline()) {
                Ok(pingpong::Request::Stop) => return,
                Ok(pingpong::Request::Ping { seq }) => {
                    let (status, inline) = pingpong::Reply::Pong { seq }.encode();
                    ep.reply(r, status, inline, &[]).unwrap();
                }
                Err(e) => panic!("pong: {e}"),
            },
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

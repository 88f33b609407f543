//! Two processes share a memfd region and exchange 10^7 messages, with sequence and checksum
//! checks on every message, sleeping and waking through eventfds.
//!
//! The parent (side A) re-executes this test binary to run `child_serves_the_parent` (side
//! B), passing the memfd and the two eventfds by inheritance and their numbers in an
//! environment variable.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{CountingKick, Deadline};
use compart_channel::host::{EventFd, SharedMemory};
use compart_channel::{counters, initialize, ChannelError, Endpoint, PairConfig, PairLayout, Side};

const MESSAGES: u64 = 10_000_000;
/// Every `REQUEST_EVERY`-th message is a request with a payload (answered); the others are
/// one-way messages.
const REQUEST_EVERY: u64 = 16;
const PAYLOAD: usize = 96;
const CONFIG: PairConfig = PairConfig::new(256, 64, 128);
const ENV: &str = "COMPART_CHANNEL_CHILD";
const LIMIT: Duration = Duration::from_secs(55);

fn mix(seq: u64) -> [u64; 4] {
    let a = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    [seq, a, !seq, a.rotate_left(17) ^ seq]
}

fn checksum(w: &[u64]) -> u64 {
    w.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ x).wrapping_mul(0x100_0000_01b3)
    })
}

fn inline(seq: u64) -> [u64; 5] {
    let m = mix(seq);
    [m[0], m[1], m[2], m[3], checksum(&m)]
}

fn payload(seq: u64) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    for (i, b) in p.iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    p
}

fn bytes_sum(b: &[u8]) -> u64 {
    b.iter()
        .enumerate()
        .map(|(i, &x)| (i as u64 + 1) * u64::from(x))
        .sum()
}

#[test]
fn two_processes_exchange_ten_million_messages() {
    let layout = PairLayout::new(&CONFIG).unwrap();
    let mem = SharedMemory::create("compart-mp", layout.size()).unwrap();
    let region = mem.region();
    initialize(&region, &CONFIG).unwrap();
    let wake_a = EventFd::new(Some(Duration::from_millis(20))).unwrap();
    let wake_b = EventFd::new(Some(Duration::from_millis(20))).unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_serves_the_parent", "--nocapture"])
        .env(
            ENV,
            format!("{},{},{},{}", mem.fd(), mem.len(), wake_a.fd(), wake_b.fd()),
        )
        .spawn()
        .unwrap();

    let start = Instant::now();
    let deadline = Deadline::after(LIMIT);
    let mut a = Endpoint::attach(region, Side::A, CountingKick::new(&wake_b)).unwrap();
    let mut replies = 0u64;
    let mut check_reply = |a: &mut Endpoint<_>, rep: compart_channel::Reply| {
        let seq = rep.inline()[0];
        assert_eq!(rep.status(), 0);
        assert_eq!(rep.inline()[1], bytes_sum(&payload(seq)), "reply checksum");
        let mut got = [0u8; 8];
        assert_eq!(a.read_reply_payload(&rep, &mut got).unwrap(), 8);
        assert_eq!(u64::from_le_bytes(got), !seq);
        a.free(rep).unwrap();
        replies += 1;
    };
    let mut seq = 0u64;
    while seq < MESSAGES {
        let r = if seq % REQUEST_EVERY == 0 {
            a.send_request(2, inline(seq), &payload(seq)).map(|_| ())
        } else {
            a.send_oneway(1, inline(seq))
        };
        match r {
            Ok(()) => seq += 1,
            Err(ChannelError::Full | ChannelError::NoFreeRequest) => {
                deadline.check("parent sending");
                match a.poll_reply().unwrap() {
                    Some(rep) => check_reply(&mut a, rep),
                    None => {
                        a.wait_for_work(&wake_a, 200).unwrap();
                    }
                }
                continue;
            }
            Err(e) => panic!("send {seq}: {e}"),
        }
        while let Some(rep) = a.poll_reply().unwrap() {
            check_reply(&mut a, rep);
        }
        // Pause now and then, so that the child runs dry, sleeps, and must be kicked.
        if seq % (1 << 20) == 0 {
            a.flush().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    while a.outstanding_count() > 0 {
        deadline.check("parent waiting for replies");
        match a.poll_reply().unwrap() {
            Some(rep) => check_reply(&mut a, rep),
            None => {
                a.wait_for_work(&wake_a, 200).unwrap();
            }
        }
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > start + LIMIT {
            let _ = child.kill();
            panic!("child did not finish");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(status.success(), "child failed: {status}");
    let elapsed = start.elapsed();
    let b = counters(&region, &layout, Side::B);
    let a_counters = counters(&region, &layout, Side::A);
    eprintln!(
        "{MESSAGES} messages in {elapsed:?} ({:.1} M msgs/s); child slept {} times, kicked {} times; parent slept {} times",
        MESSAGES as f64 / elapsed.as_secs_f64() / 1e6,
        b.sleeps,
        b.kicks,
        a_counters.sleeps
    );
    assert_eq!(replies, MESSAGES.div_ceil(REQUEST_EVERY));
    assert_eq!(b.kicks, a.notifier().count());
    assert!(
        b.sleeps > 0 && b.kicks > 0,
        "the child never slept and woke"
    );
}

/// The child process's side, run by the test above with the environment it sets; run
/// without it (as part of the normal test run) it has nothing to do.
#[test]
fn child_serves_the_parent() {
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    let f: Vec<i32> = spec.split(',').map(|x| x.parse().unwrap()).collect();
    // SAFETY: the parent passed these inherited descriptors for us alone.
    let (memfd, wake_a, wake_b) = unsafe {
        (
            OwnedFd::from_raw_fd(f[0]),
            OwnedFd::from_raw_fd(f[2]),
            OwnedFd::from_raw_fd(f[3]),
        )
    };
    let mem = SharedMemory::from_fd(memfd, f[1] as usize).unwrap();
    let wake_a = EventFd::from_fd(wake_a, None);
    let wake_b = EventFd::from_fd(wake_b, Some(Duration::from_millis(20)));
    let mut b = Endpoint::attach(mem.region(), Side::B, &wake_a).unwrap();
    let deadline = Deadline::after(LIMIT);
    let mut expected = 0u64;
    let mut buf = [0u8; PAYLOAD];
    while expected < MESSAGES {
        match b.poll_request().unwrap() {
            Some(r) => {
                let w = r.inline();
                assert_eq!(w[0], expected, "sequence");
                assert_eq!(*w, inline(expected), "checksum of message {expected}");
                if r.is_oneway() {
                    assert_ne!(expected % REQUEST_EVERY, 0);
                } else {
                    assert_eq!(expected % REQUEST_EVERY, 0);
                    assert_eq!(b.read_request_payload(&r, &mut buf).unwrap(), PAYLOAD);
                    assert_eq!(buf, payload(expected), "payload of {expected}");
                    let sum = bytes_sum(&buf);
                    b.reply(r, 0, [expected, sum, 0, 0, 0], &(!expected).to_le_bytes())
                        .unwrap();
                }
                expected += 1;
            }
            None => {
                deadline.check("child");
                b.wait_for_work(&wake_b, 2000).unwrap();
            }
        }
    }
    b.flush().unwrap();
}

//! A hostile peer: arbitrary bytes written over the shared region, between and during the
//! victim's operations. The victim must never panic, never access memory outside the region
//! (the region sits between inaccessible guard pages, so such an access would crash the
//! test), and once it reports a corruption it must stay broken.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compart_channel::host::SharedMemory;
use compart_channel::{
    initialize, ChannelError, Endpoint, NoKick, PairConfig, Region, Reply, Request, Side, SpinWait,
};
use proptest::prelude::*;

const CONFIG: PairConfig = PairConfig::new(8, 4, 128);

fn guarded() -> SharedMemory {
    let size = compart_channel::PairLayout::new(&CONFIG).unwrap().size();
    let mem = SharedMemory::create_guarded("hostile", size, 1 << 16).unwrap();
    initialize(&mem.region(), &CONFIG).unwrap();
    mem
}

#[derive(Clone, Debug)]
enum Step {
    /// The peer (an honest endpoint) sends a request or a one-way message.
    PeerRequest(u8),
    PeerOneway,
    /// The peer serves one request from the victim.
    PeerServe,
    /// The hostile peer writes `bytes` at `offset` (modulo the region length).
    Scribble(usize, Vec<u8>),
    /// The victim acts.
    Victim(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => any::<u8>().prop_map(Step::PeerRequest),
        1 => Just(Step::PeerOneway),
        2 => Just(Step::PeerServe),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(o, b)| Step::Scribble(o, b)),
        6 => any::<u8>().prop_map(Step::Victim),
    ]
}

/// Everything the victim can do, chosen by `which`; returns the result of the operation.
struct Victim {
    ep: Endpoint<NoKick>,
    held_requests: Vec<Request>,
    held_replies: Vec<Reply>,
}

impl Victim {
    fn act(&mut self, which: u8) -> Result<(), ChannelError> {
        let mut buf = [0u8; 256];
        match which % 15 {
            0 => {
                if let Some(r) = self.ep.poll_request()? {
                    self.ep.read_request_payload(&r, &mut buf)?;
                    self.held_requests.push(r);
                }
            }
            1 => {
                if let Some(r) = self.ep.poll_reply()? {
                    self.ep.read_reply_payload(&r, &mut buf)?;
                    self.held_replies.push(r);
                }
            }
            2 => match self
                .ep
                .send_request(7, [1; 5], &buf[..usize::from(which) % 129])
            {
                Err(ChannelError::Full | ChannelError::NoFreeRequest) => {}
                r => {
                    r?;
                }
            },
            3 => match self.ep.send_oneway(8, [2; 5]) {
                Err(ChannelError::Full) => {}
                r => r?,
            },
            4 => {
                if let Some(r) = self.held_requests.pop() {
                    if r.is_oneway() {
                        return Ok(());
                    }
                    match self
                        .ep
                        .reply(r, 1, [3; 5], &buf[..usize::from(which) % 100])
                    {
                        Err(ChannelError::Full) => {}
                        r => r?,
                    }
                }
            }
            5 => {
                if let Some(r) = self.held_replies.pop() {
                    self.ep.free(r)?;
                }
            }
            6 => self.ep.flush()?,
            7 => {
                self.ep.wait_for_work(&SpinWait, u32::from(which % 4))?;
            }
            8 => {
                let ids: Vec<_> = self.ep.outstanding().take(8).collect();
                if let Some(id) = ids.first() {
                    match self.ep.resubmit(*id) {
                        Err(ChannelError::Full | ChannelError::InvalidHandle) => {}
                        r => r?,
                    }
                }
            }
            9 => {
                let first = self.ep.outstanding().next();
                if let Some(id) = first {
                    match self.ep.abandon(id) {
                        Err(ChannelError::InvalidHandle) => {}
                        r => r?,
                    }
                }
            }
            10 => {
                let _ = (
                    self.ep.occupancy(),
                    self.ep.counters(),
                    self.ep.has_incoming()?,
                );
            }
            11 => {
                self.ep.discard_requests()?;
            }
            12 => match self.ep.send_request_with(9, [5; 5], 128, |buf| {
                buf.write(0, &[which; 64])?;
                buf.fill(64, usize::from(which % 64), 1)?;
                Ok(usize::from(which) % 140)
            }) {
                Err(ChannelError::Full | ChannelError::NoFreeRequest) => {}
                // A length over the 128 bytes asked for.
                Err(ChannelError::PayloadTooLarge) if which % 140 > 128 => {}
                r => {
                    r?;
                }
            },
            13 => {
                if let Some(r) = self.held_requests.pop() {
                    if r.is_oneway() {
                        return Ok(());
                    }
                    let n = usize::from(which) % 128;
                    match self.ep.reply_with(r, 2, [6; 5], 128, |buf| {
                        let mut head = [0u8; 16];
                        buf.read(0, &mut head)?;
                        buf.write(0, &[which; 128][..n])?;
                        Ok(n)
                    }) {
                        Err(ChannelError::Full) => {}
                        r => r?,
                    }
                }
            }
            _ => {
                // Pass a held request's payload on to the peer as a new request.
                if let Some(r) = self.held_requests.last() {
                    let p = self.ep.request_payload(r)?;
                    match self.ep.forward(10, *r.inline(), &p) {
                        Err(ChannelError::Full | ChannelError::NoFreeRequest) => {}
                        r => {
                            r?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Run `steps` against a victim on side A with an honest peer on side B (whose own errors,
/// caused by the scribbles, are ignored: it is the hostile one).
fn run(region: Region, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut victim = Victim {
        ep: Endpoint::attach(region, Side::A, NoKick).unwrap(),
        held_requests: Vec::new(),
        held_replies: Vec::new(),
    };
    let mut peer = Endpoint::attach(region, Side::B, NoKick).ok();
    let mut broken = false;
    for s in steps {
        match s {
            Step::PeerRequest(n) => {
                if let Some(p) = peer.as_mut() {
                    let _ = p.send_request(1, [9; 5], &[*n; 100][..usize::from(*n) % 100]);
                    let _ = p.flush();
                }
            }
            Step::PeerOneway => {
                if let Some(p) = peer.as_mut() {
                    let _ = p.send_oneway(2, [9; 5]);
                    let _ = p.flush();
                }
            }
            Step::PeerServe => {
                if let Some(p) = peer.as_mut() {
                    if let Ok(Some(r)) = p.poll_request() {
                        if !r.is_oneway() {
                            let _ = p.reply(r, 0, [4; 5], b"reply");
                        }
                    }
                    let _ = p.poll_reply().map(|r| r.map(|r| p.free(r)));
                    let _ = p.flush();
                }
            }
            Step::Scribble(off, bytes) => {
                let off = off % region.len();
                let n = bytes.len().min(region.len() - off);
                region.write_bytes(off, &bytes[..n]).unwrap();
            }
            Step::Victim(w) => {
                let r = victim.act(*w);
                if broken {
                    prop_assert!(
                        matches!(r, Err(ChannelError::Broken(_)) | Ok(())),
                        "a broken endpoint touched the region: {r:?}"
                    );
                    // Only operations that need no region access may succeed once broken.
                }
                if let Err(ChannelError::Corrupt(c)) = r {
                    prop_assert_eq!(victim.ep.broken(), Some(c));
                    broken = true;
                }
                if let Err(ChannelError::Broken(_)) = r {
                    prop_assert!(broken);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Scribbles between operations: the victim reports errors, never panics or strays.
    #[test]
    fn scribbles_between_operations_never_hurt_the_victim(steps in prop::collection::vec(step(), 1..120)) {
        let mem = guarded();
        run(mem.region(), &steps)?;
    }

    /// A header of arbitrary bytes is refused at attach, or describes a layout that fits.
    #[test]
    fn attach_to_arbitrary_header_never_panics(header in prop::collection::vec(any::<u8>(), 256), keep_magic in any::<bool>()) {
        let mem = guarded();
        let region = mem.region();
        region.write_bytes(if keep_magic { 8 } else { 0 }, &header[if keep_magic { 8 } else { 0 }..]).unwrap();
        if let Ok(mut ep) = Endpoint::attach(region, Side::B, NoKick) {
            let _ = ep.poll_request();
            let _ = ep.poll_reply();
            let _ = ep.send_request(1, [0; 5], b"x");
            let _ = ep.flush();
        }
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn a_region_overwritten_with_random_bytes_is_reported_broken() {
    for seed in 1..=300u64 {
        let mem = guarded();
        let region = mem.region();
        let mut victim = Endpoint::attach(region, Side::A, NoKick).unwrap();
        victim.send_request(1, [0; 5], b"before").unwrap();
        victim.flush().unwrap();
        let mut s = seed;
        let mut bytes = vec![0u8; region.len()];
        for chunk in bytes.chunks_mut(8) {
            let w = xorshift(&mut s).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        region.write_bytes(0, &bytes).unwrap();
        let results = [
            victim.poll_request().map(|_| ()),
            victim.poll_reply().map(|_| ()),
            victim.send_oneway(1, [0; 5]),
            victim.flush(),
        ];
        assert!(
            victim.broken().is_some(),
            "seed {seed}: not reported: {results:?}"
        );
        assert!(matches!(
            victim.poll_request(),
            Err(ChannelError::Broken(_))
        ));
        // A fresh attach to the garbage is refused.
        assert!(Endpoint::attach(region, Side::B, NoKick).is_err());
    }
}

#[test]
fn a_peer_scribbling_concurrently_never_crashes_the_victim() {
    let mem = Arc::new(guarded());
    let stop = Arc::new(AtomicBool::new(false));
    let scribbler = {
        let (mem, stop) = (mem.clone(), stop.clone());
        std::thread::spawn(move || {
            let region = mem.region();
            let mut s = 0x9e37_79b9_7f4a_7c15u64;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(5) {
                let r = xorshift(&mut s);
                // Mostly small, plausible values, so that validation is exercised, not just
                // tripped at the first look.
                let off = ((r as usize >> 8) % (region.len() - 8)) & !7;
                let v = if r & 1 == 0 { r >> 60 } else { r };
                region.u64_at(off).unwrap().store(v, Ordering::Relaxed);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut rounds = 0u64;
    while Instant::now() < deadline {
        // Re-initialise when broken, to keep exercising the data path.
        let region = mem.region();
        let _ = initialize(&region, &CONFIG);
        let Ok(ep) = Endpoint::attach(region, Side::A, NoKick) else {
            continue;
        };
        let mut v = Victim {
            ep,
            held_requests: Vec::new(),
            held_replies: Vec::new(),
        };
        for i in 0..1000u32 {
            if v.act((i * 7 % 251) as u8).is_err() {
                break;
            }
        }
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    scribbler.join().unwrap();
    assert!(rounds > 0);
}

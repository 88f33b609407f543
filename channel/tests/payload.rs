//! Payloads in place: requests and replies built in their pool buffers, payloads forwarded
//! from one channel into another, bulk copies, 64 KiB segments through a pipeline of two
//! channels, and peers that claim payloads beyond their buffers.

mod common;

use std::cell::Cell;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{Deadline, Mem};
use compart_channel::host::SharedMemory;
use compart_channel::ring::Producer;
use compart_channel::wire::{self, FLAG_PAYLOAD};
use compart_channel::{
    initialize, ChannelError, Corruption, Endpoint, NoKick, PairConfig, PairLayout, Region, Side,
};
use proptest::prelude::*;

const BUF: usize = 2048;
const CONFIG: PairConfig = PairConfig::new(16, 4, BUF as u32);

fn pair(config: PairConfig) -> (Mem, Endpoint<NoKick>, Endpoint<NoKick>) {
    let mem = Mem::new(config);
    let a = Endpoint::attach(mem.region, Side::A, NoKick).unwrap();
    let b = Endpoint::attach(mem.region, Side::B, NoKick).unwrap();
    (mem, a, b)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9) ^ seed.wrapping_mul(31)) as u8)
        .collect()
}

/// The payload of the next request `b` receives.
fn received(b: &mut Endpoint<NoKick>) -> (compart_channel::Request, Vec<u8>) {
    let req = b.poll_request().unwrap().expect("a request");
    let mut got = vec![0u8; req.payload_len()];
    assert_eq!(b.read_request_payload(&req, &mut got).unwrap(), got.len());
    (req, got)
}

#[test]
fn a_request_built_in_place_carries_what_the_closure_wrote() {
    let (_m, mut a, mut b) = pair(CONFIG);
    for n in [0, 1, 7, 255, 256, 1000, BUF - 1, BUF] {
        let data = pattern(n as u64, n);
        let id = a
            .send_request_with(3, [n as u64; 5], BUF, |buf| {
                assert_eq!(buf.capacity(), BUF);
                buf.write(0, &data)?;
                Ok(n)
            })
            .unwrap();
        let (req, got) = received(&mut b);
        assert_eq!((req.id(), req.opcode(), req.inline()[0]), (id, 3, n as u64));
        assert_eq!(got, data, "{n} bytes");
        b.reply(req, 0, [0; 5], &[]).unwrap();
        let rep = a.poll_reply().unwrap().unwrap();
        a.free(rep).unwrap();
    }
}

#[test]
fn a_closure_writing_past_its_buffer_sends_nothing() {
    let (_m, mut a, mut b) = pair(CONFIG);
    // A write crossing the end is refused, and the closure's error ends the send.
    let r = a.send_request_with(1, [0; 5], 100, |buf| {
        buf.write(0, &[1; 100])?;
        buf.write(99, &[2; 2])?;
        Ok(100)
    });
    assert_eq!(r, Err(ChannelError::PayloadTooLarge));
    // A claimed length beyond the buffer given.
    let r = a.send_request_with(1, [0; 5], 100, |buf| {
        buf.write(0, &[1; 100])?;
        Ok(101)
    });
    assert_eq!(r, Err(ChannelError::PayloadTooLarge));
    // The closure's own error is passed on.
    let r = a.send_request_with(1, [0; 5], 10, |_| Err(ChannelError::InvalidHandle));
    assert_eq!(r, Err(ChannelError::InvalidHandle));
    // More than a pool buffer: refused before the closure runs.
    let ran = Cell::new(false);
    let r = a.send_request_with(1, [0; 5], BUF + 1, |_| {
        ran.set(true);
        Ok(0)
    });
    assert_eq!(r, Err(ChannelError::PayloadTooLarge));
    assert!(!ran.get());
    for (at, len) in [(BUF, 1), (usize::MAX, 2), (0, BUF + 1)] {
        let r = a.send_request_with(1, [0; 5], BUF, |buf| buf.fill(at, len, 0).map(|_| 0));
        assert_eq!(r, Err(ChannelError::PayloadTooLarge), "fill({at}, {len})");
    }
    // Nothing was sent and nothing stays allocated: every buffer is still free.
    assert_eq!(a.outstanding_count(), 0);
    assert!(!b.has_incoming().unwrap());
    assert!(a.broken().is_none());
    for i in 0..4 {
        a.send_request_with(1, [i; 5], 0, |_| Ok(0)).unwrap();
    }
}

#[test]
fn with_every_buffer_in_use_the_closure_does_not_run() {
    let (_m, mut a, _b) = pair(CONFIG);
    for _ in 0..4 {
        a.send_request(1, [0; 5], b"x").unwrap();
    }
    let r = a.send_request_with(1, [0; 5], 10, |_| panic!("must not run"));
    assert_eq!(r, Err(ChannelError::NoFreeRequest));
}

#[test]
fn a_reply_built_in_place_can_rewrite_the_request_payload() {
    let (_m, mut a, mut b) = pair(CONFIG);
    let id = a.send_request(5, [0; 5], b"hello, channel").unwrap();
    let req = b.poll_request().unwrap().unwrap();
    let n = req.payload_len();
    b.reply_with(req, 7, [1; 5], BUF, |buf| {
        let mut text = vec![0u8; n];
        assert_eq!(buf.read(0, &mut text)?, n);
        text.make_ascii_uppercase();
        buf.write(0, &text)?;
        buf.write(n, b"!")?;
        Ok(n + 1)
    })
    .unwrap();
    let rep = a.poll_reply().unwrap().unwrap();
    assert_eq!((rep.id(), rep.status()), (id, 7));
    let mut got = [0u8; 32];
    let n = a.read_reply_payload(&rep, &mut got).unwrap();
    assert_eq!(&got[..n], b"HELLO, CHANNEL!");
    a.free(rep).unwrap();

    // A reply claiming more than its buffer is refused, and sends nothing.
    a.send_request(5, [0; 5], b"x").unwrap();
    let req = b.poll_request().unwrap().unwrap();
    assert_eq!(
        b.reply_with(req, 0, [0; 5], 10, |_| Ok(11)),
        Err(ChannelError::PayloadTooLarge)
    );
    assert_eq!(a.poll_reply().unwrap(), None);
    a.send_request(5, [0; 5], b"x").unwrap();
    let req = b.poll_request().unwrap().unwrap();
    assert_eq!(
        b.reply_with(req, 0, [0; 5], BUF + 1, |_| Ok(0)),
        Err(ChannelError::PayloadTooLarge)
    );
    assert_eq!(a.poll_reply().unwrap(), None);
}

#[test]
fn a_buffer_written_as_a_slice_is_read_as_one() {
    let (_m, mut a, mut b) = pair(CONFIG);
    a.send_request_with(1, [0; 5], 300, |buf| {
        // SAFETY: the peer is this thread's endpoint `b`, which does not touch a's buffer
        // until the request is sent.
        let s = unsafe { buf.as_mut_slice() };
        assert_eq!(s.len(), 300);
        for (i, x) in s.iter_mut().enumerate() {
            *x = i as u8;
        }
        Ok(300)
    })
    .unwrap();
    let req = b.poll_request().unwrap().unwrap();
    let p = b.request_payload(&req).unwrap();
    // SAFETY: side A is this thread's endpoint `a`, which does not write the buffer while
    // the request is outstanding.
    let s = unsafe { p.as_slice() };
    assert_eq!(s, (0..300).map(|i| i as u8).collect::<Vec<_>>());
}

/// Three endpoints' worth of channels: X from `src` to `relay`, Y from `relay` to `sink`.
struct Chain {
    x: Mem,
    #[allow(dead_code)] // keeps channel Y's memory alive
    y: Mem,
    src: Endpoint<NoKick>,
    relay_x: Endpoint<NoKick>,
    relay_y: Endpoint<NoKick>,
    sink: Endpoint<NoKick>,
}

fn chain(config: PairConfig) -> Chain {
    let (x, src, relay_x) = pair(config);
    let (y, relay_y, sink) = pair(config);
    Chain {
        x,
        y,
        src,
        relay_x,
        relay_y,
        sink,
    }
}

proptest! {
    /// Whatever a closure writes and claims, the request is sent exactly when every write
    /// and the claimed length lie inside the buffer given, and then carries exactly the
    /// claimed bytes of what was written; otherwise nothing is sent or allocated.
    #[test]
    fn an_in_place_send_behaves_like_its_model(
        cap in 0usize..BUF + 100,
        writes in prop::collection::vec((0usize..BUF + 100, 0usize..400, any::<u8>()), 0..6),
        claimed in 0usize..BUF + 100,
    ) {
        let (_m, mut a, mut b) = pair(CONFIG);
        let ran = Cell::new(false);
        let r = a.send_request_with(1, [0; 5], cap, |buf| {
            ran.set(true);
            for &(at, len, byte) in &writes {
                buf.write(at, &vec![byte; len])?;
            }
            Ok(claimed)
        });
        let mut model = vec![0u8; BUF];
        let mut ok = cap <= BUF;
        prop_assert_eq!(ran.get(), ok);
        for &(at, len, byte) in &writes {
            if ok && at + len <= cap {
                model[at..at + len].fill(byte);
            } else {
                ok = false;
            }
        }
        ok &= claimed <= cap;
        if ok {
            prop_assert!(r.is_ok(), "{:?}", r);
            let (_req, got) = received(&mut b);
            prop_assert_eq!(&got[..], &model[..claimed]);
            prop_assert_eq!(a.outstanding_count(), 1);
        } else {
            prop_assert_eq!(r, Err(ChannelError::PayloadTooLarge));
            prop_assert!(!b.has_incoming().unwrap());
            prop_assert_eq!(a.outstanding_count(), 0);
        }
    }

    /// A request's payload forwarded from channel X into channel Y arrives unchanged, and
    /// the sink's reply payload, passed back with `reply_from`, reaches the source.
    #[test]
    fn a_forwarded_payload_arrives_unchanged(lens in prop::collection::vec(0usize..=BUF, 1..12), seed in any::<u64>()) {
        let mut c = chain(CONFIG);
        for (k, &len) in lens.iter().enumerate() {
            let data = pattern(seed ^ k as u64, len);
            let id = c.src.send_request(9, [k as u64; 5], &data).unwrap();

            let req = c.relay_x.poll_request().unwrap().unwrap();
            let fwd = {
                let p = c.relay_x.request_payload(&req).unwrap();
                prop_assert_eq!(p.len(), len);
                c.relay_y.forward(10, *req.inline(), &p).unwrap()
            };

            let (down, got) = received(&mut c.sink);
            prop_assert_eq!((down.id(), down.opcode(), down.inline()[0]), (fwd, 10, k as u64));
            prop_assert_eq!(&got, &data);
            let answer = pattern(!seed ^ k as u64, BUF - len);
            c.sink.reply(down, 0, [0; 5], &answer).unwrap();

            let up = c.relay_y.poll_reply().unwrap().unwrap();
            {
                let p = c.relay_y.reply_payload(&up).unwrap();
                c.relay_x.reply_from(req, 1, [2; 5], &p).unwrap();
            }
            c.relay_y.free(up).unwrap();

            let rep = c.src.poll_reply().unwrap().unwrap();
            prop_assert_eq!((rep.id(), rep.status()), (id, 1));
            let mut back = vec![0u8; BUF];
            let n = c.src.read_reply_payload(&rep, &mut back).unwrap();
            prop_assert_eq!(&back[..n], &answer[..]);
            c.src.free(rep).unwrap();
        }
        prop_assert_eq!(c.relay_y.outstanding_count(), 0);
    }

    /// Region copies (read, write, region to region) at any offsets and lengths, on both
    /// sides of the bulk-copy threshold, copy exactly the bytes asked for.
    #[test]
    fn region_copies_move_exactly_the_bytes_asked(
        src_off in 0usize..200, dst_off in 0usize..200, len in 0usize..1500, seed in any::<u64>()
    ) {
        let a = Mem::new(CONFIG);
        let b = Mem::new(CONFIG);
        let size = a.region.len();
        let base = a.layout.side(Side::A).pool;
        let before = pattern(seed, size - base);
        a.region.write_bytes(base, &before).unwrap();
        b.region.write_bytes(base, &before).unwrap();
        let data = pattern(!seed, len);
        a.region.write_bytes(base + src_off, &data).unwrap();
        b.region.copy_from(base + dst_off, &a.region, base + src_off, len).unwrap();
        let mut got = vec![0u8; size - base];
        b.region.read_bytes(base, &mut got).unwrap();
        let mut want = before.clone();
        want[dst_off..dst_off + len].copy_from_slice(&data);
        prop_assert_eq!(got, want);
        // Ranges outside the region copy nothing.
        prop_assert_eq!(b.region.copy_from(size - len / 2 - 1, &a.region, 0, len + 2), None);
        prop_assert_eq!(b.region.copy_from(0, &a.region, size - len / 2 - 1, len + 2), None);
    }
}

#[test]
fn forwarding_into_a_full_channel_gives_the_buffer_back() {
    let mut c = chain(CONFIG);
    c.src.send_request(1, [0; 5], &[7; 100]).unwrap();
    let req = c.relay_x.poll_request().unwrap().unwrap();
    let p = c.relay_x.request_payload(&req).unwrap();
    for _ in 0..4 {
        c.relay_y.forward(2, [0; 5], &p).unwrap();
    }
    assert_eq!(
        c.relay_y.forward(2, [0; 5], &p),
        Err(ChannelError::NoFreeRequest)
    );
    assert_eq!(c.relay_y.outstanding_count(), 4);
}

/// A peer that writes its own messages: a request (or reply) claiming payload bytes beyond
/// the buffer breaks the channel at the first look, before any byte is copied; with small
/// buffers and with the 64 KiB ones.
#[test]
fn a_peer_claiming_payload_beyond_its_buffer_is_refused() {
    for config in [CONFIG, BIG] {
        refused_beyond(config);
    }
}

fn refused_beyond(config: PairConfig) {
    let buf = config.buf_size;
    let spans: [(u32, u32); 6] = [
        (0, buf + 1),
        (1, buf),
        (buf, 1),
        (buf - 64, 65),
        (u32::MAX, 2),
        (0, u32::MAX),
    ];
    for (off, len) in spans {
        // Requests from side B to the victim, side A.
        let mem = Mem::new(config);
        let mut victim = Endpoint::attach(mem.region, Side::A, NoKick).unwrap();
        let mut forger = Producer::attach(&mem.region, mem.layout.side(Side::A).requests).unwrap();
        let w = wire::words(
            1 << 32,
            wire::control(1, FLAG_PAYLOAD, 0),
            wire::payload_span(off, len),
            &[0; 5],
        );
        assert!(forger.push(&w).unwrap());
        assert_eq!(
            victim.poll_request(),
            Err(ChannelError::Corrupt(Corruption::PayloadBounds)),
            "request ({off}, {len})"
        );
        let r = victim.send_request_with(1, [0; 5], 1, |_| Ok(0));
        assert!(matches!(r, Err(ChannelError::Broken(_))));

        // A reply to the victim's own request.
        let mem = Mem::new(config);
        let mut victim = Endpoint::attach(mem.region, Side::A, NoKick).unwrap();
        let id = victim.send_request(1, [0; 5], b"q").unwrap();
        let mut forger = Producer::attach(&mem.region, mem.layout.side(Side::A).replies).unwrap();
        let w = wire::words(
            id.0,
            wire::control(1, FLAG_PAYLOAD, 0),
            wire::payload_span(off, len),
            &[0; 5],
        );
        assert!(forger.push(&w).unwrap());
        assert_eq!(
            victim.poll_reply(),
            Err(ChannelError::Corrupt(Corruption::PayloadBounds)),
            "reply ({off}, {len})"
        );
    }
}

/// A payload at the very end of a buffer, as a peer may legitimately place it.
#[test]
fn a_payload_at_an_offset_is_read_and_forwarded_from_there() {
    let mut c = chain(CONFIG);
    let data = pattern(5, 600);
    // The end of buffer 0 of side A's pool, as side A's request to side B says.
    let x = c.x.region;
    let pool = c.x.layout.side(Side::A).pool;
    x.write_bytes(pool + BUF - data.len(), &data).unwrap();
    let mut forger = Producer::attach(&x, c.x.layout.side(Side::B).requests).unwrap();
    let w = wire::words(
        1 << 32,
        wire::control(4, FLAG_PAYLOAD, 0),
        wire::payload_span((BUF - data.len()) as u32, data.len() as u32),
        &[0; 5],
    );
    assert!(forger.push(&w).unwrap());
    let req = c.relay_x.poll_request().unwrap().unwrap();
    let p = c.relay_x.request_payload(&req).unwrap();
    let mut part = [0u8; 10];
    assert_eq!(p.read(595, &mut part).unwrap(), 5);
    assert_eq!(&part[..5], &data[595..]);
    assert_eq!(p.read(600, &mut part).unwrap(), 0);
    c.relay_y.forward(4, [0; 5], &p).unwrap();
    let (_down, got) = received(&mut c.sink);
    assert_eq!(got, data);
}

/// The data-channel sizes of the network stack (NETSTACK.md D.3): 64 KiB segments plus
/// headroom, a window of 64.
const SEGMENT: usize = 65536;
const BIG: PairConfig = PairConfig::new(256, 64, 65600);

fn shared_pair(config: &PairConfig) -> (Arc<SharedMemory>, Region) {
    let size = PairLayout::new(config).unwrap().size();
    let mem = Arc::new(SharedMemory::create("payload-test", size).unwrap());
    let region = mem.region();
    initialize(&region, config).unwrap();
    (mem, region)
}

/// Spin on `f` until it yields, failing the test at the deadline.
fn until<T>(deadline: &Deadline, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        deadline.check(what);
        std::hint::spin_loop();
    }
}

/// 64 KiB segments from a source thread, through a relay thread that forwards each into a
/// second channel, to a sink thread that checks every byte; up to 64 in flight per channel.
#[test]
fn segments_of_64_kib_flow_through_a_relay_intact() {
    const N: u64 = 600;
    let (mx, x) = shared_pair(&BIG);
    let (my, y) = shared_pair(&BIG);
    let seg = |k: u64| pattern(k, SEGMENT - (k as usize % 3) * 1000);

    let sink = thread::spawn({
        let _m = my.clone();
        move || {
            let d = Deadline::after(Duration::from_secs(60));
            let mut ep = Endpoint::attach(y, Side::B, NoKick).unwrap();
            let mut got = vec![0u8; SEGMENT];
            for k in 0..N {
                let req = until(&d, "sink", || ep.poll_request().unwrap());
                let n = ep.read_request_payload(&req, &mut got).unwrap();
                assert_eq!(req.inline()[0], k);
                assert!(got[..n] == seg(k)[..], "segment {k} differs");
                ep.reply(req, 0, [k, 0, 0, 0, 0], &[]).unwrap();
            }
            ep.flush().unwrap();
            drop(_m);
        }
    });
    // Each thread keeps the memory of the channels it uses mapped (and so does this one).
    let relay = thread::spawn({
        let _m = (mx.clone(), my.clone());
        move || {
            let d = Deadline::after(Duration::from_secs(60));
            let mut up = Endpoint::attach(x, Side::B, NoKick).unwrap();
            let mut down = Endpoint::attach(y, Side::A, NoKick).unwrap();
            // Requests from upstream, by the id of their forwarded copy.
            let mut waiting = std::collections::HashMap::new();
            let mut done = 0;
            while done < N {
                if waiting.len() < 64 {
                    if let Some(req) = up.poll_request().unwrap() {
                        let p = up.request_payload(&req).unwrap();
                        let id = down.forward(2, *req.inline(), &p).unwrap();
                        waiting.insert(id, req);
                        continue;
                    }
                }
                if let Some(rep) = down.poll_reply().unwrap() {
                    let req = waiting
                        .remove(&rep.id())
                        .expect("a reply to a forwarded request");
                    up.reply(req, 0, *rep.inline(), &[]).unwrap();
                    down.free(rep).unwrap();
                    done += 1;
                }
                d.check("relay");
            }
            up.flush().unwrap();
            down.flush().unwrap();
            drop(_m);
        }
    });
    let d = Deadline::after(Duration::from_secs(60));
    let mut src = Endpoint::attach(x, Side::A, NoKick).unwrap();
    let (mut sent, mut replied, mut max_in_flight) = (0u64, 0u64, 0u32);
    while replied < N {
        if sent < N {
            let data = seg(sent);
            match src.send_request_with(1, [sent, 0, 0, 0, 0], SEGMENT, |buf| {
                buf.write(0, &data)?;
                Ok(data.len())
            }) {
                Ok(_) => {
                    sent += 1;
                    max_in_flight = max_in_flight.max(src.outstanding_count());
                    continue;
                }
                Err(ChannelError::NoFreeRequest | ChannelError::Full) => {}
                Err(e) => panic!("{e}"),
            }
        }
        if let Some(rep) = src.poll_reply().unwrap() {
            assert_eq!(rep.inline()[0], replied, "replies in order");
            src.free(rep).unwrap();
            replied += 1;
        }
        d.check("source");
    }
    src.flush().unwrap();
    relay.join().unwrap();
    sink.join().unwrap();
    assert!(
        max_in_flight > 1,
        "the pipeline never had two segments in flight"
    );
}

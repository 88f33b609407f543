//! The server between applications and a fake tcp played by the test, over host
//! channel regions, stepped by hand: each test is one conversation.
extern crate std;

use std::collections::BTreeMap;
use std::format;
use std::vec;
use std::vec::Vec;

use compart_channel::host::SharedMemory;
use compart_channel::{initialize, Endpoint, NoKick, PairConfig, PairLayout, Side};
use compart_proto::socket::{
    Errno, Event, Reply, Request, FLAG_ALL, FLAG_NONBLOCK, READY_READABLE, READY_WRITABLE,
};

use super::{Limits, Posix};

fn pair(name: &str) -> (SharedMemory, Endpoint<NoKick>, Endpoint<NoKick>) {
    let config = PairConfig::new(64, 8, 4096);
    let size = PairLayout::new(&config).unwrap().size();
    let mem = SharedMemory::create(name, size.next_multiple_of(4096)).unwrap();
    initialize(&mem.region(), &config).unwrap();
    let a = Endpoint::attach(mem.region(), Side::A, NoKick).unwrap();
    let b = Endpoint::attach(mem.region(), Side::B, NoKick).unwrap();
    (mem, a, b)
}

#[derive(Debug, Default)]
struct FakeSock {
    listener: bool,
    /// Connections waiting to be accepted (listener), bytes to deliver (stream).
    backlog: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// Bytes a `Send` may still take (writable while > 0); unbounded when `None`.
    room: Option<usize>,
    told: u32,
}

/// tcp as posix sees it: a socket table whose data the test supplies.
struct FakeTcp {
    ep: Endpoint<NoKick>,
    socks: BTreeMap<u32, FakeSock>,
    next: u32,
    /// Every call posix made, in order.
    calls: Vec<Request>,
}

impl FakeTcp {
    fn ready(s: &FakeSock) -> u32 {
        if s.listener {
            if s.backlog > 0 {
                READY_READABLE
            } else {
                0
            }
        } else {
            let w = if s.room == Some(0) { 0 } else { READY_WRITABLE };
            let r = if s.rx.is_empty() { 0 } else { READY_READABLE };
            r | w
        }
    }

    fn new_handle(&mut self, listener: bool) -> u32 {
        self.next += 1;
        self.socks.insert(
            self.next,
            FakeSock {
                listener,
                ..FakeSock::default()
            },
        );
        self.next
    }

    /// Serve posix's calls, then tell it what changed.
    fn step(&mut self) {
        while let Some(req) = self.ep.poll_request().unwrap() {
            let call = Request::decode(req.opcode(), req.is_oneway(), req.inline())
                .expect("posix sends tcp valid calls, never flagged");
            self.calls.push(call);
            let mut data = Vec::new();
            let r = match call {
                Request::Listen { .. } => Reply::Handle(self.new_handle(true)),
                Request::Connect { .. } => Reply::Handle(self.new_handle(false)),
                Request::Accept { listener } => match self.socks.get_mut(&listener) {
                    Some(s) if s.backlog > 0 => {
                        s.backlog -= 1;
                        Reply::Accepted {
                            handle: self.new_handle(false),
                            address: [198, 18, 0, 1],
                            port: 5000,
                        }
                    }
                    Some(_) => Reply::Error(Errno::Again),
                    None => Reply::Error(Errno::BadHandle),
                },
                Request::Recv { handle, max } => match self.socks.get_mut(&handle) {
                    Some(s) if s.rx.is_empty() => Reply::Error(Errno::Again),
                    Some(s) => {
                        let n = s.rx.len().min(max as usize);
                        data = s.rx.drain(..n).collect();
                        Reply::Bytes(n as u32)
                    }
                    None => Reply::Error(Errno::BadHandle),
                },
                Request::Send { handle } => {
                    let mut buf = vec![0; req.payload_len()];
                    self.ep.read_request_payload(&req, &mut buf).unwrap();
                    match self.socks.get_mut(&handle) {
                        Some(s) if s.room == Some(0) => Reply::Error(Errno::Again),
                        Some(s) => {
                            let n = s.room.map_or(buf.len(), |r| r.min(buf.len()));
                            s.tx.extend_from_slice(&buf[..n]);
                            s.room = s.room.map(|r| r - n);
                            Reply::Bytes(n as u32)
                        }
                        None => Reply::Error(Errno::BadHandle),
                    }
                }
                Request::Close { handle } => match self.socks.remove(&handle) {
                    Some(_) => Reply::Done,
                    None => Reply::Error(Errno::BadHandle),
                },
                Request::Stats => {
                    data = b"tcp: fake".to_vec();
                    Reply::Bytes(data.len() as u32)
                }
                _ => Reply::Done,
            };
            let (s, w) = r.encode();
            self.ep.reply(req, s, w, &data).unwrap();
        }
        for (&h, s) in self.socks.iter_mut() {
            let now = FakeTcp::ready(s);
            if now != s.told {
                let (op, w) = Event {
                    handle: h,
                    ready: now,
                }
                .encode();
                self.ep.send_oneway(op, w).unwrap();
                s.told = now;
            }
        }
    }
}

/// posix, the fake tcp and applications, each with its region.
struct Rig {
    _mem: Vec<SharedMemory>,
    posix: Posix<NoKick>,
    tcp: FakeTcp,
    apps: Vec<Endpoint<NoKick>>,
}

impl Rig {
    fn new(name: &str, apps: usize) -> Rig {
        let (m, to_tcp, tcp) = pair(&format!("{name}-tcp"));
        let mut mem = vec![m];
        let mut posix = Posix::new(to_tcp, Limits::default());
        let mut eps = Vec::new();
        for k in 0..apps {
            let (m, app, theirs) = pair(&format!("{name}-app{k}"));
            mem.push(m);
            posix.add_app(&format!("app{k}"), theirs);
            eps.push(app);
        }
        Rig {
            _mem: mem,
            posix,
            tcp: FakeTcp {
                ep: tcp,
                socks: BTreeMap::new(),
                next: 0,
                calls: Vec::new(),
            },
            apps: eps,
        }
    }

    /// Rounds of posix and tcp until nothing moves (bounded).
    fn settle(&mut self) {
        for _ in 0..50 {
            let busy = self.posix.poll().unwrap();
            let before = self.tcp.calls.len();
            self.tcp.step();
            if !busy && self.tcp.calls.len() == before {
                let again = self.posix.poll().unwrap();
                if !again {
                    return;
                }
            }
        }
    }

    fn send(&mut self, app: usize, call: Request, flags: u64, payload: &[u8]) {
        let (op, w) = call.encode_flags(flags);
        self.apps[app].send_request(op, w, payload).unwrap();
    }

    /// The reply to app's outstanding call, if there is one now.
    fn reply(&mut self, app: usize) -> Option<(Reply, Vec<u8>)> {
        let ep = &mut self.apps[app];
        let rep = ep.poll_reply().unwrap()?;
        let r = Reply::decode(rep.opcode(), rep.status(), rep.inline()).unwrap();
        let mut data = vec![0; rep.payload_len()];
        ep.read_reply_payload(&rep, &mut data).unwrap();
        ep.free(rep).unwrap();
        Some((r, data))
    }

    fn call(&mut self, app: usize, call: Request, flags: u64, payload: &[u8]) -> (Reply, Vec<u8>) {
        self.send(app, call, flags, payload);
        self.settle();
        self.reply(app).expect("posix answered")
    }

    /// Events the application got.
    fn events(&mut self, app: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(req) = self.apps[app].poll_request().unwrap() {
            out.push(Event::decode(req.opcode(), req.is_oneway(), req.inline()).unwrap());
        }
        out
    }

    /// A listener of app's on port 7 and one accepted connection.
    fn connection(&mut self, app: usize) -> (u32, u32) {
        let Reply::Handle(l) = self
            .call(
                app,
                Request::Listen {
                    port: 7,
                    backlog: 4,
                },
                0,
                &[],
            )
            .0
        else {
            panic!("listen failed")
        };
        let tl = self.tcp.next;
        self.tcp.socks.get_mut(&tl).unwrap().backlog = 1;
        let (r, _) = self.call(app, Request::Accept { listener: l }, 0, &[]);
        let Reply::Accepted {
            handle,
            address,
            port,
        } = r
        else {
            panic!("accept failed: {r:?}")
        };
        assert_eq!((address, port), ([198, 18, 0, 1], 5000));
        (l, handle)
    }
}

#[test]
fn a_blocking_recv_waits_for_tcps_event_and_then_gets_the_data() {
    let mut rig = Rig::new("posix-block", 1);
    let (_, s) = rig.connection(0);
    let ts = rig.tcp.next;
    rig.send(
        0,
        Request::Recv {
            handle: s,
            max: 100,
        },
        0,
        &[],
    );
    rig.settle();
    assert_eq!(rig.reply(0), None, "parked, not answered");
    let recvs = |r: &Rig| {
        r.tcp
            .calls
            .iter()
            .filter(|c| matches!(c, Request::Recv { .. }))
            .count()
    };
    assert_eq!(
        recvs(&rig),
        0,
        "tcp said there is no data: parked without asking"
    );
    rig.settle();
    assert_eq!(recvs(&rig), 0, "no spinning while nothing changes");
    rig.tcp.socks.get_mut(&ts).unwrap().rx = b"hello".to_vec();
    rig.settle();
    let (r, data) = rig.reply(0).expect("answered once the data came");
    assert_eq!((r, data.as_slice()), (Reply::Bytes(5), &b"hello"[..]));
    // Once when the data came (as much as a buffer holds: posix reads ahead), and at
    // most `AHEAD` more before tcp's event says it has no more.
    assert!(
        (1..=1 + crate::AHEAD).contains(&recvs(&rig)),
        "{:?}",
        rig.tcp.calls
    );
    assert!(rig.tcp.calls.contains(&Request::Recv {
        handle: ts,
        max: 4096
    }));
    rig.settle();
    let asked = recvs(&rig);
    rig.settle();
    assert_eq!(recvs(&rig), asked, "no spinning");
}

#[test]
fn posix_reads_ahead_and_serves_small_recvs_in_order_from_it() {
    let mut rig = Rig::new("posix-ahead", 1);
    let (_, s) = rig.connection(0);
    let ts = rig.tcp.next;
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 11) as u8).collect();
    rig.tcp.socks.get_mut(&ts).unwrap().rx = data.clone();
    rig.settle();
    let mut got = Vec::new();
    for _ in 0..40 {
        let (r, part) = rig.call(
            0,
            Request::Recv {
                handle: s,
                max: 700,
            },
            FLAG_NONBLOCK,
            &[],
        );
        match r {
            Reply::Bytes(n) => {
                assert!(n as usize == part.len() && n <= 700);
                got.extend_from_slice(&part);
            }
            Reply::Error(Errno::Again) => break,
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(got, data);
    let recvs = rig
        .tcp
        .calls
        .iter()
        .filter(|c| matches!(c, Request::Recv { .. }))
        .count();
    assert!(
        recvs <= 2,
        "one read of tcp served the five of the application: {recvs}"
    );
    // All taken: readable no more.
    rig.tcp.socks.get_mut(&ts).unwrap().rx.clear();
    let (r, _) = rig.call(0, Request::Poll { handle: s }, 0, &[]);
    assert_eq!(r, Reply::Ready(READY_WRITABLE));
}

#[test]
fn a_nonblocking_call_is_answered_again_at_once_and_readiness_reaches_the_app() {
    let mut rig = Rig::new("posix-nonblock", 1);
    let (l, s) = rig.connection(0);
    let (r, _) = rig.call(
        0,
        Request::Recv {
            handle: s,
            max: 100,
        },
        FLAG_NONBLOCK,
        &[],
    );
    assert_eq!(r, Reply::Error(Errno::Again));
    let (r, _) = rig.call(0, Request::Accept { listener: l }, FLAG_NONBLOCK, &[]);
    assert_eq!(r, Reply::Error(Errno::Again));
    let asked = rig.tcp.calls.len();
    let (r, _) = rig.call(
        0,
        Request::Recv {
            handle: s,
            max: 100,
        },
        FLAG_NONBLOCK,
        &[],
    );
    assert_eq!(r, Reply::Error(Errno::Again));
    assert_eq!(
        rig.tcp.calls.len(),
        asked,
        "answered from tcp's last readiness"
    );
    let _ = rig.events(0);
    let ts = rig.tcp.next;
    rig.tcp.socks.get_mut(&ts).unwrap().rx = b"x".to_vec();
    rig.settle();
    let ev = rig.events(0);
    assert!(
        ev.contains(&Event {
            handle: s,
            ready: READY_READABLE | READY_WRITABLE
        }),
        "{ev:?}"
    );
    let (r, _) = rig.call(0, Request::Poll { handle: s }, 0, &[]);
    assert_eq!(r, Reply::Ready(READY_READABLE | READY_WRITABLE));
    let (r, data) = rig.call(
        0,
        Request::Recv {
            handle: s,
            max: 100,
        },
        FLAG_NONBLOCK,
        &[],
    );
    assert_eq!((r, data), (Reply::Bytes(1), b"x".to_vec()));
}

#[test]
fn an_application_can_name_only_its_own_sockets() {
    let mut rig = Rig::new("posix-own", 2);
    let (l, s) = rig.connection(0);
    for h in [s, l, s ^ 0x1_0000, s + 1, u32::MAX] {
        let (r, _) = rig.call(1, Request::Recv { handle: h, max: 10 }, 0, &[]);
        assert_eq!(r, Reply::Error(Errno::BadHandle), "handle {h:#x}");
        let (r, _) = rig.call(1, Request::Close { handle: h }, 0, &[]);
        assert_eq!(r, Reply::Error(Errno::BadHandle), "handle {h:#x}");
    }
    let (r, _) = rig.call(0, Request::Accept { listener: s }, 0, &[]);
    assert_eq!(r, Reply::Error(Errno::BadHandle), "a stream is no listener");
    assert_eq!(
        rig.call(0, Request::Close { handle: s }, 0, &[]).0,
        Reply::Done
    );
    let (r, _) = rig.call(0, Request::Recv { handle: s, max: 10 }, 0, &[]);
    assert_eq!(r, Reply::Error(Errno::BadHandle), "closed");
    assert_eq!(
        rig.tcp.socks.len(),
        1,
        "tcp closed the stream, the listener stays"
    );
}

#[test]
fn sends_reach_tcp_unchanged_and_stats_have_both_servers_counters() {
    let mut rig = Rig::new("posix-send", 1);
    let (_, s) = rig.connection(0);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let (r, _) = rig.call(0, Request::Send { handle: s }, 0, &data);
    assert_eq!(r, Reply::Bytes(4096));
    assert_eq!(rig.tcp.socks[&rig.tcp.next].tx, data);
    let (r, text) = rig.call(0, Request::Stats, 0, &[]);
    let text = std::string::String::from_utf8(text).unwrap();
    assert_eq!(r, Reply::Bytes(text.len() as u32));
    assert!(
        text.contains("posix: apps=1 sockets=2 connections=1 accepted=1"),
        "{text}"
    );
    assert!(text.contains("bytes_out=4096"), "{text}");
    assert!(text.ends_with("\ntcp: fake"), "{text}");
}

#[test]
fn a_lost_application_has_its_sockets_closed_and_the_others_go_on() {
    let mut rig = Rig::new("posix-lost", 2);
    let _ = rig.connection(0);
    let (_, s1) = {
        let Reply::Handle(l) = rig
            .call(
                1,
                Request::Listen {
                    port: 8,
                    backlog: 1,
                },
                0,
                &[],
            )
            .0
        else {
            panic!()
        };
        (l, l)
    };
    rig.send(
        0,
        Request::Recv {
            handle: 0x1_0002,
            max: 9,
        },
        0,
        &[],
    );
    rig.settle();
    assert_eq!(rig.tcp.socks.len(), 3);
    // The application wrecks its region: posix's next look at the channel finds it.
    let region = rig._mem[1].region();
    for off in (0..region.len()).step_by(8) {
        if let Some(w) = region.u64_at(off) {
            w.store(u64::MAX, core::sync::atomic::Ordering::Relaxed);
        }
    }
    rig.settle();
    assert_eq!(rig.posix.counters().apps_lost, 1);
    assert_eq!(rig.posix.counters().closed_for_lost, 2);
    assert_eq!(
        rig.posix.take_lost(),
        vec![std::string::String::from("app0")]
    );
    assert_eq!(rig.tcp.socks.len(), 1, "only app1's listener is left");
    let (r, _) = rig.call(1, Request::Poll { handle: s1 }, 0, &[]);
    assert_eq!(r, Reply::Ready(0));
}

#[test]
fn a_call_that_tcp_answers_again_after_all_is_parked_until_the_next_event() {
    let mut rig = Rig::new("posix-again", 1);
    let (_, s) = rig.connection(0);
    let ts = rig.tcp.next;
    // posix believes there is data (tcp's last event said so), but tcp has none by
    // the time the call arrives.
    rig.tcp.socks.get_mut(&ts).unwrap().rx = b"a".to_vec();
    rig.settle();
    rig.tcp.socks.get_mut(&ts).unwrap().rx.clear();
    rig.send(0, Request::Recv { handle: s, max: 10 }, 0, &[]);
    rig.settle();
    assert_eq!(rig.reply(0), None, "parked after tcp's EAGAIN");
    let recvs = |r: &Rig| {
        r.tcp
            .calls
            .iter()
            .filter(|c| matches!(c, Request::Recv { .. }))
            .count()
    };
    let asked = recvs(&rig);
    assert!((1..=2).contains(&asked), "{asked}");
    rig.settle();
    assert_eq!(recvs(&rig), asked, "no spinning");
    rig.tcp.socks.get_mut(&ts).unwrap().rx = b"b".to_vec();
    rig.settle();
    assert_eq!(rig.reply(0), Some((Reply::Bytes(1), b"b".to_vec())));
}

#[test]
fn sends_flagged_all_go_whole_and_in_order_as_tcp_makes_room() {
    let mut rig = Rig::new("posix-all", 1);
    let (_, s) = rig.connection(0);
    let ts = rig.tcp.next;
    rig.tcp.socks.get_mut(&ts).unwrap().room = Some(1000);
    let a: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let b: Vec<u8> = (0..2000u32).map(|i| (i * 3 + 1) as u8).collect();
    rig.send(0, Request::Send { handle: s }, FLAG_ALL, &a);
    rig.send(0, Request::Send { handle: s }, FLAG_ALL, &b);
    rig.settle();
    assert_eq!(rig.reply(0), None, "waiting for room");
    assert_eq!(rig.tcp.socks[&ts].tx, a[..1000]);
    let sends = |r: &Rig| {
        r.tcp
            .calls
            .iter()
            .filter(|c| matches!(c, Request::Send { .. }))
            .count()
    };
    let asked = sends(&rig);
    rig.settle();
    assert_eq!(sends(&rig), asked, "parked while tcp has no room");
    for _ in 0..10 {
        rig.tcp.socks.get_mut(&ts).unwrap().room = Some(700);
        rig.settle();
    }
    let mut want = a.clone();
    want.extend_from_slice(&b);
    assert_eq!(rig.tcp.socks[&ts].tx, want, "all of a, then all of b");
    assert_eq!(rig.reply(0), Some((Reply::Bytes(3000), Vec::new())));
    assert_eq!(rig.reply(0), Some((Reply::Bytes(2000), Vec::new())));
    // Without FLAG_ALL a send takes what tcp takes; non-blocking, none is EAGAIN.
    rig.tcp.socks.get_mut(&ts).unwrap().room = Some(10);
    rig.settle();
    assert_eq!(
        rig.call(0, Request::Send { handle: s }, 0, &a).0,
        Reply::Bytes(10)
    );
    let (r, _) = rig.call(0, Request::Send { handle: s }, FLAG_NONBLOCK, &a);
    assert_eq!(r, Reply::Error(Errno::Again));
}

#[test]
fn after_eagain_the_application_is_told_when_the_socket_is_readable_even_if_it_was_before() {
    let mut rig = Rig::new("posix-edge", 1);
    let (_, s) = rig.connection(0);
    let ts = rig.tcp.next;
    rig.tcp.socks.get_mut(&ts).unwrap().rx = b"1".to_vec();
    rig.settle();
    let _ = rig.events(0);
    // tcp loses the data without saying so yet: posix's copy says readable, tcp
    // answers posix's Recv EAGAIN, then says "not readable" and, before posix looks,
    // "readable" again.
    rig.tcp.socks.get_mut(&ts).unwrap().rx.clear();
    rig.send(0, Request::Recv { handle: s, max: 10 }, FLAG_NONBLOCK, &[]);
    rig.posix.poll().unwrap();
    rig.tcp.step();
    rig.tcp.socks.get_mut(&ts).unwrap().rx = b"2".to_vec();
    rig.tcp.step();
    rig.posix.poll().unwrap();
    assert_eq!(rig.reply(0), Some((Reply::Error(Errno::Again), Vec::new())));
    let ev = rig.events(0);
    assert!(
        ev.iter()
            .any(|e| e.handle == s && e.ready & READY_READABLE != 0),
        "readable before, readable now, yet the application waits for the news: {ev:?}"
    );
}

//! The client against a posix server played by the test on another thread, over a host
//! channel pair.
extern crate std;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

use compart_channel::host::SharedMemory;
use compart_channel::{initialize, Endpoint, NoKick, PairConfig, PairLayout, Side};
use compart_proto::socket::{Event, Reply, Request, FLAG_ALL, READY_READABLE};

use super::*;

#[derive(Debug)]
struct HostSleep(Instant);

impl Sleep<NoKick> for HostSleep {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
    fn sleep(&self, _ep: &mut Endpoint<NoKick>, _deadline_ms: Option<u64>) {
        thread::sleep(Duration::from_micros(50));
    }
}

/// A channel: the application's endpoint (A) and posix's (B).
fn pair(name: &str) -> (SharedMemory, Endpoint<NoKick>, Endpoint<NoKick>) {
    let config = PairConfig::new(16, 4, 4096);
    let size = PairLayout::new(&config).unwrap().size();
    let mem = SharedMemory::create(name, size.next_multiple_of(4096)).unwrap();
    initialize(&mem.region(), &config).unwrap();
    let app = Endpoint::attach(mem.region(), Side::A, NoKick).unwrap();
    let posix = Endpoint::attach(mem.region(), Side::B, NoKick).unwrap();
    (mem, app, posix)
}

/// The fake posix: answers each request as `answer` says (reply and payload; an event
/// to send first), reporting every request and its flags and payload to the test.
fn serve(
    mut ep: Endpoint<NoKick>,
    calls: usize,
    seen: mpsc::Sender<(Request, u64, Vec<u8>)>,
    answer: impl Fn(&Request) -> (Option<Event>, Reply, Vec<u8>) + Send + 'static,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(20);
        let mut served = 0;
        while served < calls && Instant::now() < until {
            let Some(req) = ep.poll_request().unwrap() else {
                thread::sleep(Duration::from_micros(50));
                continue;
            };
            let (r, flags) = Request::decode_flags(req.opcode(), req.is_oneway(), req.inline())
                .expect("the client sends valid requests");
            let mut data = std::vec![0; req.payload_len()];
            ep.read_request_payload(&req, &mut data).unwrap();
            let (event, reply, payload) = answer(&r);
            if let Some(e) = event {
                let (op, w) = e.encode();
                ep.send_oneway(op, w).unwrap();
            }
            let (status, w) = reply.encode();
            ep.reply(req, status, w, &payload).unwrap();
            seen.send((r, flags, data)).unwrap();
            served += 1;
        }
    })
}

fn net(ep: Endpoint<NoKick>) -> PosixNet<NoKick, HostSleep> {
    PosixNet::new(ep, HostSleep(Instant::now()))
}

#[test]
fn calls_carry_handles_payloads_and_flags_and_drop_closes() {
    let (_mem, app, posix) = pair("net-calls");
    let (tx, rx) = mpsc::channel();
    let server = serve(posix, 6, tx, |r| match *r {
        Request::Listen { .. } => (None, Reply::Handle(0x1_0003), Vec::new()),
        Request::Accept { .. } => (
            None,
            Reply::Accepted {
                handle: 0x1_0004,
                address: [198, 18, 0, 1],
                port: 4000,
            },
            Vec::new(),
        ),
        Request::Recv { .. } => (None, Reply::Bytes(5), b"hello".to_vec()),
        Request::Send { .. } => (None, Reply::Bytes(6), Vec::new()),
        Request::Close { .. } => (None, Reply::Done, Vec::new()),
        _ => (None, Reply::Error(Errno::Invalid), Vec::new()),
    });
    let mut n = net(app);
    let mut l = n.listen(7, 8).unwrap();
    let (mut s, peer) = l.accept().unwrap();
    assert_eq!(
        peer,
        Peer {
            address: [198, 18, 0, 1],
            port: 4000
        }
    );
    let mut buf = [0; 64];
    assert_eq!(s.read(&mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    s.set_nonblocking(true).unwrap();
    assert_eq!(s.write(b"abcdef"), Ok(6), "queued: write-behind");
    drop(s);
    drop(l);
    server.join().unwrap();
    let seen: Vec<_> = rx.iter().collect();
    assert_eq!(
        seen[0].0,
        Request::Listen {
            port: 7,
            backlog: 8
        }
    );
    assert_eq!(seen[1].0, Request::Accept { listener: 0x1_0003 });
    assert_eq!(
        seen[2].0,
        Request::Recv {
            handle: 0x1_0004,
            max: 64
        }
    );
    assert_eq!(seen[2].1, 0, "blocking by default");
    assert_eq!(
        (seen[3].0, seen[3].1),
        (Request::Send { handle: 0x1_0004 }, FLAG_ALL)
    );
    assert_eq!(seen[3].2, b"abcdef");
    assert_eq!(seen[4].0, Request::Close { handle: 0x1_0004 });
    assert_eq!(seen[5].0, Request::Close { handle: 0x1_0003 });
}

#[test]
fn errors_come_back_as_errnos_and_wait_returns_after_an_event() {
    let (_mem, app, posix) = pair("net-errors");
    let (tx, _rx) = mpsc::channel();
    let server = serve(posix, 3, tx, |r| match *r {
        Request::Connect { .. } => (None, Reply::Error(Errno::ConnRefused), Vec::new()),
        Request::Stats => (
            Some(Event {
                handle: 9,
                ready: READY_READABLE,
            }),
            Reply::Bytes(9),
            b"posix: ok".to_vec(),
        ),
        _ => (None, Reply::Error(Errno::BadHandle), Vec::new()),
    });
    let mut n = net(app);
    let to = Peer {
        address: [198, 18, 0, 1],
        port: 9,
    };
    assert_eq!(n.connect(to).map(|_| ()), Err(Errno::ConnRefused));
    assert_eq!(
        n.connect(Peer { port: 0, ..to }).map(|_| ()),
        Err(Errno::Invalid)
    );
    let mut buf = [0; 32];
    assert_eq!(n.stats(&mut buf), Ok(9));
    assert_eq!(&buf[..9], b"posix: ok");
    // The event came with the stats reply: the wait returns at once, the next one at
    // its deadline.
    assert_eq!(n.events(), 1);
    n.wait(None);
    let t = n.now_ms();
    n.wait(Some(t + 20));
    assert!(n.now_ms() >= t + 20);
    assert_eq!(n.listen(0, 1).map(|_| ()), Err(Errno::Invalid));
    assert_eq!(n.listen(80, 1).map(|_| ()), Err(Errno::BadHandle));
    server.join().unwrap();
}

#[test]
fn a_failed_write_behind_is_the_next_writes_error_and_shutdown_waits_for_writes() {
    let (_mem, app, posix) = pair("net-behind");
    let (tx, rx) = mpsc::channel();
    let server = serve(posix, 4, tx, |r| match *r {
        Request::Connect { .. } => (None, Reply::Handle(7), Vec::new()),
        Request::Send { .. } => (None, Reply::Error(Errno::Pipe), Vec::new()),
        _ => (None, Reply::Done, Vec::new()),
    });
    let mut n = net(app);
    let mut s = n
        .connect(Peer {
            address: [198, 18, 0, 1],
            port: 9,
        })
        .unwrap();
    assert_eq!(s.write(b"one"), Ok(3));
    assert_eq!(
        s.shutdown(),
        Err(Errno::Pipe),
        "waited for the write, which failed"
    );
    assert_eq!(s.write(b"two"), Ok(3), "reported once");
    drop(s);
    server.join().unwrap();
    let calls: Vec<_> = rx.iter().map(|(r, _, _)| r).collect();
    assert_eq!(
        calls,
        [
            Request::Connect {
                address: [198, 18, 0, 1],
                port: 9
            },
            Request::Send { handle: 7 },
            Request::Send { handle: 7 },
            Request::Close { handle: 7 },
        ][..],
        "no Shutdown after a failed write; the drop waits for the last write, then closes"
    );
}

#[test]
fn a_nonblocking_read_after_eagain_asks_posix_again_only_after_an_event() {
    let (_mem, app, posix) = pair("net-idle");
    let (tx, rx) = mpsc::channel();
    let server = serve(posix, 5, tx, |r| match *r {
        Request::Connect { .. } => (None, Reply::Handle(7), Vec::new()),
        Request::Recv { .. } => (None, Reply::Error(Errno::Again), Vec::new()),
        Request::Stats => (
            Some(Event {
                handle: 7,
                ready: READY_READABLE,
            }),
            Reply::Bytes(0),
            Vec::new(),
        ),
        _ => (None, Reply::Done, Vec::new()),
    });
    let mut n = net(app);
    let mut s = n
        .connect(Peer {
            address: [198, 18, 0, 1],
            port: 9,
        })
        .unwrap();
    s.set_nonblocking(true).unwrap();
    let mut buf = [0; 8];
    assert_eq!(s.read(&mut buf), Err(Errno::Again));
    assert_eq!(s.read(&mut buf), Err(Errno::Again), "without asking");
    assert_eq!(n.stats(&mut buf), Ok(0), "brings an event for the stream");
    assert_eq!(s.read(&mut buf), Err(Errno::Again), "asked again");
    drop(s);
    server.join().unwrap();
    let recvs = rx
        .iter()
        .filter(|(r, _, _)| matches!(r, Request::Recv { .. }))
        .count();
    assert_eq!(recvs, 2);
}

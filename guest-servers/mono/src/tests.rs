//! [`LocalNet`] over a tcp core whose packets a test "ip" carries to a second core
//! (which runs the test's echo on that core's calls or is driven by the test); the echo
//! application (`guest-servers/echo`, unchanged) over [`LocalNet`]; the Config exchange.
extern crate std;

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use compart_channel::host::SharedMemory;
use compart_channel::{initialize, ChannelError, Endpoint, NoKick, PairConfig, PairLayout, Side};
use compart_proto::packet::{self, PacketMeta};
use compart_sockets::{Errno, Listener, Net, Peer, SockOpt, Stream, READY_WRITABLE};
use tcp::testing::EchoPeer;
use tcp::{Iface, Instant, Limits, Tcp};

use crate::{Engine, LocalNet};
use echo::Echo;

const A: [u8; 4] = [198, 18, 0, 2];
const B: [u8; 4] = [198, 18, 0, 3];

fn pair(name: &str) -> (SharedMemory, Endpoint<NoKick>, Endpoint<NoKick>) {
    let config = PairConfig::new(64, 16, 2048);
    let size = PairLayout::new(&config).unwrap().size();
    let mem = SharedMemory::create(name, size.next_multiple_of(4096)).unwrap();
    initialize(&mem.region(), &config).unwrap();
    let ip = Endpoint::attach(mem.region(), Side::A, NoKick).unwrap();
    let tcp = Endpoint::attach(mem.region(), Side::B, NoKick).unwrap();
    (mem, ip, tcp)
}

fn core(ep: Endpoint<NoKick>, address: [u8; 4], seed: u64) -> Tcp<NoKick> {
    let iface = Iface {
        address,
        prefix_len: 24,
        mtu: 1500,
        tx_checksum_offload: false,
        tso: false,
    };
    Tcp::new(ep, iface, Limits::default(), Instant::from_millis(0), seed)
}

/// The test's ip: each `Send` of one core is delivered to the other while it has
/// credit (held otherwise, so nothing is lost), and answered `Done`.
struct Wire {
    _mem: Vec<SharedMemory>,
    ip: [Endpoint<NoKick>; 2],
    held: [Option<(compart_channel::Request, PacketMeta, Vec<u8>)>; 2],
}

impl Wire {
    fn pump(&mut self) -> bool {
        let mut busy = false;
        for ep in &mut self.ip {
            while let Some(r) = ep.poll_reply().unwrap() {
                ep.free(r).unwrap();
                busy = true;
            }
        }
        for from in 0..2 {
            loop {
                let (req, meta, bytes) = match self.held[from].take() {
                    Some(h) => h,
                    None => {
                        let Some(req) = self.ip[from].poll_request().unwrap() else {
                            break;
                        };
                        let d =
                            packet::Request::decode(req.opcode(), req.is_oneway(), req.inline());
                        let Ok(packet::Request::Send(meta)) = d else {
                            panic!("tcp sends only Send: {d:?}");
                        };
                        let mut bytes = vec![0; req.payload_len()];
                        self.ip[from]
                            .read_request_payload(&req, &mut bytes)
                            .unwrap();
                        (req, meta, bytes)
                    }
                };
                let (op, w) = packet::Request::Deliver(meta).encode();
                match self.ip[1 - from].send_request(op, w, &bytes) {
                    Ok(_) => {}
                    Err(ChannelError::NoFreeRequest | ChannelError::Full) => {
                        self.held[from] = Some((req, meta, bytes));
                        break;
                    }
                    Err(e) => panic!("{e:?}"),
                }
                let (s, w) = packet::Reply::Done.encode();
                self.ip[from].reply(req, s, w, &[]).unwrap();
                busy = true;
            }
        }
        busy
    }
}

/// Core A under the `LocalNet`, core B beside it with the test's echo ([`EchoPeer`]) on
/// port 7; time advances 1 ms per idle.
struct Pair {
    a: Tcp<NoKick>,
    b: Tcp<NoKick>,
    wire: Wire,
    echo: EchoPeer,
    now: u64,
    idles: u64,
}

/// Virtual milliseconds after which a test is stuck.
const STUCK_MS: u64 = 300_000;

impl Engine for Pair {
    type Notifier = NoKick;

    fn tcp(&mut self) -> &mut Tcp<NoKick> {
        &mut self.a
    }

    fn step(&mut self) -> bool {
        let t = Instant::from_millis(self.now as i64);
        let mut busy = self.a.poll(t);
        busy |= self.wire.pump();
        busy |= self.b.poll(t);
        busy |= self.echo.step(&mut self.b);
        busy
    }

    fn idle(&mut self, deadline_ms: Option<u64>) {
        self.idles += 1;
        self.now = match deadline_ms {
            Some(d) if d > self.now => self.now + 1,
            Some(_) => self.now,
            None => self.now + 1,
        };
        assert!(self.now < STUCK_MS, "no progress in {STUCK_MS} virtual ms");
    }

    fn now_ms(&self) -> u64 {
        self.now
    }
}

fn local_pair(tag: &str) -> LocalNet<Pair> {
    let (m0, ip0, t0) = pair(&format!("mono-{tag}-a"));
    let (m1, ip1, t1) = pair(&format!("mono-{tag}-b"));
    let mut b = core(t1, B, 2);
    let echo = EchoPeer::new(&mut b, 7);
    LocalNet::new(Pair {
        a: core(t0, A, 1),
        b,
        wire: Wire {
            _mem: vec![m0, m1],
            ip: [ip0, ip1],
            held: [None, None],
        },
        echo,
        now: 0,
        idles: 0,
    })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn a_blocking_stream_is_echoed_byte_for_byte_through_the_stack_it_runs() {
    let mut net = local_pair("stream");
    let mut s = net
        .connect(Peer {
            address: B,
            port: 7,
        })
        .unwrap();
    assert_eq!(
        s.peer(),
        Peer {
            address: B,
            port: 7
        }
    );
    s.set_option(SockOpt::NoDelay(true)).unwrap();
    s.set_option(SockOpt::RecvBuffer(32 * 1024)).unwrap();
    assert_eq!(
        s.set_option(SockOpt::SendBuffer(1 << 20)),
        Err(Errno::Invalid),
        "larger than the core's buffers"
    );
    let data = pattern(1 << 20, 3);
    let mut back = vec![0; data.len()];
    for (out, inn) in data.chunks(16 * 1024).zip(back.chunks_mut(16 * 1024)) {
        s.write_all(out).unwrap();
        s.read_exact(inn).unwrap();
    }
    assert!(back == data, "the echo differs");
    s.shutdown().unwrap();
    let mut buf = [0; 8];
    assert_eq!(s.read(&mut buf), Ok(0), "the echo closes after our FIN");
    drop(s);
    // The core finishes the close in the background (through TIME-WAIT).
    for _ in 0..100_000 {
        if net.with_engine(|e| e.a.sockets_in_use()) == 0 {
            break;
        }
        net.wait(Some(net.now_ms() + 1));
    }
    assert_eq!(net.with_engine(|e| e.a.sockets_in_use()), 0);
}

#[test]
fn non_blocking_calls_say_again_and_readiness_tells_when_to_retry() {
    let mut net = local_pair("nonblock");
    let mut s = net
        .connect(Peer {
            address: B,
            port: 7,
        })
        .unwrap();
    s.set_nonblocking(true).unwrap();
    let mut buf = [0; 64];
    assert_eq!(s.read(&mut buf), Err(Errno::Again));
    assert_ne!(s.ready().unwrap() & READY_WRITABLE, 0);
    assert_eq!(s.write(b"ping"), Ok(4));
    // Nothing moves until the stack runs: wait runs it.
    let mut got = Vec::new();
    for _ in 0..1000 {
        match s.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(Errno::Again) => net.wait(Some(net.now_ms() + 10)),
            Err(e) => panic!("{e:?}"),
        }
        if got.len() == 4 {
            break;
        }
    }
    assert_eq!(got, b"ping");
}

#[test]
fn a_connect_to_a_closed_port_is_refused_and_a_taken_port_cannot_be_listened_on() {
    let mut net = local_pair("refused");
    let r = net.connect(Peer {
        address: B,
        port: 9,
    });
    assert_eq!(r.err(), Some(Errno::ConnRefused));
    let l = net.listen(5201, 2).unwrap();
    assert_eq!(net.listen(5201, 2).err(), Some(Errno::AddrInUse));
    drop(l);
    // Its listening sockets are removed at the stack's next pass.
    net.wait(Some(net.now_ms() + 1));
    net.listen(5201, 2).unwrap();
}

#[test]
fn a_listener_accepts_and_the_echo_application_serves_a_peer_core() {
    let mut net = local_pair("accept");
    let mut echo = Echo::new(&mut net, 5201, 4, 4).unwrap();
    let mut l2 = net.listen(5202, 1).unwrap();
    l2.set_nonblocking(true).unwrap();
    assert!(matches!(l2.accept(), Err(Errno::Again)));
    assert_eq!(l2.ready(), Ok(0));
    // Core B connects to the echo application on A and sends 300 KiB.
    let c = net.with_engine(|e| e.b.connect(A, 5201).unwrap());
    let data = pattern(300 * 1024, 9);
    let (mut sent, mut back) = (0, Vec::new());
    let mut buf = vec![0; 32 * 1024];
    for _ in 0..200_000 {
        let busy = echo.step();
        net.with_engine(|e| {
            if sent < data.len() {
                if let Ok(n) = e.b.send(c, &data[sent..]) {
                    sent += n;
                }
            }
            if let Ok(n) = e.b.recv(c, &mut buf) {
                back.extend_from_slice(&buf[..n]);
            }
        });
        if back.len() == data.len() {
            break;
        }
        if !busy {
            net.wait(None);
        }
    }
    assert_eq!(
        back.len(),
        data.len(),
        "echoed {} of {}",
        back.len(),
        data.len()
    );
    assert!(back == data, "the echo differs");
    assert_eq!(echo.connections(), 1);
    assert_eq!(echo.counters().bytes, data.len() as u64);
    // B closes; the application sees the end and closes its side.
    net.with_engine(|e| e.b.close(c).unwrap());
    for _ in 0..10_000 {
        let busy = echo.step();
        if echo.counters().finished == 1 {
            break;
        }
        if !busy {
            net.wait(None);
        }
    }
    assert_eq!((echo.counters().finished, echo.connections()), (1, 0));
}

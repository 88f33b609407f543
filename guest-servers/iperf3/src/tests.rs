//! The server and the client over `std::net` on loopback against stock `iperf3`
//! (`/usr/bin/iperf3`, installed by scripts/test.sh): each test uses its own port, every
//! wait is bounded, and a stock process still running when a test fails is killed.
extern crate std;

use std::process::{Child, Command, Stdio};
use std::string::{String, ToString};
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;
use std::{format, println, vec};

use compart_sockets::{Peer, StdNet};

use crate::client::{self, ClientSummary};
use crate::config::{ClientConfig, ServerConfig};
use crate::io::Io;
use crate::json::{self, Value};
use crate::server::{Server, TestSummary};
use crate::Error;

const IPERF3: &str = "iperf3";

/// A child process killed when dropped (a failed test leaves nothing running).
struct Proc(Option<Child>);

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let child = Command::new(IPERF3)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{IPERF3} cannot be started ({e}): scripts/test.sh installs it")
            });
        Proc(Some(child))
    }

    /// Its exit status and output, waiting at most `limit`.
    fn finish(mut self, limit: Duration) -> (bool, String, String) {
        let until = Instant::now() + limit;
        let mut child = self.0.take().unwrap();
        loop {
            if child.try_wait().unwrap().is_some() {
                let o = child.wait_with_output().unwrap();
                return (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                );
            }
            if Instant::now() > until {
                let _ = child.kill();
                let o = child.wait_with_output().unwrap();
                panic!(
                    "{IPERF3} still running after {limit:?}; stdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn server_config(port: u16) -> ServerConfig {
    ServerConfig {
        port,
        tests: Some(1),
        interval_ms: 0,
        timeout_ms: 10_000,
        stall_ms: 10_000,
        ..ServerConfig::default()
    }
}

/// Our server on `port` in a thread, serving `tests` tests; their outcomes and output.
fn spawn_server(
    port: u16,
    tests: usize,
) -> thread::JoinHandle<(Vec<Result<TestSummary, Error>>, String)> {
    let mut net = StdNet::default();
    let mut server = Server::listen(&mut net, server_config(port)).expect("listen");
    thread::spawn(move || {
        let mut out = String::new();
        let mut io = Io::new(&mut net);
        let r = (0..tests)
            .map(|_| server.serve_one(&mut io, &mut out))
            .collect();
        (r, out)
    })
}

/// Join `h` within `limit` (a server stuck in a test fails the test, not hangs it).
fn join<T: Send + 'static>(h: thread::JoinHandle<T>, limit: Duration) -> T {
    let until = Instant::now() + limit;
    while !h.is_finished() {
        assert!(
            Instant::now() < until,
            "the server thread did not finish in {limit:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    h.join().expect("the server thread panicked")
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for k in path {
        v = v
            .get(k)
            .unwrap_or_else(|| panic!("no {path:?} in iperf3's report"));
    }
    v.as_f64().unwrap()
}

/// Stock `iperf3 -c … -J extra` against our server; its JSON report and our summary.
fn stock_client(port: u16, extra: &[&str]) -> (Value, TestSummary, String) {
    let server = spawn_server(port, 1);
    let p = port.to_string();
    let mut args = vec!["-c", "127.0.0.1", "-p", &p, "-J"];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = Proc::spawn(&args).finish(Duration::from_secs(30));
    let (mut results, out) = join(server, Duration::from_secs(10));
    let ours = results
        .remove(0)
        .unwrap_or_else(|e| panic!("our server: {e}\n{out}"));
    assert!(
        ok,
        "iperf3 {args:?} failed:\n{stdout}\n{stderr}\nour server:\n{out}"
    );
    let report = json::parse(stdout.as_bytes()).expect("iperf3 -J prints JSON");
    assert_eq!(
        report.get("error"),
        None,
        "iperf3 reports an error: {stdout}"
    );
    (report, ours, out)
}

/// Bytes the stock client's report gives for its own side and for ours.
fn sums(report: &Value) -> (u64, u64) {
    let sent = num(report, &["end", "sum_sent", "bytes"]);
    let received = num(report, &["end", "sum_received", "bytes"]);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (sent as u64, received as u64)
}

fn gbits(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e9
}

#[test]
fn stock_client_sends_to_our_server() {
    let (report, ours, out) = stock_client(25_201, &["-t", "2"]);
    let (sent, received) = sums(&report);
    assert!(!ours.sending && sent > 0);
    assert_eq!(
        received,
        ours.bytes(),
        "iperf3's receiver line is our count"
    );
    // What the client wrote before TEST_END, less at most what was in flight.
    assert!(
        ours.bytes() <= sent && ours.bytes() >= sent / 10 * 9,
        "sent {sent}, we got {}",
        ours.bytes()
    );
    assert_eq!(
        ours.client.streams[0].bytes, sent,
        "the client's results say what it sent"
    );
    assert!(out.contains("receiver"), "{out}");
    println!(
        "stock -c → our -s: {:.2} Gbit/s",
        gbits(received, ours.secs)
    );
}

#[test]
fn stock_client_receives_from_our_server_in_reverse() {
    let (report, ours, _) = stock_client(25_202, &["-t", "2", "-R"]);
    let (sent, received) = sums(&report);
    assert!(ours.sending);
    assert_eq!(sent, ours.bytes(), "iperf3's sender line is our count");
    assert!(
        received > 0 && received <= sent && received >= sent / 10 * 9,
        "sent {sent}, received {received}"
    );
    println!(
        "stock -c -R ← our -s: {:.2} Gbit/s",
        gbits(received, ours.secs)
    );
}

#[test]
fn stock_client_runs_four_parallel_streams() {
    let (report, ours, out) = stock_client(25_203, &["-t", "2", "-P", "4"]);
    let streams = report
        .get("end")
        .and_then(|e| e.get("streams"))
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(streams.len(), 4);
    assert_eq!(
        ours.streams.iter().map(|s| s.0).collect::<Vec<_>>(),
        [1, 3, 4, 5]
    );
    for (s, ours) in streams.iter().zip(&ours.streams) {
        let received = num(s, &["receiver", "bytes"]);
        assert!(received > 0.0);
        assert_eq!(received as u64, ours.1);
    }
    assert!(out.contains("[SUM]"), "{out}");
    let (_, received) = sums(&report);
    println!(
        "stock -c -P 4 → our -s: {:.2} Gbit/s",
        gbits(received, ours.secs)
    );
}

#[test]
fn stock_client_sends_an_amount_exactly() {
    let (report, ours, _) = stock_client(25_204, &["-n", "10M"]);
    let (sent, received) = sums(&report);
    assert_eq!(
        (sent, received, ours.bytes()),
        (10 << 20, 10 << 20, 10 << 20)
    );
    assert_eq!(ours.params.amount(), Some(10 << 20));
}

#[test]
fn our_server_sends_an_amount_exactly_in_reverse() {
    let (report, ours, _) = stock_client(25_205, &["-n", "10M", "-R", "-P", "2"]);
    let (sent, received) = sums(&report);
    assert_eq!(
        (sent, received, ours.bytes()),
        (10 << 20, 10 << 20, 10 << 20)
    );
}

#[test]
fn our_server_gives_stock_client_its_output_when_asked() {
    let (report, _, _) = stock_client(25_206, &["-t", "1", "--get-server-output"]);
    let text = report
        .get("server_output_text")
        .and_then(Value::as_str)
        .expect("server_output_text");
    assert!(
        text.contains("receiver") && text.contains("CPU Utilization"),
        "{text}"
    );
}

#[test]
fn our_server_refuses_udp_with_iperfs_error_and_serves_the_next_client() {
    let server = spawn_server(25_207, 2);
    let (ok, stdout, stderr) = Proc::spawn(&["-c", "127.0.0.1", "-p", "25207", "-u", "-t", "1"])
        .finish(Duration::from_secs(20));
    assert!(!ok, "UDP was accepted: {stdout}");
    assert!(
        format!("{stdout}{stderr}").contains("not implemented"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, stderr) =
        Proc::spawn(&["-c", "127.0.0.1", "-p", "25207", "-t", "1"]).finish(Duration::from_secs(20));
    assert!(ok, "{stdout}{stderr}");
    let (results, _) = join(server, Duration::from_secs(10));
    assert_eq!(
        results[0].as_ref().unwrap_err(),
        &Error::Refused("the parameters", crate::proto::IEUNIMP)
    );
    assert!(results[1].as_ref().unwrap().bytes() > 0);
}

#[test]
fn a_second_client_during_a_test_is_told_the_server_is_busy() {
    let server = spawn_server(25_208, 1);
    let first = Proc::spawn(&["-c", "127.0.0.1", "-p", "25208", "-t", "3"]);
    thread::sleep(Duration::from_millis(1000));
    let (ok, stdout, stderr) =
        Proc::spawn(&["-c", "127.0.0.1", "-p", "25208", "-t", "1"]).finish(Duration::from_secs(10));
    assert!(!ok);
    assert!(
        format!("{stdout}{stderr}").contains("busy"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, stderr) = first.finish(Duration::from_secs(20));
    assert!(ok, "the first test was disturbed: {stdout}{stderr}");
    let (results, _) = join(server, Duration::from_secs(10));
    assert!(results[0].is_ok());
}

#[test]
fn hostile_control_messages_are_refused_and_the_server_goes_on() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let server = spawn_server(25_209, 3);
    let cookie = [b'a'; 36].iter().copied().chain([0]).collect::<Vec<u8>>();
    // A parameter message longer than iperf3 allows.
    let mut c = TcpStream::connect("127.0.0.1:25209").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&cookie).unwrap();
    let mut state = [0u8; 1];
    c.read_exact(&mut state).unwrap();
    assert_eq!(state[0] as i8, crate::proto::PARAM_EXCHANGE);
    c.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut err = [0u8; 9];
    c.read_exact(&mut err).unwrap();
    assert_eq!(err[0] as i8, crate::proto::SERVER_ERROR);
    assert_eq!(
        i32::from_be_bytes(err[1..5].try_into().unwrap()),
        crate::proto::IERECVPARAMS
    );
    drop(c);
    // Parameters that are not JSON.
    let mut c = TcpStream::connect("127.0.0.1:25209").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&cookie).unwrap();
    c.read_exact(&mut state).unwrap();
    c.write_all(&5u32.to_be_bytes()).unwrap();
    c.write_all(b"{[[[[").unwrap();
    c.read_exact(&mut err).unwrap();
    assert_eq!(err[0] as i8, crate::proto::SERVER_ERROR);
    drop(c);
    // Then a real client is served.
    let (ok, stdout, stderr) =
        Proc::spawn(&["-c", "127.0.0.1", "-p", "25209", "-t", "1"]).finish(Duration::from_secs(20));
    assert!(ok, "{stdout}{stderr}");
    let (results, _) = join(server, Duration::from_secs(10));
    assert!(
        matches!(results[0], Err(Error::TooLong { .. })),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(Error::Json(..))),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok());
}

/// Stock `iperf3 -s -1 -J` on `port`, our client with `line`; our summary, its report.
fn against_stock_server(port: u16, line: &str) -> (ClientSummary, Value, String) {
    let p = port.to_string();
    let server = Proc::spawn(&["-s", "-1", "-J", "-p", &p]);
    let crate::Config::Client(cfg) =
        crate::Config::parse(&format!("mode=client server=127.0.0.1 port={port} {line}")).unwrap()
    else {
        panic!("not a client line")
    };
    let cfg = ClientConfig {
        timeout_ms: 10_000,
        stall_ms: 10_000,
        ..cfg
    };
    let mut net = StdNet::default();
    let mut out = String::new();
    // The stock server needs a moment to listen.
    let until = Instant::now() + Duration::from_secs(5);
    let summary = loop {
        match client::run(&mut net, &cfg, port.into(), &mut out) {
            Err(Error::Net(_, compart_sockets::Errno::ConnRefused)) if Instant::now() < until => {
                thread::sleep(Duration::from_millis(50));
            }
            r => break r,
        }
    };
    let (ok, stdout, stderr) = server.finish(Duration::from_secs(20));
    let summary = summary
        .unwrap_or_else(|e| panic!("our client: {e}\n{out}\nstock server:\n{stdout}{stderr}"));
    assert!(ok, "{stdout}{stderr}");
    let report = json::parse(stdout.as_bytes()).expect("iperf3 -J prints JSON");
    assert_eq!(
        report.get("error"),
        None,
        "iperf3 reports an error: {stdout}"
    );
    (summary, report, out)
}

#[test]
fn our_client_sends_to_stock_server() {
    let (ours, report, out) = against_stock_server(25_211, "time=2 interval=1");
    let (_, received) = sums(&report);
    assert!(ours.sending && ours.sent() > 0);
    assert_eq!(
        ours.received(),
        received,
        "the server's results are its count"
    );
    assert!(
        received <= ours.sent() && received >= ours.sent() / 10 * 9,
        "sent {}, received {received}",
        ours.sent()
    );
    assert!(
        out.contains("sender") && out.contains("receiver") && out.contains("iperf Done."),
        "{out}"
    );
    assert!(out.contains("  1.00-"), "interval lines: {out}");
    println!(
        "our -c → stock -s: {:.2} Gbit/s\n{out}",
        gbits(received, ours.secs)
    );
}

#[test]
fn our_client_receives_from_stock_server_in_reverse() {
    let (ours, report, out) = against_stock_server(25_212, "time=2 reverse=true interval=0");
    let (sent, _) = sums(&report);
    assert!(!ours.sending);
    assert_eq!(ours.sent(), sent);
    assert!(
        ours.received() > 0 && ours.received() <= sent && ours.received() >= sent / 10 * 9,
        "sent {sent}, received {}",
        ours.received()
    );
    println!(
        "our -c -R ← stock -s: {:.2} Gbit/s\n{out}",
        gbits(ours.received(), ours.secs)
    );
}

#[test]
fn our_client_runs_two_streams_each_way() {
    for (port, line) in [
        (25_213, "time=1 parallel=2 interval=0"),
        (25_214, "time=1 parallel=2 reverse=true interval=0"),
    ] {
        let (ours, report, out) = against_stock_server(port, line);
        assert_eq!(ours.streams.len(), 2);
        assert_eq!(ours.server.streams.len(), 2);
        assert!(ours.streams.iter().all(|s| s.1 > 0), "{out}");
        assert!(out.contains("[SUM]"), "{out}");
        let streams = report
            .get("end")
            .and_then(|e| e.get("streams"))
            .and_then(Value::as_array)
            .unwrap();
        assert_eq!(streams.len(), 2);
    }
}

#[test]
fn our_client_sends_an_amount_exactly_and_the_stock_server_counts_what_it_read() {
    let (ours, report, _) = against_stock_server(25_215, "bytes=10M parallel=2 interval=0");
    assert_eq!(ours.sent(), 10 << 20);
    // A stock server closes its streams at TEST_END, dropping what it has not read yet
    // (as it does with a stock client), so it may count less.
    let (_, received) = sums(&report);
    assert_eq!(ours.received(), received);
    assert!(received > 0 && received <= 10 << 20, "{received}");
}

#[test]
fn our_client_is_told_the_test_is_refused() {
    // Our server, limited to 2 streams, refuses 3 with iperf3's error; our client says so.
    let mut net = StdNet::default();
    let mut server = Server::listen(
        &mut net,
        ServerConfig {
            max_streams: 2,
            ..server_config(25_216)
        },
    )
    .unwrap();
    let h = thread::spawn(move || {
        let mut out = String::new();
        let mut io = Io::new(&mut net);
        server.serve_one(&mut io, &mut out)
    });
    let mut cfg = ClientConfig::new(Peer {
        address: [127, 0, 0, 1],
        port: 25_216,
    });
    cfg.params.parallel = 3;
    cfg.params.time = 1;
    cfg.interval_ms = 0;
    let mut out = String::new();
    let e = client::run(&mut StdNet::default(), &cfg, 1, &mut out).unwrap_err();
    assert_eq!(
        e,
        Error::ServerError {
            code: crate::proto::IENUMSTREAMS,
            errno: 0
        }
    );
    assert!(e.to_string().contains("parallel streams"));
    assert!(join(h, Duration::from_secs(10)).is_err());
}

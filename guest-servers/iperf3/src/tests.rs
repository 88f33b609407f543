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
use crate::proto::CLIENT_TERMINATE;
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
    // The -J report's CPU lines come from both sides' results.
    assert!(num(&report, &["end", "cpu_utilization_percent", "remote_total"]) >= 0.0);
    assert!(num(&report, &["end", "cpu_utilization_percent", "host_total"]) > 0.0);
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
fn our_server_refuses_what_it_cannot_do_with_iperfs_errors_and_serves_the_next_client() {
    use crate::proto::{IESETMSS, IEUNIMP};
    let refused: [(&[&str], &str, i32); 3] = [
        (&["-u"], "not implemented", IEUNIMP),
        (&["--bidir"], "not implemented", IEUNIMP),
        (&["-M", "1200"], "MSS", IESETMSS),
    ];
    let server = spawn_server(25_207, refused.len() + 1);
    for (extra, says, _) in refused {
        let mut args = vec!["-c", "127.0.0.1", "-p", "25207", "-t", "1"];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = Proc::spawn(&args).finish(Duration::from_secs(20));
        assert!(!ok, "{extra:?} was accepted: {stdout}");
        assert!(
            format!("{stdout}{stderr}").contains(says),
            "{extra:?}: {stdout}{stderr}"
        );
    }
    let (ok, stdout, stderr) =
        Proc::spawn(&["-c", "127.0.0.1", "-p", "25207", "-t", "1"]).finish(Duration::from_secs(20));
    assert!(ok, "{stdout}{stderr}");
    let (results, _) = join(server, Duration::from_secs(10));
    for (r, (extra, _, code)) in results.iter().zip(refused) {
        assert_eq!(
            r.as_ref().unwrap_err(),
            &Error::Refused("the parameters", code),
            "{extra:?}"
        );
    }
    assert!(results[refused.len()].as_ref().unwrap().bytes() > 0);
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

#[test]
fn our_server_paces_a_reverse_test_to_the_clients_bitrate() {
    let (report, ours, _) = stock_client(25_217, &["-t", "2", "-R", "-b", "200M"]);
    assert_eq!(ours.params.bandwidth, 200_000_000);
    let bps = num(&report, &["end", "sum_received", "bits_per_second"]);
    assert!(
        (150e6..230e6).contains(&bps),
        "{bps} bit/s for a 200 Mbit/s limit"
    );
}

#[test]
fn our_client_paces_to_its_bitrate() {
    let (ours, _, _) = against_stock_server(25_218, "time=2 bitrate=200M interval=0");
    let bps = ours.sent() as f64 * 8.0 / ours.secs;
    assert!(
        (150e6..230e6).contains(&bps),
        "{bps} bit/s for a 200 Mbit/s limit"
    );
}

#[test]
fn our_server_takes_the_stock_clients_options_and_leaves_the_omitted_start_out() {
    let (report, ours, _) = stock_client(
        25_219,
        &["-t", "2", "-O", "1", "-w", "256K", "-N", "-l", "64K"],
    );
    let p = &ours.params;
    assert_eq!(
        (p.time, p.omit, p.window, p.nodelay, p.len),
        (2, 1, 262_144, true, 65_536)
    );
    // Counted: the 2 s after the omitted second.
    assert!((1.9..2.5).contains(&ours.secs), "{} s counted", ours.secs);
    let (_, received) = sums(&report);
    assert_eq!(received, ours.bytes());
    assert!(received > 0);
}

/// A one-connection-at-a-time fake server on `port`, running `script` on a listener.
fn fake_server(
    port: u16,
    script: impl FnOnce(std::net::TcpListener) + Send + 'static,
) -> thread::JoinHandle<()> {
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    thread::spawn(move || script(l))
}

fn client_against(port: u16, time: u32) -> Result<ClientSummary, Error> {
    let mut cfg = ClientConfig::new(Peer {
        address: [127, 0, 0, 1],
        port,
    });
    cfg.params.time = time;
    cfg.interval_ms = 0;
    cfg.timeout_ms = 5000;
    client::run(&mut StdNet::default(), &cfg, 7, &mut String::new())
}

#[test]
fn our_client_reports_a_busy_server_and_one_that_breaks_the_protocol() {
    use std::io::{Read, Write};
    let reply_after_cookie = |byte: u8| {
        move |l: std::net::TcpListener| {
            let (mut c, _) = l.accept().unwrap();
            let mut cookie = [0u8; 37];
            c.read_exact(&mut cookie).unwrap();
            assert_eq!(cookie[36], 0);
            c.write_all(&[byte]).unwrap();
        }
    };
    let h = fake_server(
        25_220,
        reply_after_cookie(crate::proto::ACCESS_DENIED as u8),
    );
    assert_eq!(client_against(25_220, 1).unwrap_err(), Error::AccessDenied);
    h.join().unwrap();
    let h = fake_server(25_221, reply_after_cookie(77));
    assert_eq!(
        client_against(25_221, 1).unwrap_err(),
        Error::Unexpected {
            expected: "PARAM_EXCHANGE",
            got: 77
        }
    );
    h.join().unwrap();

    // A server that plays the test through, then announces 4 GiB of results.
    let h = fake_server(25_222, |l| {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 37];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&[crate::proto::PARAM_EXCHANGE as u8]).unwrap();
        let mut len = [0u8; 4];
        c.read_exact(&mut len).unwrap();
        let mut params = vec![0u8; u32::from_be_bytes(len) as usize];
        c.read_exact(&mut params).unwrap();
        assert!(json::parse(&params).is_ok());
        c.write_all(&[crate::proto::CREATE_STREAMS as u8]).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.read_exact(&mut buf).unwrap();
        c.write_all(&[
            crate::proto::TEST_START as u8,
            crate::proto::TEST_RUNNING as u8,
        ])
        .unwrap();
        let mut state = [0u8; 1];
        c.read_exact(&mut state).unwrap();
        assert_eq!(state[0] as i8, crate::proto::TEST_END);
        c.write_all(&[crate::proto::EXCHANGE_RESULTS as u8])
            .unwrap();
        c.read_exact(&mut len).unwrap();
        let mut results = vec![0u8; u32::from_be_bytes(len) as usize];
        c.read_exact(&mut results).unwrap();
        assert!(crate::proto::Results::from_json(&json::parse(&results).unwrap()).is_ok());
        c.write_all(&u32::MAX.to_be_bytes()).unwrap();
        // Our client gives up on the test and says so.
        c.read_exact(&mut state).unwrap();
        assert_eq!(state[0] as i8, CLIENT_TERMINATE);
        drop(s);
    });
    let e = client_against(25_222, 1).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooLong {
                what: "the server's results",
                ..
            }
        ),
        "{e}"
    );
    h.join().unwrap();
}

#[test]
fn a_client_interrupted_or_killed_mid_test_frees_our_server_at_once() {
    let server = spawn_server(25_223, 2);
    for signal in ["-INT", "-KILL"] {
        let p = Proc::spawn(&["-c", "127.0.0.1", "-p", "25223", "-t", "30"]);
        thread::sleep(Duration::from_millis(1500));
        let pid = p.0.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
        let _ = p.finish(Duration::from_secs(5));
    }
    // Both tests ended within seconds, not at the 30 s they asked for.
    let (results, out) = join(server, Duration::from_secs(10));
    assert_eq!(
        results[0].as_ref().unwrap_err(),
        &Error::ClientTerminated,
        "{out}"
    );
    assert!(
        matches!(results[1], Err(Error::Closed(_) | Error::Net(..))),
        "{:?}\n{out}",
        results[1]
    );
}

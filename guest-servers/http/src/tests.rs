//! The parser on good, bad and hostile heads; the server over loopback (`StdNet`)
//! driven by stock curl.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use compart_sockets::StdNet;
use proptest::prelude::*;

use super::*;

fn complete(buf: &[u8]) -> (Request<'_>, usize) {
    match parse::parse(buf) {
        Parsed::Complete { request, len } => (request, len),
        other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
    }
}

fn invalid(buf: &[u8]) -> Status {
    match parse::parse(buf) {
        Parsed::Invalid(s) => s,
        other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
    }
}

#[test]
fn a_get_with_host_parses_and_keeps_the_connection() {
    let (r, len) = complete(b"GET /status HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\nGET /");
    assert_eq!(r.method, Method::Get);
    assert_eq!(r.target, b"/status");
    assert_eq!(r.minor, 1);
    assert!(r.keep_alive);
    assert!(!r.has_body);
    assert_eq!(len, 46);
}

#[test]
fn connection_close_and_http_1_0_end_the_connection_unless_kept_alive() {
    let (r, _) = complete(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, CLOSE\r\n\r\n");
    assert_eq!(r.method, Method::Head);
    assert!(!r.keep_alive);
    assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
    assert!(
        complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .0
            .keep_alive
    );
}

#[test]
fn a_head_not_yet_complete_asks_for_more() {
    for part in [
        &b""[..],
        b"GET",
        b"GET / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r",
    ] {
        assert_eq!(parse::parse(part), Parsed::Incomplete);
    }
}

#[test]
fn malformed_heads_are_400() {
    for bad in [
        &b"GET /  HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / FTP/1.1\r\nHost: a\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ] {
        assert_eq!(
            invalid(bad),
            Status::BadRequest,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        invalid(b"GET / HTTP/2.0\r\n\r\n"),
        Status::VersionNotSupported
    );
}

#[test]
fn a_long_request_line_is_414_and_long_headers_are_431() {
    let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(parse::MAX_REQUEST_LINE));
    assert_eq!(invalid(long_target.as_bytes()), Status::UriTooLong);
    let mut big = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    while big.len() < parse::MAX_HEAD {
        big.push_str("X-Filler: 0123456789abcdef0123456789abcdef\r\n");
    }
    assert_eq!(invalid(big.as_bytes()), Status::HeadersTooLarge);
    big.push_str("\r\n");
    assert_eq!(invalid(big.as_bytes()), Status::HeadersTooLarge);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..parse::MAX_HEADERS {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(invalid(many.as_bytes()), Status::HeadersTooLarge);
}

#[test]
fn a_request_with_a_body_is_read_as_closing() {
    let (r, _) = complete(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(r.method, Method::Other);
    assert!(r.has_body && !r.keep_alive);
    let (r, _) = complete(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(r.has_body && !r.keep_alive);
}

proptest! {
    #[test]
    fn any_bytes_parse_without_panicking_and_within_bounds(
        bytes in proptest::collection::vec(any::<u8>(), 0..12_000)
    ) {
        match parse::parse(&bytes) {
            Parsed::Complete { len, .. } => prop_assert!(len <= parse::MAX_HEAD && len <= bytes.len()),
            Parsed::Incomplete => prop_assert!(bytes.len() < parse::MAX_HEAD),
            Parsed::Invalid(_) => {}
        }
    }

    #[test]
    fn a_mutated_request_parses_without_panicking(
        at in 0usize..60, byte in any::<u8>(), cut in 0usize..70
    ) {
        let mut req = b"GET /bytes/10 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec();
        let at = at % req.len();
        req[at] = byte;
        req.truncate(cut.min(req.len()));
        let _ = parse::parse(&req);
    }

    #[test]
    fn every_prefix_of_a_head_is_incomplete(cut in 0usize..49) {
        let req = b"GET /status HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        prop_assert_eq!(parse::parse(&req[..cut.min(req.len() - 1)]), Parsed::Incomplete);
    }
}

#[test]
fn the_pattern_repeats_every_251_bytes() {
    let t = pattern_table();
    assert_eq!(t.len(), CHUNK + 251);
    assert_eq!((t[0], t[250], t[251], t[300]), (0, 250, 0, 49));
}

/// A server on loopback in a thread, stopped when dropped.
struct Running {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Counters>>,
}

impl Running {
    fn start(config: Config) -> Running {
        // A free port: the kernel's pick, released for the server to take.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let stats = |_: &mut StdNet, s: &mut String| s.push_str("host loopback (std::net)");
            let mut srv =
                Server::new(StdNet::default(), Config { port, ..config }, stats).expect("listen");
            ready_tx.send(()).unwrap();
            srv.run(|_| flag.load(Ordering::Relaxed));
            srv.counters().clone()
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server up");
        Running {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stop(mut self) -> Counters {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// curl with `args`, at most 120 s; its stdout, or a panic with its stderr.
fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "120"])
        .args(args)
        .output()
        .expect("curl runs (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256(bytes: impl FnOnce(&mut dyn Write)) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    bytes(child.stdin.as_mut().unwrap());
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn curl_reads_the_status_page_with_the_stacks_counters() {
    let srv = Running::start(Config::default());
    let page = String::from_utf8(curl(&[&srv.url("/status")])).unwrap();
    assert!(page.starts_with("compart http server\n"), "{page}");
    assert!(page.contains("http: accepted=1 "), "{page}");
    assert!(page.contains("stack: host loopback (std::net)\n"), "{page}");
    let again = String::from_utf8(curl(&[&srv.url("/")])).unwrap();
    assert!(again.contains("http: accepted=2 "), "{again}");
    let c = srv.stop();
    assert_eq!((c.requests, c.ok, c.errors), (2, 2, 0));
}

#[test]
fn curl_downloads_100_mib_whose_sha256_is_the_patterns() {
    let srv = Running::start(Config::default());
    let got = sha256(|w| {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--max-time", "120"])
            .arg(srv.url("/body"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
            .wait_with_output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 100 << 20);
        w.write_all(&out.stdout).unwrap();
    });
    let want = sha256(|w| {
        let t = pattern_table();
        let mut left = 100usize << 20;
        let mut off = 0;
        while left > 0 {
            let n = left.min(CHUNK);
            w.write_all(&t[off % 251..off % 251 + n]).unwrap();
            off += n;
            left -= n;
        }
    });
    assert_eq!(got, want);
    let c = srv.stop();
    assert!(c.bytes_out > 100 << 20);
}

#[test]
fn bytes_n_is_exactly_n_bytes_of_the_pattern_and_head_has_no_body() {
    let srv = Running::start(Config::default());
    for n in [0u64, 1, 250, 251, 65_536, 70_001] {
        let body = curl(&["--fail", &srv.url(&format!("/bytes/{n}"))]);
        assert_eq!(body.len() as u64, n);
        assert!(body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(i as u64)));
    }
    let head = String::from_utf8(curl(&["--head", &srv.url("/bytes/12345")])).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: 12345\r\n"), "{head}");
    // Two URLs on one curl: the second reuses the connection (keep-alive).
    let two = curl(&[&srv.url("/bytes/10"), &srv.url("/bytes/20")]);
    assert_eq!(two.len(), 30);
    let c = srv.stop();
    assert_eq!(c.accepted, 6 + 1 + 1, "{c}");
}

#[test]
fn curl_parallel_200_urls_over_50_connections_are_all_200() {
    let srv = Running::start(Config::default());
    let urls: Vec<String> = (0..200)
        .map(|i| srv.url(&format!("/bytes/{}", i * 100)))
        .collect();
    let mut args = vec![
        "--parallel",
        "--parallel-max",
        "50",
        "--write-out",
        "%{http_code}\\n",
        "--output",
        "/dev/null",
    ];
    // One --output per URL: `-o /dev/null` for each.
    let mut pairs = Vec::new();
    for u in &urls {
        pairs.push(u.as_str());
    }
    for _ in 1..urls.len() {
        args.extend(["--output", "/dev/null"]);
    }
    args.extend(pairs);
    let out = String::from_utf8(curl(&args)).unwrap();
    let codes: Vec<&str> = out.lines().collect();
    assert_eq!(codes.len(), 200, "{out}");
    assert!(codes.iter().all(|&c| c == "200"), "{out}");
    let c = srv.stop();
    assert_eq!((c.requests, c.ok), (200, 200), "{c}");
    assert!(c.accepted > 1, "{c}");
}

/// Sends `request` on a fresh connection; the whole response (the server closes).
fn raw(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn bad_requests_get_their_status_and_the_connection_closes() {
    let srv = Running::start(Config::default());
    let p = srv.port;
    assert!(raw(p, b"GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400 Bad Request\r\n"));
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(5000));
    assert!(raw(p, long.as_bytes()).starts_with("HTTP/1.1 414 "));
    let mut big = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    while big.len() < 10_000 {
        big.push_str("X-A: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n");
    }
    assert!(raw(p, big.as_bytes()).starts_with("HTTP/1.1 431 "));
    let post = raw(
        p,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
    // Pipelined: a 404 keeps the connection, the next request is answered, then close.
    let two = raw(
        p,
        b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes/3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(two.starts_with("HTTP/1.1 404 Not Found\r\n"), "{two}");
    assert!(
        two.ends_with("Connection: close\r\n\r\n\x00\x01\x02"),
        "{two}"
    );
    let code = curl(&[
        "--write-out",
        "%{http_code}",
        "--output",
        "/dev/null",
        &srv.url("/x"),
    ]);
    assert_eq!(code, b"404");
    let c = srv.stop();
    assert_eq!((c.bad, c.not_found, c.ok), (3, 3, 1), "{c}");
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_time() {
    let srv = Running::start(Config {
        idle_ms: 300,
        ..Config::default()
    });
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HT").unwrap();
    let mut out = Vec::new();
    assert_eq!(s.read_to_end(&mut out).unwrap(), 0);
    let c = srv.stop();
    assert_eq!((c.timed_out, c.closed), (1, 1), "{c}");
}

#[test]
fn a_trickled_head_and_an_endless_body_after_close_are_cut_off() {
    let srv = Running::start(Config {
        idle_ms: 500,
        ..Config::default()
    });
    let trickle = |first: &[u8]| {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, srv.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s.write_all(first).unwrap();
        let start = std::time::Instant::now();
        let mut got = Vec::new();
        // One byte every 100 ms (never idle for 500 ms), past the server's FIN, until
        // the server has closed (a write or read then fails, or the read ends).
        let mut eof = false;
        while start.elapsed() < Duration::from_secs(10) {
            if s.write_all(b"X").is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(0) if eof => {}
                Ok(0) => eof = true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (start.elapsed(), String::from_utf8_lossy(&got).into_owned())
    };
    let (took, got) = trickle(b"GET / HTTP/1.1\r\nX-Slow: ");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(got, "");
    let (took, got) = trickle(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(got.starts_with("HTTP/1.1 405 "), "{got}");
    let c = srv.stop();
    assert_eq!((c.timed_out, c.closed), (2, 2), "{c}");
}

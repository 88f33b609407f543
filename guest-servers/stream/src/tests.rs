//! Arguments, the report's arithmetic, and transfers over loopback to a std listener and
//! to stock `nc -l`.
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compart_sockets::StdNet;

use super::*;

fn config(line: &str) -> Result<Config, String> {
    Config::from_args(&Args::new(line))
}

#[test]
fn arguments_need_a_server_and_take_time_or_bytes() {
    let c = config("server=198.18.0.1 port=5001 bytes=1000").unwrap();
    assert_eq!(
        c.server,
        Peer {
            address: [198, 18, 0, 1],
            port: 5001
        }
    );
    assert_eq!((c.limit, c.block), (Limit::Bytes(1000), 16384));
    assert_eq!(
        config("server=1.2.3.4 port=1").unwrap().limit,
        Limit::Millis(10_000)
    );
    assert_eq!(
        config("server=1.2.3.4 port=1 time=3 block=64")
            .unwrap()
            .block,
        65536
    );
    for bad in [
        "port=1",
        "server=1.2.3 port=1",
        "server=1.2.3.256 port=1",
        "server=1.2.3.4",
        "server=1.2.3.4 port=1 time=1 bytes=1",
        "server=1.2.3.4 port=1 block=0",
    ] {
        assert!(config(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_report_gives_megabits_per_second() {
    let r = Report {
        bytes: 125_000_000,
        ms: 1000,
        acknowledged: true,
    };
    assert_eq!(r.mbit_per_s(), 1000);
    assert_eq!(r.to_string(), "125000000 bytes in 1.000 s: 1000 Mbit/s");
    assert_eq!(
        Report {
            bytes: 1,
            ms: 0,
            acknowledged: false
        }
        .mbit_per_s(),
        0
    );
}

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[test]
fn bytes_n_sends_exactly_n_bytes_and_the_close_acknowledges_them() {
    let (l, port) = listener();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut total = 0u64;
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf).unwrap() {
                0 => return total,
                n => total += n as u64,
            }
        }
    });
    let c = config(&format!("server=127.0.0.1 port={port} bytes=10000001")).unwrap();
    let r = run(&mut StdNet::default(), &c, |_| {}).unwrap();
    assert_eq!(sink.join().unwrap(), 10_000_001);
    assert_eq!(r.bytes, 10_000_001);
    assert!(r.acknowledged);
}

#[test]
fn time_s_sends_for_that_long_with_interval_reports() {
    let (l, port) = listener();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        std::io::copy(&mut s, &mut std::io::sink()).unwrap()
    });
    let c = config(&format!("server=127.0.0.1 port={port} time=2")).unwrap();
    let t = Instant::now();
    let mut intervals = Vec::new();
    let r = run(&mut StdNet::default(), &c, |r| intervals.push(*r)).unwrap();
    let took = t.elapsed();
    assert_eq!(sink.join().unwrap(), r.bytes);
    assert!((2000..5000).contains(&r.ms), "{r}");
    assert!(took < Duration::from_secs(10));
    assert_eq!(intervals.len(), 1, "{intervals:?}");
    assert!(intervals[0].bytes > 0 && intervals[0].bytes < r.bytes);
}

#[test]
fn a_refused_connection_is_an_error() {
    let (l, port) = listener();
    drop(l);
    let c = config(&format!("server=127.0.0.1 port={port} bytes=1")).unwrap();
    assert_eq!(
        run(&mut StdNet::default(), &c, |_| {}),
        Err(Error::Connect(Errno::ConnRefused))
    );
}

#[test]
fn stock_nc_receives_every_byte() {
    let (l, port) = listener();
    drop(l);
    // OpenBSD nc: -N is not needed to receive; it exits when the sender closes.
    let mut nc = Command::new("nc")
        .args(["-l", "127.0.0.1", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("nc runs (apt-get install netcat-openbsd)");
    let mut out = nc.stdout.take().unwrap();
    let counter =
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()).unwrap());
    let c = config(&format!(
        "server=127.0.0.1 port={port} bytes=5000000 linger=5000"
    ))
    .unwrap();
    let mut net = StdNet::default();
    let t = Instant::now();
    let r = loop {
        match run(&mut net, &c, |_| {}) {
            Err(Error::Connect(Errno::ConnRefused)) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(r.bytes, 5_000_000);
    assert_eq!(counter.join().unwrap(), 5_000_000);
    let _ = nc.kill();
    let _ = nc.wait();
}

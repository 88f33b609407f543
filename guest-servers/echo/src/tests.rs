//! The echo logic over std::net on loopback, against many clients at once.
extern crate std;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

use compart_sockets::StdNet;

use super::Echo;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Send `data` (with a half-close after it) and read everything back.
fn client(port: u16, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let data = data.to_vec();
    let writer = thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

/// The service in a thread until the returned flag is set.
fn serve(port: u16, max_conns: usize) -> (Arc<AtomicBool>, thread::JoinHandle<super::Counters>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = thread::spawn(move || {
        let mut net = StdNet::default();
        let mut echo = Echo::new(&mut net, port, 64, max_conns).unwrap();
        ready_tx.send(()).unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        echo.run(&mut net, |_| {
            flag.load(Ordering::Relaxed) || Instant::now() > until
        });
        echo.counters()
    });
    ready_rx.recv().unwrap();
    (stop, h)
}

#[test]
fn every_connection_gets_its_own_bytes_back_and_an_end_of_stream() {
    let port = free_port();
    let (stop, server) = serve(port, 64);
    let clients: Vec<_> = (0..40u32)
        .map(|k| {
            thread::spawn(move || {
                let data: Vec<u8> = (0..50_000u32 + k * 977)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13 ^ k) as u8)
                    .collect();
                assert_eq!(client(port, &data), data, "connection {k}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let c = server.join().unwrap();
    assert_eq!((c.accepted, c.finished, c.failed), (40, 40, 0));
}

#[test]
fn connections_beyond_the_limit_wait_in_the_backlog_and_are_served_later() {
    let port = free_port();
    let (stop, server) = serve(port, 2);
    let clients: Vec<_> = (0..6u8)
        .map(|k| thread::spawn(move || assert_eq!(client(port, &[k; 3000]), [k; 3000])))
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(server.join().unwrap().finished, 6);
}

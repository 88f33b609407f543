//! A temporary echo service inside the tcp server (`echo=PORT` on the image's command
//! line), the proof that the stack carries streams until the posix server and apps
//! exist. It uses only the core's socket calls, as posix will.
//!
//! Its outbound twin (`connect=A.B.C.D:PORT`, [`Echo::connect`]), a test service too:
//! one connection opened from the stack, that sends [`GREETING`] and then echoes what
//! the peer sends, so that tests can check a connection the stack opens (through pf's
//! `out` rules and its connection table).
use alloc::vec;
use alloc::vec::Vec;

use compart_channel::Notifier;

use crate::core::{Error, Handle, Tcp};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;

/// What [`Echo::connect`]'s connection sends first.
pub const GREETING: &[u8] = b"hello from compart\n";

/// An echo server on one port: what each connection sends comes back to it.
#[derive(Debug)]
pub struct Echo {
    /// `None` for [`Echo::connect`]'s one outbound connection.
    listener: Option<Handle>,
    /// Connections, and bytes read but not yet sent back.
    conns: Vec<(Handle, Vec<u8>)>,
    buf: Vec<u8>,
}

impl Echo {
    /// Listen on `port`.
    pub fn new<N: Notifier>(tcp: &mut Tcp<N>, port: u16) -> Result<Echo, Error> {
        Ok(Echo {
            listener: Some(tcp.listen(port, 2)?),
            conns: Vec::new(),
            buf: vec![0; 16 * 1024],
        })
    }

    /// Connect once to `addr:port`, send [`GREETING`] once connected, then echo what
    /// comes back until the peer closes (or the connection fails). Nothing more after.
    pub fn connect<N: Notifier>(tcp: &mut Tcp<N>, addr: [u8; 4], port: u16) -> Result<Echo, Error> {
        let h = tcp.connect(addr, port)?;
        Ok(Echo {
            listener: None,
            conns: vec![(h, GREETING.to_vec())],
            buf: vec![0; 16 * 1024],
        })
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accept, echo, and close what the peers closed. Returns whether anything moved.
    pub fn step<N: Notifier>(&mut self, tcp: &mut Tcp<N>) -> bool {
        let mut busy = false;
        while let (Some(l), true) = (self.listener, self.conns.len() < MAX_CONNECTIONS) {
            match tcp.accept(l) {
                Ok(h) => {
                    self.conns.push((h, Vec::new()));
                    busy = true;
                }
                Err(_) => break,
            }
        }
        let mut k = 0;
        while k < self.conns.len() {
            let (h, held) = &mut self.conns[k];
            let mut done = false;
            loop {
                if !held.is_empty() {
                    match tcp.send(*h, held) {
                        Ok(n) => {
                            held.drain(..n);
                            busy |= n > 0;
                        }
                        Err(Error::Again) => break,
                        Err(_) => {
                            done = true;
                            break;
                        }
                    }
                    if !held.is_empty() {
                        break;
                    }
                }
                match tcp.recv(*h, &mut self.buf) {
                    Ok(0) => {
                        done = true;
                        break;
                    }
                    Ok(n) => {
                        held.extend_from_slice(&self.buf[..n]);
                        busy = true;
                    }
                    Err(Error::Again) => break,
                    Err(_) => {
                        done = true;
                        break;
                    }
                }
            }
            if done {
                let _ = tcp.close(*h);
                self.conns.swap_remove(k);
                busy = true;
            } else {
                k += 1;
            }
        }
        busy
    }
}

/// `A.B.C.D:PORT` (the argument of `connect=`), if it is one (a port of 0 is not).
pub fn parse_endpoint(s: &str) -> Option<([u8; 4], u16)> {
    let (addr, port) = s.split_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    let mut a = [0u8; 4];
    let mut parts = addr.split('.');
    for b in &mut a {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some((a, port))
}

//! The echo application: what each connection sends comes back to it, on many
//! connections at once.
//!
//! Written against the socket API ([`compart_sockets::Net`]), non-blocking: one pass
//! ([`Echo::step`]) accepts what is waiting, then on each connection sends back what it
//! holds and reads more, until nothing moves; then [`Echo::run`] sleeps in
//! [`Net::wait`] until some socket changes. A connection's end of stream (the peer's
//! FIN) is answered, once everything read was sent back, with a shutdown and close.
//! Each connection holds at most one read's worth of unsent bytes (it reads again only
//! when those are sent), so memory is bounded by connections × [`READ`] at worst.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use compart_sockets::{Errno, Listener, Net, Result, SockOpt, Stream};

/// Bytes read at once (a socket protocol message's payload at most).
pub const READ: usize = 64 * 1024;

/// What the application did, in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections finished (closed by the peer, or failed).
    pub finished: u64,
    /// Connections that failed (an error other than `EAGAIN`).
    pub failed: u64,
    /// Bytes echoed.
    pub bytes: u64,
}

#[derive(Debug)]
struct Conn<S> {
    s: S,
    /// Read and not yet sent back: `held[sent..]`.
    held: Vec<u8>,
    sent: usize,
    /// The peer ended its stream.
    eof: bool,
}

/// The echo service on one listener.
#[derive(Debug)]
pub struct Echo<N: Net> {
    listener: N::Listener,
    conns: Vec<Conn<N::Stream>>,
    buf: Vec<u8>,
    max_conns: usize,
    counters: Counters,
}

/// How one connection's turn ended.
enum Turn {
    /// Nothing more to do now.
    Idle,
    /// The connection is over.
    Done,
}

impl<N: Net> Echo<N> {
    /// Listen on `port` with `backlog`, serving up to `max_conns` connections at once
    /// (more wait in the listener's backlog).
    pub fn new(net: &mut N, port: u16, backlog: u32, max_conns: usize) -> Result<Echo<N>> {
        let mut listener = net.listen(port, backlog)?;
        listener.set_nonblocking(true)?;
        Ok(Echo {
            listener,
            conns: Vec::new(),
            buf: vec![0; READ],
            max_conns: max_conns.max(1),
            counters: Counters::default(),
        })
    }

    /// Connections served now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// What it did.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// One pass over the listener and every connection. Returns whether anything moved.
    pub fn step(&mut self) -> bool {
        let mut busy = false;
        while self.conns.len() < self.max_conns {
            match self.listener.accept() {
                Ok((mut s, _peer)) => {
                    let on = s
                        .set_nonblocking(true)
                        .and_then(|()| s.set_option(SockOpt::NoDelay(true)));
                    self.counters.accepted += 1;
                    busy = true;
                    if on.is_err() {
                        self.counters.failed += 1;
                        self.counters.finished += 1;
                        continue;
                    }
                    self.conns.push(Conn {
                        s,
                        held: Vec::new(),
                        sent: 0,
                        eof: false,
                    });
                }
                Err(_) => break,
            }
        }
        let mut k = 0;
        while k < self.conns.len() {
            match turn(
                &mut self.conns[k],
                &mut self.buf,
                &mut self.counters,
                &mut busy,
            ) {
                Ok(Turn::Idle) => k += 1,
                Ok(Turn::Done) | Err(_) => {
                    // Dropping it closes it.
                    self.conns.swap_remove(k);
                    self.counters.finished += 1;
                    busy = true;
                }
            }
        }
        busy
    }

    /// Serve until `stop` says so (checked after each pass), sleeping in
    /// [`Net::wait`] whenever a pass moved nothing.
    pub fn run(&mut self, net: &mut N, mut stop: impl FnMut(&Self) -> bool) {
        loop {
            let busy = self.step();
            if stop(self) {
                return;
            }
            if !busy {
                net.wait(None);
            }
        }
    }
}

/// Send back what `c` holds, read more, until nothing moves.
fn turn<S: Stream>(
    c: &mut Conn<S>,
    buf: &mut [u8],
    counters: &mut Counters,
    busy: &mut bool,
) -> Result<Turn> {
    loop {
        while c.sent < c.held.len() {
            match c.s.write(&c.held[c.sent..]) {
                Ok(n) => {
                    c.sent += n;
                    counters.bytes += n as u64;
                    *busy = true;
                }
                Err(Errno::Again) => return Ok(Turn::Idle),
                Err(e) => {
                    counters.failed += 1;
                    return Err(e);
                }
            }
        }
        c.held.clear();
        c.sent = 0;
        if c.eof {
            // Everything came back: end our side too.
            let _ = c.s.shutdown();
            return Ok(Turn::Done);
        }
        match c.s.read(buf) {
            Ok(0) => {
                c.eof = true;
                *busy = true;
            }
            Ok(n) => {
                *busy = true;
                // Send straight from the read buffer; keep only what does not go.
                let mut sent = 0;
                while sent < n {
                    match c.s.write(&buf[sent..n]) {
                        Ok(m) => {
                            sent += m;
                            counters.bytes += m as u64;
                        }
                        Err(Errno::Again) => break,
                        Err(e) => {
                            counters.failed += 1;
                            return Err(e);
                        }
                    }
                }
                if sent < n {
                    c.held.extend_from_slice(&buf[sent..n]);
                    return Ok(Turn::Idle);
                }
            }
            Err(Errno::Again) => return Ok(Turn::Idle),
            Err(e) => {
                counters.failed += 1;
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests;

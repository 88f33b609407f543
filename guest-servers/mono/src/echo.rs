//! An echo application over [`Net`]: what each connection sends comes back to it, up
//! to [`MAX_CONNECTIONS`] at once, all non-blocking in one loop that sleeps in
//! [`Net::wait`] when no socket can progress.
use alloc::vec;
use alloc::vec::Vec;

use compart_sockets::{Errno, Listener, Net, Stream};

/// Connections served at once (more wait in the listener's backlog).
pub const MAX_CONNECTIONS: usize = 8;

/// Bytes read at a time.
const CHUNK: usize = 16 * 1024;

struct Conn<S> {
    stream: S,
    /// Read and not yet written back.
    held: Vec<u8>,
}

/// What [`Echo::step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Whether any socket moved.
    pub busy: bool,
    /// Connections that ended in this step.
    pub closed: usize,
}

/// The echo application's state.
pub struct Echo<N: Net> {
    listener: N::Listener,
    conns: Vec<Conn<N::Stream>>,
    buf: Vec<u8>,
    /// Bytes echoed, over all connections.
    pub echoed: u64,
}

impl<N: Net> core::fmt::Debug for Echo<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Echo")
            .field("connections", &self.conns.len())
            .field("echoed", &self.echoed)
            .finish_non_exhaustive()
    }
}

impl<N: Net> Echo<N> {
    /// Listen on `port`.
    pub fn new(net: &mut N, port: u16) -> Result<Echo<N>, Errno> {
        let mut listener = net.listen(port, 4)?;
        listener.set_nonblocking(true)?;
        Ok(Echo {
            listener,
            conns: Vec::new(),
            buf: vec![0; CHUNK],
            echoed: 0,
        })
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accept, echo, and close what ended, without blocking.
    pub fn step(&mut self) -> Progress {
        let mut p = Progress::default();
        while self.conns.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.conns.push(Conn {
                            stream,
                            held: Vec::new(),
                        });
                    }
                    p.busy = true;
                }
                Err(_) => break,
            }
        }
        let mut k = 0;
        while k < self.conns.len() {
            let done = self.serve(k, &mut p.busy);
            if done {
                // Dropping the stream closes it.
                self.conns.swap_remove(k);
                p.busy = true;
                p.closed += 1;
            } else {
                k += 1;
            }
        }
        p
    }

    /// Echo on connection `k` until it would block; whether it ended.
    fn serve(&mut self, k: usize, busy: &mut bool) -> bool {
        let c = &mut self.conns[k];
        loop {
            while !c.held.is_empty() {
                match c.stream.write(&c.held) {
                    Ok(n) => {
                        c.held.drain(..n);
                        self.echoed += n as u64;
                        *busy = true;
                    }
                    Err(Errno::Again) => return false,
                    Err(_) => return true,
                }
            }
            match c.stream.read(&mut self.buf) {
                Ok(0) => return true,
                Ok(n) => {
                    c.held.extend_from_slice(&self.buf[..n]);
                    *busy = true;
                }
                Err(Errno::Again) => return false,
                Err(_) => return true,
            }
        }
    }

    /// Serve forever: steps, and [`Net::wait`] whenever one moved nothing.
    pub fn run(&mut self, net: &mut N) -> ! {
        loop {
            if !self.step().busy {
                net.wait(None);
            }
        }
    }
}

//! Test help for the tcp core's callers (feature `testing`, and this crate's own tests):
//! a peer that echoes over a core's own calls, for tests that need a real TCP peer
//! without an application guest. No image links it.
use alloc::vec;
use alloc::vec::Vec;

use compart_channel::Notifier;

use crate::{Error, Handle, Tcp};

/// An echo on one core's calls: accepts on a port, sends back what each connection
/// sends, and closes a connection once its peer has.
#[derive(Debug)]
pub struct EchoPeer {
    listener: Handle,
    /// Connections, and bytes read but not yet sent back.
    conns: Vec<(Handle, Vec<u8>)>,
    buf: Vec<u8>,
}

impl EchoPeer {
    /// Listens on `port` of `tcp` (backlog 2).
    pub fn new<N: Notifier>(tcp: &mut Tcp<N>, port: u16) -> EchoPeer {
        EchoPeer {
            listener: tcp.listen(port, 2).unwrap(),
            conns: Vec::new(),
            buf: vec![0; 16 * 1024],
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accept, echo and close; whether anything moved.
    pub fn step<N: Notifier>(&mut self, tcp: &mut Tcp<N>) -> bool {
        let mut busy = false;
        while let Ok(h) = tcp.accept(self.listener) {
            self.conns.push((h, Vec::new()));
            busy = true;
        }
        let mut k = 0;
        while k < self.conns.len() {
            let (h, held) = &mut self.conns[k];
            let done = loop {
                if !held.is_empty() {
                    match tcp.send(*h, held) {
                        Ok(n) => {
                            held.drain(..n);
                            busy |= n > 0;
                        }
                        Err(Error::Again) => break false,
                        Err(_) => break true,
                    }
                    if !held.is_empty() {
                        break false;
                    }
                }
                match tcp.recv(*h, &mut self.buf) {
                    Ok(0) => break true,
                    Ok(n) => {
                        held.extend_from_slice(&self.buf[..n]);
                        busy = true;
                    }
                    Err(Error::Again) => break false,
                    Err(_) => break true,
                }
            };
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

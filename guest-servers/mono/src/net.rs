//! compart-sockets' [`Net`] over a tcp core in the same guest.
//!
//! The application and the stack share one vCPU and one loop: a call first tries the
//! core (`Tcp::send`, `recv`, `accept`, …); when that cannot progress (`Again`) and the
//! call blocks, it runs the stack ([`Engine::step`]: one pass over every layer) and,
//! when a pass finds nothing to do, lets it sleep ([`Engine::idle`]: until a layer may
//! have work, or the stack's next deadline), then tries again. A call that succeeds
//! does not run the stack: what it queued goes out at the next blocking call or
//! [`Net::wait`], as an application that keeps calling always reaches one (a send
//! buffer fills, a receive buffer empties).
//!
//! The stack is shared by the [`LocalNet`] and every stream and listener it opened
//! (`Rc<RefCell<_>>`: one vCPU, no re-entry: no call holds the borrow while the
//! application runs).
use alloc::rc::Rc;
use core::cell::RefCell;

use compart_channel::Notifier;
use compart_sockets::{Listener, Net, Peer, Result, SockOpt, Stream, READY_ERROR, READY_HANGUP};
use tcp::{Error, Handle, Ready, Tcp};

/// The stack under a [`LocalNet`]: the tcp core and whatever runs below it.
pub trait Engine {
    /// The notifier of the core's channels.
    type Notifier: Notifier;

    /// The tcp core.
    fn tcp(&mut self) -> &mut Tcp<Self::Notifier>;

    /// One pass over every layer (the core's included); whether anything happened.
    fn step(&mut self) -> bool;

    /// The last pass found nothing to do: sleep until some layer may have work, the
    /// stack's own next deadline, or `deadline_ms` (of [`Engine::now_ms`]). May return
    /// early.
    fn idle(&mut self, deadline_ms: Option<u64>);

    /// Milliseconds of the stack's monotonic clock.
    fn now_ms(&self) -> u64;
}

/// Run the stack once: a pass, and a sleep if it found nothing to do.
fn run_once<E: Engine>(e: &mut E, deadline_ms: Option<u64>) {
    if !e.step() {
        e.idle(deadline_ms);
    }
}

/// `f` on the core until it stops answering `Again` (running the stack in between),
/// or at once if `nonblocking`.
fn call<E: Engine, T>(
    engine: &RefCell<E>,
    nonblocking: bool,
    mut f: impl FnMut(&mut Tcp<E::Notifier>) -> core::result::Result<T, Error>,
) -> Result<T> {
    let mut e = engine.borrow_mut();
    loop {
        match f(e.tcp()) {
            Err(Error::Again) if !nonblocking => run_once(&mut *e, None),
            r => return r.map_err(Error::errno),
        }
    }
}

/// [`Net`] over the tcp core of an [`Engine`].
#[derive(Debug)]
pub struct LocalNet<E> {
    engine: Rc<RefCell<E>>,
}

impl<E: Engine> LocalNet<E> {
    /// The network of `engine`.
    pub fn new(engine: E) -> LocalNet<E> {
        LocalNet {
            engine: Rc::new(RefCell::new(engine)),
        }
    }

    /// The engine, between calls (its counters, for the glue).
    pub fn with_engine<T>(&self, f: impl FnOnce(&mut E) -> T) -> T {
        f(&mut self.engine.borrow_mut())
    }
}

impl<E: Engine> Net for LocalNet<E> {
    type Stream = LocalStream<E>;
    type Listener = LocalListener<E>;

    fn listen(&mut self, port: u16, backlog: u32) -> Result<LocalListener<E>> {
        let backlog = usize::try_from(backlog).unwrap_or(usize::MAX);
        let handle = call(&self.engine, true, |t| t.listen(port, backlog))?;
        Ok(LocalListener {
            engine: self.engine.clone(),
            handle,
            nonblocking: false,
        })
    }

    fn connect(&mut self, peer: Peer) -> Result<LocalStream<E>> {
        let handle = call(&self.engine, true, |t| t.connect(peer.address, peer.port))?;
        // Owned from here: an error below closes it.
        let stream = LocalStream {
            engine: self.engine.clone(),
            handle,
            peer,
            nonblocking: false,
        };
        call(&self.engine, false, |t| {
            let r = t.ready(handle)?;
            if r.error {
                // The core says why through any call on the handle.
                t.send(handle, &[])?;
                return Err(Error::ConnReset);
            }
            if r.writable {
                Ok(())
            } else if r.hangup {
                Err(Error::ConnReset)
            } else {
                Err(Error::Again)
            }
        })?;
        Ok(stream)
    }

    fn now_ms(&self) -> u64 {
        self.engine.borrow().now_ms()
    }

    fn wait(&mut self, deadline_ms: Option<u64>) {
        run_once(&mut *self.engine.borrow_mut(), deadline_ms);
    }
}

/// A connection of a [`LocalNet`].
#[derive(Debug)]
pub struct LocalStream<E: Engine> {
    engine: Rc<RefCell<E>>,
    handle: Handle,
    peer: Peer,
    nonblocking: bool,
}

impl<E: Engine> Stream for LocalStream<E> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let h = self.handle;
        call(&self.engine, self.nonblocking, |t| t.recv(h, buf))
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize> {
        let h = self.handle;
        call(&self.engine, self.nonblocking, |t| t.send(h, buf))
    }

    fn shutdown(&mut self) -> Result<()> {
        let h = self.handle;
        call(&self.engine, true, |t| t.shutdown(h))
    }

    fn set_nonblocking(&mut self, on: bool) -> Result<()> {
        self.nonblocking = on;
        Ok(())
    }

    fn set_option(&mut self, opt: SockOpt) -> Result<()> {
        let h = self.handle;
        let opt = match opt {
            SockOpt::NoDelay(on) => tcp::SockOpt::NoDelay(on),
            SockOpt::RecvBuffer(n) => tcp::SockOpt::RecvBuffer(n as usize),
            SockOpt::SendBuffer(n) => tcp::SockOpt::SendBuffer(n as usize),
        };
        call(&self.engine, true, |t| t.set_option(h, opt))
    }

    fn ready(&mut self) -> Result<u32> {
        let h = self.handle;
        call(&self.engine, true, |t| t.ready(h)).map(Ready::bits)
    }

    fn peer(&self) -> Peer {
        self.peer
    }

    fn wait_ready(&mut self, bits: u32) -> Result<()> {
        let h = self.handle;
        let want = bits | READY_HANGUP | READY_ERROR;
        call(&self.engine, false, |t| {
            if t.ready(h)?.bits() & want != 0 {
                Ok(())
            } else {
                Err(Error::Again)
            }
        })
    }
}

impl<E: Engine> Drop for LocalStream<E> {
    fn drop(&mut self) {
        // Closed in the background; a handle the core no longer has needs nothing.
        let _ = self.engine.borrow_mut().tcp().close(self.handle);
    }
}

/// A listener of a [`LocalNet`].
#[derive(Debug)]
pub struct LocalListener<E: Engine> {
    engine: Rc<RefCell<E>>,
    handle: Handle,
    nonblocking: bool,
}

impl<E: Engine> Listener for LocalListener<E> {
    type Stream = LocalStream<E>;

    fn accept(&mut self) -> Result<(LocalStream<E>, Peer)> {
        let l = self.handle;
        let handle = call(&self.engine, self.nonblocking, |t| t.accept(l))?;
        let peer = self
            .engine
            .borrow_mut()
            .tcp()
            .peer(handle)
            .ok()
            .flatten()
            .map_or(
                Peer {
                    address: [0; 4],
                    port: 0,
                },
                |(address, port)| Peer { address, port },
            );
        Ok((
            LocalStream {
                engine: self.engine.clone(),
                handle,
                peer,
                nonblocking: false,
            },
            peer,
        ))
    }

    fn set_nonblocking(&mut self, on: bool) -> Result<()> {
        self.nonblocking = on;
        Ok(())
    }

    fn ready(&mut self) -> Result<u32> {
        let l = self.handle;
        call(&self.engine, true, |t| t.ready(l)).map(Ready::bits)
    }
}

impl<E: Engine> Drop for LocalListener<E> {
    fn drop(&mut self) {
        let _ = self.engine.borrow_mut().tcp().close(self.handle);
    }
}

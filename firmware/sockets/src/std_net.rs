//! [`Net`] over `std::net`, for host tests of application logic against stock peers.
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::{
    Errno, Listener, Net, Peer, Result, SockOpt, Stream, READY_ERROR, READY_HANGUP, READY_READABLE,
    READY_WRITABLE,
};

fn errno(e: io::Error) -> Errno {
    match e.kind() {
        io::ErrorKind::WouldBlock => Errno::Again,
        io::ErrorKind::ConnectionRefused => Errno::ConnRefused,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Errno::ConnReset,
        io::ErrorKind::NotConnected => Errno::NotConnected,
        io::ErrorKind::BrokenPipe => Errno::Pipe,
        io::ErrorKind::AddrInUse => Errno::AddrInUse,
        io::ErrorKind::InvalidInput => Errno::Invalid,
        _ => Errno::Protocol,
    }
}

fn peer_of(addr: SocketAddr) -> Peer {
    match addr {
        SocketAddr::V4(a) => Peer {
            address: a.ip().octets(),
            port: a.port(),
        },
        SocketAddr::V6(a) => Peer {
            address: a.ip().to_ipv4_mapped().map_or([0; 4], |v4| v4.octets()),
            port: a.port(),
        },
    }
}

/// [`Net`] over `std::net`, listening on `bind` (loopback by default).
#[derive(Debug)]
pub struct StdNet {
    start: Instant,
    bind: Ipv4Addr,
}

impl Default for StdNet {
    fn default() -> Self {
        StdNet::new(Ipv4Addr::LOCALHOST)
    }
}

impl StdNet {
    /// Listeners bind to `bind`.
    pub fn new(bind: Ipv4Addr) -> StdNet {
        StdNet {
            start: Instant::now(),
            bind,
        }
    }
}

/// A [`StdNet`] connection.
#[derive(Debug)]
pub struct StdStream {
    s: TcpStream,
    peer: Peer,
    nonblocking: bool,
}

/// A [`StdNet`] listener.
#[derive(Debug)]
pub struct StdListener {
    l: TcpListener,
}

impl StdStream {
    fn new(s: TcpStream) -> Result<StdStream> {
        let peer = peer_of(s.peer_addr().map_err(errno)?);
        Ok(StdStream {
            s,
            peer,
            nonblocking: false,
        })
    }
}

impl Stream for StdStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.s.read(buf).map_err(errno)
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize> {
        self.s.write(buf).map_err(errno)
    }

    fn shutdown(&mut self) -> Result<()> {
        self.s.shutdown(Shutdown::Write).map_err(errno)
    }

    fn set_nonblocking(&mut self, on: bool) -> Result<()> {
        self.nonblocking = on;
        self.s.set_nonblocking(on).map_err(errno)
    }

    fn set_option(&mut self, opt: SockOpt) -> Result<()> {
        match opt {
            SockOpt::NoDelay(on) => self.s.set_nodelay(on).map_err(errno),
            // std::net has no SO_RCVBUF/SO_SNDBUF; the kernel's autotuning stands.
            SockOpt::RecvBuffer(_) | SockOpt::SendBuffer(_) => Ok(()),
        }
    }

    fn ready(&mut self) -> Result<u32> {
        self.s.set_nonblocking(true).map_err(errno)?;
        let mut b = [0u8; 1];
        let bits = match self.s.peek(&mut b) {
            Ok(0) => READY_READABLE | READY_HANGUP | READY_WRITABLE,
            Ok(_) => READY_READABLE | READY_WRITABLE,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => READY_WRITABLE,
            Err(_) => READY_ERROR | READY_HANGUP,
        };
        self.s.set_nonblocking(self.nonblocking).map_err(errno)?;
        Ok(bits)
    }

    fn peer(&self) -> Peer {
        self.peer
    }

    fn wait_ready(&mut self, bits: u32) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(60);
        while self.ready()? & (bits | READY_HANGUP | READY_ERROR) == 0 {
            if Instant::now() > until {
                return Err(Errno::Again);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
}

impl Listener for StdListener {
    type Stream = StdStream;

    fn accept(&mut self) -> Result<(StdStream, Peer)> {
        let (s, a) = self.l.accept().map_err(errno)?;
        s.set_nonblocking(false).map_err(errno)?;
        Ok((StdStream::new(s)?, peer_of(a)))
    }

    fn set_nonblocking(&mut self, on: bool) -> Result<()> {
        self.l.set_nonblocking(on).map_err(errno)
    }

    fn ready(&mut self) -> Result<u32> {
        // std cannot peek a listener's queue; say "try": accept answers Again if not.
        Ok(READY_READABLE)
    }
}

impl Net for StdNet {
    type Stream = StdStream;
    type Listener = StdListener;

    fn listen(&mut self, port: u16, _backlog: u32) -> Result<StdListener> {
        let l = TcpListener::bind(SocketAddrV4::new(self.bind, port)).map_err(errno)?;
        Ok(StdListener { l })
    }

    fn connect(&mut self, peer: Peer) -> Result<StdStream> {
        let a = SocketAddrV4::new(Ipv4Addr::from(peer.address), peer.port);
        StdStream::new(TcpStream::connect(a).map_err(errno)?)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn wait(&mut self, deadline_ms: Option<u64>) {
        // std offers no readiness across sockets: sleep a little, at most to the deadline.
        let left = deadline_ms.map_or(1, |d| d.saturating_sub(self.now_ms()).min(1));
        std::thread::sleep(Duration::from_micros(200 * left.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_over_loopback_carries_bytes_both_ways_and_ends() {
        let mut net = StdNet::default();
        let mut l = net.listen(0, 4).unwrap();
        let port = l.l.local_addr().unwrap().port();
        let mut c = net
            .connect(Peer {
                address: [127, 0, 0, 1],
                port,
            })
            .unwrap();
        let (mut s, peer) = l.accept().unwrap();
        assert_eq!(peer.address, [127, 0, 0, 1]);
        c.write_all(b"hello").unwrap();
        let mut buf = [0; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        c.shutdown().unwrap();
        s.wait_ready(READY_READABLE).unwrap();
        assert_eq!(s.read(&mut buf).unwrap(), 0);
        s.set_nonblocking(true).unwrap();
        assert_eq!(s.read(&mut buf), Ok(0));
        l.set_nonblocking(true).unwrap();
        assert_eq!(l.accept().map(|_| ()), Err(Errno::Again));
    }
}

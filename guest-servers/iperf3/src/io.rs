//! Bounded, non-blocking I/O over a [`Net`]: every call that waits has a deadline and
//! sleeps in [`Net::wait`] (never spins), and the time spent asleep is counted, for the
//! CPU figure of the results.

use alloc::vec;
use compart_sockets::{Errno, Net, Stream};

use crate::json::{self, Value};
use crate::Error;

/// A [`Net`] with the time its waits took.
#[derive(Debug)]
pub struct Io<'n, N: Net> {
    /// The network.
    pub net: &'n mut N,
    waited_ms: u64,
}

impl<'n, N: Net> Io<'n, N> {
    /// Wrap `net`.
    pub fn new(net: &'n mut N) -> Io<'n, N> {
        Io { net, waited_ms: 0 }
    }

    /// Milliseconds of the network's clock.
    pub fn now(&self) -> u64 {
        self.net.now_ms()
    }

    /// Milliseconds spent in [`Io::wait`] so far.
    pub fn waited_ms(&self) -> u64 {
        self.waited_ms
    }

    /// Sleep until a socket may have changed, or `deadline` (ms).
    pub fn wait(&mut self, deadline: Option<u64>) {
        let t = self.now();
        self.net.wait(deadline);
        self.waited_ms += self.now().saturating_sub(t);
    }

    /// Fill `buf` from `s` (non-blocking) by `deadline`; `what` names the message in errors.
    pub fn read_exact<S: Stream>(
        &mut self,
        s: &mut S,
        mut buf: &mut [u8],
        deadline: u64,
        what: &'static str,
    ) -> Result<(), Error> {
        while !buf.is_empty() {
            match s.read(buf) {
                Ok(0) => return Err(Error::Closed(what)),
                Ok(n) => {
                    let n = n.min(buf.len());
                    buf = &mut buf[n..];
                }
                Err(Errno::Again) => {
                    if self.now() >= deadline {
                        return Err(Error::Timeout(what));
                    }
                    self.wait(Some(deadline));
                }
                Err(e) => return Err(Error::Net(what, e)),
            }
        }
        Ok(())
    }

    /// Write all of `buf` to `s` (non-blocking) by `deadline`.
    pub fn write_all<S: Stream>(
        &mut self,
        s: &mut S,
        mut buf: &[u8],
        deadline: u64,
        what: &'static str,
    ) -> Result<(), Error> {
        while !buf.is_empty() {
            match s.write(buf) {
                Ok(0) => return Err(Error::Net(what, Errno::Pipe)),
                Ok(n) => buf = &buf[n.min(buf.len())..],
                Err(Errno::Again) => {
                    if self.now() >= deadline {
                        return Err(Error::Timeout(what));
                    }
                    self.wait(Some(deadline));
                }
                Err(e) => return Err(Error::Net(what, e)),
            }
        }
        Ok(())
    }

    /// One state byte by `deadline`.
    pub fn read_state<S: Stream>(
        &mut self,
        s: &mut S,
        deadline: u64,
        what: &'static str,
    ) -> Result<i8, Error> {
        let mut b = [0u8; 1];
        self.read_exact(s, &mut b, deadline, what)?;
        Ok(i8::from_ne_bytes(b))
    }

    /// Send one state byte.
    pub fn write_state<S: Stream>(
        &mut self,
        s: &mut S,
        state: i8,
        deadline: u64,
    ) -> Result<(), Error> {
        self.write_all(s, &state.to_ne_bytes(), deadline, "a state")
    }

    /// A length-prefixed JSON message of at most `max` bytes, by `deadline`.
    pub fn read_json<S: Stream>(
        &mut self,
        s: &mut S,
        max: usize,
        deadline: u64,
        what: &'static str,
    ) -> Result<Value, Error> {
        let mut len = [0u8; 4];
        self.read_exact(s, &mut len, deadline, what)?;
        let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
        if len > max {
            return Err(Error::TooLong { what, len, max });
        }
        let mut text = vec![0u8; len];
        self.read_exact(s, &mut text, deadline, what)?;
        json::parse(&text).map_err(|e| Error::Json(what, e))
    }

    /// Send `v` as a length-prefixed JSON message.
    pub fn write_json<S: Stream>(
        &mut self,
        s: &mut S,
        v: &Value,
        deadline: u64,
        what: &'static str,
    ) -> Result<(), Error> {
        let text = json::to_string(v);
        let len = u32::try_from(text.len()).map_err(|_| Error::TooLong {
            what,
            len: text.len(),
            max: u32::MAX as usize,
        })?;
        self.write_all(s, &len.to_be_bytes(), deadline, what)?;
        self.write_all(s, text.as_bytes(), deadline, what)
    }

    /// A state byte if one is there now: `Ok(None)` if not, [`Error::Closed`] at the
    /// end of the stream.
    pub fn poll_state<S: Stream>(
        &mut self,
        s: &mut S,
        what: &'static str,
    ) -> Result<Option<i8>, Error> {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => Err(Error::Closed(what)),
            Ok(_) => Ok(Some(i8::from_ne_bytes(b))),
            Err(Errno::Again) => Ok(None),
            Err(e) => Err(Error::Net(what, e)),
        }
    }

    /// After [`crate::proto::SERVER_ERROR`]: the server's two error numbers.
    pub fn read_server_error<S: Stream>(&mut self, s: &mut S, deadline: u64) -> Error {
        let mut b = [0u8; 8];
        match self.read_exact(s, &mut b, deadline, "the server's error") {
            Ok(()) => Error::ServerError {
                code: i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                errno: i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            },
            Err(e) => e,
        }
    }

    /// Tell the client why the test stops: SERVER_ERROR, `code`, errno 0. Best effort
    /// (the connection may be gone), bounded by `deadline`.
    pub fn send_server_error<S: Stream>(&mut self, s: &mut S, code: i32, deadline: u64) {
        let mut m = [0u8; 9];
        m[0] = crate::proto::SERVER_ERROR.to_ne_bytes()[0];
        m[1..5].copy_from_slice(&code.to_be_bytes());
        let _ = self.write_all(s, &m, deadline, "the error to the client");
    }
}

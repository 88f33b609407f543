//! The data connections of a test and the pump that moves their bytes: each pass
//! reads (or writes) every open stream a bounded number of times without blocking, so
//! the control connection is looked at between passes, and the caller sleeps in
//! `Net::wait` only when a pass moved nothing.

use alloc::vec;
use alloc::vec::Vec;
use compart_sockets::{Errno, Stream};

/// Calls per stream per pass: enough to fill a pass's worth of window, few enough
/// that control and the other streams are served often.
const BURST: usize = 8;

/// One data connection.
#[derive(Debug)]
pub struct Flow<S> {
    /// The connection; `None` once it ended or failed.
    pub s: Option<S>,
    /// iperf3's stream id.
    pub id: i32,
    /// Bytes counted (after the omitted start).
    pub bytes: u64,
    /// Bytes in the omitted start.
    pub omitted: u64,
    /// Bytes since the last interval report.
    pub interval: u64,
    /// How it ended, if not at the end of the stream.
    pub error: Option<Errno>,
}

impl<S: Stream> Flow<S> {
    /// A stream with id `id`, nothing counted.
    pub fn new(s: S, id: i32) -> Flow<S> {
        Flow {
            s: Some(s),
            id,
            bytes: 0,
            omitted: 0,
            interval: 0,
            error: None,
        }
    }
}

/// What moves the bytes: a sender writes blocks of `len` until `amount` (if any), at
/// most at `rate` (if any); a receiver reads blocks of `len`.
#[derive(Debug)]
pub struct Pump {
    sending: bool,
    buf: Vec<u8>,
    amount: Option<u64>,
    rate_bps: u64,
    start_ms: u64,
    omit_until: u64,
    /// Bytes moved in all, omitted start included.
    pub total: u64,
}

/// What a pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// Bytes moved.
    pub bytes: u64,
    /// The sender is held back by its rate until this time (ms).
    pub paced_until: Option<u64>,
}

impl Pump {
    /// A pump of blocks of `len` bytes (filled with pseudo-random bytes from `seed` if
    /// sending), starting at `start_ms`, not counting until `omit_until`.
    pub fn new(
        sending: bool,
        len: u32,
        amount: Option<u64>,
        rate_bps: u64,
        start_ms: u64,
        omit_until: u64,
        seed: u64,
    ) -> Pump {
        let mut buf = vec![0u8; usize::try_from(len.max(1)).unwrap_or(1)];
        if sending {
            // xorshift64*: the payload is not compressible, as iperf3's random data.
            let mut x = seed | 1;
            for chunk in buf.chunks_mut(8) {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
        Pump {
            sending,
            buf,
            amount,
            rate_bps,
            start_ms,
            omit_until,
            total: 0,
        }
    }

    /// Whether a sender has sent its amount (or a receiver received it).
    pub fn amount_done(&self) -> bool {
        self.amount.is_some_and(|a| self.total >= a)
    }

    /// How many bytes a sender may write now: what is left of its amount, and of what
    /// its rate allows by `now` (plus one block of burst).
    fn allowance(&self, now: u64) -> u64 {
        let mut left = self
            .amount
            .map_or(u64::MAX, |a| a.saturating_sub(self.total));
        if self.rate_bps != 0 {
            let elapsed = u128::from(now.saturating_sub(self.start_ms));
            let allowed = u128::from(self.rate_bps) * elapsed / 8000 + self.buf.len() as u128;
            let allowed = u64::try_from(allowed).unwrap_or(u64::MAX);
            left = left.min(allowed.saturating_sub(self.total));
        }
        left
    }

    fn count<S>(&mut self, f: &mut Flow<S>, n: usize, now: u64) {
        let n = n as u64;
        self.total += n;
        if now < self.omit_until {
            f.omitted += n;
        } else {
            f.bytes += n;
            f.interval += n;
        }
    }

    /// One pass over `flows` at `now`.
    pub fn pass<S: Stream>(&mut self, flows: &mut [Flow<S>], now: u64) -> Pass {
        let mut pass = Pass::default();
        for f in flows.iter_mut() {
            for _ in 0..BURST {
                let Some(s) = f.s.as_mut() else { break };
                let r = if self.sending {
                    let allow = self.allowance(now);
                    if allow == 0 {
                        if !self.amount_done() {
                            pass.paced_until = Some(now + 1);
                        }
                        break;
                    }
                    let n = usize::try_from(allow)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    s.write(&self.buf[..n])
                } else {
                    s.read(&mut self.buf)
                };
                match r {
                    Ok(0) => {
                        f.s = None;
                    }
                    Ok(n) => {
                        self.count(f, n, now);
                        pass.bytes += n as u64;
                    }
                    Err(Errno::Again) => break,
                    Err(e) => {
                        f.error = Some(e);
                        f.s = None;
                    }
                }
            }
        }
        pass
    }
}

//! The stream application: the thesis's bulk-transfer client. It connects to
//! `server=ADDR port=P`, writes blocks of `block=KIB` KiB (default 16) for `time=S`
//! seconds or until `bytes=N` bytes, shuts its side down, waits (at most
//! [`Config::linger_ms`]) for the server to close — so that the time counts the bytes
//! the server received, not the ones still queued here — and reports the throughput
//! ([`Report`]: bytes, seconds, Mbit/s). Every `interval=S` seconds (default 1, 0: none)
//! it reports the interval.
//!
//! Any TCP sink serves as the server: `nc -l P >/dev/null`,
//! `socat`, or another compart app.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(test)]
mod tests;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use compart_kit::cmdline::Args;
use compart_sockets::{Errno, Net, Peer, Stream, READY_READABLE};

/// When the sender stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// After this many milliseconds.
    Millis(u64),
    /// After this many bytes.
    Bytes(u64),
}

/// The client's settings (the image's command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The server (`server=ADDR port=P`, both required).
    pub server: Peer,
    /// When to stop (`time=S` or `bytes=N`; default 10 s).
    pub limit: Limit,
    /// Bytes per write (`block=KIB`, 1–1024, default 16).
    pub block: usize,
    /// Milliseconds between interval reports (`interval=S`; 0: none; default 1000).
    pub interval_ms: u64,
    /// How long to wait for the server's close after the last byte (`linger=MS`, default
    /// 10000).
    pub linger_ms: u64,
}

/// `a.b.c.d` as four bytes.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl Config {
    /// Settings from a command line; the first wrong argument's message.
    pub fn from_args(args: &Args<'_>) -> Result<Config, String> {
        let e = |e: compart_kit::cmdline::ArgError<'_>| alloc::format!("{e}");
        let server: &str = args
            .get("server")
            .map_err(e)?
            .ok_or("argument `server=ADDR` is required")?;
        let address = parse_ipv4(server)
            .ok_or_else(|| alloc::format!("argument `server={server}`: expected a.b.c.d"))?;
        let port: u16 = args
            .get("port")
            .map_err(e)?
            .ok_or("argument `port=P` is required")?;
        let time: Option<u64> = args.get("time").map_err(e)?;
        let bytes: Option<u64> = args.get("bytes").map_err(e)?;
        let limit = match (time, bytes) {
            (Some(_), Some(_)) => return Err("give `time=S` or `bytes=N`, not both".into()),
            (Some(s), None) => Limit::Millis(s.saturating_mul(1000)),
            (None, Some(n)) => Limit::Bytes(n),
            (None, None) => Limit::Millis(10_000),
        };
        let kib: usize = args.get("block").map_err(e)?.unwrap_or(16);
        if !(1..=1024).contains(&kib) {
            return Err(alloc::format!("argument `block={kib}`: expected 1-1024"));
        }
        let interval: u64 = args.get("interval").map_err(e)?.unwrap_or(1);
        Ok(Config {
            server: Peer { address, port },
            limit,
            block: kib * 1024,
            interval_ms: interval.saturating_mul(1000),
            linger_ms: args.get("linger").map_err(e)?.unwrap_or(10_000),
        })
    }
}

/// Bytes sent over a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Bytes written.
    pub bytes: u64,
    /// Milliseconds it took.
    pub ms: u64,
    /// The server closed after the last byte (so every byte reached it) within the
    /// linger time; `false` for an interval report, or if it did not.
    pub acknowledged: bool,
}

impl Report {
    /// Megabits (10^6 bits) per second; 0 over no time.
    pub fn mbit_per_s(&self) -> u64 {
        if self.ms == 0 {
            return 0;
        }
        // bits / (ms * 1000) = Mbit/s; u128 so that no byte count overflows.
        let mbit = u128::from(self.bytes) * 8 / (u128::from(self.ms) * 1000);
        u64::try_from(mbit).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes in {}.{:03} s: {} Mbit/s",
            self.bytes,
            self.ms / 1000,
            self.ms % 1000,
            self.mbit_per_s()
        )
    }
}

/// Why a run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The connection could not be opened.
    Connect(Errno),
    /// A write failed after this many bytes.
    Write(Errno, u64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "cannot connect: {e:?}"),
            Error::Write(e, n) => write!(f, "write failed after {n} bytes: {e:?}"),
        }
    }
}

/// Run the transfer of `config` over `net`; `interval` gets each interval's report.
pub fn run<N: Net>(
    net: &mut N,
    config: &Config,
    mut interval: impl FnMut(&Report),
) -> Result<Report, Error> {
    let mut stream = net.connect(config.server).map_err(Error::Connect)?;
    let block: Vec<u8> = (0..config.block).map(|i| i as u8).collect();
    let start = net.now_ms();
    let mut sent = 0u64;
    let (mut tick_ms, mut tick_bytes) = (start, 0u64);
    loop {
        let now = net.now_ms();
        let n = match config.limit {
            Limit::Millis(ms) if now.saturating_sub(start) >= ms => break,
            Limit::Millis(_) => block.len(),
            Limit::Bytes(b) if sent >= b => break,
            // Below block.len(): the cast keeps it.
            Limit::Bytes(b) => (b - sent).min(block.len() as u64) as usize,
        };
        if config.interval_ms > 0 && now.saturating_sub(tick_ms) >= config.interval_ms {
            interval(&Report {
                bytes: sent - tick_bytes,
                ms: now - tick_ms,
                acknowledged: false,
            });
            (tick_ms, tick_bytes) = (now, sent);
        }
        stream
            .write_all(&block[..n])
            .map_err(|e| Error::Write(e, sent))?;
        sent += n as u64;
    }
    let _ = stream.shutdown();
    let acknowledged = wait_for_close(net, &mut stream, config.linger_ms);
    Ok(Report {
        bytes: sent,
        ms: net.now_ms().saturating_sub(start),
        acknowledged,
    })
}

/// Reads (and drops) until the peer's FIN, at most `linger_ms`; whether it came.
fn wait_for_close<N: Net>(net: &mut N, stream: &mut N::Stream, linger_ms: u64) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let until = net.now_ms().saturating_add(linger_ms);
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(Errno::Again) => {}
            Err(_) => return false,
        }
        if net.now_ms() >= until {
            return false;
        }
        if stream.ready().is_ok_and(|r| r & READY_READABLE == 0) {
            net.wait(Some(until));
        }
    }
}

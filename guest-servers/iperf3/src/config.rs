//! The command line (`key=value` words, `compart_kit::cmdline`):
//!
//! ```text
//!   mode=server [port=5201] [tests=N] [max-streams=128] [interval=1] [timeout=30] [stall=30]
//!   mode=client server=198.18.0.1 [port=5201] [time=10] [bytes=N] [parallel=1]
//!               [reverse=true] [len=128K] [window=N] [nodelay=true] [bitrate=N]
//!               [omit=0] [interval=1] [timeout=30] [stall=30]
//! ```
//!
//! As iperf3: `bytes`, `len` and `window` take `K`/`M`/`G` suffixes of 1024, `bitrate`
//! (bits/s) of 1000; `bytes` ends the test by amount instead of time. `tests=N`: the
//! server exits after N tests (iperf3 `-1` is `tests=1`). `interval`: seconds between
//! interval reports (0: none); `timeout`: seconds a control message may take; `stall`:
//! seconds without data before a test is abandoned.

use alloc::format;
use alloc::string::String;
use compart_kit::cmdline::Args;
use compart_sockets::Peer;

use crate::proto::{Params, MAX_STREAMS};

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Config {
    /// `iperf3 -s`.
    Server(ServerConfig),
    /// `iperf3 -c`.
    Client(ClientConfig),
}

/// The server's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The port it listens on (control and data).
    pub port: u16,
    /// Tests to run before returning; `None`: forever.
    pub tests: Option<u32>,
    /// The most streams a client may ask for.
    pub max_streams: u32,
    /// Milliseconds between interval reports; 0 for none.
    pub interval_ms: u64,
    /// Milliseconds a control message may take.
    pub timeout_ms: u64,
    /// Milliseconds without data before a test is abandoned.
    pub stall_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            port: 5201,
            tests: None,
            max_streams: MAX_STREAMS,
            interval_ms: 1000,
            timeout_ms: 30_000,
            stall_ms: 30_000,
        }
    }
}

/// The client's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// The server.
    pub server: Peer,
    /// The test to ask for (its `client_version` is ignored: this one's is sent).
    pub params: Params,
    /// Milliseconds between interval reports; 0 for none.
    pub interval_ms: u64,
    /// Milliseconds a control message may take.
    pub timeout_ms: u64,
    /// Milliseconds without data before the test is abandoned.
    pub stall_ms: u64,
}

impl ClientConfig {
    /// A 10-second, one-stream test against `server`, as `iperf3 -c`.
    pub fn new(server: Peer) -> ClientConfig {
        ClientConfig {
            server,
            params: Params::default(),
            interval_ms: 1000,
            timeout_ms: 30_000,
            stall_ms: 30_000,
        }
    }
}

/// A command line that does not say what to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A decimal count with an optional `K`, `M`, `G` (or lower-case) suffix of `base`.
pub fn parse_size(s: &str, base: u64) -> Option<u64> {
    let (digits, mul) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], base),
        b'm' | b'M' => (&s[..s.len() - 1], base * base),
        b'g' | b'G' => (&s[..s.len() - 1], base * base * base),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mul)
}

/// A dotted IPv4 address.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut a = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut a {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = p.parse().ok()?;
    }
    parts.next().is_none().then_some(a)
}

struct Reader<'a> {
    args: Args<'a>,
}

impl<'a> Reader<'a> {
    fn get<T: compart_kit::cmdline::FromArg<'a>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, ConfigError> {
        self.args.get(key).map_err(|e| ConfigError(format!("{e}")))
    }

    fn size(&self, key: &str, base: u64) -> Result<Option<u64>, ConfigError> {
        match self.get::<&str>(key)? {
            None => Ok(None),
            Some(v) => parse_size(v, base).map(Some).ok_or_else(|| {
                ConfigError(format!(
                    "argument `{key}={v}`: expected a count with an optional K, M or G"
                ))
            }),
        }
    }

    fn size32(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        match self.size(key, 1024)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| ConfigError(format!("argument `{key}`: {v} is too large"))),
        }
    }

    fn secs_ms(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        Ok(self
            .get::<u64>(key)?
            .map_or(default, |s| s.saturating_mul(1000)))
    }
}

impl Config {
    /// The configuration a command line asks for.
    pub fn parse(line: &str) -> Result<Config, ConfigError> {
        let r = Reader {
            args: Args::new(line),
        };
        let port = r.get::<u16>("port")?.unwrap_or(5201);
        match r.get::<&str>("mode")? {
            Some("server") => {
                let d = ServerConfig::default();
                let max_streams = r.get::<u32>("max-streams")?.unwrap_or(d.max_streams);
                if max_streams == 0 || max_streams > MAX_STREAMS {
                    return Err(ConfigError(format!(
                        "max-streams must be 1 to {MAX_STREAMS}"
                    )));
                }
                Ok(Config::Server(ServerConfig {
                    port,
                    tests: r.get::<u32>("tests")?,
                    max_streams,
                    interval_ms: r.secs_ms("interval", d.interval_ms)?,
                    timeout_ms: r.secs_ms("timeout", d.timeout_ms)?,
                    stall_ms: r.secs_ms("stall", d.stall_ms)?,
                }))
            }
            Some("client") => {
                let addr = r
                    .get::<&str>("server")?
                    .ok_or_else(|| ConfigError(String::from("mode=client needs server=A.B.C.D")))?;
                let address = parse_ipv4(addr).ok_or_else(|| {
                    ConfigError(format!(
                        "argument `server={addr}`: expected an IPv4 address"
                    ))
                })?;
                let mut c = ClientConfig::new(Peer { address, port });
                let p = &mut c.params;
                if let Some(n) = r.size("bytes", 1024)? {
                    p.bytes = n;
                    p.time = 0;
                }
                if let Some(t) = r.get::<u32>("time")? {
                    p.time = t;
                }
                p.parallel = r.get::<u32>("parallel")?.unwrap_or(1);
                p.len = r.size32("len")?.unwrap_or(p.len);
                p.reverse = r.get::<bool>("reverse")?.unwrap_or(false);
                p.window = r.size32("window")?.unwrap_or(0);
                p.nodelay = r.get::<bool>("nodelay")?.unwrap_or(false);
                p.bandwidth = r.size("bitrate", 1000)?.unwrap_or(0);
                p.omit = r.get::<u32>("omit")?.unwrap_or(0);
                // The limits a stock server checks, checked here first.
                let v = p.to_json();
                crate::proto::Params::from_json(&v, MAX_STREAMS).map_err(|e| {
                    ConfigError(format!(
                        "the test asked for is out of iperf3's limits: {}",
                        crate::proto::strerror(e.0).unwrap_or("refused")
                    ))
                })?;
                if p.time == 0 && p.bytes == 0 {
                    return Err(ConfigError(String::from("time=0 needs bytes=N")));
                }
                c.interval_ms = r.secs_ms("interval", c.interval_ms)?;
                c.timeout_ms = r.secs_ms("timeout", c.timeout_ms)?;
                c.stall_ms = r.secs_ms("stall", c.stall_ms)?;
                Ok(Config::Client(c))
            }
            Some(other) => Err(ConfigError(format!(
                "argument `mode={other}`: expected server or client"
            ))),
            None => Err(ConfigError(String::from(
                "mode=server or mode=client is required",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_line_becomes_the_test_it_names() {
        let Config::Client(c) = Config::parse(
            "mode=client server=198.18.0.1 port=5202 time=5 parallel=4 reverse=true len=64K interval=0",
        )
        .unwrap() else {
            panic!("not a client")
        };
        assert_eq!(
            c.server,
            Peer {
                address: [198, 18, 0, 1],
                port: 5202
            }
        );
        let p = &c.params;
        assert_eq!(
            (p.time, p.parallel, p.reverse, p.len, p.bytes),
            (5, 4, true, 65536, 0)
        );
        assert_eq!(c.interval_ms, 0);
        let Config::Client(c) =
            Config::parse("mode=client server=1.2.3.4 bytes=10M bitrate=1G").unwrap()
        else {
            panic!("not a client")
        };
        assert_eq!(
            (c.params.time, c.params.bytes, c.params.bandwidth),
            (0, 10 << 20, 1_000_000_000)
        );
        assert_eq!(c.server.port, 5201);
    }

    #[test]
    fn a_server_line_takes_its_defaults() {
        let Config::Server(s) = Config::parse("mode=server").unwrap() else {
            panic!("not a server")
        };
        assert_eq!(s, ServerConfig::default());
        let Config::Server(s) =
            Config::parse("mode=server port=6000 tests=1 max-streams=8").unwrap()
        else {
            panic!("not a server")
        };
        assert_eq!((s.port, s.tests, s.max_streams), (6000, Some(1), 8));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        for (line, says) in [
            ("", "mode=server or mode=client"),
            ("mode=both", "mode=both"),
            ("mode=client", "server=A.B.C.D"),
            ("mode=client server=1.2.3", "IPv4"),
            (
                "mode=client server=1.2.3.4 parallel=500",
                "parallel streams",
            ),
            ("mode=client server=1.2.3.4 len=2M", "block size"),
            ("mode=client server=1.2.3.4 bytes=12Q", "bytes=12Q"),
            ("mode=client server=1.2.3.4 time=0", "time=0"),
            ("mode=server port=70000", "port=70000"),
            ("mode=server max-streams=0", "max-streams"),
        ] {
            let e = Config::parse(line).unwrap_err();
            assert!(e.0.contains(says), "{line:?}: {e}");
        }
    }

    #[test]
    fn sizes_and_addresses_parse_strictly() {
        assert_eq!(parse_size("128K", 1024), Some(131_072));
        assert_eq!(parse_size("3g", 1000), Some(3_000_000_000));
        assert_eq!(parse_size("K", 1024), None);
        assert_eq!(parse_size("99999999999999G", 1024), None);
        assert_eq!(parse_ipv4("198.18.0.1"), Some([198, 18, 0, 1]));
        for bad in [
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1..2.3",
            "a.b.c.d",
            "+1.2.3.4",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
    }
}

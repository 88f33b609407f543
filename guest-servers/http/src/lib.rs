//! The http application: an HTTP/1.1 server over any [`compart_sockets::Net`], serving a
//! status page and deterministic bodies of any length, for fetching with stock `curl`.
//!
//! Routes (GET and HEAD; other methods are 405):
//! - `/` and `/status`: the status page (`text/plain`): this server's counters
//!   ([`Counters`]: connections, requests, responses, bytes, uptime) and the stack's, as
//!   the glue's `stats` callback writes them.
//! - `/bytes/N`: exactly N bytes (0 ≤ N < 10^19) of the [`pattern`], with
//!   `Content-Length: N`.
//! - `/body`: the fixed-size download, `body_mib` MiB of the same pattern.
//!
//! The server ([`Server`]) runs every connection at once on non-blocking streams, and
//! sleeps in [`Net::wait`] when none can progress. Connections are persistent (HTTP/1.1
//! keep-alive, HTTP/1.0 with `Connection: keep-alive`) until the client sends
//! `Connection: close`, and pipelined requests are answered in order. A request head
//! that does not parse ([`parse`]: bounded at 8 KiB, never panicking) is answered 400,
//! 414, 431 or 505 and the connection closed; a request announcing a body is answered
//! and the connection closed (no route takes a body). Connections idle for
//! [`Config::idle_ms`] are closed, and so are those whose request head is not complete
//! `idle_ms` after its first byte, or that keep sending `idle_ms` after the server's
//! FIN.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod parse;
#[cfg(test)]
mod tests;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

use compart_sockets::{Errno, Listener, Net, SockOpt, Stream};
use parse::{Method, Parsed, Request};

/// A response status the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200.
    Ok,
    /// 400: the head does not parse.
    BadRequest,
    /// 404: no such route.
    NotFound,
    /// 405: a method other than GET and HEAD.
    MethodNotAllowed,
    /// 414: the request line is longer than [`parse::MAX_REQUEST_LINE`].
    UriTooLong,
    /// 431: the head is longer than [`parse::MAX_HEAD`], or has too many headers.
    HeadersTooLarge,
    /// 505: an HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
}

impl Status {
    /// The status code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::UriTooLong => 414,
            Status::HeadersTooLarge => 431,
            Status::VersionNotSupported => 505,
        }
    }

    /// The reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::UriTooLong => "URI Too Long",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// The period of the [`pattern`].
pub const PATTERN_PERIOD: u64 = 251;

/// Byte `offset` of every body the server generates: `offset mod 251`. A prime period,
/// so that no power-of-two block of a body equals its neighbour; a lost, repeated or
/// reordered segment changes the body's hash.
pub fn pattern(offset: u64) -> u8 {
    // The remainder is below 251: the cast keeps it.
    (offset % PATTERN_PERIOD) as u8
}

/// Bytes handed to one `write` of a body at most.
pub const CHUNK: usize = 64 * 1024;

/// The server's settings (the image's command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The TCP port (`port=`, default 80).
    pub port: u16,
    /// The size of `/body` in MiB (`body_mib=`, default 100).
    pub body_mib: u64,
    /// Connections served at once (`conns=`, default 256); more wait in the backlog.
    pub max_conns: usize,
    /// A connection with no progress for this long is closed (`idle_ms=`, default
    /// 30000).
    pub idle_ms: u64,
    /// The listen backlog (`backlog=`, default 64).
    pub backlog: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            port: 80,
            body_mib: 100,
            max_conns: 256,
            idle_ms: 30_000,
            backlog: 64,
        }
    }
}

impl Config {
    /// Settings from a command line (`port=80 body_mib=100 conns=256 idle_ms=30000
    /// backlog=64`; each optional); the first wrong argument's message.
    pub fn from_args(args: &compart_kit::cmdline::Args<'_>) -> Result<Config, String> {
        let d = Config::default();
        let e = |e: compart_kit::cmdline::ArgError<'_>| alloc::format!("{e}");
        let c = Config {
            port: args.get("port").map_err(e)?.unwrap_or(d.port),
            body_mib: args.get("body_mib").map_err(e)?.unwrap_or(d.body_mib),
            max_conns: args.get("conns").map_err(e)?.unwrap_or(d.max_conns),
            idle_ms: args.get("idle_ms").map_err(e)?.unwrap_or(d.idle_ms),
            backlog: args.get("backlog").map_err(e)?.unwrap_or(d.backlog),
        };
        if c.max_conns == 0 || c.max_conns > 65_536 {
            return Err(alloc::format!(
                "argument `conns={}`: expected 1-65536",
                c.max_conns
            ));
        }
        if c.body_mib > 1 << 20 {
            return Err(alloc::format!(
                "argument `body_mib={}`: expected at most 1048576",
                c.body_mib
            ));
        }
        Ok(c)
    }
}

/// What the server has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed (by either side, or for idleness or an error).
    pub closed: u64,
    /// Of those, closed for idleness.
    pub timed_out: u64,
    /// Request heads read (well-formed or not).
    pub requests: u64,
    /// Responses 2xx.
    pub ok: u64,
    /// Responses 404 and 405.
    pub not_found: u64,
    /// Responses 400, 414, 431, 505.
    pub bad: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent (heads and bodies).
    pub bytes_out: u64,
    /// Socket calls that failed with an error other than `Again` (the connection is
    /// closed).
    pub errors: u64,
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Counters {
            accepted,
            closed,
            timed_out,
            requests,
            ok,
            not_found,
            bad,
            bytes_in,
            bytes_out,
            errors,
        } = self;
        write!(
            f,
            "accepted={accepted} closed={closed} timed_out={timed_out} requests={requests} \
             ok={ok} not_found={not_found} bad={bad} bytes_in={bytes_in} \
             bytes_out={bytes_out} errors={errors}"
        )
    }
}

/// The body of a response being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PatternBody {
    /// The next byte's offset in the pattern.
    offset: u64,
    /// Bytes still to send.
    left: u64,
}

#[derive(Debug)]
enum State {
    /// Reading the next request head.
    Reading,
    /// Sending `out[sent..]`, then the pattern body; then reading again, or closing.
    Writing {
        out: Vec<u8>,
        sent: usize,
        body: PatternBody,
        close: bool,
    },
    /// Response sent, FIN sent: waiting for the peer to close (reading and dropping),
    /// so that closing does not reset data the peer has not read; for `idle_ms` at
    /// most.
    Draining,
}

#[derive(Debug)]
struct Conn<S> {
    stream: S,
    /// Received bytes not yet consumed (at most [`parse::MAX_HEAD`]).
    input: Vec<u8>,
    state: State,
    /// The last time it made progress (ms of `Net::now_ms`).
    last_ms: u64,
    /// When it is closed even if it progresses: a request head must be complete within
    /// `idle_ms` of its first byte, and a closing connection drained within `idle_ms`.
    deadline_ms: Option<u64>,
    done: bool,
}

/// One pass over a connection: progress made, or not.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Progress,
    Blocked,
}

/// The pattern's bytes from offset 0, long enough that any [`CHUNK`] of the pattern is
/// one slice of it.
fn pattern_table() -> Vec<u8> {
    (0..CHUNK as u64 + PATTERN_PERIOD).map(pattern).collect()
}

/// The HTTP server over `N`, with the stack's counters written by `stats` (given the
/// network, a buffer to append `name=value` text to).
pub struct Server<N: Net, F: FnMut(&mut N, &mut String)> {
    net: N,
    listener: N::Listener,
    config: Config,
    stats: F,
    conns: Vec<Conn<N::Stream>>,
    counters: Counters,
    start_ms: u64,
    table: Vec<u8>,
    /// Connections open at the start of the current pass.
    open: usize,
}

impl<N: Net, F: FnMut(&mut N, &mut String)> fmt::Debug for Server<N, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("conns", &self.conns.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<N: Net, F: FnMut(&mut N, &mut String)> Server<N, F> {
    /// Listen on `config.port`; the error if the stack refuses.
    pub fn new(mut net: N, config: Config, stats: F) -> Result<Self, Errno> {
        let mut listener = net.listen(config.port, config.backlog)?;
        listener.set_nonblocking(true)?;
        let start_ms = net.now_ms();
        Ok(Server {
            net,
            listener,
            config,
            stats,
            conns: Vec::new(),
            counters: Counters::default(),
            start_ms,
            table: pattern_table(),
            open: 0,
        })
    }

    /// What it has done so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// The network it runs on.
    pub fn net(&mut self) -> &mut N {
        &mut self.net
    }

    /// Serve until `stop` says so (asked after every pass, and so after every wait).
    pub fn run(&mut self, mut stop: impl FnMut(&Self) -> bool) {
        while !stop(self) {
            if !self.poll() {
                let deadline = self.next_deadline();
                self.net.wait(deadline);
            }
        }
    }

    /// The next time a connection may time out; none without connections (a new one
    /// is a readiness change of the listener, which ends the wait).
    pub fn next_deadline(&self) -> Option<u64> {
        self.conns
            .iter()
            .map(|c| {
                let idle = c.last_ms.saturating_add(self.config.idle_ms);
                c.deadline_ms.map_or(idle, |d| d.min(idle))
            })
            .min()
    }

    /// One pass: accept what waits, move every connection on, close the finished ones.
    /// Whether anything progressed.
    pub fn poll(&mut self) -> bool {
        let mut progress = false;
        while self.conns.len() < self.config.max_conns {
            match self.listener.accept() {
                Ok((mut stream, _peer)) => {
                    progress = true;
                    self.counters.accepted += 1;
                    if stream.set_nonblocking(true).is_err() {
                        self.counters.errors += 1;
                        self.counters.closed += 1;
                        continue;
                    }
                    // Small responses go out at once; bodies fill segments anyway.
                    let _ = stream.set_option(SockOpt::NoDelay(true));
                    self.conns.push(Conn {
                        stream,
                        input: Vec::new(),
                        state: State::Reading,
                        last_ms: self.net.now_ms(),
                        deadline_ms: None,
                        done: false,
                    });
                }
                Err(Errno::Again) => break,
                Err(_) => {
                    self.counters.errors += 1;
                    break;
                }
            }
        }
        let now = self.net.now_ms();
        self.open = self.conns.len();
        let mut conns = core::mem::take(&mut self.conns);
        for c in &mut conns {
            if self.step(c, now) == Step::Progress {
                progress = true;
                c.last_ms = now;
            } else if now.saturating_sub(c.last_ms) >= self.config.idle_ms {
                self.counters.timed_out += 1;
                c.done = true;
            }
            if !c.done && c.deadline_ms.is_some_and(|d| now >= d) {
                self.counters.timed_out += 1;
                c.done = true;
            }
        }
        let before = conns.len();
        conns.retain(|c| !c.done);
        self.counters.closed += (before - conns.len()) as u64;
        // Connections accepted during the pass were pushed onto the empty vector.
        conns.append(&mut self.conns);
        self.conns = conns;
        progress
    }

    /// Moves one connection on as far as it goes without blocking.
    fn step(&mut self, c: &mut Conn<N::Stream>, now: u64) -> Step {
        let mut step = Step::Blocked;
        loop {
            match &mut c.state {
                State::Reading => {
                    // Answer what is buffered first (pipelining), then read.
                    if self.respond_buffered(c, now) {
                        step = Step::Progress;
                        continue;
                    }
                    // A head has begun: it has idle_ms to complete (a trickle of bytes
                    // does not keep a connection forever).
                    if !c.input.is_empty() && c.deadline_ms.is_none() {
                        c.deadline_ms = Some(now.saturating_add(self.config.idle_ms));
                    }
                    let mut buf = [0u8; 2048];
                    let room = parse::MAX_HEAD - c.input.len().min(parse::MAX_HEAD);
                    if room == 0 {
                        // respond_buffered refuses a full buffer; not reached.
                        c.done = true;
                        return step;
                    }
                    let want = room.min(buf.len());
                    match c.stream.read(&mut buf[..want]) {
                        Ok(0) => {
                            c.done = true;
                            return Step::Progress;
                        }
                        Ok(n) => {
                            self.counters.bytes_in += n as u64;
                            c.input.extend_from_slice(&buf[..n]);
                            step = Step::Progress;
                        }
                        Err(Errno::Again) => return step,
                        Err(_) => {
                            self.counters.errors += 1;
                            c.done = true;
                            return step;
                        }
                    }
                }
                State::Writing {
                    out,
                    sent,
                    body,
                    close,
                } => {
                    let chunk: &[u8] = if *sent < out.len() {
                        &out[*sent..]
                    } else if body.left > 0 {
                        let start = (body.offset % PATTERN_PERIOD) as usize;
                        let len = body.left.min(CHUNK as u64) as usize;
                        &self.table[start..start + len]
                    } else {
                        if *close {
                            let _ = c.stream.shutdown();
                            c.state = State::Draining;
                            c.deadline_ms = Some(now.saturating_add(self.config.idle_ms));
                        } else {
                            c.state = State::Reading;
                        }
                        continue;
                    };
                    match c.stream.write(chunk) {
                        Ok(n) => {
                            let n = n.min(chunk.len());
                            self.counters.bytes_out += n as u64;
                            if *sent < out.len() {
                                *sent += n;
                            } else {
                                body.offset += n as u64;
                                body.left -= n as u64;
                            }
                            step = Step::Progress;
                        }
                        Err(Errno::Again) => return step,
                        Err(_) => {
                            self.counters.errors += 1;
                            c.done = true;
                            return step;
                        }
                    }
                }
                State::Draining => {
                    let mut buf = [0u8; 2048];
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            c.done = true;
                            return Step::Progress;
                        }
                        Ok(n) => {
                            self.counters.bytes_in += n as u64;
                            step = Step::Progress;
                        }
                        Err(Errno::Again) => return step,
                        Err(_) => {
                            c.done = true;
                            return step;
                        }
                    }
                }
            }
        }
    }

    /// If `c.input` holds a complete (or refused) head, consume it and start its
    /// response; whether it did.
    fn respond_buffered(&mut self, c: &mut Conn<N::Stream>, now: u64) -> bool {
        if c.input.is_empty() {
            return false;
        }
        let (response, len) = match parse::parse(&c.input) {
            Parsed::Incomplete => return false,
            Parsed::Invalid(status) => (self.error_response(status, false), c.input.len()),
            Parsed::Complete { request, len } => (self.route(&request, now), len),
        };
        self.counters.requests += 1;
        match response.status {
            Status::Ok => self.counters.ok += 1,
            Status::NotFound | Status::MethodNotAllowed => self.counters.not_found += 1,
            _ => self.counters.bad += 1,
        }
        c.input.drain(..len);
        c.deadline_ms = None;
        c.state = State::Writing {
            out: response.head,
            sent: 0,
            body: response.body,
            close: response.close,
        };
        true
    }

    fn route(&mut self, req: &Request<'_>, now: u64) -> Response {
        if req.method == Method::Other {
            return self.error_response(Status::MethodNotAllowed, req.keep_alive);
        }
        let head_only = req.method == Method::Head;
        // The path of an origin-form target, or of an absolute-form one.
        let mut path = req.target;
        if let Some(rest) = path
            .strip_prefix(b"http://")
            .or_else(|| path.strip_prefix(b"https://"))
        {
            path = rest
                .iter()
                .position(|&b| b == b'/')
                .map_or(b"/", |i| &rest[i..]);
        }
        if let Some(q) = path.iter().position(|&b| b == b'?') {
            path = &path[..q];
        }
        if !path.starts_with(b"/") {
            return self.error_response(Status::BadRequest, false);
        }
        let body_len = match path {
            b"/" | b"/status" => {
                let page = self.status_page(now);
                return Response::text(Status::Ok, page, req.keep_alive, head_only);
            }
            b"/body" => self.config.body_mib << 20,
            _ => match path.strip_prefix(b"/bytes/") {
                Some(n) => match parse::parse_decimal(n) {
                    Some(n) => n,
                    None => return self.error_response(Status::NotFound, req.keep_alive),
                },
                None => return self.error_response(Status::NotFound, req.keep_alive),
            },
        };
        let mut head = response_head(
            Status::Ok,
            "application/octet-stream",
            body_len,
            req.keep_alive,
        );
        let mut body = PatternBody {
            offset: 0,
            left: if head_only { 0 } else { body_len },
        };
        // The head and the body's first bytes in one write.
        let first = body.left.min((CHUNK - head.len().min(CHUNK)) as u64);
        head.extend_from_slice(&self.table[..first as usize]);
        body.offset = first;
        body.left -= first;
        Response {
            status: Status::Ok,
            head,
            body,
            close: !req.keep_alive,
        }
    }

    fn error_response(&mut self, status: Status, keep_alive: bool) -> Response {
        let mut text = String::new();
        let _ = writeln!(text, "{} {}", status.code(), status.reason());
        Response::text(status, text, keep_alive, false)
    }

    /// The status page.
    pub fn status_page(&mut self, now: u64) -> String {
        let up = now.saturating_sub(self.start_ms);
        let mut s = String::new();
        let _ = writeln!(s, "compart http server");
        let _ = writeln!(s, "uptime_ms={up}");
        let _ = writeln!(
            s,
            "port={} body_mib={} conns_max={} open={}",
            self.config.port, self.config.body_mib, self.config.max_conns, self.open
        );
        let _ = writeln!(s, "http: {}", self.counters);
        s.push_str("stack: ");
        let before = s.len();
        (self.stats)(&mut self.net, &mut s);
        if s.len() == before {
            s.push_str("(none)");
        }
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

/// A response's head (with a small body in it) and its pattern body.
#[derive(Debug)]
struct Response {
    status: Status,
    head: Vec<u8>,
    body: PatternBody,
    close: bool,
}

impl Response {
    /// A `text/plain` response; for HEAD without its body.
    fn text(status: Status, text: String, keep_alive: bool, head_only: bool) -> Response {
        let mut head = response_head(
            status,
            "text/plain; charset=utf-8",
            text.len() as u64,
            keep_alive,
        );
        if !head_only {
            head.extend_from_slice(text.as_bytes());
        }
        Response {
            status,
            head,
            body: PatternBody { offset: 0, left: 0 },
            close: !keep_alive,
        }
    }
}

fn response_head(status: Status, content_type: &str, len: u64, keep_alive: bool) -> Vec<u8> {
    let mut h = String::new();
    let _ = write!(
        h,
        "HTTP/1.1 {} {}\r\nServer: compart-http\r\nContent-Type: {content_type}\r\n\
         Content-Length: {len}\r\nConnection: {}\r\n",
        status.code(),
        status.reason(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if status == Status::MethodNotAllowed {
        h.push_str("Allow: GET, HEAD\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

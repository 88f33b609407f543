//! An iperf3-compatible server and client (TCP), interoperable with stock `iperf3`:
//! the control protocol of esnet/iperf ([`proto`]; NETSTACK.md §E.1), the JSON of its
//! parameters and results ([`json`], bounded and never panicking on what a peer sends),
//! and the data connections moved by a non-blocking pump ([`flow`]).
//!
//! - [`server::Server`]: `iperf3 -s`: one test at a time on its port, `-t`, `-n`/`-k`,
//!   `-P`, `-R`, `-O`, `-b`, `-w`, `-N`, `-l`, `--get-server-output`; UDP, SCTP, MPTCP
//!   and `--bidir` are refused with iperf3's "not implemented" error, `-M` and `-S`
//!   (which the socket API cannot set) with its "unable to set" ones, a second client
//!   while a test runs with `ACCESS_DENIED`.
//! - [`client::run`]: `iperf3 -c`: the same options from the command line, the summary
//!   printed as iperf3 prints it.
//!
//! Everything is generic over [`compart_sockets::Net`]: in a guest over the posix server,
//! on the host over `std::net` (the tests run it against stock `iperf3`). Every socket is
//! non-blocking; the control connection and the streams are multiplexed by passes over
//! all of them, sleeping in `Net::wait` when a pass moved nothing; every wait has a
//! deadline.
//!
//! CPU use in the results is the share of the test's time not spent asleep in
//! `Net::wait`, reported as user time ("awake" on the console): time blocked inside a
//! socket call counts as awake, so over posix, where every call waits for its reply,
//! it reads near 100 %.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod client;
pub mod config;
pub mod flow;
pub mod io;
pub mod json;
pub mod proto;
pub mod report;
pub mod server;

use core::fmt;

use compart_sockets::Errno;

pub use config::{Config, ConfigError};

/// The version this implementation says it is (as `client_version`).
pub const VERSION: &str = "3.12-compart";

/// Why a test failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A socket call failed while doing the named thing.
    Net(&'static str, Errno),
    /// The named message did not arrive (or could not be sent) in time.
    Timeout(&'static str),
    /// The peer closed the connection while the named message was expected.
    Closed(&'static str),
    /// The peer sent a state byte that does not belong here.
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// The byte that came.
        got: i8,
    },
    /// A message longer than allowed.
    TooLong {
        /// The message.
        what: &'static str,
        /// Its announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The named message is not JSON.
    Json(&'static str, json::JsonError),
    /// The named message lacks what it must have, or has values out of range
    /// (iperf3's error number).
    Refused(&'static str, i32),
    /// The server sent SERVER_ERROR with these numbers.
    ServerError {
        /// iperf3's error number.
        code: i32,
        /// The server's errno.
        errno: i32,
    },
    /// The server is busy with another test (ACCESS_DENIED).
    AccessDenied,
    /// The server ended the test (SERVER_TERMINATE).
    ServerTerminated,
    /// The client ended the test (CLIENT_TERMINATE).
    ClientTerminated,
    /// Nothing moved on the data connections for this many ms.
    Stalled(u64),
    /// The test ran past its time and the grace period.
    Overran,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Net(what, e) => write!(f, "{what}: {e:?}"),
            Error::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Error::Closed(what) => write!(f, "the peer closed the connection before {what}"),
            Error::Unexpected { expected, got } => {
                write!(f, "expected {expected}, got state {got}")
            }
            Error::TooLong { what, len, max } => {
                write!(f, "{what}: {len} bytes, more than the {max} allowed")
            }
            Error::Json(what, e) => write!(f, "{what}: {e}"),
            Error::Refused(what, code) => write!(
                f,
                "{what}: {} (iperf3 error {code})",
                proto::strerror(*code).unwrap_or("refused")
            ),
            Error::ServerError { code, errno } => write!(
                f,
                "the server failed: {} (iperf3 error {code}, errno {errno})",
                proto::strerror(*code).unwrap_or("unknown error")
            ),
            Error::AccessDenied => {
                f.write_str("the server is busy running a test. try again later (ACCESS_DENIED)")
            }
            Error::ServerTerminated => f.write_str("the server has terminated"),
            Error::ClientTerminated => f.write_str("the client has terminated"),
            Error::Stalled(ms) => write!(f, "no data moved for {ms} ms"),
            Error::Overran => f.write_str("the test ran past its time and grace period"),
        }
    }
}

/// The iperf3 error number a server sends its client for `e`.
pub fn iperf_errno(e: &Error) -> i32 {
    match e {
        Error::Refused(_, code) => *code,
        Error::Json("the parameters", _)
        | Error::TooLong {
            what: "the parameters",
            ..
        } => proto::IERECVPARAMS,
        Error::Json(..) | Error::TooLong { .. } => proto::IERECVRESULTS,
        Error::Unexpected { .. } => proto::IEMESSAGE,
        Error::Stalled(_) => proto::IENOMSG,
        Error::Overran => 160,
        _ => 101,
    }
}

#[cfg(test)]
mod tests;

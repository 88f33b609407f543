//! The tcp server: smoltcp's TCP over the channel to ip (the `compart_proto::packet`
//! protocol), with a socket table the posix server will drive.
//!
//! - [`device`]: the channel-backed `smoltcp::phy::Device` ([`ChannelDevice`]):
//!   backpressure instead of drops, packets copied out of the shared pool before
//!   smoltcp parses them, offload metadata.
//! - [`core`]: the interface and the bounded socket table ([`Tcp`]): listen, accept,
//!   connect, send, recv, shutdown, close, readiness; errno-style [`Error`]s.
//! - [`posix`]: the socket protocol (`compart_proto::socket`) served to the posix
//!   server over its channel, on the core's calls.
//!
//! Time is a parameter (`smoltcp::time::Instant` from the glue's clock), so all of it
//! is tested here on the host; the image (`main.rs`) is the glue.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod core;
pub mod device;
pub mod posix;

pub use crate::config::ConfigQuery;
pub use crate::core::{Error, Handle, Iface, Limits, Ready, SockOpt, Tcp, Totals};
pub use device::ChannelDevice;
pub use smoltcp::time::{Duration, Instant};

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

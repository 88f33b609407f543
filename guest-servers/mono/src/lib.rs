//! The monolithic baseline: the same driver, ip and tcp code as the decomposed stack
//! (the libraries of `guest-servers/driver`, `ip` and `tcp`), linked into one guest
//! and connected by channel pairs in the guest's own memory, with the application on
//! the same core: what isolation costs is the difference between the two.
//!
//! - [`net`]: compart-sockets' [`Net`](compart_sockets::Net) over the in-guest tcp
//!   core ([`LocalNet`]): a blocking call that cannot progress runs the stack (one
//!   pass over every layer, or a sleep when none has work) and tries again, so an
//!   application written against `Net` runs here unchanged.
//!
//! The applications are the same crates the decomposed stack runs over the posix
//! server (`guest-servers/echo`, `guest-servers/iperf3`), unchanged.
//!
//! The image (`main.rs`) composes the layers: with a NIC, all of them (driver, ip and
//! tcp in one loop, with no sleep between them); with a channel to an ip server
//! instead, only tcp, so that the same application runs over the decomposed stack.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod net;

pub use net::{Engine, LocalListener, LocalNet, LocalStream};

#[cfg(test)]
mod tests;

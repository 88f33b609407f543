//! The ip server: Ethernet, ARP, IPv4 and ICMP between the driver (frames, the
//! `compart_proto::frame` protocol) and the layer above (IPv4 packets, the
//! `compart_proto::packet` protocol: `pf`, or `tcp` when there is no filter).
//!
//! - [`stack`]: the protocol logic ([`Ip`]): frames in, frames and packets out, time
//!   passed in as an [`Instant`]; parsing on `smoltcp::wire`'s zero-copy views, every
//!   field checked, every drop counted under its reason ([`Counters`]), never a panic.
//! - [`arp`], [`reasm`]: the neighbour cache and the reassembly buffers, each bounded by
//!   [`Limits`].
//! - [`config`]: the address, the connected network and the routes.
//! - [`server`]: the stack over channels ([`IpServer`]): the driver's and the upper
//!   layer's endpoints, credit-based flow in both directions.
//!
//! The logic needs no firmware, so it is tested here on the host; the image
//! (`main.rs`) runs [`IpServer`] over the guest's channels, with the guest's clock.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod arp;
pub mod config;
pub mod counters;
pub mod reasm;
pub mod server;
pub mod stack;

pub use config::Settings;
pub use counters::Counters;
pub use server::IpServer;
pub use stack::Ip;

/// A point in time, in milliseconds since some start (the glue's clock).
pub use compart_kit::clock::Instant;

/// The bounds on everything the ip server keeps, and its timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Neighbours in the ARP cache.
    pub arp_entries: usize,
    /// How long a neighbour stays cached.
    pub arp_ttl_ms: u64,
    /// Time between ARP requests for a next hop that has not answered.
    pub arp_retry_ms: u64,
    /// Requests sent before packets waiting for a next hop are dropped.
    pub arp_tries: u32,
    /// Next hops being resolved at once.
    pub arp_pending_hops: usize,
    /// Packets waiting per next hop.
    pub arp_pending_packets: usize,
    /// Bytes of all packets waiting for ARP.
    pub arp_pending_bytes: usize,
    /// Datagrams in reassembly at once.
    pub reasm_slots: usize,
    /// Bytes of all datagrams in reassembly.
    pub reasm_bytes: usize,
    /// How long a datagram may take to arrive whole.
    pub reasm_timeout_ms: u64,
    /// Bytes queued towards the driver, and (separately) towards the upper layer.
    pub queue_bytes: usize,
    /// ICMP errors sent per second at most.
    pub icmp_errors_per_s: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            arp_entries: 64,
            arp_ttl_ms: 60_000,
            arp_retry_ms: 1_000,
            arp_tries: 3,
            arp_pending_hops: 16,
            arp_pending_packets: 16,
            arp_pending_bytes: 256 * 1024,
            reasm_slots: 8,
            reasm_bytes: 256 * 1024,
            reasm_timeout_ms: 30_000,
            queue_bytes: 1024 * 1024,
            icmp_errors_per_s: 100,
        }
    }
}

#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;

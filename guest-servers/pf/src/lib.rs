//! The pf server: a stateful packet filter between ip (below) and tcp (above), relaying
//! the `compart_proto::packet` protocol both ways without rewriting a packet.
//!
//! - [`flow`]: what the filter looks at in a packet (protocol, addresses, ports, TCP
//!   flags, ICMP type and identifier, the packet an ICMP error quotes), parsed with
//!   `smoltcp::wire`'s zero-copy views on pf's private copy of the packet.
//! - [`rules`]: the static rules from the command line and the default policy.
//! - [`conntrack`]: the connection table: a dynamic entry per connection a rule let
//!   through, which lets the rest of that connection pass both ways; bounded, with
//!   per-protocol timeouts.
//! - [`filter`]: rules and table together, one verdict per packet, every refusal counted
//!   under its reason ([`Counters`]).
//! - [`server`]: the relay over the two channels ([`PfServer`]).
//!
//! Time is a parameter ([`Instant`]); the image (`main.rs`) reads the clock.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod conntrack;
pub mod counters;
pub mod filter;
pub mod flow;
pub mod rules;
pub mod server;

pub use conntrack::Conntrack;
pub use counters::Counters;
pub use filter::{Filter, Verdict};
pub use rules::{Dir, Rules};
pub use server::PfServer;

/// A point in time, in milliseconds since some start (the glue's clock).
pub use compart_kit::clock::Instant;

/// The connection table's bound and its timeouts (milliseconds of idleness after which an
/// entry goes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Entries in the connection table; a new connection finding it full is refused.
    pub conntrack_entries: usize,
    /// TCP: a SYN seen, the handshake not completed.
    pub tcp_opening_ms: u64,
    /// TCP: the handshake completed, no FIN or RST yet.
    pub tcp_established_ms: u64,
    /// TCP: one side sent a FIN.
    pub tcp_closing_ms: u64,
    /// TCP: both sides sent a FIN, or either a RST.
    pub tcp_closed_ms: u64,
    /// UDP: no packet seen in the reply direction yet.
    pub udp_first_ms: u64,
    /// UDP: packets seen both ways.
    pub udp_ms: u64,
    /// ICMP queries (echo), and protocols other than TCP, UDP and ICMP.
    pub icmp_ms: u64,
    /// Least time between two scans of the whole table for expired entries (an expired
    /// entry found by a lookup is treated as gone at once).
    pub scan_interval_ms: u64,
}

impl Limits {
    /// The command-line keys of the timeouts (each `KEY=MS`), the field names.
    pub const TIMEOUT_KEYS: [&'static str; 8] = [
        "tcp_opening_ms",
        "tcp_established_ms",
        "tcp_closing_ms",
        "tcp_closed_ms",
        "udp_first_ms",
        "udp_ms",
        "icmp_ms",
        "scan_interval_ms",
    ];

    /// The timeout named `key` (one of [`TIMEOUT_KEYS`](Self::TIMEOUT_KEYS)).
    pub fn timeout_mut(&mut self, key: &str) -> Option<&mut u64> {
        Some(match key {
            "tcp_opening_ms" => &mut self.tcp_opening_ms,
            "tcp_established_ms" => &mut self.tcp_established_ms,
            "tcp_closing_ms" => &mut self.tcp_closing_ms,
            "tcp_closed_ms" => &mut self.tcp_closed_ms,
            "udp_first_ms" => &mut self.udp_first_ms,
            "udp_ms" => &mut self.udp_ms,
            "icmp_ms" => &mut self.icmp_ms,
            "scan_interval_ms" => &mut self.scan_interval_ms,
            _ => return None,
        })
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            conntrack_entries: 4096,
            tcp_opening_ms: 30_000,
            tcp_established_ms: 86_400_000,
            tcp_closing_ms: 120_000,
            tcp_closed_ms: 10_000,
            udp_first_ms: 30_000,
            udp_ms: 60_000,
            icmp_ms: 20_000,
            scan_interval_ms: 1_000,
        }
    }
}

#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;

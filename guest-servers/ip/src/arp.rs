//! The neighbour cache (ARP, RFC 826) and the packets waiting for a neighbour to answer.
//!
//! Both are bounded: at most [`Limits::arp_entries`](crate::Limits) neighbours (the
//! entry closest to expiry makes room for a new one), each valid for
//! `arp_ttl_ms`; at most `arp_pending_hops` next hops being resolved at once, each with
//! at most `arp_pending_packets` packets and all of them together at most
//! `arp_pending_bytes` bytes. A next hop that has not answered `arp_tries` requests,
//! `arp_retry_ms` apart, has its packets dropped and counted.
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use compart_proto::packet::PacketMeta;
use smoltcp::wire::{EthernetAddress, Ipv4Address};

use crate::{Instant, Limits};

#[derive(Debug, Clone, Copy)]
struct Entry {
    ip: Ipv4Address,
    mac: EthernetAddress,
    expires: Instant,
}

/// A packet waiting for its next hop's MAC address.
#[derive(Debug)]
pub struct Waiting {
    /// Its offload metadata.
    pub meta: PacketMeta,
    /// The IP packet.
    pub packet: Vec<u8>,
}

#[derive(Debug)]
struct Pending {
    ip: Ipv4Address,
    packets: VecDeque<Waiting>,
    tries: u32,
    next_try: Instant,
}

/// What [`Cache::hold`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Queued behind a request already sent.
    Queued,
    /// Queued; send an ARP request for the next hop now.
    Request,
    /// Dropped: too many packets or next hops waiting.
    Full,
}

/// The neighbour cache and the resolution queue.
#[derive(Debug, Default)]
pub struct Cache {
    entries: Vec<Entry>,
    pending: Vec<Pending>,
    pending_bytes: usize,
}

impl Cache {
    /// The MAC address of `ip`, if known and not expired.
    pub fn lookup(&mut self, ip: Ipv4Address, now: Instant) -> Option<EthernetAddress> {
        let i = self.entries.iter().position(|e| e.ip == ip)?;
        if self.entries[i].expires <= now {
            self.entries.swap_remove(i);
            return None;
        }
        Some(self.entries[i].mac)
    }

    /// Whether `ip` has an entry (expired or not).
    pub fn knows(&self, ip: Ipv4Address) -> bool {
        self.entries.iter().any(|e| e.ip == ip)
    }

    /// Whether a request for `ip` is outstanding.
    pub fn resolving(&self, ip: Ipv4Address) -> bool {
        self.pending.iter().any(|p| p.ip == ip)
    }

    /// Learn (or refresh) `ip` at `mac`. Returns whether an entry was pushed out, and
    /// the packets that were waiting for it, to send now.
    pub fn learn(
        &mut self,
        ip: Ipv4Address,
        mac: EthernetAddress,
        now: Instant,
        limits: &Limits,
    ) -> (bool, Vec<Waiting>) {
        let expires = now.after(limits.arp_ttl_ms);
        let mut evicted = false;
        if let Some(e) = self.entries.iter_mut().find(|e| e.ip == ip) {
            e.mac = mac;
            e.expires = expires;
        } else {
            if self.entries.len() >= limits.arp_entries.max(1) {
                let (i, _) = self
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.expires)
                    .expect("a full cache is not empty");
                self.entries.swap_remove(i);
                evicted = true;
            }
            self.entries.push(Entry { ip, mac, expires });
        }
        let mut out = Vec::new();
        if let Some(i) = self.pending.iter().position(|p| p.ip == ip) {
            let p = self.pending.swap_remove(i);
            for w in p.packets {
                self.pending_bytes -= w.packet.len();
                out.push(w);
            }
        }
        (evicted, out)
    }

    /// Queue `packet` until `next_hop` answers.
    pub fn hold(
        &mut self,
        next_hop: Ipv4Address,
        meta: PacketMeta,
        packet: Vec<u8>,
        now: Instant,
        limits: &Limits,
    ) -> Held {
        if self.pending_bytes + packet.len() > limits.arp_pending_bytes {
            return Held::Full;
        }
        let held = match self.pending.iter_mut().position(|p| p.ip == next_hop) {
            Some(i) => {
                if self.pending[i].packets.len() >= limits.arp_pending_packets {
                    return Held::Full;
                }
                Held::Queued
            }
            None => {
                if self.pending.len() >= limits.arp_pending_hops {
                    return Held::Full;
                }
                self.pending.push(Pending {
                    ip: next_hop,
                    packets: VecDeque::new(),
                    tries: 1,
                    next_try: now.after(limits.arp_retry_ms),
                });
                Held::Request
            }
        };
        self.pending_bytes += packet.len();
        let p = self
            .pending
            .iter_mut()
            .find(|p| p.ip == next_hop)
            .expect("just found or added");
        p.packets.push_back(Waiting { meta, packet });
        held
    }

    /// Timers: the next hops to ask again (pushed to `retry`), and the number of
    /// packets dropped because their next hop never answered. Expired entries go.
    pub fn poll(&mut self, now: Instant, limits: &Limits, retry: &mut Vec<Ipv4Address>) -> u64 {
        self.entries.retain(|e| e.expires > now);
        let mut dropped = 0;
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            if p.next_try > now {
                i += 1;
                continue;
            }
            if p.tries >= limits.arp_tries {
                let p = self.pending.swap_remove(i);
                for w in p.packets {
                    self.pending_bytes -= w.packet.len();
                    dropped += 1;
                }
                continue;
            }
            p.tries += 1;
            p.next_try = now.after(limits.arp_retry_ms);
            retry.push(p.ip);
            i += 1;
        }
        dropped
    }

    /// When [`poll`](Self::poll) next has something to do for a pending resolution.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.next_try).min()
    }

    /// Neighbours cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no neighbour is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Packets waiting for resolution, and their bytes.
    pub fn waiting(&self) -> (usize, usize) {
        (
            self.pending.iter().map(|p| p.packets.len()).sum(),
            self.pending_bytes,
        )
    }
}

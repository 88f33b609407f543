//! The ip server's protocol logic: frames in, frames and packets out, no channel in
//! sight (the [`server`](crate::server) moves them over channels).
//!
//! Receive: Ethernet (our MAC or broadcast) → ARP (answered, learnt) or IPv4 (header
//! checksum verified, lengths checked, padding trimmed, fragments reassembled) → ICMP
//! echo requests answered here, TCP/UDP/other ICMP to the upper layer, anything else
//! answered "protocol unreachable". Send: an IPv4 packet (from the upper layer, or made
//! here) is routed, its next hop resolved (or the packet held while ARP asks), and it
//! leaves as one frame, or as fragments when it is larger than the MTU and may be
//! fragmented, or as one GSO super-frame the device segments.
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use compart_proto::frame::{self, FrameMeta, Gso};
use compart_proto::packet::{self, DropReason, PacketMeta, Unreachable};
use smoltcp::wire::{
    checksum, ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Address, Ipv4Packet, ETHERNET_HEADER_LEN,
};

use crate::arp::{self, Held};
use crate::config::{is_unicast, Settings};
use crate::counters::Counters;
use crate::reasm::{Outcome, Reassembler};
use crate::{Instant, Limits};

const ETH: usize = ETHERNET_HEADER_LEN;
/// Smallest MTU IPv4 allows (RFC 791: every host handles 68-byte datagrams).
pub const MIN_MTU: u32 = 68;
/// TTL of the packets ip makes.
const TTL: u8 = 64;
/// Room an input may need in the queue to the driver: a 64 KiB packet fragmented at the
/// smallest MTU (1366 fragments of 48 bytes, each with 34 bytes of headers).
const TX_HEADROOM: usize = 1366 * (48 + 34) + 4096;
/// Room an input may need in the queue to the upper layer: one packet.
const UP_HEADROOM: usize = 65_535;

/// The link, as the driver reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The NIC's MAC address: the stack's.
    pub mac: EthernetAddress,
    /// Bytes of IP packet per frame.
    pub mtu: usize,
    /// `frame::offload::*`.
    pub offloads: u32,
}

/// Why a `Link` from the driver was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// The MAC address is not a unicast address.
    BadMac,
    /// The MTU is below 68 or above 65 535.
    BadMtu,
}

/// A frame for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxFrame {
    /// Its offload metadata (offsets from the Ethernet header).
    pub meta: FrameMeta,
    /// The frame, Ethernet header first.
    pub frame: Vec<u8>,
}

/// A packet for the upper layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpPacket {
    /// Its offload metadata (offsets from the IP header).
    pub meta: PacketMeta,
    /// The IPv4 packet.
    pub packet: Vec<u8>,
}

/// The ip server's state: configuration, link, neighbour cache, reassembly, the
/// queues towards the driver and the upper layer, and the counters.
#[derive(Debug)]
pub struct Ip {
    settings: Settings,
    limits: Limits,
    link: Option<Link>,
    arp: arp::Cache,
    reasm: Reassembler,
    counters: Counters,
    ident: u16,
    tx: VecDeque<TxFrame>,
    tx_bytes: usize,
    up: VecDeque<UpPacket>,
    up_bytes: usize,
    has_upper: bool,
    icmp_tokens: u32,
    icmp_refill: Instant,
    retry: Vec<Ipv4Address>,
}

impl Ip {
    /// A stack with `settings`, its link down until [`link_up`](Self::link_up).
    pub fn new(settings: Settings, limits: Limits) -> Ip {
        Ip {
            settings,
            icmp_tokens: limits.icmp_errors_per_s,
            limits,
            link: None,
            arp: arp::Cache::default(),
            reasm: Reassembler::default(),
            counters: Counters::default(),
            ident: 1,
            tx: VecDeque::new(),
            tx_bytes: 0,
            up: VecDeque::new(),
            up_bytes: 0,
            has_upper: false,
            icmp_refill: Instant::ZERO,
            retry: Vec::new(),
        }
    }

    /// What was counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The counters, for the server's own counts.
    pub(crate) fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// The configuration.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The link, once the driver reported it.
    pub fn link(&self) -> Option<Link> {
        self.link
    }

    /// The neighbour cache.
    pub fn arp_cache(&self) -> &arp::Cache {
        &self.arp
    }

    /// Datagrams in reassembly, and their bytes.
    pub fn reassembly_usage(&self) -> (usize, usize) {
        self.reasm.usage()
    }

    /// Whether an upper layer takes TCP, UDP and ICMP packets (else they are answered
    /// "protocol unreachable").
    pub fn set_upper(&mut self, present: bool) {
        self.has_upper = present;
    }

    /// The configuration for the upper layer, once the link is up.
    pub fn config(&self) -> Option<packet::Config> {
        let link = self.link?;
        #[allow(clippy::cast_possible_truncation)] // the MTU was checked ≤ 65 535
        Some(packet::Config {
            address: self.settings.address().octets(),
            prefix_len: self.settings.cidr.prefix_len(),
            mtu: link.mtu as u32,
            offloads: link.offloads,
        })
    }

    /// The driver reports the link: take its MAC and MTU, and announce our address
    /// (gratuitous ARP).
    pub fn link_up(
        &mut self,
        now: Instant,
        mac: [u8; 6],
        mtu: u32,
        offloads: u32,
    ) -> Result<(), LinkError> {
        let mac = EthernetAddress(mac);
        if !mac.is_unicast() || mac.0 == [0; 6] {
            return Err(LinkError::BadMac);
        }
        if !(MIN_MTU..=65_535).contains(&mtu) {
            return Err(LinkError::BadMtu);
        }
        self.link = Some(Link {
            mac,
            mtu: mtu as usize,
            offloads,
        });
        self.poll(now);
        let us = self.settings.address();
        self.arp_request(us);
        Ok(())
    }

    /// Whether the queues have room for whatever one more input may produce: the
    /// server takes a frame or packet only then, so nothing is dropped for want of
    /// room while the peers take their messages.
    pub fn has_room(&self) -> bool {
        self.tx_bytes + TX_HEADROOM <= self.limits.queue_bytes
            && self.up_bytes + UP_HEADROOM <= self.limits.queue_bytes
    }

    /// The next frame for the driver.
    pub fn pop_tx(&mut self) -> Option<TxFrame> {
        let f = self.tx.pop_front()?;
        self.tx_bytes -= f.frame.len();
        Some(f)
    }

    /// Put back a frame the driver channel had no room for.
    pub fn unpop_tx(&mut self, f: TxFrame) {
        self.tx_bytes += f.frame.len();
        self.tx.push_front(f);
    }

    /// The next packet for the upper layer.
    pub fn pop_up(&mut self) -> Option<UpPacket> {
        let p = self.up.pop_front()?;
        self.up_bytes -= p.packet.len();
        Some(p)
    }

    /// Put back a packet the upper channel had no room for.
    pub fn unpop_up(&mut self, p: UpPacket) {
        self.up_bytes += p.packet.len();
        self.up.push_front(p);
    }

    /// Timers: ARP retries and give-ups, cache expiry, reassembly timeouts.
    pub fn poll(&mut self, now: Instant) {
        self.counters.frag_timeout += self.reasm.expire(now);
        let mut retry = core::mem::take(&mut self.retry);
        self.counters.arp_unresolved += self.arp.poll(now, &self.limits, &mut retry);
        for ip in retry.drain(..) {
            self.arp_request(ip);
        }
        self.retry = retry;
    }

    /// When [`poll`](Self::poll) next has work: an ARP retry or a reassembly timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.arp.next_deadline(), self.reasm.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When an ARP retry is due (the one timer that is more than housekeeping).
    pub fn next_arp_deadline(&self) -> Option<Instant> {
        self.arp.next_deadline()
    }

    fn push_tx(&mut self, meta: FrameMeta, frame: Vec<u8>) {
        if self.tx_bytes + frame.len() > self.limits.queue_bytes {
            self.counters.tx_queue_full += 1;
            return;
        }
        self.counters.tx_frames += 1;
        self.tx_bytes += frame.len();
        self.tx.push_back(TxFrame { meta, frame });
    }

    fn push_up(&mut self, meta: PacketMeta, packet: &[u8]) {
        if self.up_bytes + packet.len() > self.limits.queue_bytes {
            self.counters.up_queue_full += 1;
            return;
        }
        self.counters.up_delivered += 1;
        self.up_bytes += packet.len();
        self.up.push_back(UpPacket {
            meta,
            packet: packet.to_vec(),
        });
    }

    /// An Ethernet frame from us to `dst` with `ethertype` and `len` zero bytes of
    /// payload after the header.
    fn new_frame(&self, dst: EthernetAddress, ethertype: EthernetProtocol, len: usize) -> Vec<u8> {
        let mac = self.link.map_or(EthernetAddress([0; 6]), |l| l.mac);
        let mut f = vec![0; ETH + len];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_dst_addr(dst);
        eth.set_src_addr(mac);
        eth.set_ethertype(ethertype);
        f
    }

    fn arp_request(&mut self, target: Ipv4Address) {
        let Some(link) = self.link else { return };
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: link.mac,
            source_protocol_addr: self.settings.address(),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        self.send_arp(EthernetAddress::BROADCAST, &repr);
        self.counters.arp_requests_sent += 1;
    }

    fn send_arp(&mut self, dst: EthernetAddress, repr: &ArpRepr) {
        let mut f = self.new_frame(dst, EthernetProtocol::Arp, repr.buffer_len());
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[ETH..]));
        self.push_tx(FrameMeta::PLAIN, f);
    }

    /// A frame from the driver, with its offload metadata.
    pub fn receive(&mut self, now: Instant, meta: FrameMeta, frame: &[u8]) {
        self.counters.rx_frames += 1;
        let Some(link) = self.link else {
            self.counters.rx_link_down += 1;
            return;
        };
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.rx_runt += 1;
            return;
        };
        let dst = eth.dst_addr();
        if dst != link.mac && !dst.is_broadcast() {
            self.counters.rx_not_for_us += 1;
            return;
        }
        let src = eth.src_addr();
        if !src.is_unicast() || src == link.mac || src.0 == [0; 6] {
            self.counters.rx_bad_src_mac += 1;
            return;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.arp_rx(now, eth.payload()),
            EthernetProtocol::Ipv4 => self.ipv4_rx(now, meta, eth.payload()),
            _ => self.counters.rx_unknown_ethertype += 1,
        }
    }

    fn arp_rx(&mut self, now: Instant, bytes: &[u8]) {
        self.counters.arp_rx += 1;
        let Ok(repr) = ArpPacket::new_checked(bytes).and_then(|p| ArpRepr::parse(&p)) else {
            self.counters.arp_malformed += 1;
            return;
        };
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr: sha,
            source_protocol_addr: spa,
            target_protocol_addr: tpa,
            ..
        } = repr
        else {
            self.counters.arp_malformed += 1;
            return;
        };
        if !matches!(operation, ArpOperation::Request | ArpOperation::Reply) {
            self.counters.arp_malformed += 1;
            return;
        }
        let Some(link) = self.link else { return };
        let us = self.settings.address();
        // A probe (RFC 5227) has no sender address yet: answer it, learn nothing.
        let probe = spa.is_unspecified();
        if !sha.is_unicast() || sha.0 == [0; 6] || (!probe && !is_unicast(spa)) {
            self.counters.arp_bad_sender += 1;
            return;
        }
        if spa == us {
            if sha != link.mac {
                self.counters.arp_conflict += 1;
            }
            return;
        }
        let for_us = tpa == us;
        if !probe && (for_us || self.arp.knows(spa) || self.arp.resolving(spa)) {
            self.learn(now, spa, sha);
        }
        match operation {
            ArpOperation::Request if for_us => {
                let reply = ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_hardware_addr: link.mac,
                    source_protocol_addr: us,
                    target_hardware_addr: sha,
                    target_protocol_addr: spa,
                };
                self.send_arp(sha, &reply);
                self.counters.arp_replies_sent += 1;
            }
            ArpOperation::Request => self.counters.arp_not_for_us += 1,
            _ => {}
        }
    }

    fn learn(&mut self, now: Instant, ip: Ipv4Address, mac: EthernetAddress) {
        let (evicted, waiting) = self.arp.learn(ip, mac, now, &self.limits);
        self.counters.arp_learnt += 1;
        self.counters.arp_evicted += u64::from(evicted);
        for w in waiting {
            self.emit(mac, w.meta, &w.packet);
        }
    }

    /// `meta` (offsets from the Ethernet header) for the `len`-byte IP packet behind
    /// it, offsets from the IP header; `None` if it does not fit the packet.
    fn rx_meta(meta: FrameMeta, len: usize) -> Option<PacketMeta> {
        let mut m = PacketMeta {
            flags: meta.flags,
            gso: meta.gso,
            ecn: meta.ecn,
            hdr_len: meta.hdr_len.saturating_sub(ETH as u16),
            gso_size: meta.gso_size,
            csum_start: 0,
            csum_offset: 0,
        };
        if meta.flags & frame::FLAG_NEEDS_CSUM != 0 {
            let start = meta.csum_start.checked_sub(ETH as u16)?;
            let field = usize::from(start) + usize::from(meta.csum_offset) + 2;
            if usize::from(start) < 20 || field > len {
                return None;
            }
            m.csum_start = start;
            m.csum_offset = meta.csum_offset;
        }
        match meta.gso {
            Gso::None => {}
            Gso::TcpV4 if meta.gso_size > 0 => {}
            _ => return None,
        }
        Some(m)
    }

    fn ipv4_rx(&mut self, now: Instant, meta: FrameMeta, bytes: &[u8]) {
        self.counters.ip_rx += 1;
        let p = match Ipv4Packet::new_checked(bytes) {
            Ok(p) if p.version() == 4 => p,
            _ => {
                self.counters.ip_malformed += 1;
                return;
            }
        };
        if !p.verify_checksum() {
            self.counters.ip_bad_checksum += 1;
            return;
        }
        // Without the link layer's padding.
        let raw = &bytes[..usize::from(p.total_len())];
        let (src, dst) = (p.src_addr(), p.dst_addr());
        let us = self.settings.address();
        if !is_unicast(src) || src == us || self.settings.is_broadcast(src) {
            self.counters.ip_bad_src += 1;
            return;
        }
        if dst != us {
            if self.settings.is_broadcast(dst) || dst.is_multicast() {
                self.counters.ip_broadcast += 1;
            } else {
                self.counters.ip_not_for_us += 1;
            }
            return;
        }
        let Some(pmeta) = Self::rx_meta(meta, raw.len()) else {
            self.counters.rx_bad_meta += 1;
            return;
        };
        if p.more_frags() || p.frag_offset() != 0 {
            self.counters.frag_rx += 1;
            if pmeta.gso != Gso::None || pmeta.flags & packet::FLAG_NEEDS_CSUM != 0 {
                self.counters.rx_bad_meta += 1;
                return;
            }
            self.counters.frag_timeout += self.reasm.expire(now);
            match self.reasm.add(raw, now, &self.limits) {
                Outcome::Kept => {}
                Outcome::Complete(whole) => {
                    self.counters.frag_reassembled += 1;
                    self.local(now, PacketMeta::PLAIN, &whole);
                }
                Outcome::Malformed => self.counters.frag_malformed += 1,
                Outcome::NoRoom => self.counters.frag_no_room += 1,
            }
            return;
        }
        self.local(now, pmeta, raw);
    }

    /// A whole packet for us.
    fn local(&mut self, now: Instant, meta: PacketMeta, raw: &[u8]) {
        let p = Ipv4Packet::new_unchecked(raw);
        let proto = p.next_header();
        if meta.gso != Gso::None && proto != IpProtocol::Tcp {
            self.counters.rx_bad_meta += 1;
            return;
        }
        match proto {
            IpProtocol::Icmp => self.icmp_rx(now, meta, raw),
            IpProtocol::Tcp | IpProtocol::Udp if self.has_upper => self.push_up(meta, raw),
            _ => {
                self.counters.no_protocol += 1;
                self.icmp_error(now, raw, Unreachable::Protocol);
            }
        }
    }

    fn icmp_rx(&mut self, now: Instant, meta: PacketMeta, raw: &[u8]) {
        self.counters.icmp_rx += 1;
        let ihl = usize::from(Ipv4Packet::new_unchecked(raw).header_len());
        let body = &raw[ihl..];
        let Ok(icmp) = Icmpv4Packet::new_checked(body) else {
            self.counters.icmp_malformed += 1;
            return;
        };
        let trusted = meta.flags & (packet::FLAG_DATA_VALID | packet::FLAG_NEEDS_CSUM) != 0;
        if !trusted && !icmp.verify_checksum() {
            self.counters.icmp_malformed += 1;
            return;
        }
        match icmp.msg_type() {
            Icmpv4Message::EchoRequest if icmp.msg_code() == 0 => self.echo_reply(now, raw, ihl),
            _ if self.has_upper => self.push_up(meta, raw),
            _ => self.counters.icmp_unhandled += 1,
        }
    }

    /// A new IPv4 packet from us to `dst` with `body` after a 20-byte header.
    fn new_packet(&mut self, dst: Ipv4Address, proto: IpProtocol, body_len: usize) -> Vec<u8> {
        let mut v = vec![0; 20 + body_len];
        let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
        p.set_version(4);
        p.set_header_len(20);
        #[allow(clippy::cast_possible_truncation)] // callers keep it within 65 535
        p.set_total_len((20 + body_len) as u16);
        p.set_ident(self.ident);
        self.ident = self.ident.wrapping_add(1);
        p.set_hop_limit(TTL);
        p.set_next_header(proto);
        p.set_src_addr(self.settings.address());
        p.set_dst_addr(dst);
        p.fill_checksum();
        v
    }

    fn echo_reply(&mut self, now: Instant, raw: &[u8], ihl: usize) {
        let src = Ipv4Packet::new_unchecked(raw).src_addr();
        let body = &raw[ihl..];
        let mut v = self.new_packet(src, IpProtocol::Icmp, body.len());
        v[20..].copy_from_slice(body);
        let mut icmp = Icmpv4Packet::new_unchecked(&mut v[20..]);
        icmp.set_msg_type(Icmpv4Message::EchoReply);
        icmp.fill_checksum();
        if self.route(now, PacketMeta::PLAIN, v).is_ok() {
            self.counters.icmp_echo_replied += 1;
        }
    }

    /// Send ICMP destination unreachable (`code`) about `head`, a packet we received
    /// whole, or at least its header and the first 8 bytes after it.
    pub fn icmp_error(&mut self, now: Instant, head: &[u8], code: Unreachable) {
        let p = Ipv4Packet::new_unchecked(head);
        if head.len() < 20 || head.len() < usize::from(p.header_len()) {
            return;
        }
        let ihl = usize::from(p.header_len());
        // Never about an ICMP error (RFC 1122 §3.2.2): only echo requests qualify.
        if p.next_header() == IpProtocol::Icmp
            && head.get(ihl) != Some(&u8::from(Icmpv4Message::EchoRequest))
        {
            return;
        }
        if now >= self.icmp_refill.after(1000) {
            self.icmp_refill = now;
            self.icmp_tokens = self.limits.icmp_errors_per_s;
        }
        if self.icmp_tokens == 0 {
            self.counters.icmp_errors_limited += 1;
            return;
        }
        self.icmp_tokens -= 1;
        let quote = &head[..head.len().min(ihl + 8)];
        let mut v = self.new_packet(p.src_addr(), IpProtocol::Icmp, 8 + quote.len());
        v[28..].copy_from_slice(quote);
        let mut icmp = Icmpv4Packet::new_unchecked(&mut v[20..]);
        icmp.set_msg_type(Icmpv4Message::DstUnreachable);
        icmp.set_msg_code(code as u8);
        icmp.fill_checksum();
        if self.route(now, PacketMeta::PLAIN, v).is_ok() {
            self.counters.icmp_errors_sent += 1;
        }
    }

    /// A packet from the upper layer to send.
    pub fn send(
        &mut self,
        now: Instant,
        meta: PacketMeta,
        packet: &[u8],
    ) -> Result<(), DropReason> {
        self.counters.tx_packets += 1;
        if self.link.is_none() {
            self.counters.tx_link_down += 1;
            return Err(DropReason::LinkDown);
        }
        let p = match Ipv4Packet::new_checked(packet) {
            Ok(p) if p.version() == 4 && usize::from(p.total_len()) == packet.len() => p,
            _ => {
                self.counters.tx_malformed += 1;
                return Err(DropReason::Malformed);
            }
        };
        if p.src_addr() != self.settings.address() {
            self.counters.tx_bad_src += 1;
            return Err(DropReason::BadSource);
        }
        // Already fragmented, or without a hop to live: not from a sane upper layer.
        let fragment = p.more_frags() || p.frag_offset() != 0;
        let ihl = usize::from(p.header_len());
        let options_ok = Self::later_header(&packet[..ihl]).is_some();
        if fragment || !options_ok || p.hop_limit() == 0 || !Self::tx_meta_fits(meta, &p) {
            self.counters.tx_malformed += 1;
            return Err(DropReason::Malformed);
        }
        let mut v = packet.to_vec();
        Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
        self.route(now, meta, v)
    }

    /// Whether `meta` fits the packet: a partial checksum's field lies inside it, past
    /// the IP header; a GSO packet is TCP with a segment size and sane header length.
    fn tx_meta_fits(meta: PacketMeta, p: &Ipv4Packet<&[u8]>) -> bool {
        let ihl = usize::from(p.header_len());
        let len = usize::from(p.total_len());
        let csum_ok = meta.flags & packet::FLAG_NEEDS_CSUM == 0
            || (usize::from(meta.csum_start) >= ihl
                && usize::from(meta.csum_start) + usize::from(meta.csum_offset) + 2 <= len);
        let gso_ok = match meta.gso {
            Gso::None => true,
            Gso::TcpV4 => {
                p.next_header() == IpProtocol::Tcp
                    && meta.gso_size > 0
                    && meta.flags & packet::FLAG_NEEDS_CSUM != 0
                    && usize::from(meta.hdr_len) <= len.min(256)
            }
            _ => false,
        };
        csum_ok && gso_ok && meta.flags & packet::FLAG_DATA_VALID == 0
    }

    /// Route `v` (a complete, valid IPv4 packet from us) and send or hold it.
    fn route(&mut self, now: Instant, meta: PacketMeta, v: Vec<u8>) -> Result<(), DropReason> {
        let Some(link) = self.link else {
            self.counters.tx_link_down += 1;
            return Err(DropReason::LinkDown);
        };
        let p = Ipv4Packet::new_unchecked(&v[..]);
        let too_big = match meta.gso {
            Gso::None => v.len() > link.mtu && p.dont_frag(),
            Gso::TcpV4 => {
                link.offloads & (frame::offload::TX_TSO4 | frame::offload::TX_CSUM)
                    != frame::offload::TX_TSO4 | frame::offload::TX_CSUM
            }
            _ => true,
        };
        if too_big {
            self.counters.tx_too_big += 1;
            return Err(DropReason::TooBig);
        }
        let dst = p.dst_addr();
        if self.settings.is_broadcast(dst) {
            self.emit(EthernetAddress::BROADCAST, meta, &v);
            return Ok(());
        }
        let hop = match self.settings.next_hop(dst) {
            Some(hop) if is_unicast(dst) && dst != self.settings.address() => hop,
            _ => {
                self.counters.tx_no_route += 1;
                return Err(DropReason::NoRoute);
            }
        };
        if let Some(mac) = self.arp.lookup(hop, now) {
            self.emit(mac, meta, &v);
            return Ok(());
        }
        match self.arp.hold(hop, meta, v, now, &self.limits) {
            Held::Queued => Ok(()),
            Held::Request => {
                self.arp_request(hop);
                Ok(())
            }
            Held::Full => {
                self.counters.arp_pending_full += 1;
                Err(DropReason::NoRoom)
            }
        }
    }

    /// Complete a partial checksum (virtio's `NEEDS_CSUM`: the field holds the
    /// pseudo-header sum; the checksum covers `csum_start` to the end).
    fn complete_checksum(pkt: &mut [u8], meta: PacketMeta) {
        let start = usize::from(meta.csum_start);
        let at = start + usize::from(meta.csum_offset);
        let sum = !checksum::data(&pkt[start..]);
        pkt[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }

    /// Put `pkt` on the wire to `mac`: one frame, or fragments.
    fn emit(&mut self, mac: EthernetAddress, meta: PacketMeta, pkt: &[u8]) {
        let Some(link) = self.link else { return };
        let needs_csum = meta.flags & packet::FLAG_NEEDS_CSUM != 0;
        if pkt.len() <= link.mtu || meta.gso != Gso::None {
            let mut f = self.new_frame(mac, EthernetProtocol::Ipv4, pkt.len());
            f[ETH..].copy_from_slice(pkt);
            let start = meta.csum_start.checked_add(ETH as u16);
            let offload = needs_csum && link.offloads & frame::offload::TX_CSUM != 0;
            let fmeta = match start {
                Some(csum_start) if offload => FrameMeta {
                    flags: frame::FLAG_NEEDS_CSUM,
                    gso: meta.gso,
                    ecn: meta.ecn,
                    hdr_len: meta.hdr_len.saturating_add(ETH as u16),
                    gso_size: meta.gso_size,
                    csum_start,
                    csum_offset: meta.csum_offset,
                },
                _ => {
                    if needs_csum {
                        Self::complete_checksum(&mut f[ETH..], meta);
                    }
                    FrameMeta::PLAIN
                }
            };
            self.push_tx(fmeta, f);
            return;
        }
        let mut whole = pkt.to_vec();
        if needs_csum {
            Self::complete_checksum(&mut whole, meta);
        }
        self.fragment(mac, link.mtu, &whole);
    }

    /// The header of the fragments after the first: the first's, with only the
    /// options whose copy flag is set (RFC 791 §3.1). `None`: the options are malformed.
    fn later_header(header: &[u8]) -> Option<Vec<u8>> {
        let mut h = header[..20].to_vec();
        let mut opts = &header[20..];
        while let Some(&kind) = opts.first() {
            let len = match kind {
                0 => break,
                1 => 1,
                _ => usize::from(*opts.get(1)?),
            };
            if len < 1 || (kind > 1 && len < 2) || len > opts.len() {
                return None;
            }
            if kind & 0x80 != 0 {
                h.extend_from_slice(&opts[..len]);
            }
            opts = &opts[len..];
        }
        while !h.len().is_multiple_of(4) {
            h.push(0);
        }
        Some(h)
    }

    fn fragment(&mut self, mac: EthernetAddress, mtu: usize, pkt: &[u8]) {
        let p = Ipv4Packet::new_unchecked(pkt);
        let ihl = usize::from(p.header_len());
        let (base, more) = (usize::from(p.frag_offset()), p.more_frags());
        let Some(later) = Self::later_header(&pkt[..ihl]) else {
            self.counters.tx_malformed += 1;
            return;
        };
        let payload = &pkt[ihl..];
        let mut off = 0;
        while off < payload.len() {
            let header = if off == 0 { &pkt[..ihl] } else { &later[..] };
            let room = (mtu - header.len()) & !7;
            let n = room.min(payload.len() - off);
            let last = off + n == payload.len();
            let mut f = self.new_frame(mac, EthernetProtocol::Ipv4, header.len() + n);
            f[ETH..ETH + header.len()].copy_from_slice(header);
            f[ETH + header.len()..].copy_from_slice(&payload[off..off + n]);
            let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH..]);
            #[allow(clippy::cast_possible_truncation)] // within the original's 65 535
            {
                ip.set_header_len(header.len() as u8);
                ip.set_total_len((header.len() + n) as u16);
                ip.set_frag_offset((base + off) as u16);
            }
            ip.set_more_frags(!last || more);
            ip.fill_checksum();
            self.counters.frag_tx += 1;
            self.push_tx(FrameMeta::PLAIN, f);
            off += n;
        }
    }
}

//! smoltcp's `Device` over the channel to ip (the `compart_proto::packet` protocol, this
//! side the client: it sends `Send`, ip delivers with `Deliver`), with `Medium::Ip`.
//!
//! - **Backpressure, never a drop between servers**: a token pair (receive) or a
//!   transmit token is handed out only while the channel has a free request (fewer than
//!   `max_outstanding` `Send`s unanswered) and no packet waits in the one-packet
//!   [`pending`](ChannelDevice::pending) slot. A packet that finds ip's request queue
//!   full even so waits there, and goes first at the next [`pump`](ChannelDevice::pump).
//!   Packets from ip are taken only when ip's reply queue has room (the kit's rule), so
//!   ip waits rather than loses.
//! - **Copy out first**: a delivered packet is copied from ip's pool buffer into this
//!   device's private buffer, and answered, before smoltcp parses it: ip (or anyone
//!   writing the shared pool) cannot change bytes under the parser.
//! - **Offload metadata**: a packet delivered with `NEEDS_CSUM` (a partial checksum from
//!   a local sender) has its transport checksum completed here, so smoltcp's check
//!   passes; `DATA_VALID` packets are checked again by smoltcp (it verifies every
//!   checksum: the device's capabilities say so). Outgoing TCP segments leave with a
//!   partial checksum (`NEEDS_CSUM`, the pseudo-header sum in the field) when the
//!   link below offloads transmit checksums (ip completes it otherwise), else with
//!   smoltcp's; no GSO: smoltcp's `segmentation-offload` needs `proto-ipv6`, left for
//!   later.
use alloc::vec;
use alloc::vec::Vec;

use compart_channel::{ChannelError, Endpoint, Notifier};
use compart_kit::server::BUDGET;
use compart_proto::frame::Gso;
use compart_proto::packet::{self, DropReason, PacketMeta, FLAG_NEEDS_CSUM};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// What the device counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Packets delivered by ip and handed to smoltcp.
    pub rx_packets: u64,
    /// Requests from ip refused as malformed (bad words, not `Deliver`, bad checksum
    /// offsets).
    pub rx_malformed: u64,
    /// Delivered packets larger than the private buffer.
    pub rx_too_big: u64,
    /// Packets sent to ip.
    pub tx_packets: u64,
    /// Times a packet had to wait in the pending slot (ip's queue was full).
    pub tx_deferred: u64,
    /// `Send`s ip answered `Dropped`.
    pub tx_dropped_by_ip: u64,
    /// Replies from ip that did not decode or did not fit a `Send`.
    pub bad_replies: u64,
    /// Packets smoltcp built larger than the channel's buffers (never with the MTU capped
    /// to them; counted, not sent).
    pub tx_too_big: u64,
    /// SYNs dropped because their listener had no listening socket left (its backlog
    /// is taken by handshakes and connections not yet accepted): as Linux does with a
    /// full accept queue, the peer retries instead of being reset.
    pub rx_syn_backlog_full: u64,
}

/// The device: the endpoint towards ip and two private buffers.
#[derive(Debug)]
pub struct ChannelDevice<N: Notifier> {
    /// The channel to ip first; then the server's other channels (posix), kept here
    /// so that all are one sleep set.
    eps: Vec<Endpoint<N>>,
    mtu: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// Length and metadata of a packet in `tx` that ip's queue had no room for.
    pending: Option<(usize, PacketMeta)>,
    /// Whether TCP checksums are left to the layers below.
    tx_csum: bool,
    /// Whether TCP segments up to the buffer size go down whole, for the NIC to
    /// segment (TSO; implies `tx_csum`).
    tso: bool,
    max_outstanding: u32,
    counters: DeviceCounters,
    error: Option<ChannelError>,
    /// Listeners' ports and the SYNs each can take now ([`ChannelDevice::gate_syns`]).
    syn_gate: Vec<(u16, usize)>,
}

impl<N: Notifier> ChannelDevice<N> {
    /// A device over `ep` (a channel to ip), for packets of at most `mtu` bytes (capped to
    /// the channel's buffer size).
    /// With `tx_csum`, TCP segments go down with partial checksums (`NEEDS_CSUM`); with
    /// `tso` too, TCP super-segments of up to the channel's buffer (at most 64 KiB) go
    /// down whole with their segment size, for the NIC to cut (`Gso::TcpV4`).
    pub fn new(ep: Endpoint<N>, mtu: usize, tx_csum: bool, tso: bool) -> ChannelDevice<N> {
        let size = ep.buffer_size();
        let max_outstanding = ep.layout().config().max_outstanding;
        ChannelDevice {
            mtu: mtu.min(size),
            rx: vec![0; size],
            tx: vec![0; size],
            pending: None,
            tx_csum: tx_csum || tso,
            tso,
            max_outstanding,
            counters: DeviceCounters::default(),
            error: None,
            syn_gate: Vec::new(),
            eps: vec![ep],
        }
    }

    /// The IP MTU smoltcp is told.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Listening ports and how many SYNs (without ACK) each may still take: the core
    /// sets it before each pass to its listeners' sockets still listening. A SYN to a
    /// port at 0 is dropped and counted (`rx_syn_backlog_full`) instead of handed to
    /// smoltcp, which would reset it; other ports (closed ones) are not gated.
    pub fn gate_syns(&mut self) -> &mut Vec<(u16, usize)> {
        &mut self.syn_gate
    }

    /// The device's counters.
    pub fn counters(&self) -> &DeviceCounters {
        &self.counters
    }

    /// The endpoint to ip.
    pub fn endpoint(&mut self) -> &mut Endpoint<N> {
        &mut self.eps[0]
    }

    /// Every endpoint of the server: ip's and the others (the sleep set).
    pub fn endpoints(&mut self) -> &mut [Endpoint<N>] {
        &mut self.eps
    }

    /// Keep another of the server's endpoints here (index 1, 2, …).
    pub(crate) fn attach(&mut self, ep: Endpoint<N>) -> usize {
        self.eps.push(ep);
        self.eps.len() - 1
    }

    /// Lend out the other endpoint at `k`; give it back with [`Self::put`] at once.
    pub(crate) fn take(&mut self, k: usize) -> Option<Endpoint<N>> {
        (k > 0 && k < self.eps.len()).then(|| self.eps.swap_remove(k))
    }

    /// Put back the endpoint lent out at `k`.
    pub(crate) fn put(&mut self, k: usize, ep: Endpoint<N>) {
        self.eps.push(ep);
        let last = self.eps.len() - 1;
        self.eps.swap(k, last);
    }

    /// Forget the other endpoint at `k` (it broke).
    pub(crate) fn forget(&mut self, k: usize) {
        if k > 0 && k < self.eps.len() {
            self.eps.remove(k);
        }
    }

    /// Whether a packet waits for room in ip's queue.
    pub fn pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The channel's error, once it broke (the device then does nothing).
    pub fn error(&self) -> Option<ChannelError> {
        self.error
    }

    fn fail(&mut self, e: ChannelError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Whether smoltcp may send a packet now: the channel has a free request and no
    /// packet is pending.
    pub fn can_send(&self) -> bool {
        self.error.is_none()
            && self.pending.is_none()
            && self.eps[0].outstanding_count() < self.max_outstanding
    }

    /// Take ip's replies (credit) and retry the pending packet. Returns whether anything
    /// happened.
    pub fn pump(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        let mut busy = false;
        for _ in 0..BUDGET {
            let reply = match self.eps[0].poll_reply() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.fail(e);
                    return true;
                }
            };
            busy = true;
            match packet::Reply::decode(reply.status(), reply.inline()) {
                Ok(packet::Reply::Done) => {}
                Ok(packet::Reply::Dropped(_) | packet::Reply::Unreachable(_)) => {
                    self.counters.tx_dropped_by_ip += 1;
                }
                Ok(packet::Reply::Config(_)) | Err(_) => self.counters.bad_replies += 1,
            }
            if let Err(e) = self.eps[0].free(reply) {
                self.fail(e);
                return true;
            }
        }
        if let Some((len, meta)) = self.pending.take() {
            busy |= send(
                &mut self.eps[0],
                &self.tx[..len],
                meta,
                &mut self.pending,
                &mut self.counters,
                &mut self.error,
            );
        }
        busy
    }

    /// Kick ip for what was sent (call when done with a pass).
    pub fn flush(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.eps[0].flush() {
                self.fail(e);
            }
        }
    }

    /// Take the next packet from ip into the private buffer, answering every request
    /// taken. Returns its length, or `None` when there is none (or no room to answer).
    fn take_packet(&mut self) -> Option<usize> {
        for _ in 0..BUDGET {
            if self.error.is_some() {
                return None;
            }
            match self.eps[0].can_reply() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.fail(e);
                    return None;
                }
            }
            let req = match self.eps[0].poll_request() {
                Ok(Some(r)) => r,
                Ok(None) => return None,
                Err(e) => {
                    self.fail(e);
                    return None;
                }
            };
            let (answer, got) =
                match packet::Request::decode(req.opcode(), req.is_oneway(), req.inline()) {
                    Ok(packet::Request::Deliver(meta)) if req.payload_len() > self.rx.len() => {
                        let _ = meta;
                        self.counters.rx_too_big += 1;
                        (packet::Reply::Dropped(DropReason::TooBig), None)
                    }
                    Ok(packet::Request::Deliver(meta)) => {
                        match self.eps[0].read_request_payload(&req, &mut self.rx) {
                            Ok(n) if !complete_checksum(&meta, &mut self.rx[..n]) => {
                                self.counters.rx_malformed += 1;
                                (packet::Reply::Dropped(DropReason::Malformed), None)
                            }
                            Ok(n) if !admit_syn(&self.rx[..n], &mut self.syn_gate) => {
                                self.counters.rx_syn_backlog_full += 1;
                                (packet::Reply::Dropped(DropReason::NoRoom), None)
                            }
                            Ok(n) => (packet::Reply::Done, Some(n)),
                            Err(e) => {
                                self.fail(e);
                                return None;
                            }
                        }
                    }
                    Ok(_) | Err(_) => {
                        self.counters.rx_malformed += 1;
                        (packet::Reply::Dropped(DropReason::Malformed), None)
                    }
                };
            if !req.is_oneway() {
                let (status, inline) = answer.encode();
                if let Err(e) = self.eps[0].reply(req, status, inline, &[]) {
                    self.fail(e);
                    return None;
                }
            }
            if got.is_some() {
                self.counters.rx_packets += 1;
                return got;
            }
        }
        None
    }
}

/// Whether `packet` (an IPv4 packet whose checksums were checked) may go to smoltcp:
/// anything but a TCP SYN without ACK to a port of `gate` whose count is 0; a SYN
/// admitted to a gated port takes one from its count.
pub fn admit_syn(packet: &[u8], gate: &mut [(u16, usize)]) -> bool {
    if gate.is_empty() || packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != 6 {
        return true;
    }
    let ihl = usize::from(packet[0] & 0xf) * 4;
    let Some(tcp) = packet.get(ihl..ihl + 14) else {
        return true;
    };
    let (port, flags) = (u16::from_be_bytes([tcp[2], tcp[3]]), tcp[13]);
    if flags & 0x12 != 0x02 {
        return true;
    }
    match gate.iter_mut().find(|(p, _)| *p == port) {
        Some((_, 0)) => false,
        Some((_, left)) => {
            *left -= 1;
            true
        }
        None => true,
    }
}

/// Send `packet` to ip; on a full queue keep it in `pending` (it is already in the
/// device's `tx` buffer). Returns whether it went.
fn send<N: Notifier>(
    ep: &mut Endpoint<N>,
    packet: &[u8],
    meta: PacketMeta,
    pending: &mut Option<(usize, PacketMeta)>,
    counters: &mut DeviceCounters,
    error: &mut Option<ChannelError>,
) -> bool {
    let (op, inline) = packet::Request::Send(meta).encode();
    match ep.send_request(op, inline, packet) {
        Ok(_) => {
            counters.tx_packets += 1;
            true
        }
        Err(ChannelError::NoFreeRequest | ChannelError::Full) => {
            counters.tx_deferred += 1;
            *pending = Some((packet.len(), meta));
            false
        }
        Err(e) => {
            error.get_or_insert(e);
            false
        }
    }
}

/// Complete a partial transport checksum (`NEEDS_CSUM`: the field holds the
/// pseudo-header sum, the rest is to be summed from `csum_start`). Returns false when
/// the offsets do not lie in the packet past a minimal IP header.
fn complete_checksum(meta: &PacketMeta, packet: &mut [u8]) -> bool {
    if meta.flags & FLAG_NEEDS_CSUM == 0 {
        return true;
    }
    let start = usize::from(meta.csum_start);
    let field = start + usize::from(meta.csum_offset);
    if start < 20 || field + 2 > packet.len() {
        return false;
    }
    let sum = ones_sum(&packet[start..]);
    packet[field..field + 2].copy_from_slice(&(!sum).to_be_bytes());
    true
}

/// Put the pseudo-header sum in the TCP checksum field of `packet` (an IPv4 packet
/// smoltcp built with the field zero) and say so in its metadata; other packets go as
/// they are.
fn partial_tcp(packet: &mut [u8]) -> PacketMeta {
    let Some(&first) = packet.first() else {
        return PacketMeta::PLAIN;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || packet.len() < ihl + 20 || packet[9] != 6 {
        return PacketMeta::PLAIN;
    }
    let Ok(tcp_len) = u16::try_from(packet.len() - ihl) else {
        return PacketMeta::PLAIN;
    };
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&packet[12..20]);
    pseudo[9] = 6;
    pseudo[10..].copy_from_slice(&tcp_len.to_be_bytes());
    let sum = ones_sum(&pseudo);
    packet[ihl + 16..ihl + 18].copy_from_slice(&sum.to_be_bytes());
    PacketMeta {
        flags: FLAG_NEEDS_CSUM,
        csum_start: ihl as u16,
        csum_offset: 16,
        ..PacketMeta::PLAIN
    }
}

/// The folded ones' complement sum of `data` (RFC 1071).
fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A received packet, in the device's private buffer.
#[derive(Debug)]
pub struct RxToken<'a> {
    packet: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.packet)
    }
}

/// The right to send one packet: the channel had a free request when it was made.
#[derive(Debug)]
pub struct TxToken<'a, N: Notifier> {
    ep: &'a mut Endpoint<N>,
    tx: &'a mut [u8],
    tx_csum: bool,
    mtu: usize,
    /// The segment size smoltcp asked for (TSO).
    gso_size: Option<u16>,
    pending: &'a mut Option<(usize, PacketMeta)>,
    counters: &'a mut DeviceCounters,
    error: &'a mut Option<ChannelError>,
}

impl<N: Notifier> phy::TxToken for TxToken<'_, N> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if len > self.tx.len() {
            // smoltcp keeps to the MTU, which is capped to the buffers; should it not,
            // the packet is built aside and counted, never written past the buffer.
            self.counters.tx_too_big += 1;
            return f(&mut vec![0; len]);
        }
        let r = f(&mut self.tx[..len]);
        let mut meta = if self.tx_csum {
            partial_tcp(&mut self.tx[..len])
        } else {
            PacketMeta::PLAIN
        };
        if let Some(mss) = self.gso_size {
            if len > self.mtu && meta.flags & FLAG_NEEDS_CSUM != 0 {
                let start = usize::from(meta.csum_start);
                let tcp_hdr = usize::from(self.tx[start + 12] >> 4) * 4;
                meta.gso = Gso::TcpV4;
                meta.gso_size = mss;
                meta.hdr_len = (start + tcp_hdr) as u16;
            }
        }
        send(
            self.ep,
            &self.tx[..len],
            meta,
            self.pending,
            self.counters,
            self.error,
        );
        r
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.gso_size = meta.segmentation_offload_size.map(|n| n.get());
    }
}

impl<N: Notifier> phy::Device for ChannelDevice<N> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, N>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_, N>)> {
        // smoltcp may answer a packet at once (an ACK, a RST): take one only when that
        // answer could be sent.
        if !self.can_send() {
            return None;
        }
        let n = self.take_packet()?;
        Some((
            RxToken {
                packet: &self.rx[..n],
            },
            TxToken {
                ep: &mut self.eps[0],
                tx: &mut self.tx,
                tx_csum: self.tx_csum,
                mtu: self.mtu,
                gso_size: None,
                pending: &mut self.pending,
                counters: &mut self.counters,
                error: &mut self.error,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_, N>> {
        if !self.can_send() {
            return None;
        }
        Some(TxToken {
            ep: &mut self.eps[0],
            tx: &mut self.tx,
            tx_csum: self.tx_csum,
            mtu: self.mtu,
            gso_size: None,
            pending: &mut self.pending,
            counters: &mut self.counters,
            error: &mut self.error,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = None;
        if self.tx_csum {
            // Verify received segments, leave the sent ones' to the layers below.
            caps.checksum.tcp = phy::Checksum::Rx;
        }
        if self.tso {
            caps.segmentation.tcpv4 = core::num::NonZeroUsize::new(self.tx.len().min(65535));
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_checksum_is_completed_and_bad_offsets_refused() {
        // A 20-byte IP header, then 4 bytes summed with the field at offset 2.
        let mut p = vec![0u8; 24];
        p[20..24].copy_from_slice(&[0x12, 0x34, 0x00, 0x01]);
        let meta = PacketMeta {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 2,
            ..PacketMeta::PLAIN
        };
        assert!(complete_checksum(&meta, &mut p));
        // The field held the pseudo-header sum (1); now it holds the complement of
        // pseudo-header + data, so that a receiver's sum over both comes to 0xffff.
        assert_eq!(&p[22..24], &(!0x1235u16).to_be_bytes());
        assert_eq!(ones_sum(&[0x12, 0x34, 0xed, 0xca, 0x00, 0x01]), 0xffff);
        let bad = PacketMeta {
            csum_offset: 3,
            ..meta
        };
        assert!(!complete_checksum(&bad, &mut p));
        let short = PacketMeta {
            csum_start: 10,
            ..meta
        };
        assert!(!complete_checksum(&short, &mut p));
        assert!(complete_checksum(&PacketMeta::PLAIN, &mut p));
    }
}

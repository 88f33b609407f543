//! The driver server's logic: a frame pump between a virtio-net device
//! (`compart_virtio::net`) and the ip server's channel (`compart_proto::frame`).
//!
//! ```text
//!  device RX used ─► check header and length ─► Receive(meta) request to ip, the frame
//!                    copied from the RX buffer into the request's pool buffer (one copy);
//!                    the RX buffer is posted again at once
//!  ip Transmit(meta) ─► check length and offloads ─► TX slot [NetHdr][frame] (one copy
//!                    from ip's buffer) ─► published; kick only if the device asked
//!  device TX used ─► reply Done to that Transmit (the credit goes back to ip)
//! ```
//!
//! On start it sends `Link { mac, mtu, offloads }` (what was negotiated with the
//! device). A frame ip has no credit for waits in its RX buffer (a backlog, never
//! dropped for that); a Transmit the device has no slot for is answered
//! `Dropped(NoRoom)`. Nothing from the device or from ip is trusted: bad used entries,
//! runts, unknown header bits and malformed requests are counted and dropped.
//!
//! [`Driver`] is a [`Handler`] whose [`on_pass`](Handler::on_pass) serves the device
//! and whose [`before_sleep`](Handler::before_sleep) arms its interrupts; the image
//! (`main.rs`) runs it with `firmware::server::run_with_devices`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use compart_abi::virtio::{
    NetHdr, F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_TSO4, F_HOST_TSO6, GSO_ECN,
    GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP,
};
use compart_channel::{ChannelError, Notifier, Reply, Request};
use compart_kit::server::{Close, Handler, Link, BUDGET};
use compart_proto::frame::{
    self, offload, DropReason, FrameMeta, Gso, FLAG_DATA_VALID, FLAG_NEEDS_CSUM, OP_LINK,
    OP_RECEIVE,
};
use compart_virtio::net::{BadEntry, Net, RxFrame, TxError, MAX_FRAME};
use compart_virtio::{Mmio, Ram};

/// The shortest frame either way: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// What the driver counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received from the device and handed to ip.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Received frames dropped: too short.
    pub rx_runts: u64,
    /// Received frames dropped: header bits or a GSO type the protocol has no word for.
    pub rx_bad_header: u64,
    /// Received frames dropped: larger than the channel's buffers.
    pub rx_too_large: u64,
    /// Received frames ip answered with `Dropped`.
    pub rx_refused_by_ip: u64,
    /// Frames ip asked to transmit that the device sent.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Transmit requests dropped, by reason (`Malformed`, `BadLength`, `NoRoom`).
    pub tx_malformed: u64,
    /// … too short or too long.
    pub tx_bad_length: u64,
    /// … no transmit slot free.
    pub tx_no_room: u64,
    /// Used entries the device should not have written (both queues).
    pub bad_used: u64,
    /// `QUEUE_NOTIFY` stores (kicks of the device).
    pub kicks: u64,
    /// Times the driver armed the device's interrupt before sleeping.
    pub arms: u64,
    /// Times it found device work on its first pass after arming (what the device's
    /// interrupt woke it for, or what arrived while it got ready to sleep).
    pub device_wakeups: u64,
    /// Replies from ip that did not decode.
    pub bad_replies: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rx {} frames {} B (dropped: {} runt, {} bad header, {} too large; {} refused by ip), \
             tx {} frames {} B (dropped: {} malformed, {} bad length, {} no room), \
             {} bad used, {} kicks, {} arms, {} device wake-ups, {} bad replies",
            self.rx_frames,
            self.rx_bytes,
            self.rx_runts,
            self.rx_bad_header,
            self.rx_too_large,
            self.rx_refused_by_ip,
            self.tx_frames,
            self.tx_bytes,
            self.tx_malformed,
            self.tx_bad_length,
            self.tx_no_room,
            self.bad_used,
            self.kicks,
            self.arms,
            self.device_wakeups,
            self.bad_replies
        )
    }
}

/// The link as the driver announces it to ip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// MAC address.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// `offload::*` flags negotiated with the device.
    pub offloads: u32,
}

/// The `offload::*` flags that negotiated virtio features `features` give.
pub fn offloads_of(features: u64) -> u32 {
    let has = |bit: u32| features & (1 << bit) != 0;
    [
        (F_CSUM, offload::TX_CSUM),
        (F_GUEST_CSUM, offload::RX_CSUM),
        (F_HOST_TSO4, offload::TX_TSO4),
        (F_HOST_TSO6, offload::TX_TSO6),
        (F_GUEST_TSO4, offload::RX_TSO4),
        (F_GUEST_TSO6, offload::RX_TSO6),
    ]
    .into_iter()
    .filter(|&(bit, _)| has(bit))
    .fold(0, |acc, (_, flag)| acc | flag)
}

/// A received header as frame metadata, if the protocol can say it.
fn meta_of(h: &NetHdr) -> Option<FrameMeta> {
    if h.flags & !(FLAG_NEEDS_CSUM | FLAG_DATA_VALID) != 0 {
        return None;
    }
    let gso = match h.gso_type & !GSO_ECN {
        GSO_NONE => Gso::None,
        GSO_TCPV4 => Gso::TcpV4,
        GSO_UDP => Gso::Udp,
        GSO_TCPV6 => Gso::TcpV6,
        _ => return None,
    };
    Some(FrameMeta {
        flags: h.flags,
        gso,
        ecn: h.gso_type & GSO_ECN != 0,
        hdr_len: h.hdr_len,
        gso_size: h.gso_size,
        csum_start: h.csum_start,
        csum_offset: h.csum_offset,
    })
}

/// The header of a frame to transmit, or why the device cannot take it.
fn hdr_of(m: &FrameMeta, offloads: u32) -> Result<NetHdr, DropReason> {
    let needs = |flag: u32| {
        if offloads & flag != 0 {
            Ok(())
        } else {
            Err(DropReason::Malformed)
        }
    };
    if m.flags & FLAG_NEEDS_CSUM != 0 {
        needs(offload::TX_CSUM)?;
    }
    let gso_type = match m.gso {
        Gso::None => GSO_NONE,
        Gso::TcpV4 => needs(offload::TX_TSO4).map(|_| GSO_TCPV4)?,
        Gso::TcpV6 => needs(offload::TX_TSO6).map(|_| GSO_TCPV6)?,
        Gso::Udp => return Err(DropReason::Malformed),
    };
    Ok(NetHdr {
        // DATA_VALID means nothing on transmit.
        flags: m.flags & FLAG_NEEDS_CSUM,
        gso_type: gso_type | if m.ecn { GSO_ECN } else { 0 },
        hdr_len: m.hdr_len,
        gso_size: m.gso_size,
        csum_start: m.csum_start,
        csum_offset: m.csum_offset,
        num_buffers: 0,
    })
}

/// The frame pump on one NIC and the channel to ip.
#[derive(Debug)]
pub struct Driver<R: Ram + Clone, M: Mmio> {
    nic: Net<R, M>,
    link: LinkInfo,
    link_sent: bool,
    link_acked: bool,
    /// Per transmit slot: the Transmit request it carries, answered when the device is
    /// done with it.
    held: Vec<Option<Request>>,
    /// Received frames waiting for ip's credit.
    backlog: VecDeque<RxFrame>,
    armed: bool,
    /// Transmit completions wait because ip's reply queue is full.
    tx_blocked: bool,
    stats: Stats,
}

impl<R: Ram + Clone, M: Mmio> Driver<R, M> {
    /// A driver for the running `nic`; `mac` and `mtu` are used when the device does
    /// not offer them in its configuration space.
    pub fn new(nic: Net<R, M>, mac: [u8; 6], mtu: u32) -> Driver<R, M> {
        let t = nic.transport();
        let link = LinkInfo {
            mac: t.net_mac().unwrap_or(mac),
            mtu: t.net_mtu().map_or(mtu, u32::from),
            offloads: offloads_of(t.features()),
        };
        let slots = nic.buffers().1;
        Driver {
            nic,
            link,
            link_sent: false,
            link_acked: false,
            held: (0..slots).map(|_| None).collect(),
            backlog: VecDeque::new(),
            armed: false,
            tx_blocked: false,
            stats: Stats::default(),
        }
    }

    /// The link announced to ip.
    pub fn link(&self) -> LinkInfo {
        self.link
    }

    /// Whether ip answered the link announcement.
    pub fn link_acked(&self) -> bool {
        self.link_acked
    }

    /// The device.
    pub fn nic(&self) -> &Net<R, M> {
        &self.nic
    }

    /// What was counted.
    pub fn stats(&self) -> Stats {
        let n = self.nic.stats();
        Stats {
            bad_used: n.bad_used,
            kicks: n.kicks,
            ..self.stats
        }
    }

    /// Received frames waiting for ip's credit.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    fn send_link<N: Notifier>(&mut self, link: &mut Link<'_, N>) -> Result<bool, Close> {
        let (op, inline) = frame::Request::Link {
            mac: self.link.mac,
            mtu: self.link.mtu,
            offloads: self.link.offloads,
        }
        .encode();
        match link.endpoint.send_request(op, inline, &[]) {
            Ok(_) => {
                self.link_sent = true;
                Ok(true)
            }
            Err(ChannelError::NoFreeRequest | ChannelError::Full) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Hand received frames to ip while it has credit. Returns whether any moved (or
    /// was dropped): waiting for credit is not work, so a driver that ip keeps waiting
    /// sleeps until ip's replies wake it.
    fn receive<N: Notifier>(&mut self, link: &mut Link<'_, N>) -> Result<bool, Close> {
        let mut busy = false;
        let limit = self.nic.buffers().0 + self.backlog.len();
        for _ in 0..limit {
            let f = match self.backlog.pop_front() {
                Some(f) => f,
                None => match self.nic.rx_poll() {
                    None => break,
                    Some(Err(BadEntry::Used(_) | BadEntry::Short { .. })) => {
                        busy = true;
                        continue;
                    }
                    Some(Ok(f)) => f,
                },
            };
            let Some(meta) = meta_of(&f.hdr) else {
                self.stats.rx_bad_header += 1;
                self.nic.rx_repost(f.buffer);
                busy = true;
                continue;
            };
            if f.len < MIN_FRAME || f.len > MAX_FRAME {
                self.stats.rx_runts += u64::from(f.len < MIN_FRAME);
                self.stats.rx_too_large += u64::from(f.len > MAX_FRAME);
                self.nic.rx_repost(f.buffer);
                busy = true;
                continue;
            }
            let (op, inline) = frame::Request::Receive(meta).encode();
            let sent = self
                .nic
                .rx_frame(&f, |bytes| link.endpoint.send_request(op, inline, bytes));
            match sent {
                Ok(_) => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += f.len as u64;
                    self.nic.rx_repost(f.buffer);
                    busy = true;
                }
                Err(ChannelError::NoFreeRequest | ChannelError::Full) => {
                    // No credit: the frame waits in its buffer until ip's replies
                    // (which wake the server) give some back.
                    self.backlog.push_front(f);
                    break;
                }
                Err(ChannelError::PayloadTooLarge) => {
                    self.stats.rx_too_large += 1;
                    self.nic.rx_repost(f.buffer);
                    busy = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(busy)
    }

    /// Answer the Transmit requests whose slots the device is done with.
    fn complete<N: Notifier>(&mut self, link: &mut Link<'_, N>) -> Result<bool, Close> {
        let mut busy = false;
        self.tx_blocked = false;
        for _ in 0..self.held.len() + BUDGET as usize {
            if !self.nic.has_tx_used() {
                break;
            }
            // An honest ip always has room for its replies (its requests in flight
            // never exceed its reply queue); one that does not take them leaves the
            // device's used entries waiting, and its frames held, instead of losing them.
            if !link.endpoint.can_reply()? {
                self.tx_blocked = true;
                break;
            }
            let Some(done) = self.nic.tx_poll() else {
                break;
            };
            busy = true;
            let Ok(slot) = done else {
                continue;
            };
            if let Some(req) = self.held.get_mut(usize::from(slot)).and_then(Option::take) {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += req.payload_len() as u64;
                let (status, inline) = frame::Reply::Done.encode();
                link.reply(req, status, inline, &[])?;
            }
        }
        Ok(busy)
    }

    fn drop_tx<N: Notifier>(
        &mut self,
        link: &mut Link<'_, N>,
        req: Request,
        why: DropReason,
    ) -> Result<(), Close> {
        match why {
            DropReason::BadLength => self.stats.tx_bad_length += 1,
            DropReason::NoRoom => self.stats.tx_no_room += 1,
            _ => self.stats.tx_malformed += 1,
        }
        let (status, inline) = frame::Reply::Dropped(why).encode();
        link.reply(req, status, inline, &[])
    }
}

impl<R: Ram + Clone, M: Mmio, N: Notifier> Handler<N> for Driver<R, M> {
    fn on_pass(&mut self, link: &mut Link<'_, N>) -> Result<bool, Close> {
        if self.armed {
            self.armed = false;
            self.nic.disarm();
            if self.nic.has_used() {
                self.stats.device_wakeups += 1;
            }
        }
        let mut busy = false;
        if !self.link_sent {
            busy |= self.send_link(link)?;
        }
        busy |= self.complete(link)?;
        busy |= self.receive(link)?;
        if busy {
            self.nic.flush();
        }
        Ok(busy)
    }

    fn on_request(&mut self, link: &mut Link<'_, N>, req: Request) -> Result<(), Close> {
        let meta = match frame::Request::decode(req.opcode(), req.is_oneway(), req.inline()) {
            Ok(frame::Request::Transmit(meta)) => meta,
            _ if req.is_oneway() => {
                return Err(Close::Violation("a one-way message on the frame protocol"))
            }
            _ => return self.drop_tx(link, req, DropReason::Malformed),
        };
        let len = req.payload_len();
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return self.drop_tx(link, req, DropReason::BadLength);
        }
        let hdr = match hdr_of(&meta, self.link.offloads) {
            Ok(h) => h,
            Err(why) => return self.drop_tx(link, req, why),
        };
        let endpoint = &*link.endpoint;
        let sent = self.nic.tx_send(&hdr, len, |buf| {
            endpoint.read_request_payload(&req, buf).map(|_| ())
        });
        match sent {
            Ok(slot) => {
                self.held[usize::from(slot)] = Some(req);
                self.nic.flush();
                Ok(())
            }
            Err(TxError::NoSlot) => self.drop_tx(link, req, DropReason::NoRoom),
            Err(TxError::TooLong) => self.drop_tx(link, req, DropReason::BadLength),
            Err(TxError::Fill(e)) => Err(e.into()),
        }
    }

    fn on_reply(&mut self, link: &mut Link<'_, N>, reply: Reply) -> Result<(), Close> {
        match (
            reply.opcode(),
            frame::Reply::decode(reply.status(), reply.inline()),
        ) {
            (OP_LINK, Ok(frame::Reply::Done)) => self.link_acked = true,
            (OP_RECEIVE, Ok(frame::Reply::Done)) => {}
            (OP_RECEIVE, Ok(frame::Reply::Dropped(_))) => self.stats.rx_refused_by_ip += 1,
            _ => self.stats.bad_replies += 1,
        }
        Ok(link.endpoint.free(reply)?)
    }

    fn before_sleep(&mut self) -> bool {
        self.armed = true;
        self.stats.arms += 1;
        let (rx, tx) = self.nic.arm();
        // Received frames behind a backlog wait for ip's credit, and transmit
        // completions for room in its reply queue, not for the device.
        (tx && !self.tx_blocked) || (rx && self.backlog.is_empty())
    }
}

#[cfg(test)]
mod tests;

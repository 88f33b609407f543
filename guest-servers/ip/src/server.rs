//! The ip stack over channels: one to the driver (the frame protocol, ip is side
//! "server" for received frames and "client" for frames to transmit) and at most one to
//! the upper layer (the packet protocol, the other way round).
//!
//! ip forwards between its channels, so it does not use the kit's per-channel
//! `Handler`s (a handler sees only its own channel); it keeps the kit's rules instead,
//! with the same [`BUDGET`] per channel and pass:
//!
//! - replies first (credit back; forged or stale ones are consumed and counted);
//! - then what the stack queued for that channel, while the peer has credit (free
//!   request ids and queue room); what does not fit waits in the stack's bounded queues;
//! - then the peer's requests, each only when the peer's reply queue has room *and* the
//!   stack's queues have room for whatever it may produce ([`Ip::has_room`]), so nothing
//!   is dropped for lack of room while the peers take their messages. A request that
//!   cannot be taken yet is *parked*; a channel parked because its peer does not take
//!   its replies leaves the [`sleep_set`](IpServer::sleep_set), as in the kit.
//!
//! A channel that breaks (corrupt region) is dropped and reported by
//! [`take_closed`](IpServer::take_closed); the stack serves on with what is left.
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use compart_channel::{ChannelError, Endpoint, Notifier, Request};
use compart_kit::server::{Close, Peer, BUDGET};
use compart_proto::{frame, packet};
use smoltcp::wire::Ipv4Packet;

use crate::{Instant, Ip};

/// Which protocol a channel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Driver,
    Upper,
}

#[derive(Debug)]
struct LinkState {
    peer: Peer,
    kind: Kind,
    /// A request taken but not handled yet.
    parked: Option<Request>,
    /// `parked` waits because the peer's reply queue is full (its own doing).
    peer_full: bool,
}

/// The ip server: the stack and its channels.
#[derive(Debug)]
pub struct IpServer<N: Notifier> {
    ip: Ip,
    /// Endpoints, in the same order as `links`.
    endpoints: Vec<Endpoint<N>>,
    links: Vec<LinkState>,
    /// The IP header and 8 bytes of each packet delivered up and not yet answered, by
    /// request id: what an ICMP error quotes if the answer is "unreachable".
    heads: BTreeMap<u64, Vec<u8>>,
    buf: Vec<u8>,
    closed: Vec<(Peer, Close)>,
}

impl<N: Notifier> IpServer<N> {
    /// A server of `ip` with the channel to the driver and, if there is one, to the
    /// upper layer.
    pub fn new(
        mut ip: Ip,
        driver: (Peer, Endpoint<N>),
        upper: Option<(Peer, Endpoint<N>)>,
    ) -> IpServer<N> {
        ip.set_upper(upper.is_some());
        let mut s = IpServer {
            ip,
            endpoints: Vec::new(),
            links: Vec::new(),
            heads: BTreeMap::new(),
            buf: Vec::new(),
            closed: Vec::new(),
        };
        let chans = [
            Some((driver, Kind::Driver)),
            upper.map(|u| (u, Kind::Upper)),
        ];
        for ((peer, ep), kind) in chans.into_iter().flatten() {
            if s.buf.len() < ep.buffer_size() {
                s.buf = vec![0; ep.buffer_size()];
            }
            s.endpoints.push(ep);
            s.links.push(LinkState {
                peer,
                kind,
                parked: None,
                peer_full: false,
            });
        }
        s
    }

    /// The stack.
    pub fn ip(&self) -> &Ip {
        &self.ip
    }

    /// The stack, to change it (tests, the glue).
    pub fn ip_mut(&mut self) -> &mut Ip {
        &mut self.ip
    }

    /// Channels still served.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether no channel is left.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The channels dropped since the last call, and why.
    pub fn take_closed(&mut self) -> Vec<(Peer, Close)> {
        core::mem::take(&mut self.closed)
    }

    /// The endpoints to sleep on: all but those whose peer does not take its replies.
    pub fn sleep_set(&mut self) -> &mut [Endpoint<N>] {
        let awake =
            compart_kit::server::awake_first(&mut self.links, &mut self.endpoints, |l| l.peer_full);
        &mut self.endpoints[..awake]
    }

    /// One pass: timers, then every channel. Returns whether anything was done.
    pub fn poll(&mut self, now: Instant) -> bool {
        self.ip.poll(now);
        let mut busy = false;
        let mut k = 0;
        while k < self.links.len() {
            match self.serve(k, now) {
                Ok(b) => {
                    busy |= b;
                    k += 1;
                }
                Err(e) => {
                    busy = true;
                    self.endpoints.swap_remove(k);
                    let link = self.links.swap_remove(k);
                    if link.kind == Kind::Upper {
                        self.ip.set_upper(false);
                        self.heads.clear();
                    }
                    self.closed.push((link.peer, Close::Channel(e)));
                }
            }
        }
        // What the last channel's requests produced for the first.
        for k in 0..self.links.len() {
            // A channel found broken here is dropped by the next pass.
            let _ = self.flush(k);
        }
        busy
    }

    fn serve(&mut self, k: usize, now: Instant) -> Result<bool, ChannelError> {
        let mut busy = false;
        for _ in 0..BUDGET {
            let Some(reply) = self.endpoints[k].poll_reply()? else {
                break;
            };
            busy = true;
            match self.links[k].kind {
                Kind::Driver => self.driver_reply(reply.status(), reply.inline()),
                Kind::Upper => self.upper_reply(now, reply.id().0, reply.status(), reply.inline()),
            }
            self.endpoints[k].free(reply)?;
        }
        busy |= self.flush(k)?;
        self.links[k].peer_full = false;
        for _ in 0..BUDGET {
            let ep = &mut self.endpoints[k];
            let link = &mut self.links[k];
            let req = match link.parked.take() {
                Some(r) => r,
                None => match ep.poll_request()? {
                    Some(r) => r,
                    None => break,
                },
            };
            let peer_full = !req.is_oneway() && !ep.can_reply()?;
            if peer_full || !self.ip.has_room() {
                link.peer_full = peer_full;
                link.parked = Some(req);
                break;
            }
            busy = true;
            match link.kind {
                Kind::Driver => self.driver_request(k, now, req)?,
                Kind::Upper => self.upper_request(k, now, req)?,
            }
        }
        busy |= self.flush(k)?;
        Ok(busy)
    }

    /// Send what the stack queued for channel `k`, as far as the peer gives credit.
    fn flush(&mut self, k: usize) -> Result<bool, ChannelError> {
        let ep = &mut self.endpoints[k];
        let mut sent = false;
        match self.links[k].kind {
            Kind::Driver => {
                while let Some(f) = self.ip.pop_tx() {
                    if f.frame.len() > ep.buffer_size() {
                        self.ip.counters_mut().tx_too_large_for_channel += 1;
                        continue;
                    }
                    let (op, inline) = frame::Request::Transmit(f.meta).encode();
                    match ep.send_request(op, inline, &f.frame) {
                        Ok(_) => sent = true,
                        Err(ChannelError::NoFreeRequest | ChannelError::Full) => {
                            self.ip.unpop_tx(f);
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Kind::Upper => {
                while let Some(p) = self.ip.pop_up() {
                    if p.packet.len() > ep.buffer_size() {
                        self.ip.counters_mut().up_too_large_for_channel += 1;
                        continue;
                    }
                    let (op, inline) = packet::Request::Deliver(p.meta).encode();
                    match ep.send_request(op, inline, &p.packet) {
                        Ok(id) => {
                            sent = true;
                            let ihl =
                                usize::from(Ipv4Packet::new_unchecked(&p.packet[..]).header_len());
                            let head = p.packet[..p.packet.len().min(ihl + 8)].to_vec();
                            self.heads.insert(id.0, head);
                        }
                        Err(ChannelError::NoFreeRequest | ChannelError::Full) => {
                            self.ip.unpop_up(p);
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if sent {
            ep.flush()?;
        }
        Ok(sent)
    }

    fn driver_reply(&mut self, status: u32, inline: &[u64; 5]) {
        let c = self.ip.counters_mut();
        match frame::Reply::decode(status, inline) {
            Ok(frame::Reply::Done) => {}
            Ok(frame::Reply::Dropped(_)) => c.driver_dropped += 1,
            Err(_) => c.driver_malformed += 1,
        }
    }

    fn upper_reply(&mut self, now: Instant, id: u64, status: u32, inline: &[u64; 5]) {
        let head = self.heads.remove(&id);
        match packet::Reply::decode(status, inline) {
            Ok(packet::Reply::Done) => {}
            Ok(packet::Reply::Dropped(_)) => self.ip.counters_mut().up_dropped += 1,
            Ok(packet::Reply::Unreachable(code)) => {
                self.ip.counters_mut().up_unreachable += 1;
                if let Some(head) = head {
                    self.ip.icmp_error(now, &head, code);
                }
            }
            Ok(packet::Reply::Config(_)) | Err(_) => self.ip.counters_mut().up_malformed += 1,
        }
    }

    /// The request's payload, read into the scratch buffer.
    fn payload(&mut self, k: usize, req: &Request) -> Result<usize, ChannelError> {
        let n = req.payload_len().min(self.buf.len());
        self.endpoints[k].read_request_payload(req, &mut self.buf[..n])
    }

    fn driver_request(&mut self, k: usize, now: Instant, req: Request) -> Result<(), ChannelError> {
        use frame::{DropReason, Reply};
        let answer = match frame::Request::decode(req.opcode(), req.is_oneway(), req.inline()) {
            Ok(frame::Request::Link { mac, mtu, offloads }) => {
                match self.ip.link_up(now, mac, mtu, offloads) {
                    Ok(()) => Reply::Done,
                    Err(_) => {
                        self.ip.counters_mut().driver_malformed += 1;
                        Reply::Dropped(DropReason::Malformed)
                    }
                }
            }
            Ok(frame::Request::Receive(meta)) => {
                let n = self.payload(k, &req)?;
                self.ip.receive(now, meta, &self.buf[..n]);
                Reply::Done
            }
            Ok(frame::Request::Transmit(_)) | Err(_) => {
                self.ip.counters_mut().driver_malformed += 1;
                Reply::Dropped(DropReason::Malformed)
            }
        };
        if req.is_oneway() {
            return Ok(());
        }
        let (status, inline) = answer.encode();
        self.endpoints[k].reply(req, status, inline, &[])
    }

    fn upper_request(&mut self, k: usize, now: Instant, req: Request) -> Result<(), ChannelError> {
        use packet::{DropReason, Reply};
        let answer = match packet::Request::decode(req.opcode(), req.is_oneway(), req.inline()) {
            Ok(packet::Request::Send(meta)) => {
                let n = self.payload(k, &req)?;
                match self.ip.send(now, meta, &self.buf[..n]) {
                    Ok(()) => Reply::Done,
                    Err(why) => Reply::Dropped(why),
                }
            }
            Ok(packet::Request::Config) => match self.ip.config() {
                Some(c) => Reply::Config(c),
                None => Reply::Dropped(DropReason::LinkDown),
            },
            Ok(packet::Request::Deliver(_)) | Err(_) => {
                self.ip.counters_mut().up_malformed += 1;
                Reply::Dropped(DropReason::Malformed)
            }
        };
        if req.is_oneway() {
            return Ok(());
        }
        let (status, inline) = answer.encode();
        self.endpoints[k].reply(req, status, inline, &[])
    }
}

//! What the filter looks at in a packet, parsed from pf's private copy of it with
//! `smoltcp::wire`'s zero-copy views; every length checked, never a panic.
use smoltcp::wire::{
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet, TcpOption, TcpPacket, UdpPacket,
};

use crate::rules::Dir;

/// IP protocol numbers the filter knows.
pub const PROTO_ICMP: u8 = 1;
/// TCP's protocol number.
pub const PROTO_TCP: u8 = 6;
/// UDP's protocol number.
pub const PROTO_UDP: u8 = 17;

/// TCP flags the connection table follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

/// Where a TCP segment lies in its sender's sequence space, and the window it
/// advertises (zero for other protocols).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSeg {
    /// Sequence number.
    pub seq: u32,
    /// Sequence space it takes: data, plus one for a SYN and one for a FIN.
    pub len: u32,
    /// The window field, as sent (not scaled).
    pub window: u16,
    /// The window scale option (a SYN's), if it has one.
    pub wscale: Option<u8>,
}

/// What kind of packet, beyond its addresses and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP segment and its flags.
    Tcp(TcpFlags),
    /// A UDP datagram.
    Udp,
    /// An ICMP echo request (or reply, `request == false`); its identifier is in the ports.
    Echo {
        /// Whether it is a request.
        request: bool,
    },
    /// An ICMP error (destination unreachable, time exceeded, parameter problem, source
    /// quench) and the connection of the packet it quotes, if the quote was readable.
    IcmpError(Option<Quoted>),
    /// Another ICMP message.
    IcmpOther,
    /// Another IP protocol (no ports).
    Other,
}

/// The flow of the packet an ICMP error quotes: its header and first 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    /// Protocol of the quoted packet.
    pub proto: u8,
    /// Its source and destination addresses.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Its ports (the echo identifier twice for a quoted echo; 0 for other protocols).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// A packet as the filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Source port (TCP, UDP), echo identifier (ICMP echo), else 0.
    pub sport: u16,
    /// Destination port, echo identifier, else 0.
    pub dport: u16,
    /// The rest.
    pub kind: Kind,
    /// A TCP segment's sequence numbers and window (zero for other protocols).
    pub seg: TcpSeg,
}

/// Why a packet could not be looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not an IPv4 packet, or a header that does not fit it.
    Malformed,
    /// A fragment: pf sees only whole datagrams (ip reassembles them).
    Fragment,
}

/// A connection, as the table keys it: the same for both directions of its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// IP protocol number.
    pub proto: u8,
    /// The stack's end: address and port.
    pub local: ([u8; 4], u16),
    /// The other end.
    pub remote: ([u8; 4], u16),
}

impl Key {
    /// The key of a packet from `src:sport` to `dst:dport` going `dir`.
    pub fn new(dir: Dir, proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Key {
        match dir {
            Dir::Out => Key {
                proto,
                local: (src, sport),
                remote: (dst, dport),
            },
            Dir::In => Key {
                proto,
                local: (dst, dport),
                remote: (src, sport),
            },
        }
    }
}

impl Flow {
    /// The connection of this packet, going `dir`.
    pub fn key(&self, dir: Dir) -> Key {
        Key::new(dir, self.proto, self.src, self.sport, self.dst, self.dport)
    }

    /// The address of the other end (the source of a packet coming in).
    pub fn remote(&self, dir: Dir) -> [u8; 4] {
        match dir {
            Dir::In => self.src,
            Dir::Out => self.dst,
        }
    }

    /// Whether the packet may open a connection the table then tracks: a TCP SYN without
    /// ACK, any UDP datagram, an echo request, a packet of another protocol. (ICMP errors
    /// and other ICMP messages pass on a rule alone, and create nothing.)
    pub fn opens(&self) -> bool {
        match self.kind {
            Kind::Tcp(f) => f.syn && !f.ack && !f.rst,
            Kind::Udp | Kind::Echo { request: true } | Kind::Other => true,
            Kind::Echo { request: false } | Kind::IcmpError(_) | Kind::IcmpOther => false,
        }
    }
}

/// The flow of an IPv4 packet (the whole of a message's payload).
pub fn parse(packet: &[u8]) -> Result<Flow, ParseError> {
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| ParseError::Malformed)?;
    if ip.version() != 4 || ip.header_len() < 20 {
        return Err(ParseError::Malformed);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(ParseError::Fragment);
    }
    let proto = u8::from(ip.next_header());
    let src = ip.src_addr().octets();
    let dst = ip.dst_addr().octets();
    let payload = ip.payload();
    let mut seg = TcpSeg::default();
    let (sport, dport, kind) = match ip.next_header() {
        IpProtocol::Tcp => {
            let t = TcpPacket::new_checked(payload).map_err(|_| ParseError::Malformed)?;
            let flags = TcpFlags {
                syn: t.syn(),
                ack: t.ack(),
                fin: t.fin(),
                rst: t.rst(),
            };
            let data = t.payload().len() as u32;
            seg = TcpSeg {
                seq: t.seq_number().0 as u32,
                len: data + u32::from(flags.syn) + u32::from(flags.fin),
                window: t.window_len(),
                wscale: if flags.syn { wscale(t.options()) } else { None },
            };
            (t.src_port(), t.dst_port(), Kind::Tcp(flags))
        }
        IpProtocol::Udp => {
            let u = UdpPacket::new_checked(payload).map_err(|_| ParseError::Malformed)?;
            (u.src_port(), u.dst_port(), Kind::Udp)
        }
        IpProtocol::Icmp => {
            let i = Icmpv4Packet::new_checked(payload).map_err(|_| ParseError::Malformed)?;
            match i.msg_type() {
                Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply => {
                    let id = i.echo_ident();
                    let request = i.msg_type() == Icmpv4Message::EchoRequest;
                    (id, id, Kind::Echo { request })
                }
                Icmpv4Message::DstUnreachable
                | Icmpv4Message::TimeExceeded
                | Icmpv4Message::ParamProblem
                | Icmpv4Message::Unknown(4) => (0, 0, Kind::IcmpError(quoted(i.data()))),
                _ => (0, 0, Kind::IcmpOther),
            }
        }
        _ => (0, 0, Kind::Other),
    };
    Ok(Flow {
        proto,
        src,
        dst,
        sport,
        dport,
        kind,
        seg,
    })
}

/// The window scale option among a SYN's `options` (shifts above 14 count as 14, as
/// RFC 7323 says); `None` without one or if the options do not parse.
fn wscale(mut options: &[u8]) -> Option<u8> {
    while !options.is_empty() {
        let (rest, o) = TcpOption::parse(options).ok()?;
        match o {
            TcpOption::WindowScale(s) => return Some(s.min(14)),
            TcpOption::EndOfList => return None,
            _ => {}
        }
        options = rest;
    }
    None
}

/// The flow of the packet an ICMP error quotes (an IPv4 header and at least the 8 bytes
/// that hold the ports or the echo identifier), or `None` if the quote is too short or not
/// IPv4.
fn quoted(data: &[u8]) -> Option<Quoted> {
    let first = *data.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 {
        return None;
    }
    let header = data.get(..ihl)?;
    let proto = header[9];
    let mut src = [0; 4];
    let mut dst = [0; 4];
    src.copy_from_slice(&header[12..16]);
    dst.copy_from_slice(&header[16..20]);
    let l4 = data.get(ihl..ihl + 8)?;
    let word = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP => (word(0), word(2)),
        // Only a quoted echo request belongs to a connection (ours, or the peer's).
        PROTO_ICMP if l4[0] == 8 || l4[0] == 0 => (word(4), word(4)),
        PROTO_ICMP => return None,
        _ => (0, 0),
    };
    Some(Quoted {
        proto,
        src,
        dst,
        sport,
        dport,
    })
}

//! Hostile traffic for network tests: [`RawSender`] writes whole Ethernet frames to
//! an interface through an `AF_PACKET` socket (opened inside the test's namespace,
//! e.g. on the Linux side of a NIC's TAP), and [`FrameGen`] (`compart-netgen`, shared
//! with the guests) makes random and mutated frames aimed at a [`Target`]: random
//! bytes, IPv4 with truncated headers, wrong lengths, versions, IHLs and checksums,
//! bogus ARP, overlapping and endless fragments, and jumbo frames over the MTU.
//! Deterministic from its seed, so a failure can be replayed. For TCP: [`Segment`]
//! builds (and parses) segments with correct or wrong checksums, [`RawReceiver`] reads
//! the stack's answers off the interface, [`RawPeer`] plays a TCP peer of any address
//! with both (handshake, data, zero windows, forged segments), and [`Rng`] makes the
//! random ones, replayable from a seed.
//!
//! ```text
//! let sender = ns.run_in(|| RawSender::open("cpt0"))??;  // in the namespace
//! for frame in FrameGen::new(1, target, 1500).take(100_000) {
//!     sender.send(&frame)?;
//! }
//! ```

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub use compart_netgen::{checksum, FrameGen, Kind, Target};

/// A raw `AF_PACKET` socket bound to one interface, for sending only.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSender {
    /// Opens a socket on interface `ifname` of the calling thread's network
    /// namespace (the socket stays there whichever thread sends later). It receives
    /// nothing (protocol 0).
    pub fn open(ifname: &str) -> io::Result<RawSender> {
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: if_nametoindex reads a NUL-terminated string we own.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket has no memory arguments; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a socket we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(RawSender { fd, ifindex })
    }

    /// Sends one frame (destination MAC first, no FCS). The kernel refuses frames
    /// shorter than an Ethernet header or longer than the interface's MTU + 14.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        let n = frame.len().min(6);
        addr.sll_addr[..n].copy_from_slice(&frame[..n]);
        // SAFETY: the buffer and the address are valid for the lengths given; the
        // kernel only reads them.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::other(format!(
                "sent {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }
}

/// TCP header flags, for [`Segment::flags`].
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// The urgent pointer is significant.
    pub const URG: u8 = 0x20;
}

/// A TCP segment in an Ethernet frame, built by hand ([`Segment::frame`]) with correct
/// IPv4 and TCP checksums unless told otherwise, or read back from a frame
/// ([`Segment::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// IPv4 source.
    pub src: [u8; 4],
    /// IPv4 destination.
    pub dst: [u8; 4],
    /// TCP source port.
    pub sport: u16,
    /// TCP destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// [`flags`] bits.
    pub flags: u8,
    /// Receive window.
    pub window: u16,
    /// TCP options, as bytes (padded with zeros to a multiple of 4 in the frame; not
    /// checked: they may be garbage).
    pub options: Vec<u8>,
    /// The data offset to write in the header (in 32-bit words, 0–15) instead of the
    /// true one (20 bytes + the options): a header that lies about its length.
    pub data_offset: Option<u8>,
    /// Data.
    pub payload: Vec<u8>,
}

impl Segment {
    /// The frame: Ethernet, IPv4 (no options, DF, TTL 64) and TCP (no options), both
    /// checksums right.
    pub fn frame(&self) -> Vec<u8> {
        let opt_len = self.options.len().div_ceil(4) * 4;
        let header = 20 + opt_len;
        let tcp_len = header + self.payload.len();
        let mut f = Vec::with_capacity(34 + tcp_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + tcp_len) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&self.src);
        ip[16..20].copy_from_slice(&self.dst);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut t = vec![0u8; tcp_len];
        t[0..2].copy_from_slice(&self.sport.to_be_bytes());
        t[2..4].copy_from_slice(&self.dport.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        let offset = self.data_offset.unwrap_or((header / 4) as u8);
        t[12] = (offset & 0xf) << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&self.window.to_be_bytes());
        t[20..20 + self.options.len()].copy_from_slice(&self.options);
        t[header..].copy_from_slice(&self.payload);
        let mut pseudo = Vec::with_capacity(12 + tcp_len);
        pseudo.extend_from_slice(&self.src);
        pseudo.extend_from_slice(&self.dst);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        pseudo.extend_from_slice(&t);
        let c = checksum(&pseudo);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&t);
        f
    }

    /// The same frame with its TCP checksum wrong (off by one).
    pub fn frame_with_bad_checksum(&self) -> Vec<u8> {
        let mut f = self.frame();
        let c = u16::from_be_bytes([f[50], f[51]]).wrapping_add(1);
        f[50..52].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The TCP segment in an Ethernet frame carrying IPv4 (not a fragment), if it is
    /// one; checksums are not checked (a TAP's frames may carry partial ones).
    pub fn parse(f: &[u8]) -> Option<Segment> {
        if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 || f[23] != 6 {
            return None;
        }
        let ihl = usize::from(f[14] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let frag = u16::from_be_bytes([f[20], f[21]]) & 0x3fff;
        let ip = f.get(14..14 + total)?;
        if ihl < 20 || frag != 0 || ip.len() < ihl + 20 {
            return None;
        }
        let t = &ip[ihl..];
        let off = usize::from(t[12] >> 4) * 4;
        if off < 20 || t.len() < off {
            return None;
        }
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        Some(Segment {
            dst_mac: f[0..6].try_into().ok()?,
            src_mac: f[6..12].try_into().ok()?,
            src: ip[12..16].try_into().ok()?,
            dst: ip[16..20].try_into().ok()?,
            sport: u16::from_be_bytes([t[0], t[1]]),
            dport: u16::from_be_bytes([t[2], t[3]]),
            seq: be32(&t[4..8]),
            ack: be32(&t[8..12]),
            flags: t[13],
            window: u16::from_be_bytes([t[14], t[15]]),
            options: t[20..off].to_vec(),
            data_offset: None,
            payload: t[off..].to_vec(),
        })
    }
}

/// Most frames [`RawReceiver::wait_for`] looks at in one call.
pub const MAX_FRAMES: usize = 1_000_000;

/// A raw `AF_PACKET` socket that receives the IPv4 frames on one interface (both
/// directions), with a receive timeout.
#[derive(Debug)]
pub struct RawReceiver {
    fd: OwnedFd,
}

impl RawReceiver {
    /// Opens it on interface `ifname` of the calling thread's network namespace.
    pub fn open(ifname: &str) -> io::Result<RawReceiver> {
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: if_nametoindex reads a NUL-terminated string we own.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: socket has no memory arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a socket we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        // SAFETY: the address is valid for the length given; the kernel only reads it.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: the option value is a timeval valid for the length given.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawReceiver { fd })
    }

    /// The next frame, or `None` after about 50 ms without one.
    pub fn recv(&self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 65600];
        // SAFETY: the buffer is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
                _ => Err(e),
            };
        }
        buf.truncate(n as usize);
        Ok(Some(buf))
    }

    /// The first TCP segment for which `want` holds, within `timeout` (and the first
    /// [`MAX_FRAMES`] frames).
    pub fn wait_for(
        &self,
        timeout: std::time::Duration,
        mut want: impl FnMut(&Segment) -> bool,
    ) -> io::Result<Option<Segment>> {
        let deadline = std::time::Instant::now() + timeout;
        for _ in 0..MAX_FRAMES {
            if std::time::Instant::now() >= deadline {
                break;
            }
            if let Some(s) = self.recv()?.as_deref().and_then(Segment::parse) {
                if want(&s) {
                    return Ok(Some(s));
                }
            }
        }
        Ok(None)
    }
}

/// A small deterministic random source (splitmix64) for hostile segments, so that a
/// failure can be replayed from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A TCP peer played with raw frames from a namespace, claiming any address: it sends
/// [`Segment`]s from its MAC to the stack's and reads the stack's answers off the
/// same interface. With a source address off the link (reached through the stack's
/// gateway, the namespace's own address), the namespace's kernel drops the stack's
/// answers (it does not forward) instead of resetting them, so connections stay as
/// the test leaves them.
#[derive(Debug)]
pub struct RawPeer {
    /// Where frames go out.
    pub tx: RawSender,
    /// Where the stack's answers come in.
    pub rx: RawReceiver,
    /// The peer's MAC (the interface's).
    pub mac: [u8; 6],
    /// The stack's MAC.
    pub stack_mac: [u8; 6],
    /// The stack's address.
    pub stack: [u8; 4],
}

/// One connection of a [`RawPeer`]: its addresses and where both sequence spaces are.
#[derive(Debug, Clone, Copy)]
pub struct RawConn {
    /// The peer's (claimed) address.
    pub src: [u8; 4],
    /// The peer's port.
    pub sport: u16,
    /// The stack's port.
    pub dport: u16,
    /// The peer's next sequence number.
    pub snd_nxt: u32,
    /// The stack's next sequence number (what the peer acknowledges).
    pub rcv_nxt: u32,
}

impl RawPeer {
    /// A segment from `src:sport` to the stack's `dport`.
    #[allow(clippy::too_many_arguments)]
    pub fn segment(
        &self,
        src: [u8; 4],
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        payload: &[u8],
    ) -> Segment {
        Segment {
            dst_mac: self.stack_mac,
            src_mac: self.mac,
            src,
            dst: self.stack,
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            options: Vec::new(),
            data_offset: None,
            payload: payload.to_vec(),
        }
    }

    /// A segment of connection `c` with the next sequence number, acknowledging what
    /// the stack sent.
    pub fn on(&self, c: &RawConn, flags: u8, window: u16, payload: &[u8]) -> Segment {
        self.segment(
            c.src, c.sport, c.dport, c.snd_nxt, c.rcv_nxt, flags, window, payload,
        )
    }

    /// Sends `s`.
    pub fn send(&self, s: &Segment) -> io::Result<()> {
        self.tx.send(&s.frame())
    }

    /// The next segment the stack sends to `src:sport` within `timeout`.
    pub fn answer(
        &self,
        src: [u8; 4],
        sport: u16,
        timeout: std::time::Duration,
    ) -> io::Result<Option<Segment>> {
        let stack = self.stack;
        self.rx.wait_for(timeout, |s| {
            s.src == stack && s.dst == src && s.sport != 0 && s.dport == sport
        })
    }

    /// Opens a connection from `src:sport` to the stack's `dport` (SYN, the SYN-ACK,
    /// ACK), within `timeout`; `None` if the stack does not answer with a SYN-ACK.
    pub fn connect(
        &self,
        src: [u8; 4],
        sport: u16,
        dport: u16,
        timeout: std::time::Duration,
    ) -> io::Result<Option<RawConn>> {
        let isn = 0x1000_0000;
        self.send(&self.segment(src, sport, dport, isn, 0, flags::SYN, 8192, &[]))?;
        let Some(a) = self.answer(src, sport, timeout)? else {
            return Ok(None);
        };
        if a.flags & (flags::SYN | flags::ACK) != flags::SYN | flags::ACK
            || a.ack != isn.wrapping_add(1)
        {
            return Ok(None);
        }
        let c = RawConn {
            src,
            sport,
            dport,
            snd_nxt: isn.wrapping_add(1),
            rcv_nxt: a.seq.wrapping_add(1),
        };
        self.send(&self.on(&c, flags::ACK, 8192, &[]))?;
        Ok(Some(c))
    }

    /// Sends `data` on `c` (one segment, advertising `window`) and advances it.
    pub fn write(&self, c: &mut RawConn, data: &[u8], window: u16) -> io::Result<()> {
        self.send(&self.on(c, flags::ACK | flags::PSH, window, data))?;
        c.snd_nxt = c.snd_nxt.wrapping_add(data.len() as u32);
        Ok(())
    }

    /// Reads `n` bytes the stack sends in order on `c` within `timeout`, acknowledging
    /// them with `window`; what came (shorter on a timeout, or a RST). Segments that are
    /// not the next in order are ignored (the stack sends them again).
    pub fn read(
        &self,
        c: &mut RawConn,
        n: usize,
        window: u16,
        timeout: std::time::Duration,
    ) -> io::Result<Vec<u8>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut got = Vec::new();
        // Each segment taken moves at least a byte; the others are bounded by the count.
        for _ in 0..n + 10_000 {
            if got.len() >= n {
                break;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(s) = self.answer(c.src, c.sport, left)? else {
                break;
            };
            if s.flags & flags::RST != 0 {
                break;
            }
            if s.seq == c.rcv_nxt && !s.payload.is_empty() {
                got.extend_from_slice(&s.payload);
                c.rcv_nxt = c.rcv_nxt.wrapping_add(s.payload.len() as u32);
                self.send(&self.on(c, flags::ACK, window, &[]))?;
            }
        }
        Ok(got)
    }
}

/// The MAC of interface `ifname` in namespace `ns` (from `ip -o link show`).
pub fn mac_of(ns: &str, ifname: &str) -> io::Result<[u8; 6]> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", ifname])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| io::Error::other(format!("no MAC for {ifname} in {ns}: {text}")))?;
    let mut m = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut m {
        *b = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| io::Error::other(format!("bad MAC {mac}")))?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_carry_correct_checksums_and_parse_back() {
        let s = Segment {
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            src: [198, 19, 0, 7],
            dst: [198, 18, 0, 2],
            sport: 40000,
            dport: 7,
            seq: 0xdead_beef,
            ack: 17,
            flags: flags::ACK | flags::PSH,
            window: 512,
            options: Vec::new(),
            data_offset: None,
            payload: b"odd".to_vec(),
        };
        let f = s.frame();
        assert_eq!(f.len(), 14 + 20 + 20 + 3);
        // A correct Internet checksum sums (with itself) to zero.
        assert_eq!(checksum(&f[14..34]), 0);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 6, 0, 23]);
        pseudo.extend_from_slice(&f[34..]);
        assert_eq!(checksum(&pseudo), 0);
        assert_eq!(Segment::parse(&f), Some(s.clone()));
        let bad = s.frame_with_bad_checksum();
        let mut pseudo_bad = pseudo.clone();
        pseudo_bad[12..].copy_from_slice(&bad[34..]);
        assert_ne!(checksum(&pseudo_bad), 0);
        assert_eq!(Segment::parse(&f[..40]), None, "cut short");
        // Options pad to a word and count in the header's length; a lying offset is
        // written as given, the checksum still right.
        let with = Segment {
            options: vec![2, 4, 5, 0xb4, 1],
            ..s.clone()
        };
        let f = with.frame();
        assert_eq!(f.len(), 14 + 20 + 28 + 3);
        assert_eq!(f[46] >> 4, 7);
        assert_eq!(
            Segment::parse(&f).unwrap().options,
            vec![2, 4, 5, 0xb4, 1, 0, 0, 0]
        );
        let liar = Segment {
            data_offset: Some(15),
            ..s.clone()
        };
        let f = liar.frame();
        assert_eq!(f[46] >> 4, 15);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 6, 0, 23]);
        pseudo.extend_from_slice(&f[34..]);
        assert_eq!(checksum(&pseudo), 0);
        assert_eq!(Segment::parse(&f), None, "its header does not fit");
    }
}

//! Hostile Ethernet frames for tests, deterministic from a seed: [`FrameGen`] makes
//! random and mutated frames aimed at a [`Target`] — random bytes, IPv4 with
//! truncated headers, wrong lengths, versions, IHLs and checksums, bogus ARP,
//! overlapping and endless fragments, and jumbo frames over the MTU. `no_std` with
//! `alloc`, so that a guest (the `framepeer` image, feeding the ip server) and the
//! host's raw-socket sender (`compart_tests::rawnet`) send the same frames.
#![no_std]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

/// Who the frames are for, and who they claim to be from.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The stack's MAC (most frames go to it; some to broadcast or elsewhere).
    pub mac: [u8; 6],
    /// The stack's IPv4 address.
    pub ip: [u8; 4],
    /// The sender's MAC.
    pub peer_mac: [u8; 6],
    /// The sender's IPv4 address.
    pub peer_ip: [u8; 4],
}

/// The kinds of frame [`FrameGen`] makes, in turn with random choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Random bytes of a random length after a random Ethernet header.
    Random,
    /// A valid ICMP echo request with a few bytes flipped.
    Mutated,
    /// An IPv4 header cut short.
    TruncatedHeader,
    /// IPv4 whose total length disagrees with the frame.
    WrongLength,
    /// IPv4 with a wrong header checksum.
    WrongChecksum,
    /// IPv4 with a version other than 4 or an IHL below 5 or past the frame.
    BadVersionOrIhl,
    /// ARP with wrong sizes, opcodes, lengths, or claiming the stack's address.
    BogusArp,
    /// Fragments that overlap others of the same datagram.
    OverlappingFragment,
    /// Fragments of datagrams that never complete (more-fragments always set).
    EndlessFragment,
    /// A frame longer than the MTU (up to 9000 bytes of payload).
    Jumbo,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 10] = [
        Kind::Random,
        Kind::Mutated,
        Kind::TruncatedHeader,
        Kind::WrongLength,
        Kind::WrongChecksum,
        Kind::BadVersionOrIhl,
        Kind::BogusArp,
        Kind::OverlappingFragment,
        Kind::EndlessFragment,
        Kind::Jumbo,
    ];
}

/// An endless, deterministic source of hostile frames (see the module doc).
#[derive(Debug, Clone)]
pub struct FrameGen {
    state: u64,
    target: Target,
    mtu: usize,
    n: u64,
}

/// The Internet checksum of `b`.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl FrameGen {
    /// Frames for `target` on a link of `mtu`, from `seed`.
    pub fn new(seed: u64, target: Target, mtu: usize) -> FrameGen {
        FrameGen {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            target,
            mtu,
            n: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    fn eth(&mut self, ethertype: u16) -> Vec<u8> {
        let dst = match self.below(8) {
            0 => [0xff; 6],
            1 => [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
            _ => self.target.mac,
        };
        let mut f = dst.to_vec();
        f.extend_from_slice(&self.target.peer_mac);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// An IPv4 header (checksum right) for `payload_len` bytes of `proto`.
    fn ipv4(&mut self, payload_len: usize, proto: u8, id: u16, frag: u16) -> Vec<u8> {
        let total = (20 + payload_len) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&self.target.peer_ip);
        h.extend_from_slice(&self.target.ip);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    /// A valid ICMP echo request frame with `len` bytes of data.
    pub fn echo_request(&mut self, len: usize, id: u16, seq: u16) -> Vec<u8> {
        let mut icmp = vec![8, 0, 0, 0];
        icmp.extend_from_slice(&id.to_be_bytes());
        icmp.extend_from_slice(&seq.to_be_bytes());
        icmp.extend(self.bytes(len));
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut f = self.target.mac.to_vec();
        f.extend_from_slice(&self.target.peer_mac);
        f.extend_from_slice(&[8, 0]);
        f.extend(self.ipv4(icmp.len(), 1, id, 0));
        f.extend(icmp);
        f
    }

    /// The next frame of kind `kind`.
    pub fn frame(&mut self, kind: Kind) -> Vec<u8> {
        let mtu = self.mtu;
        let id = self.below(1 << 16) as u16;
        match kind {
            Kind::Random => {
                let ethertype =
                    [0x0800, 0x0806, 0x86dd, self.below(1 << 16) as u16][self.below(4) as usize];
                let mut f = self.eth(ethertype);
                let n = self.below(mtu as u64 + 1) as usize;
                f.extend(self.bytes(n));
                f
            }
            Kind::Mutated => {
                let len = self.below(mtu as u64 - 28) as usize;
                let mut f = self.echo_request(len, id, 1);
                for _ in 0..1 + self.below(4) {
                    let at = 14 + self.below(f.len() as u64 - 14) as usize;
                    f[at] ^= 1 << self.below(8);
                }
                f
            }
            Kind::TruncatedHeader => {
                let mut f = self.eth(0x0800);
                let h = self.ipv4(0, 1, id, 0);
                f.extend_from_slice(&h[..self.below(20) as usize]);
                f
            }
            Kind::WrongLength => {
                let len = self.below(512) as usize;
                let mut f = self.echo_request(len, id, 2);
                let wrong = match self.below(3) {
                    0 => 0,
                    1 => self.below(20) as u16,
                    _ => (f.len() - 14 + 1 + self.below(2000) as usize) as u16,
                };
                f[16..18].copy_from_slice(&wrong.to_be_bytes());
                f[24..26].copy_from_slice(&[0, 0]);
                let c = checksum(&f[14..34]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
                f
            }
            Kind::WrongChecksum => {
                let len = self.below(512) as usize;
                let mut f = self.echo_request(len, id, 3);
                f[24] ^= 1 + self.below(255) as u8;
                f
            }
            Kind::BadVersionOrIhl => {
                let len = self.below(64) as usize;
                let mut f = self.echo_request(len, id, 4);
                f[14] = if self.below(2) == 0 {
                    [0x05, 0x65, 0xf5, 0x35][self.below(4) as usize] // not version 4
                } else {
                    0x40 | [0, 1, 4, 15][self.below(4) as usize] // IHL < 5 or past the frame
                };
                f[24..26].copy_from_slice(&[0, 0]);
                let c = checksum(&f[14..34]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
                f
            }
            Kind::BogusArp => {
                let mut f = self.eth(0x0806);
                let (hlen, plen) = match self.below(3) {
                    0 => (6u8, 4u8),
                    1 => (self.below(256) as u8, 4),
                    _ => (6, self.below(256) as u8),
                };
                f.extend_from_slice(&[0, 1, 8, 0, hlen, plen]);
                f.extend_from_slice(&(self.below(8) as u16).to_be_bytes());
                f.extend_from_slice(&self.target.peer_mac);
                // Sender: the peer, or the stack's own address (a conflict).
                let sender = if self.below(3) == 0 {
                    self.target.ip
                } else {
                    self.target.peer_ip
                };
                f.extend_from_slice(&sender);
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&self.target.ip);
                let keep = 14 + self.below(29) as usize;
                f.truncate(keep);
                f
            }
            Kind::OverlappingFragment => {
                // Two fragments of one datagram whose blocks overlap.
                let mut f = self.eth(0x0800);
                let off = self.below(64) as u16; // in 8-byte blocks
                let len = 8 * (1 + self.below(32) as usize);
                let mf = if self.below(2) == 0 { 0x2000 } else { 0 };
                f.extend(self.ipv4(len, 1, (self.n / 2) as u16, mf | off));
                f.extend(self.bytes(len));
                f
            }
            Kind::EndlessFragment => {
                let mut f = self.eth(0x0800);
                let len = 8 * (1 + self.below(((mtu - 20) / 8) as u64) as usize);
                let off = self.below(8000) as u16;
                f.extend(self.ipv4(len, 17, id, 0x2000 | off));
                f.extend(self.bytes(len));
                f
            }
            Kind::Jumbo => {
                let len = mtu + 1 + self.below(9000 - mtu as u64) as usize;
                let mut f = self.echo_request(len - 28, id, 5);
                f.truncate(14 + len);
                f
            }
        }
    }
}

impl Iterator for FrameGen {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        self.n += 1;
        let kind = Kind::ALL[(self.n % Kind::ALL.len() as u64) as usize];
        Some(self.frame(kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target = Target {
        mac: [2, 0, 0, 0, 0, 2],
        ip: [198, 18, 0, 2],
        peer_mac: [2, 0, 0, 0, 0, 1],
        peer_ip: [198, 18, 0, 1],
    };

    #[test]
    fn frames_are_deterministic_have_an_ethernet_header_and_jumbos_exceed_the_mtu() {
        let a: Vec<_> = FrameGen::new(7, T, 1500).take(2000).collect();
        let b: Vec<_> = FrameGen::new(7, T, 1500).take(2000).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|f| f.len() >= 14 && f.len() <= 14 + 9000));
        let mut g = FrameGen::new(3, T, 1500);
        for _ in 0..100 {
            assert!(g.frame(Kind::Jumbo).len() > 1514);
            let e = g.echo_request(56, 1, 1);
            assert_eq!(checksum(&e[14..34]), 0, "a valid IPv4 header");
            assert_eq!(checksum(&e[34..]), 0, "a valid ICMP message");
            assert_ne!(checksum(&g.frame(Kind::WrongChecksum)[14..34]), 0);
        }
    }
}

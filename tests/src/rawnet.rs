//! Hostile traffic for network tests: [`RawSender`] writes whole Ethernet frames to
//! an interface through an `AF_PACKET` socket (opened inside the test's namespace,
//! e.g. on the Linux side of a NIC's TAP), and [`FrameGen`] (`compart-netgen`, shared
//! with the guests) makes random and mutated frames aimed at a [`Target`]: random
//! bytes, IPv4 with truncated headers, wrong lengths, versions, IHLs and checksums,
//! bogus ARP, overlapping and endless fragments, and jumbo frames over the MTU.
//! Deterministic from its seed, so a failure can be replayed.
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

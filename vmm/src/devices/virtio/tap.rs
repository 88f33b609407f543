//! The host side of a NIC: a TAP (or a macvtap's `/dev/tapN`) opened with
//! `IFF_VNET_HDR`, so that every frame read or written is preceded by the same 12-byte
//! `virtio_net_hdr_v1` the guest uses, and the kernel does the checksum and
//! segmentation work the header asks for (`TUNSETOFFLOAD`).
//!
//! The offloads a TAP accepts are probed when it is opened (the kernel refuses TSO
//! without checksum offload, and unknown bits); the device offers the guest only the
//! matching feature bits and, once the driver has acknowledged features, sets the TAP
//! to exactly what the driver takes (its `GUEST_*` bits).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use compart_abi::virtio::NET_HDR_SIZE;

/// Longest interface name Linux takes (`IFNAMSIZ` less the terminating NUL).
pub const IFNAME_MAX: usize = 15;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// `TUN_F_CSUM`: the TAP takes and hands out frames with a partial checksum.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: TCPv4 segments larger than the MTU.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: TCPv6 segments larger than the MTU.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_TSO_ECN`: such segments may carry ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// The offload sets tried at open, most first: the kernel refuses unknown bits and
/// TSO without CSUM, so the first it accepts is what this TAP can do.
const PROBE: [u32; 4] = [
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
    0,
];

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags (the rest of the
/// union is unused here).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Why a TAP could not be opened or set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long, or has a NUL.
    #[error("invalid interface name `{0}` (1 to {IFNAME_MAX} bytes)")]
    Name(String),
    /// Opening the device node failed.
    #[error("cannot open {0}")]
    Open(String, #[source] io::Error),
    /// An ioctl failed.
    #[error("{what} on {name} failed")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The interface.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The network namespace cannot be entered.
    #[error("cannot enter network namespace {0}")]
    Netns(String, #[source] io::Error),
}

/// An open TAP (or macvtap) with a 12-byte vnet header, non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    accepted: u32,
}

impl Tap {
    /// Opens the TAP `name` in the VMM's network namespace, creating it if it does not
    /// exist (a TAP compart creates disappears when the VMM closes it).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let ifname = ifname(name)?;
        let file = open_node(Path::new("/dev/net/tun"))?;
        let mut req = IfReq {
            name: ifname,
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a live,
        // properly laid out one (40 bytes, name first, flags at offset 16) that
        // outlives the call, and `file` is an open tun device.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if r < 0 {
            return Err(ioctl_err("TUNSETIFF", name));
        }
        Tap::finish(file, name)
    }

    /// Opens the TAP `name` inside network namespace `netns` (a name under
    /// `/run/netns`, as `ip netns` keeps them): a short-lived thread enters the
    /// namespace and opens the TAP there; the open file stays bound to that
    /// namespace's interface.
    pub fn open_in(name: &str, netns: Option<&str>) -> Result<Tap, TapError> {
        let Some(ns) = netns else {
            return Tap::open(name);
        };
        let path = Path::new("/run/netns").join(ns);
        let ns_file = File::open(&path).map_err(|e| TapError::Netns(ns.to_string(), e))?;
        let (name, ns) = (name.to_string(), ns.to_string());
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns with an open namespace file and CLONE_NEWNET changes
                // only this thread's network namespace; the thread does nothing else
                // but open the TAP and ends.
                if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                    return Err(TapError::Netns(ns, io::Error::last_os_error()));
                }
                Tap::open(&name)
            })
            .join()
            .expect("the TAP-opening thread does not panic")
        })
    }

    /// Opens a macvtap's character device (`/dev/tapN`, N its interface index) as
    /// interface `name`.
    pub fn open_macvtap(node: &Path, name: &str) -> Result<Tap, TapError> {
        let file = open_node(node)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        // SAFETY: as in `open`: one live `struct ifreq` for the duration of the call;
        // macvtap takes TUNSETIFF to set the header flags.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if r < 0 {
            return Err(ioctl_err("TUNSETIFF", name));
        }
        Tap::finish(file, name)
    }

    fn finish(file: File, name: &str) -> Result<Tap, TapError> {
        let size: libc::c_int = NET_HDR_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points
        // to `size`, alive for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &size) };
        if r < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ", name));
        }
        let mut tap = Tap {
            file,
            name: name.to_string(),
            accepted: 0,
        };
        tap.accepted = PROBE
            .into_iter()
            .find(|&f| tap.set_offload(f).is_ok())
            .unwrap_or(0);
        // Nothing until the driver says what it takes.
        tap.set_offload(0).map_err(|source| TapError::Ioctl {
            what: "TUNSETOFFLOAD",
            name: name.to_string(),
            source,
        })?;
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `TUN_F_*` offloads this TAP accepted when probed.
    pub fn accepted_offloads(&self) -> u32 {
        self.accepted
    }

    /// Sets the `TUN_F_*` offloads the TAP may hand out.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// What the device needs of its host side: frames in and out, each with its vnet
/// header, non-blocking (`WouldBlock` when there is nothing to read or no room).
pub trait NetBackend: Send + std::fmt::Debug {
    /// Reads one frame (header first) into `buf`; returns its length.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (header first).
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Sets the offloads the host side may hand out (`TUN_F_*`).
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
    /// The offloads it accepts (`TUN_F_*`).
    fn accepted_offloads(&self) -> u32;
    /// The descriptor to wait on for frames to read, if it has one.
    fn fd(&self) -> Option<RawFd>;
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = self.file.write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short TAP write"));
        }
        Ok(())
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags)
    }

    fn accepted_offloads(&self) -> u32 {
        self.accepted
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}

fn ifname(name: &str) -> Result<[u8; 16], TapError> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains('\0') {
        return Err(TapError::Name(name.to_string()));
    }
    let mut b = [0u8; 16];
    b[..name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

fn open_node(path: &Path) -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| TapError::Open(path.display().to_string(), e))
}

fn ioctl_err(what: &'static str, name: &str) -> TapError {
    TapError::Ioctl {
        what,
        name: name.to_string(),
        source: io::Error::last_os_error(),
    }
}

/// The interface index of `name` in the VMM's namespace, if it exists.
pub fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string, which `c` is.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_longer_than_linux_allows_are_refused() {
        assert!(matches!(ifname(""), Err(TapError::Name(_))));
        assert!(matches!(ifname("a234567890123456"), Err(TapError::Name(_))));
        assert!(ifname("a23456789012345").is_ok());
        assert!(matches!(ifname("a\0b"), Err(TapError::Name(_))));
    }

    #[test]
    fn an_ifreq_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
    }
}

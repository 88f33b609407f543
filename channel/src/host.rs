//! Host conveniences (feature `std`): memfd-backed regions, eventfd doorbells, pinning.
//!
//! These are what the VMM and host tests use; guests bring their own doorbell page and
//! `hlt` through [`Notifier`] and [`Waiter`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::notify::{Notifier, Waiter};
use crate::region::Region;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A shared-memory object (memfd) mapped into this process.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
    map_len: usize,
    guard: usize,
}

// SAFETY: the mapping is process-wide and is only accessed through `Region` (atomics and
// volatile copies); the raw pointer is not tied to a thread.
unsafe impl Send for SharedMemory {}
// SAFETY: as above.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Create a memfd of `len` bytes (zeroed) and map it shared. The fd is inheritable
    /// (no close-on-exec) so that a child process can map it too.
    pub fn create(name: &str, len: usize) -> io::Result<SharedMemory> {
        let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
        // SAFETY: `cname` is a valid NUL-terminated string; no flags that need more.
        let fd = cvt(unsafe { libc::memfd_create(cname.as_ptr(), 0) })?;
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: plain syscall on a valid fd.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })?;
        Self::map(fd, len, 0)
    }

    /// Map an existing memfd (for example one inherited from a parent) of `len` bytes.
    pub fn from_fd(fd: OwnedFd, len: usize) -> io::Result<SharedMemory> {
        Self::map(fd, len, 0)
    }

    /// Like [`create`](Self::create), but the mapping is surrounded by `guard` inaccessible
    /// bytes on each side (rounded to pages), so any out-of-bounds access faults. For tests.
    pub fn create_guarded(name: &str, len: usize, guard: usize) -> io::Result<SharedMemory> {
        let mut m = Self::create(name, len)?;
        let page = 4096;
        let guard = guard.div_ceil(page).max(1) * page;
        let total = guard * 2 + len.div_ceil(page) * page;
        // SAFETY: reserve an inaccessible span; no existing mapping is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `base + guard` lies inside the reservation made above; MAP_FIXED replaces
        // part of that reservation only.
        let p = unsafe {
            libc::mmap(
                base.cast::<u8>().add(guard).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                m.fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping the reservation we made.
            unsafe { libc::munmap(base, total) };
            return Err(e);
        }
        // SAFETY: unmapping the plain mapping made by `create`, which nothing else uses.
        unsafe { libc::munmap(m.ptr.cast(), m.map_len) };
        m.ptr = p.cast();
        m.map_len = total;
        m.guard = guard;
        Ok(m)
    }

    fn map(fd: OwnedFd, len: usize, guard: usize) -> io::Result<SharedMemory> {
        let map_len = len.max(1);
        // SAFETY: a fresh shared mapping of a valid fd; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMemory {
            fd,
            ptr: p.cast(),
            len,
            map_len,
            guard,
        })
    }

    /// The mapping as a channel region. Valid while `self` lives.
    pub fn region(&self) -> Region {
        // SAFETY: the mapping is page aligned, `len` bytes long, and stays mapped until
        // `self` is dropped; callers must not use the region beyond that (documented).
        unsafe { Region::from_raw(self.ptr, self.len) }.expect("mmap returns page-aligned memory")
    }

    /// The memfd (to pass to a child process or a VMM).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map`/`create_guarded` mapped.
        unsafe { libc::munmap(self.ptr.sub(self.guard).cast(), self.map_len) };
    }
}

/// An eventfd used as a doorbell: [`Notifier::kick`] writes 1, [`Waiter::wait`] reads (and
/// so clears) the counter, blocking at most `timeout`.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
    timeout: Option<Duration>,
}

impl EventFd {
    /// A new eventfd (inheritable by child processes), waiting at most `timeout` (`None`:
    /// forever).
    pub fn new(timeout: Option<Duration>) -> io::Result<EventFd> {
        // SAFETY: plain syscall.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd, timeout })
    }

    /// Wrap an eventfd received from elsewhere (for example inherited from a parent).
    pub fn from_fd(fd: OwnedFd, timeout: Option<Duration>) -> EventFd {
        EventFd { fd, timeout }
    }

    /// The raw descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wait until the counter is non-zero or the timeout expires; clear it. Returns whether
    /// a kick was received.
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> bool {
        let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r <= 0 {
            return false;
        }
        let mut v = 0u64;
        // SAFETY: reading 8 bytes into `v`, as eventfd requires.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut v).cast(), 8) };
        n == 8
    }
}

impl Notifier for EventFd {
    fn kick(&self) {
        let one = 1u64;
        // SAFETY: writing 8 bytes from `one`, as eventfd requires. A full counter (EAGAIN)
        // already means "kicked", so the result is irrelevant.
        unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

impl Waiter for EventFd {
    fn wait(&self) {
        self.wait_timeout(self.timeout);
    }
}

/// Pin the calling thread to host CPU `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: valid set pointer and size; 0 means the calling thread.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) })?;
    Ok(())
}

//! Facts about the host and what the VMM does to its threads: host core numbers,
//! and pinning a thread to a set of cores.
//!
//! (`compart_channel::host::pin_current_thread` pins the calling thread to one CPU for
//! the channel crate's host-thread tests and benchmarks; the VMM pins any thread, by
//! id, to a set of cores, which is why both exist.)

use crate::topology::HostCore;

/// Pins thread `tid` (0: the calling thread) to `cores`.
pub fn pin_thread(tid: i32, cores: &[HostCore]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cores {
        if c.0 as usize >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::other(format!("core {c} is out of range")));
        }
        // SAFETY: the index was checked against CPU_SETSIZE.
        unsafe { libc::CPU_SET(c.0 as usize, &mut set) };
    }
    // SAFETY: `tid` names a thread (0 is the caller); `set` is a valid cpu_set_t of the
    // size given.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

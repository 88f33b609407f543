//! One thread per NIC runs its data path (NETSTACK §A.5), pinned where its driver
//! guest's vCPU 0 runs (and moved with it): it processes rounds while
//! there is work, and when there is none it re-arms notifications, re-checks, and
//! sleeps in `epoll` on the queue notifies (ioeventfds), the TAP (only while the guest
//! has receive buffers posted, so an unread TAP does not keep it awake), the
//! activation/reset wake-up and its stop eventfd. The device lock is held for one
//! round at a time; vCPUs take it only for register accesses, which do not happen on
//! the data path.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use super::net::{Net, NetCounters};
use crate::host::{pin_thread, HostCore};

const STOP: u64 = 0;
/// Receive queue notify; the transmit queue's is `KICK + 1`.
const KICK: u64 = 1;
const KICK_TX: u64 = KICK + 1;
const WAKE: u64 = 3;
const TAP: u64 = 4;

/// A NIC's device as its thread and the MMIO bus share it.
pub type SharedNet = Arc<Mutex<MmioTransport<Net>>>;

/// A running device thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct NetThread {
    stop: Arc<EventFd>,
    handle: Option<JoinHandle<()>>,
    tid: Arc<AtomicI32>,
}

impl NetThread {
    /// Starts the thread of `device`, pinned to `cores` (none: unpinned), which
    /// sleeps on `kicks` (receive and transmit queue notifies) and `wake` when idle.
    pub fn spawn(
        device: SharedNet,
        kicks: [Arc<EventFd>; 2],
        wake: Arc<EventFd>,
        cores: Vec<HostCore>,
    ) -> std::io::Result<NetThread> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let epoll = Epoll::new()?;
        let ev = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        ev(stop.as_raw_fd(), STOP)?;
        for (i, k) in kicks.iter().enumerate() {
            ev(k.as_raw_fd(), KICK + i as u64)?;
        }
        ev(wake.as_raw_fd(), WAKE)?;
        let (name, counters, tap) = {
            let d = lock(&device);
            let net = d.device();
            (net.config().name.clone(), net.counters(), net.backend_fd())
        };
        let tid = Arc::new(AtomicI32::new(0));
        let fds = Fds { kicks, wake, tap };
        let t = tid.clone();
        let handle = std::thread::Builder::new()
            .name(format!("nic-{name}"))
            .spawn(move || {
                if !cores.is_empty() {
                    if let Err(e) = pin_thread(0, &cores) {
                        log::warn!("nic {name}: cannot pin its thread: {e}");
                    }
                }
                // SAFETY: gettid has no preconditions.
                t.store(unsafe { libc::gettid() }, Ordering::Release);
                run(&device, &epoll, &fds, &counters, &name);
            })?;
        Ok(NetThread {
            stop,
            handle: Some(handle),
            tid,
        })
    }

    /// The thread's Linux id (0 until it runs).
    pub fn tid(&self) -> i32 {
        self.tid.load(Ordering::Acquire)
    }

    /// Whether the thread runs (it has not been stopped).
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.stop.write(1);
            let _ = h.join();
        }
    }
}

impl Drop for NetThread {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Fds {
    kicks: [Arc<EventFd>; 2],
    wake: Arc<EventFd>,
    tap: Option<RawFd>,
}

fn lock(d: &SharedNet) -> std::sync::MutexGuard<'_, MmioTransport<Net>> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(device: &SharedNet, epoll: &Epoll, fds: &Fds, counters: &NetCounters, name: &str) {
    let mut events = vec![EpollEvent::default(); 8];
    let mut watching_tap = false;
    loop {
        let started = Instant::now();
        let round = lock(device).device_mut().process();
        counters
            .busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if round.busy {
            continue;
        }
        if let Some(tap) = fds.tap {
            if round.wants_rx_frames != watching_tap {
                let op = if round.wants_rx_frames {
                    ControlOperation::Add
                } else {
                    ControlOperation::Delete
                };
                match epoll.ctl(op, tap, EpollEvent::new(EventSet::IN, TAP)) {
                    Ok(()) => watching_tap = round.wants_rx_frames,
                    Err(e) => log::warn!("nic {name}: epoll on the TAP: {e}"),
                }
            }
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("nic {name}: epoll_wait failed, the device stops: {e}");
                return;
            }
        };
        counters.wakeups.fetch_add(1, Ordering::Relaxed);
        for e in &events[..n] {
            match e.data() {
                STOP => return,
                k @ (KICK | KICK_TX) => {
                    if let Ok(v) = fds.kicks[(k - KICK) as usize].read() {
                        counters.notifications.fetch_add(v, Ordering::Relaxed);
                    }
                }
                WAKE => {
                    let _ = fds.wake.read();
                }
                _ => {}
            }
        }
    }
}

//! One thread per vCPU, pinned before it first runs, running a small loop: enter the
//! guest, dispatch the exit, repeat until the guest ends or the VMM stops it.
//!
//! Each exit goes to its handler through [`exits::dispatch`](super::exits::dispatch):
//! the guest's ports ([`GuestPorts`]), its vCPU's P-state MSRs ([`VcpuMsrs`]) and its
//! MMIO bus ([`MmioBus`]).
//!
//! Stopping a vCPU that sleeps in `hlt` inside KVM: the VMM sets the guest's stop
//! flag and sends the thread [`kick_signal`]. The handler sets `immediate_exit` in the
//! thread's `kvm_run`, so `KVM_RUN` returns `EINTR` whether the signal arrives during
//! the call or just before it; the loop then sees the flag.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use super::exits::{self, Action};
use crate::console::GuestConsole;
use crate::devices::bus::MmioBus;
use crate::guest_events::GuestEvents;
use crate::guest_ports::{self, GuestPorts};
use crate::host::pin_thread;
use crate::pstate::msrs::VcpuMsrs;
use crate::pstate::PStateController;
use crate::topology::HostCore;

pub use super::exits::{Failure, FailureKind};

/// What a vCPU thread tells the VMM.
#[derive(Debug)]
pub enum VcpuEvent {
    /// The guest exited with a status.
    Exited {
        /// Guest index.
        guest: usize,
        /// Exit status.
        status: i32,
    },
    /// The guest failed.
    Failed {
        /// Guest index.
        guest: usize,
        /// vCPU that saw the failure.
        vcpu: u32,
        /// What happened.
        failure: Failure,
    },
    /// The thread has ended.
    Finished {
        /// Guest index.
        guest: usize,
        /// vCPU index.
        vcpu: u32,
    },
}

/// What a guest's vCPU threads share.
#[derive(Debug)]
pub struct GuestShared {
    /// Index in the topology.
    pub index: usize,
    /// Guest name.
    pub name: String,
    /// Set when the guest must stop (it ended, failed, or the VMM is stopping).
    pub stop: AtomicBool,
    /// Guest RAM.
    pub memory: GuestMemoryMmap,
    /// Console line assembly.
    pub console: GuestConsole,
    /// What the guest caused: counted, logged rate-limited.
    pub events: Arc<GuestEvents>,
    /// Its devices.
    pub mmio: Arc<MmioBus>,
    /// The firmware's interrupt entries (with, without the EOI) that the guest may
    /// choose between for its interrupt gates (`ports::IRQ_ENTRY`); `None` for a
    /// guest with more than one vCPU, which may not.
    pub irq_entries: Option<(u64, u64)>,
}

/// The VMM's handle on a running vCPU thread.
#[derive(Debug)]
pub struct VcpuThread {
    /// vCPU index.
    pub index: u32,
    /// Linux thread id, once the thread has started (0 before).
    pub tid: Arc<AtomicI32>,
    /// Returns from `KVM_RUN`: exits that reached the VMM, kicks included.
    pub exits: Arc<AtomicU64>,
    /// The thread.
    pub handle: Option<JoinHandle<()>>,
}

impl VcpuThread {
    /// Interrupts `KVM_RUN` so that the thread sees its guest's stop flag.
    pub fn kick(&self) {
        use std::os::unix::thread::JoinHandleExt;
        if let Some(h) = &self.handle {
            if !h.is_finished() {
                // SAFETY: the pthread_t stays valid until the thread is joined, and we
                // hold its JoinHandle, so it is not (even if the thread has just
                // finished: then the signal is simply not delivered). The kick handler
                // is installed before any vCPU thread starts and only writes the
                // thread's own kvm_run.
                let r = unsafe { libc::pthread_kill(h.as_pthread_t(), kick_signal()) };
                // The signal is valid; ESRCH only means the thread has just ended.
                debug_assert!(r == 0 || r == libc::ESRCH, "pthread_kill: {r}");
            }
        }
    }
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by the vCPU
        // loop below and cleared before the VcpuFd (and so the mapping) is dropped.
        unsafe { p.write_volatile(1) };
    }
}

/// Installs the kick handler, once per process.
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// A vCPU ready to run on its own thread.
#[derive(Debug)]
pub struct Vcpu {
    /// KVM's vCPU.
    pub fd: VcpuFd,
    /// vCPU index in its guest.
    pub index: u32,
    /// The guest.
    pub guest: Arc<GuestShared>,
    /// Host cores to pin to before the first run (later moves re-pin by tid).
    pub cores: Vec<HostCore>,
    /// Where its P-state requests go.
    pub pstates: Arc<PStateController>,
}

impl Vcpu {
    /// Starts the vCPU thread; it reports through `events`.
    pub fn spawn(self, events: impl Fn(VcpuEvent) + Send + 'static) -> std::io::Result<VcpuThread> {
        let tid = Arc::new(AtomicI32::new(0));
        let index = self.index;
        let name: String = format!("{}-v{}", self.guest.name, self.index)
            .chars()
            .take(15)
            .collect();
        let thread_tid = tid.clone();
        let exits = Arc::new(AtomicU64::new(0));
        let thread_exits = exits.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .stack_size(256 << 10)
            .spawn(move || self.run(events, thread_tid, thread_exits))?;
        Ok(VcpuThread {
            index,
            tid,
            exits,
            handle: Some(handle),
        })
    }

    fn run(mut self, events: impl Fn(VcpuEvent), tid: Arc<AtomicI32>, exits: Arc<AtomicU64>) {
        // SAFETY: gettid has no preconditions.
        tid.store(unsafe { libc::gettid() }, Ordering::Release);
        let (guest, vcpu) = (self.guest.index, self.index);
        if let Err(e) = pin_thread(0, &self.cores) {
            events(VcpuEvent::Failed {
                guest,
                vcpu,
                failure: Failure {
                    kind: FailureKind::Kvm {
                        error: format!("cannot pin the vCPU thread: {e}"),
                    },
                    rip: None,
                },
            });
            self.guest.stop.store(true, Ordering::Release);
        } else {
            let run = self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run;
            // SAFETY: `run` points at this vCPU's kvm_run mapping, alive as long as
            // self.fd, which outlives the loop; we only take a field's address.
            let exit_flag = unsafe { std::ptr::addr_of_mut!((*run).immediate_exit) };
            IMMEDIATE_EXIT.with(|c| c.set(exit_flag));
            let mut msrs = VcpuMsrs::for_current_thread(
                guest,
                vcpu as usize,
                self.pstates.clone(),
                self.guest.events.clone(),
                kick_signal(),
            );
            let mut ports = GuestPorts::new(self.guest.clone());
            if let Some(ev) = self.run_loop(&mut ports, &mut msrs, &exits) {
                events(ev);
            }
            IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
        }
        self.guest.console.flush(&self.guest.name);
        self.guest.events.flush();
        events(VcpuEvent::Finished { guest, vcpu });
    }

    /// Runs until the guest stops; returns the event that ended it, if this vCPU saw
    /// one.
    fn run_loop(
        &mut self,
        ports: &mut GuestPorts,
        msrs: &mut VcpuMsrs,
        exits: &AtomicU64,
    ) -> Option<VcpuEvent> {
        let (guest, vcpu) = (self.guest.index, self.index);
        let mmio = self.guest.mmio.clone();
        loop {
            if self.guest.stop.load(Ordering::Acquire) {
                return None;
            }
            msrs.before_run();
            let action = match self.fd.run() {
                Ok(exit) => exits::dispatch(exit, ports, msrs, &mmio),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    Action::Continue
                }
                Err(e) => Action::Fail(FailureKind::Kvm {
                    error: format!("KVM_RUN failed: {e}"),
                }),
            };
            exits.fetch_add(1, Ordering::Relaxed);
            let failure = match action {
                Action::Continue => continue,
                Action::Exited(status) => {
                    self.guest.stop.store(true, Ordering::Release);
                    return Some(VcpuEvent::Exited { guest, status });
                }
                Action::Fail(kind) => Failure {
                    kind,
                    rip: self.rip(),
                },
                Action::FaultReported => match self.fd.get_regs() {
                    Ok(r) => guest_ports::reported_fault(&r),
                    Err(e) => Failure {
                        kind: FailureKind::Kvm {
                            error: format!("cannot read the registers of a fault report: {e}"),
                        },
                        rip: None,
                    },
                },
                Action::InternalError => {
                    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so the
                    // `internal` member of the exit union is the valid one.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    Failure {
                        kind: FailureKind::InternalError { suberror },
                        rip: self.rip(),
                    }
                }
            };
            self.guest.stop.store(true, Ordering::Release);
            return Some(VcpuEvent::Failed {
                guest,
                vcpu,
                failure,
            });
        }
    }

    /// Where the vCPU stopped, if its registers can be read.
    fn rip(&self) -> Option<u64> {
        self.fd.get_regs().ok().map(|r| r.rip)
    }
}

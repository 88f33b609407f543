//! One thread per vCPU, pinned before it first runs, running a small loop: enter the
//! guest, dispatch the exit, repeat until the guest ends or the VMM stops it.
//!
//! Stopping a vCPU that sleeps in `hlt` inside KVM: the VMM sets the guest's stop
//! flag and sends the thread [`kick_signal`]. The handler sets `immediate_exit` in the
//! thread's `kvm_run`, so `KVM_RUN` returns `EINTR` whether the signal arrives during
//! the call or just before it; the loop then sees the flag.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use compart_abi::{ports, CONSOLE_BUF_GPA, CONSOLE_BUF_SIZE};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::console::GuestConsole;
use crate::pstate::soft::{Counters, Throttle};
use crate::pstate::{PStateController, VcpuFreq};
use crate::topology::HostCore;

/// Why a guest failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The guest's panic handler reported a panic.
    Panic {
        /// Message and location, as the guest wrote them.
        message: String,
    },
    /// A CPU exception the guest did not handle.
    Exception {
        /// Vector (0–31).
        vector: u64,
        /// Error code, or 0.
        error_code: u64,
        /// Faulting instruction.
        rip: u64,
        /// CR2 (the faulting address of a page fault).
        cr2: u64,
    },
    /// A triple fault: the CPU shut down.
    TripleFault {
        /// RIP at shutdown.
        rip: u64,
    },
    /// KVM could not run the guest (for example, an instruction it cannot emulate).
    InternalError {
        /// KVM's sub-error code.
        suberror: u32,
        /// RIP at the error.
        rip: u64,
    },
    /// Port I/O to a port no device serves.
    UnexpectedIo {
        /// The port.
        port: u16,
        /// Write (`out`) or read (`in`).
        write: bool,
        /// RIP after the instruction.
        rip: u64,
    },
    /// An access to guest-physical memory with no RAM or device behind it.
    UnexpectedMmio {
        /// Guest-physical address.
        addr: u64,
        /// Write or read.
        write: bool,
        /// RIP after the instruction.
        rip: u64,
    },
    /// Any other exit the VMM does not serve.
    UnexpectedExit {
        /// The exit, as KVM reported it.
        what: String,
        /// RIP at the exit.
        rip: u64,
    },
    /// `KVM_RUN` itself failed.
    Kvm {
        /// The error.
        error: String,
    },
}

fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD error",
        _ => "exception",
    }
}

/// What a page fault's error code says happened at `addr`, and which area that is:
/// "ring-3 write to a supervisor-only page at 0x4000 (the guest's page tables)".
fn page_fault_cause(error_code: u64, addr: u64) -> String {
    const PRESENT: u64 = 1;
    const WRITE: u64 = 1 << 1;
    const USER: u64 = 1 << 2;
    const RESERVED: u64 = 1 << 3;
    const FETCH: u64 = 1 << 4;
    let ring = if error_code & USER != 0 { 3 } else { 0 };
    let access = if error_code & FETCH != 0 {
        "instruction fetch from"
    } else if error_code & WRITE != 0 {
        "write to"
    } else {
        "read from"
    };
    let supervisor_only = crate::arch::paging::supervisor_only(addr);
    let page = if error_code & RESERVED != 0 {
        "a page whose table entry has reserved bits set"
    } else if error_code & PRESENT == 0 {
        "a not-present page"
    } else if ring == 3 && supervisor_only {
        "a supervisor-only page"
    } else if error_code & FETCH != 0 {
        "a no-execute page"
    } else {
        "a read-only page"
    };
    format!(
        "page fault: ring-{ring} {access} {page} at {addr:#x} ({})",
        crate::arch::paging::area(addr)
    )
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panic { message } => write!(f, "{message}"),
            Failure::Exception {
                vector: 14,
                error_code,
                rip,
                cr2,
            } => write!(
                f,
                "{} (RIP {rip:#x}, error code {error_code:#x})",
                page_fault_cause(*error_code, *cr2)
            ),
            Failure::Exception {
                vector,
                error_code,
                rip,
                ..
            } => write!(
                f,
                "unhandled {} (vector {vector}) at RIP {rip:#x}, error code {error_code:#x}",
                exception_name(*vector)
            ),
            Failure::TripleFault { rip } => {
                write!(f, "triple fault: the vCPU shut down at RIP {rip:#x}")
            }
            Failure::InternalError { suberror, rip } => write!(
                f,
                "KVM internal error {suberror} at RIP {rip:#x} (an instruction KVM cannot emulate?)"
            ),
            Failure::UnexpectedIo { port, write, rip } => write!(
                f,
                "{} port {port:#x}, which no device serves (RIP {rip:#x})",
                if *write { "write to" } else { "read from" }
            ),
            Failure::UnexpectedMmio { addr, write, rip } => write!(
                f,
                "{} guest-physical {addr:#x}, where there is no RAM or device (RIP {rip:#x})",
                if *write { "write to" } else { "read from" }
            ),
            Failure::UnexpectedExit { what, rip } => {
                write!(f, "unexpected VM exit {what} at RIP {rip:#x}")
            }
            Failure::Kvm { error } => write!(f, "KVM_RUN failed: {error}"),
        }
    }
}

impl Failure {
    /// Whether this is a panic reported by the guest itself.
    pub fn is_panic(&self) -> bool {
        matches!(self, Failure::Panic { .. })
    }
}

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
}

/// The VMM's handle on a running vCPU thread.
#[derive(Debug)]
pub struct VcpuThread {
    /// vCPU index.
    pub index: u32,
    /// Host cores it is pinned to.
    pub cores: Vec<HostCore>,
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
                // SAFETY: the pthread is alive (not finished, and not joined since we
                // still hold its JoinHandle); the kick handler is installed before any
                // vCPU thread starts and only writes the thread's own kvm_run.
                unsafe { libc::pthread_kill(h.as_pthread_t(), kick_signal()) };
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
    /// Host cores to pin to.
    pub cores: Vec<HostCore>,
    /// Its effective frequency (read on every entry when soft-scaled).
    pub freq: Arc<VcpuFreq>,
    /// Where its P-state requests go.
    pub pstates: Arc<PStateController>,
}

/// Per-thread P-state state: soft-scaling throttle and virtual APERF/MPERF.
struct FreqState {
    throttle: Option<Throttle>,
    counters: Counters,
    /// The effective frequency the counters last advanced at.
    counted_mhz: u32,
}

impl Vcpu {
    /// Starts the vCPU thread; it reports through `events`.
    pub fn spawn(self, events: impl Fn(VcpuEvent) + Send + 'static) -> std::io::Result<VcpuThread> {
        let tid = Arc::new(AtomicI32::new(0));
        let (index, cores) = (self.index, self.cores.clone());
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
            cores,
            tid,
            exits,
            handle: Some(handle),
        })
    }

    fn run(mut self, events: impl Fn(VcpuEvent), tid: Arc<AtomicI32>, exits: Arc<AtomicU64>) {
        // SAFETY: gettid has no preconditions.
        tid.store(unsafe { libc::gettid() }, Ordering::Release);
        let (guest, vcpu) = (self.guest.index, self.index);
        if let Err(e) = pin_current_thread(&self.cores) {
            events(VcpuEvent::Failed {
                guest,
                vcpu,
                failure: Failure::Kvm {
                    error: format!("cannot pin the vCPU thread: {e}"),
                },
            });
            self.guest.stop.store(true, Ordering::Release);
        } else {
            let run = self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run;
            // SAFETY: `run` points at this vCPU's kvm_run mapping, alive as long as
            // self.fd, which outlives the loop; we only take a field's address.
            let exit_flag = unsafe { std::ptr::addr_of_mut!((*run).immediate_exit) };
            IMMEDIATE_EXIT.with(|c| c.set(exit_flag));
            let throttle = if self.pstates.is_soft() {
                match Throttle::for_current_thread(kick_signal(), self.pstates.soft_period()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        log::warn!(
                            "guest {} vCPU {}: no soft-scaling timer ({e}); it runs at full speed",
                            self.guest.name,
                            self.index
                        );
                        None
                    }
                }
            } else {
                None
            };
            let mut fs = FreqState {
                throttle,
                counters: Counters::new(),
                counted_mhz: self.freq.effective_mhz(),
            };
            if let Some(ev) = self.run_loop(&mut fs, &exits) {
                events(ev);
            }
            IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
        }
        self.guest.console.flush(&self.guest.name);
        events(VcpuEvent::Finished { guest, vcpu });
    }

    /// Runs until the guest stops; returns the event that ended it, if this vCPU saw
    /// one.
    fn run_loop(&mut self, fs: &mut FreqState, exits: &AtomicU64) -> Option<VcpuEvent> {
        let (guest, vcpu) = (self.guest.index, self.index);
        let failed = |failure| {
            Some(VcpuEvent::Failed {
                guest,
                vcpu,
                failure,
            })
        };
        loop {
            if self.guest.stop.load(Ordering::Acquire) {
                return None;
            }
            self.track_frequency(fs);
            if let Some(t) = &mut fs.throttle {
                t.before_run(self.freq.ratio());
            }
            let soft = self.pstates.is_soft();
            let (guest_index, vcpu_index) = (self.guest.index, self.index as usize);
            let exit = self.fd.run();
            exits.fetch_add(1, Ordering::Relaxed);
            let outcome = match exit {
                Ok(VcpuExit::X86Rdmsr(exit)) => {
                    let value = match exit.index {
                        crate::pstate::MSR_APERF | crate::pstate::MSR_MPERF => {
                            fs.counters
                                .advance(fs.counted_mhz, self.freq.fmax_mhz(), soft);
                            Some(if exit.index == crate::pstate::MSR_APERF {
                                fs.counters.aperf()
                            } else {
                                fs.counters.mperf()
                            })
                        }
                        msr => self.pstates.read_msr(guest_index, vcpu_index, msr),
                    };
                    match value {
                        Some(v) => *exit.data = v,
                        None => *exit.error = 1,
                    }
                    Exit::Continue
                }
                Ok(VcpuExit::X86Wrmsr(exit)) => {
                    let ok = exit.index == crate::pstate::MSR_PERF_CTL && {
                        // Count the time so far at the old frequency first.
                        fs.counters
                            .advance(fs.counted_mhz, self.freq.fmax_mhz(), soft);
                        self.pstates
                            .write_perf_ctl(guest_index, vcpu_index, exit.data)
                            .is_ok()
                    };
                    if !ok {
                        // The guest's firmware sees #GP on its wrmsr: a refusal.
                        *exit.error = 1;
                    }
                    Exit::Continue
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    let value = le_value(data);
                    self.on_port_write(port, value)
                }
                Ok(VcpuExit::IoIn(port, _)) => Exit::Fail(Failure::UnexpectedIo {
                    port,
                    write: false,
                    rip: 0,
                }),
                Ok(VcpuExit::MmioRead(addr, _)) => Exit::Fail(Failure::UnexpectedMmio {
                    addr,
                    write: false,
                    rip: 0,
                }),
                Ok(VcpuExit::MmioWrite(addr, _)) => Exit::Fail(Failure::UnexpectedMmio {
                    addr,
                    write: true,
                    rip: 0,
                }),
                Ok(VcpuExit::Shutdown) => Exit::Fail(Failure::TripleFault { rip: 0 }),
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: the exit reason says the `internal` union member is the
                    // valid one.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    Exit::Fail(Failure::InternalError { suberror, rip: 0 })
                }
                Ok(other) => Exit::Fail(Failure::UnexpectedExit {
                    what: format!("{other:?}"),
                    rip: 0,
                }),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    Exit::Continue
                }
                Err(e) => Exit::Fail(Failure::Kvm {
                    error: e.to_string(),
                }),
            };
            match outcome {
                Exit::Continue => {}
                Exit::Exited(status) => {
                    self.guest.stop.store(true, Ordering::Release);
                    return Some(VcpuEvent::Exited { guest, status });
                }
                Exit::Fail(mut failure) => {
                    self.guest.stop.store(true, Ordering::Release);
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    match &mut failure {
                        Failure::UnexpectedIo { rip: r, .. }
                        | Failure::UnexpectedMmio { rip: r, .. }
                        | Failure::TripleFault { rip: r }
                        | Failure::InternalError { rip: r, .. }
                        | Failure::UnexpectedExit { rip: r, .. } => *r = rip,
                        _ => {}
                    }
                    return failed(failure);
                }
            }
        }
    }

    /// When the effective frequency changed (this vCPU's request, or another one of
    /// its domain), the counters first advance at the old one.
    fn track_frequency(&self, fs: &mut FreqState) {
        let now = self.freq.effective_mhz();
        if now != fs.counted_mhz {
            let soft = self.pstates.is_soft();
            fs.counters
                .advance(fs.counted_mhz, self.freq.fmax_mhz(), soft);
            fs.counted_mhz = now;
        }
    }

    /// A guest `OUT` to `port`. Values come from the guest: lengths are clamped to
    /// the console page before any memory is read.
    fn on_port_write(&mut self, port: u16, value: u64) -> Exit {
        match port {
            ports::CONSOLE => {
                let text = self.read_console(value);
                self.guest.console.write(&self.guest.name, &text);
                Exit::Continue
            }
            ports::EXIT => Exit::Exited(value as u32 as i32),
            ports::PANIC => {
                let text = self.read_console(value);
                let message = crate::console::sanitize(&String::from_utf8_lossy(&text));
                Exit::Fail(Failure::Panic { message })
            }
            ports::FAULT => match self.fd.get_regs() {
                Ok(r) => Exit::Fail(Failure::Exception {
                    vector: r.rax & 0xff,
                    error_code: r.rdi,
                    rip: r.rsi,
                    cr2: r.rcx,
                }),
                Err(e) => Exit::Fail(Failure::Kvm {
                    error: format!("reading registers after a fault report: {e}"),
                }),
            },
            _ => Exit::Fail(Failure::UnexpectedIo {
                port,
                write: true,
                rip: 0,
            }),
        }
    }

    fn read_console(&self, len: u64) -> Vec<u8> {
        let len = len.min(CONSOLE_BUF_SIZE) as usize;
        let mut buf = vec![0u8; len];
        // The console page lies inside guest RAM (checked when the VM was built).
        if self
            .guest
            .memory
            .read_slice(&mut buf, GuestAddress(CONSOLE_BUF_GPA))
            .is_err()
        {
            buf.clear();
        }
        buf
    }
}

enum Exit {
    Continue,
    Exited(i32),
    Fail(Failure),
}

/// The value of a port write (1, 2 or 4 bytes, little-endian).
fn le_value(data: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    let n = data.len().min(8);
    v[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(v)
}

/// Pins the calling thread to `cores`.
pub fn pin_current_thread(cores: &[HostCore]) -> std::io::Result<()> {
    pin_thread(0, cores)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_values_are_little_endian_of_any_width() {
        assert_eq!(le_value(&[0x34]), 0x34);
        assert_eq!(le_value(&[0x34, 0x12, 0, 0]), 0x1234);
        assert_eq!(le_value(&[]), 0);
    }

    #[test]
    fn failures_read_well() {
        let f = Failure::Exception {
            vector: 14,
            error_code: 4,
            rip: 0x20_1234,
            cr2: 0,
        };
        assert_eq!(
            f.to_string(),
            "page fault: ring-3 read from a not-present page at 0x0 (the null page) \
             (RIP 0x201234, error code 0x4)"
        );
        let write_tables = Failure::Exception {
            vector: 14,
            error_code: 7,
            rip: 0x20_1234,
            cr2: 0x4000,
        };
        assert!(write_tables.to_string().starts_with(
            "page fault: ring-3 write to a supervisor-only page at 0x4000 (the guest's page tables)"
        ));
        let exec_stack = Failure::Exception {
            vector: 14,
            error_code: 0x15,
            rip: 0x40_0000,
            cr2: 0x40_0000,
        };
        assert!(exec_stack.to_string().starts_with(
            "page fault: ring-3 instruction fetch from a no-execute page at 0x400000 \
             (the image, a stack, the heap or a device)"
        ));
        assert_eq!(
            Failure::TripleFault { rip: 0x20_0000 }.to_string(),
            "triple fault: the vCPU shut down at RIP 0x200000"
        );
    }
}

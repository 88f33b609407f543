//! What a vCPU exit means: [`dispatch`] sends each exit to the handler for its kind —
//! port I/O to the guest's ports (`crate::guest_ports`), the intercepted P-state MSRs
//! to `pstate::msrs`, MMIO to the guest's device bus (`crate::devices`) — and turns
//! everything else into a [`Failure`] of that guest.
//!
//! Dispatch sees only the exit (which borrows the vCPU's `kvm_run`); the run loop in
//! [`vcpu`](super::vcpu) then reads what it needs from the vCPU (the RIP of a failure,
//! the registers of a reported fault) once the exit is gone.

use std::fmt;

use kvm_ioctls::VcpuExit;

use crate::devices::bus::MmioBus;

/// Why a guest failed, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What happened.
    pub kind: FailureKind,
    /// The guest's RIP: the faulting instruction of a reported exception, else where
    /// the vCPU stopped. `None` when the registers could not be read.
    pub rip: Option<u64>,
}

/// What went wrong in a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest's panic handler reported a panic.
    Panic {
        /// Message and location, as the guest wrote them (cleaned for a terminal).
        message: String,
    },
    /// A CPU exception the guest did not handle (reported by its ring-0 stub).
    Exception {
        /// Vector (0–31).
        vector: u64,
        /// Error code, or 0.
        error_code: u64,
        /// CR2 (the faulting address of a page fault).
        cr2: u64,
    },
    /// A triple fault: the CPU shut down.
    TripleFault,
    /// KVM could not run the guest (for example, an instruction it cannot emulate).
    InternalError {
        /// KVM's sub-error code.
        suberror: u32,
    },
    /// Port I/O to a port no device serves.
    UnexpectedIo {
        /// The port.
        port: u16,
        /// Write (`out`) or read (`in`).
        write: bool,
    },
    /// An access to guest-physical memory with no RAM or device behind it.
    UnexpectedMmio {
        /// Guest-physical address.
        addr: u64,
        /// Write or read.
        write: bool,
    },
    /// Any other exit the VMM does not serve.
    UnexpectedExit {
        /// The exit, as KVM names it.
        what: String,
    },
    /// `KVM_RUN` or another vCPU call failed.
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

/// What a page fault's error code says happened at `addr`, and which area of the
/// guest that is: "page fault: ring-3 write to a supervisor-only page at 0x4000 (the
/// guest's page tables)".
fn page_fault_cause(error_code: u64, addr: u64) -> String {
    const PRESENT: u64 = 1;
    const WRITE: u64 = 1 << 1;
    const USER: u64 = 1 << 2;
    const RESERVED: u64 = 1 << 3;
    const FETCH: u64 = 1 << 4;
    let ring = if error_code & USER != 0 { 3 } else { 0 };
    let what = if error_code & FETCH != 0 {
        "instruction fetch from"
    } else {
        access(error_code & WRITE != 0)
    };
    let page = if error_code & RESERVED != 0 {
        "a page whose table entry has reserved bits set"
    } else if error_code & PRESENT == 0 {
        "a not-present page"
    } else if ring == 3 && crate::arch::paging::supervisor_only(addr) {
        "a supervisor-only page"
    } else if error_code & FETCH != 0 {
        "a no-execute page"
    } else {
        "a read-only page"
    };
    format!(
        "page fault: ring-{ring} {what} {page} at {addr:#x} ({})",
        crate::arch::paging::area(addr)
    )
}

fn access(write: bool) -> &'static str {
    if write {
        "write to"
    } else {
        "read from"
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Panic { message } => write!(f, "{message}"),
            FailureKind::Exception {
                vector: 14,
                error_code,
                cr2,
            } => write!(
                f,
                "{}, error code {error_code:#x}",
                page_fault_cause(*error_code, *cr2)
            ),
            FailureKind::Exception {
                vector, error_code, ..
            } => write!(
                f,
                "unhandled {} (vector {vector}), error code {error_code:#x}",
                exception_name(*vector)
            ),
            FailureKind::TripleFault => write!(f, "triple fault: the vCPU shut down"),
            FailureKind::InternalError { suberror } => write!(
                f,
                "KVM internal error {suberror} (an instruction KVM cannot emulate?)"
            ),
            FailureKind::UnexpectedIo { port, write } => {
                write!(
                    f,
                    "{} port {port:#x}, which no device serves",
                    access(*write)
                )
            }
            FailureKind::UnexpectedMmio { addr, write } => write!(
                f,
                "{} guest-physical {addr:#x}, where there is no RAM or device",
                access(*write)
            ),
            FailureKind::UnexpectedExit { what } => write!(f, "unexpected VM exit {what}"),
            FailureKind::Kvm { error } => write!(f, "{error}"),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(rip) = self.rip {
            write!(f, " (RIP {rip:#x})")?;
        }
        Ok(())
    }
}

impl Failure {
    /// Whether this is a panic reported by the guest itself.
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, FailureKind::Panic { .. })
    }
}

/// What the run loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again.
    Continue,
    /// The guest exited with this status.
    Exited(i32),
    /// The guest failed; the run loop adds the RIP.
    Fail(FailureKind),
    /// The guest's ring-0 stub reported an exception: its registers hold it.
    FaultReported,
    /// KVM reported an internal error: `kvm_run` holds its sub-error.
    InternalError,
}

/// Guest port writes (`OUT`): console, exit, panic, fault.
pub trait PortIo {
    /// A guest `OUT` of `value` (1, 2 or 4 bytes, zero-extended) to `port`.
    fn out(&mut self, port: u16, value: u64) -> Action;
}

/// The intercepted MSRs of one vCPU.
pub trait MsrIo {
    /// A guest `rdmsr`; `None` makes it fault.
    fn read(&mut self, msr: u32) -> Option<u64>;
    /// A guest `wrmsr`; `false` makes it fault.
    fn write(&mut self, msr: u32, value: u64) -> bool;
}

impl MsrIo for crate::pstate::msrs::VcpuMsrs {
    fn read(&mut self, msr: u32) -> Option<u64> {
        crate::pstate::msrs::VcpuMsrs::read(self, msr)
    }
    fn write(&mut self, msr: u32, value: u64) -> bool {
        crate::pstate::msrs::VcpuMsrs::write(self, msr, value)
    }
}

/// Sends one exit to its handler. Values in the exit come from the guest; each
/// handler validates its own.
pub fn dispatch(
    exit: VcpuExit<'_>,
    ports: &mut impl PortIo,
    msrs: &mut impl MsrIo,
    mmio: &MmioBus,
) -> Action {
    match exit {
        VcpuExit::IoOut(port, data) => ports.out(port, le_value(data)),
        VcpuExit::IoIn(port, _) => Action::Fail(FailureKind::UnexpectedIo { port, write: false }),
        VcpuExit::X86Rdmsr(exit) => {
            match msrs.read(exit.index) {
                Some(v) => *exit.data = v,
                None => *exit.error = 1,
            }
            Action::Continue
        }
        VcpuExit::X86Wrmsr(exit) => {
            if !msrs.write(exit.index, exit.data) {
                // The guest's firmware sees #GP on its wrmsr: a refusal.
                *exit.error = 1;
            }
            Action::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if mmio.read(addr, data) {
                Action::Continue
            } else {
                Action::Fail(FailureKind::UnexpectedMmio { addr, write: false })
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if mmio.write(addr, data) {
                Action::Continue
            } else {
                Action::Fail(FailureKind::UnexpectedMmio { addr, write: true })
            }
        }
        VcpuExit::Shutdown => Action::Fail(FailureKind::TripleFault),
        VcpuExit::InternalError => Action::InternalError,
        other => Action::Fail(FailureKind::UnexpectedExit {
            what: exit_name(&other).to_string(),
        }),
    }
}

/// KVM's name of an exit the VMM does not serve.
fn exit_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::Hlt => "HLT",
        VcpuExit::Debug(_) => "DEBUG",
        VcpuExit::Exception => "EXCEPTION",
        VcpuExit::Hypercall(_) => "HYPERCALL",
        VcpuExit::IrqWindowOpen => "IRQ_WINDOW_OPEN",
        VcpuExit::FailEntry(..) => "FAIL_ENTRY",
        VcpuExit::Intr => "INTR",
        VcpuExit::SystemEvent(..) => "SYSTEM_EVENT",
        VcpuExit::Unknown => "UNKNOWN",
        _ => "other",
    }
}

/// The value of a port write (1, 2 or 4 bytes, little-endian).
fn le_value(data: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    let n = data.len().min(8);
    v[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use kvm_ioctls::{MsrExitReason, ReadMsrExit, WriteMsrExit};

    use super::*;
    use crate::devices::bus::tests::Recorder;

    #[derive(Default)]
    struct Ports(Vec<(u16, u64)>);
    impl PortIo for Ports {
        fn out(&mut self, port: u16, value: u64) -> Action {
            self.0.push((port, value));
            Action::Exited(7)
        }
    }

    #[derive(Default)]
    struct Msrs(Vec<(u32, Option<u64>)>);
    impl MsrIo for Msrs {
        fn read(&mut self, msr: u32) -> Option<u64> {
            self.0.push((msr, None));
            (msr == 0x198).then_some(0x1234)
        }
        fn write(&mut self, msr: u32, value: u64) -> bool {
            self.0.push((msr, Some(value)));
            value == 1
        }
    }

    fn read<'a>(error: &'a mut u8, data: &'a mut u64, index: u32) -> VcpuExit<'a> {
        VcpuExit::X86Rdmsr(ReadMsrExit {
            error,
            reason: MsrExitReason::Filter,
            index,
            data,
        })
    }

    fn write(error: &mut u8, data: u64) -> VcpuExit<'_> {
        VcpuExit::X86Wrmsr(WriteMsrExit {
            error,
            reason: MsrExitReason::Filter,
            index: 0x199,
            data,
        })
    }

    fn bus_with_recorder() -> (MmioBus, Arc<Mutex<Recorder>>) {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::new();
        bus.insert(0xd000_0000, 0x1000, dev.clone()).unwrap();
        (bus, dev)
    }

    #[test]
    fn mmio_exits_reach_the_device_on_the_bus_and_read_its_answer() {
        let (bus, dev) = bus_with_recorder();
        let (mut ports, mut msrs) = (Ports::default(), Msrs::default());
        let written = [0x78, 0x56, 0x34, 0x12];
        let a = dispatch(
            VcpuExit::MmioWrite(0xd000_0070, &written),
            &mut ports,
            &mut msrs,
            &bus,
        );
        assert_eq!(a, Action::Continue);
        let mut data = [0u8; 4];
        let a = dispatch(
            VcpuExit::MmioRead(0xd000_0070, &mut data),
            &mut ports,
            &mut msrs,
            &bus,
        );
        assert_eq!(a, Action::Continue);
        assert_eq!(data, written, "the device's answer reaches the guest");
        let d = dev.lock().unwrap();
        assert_eq!(d.accesses.len(), 2);
        assert_eq!((d.accesses[0].0, d.accesses[0].1), (0xd000_0000, 0x70));
        assert!(ports.0.is_empty() && msrs.0.is_empty());
    }

    #[test]
    fn mmio_nobody_serves_is_a_failure_of_the_guest() {
        let (bus, dev) = bus_with_recorder();
        let (mut ports, mut msrs) = (Ports::default(), Msrs::default());
        let mut data = [0u8; 8];
        assert_eq!(
            dispatch(
                VcpuExit::MmioRead(0xd000_1000, &mut data),
                &mut ports,
                &mut msrs,
                &bus
            ),
            Action::Fail(FailureKind::UnexpectedMmio {
                addr: 0xd000_1000,
                write: false
            })
        );
        assert_eq!(
            dispatch(VcpuExit::MmioWrite(0x10, &[1]), &mut ports, &mut msrs, &bus),
            Action::Fail(FailureKind::UnexpectedMmio {
                addr: 0x10,
                write: true
            })
        );
        assert!(dev.lock().unwrap().accesses.is_empty());
    }

    #[test]
    fn port_and_msr_exits_go_to_their_handlers() {
        let bus = MmioBus::new();
        let (mut ports, mut msrs) = (Ports::default(), Msrs::default());
        let a = dispatch(
            VcpuExit::IoOut(0x3f8, &[0x34, 0x12]),
            &mut ports,
            &mut msrs,
            &bus,
        );
        assert_eq!(a, Action::Exited(7), "the port handler decides");
        assert_eq!(ports.0, vec![(0x3f8, 0x1234)]);
        let mut data = [0u8; 1];
        assert_eq!(
            dispatch(VcpuExit::IoIn(0x60, &mut data), &mut ports, &mut msrs, &bus),
            Action::Fail(FailureKind::UnexpectedIo {
                port: 0x60,
                write: false
            })
        );

        let (mut error, mut value) = (0u8, 0u64);
        let a = dispatch(
            read(&mut error, &mut value, 0x198),
            &mut ports,
            &mut msrs,
            &bus,
        );
        assert_eq!((a, error, value), (Action::Continue, 0, 0x1234));
        let a = dispatch(
            read(&mut error, &mut value, 0xe7),
            &mut ports,
            &mut msrs,
            &bus,
        );
        assert_eq!(
            (a, error),
            (Action::Continue, 1),
            "an unanswered read faults"
        );

        let mut error = 0u8;
        dispatch(write(&mut error, 1), &mut ports, &mut msrs, &bus);
        assert_eq!(error, 0, "an accepted write");
        dispatch(write(&mut error, 99), &mut ports, &mut msrs, &bus);
        assert_eq!(error, 1, "a refused write faults");
        assert_eq!(msrs.0[2..], [(0x199, Some(1)), (0x199, Some(99))]);
    }

    #[test]
    fn other_exits_fail_the_guest() {
        let bus = MmioBus::new();
        let (mut ports, mut msrs) = (Ports::default(), Msrs::default());
        let mut go = |exit| dispatch(exit, &mut ports, &mut msrs, &bus);
        assert_eq!(
            go(VcpuExit::Shutdown),
            Action::Fail(FailureKind::TripleFault)
        );
        assert_eq!(go(VcpuExit::InternalError), Action::InternalError);
        assert_eq!(
            go(VcpuExit::Hlt),
            Action::Fail(FailureKind::UnexpectedExit { what: "HLT".into() })
        );
    }

    #[test]
    fn port_values_are_little_endian_of_any_width() {
        assert_eq!(le_value(&[0x34]), 0x34);
        assert_eq!(le_value(&[0x34, 0x12, 0, 0]), 0x1234);
        assert_eq!(le_value(&[]), 0);
    }

    #[test]
    fn failures_read_well() {
        let f = Failure {
            kind: FailureKind::Exception {
                vector: 14,
                error_code: 4,
                cr2: 0,
            },
            rip: Some(0x20_1234),
        };
        assert_eq!(
            f.to_string(),
            "page fault: ring-3 read from a not-present page at 0x0 (the null page), \
             error code 0x4 (RIP 0x201234)"
        );
        let page_fault = |error_code, cr2| FailureKind::Exception {
            vector: 14,
            error_code,
            cr2,
        };
        assert!(page_fault(7, 0x4000).to_string().starts_with(
            "page fault: ring-3 write to a supervisor-only page at 0x4000 (the guest's page tables)"
        ));
        assert!(page_fault(0x15, 0x40_0000).to_string().starts_with(
            "page fault: ring-3 instruction fetch from a no-execute page at 0x400000 \
             (the image, a stack, the heap or a device)"
        ));
        let f = FailureKind::Exception {
            vector: 13,
            error_code: 0,
            cr2: 0,
        };
        assert_eq!(
            f.to_string(),
            "unhandled #GP general protection (vector 13), error code 0x0"
        );
        let f = Failure {
            kind: FailureKind::TripleFault,
            rip: Some(0x20_0000),
        };
        assert_eq!(
            f.to_string(),
            "triple fault: the vCPU shut down (RIP 0x200000)"
        );
        let f = Failure {
            kind: FailureKind::Kvm {
                error: "KVM_RUN failed: bad address".into(),
            },
            rip: None,
        };
        assert_eq!(f.to_string(), "KVM_RUN failed: bad address");
    }
}

//! The I/O ports a guest writes (`compart_abi::ports`): console lines, its exit status,
//! a panic message, and the exception report of its ring-0 stub. The ring-3 I/O
//! bitmap in each TSS opens exactly these ports; any other port access is a failure
//! of the guest (`vstate/exits.rs`).
//!
//! Values come from the guest: lengths are clamped to the console page before any
//! memory is read, and text is cleaned before it reaches a terminal or a log.

use std::sync::Arc;

use compart_abi::{ports, IrqEntry, CONSOLE_BUF_GPA, CONSOLE_BUF_SIZE, IDT_GPA};
use kvm_bindings::kvm_regs;
use vm_memory::{Bytes, GuestAddress};

use crate::vstate::exits::{Action, Failure, FailureKind, PortIo};
use crate::vstate::vcpu::GuestShared;

/// The ports of one guest, as one of its vCPUs writes them.
#[derive(Debug)]
pub struct GuestPorts {
    guest: Arc<GuestShared>,
}

impl GuestPorts {
    /// The ports of `guest`.
    pub fn new(guest: Arc<GuestShared>) -> GuestPorts {
        GuestPorts { guest }
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

impl GuestPorts {
    /// Points the interrupt gates `request` names at the firmware entry it chose. The
    /// handlers come from the image's header (checked to lie in the image when it was
    /// loaded), never from the guest's request, so ring 3 chooses only between its
    /// firmware's two entries. The guest has one vCPU, which is in this exit: no gate
    /// changes under a vCPU taking it.
    fn set_irq_entry(&self, (with_eoi, without_eoi): (u64, u64), request: IrqEntry) {
        let handler = if request.without_eoi {
            without_eoi
        } else {
            with_eoi
        };
        let gate = crate::arch::gdt::interrupt_gate(handler);
        let vectors = match request.vector {
            Some(v) => v..=v,
            None => 32..=255,
        };
        for v in vectors {
            let at = GuestAddress(IDT_GPA + crate::arch::gdt::gate_offset(v));
            // The IDT lies inside guest RAM (it was written there at build time).
            let _ = self.guest.memory.write_slice(&gate, at);
        }
    }
}

impl PortIo for GuestPorts {
    fn out(&mut self, port: u16, value: u64) -> Action {
        match port {
            ports::CONSOLE => {
                let text = self.read_console(value);
                self.guest.console.write(&self.guest.name, &text);
                Action::Continue
            }
            ports::EXIT => Action::Exited(value as u32 as i32),
            ports::PANIC => {
                let text = self.read_console(value);
                let message = crate::console::sanitize(&String::from_utf8_lossy(&text));
                Action::Fail(FailureKind::Panic { message })
            }
            ports::FAULT => Action::FaultReported,
            ports::IRQ_ENTRY => match (self.guest.irq_entries, IrqEntry::decode(value as u32)) {
                (Some(entries), Some(request)) => {
                    self.set_irq_entry(entries, request);
                    Action::Continue
                }
                // A guest of several vCPUs may not change gates under its siblings,
                // and a value that is no request is the guest's bug: both fail it.
                _ => Action::Fail(FailureKind::UnexpectedIo { port, write: true }),
            },
            _ => Action::Fail(FailureKind::UnexpectedIo { port, write: true }),
        }
    }
}

/// The exception the ring-0 stub reported on the `FAULT` port, from the registers it
/// left: vector in RAX, error code in RDI, faulting RIP in RSI, CR2 in RCX.
pub fn reported_fault(regs: &kvm_regs) -> Failure {
    Failure {
        kind: FailureKind::Exception {
            vector: regs.rax & 0xff,
            error_code: regs.rdi,
            cr2: regs.rcx,
        },
        rip: Some(regs.rsi),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_report_takes_the_stubs_registers() {
        let regs = kvm_regs {
            rax: 0x10e,
            rdi: 4,
            rsi: 0x20_1234,
            rcx: 0xdead,
            ..Default::default()
        };
        assert_eq!(
            reported_fault(&regs),
            Failure {
                kind: FailureKind::Exception {
                    vector: 14,
                    error_code: 4,
                    cr2: 0xdead
                },
                rip: Some(0x20_1234)
            }
        );
    }
}

//! The coordinator: the calling thread of [`RunningVmm::wait`] (or a caller's own
//! loop through [`RunningVmm::serve_pending`]) receives every vCPU event, stop and
//! control request, applies each guest's failure policy, stops guests (kicking their
//! vCPUs again until they have ended), and reports how each guest ended. `Drop` stops
//! and joins whatever `wait` did not.

use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use super::{GuestState, Msg, RunOutcome, RunningGuest, RunningVmm};
use crate::control::{ControlRequest, ControlResponse};
use crate::topology::FailurePolicy;
use crate::vstate::vcpu::{VcpuEvent, VcpuThread};

impl Drop for RunningVmm {
    /// No vCPU may run once its guest's `Vm`, and the memory behind the VM's slots,
    /// are gone: a VMM dropped without [`RunningVmm::wait`] stops its guests and joins
    /// every vCPU thread before the guests (and their `Vm`s) drop.
    fn drop(&mut self) {
        if self.guests.iter().all(RunningGuest::finished) {
            return;
        }
        self.stop_all();
        while !self.guests.iter().all(RunningGuest::finished) {
            for t in self.guests.iter_mut().flat_map(|g| &mut g.threads) {
                match t.handle.take() {
                    Some(h) if h.is_finished() => {
                        let _ = h.join();
                    }
                    Some(h) => {
                        t.handle = Some(h);
                        // Again and again: a kick is lost if it lands before the thread
                        // has registered its kvm_run.
                        t.kick();
                    }
                    None => {}
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl RunningVmm {
    pub(super) fn stop_all(&mut self) {
        for g in &mut self.guests {
            if g.state == GuestState::Running {
                g.state = GuestState::Stopped;
            }
            g.stop();
        }
    }

    /// Coordinates until every guest has ended, then reports how each did.
    pub fn wait(mut self) -> RunOutcome {
        while !self.guests.iter().all(RunningGuest::finished) {
            // Block until something happens; while a guest is being stopped, wake up
            // now and then to kick its vCPUs again (a kick can only be lost if it
            // lands before a vCPU thread has registered its kvm_run).
            let stopping = self
                .guests
                .iter()
                .any(|g| g.shared.stop.load(Ordering::Acquire) && !g.finished());
            let msg = if stopping {
                self.rx.recv_timeout(Duration::from_millis(20))
            } else {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            match msg {
                Ok(msg) => self.on_message(msg),
                Err(RecvTimeoutError::Timeout) => {
                    for g in &self.guests {
                        if g.shared.stop.load(Ordering::Acquire) {
                            g.threads.iter().for_each(VcpuThread::kick);
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        RunOutcome {
            guests: self
                .guests
                .iter()
                .map(|g| (g.config.name.clone(), g.state.clone()))
                .collect(),
            first_nonzero_exit: self.first_nonzero_exit,
        }
    }

    /// Serves every message already queued (vCPU events, stop and control requests)
    /// without blocking, and returns how many there were: for a caller that
    /// coordinates from its own loop instead of [`RunningVmm::wait`].
    pub fn serve_pending(&mut self) -> usize {
        let mut n = 0;
        while let Ok(msg) = self.rx.try_recv() {
            self.on_message(msg);
            n += 1;
        }
        n
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Stop => {
                log::info!("stopping all guests");
                self.stop_all();
            }
            Msg::Vcpu(e) => self.on_event(e),
            Msg::Control(request, reply) => {
                let answer = match request {
                    ControlRequest::Move { guest, cores } => self.move_guest(&guest, cores),
                    ControlRequest::SetPpc { guest, ppc } => self.set_ppc(&guest, ppc),
                    ControlRequest::Status => Ok(ControlResponse::Status(self.status())),
                    ControlRequest::Stop => {
                        log::info!("stopping all guests (control request)");
                        self.stop_all();
                        Ok(ControlResponse::Stopping)
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn on_event(&mut self, e: VcpuEvent) {
        match e {
            VcpuEvent::Exited { guest, status } => {
                let g = &mut self.guests[guest];
                log::info!("guest {}: exited with status {status}", g.config.name);
                if g.state == GuestState::Running {
                    g.state = GuestState::Exited(status);
                    if status != 0 && self.first_nonzero_exit.is_none() {
                        self.first_nonzero_exit = Some(status);
                    }
                }
                g.stop();
            }
            VcpuEvent::Failed {
                guest,
                vcpu,
                failure,
            } => {
                let g = &mut self.guests[guest];
                let what = if failure.is_panic() {
                    "panicked"
                } else {
                    "failed"
                };
                log::error!("guest {}: vCPU {vcpu} {what}: {failure}", g.config.name);
                if g.state == GuestState::Running {
                    g.state = GuestState::Failed(failure);
                }
                g.stop();
                match g.config.on_failure {
                    FailurePolicy::StopAll => {
                        log::error!(
                            "guest {}: failure policy stop-all: stopping every guest",
                            g.config.name
                        );
                        self.stop_all();
                    }
                    FailurePolicy::StopGuest => log::warn!(
                        "guest {}: failure policy stop-guest: it stays stopped, the others run on",
                        g.config.name
                    ),
                }
            }
            VcpuEvent::Finished { guest, vcpu } => {
                let g = &mut self.guests[guest];
                if let Some(t) = g.threads.iter_mut().find(|t| t.index == vcpu) {
                    if let Some(h) = t.handle.take() {
                        let _ = h.join();
                    }
                }
                // A guest that has ended drives its NICs no more.
                if g.finished() {
                    for n in self.nics.iter_mut().filter(|n| n.guest == guest) {
                        n.thread.stop();
                    }
                }
            }
        }
    }
}

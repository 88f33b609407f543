//! Live P-state limits (`ctl pstate GUEST --ppc N`): the platform lowers or raises a
//! guest's `_PPC` and notifies it, as firmware does with `Notify(processor, 0x80)`.
//! The new limit goes to the P-state controller (which from then on refuses faster
//! requests) and into the guest's placement page, which is rewritten under its
//! sequence lock; the kick on `PLACEMENT_VECTOR` wakes the guest, whose P-state driver
//! re-reads the limit and requests a state within it through PERF_CTL. The VMM never
//! changes the guest's state behind its back: [`VmmHandle::set_ppc`] waits for that
//! request and reports what the guest then runs at.

use std::time::Duration;

use super::{GuestState, RunningVmm, VmmHandle};
use crate::control::{
    ControlError, ControlRequest, ControlResponse, PStateReport, VcpuPStateReport, PPC_WAIT,
};

impl RunningVmm {
    /// Sets guest `name`'s `_PPC` and notifies it; answers at once with where its
    /// vCPUs are (the handle waits for them to follow).
    pub(super) fn set_ppc(
        &mut self,
        name: &str,
        ppc: usize,
    ) -> Result<ControlResponse, ControlError> {
        let index = self.guest_index(name)?;
        if self.guests[index].state != GuestState::Running {
            return Err(ControlError::NotRunning {
                guest: name.to_string(),
            });
        }
        let before = self.pstates.ppc(index);
        let changed =
            self.pstates
                .set_ppc(index, ppc)
                .map_err(|e| ControlError::InvalidPState {
                    reason: format!("guest {name}: {e}"),
                })?;
        if changed {
            let entries = &mut self.placement[index];
            entries.iter_mut().for_each(|e| e.ppc = ppc as u32);
            let page = &self.guests[index].wiring.placement;
            page.write(entries);
            page.kick();
            log::info!("guest {name}: _PPC P{before} -> P{ppc}, guest notified");
        }
        Ok(ControlResponse::PState(self.pstate_report(index)))
    }

    pub(super) fn guest_index(&self, name: &str) -> Result<usize, ControlError> {
        self.guests
            .iter()
            .position(|g| g.config.name == name)
            .ok_or_else(|| ControlError::NoSuchGuest {
                guest: name.to_string(),
            })
    }

    fn pstate_report(&self, index: usize) -> PStateReport {
        report_of(
            &self.guests[index].config.name,
            &self.pstates.guest_status(index),
        )
    }
}

fn report_of(guest: &str, vcpus: &[crate::pstate::VcpuPState]) -> PStateReport {
    PStateReport {
        guest: guest.to_string(),
        ppc: vcpus.first().map_or(0, |v| v.ppc),
        vcpus: vcpus
            .iter()
            .map(|v| VcpuPStateReport {
                index: v.vcpu as u32,
                requested: v.requested,
                pstate: v.effective,
                mhz: v.mhz,
                followed: v.followed,
            })
            .collect(),
    }
}

impl VmmHandle {
    /// Sets guest `guest`'s `_PPC` to `ppc` and waits (at most [`PPC_WAIT`]) until
    /// each of its vCPUs has requested a state within it; returns where they are then.
    /// The in-process form of `compart ctl SOCK pstate GUEST --ppc N` (the same as
    /// [`VmmHandle::request`] with [`ControlRequest::SetPpc`]). Needs the VMM's
    /// coordinator running ([`RunningVmm::wait`] or [`RunningVmm::serve_pending`]).
    pub fn set_ppc(&self, guest: &str, ppc: usize) -> Result<PStateReport, ControlError> {
        let request = ControlRequest::SetPpc {
            guest: guest.to_string(),
            ppc,
        };
        match self.request(request, crate::control::TIMEOUT)? {
            ControlResponse::PState(r) => Ok(r),
            other => Err(ControlError::Protocol {
                reason: format!("unexpected answer to set-ppc: {other}"),
            }),
        }
    }

    /// After the coordinator set the limit: waits for the guest's requests.
    pub(super) fn follow_ppc(
        &self,
        report: PStateReport,
        timeout: Duration,
    ) -> Result<ControlResponse, ControlError> {
        if report.followed() {
            return Ok(ControlResponse::PState(report));
        }
        let Some(index) = self.pstates.guest_index(&report.guest) else {
            return Err(ControlError::NoSuchGuest {
                guest: report.guest,
            });
        };
        let wait = timeout.min(PPC_WAIT);
        self.pstates.wait_followed(index, wait);
        let now = report_of(&report.guest, &self.pstates.guest_status(index));
        if now.followed() {
            Ok(ControlResponse::PState(now))
        } else {
            Err(ControlError::PpcNotFollowed {
                guest: now.guest.clone(),
                ppc: now.ppc,
                waited_ms: wait.as_millis() as u64,
                vcpus: now.vcpu_summary(),
            })
        }
    }
}

//! Live moves (`ctl move`): every vCPU of a guest onto other host cores. The threads
//! (and the guest's NIC threads) are re-pinned here; the new record goes to the
//! [`Assignment`](crate::placement::Assignment), and what follows from it (placement
//! pages, halt polling, kicks) to [`placement::apply`], the P-state domains to the
//! controller.

use std::sync::atomic::Ordering;

use super::{GuestState, RunningVmm};
use crate::control::{ControlError, ControlResponse};
use crate::host::{core_list, pin_thread, HostCore};
use crate::placement;

impl RunningVmm {
    /// Moves every vCPU of `name` onto `cores`: re-pins the threads, records the new
    /// assignment, rewrites the placement pages that change (and kicks those guests),
    /// adapts KVM halt polling, and lets the P-state controller follow the new `_PSD`
    /// domains.
    pub(super) fn move_guest(
        &mut self,
        name: &str,
        cores: Vec<HostCore>,
    ) -> Result<ControlResponse, ControlError> {
        let index = self
            .guests
            .iter()
            .position(|g| g.config.name == name)
            .ok_or_else(|| ControlError::NoSuchGuest {
                guest: name.to_string(),
            })?;
        if cores.is_empty() {
            return Err(ControlError::InvalidCores {
                reason: "name at least one core".into(),
            });
        }
        if let Some(c) = cores.iter().find(|c| !self.topology.host_cores.contains(c)) {
            return Err(ControlError::InvalidCores {
                reason: format!(
                    "core {c} is not one of the stack's host cores ({})",
                    core_list(&self.topology.host_cores)
                ),
            });
        }
        let g = &mut self.guests[index];
        if g.state != GuestState::Running {
            return Err(ControlError::NotRunning {
                guest: name.to_string(),
            });
        }
        for t in &g.threads {
            let tid = t.tid.load(Ordering::Acquire);
            if tid != 0 {
                pin_thread(tid, &cores).map_err(|e| ControlError::Pin {
                    guest: name.to_string(),
                    vcpu: t.index,
                    reason: e.to_string(),
                })?;
            }
        }
        for n in self.nics.iter().filter(|n| n.guest == index) {
            let tid = n.thread.tid();
            if tid != 0 {
                if let Err(e) = pin_thread(tid, &cores) {
                    log::warn!(
                        "nic {}: cannot move its thread with guest {name}: {e}",
                        self.topology.nics[n.index].host_name()
                    );
                }
            }
        }
        self.assignment.write().unwrap().move_guest(index, &cores);
        self.pstates.repin(index);
        let placed: Vec<placement::PlacedGuest<'_>> = self
            .guests
            .iter()
            .map(|g| placement::PlacedGuest {
                name: &g.config.name,
                vm: &g.vm,
                page: &g.wiring.placement,
            })
            .collect();
        let fresh = placement::apply(
            &self.assignment.read().unwrap(),
            &self.placement,
            index,
            &placed,
        );
        self.placement = fresh;
        let moved = ControlResponse::Moved {
            guest: name.to_string(),
            cores,
            dedicated: self.placement[index].iter().all(|e| e.dedicated == 1),
        };
        log::info!("{moved}");
        Ok(moved)
    }
}

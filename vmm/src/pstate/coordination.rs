//! What a guest asked for and what it gets: per-vCPU requested P-states, validated
//! against the guest's `_PSS` and `_PPC`, resolved per `_PSD` domain into the
//! effective state of every vCPU.
//!
//! ACPI (6.5 §8.4.5.5) leaves the meaning of a coordination type to the platform; ours:
//!
//! - **HW_ALL**: each processor requests its own state; the domain runs at the fastest
//!   state any member requests (the hardware resolves, as a shared clock does).
//! - **SW_ANY**: a request on any processor sets the whole domain (last write wins).
//! - **SW_ALL**: the OS must request the same state on every processor of the domain;
//!   the domain changes once all members agree, and keeps its state until then.

use compart_acpi::{Coordination, PStateTable, PsdDomain};

/// Why a guest's P-state request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The value is not the control value of any `_PSS` entry.
    #[error("control value {0:#x} is not in the guest's _PSS")]
    UnknownControl(u64),
    /// The state is faster than `_PPC` allows.
    #[error("P{state} is faster than _PPC allows (P{ppc} and slower)")]
    AbovePpc {
        /// The requested state.
        state: usize,
        /// The guest's `_PPC`.
        ppc: usize,
    },
}

/// One vCPU whose effective state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// vCPU index.
    pub vcpu: usize,
    /// Effective state before.
    pub from: usize,
    /// Effective state now.
    pub to: usize,
}

/// The P-state bookkeeping of one guest.
#[derive(Debug, Clone)]
pub struct GuestPStates {
    ladder: PStateTable,
    ppc: usize,
    psd: Vec<PsdDomain>,
    requested: Vec<usize>,
    effective: Vec<usize>,
    /// Per vCPU: whether it has requested a state since `_PPC` last changed (its
    /// acknowledgement of the new limit).
    followed: Vec<bool>,
}

/// Why a new `_PPC` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("_PPC {ppc} is out of range: the guest's _PSS has P0 to P{last}")]
pub struct PpcOutOfRange {
    /// The limit asked for.
    pub ppc: usize,
    /// The slowest state.
    pub last: usize,
}

impl GuestPStates {
    /// A guest whose vCPUs have these `_PSD` entries, all starting at `initial`
    /// (clamped into what `_PPC` allows).
    pub fn new(ladder: PStateTable, ppc: usize, psd: Vec<PsdDomain>, initial: usize) -> Self {
        let last = ladder.len() - 1;
        let ppc = ppc.min(last);
        let initial = initial.clamp(ppc, last);
        let n = psd.len();
        GuestPStates {
            ladder,
            ppc,
            psd,
            requested: vec![initial; n],
            effective: vec![initial; n],
            followed: vec![true; n],
        }
    }

    /// The fastest state the guest may request now (its `_PPC`).
    pub fn ppc(&self) -> usize {
        self.ppc
    }

    /// Lowers or raises the limit. Nothing changes until the guest requests a state
    /// within it (the platform notifies it; it is not overruled): every vCPU counts as
    /// not having followed until its next accepted request. Returns whether the limit
    /// changed.
    pub fn set_ppc(&mut self, ppc: usize) -> Result<bool, PpcOutOfRange> {
        let last = self.ladder.len() - 1;
        if ppc > last {
            return Err(PpcOutOfRange { ppc, last });
        }
        if ppc == self.ppc {
            return Ok(false);
        }
        self.ppc = ppc;
        self.followed.fill(false);
        Ok(true)
    }

    /// Whether vCPU `vcpu` has requested a state since `_PPC` last changed.
    pub fn followed(&self, vcpu: usize) -> bool {
        self.followed[vcpu]
    }

    /// The ladder.
    pub fn ladder(&self) -> &PStateTable {
        &self.ladder
    }

    /// The state vCPU `vcpu` requested last.
    pub fn requested(&self, vcpu: usize) -> usize {
        self.requested[vcpu]
    }

    /// The state vCPU `vcpu` runs at.
    pub fn effective(&self, vcpu: usize) -> usize {
        self.effective[vcpu]
    }

    /// The `_PSD` domain of vCPU `vcpu`.
    pub fn domain(&self, vcpu: usize) -> PsdDomain {
        self.psd[vcpu]
    }

    /// Which state a control value selects, if the guest may use it.
    pub fn validate(&self, control: u64) -> Result<usize, Refusal> {
        let state = self
            .ladder
            .states()
            .iter()
            .position(|s| s.control == control)
            .ok_or(Refusal::UnknownControl(control))?;
        if state < self.ppc {
            return Err(Refusal::AbovePpc {
                state,
                ppc: self.ppc,
            });
        }
        Ok(state)
    }

    /// vCPU `vcpu` writes `control`. Returns the vCPUs whose effective state changed.
    pub fn request(&mut self, vcpu: usize, control: u64) -> Result<Vec<Change>, Refusal> {
        let state = self.validate(control)?;
        self.requested[vcpu] = state;
        self.followed[vcpu] = true;
        Ok(self.resolve(Some(vcpu)))
    }

    /// Recomputes every domain (after a request by `writer`, or after the domains
    /// changed, for example when a vCPU moved).
    fn resolve(&mut self, writer: Option<usize>) -> Vec<Change> {
        let mut changes = Vec::new();
        let n = self.psd.len();
        for v in 0..n {
            let d = self.psd[v];
            let members: Vec<usize> = (0..n).filter(|&m| self.psd[m].domain == d.domain).collect();
            let target = match d.coordination {
                Coordination::HwAll => members.iter().map(|&m| self.requested[m]).min(),
                Coordination::SwAny => match writer {
                    Some(w) if members.contains(&w) => Some(self.requested[w]),
                    _ => None,
                },
                Coordination::SwAll => {
                    let first = self.requested[members[0]];
                    members
                        .iter()
                        .all(|&m| self.requested[m] == first)
                        .then_some(first)
                }
            };
            if let Some(t) = target {
                if self.effective[v] != t {
                    changes.push(Change {
                        vcpu: v,
                        from: self.effective[v],
                        to: t,
                    });
                    self.effective[v] = t;
                }
            }
        }
        changes
    }

    /// New `_PSD` entries (the vCPUs were re-pinned); effective states are resolved
    /// again.
    pub fn set_domains(&mut self, psd: Vec<PsdDomain>) -> Vec<Change> {
        assert_eq!(psd.len(), self.psd.len(), "one _PSD entry per vCPU");
        self.psd = psd;
        self.resolve(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compart_acpi::{ladder::default_ladder, Mhz};

    fn psd(domains: &[u32], coordination: Coordination) -> Vec<PsdDomain> {
        domains
            .iter()
            .map(|&d| PsdDomain {
                domain: d,
                coordination,
                num_processors: domains.iter().filter(|&&x| x == d).count() as u32,
            })
            .collect()
    }

    fn guest(domains: &[u32], c: Coordination, ppc: usize) -> GuestPStates {
        GuestPStates::new(default_ladder(Mhz(2000)), ppc, psd(domains, c), 0)
    }

    #[test]
    fn only_pss_control_values_are_accepted() {
        let mut g = guest(&[0], Coordination::HwAll, 0);
        assert_eq!(g.request(0, 7), Err(Refusal::UnknownControl(7)));
        assert_eq!(g.effective(0), 0);
        assert_eq!(
            g.request(0, 4).unwrap(),
            vec![Change {
                vcpu: 0,
                from: 0,
                to: 4
            }]
        );
    }

    #[test]
    fn states_faster_than_ppc_are_refused() {
        let mut g = guest(&[0], Coordination::HwAll, 2);
        assert_eq!(g.effective(0), 2, "the start-up state is clamped to _PPC");
        assert_eq!(g.request(0, 1), Err(Refusal::AbovePpc { state: 1, ppc: 2 }));
        assert!(g.request(0, 3).is_ok());
    }

    #[test]
    fn a_new_ppc_is_validated_and_followed_by_the_next_request_only() {
        let mut g = guest(&[0], Coordination::HwAll, 0);
        assert_eq!(g.set_ppc(5), Err(PpcOutOfRange { ppc: 5, last: 4 }));
        assert_eq!(g.ppc(), 0);
        assert_eq!(
            g.set_ppc(0),
            Ok(false),
            "the same limit again changes nothing"
        );
        assert!(g.followed(0));
        assert_eq!(g.set_ppc(3), Ok(true));
        assert_eq!(g.ppc(), 3);
        assert!(!g.followed(0));
        assert_eq!(
            g.effective(0),
            0,
            "the platform does not overrule the guest"
        );
        assert_eq!(g.request(0, 2), Err(Refusal::AbovePpc { state: 2, ppc: 3 }));
        assert!(!g.followed(0), "a refused request is no acknowledgement");
        g.request(0, 3).unwrap();
        assert!(g.followed(0));
        assert_eq!(g.effective(0), 3);
        assert_eq!(g.set_ppc(1), Ok(true));
        assert!(!g.followed(0));
        assert!(g.request(0, 1).is_ok());
        assert!(g.followed(0));
    }

    #[test]
    fn hw_all_runs_the_domain_at_its_fastest_request() {
        let mut g = guest(&[0, 0, 1], Coordination::HwAll, 0);
        g.request(0, 3).unwrap();
        assert_eq!(
            (g.effective(0), g.effective(1)),
            (0, 0),
            "vCPU 1 still asks for P0"
        );
        let ch = g.request(1, 4).unwrap();
        assert_eq!((g.effective(0), g.effective(1)), (3, 3));
        assert_eq!(ch.len(), 2);
        assert_eq!(g.effective(2), 0, "other domains are untouched");
    }

    #[test]
    fn sw_any_lets_any_member_set_the_domain() {
        let mut g = guest(&[0, 0, 1], Coordination::SwAny, 0);
        g.request(1, 2).unwrap();
        assert_eq!((g.effective(0), g.effective(1), g.effective(2)), (2, 2, 0));
        g.request(0, 4).unwrap();
        assert_eq!((g.effective(0), g.effective(1)), (4, 4));
    }

    #[test]
    fn sw_all_changes_only_once_every_member_agrees() {
        let mut g = guest(&[0, 0], Coordination::SwAll, 0);
        assert!(g.request(0, 3).unwrap().is_empty());
        assert_eq!((g.effective(0), g.effective(1)), (0, 0));
        assert_eq!(g.request(1, 3).unwrap().len(), 2);
        assert_eq!((g.effective(0), g.effective(1)), (3, 3));
    }

    #[test]
    fn repinning_into_one_domain_recomputes_effective_states() {
        let mut g = guest(&[0, 1], Coordination::HwAll, 0);
        g.request(1, 4).unwrap();
        assert_eq!((g.effective(0), g.effective(1)), (0, 4));
        let ch = g.set_domains(psd(&[0, 0], Coordination::HwAll));
        assert_eq!(
            ch,
            vec![Change {
                vcpu: 1,
                from: 4,
                to: 0
            }]
        );
    }
}

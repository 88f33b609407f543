//! The placement page: how the VMM tells a guest where its vCPUs run. A vCPU that has
//! its host core to itself polls for work before sleeping; one that shares its core
//! sleeps as soon as it runs out of work, so that the sharer gets the core (thesis
//! §3.3). The page is a read-only memory slot in the guest, written here under a
//! sequence lock; after a change the VMM kicks the guest on `PLACEMENT_VECTOR`.
//!
//! [`Assignment`] is the one record of where each vCPU runs now. The validated
//! `Topology` says where vCPUs *start*; after `ctl move` only the assignment changes,
//! and the placement pages, KVM halt polling, `_PSD` domains, thread pinning and the
//! status view are all derived from it.

use std::sync::Arc;

use compart_abi::placement::{self, RawPage};
use compart_abi::{PlacementEntry, PlacementPage, MAX_CORES_LISTED, PAGE_SIZE};
use compart_channel::host::SharedMemory;
use vmm_sys_util::eventfd::EventFd;

use crate::topology::HostCore;
use crate::vstate::vm::Vm;

/// How long a vCPU with a core of its own polls before sleeping.
pub const DEDICATED_POLL_US: u32 = 1000;

/// KVM halt polling for a VM whose vCPUs all have their own cores: worth its CPU time
/// there, harmful on a shared core (it keeps the sharer off it).
pub const DEDICATED_HALT_POLL_NS: u64 = 200_000;

/// Where every vCPU of every guest may run now: guest → vCPU → host cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    guests: Vec<Vec<Vec<HostCore>>>,
}

impl Assignment {
    /// The pinning the topology starts with.
    pub fn from_topology(topology: &crate::topology::Topology) -> Assignment {
        Assignment {
            guests: topology
                .guests
                .iter()
                .map(|g| g.vcpu_cores.clone())
                .collect(),
        }
    }

    /// The cores vCPU `vcpu` of guest `guest` may run on.
    pub fn vcpu(&self, guest: usize, vcpu: usize) -> &[HostCore] {
        &self.guests[guest][vcpu]
    }

    /// The cores of each vCPU of guest `guest`.
    pub fn guest(&self, guest: usize) -> &[Vec<HostCore>] {
        &self.guests[guest]
    }

    /// Every guest's vCPUs and their cores.
    pub fn guests(&self) -> &[Vec<Vec<HostCore>>] {
        &self.guests
    }

    /// Moves every vCPU of guest `guest` onto `cores`.
    pub fn move_guest(&mut self, guest: usize, cores: &[HostCore]) {
        for v in &mut self.guests[guest] {
            *v = cores.to_vec();
        }
    }

    /// The placement entries of every vCPU (see [`compute`]).
    pub fn placement(&self) -> Vec<Vec<PlacementEntry>> {
        compute(&self.guests)
    }
}

/// The halt-polling time for a VM whose vCPUs have these placement entries.
pub fn halt_poll_ns(entries: &[PlacementEntry]) -> u64 {
    if entries.iter().all(|e| e.dedicated == 1) {
        DEDICATED_HALT_POLL_NS
    } else {
        0
    }
}

/// Sets `vm`'s KVM halt polling for a guest whose vCPUs have these entries.
pub fn apply_halt_poll(guest: &str, vm: &Vm, entries: &[PlacementEntry]) {
    let ns = halt_poll_ns(entries);
    if let Err(e) = vm.set_halt_poll(ns) {
        log::debug!("guest {guest}: KVM_CAP_HALT_POLL {ns} ns: {e}");
    }
}

/// One running guest as placement sees it.
#[derive(Debug)]
pub struct PlacedGuest<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its VM (for halt polling).
    pub vm: &'a Vm,
    /// Its placement page.
    pub page: &'a Placement,
}

/// After a move: the entries `assignment` gives every guest now (with the `_PPC` limits
/// of `before`); each guest whose entries differ from `before` (and guest `moved` in
/// any case) gets its page rewritten, its halt polling set, and a kick to read the page
/// again.
pub fn apply(
    assignment: &Assignment,
    before: &[Vec<PlacementEntry>],
    moved: usize,
    guests: &[PlacedGuest<'_>],
) -> Vec<Vec<PlacementEntry>> {
    let mut fresh = assignment.placement();
    // The `_PPC` limits are not placement's to change: they carry over.
    for (entries, old) in fresh.iter_mut().zip(before) {
        for (e, o) in entries.iter_mut().zip(old) {
            e.ppc = o.ppc;
        }
    }
    for (i, (g, entries)) in guests.iter().zip(&fresh).enumerate() {
        let changed = i == moved
            || entries
                .iter()
                .zip(&before[i])
                .any(|(a, b)| a.dedicated != b.dedicated || a.host_cores != b.host_cores);
        if changed {
            g.page.write(entries);
            apply_halt_poll(g.name, g.vm, entries);
            g.page.kick();
        }
    }
    fresh
}

/// The placement entry of every vCPU of every guest, from the core sets they may run
/// on: a vCPU is dedicated when it is pinned to one core that no other vCPU may use.
pub fn compute(guests: &[Vec<Vec<HostCore>>]) -> Vec<Vec<PlacementEntry>> {
    let users = |core: HostCore| {
        guests
            .iter()
            .flatten()
            .filter(|cores| cores.contains(&core))
            .count()
    };
    guests
        .iter()
        .map(|vcpus| {
            vcpus
                .iter()
                .map(|cores| {
                    let dedicated = matches!(cores.as_slice(), [one] if users(*one) == 1);
                    let mut e = PlacementEntry {
                        dedicated: u32::from(dedicated),
                        poll_us: if dedicated { DEDICATED_POLL_US } else { 0 },
                        host_core_count: cores.len().min(MAX_CORES_LISTED) as u32,
                        ..PlacementEntry::EMPTY
                    };
                    for (slot, c) in e.host_cores.iter_mut().zip(cores) {
                        *slot = c.0;
                    }
                    e
                })
                .collect()
        })
        .collect()
}

/// One guest's placement page and the doorbell the VMM rings after changing it.
#[derive(Debug)]
pub struct Placement {
    /// The page (one page of shared memory; the guest maps it read-only).
    pub memory: Arc<SharedMemory>,
    /// Registered as irqfd into the guest on `PLACEMENT_VECTOR`.
    pub kick: Arc<EventFd>,
}

impl Placement {
    /// A page for guest `name`.
    pub fn new(name: &str) -> std::io::Result<Placement> {
        let memory =
            SharedMemory::create(&format!("compart-placement-{name}"), PAGE_SIZE as usize)?;
        Ok(Placement {
            memory: Arc::new(memory),
            kick: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    fn page(&self) -> RawPage {
        // SAFETY: the mapping is one page (page-aligned, larger than a PlacementPage),
        // readable and writable, and lives as long as `self`, which the RawPage does
        // not outlive; the guest reads it only through the sequence lock.
        unsafe { RawPage::new(self.memory.region().as_ptr().cast::<PlacementPage>()) }
    }

    /// Writes the entries under the sequence lock (`compart_abi::placement`). The
    /// coordinator is the only writer.
    pub fn write(&self, entries: &[PlacementEntry]) {
        placement::write(&self.page(), entries);
    }

    /// Wakes the guest so that it reads the page again.
    pub fn kick(&self) {
        let _ = self.kick.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_alone_on_its_core_is_dedicated_and_sharers_are_not() {
        let c = |v: &[u32]| v.iter().map(|&x| HostCore(x)).collect::<Vec<_>>();
        let p = compute(&[
            vec![c(&[0])],
            vec![c(&[1])],
            vec![c(&[1])],
            vec![c(&[0, 1])],
        ]);
        assert_eq!(p[0][0].dedicated, 0, "core 0 is also open to guest 3");
        assert_eq!((p[1][0].dedicated, p[2][0].dedicated), (0, 0));
        let p = compute(&[vec![c(&[0])], vec![c(&[1])]]);
        assert_eq!((p[0][0].dedicated, p[0][0].poll_us), (1, DEDICATED_POLL_US));
        assert_eq!(p[1][0].host_cores[0], 1);
    }

    #[test]
    fn writes_leave_an_even_generation_and_the_entries() {
        use compart_abi::placement::PageAccess;
        let p = Placement::new("t").unwrap();
        let e = compute(&[vec![vec![HostCore(1)], vec![HostCore(0), HostCore(1)]]]);
        p.write(&e[0]);
        p.write(&e[0]);
        let page = p.page();
        assert_eq!(
            page.load_generation(std::sync::atomic::Ordering::Relaxed),
            4
        );
        for (v, want) in e[0].iter().enumerate() {
            let got = placement::read(&page, v as u32).unwrap();
            assert_eq!(got, *want, "vCPU {v}");
        }
        assert!(placement::read(&page, 2).is_none());
    }
}

//! The placement page: how the VMM tells a guest where its vCPUs run. A vCPU that has
//! its host core to itself polls for work before sleeping; one that shares its core
//! sleeps as soon as it runs out of work, so that the sharer gets the core (thesis
//! §3.3). The page is a read-only memory slot in the guest, written here under a
//! sequence lock; after a change the VMM kicks the guest on `PLACEMENT_VECTOR`.

use std::sync::Arc;

use compart_abi::placement::{self, RawPage};
use compart_abi::{PlacementEntry, PlacementPage, MAX_CORES_LISTED, PAGE_SIZE};
use compart_channel::host::SharedMemory;
use vmm_sys_util::eventfd::EventFd;

use crate::topology::HostCore;

/// How long a vCPU with a core of its own polls before sleeping.
pub const DEDICATED_POLL_US: u32 = 1000;

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
    pub memory: SharedMemory,
    /// Registered as irqfd into the guest on `PLACEMENT_VECTOR`.
    pub kick: Arc<EventFd>,
}

impl Placement {
    /// A page for guest `name`.
    pub fn new(name: &str) -> std::io::Result<Placement> {
        let memory =
            SharedMemory::create(&format!("compart-placement-{name}"), PAGE_SIZE as usize)?;
        Ok(Placement {
            memory,
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

//! Host frequency domains and the `_PSD` domains that follow from a guest's pinning.
//! Pure: the VMM probes the host (`compart-vmm`'s `host` module) and hands the
//! domains in.

use crate::config::{Coordination, PsdDomain};

/// The host's frequency domains: sets of CPUs whose frequency changes together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFreqDomains {
    domains: Vec<Vec<u32>>,
}

impl HostFreqDomains {
    /// Domains from explicit CPU sets (sorted and made disjoint: a CPU belongs to the first
    /// set that names it).
    pub fn from_sets(sets: Vec<Vec<u32>>) -> Self {
        let mut domains: Vec<Vec<u32>> = Vec::new();
        for mut set in sets {
            set.retain(|cpu| !domains.iter().any(|d| d.contains(cpu)));
            set.sort_unstable();
            set.dedup();
            if !set.is_empty() {
                domains.push(set);
            }
        }
        domains.sort_by_key(|d| d[0]);
        Self { domains }
    }

    /// The domains, each a sorted CPU list, ordered by their lowest CPU.
    pub fn domains(&self) -> &[Vec<u32>] {
        &self.domains
    }

    /// The index of the domain holding `cpu`.
    pub fn domain_of(&self, cpu: u32) -> Option<u32> {
        let index = self.domains.iter().position(|d| d.contains(&cpu))?;
        u32::try_from(index).ok()
    }
}

/// `_PSD` of each vCPU of a guest from its pinning: vCPU `i` is pinned to host CPU
/// `pins[i]` (or floats, `None`).
///
/// vCPUs pinned into one host frequency domain share a `_PSD` domain numbered after the
/// host domain; a floating vCPU, or one pinned to a CPU outside every domain, gets a domain
/// of its own (numbered after all host domains). `NumProcessors` is the number of this
/// guest's vCPUs in the domain: the guest sees only its own processors.
pub fn psd_from_pinning(
    pins: &[Option<u32>],
    domains: &HostFreqDomains,
    coordination: Coordination,
) -> Vec<PsdDomain> {
    let host_domains = u32::try_from(domains.domains().len()).unwrap_or(u32::MAX);
    let numbers: Vec<u32> = pins
        .iter()
        .zip(0u32..)
        .map(|(pin, vcpu)| {
            pin.and_then(|cpu| domains.domain_of(cpu))
                .unwrap_or_else(|| host_domains.saturating_add(vcpu))
        })
        .collect();
    numbers
        .iter()
        .map(|&domain| PsdDomain {
            domain,
            coordination,
            num_processors: u32::try_from(numbers.iter().filter(|&&d| d == domain).count())
                .unwrap_or(u32::MAX),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_from_sets_are_disjoint_sorted_and_ordered() {
        let d = HostFreqDomains::from_sets(vec![vec![3, 2], vec![2, 4], vec![], vec![0]]);
        assert_eq!(d.domains(), [vec![0], vec![2, 3], vec![4]]);
        assert_eq!(d.domain_of(4), Some(2));
        assert_eq!(d.domain_of(9), None);
    }

    #[test]
    fn psd_groups_vcpus_pinned_into_one_host_domain() {
        let domains = HostFreqDomains::from_sets(vec![vec![0, 1], vec![2, 3]]);
        let psd = psd_from_pinning(
            &[Some(0), Some(1), Some(2), None],
            &domains,
            Coordination::SwAll,
        );
        let got: Vec<(u32, u32)> = psd.iter().map(|p| (p.domain, p.num_processors)).collect();
        assert_eq!(got, [(0, 2), (0, 2), (1, 1), (5, 1)]);
        assert!(psd.iter().all(|p| p.coordination == Coordination::SwAll));
    }
}

//! What the host tells us about its frequency scaling: the P-state ladder to offer guests
//! and the host's frequency domains.
//!
//! Every function takes the root of the file system (`/` in production, a fake tree in
//! tests) and reads `sys/devices/system/cpu/...` and `proc/cpuinfo` below it.
//!
//! The ladder comes from, in order of preference:
//! 1. cpufreq's `scaling_available_frequencies` of the CPU (acpi-cpufreq hosts);
//! 2. cpufreq's `cpuinfo_max_freq` and `cpuinfo_min_freq`, spread into
//!    [`ladder::DEFAULT_STEPS`] evenly spaced states (intel_pstate and amd-pstate hosts);
//! 3. the [default ladder](ladder::default_ladder) of the host's nominal frequency, taken
//!    from the `@ x.xxGHz` of `/proc/cpuinfo`'s model name, else its `cpu MHz`, else
//!    [`ladder::DEFAULT_NOMINAL`].
//!
//! Frequency domains come from cpufreq's `freqdomain_cpus` (the CPUs hardware scales
//! together), else `related_cpus` (the CPUs sharing a cpufreq policy); a CPU without
//! cpufreq is its own domain.

use std::fs;
use std::path::Path;

use crate::config::{Coordination, PsdDomain};
use crate::ladder;
use crate::pstate::PStateTable;
use crate::units::Mhz;

const CPU_DIR: &str = "sys/devices/system/cpu";

/// Where a host ladder came from, for the VMM to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LadderSource {
    /// cpufreq's `scaling_available_frequencies`.
    CpufreqAvailable,
    /// cpufreq's `cpuinfo_max_freq`/`cpuinfo_min_freq`, spread evenly.
    CpufreqRange,
    /// Default ladder from the `@ x.xxGHz` of the CPU model name.
    ModelName(Mhz),
    /// Default ladder from `cpu MHz` in `/proc/cpuinfo`.
    CpuMhz(Mhz),
    /// Default ladder from [`ladder::DEFAULT_NOMINAL`]: the host told us nothing.
    Fallback,
}

/// The ladder the host offers one of its CPUs, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLadder {
    /// The P-states.
    pub table: PStateTable,
    /// Their origin.
    pub source: LadderSource,
}

impl PStateTable {
    /// The P-state ladder of host CPU 0 (see [`host_ladder`]).
    pub fn from_host() -> Self {
        host_ladder(Path::new("/"), 0).table
    }
}

/// The P-state ladder of host CPU `cpu`, reading the tree under `root` (see the module docs).
pub fn host_ladder(root: &Path, cpu: u32) -> HostLadder {
    let cpufreq = root.join(format!("{CPU_DIR}/cpu{cpu}/cpufreq"));
    if let Some(freqs) = read_khz_list(&cpufreq.join("scaling_available_frequencies")) {
        if let Ok(table) = ladder::from_frequencies(&freqs) {
            return HostLadder {
                table,
                source: LadderSource::CpufreqAvailable,
            };
        }
    }
    let max = read_khz_list(&cpufreq.join("cpuinfo_max_freq"));
    let min = read_khz_list(&cpufreq.join("cpuinfo_min_freq"));
    if let (Some([max]), Some([min])) = (max.as_deref(), min.as_deref()) {
        let freqs = ladder::spread(*max, *min, ladder::DEFAULT_STEPS);
        if let Ok(table) = ladder::from_frequencies(&freqs) {
            return HostLadder {
                table,
                source: LadderSource::CpufreqRange,
            };
        }
    }
    let cpuinfo = fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let (nominal, source) = match nominal_frequency(&cpuinfo) {
        Some(found) => found,
        None => (ladder::DEFAULT_NOMINAL, LadderSource::Fallback),
    };
    HostLadder {
        table: ladder::default_ladder(nominal),
        source,
    }
}

/// The nominal frequency `/proc/cpuinfo` text gives for its first processor.
fn nominal_frequency(cpuinfo: &str) -> Option<(Mhz, LadderSource)> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim())
        })
    };
    if let Some(model) = field("model name") {
        if let Some((_, ghz)) = model.rsplit_once('@') {
            let ghz = ghz.trim().trim_end_matches("GHz").trim();
            if let Some(mhz) = decimal_to_milli(ghz).filter(|&m| m > 0) {
                return Some((Mhz(mhz), LadderSource::ModelName(Mhz(mhz))));
            }
        }
    }
    let mhz = field("cpu MHz")?.split('.').next()?.parse::<u32>().ok()?;
    (mhz > 0).then_some((Mhz(mhz), LadderSource::CpuMhz(Mhz(mhz))))
}

/// `"2.40"` → 2400: a decimal number times 1000, without floating point.
fn decimal_to_milli(text: &str) -> Option<u32> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let mut frac: String = frac.chars().take(3).collect();
    while frac.len() < 3 {
        frac.push('0');
    }
    let int: u32 = int.parse().ok()?;
    let frac: u32 = frac.parse().ok()?;
    int.checked_mul(1000)?.checked_add(frac)
}

/// A file of whitespace-separated kHz values, as MHz; `None` if absent or malformed.
fn read_khz_list(path: &Path) -> Option<Vec<Mhz>> {
    let text = fs::read_to_string(path).ok()?;
    let values: Option<Vec<Mhz>> = text
        .split_whitespace()
        .map(|khz| khz.parse::<u64>().ok())
        .map(|khz| khz.and_then(|k| u32::try_from(k / 1000).ok()).map(Mhz))
        .collect();
    values.filter(|v| !v.is_empty())
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

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

    /// Reads the domains of the host whose root is `root` (see the module docs).
    pub fn probe(root: &Path) -> Self {
        let cpu_dir = root.join(CPU_DIR);
        let cpus = fs::read_to_string(cpu_dir.join("online"))
            .ok()
            .and_then(|t| parse_cpu_list(&t))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| list_cpu_dirs(&cpu_dir));
        let sets = cpus
            .iter()
            .map(|&cpu| {
                let cpufreq = cpu_dir.join(format!("cpu{cpu}/cpufreq"));
                ["freqdomain_cpus", "related_cpus"]
                    .iter()
                    .find_map(|f| {
                        let list = parse_cpu_list(&fs::read_to_string(cpufreq.join(f)).ok()?)?;
                        list.contains(&cpu).then_some(list)
                    })
                    .unwrap_or_else(|| vec![cpu])
            })
            .collect();
        Self::from_sets(sets)
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

fn list_cpu_dirs(cpu_dir: &Path) -> Vec<u32> {
    let mut cpus: Vec<u32> = fs::read_dir(cpu_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("cpu")?
                .parse()
                .ok()
        })
        .collect();
    cpus.sort_unstable();
    cpus
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
    use std::path::PathBuf;

    /// A fake file-system root in the temp dir, removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("compart-acpi-host-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, path: &str, text: &str) -> &Self {
            let path = self.0.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
            self
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mhz(table: &PStateTable) -> Vec<u32> {
        table.states().iter().map(|s| s.frequency.0).collect()
    }

    #[test]
    fn ladder_prefers_cpufreq_available_frequencies() {
        let root = FakeRoot::new("avail");
        root.write(
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_available_frequencies",
            "2400000 2000000 1600000 800000 \n",
        )
        .write("proc/cpuinfo", "model name\t: X @ 3.00GHz\n");
        let ladder = host_ladder(&root.0, 0);
        assert_eq!(ladder.source, LadderSource::CpufreqAvailable);
        assert_eq!(mhz(&ladder.table), [2400, 2000, 1600, 800]);
    }

    #[test]
    fn ladder_spreads_cpufreq_range_without_available_frequencies() {
        let root = FakeRoot::new("range");
        root.write(
            "sys/devices/system/cpu/cpu1/cpufreq/cpuinfo_max_freq",
            "3000000\n",
        )
        .write(
            "sys/devices/system/cpu/cpu1/cpufreq/cpuinfo_min_freq",
            "1000000\n",
        );
        let ladder = host_ladder(&root.0, 1);
        assert_eq!(ladder.source, LadderSource::CpufreqRange);
        assert_eq!(mhz(&ladder.table), [3000, 2500, 2000, 1500, 1000]);
    }

    #[test]
    fn ladder_without_cpufreq_uses_model_name_nominal() {
        let root = FakeRoot::new("model");
        root.write(
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5520 @ 2.27GHz\ncpu MHz\t\t: 1600.000\n",
        );
        let ladder = host_ladder(&root.0, 0);
        assert_eq!(ladder.source, LadderSource::ModelName(Mhz(2270)));
        assert_eq!(ladder.table.p0().frequency, Mhz(2270));
    }

    #[test]
    fn ladder_without_cpufreq_or_model_frequency_uses_cpu_mhz() {
        let root = FakeRoot::new("cpumhz");
        root.write(
            "proc/cpuinfo",
            "model name\t: AMD EPYC\ncpu MHz\t\t: 2596.140\n",
        );
        let ladder = host_ladder(&root.0, 0);
        assert_eq!(ladder.source, LadderSource::CpuMhz(Mhz(2596)));
        assert_eq!(mhz(&ladder.table), [2596, 2271, 1947, 1622, 1298]);
    }

    #[test]
    fn ladder_of_an_empty_host_is_the_fallback() {
        let root = FakeRoot::new("empty");
        let ladder = host_ladder(&root.0, 0);
        assert_eq!(ladder.source, LadderSource::Fallback);
        assert_eq!(ladder.table.p0().frequency, ladder::DEFAULT_NOMINAL);
    }

    #[test]
    fn this_host_has_a_ladder() {
        assert!(!PStateTable::from_host().is_empty());
    }

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn domains_follow_freqdomain_then_related_cpus() {
        let root = FakeRoot::new("domains");
        let cpu = "sys/devices/system/cpu";
        root.write(&format!("{cpu}/online"), "0-4\n")
            .write(&format!("{cpu}/cpu0/cpufreq/freqdomain_cpus"), "0-1\n")
            .write(&format!("{cpu}/cpu0/cpufreq/related_cpus"), "0\n")
            .write(&format!("{cpu}/cpu1/cpufreq/freqdomain_cpus"), "0-1\n")
            .write(&format!("{cpu}/cpu2/cpufreq/related_cpus"), "2-3\n")
            .write(&format!("{cpu}/cpu3/cpufreq/related_cpus"), "2-3\n");
        let domains = HostFreqDomains::probe(&root.0);
        assert_eq!(domains.domains(), [vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(domains.domain_of(3), Some(1));
        assert_eq!(domains.domain_of(9), None);
    }

    #[test]
    fn domains_without_cpufreq_are_one_per_cpu() {
        let root = FakeRoot::new("nocpufreq");
        root.write("sys/devices/system/cpu/cpu0/uevent", "")
            .write("sys/devices/system/cpu/cpu1/uevent", "");
        let domains = HostFreqDomains::probe(&root.0);
        assert_eq!(domains.domains(), [vec![0], vec![1]]);
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

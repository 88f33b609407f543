//! Facts about the host, all probed here: its online cores, the P-state ladder its
//! cpufreq offers, its frequency domains; and what the VMM does to host threads
//! (pinning them to cores). `compart-acpi` stays pure: it gets these as values.
//!
//! The probing functions take the root of the file system (`/` in production, a fake
//! tree in tests) and read `sys/devices/system/cpu/...` and `proc/cpuinfo` below it.
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
//! cpufreq is its own domain. Where the frequency backends write (cpufreq limits, the
//! MSR devices) and whether the CPU is Intel's are here too; whether those can be
//! *written* is the backends' own probe (`pstate/backend.rs`), since only opening
//! them for writing tells.
//!
//! (`compart_channel::host::pin_current_thread` pins the calling thread to one CPU for
//! the channel crate's host-thread tests and benchmarks; the VMM pins any thread, by
//! id, to a set of cores, which is why both exist.)

use std::fmt;
use std::fs;
use std::path::Path;

use compart_acpi::{ladder, HostFreqDomains, Mhz, PStateTable};

const CPU_DIR: &str = "sys/devices/system/cpu";

/// A host CPU number, as `sched_setaffinity` and `/sys/devices/system/cpu` count them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct HostCore(pub u32);

impl fmt::Display for HostCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Pins thread `tid` (0: the calling thread) to `cores`.
pub fn pin_thread(tid: i32, cores: &[HostCore]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cores {
        if c.0 as usize >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::other(format!("core {c} is out of range")));
        }
        // SAFETY: the index was checked against CPU_SETSIZE.
        unsafe { libc::CPU_SET(c.0 as usize, &mut set) };
    }
    // SAFETY: `tid` names a thread (0 is the caller); `set` is a valid cpu_set_t of the
    // size given.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Formats cores as `0-3,6`.
pub fn core_list(cores: &[HostCore]) -> String {
    let mut v: Vec<u32> = cores.iter().map(|c| c.0).collect();
    v.sort_unstable();
    v.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// Parses a Linux CPU list (`0-3,6`), as in `/sys/devices/system/cpu/online`.
pub fn parse_core_list(s: &str) -> Option<Vec<HostCore>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 65536 {
                    return None;
                }
                out.extend((a..=b).map(HostCore));
            }
            None => out.push(HostCore(part.trim().parse().ok()?)),
        }
    }
    Some(out)
}

/// The cores online on this host, from `/sys/devices/system/cpu/online`, or failing
/// that the cores this process may run on.
pub fn online_host_cores() -> Vec<HostCore> {
    if let Some(v) = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_core_list(&s))
    {
        if !v.is_empty() {
            return v;
        }
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n as u32).map(HostCore).collect()
}

/// The cpufreq limit the `cpufreq` frequency backend writes for `core`.
pub fn cpufreq_max_freq_file(root: &Path, core: HostCore) -> std::path::PathBuf {
    root.join(format!("{CPU_DIR}/cpu{core}/cpufreq/scaling_max_freq"))
}

/// The MSR device of `core` (the `msr` module's), which the `msr` backend uses.
pub fn msr_device(root: &Path, core: HostCore) -> std::path::PathBuf {
    root.join(format!("dev/cpu/{core}/msr"))
}

/// Whether the host CPU is Intel's (whose IA32_PERF_CTL ratios the `msr` backend
/// writes), from `/proc/cpuinfo`.
pub fn is_intel(root: &Path) -> bool {
    fs::read_to_string(root.join("proc/cpuinfo")).is_ok_and(|c| c.contains("GenuineIntel"))
}

/// [`parse_core_list`] as plain CPU numbers.
fn parse_cpus(s: &str) -> Option<Vec<u32>> {
    parse_core_list(s).map(|v| v.into_iter().map(|c| c.0).collect())
}

/// Where a host ladder came from (logged at start-up).
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

impl fmt::Display for LadderSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LadderSource::CpufreqAvailable => f.write_str("cpufreq's available frequencies"),
            LadderSource::CpufreqRange => f.write_str("cpufreq's frequency range"),
            LadderSource::ModelName(m) => write!(f, "the CPU model name's {m}"),
            LadderSource::CpuMhz(m) => write!(f, "/proc/cpuinfo's cpu MHz ({m})"),
            LadderSource::Fallback => f.write_str("a default (the host says nothing)"),
        }
    }
}

/// The P-state ladder of host CPU `cpu`, reading the tree under `root` (see the module
/// docs).
pub fn ladder(root: &Path, cpu: u32) -> HostLadder {
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

/// The frequency domains of the host whose root is `root` (see the module docs).
pub fn freq_domains(root: &Path) -> HostFreqDomains {
    let cpu_dir = root.join(CPU_DIR);
    let cpus = fs::read_to_string(cpu_dir.join("online"))
        .ok()
        .and_then(|t| parse_cpus(&t))
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| list_cpu_dirs(&cpu_dir));
    let sets = cpus
        .iter()
        .map(|&cpu| {
            let cpufreq = cpu_dir.join(format!("cpu{cpu}/cpufreq"));
            ["freqdomain_cpus", "related_cpus"]
                .iter()
                .find_map(|f| {
                    let list = parse_cpus(&fs::read_to_string(cpufreq.join(f)).ok()?)?;
                    list.contains(&cpu).then_some(list)
                })
                .unwrap_or_else(|| vec![cpu])
        })
        .collect();
    HostFreqDomains::from_sets(sets)
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

/// The names of the entries of directory `dir` (none if it cannot be read), sorted:
/// the network interfaces (`/sys/class/net`) or namespaces (`/run/netns`) there are.
pub fn names_in(dir: impl AsRef<std::path::Path>) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
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
                .join(format!("compart-vmm-host-{name}-{}", std::process::id()));
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
        let ladder = ladder(&root.0, 0);
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
        let ladder = ladder(&root.0, 1);
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
        let ladder = ladder(&root.0, 0);
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
        let ladder = ladder(&root.0, 0);
        assert_eq!(ladder.source, LadderSource::CpuMhz(Mhz(2596)));
        assert_eq!(mhz(&ladder.table), [2596, 2271, 1947, 1622, 1298]);
    }

    #[test]
    fn ladder_of_an_empty_host_is_the_fallback() {
        let root = FakeRoot::new("empty");
        let ladder = ladder(&root.0, 0);
        assert_eq!(ladder.source, LadderSource::Fallback);
        assert_eq!(ladder.table.p0().frequency, ladder::DEFAULT_NOMINAL);
    }

    #[test]
    fn this_host_has_a_ladder() {
        assert!(!ladder(Path::new("/"), 0).table.is_empty());
    }

    #[test]
    fn core_lists_parse_like_the_kernel_writes_them_and_format_back() {
        let v = parse_core_list("0-3,6,8-9\n").unwrap();
        assert_eq!(core_list(&v), "0-3,6,8-9");
        assert_eq!(
            parse_cpus("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpus("5"), Some(vec![5]));
        assert!(parse_core_list("3-1").is_none());
        assert!(parse_core_list("x").is_none());
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
        let domains = freq_domains(&root.0);
        assert_eq!(domains.domains(), [vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(domains.domain_of(3), Some(1));
        assert_eq!(domains.domain_of(9), None);
    }

    #[test]
    fn domains_without_cpufreq_are_one_per_cpu() {
        let root = FakeRoot::new("nocpufreq");
        root.write("sys/devices/system/cpu/cpu0/uevent", "")
            .write("sys/devices/system/cpu/cpu1/uevent", "");
        let domains = freq_domains(&root.0);
        assert_eq!(domains.domains(), [vec![0], vec![1]]);
    }
}

//! Where a guest's effective frequency becomes real: the host's cpufreq limits, the
//! host's performance-control MSR (the thesis's own method), or soft scaling of the
//! vCPU thread. Chosen automatically (cpufreq, then msr, then soft) or named in the
//! topology; a backend that cannot work here says why and the VMM falls back to soft.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use compart_acpi::Mhz;

use crate::host;
use crate::topology::{BackendChoice, HostCore};

/// Applies per-core frequencies on the host.
pub trait FreqBackend: fmt::Debug + Send + Sync {
    /// Short name for logs and status.
    fn name(&self) -> &'static str;
    /// Whether vCPU threads throttle themselves (and C0 time is scaled).
    fn is_soft(&self) -> bool;
    /// Sets host core `core` to run at `mhz` (the fastest any vCPU on it needs).
    fn set_core(&self, core: HostCore, mhz: Mhz) -> std::io::Result<()>;
}

/// Soft scaling: nothing to set on the host; each vCPU thread duty-cycles itself.
#[derive(Debug)]
pub struct Soft;

impl FreqBackend for Soft {
    fn name(&self) -> &'static str {
        "soft"
    }
    fn is_soft(&self) -> bool {
        true
    }
    fn set_core(&self, _: HostCore, _: Mhz) -> std::io::Result<()> {
        Ok(())
    }
}

/// Host cpufreq: `scaling_max_freq` of each core the stack uses, restored on drop.
#[derive(Debug)]
pub struct Cpufreq {
    root: PathBuf,
    saved: Mutex<BTreeMap<u32, String>>,
}

impl Cpufreq {
    fn max_freq_file(&self, core: u32) -> PathBuf {
        host::cpufreq_max_freq_file(&self.root, HostCore(core))
    }

    /// cpufreq on the cores the stack uses, or why not.
    pub fn probe(root: &Path, cores: &[HostCore]) -> Result<Self, String> {
        let b = Cpufreq {
            root: root.to_path_buf(),
            saved: Mutex::new(BTreeMap::new()),
        };
        for c in cores {
            let f = b.max_freq_file(c.0);
            let old = fs::read_to_string(&f)
                .map_err(|e| format!("no cpufreq on host core {c} ({}: {e})", f.display()))?;
            fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .map_err(|e| format!("cannot write {}: {e}", f.display()))?;
            b.saved.lock().unwrap().insert(c.0, old.trim().to_string());
        }
        Ok(b)
    }
}

impl FreqBackend for Cpufreq {
    fn name(&self) -> &'static str {
        "cpufreq"
    }
    fn is_soft(&self) -> bool {
        false
    }
    fn set_core(&self, core: HostCore, mhz: Mhz) -> std::io::Result<()> {
        fs::write(
            self.max_freq_file(core.0),
            format!("{}\n", u64::from(mhz.0) * 1000),
        )
    }
}

impl Drop for Cpufreq {
    fn drop(&mut self) {
        for (core, old) in self.saved.lock().unwrap().iter() {
            let _ = fs::write(self.max_freq_file(*core), old);
        }
    }
}

/// IA32_PERF_CTL (0x199) of each core through `/dev/cpu/N/msr`: bits 15:8 are the
/// target ratio in 100 MHz units (Intel). Restored to the highest ratio on drop.
#[derive(Debug)]
pub struct Msr {
    root: PathBuf,
    touched: Mutex<BTreeMap<u32, u64>>,
}

/// The file offset of IA32_PERF_CTL in `/dev/cpu/N/msr` is its MSR number.
const IA32_PERF_CTL: u64 = compart_abi::msr::PERF_CTL as u64;

impl Msr {
    fn dev(&self, core: u32) -> PathBuf {
        host::msr_device(&self.root, HostCore(core))
    }

    /// The MSR backend on the cores the stack uses, or why not.
    pub fn probe(root: &Path, cores: &[HostCore]) -> Result<Self, String> {
        if !host::is_intel(root) {
            return Err(
                "the host CPU is not Intel: IA32_PERF_CTL ratios are Intel's, and AMD's \
                 P-state MSRs (C001_0062) are not driven"
                    .into(),
            );
        }
        let b = Msr {
            root: root.to_path_buf(),
            touched: Mutex::new(BTreeMap::new()),
        };
        for c in cores {
            let dev = b.dev(c.0);
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)
                .map_err(|e| {
                    format!(
                        "cannot open {} ({e}; is the msr module loaded?)",
                        dev.display()
                    )
                })?;
            let mut v = [0u8; 8];
            f.read_exact_at(&mut v, IA32_PERF_CTL)
                .map_err(|e| format!("cannot read IA32_PERF_CTL of core {c}: {e}"))?;
            b.touched.lock().unwrap().insert(c.0, u64::from_le_bytes(v));
        }
        Ok(b)
    }
}

impl FreqBackend for Msr {
    fn name(&self) -> &'static str {
        "msr"
    }
    fn is_soft(&self) -> bool {
        false
    }
    fn set_core(&self, core: HostCore, mhz: Mhz) -> std::io::Result<()> {
        let f = fs::OpenOptions::new().write(true).open(self.dev(core.0))?;
        let ratio = u64::from(mhz.0 / 100).clamp(1, 0xff);
        f.write_all_at(&(ratio << 8).to_le_bytes(), IA32_PERF_CTL)
    }
}

impl Drop for Msr {
    fn drop(&mut self) {
        for (core, old) in self.touched.lock().unwrap().iter() {
            if let Ok(f) = fs::OpenOptions::new().write(true).open(self.dev(*core)) {
                let _ = f.write_all_at(&old.to_le_bytes(), IA32_PERF_CTL);
            }
        }
    }
}

/// Picks the backend for `choice` on the host under `root` (`/` normally), for the
/// cores the stack uses. Returns it with a line per backend that was passed over.
pub fn select(
    choice: BackendChoice,
    root: &Path,
    cores: &[HostCore],
) -> (Box<dyn FreqBackend>, Vec<String>) {
    let mut notes = Vec::new();
    let order: &[BackendChoice] = match choice {
        BackendChoice::Auto => &[BackendChoice::Cpufreq, BackendChoice::Msr],
        BackendChoice::Cpufreq => &[BackendChoice::Cpufreq],
        BackendChoice::Msr => &[BackendChoice::Msr],
        BackendChoice::Soft => &[],
    };
    for c in order {
        let probed: Result<Box<dyn FreqBackend>, String> = match c {
            BackendChoice::Cpufreq => Cpufreq::probe(root, cores).map(|b| Box::new(b) as _),
            BackendChoice::Msr => Msr::probe(root, cores).map(|b| Box::new(b) as _),
            _ => continue,
        };
        match probed {
            Ok(b) => return (b, notes),
            Err(why) => notes.push(format!("frequency backend {c}: unavailable: {why}")),
        }
    }
    (Box::new(Soft), notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("compart-backend-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn without_cpufreq_or_msr_auto_falls_back_to_soft_and_says_why() {
        let root = fake_root("none");
        fs::create_dir_all(root.join("proc")).unwrap();
        fs::write(root.join("proc/cpuinfo"), "vendor_id\t: AuthenticAMD\n").unwrap();
        let (b, notes) = select(BackendChoice::Auto, &root, &[HostCore(0)]);
        assert_eq!(b.name(), "soft");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0]
                .starts_with("frequency backend cpufreq: unavailable: no cpufreq on host core 0"),
            "{notes:?}"
        );
        assert!(notes[1].contains("not Intel"), "{notes:?}");
    }

    #[test]
    fn cpufreq_limits_are_set_and_restored() {
        let root = fake_root("cpufreq");
        let f = root.join("sys/devices/system/cpu/cpu1/cpufreq/scaling_max_freq");
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, "3000000\n").unwrap();
        {
            let (b, notes) = select(BackendChoice::Auto, &root, &[HostCore(1)]);
            assert!(notes.is_empty());
            assert_eq!(b.name(), "cpufreq");
            b.set_core(HostCore(1), Mhz(1500)).unwrap();
            assert_eq!(fs::read_to_string(&f).unwrap(), "1500000\n");
        }
        assert_eq!(fs::read_to_string(&f).unwrap().trim(), "3000000");
    }

    #[test]
    fn an_explicit_soft_choice_probes_nothing() {
        let (b, notes) = select(
            BackendChoice::Soft,
            Path::new("/nonexistent"),
            &[HostCore(0)],
        );
        assert!(b.is_soft());
        assert!(notes.is_empty());
    }
}

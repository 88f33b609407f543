//! Measuring one point: start the topology in this process, wait for the iperf3
//! server and the stack's address, run stock `iperf3 -c -J` in the NIC's namespace
//! (which the VMM creates and deletes), count each vCPU thread's CPU time, stop.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::measure::{busy_fraction, host_jiffies, own_jiffies, parse_iperf3_json, schedstat};
use crate::console::{ConsoleLine, ConsoleSink};

/// Cores other processes may keep busy during a point before it is measured again
/// (quiet, this host measures ≈ 0.2: the kernel's network work that no process is
/// charged for).
pub const BUSY_LIMIT: f64 = 0.6;
/// Times a point is measured again while others keep the machine busy.
pub const BUSY_RETRIES: u32 = 2;

/// Re-measurements a whole run may spend on a busy machine (bounds its wall time).
pub const MAX_BUSY_RETRIES: u32 = 15;

/// How points are measured.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds of each iperf3 run (`-t`).
    pub secs: u32,
    /// Seconds iperf3 omits at the start (`-O`, TCP's slow start).
    pub omit: u32,
    /// Repetitions of each point.
    pub reps: u32,
    /// Where the CSV and SVG files go.
    pub out: PathBuf,
}

/// What a point measured: per repetition.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Gbit/s the iperf3 client received.
    pub gbps: Vec<f64>,
    /// Retransmissions the stack's sender reported, summed.
    pub retransmits: u64,
    /// Per guest, the fraction of one core its vCPU threads were busy, per repetition.
    pub busy: Vec<(String, Vec<f64>)>,
    /// Cores busy with other processes than this one and its iperf3 clients while
    /// iperf3 ran (from `/proc/stat`): the machine's noise.
    pub others_load: f64,
    /// Why the point has no throughput, if it failed.
    pub failure: Option<String>,
    /// Seconds the point took, boot to stop.
    pub wall_s: f64,
}

/// Why a run ended early.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
    /// Something outside a point failed (a file, a tool).
    #[error("{0}")]
    Failed(String),
}

/// The progress line on stderr: done/total, the point, the time left.
#[derive(Debug)]
pub struct Progress {
    /// Points planned (grows when a search needs more).
    pub total: usize,
    /// Points measured.
    pub done: usize,
    spent: f64,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            spent: 0.0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, what: &str, guess_per_point: f64) {
        let per = if self.done > 0 {
            self.spent / self.done as f64
        } else {
            guess_per_point
        };
        let left = (self.total.saturating_sub(self.done)) as f64 * per;
        let width = 24;
        let filled = (self.done * width)
            .checked_div(self.total.max(1))
            .unwrap_or(0)
            .min(width);
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width - filled));
        let line = format!(
            "[{bar}] {}/{} {what} · ~{}m{:02}s left",
            self.done.min(self.total),
            self.total,
            (left as u64) / 60,
            (left as u64) % 60
        );
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }

    /// Ends the progress line (before other output).
    pub fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

/// Measures points, each once per distinct topology.
#[derive(Debug)]
pub struct Runner {
    opts: Options,
    stop: Arc<AtomicBool>,
    memo: HashMap<String, Measured>,
    retries: u32,
    /// The progress line.
    pub progress: Progress,
}

/// Console lines kept per point: whether the iperf3 server listens, and the last few.
#[derive(Default)]
struct Console {
    listening: bool,
    tail: Vec<String>,
}

impl Runner {
    /// A runner; `stop` is set by the signal handler.
    pub fn new(opts: Options, stop: Arc<AtomicBool>, planned: usize) -> Runner {
        Runner {
            opts,
            stop,
            memo: HashMap::new(),
            retries: 0,
            progress: Progress::new(planned),
        }
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether `text` was measured already.
    pub fn known(&self, text: &str) -> bool {
        self.memo.contains_key(text)
    }

    /// Measures the topology `text` (once; later calls return the same figures),
    /// showing `what` on the progress line. A point that does not come up is
    /// tried once more, then recorded as failed.
    pub fn measure(
        &mut self,
        text: &str,
        netns: &str,
        addr: &str,
        port: u16,
        what: &str,
    ) -> Result<Measured, EvalError> {
        if let Some(m) = self.memo.get(text) {
            // Planned as a point of its own, it costs nothing.
            self.progress.total = self
                .progress
                .total
                .saturating_sub(1)
                .max(self.progress.done);
            return Ok(m.clone());
        }
        if self.stopped() {
            return Err(EvalError::Interrupted);
        }
        let guess = f64::from(self.opts.reps * (self.opts.secs + self.opts.omit + 1) + 5);
        self.progress.show(what, guess);
        let start = Instant::now();
        let mut m = self.measure_once(text, netns, addr, port)?;
        if m.failure.is_some() && !self.stopped() {
            log::warn!(
                "{what}: {}; trying once more",
                m.failure.as_deref().unwrap_or("")
            );
            m = self.measure_once(text, netns, addr, port)?;
        }
        // A point measured while other processes kept the machine busy is measured
        // again after a pause, twice at most; the quietest measurement is kept.
        for _ in 0..BUSY_RETRIES {
            if m.failure.is_some()
                || m.others_load <= BUSY_LIMIT
                || self.stopped()
                || self.retries >= MAX_BUSY_RETRIES
            {
                break;
            }
            self.retries += 1;
            log::warn!(
                "{what}: other processes kept {:.1} cores busy; measuring again",
                m.others_load
            );
            std::thread::sleep(Duration::from_secs(5));
            let again = self.measure_once(text, netns, addr, port)?;
            if again.failure.is_none() && again.others_load < m.others_load {
                m = again;
            }
        }
        m.wall_s = start.elapsed().as_secs_f64();
        self.progress.spent += m.wall_s;
        self.progress.done += 1;
        self.progress.total = self.progress.total.max(self.progress.done);
        self.progress.show(what, guess);
        self.memo.insert(text.to_string(), m.clone());
        Ok(m)
    }

    /// Measures `text` again and pools the new repetitions with those it had (the base
    /// of a figure, measured at its start and its end, spans the machine's changing
    /// load).
    pub fn measure_more(
        &mut self,
        text: &str,
        netns: &str,
        addr: &str,
        port: u16,
        what: &str,
    ) -> Result<Measured, EvalError> {
        let Some(old) = self.memo.remove(text) else {
            return self.measure(text, netns, addr, port, what);
        };
        self.progress.total += 1;
        let new = self.measure(text, netns, addr, port, what)?;
        let mut m = old.clone();
        if new.failure.is_none() {
            m.gbps.extend(&new.gbps);
            m.retransmits += new.retransmits;
            for (g, v) in &mut m.busy {
                if let Some((_, w)) = new.busy.iter().find(|(h, _)| h == g) {
                    v.extend(w);
                }
            }
            let (n0, n1) = (old.gbps.len() as f64, new.gbps.len() as f64);
            m.others_load = (old.others_load * n0 + new.others_load * n1) / (n0 + n1).max(1.0);
            m.wall_s += new.wall_s;
        }
        self.memo.insert(text.to_string(), m.clone());
        Ok(m)
    }

    fn measure_once(
        &self,
        text: &str,
        netns: &str,
        addr: &str,
        port: u16,
    ) -> Result<Measured, EvalError> {
        let topology =
            crate::Topology::parse(text, std::path::Path::new("."), &crate::host_facts())
                .map_err(|e| EvalError::Failed(format!("a point's topology is invalid: {e:?}")))?;
        let console = Arc::new(Mutex::new(Console::default()));
        let sink: ConsoleSink = {
            let console = console.clone();
            Arc::new(move |line: ConsoleLine| {
                let mut c = console.lock().unwrap_or_else(|e| e.into_inner());
                if line.text.contains("Server listening on") {
                    c.listening = true;
                }
                if !line.text.starts_with("acpi:") {
                    c.tail.push(format!("[{}] {}", line.guest, line.text));
                    if c.tail.len() > 12 {
                        c.tail.remove(0);
                    }
                }
            })
        };
        let vmm = match crate::start(&topology, sink) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Measured {
                    failure: Some(format!("the stack did not start: {e}")),
                    ..Measured::default()
                })
            }
        };
        let handle = vmm.handle();
        // Each vCPU thread publishes its id once it runs.
        let vcpus: usize = topology.guests.iter().map(|g| g.vcpus() as usize).sum();
        let t0 = Instant::now();
        let mut threads = vmm.vcpu_threads();
        while threads.len() < vcpus && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
            threads = vmm.vcpu_threads();
        }
        let waiter = std::thread::spawn(move || vmm.wait());
        let result = self.drive(&console, &threads, netns, addr, port);
        handle.stop();
        let _ = waiter.join();
        let tail = || {
            let c = console.lock().unwrap_or_else(|e| e.into_inner());
            c.tail.join(" / ")
        };
        match result {
            Ok(m) => Ok(m),
            Err(Drive::Stopped) => Err(EvalError::Interrupted),
            Err(Drive::Tool(e)) => Err(EvalError::Failed(e)),
            Err(Drive::Point(why)) => Ok(Measured {
                failure: Some(format!("{why}; console: {}", tail())),
                ..Measured::default()
            }),
        }
    }

    fn drive(
        &self,
        console: &Mutex<Console>,
        threads: &[crate::VcpuThreadInfo],
        netns: &str,
        addr: &str,
        port: u16,
    ) -> Result<Measured, Drive> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !console.lock().unwrap_or_else(|e| e.into_inner()).listening {
            if self.stopped() {
                return Err(Drive::Stopped);
            }
            if Instant::now() > deadline {
                return Err(Drive::Point(
                    "the iperf3 server never listened in 30 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let up = (0..20).any(|_| {
            !self.stopped()
                && Command::new("ip")
                    .args(["netns", "exec", netns, "ping", "-c", "1", "-W", "1", addr])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        });
        if self.stopped() {
            return Err(Drive::Stopped);
        }
        if !up {
            return Err(Drive::Point(format!(
                "the stack at {addr} never answered a ping"
            )));
        }
        let mut m = Measured::default();
        let mut names: Vec<String> = threads.iter().map(|t| t.guest.clone()).collect();
        names.dedup();
        m.busy = names.iter().map(|n| (n.clone(), Vec::new())).collect();
        let load0 = (host_jiffies(), own_jiffies(true));
        let started = Instant::now();
        for _ in 0..self.opts.reps {
            let before: Vec<Option<(u64, u64)>> =
                threads.iter().map(|t| schedstat(t.tid)).collect();
            let t0 = Instant::now();
            let r = self.iperf3(netns, addr, port)?;
            let wall = t0.elapsed();
            m.gbps.push(r.bits_per_second / 1e9);
            m.retransmits += r.retransmits.unwrap_or(0);
            for (name, v) in &mut m.busy {
                let ran: u64 = threads
                    .iter()
                    .zip(&before)
                    .filter(|(t, _)| &t.guest == name)
                    .filter_map(|(t, b)| Some(schedstat(t.tid)?.0.saturating_sub(b.as_ref()?.0)))
                    .sum();
                v.push(busy_fraction(ran, wall));
            }
        }
        if let ((Some((b0, t0)), Some(o0)), Some((b1, t1)), Some(o1)) =
            (load0, host_jiffies(), own_jiffies(true))
        {
            // Jiffies are 1/100 s (USER_HZ); total jiffies over wall time = host cores.
            let cores = (t1 - t0) as f64 / 100.0 / started.elapsed().as_secs_f64().max(1e-3);
            let others = (b1 - b0).saturating_sub(o1 - o0) as f64 / (t1 - t0).max(1) as f64;
            m.others_load = others * cores;
        }
        Ok(m)
    }

    fn iperf3(
        &self,
        netns: &str,
        addr: &str,
        port: u16,
    ) -> Result<super::measure::IperfResult, Drive> {
        let json = self.opts.out.join(".iperf3.json");
        let file = std::fs::File::create(&json)
            .map_err(|e| Drive::Tool(format!("creating {}: {e}", json.display())))?;
        let (secs, omit) = (self.opts.secs.to_string(), self.opts.omit.to_string());
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "iperf3", "-c", addr, "-p"])
            .arg(port.to_string())
            .args([
                "-t",
                &secs,
                "-O",
                &omit,
                "-R",
                "-J",
                "--connect-timeout",
                "3000",
            ])
            .stdout(file)
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| Drive::Tool(format!("running iperf3 in netns {netns}: {e}")))?;
        let deadline =
            Instant::now() + Duration::from_secs(u64::from(self.opts.secs + self.opts.omit) + 20);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => {}
                Err(e) => return Err(Drive::Tool(format!("waiting for iperf3: {e}"))),
            }
            if self.stopped() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                if self.stopped() {
                    return Err(Drive::Stopped);
                }
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&json).unwrap_or_default();
        let _ = std::fs::remove_file(&json);
        match (status, parse_iperf3_json(&text)) {
            (_, Ok(r)) if r.bits_per_second > 0.0 => Ok(r),
            (None, _) => Err(Drive::Point("iperf3 did not finish in time".into())),
            (_, Ok(_)) => Err(Drive::Point("iperf3 measured nothing".into())),
            (Some(_), Err(e)) => Err(Drive::Point(e)),
        }
    }
}

enum Drive {
    Stopped,
    Tool(String),
    Point(String),
}

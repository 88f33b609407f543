//! `compart eval FIGURE`: the experiments behind the thesis's figures 4.1–4.8, run on
//! this host end to end, as analogues on soft-scaled cores.
//!
//! Each point is a topology (a base one with every server's `ppc`/`pstate` and cores
//! written in, [`stack`]), started in this process, driven by stock `iperf3 -c -R -J`
//! in the NIC's namespace (the stack sends, as in the thesis), measured (throughput,
//! vCPU busy time per guest, [`measure`]) over repetitions, and stopped ([`runner`]).
//! A figure writes `FIGURE.csv` row by row and `FIGURE.svg` at its end ([`svg`]);
//! [`figures`] defines the points and checks the thesis's findings.

pub mod figures;
pub mod measure;
pub mod runner;
pub mod stack;
pub mod svg;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use figures::{run, Plan, FIGURES};
pub use runner::{EvalError, Measured, Options};

/// A relative drop within this is "keeps the base throughput".
pub const TOLERANCE: f64 = 0.05;

/// The CSV header. `busy`: per guest, the mean ± sd over repetitions of the fraction of
/// one full-speed core its vCPU threads ran; `busy_of_scaled_core`: the same over what
/// its soft-scaled core offers (f/fmax of a core), the analogue of the CPU use a core
/// at that frequency would show; `others_load`: cores busy with other processes
/// meanwhile (the machine is shared).
pub const CSV_HEADER: &str = "figure,point,series,x,label,placement,tuple_order,tuple_mhz,\
reps,gbps_mean,gbps_sd,gbps_min,gbps_max,gbps_runs,retransmits,busy,busy_of_scaled_core,others_load,failure,wall_s";

/// Quotes a CSV field where it must be.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A figure's CSV, written and flushed row by row (a Ctrl-C leaves what was measured).
#[derive(Debug)]
pub struct CsvFile {
    file: std::fs::File,
    rows: usize,
}

impl CsvFile {
    /// Creates `path` with the header.
    pub fn create(path: &Path) -> std::io::Result<CsvFile> {
        let mut file = std::fs::File::create(path)?;
        writeln!(file, "{CSV_HEADER}")?;
        Ok(CsvFile { file, rows: 0 })
    }

    /// Appends one row of fields (quoted as needed).
    pub fn row(&mut self, fields: &[String]) -> std::io::Result<()> {
        let v: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        writeln!(self.file, "{}", v.join(","))?;
        self.file.flush()?;
        self.rows += 1;
        Ok(())
    }
}

/// Installs SIGINT/SIGTERM handlers that set the returned flag.
pub fn stop_flag() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(libc::SIGINT, flag.clone())?;
    signal_hook::flag::register(libc::SIGTERM, flag.clone())?;
    Ok(flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_where_needed() {
        assert_eq!(csv_field("a"), "a");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(CSV_HEADER.split(',').count(), 20);
    }
}

//! A small stderr logger: `compart: LEVEL: message`. The level comes from
//! `COMPART_LOG` (`error`, `warn`, `info`, `debug`, `trace`; default `info`).

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) && r.target().starts_with("compart") {
            let level = match r.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            eprintln!("compart: {level}: {}", r.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once; later calls do nothing).
pub fn init() {
    let level = std::env::var("COMPART_LOG")
        .ok()
        .and_then(|s| s.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}

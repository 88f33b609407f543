//! iperf3's text report: amounts in binary units (`KBytes`, `MBytes`, … of 1024),
//! rates in decimal ones (`Mbits/sec`, … of 1000), with `unit_snprintf`'s precision, and
//! its line layout.

use core::fmt::{self, Write};

/// An amount of bytes, as iperf3 prints it (`27.4 GBytes`).
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

/// A rate in bits per second, as iperf3 prints it (`23.5 Gbits/sec`).
#[derive(Debug, Clone, Copy)]
pub struct Rate(pub f64);

impl Rate {
    /// The rate of `bytes` in `secs` seconds (0 for no time).
    pub fn of(bytes: u64, secs: f64) -> Rate {
        #[allow(clippy::cast_precision_loss)]
        let bits = bytes as f64 * 8.0;
        Rate(if secs > 0.0 { bits / secs } else { 0.0 })
    }
}

/// `v` scaled into `units` by `base`, with 2, 1 or 0 decimals as iperf3.
fn scaled(f: &mut fmt::Formatter<'_>, mut v: f64, base: f64, units: &[&str; 5]) -> fmt::Result {
    let mut u = 0;
    while v >= base && u + 1 < units.len() {
        v /= base;
        u += 1;
    }
    let unit = units[u];
    if v < 9.995 {
        write!(f, "{v:4.2} {unit}")
    } else if v < 99.95 {
        write!(f, "{v:4.1} {unit}")
    } else {
        write!(f, "{v:4.0} {unit}")
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[allow(clippy::cast_precision_loss)]
        let v = self.0 as f64;
        scaled(
            f,
            v,
            1024.0,
            &["Bytes", "KBytes", "MBytes", "GBytes", "TBytes"],
        )
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        scaled(
            f,
            self.0,
            1000.0,
            &["bits", "Kbits", "Mbits", "Gbits", "Tbits"],
        )?;
        f.write_str("/sec")
    }
}

/// The header above the lines.
pub const HEADER: &str = "[ ID] Interval           Transfer     Bitrate";

/// One line: a stream's (or, with no id, the sum's) bytes over an interval.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// The stream id; `None` for `[SUM]`.
    pub id: Option<i32>,
    /// Seconds from the start of the test.
    pub from: f64,
    /// Seconds from the start of the test.
    pub to: f64,
    /// Bytes in the interval.
    pub bytes: u64,
    /// `sender`, `receiver`, or nothing for an interval line.
    pub role: &'a str,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(f, "[{id:3}]")?,
            None => f.write_str("[SUM]")?,
        }
        let secs = self.to - self.from;
        write!(
            f,
            " {:6.2}-{:<6.2} sec  {}  {}",
            self.from,
            self.to,
            Bytes(self.bytes),
            Rate::of(self.bytes, secs)
        )?;
        if !self.role.is_empty() {
            write!(f, "  {}", self.role)?;
        }
        Ok(())
    }
}

/// The separator before the summary.
pub const SEPARATOR: &str = "- - - - - - - - - - - - - - - - - - - - - - - - -";

/// Print `line` and a newline to `out`, ignoring a full console.
pub fn println(out: &mut dyn Write, line: fmt::Arguments<'_>) {
    let _ = out.write_fmt(line);
    let _ = out.write_char('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn amounts_and_rates_read_as_iperf3_prints_them() {
        assert_eq!(Bytes(0).to_string(), "0.00 Bytes");
        assert_eq!(Bytes(1023).to_string(), "1023 Bytes");
        assert_eq!(Bytes(10 << 20).to_string(), "10.0 MBytes");
        assert_eq!(Bytes(5_873_000_000).to_string(), "5.47 GBytes");
        assert_eq!(Rate::of(2_937_500_000, 1.0).to_string(), "23.5 Gbits/sec");
        assert_eq!(Rate::of(124, 1.0).to_string(), " 992 bits/sec");
        assert_eq!(Rate::of(125, 1.0).to_string(), "1.00 Kbits/sec");
        assert_eq!(Rate::of(12_500_000, 0.0).to_string(), "0.00 bits/sec");
    }

    #[test]
    fn a_line_has_iperfs_layout() {
        let l = Line {
            id: Some(1),
            from: 0.0,
            to: 10.0,
            bytes: 29_360_128_000,
            role: "sender",
        };
        assert_eq!(
            l.to_string(),
            "[  1]   0.00-10.00  sec  27.3 GBytes  23.5 Gbits/sec  sender"
        );
        let s = Line {
            id: None,
            from: 1.0,
            to: 2.0,
            bytes: 1 << 20,
            role: "",
        };
        assert_eq!(
            s.to_string(),
            "[SUM]   1.00-2.00   sec  1.00 MBytes  8.39 Mbits/sec"
        );
    }
}

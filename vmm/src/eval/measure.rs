//! Measurements shared by `compart eval` and the benchmarks: a thread's CPU time from
//! `/proc`, stock iperf3's JSON, and the mean and spread of repetitions.

use std::time::Duration;

/// Nanoseconds thread `tid` of this process has run, and has waited on a run queue
/// (`/proc/self/task/TID/schedstat`); `None` if the thread is gone.
pub fn schedstat(tid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut v = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((v.next()??, v.next()??))
}

/// (busy, total) jiffies of all host CPUs (`/proc/stat`'s first line; idle and iowait
/// are not busy).
pub fn host_jiffies() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Some((total.saturating_sub(idle), total))
}

/// CPU time of this process in jiffies (`/proc/self/stat` utime + stime), with that of
/// its waited-for children (cutime + cstime) if `children`.
pub fn own_jiffies(children: bool) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14–17 of stat; `after` starts at field 3.
    let own = f.get(11)? + f.get(12)?;
    Some(if children {
        own + f.get(13)? + f.get(14)?
    } else {
        own
    })
}

/// Fraction of one core a thread was busy: `ran_ns` of CPU time over `wall`.
pub fn busy_fraction(ran_ns: u64, wall: Duration) -> f64 {
    let w = wall.as_secs_f64();
    if w <= 0.0 {
        0.0
    } else {
        ran_ns as f64 / 1e9 / w
    }
}

/// What one stock `iperf3 -c … -J` run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfResult {
    /// Bits per second the receiving side counted (`end.sum_received`).
    pub bits_per_second: f64,
    /// Retransmissions the sender counted, where it reports them.
    pub retransmits: Option<u64>,
}

/// Reads iperf3's `-J` output: the receiver's throughput, or iperf3's own error.
pub fn parse_iperf3_json(text: &str) -> Result<IperfResult, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("iperf3 printed no JSON ({e})"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let end = &v["end"];
    let bits_per_second = end["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or("iperf3's JSON has no end.sum_received.bits_per_second")?;
    Ok(IperfResult {
        bits_per_second,
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
    })
}

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_json_gives_the_receivers_rate_or_its_error() {
        let ok =
            r#"{"end":{"sum_sent":{"retransmits":3},"sum_received":{"bits_per_second":1.5e9}}}"#;
        assert_eq!(
            parse_iperf3_json(ok).unwrap(),
            IperfResult {
                bits_per_second: 1.5e9,
                retransmits: Some(3)
            }
        );
        let err = r#"{"start":{},"error":"unable to connect to server"}"#;
        assert_eq!(
            parse_iperf3_json(err).unwrap_err(),
            "iperf3: unable to connect to server"
        );
        assert!(parse_iperf3_json("iperf3: error").is_err());
        assert!(parse_iperf3_json(r#"{"end":{}}"#).is_err());
    }

    #[test]
    fn mean_and_spread() {
        assert_eq!(mean_sd(&[]), (0.0, 0.0));
        assert_eq!(mean_sd(&[2.0]), (2.0, 0.0));
        let (m, s) = mean_sd(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
    }

    #[test]
    fn this_threads_schedstat_reads_and_busy_is_a_fraction() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        assert!(schedstat(tid).is_some());
        assert!(schedstat(-5).is_none());
        assert_eq!(busy_fraction(500_000_000, Duration::from_secs(1)), 0.5);
        assert_eq!(busy_fraction(1, Duration::ZERO), 0.0);
        let (busy, total) = host_jiffies().unwrap();
        assert!(busy <= total && total > 0);
        assert!(own_jiffies(true).unwrap() >= own_jiffies(false).unwrap());
    }
}

//! What the benchmarks share: latency histograms, progress bars, the open-files
//! limit and the server's memory.

use std::io::IsTerminal;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// A latency histogram in microseconds (3 significant digits, growing as needed).
pub fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits are valid") // ok: a constant argument
}

/// Records `us` in `h`, growing it as needed (`saturating_record` would clamp
/// everything above its first, small, range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

/// Microseconds in `d`, for a histogram.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// The summary of `h` (recorded in microseconds); zeros when it is empty.
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| round3(us as f64 / 1000.0);
        if h.is_empty() {
            return Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: round3(h.mean() / 1000.0),
        }
    }

    /// `p50 1.234  p90 2.345  p99 3.456  max 9.876` (milliseconds).
    pub fn line(&self) -> String {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  (mean {:.3})",
            self.p50, self.p90, self.p99, self.max, self.mean
        )
    }
}

/// `x` rounded to 3 decimals (for JSON figures that read well).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `x` rounded to 1 decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A progress bar on stderr of `len` steps, or a hidden one when stderr is not a
/// terminal (so logs and pipes stay clean).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {msg}")
            .expect("a valid template") // ok: a constant template
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Raises the soft open-files limit (to the hard one) when `needed` descriptors
/// may not fit under it; warns when even the hard limit is too low.
pub fn ensure_open_files(needed: u64) {
    #[cfg(unix)]
    {
        let soft = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok((soft, _)) => soft,
            Err(_) => return,
        };
        if soft >= needed {
            return;
        }
        match rlimit::increase_nofile_limit(needed) {
            Ok(now) if now >= needed => {}
            Ok(now) => eprintln!(
                "kv bench: only {now} open files allowed, {needed} may be needed; \
                 raise the limit (ulimit -n {needed}) and run again"
            ),
            Err(e) => eprintln!("kv bench: cannot raise the open-files limit: {e}"),
        }
    }
    #[cfg(not(unix))]
    let _ = needed;
}

/// The resident memory of process `pid` in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {path} (--server-pid): {e}"))?;
    status
        .lines()
        .find_map(|line| {
            let kib = line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?;
            kib.trim().parse().ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no VmRSS line in {path}"))
}

/// What /proc/PID/status says of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessStatus {
    /// VmRSS, in KiB.
    pub rss_kib: u64,
    /// Threads.
    pub threads: u64,
}

/// The resident memory and threads of process `pid` (from /proc/PID/status).
pub fn process_status(pid: u32) -> anyhow::Result<ProcessStatus> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {path} (--server-pid): {e}"))?;
    let field = |name: &str, unit: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.trim().strip_suffix(unit)?;
            value.trim().parse::<u64>().ok()
        })
    };
    match (field("VmRSS:", "kB"), field("Threads:", "")) {
        (Some(rss_kib), Some(threads)) => Ok(ProcessStatus { rss_kib, threads }),
        _ => Err(anyhow::anyhow!("no VmRSS or Threads line in {path}")),
    }
}

/// The open file descriptors of process `pid` (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {path} (--server-pid): {e}"))?;
    Ok(entries.count() as u64)
}

/// The soft open-files limit of process `pid` (from /proc/PID/limits), if known.
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_in_milliseconds() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record(&mut h, us * 10);
        }
        let l = Latency::of(&h);
        assert!((l.p50 - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.p99 - 9.9).abs() < 0.01, "{l:?}");
        assert!((l.max - 10.0).abs() < 0.01, "{l:?}");
        assert_eq!(Latency::of(&histogram()).max, 0.0);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn own_rss_is_readable() {
        assert!(rss_kib(std::process::id()).expect("VmRSS") > 0);
        let status = process_status(std::process::id()).expect("status");
        assert!(status.rss_kib > 0 && status.threads >= 1, "{status:?}");
        assert!(open_fds(std::process::id()).expect("fds") >= 3);
        assert!(open_files_limit(std::process::id()).is_some());
    }
}

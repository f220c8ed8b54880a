//! CPU and memory of the system under test and of the generator itself, from /proc, once a
//! second — so a saturated generator is reported instead of being mistaken for a slow server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One process at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcUsage {
    /// Percent of one core over the last interval (200 = both cores of a 2-core machine).
    pub cpu_pct: f64,
    pub rss_mb: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub t_s: f64,
    /// When, in microseconds since the Unix epoch.
    pub at_us: u64,
    pub sut: Option<ProcUsage>,
    pub generator: ProcUsage,
    /// Busy share of all cores of the machine, percent (100 = every core busy).
    pub machine_busy_pct: f64,
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on every Linux port that matters;
/// asked from `getconf` once in case it is not).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU ticks of a process (all its threads).
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size in MB.
pub fn rss_mb(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// (busy, total) jiffies of the whole machine.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

struct Prev {
    at: Instant,
    sut: Option<u64>,
    generator: Option<u64>,
    machine: Option<(u64, u64)>,
}

/// Samples every `interval` until dropped or stopped.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: JoinHandle<()>,
}

impl Sampler {
    pub fn start(sut_pid: Option<u32>, interval: Duration) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let hz = clock_ticks();
            let sut_pid = sut_pid.map(|p| p.to_string());
            let started = Instant::now();
            let read = |at| Prev {
                at,
                sut: sut_pid.as_deref().and_then(cpu_ticks),
                generator: cpu_ticks("self"),
                machine: machine_ticks(),
            };
            let mut prev = read(Instant::now());
            let mut tick = tokio::time::interval_at(started + interval, interval);
            loop {
                tick.tick().await;
                let now = read(Instant::now());
                let secs = (now.at - prev.at).as_secs_f64().max(1e-6);
                let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
                    (Some(a), Some(b)) => b.saturating_sub(a) as f64 / hz / secs * 100.0,
                    _ => 0.0,
                };
                let machine_busy_pct = match (prev.machine, now.machine) {
                    (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                        (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0
                    }
                    _ => 0.0,
                };
                let sample = Sample {
                    t_s: (now.at - started).as_secs_f64(),
                    at_us: crate::payload::now_us(),
                    sut: sut_pid.as_deref().and_then(|pid| {
                        Some(ProcUsage {
                            cpu_pct: pct(prev.sut, now.sut),
                            rss_mb: rss_mb(pid)?,
                        })
                    }),
                    generator: ProcUsage {
                        cpu_pct: pct(prev.generator, now.generator),
                        rss_mb: rss_mb("self").unwrap_or(0.0),
                    },
                    machine_busy_pct,
                };
                out.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                prev = now;
            }
        });
        Sampler { samples, task }
    }

    /// The latest sample, if one was taken.
    pub fn latest(&self) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
    }

    /// Stops sampling and returns every sample.
    pub fn stop(self) -> Vec<Sample> {
        self.task.abort();
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Average and peak of a process's samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct UsageSummary {
    pub cpu_avg_pct: f64,
    pub cpu_max_pct: f64,
    pub rss_max_mb: f64,
}

impl UsageSummary {
    pub fn of(samples: impl Iterator<Item = ProcUsage>) -> UsageSummary {
        let (mut n, mut sum, mut max, mut rss) = (0usize, 0.0, 0.0f64, 0.0f64);
        for s in samples {
            n += 1;
            sum += s.cpu_pct;
            max = max.max(s.cpu_pct);
            rss = rss.max(s.rss_mb);
        }
        UsageSummary {
            cpu_avg_pct: if n > 0 { sum / n as f64 } else { 0.0 },
            cpu_max_pct: max,
            rss_max_mb: rss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        assert!(cpu_ticks("self").is_some());
        assert!(rss_mb("self").unwrap() > 0.0);
        let (busy, total) = machine_ticks().unwrap();
        assert!(busy <= total);
        assert!(clock_ticks() > 0.0);
    }
}

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

/// CPU ticks summed over processes (none if one of them cannot be read: it exited).
fn sum_ticks(pids: &[String]) -> Option<u64> {
    pids.iter().map(|p| cpu_ticks(p)).sum()
}

/// RSS summed over processes (those that cannot be read count 0).
fn sum_rss(pids: &[String]) -> f64 {
    pids.iter().filter_map(|p| rss_mb(p)).sum()
}

/// Samples every `interval` until dropped or stopped.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: JoinHandle<()>,
}

impl Sampler {
    pub fn start(sut_pid: Option<u32>, interval: Duration) -> Sampler {
        Sampler::start_many(sut_pid.into_iter().collect(), Vec::new(), interval)
    }

    /// Samples several server processes (summed: the nodes of a multi-node run) and the
    /// generator's own worker processes besides this one (summed into `generator`).
    pub fn start_many(sut_pids: Vec<u32>, generator_pids: Vec<u32>, interval: Duration) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let hz = clock_ticks();
            let sut: Vec<String> = sut_pids.iter().map(|p| p.to_string()).collect();
            let generator: Vec<String> = std::iter::once("self".to_string())
                .chain(generator_pids.iter().map(|p| p.to_string()))
                .collect();
            let started = Instant::now();
            let read = |at| Prev {
                at,
                sut: if sut.is_empty() {
                    None
                } else {
                    sum_ticks(&sut)
                },
                generator: sum_ticks(&generator),
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
                    sut: (!sut.is_empty() && now.sut.is_some()).then(|| ProcUsage {
                        cpu_pct: pct(prev.sut, now.sut),
                        rss_mb: sum_rss(&sut),
                    }),
                    generator: ProcUsage {
                        cpu_pct: pct(prev.generator, now.generator),
                        rss_mb: sum_rss(&generator),
                    },
                    machine_busy_pct,
                };
                out.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                prev = now;
            }
        });
        Sampler { samples, task }
    }

    /// Every sample so far.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

/// Who used the CPU during a phase of a run: the system under test, the generator, and
/// everything else on the machine (other work compiling on the same cores shows up there).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunUsage {
    pub sut: Option<UsageSummary>,
    pub generator: UsageSummary,
    /// Busy share of all cores (100 = every core busy).
    pub machine_busy_avg_pct: f64,
    /// CPU of every other process, percent of one core.
    pub other_load_pct: f64,
    /// Samples the numbers are made of.
    pub samples: usize,
}

impl RunUsage {
    /// The samples taken in `[from_us, to_us)`.
    pub fn of(samples: &[Sample], from_us: u64, to_us: u64) -> RunUsage {
        let run: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at_us >= from_us && s.at_us < to_us)
            .collect();
        let with_sut = run.iter().any(|s| s.sut.is_some());
        let sut = with_sut.then(|| UsageSummary::of(run.iter().filter_map(|s| s.sut)));
        let generator = UsageSummary::of(run.iter().map(|s| s.generator));
        let machine_busy_avg_pct = if run.is_empty() {
            0.0
        } else {
            run.iter().map(|s| s.machine_busy_pct).sum::<f64>() / run.len() as f64
        };
        let other_load_pct = (machine_busy_avg_pct * cores() as f64
            - sut.map(|s| s.cpu_avg_pct).unwrap_or(0.0)
            - generator.cpu_avg_pct)
            .max(0.0);
        RunUsage {
            sut,
            generator,
            machine_busy_avg_pct,
            other_load_pct,
            samples: run.len(),
        }
    }

    /// Both cores busy for most of the phase: the numbers are a shared-machine ceiling.
    pub fn machine_saturated(&self) -> bool {
        self.machine_busy_avg_pct > 90.0
    }

    /// The generator used (nearly) every core.
    pub fn generator_saturated(&self) -> bool {
        self.generator.cpu_avg_pct > 0.9 * cores() as f64 * 100.0
    }
}

/// Cores of this machine.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
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

    #[test]
    fn run_usage_takes_the_window_and_attributes_the_rest_to_others() {
        let at = |t: u64, sut: f64, generator: f64, busy: f64| Sample {
            t_s: t as f64,
            at_us: t * 1_000_000,
            sut: Some(ProcUsage {
                cpu_pct: sut,
                rss_mb: 10.0 + t as f64,
            }),
            generator: ProcUsage {
                cpu_pct: generator,
                rss_mb: 5.0,
            },
            machine_busy_pct: busy,
        };
        let samples = [
            at(1, 100.0, 50.0, 99.0),
            at(2, 60.0, 20.0, 50.0),
            at(3, 40.0, 20.0, 50.0),
            at(4, 100.0, 100.0, 100.0),
        ];
        let u = RunUsage::of(&samples, 2_000_000, 4_000_000);
        assert_eq!(u.samples, 2);
        let sut = u.sut.unwrap();
        assert!((sut.cpu_avg_pct - 50.0).abs() < 1e-9);
        assert!((sut.rss_max_mb - 13.0).abs() < 1e-9);
        assert!((u.machine_busy_avg_pct - 50.0).abs() < 1e-9);
        let expected_other = (50.0 * cores() as f64 - 50.0 - 20.0f64).max(0.0);
        assert!((u.other_load_pct - expected_other).abs() < 1e-9);
        assert!(!u.machine_saturated());
        assert_eq!(RunUsage::of(&samples, 10_000_000, 11_000_000).samples, 0);
    }
}

//! Evidence of what limits a run besides the two processes: the disk's fsync latency while the
//! run goes on (a probe writing 4 KiB and syncing it every 20 ms next to the server's data),
//! and the server's own histograms from `GET /metrics` (store commit time, batch size).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::{duration_histogram, LatencySummary};

/// Syncs a small file every 20 ms until stopped.
pub struct FsyncProbe {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<LatencySummary>>,
}

impl FsyncProbe {
    /// Starts probing in `dir` (the file is removed when the probe stops).
    pub fn start(dir: &Path) -> FsyncProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let path = dir.join(format!("fsync-probe-{}", std::process::id()));
        let thread = std::thread::Builder::new()
            .name("fsync-probe".into())
            .spawn(move || {
                let mut hist = duration_histogram();
                let Ok(mut f) = std::fs::File::create(&path) else {
                    return LatencySummary::default();
                };
                let block = [0x5au8; 4096];
                while !flag.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = f.write_all(&block).is_ok() && f.sync_data().is_ok();
                    if ok {
                        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    // A growing file: each sync has new data and metadata, like a commit.
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = std::fs::remove_file(&path);
                LatencySummary::of(&hist)
            })
            .ok();
        FsyncProbe { stop, thread }
    }

    pub fn stop(mut self) -> LatencySummary {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// Cumulative bucket counts of one Prometheus histogram: upper bound → count.
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    pub le: BTreeMap<u64, f64>,
    pub sum: f64,
    pub count: f64,
}

/// Bucket bounds are kept in micro-units so they sort as integers.
fn key(le: &str) -> Option<u64> {
    if le == "+Inf" {
        return Some(u64::MAX);
    }
    le.parse::<f64>().ok().map(|v| (v * 1e6).round() as u64)
}

/// The histograms named `names` in a Prometheus text exposition.
pub fn parse(text: &str, names: &[&str]) -> BTreeMap<String, Buckets> {
    let mut out: BTreeMap<String, Buckets> = BTreeMap::new();
    for line in text.lines() {
        let Some((metric, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        for name in names {
            let Some(rest) = metric.strip_prefix(name) else {
                continue;
            };
            let b = out.entry(name.to_string()).or_default();
            if let Some(labels) = rest.strip_prefix("_bucket{") {
                let le = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("le=\""))
                    .and_then(|l| l.strip_suffix('"').or(l.strip_suffix("\"}")));
                if let Some(k) = le.and_then(key) {
                    *b.le.entry(k).or_default() += value;
                }
            } else if rest.starts_with("_sum") {
                b.sum += value;
            } else if rest.starts_with("_count") {
                b.count += value;
            }
        }
    }
    out
}

/// What a histogram recorded between two scrapes: count, mean and bucket-bound quantiles.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BucketSummary {
    pub count: f64,
    pub mean: f64,
    /// Upper bound of the bucket holding the median (an over-estimate by at most a bucket).
    pub p50_le: f64,
    pub p99_le: f64,
}

impl BucketSummary {
    pub fn between(before: &Buckets, after: &Buckets) -> BucketSummary {
        let count = after.count - before.count;
        if count <= 0.0 {
            return BucketSummary::default();
        }
        let delta: Vec<(u64, f64)> = after
            .le
            .iter()
            .map(|(k, v)| (*k, v - before.le.get(k).copied().unwrap_or(0.0)))
            .collect();
        let q = |p: f64| {
            delta
                .iter()
                .find(|(_, c)| *c >= p * count)
                .map(|(k, _)| {
                    if *k == u64::MAX {
                        f64::INFINITY
                    } else {
                        *k as f64 / 1e6
                    }
                })
                .unwrap_or(f64::INFINITY)
        };
        BucketSummary {
            count,
            mean: (after.sum - before.sum) / count,
            p50_le: q(0.5),
            p99_le: q(0.99),
        }
    }
}

/// Scrapes `GET /metrics` (None if the server has no HTTP API or does not answer).
pub async fn scrape(base: Option<String>, names: &[&str]) -> Option<BTreeMap<String, Buckets>> {
    let base = base?;
    let text = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(parse(&text, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_deltas_give_bucket_quantiles() {
        let before = "x_seconds_bucket{le=\"0.005\"} 1\nx_seconds_bucket{le=\"0.01\"} 1\nx_seconds_bucket{le=\"+Inf\"} 1\nx_seconds_sum 0.001\nx_seconds_count 1\n";
        let after = "# TYPE x_seconds histogram\nx_seconds_bucket{le=\"0.005\"} 90\nx_seconds_bucket{le=\"0.01\"} 100\nx_seconds_bucket{le=\"+Inf\"} 101\nx_seconds_sum 0.5\nx_seconds_count 101\nother 3\n";
        let b = parse(before, &["x_seconds"]);
        let a = parse(after, &["x_seconds"]);
        let s = BucketSummary::between(&b["x_seconds"], &a["x_seconds"]);
        assert_eq!(s.count, 100.0);
        assert!((s.mean - 0.00499).abs() < 1e-9);
        assert_eq!(s.p50_le, 0.005);
        assert_eq!(s.p99_le, 0.01);
    }

    #[test]
    fn the_probe_measures_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let p = FsyncProbe::start(dir.path());
        std::thread::sleep(Duration::from_millis(120));
        let s = p.stop();
        assert!(s.count >= 2, "{s:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

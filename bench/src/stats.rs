//! Counting what arrived: per-subscriber sequence bookkeeping (unique, duplicated,
//! out-of-order, missing), post→receive latency in HDR histograms (overall and per second of
//! the run), and per-second counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds up to this bound (larger values are clamped).
const MAX_LATENCY_US: u64 = 600_000_000;

/// A growable set of sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; false if it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let fresh = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.len += u64::from(fresh);
        fresh
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &SeqSet) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
        }
        self.len = self.words.iter().map(|w| w.count_ones() as u64).sum();
    }

    /// How many of `expected` are not in `self`.
    pub fn missing_from(&self, expected: &SeqSet) -> u64 {
        expected
            .words
            .iter()
            .enumerate()
            .map(|(i, e)| (e & !self.words.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum()
    }
}

/// What one subscriber saw.
#[derive(Debug, Default, Clone)]
pub struct SubscriberCounts {
    seen: SeqSet,
    /// Highest sequence number seen per poster (poster = seq % posters): order is promised
    /// per publisher, not across independent posters.
    highest: Vec<Option<u64>>,
    /// Highest server `seq` seen (livecomments frames).
    highest_server_seq: Option<u64>,
    pub duplicates: u64,
    /// Comments that arrived after a later comment of the same poster.
    pub out_of_order: u64,
    /// Events whose server `seq` did not increase (livecomments promises strictly increasing).
    pub server_seq_regressions: u64,
    /// MQTT messages (frames for livecomments, one per comment for Mosquitto).
    pub messages: u64,
    /// Events that were not our comments (retractions, sampling notices).
    pub other_events: u64,
    /// Messages that could not be parsed.
    pub garbled: u64,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

/// Whether a received comment was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First,
    Again,
}

impl SubscriberCounts {
    /// Counts for a run with `posters` posters.
    pub fn new(posters: usize) -> SubscriberCounts {
        SubscriberCounts {
            highest: vec![None; posters.max(1)],
            ..SubscriberCounts::default()
        }
    }

    pub fn record(&mut self, seq: u64) -> Seen {
        if !self.seen.insert(seq) {
            self.duplicates += 1;
            return Seen::Again;
        }
        let n = self.highest.len().max(1);
        if self.highest.is_empty() {
            self.highest.push(None);
        }
        let highest = &mut self.highest[(seq % n as u64) as usize];
        match *highest {
            Some(h) if seq < h => self.out_of_order += 1,
            _ => *highest = Some(seq),
        }
        Seen::First
    }

    /// The server's `seq` of an event (strictly increasing per stream).
    pub fn record_server_seq(&mut self, seq: u64) {
        match self.highest_server_seq {
            Some(h) if seq <= h => self.server_seq_regressions += 1,
            _ => self.highest_server_seq = Some(seq),
        }
    }

    pub fn unique(&self) -> u64 {
        self.seen.len()
    }

    /// The comments seen.
    pub fn seen(&self) -> &SeqSet {
        &self.seen
    }

    pub fn missing(&self, expected: &SeqSet) -> u64 {
        self.seen.missing_from(expected)
    }
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("valid histogram bounds")
}

struct Shard {
    all: Histogram<u64>,
    /// By second of the send time since the run's epoch.
    per_second: Vec<Histogram<u64>>,
}

/// Post→receive latencies, sharded so thousands of subscriber tasks rarely wait on each other.
pub struct LatencyRecorder {
    epoch_us: u64,
    shards: Vec<Mutex<Shard>>,
}

impl LatencyRecorder {
    /// `epoch_us`: the start of posting (Unix microseconds), the origin of the timeline.
    pub fn new(epoch_us: u64, shards: usize) -> LatencyRecorder {
        LatencyRecorder {
            epoch_us,
            shards: (0..shards.max(1))
                .map(|_| {
                    Mutex::new(Shard {
                        all: histogram(3),
                        per_second: Vec::new(),
                    })
                })
                .collect(),
        }
    }

    /// Records `(sent_us, latency_us)` pairs of one subscriber (`key` picks the shard).
    pub fn record(&self, key: usize, items: &[(u64, u64)]) {
        let mut shard = self.shards[key % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &(sent_us, latency_us) in items {
            let v = latency_us.clamp(1, MAX_LATENCY_US);
            shard.all.saturating_record(v);
            let second = (sent_us.saturating_sub(self.epoch_us) / 1_000_000) as usize;
            // Comments come from the schedule; a wild send time must not allocate gigabytes.
            if second < 24 * 3600 {
                if shard.per_second.len() <= second {
                    shard.per_second.resize_with(second + 1, || histogram(2));
                }
                shard.per_second[second].saturating_record(v);
            }
        }
    }

    /// The merged overall histogram and the per-second ones.
    pub fn merged(&self) -> (Histogram<u64>, Vec<Histogram<u64>>) {
        let mut all = histogram(3);
        let mut per_second: Vec<Histogram<u64>> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let _ = all.add(&shard.all);
            if per_second.len() < shard.per_second.len() {
                per_second.resize_with(shard.per_second.len(), || histogram(2));
            }
            for (i, h) in shard.per_second.iter().enumerate() {
                let _ = per_second[i].add(h);
            }
        }
        (all, per_second)
    }
}

/// Counters per second since an epoch (fixed length; later seconds land in the last slot).
pub struct PerSecond {
    epoch_us: u64,
    slots: Vec<AtomicU64>,
}

impl PerSecond {
    pub fn new(epoch_us: u64, seconds: usize) -> PerSecond {
        PerSecond {
            epoch_us,
            slots: (0..seconds.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn add(&self, at_us: u64, n: u64) {
        let i = (at_us.saturating_sub(self.epoch_us) / 1_000_000) as usize;
        self.slots[i.min(self.slots.len() - 1)].fetch_add(n, Ordering::Relaxed);
    }

    pub fn values(&self) -> Vec<u64> {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect()
    }
}

/// Percentiles of a latency histogram recorded in microseconds, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// A histogram for durations such as connect times (microseconds).
pub fn duration_histogram() -> Histogram<u64> {
    histogram(3)
}

/// Records one duration into a shared histogram.
pub fn record_duration(h: &Mutex<Histogram<u64>>, d: std::time::Duration) {
    let us = (d.as_micros() as u64).clamp(1, MAX_LATENCY_US);
    h.lock()
        .unwrap_or_else(|e| e.into_inner())
        .saturating_record(us);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_unique_duplicates_out_of_order_and_missing() {
        let mut c = SubscriberCounts::new(1);
        for seq in [0, 1, 3, 2, 3, 5, 0] {
            c.record(seq);
        }
        assert_eq!(c.unique(), 5);
        assert_eq!(c.duplicates, 2);
        assert_eq!(c.out_of_order, 1, "2 after 3");
        // Two posters: 3 (poster 1) before 2 (poster 0) is no reordering; 1 after 3 is.
        let mut two = SubscriberCounts::new(2);
        for seq in [0, 3, 2, 1] {
            two.record(seq);
        }
        assert_eq!(two.out_of_order, 1);
        for seq in [5, 6, 6, 4] {
            two.record_server_seq(seq);
        }
        assert_eq!(two.server_seq_regressions, 2);
        let mut expected = SeqSet::default();
        for seq in 0..8 {
            expected.insert(seq);
        }
        assert_eq!(c.missing(&expected), 3, "4, 6 and 7");
        assert!(expected.contains(7) && !expected.contains(8));
        let mut u = SeqSet::default();
        u.insert(100);
        u.union_with(&expected);
        assert_eq!(u.len(), 9);
        assert!(u.contains(100) && u.contains(0));
    }

    #[test]
    fn latencies_merge_across_shards_and_seconds() {
        let r = LatencyRecorder::new(1_000_000, 4);
        r.record(0, &[(1_000_000, 1_000), (2_500_000, 3_000)]);
        r.record(5, &[(2_100_000, 5_000)]);
        let (all, per_second) = r.merged();
        assert_eq!(all.len(), 3);
        assert_eq!(per_second.len(), 2);
        assert_eq!(per_second[1].len(), 2);
        let s = LatencySummary::of(&all);
        assert!((s.max_ms - 5.0).abs() < 0.01, "{s:?}");
        let p = PerSecond::new(0, 2);
        p.add(500_000, 2);
        p.add(9_000_000, 1);
        assert_eq!(p.values(), vec![2, 1]);
    }
}

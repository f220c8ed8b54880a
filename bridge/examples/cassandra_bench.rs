//! Write throughput and read latency of the Cassandra store (numbers in docs/storage.md).
//!
//! ```text
//! scripts/cassandra start /tmp/bench-node          # prints 127.0.0.1:PORT
//! cargo run --release -p bridge --example cassandra_bench -- 127.0.0.1:PORT
//! ```
//!
//! Uses the keyspace `livecomments_bench` (created if missing) and fresh stream ids each run.
//! Measures: commits of one comment (a quiet stream), commits of 64 comments from one writer
//! and from four writers at once (the bridge keeps one commit in flight per writer), then replay windows of a 60 s window (limit
//! 500) and catch-up pages (500 events) on a stream of 30 000 comments at 100/s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge::store::cassandra::{CassandraConfig, CassandraStore};
use wire::event::{Comment, UserRef};
use wire::store::{Batch, Store, StoredComment, StoredEvent, Visibility};
use wire::{StreamId, UserId};

const BATCH: usize = 64;

const TEXTS: &[&str] = &[
    "what a goal!!",
    "no way 😂😂",
    "the referee is blind, that was never a penalty",
    "GG",
    "who else is watching from Lisbon?",
    "this stream quality is amazing today",
    "🔥🔥🔥",
    "can someone explain the offside rule to me please",
];

/// A small deterministic generator (no dependency for a benchmark).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn comment(stream: &StreamId, seq: u64, offset_ms: u64, rng: &mut Lcg) -> StoredEvent {
    let user = format!("user_{}", rng.next() % 100_000);
    StoredEvent::Comment(StoredComment {
        comment: Comment {
            id: ulid::Ulid::new().to_string(),
            seq,
            stream: stream.clone(),
            user: UserRef {
                id: UserId::new(&user).expect("valid user id"),
                name: format!("Viewer {}", rng.next() % 1000),
            },
            text: TEXTS[(rng.next() as usize) % TEXTS.len()].to_owned(),
            ts: wire::time::now_ms(),
            offset_ms,
            reply_to: None,
            likes: 0,
            replies: 0,
        },
        client_msg_id: format!("{:016x}", rng.next()),
        visibility: Visibility::Visible,
        depth: 0,
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut lat: Vec<Duration>) {
    lat.sort();
    println!(
        "{what}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        lat.len(),
        pct(&lat, 0.50).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// Commits `batches` batches of `size` comments to one stream, one at a time; returns commit
/// latencies.
async fn writer(
    store: Arc<CassandraStore>,
    stream: StreamId,
    batches: usize,
    size: usize,
) -> Vec<Duration> {
    let mut rng = Lcg(stream.as_str().len() as u64 * 7919);
    let mut lat = Vec::with_capacity(batches);
    let mut seq = 0;
    for _ in 0..batches {
        let events = (0..size)
            .map(|_| {
                seq += 1;
                // 1000 comments/s on the stream's timeline.
                comment(&stream, seq, seq, &mut rng)
            })
            .collect();
        let batch = Batch {
            events,
            ..Default::default()
        };
        let t = Instant::now();
        store.commit(&batch).await.expect("commit");
        lat.push(t.elapsed());
    }
    lat
}

#[tokio::main]
async fn main() {
    let uri = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("CASSANDRA_URI").ok())
        .unwrap_or_else(|| "127.0.0.1:9042".into());
    let config = CassandraConfig {
        nodes: vec![uri.clone()],
        keyspace: "livecomments_bench".into(),
        request_timeout_ms: 30_000,
        ..CassandraConfig::default()
    };
    let store = Arc::new(CassandraStore::connect(&config).await.expect("connect"));
    let run = format!("b{}", wire::time::now_ms() % 1_000_000_000);
    let sid = |name: &str| StreamId::new(&format!("{run}-{name}")).expect("valid stream id");
    println!("cassandra at {uri}, keyspace {}", config.keyspace);

    // Warm-up (connections, JIT of the node).
    writer(store.clone(), sid("warm"), 20, BATCH).await;

    // A quiet stream: every post is a commit of its own (the post → ack path at low rates).
    report(
        "1 writer, commits of 1 comment",
        writer(store.clone(), sid("single"), 300, 1).await,
    );

    for writers in [1usize, 4] {
        let batches = 150;
        let t = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                tokio::spawn(writer(
                    store.clone(),
                    sid(&format!("w{writers}-{w}")),
                    batches,
                    BATCH,
                ))
            })
            .collect();
        let mut lat = Vec::new();
        for task in tasks {
            lat.extend(task.await.expect("writer task"));
        }
        let elapsed = t.elapsed();
        let comments = writers * batches * BATCH;
        println!(
            "{writers} writer(s), batches of {BATCH}: {comments} comments in {:.1} s = {:.0} comments/s",
            elapsed.as_secs_f64(),
            comments as f64 / elapsed.as_secs_f64()
        );
        report(&format!("  commit of {BATCH}"), lat);
    }

    // A stream of 30 000 comments at 100/s: 300 s of timeline, 5 buckets of 60 s.
    let stream = sid("replay");
    let mut rng = Lcg(42);
    let total = 30_000u64;
    let mut body_bytes = 0usize;
    for start in (1..=total).step_by(BATCH) {
        let events: Vec<_> = (start..(start + BATCH as u64).min(total + 1))
            .map(|seq| comment(&stream, seq, seq * 10, &mut rng))
            .collect();
        body_bytes += events
            .iter()
            .map(|e| match e {
                StoredEvent::Comment(c) => serde_json::to_string(c).map_or(0, |s| s.len()),
                _ => 0,
            })
            .sum::<usize>();
        store
            .commit(&Batch {
                events,
                ..Default::default()
            })
            .await
            .expect("commit");
    }
    println!(
        "replay stream: {total} comments, mean body {} bytes",
        body_bytes / total as usize
    );
    let mut lat = Vec::new();
    for _ in 0..300 {
        let from = rng.next() % 240_000;
        let t = Instant::now();
        let page = store
            .replay(&stream, from, from + 60_000, None, 500)
            .await
            .expect("replay");
        lat.push(t.elapsed());
        assert_eq!(page.len(), 500);
    }
    report("replay window of 60 s (500 comments, limit 500)", lat);
    let mut lat = Vec::new();
    for _ in 0..300 {
        let from = rng.next() % 180_000;
        let t = Instant::now();
        let page = store
            .replay(&stream, from, from + 180_000, None, 500)
            .await
            .expect("replay");
        lat.push(t.elapsed());
        assert_eq!(page.len(), 500);
    }
    report("replay window of 180 s (first 500 of 1800)", lat);
    let mut lat = Vec::new();
    for _ in 0..300 {
        let after = rng.next() % (total - 500);
        let t = Instant::now();
        let page = store
            .after_seq(&stream, after, 500)
            .await
            .expect("after_seq");
        lat.push(t.elapsed());
        assert_eq!(page.len(), 500);
    }
    report("catch-up page of 500 events", lat);
    let mut lat = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let page = store
            .latest(&stream, 0, total * 10 + 1, 10_000)
            .await
            .expect("latest");
        lat.push(t.elapsed());
        assert_eq!(page.len(), 10_000);
    }
    report("latest 10 000 (top ranking candidates)", lat);
}

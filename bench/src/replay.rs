//! The replay scenario: one stream with N stored comments, then random 3-minute windows read
//! over HTTP (`GET /v1/streams/{s}/comments?start_time=…&duration=180`), one at a time.
//!
//! Loading N comments through MQTT would take hours on two cores (and measure ingest, not
//! replay), so the store is seeded directly: the bench opens the embedded store of a data
//! directory through the bridge's `Store` trait — the same `commit` the write path uses, in
//! large batches — and then starts `livecomments` on that directory. A seeded directory is
//! kept (`seed.json` says what it holds) and reused by later runs that ask for no more.
//!
//! The comments are spread evenly over the stream's timeline at `per_second` comments per
//! second of stream time (a 10 M-comment stream at 1 000/s is 2 h 47 min long), so every
//! window holds `180 × per_second` comments and a window read is its first page (`limit`,
//! at most the server's `http.max_page`). `--full-windows` also follows `next_token` to the
//! end of some windows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge::store::EmbeddedStore;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use wire::event::{Comment, StreamState, StreamStatus, UserRef};
use wire::store::{Batch, Store, StoredComment, StoredEvent, Visibility};
use wire::{StreamId, UserId};

use crate::payload::now_us;
use crate::plot::{self, Axes, Xy};
use crate::sampler::{RunUsage, Sampler};
use crate::stats::{duration_histogram, LatencySummary};
use crate::target::{Kind, Target};

/// The owner of the seeded stream: the broadcaster the bench signs tokens for.
pub const OWNER: &str = "bench-broadcaster";
/// What a seeded data directory holds.
const SEED_FILE: &str = "seed.json";
/// The store file inside a data directory (`store.path` of the default config).
const STORE_FILE: &str = "comments.redb";

/// How to seed.
#[derive(Debug, Clone)]
pub struct Seed {
    pub dir: PathBuf,
    pub comments: u64,
    /// Comments per second of stream time.
    pub per_second: f64,
    pub text_bytes: usize,
    /// Comments per durable transaction.
    pub batch: usize,
    /// Stop loading after this long (the stream then holds what was loaded).
    pub time_limit: Duration,
    pub progress: bool,
}

/// What a seeded directory holds (`seed.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seeded {
    pub stream: String,
    pub comments: u64,
    /// Requested, when the time limit stopped the load early.
    pub requested: u64,
    pub per_second: f64,
    pub text_bytes: usize,
    /// Stream time covered, seconds.
    pub duration_s: f64,
    pub load_seconds: f64,
    pub load_per_s: f64,
    pub store_bytes: u64,
}

/// A filler text of about `len` bytes carrying the comment's number.
fn text(i: u64, len: usize) -> String {
    crate::payload::comment_text(i, 0, len)
}

/// Seeds `seed.dir` unless it already holds at least `seed.comments` comments at the same
/// density; returns what it holds.
pub async fn seed(seed: &Seed) -> anyhow::Result<Seeded> {
    let marker = seed.dir.join(SEED_FILE);
    if let Ok(bytes) = std::fs::read(&marker) {
        let s: Seeded = serde_json::from_slice(&bytes)?;
        if (s.comments >= seed.comments || s.requested >= seed.comments)
            && s.per_second == seed.per_second
        {
            eprintln!(
                "==> replay: reusing {} ({} comments in stream {})",
                seed.dir.display(),
                s.comments,
                s.stream
            );
            return Ok(s);
        }
        anyhow::bail!(
            "{} holds another seed ({} comments at {}/s); remove it or pick another --store-dir",
            seed.dir.display(),
            s.comments,
            s.per_second
        );
    }
    std::fs::create_dir_all(&seed.dir)?;
    let path = seed.dir.join(STORE_FILE);
    anyhow::ensure!(
        !path.exists(),
        "{} exists without {SEED_FILE} (an interrupted seed?): remove the directory",
        path.display()
    );
    // No quick-repair page per commit while loading: a crash here means seeding again.
    let store = Arc::new(EmbeddedStore::open(&path, false)?);
    let stream_id = format!("replay{}", seed.comments);
    let stream = StreamId::new(&stream_id)?;
    let now_ms = (now_us() / 1000) as i64;
    let duration_ms = (seed.comments as f64 / seed.per_second * 1000.0).ceil() as i64;
    let started = now_ms - duration_ms - 60_000;
    let mut record = StreamState::new(
        stream.clone(),
        format!("replay benchmark, {} comments", seed.comments),
        Some(UserId::new(OWNER)?),
        started - 1000,
    );
    record.status = StreamStatus::Live;
    record.started_at = Some(started);
    record.version = 1;
    anyhow::ensure!(
        store.create_stream(&record).await?,
        "stream {stream_id} exists"
    );

    let bar = crate::fanout::bar(seed.progress, seed.comments, "replay seed");
    let began = Instant::now();
    let users: Vec<UserRef> = (0..5000)
        .map(|u| {
            let id = UserId::new(&format!("u{u}")).expect("valid user id");
            UserRef {
                name: id.to_string(),
                id,
            }
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut loaded = 0u64;
    // Building the next batch overlaps with committing this one.
    let mut pending: Option<tokio::task::JoinHandle<Result<(), wire::store::StoreError>>> = None;
    while loaded < seed.comments {
        if began.elapsed() >= seed.time_limit {
            eprintln!(
                "==> replay: time limit {:?} reached after {loaded} comments",
                seed.time_limit
            );
            break;
        }
        let n = (seed.batch as u64).min(seed.comments - loaded);
        let mut events = Vec::with_capacity(n as usize);
        for seq in loaded + 1..=loaded + n {
            let offset_ms = ((seq - 1) as f64 * 1000.0 / seed.per_second) as u64;
            let ts = started + offset_ms as i64;
            let id = ulid::Ulid::from_parts(ts as u64, rng.random()).to_string();
            events.push(StoredEvent::Comment(StoredComment {
                comment: Comment {
                    id,
                    seq,
                    stream: stream.clone(),
                    user: users[(seq % users.len() as u64) as usize].clone(),
                    text: text(seq, seed.text_bytes),
                    ts,
                    offset_ms,
                    reply_to: None,
                    likes: 0,
                    replies: 0,
                },
                client_msg_id: seq.to_string(),
                visibility: Visibility::Visible,
                depth: 0,
            }));
        }
        if let Some(p) = pending.take() {
            p.await??;
        }
        let store = store.clone();
        pending = Some(tokio::spawn(async move {
            store
                .commit(&Batch {
                    events,
                    ..Batch::default()
                })
                .await
        }));
        loaded += n;
        bar.set_position(loaded);
        let rate = loaded as f64 / began.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!("{rate:.0}/s"));
    }
    if let Some(p) = pending.take() {
        p.await??;
    }
    bar.finish_and_clear();
    drop(store);
    let load_seconds = began.elapsed().as_secs_f64();
    let seeded = Seeded {
        stream: stream_id,
        comments: loaded,
        requested: seed.comments,
        per_second: seed.per_second,
        text_bytes: seed.text_bytes,
        duration_s: loaded as f64 / seed.per_second,
        load_seconds,
        load_per_s: loaded as f64 / load_seconds.max(1e-3),
        store_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
    };
    std::fs::write(&marker, serde_json::to_vec_pretty(&seeded)?)?;
    eprintln!(
        "==> replay: seeded {} comments in {:.0} s ({:.0}/s), store {:.1} GB",
        seeded.comments,
        load_seconds,
        seeded.load_per_s,
        seeded.store_bytes as f64 / 1e9
    );
    Ok(seeded)
}

/// What to read.
#[derive(Debug, Clone)]
pub struct Reads {
    pub queries: usize,
    pub window_s: f64,
    /// Page size (`limit`).
    pub limit: usize,
    /// Windows read to the end through `next_token`.
    pub full_windows: usize,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    pub target: Kind,
    pub seeded: Seeded,
    pub window_s: f64,
    pub limit: usize,
    pub queries: usize,
    pub errors: u64,
    /// One window's first page: request → whole body read.
    pub page_ms: LatencySummary,
    pub comments_per_page: f64,
    pub bytes_per_page: f64,
    pub pages_per_s: f64,
    /// Whole windows (every page), if any were read.
    pub full_window_ms: Option<LatencySummary>,
    pub full_window_comments: Option<f64>,
    pub usage: RunUsage,
    /// Page latency of each query in order (for the plot).
    #[serde(skip)]
    pub series_ms: Vec<f64>,
}

#[derive(Deserialize)]
struct Page {
    comments: Vec<serde_json::Value>,
    #[serde(default)]
    next_token: Option<String>,
}

pub async fn run(target: &Target, seeded: &Seeded, r: &Reads) -> anyhow::Result<ReplayResult> {
    let base = target.http_base()?;
    let url = format!("{base}/v1/streams/{}/comments", seeded.stream);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let span = (seeded.duration_s - r.window_s).max(0.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // Warm-up: the first requests open the connection and touch the index root.
    for _ in 0..20 {
        let start = rng.random_range(0.0..=span);
        let _ = client
            .get(&url)
            .query(&[
                ("start_time", format!("{start:.3}")),
                ("duration", r.window_s.to_string()),
                ("limit", r.limit.to_string()),
            ])
            .send()
            .await?
            .bytes()
            .await?;
    }
    let sampler = Sampler::start(target.pid, Duration::from_millis(500));
    let from_us = now_us();
    let bar = crate::fanout::bar(r.progress, r.queries as u64, "replay read");
    let mut hist = duration_histogram();
    let mut series = Vec::with_capacity(r.queries);
    let (mut comments, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let began = Instant::now();
    for _ in 0..r.queries {
        let start = rng.random_range(0.0..=span);
        let t = Instant::now();
        let resp = client
            .get(&url)
            .query(&[
                ("start_time", format!("{start:.3}")),
                ("duration", r.window_s.to_string()),
                ("limit", r.limit.to_string()),
            ])
            .send()
            .await;
        let body = match resp {
            Ok(resp) if resp.status().is_success() => resp.bytes().await.ok(),
            _ => None,
        };
        let elapsed = t.elapsed();
        let Some(body) = body else {
            errors += 1;
            continue;
        };
        let _ = hist.record((elapsed.as_micros() as u64).max(1));
        series.push(elapsed.as_secs_f64() * 1000.0);
        bytes += body.len() as u64;
        if let Ok(p) = serde_json::from_slice::<Page>(&body) {
            comments += p.comments.len() as u64;
        }
        bar.inc(1);
    }
    let reads_s = began.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let mut full = duration_histogram();
    let mut full_comments = 0u64;
    for i in 0..r.full_windows {
        let start = rng.random_range(0.0..=span);
        let t = Instant::now();
        let mut token: Option<String> = None;
        let mut n = 0u64;
        loop {
            let mut q = vec![
                ("start_time", format!("{start:.3}")),
                ("duration", r.window_s.to_string()),
                ("limit", r.limit.to_string()),
            ];
            if let Some(tk) = &token {
                q.push(("pagination_token", tk.clone()));
            }
            let page: Page = client
                .get(&url)
                .query(&q)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            n += page.comments.len() as u64;
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let _ = full.record((t.elapsed().as_micros() as u64).max(1));
        full_comments += n;
        eprintln!(
            "    full window {}/{}: {n} comments in {:.0} ms",
            i + 1,
            r.full_windows,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let samples = sampler.stop();
    let q = series.len().max(1) as f64;
    Ok(ReplayResult {
        target: target.kind,
        seeded: seeded.clone(),
        window_s: r.window_s,
        limit: r.limit,
        queries: r.queries,
        errors,
        page_ms: LatencySummary::of(&hist),
        comments_per_page: comments as f64 / q,
        bytes_per_page: bytes as f64 / q,
        pages_per_s: series.len() as f64 / reads_s.max(1e-6),
        full_window_ms: (r.full_windows > 0).then(|| LatencySummary::of(&full)),
        full_window_comments: (r.full_windows > 0)
            .then(|| full_comments as f64 / r.full_windows as f64),
        usage: RunUsage::of(&samples, from_us, now_us()),
        series_ms: series,
    })
}

pub fn markdown(r: &ReplayResult, target_ms: f64) -> String {
    let mut t = crate::report::Table::new(&["", "livecomments"]);
    let s = &r.seeded;
    let row = |t: &mut crate::report::Table, k: &str, v: String| t.row(vec![k.into(), v]);
    row(
        &mut t,
        "stored comments in the stream",
        if s.comments < s.requested {
            format!(
                "{} (of {} requested: the load time limit)",
                s.comments, s.requested
            )
        } else {
            s.comments.to_string()
        },
    );
    row(
        &mut t,
        "stream length (comments per second)",
        format!("{:.0} min ({:.0}/s)", s.duration_s / 60.0, s.per_second),
    );
    row(
        &mut t,
        "seeding (through Store::commit)",
        format!(
            "{:.0} s ({:.0} comments/s), store {:.2} GB",
            s.load_seconds,
            s.load_per_s,
            s.store_bytes as f64 / 1e9
        ),
    );
    row(
        &mut t,
        "window / page size",
        format!("{:.0} s / limit {}", r.window_s, r.limit),
    );
    row(
        &mut t,
        "window reads (first page), errors",
        format!("{}, {}", r.queries, r.errors),
    );
    row(
        &mut t,
        "comments / bytes per page",
        format!(
            "{:.0} / {:.0} KB",
            r.comments_per_page,
            r.bytes_per_page / 1000.0
        ),
    );
    let l = &r.page_ms;
    row(
        &mut t,
        "page latency p50 / p90 / p99 / p99.9 / max",
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        ),
    );
    row(
        &mut t,
        &format!("target p99 ≤ {target_ms:.0} ms"),
        if l.p99_ms <= target_ms {
            "met"
        } else {
            "MISSED"
        }
        .into(),
    );
    row(
        &mut t,
        "pages per second (one at a time)",
        format!("{:.0}", r.pages_per_s),
    );
    if let (Some(f), Some(n)) = (&r.full_window_ms, r.full_window_comments) {
        row(
            &mut t,
            "whole window (every page) p50 / max",
            format!("{:.0} / {:.0} ms for {n:.0} comments", f.p50_ms, f.max_ms),
        );
    }
    let u = &r.usage;
    row(
        &mut t,
        "server CPU avg / max, RSS max",
        u.sut
            .map(|s| {
                format!(
                    "{:.0} / {:.0} %, {:.0} MB",
                    s.cpu_avg_pct, s.cpu_max_pct, s.rss_max_mb
                )
            })
            .unwrap_or_else(|| "—".into()),
    );
    row(
        &mut t,
        "generator CPU avg; other processes",
        format!(
            "{:.0} %; {:.0} %",
            u.generator.cpu_avg_pct, u.other_load_pct
        ),
    );
    let mut out = t.render();
    out.push_str(
        "\nMosquitto has no replay (a retained message holds one message per topic): no comparison.\n",
    );
    out
}

/// `replay.svg`: page latency of each query in order.
pub fn plot(r: &ReplayResult, out: &Path, target_ms: f64) -> anyhow::Result<()> {
    let points: Vec<(f64, f64)> = r
        .series_ms
        .iter()
        .enumerate()
        .map(|(i, ms)| (i as f64, *ms))
        .collect();
    let limit = Xy {
        label: format!("target {target_ms:.0} ms"),
        kind: Kind::Mosquitto,
        points: vec![(0.0, target_ms), (points.len() as f64, target_ms)],
    };
    plot::xy_linear_svg(
        &out.join("replay.svg"),
        &format!(
            "replay: {:.0}-s windows of a {}-comment stream (limit {})",
            r.window_s, r.seeded.comments, r.limit
        ),
        Axes {
            x: "query",
            y: "page latency (ms)",
        },
        &[
            Xy {
                label: "livecomments".into(),
                kind: Kind::Livecomments,
                points,
            },
            limit,
        ],
    )
}

/// Where seeded stores are kept by default.
pub fn default_store_dir(comments: u64, per_second: f64) -> PathBuf {
    let cache = std::env::var_os("LIVECOMMENTS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/livecomments")))
        .unwrap_or_else(std::env::temp_dir);
    cache
        .join("bench")
        .join(format!("replay-{comments}-{per_second:.0}"))
}

/// A data directory is usable by `livecomments up`.
pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        dir.join(STORE_FILE).is_file(),
        "{} has no {STORE_FILE}",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seeds_a_store_that_replays_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let seed = Seed {
            dir: dir.path().join("d"),
            comments: 2500,
            per_second: 10.0,
            text_bytes: 80,
            batch: 1000,
            time_limit: Duration::from_secs(60),
            progress: false,
        };
        let s = super::seed(&seed).await.unwrap();
        assert_eq!(s.comments, 2500);
        assert_eq!(s.duration_s, 250.0);
        // Reused, not seeded again.
        assert_eq!(
            super::seed(&seed).await.unwrap().load_seconds,
            s.load_seconds
        );
        let store = EmbeddedStore::open(&seed.dir.join(STORE_FILE), false).unwrap();
        let id = StreamId::new(&s.stream).unwrap();
        let page = store
            .replay(&id, 10_000, 190_000, None, 5000)
            .await
            .unwrap();
        assert_eq!(page.len(), 1800, "180 s at 10/s");
        assert!(page.windows(2).all(|w| w[0].offset_ms <= w[1].offset_ms));
        assert_eq!(
            store.get_stream(&id).await.unwrap().unwrap().status,
            StreamStatus::Live
        );
        check_dir(&seed.dir).unwrap();
    }
}

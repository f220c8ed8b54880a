//! The connections scenario: idle MQTT viewers — CONNECT, SUBSCRIBE to the stream's comments,
//! then nothing — opened at a fixed connect rate over several source addresses, up to what
//! one node process may hold. Reports the connect rate achieved, connect latency, and the
//! server's resident memory per connection (RSS growth from before the first connection to
//! after the last, divided by the connections).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::auth::Role;

use crate::mqtt;
use crate::payload::now_us;
use crate::plot::{self, Axes, Xy};
use crate::report::{ratio_of, Table};
use crate::sampler::{rss_mb, RunUsage, Sampler};
use crate::stats::{duration_histogram, record_duration, LatencySummary};
use crate::target::{Kind, Target};

#[derive(Debug, Clone)]
pub struct Scenario {
    pub connections: usize,
    /// New connections per second.
    pub connect_rate: f64,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    /// Connections are spread over K = `source_addrs` source addresses 127.0.0.A ..=
    /// 127.0.0.(A+K-1), A = `first_source_addr` (1 unless several generators run at once).
    pub source_addrs: u8,
    pub first_source_addr: u8,
    /// Connection i is viewer `v{first_index + i}` with client id `bench-c{first_index + i}`.
    pub first_index: usize,
    /// How long every connection is held once all are open (RSS is read at the end).
    pub hold: Duration,
    /// Subscribe to the stream's comments after CONNECT (a viewer), or only connect.
    pub subscribe: bool,
    pub progress: bool,
    /// Written once every connection attempt has ended (for a script running several
    /// generators).
    pub ready_file: Option<PathBuf>,
    /// Hold until this file exists (at most `hold`).
    pub release_file: Option<PathBuf>,
    /// Every successful connect time in microseconds, one per line.
    pub latencies_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsResult {
    pub target: Kind,
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    /// Connections that ended while held.
    pub dropped: usize,
    pub errors: Vec<String>,
    /// TCP connect → CONNACK (→ SUBACK when subscribing).
    pub connect_ms: LatencySummary,
    pub connect_elapsed_s: f64,
    pub achieved_rate_per_s: f64,
    pub subscribed: bool,
    pub rss_before_mb: f64,
    pub rss_after_mb: f64,
    /// (RSS after − RSS before) / connected.
    pub rss_per_connection_kb: f64,
    pub generator_rss_mb: f64,
    /// (second, connections open, server RSS MB).
    pub timeline: Vec<(f64, u64, f64)>,
    pub usage: RunUsage,
}

fn source_ip(i: usize, first: u8, k: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        first.max(1) + (i % k.max(1) as usize) as u8,
    ))
}

/// The server's RSS once it stopped moving (the allocator settles after a burst).
async fn settled_rss(pid: Option<u32>) -> f64 {
    let Some(pid) = pid.map(|p| p.to_string()) else {
        return 0.0;
    };
    let mut last = rss_mb(&pid).unwrap_or(0.0);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = rss_mb(&pid).unwrap_or(0.0);
        if (now - last).abs() < 0.2 {
            return now;
        }
        last = now;
    }
    last
}

pub async fn run(target: &Target, sc: &Scenario) -> anyhow::Result<ConnectionsResult> {
    let rss_before = settled_rss(target.pid).await;
    let sampler = Sampler::start(target.pid, Duration::from_secs(1));
    let from_us = now_us();
    let stop = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(sc.concurrency.max(1)));
    let open = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(duration_histogram()));
    // Every connect time, only when asked to write them.
    let connect_us = sc
        .latencies_file
        .is_some()
        .then(|| Arc::new(Mutex::new(Vec::<u32>::new())));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let bar = crate::fanout::bar(
        sc.progress,
        sc.connections as u64,
        &format!("{} connect", target.kind),
    );
    let interval = Duration::from_secs_f64(1.0 / sc.connect_rate.max(1.0));
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(sc.connections);
    let mut timeline = Vec::new();
    let mut next_sample = began;
    let pid = target.pid.map(|p| p.to_string());
    let (mut connected, mut failed) = (0usize, 0usize);
    for i in 0..sc.connections {
        tokio::time::sleep_until(began + interval.mul_f64(i as f64)).await;
        let permit = gate.clone().acquire_owned().await?;
        let n = sc.first_index + i;
        let user = format!("v{n}");
        let password = target.password(&user, Role::Viewer)?;
        let endpoint = target.tcp.clone();
        let topic = sc.subscribe.then(|| target.subscribe_topic.clone());
        let source = source_ip(i, sc.first_source_addr, sc.source_addrs);
        let (opened_now, dropped, hist, connect_us, errors, done, stop) = (
            open.clone(),
            dropped.clone(),
            hist.clone(),
            connect_us.clone(),
            errors.clone(),
            done_tx.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let login = password.as_deref().map(|p| ("bench", p));
            let opened = tokio::time::timeout(Duration::from_secs(30), async {
                let (mut r, mut w) = mqtt::open(&endpoint, Some(source)).await?;
                mqtt::handshake(
                    &mut r,
                    &mut w,
                    &format!("bench-c{n}"),
                    login,
                    // Idle for the whole run: no PINGREQ needed.
                    Duration::from_secs(3600),
                )
                .await?;
                if let Some(topic) = &topic {
                    mqtt::subscribe(&mut r, &mut w, topic, 1).await?;
                }
                Ok::<_, mqtt::ClientError>((r, w))
            })
            .await
            .unwrap_or(Err(mqtt::ClientError::Timeout));
            drop(permit);
            let (mut r, w) = match opened {
                Ok(c) => c,
                Err(e) => {
                    let mut errs = errors.lock().unwrap_or_else(|e| e.into_inner());
                    if errs.len() < 5 {
                        errs.push(format!("{source}: {e}"));
                    }
                    let _ = done.send(false);
                    return;
                }
            };
            let took = t.elapsed();
            record_duration(&hist, took);
            if let Some(times) = &connect_us {
                times
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(took.as_micros().min(u32::MAX as u128) as u32);
            }
            opened_now.fetch_add(1, Ordering::Relaxed);
            let _ = done.send(true);
            drop(done);
            // Idle: only the end of the run or of the connection.
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    p = r.next() => if p.is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        opened_now.fetch_sub(1, Ordering::Relaxed);
                        return;
                    },
                }
            }
            // Closed without DISCONNECT handshakes in bulk: dropping the socket is enough.
            drop((r, w));
        }));
        while let Ok(ok) = done_rx.try_recv() {
            bar.inc(1);
            if ok {
                connected += 1;
            } else {
                failed += 1;
            }
        }
        if Instant::now() >= next_sample {
            let rss = pid.as_deref().and_then(rss_mb).unwrap_or(0.0);
            timeline.push((
                began.elapsed().as_secs_f64(),
                open.load(Ordering::Relaxed),
                rss,
            ));
            next_sample += Duration::from_secs(1);
        }
    }
    drop(done_tx);
    while let Some(ok) = done_rx.recv().await {
        bar.inc(1);
        if ok {
            connected += 1;
        } else {
            failed += 1;
        }
    }
    let connect_elapsed = began.elapsed();
    bar.finish_and_clear();
    eprintln!(
        "    {connected} connected, {failed} failed in {:.1} s; holding {:?}",
        connect_elapsed.as_secs_f64(),
        sc.hold
    );
    if let Some(path) = &sc.ready_file {
        let ready = serde_json::json!({"connected": connected, "failed": failed});
        std::fs::write(path, ready.to_string())?;
    }
    let hold_end = Instant::now() + sc.hold;
    while Instant::now() < hold_end {
        if sc.release_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        let rss = pid.as_deref().and_then(rss_mb).unwrap_or(0.0);
        timeline.push((
            began.elapsed().as_secs_f64(),
            open.load(Ordering::Relaxed),
            rss,
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rss_after = settled_rss(target.pid).await;
    let generator_rss = rss_mb("self").unwrap_or(0.0);
    let to_us = now_us();
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let samples = sampler.stop();
    let connect_ms = LatencySummary::of(&hist.lock().unwrap_or_else(|e| e.into_inner()));
    if let (Some(path), Some(times)) = (&sc.latencies_file, &connect_us) {
        let all = std::mem::take(&mut *times.lock().unwrap_or_else(|e| e.into_inner()));
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for us in all {
            writeln!(f, "{us}")?;
        }
        f.flush()?;
    }
    let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(ConnectionsResult {
        target: target.kind,
        requested: sc.connections,
        connected,
        failed,
        dropped: dropped.load(Ordering::Relaxed) as usize,
        errors,
        connect_ms,
        connect_elapsed_s: connect_elapsed.as_secs_f64(),
        achieved_rate_per_s: connected as f64 / connect_elapsed.as_secs_f64().max(1e-6),
        subscribed: sc.subscribe,
        rss_before_mb: rss_before,
        rss_after_mb: rss_after,
        rss_per_connection_kb: (rss_after - rss_before) * 1024.0 / connected.max(1) as f64,
        generator_rss_mb: generator_rss,
        timeline,
        usage: RunUsage::of(&samples, from_us, to_us),
    })
}

pub fn markdown(runs: &[ConnectionsResult]) -> String {
    let labels: Vec<String> = runs.iter().map(|r| r.target.to_string()).collect();
    let find = |k| runs.iter().find(|r| r.target == k);
    let both = find(Kind::Livecomments).zip(find(Kind::Mosquitto));
    let mut t = Table::side_by_side(&labels, both.is_some());
    let q = |f: &dyn Fn(&ConnectionsResult) -> f64| both.map(|(o, m)| ratio_of(f(o), f(m)));
    let cells = |f: &dyn Fn(&ConnectionsResult) -> String| runs.iter().map(f).collect::<Vec<_>>();
    t.compare(
        "connections open / requested",
        cells(&|r| {
            let mut s = format!(
                "{} / {}",
                r.connected - r.dropped.min(r.connected),
                r.requested
            );
            if r.dropped > 0 {
                s.push_str(&format!(" ({} dropped)", r.dropped));
            }
            s
        }),
        q(&|r| r.connected as f64),
    );
    t.compare(
        "failed (first errors)",
        cells(&|r| {
            if r.failed == 0 {
                "0".into()
            } else {
                format!("{} ({})", r.failed, r.errors.join("; "))
            }
        }),
        None,
    );
    t.compare(
        "each connection",
        cells(&|r| {
            if r.subscribed {
                "CONNECT + SUBSCRIBE".into()
            } else {
                "CONNECT".into()
            }
        }),
        None,
    );
    t.compare(
        "connect rate achieved",
        cells(&|r| format!("{:.0}/s", r.achieved_rate_per_s)),
        q(&|r| r.achieved_rate_per_s),
    );
    t.compare(
        "connect p50 / p99 / max",
        cells(&|r| {
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                r.connect_ms.p50_ms, r.connect_ms.p99_ms, r.connect_ms.max_ms
            )
        }),
        q(&|r| r.connect_ms.p99_ms),
    );
    t.compare(
        "server RSS before → after",
        cells(&|r| format!("{:.1} → {:.1} MB", r.rss_before_mb, r.rss_after_mb)),
        q(&|r| r.rss_after_mb),
    );
    t.compare(
        "RSS per connection",
        cells(&|r| format!("{:.1} KB", r.rss_per_connection_kb)),
        q(&|r| r.rss_per_connection_kb),
    );
    t.compare(
        "generator RSS",
        cells(&|r| format!("{:.0} MB", r.generator_rss_mb)),
        None,
    );
    let usages: Vec<&RunUsage> = runs.iter().map(|r| &r.usage).collect();
    crate::report::usage_rows(&mut t, &usages, both.is_some());
    t.render()
}

/// `connections.svg`: server RSS against open connections.
pub fn plot(runs: &[ConnectionsResult], out: &Path) -> anyhow::Result<()> {
    let lines: Vec<Xy> = runs
        .iter()
        .map(|r| Xy {
            label: format!("{} RSS", r.target),
            kind: r.target,
            points: r
                .timeline
                .iter()
                .map(|(_, n, rss)| (*n as f64, *rss))
                .collect(),
        })
        .collect();
    plot::xy_linear_svg(
        &out.join("connections.svg"),
        "idle MQTT connections on one node",
        Axes {
            x: "open connections",
            y: "server RSS (MB)",
        },
        &lines,
    )
}

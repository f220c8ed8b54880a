//! The reactions scenario: many clients send `{"emoji": …}` reactions at a fixed total rate
//! into one stream; one subscriber adds up what the system reports and checks it against what
//! was sent, per emoji.
//!
//! livecomments aggregates on the node and publishes `streams/{s}/reactions` frames with each
//! window's `counts` and the stream's stored `totals`: the subscriber sums the counts, and the
//! last totals must say the same. Mosquitto has no aggregation: the same publishes go to a
//! plain topic and the subscriber receives every one of them (raw deliveries).
//!
//! Each client sends, every `tick`, the reactions its share of the schedule has made due, in
//! one write of pre-encoded publishes; a client the server does not keep up with falls behind
//! (TCP pushes back), which shows as a lower achieved rate, not as a loss.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::auth::Role;

use crate::mqtt;
use crate::payload::now_us;
use crate::plot::{self, Axes, Xy};
use crate::report::{ratio_of, Table};
use crate::sampler::{RunUsage, Sampler};
use crate::stats::{duration_histogram, record_duration, LatencySummary, PerSecond};
use crate::target::{Kind, Target};

/// The emoji sent, in turn (all in the default `reactions.allowed`).
pub const EMOJI: [&str; 4] = ["🔥", "❤️", "😂", "👏"];

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Reactions per second, all clients together.
    pub rate: f64,
    pub seconds: f64,
    /// Sending connections, each its own user.
    pub clients: usize,
    /// How often a client sends what is due.
    pub tick: Duration,
    /// Clients are spread over 127.0.0.1 ..= 127.0.0.K.
    pub source_addrs: u8,
    /// How long to wait after the last send for the counts to add up.
    pub drain: Duration,
    pub progress: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ReactionsResult {
    pub target: Kind,
    pub offered_per_s: f64,
    pub seconds: f64,
    pub clients: usize,
    pub scheduled: u64,
    pub sent: u64,
    /// From the first scheduled reaction to the last one written.
    pub send_elapsed_s: f64,
    /// `sent / send_elapsed_s`: what the system took in (a server that reads slower pushes
    /// the clients back).
    pub achieved_per_s: f64,
    /// What the subscriber added up (window counts, or raw deliveries on Mosquitto).
    pub counted: u64,
    /// `counted` per second, from the first scheduled reaction to the last count.
    pub counted_per_s: f64,
    pub sent_by_emoji: BTreeMap<String, u64>,
    pub counted_by_emoji: BTreeMap<String, u64>,
    /// The stream's stored totals of the last frame (livecomments).
    pub totals: Option<BTreeMap<String, u64>>,
    /// Every emoji's count (and the stored totals) equals what was sent.
    pub exact: bool,
    /// Messages the subscriber received (frames, or single reactions on Mosquitto).
    pub messages: u64,
    /// From the last reaction written to the message that completed the count.
    pub settle_ms: Option<f64>,
    /// How late clients wrote against their schedule.
    pub schedule_lag_ms: LatencySummary,
    pub connect_errors: Vec<String>,
    pub timeline: Vec<TimelinePoint>,
    pub usage: RunUsage,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    pub t_s: u64,
    pub sent: u64,
    pub counted: u64,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(default)]
    counts: BTreeMap<String, u64>,
    #[serde(default)]
    totals: Option<BTreeMap<String, u64>>,
}

/// Shared by the subscriber and the run.
struct Counting {
    counted: AtomicU64,
    messages: AtomicU64,
    by_emoji: std::sync::Mutex<BTreeMap<String, u64>>,
    totals: std::sync::Mutex<Option<BTreeMap<String, u64>>>,
    per_s: PerSecond,
    last_us: AtomicU64,
}

fn source_ip(i: usize, k: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % k.max(1) as usize) as u8))
}

/// `n` publishes of the emoji in turn, pre-encoded, and where each one ends.
fn encoded(topic: &str, n: usize) -> (Bytes, Vec<usize>) {
    let mut buf = BytesMut::new();
    let mut ends = Vec::with_capacity(n);
    for i in 0..n {
        let body = serde_json::json!({ "emoji": EMOJI[i % EMOJI.len()] }).to_string();
        let _ =
            Packet::Publish(Publish::new(topic, QoS::AtMostOnce, body)).write(&mut buf, usize::MAX);
        ends.push(buf.len());
    }
    (buf.freeze(), ends)
}

/// How many of `sent` reactions (sent in turn from the first emoji) were each emoji.
fn split_by_emoji(sent: u64, out: &mut BTreeMap<String, u64>) {
    let n = EMOJI.len() as u64;
    for (i, e) in EMOJI.iter().enumerate() {
        *out.entry((*e).to_string()).or_default() += sent / n + u64::from((i as u64) < sent % n);
    }
}

pub async fn run(target: &Target, sc: &Scenario) -> anyhow::Result<ReactionsResult> {
    anyhow::ensure!(sc.rate > 0.0 && sc.seconds > 0.0 && sc.clients > 0);
    let sampler = Sampler::start(target.pid, Duration::from_secs(1));
    let stop = CancellationToken::new();
    let total_seconds = sc.seconds.ceil() as usize + sc.drain.as_secs() as usize + 30;

    // ---- the subscriber ----
    let user = "bench-reactions";
    let password = target.password(user, Role::Viewer)?;
    let (mut r, mut w) = mqtt::open(&target.tcp, None).await?;
    mqtt::handshake(
        &mut r,
        &mut w,
        user,
        password.as_deref().map(|p| ("bench", p)),
        Duration::from_secs(60),
    )
    .await?;
    mqtt::subscribe(&mut r, &mut w, &target.reactions_topic, 1).await?;

    // ---- the clients: connect all, then start the schedule ----
    let mut conns = Vec::with_capacity(sc.clients);
    let mut connect_errors = Vec::new();
    for i in 0..sc.clients {
        let user = format!("bench-r{i}");
        let password = target.password(&user, Role::Viewer)?;
        let opened = async {
            let (mut r, mut w) =
                mqtt::open(&target.tcp, Some(source_ip(i, sc.source_addrs))).await?;
            let login = password.as_deref().map(|p| ("bench", p));
            mqtt::handshake(&mut r, &mut w, &user, login, Duration::from_secs(60)).await?;
            Ok::<_, mqtt::ClientError>((r, w))
        };
        match opened.await {
            Ok(c) => conns.push(c),
            Err(e) if connect_errors.len() < 5 => connect_errors.push(e.to_string()),
            Err(_) => {}
        }
    }
    anyhow::ensure!(
        !conns.is_empty(),
        "no reaction client connected: {connect_errors:?}"
    );
    let clients = conns.len();
    let start = Instant::now() + Duration::from_millis(200);
    let epoch = now_us() + 200_000;
    let counting = Arc::new(Counting {
        counted: AtomicU64::new(0),
        messages: AtomicU64::new(0),
        by_emoji: std::sync::Mutex::new(BTreeMap::new()),
        totals: std::sync::Mutex::new(None),
        per_s: PerSecond::new(epoch, total_seconds),
        last_us: AtomicU64::new(0),
    });
    let plain = target.kind == Kind::Mosquitto;
    let payloads: Vec<(Vec<u8>, String)> = EMOJI
        .iter()
        .map(|e| {
            (
                serde_json::json!({ "emoji": e }).to_string().into_bytes(),
                e.to_string(),
            )
        })
        .collect();
    let subscriber = {
        let counting = counting.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let ping = mqtt::encode(&Packet::PingReq);
            let mut pinger = tokio::time::interval(Duration::from_secs(20));
            loop {
                let p = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = pinger.tick() => {
                        let _ = w.send(ping.clone()).await;
                        continue;
                    }
                    p = r.next() => p,
                };
                let Ok(Packet::Publish(p)) = p else {
                    if p.is_err() {
                        break;
                    }
                    continue;
                };
                let now = now_us();
                counting.messages.fetch_add(1, Ordering::Relaxed);
                let mut by = counting.by_emoji.lock().unwrap_or_else(|e| e.into_inner());
                let n = if plain {
                    match payloads.iter().find(|(b, _)| b[..] == p.payload[..]) {
                        Some((_, e)) => {
                            *by.entry(e.clone()).or_default() += 1;
                            1
                        }
                        None => 0,
                    }
                } else {
                    match serde_json::from_slice::<Frame>(&p.payload) {
                        Ok(f) => {
                            let mut n = 0;
                            for (e, c) in f.counts {
                                *by.entry(e).or_default() += c;
                                n += c;
                            }
                            if f.totals.is_some() {
                                *counting.totals.lock().unwrap_or_else(|e| e.into_inner()) =
                                    f.totals;
                            }
                            n
                        }
                        Err(_) => 0,
                    }
                };
                drop(by);
                if n > 0 {
                    counting.counted.fetch_add(n, Ordering::Relaxed);
                    counting.per_s.add(now, n);
                    counting.last_us.fetch_max(now, Ordering::Relaxed);
                }
            }
            w.disconnect().await;
        })
    };

    let per_client = sc.rate / clients as f64;
    let scheduled_each = (per_client * sc.seconds).round() as u64;
    let batch = ((per_client * sc.tick.as_secs_f64()).ceil() as usize).clamp(1, 1 << 16);
    let ring = (batch * 4).div_ceil(EMOJI.len()) * EMOJI.len();
    let (bytes, ends) = encoded(&target.react_topic, ring);
    let sent_ps = Arc::new(PerSecond::new(epoch, total_seconds));
    let lag = Arc::new(std::sync::Mutex::new(duration_histogram()));
    let last_send_us = Arc::new(AtomicU64::new(0));
    let sent_total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for (r, mut w) in conns {
        let (bytes, ends) = (bytes.clone(), ends.clone());
        let (sent_ps, lag, last, sent_total) = (
            sent_ps.clone(),
            lag.clone(),
            last_send_us.clone(),
            sent_total.clone(),
        );
        let tick = sc.tick;
        tasks.push(tokio::spawn(async move {
            // Nothing is read (QoS 0 publishes get no answer). The connection is handed back
            // and stays open until the counts are in.
            let mut sent = 0u64;
            let mut pos = 0usize; // index into the ring of publishes
            let mut next = start;
            while sent < scheduled_each {
                tokio::time::sleep_until(next).await;
                let now = Instant::now();
                record_duration(&lag, now.saturating_duration_since(next));
                let elapsed = now.saturating_duration_since(start).as_secs_f64();
                let due = ((elapsed * per_client).floor() as u64 + 1).min(scheduled_each);
                let mut n = due.saturating_sub(sent) as usize;
                while n > 0 {
                    let take = n.min(ends.len() - pos);
                    let from = if pos == 0 { 0 } else { ends[pos - 1] };
                    let to = ends[pos + take - 1];
                    if w.send(bytes.slice(from..to)).await.is_err() {
                        return (sent, None);
                    }
                    pos = (pos + take) % ends.len();
                    sent += take as u64;
                    n -= take;
                    let t = now_us();
                    sent_ps.add(t, take as u64);
                    last.fetch_max(t, Ordering::Relaxed);
                    sent_total.fetch_add(take as u64, Ordering::Relaxed);
                }
                next += tick;
            }
            (sent, Some((r, w)))
        }));
    }

    // ---- progress while sending ----
    let bar = crate::fanout::bar(
        sc.progress,
        (sc.seconds * 10.0).ceil() as u64,
        &format!("{} react", target.kind),
    );
    let mut sent_by_client = Vec::with_capacity(tasks.len());
    let mut open_conns = Vec::with_capacity(tasks.len());
    let mut tick = tokio::time::interval_at(start, Duration::from_millis(100));
    let mut last = (Instant::now(), 0u64, 0u64);
    let all_sent = futures_util::future::join_all(tasks);
    tokio::pin!(all_sent);
    loop {
        tokio::select! {
            done = &mut all_sent => {
                for (sent, conn) in done.into_iter().flatten() {
                    sent_by_client.push(sent);
                    open_conns.extend(conn);
                }
                break;
            }
            _ = tick.tick() => {
                bar.inc(1);
                if last.0.elapsed() >= Duration::from_secs(1) {
                    let s = sent_total.load(Ordering::Relaxed);
                    let c = counting.counted.load(Ordering::Relaxed);
                    let dt = last.0.elapsed().as_secs_f64();
                    bar.set_message(format!(
                        "sent {:.0}/s, counted {:.0}/s",
                        (s - last.1) as f64 / dt,
                        (c - last.2) as f64 / dt
                    ));
                    last = (Instant::now(), s, c);
                }
            }
        }
    }
    bar.finish_and_clear();
    let sent: u64 = sent_by_client.iter().sum();
    let last_send = last_send_us.load(Ordering::Relaxed);

    // ---- wait until the counts add up (or the drain time is over) ----
    let drained = Instant::now();
    while counting.counted.load(Ordering::Relaxed) < sent && drained.elapsed() < sc.drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !plain {
        // The frame that completes the count may precede the totals of a later window; one
        // more window (reactions.window_ms, 500 ms by default) settles the stored totals.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.cancel();
    let _ = subscriber.await;
    for (_, w) in open_conns {
        w.disconnect().await;
    }
    let samples = sampler.stop();

    let counted = counting.counted.load(Ordering::Relaxed);
    let counted_by_emoji =
        std::mem::take(&mut *counting.by_emoji.lock().unwrap_or_else(|e| e.into_inner()));
    let totals = counting
        .totals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let mut sent_by_emoji = BTreeMap::new();
    for s in &sent_by_client {
        split_by_emoji(*s, &mut sent_by_emoji);
    }
    let exact = counted_by_emoji == sent_by_emoji
        && totals.as_ref().is_none_or(|t| {
            t.iter()
                .filter(|(_, n)| **n > 0)
                .eq(sent_by_emoji.iter().filter(|(_, n)| **n > 0))
        });
    let last_count = counting.last_us.load(Ordering::Relaxed);
    let send_elapsed_s = (last_send.saturating_sub(epoch) as f64 / 1e6).max(1e-6);
    let sent_values = sent_ps.values();
    let counted_values = counting.per_s.values();
    let timeline_len = sent_values
        .iter()
        .zip(counted_values.iter())
        .rposition(|(s, c)| *s > 0 || *c > 0)
        .map_or(0, |i| i + 1);
    let timeline = (0..timeline_len)
        .map(|t| TimelinePoint {
            t_s: t as u64,
            sent: sent_values.get(t).copied().unwrap_or(0),
            counted: counted_values.get(t).copied().unwrap_or(0),
        })
        .collect();
    let lag = LatencySummary::of(&lag.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(ReactionsResult {
        target: target.kind,
        offered_per_s: sc.rate,
        seconds: sc.seconds,
        clients,
        scheduled: scheduled_each * clients as u64,
        sent,
        send_elapsed_s,
        achieved_per_s: sent as f64 / send_elapsed_s,
        counted,
        counted_per_s: counted as f64 / (last_count.saturating_sub(epoch) as f64 / 1e6).max(1e-6),
        sent_by_emoji,
        counted_by_emoji,
        totals,
        exact,
        messages: counting.messages.load(Ordering::Relaxed),
        settle_ms: (counted >= sent && last_count >= last_send)
            .then(|| (last_count - last_send) as f64 / 1000.0),
        schedule_lag_ms: lag,
        connect_errors,
        timeline,
        usage: RunUsage::of(&samples, epoch, last_send.max(last_count) + 1),
    })
}

/// One column per run, and ours/Mosquitto where both ran.
pub fn markdown(runs: &[ReactionsResult]) -> String {
    let labels: Vec<String> = runs.iter().map(|r| r.target.to_string()).collect();
    let find = |k| runs.iter().find(|r| r.target == k);
    let both = find(Kind::Livecomments).zip(find(Kind::Mosquitto));
    let mut t = Table::side_by_side(&labels, both.is_some());
    let q = |f: &dyn Fn(&ReactionsResult) -> f64| both.map(|(o, m)| ratio_of(f(o), f(m)));
    let cells = |f: &dyn Fn(&ReactionsResult) -> String| runs.iter().map(f).collect::<Vec<_>>();
    t.compare(
        "offered (clients × rate)",
        cells(&|r| {
            format!(
                "{:.0}/s ({} × {:.0}/s)",
                r.offered_per_s,
                r.clients,
                r.offered_per_s / r.clients as f64
            )
        }),
        None,
    );
    t.compare(
        "sent / scheduled",
        cells(&|r| format!("{} / {}", r.sent, r.scheduled)),
        None,
    );
    t.compare(
        "achieved send rate",
        cells(&|r| format!("{:.0}/s", r.achieved_per_s)),
        q(&|r| r.achieved_per_s),
    );
    t.compare(
        "counted (window sums / raw deliveries)",
        cells(&|r| r.counted.to_string()),
        None,
    );
    t.compare(
        "counted per second",
        cells(&|r| format!("{:.0}/s", r.counted_per_s)),
        q(&|r| r.counted_per_s),
    );
    t.compare(
        "messages to the subscriber",
        cells(&|r| r.messages.to_string()),
        q(&|r| r.messages as f64),
    );
    t.compare(
        "exact (every emoji; stored totals)",
        cells(&|r| {
            let mut s = if r.exact {
                "yes".to_string()
            } else {
                "NO".to_string()
            };
            if !r.exact {
                s.push_str(&format!(
                    " (sent {:?}, counted {:?})",
                    r.sent_by_emoji, r.counted_by_emoji
                ));
            }
            s
        }),
        None,
    );
    t.compare(
        "last send → count complete",
        cells(&|r| {
            r.settle_ms
                .map(|m| format!("{m:.0} ms"))
                .unwrap_or_else(|| "—".into())
        }),
        None,
    );
    t.compare(
        "schedule lag p99 / max",
        cells(&|r| {
            format!(
                "{:.1} / {:.1} ms",
                r.schedule_lag_ms.p99_ms, r.schedule_lag_ms.max_ms
            )
        }),
        None,
    );
    let usages: Vec<&RunUsage> = runs.iter().map(|r| &r.usage).collect();
    crate::report::usage_rows(&mut t, &usages, both.is_some());
    t.render()
}

/// `reactions.svg`: sent and counted per second of each run.
pub fn plot(runs: &[ReactionsResult], out: &Path) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    for r in runs {
        let pts = |f: fn(&TimelinePoint) -> u64| -> Vec<(f64, f64)> {
            r.timeline
                .iter()
                .map(|p| (p.t_s as f64 + 0.5, f(p) as f64 / 1000.0))
                .collect()
        };
        lines.push(Xy {
            label: format!("{} sent", r.target),
            kind: r.target,
            points: pts(|p| p.sent),
        });
        lines.push(Xy {
            label: format!("{} counted", r.target),
            kind: r.target,
            points: pts(|p| p.counted),
        });
    }
    plot::xy_linear_svg(
        &out.join("reactions.svg"),
        &format!(
            "reactions: {:.0}/s offered",
            runs.first().map(|r| r.offered_per_s).unwrap_or(0.0)
        ),
        Axes {
            x: "second of the run",
            y: "thousand reactions per second",
        },
        &lines,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_split_and_encoding_agree() {
        let mut by = BTreeMap::new();
        split_by_emoji(10, &mut by);
        assert_eq!(by.values().sum::<u64>(), 10);
        assert_eq!(by["🔥"], 3);
        assert_eq!(by["👏"], 2);
        let (bytes, ends) = encoded("streams/s/react", 8);
        assert_eq!(*ends.last().unwrap(), bytes.len());
        let mut buf = BytesMut::from(&bytes[..ends[1]]);
        let mut seen = Vec::new();
        while let Ok(Packet::Publish(p)) = Packet::read(&mut buf, 1 << 16) {
            seen.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        assert_eq!(seen, [r#"{"emoji":"🔥"}"#, r#"{"emoji":"❤️"}"#]);
    }
}

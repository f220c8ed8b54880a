//! The fan-out scenario: N subscribers on one topic, P posters on a fixed schedule, every
//! comment counted at every subscriber.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::auth::Role;

use crate::mqtt::{self, Endpoint};
use crate::payload::{self, now_us};
use crate::report::{
    Connections, Deliveries, Percentiles, Posts, RunResult, ScenarioSummary, TimelinePoint, Verdict,
};
use crate::sampler::{Sampler, UsageSummary};
use crate::schedule::Schedule;
use crate::stats::{
    duration_histogram, record_duration, LatencyRecorder, LatencySummary, PerSecond, Seen, SeqSet,
    SubscriberCounts,
};
use crate::target::{Format, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Tcp,
    Ws,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub subscribers: usize,
    /// Comments per second, all posters together.
    pub rate: f64,
    pub seconds: f64,
    pub posters: usize,
    /// New subscriber connections per second.
    pub connect_rate: f64,
    /// Connection attempts in flight at once.
    pub connect_concurrency: usize,
    /// Subscribers are spread over 127.0.0.1 ..= 127.0.0.K.
    pub source_addrs: u8,
    pub transport: Transport,
    pub comment_bytes: usize,
    /// How long to wait for stragglers after the last post.
    pub drain: Duration,
    pub keep_alive: Duration,
    /// The latency limit of the verdict.
    pub p99_limit_ms: f64,
    /// Show progress bars.
    pub progress: bool,
    /// QoS of the posts instead of the target's own (Mosquitto posts at QoS 0 in the fan-out
    /// scenario and at QoS 1 in the ingest scenario).
    pub post_qos: Option<QoS>,
}

/// Told when posting starts: the instant of the first scheduled post and its Unix time in
/// microseconds (other loads of a mixed run start with it).
pub type StartSignal = tokio::sync::oneshot::Sender<(Instant, u64)>;

/// Shared by every subscriber task.
struct Receiving {
    latency: LatencyRecorder,
    delivered: PerSecond,
    unique: AtomicU64,
    last_receive_us: AtomicU64,
}

/// Shared by every poster task.
struct Posting {
    sent_at_us: Vec<AtomicU64>,
    sent: AtomicU64,
    sent_per_s: PerSecond,
    /// What subscribers must receive: acknowledged posts (livecomments) or sent ones (QoS 0).
    accepted: Mutex<SeqSet>,
    answered: AtomicU64,
    rejected: Mutex<BTreeMap<String, u64>>,
    pubacks: AtomicU64,
    lag: Mutex<Histogram<u64>>,
    /// Post → inbox `ack` (livecomments), by second of the send time.
    ack: LatencyRecorder,
    /// Post → PUBACK, by second of the send time.
    puback: LatencyRecorder,
    /// Send times of posts waiting for their PUBACK, per poster, by packet id.
    in_flight: Vec<Mutex<HashMap<u16, u64>>>,
    /// Inbox acks per second of arrival.
    acked_per_s: PerSecond,
    last_ack_us: AtomicU64,
    /// Posts count as accepted when the inbox says so (else when sent).
    confirm_by_inbox: bool,
}

pub(crate) fn bar(enabled: bool, len: u64, prefix: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

fn source_ip(i: usize, k: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % k.max(1) as usize) as u8))
}

/// Runs the scenario against a started target.
pub async fn run(target: &Target, sc: &Scenario) -> anyhow::Result<RunResult> {
    run_with(target, sc, None).await
}

/// Runs the scenario; `started` hears when posting starts.
pub async fn run_with(
    target: &Target,
    sc: &Scenario,
    started: Option<StartSignal>,
) -> anyhow::Result<RunResult> {
    let started_at_ms = now_us() / 1000;
    let endpoint = match sc.transport {
        Transport::Tcp => target.tcp.clone(),
        Transport::Ws => target
            .ws
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{} has no WebSocket listener", target.kind))?,
    };
    let sampler = Sampler::start(target.pid, Duration::from_secs(1));
    let label = format!("{}", target.kind);

    let total_seconds = sc.seconds.ceil() as usize + sc.drain.as_secs() as usize + 5;

    // ---- connect the subscribers ----
    let stop = CancellationToken::new();
    let passwords: Vec<Option<String>> = (0..sc.subscribers)
        .map(|i| target.password(&format!("v{i}"), Role::Viewer))
        .collect::<anyhow::Result<_>>()?;
    let connecting = bar(
        sc.progress,
        sc.subscribers as u64,
        &format!("{label} connect"),
    );
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let gate = Arc::new(Semaphore::new(sc.connect_concurrency.max(1)));
    // Set when posting starts; subscribers ignore anything that arrives before.
    let receiving_slot: Arc<OnceLock<Arc<Receiving>>> = Arc::new(OnceLock::new());
    let connect_hist = Arc::new(Mutex::new(duration_histogram()));
    let mut connect_errors = Vec::new();
    let mut connected = 0usize;
    let mut on_ready = |r: Result<(), String>| {
        connecting.inc(1);
        match r {
            Ok(()) => connected += 1,
            Err(e) if connect_errors.len() < 5 => connect_errors.push(e),
            Err(_) => {}
        }
    };
    let connect_started = Instant::now();
    let mut subscribers: Vec<JoinHandle<SubscriberCounts>> = Vec::with_capacity(sc.subscribers);
    let interval = Duration::from_secs_f64(1.0 / sc.connect_rate.max(1.0));
    for (i, password) in passwords.into_iter().enumerate() {
        tokio::time::sleep_until(connect_started + interval.mul_f64(i as f64)).await;
        let permit = gate.clone().acquire_owned().await?;
        let task = SubscriberTask {
            index: i,
            posters: sc.posters.max(1),
            endpoint: endpoint.clone(),
            source: source_ip(i, sc.source_addrs),
            client_id: format!("bench-v{i}"),
            password,
            topic: target.subscribe_topic.clone(),
            keep_alive: sc.keep_alive,
            format: target.format,
            stop: stop.clone(),
        };
        let ready = ready_tx.clone();
        let (slot, hist) = (receiving_slot.clone(), connect_hist.clone());
        subscribers.push(tokio::spawn(task.run(permit, ready, slot, hist)));
        while let Ok(r) = ready_rx.try_recv() {
            on_ready(r);
        }
    }
    drop(ready_tx);
    while let Some(r) = ready_rx.recv().await {
        on_ready(r);
    }
    let connect_elapsed = connect_started.elapsed();
    connecting.finish_and_clear();
    let connect_ms = LatencySummary::of(&connect_hist.lock().unwrap_or_else(|e| e.into_inner()));

    // ---- posters: connect, then start the schedule ----
    let posters_n = sc.posters.max(1);
    let mut poster_conns = Vec::new();
    for p in 0..posters_n {
        let user = format!("bench-p{p}");
        let login = target.password(&user, Role::Viewer)?;
        poster_conns.push(connect_poster(target, &user, login.as_deref(), sc.keep_alive).await?);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let epoch = now_us() + 100_000;
    let schedule = Schedule::new(start, sc.rate, sc.seconds);
    let posting = Arc::new(Posting {
        sent_at_us: (0..schedule.total()).map(|_| AtomicU64::new(0)).collect(),
        sent: AtomicU64::new(0),
        sent_per_s: PerSecond::new(epoch, total_seconds),
        accepted: Mutex::new(SeqSet::default()),
        answered: AtomicU64::new(0),
        rejected: Mutex::new(BTreeMap::new()),
        pubacks: AtomicU64::new(0),
        lag: Mutex::new(duration_histogram()),
        ack: LatencyRecorder::new(epoch, 8),
        puback: LatencyRecorder::new(epoch, 8),
        in_flight: (0..posters_n).map(|_| Mutex::new(HashMap::new())).collect(),
        acked_per_s: PerSecond::new(epoch, total_seconds),
        last_ack_us: AtomicU64::new(0),
        confirm_by_inbox: target.inbox_topic("x").is_some(),
    });
    let post_qos = sc.post_qos.unwrap_or(target.post_qos);
    let receiving = Arc::new(Receiving {
        latency: LatencyRecorder::new(epoch, 16),
        delivered: PerSecond::new(epoch, total_seconds),
        unique: AtomicU64::new(0),
        last_receive_us: AtomicU64::new(0),
    });
    let _ = receiving_slot.set(receiving.clone());
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (p, (r, w)) in poster_conns.into_iter().enumerate() {
        readers.push(tokio::spawn(read_answers(
            r,
            p,
            posting.clone(),
            stop.clone(),
        )));
        let task = PosterTask {
            index: p,
            count: posters_n,
            topic: target.post_topic.clone(),
            qos: post_qos,
            comment_bytes: sc.comment_bytes,
            keep_alive: sc.keep_alive,
            schedule,
            posting: posting.clone(),
        };
        writers.push(tokio::spawn(task.post(w)));
    }
    if let Some(tx) = started {
        let _ = tx.send((start, epoch));
    }

    // ---- run: progress while the schedule plays ----
    let ticks = (sc.seconds * 10.0).ceil() as u64;
    let running = bar(sc.progress, ticks, &format!("{label} post"));
    let expected_per_comment = connected as u64;
    let mut last = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval_at(start, Duration::from_millis(100));
    // Posters hand their connection back when their schedule is done; it stays open until
    // the end of the run (livecomments may still be answering).
    let writers_done = async {
        let mut connections = Vec::new();
        for w in writers {
            if let Ok(Some(w)) = w.await {
                connections.push(w);
            }
        }
        connections
    };
    tokio::pin!(writers_done);
    let poster_writers = loop {
        tokio::select! {
            connections = &mut writers_done => break connections,
            _ = tick.tick() => {
                running.inc(1);
                let unique = receiving.unique.load(Ordering::Relaxed);
                if last.0.elapsed() >= Duration::from_secs(1) {
                    let rate = (unique - last.1) as f64 / last.0.elapsed().as_secs_f64();
                    last = (Instant::now(), unique);
                    let s = sampler.latest();
                    running.set_message(format!(
                        "{:.0} deliveries/s, server {:.0}% CPU, generator {:.0}% CPU",
                        rate,
                        s.and_then(|s| s.sut).map(|u| u.cpu_pct).unwrap_or(0.0),
                        s.map(|s| s.generator.cpu_pct).unwrap_or(0.0),
                    ));
                }
            }
        }
    };
    running.finish_and_clear();

    // ---- drain: wait for answers and stragglers ----
    let draining = bar(
        sc.progress,
        sc.drain.as_millis() as u64 / 100,
        &format!("{label} drain"),
    );
    let drain_started = Instant::now();
    loop {
        let sent = posting.sent.load(Ordering::Relaxed);
        let answered = (!posting.confirm_by_inbox
            || posting.answered.load(Ordering::Relaxed) >= sent)
            && (post_qos == QoS::AtMostOnce || posting.pubacks.load(Ordering::Relaxed) >= sent);
        let accepted = posting
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        let complete = receiving.unique.load(Ordering::Relaxed) >= accepted * expected_per_comment;
        if (answered && complete) || drain_started.elapsed() >= sc.drain {
            break;
        }
        draining.set_position(drain_started.elapsed().as_millis() as u64 / 100);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    draining.finish_and_clear();
    stop.cancel();
    let mut counts = Vec::with_capacity(subscribers.len());
    for s in subscribers {
        counts.push(s.await?);
    }
    for r in readers {
        let _ = r.await;
    }
    for w in poster_writers {
        w.disconnect().await;
    }
    let samples = sampler.stop();

    // ---- results ----
    let accepted = std::mem::take(&mut *posting.accepted.lock().unwrap_or_else(|e| e.into_inner()));
    let sent = posting.sent.load(Ordering::Relaxed);
    let connected_counts: Vec<&SubscriberCounts> = counts
        .iter()
        .filter(|c| c.error.as_deref() != Some(NEVER_CONNECTED))
        .collect();
    let dropped = connected_counts
        .iter()
        .filter(|c| c.error.is_some())
        .count();
    for c in &connected_counts {
        if let Some(e) = &c.error {
            if connect_errors.len() < 5 {
                connect_errors.push(format!("dropped: {e}"));
            }
        }
    }
    // Every subscriber should have what was acknowledged, and also what any subscriber got
    // (an overloaded run ends before every acknowledgement arrived; the comments delivered
    // were evidently accepted).
    let mut evident = accepted.clone();
    for c in &connected_counts {
        evident.union_with(c.seen());
    }
    let expected = evident.len() * connected_counts.len() as u64;
    let mut d = Deliveries {
        expected,
        unique: 0,
        duplicates: 0,
        out_of_order: 0,
        server_seq_regressions: 0,
        missing: 0,
        loss_pct: 0.0,
        subscribers_with_loss: 0,
        per_s: 0.0,
        messages: 0,
        comments_per_message: 0.0,
        other_events: 0,
        garbled: 0,
    };
    for c in &connected_counts {
        let missing = c.missing(&evident);
        d.unique += c.unique();
        d.duplicates += c.duplicates;
        d.out_of_order += c.out_of_order;
        d.server_seq_regressions += c.server_seq_regressions;
        d.missing += missing;
        d.subscribers_with_loss += usize::from(missing > 0);
        d.messages += c.messages;
        d.other_events += c.other_events;
        d.garbled += c.garbled;
    }
    d.loss_pct = if expected > 0 {
        d.missing as f64 / expected as f64 * 100.0
    } else {
        0.0
    };
    let last_us = receiving.last_receive_us.load(Ordering::Relaxed);
    let span_s = (last_us.saturating_sub(epoch) as f64 / 1e6).max(sc.seconds);
    d.per_s = d.unique as f64 / span_s;
    d.comments_per_message = if d.messages > 0 {
        (d.unique + d.duplicates) as f64 / d.messages as f64
    } else {
        0.0
    };

    let (all, per_second) = receiving.latency.merged();
    let latency_ms = LatencySummary::of(&all);
    let (ack_all, ack_per_second) = posting.ack.merged();
    let (puback_all, puback_per_second) = posting.puback.merged();
    let sent_ps = posting.sent_per_s.values();
    let delivered_ps = receiving.delivered.values();
    let timeline_len = per_second
        .len()
        .max(ack_per_second.len())
        .max(sc.seconds.ceil() as usize)
        .min(total_seconds);
    let pcts = |hs: &[Histogram<u64>], t: usize| {
        hs.get(t)
            .filter(|h| !h.is_empty())
            .map(|h| Percentiles::from(&LatencySummary::of(h)))
    };
    let timeline = (0..timeline_len)
        .map(|t| {
            let h = per_second
                .get(t)
                .map(LatencySummary::of)
                .unwrap_or_default();
            let in_second = |s: &&crate::sampler::Sample| {
                s.at_us >= epoch + t as u64 * 1_000_000
                    && s.at_us < epoch + (t as u64 + 1) * 1_000_000
            };
            let sample = samples.iter().find(in_second);
            TimelinePoint {
                t_s: t as u64,
                sent: sent_ps.get(t).copied().unwrap_or(0),
                delivered: delivered_ps.get(t).copied().unwrap_or(0),
                p50_ms: h.p50_ms,
                p99_ms: h.p99_ms,
                max_ms: h.max_ms,
                ack_ms: pcts(&ack_per_second, t),
                puback_ms: pcts(&puback_per_second, t),
                sut_cpu_pct: sample.and_then(|s| s.sut).map(|u| u.cpu_pct),
                sut_rss_mb: sample.and_then(|s| s.sut).map(|u| u.rss_mb),
                generator_cpu_pct: sample.map(|s| s.generator.cpu_pct),
            }
        })
        .collect();

    // Usage while posting (the connect phase is reported by its own numbers).
    let in_run = |s: &&crate::sampler::Sample| s.at_us >= epoch;
    let run_samples: Vec<_> = samples.iter().filter(in_run).collect();
    let sut = target
        .pid
        .map(|_| UsageSummary::of(run_samples.iter().filter_map(|s| s.sut)));
    let generator = UsageSummary::of(run_samples.iter().map(|s| s.generator));
    let machine_busy_avg_pct = if run_samples.is_empty() {
        0.0
    } else {
        run_samples.iter().map(|s| s.machine_busy_pct).sum::<f64>() / run_samples.len() as f64
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let other_load_pct = (machine_busy_avg_pct * cores
        - sut.map(|s| s.cpu_avg_pct).unwrap_or(0.0)
        - generator.cpu_avg_pct)
        .max(0.0);
    let lag = LatencySummary::of(&posting.lag.lock().unwrap_or_else(|e| e.into_inner()));
    let rejected = std::mem::take(&mut *posting.rejected.lock().unwrap_or_else(|e| e.into_inner()));
    let rejected_total: u64 = rejected.values().sum();
    let answered = posting.answered.load(Ordering::Relaxed);
    let posts = Posts {
        scheduled: schedule.total(),
        sent,
        accepted: accepted.len(),
        rejected,
        unanswered: if posting.confirm_by_inbox {
            sent.saturating_sub(answered)
        } else {
            0
        },
        pubacks: posting.pubacks.load(Ordering::Relaxed),
        ack_ms: posting
            .confirm_by_inbox
            .then(|| LatencySummary::of(&ack_all)),
        puback_ms: (post_qos != QoS::AtMostOnce).then(|| LatencySummary::of(&puback_all)),
        acked_per_s: {
            let acked = if posting.confirm_by_inbox {
                posting.answered.load(Ordering::Relaxed) - rejected_total
            } else {
                posting.pubacks.load(Ordering::Relaxed)
            };
            let last = posting.last_ack_us.load(Ordering::Relaxed);
            acked as f64 / (last.saturating_sub(epoch) as f64 / 1e6).max(sc.seconds)
        },
        schedule_lag_ms: lag,
    };
    let verdict = Verdict {
        zero_loss: d.missing == 0 && posts.unanswered == 0 && posts.sent == posts.scheduled,
        p99_within_limit: latency_ms.p99_ms <= sc.p99_limit_ms,
        p99_limit_ms: sc.p99_limit_ms,
        generator_saturated: lag.p99_ms > 10.0 || generator.cpu_avg_pct > 0.9 * cores * 100.0,
        machine_saturated: machine_busy_avg_pct > 90.0,
    };
    Ok(RunResult {
        target: target.kind,
        started_at_ms,
        scenario: ScenarioSummary {
            subscribers: sc.subscribers,
            rate_per_s: sc.rate,
            seconds: sc.seconds,
            posters: sc.posters.max(1),
            comment_bytes: sc.comment_bytes,
            transport: format!("{:?}", sc.transport).to_lowercase(),
            source_addrs: sc.source_addrs,
            connect_rate_per_s: sc.connect_rate,
        },
        connections: Connections {
            requested: sc.subscribers,
            connected: connected_counts.len(),
            failed: sc.subscribers - connected_counts.len(),
            dropped,
            errors: connect_errors,
            connect_ms,
            elapsed_s: connect_elapsed.as_secs_f64(),
            achieved_rate_per_s: connected as f64 / connect_elapsed.as_secs_f64().max(1e-6),
        },
        posts,
        deliveries: d,
        latency_ms,
        sut,
        generator,
        machine_busy_avg_pct,
        other_load_pct,
        timeline,
        verdict,
    })
}

/// The error of a subscriber that never got its SUBACK.
const NEVER_CONNECTED: &str = "never connected";

struct SubscriberTask {
    index: usize,
    posters: usize,
    endpoint: Endpoint,
    source: IpAddr,
    client_id: String,
    password: Option<String>,
    topic: String,
    keep_alive: Duration,
    format: Format,
    stop: CancellationToken,
}

impl SubscriberTask {
    async fn run(
        self,
        permit: tokio::sync::OwnedSemaphorePermit,
        ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
        receiving: Arc<OnceLock<Arc<Receiving>>>,
        connect_hist: Arc<Mutex<Histogram<u64>>>,
    ) -> SubscriberCounts {
        let mut counts = SubscriberCounts::new(self.posters);
        let began = Instant::now();
        let login = self.password.as_deref().map(|p| ("bench", p));
        let opened = tokio::time::timeout(Duration::from_secs(30), async {
            let (mut r, mut w) = mqtt::open(&self.endpoint, Some(self.source)).await?;
            mqtt::handshake(&mut r, &mut w, &self.client_id, login, self.keep_alive).await?;
            mqtt::subscribe(&mut r, &mut w, &self.topic, 1).await?;
            Ok::<_, mqtt::ClientError>((r, w))
        })
        .await
        .unwrap_or(Err(mqtt::ClientError::Timeout));
        drop(permit);
        let (mut reader, mut writer) = match opened {
            Ok(rw) => rw,
            Err(e) => {
                let _ = ready.send(Err(format!("{}: {e}", self.source)));
                counts.error = Some(NEVER_CONNECTED.into());
                return counts;
            }
        };
        record_duration(&connect_hist, began.elapsed());
        let _ = ready.send(Ok(()));
        drop(ready);

        let ping = mqtt::encode(&Packet::PingReq);
        let mut pinger = tokio::time::interval(self.keep_alive / 2);
        pinger.tick().await;
        let mut comments: Vec<payload::Comment> = Vec::new();
        let mut latencies: Vec<(u64, u64)> = Vec::new();
        let mut shared: Option<Arc<Receiving>> = None;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                packet = reader.next() => match packet {
                    Ok(Packet::Publish(p)) => {
                        let now = now_us();
                        let Some(rx) = shared.clone().or_else(|| receiving.get().cloned()) else {
                            continue; // before posting started: nothing of ours
                        };
                        shared = Some(rx.clone());
                        counts.messages += 1;
                        comments.clear();
                        let parsed = match self.format {
                            Format::Frames => payload::parse_frame(&p.payload, &mut comments),
                            Format::Plain => payload::parse_post(&p.payload, &mut comments),
                        };
                        match parsed {
                            Some(parsed) => counts.other_events += parsed.other as u64,
                            None => counts.garbled += 1,
                        }
                        latencies.clear();
                        for c in &comments {
                            if let Some(server_seq) = c.server_seq {
                                counts.record_server_seq(server_seq);
                            }
                            if counts.record(c.seq) == Seen::First {
                                latencies.push((c.sent_us, now.saturating_sub(c.sent_us)));
                            }
                        }
                        if !comments.is_empty() {
                            rx.latency.record(self.index, &latencies);
                            rx.delivered.add(now, comments.len() as u64);
                            rx.unique.fetch_add(latencies.len() as u64, Ordering::Relaxed);
                            rx.last_receive_us.fetch_max(now, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        counts.error = Some(e.to_string());
                        return counts;
                    }
                },
                _ = pinger.tick() => {
                    if let Err(e) = writer.send(ping.clone()).await {
                        counts.error = Some(e.to_string());
                        return counts;
                    }
                }
            }
        }
        writer.disconnect().await;
        counts
    }
}

struct PosterTask {
    index: usize,
    count: usize,
    topic: String,
    qos: QoS,
    comment_bytes: usize,
    keep_alive: Duration,
    schedule: Schedule,
    posting: Arc<Posting>,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "type")]
    kind: String,
    client_msg_id: Option<String>,
    code: Option<String>,
}

/// A poster's connection (subscribed to its inbox where the target has one).
async fn connect_poster(
    target: &Target,
    user: &str,
    password: Option<&str>,
    keep_alive: Duration,
) -> anyhow::Result<(mqtt::Reader, mqtt::Writer)> {
    let (mut r, mut w) = mqtt::open(&target.tcp, None).await?;
    let login = password.map(|p| ("bench", p));
    mqtt::handshake(&mut r, &mut w, user, login, keep_alive).await?;
    if let Some(inbox) = target.inbox_topic(user) {
        mqtt::subscribe(&mut r, &mut w, &inbox, 1).await?;
    }
    Ok((r, w))
}

/// PUBACKs and inbox answers, until the run stops.
async fn read_answers(
    mut r: mqtt::Reader,
    poster: usize,
    posting: Arc<Posting>,
    stop: CancellationToken,
) {
    let mut one = Vec::with_capacity(1);
    loop {
        let packet = tokio::select! {
            _ = stop.cancelled() => break,
            p = r.next() => p,
        };
        match packet {
            Ok(Packet::PubAck(ack)) => {
                let now = now_us();
                posting.pubacks.fetch_add(1, Ordering::Relaxed);
                let sent = posting.in_flight[poster]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&ack.pkid);
                if let Some(sent) = sent {
                    one.clear();
                    one.push((sent, now.saturating_sub(sent)));
                    posting.puback.record(poster, &one);
                }
                if !posting.confirm_by_inbox {
                    posting.acked_per_s.add(now, 1);
                    posting.last_ack_us.fetch_max(now, Ordering::Relaxed);
                }
            }
            Ok(Packet::Publish(p)) => posting.answer(&p.payload),
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

impl PosterTask {
    /// Sends this poster's share of the schedule; returns the connection unless it failed.
    async fn post(self, mut w: mqtt::Writer) -> Option<mqtt::Writer> {
        let mut pkid: u16 = 0;
        let keep_alive = self.keep_alive / 2;
        let mut last_write = Instant::now();
        for seq in self.schedule.seqs_of(self.index, self.count) {
            let due = self.schedule.due(seq);
            // Keep the connection alive through long gaps (very low rates).
            while due.saturating_duration_since(last_write) > keep_alive {
                tokio::time::sleep_until(last_write + keep_alive).await;
                w.send(mqtt::encode(&Packet::PingReq)).await.ok()?;
                last_write = Instant::now();
            }
            tokio::time::sleep_until(due).await;
            let lag = Instant::now().saturating_duration_since(due);
            let sent_us = now_us();
            let mut publish = Publish::new(
                self.topic.as_str(),
                self.qos,
                Bytes::from(payload::post_body(seq, sent_us, self.comment_bytes)),
            );
            let p = &self.posting;
            // Before sending: the answers may come back before this task runs again.
            p.sent_at_us[seq as usize].store(sent_us, Ordering::Relaxed);
            if self.qos != QoS::AtMostOnce {
                pkid = pkid % u16::MAX + 1;
                publish.pkid = pkid;
                p.in_flight[self.index]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(pkid, sent_us);
            }
            w.send(mqtt::encode(&Packet::Publish(publish))).await.ok()?;
            last_write = Instant::now();
            p.sent.fetch_add(1, Ordering::Relaxed);
            p.sent_per_s.add(sent_us, 1);
            record_duration(&p.lag, lag);
            if !p.confirm_by_inbox {
                p.accepted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seq);
            }
        }
        Some(w)
    }
}

impl Posting {
    /// An inbox answer: `ack` (stored) or `reject`.
    fn answer(&self, payload: &[u8]) {
        let Ok(a) = serde_json::from_slice::<Answer>(payload) else {
            return;
        };
        let Some(seq) = a.client_msg_id.and_then(|id| id.parse::<u64>().ok()) else {
            return;
        };
        match a.kind.as_str() {
            "ack" => {
                let fresh = self
                    .accepted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seq);
                if fresh {
                    self.answered.fetch_add(1, Ordering::Relaxed);
                    let now = now_us();
                    self.acked_per_s.add(now, 1);
                    self.last_ack_us.fetch_max(now, Ordering::Relaxed);
                    if let Some(sent) = self.sent_at_us.get(seq as usize) {
                        let sent = sent.load(Ordering::Relaxed);
                        // The poster of `seq` is `seq % posters`: its shard of the recorder.
                        self.ack
                            .record(seq as usize, &[(sent, now.saturating_sub(sent))]);
                    }
                }
            }
            "reject" | "held" => {
                self.answered.fetch_add(1, Ordering::Relaxed);
                let code = a.code.unwrap_or(a.kind);
                *self
                    .rejected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(code)
                    .or_default() += 1;
            }
            _ => {}
        }
    }
}

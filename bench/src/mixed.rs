//! The mixed scenario, the shape of a real final: viewers on one stream receiving comments
//! (the fan-out engine), reactions from many clients at the same time (the reactions
//! scenario), moderation on as configured, and one viewer reconnecting every few
//! milliseconds (connect, subscribe, hold until the next tick, disconnect). All three start
//! together when the first comment is due and run for the same time.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use wire::auth::Role;

use crate::fanout::{self, Scenario as FanoutScenario};
use crate::mqtt;
use crate::reactions::{self, ReactionsResult};
use crate::report::{ratio_of, RunResult, Table};
use crate::stats::{duration_histogram, LatencySummary};
use crate::target::{Kind, Target};

#[derive(Debug, Clone)]
pub struct Scenario {
    pub fanout: FanoutScenario,
    /// Reactions alongside (`rate` 0: none).
    pub reactions: reactions::Scenario,
    /// A viewer reconnects this often (none when zero).
    pub churn_every: Duration,
}

/// The reconnecting viewer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnResult {
    pub every_ms: f64,
    pub cycles: u64,
    pub failures: u64,
    pub errors: Vec<String>,
    /// TCP connect → CONNACK → SUBACK.
    pub connect_ms: LatencySummary,
    pub cycles_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MixedResult {
    pub target: Kind,
    pub fanout: RunResult,
    pub reactions: Option<ReactionsResult>,
    pub churn: ChurnResult,
}

/// One viewer reconnecting every `every` for `seconds` from `start`.
async fn churn(target: &Target, start: Instant, seconds: f64, every: Duration) -> ChurnResult {
    let mut r = ChurnResult {
        every_ms: every.as_secs_f64() * 1000.0,
        ..ChurnResult::default()
    };
    if every.is_zero() {
        return r;
    }
    let user = "bench-churn";
    let password = match target.password(user, Role::Viewer) {
        Ok(p) => p,
        Err(e) => {
            r.errors.push(e.to_string());
            return r;
        }
    };
    let mut hist = duration_histogram();
    let end = start + Duration::from_secs_f64(seconds);
    let mut next = start;
    let mut held: Option<mqtt::Writer> = None;
    while next < end {
        tokio::time::sleep_until(next).await;
        next += every;
        if let Some(w) = held.take() {
            w.disconnect().await;
        }
        let t = Instant::now();
        let login = password.as_deref().map(|p| ("bench", p));
        let opened = tokio::time::timeout(Duration::from_secs(10), async {
            let (mut rd, mut w) = mqtt::open(&target.tcp, None).await?;
            mqtt::handshake(&mut rd, &mut w, user, login, Duration::from_secs(60)).await?;
            mqtt::subscribe(&mut rd, &mut w, &target.subscribe_topic, 1).await?;
            Ok::<_, mqtt::ClientError>(w)
        })
        .await
        .unwrap_or(Err(mqtt::ClientError::Timeout));
        r.cycles += 1;
        match opened {
            Ok(w) => {
                let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                held = Some(w);
            }
            Err(e) => {
                r.failures += 1;
                if r.errors.len() < 5 {
                    r.errors.push(e.to_string());
                }
            }
        }
    }
    if let Some(w) = held {
        w.disconnect().await;
    }
    r.connect_ms = LatencySummary::of(&hist);
    r.cycles_per_s = r.cycles as f64 / seconds.max(1e-6);
    r
}

pub async fn run(target: &Target, sc: &Scenario) -> anyhow::Result<MixedResult> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let seconds = sc.fanout.seconds;
    let side = async {
        let Ok((start, _epoch)) = rx.await else {
            return (None, ChurnResult::default());
        };
        let reacting = async {
            if sc.reactions.rate > 0.0 {
                Some(reactions::run(target, &sc.reactions).await)
            } else {
                None
            }
        };
        let (reacted, churned) =
            tokio::join!(reacting, churn(target, start, seconds, sc.churn_every));
        (reacted, churned)
    };
    let (fanned, (reacted, churned)) =
        tokio::join!(fanout::run_with(target, &sc.fanout, Some(tx)), side);
    Ok(MixedResult {
        target: target.kind,
        fanout: fanned?,
        reactions: reacted.transpose()?,
        churn: churned,
    })
}

pub fn markdown(runs: &[MixedResult]) -> String {
    let labels: Vec<String> = runs.iter().map(|r| r.target.to_string()).collect();
    let find = |k| runs.iter().find(|r| r.target == k);
    let both = find(Kind::Livecomments).zip(find(Kind::Mosquitto));
    let mut t = Table::side_by_side(&labels, both.is_some());
    let q = |f: &dyn Fn(&MixedResult) -> f64| both.map(|(o, m)| ratio_of(f(o), f(m)));
    let cells = |f: &dyn Fn(&MixedResult) -> String| runs.iter().map(f).collect::<Vec<_>>();
    t.compare(
        "viewers connected",
        cells(&|r| {
            let c = &r.fanout.connections;
            format!("{} / {} ({} dropped)", c.connected, c.requested, c.dropped)
        }),
        None,
    );
    t.compare(
        "comments sent / accepted",
        cells(&|r| format!("{} / {}", r.fanout.posts.sent, r.fanout.posts.accepted)),
        None,
    );
    t.compare(
        "deliveries unique / expected (missing)",
        cells(&|r| {
            let d = &r.fanout.deliveries;
            format!("{} / {} ({})", d.unique, d.expected, d.missing)
        }),
        None,
    );
    t.compare(
        "deliveries/s",
        cells(&|r| format!("{:.0}", r.fanout.deliveries.per_s)),
        q(&|r| r.fanout.deliveries.per_s),
    );
    t.compare(
        "post → receive p50 / p99 / max",
        cells(&|r| {
            let l = &r.fanout.latency_ms;
            format!("{:.1} / {:.1} / {:.1} ms", l.p50_ms, l.p99_ms, l.max_ms)
        }),
        q(&|r| r.fanout.latency_ms.p99_ms),
    );
    t.compare(
        "post → durable ack p99",
        cells(&|r| match &r.fanout.posts.ack_ms {
            Some(a) => format!("{:.1} ms", a.p99_ms),
            None => "—".into(),
        }),
        None,
    );
    t.compare(
        "reactions sent / achieved rate",
        cells(&|r| match &r.reactions {
            Some(x) => format!("{} / {:.0}/s", x.sent, x.achieved_per_s),
            None => "—".into(),
        }),
        q(&|r| r.reactions.as_ref().map_or(0.0, |x| x.achieved_per_s)),
    );
    t.compare(
        "reactions counted (exact?)",
        cells(&|r| match &r.reactions {
            Some(x) => format!(
                "{} ({})",
                x.counted,
                if x.exact { "exact" } else { "NOT exact" }
            ),
            None => "—".into(),
        }),
        None,
    );
    t.compare(
        "reconnecting viewer: cycles (failures)",
        cells(&|r| format!("{} ({})", r.churn.cycles, r.churn.failures)),
        None,
    );
    t.compare(
        "reconnect → SUBACK p50 / p99",
        cells(&|r| {
            format!(
                "{:.1} / {:.1} ms",
                r.churn.connect_ms.p50_ms, r.churn.connect_ms.p99_ms
            )
        }),
        q(&|r| r.churn.connect_ms.p99_ms),
    );
    t.compare(
        "server CPU avg / RSS max",
        cells(&|r| match r.fanout.sut {
            Some(s) => format!("{:.0} % / {:.0} MB", s.cpu_avg_pct, s.rss_max_mb),
            None => "—".into(),
        }),
        q(&|r| r.fanout.sut.map_or(0.0, |s| s.cpu_avg_pct)),
    );
    t.compare(
        "generator CPU avg",
        cells(&|r| format!("{:.0} %", r.fanout.generator.cpu_avg_pct)),
        None,
    );
    t.compare(
        "other processes' CPU",
        cells(&|r| format!("{:.0} %", r.fanout.other_load_pct)),
        None,
    );
    t.compare(
        "verdict",
        cells(&|r| {
            let v = &r.fanout.verdict;
            let mut s = if v.zero_loss && v.p99_within_limit {
                format!("sustained (0 loss, p99 ≤ {:.0} ms)", v.p99_limit_ms)
            } else if !v.zero_loss {
                "LOSS".to_string()
            } else {
                format!("p99 > {:.0} ms", v.p99_limit_ms)
            };
            if v.generator_saturated {
                s.push_str("; generator saturated");
            }
            if v.machine_saturated {
                s.push_str("; machine saturated");
            }
            s
        }),
        None,
    );
    t.render()
}

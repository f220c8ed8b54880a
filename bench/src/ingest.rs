//! The ingest scenario: many posters send QoS 1 comments into one stream at a fixed total rate,
//! each listening on its inbox; one viewer checks that every acknowledged comment arrives.
//! A sweep over rates finds the highest one whose acknowledgements stay within a p99 limit.
//!
//! livecomments answers twice: the PUBACK when the post is handed to the write path, and the
//! inbox `ack` once it is stored durably (group commit, fsync). Mosquitto (persistence off)
//! only has the PUBACK. The comparison therefore shows ours durable ack and ours PUBACK
//! against Mosquitto's PUBACK.

use std::path::Path;

use rumqttc::mqttbytes::QoS;
use serde::Serialize;

use crate::fanout::{self, Scenario};
use crate::plot::{self, Axes, Line, Point, Xy};
use crate::probe::{self, BucketSummary, FsyncProbe};
use crate::report::{ratio_of, RunResult, Table};
use crate::stats::LatencySummary;
use crate::target::{Kind, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Offered rates (comments/s, all posters together), one step each.
    pub rates: Vec<f64>,
    /// The fan-out settings of every step (`rate` is replaced by each step's).
    pub base: Scenario,
    /// The acknowledgement p99 a sustained step stays within.
    pub ack_limit_ms: f64,
}

/// One step of the sweep against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub target: Kind,
    pub rate: f64,
    /// Acknowledged posts per second (durable inbox acks for livecomments, PUBACKs for
    /// Mosquitto).
    pub acked_per_s: f64,
    /// The acknowledgement the limit applies to: durable ack (livecomments), PUBACK
    /// (Mosquitto).
    pub ack_ms: LatencySummary,
    pub puback_ms: Option<LatencySummary>,
    pub sustained: bool,
    /// Why a step is not sustained.
    pub reasons: Vec<String>,
    /// The disk while the step ran: 4 KiB write + fdatasync every 20 ms next to the data.
    pub fsync_ms: LatencySummary,
    /// The store's commits during the step (livecomments' /metrics), seconds.
    pub commit_s: Option<BucketSummary>,
    /// Comments per commit during the step.
    pub batch_size: Option<BucketSummary>,
    pub run: RunResult,
}

impl Step {
    fn of(run: RunResult, limit_ms: f64) -> Step {
        let p = &run.posts;
        let ack_ms = p.ack_ms.or(p.puback_ms).unwrap_or_default();
        let mut reasons = Vec::new();
        if p.sent < p.scheduled {
            reasons.push(format!("{} of {} posts sent", p.sent, p.scheduled));
        }
        if !p.rejected.is_empty() {
            let codes: Vec<String> = p.rejected.iter().map(|(c, n)| format!("{c} {n}")).collect();
            reasons.push(format!("rejected: {}", codes.join(", ")));
        }
        if p.unanswered > 0 {
            reasons.push(format!("{} unanswered", p.unanswered));
        }
        if p.puback_ms.is_some() && p.pubacks < p.sent {
            reasons.push(format!("{} PUBACKs missing", p.sent - p.pubacks));
        }
        if run.deliveries.missing > 0 {
            reasons.push(format!("{} not delivered", run.deliveries.missing));
        }
        if ack_ms.p99_ms > limit_ms {
            reasons.push(format!(
                "ack p99 {:.1} ms > {limit_ms:.0} ms",
                ack_ms.p99_ms
            ));
        }
        Step {
            target: run.target,
            rate: run.scenario.rate_per_s,
            acked_per_s: p.acked_per_s,
            ack_ms,
            puback_ms: p.puback_ms,
            sustained: reasons.is_empty(),
            reasons,
            fsync_ms: LatencySummary::default(),
            commit_s: None,
            batch_size: None,
            run,
        }
    }
}

const COMMIT: &str = "livecomments_store_commit_seconds";
const BATCH: &str = "livecomments_store_batch_size";

/// The whole sweep.
#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    pub ack_limit_ms: f64,
    pub posters: usize,
    pub seconds: f64,
    pub comment_bytes: usize,
    pub steps: Vec<Step>,
    /// Highest sustained rate per target.
    pub best: Vec<(Kind, Option<f64>)>,
}

impl IngestResult {
    pub fn best_of(&self, kind: Kind) -> Option<f64> {
        self.best.iter().find(|(k, _)| *k == kind).and_then(|b| b.1)
    }
}

/// Runs every rate against every target, alternating targets within a rate so that drift of
/// the shared machine hits both alike. Every livecomments step runs in a fresh stream.
pub async fn run(targets: &mut [Target], sc: &Ingest) -> anyhow::Result<IngestResult> {
    let mut steps = Vec::new();
    for &rate in &sc.rates {
        for target in targets.iter_mut() {
            target.new_stream().await?;
            let scenario = Scenario {
                rate,
                post_qos: Some(QoS::AtLeastOnce),
                ..sc.base.clone()
            };
            eprintln!("==> ingest {}: {rate} comments/s", target.kind);
            let base = target.http_base().ok();
            let before = probe::scrape(base.clone(), &[COMMIT, BATCH]).await;
            let fsync = FsyncProbe::start(&std::env::temp_dir());
            let run = fanout::run(target, &scenario).await;
            let fsync_ms = fsync.stop();
            let after = probe::scrape(base, &[COMMIT, BATCH]).await;
            let mut step = Step::of(run?, sc.ack_limit_ms);
            step.fsync_ms = fsync_ms;
            if let (Some(b), Some(a)) = (&before, &after) {
                let delta = |name: &str| {
                    Some(BucketSummary::between(
                        b.get(name).unwrap_or(&Default::default()),
                        a.get(name)?,
                    ))
                };
                step.commit_s = delta(COMMIT);
                step.batch_size = delta(BATCH);
            }
            eprintln!(
                "    {:.0} acked/s, ack p50 {:.1} / p99 {:.1} / p99.9 {:.1} ms{}",
                step.acked_per_s,
                step.ack_ms.p50_ms,
                step.ack_ms.p99_ms,
                step.ack_ms.p999_ms,
                if step.sustained {
                    String::new()
                } else {
                    format!(" — not sustained: {}", step.reasons.join("; "))
                }
            );
            steps.push(step);
        }
    }
    let mut best = Vec::new();
    for t in targets.iter() {
        let b = steps
            .iter()
            .filter(|s| s.target == t.kind && s.sustained)
            .map(|s| s.rate)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
        best.push((t.kind, b));
    }
    Ok(IngestResult {
        ack_limit_ms: sc.ack_limit_ms,
        posters: sc.base.posters,
        seconds: sc.base.seconds,
        comment_bytes: sc.base.comment_bytes,
        steps,
        best,
    })
}

fn pcts(l: &LatencySummary) -> String {
    format!("{:.1} / {:.1} / {:.1} ms", l.p50_ms, l.p99_ms, l.p999_ms)
}

/// The sweep table, the highest sustained rates with their ratio, and the usage per step.
pub fn markdown(r: &IngestResult) -> String {
    let mut out = String::new();
    let mut t = Table::new(&[
        "target",
        "offered/s",
        "acked/s",
        "ack p50 / p99 / p99.9",
        "PUBACK p50 / p99 / p99.9",
        "rejected",
        "store commit mean / p99 (comments each)",
        "disk fsync p50 / p99 / max",
        "server CPU",
        "generator CPU",
        "other CPU",
        "sustained",
    ]);
    for s in &r.steps {
        let run = &s.run;
        let ack = match s.target {
            Kind::Livecomments => format!("{} (durable)", pcts(&s.ack_ms)),
            Kind::Mosquitto => "— (no durable ack)".into(),
        };
        let rejected: u64 = run.posts.rejected.values().sum();
        t.row(vec![
            s.target.to_string(),
            format!("{:.0}", s.rate),
            format!("{:.0}", s.acked_per_s),
            ack,
            s.puback_ms.as_ref().map(pcts).unwrap_or_else(|| "—".into()),
            if rejected == 0 {
                "0".into()
            } else {
                run.posts
                    .rejected
                    .iter()
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            match (s.commit_s, s.batch_size) {
                (Some(c), Some(b)) if c.count > 0.0 => format!(
                    "{:.1} / ≤{:.0} ms ({:.0})",
                    c.mean * 1000.0,
                    c.p99_le * 1000.0,
                    b.mean
                ),
                _ => "—".into(),
            },
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                s.fsync_ms.p50_ms, s.fsync_ms.p99_ms, s.fsync_ms.max_ms
            ),
            run.sut
                .map(|u| format!("{:.0} %", u.cpu_avg_pct))
                .unwrap_or_else(|| "—".into()),
            format!("{:.0} %", run.generator.cpu_avg_pct),
            format!("{:.0} %", run.other_load_pct),
            if s.sustained {
                "yes".into()
            } else {
                format!("no: {}", s.reasons.join("; "))
            },
        ]);
    }
    out.push_str(&t.render());
    let fmt = |b: Option<f64>| {
        b.map(|b| format!("{b:.0}/s"))
            .unwrap_or_else(|| "none".into())
    };
    let ours = r.best_of(Kind::Livecomments);
    let theirs = r.best_of(Kind::Mosquitto);
    out.push('\n');
    let mut b = Table::side_by_side(&["livecomments".into(), "mosquitto".into()], true);
    b.compare(
        &format!(
            "highest sustained rate (ack p99 ≤ {:.0} ms, nothing lost or refused)",
            r.ack_limit_ms
        ),
        vec![fmt(ours), fmt(theirs)],
        ours.zip(theirs).map(|(a, b)| ratio_of(a, b)),
    );
    // Latencies at the highest rate both sustained (the same load on both).
    let common = r
        .steps
        .iter()
        .filter(|s| s.sustained)
        .map(|s| s.rate)
        .filter(|rate| {
            r.steps
                .iter()
                .filter(|s| s.rate == *rate && s.sustained)
                .count()
                >= 2
        })
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    if let Some(rate) = common {
        let at = |k| r.steps.iter().find(|s| s.rate == rate && s.target == k);
        if let (Some(o), Some(m)) = (at(Kind::Livecomments), at(Kind::Mosquitto)) {
            let mp = m.puback_ms.unwrap_or_default();
            let op = o.puback_ms.unwrap_or_default();
            b.compare(
                &format!("at {rate:.0}/s: ours durable ack p99 vs their PUBACK p99"),
                vec![
                    format!("{:.1} ms", o.ack_ms.p99_ms),
                    format!("{:.1} ms", mp.p99_ms),
                ],
                Some(ratio_of(o.ack_ms.p99_ms, mp.p99_ms)),
            );
            b.compare(
                &format!("at {rate:.0}/s: PUBACK p50 / p99"),
                vec![
                    format!("{:.1} / {:.1} ms", op.p50_ms, op.p99_ms),
                    format!("{:.1} / {:.1} ms", mp.p50_ms, mp.p99_ms),
                ],
                Some(ratio_of(op.p99_ms, mp.p99_ms)),
            );
            let cpu = |s: &Step| s.run.sut.map(|u| u.cpu_avg_pct).unwrap_or(0.0);
            b.compare(
                &format!("at {rate:.0}/s: server CPU"),
                vec![format!("{:.0} %", cpu(o)), format!("{:.0} %", cpu(m))],
                Some(ratio_of(cpu(o), cpu(m))),
            );
        }
    }
    out.push_str(&b.render());
    out
}

/// `ingest-p99.svg` (ack p99 against the offered rate) and `ingest-timeline.svg` (ack
/// latency per second of the highest rate both targets ran).
pub fn plots(r: &IngestResult, out: &Path) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    for kind in [Kind::Livecomments, Kind::Mosquitto] {
        let of = |f: &dyn Fn(&Step) -> Option<f64>| -> Vec<(f64, f64)> {
            r.steps
                .iter()
                .filter(|s| s.target == kind)
                .filter_map(|s| f(s).map(|v| (s.rate, v)))
                .collect()
        };
        if kind == Kind::Livecomments {
            let durable = of(&|s| s.run.posts.ack_ms.map(|a| a.p99_ms));
            if !durable.is_empty() {
                lines.push(Xy {
                    label: "livecomments durable ack p99".into(),
                    kind,
                    points: durable,
                });
            }
        }
        let puback = of(&|s| s.puback_ms.map(|a| a.p99_ms));
        if !puback.is_empty() {
            lines.push(Xy {
                label: format!("{kind} PUBACK p99"),
                kind,
                points: puback,
            });
        }
    }
    plot::xy_svg(
        &out.join("ingest-p99.svg"),
        &format!("ingest: {} posters, QoS 1, one stream", r.posters),
        Axes {
            x: "offered comments/s (log)",
            y: "acknowledgement p99 (ms)",
        },
        &lines,
        Some(r.ack_limit_ms),
    )?;
    let top = r.steps.iter().map(|s| s.rate).fold(0.0, f64::max);
    let timeline: Vec<Line> = r
        .steps
        .iter()
        .filter(|s| s.rate == top)
        .map(|s| Line {
            label: match s.target {
                Kind::Livecomments => "livecomments durable ack".into(),
                Kind::Mosquitto => "mosquitto PUBACK".into(),
            },
            kind: s.target,
            points: s
                .run
                .timeline
                .iter()
                .filter_map(|p| {
                    let a = p.ack_ms.or(p.puback_ms)?;
                    Some(Point {
                        t_s: p.t_s as f64,
                        p50_ms: a.p50_ms,
                        p99_ms: a.p99_ms,
                        max_ms: a.max_ms,
                    })
                })
                .collect(),
        })
        .collect();
    plot::lines_svg(
        &out.join("ingest-timeline.svg"),
        &format!("ingest at {top:.0} comments/s"),
        Axes {
            x: "second of the run (send time)",
            y: "post → acknowledgement (ms)",
        },
        &timeline,
    )
}

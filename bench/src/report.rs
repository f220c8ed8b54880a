//! Results: the JSON shape, the markdown table (side by side, with ours/Mosquitto ratios),
//! and the files a run writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::sampler::UsageSummary;
use crate::stats::LatencySummary;
use crate::target::Kind;

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    pub subscribers: usize,
    pub rate_per_s: f64,
    pub seconds: f64,
    pub posters: usize,
    pub comment_bytes: usize,
    pub transport: String,
    pub source_addrs: u8,
    pub connect_rate_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    /// Connections that ended before the run did.
    pub dropped: usize,
    /// The first few errors.
    pub errors: Vec<String>,
    /// TCP connect (and WebSocket handshake) → CONNACK → SUBACK.
    pub connect_ms: LatencySummary,
    pub elapsed_s: f64,
    pub achieved_rate_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Posts {
    pub scheduled: u64,
    pub sent: u64,
    /// Posts every subscriber should see: acknowledged (livecomments) or sent (QoS 0).
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Sent, but neither acknowledged nor rejected by the end (livecomments).
    pub unanswered: u64,
    pub pubacks: u64,
    /// Post → durable `ack` on the inbox (livecomments).
    pub ack_ms: Option<LatencySummary>,
    /// How late posts left against the fixed schedule (a late generator shows here).
    pub schedule_lag_ms: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deliveries {
    /// accepted comments × connected subscribers.
    pub expected: u64,
    pub unique: u64,
    pub duplicates: u64,
    /// Comments that arrived after a later comment of the same poster.
    pub out_of_order: u64,
    /// Events whose server `seq` did not increase (livecomments).
    pub server_seq_regressions: u64,
    pub missing: u64,
    pub loss_pct: f64,
    pub subscribers_with_loss: usize,
    /// Unique comment deliveries per second, from the first post to the last delivery.
    pub per_s: f64,
    /// MQTT messages received (frames for livecomments).
    pub messages: u64,
    pub comments_per_message: f64,
    pub other_events: u64,
    pub garbled: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Second of the run (from the first scheduled post).
    pub t_s: u64,
    pub sent: u64,
    pub delivered: u64,
    /// Latency of the comments sent in this second.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub sut_cpu_pct: Option<f64>,
    pub sut_rss_mb: Option<f64>,
    pub generator_cpu_pct: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub zero_loss: bool,
    pub p99_within_limit: bool,
    pub p99_limit_ms: f64,
    /// The generator fell behind its schedule or used (nearly) all its cores.
    pub generator_saturated: bool,
    /// Both cores were busy for most of the run: the numbers are a shared-machine ceiling.
    pub machine_saturated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub target: Kind,
    pub started_at_ms: u64,
    pub scenario: ScenarioSummary,
    pub connections: Connections,
    pub posts: Posts,
    pub deliveries: Deliveries,
    pub latency_ms: LatencySummary,
    pub sut: Option<UsageSummary>,
    pub generator: UsageSummary,
    pub machine_busy_avg_pct: f64,
    /// CPU used by everything else on the machine while posting (percent of one core): a
    /// shared machine shows up here instead of in the comparison.
    pub other_load_pct: f64,
    pub timeline: Vec<TimelinePoint>,
    pub verdict: Verdict,
}

impl RunResult {
    /// No comment lost, duplicated, reordered, rejected or unanswered; every subscriber
    /// connected and stayed.
    pub fn clean(&self) -> bool {
        self.deliveries.missing == 0
            && self.deliveries.duplicates == 0
            && self.deliveries.out_of_order == 0
            && self.deliveries.server_seq_regressions == 0
            && self.posts.rejected.is_empty()
            && self.posts.unanswered == 0
            && self.posts.sent == self.posts.scheduled
            && self.connections.failed == 0
            && self.connections.dropped == 0
    }
}

/// Ours divided by Mosquitto's, for the numbers where that means something.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub deliveries_per_s: f64,
    pub latency_p50: f64,
    pub latency_p99: f64,
    pub latency_max: f64,
    pub sut_cpu_avg: f64,
    pub sut_rss_max: f64,
    pub connect_p99: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

impl Ratios {
    pub fn of(ours: &RunResult, theirs: &RunResult) -> Ratios {
        let sut = |r: &RunResult| r.sut.unwrap_or_default();
        Ratios {
            deliveries_per_s: ratio(ours.deliveries.per_s, theirs.deliveries.per_s),
            latency_p50: ratio(ours.latency_ms.p50_ms, theirs.latency_ms.p50_ms),
            latency_p99: ratio(ours.latency_ms.p99_ms, theirs.latency_ms.p99_ms),
            latency_max: ratio(ours.latency_ms.max_ms, theirs.latency_ms.max_ms),
            sut_cpu_avg: ratio(sut(ours).cpu_avg_pct, sut(theirs).cpu_avg_pct),
            sut_rss_max: ratio(sut(ours).rss_max_mb, sut(theirs).rss_max_mb),
            connect_p99: ratio(
                ours.connections.connect_ms.p99_ms,
                theirs.connections.connect_ms.p99_ms,
            ),
        }
    }
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub machine: Machine,
    pub runs: Vec<RunResult>,
    /// livecomments / Mosquitto, when both ran.
    pub ratios: Option<Ratios>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub open_files_limit: u64,
}

impl Report {
    pub fn new(command: String, machine: Machine, runs: Vec<RunResult>) -> Report {
        let find = |k| runs.iter().find(|r| r.target == k);
        let ratios = match (find(Kind::Livecomments), find(Kind::Mosquitto)) {
            (Some(o), Some(m)) => Some(Ratios::of(o, m)),
            _ => None,
        };
        Report {
            command,
            machine,
            runs,
            ratios,
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// One column per run, plus ours/Mosquitto when both ran.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "`{}`\n", self.command);
        let mut header = "| | ".to_string();
        header.push_str(
            &self
                .runs
                .iter()
                .map(|r| r.target.to_string())
                .collect::<Vec<_>>()
                .join(" | "),
        );
        let with_ratio = self.ratios.is_some();
        if with_ratio {
            header.push_str(" | ours / Mosquitto");
        }
        header.push_str(" |");
        let _ = writeln!(out, "{header}");
        let cols = self.runs.len() + usize::from(with_ratio);
        let _ = writeln!(out, "|---|{}", "---:|".repeat(cols));
        let r = self.ratios.as_ref();
        let mut row = |name: &str, f: &dyn Fn(&RunResult) -> String, q: Option<f64>| {
            let mut line = format!("| {name} |");
            for run in &self.runs {
                let _ = write!(line, " {} |", f(run));
            }
            if with_ratio {
                match q {
                    Some(q) if q.is_finite() => {
                        let _ = write!(line, " {q:.2}× |");
                    }
                    _ => line.push_str(" |"),
                }
            }
            let _ = writeln!(out, "{line}");
        };
        let ms = |v: f64| format!("{v:.1} ms");
        row(
            "subscribers connected",
            &|x| {
                let c = &x.connections;
                let mut s = format!("{} / {}", c.connected, c.requested);
                if c.dropped > 0 {
                    let _ = write!(s, " ({} dropped)", c.dropped);
                }
                s
            },
            None,
        );
        row(
            "connect p50 / p99",
            &|x| {
                format!(
                    "{:.1} / {:.1} ms",
                    x.connections.connect_ms.p50_ms, x.connections.connect_ms.p99_ms
                )
            },
            r.map(|r| r.connect_p99),
        );
        row(
            "connect rate",
            &|x| format!("{:.0}/s", x.connections.achieved_rate_per_s),
            None,
        );
        row(
            "comments sent / accepted",
            &|x| format!("{} / {}", x.posts.sent, x.posts.accepted),
            None,
        );
        row(
            "deliveries expected",
            &|x| x.deliveries.expected.to_string(),
            None,
        );
        row(
            "unique / duplicated / out of order",
            &|x| {
                format!(
                    "{} / {} / {}",
                    x.deliveries.unique, x.deliveries.duplicates, x.deliveries.out_of_order
                )
            },
            None,
        );
        row(
            "server seq regressions",
            &|x| match x.target {
                Kind::Livecomments => x.deliveries.server_seq_regressions.to_string(),
                Kind::Mosquitto => "—".into(),
            },
            None,
        );
        row(
            "missing (loss)",
            &|x| format!("{} ({:.3} %)", x.deliveries.missing, x.deliveries.loss_pct),
            None,
        );
        row(
            "deliveries/s",
            &|x| format!("{:.0}", x.deliveries.per_s),
            r.map(|r| r.deliveries_per_s),
        );
        row(
            "MQTT messages (comments each)",
            &|x| {
                format!(
                    "{} ({:.1})",
                    x.deliveries.messages, x.deliveries.comments_per_message
                )
            },
            None,
        );
        row(
            "latency p50",
            &|x| ms(x.latency_ms.p50_ms),
            r.map(|r| r.latency_p50),
        );
        row("latency p90", &|x| ms(x.latency_ms.p90_ms), None);
        row(
            "latency p99",
            &|x| ms(x.latency_ms.p99_ms),
            r.map(|r| r.latency_p99),
        );
        row("latency p99.9", &|x| ms(x.latency_ms.p999_ms), None);
        row(
            "latency max",
            &|x| ms(x.latency_ms.max_ms),
            r.map(|r| r.latency_max),
        );
        row(
            "post → durable ack p50 / p99",
            &|x| match &x.posts.ack_ms {
                Some(a) => format!("{:.1} / {:.1} ms", a.p50_ms, a.p99_ms),
                None => "—".into(),
            },
            None,
        );
        row(
            "schedule lag p99 / max",
            &|x| {
                format!(
                    "{:.1} / {:.1} ms",
                    x.posts.schedule_lag_ms.p99_ms, x.posts.schedule_lag_ms.max_ms
                )
            },
            None,
        );
        row(
            "server CPU avg / max",
            &|x| match x.sut {
                Some(s) => format!("{:.0} / {:.0} %", s.cpu_avg_pct, s.cpu_max_pct),
                None => "—".into(),
            },
            r.map(|r| r.sut_cpu_avg),
        );
        row(
            "server RSS max",
            &|x| match x.sut {
                Some(s) => format!("{:.1} MB", s.rss_max_mb),
                None => "—".into(),
            },
            r.map(|r| r.sut_rss_max),
        );
        row(
            "generator CPU avg / max",
            &|x| {
                format!(
                    "{:.0} / {:.0} %",
                    x.generator.cpu_avg_pct, x.generator.cpu_max_pct
                )
            },
            None,
        );
        row(
            "generator RSS max",
            &|x| format!("{:.1} MB", x.generator.rss_max_mb),
            None,
        );
        row(
            "machine busy (2 cores = 100 %)",
            &|x| format!("{:.0} %", x.machine_busy_avg_pct),
            None,
        );
        row(
            "other processes' CPU",
            &|x| format!("{:.0} %", x.other_load_pct),
            None,
        );
        row(
            "verdict",
            &|x| {
                let v = &x.verdict;
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
            },
            None,
        );
        out
    }
}

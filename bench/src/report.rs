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
    /// Acknowledged posts (livecomments: inbox acks that arrived before the end; Mosquitto: sent
    /// QoS 0 posts, or all sent at QoS 1).
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Sent, but neither acknowledged nor rejected by the end (livecomments).
    pub unanswered: u64,
    pub pubacks: u64,
    /// Post → durable `ack` on the inbox (livecomments).
    pub ack_ms: Option<LatencySummary>,
    /// Post → PUBACK (QoS 1 posts). livecomments sends it once the post is handed to the
    /// write path (not yet stored); Mosquitto once it has routed the message.
    pub puback_ms: Option<LatencySummary>,
    /// Acknowledged posts per second (inbox acks for livecomments, PUBACKs otherwise), from
    /// the first scheduled post to the last acknowledgement.
    pub acked_per_s: f64,
    /// How late posts left against the fixed schedule (a late generator shows here).
    pub schedule_lag_ms: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deliveries {
    /// Comments acknowledged or delivered to any subscriber × connected subscribers.
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
    /// Post → inbox ack of the posts sent in this second (livecomments).
    pub ack_ms: Option<Percentiles>,
    /// Post → PUBACK of the posts sent in this second (QoS 1 posts).
    pub puback_ms: Option<Percentiles>,
    pub sut_cpu_pct: Option<f64>,
    pub sut_rss_mb: Option<f64>,
    pub generator_cpu_pct: Option<f64>,
}

/// Three percentiles of one second of a timeline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl From<&LatencySummary> for Percentiles {
    fn from(l: &LatencySummary) -> Percentiles {
        Percentiles {
            p50_ms: l.p50_ms,
            p99_ms: l.p99_ms,
            max_ms: l.max_ms,
        }
    }
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
        let labels: Vec<String> = self.runs.iter().map(|r| r.target.to_string()).collect();
        let with_ratio = self.ratios.is_some();
        let mut table = Table::side_by_side(&labels, with_ratio);
        let r = self.ratios.as_ref();
        let mut row = |name: &str, f: &dyn Fn(&RunResult) -> String, q: Option<f64>| {
            let cells: Vec<String> = self.runs.iter().map(f).collect();
            table.compare(name, cells, q);
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
            "post → PUBACK p50 / p99",
            &|x| match &x.posts.puback_ms {
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
        out.push_str(&table.render());
        out
    }
}

/// A markdown table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    right_aligned: Vec<bool>,
    rows: Vec<Vec<String>>,
    /// The side-by-side layout has a ratio column.
    with_ratio: bool,
}

impl Table {
    /// Columns with these names; the first is left-aligned, the others right-aligned.
    pub fn new(columns: &[&str]) -> Table {
        Table {
            header: columns.iter().map(|c| c.to_string()).collect(),
            right_aligned: (0..columns.len()).map(|i| i > 0).collect(),
            rows: Vec::new(),
            with_ratio: false,
        }
    }

    /// A first column of row names, one column per target, and an "ours / Mosquitto" column.
    pub fn side_by_side(targets: &[String], with_ratio: bool) -> Table {
        let mut columns = vec![String::new()];
        columns.extend(targets.iter().cloned());
        if with_ratio {
            columns.push("ours / Mosquitto".into());
        }
        let refs: Vec<&str> = columns.iter().map(String::as_str).collect();
        Table {
            with_ratio,
            ..Table::new(&refs)
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A row of the side-by-side layout: a name, one cell per target, and a ratio.
    pub fn compare(&mut self, name: &str, cells: Vec<String>, ratio: Option<f64>) {
        let mut row = vec![name.to_string()];
        row.extend(cells);
        if self.with_ratio {
            row.push(fmt_ratio(ratio));
        }
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let cell = |s: &str| s.replace('|', "\\|");
        let _ = writeln!(
            out,
            "| {} |",
            self.header
                .iter()
                .map(|h| cell(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(
            out,
            "|{}",
            self.right_aligned
                .iter()
                .map(|r| if *r { "---:|" } else { "---|" })
                .collect::<String>()
        );
        for row in &self.rows {
            let mut cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
            cells.resize(self.header.len(), String::new());
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }
}

/// `1.23×`, or empty when there is nothing to compare.
pub fn fmt_ratio(q: Option<f64>) -> String {
    match q {
        Some(q) if q.is_finite() => format!("{q:.2}×"),
        _ => String::new(),
    }
}

/// `a / b`, NaN when `b` is 0.
pub fn ratio_of(a: f64, b: f64) -> f64 {
    ratio(a, b)
}

/// `p50 / p99 ms` of a latency summary.
pub fn fmt_p50_p99(l: &LatencySummary) -> String {
    format!("{:.1} / {:.1} ms", l.p50_ms, l.p99_ms)
}

/// What every scenario's result.json holds around its own result.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope<'a, T: Serialize> {
    pub scenario: &'a str,
    pub command: String,
    /// UTC, ISO 8601.
    pub date: String,
    pub machine: Machine,
    pub result: &'a T,
}

impl Machine {
    /// This machine, with the open-file limit the run had.
    pub fn current(open_files_limit: u64) -> Machine {
        Machine {
            cores: crate::sampler::cores(),
            open_files_limit,
        }
    }
}

/// The command line of this process, as `livecomments-bench ...`.
pub fn command_line() -> String {
    std::iter::once("livecomments-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `2026-11-22T10:04:05Z` for milliseconds since the Unix epoch.
pub fn utc_iso(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes `result.json` (the envelope around `result`) and `result.md` into `out`, prints the
/// markdown and says where the files are.
pub fn write_outputs<T: Serialize>(
    out: &Path,
    scenario: &str,
    open_files_limit: u64,
    result: &T,
    markdown: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let envelope = Envelope {
        scenario,
        command: command_line(),
        date: utc_iso(crate::payload::now_us() / 1000),
        machine: Machine::current(open_files_limit),
        result,
    };
    let json = out.join("result.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&envelope)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = format!(
        "## {scenario} — {}\n\n`{}`\n\n{markdown}",
        envelope.date, envelope.command
    );
    std::fs::write(out.join("result.md"), &md)?;
    println!("{md}");
    eprintln!("results in {}", out.display());
    Ok(())
}

/// The usage rows every scenario shows (server, generator, machine, other processes).
pub fn usage_rows(table: &mut Table, usages: &[&crate::sampler::RunUsage], with_ratio: bool) {
    let sut = |u: &crate::sampler::RunUsage| u.sut.unwrap_or_default();
    let q = |f: &dyn Fn(&crate::sampler::RunUsage) -> f64| {
        (with_ratio && usages.len() == 2).then(|| ratio(f(usages[0]), f(usages[1])))
    };
    table.compare(
        "server CPU avg / max",
        usages
            .iter()
            .map(|u| match u.sut {
                Some(s) => format!("{:.0} / {:.0} %", s.cpu_avg_pct, s.cpu_max_pct),
                None => "—".into(),
            })
            .collect(),
        q(&|u| sut(u).cpu_avg_pct),
    );
    table.compare(
        "server RSS max",
        usages
            .iter()
            .map(|u| match u.sut {
                Some(s) => format!("{:.1} MB", s.rss_max_mb),
                None => "—".into(),
            })
            .collect(),
        q(&|u| sut(u).rss_max_mb),
    );
    table.compare(
        "generator CPU avg / max",
        usages
            .iter()
            .map(|u| {
                format!(
                    "{:.0} / {:.0} %",
                    u.generator.cpu_avg_pct, u.generator.cpu_max_pct
                )
            })
            .collect(),
        None,
    );
    table.compare(
        "machine busy (all cores = 100 %)",
        usages
            .iter()
            .map(|u| format!("{:.0} %", u.machine_busy_avg_pct))
            .collect(),
        None,
    );
    table.compare(
        "other processes' CPU (100 % = one core)",
        usages
            .iter()
            .map(|u| format!("{:.0} %", u.other_load_pct))
            .collect(),
        None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_iso(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc_iso(1_763_771_234_567), "2025-11-22T00:27:14Z");
    }

    #[test]
    fn side_by_side_tables_have_a_ratio_column() {
        let mut t = Table::side_by_side(&["livecomments".into(), "mosquitto".into()], true);
        t.compare("rate", vec!["10".into(), "5".into()], Some(2.0));
        t.compare("a|b", vec!["1".into()], None);
        let md = t.render();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines[0],
            "|  | livecomments | mosquitto | ours / Mosquitto |"
        );
        assert_eq!(lines[1], "|---|---:|---:|---:|");
        assert_eq!(lines[2], "| rate | 10 | 5 | 2.00× |");
        assert_eq!(lines[3], "| a\\|b | 1 |  |  |");
        assert_eq!(fmt_ratio(Some(f64::NAN)), "");
    }
}

//! The command line: `livecomments-bench fanout ...`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::fanout::{self, Scenario, Transport};
use crate::report::{Machine, Report, RunResult};
use crate::target::{self, livecomments, mosquitto, Kind};

#[derive(Parser)]
#[command(
    name = "livecomments-bench",
    version,
    about = "Load generator: livecomments and Mosquitto side by side on one machine"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// N subscribers on one stream, comments posted at a fixed rate, every delivery counted.
    Fanout(FanoutArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    Livecomments,
    Mosquitto,
    /// The same scenario against both, one after the other, with ours/Mosquitto ratios.
    Both,
}

#[derive(Args, Debug)]
pub struct FanoutArgs {
    #[arg(long, value_enum, default_value = "both")]
    pub target: TargetArg,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Comments per second, all posters together (a fixed schedule).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Length of the posting schedule.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Posting connections (each its own user).
    #[arg(long, default_value_t = 4)]
    pub posters: usize,
    /// New subscriber connections per second.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Spread subscribers over source addresses 127.0.0.1 ..= 127.0.0.K.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addrs: u8,
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: Transport,
    /// Size of each comment's text in bytes.
    #[arg(long, default_value_t = 200)]
    pub comment_bytes: usize,
    /// How long to wait after the last post for deliveries still under way.
    #[arg(long, default_value_t = 5.0)]
    pub drain_seconds: f64,
    /// p99 latency limit of the verdict ("sustained").
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
    /// Directory for result.json, result.md and the latency plots.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Exit non-zero unless livecomments delivered every comment exactly once, in order, to
    /// every subscriber (the CI smoke check).
    #[arg(long)]
    pub require_zero_loss: bool,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,

    /// The `livecomments` binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub livecomments_bin: Option<PathBuf>,
    /// Config for the started livecomments (default: the built-in configs/bench.toml).
    #[arg(long, value_name = "FILE")]
    pub lc_config: Option<PathBuf>,
    /// Keep the started livecomments' data directory and log.
    #[arg(long)]
    pub keep_data: bool,
    /// Attach to a running livecomments at this MQTT address instead of starting one.
    #[arg(long, value_name = "HOST:PORT")]
    pub attach: Option<SocketAddr>,
    /// Its HTTP address (default: from --data-dir's endpoints.json).
    #[arg(long, value_name = "HOST:PORT", requires = "attach")]
    pub attach_http: Option<SocketAddr>,
    /// Its MQTT-over-WebSocket address (path /mqtt).
    #[arg(long, value_name = "HOST:PORT", requires = "attach")]
    pub attach_ws: Option<SocketAddr>,
    /// Its data directory (jwt-secret, endpoints.json).
    #[arg(long, value_name = "DIR", requires = "attach")]
    pub data_dir: Option<PathBuf>,
    /// A file with its HS256 secret (instead of the data directory's jwt-secret).
    #[arg(long, value_name = "FILE", requires = "attach")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Its process id, for CPU and memory samples.
    #[arg(long, value_name = "PID", requires = "attach")]
    pub sut_pid: Option<u32>,

    /// The `mosquitto` binary (default: PATH, then /usr/sbin).
    #[arg(long, value_name = "PATH")]
    pub mosquitto_bin: Option<PathBuf>,
}

/// Raises the open-file limit to the hard limit; returns the new soft limit.
fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Fanout(args) => fanout_command(args).await,
    }
}

async fn start_target(kind: Kind, a: &FanoutArgs) -> anyhow::Result<target::Target> {
    match kind {
        Kind::Livecomments => {
            let attach = a.attach.map(|mqtt| livecomments::Attach {
                mqtt,
                http: a.attach_http,
                ws: a.attach_ws,
                data_dir: a.data_dir.clone(),
                secret_file: a.jwt_secret_file.clone(),
                pid: a.sut_pid,
            });
            livecomments::start(&livecomments::Options {
                bin: a.livecomments_bin.clone(),
                config: a.lc_config.clone(),
                attach,
                keep_data: a.keep_data,
            })
            .await
        }
        Kind::Mosquitto => {
            mosquitto::start(&mosquitto::Options {
                bin: a.mosquitto_bin.clone(),
                websocket: a.transport == Transport::Ws,
            })
            .await
        }
    }
}

async fn fanout_command(a: FanoutArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.rate > 0.0 && a.seconds > 0.0,
        "--rate and --seconds must be positive"
    );
    let nofile = raise_nofile();
    let needed = (a.subscribers + a.posters + 64) as u64;
    anyhow::ensure!(
        needed <= nofile,
        "{} subscribers need about {needed} open files; the limit is {nofile}: run several generator processes",
        a.subscribers
    );
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let scenario = Scenario {
        subscribers: a.subscribers,
        rate: a.rate,
        seconds: a.seconds,
        posters: a.posters,
        connect_rate: a.connect_rate,
        connect_concurrency: a.connect_concurrency,
        source_addrs: a.source_addrs,
        transport: a.transport,
        comment_bytes: a.comment_bytes,
        drain: Duration::from_secs_f64(a.drain_seconds.max(0.0)),
        keep_alive: Duration::from_secs(60),
        p99_limit_ms: a.p99_limit_ms,
        progress: !a.no_progress,
    };
    let kinds: &[Kind] = match a.target {
        TargetArg::Livecomments => &[Kind::Livecomments],
        TargetArg::Mosquitto => &[Kind::Mosquitto],
        TargetArg::Both => &[Kind::Livecomments, Kind::Mosquitto],
    };
    let mut runs: Vec<RunResult> = Vec::new();
    for &kind in kinds {
        eprintln!("==> {kind}: starting");
        let target = start_target(kind, &a)
            .await
            .with_context(|| format!("starting {kind}"))?;
        let result = fanout::run(&target, &scenario).await;
        let tail = target.log_tail(20);
        target.stop().await;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(t) = tail.filter(|t| !t.is_empty()) {
                    eprintln!("end of the {kind} log:\n{t}");
                }
                return Err(e.context(format!("running the scenario against {kind}")));
            }
        };
        eprintln!(
            "==> {kind}: {} of {} deliveries, {} missing, p99 {:.1} ms",
            result.deliveries.unique,
            result.deliveries.expected,
            result.deliveries.missing,
            result.latency_ms.p99_ms
        );
        if !result.connections.errors.is_empty() {
            eprintln!("    errors: {}", result.connections.errors.join("; "));
        }
        crate::plot::latency_svg(
            &a.out.join(format!("latency-{kind}.svg")),
            &format!(
                "{kind}: {} subscribers × {} comments/s",
                a.subscribers, a.rate
            ),
            &[&result],
        )?;
        runs.push(result);
    }
    if runs.len() > 1 {
        crate::plot::latency_svg(
            &a.out.join("latency.svg"),
            &format!("{} subscribers × {} comments/s", a.subscribers, a.rate),
            &runs.iter().collect::<Vec<_>>(),
        )?;
    }
    let command = std::iter::once("livecomments-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let machine = Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        open_files_limit: nofile,
    };
    let report = Report::new(command, machine, runs);
    report.write_json(&a.out.join("result.json"))?;
    let md = report.markdown();
    std::fs::write(a.out.join("result.md"), &md)?;
    println!("{md}");
    eprintln!("results in {}", a.out.display());

    if a.require_zero_loss {
        if let Some(ours) = report.runs.iter().find(|r| r.target == Kind::Livecomments) {
            if !ours.clean() {
                eprintln!(
                    "FAIL: livecomments lost or mangled comments (missing {}, duplicated {}, out of order {}, server seq regressions {}, rejected {:?}, unanswered {}, failed connections {}, dropped {})",
                    ours.deliveries.missing,
                    ours.deliveries.duplicates,
                    ours.deliveries.out_of_order,
                    ours.deliveries.server_seq_regressions,
                    ours.posts.rejected,
                    ours.posts.unanswered,
                    ours.connections.failed,
                    ours.connections.dropped,
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

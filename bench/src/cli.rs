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
    /// Many posters, QoS 1 posts into one stream; acknowledgement latency over a sweep of
    /// rates.
    Ingest(IngestArgs),
    /// Many clients send reactions into one stream; the aggregates must add up exactly.
    Reactions(ReactionsArgs),
    /// Idle MQTT viewers up to the open-file limit: connect rate and RSS per connection.
    Connections(ConnectionsArgs),
    /// Viewers, comments, reactions and a reconnecting viewer at once (a final).
    Mixed(MixedArgs),
    /// Random 3-minute windows of a stream with millions of stored comments, over HTTP.
    Replay(ReplayArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    Livecomments,
    Mosquitto,
    /// The same scenario against both, one after the other, with ours/Mosquitto ratios.
    Both,
}

/// Which system runs, and how to start or reach it (shared by every scenario).
#[derive(Args, Debug, Clone)]
pub struct SutArgs {
    #[arg(long, value_enum, default_value = "both")]
    pub target: TargetArg,
    /// Directory for result.json, result.md and the plots.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,

    /// The `livecomments` binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub livecomments_bin: Option<PathBuf>,
    /// Config for the started livecomments (default: the built-in configs/bench.toml).
    #[arg(long, value_name = "FILE")]
    pub lc_config: Option<PathBuf>,
    /// Environment of the started livecomments, e.g.
    /// `--lc-env LIVECOMMENTS__DELIVERY__SAMPLING_THRESHOLD_PER_S=50` (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub lc_env: Vec<(String, String)>,
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

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl SutArgs {
    fn kinds(&self) -> &'static [Kind] {
        match self.target {
            TargetArg::Livecomments => &[Kind::Livecomments],
            TargetArg::Mosquitto => &[Kind::Mosquitto],
            TargetArg::Both => &[Kind::Livecomments, Kind::Mosquitto],
        }
    }
}

/// How the subscribers and posters of the fan-out engine connect (fan-out, ingest, mixed).
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Length of the posting schedule.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
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
}

#[derive(Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub sut: SutArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Comments per second, all posters together (a fixed schedule).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Posting connections (each its own user).
    #[arg(long, default_value_t = 4)]
    pub posters: usize,
    /// p99 latency limit of the verdict ("sustained").
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
    /// Exit non-zero unless livecomments delivered every comment exactly once, in order, to
    /// every subscriber (the CI smoke check).
    #[arg(long)]
    pub require_zero_loss: bool,
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub sut: SutArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Offered rates of the sweep, comments/s (all posters together).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2500,5000,7500,10000"
    )]
    pub rates: Vec<f64>,
    /// Posting connections, each its own user listening on its inbox.
    #[arg(long, default_value_t = 200)]
    pub posters: usize,
    /// Viewers of the stream (they check every acknowledged comment is delivered).
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// The acknowledgement p99 of a sustained step.
    #[arg(long, default_value_t = 50.0)]
    pub ack_limit_ms: f64,
}

#[derive(Args, Debug)]
pub struct ReactionsArgs {
    #[command(flatten)]
    pub sut: SutArgs,
    /// Reactions per second, all clients together (a fixed schedule).
    #[arg(long, default_value_t = 100_000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Sending connections, each its own user.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// How often each client writes what is due, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub tick_ms: u64,
    /// Spread clients over source addresses 127.0.0.1 ..= 127.0.0.K.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addrs: u8,
    /// How long to wait after the last send for the counts to add up.
    #[arg(long, default_value_t = 10.0)]
    pub drain_seconds: f64,
    /// Exit non-zero unless livecomments' aggregates are exact.
    #[arg(long)]
    pub require_exact: bool,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub sut: SutArgs,
    /// Stored comments in the stream.
    #[arg(long, default_value_t = 10_000_000)]
    pub comments: u64,
    /// Comments per second of stream time (sets the stream's length and each window's size).
    #[arg(long, default_value_t = 1000.0)]
    pub per_second: f64,
    /// Size of each comment's text in bytes.
    #[arg(long, default_value_t = 200)]
    pub comment_bytes: usize,
    /// Comments per durable transaction while seeding.
    #[arg(long, default_value_t = 20_000)]
    pub seed_batch: usize,
    /// Stop seeding after this many seconds (the stream then holds what was loaded).
    #[arg(long, default_value_t = 600.0)]
    pub seed_time_limit: f64,
    /// The seeded data directory, kept for later runs (default: under
    /// ~/.cache/livecomments/bench/).
    #[arg(long, value_name = "DIR")]
    pub store_dir: Option<PathBuf>,
    /// Window reads.
    #[arg(long, default_value_t = 2000)]
    pub queries: usize,
    /// Window length in seconds.
    #[arg(long, default_value_t = 180.0)]
    pub window_seconds: f64,
    /// Page size of a window read (`limit`: the API's default 500; at most the server's
    /// http.max_page, 1000).
    #[arg(long, default_value_t = 500)]
    pub limit: usize,
    /// Windows also read to the end through next_token.
    #[arg(long, default_value_t = 3)]
    pub full_windows: usize,
    /// The p99 target of a window read.
    #[arg(long, default_value_t = 10.0)]
    pub target_ms: f64,
}

#[derive(Args, Debug)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub sut: SutArgs,
    /// Idle connections to open (one node holds up to mqtt.max_connections, 19 500 in
    /// configs/bench.toml; the generator needs as many open files).
    #[arg(long, default_value_t = 19_500)]
    pub connections: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Spread connections over source addresses 127.0.0.1 ..= 127.0.0.K.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addrs: u8,
    /// Seconds every connection is held once all are open.
    #[arg(long, default_value_t = 5.0)]
    pub hold_seconds: f64,
    /// Only CONNECT (no SUBSCRIBE to the stream's comments).
    #[arg(long)]
    pub no_subscribe: bool,
    /// The stream the viewers watch, created and started unless it exists (default: a new
    /// one). Several generator processes of one cluster run share it.
    #[arg(long, value_name = "ID")]
    pub stream: Option<String>,
    /// Number of the first connection: viewer `v{N}`, client id `bench-c{N}` (so several
    /// generator processes use distinct users and client ids).
    #[arg(long, default_value_t = 0)]
    pub first_index: usize,
    /// First source address: connections use 127.0.0.A ..= 127.0.0.(A+K-1) with K
    /// `--source-addrs` (so several generator processes use distinct addresses and ephemeral
    /// ports).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub first_source_addr: u8,
    /// Written (`{"connected":N,"failed":M}`) once every connection attempt has ended.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Hold the connections until this file exists (at most `--hold-seconds`), so several
    /// generator processes hold theirs at the same time.
    #[arg(long, value_name = "FILE")]
    pub release_file: Option<PathBuf>,
    /// Write every successful connect time, in microseconds, one per line.
    #[arg(long, value_name = "FILE")]
    pub latencies_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MixedArgs {
    #[command(flatten)]
    pub sut: SutArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Viewer connections (subscribed to the stream's comments).
    #[arg(long, default_value_t = 2000)]
    pub viewers: usize,
    /// Comments per second, all posters together.
    #[arg(long, default_value_t = 500.0)]
    pub comment_rate: f64,
    #[arg(long, default_value_t = 20)]
    pub posters: usize,
    /// Reactions per second, all reaction clients together (0: none).
    #[arg(long, default_value_t = 20_000.0)]
    pub reaction_rate: f64,
    #[arg(long, default_value_t = 100)]
    pub reaction_clients: usize,
    /// One viewer reconnects this often, in milliseconds (0: none).
    #[arg(long, default_value_t = 10)]
    pub churn_ms: u64,
    /// p99 latency limit of the verdict.
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
}

/// Raises the open-file limit to the hard limit; returns the new soft limit.
fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Fanout(args) => fanout_command(args).await,
        Command::Ingest(args) => ingest_command(args).await,
        Command::Reactions(args) => reactions_command(args).await,
        Command::Replay(args) => replay_command(args).await,
        Command::Connections(args) => connections_command(args).await,
        Command::Mixed(args) => mixed_command(args).await,
    }
}

/// What a scenario needs of a started livecomments beyond the shared arguments.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Open a WebSocket listener on Mosquitto too.
    pub websocket: bool,
    /// A data directory to start livecomments on (a seeded store).
    pub data_dir: Option<PathBuf>,
    /// The stream to use instead of a new one.
    pub stream: Option<String>,
    /// More environment for livecomments.
    pub env: Vec<(String, String)>,
}

pub async fn start_target(
    kind: Kind,
    a: &SutArgs,
    o: &StartOptions,
) -> anyhow::Result<target::Target> {
    eprintln!("==> {kind}: starting");
    let started = match kind {
        Kind::Livecomments => {
            let attach = a.attach.map(|mqtt| livecomments::Attach {
                mqtt,
                http: a.attach_http,
                ws: a.attach_ws,
                data_dir: a.data_dir.clone(),
                secret_file: a.jwt_secret_file.clone(),
                pid: a.sut_pid,
            });
            let mut env = a.lc_env.clone();
            env.extend(o.env.iter().cloned());
            livecomments::start(&livecomments::Options {
                bin: a.livecomments_bin.clone(),
                config: a.lc_config.clone(),
                attach,
                keep_data: a.keep_data,
                data_dir: o.data_dir.clone(),
                env,
                stream: o.stream.clone(),
            })
            .await
        }
        Kind::Mosquitto => {
            mosquitto::start(&mosquitto::Options {
                bin: a.mosquitto_bin.clone(),
                websocket: o.websocket,
            })
            .await
        }
    };
    started.with_context(|| format!("starting {kind}"))
}

/// Checks the open-file limit covers `needed` sockets; returns the limit.
pub fn ensure_nofile(needed: usize, what: &str) -> anyhow::Result<u64> {
    let nofile = raise_nofile();
    let needed = needed as u64 + 64;
    anyhow::ensure!(
        needed <= nofile,
        "{what} need about {needed} open files; the limit is {nofile}: run several generator processes"
    );
    Ok(nofile)
}

fn scenario_of(
    load: &LoadArgs,
    subscribers: usize,
    rate: f64,
    posters: usize,
    p99: f64,
    progress: bool,
) -> Scenario {
    Scenario {
        subscribers,
        rate,
        seconds: load.seconds,
        posters,
        connect_rate: load.connect_rate,
        connect_concurrency: load.connect_concurrency,
        source_addrs: load.source_addrs,
        transport: load.transport,
        comment_bytes: load.comment_bytes,
        drain: Duration::from_secs_f64(load.drain_seconds.max(0.0)),
        keep_alive: Duration::from_secs(60),
        p99_limit_ms: p99,
        progress,
        post_qos: None,
    }
}

async fn fanout_command(a: FanoutArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.rate > 0.0 && a.load.seconds > 0.0,
        "--rate and --seconds must be positive"
    );
    let nofile = ensure_nofile(
        a.subscribers + a.posters,
        &format!("{} subscribers", a.subscribers),
    )?;
    let out = &a.sut.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let scenario = scenario_of(
        &a.load,
        a.subscribers,
        a.rate,
        a.posters,
        a.p99_limit_ms,
        !a.sut.no_progress,
    );
    let start = StartOptions {
        websocket: a.load.transport == Transport::Ws,
        ..StartOptions::default()
    };
    let mut runs: Vec<RunResult> = Vec::new();
    for &kind in a.sut.kinds() {
        let target = start_target(kind, &a.sut, &start).await?;
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
            &out.join(format!("latency-{kind}.svg")),
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
            &out.join("latency.svg"),
            &format!("{} subscribers × {} comments/s", a.subscribers, a.rate),
            &runs.iter().collect::<Vec<_>>(),
        )?;
    }
    let machine = Machine::current(nofile);
    let report = Report::new(crate::report::command_line(), machine, runs);
    report.write_json(&out.join("result.json"))?;
    let md = report.markdown();
    std::fs::write(out.join("result.md"), &md)?;
    println!("{md}");
    eprintln!("results in {}", out.display());

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

/// Starts every target of `a`; on an error stops those already started.
async fn start_all(a: &SutArgs, o: &StartOptions) -> anyhow::Result<Vec<target::Target>> {
    let mut targets = Vec::new();
    for &kind in a.kinds() {
        match start_target(kind, a, o).await {
            Ok(t) => targets.push(t),
            Err(e) => {
                stop_all(targets).await;
                return Err(e);
            }
        }
    }
    Ok(targets)
}

async fn stop_all(targets: Vec<target::Target>) {
    for t in targets {
        t.stop().await;
    }
}

async fn ingest_command(a: IngestArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !a.rates.is_empty() && a.rates.iter().all(|r| *r > 0.0),
        "--rates must be positive"
    );
    let nofile = ensure_nofile(a.subscribers + a.posters, "the posters and viewers")?;
    let base = scenario_of(
        &a.load,
        a.subscribers,
        a.rates[0],
        a.posters,
        100.0,
        !a.sut.no_progress,
    );
    let sc = crate::ingest::Ingest {
        rates: a.rates.clone(),
        base,
        ack_limit_ms: a.ack_limit_ms,
    };
    let mut targets = start_all(&a.sut, &StartOptions::default()).await?;
    let result = crate::ingest::run(&mut targets, &sc).await;
    stop_all(targets).await;
    let result = result?;
    let out = &a.sut.out;
    std::fs::create_dir_all(out)?;
    crate::ingest::plots(&result, out)?;
    crate::report::write_outputs(
        out,
        "ingest",
        nofile,
        &result,
        &crate::ingest::markdown(&result),
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn reactions_command(a: ReactionsArgs) -> anyhow::Result<ExitCode> {
    let nofile = ensure_nofile(a.clients + 1, "the reaction clients")?;
    let sc = crate::reactions::Scenario {
        rate: a.rate,
        seconds: a.seconds,
        clients: a.clients,
        tick: Duration::from_millis(a.tick_ms.max(1)),
        source_addrs: a.source_addrs,
        drain: Duration::from_secs_f64(a.drain_seconds.max(0.0)),
        progress: !a.sut.no_progress,
    };
    let mut runs = Vec::new();
    for &kind in a.sut.kinds() {
        let target = start_target(kind, &a.sut, &StartOptions::default()).await?;
        let r = crate::reactions::run(&target, &sc).await;
        target.stop().await;
        let r = r.with_context(|| format!("running the reactions scenario against {kind}"))?;
        eprintln!(
            "==> {kind}: sent {} at {:.0}/s, counted {} ({})",
            r.sent,
            r.achieved_per_s,
            r.counted,
            if r.exact { "exact" } else { "NOT exact" }
        );
        runs.push(r);
    }
    let out = &a.sut.out;
    std::fs::create_dir_all(out)?;
    crate::reactions::plot(&runs, out)?;
    crate::report::write_outputs(
        out,
        "reactions",
        nofile,
        &runs,
        &crate::reactions::markdown(&runs),
    )?;
    if a.require_exact
        && runs
            .iter()
            .any(|r| r.target == Kind::Livecomments && !r.exact)
    {
        eprintln!("FAIL: livecomments' reaction aggregates are not exact");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay_command(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.sut.attach.is_none() && a.sut.target != TargetArg::Mosquitto,
        "replay runs against a livecomments it starts on the seeded store (Mosquitto has no replay)"
    );
    let nofile = raise_nofile();
    let dir = a
        .store_dir
        .clone()
        .unwrap_or_else(|| crate::replay::default_store_dir(a.comments, a.per_second));
    let seeded = crate::replay::seed(&crate::replay::Seed {
        dir: dir.clone(),
        comments: a.comments,
        per_second: a.per_second,
        text_bytes: a.comment_bytes,
        batch: a.seed_batch.max(1),
        time_limit: Duration::from_secs_f64(a.seed_time_limit.max(1.0)),
        progress: !a.sut.no_progress,
    })
    .await?;
    crate::replay::check_dir(&dir)?;
    let start = StartOptions {
        data_dir: Some(dir),
        stream: Some(seeded.stream.clone()),
        ..StartOptions::default()
    };
    let target = start_target(Kind::Livecomments, &a.sut, &start).await?;
    let reads = crate::replay::Reads {
        queries: a.queries,
        window_s: a.window_seconds,
        limit: a.limit,
        full_windows: a.full_windows,
        progress: !a.sut.no_progress,
    };
    let r = crate::replay::run(&target, &seeded, &reads).await;
    target.stop().await;
    let r = r?;
    eprintln!(
        "==> replay: page p50 {:.2} / p99 {:.2} ms over {} windows",
        r.page_ms.p50_ms, r.page_ms.p99_ms, r.queries
    );
    let out = &a.sut.out;
    std::fs::create_dir_all(out)?;
    crate::replay::plot(&r, out, a.target_ms)?;
    crate::report::write_outputs(
        out,
        "replay",
        nofile,
        &r,
        &crate::replay::markdown(&r, a.target_ms),
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn connections_command(a: ConnectionsArgs) -> anyhow::Result<ExitCode> {
    // The generator holds one socket per connection, plus a few files of its own.
    let nofile = raise_nofile();
    anyhow::ensure!(
        a.connections as u64 + 40 <= nofile,
        "{} connections need {} open files; the limit is {nofile}",
        a.connections,
        a.connections + 40
    );
    anyhow::ensure!(
        a.first_source_addr as usize + a.source_addrs as usize - 1 <= 254,
        "--first-source-addr {} with --source-addrs {} goes past 127.0.0.254",
        a.first_source_addr,
        a.source_addrs
    );
    let sc = crate::connections::Scenario {
        connections: a.connections,
        connect_rate: a.connect_rate,
        concurrency: a.connect_concurrency,
        source_addrs: a.source_addrs,
        first_source_addr: a.first_source_addr,
        first_index: a.first_index,
        hold: Duration::from_secs_f64(a.hold_seconds.max(0.0)),
        subscribe: !a.no_subscribe,
        progress: !a.sut.no_progress,
        ready_file: a.ready_file.clone(),
        release_file: a.release_file.clone(),
        latencies_file: a.latencies_file.clone(),
    };
    let start = StartOptions {
        stream: a.stream.clone(),
        ..StartOptions::default()
    };
    let mut runs = Vec::new();
    for &kind in a.sut.kinds() {
        let target = start_target(kind, &a.sut, &start).await?;
        let r = crate::connections::run(&target, &sc).await;
        target.stop().await;
        let r = r.with_context(|| format!("running the connections scenario against {kind}"))?;
        eprintln!(
            "==> {kind}: {} connected at {:.0}/s, {:.1} KB RSS each",
            r.connected, r.achieved_rate_per_s, r.rss_per_connection_kb
        );
        runs.push(r);
    }
    let out = &a.sut.out;
    std::fs::create_dir_all(out)?;
    crate::connections::plot(&runs, out)?;
    crate::report::write_outputs(
        out,
        "connections",
        nofile,
        &runs,
        &crate::connections::markdown(&runs),
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn mixed_command(a: MixedArgs) -> anyhow::Result<ExitCode> {
    let nofile = ensure_nofile(
        a.viewers + a.posters + a.reaction_clients + 2,
        "the viewers, posters and reaction clients",
    )?;
    let fanout = scenario_of(
        &a.load,
        a.viewers,
        a.comment_rate,
        a.posters,
        a.p99_limit_ms,
        !a.sut.no_progress,
    );
    let sc = crate::mixed::Scenario {
        reactions: crate::reactions::Scenario {
            rate: a.reaction_rate,
            seconds: a.load.seconds,
            clients: a.reaction_clients,
            tick: Duration::from_millis(10),
            source_addrs: a.load.source_addrs,
            drain: Duration::from_secs_f64(a.load.drain_seconds.max(0.0)),
            // One set of progress bars (the fan-out's) is enough.
            progress: false,
        },
        fanout,
        churn_every: Duration::from_millis(a.churn_ms),
    };
    let mut runs = Vec::new();
    for &kind in a.sut.kinds() {
        let target = start_target(kind, &a.sut, &StartOptions::default()).await?;
        let r = crate::mixed::run(&target, &sc).await;
        let tail = target.log_tail(20);
        target.stop().await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                if let Some(t) = tail.filter(|t| !t.is_empty()) {
                    eprintln!("end of the {kind} log:\n{t}");
                }
                return Err(e.context(format!("running the mixed scenario against {kind}")));
            }
        };
        eprintln!(
            "==> {kind}: {} of {} deliveries, p99 {:.1} ms; reactions {}; {} reconnects",
            r.fanout.deliveries.unique,
            r.fanout.deliveries.expected,
            r.fanout.latency_ms.p99_ms,
            r.reactions
                .as_ref()
                .map(|x| format!(
                    "{:.0}/s{}",
                    x.achieved_per_s,
                    if x.exact { " exact" } else { " NOT exact" }
                ))
                .unwrap_or_else(|| "none".into()),
            r.churn.cycles
        );
        runs.push(r);
    }
    let out = &a.sut.out;
    std::fs::create_dir_all(out)?;
    crate::plot::latency_svg(
        &out.join("mixed-latency.svg"),
        &format!(
            "mixed: {} viewers × {} comments/s, {} reactions/s, a reconnect every {} ms",
            a.viewers, a.comment_rate, a.reaction_rate, a.churn_ms
        ),
        &runs.iter().map(|r| &r.fanout).collect::<Vec<_>>(),
    )?;
    crate::report::write_outputs(out, "mixed", nofile, &runs, &crate::mixed::markdown(&runs))?;
    Ok(ExitCode::SUCCESS)
}

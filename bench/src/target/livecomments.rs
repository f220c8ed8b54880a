//! Our system: `livecomments up --config configs/bench.toml --data-dir <tmp>` started by the
//! generator, or a running one it attaches to. Either way it creates a live stream over HTTP
//! with a broadcaster token signed with the server's key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rumqttc::mqttbytes::QoS;
use serde::Deserialize;
use tokio::process::Command;
use wire::auth::{Claims, JwtKeys, Role};

use super::{Format, Kind, ServerProcess, Target};
use crate::mqtt::Endpoint;

/// configs/bench.toml, used when no `--lc-config` is given (so the tool runs from any
/// directory).
pub const BENCH_TOML: &str = include_str!("../../../configs/bench.toml");
/// Where `livecomments up` keeps its generated key and its endpoints.
const SECRET_FILE: &str = "jwt-secret";
const ENDPOINTS_FILE: &str = "endpoints.json";
/// The WebSocket path of configs/bench.toml (the default).
const WS_PATH: &str = "/mqtt";

/// A running system to attach to instead of starting one.
#[derive(Debug, Clone)]
pub struct Attach {
    pub mqtt: SocketAddr,
    pub http: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    /// Its data directory: `jwt-secret` and `endpoints.json` are read from it.
    pub data_dir: Option<PathBuf>,
    /// A file holding the HS256 secret (instead of the data directory's).
    pub secret_file: Option<PathBuf>,
    /// Its process, for CPU and memory samples.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The `livecomments` binary; by default the one next to this executable.
    pub bin: Option<PathBuf>,
    /// A config file instead of the built-in copy of configs/bench.toml.
    pub config: Option<PathBuf>,
    pub attach: Option<Attach>,
    /// Keep the data directory (and the server's log) after the run.
    pub keep_data: bool,
    /// A data directory to use (and keep) instead of a temporary one: a seeded store.
    pub data_dir: Option<PathBuf>,
    /// Environment overrides for the started process (`LIVECOMMENTS__SECTION__KEY`).
    pub env: Vec<(String, String)>,
    /// The stream to run in: created and started unless it exists (default: a new one).
    pub stream: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Endpoints {
    mqtt: SocketAddr,
    ws: Option<SocketAddr>,
    http: SocketAddr,
}

fn default_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("livecomments");
    anyhow::ensure!(
        bin.is_file(),
        "{} not found: build it (cargo build --release --bin livecomments) or pass --livecomments-bin",
        bin.display()
    );
    Ok(bin)
}

fn read_secret(path: &Path) -> anyhow::Result<JwtKeys> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(JwtKeys::new(s.trim().as_bytes()))
}

fn read_endpoints(dir: &Path) -> anyhow::Result<Option<Endpoints>> {
    let path = dir.join(ENDPOINTS_FILE);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn start(options: &Options) -> anyhow::Result<Target> {
    let (endpoints, keys, process, dir, pid) = match &options.attach {
        Some(a) => {
            let from_dir = match &a.data_dir {
                Some(d) => read_endpoints(d)?,
                None => None,
            };
            let http = a
                .http
                .or(from_dir.as_ref().map(|e| e.http))
                .context("attaching needs --attach-http or a --data-dir with endpoints.json")?;
            let secret = a
                .secret_file
                .clone()
                .or(a.data_dir.as_ref().map(|d| d.join(SECRET_FILE)))
                .context("attaching needs --jwt-secret-file or --data-dir")?;
            let endpoints = Endpoints {
                mqtt: a.mqtt,
                ws: a.ws.or(from_dir.and_then(|e| e.ws)),
                http,
            };
            (endpoints, read_secret(&secret)?, None, None, a.pid)
        }
        None => {
            let bin = match &options.bin {
                Some(b) => b.clone(),
                None => default_binary()?,
            };
            let dir = tempfile::Builder::new()
                .prefix("livecomments-bench-")
                .tempdir()?;
            let config = match &options.config {
                Some(c) => c.clone(),
                None => {
                    let c = dir.path().join("bench.toml");
                    std::fs::write(&c, BENCH_TOML)?;
                    c
                }
            };
            let data = match &options.data_dir {
                Some(d) => {
                    std::fs::create_dir_all(d)?;
                    // A stale endpoints.json of an earlier run must not be mistaken for ours.
                    let _ = std::fs::remove_file(d.join(ENDPOINTS_FILE));
                    d.clone()
                }
                None => dir.path().join("data"),
            };
            let mut command = Command::new(&bin);
            command
                .arg("up")
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(&data);
            for (k, v) in &options.env {
                command.env(k, v);
            }
            let log = match &options.data_dir {
                Some(d) => d.join("livecomments.log"),
                None => dir.path().join("livecomments.log"),
            };
            let mut process = ServerProcess::spawn("livecomments", command, &log)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            let endpoints = loop {
                process.check_running()?;
                if let Some(e) = read_endpoints(&data)? {
                    break e;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "livecomments wrote no endpoints.json within 120 s:\n{}",
                    process.log_tail(20)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let keys = read_secret(&data.join(SECRET_FILE))?;
            let pid = process.pid();
            let dir = if options.keep_data {
                eprintln!("livecomments data and log kept in {}", dir.path().display());
                let _ = dir.keep();
                None
            } else {
                Some(dir)
            };
            (endpoints, keys, Some(process), dir, pid)
        }
    };
    let stream = match &options.stream {
        Some(s) => s.clone(),
        None => new_stream_id(),
    };
    create_live_stream(endpoints.http, &keys, &stream).await?;
    let mut target = Target {
        kind: Kind::Livecomments,
        tcp: Endpoint::Tcp(endpoints.mqtt),
        ws: endpoints.ws.map(|a| Endpoint::Ws(a, WS_PATH.into())),
        pid,
        subscribe_topic: String::new(),
        post_topic: String::new(),
        react_topic: String::new(),
        reactions_topic: String::new(),
        post_qos: QoS::AtLeastOnce,
        http: Some(endpoints.http),
        stream: None,
        format: Format::Frames,
        keys: Some(keys),
        has_inbox: true,
        process,
        _dir: dir,
    };
    target.set_stream(&stream)?;
    Ok(target)
}

/// `POST /v1/streams` then `POST /v1/streams/{id}/start` as a broadcaster; a stream that
/// exists already is only started (which keeps its first start time).
pub(super) async fn create_live_stream(
    http: SocketAddr,
    keys: &JwtKeys,
    stream: &str,
) -> anyhow::Result<()> {
    let token = keys.sign(&Claims {
        sub: "bench-broadcaster".into(),
        name: None,
        role: Role::Broadcaster,
        exp: crate::payload::now_us() / 1_000_000 + 4 * 3600,
        iat: None,
        subscriber: false,
    })?;
    let client = reqwest::Client::new();
    let base = format!("http://{http}/v1/streams");
    let created = client
        .post(&base)
        .bearer_auth(&token)
        .json(&serde_json::json!({"id": stream, "title": "livecomments-bench"}))
        .send()
        .await?;
    if created.status() != reqwest::StatusCode::CONFLICT {
        created
            .error_for_status()
            .context("creating the benchmark stream")?;
    }
    client
        .post(format!("{base}/{stream}/start"))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()
        .context("starting the benchmark stream")?;
    Ok(())
}

/// `bench<microseconds>`: a fresh stream id per run (or per step of a sweep).
pub(super) fn new_stream_id() -> String {
    format!("bench{}", crate::payload::now_us())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_config_is_the_repository_file() {
        assert!(BENCH_TOML.contains("rate_limit_count = 0"));
        assert!(BENCH_TOML.contains("max_connections = 19500"));
    }
}

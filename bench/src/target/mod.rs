//! The systems under test: how to start (or reach) them, what to subscribe and post to, and
//! how to authenticate.

pub mod livecomments;
pub mod mosquitto;
mod process;

use std::fmt;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use wire::auth::{Claims, JwtKeys, Role};

use crate::mqtt::Endpoint;
use process::ServerProcess;

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Livecomments,
    Mosquitto,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Livecomments => "livecomments",
            Kind::Mosquitto => "mosquitto",
        })
    }
}

/// How subscribers read what arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"v":1,"events":[...]}` frames with one event per comment.
    Frames,
    /// One post body per message.
    Plain,
}

/// A running (or attached) broker, ready for the scenario.
pub struct Target {
    pub kind: Kind,
    pub tcp: Endpoint,
    pub ws: Option<Endpoint>,
    /// The process to sample (none when attached without `--sut-pid`).
    pub pid: Option<u32>,
    pub subscribe_topic: String,
    pub post_topic: String,
    /// Where reactions go (`streams/{s}/react`; a plain topic on Mosquitto).
    pub react_topic: String,
    /// Where the reactions subscriber listens: the aggregated `streams/{s}/reactions`, or on
    /// Mosquitto the plain topic the reactions are published on (every one delivered).
    pub reactions_topic: String,
    pub post_qos: QoS,
    /// The HTTP API (livecomments).
    pub http: Option<std::net::SocketAddr>,
    /// The live stream the scenario runs in (livecomments).
    pub stream: Option<String>,
    pub format: Format,
    /// Signs client tokens (livecomments); none for anonymous brokers.
    keys: Option<JwtKeys>,
    /// Posters hear `ack`/`reject` answers on their `users/{user}/inbox`.
    has_inbox: bool,
    process: Option<ServerProcess>,
    /// Kept until the target is stopped (data directory, config file).
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// The MQTT password for `user` (a signed JWT), or none.
    pub fn password(&self, user: &str, role: Role) -> anyhow::Result<Option<String>> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        Ok(Some(keys.sign(&Claims {
            sub: user.to_string(),
            name: None,
            role,
            exp: crate::payload::now_us() / 1_000_000 + 4 * 3600,
            iat: None,
            subscriber: false,
        })?))
    }

    /// A token for the HTTP API (livecomments).
    pub fn bearer(&self, user: &str, role: Role) -> anyhow::Result<String> {
        self.password(user, role)?
            .ok_or_else(|| anyhow::anyhow!("{} has no HTTP API", self.kind))
    }

    /// `http://host:port` of the HTTP API.
    pub fn http_base(&self) -> anyhow::Result<String> {
        let http = self
            .http
            .ok_or_else(|| anyhow::anyhow!("{} has no HTTP API", self.kind))?;
        Ok(format!("http://{http}"))
    }

    /// Moves the target to a fresh live stream (livecomments; Mosquitto's topics stay), so a
    /// step of a sweep starts with an empty stream: no `client_msg_id` of an earlier step is
    /// taken for a retry, and reaction totals start at 0.
    pub async fn new_stream(&mut self) -> anyhow::Result<()> {
        let (Some(http), Some(keys)) = (self.http, &self.keys) else {
            return Ok(());
        };
        let stream = livecomments::new_stream_id();
        livecomments::create_live_stream(http, keys, &stream).await?;
        self.set_stream(&stream)
    }

    /// Points the topics at a livecomments stream.
    fn set_stream(&mut self, stream: &str) -> anyhow::Result<()> {
        let id = wire::StreamId::new(stream)?;
        self.subscribe_topic = wire::topics::comments(&id);
        self.post_topic = wire::topics::post(&id);
        self.react_topic = wire::topics::react(&id);
        self.reactions_topic = wire::topics::reactions(&id);
        self.stream = Some(stream.to_string());
        Ok(())
    }

    pub fn inbox_topic(&self, user: &str) -> Option<String> {
        if !self.has_inbox {
            return None;
        }
        wire::UserId::new(user)
            .ok()
            .map(|u| wire::topics::inbox(&u))
    }

    /// The end of the server's log, if we started it.
    pub fn log_tail(&self, lines: usize) -> Option<String> {
        self.process.as_ref().map(|p| p.log_tail(lines))
    }

    /// Stops the process if we started it.
    pub async fn stop(mut self) {
        if let Some(p) = self.process.take() {
            p.stop(Duration::from_secs(10)).await;
        }
    }
}

/// A free TCP port on `host` (the listener is closed again; the port is only very likely free).
fn free_port(host: &str) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

/// Waits until something accepts TCP connections at `addr`.
async fn wait_for_port(
    addr: std::net::SocketAddr,
    process: &mut ServerProcess,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        process.check_running()?;
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {addr} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    pub post_qos: QoS,
    pub format: Format,
    /// Signs client tokens (livecomments); none for anonymous brokers.
    keys: Option<JwtKeys>,
    /// Where posters hear `ack`/`reject` answers, `{user}` replaced by the poster's user id.
    inbox_topic: Option<&'static str>,
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

    pub fn inbox_topic(&self, user: &str) -> Option<String> {
        self.inbox_topic.map(|t| t.replace("{user}", user))
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

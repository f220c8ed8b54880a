//! Mosquitto (the Debian package): the raw broker a user would pick instead. The generator
//! starts its own instance on a free loopback port with a config it writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rumqttc::mqttbytes::QoS;
use tokio::process::Command;

use super::{free_port, wait_for_port, Format, Kind, ServerProcess, Target};
use crate::mqtt::Endpoint;

/// The plain topic comments are published on.
pub const TOPIC: &str = "bench/comments";
/// The plain topic reactions are published on (an aggregating subscriber counts them).
pub const REACT_TOPIC: &str = "bench/react";

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The `mosquitto` binary; found on PATH or in /usr/sbin when not given.
    pub bin: Option<PathBuf>,
    /// Also open a WebSocket listener.
    pub websocket: bool,
}

/// The config a fair comparison needs (see docs/benchmarks.md): Nagle off, no per-delivery
/// duplicate check (quadratic in subscribers in 2.0.x), queues large enough not to drop.
pub fn config_text(port: u16, ws_port: Option<u16>) -> String {
    let mut c = format!(
        "# Written by livecomments-bench.\n\
         per_listener_settings false\n\
         allow_anonymous true\n\
         persistence false\n\
         set_tcp_nodelay true\n\
         allow_duplicate_messages true\n\
         max_queued_messages 1000000\n\
         max_queued_bytes 0\n\
         max_connections -1\n\
         connection_messages false\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         listener {port} 127.0.0.1\n"
    );
    if let Some(ws) = ws_port {
        // Mosquitto 2.0's WebSocket listener ignores the bind address (it listens everywhere).
        c.push_str(&format!("listener {ws} 127.0.0.1\nprotocol websockets\n"));
    }
    c
}

fn find_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("mosquitto"))
        .chain(["/usr/sbin/mosquitto".into(), "/usr/local/sbin/mosquitto".into()])
        .find(|p| p.is_file())
        .context("mosquitto not found: install the Debian package (scripts/bench-smoke does) or pass --mosquitto-bin")
}

pub async fn start(options: &Options) -> anyhow::Result<Target> {
    let bin = find_binary(options.bin.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("mosquitto-bench-")
        .tempdir()?;
    let port = free_port("127.0.0.1")?;
    let ws_port = if options.websocket {
        Some(free_port("0.0.0.0")?)
    } else {
        None
    };
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, config_text(port, ws_port))?;
    let mut command = Command::new(&bin);
    command.arg("-c").arg(&conf);
    let mut process =
        ServerProcess::spawn("mosquitto", command, &dir.path().join("mosquitto.log"))?;
    let addr = ([127, 0, 0, 1], port).into();
    wait_for_port(addr, &mut process, Duration::from_secs(10)).await?;
    if let Some(ws) = ws_port {
        wait_for_port(
            ([127, 0, 0, 1], ws).into(),
            &mut process,
            Duration::from_secs(10),
        )
        .await?;
    }
    Ok(Target {
        kind: Kind::Mosquitto,
        tcp: Endpoint::Tcp(addr),
        ws: ws_port.map(|p| Endpoint::Ws(([127, 0, 0, 1], p).into(), "/mqtt".into())),
        pid: process.pid(),
        subscribe_topic: TOPIC.into(),
        post_topic: TOPIC.into(),
        react_topic: REACT_TOPIC.into(),
        reactions_topic: REACT_TOPIC.into(),
        post_qos: QoS::AtMostOnce,
        http: None,
        stream: None,
        format: Format::Plain,
        keys: None,
        has_inbox: false,
        process: Some(process),
        _dir: Some(dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_fairness_settings() {
        let c = config_text(1884, Some(9001));
        for line in [
            "set_tcp_nodelay true",
            "allow_duplicate_messages true",
            "allow_anonymous true",
            "listener 1884 127.0.0.1",
            "protocol websockets",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing from\n{c}");
        }
    }
}

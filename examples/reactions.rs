//! Reaction throughput of one node: `--clients` raw MQTT connections send pre-encoded QoS 0
//! reactions as fast as the node reads them for `--seconds`; the node's stored totals say how
//! many it counted.
//!
//! ```text
//! cargo run --release --example reactions -- [--clients 20] [--seconds 5]
//! ```
//! The generator only writes prepared bytes, so most of the two cores go to the node; the
//! per-user rate limit is off (each client is one user sending far beyond it).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use livecomments::app;
use livecomments::config::AppConfig;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet, Publish};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::auth::{Claims, Role};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (clients, seconds) = (arg("--clients", 20), arg("--seconds", 5));
    let dir = tempfile::tempdir()?;
    let mut config = AppConfig::defaults()?;
    config.data_dir = dir.path().to_path_buf();
    for (host, port) in [
        (&mut config.mqtt.host, &mut config.mqtt.port),
        (&mut config.ws.host, &mut config.ws.port),
        (&mut config.http.host, &mut config.http.port),
    ] {
        *host = "127.0.0.1".into();
        *port = 0;
    }
    config.reactions.per_user_per_second = 0;
    config.moderation.model.enabled = false;
    config.log.level = "warn".into();
    let running = app::start(config).await?;
    let keys = running.keys.clone();
    let token = |sub: &str, role: Role| {
        keys.sign(&Claims {
            sub: sub.into(),
            name: None,
            role,
            exp: (wire::time::now_ms() / 1000 + 3600) as u64,
            iat: None,
            subscriber: false,
        })
    };
    let base = format!("http://{}", running.endpoints.http.expect("api"));
    let http = reqwest::Client::new();
    let bob = token("bob", Role::Broadcaster)?;
    http.post(format!("{base}/v1/streams"))
        .bearer_auth(&bob)
        .body(r#"{"id":"bench"}"#)
        .send()
        .await?
        .error_for_status()?;
    http.post(format!("{base}/v1/streams/bench/start"))
        .bearer_auth(&bob)
        .send()
        .await?
        .error_for_status()?;

    // 1000 reactions per write.
    let mut burst = BytesMut::new();
    for i in 0..1000 {
        let emoji = ["🔥", "❤️", "👏", "😂"][i % 4];
        let body = format!(r#"{{"emoji":"{emoji}"}}"#);
        Packet::Publish(Publish::new("streams/bench/react", QoS::AtMostOnce, body))
            .write(&mut burst, usize::MAX)?;
    }
    let burst = burst.freeze();
    let port = running.endpoints.mqtt.expect("broker").port();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut connect = Connect::new(format!("r{c}"));
        connect.keep_alive = 60;
        connect.login = Some(Login::new("u", token(&format!("r{c}"), Role::Viewer)?));
        let mut hello = BytesMut::new();
        Packet::Connect(connect).write(&mut hello, usize::MAX)?;
        let burst = burst.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            s.set_nodelay(true)?;
            s.write_all(&hello).await?;
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).await?;
            let mut sent = 0u64;
            while Instant::now() < deadline {
                s.write_all(&burst).await?;
                sent += 1000;
            }
            anyhow::Ok(sent)
        }));
    }
    let started = Instant::now();
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let the node read what is still buffered and flush the last windows.
    let mut counted = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats: serde_json::Value = http
            .get(format!("{base}/v1/streams/bench/stats"))
            .send()
            .await?
            .json()
            .await?;
        let now: u64 = stats["reactions"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0);
        if now == counted && now > 0 {
            break;
        }
        counted = now;
    }
    let total = started.elapsed().as_secs_f64();
    println!(
        "clients={clients} seconds={seconds}\n\
         sent {sent} reactions in {elapsed:.1} s ({:.0}/s offered)\n\
         counted {counted} ({:.0}/s over {total:.1} s until the last window was stored)",
        sent as f64 / elapsed,
        counted as f64 / total,
    );
    running.shutdown().await;
    Ok(())
}

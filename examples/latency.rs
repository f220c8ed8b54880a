//! Post → deliver latency probe: starts the whole system in this process, connects viewers
//! over MQTT TCP, posts comments at a fixed rate and prints latency percentiles and losses.
//! With the model on, every `--toxic-every`-th comment is an insult the rules let through, and
//! the probe also measures post → retract.
//!
//! ```text
//! ORT_DYLIB_PATH=$(scripts/install-onnxruntime) cargo run --release --example latency -- \
//!     [--viewers 100] [--rate 100] [--seconds 5] [--window-ms 25] [--model 1] [--toxic-every 10]
//! ```
//! The posting client, the viewers and the server share the machine's cores, so this measures
//! the whole loop on one box, not the server alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livecomments::app;
use livecomments::config::AppConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Mutex;
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
    let (viewers, rate, seconds, window) = (
        arg("--viewers", 100) as usize,
        arg("--rate", 100),
        arg("--seconds", 5),
        arg("--window-ms", 25),
    );
    let model = arg("--model", 1) == 1;
    let toxic_every = arg("--toxic-every", 10);
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
    config.bridge.rate_limit_count = 0;
    config.mqtt.max_posts_per_second = 0;
    config.moderation.model.enabled = model;
    // One poster sends every insult: reputation would shadow-ban it after three.
    config.moderation.reputation.strikes = 0;
    config.delivery.batch_window_ms = window;
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
    let http = reqwest::Client::new();
    let base = format!("http://{}", running.endpoints.http.expect("api"));
    let bob = token("bob", Role::Broadcaster)?;
    http.post(format!("{base}/v1/streams"))
        .bearer_auth(&bob)
        .body(r#"{"id":"probe"}"#)
        .send()
        .await?
        .error_for_status()?;
    http.post(format!("{base}/v1/streams/probe/start"))
        .bearer_auth(&bob)
        .send()
        .await?
        .error_for_status()?;

    let port = running.endpoints.mqtt.expect("broker").port();
    let epoch = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    // Viewer 0 also times retractions: comment id → send time, then retract latency.
    let sent_by_id = Arc::new(Mutex::new(HashMap::<String, f64>::new()));
    let retracts = Arc::new(Mutex::new(Vec::<f64>::new()));
    let received = Arc::new(Mutex::new(HashMap::<usize, usize>::new()));
    let mut ready = Vec::new();
    for v in 0..viewers {
        let mut o = MqttOptions::new(format!("viewer{v}"), "127.0.0.1", port);
        o.set_credentials("u", token(&format!("viewer{v}"), Role::Viewer)?);
        o.set_keep_alive(Duration::from_secs(60));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        client
            .subscribe("streams/probe/comments", QoS::AtMostOnce)
            .await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        let (latencies, received) = (latencies.clone(), received.clone());
        let (sent_by_id, retracts) = (sent_by_id.clone(), retracts.clone());
        tokio::spawn(async move {
            let _client = client;
            let mut tx = Some(tx);
            while let Ok(ev) = eventloop.poll().await {
                match ev {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let now = epoch.elapsed().as_secs_f64();
                        let frame: serde_json::Value = match serde_json::from_slice(&p.payload) {
                            Ok(f) => f,
                            Err(_) => continue,
                        };
                        let mut l = latencies.lock().await;
                        let mut r = received.lock().await;
                        for e in frame["events"].as_array().into_iter().flatten() {
                            if e["type"] == "retract" {
                                if v == 0 {
                                    let id = e["id"].as_str().unwrap_or_default();
                                    if let Some(sent) = sent_by_id.lock().await.get(id) {
                                        retracts.lock().await.push((now - sent) * 1000.0);
                                    }
                                }
                                continue;
                            }
                            let sent: f64 = e["text"]
                                .as_str()
                                .and_then(|t| t.strip_prefix("t="))
                                .and_then(|t| t.split(' ').next())
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(now);
                            if v == 0 {
                                let id = e["id"].as_str().unwrap_or_default().to_string();
                                sent_by_id.lock().await.insert(id, sent);
                            }
                            l.push((now - sent) * 1000.0);
                            *r.entry(v).or_default() += 1;
                        }
                    }
                    _ => {}
                }
            }
        });
    }
    for r in ready {
        r.await?;
    }

    let mut o = MqttOptions::new("poster", "127.0.0.1", port);
    o.set_credentials("u", token("poster", Role::Viewer)?);
    o.set_keep_alive(Duration::from_secs(60));
    let (poster, mut eventloop) = AsyncClient::new(o, 10_000);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        // An insult without blocklisted words: the rules let it through, the model should not.
        let insult = if toxic_every > 0 && i % toxic_every == 0 {
            " you stupid idiot moron"
        } else {
            ""
        };
        let body = serde_json::json!({
            "text": format!("t={}{insult}", epoch.elapsed().as_secs_f64()),
            "client_msg_id": i.to_string(),
        });
        poster
            .publish(
                "streams/probe/post",
                QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut l = latencies.lock().await.clone();
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let expected = total as usize * viewers;
    println!(
        "viewers={viewers} rate={rate}/s seconds={seconds} window_ms={window} model={model}\n\
         deliveries: {} of {expected} ({} missing)\n\
         post→deliver ms: p50={:.1} p90={:.1} p99={:.1} max={:.1}",
        l.len(),
        expected.saturating_sub(l.len()),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        l.last().copied().unwrap_or(f64::NAN),
    );
    let mut r = retracts.lock().await.clone();
    r.sort_by(f64::total_cmp);
    if model && toxic_every > 0 {
        let q = |p: f64| {
            r.get(((r.len() as f64 * p) as usize).min(r.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "retracted: {} of {} toxic\npost→retract ms: p50={:.1} p99={:.1} max={:.1}",
            r.len(),
            total.div_ceil(toxic_every),
            q(0.50),
            q(0.99),
            r.last().copied().unwrap_or(f64::NAN),
        );
    }
    running.shutdown().await;
    Ok(())
}

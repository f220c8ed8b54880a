//! Test harness: a whole system in this process on free loopback ports, real MQTT clients
//! (rumqttc over TCP and WebSocket), real HTTP.
#![allow(dead_code)]

pub mod cassandra;
pub mod flaky;
pub mod process;
pub mod redis;

use std::time::Duration;

use bytes::Bytes;
use livecomments::app::{self, Running};
use livecomments::config::AppConfig;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode, Transport,
};
use serde_json::Value;
use tokio::sync::mpsc;
use wire::auth::{Claims, JwtKeys, Role};

pub const WAIT: Duration = Duration::from_secs(10);

/// A system started for one test; its data directory is deleted afterwards.
pub struct System {
    pub running: Option<Running>,
    pub config: AppConfig,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

/// Defaults, loopback, free ports, a temporary data directory.
pub fn test_config(dir: &std::path::Path) -> AppConfig {
    let mut c = AppConfig::defaults().expect("defaults parse");
    c.data_dir = dir.to_path_buf();
    c.mqtt.host = "127.0.0.1".into();
    c.mqtt.port = 0;
    c.ws.host = "127.0.0.1".into();
    c.ws.port = 0;
    c.http.host = "127.0.0.1".into();
    c.http.port = 0;
    // Tests that need the ONNX model turn it on.
    c.moderation.model.enabled = false;
    c
}

impl System {
    pub async fn start() -> System {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut AppConfig)) -> System {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        f(&mut config);
        let running = app::start(config.clone()).await.expect("system starts");
        System {
            running: Some(running),
            config,
            dir,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the system and starts it again on the same data directory and configuration
    /// (new ports).
    pub async fn restart(mut self) -> System {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        let running = app::start(self.config.clone())
            .await
            .expect("system restarts");
        self.running = Some(running);
        self
    }

    /// A token of a paying subscriber.
    pub fn subscriber_token(&self, sub: &str) -> String {
        let now = wire::time::now_ms() / 1000;
        self.keys()
            .sign(&Claims {
                sub: sub.into(),
                name: None,
                role: Role::Viewer,
                exp: (now + 3600) as u64,
                iat: None,
                subscriber: true,
            })
            .expect("sign")
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn mqtt_port(&self) -> u16 {
        self.running().endpoints.mqtt.expect("a broker").port()
    }

    pub fn ws_port(&self) -> u16 {
        self.running().endpoints.ws.expect("ws enabled").port()
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.running().endpoints.http.expect("an api")
        )
    }

    pub fn keys(&self) -> &JwtKeys {
        &self.running().keys
    }

    pub fn token(&self, sub: &str, role: Role) -> String {
        token_with(self.keys(), sub, role, 3600)
    }

    /// Creates and starts a stream as broadcaster `bob`.
    pub async fn live_stream(&self, id: &str) {
        let b = self.token("bob", Role::Broadcaster);
        let r = self
            .http
            .post(self.url("/v1/streams"))
            .bearer_auth(&b)
            .json(&serde_json::json!({"id": id, "title": "test"}))
            .send()
            .await
            .expect("create");
        assert_eq!(
            r.status(),
            201,
            "create stream: {}",
            r.text().await.unwrap_or_default()
        );
        let r = self
            .http
            .post(self.url(&format!("/v1/streams/{id}/start")))
            .bearer_auth(&b)
            .send()
            .await
            .expect("start");
        assert_eq!(r.status(), 200);
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("get");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Catch-up: every stored comment of the stream, in seq order.
    pub async fn stored(&self, stream: &str) -> Vec<Value> {
        let (status, v) = self
            .get_json(&format!(
                "/v1/streams/{stream}/comments?after_seq=0&limit=1000"
            ))
            .await;
        assert_eq!(status, 200, "{v}");
        v["comments"].as_array().cloned().unwrap_or_default()
    }

    /// The value of the first `/metrics` line starting with `series` (name and labels);
    /// `None` when there is none.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits up to `WAIT` until the `/metrics` series `series` reads `want`.
    pub async fn metric_becomes(&self, series: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.metric(series).await;
            if got == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stuck at {got:?}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn tcp(&self, client_id: &str, token: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", self.mqtt_port());
        o.set_credentials("user", token);
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub fn ws(&self, client_id: &str, token: &str) -> MqttOptions {
        let port = self.ws_port();
        let mut o = MqttOptions::new(client_id, format!("ws://127.0.0.1:{port}/mqtt"), port);
        o.set_transport(Transport::Ws);
        o.set_credentials("user", token);
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

pub fn token_with(keys: &JwtKeys, sub: &str, role: Role, ttl_s: i64) -> String {
    let now = wire::time::now_ms() / 1000;
    keys.sign(&Claims {
        sub: sub.into(),
        name: Some(format!("{sub} name")),
        role,
        exp: (now + ttl_s).max(0) as u64,
        iat: None,
        subscriber: false,
    })
    .expect("sign")
}

/// What the client's event loop reported.
#[derive(Debug)]
pub enum Seen {
    Packet(Packet),
    Closed(String),
}

/// A real MQTT client with its event loop running in the background.
pub struct Client {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Seen>,
    /// Packets that arrived while a helper waited for something else, in order.
    stash: std::collections::VecDeque<Seen>,
    /// The event loop; aborting it drops the socket.
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Client {
    /// Connects and waits for CONNACK; `Err` carries the refusal.
    pub async fn connect(options: MqttOptions) -> Result<Client, ConnectionError> {
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        loop {
            match tokio::time::timeout(WAIT, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ConnectionError::NetworkTimeout),
            }
        }
        let (tx, events) = mpsc::unbounded_channel();
        let pump = tokio::spawn(pump(eventloop, tx));
        Ok(Client {
            client,
            events,
            stash: Default::default(),
            pump,
        })
    }

    pub async fn must(options: MqttOptions) -> Client {
        Client::connect(options).await.expect("connects")
    }

    /// Subscribes and returns the SUBACK codes.
    pub async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        match self
            .wait_for(|p| matches!(p, Packet::SubAck(_)), filter)
            .await
        {
            Packet::SubAck(ack) => ack.return_codes,
            _ => unreachable!(),
        }
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("queue unsubscribe");
        self.wait_for(|p| matches!(p, Packet::UnsubAck(_)), filter)
            .await;
    }

    /// Waits for the first packet matching `f`; other packets stay queued, in order.
    async fn wait_for(&mut self, f: impl Fn(&Packet) -> bool, what: &str) -> Packet {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        let found = loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Seen::Packet(p))) if f(&p) => break p,
                Ok(Some(Seen::Closed(e))) => panic!("closed while waiting ({what}): {e}"),
                Ok(Some(other)) => skipped.push(other),
                Ok(None) | Err(_) => panic!("no answer for {what}"),
            }
        };
        self.stash.extend(skipped);
        found
    }

    pub async fn post(&self, stream: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(
                format!("streams/{stream}/post"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("queue publish");
    }

    pub async fn post_text(&self, stream: &str, text: &str, client_msg_id: &str) {
        let body = serde_json::json!({"text": text, "client_msg_id": client_msg_id});
        self.post(stream, body.to_string()).await;
    }

    /// The next event, stashed ones first.
    async fn recv(&mut self) -> Option<Seen> {
        match self.stash.pop_front() {
            Some(s) => Some(s),
            None => self.events.recv().await,
        }
    }

    /// The next packet received, or `None` after `wait` or when closed.
    pub async fn next_packet(&mut self, wait: Duration) -> Option<Packet> {
        match tokio::time::timeout(wait, self.recv()).await {
            Ok(Some(Seen::Packet(p))) => Some(p),
            _ => None,
        }
    }

    /// The next PUBLISH received, or `None` after `wait`.
    pub async fn next_publish(&mut self, wait: Duration) -> Option<(String, Bytes)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Ok(Some(Seen::Packet(Packet::Publish(p)))) => return Some((p.topic, p.payload)),
                Ok(Some(Seen::Closed(_))) | Ok(None) | Err(_) => return None,
                Ok(Some(_)) => continue,
            }
        }
    }

    /// The next message on `topic` as JSON. Messages on other topics stay queued, in order,
    /// for later calls.
    pub async fn next_on(&mut self, topic: &str, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut skipped = Vec::new();
        let found = loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Ok(Some(Seen::Packet(Packet::Publish(p)))) if p.topic == topic => {
                    break Some(serde_json::from_slice(&p.payload).expect("json payload"));
                }
                Ok(Some(Seen::Closed(e))) => {
                    skipped.push(Seen::Closed(e));
                    break None;
                }
                Ok(Some(other)) => skipped.push(other),
                Ok(None) | Err(_) => break None,
            }
        };
        for s in skipped.into_iter().rev() {
            self.stash.push_front(s);
        }
        found
    }

    /// Events of any type received on `streams/{stream}/comments` until `n` arrived, or
    /// fewer when no frame comes for [`WAIT`].
    pub async fn events(&mut self, stream: &str, n: usize) -> Vec<Value> {
        let topic = format!("streams/{stream}/comments");
        let mut got = Vec::new();
        while got.len() < n {
            let Some(frame) = self.next_on(&topic, WAIT).await else {
                break;
            };
            got.extend(frame["events"].as_array().cloned().unwrap_or_default());
        }
        got
    }

    /// Comment events received on `streams/{stream}/comments` until `n` arrived or `wait`
    /// passed; also returns how many frames carried them.
    pub async fn comments(
        &mut self,
        stream: &str,
        n: usize,
        wait: Duration,
    ) -> (Vec<Value>, usize) {
        let topic = format!("streams/{stream}/comments");
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = Vec::new();
        let mut frames = 0;
        while events.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.next_on(&topic, left).await else {
                break;
            };
            frames += 1;
            assert_eq!(frame["v"], 1, "{frame}");
            for e in frame["events"].as_array().expect("events array") {
                if e["type"] == "comment" {
                    events.push(e.clone());
                }
            }
        }
        (events, frames)
    }

    /// The next `streams/s1/presence` message counting `want` viewers (within 15 s).
    pub async fn presence_until(&mut self, want: u64) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let p = self
                .next_on("streams/s1/presence", Duration::from_secs(5))
                .await
                .expect("presence within 5 s");
            if p["viewers"] == want {
                return p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "presence never reached {want}: {p}"
            );
        }
    }

    /// The next answer on the user's inbox.
    pub async fn inbox(&mut self, user: &str) -> Value {
        self.next_on(&format!("users/{user}/inbox"), WAIT)
            .await
            .unwrap_or_else(|| panic!("no inbox message for {user}"))
    }

    /// Waits until the server closes the connection; false if it stays open for `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Ok(Some(Seen::Closed(_))) | Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

async fn pump(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Seen>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(p)) => {
                if tx.send(Seen::Packet(p)).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(_)) => {}
            Err(e) => {
                let _ = tx.send(Seen::Closed(e.to_string()));
                return;
            }
        }
    }
}

pub fn refused_with(r: Result<Client, ConnectionError>) -> Option<ConnectReturnCode> {
    match r {
        Err(ConnectionError::ConnectionRefused(code)) => Some(code),
        _ => None,
    }
}

pub fn granted(codes: &[SubscribeReasonCode]) -> bool {
    codes
        .iter()
        .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

/// A post by `ann` in `s1` over HTTP, text `hello {cmid}`.
pub fn post(cmid: &str) -> wire::bus::Submission {
    wire::bus::Submission {
        kind: wire::bus::SubmissionKind::Post,
        stream: wire::StreamId::new("s1").unwrap(),
        author: wire::bus::Author {
            id: wire::UserId::new("ann").unwrap(),
            name: "ann".into(),
            role: Role::Viewer,
            subscriber: false,
        },
        payload: serde_json::json!({"text": format!("hello {cmid}"), "client_msg_id": cmid})
            .to_string()
            .into(),
        origin: wire::bus::Origin::Http,
        received_at_ms: wire::time::now_ms(),
    }
}

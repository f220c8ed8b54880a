//! The cluster as separate OS processes, started by `deploy/local-cluster` on real Redis and
//! real Cassandra (`CASSANDRA_URI`, which `scripts/test` provides): two broker nodes, two
//! bridges, a moderation worker and an API server. One test walks through the behaviours in
//! order on one cluster (each phase leaves the cluster working for the next); starting a
//! cluster per behaviour would cost more than the behaviours.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{token_with, Client, WAIT};
use rumqttc::{MqttOptions, QoS};
use serde_json::{json, Value};
use wire::auth::{JwtKeys, Role};

/// A running local cluster; stopped (and its processes killed) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
    keys: JwtKeys,
    http: reqwest::Client,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local-cluster")
}

impl Cluster {
    fn up(brokers: usize, bridges: usize) -> Cluster {
        assert!(
            std::env::var("CASSANDRA_URI").is_ok(),
            "CASSANDRA_URI must point at a Cassandra node (scripts/test starts one)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(script())
            .args(["up", "--brokers", &brokers.to_string()])
            .args(["--bridges", &bridges.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .env("LIVECOMMENTS_BIN", env!("CARGO_BIN_EXE_livecomments"))
            .env("RUST_LOG", "info")
            // Synthetic posters: the per-user comment budget (10 a minute) would refuse them.
            .env("LIVECOMMENTS__BRIDGE__RATE_LIMIT_COUNT", "0")
            .output()
            .expect("deploy/local-cluster runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "local-cluster up failed: {}\n{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let env: BTreeMap<String, String> = stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        for key in [
            "BROKER_1_MQTT",
            "BROKER_1_WS",
            "API_HTTP",
            "REDIS",
            "CASSANDRA",
        ] {
            assert!(env.contains_key(key), "{key} missing from {stdout}");
        }
        let toml = std::fs::read_to_string(dir.path().join("cluster.toml")).unwrap();
        let secret = toml
            .lines()
            .find_map(|l| l.strip_prefix("jwt_secret = "))
            .expect("a jwt secret")
            .trim_matches('"')
            .to_string();
        Cluster {
            keys: JwtKeys::new(secret.as_bytes()),
            dir,
            env,
            http: reqwest::Client::new(),
        }
    }

    fn token(&self, user: &str, role: Role) -> String {
        token_with(&self.keys, user, role, 3600)
    }

    fn mqtt(&self, broker: usize, client_id: &str, user: &str) -> MqttOptions {
        let addr = &self.env[&format!("BROKER_{broker}_MQTT")];
        let (host, port) = addr.rsplit_once(':').unwrap();
        let mut o = MqttOptions::new(client_id, host, port.parse().unwrap());
        o.set_credentials("user", self.token(user, Role::Viewer));
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.env["API_HTTP"])
    }

    async fn call(&self, method: reqwest::Method, path: &str, role: Role, body: Value) -> Value {
        let r = self
            .http
            .request(method, self.url(path))
            .bearer_auth(self.token("boss", role))
            .json(&body)
            .send()
            .await
            .expect("api answers");
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("api answers")
            .json()
            .await
            .expect("json")
    }

    fn pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.dir.path().join(format!("pids/{name}.pid")))
            .unwrap_or_else(|_| panic!("no pid file for {name}"))
            .trim()
            .parse()
            .unwrap()
    }

    fn kill9(&self, name: &str) {
        let pid = self.pid(name);
        let ok = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -9 {name}");
    }

    fn start(&self, name: &str) {
        let ok = Command::new(script())
            .args(["start", name, "--dir"])
            .arg(self.dir.path())
            .env("LIVECOMMENTS_BIN", env!("CARGO_BIN_EXE_livecomments"))
            .env("LIVECOMMENTS__BRIDGE__RATE_LIMIT_COUNT", "0")
            .status()
            .unwrap();
        assert!(ok.success(), "local-cluster start {name}");
    }

    /// Every comment of s1 stored, by seq, through the catch-up API.
    async fn stored(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0u64;
        loop {
            let page = self
                .get(&format!(
                    "/v1/streams/s1/comments?after_seq={after}&limit=500"
                ))
                .await;
            let events = page["comments"].as_array().cloned().unwrap_or_default();
            let comments: Vec<Value> = events
                .into_iter()
                .filter(|e| e["type"] == "comment")
                .collect();
            if comments.is_empty() {
                return out;
            }
            after = comments.last().unwrap()["seq"].as_u64().unwrap();
            out.extend(comments);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["down", "--dir"])
            .arg(self.dir.path())
            .status();
    }
}

/// Sends `n` posts from one connection (QoS 1); returns the client_msg_ids acknowledged on
/// the inbox within `wait` (by id → seq).
async fn post_many(
    poster: &mut Client,
    user: &str,
    prefix: &str,
    n: usize,
    wait: Duration,
) -> BTreeMap<String, u64> {
    let text = |cmid: &str| format!("{prefix} {}", cmid.rsplit('-').next().unwrap_or(""));
    for i in 0..n {
        let cmid = format!("{prefix}-{i}");
        poster.post_text("s1", &text(&cmid), &cmid).await;
        // Under the node's per-connection limit (20/s).
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let mut acked = BTreeMap::new();
    let deadline = Instant::now() + wait;
    while acked.len() < n && Instant::now() < deadline {
        let Some(a) = poster
            .next_on(&format!("users/{user}/inbox"), Duration::from_secs(2))
            .await
        else {
            continue;
        };
        let cmid = a["client_msg_id"].as_str().unwrap_or_default().to_string();
        if a["type"] == "ack" {
            acked.insert(cmid, a["seq"].as_u64().unwrap());
        } else if a["type"] == "reject" && a["code"] == "unavailable" && !cmid.is_empty() {
            // What a client does: the same post again after retry_after_ms (a post the killed
            // bridge had claimed is answered "retry" until its claim passes on).
            let after = a["retry_after_ms"].as_u64().unwrap_or(500);
            tokio::time::sleep(Duration::from_millis(after)).await;
            poster.post_text("s1", &text(&cmid), &cmid).await;
        }
    }
    acked
}

/// Comment events on s1 until `want` distinct seqs arrived or `wait` passed (by seq).
async fn receive(viewer: &mut Client, want: usize, wait: Duration) -> BTreeMap<u64, Value> {
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + wait;
    while got.len() < want && Instant::now() < deadline {
        let Some(frame) = viewer
            .next_on("streams/s1/comments", Duration::from_secs(1))
            .await
        else {
            continue;
        };
        for e in frame["events"].as_array().cloned().unwrap_or_default() {
            if e["type"] == "comment" {
                let seq = e["seq"].as_u64().unwrap();
                assert!(got.insert(seq, e).is_none(), "seq {seq} delivered twice");
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_processes_survives_its_failures() {
    let cluster = Cluster::up(2, 2);
    cluster
        .call(
            reqwest::Method::POST,
            "/v1/streams",
            Role::Broadcaster,
            json!({"id": "s1", "title": "final"}),
        )
        .await;
    cluster
        .call(
            reqwest::Method::POST,
            "/v1/streams/s1/start",
            Role::Broadcaster,
            json!({}),
        )
        .await;

    // 1. A viewer on node 1 sees a comment posted on node 2.
    let mut viewer = Client::must(cluster.mqtt(1, "v1", "vic")).await;
    viewer.subscribe("streams/s1/comments").await;
    let mut poster = Client::must(cluster.mqtt(2, "p1", "ann")).await;
    poster.subscribe("users/ann/inbox").await;
    let acked = post_many(&mut poster, "ann", "hello", 5, WAIT).await;
    assert_eq!(acked.len(), 5, "every post acknowledged: {acked:?}");
    let got = receive(&mut viewer, 5, WAIT).await;
    assert_eq!(
        got.keys().copied().collect::<BTreeSet<_>>(),
        acked.values().copied().collect::<BTreeSet<_>>(),
        "node 1's viewer got exactly node 2's comments"
    );

    // 2. Presence and reaction totals are the cluster's.
    let mut watch1 = Client::must(cluster.mqtt(1, "w1", "w1")).await;
    watch1.subscribe("streams/s1/presence").await;
    let mut watch2 = Client::must(cluster.mqtt(2, "w2", "w2")).await;
    watch2.subscribe("streams/s1/presence").await;
    // vic (comments) on 1, w1 on 1, w2 on 2.
    watch1.presence_until(3).await;
    watch2.presence_until(3).await;
    let mut reacts = Vec::new();
    for (node, user) in [(1, "r1"), (2, "r2")] {
        let c = Client::must(cluster.mqtt(node, user, user)).await;
        for _ in 0..5 {
            c.client
                .publish(
                    "streams/s1/react",
                    QoS::AtMostOnce,
                    false,
                    json!({"emoji": "🔥"}).to_string(),
                )
                .await
                .unwrap();
        }
        reacts.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = cluster.get("/v1/streams/s1/stats").await;
        if stats["reactions"]["🔥"] == 10 {
            assert!(stats["viewers"].as_u64().unwrap() >= 3, "{stats}");
            break;
        }
        assert!(Instant::now() < deadline, "reaction totals: {stats}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(reacts);

    // 3. Kill -9 a bridge with submissions in flight: the other one claims its pending
    //    entries; every acknowledged comment is stored once.
    let burst = tokio::spawn({
        let opts = cluster.mqtt(2, "p2", "bob");
        async move {
            let mut bob = Client::must(opts).await;
            bob.subscribe("users/bob/inbox").await;
            post_many(&mut bob, "bob", "burst", 40, Duration::from_secs(30)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.kill9("bridge-1");
    let burst_acked = burst.await.unwrap();
    assert_eq!(
        burst_acked.len(),
        40,
        "every post of the burst acknowledged after the takeover"
    );

    // 4. Kill -9 broker 1 while comments flow: its viewer reconnects to broker 2, catches up
    //    with after_seq, and ends with every acknowledged comment exactly once.
    let mut seen: BTreeMap<u64, Value> = receive(&mut viewer, 40, Duration::from_secs(20)).await;
    seen.extend(got);
    let flow = tokio::spawn({
        let opts = cluster.mqtt(2, "p3", "cat");
        async move {
            let mut cat = Client::must(opts).await;
            cat.subscribe("users/cat/inbox").await;
            post_many(&mut cat, "cat", "flow", 30, Duration::from_secs(30)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    seen.extend(receive(&mut viewer, usize::MAX, Duration::from_millis(300)).await);
    cluster.kill9("broker-1");
    assert!(
        viewer.closed_within(WAIT).await,
        "the viewer's connection dropped"
    );
    let mut viewer = Client::must(cluster.mqtt(2, "v1", "vic")).await;
    viewer.subscribe("streams/s1/comments").await;
    let last = seen.keys().next_back().copied().unwrap_or(0);
    let flow_acked = flow.await.unwrap();
    assert_eq!(
        flow_acked.len(),
        30,
        "every post during the kill acknowledged"
    );
    let mut after = last;
    let mut caught_up = 0;
    loop {
        let page = cluster
            .get(&format!(
                "/v1/streams/s1/comments?after_seq={after}&limit=500"
            ))
            .await;
        let events: Vec<Value> = page["comments"].as_array().cloned().unwrap_or_default();
        let comments: Vec<&Value> = events.iter().filter(|e| e["type"] == "comment").collect();
        let Some(tail) = comments.last() else { break };
        after = tail["seq"].as_u64().unwrap();
        for c in comments {
            caught_up += 1;
            seen.insert(c["seq"].as_u64().unwrap(), c.clone());
        }
    }
    assert!(caught_up > 0, "catch-up returned what the viewer missed");
    // Live events that arrive after the catch-up are the same seqs (a client keys by seq).
    for (seq, e) in receive(&mut viewer, usize::MAX, Duration::from_secs(1)).await {
        seen.entry(seq).or_insert(e);
    }
    let all_acked: BTreeSet<u64> = acked
        .values()
        .chain(burst_acked.values())
        .chain(flow_acked.values())
        .copied()
        .collect();
    assert_eq!(all_acked.len(), 75, "75 posts, 75 distinct seqs");
    let seen_seqs: BTreeSet<u64> = seen.keys().copied().collect();
    assert_eq!(
        seen_seqs, all_acked,
        "the viewer ends with every acknowledged comment"
    );
    let stored = cluster.stored().await;
    let ids: BTreeSet<&str> = stored.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(stored.len(), 75, "stored once each");
    assert_eq!(ids.len(), 75, "no duplicate ids");

    // 5. Restart Redis: posts meanwhile are refused retryably; delivery resumes by itself.
    cluster.start("broker-1");
    let redis_pid = std::fs::read_to_string(cluster.dir.path().join("redis/redis.pid")).unwrap();
    Command::new("kill")
        .args(["-9", redis_pid.trim()])
        .status()
        .unwrap();
    let mut dan = Client::must(cluster.mqtt(2, "p4", "dan")).await;
    dan.subscribe("users/dan/inbox").await;
    dan.post_text("s1", "during", "d1").await;
    let r = dan.inbox("dan").await;
    assert_eq!(r["code"], "unavailable", "{r}");
    cluster.start("redis");
    let mut viewer1 = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while viewer1.is_none() {
        if let Ok(mut c) = Client::connect(cluster.mqtt(1, "v9", "vic")).await {
            c.subscribe("streams/s1/comments").await;
            viewer1 = Some(c);
        }
        assert!(Instant::now() < deadline, "node 1 accepts viewers again");
    }
    let mut viewer1 = viewer1.unwrap();
    // Delivery resumes by itself: posts on node 2 reach the viewer on node 1 again. A comment
    // published while node 1 was still reconnecting to Redis pub/sub reaches it only through
    // catch-up (docs/operations.md), so post until one arrives live; every acknowledged one
    // is stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut acked = BTreeSet::new();
    let mut live = BTreeMap::new();
    let mut n = 0;
    while live.is_empty() {
        assert!(
            Instant::now() < deadline,
            "delivered across nodes after the restart (acked {acked:?})"
        );
        n += 1;
        if let Ok(mut dan) = Client::connect(cluster.mqtt(2, &format!("p4-{n}"), "dan")).await {
            dan.subscribe("users/dan/inbox").await;
            dan.post_text("s1", &format!("during {n}"), &format!("d{n}"))
                .await;
            if let Some(a) = dan.next_on("users/dan/inbox", Duration::from_secs(3)).await {
                if a["type"] == "ack" {
                    acked.insert(a["seq"].as_u64().unwrap());
                    live = receive(&mut viewer1, 1, Duration::from_secs(3)).await;
                    continue;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        live.keys().all(|seq| acked.contains(seq)),
        "only acknowledged comments are delivered: {live:?} of {acked:?}"
    );
    let stored: BTreeSet<u64> = cluster
        .stored()
        .await
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert!(
        acked.is_subset(&stored),
        "every acknowledged comment is stored: {acked:?}"
    );
}

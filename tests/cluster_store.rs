//! The cluster configuration end to end: the Redis bus (a private `redis-server`) and the
//! Cassandra store (the node at `CASSANDRA_URI`, a fresh keyspace per test), with real MQTT
//! clients and HTTP. `scripts/test` starts both servers; without `CASSANDRA_URI` these tests
//! fail and say how to provide it.

mod common;

use common::cassandra::{self, use_cassandra};
use common::redis::RedisServer;
use common::{seqs, Client, System, WAIT};
use livecomments::app;
use livecomments::config::{BusBackend, ClusterRole};
use serde_json::{json, Value};
use wire::auth::Role;

fn on_redis(c: &mut livecomments::config::AppConfig, redis: &RedisServer) {
    c.bus.backend = BusBackend::Redis;
    c.bus.redis.url = redis.url();
    c.bus.redis.unwatch_linger_ms = 200;
    c.bus.redis.claim_idle_ms = 1000;
    c.bridge.rate_limit_count = 0;
}

async fn replay(sys: &System, stream: &str) -> Vec<Value> {
    let (status, v) = sys
        .get_json(&format!(
            "/v1/streams/{stream}/comments?start_time=0&duration=3600"
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    v["comments"].as_array().cloned().unwrap_or_default()
}

fn texts(comments: &[Value]) -> Vec<&str> {
    comments
        .iter()
        .map(|c| c["text"].as_str().expect("text"))
        .collect()
}

/// One process with every role on Redis and Cassandra: posts over MQTT are acknowledged,
/// delivered in order and replayed over HTTP from Cassandra; a retry is answered from the
/// de-duplication rows; a retraction reaches the viewer and leaves replay; a restarted
/// process serves the same history and numbers on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_flow_through_redis_and_cassandra() {
    let node = cassandra::uri();
    let keyspace = cassandra::fresh_keyspace("flow");
    let redis = RedisServer::start();
    let started = std::time::Instant::now();
    let sys = System::start_with(|c| {
        on_redis(c, &redis);
        use_cassandra(c, &node, &keyspace);
    })
    .await;
    eprintln!(
        "system up (keyspace {keyspace} created) in {:?}",
        started.elapsed()
    );
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let mut state = Client::must(sys.tcp("st", &sys.token("st", Role::Viewer))).await;
    state.subscribe("streams/s1/state").await;
    let st = state.next_on("streams/s1/state", WAIT).await;
    assert_eq!(
        st.expect("the retained state, bootstrapped from Cassandra")["status"],
        "live"
    );

    let mut poster = Client::must(sys.tcp("p", &sys.token("ann", Role::Viewer))).await;
    poster.subscribe("users/ann/inbox").await;
    let mut acks = Vec::new();
    for i in 0..10 {
        poster
            .post_text("s1", &format!("c{i}"), &format!("m{i}"))
            .await;
        let a = poster.inbox("ann").await;
        assert_eq!(a["type"], "ack", "{a}");
        acks.push(a);
    }
    assert_eq!(seqs(&acks), (1..=10).collect::<Vec<_>>());
    let got = viewer.events("s1", 10).await;
    assert_eq!(seqs(&got), (1..=10).collect::<Vec<_>>());

    // A retry (same client_msg_id) gets the first answer and stores nothing new.
    poster.post_text("s1", "c0", "m0").await;
    let again = poster.inbox("ann").await;
    assert_eq!(
        (&again["type"], &again["seq"], &again["id"]),
        (&acks[0]["type"], &acks[0]["seq"], &acks[0]["id"])
    );

    let stored = replay(&sys, "s1").await;
    assert_eq!(
        texts(&stored),
        (0..10).map(|i| format!("c{i}")).collect::<Vec<_>>()
    );
    assert_eq!(stored[0]["id"], acks[0]["id"]);
    assert_eq!(sys.stored("s1").await.len(), 10, "catch-up by seq");

    // A moderator's retraction: live to the viewer, out of replay, in catch-up as an event.
    let id = acks[3]["id"].as_str().unwrap().to_string();
    let r = sys
        .http
        .post(sys.url(&format!("/v1/streams/s1/comments/{id}/retract")))
        .bearer_auth(sys.token("mo", Role::Moderator))
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let ev = viewer.events("s1", 1).await;
    assert_eq!(
        (ev[0]["type"].as_str(), ev[0]["id"].as_str()),
        (Some("retract"), Some(id.as_str()))
    );
    assert_eq!(ev[0]["seq"], 11);
    let stored = replay(&sys, "s1").await;
    assert_eq!(stored.len(), 9);
    assert!(stored.iter().all(|c| c["id"] != id.as_str()));

    // Another process (a restart) on the same Redis and keyspace: same history, numbering on.
    drop((viewer, poster, state));
    let sys = sys.restart().await;
    assert_eq!(replay(&sys, "s1").await.len(), 9);
    let mut poster = Client::must(sys.tcp("p", &sys.token("ann", Role::Viewer))).await;
    poster.subscribe("users/ann/inbox").await;
    poster.post_text("s1", "after the restart", "m10").await;
    let a = poster.inbox("ann").await;
    assert_eq!(
        (a["type"].as_str(), a["seq"].as_u64()),
        (Some("ack"), Some(12)),
        "{a}"
    );
    assert_eq!(
        texts(&replay(&sys, "s1").await).last().copied(),
        Some("after the restart")
    );
    sys.stop().await;
    cassandra::drop_keyspace(&node, &keyspace).await;
}

/// Two processes of a cluster: a broker + API node without a write path, and a bridge +
/// moderation process without listeners, sharing Redis and the keyspace. The post travels
/// node → Redis → bridge → Cassandra → Redis → node; the API node replays it from Cassandra and
/// has the bridge retract it over Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_node_and_a_bridge_process_share_redis_and_cassandra() {
    let node = cassandra::uri();
    let keyspace = cassandra::fresh_keyspace("split");
    let redis = RedisServer::start();

    let bridge_dir = tempfile::tempdir().unwrap();
    let mut bridge_config = common::test_config(bridge_dir.path());
    on_redis(&mut bridge_config, &redis);
    use_cassandra(&mut bridge_config, &node, &keyspace);
    bridge_config.cluster.roles = vec![ClusterRole::Bridge, ClusterRole::Moderation];
    bridge_config.cluster.node_id = "bridge-1".into();
    assert!(
        bridge_config.validate().is_empty(),
        "{:?}",
        bridge_config.validate()
    );
    let bridge = app::start(bridge_config)
        .await
        .expect("the bridge process starts");
    assert!(bridge.endpoints.mqtt.is_none() && bridge.endpoints.http.is_none());

    let sys = System::start_with(|c| {
        on_redis(c, &redis);
        use_cassandra(c, &node, &keyspace);
        c.cluster.roles = vec![ClusterRole::Broker, ClusterRole::Api];
        c.cluster.node_id = "edge-1".into();
    })
    .await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let mut poster = Client::must(sys.tcp("p", &sys.token("ann", Role::Viewer))).await;
    poster.subscribe("users/ann/inbox").await;
    for i in 0..5 {
        poster
            .post_text("s1", &format!("c{i}"), &format!("m{i}"))
            .await;
        let a = poster.inbox("ann").await;
        assert_eq!(
            (a["type"].as_str(), a["seq"].as_u64()),
            (Some("ack"), Some(i + 1)),
            "{a}"
        );
    }
    let got = viewer.events("s1", 5).await;
    assert_eq!(seqs(&got), (1..=5).collect::<Vec<_>>());
    let stored = replay(&sys, "s1").await;
    assert_eq!(texts(&stored), ["c0", "c1", "c2", "c3", "c4"]);

    let id = got[0]["id"].as_str().unwrap().to_string();
    let r = sys
        .http
        .post(sys.url(&format!("/v1/streams/s1/comments/{id}/retract")))
        .bearer_auth(sys.token("mo", Role::Moderator))
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let ev = viewer.events("s1", 1).await;
    assert_eq!(
        (ev[0]["type"].as_str(), ev[0]["seq"].as_u64()),
        (Some("retract"), Some(6))
    );
    assert_eq!(texts(&replay(&sys, "s1").await), ["c1", "c2", "c3", "c4"]);

    sys.stop().await;
    bridge.shutdown().await;
    cassandra::drop_keyspace(&node, &keyspace).await;
}

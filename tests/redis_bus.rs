//! The Redis bus against a real `redis-server`: posts travel node → Redis Stream → bridge,
//! events bridge → pub/sub → node; calls from processes without a write path; a Redis
//! restart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bridge::bus::redis::{RedisBus, RedisBusConfig};
use common::redis::RedisServer;
use common::{seqs, Client, System, WAIT};
use livecomments::config::BusBackend;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wire::auth::Role;
use wire::ingest::Ingest;
use wire::moderation::Action;

async fn system_on(redis: &RedisServer) -> System {
    system_with(redis, 0).await
}

async fn system_with(redis: &RedisServer, rate_limit_count: u32) -> System {
    let url = redis.url();
    System::start_with(move |c| {
        c.bus.backend = BusBackend::Redis;
        c.bus.redis.url = url;
        c.bus.redis.unwatch_linger_ms = 200;
        c.bus.redis.claim_idle_ms = 1000;
        c.bridge.rate_limit_count = rate_limit_count;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_reach_viewers_in_order_through_redis() {
    let redis = RedisServer::start();
    let sys = system_on(&redis).await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let mut state = Client::must(sys.tcp("st", &sys.token("st", Role::Viewer))).await;
    state.subscribe("streams/s1/state").await;
    let st = state.next_on("streams/s1/state", WAIT).await;
    assert_eq!(
        st.expect("the retained state, bootstrapped from the store")["status"],
        "live"
    );
    let mut poster = Client::must(sys.tcp("p", &sys.token("ann", Role::Viewer))).await;
    poster.subscribe("users/ann/inbox").await;
    for i in 0..50 {
        poster
            .post_text("s1", &format!("c{i}"), &format!("m{i}"))
            .await;
        // Under the per-connection limit (20/s).
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for _ in 0..50 {
        let a = poster.inbox("ann").await;
        assert_eq!(a["type"], "ack", "{a}");
    }
    let got = viewer.events("s1", 50).await;
    assert_eq!(seqs(&got), (1..=50).collect::<Vec<_>>());

    // A moderator's retraction follows the same path.
    let id = got[0]["id"].as_str().unwrap();
    let r = sys
        .http
        .post(sys.url(&format!("/v1/streams/s1/comments/{id}/retract")))
        .bearer_auth(sys.token("mo", Role::Moderator))
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev = viewer.events("s1", 1).await;
    assert_eq!(ev[0]["type"], "retract");
    assert_eq!(ev[0]["seq"], 51);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_without_a_write_path_calls_one_over_redis() {
    let redis = RedisServer::start();
    let sys = system_on(&redis).await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;

    // Another "process": its own bus connection and a RemoteIngest, as an API server of a
    // cluster has.
    let stop = CancellationToken::new();
    let bus = RedisBus::connect(
        RedisBusConfig {
            url: redis.url(),
            prefix: "lc".into(),
            claim_idle_ms: 1000,
            unwatch_linger_ms: 200,
            queue_capacity: 64,
        },
        "api-2".into(),
        stop.clone(),
    )
    .await
    .unwrap();
    let remote = bridge::remote::RemoteIngest::new(Arc::new(bus));
    let first = remote.submit(common::post("r1")).await.expect("accepted");
    let again = remote
        .submit(common::post("r1"))
        .await
        .expect("the same answer");
    assert_eq!(first, again, "a retry is answered from the de-duplication");
    let got = viewer.events("s1", 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["text"], "hello r1");

    let outcome = remote
        .act(Action::Retract {
            stream: wire::StreamId::new("s1").unwrap(),
            comment_id: got[0]["id"].as_str().unwrap().to_string(),
            reason: "remote".into(),
            actor: "mo".into(),
            strike: false,
        })
        .await
        .expect("retracted");
    assert!(outcome.changed);
    assert_eq!(viewer.events("s1", 1).await[0]["type"], "retract");
    stop.cancel();
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_rejects_posts_retryably_then_delivery_resumes() {
    let mut redis = RedisServer::start();
    let sys = system_on(&redis).await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let mut poster = Client::must(sys.tcp("p", &sys.token("ann", Role::Viewer))).await;
    poster.subscribe("users/ann/inbox").await;
    poster.post_text("s1", "before", "m1").await;
    assert_eq!(poster.inbox("ann").await["type"], "ack");
    assert_eq!(viewer.events("s1", 1).await[0]["text"], "before");

    let (code, ready) = sys.get_json("/readyz").await;
    assert_eq!((code, ready["bus"].as_str()), (200, Some("ok")), "{ready}");
    redis.kill();
    let (code, ready) = sys.get_json("/readyz").await;
    assert_eq!(code, 503, "not ready without Redis: {ready}");
    assert_ne!(ready["bus"], "ok", "{ready}");
    poster.post_text("s1", "during", "m2").await;
    let r = poster.inbox("ann").await;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert!(r["retry_after_ms"].as_u64().is_some(), "{r}");
    assert!(
        poster.closed_within(WAIT).await,
        "no PUBACK: the connection closes so the client resends"
    );

    redis.restart();
    // The node resubscribes by itself; the client reconnects and resends the same post.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut answer = Value::Null;
    for _ in 0..20 {
        let Ok(mut poster) = Client::connect(sys.tcp("p", &sys.token("ann", Role::Viewer))).await
        else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        poster.subscribe("users/ann/inbox").await;
        poster.post_text("s1", "during", "m2").await;
        answer = poster.inbox("ann").await;
        if answer["type"] == "ack" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(answer["type"], "ack", "{answer}");
    assert_eq!(answer["seq"], 2, "numbering resumes from the store");
    assert_eq!(sys.get_json("/readyz").await.0, 200, "ready again");
    let got = viewer.events("s1", 1).await;
    assert_eq!(got.len(), 1, "the viewer's node resubscribed");
    assert_eq!(got[0]["text"], "during");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_slow_mode_live_in_redis() {
    let redis = RedisServer::start();
    let sys = system_with(&redis, 3).await;
    sys.live_stream("s1").await;
    let mut poster = Client::must(sys.tcp("p", &sys.token("ann", Role::Viewer))).await;
    poster.subscribe("users/ann/inbox").await;
    for i in 0..3 {
        poster
            .post_text("s1", &format!("c{i}"), &format!("m{i}"))
            .await;
        assert_eq!(poster.inbox("ann").await["type"], "ack");
    }
    poster.post_text("s1", "one too many", "m3").await;
    let r = poster.inbox("ann").await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    assert!(r["retry_after_ms"].as_u64().unwrap() > 10_000, "{r}");
    let keys = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--scan",
            "--pattern",
            "lc:rl:*",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&keys.stdout).trim(), "lc:rl:ann");

    // Slow mode, with a user who has quota left.
    let r = sys
        .http
        .put(sys.url("/v1/streams/s1/settings"))
        .bearer_auth(sys.token("bob", Role::Broadcaster))
        .json(&json!({"slow_mode_s": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut bea = Client::must(sys.tcp("b", &sys.token("bea", Role::Viewer))).await;
    bea.subscribe("users/bea/inbox").await;
    bea.post_text("s1", "first", "b1").await;
    assert_eq!(bea.inbox("bea").await["type"], "ack");
    bea.post_text("s1", "second", "b2").await;
    let r = bea.inbox("bea").await;
    assert_eq!(r["code"], "slow_mode", "{r}");
    let wait = r["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 25_000 && wait <= 30_000, "{wait}");
    sys.stop().await;
}

/// The next presence message on `topic` with `want` viewers, each within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_summed_over_the_nodes_of_a_cluster() {
    let redis = RedisServer::start();
    let node = |id: &'static str| {
        let url = redis.url();
        System::start_with(move |c| {
            c.bus.backend = BusBackend::Redis;
            c.bus.redis.url = url;
            c.cluster.node_id = id.into();
            c.presence.interval_ms = 300;
        })
    };
    let (a, b) = (node("a").await, node("b").await);
    a.live_stream("s1").await;
    b.live_stream("s1").await;
    let mut watch_a = Client::must(a.tcp("wa", &a.token("wa", Role::Viewer))).await;
    watch_a.subscribe("streams/s1/presence").await;
    let mut watch_b = Client::must(b.tcp("wb", &b.token("wb", Role::Viewer))).await;
    watch_b.subscribe("streams/s1/presence").await;
    let mut viewers = Vec::new();
    for (sys, id, user) in [(&a, "a1", "ann"), (&a, "a2", "bob"), (&b, "b1", "ann")] {
        let mut c = Client::must(sys.tcp(id, &sys.token(user, Role::Viewer))).await;
        c.subscribe("streams/s1/comments").await;
        viewers.push(c);
    }
    // Both nodes' viewers see the cluster's count: wa, wb, ann twice, bob.
    let pa = watch_a.presence_until(5).await;
    let pb = watch_b.presence_until(5).await;
    assert_eq!(
        (pa["unique"].as_u64(), pb["unique"].as_u64()),
        (Some(4), Some(4))
    );
    // The HTTP API of either node answers with the same.
    let (_, stats) = b.get_json("/v1/streams/s1/stats").await;
    assert_eq!(
        (stats["viewers"].as_u64(), stats["unique"].as_u64()),
        (Some(5), Some(4))
    );

    // A viewer on b goes away abruptly; a's viewers see it.
    drop(viewers.pop());
    watch_a.presence_until(4).await;
    // Node b stops: its watcher's share goes with it.
    drop(watch_b);
    b.stop().await;
    let p = watch_a.presence_until(3).await;
    assert_eq!(
        p["unique"], 4,
        "distinct users since the start stay counted"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_from_every_node_arrive_as_one_frame_per_window() {
    let redis = RedisServer::start();
    let node = |id: &'static str| {
        let url = redis.url();
        System::start_with(move |c| {
            c.bus.backend = BusBackend::Redis;
            c.bus.redis.url = url;
            c.cluster.node_id = id.into();
            c.reactions.window_ms = 500;
        })
    };
    let (a, b) = (node("a").await, node("b").await);
    a.live_stream("s1").await;
    b.live_stream("s1").await;
    let mut watcher = Client::must(a.tcp("w", &a.token("w", Role::Viewer))).await;
    watcher.subscribe("streams/s1/reactions").await;
    let mut senders = Vec::new();
    for (sys, id) in [(&a, "r1"), (&a, "r2"), (&b, "r3"), (&b, "r4")] {
        senders.push(Client::must(sys.tcp(id, &sys.token(id, Role::Viewer))).await);
    }
    // The shared totals start from the store's (here each node has a store of its own, so
    // seed them before anything is counted).
    assert_eq!(stats_totals(&a).await, json!({}));
    // 4 users × 5 per second for 2 s, on both nodes.
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    for _ in 0..10 {
        for s in &senders {
            s.client
                .publish(
                    "streams/s1/react",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    json!({"emoji": "🔥"}).to_string(),
                )
                .await
                .unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut frames = 0u64;
    let mut counted = 0u64;
    while counted < sent {
        let Some(f) = watcher
            .next_on("streams/s1/reactions", Duration::from_secs(3))
            .await
        else {
            break;
        };
        frames += 1;
        counted += f["counts"]["🔥"].as_u64().unwrap_or(0);
    }
    let windows = started.elapsed().as_millis() as u64 / 500 + 1;
    assert_eq!(counted, sent, "every node's reactions counted once");
    assert!(
        frames <= windows,
        "{frames} frames in {windows} windows: one per window, not one per node"
    );
    // Both nodes report the cluster's totals (each has only its own in its store).
    for sys in [&a, &b] {
        assert_eq!(stats_totals(sys).await["🔥"], sent);
    }
    a.stop().await;
    b.stop().await;
}

async fn stats_totals(sys: &System) -> Value {
    let (status, stats) = sys.get_json("/v1/streams/s1/stats").await;
    assert_eq!(status, 200, "{stats}");
    stats["reactions"].clone()
}

async fn react(client: &Client, emoji: &str, n: usize) {
    for _ in 0..n {
        client
            .client
            .publish(
                "streams/s1/react",
                rumqttc::QoS::AtLeastOnce,
                false,
                json!({ "emoji": emoji }).to_string(),
            )
            .await
            .unwrap();
    }
}

/// Polls the stats until the totals equal `want`.
async fn totals_become(sys: &System, want: Value) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = stats_totals(sys).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "totals {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaction_totals_live_in_redis_seeded_from_the_store() {
    let redis = RedisServer::start();
    let url = redis.url();
    let sys = System::start_with(move |c| {
        c.bus.backend = BusBackend::Redis;
        c.bus.redis.url = url;
        c.reactions.window_ms = 200;
    })
    .await;
    sys.live_stream("s1").await;
    let r = Client::must(sys.tcp("r", &sys.token("r", Role::Viewer))).await;
    react(&r, "🔥", 6).await;
    react(&r, "👍", 3).await;
    totals_become(&sys, json!({"🔥": 6, "👍": 3})).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let hash = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("HGETALL")
                .arg("lc:rt:s1")
                .query_async::<std::collections::BTreeMap<String, u64>>(&mut conn)
                .await
                .unwrap()
        }
    };
    let expected: std::collections::BTreeMap<String, u64> =
        [("".into(), 0), ("🔥".into(), 6), ("👍".into(), 3)].into();
    assert_eq!(hash(&mut conn).await, expected);

    // The totals are read from Redis, not the store...
    let _: () = redis::cmd("HINCRBY")
        .arg("lc:rt:s1")
        .arg("🔥")
        .arg(100)
        .query_async(&mut conn)
        .await
        .unwrap();
    totals_become(&sys, json!({"🔥": 106, "👍": 3})).await;
    // ...and seeded from the store again when Redis lost them.
    let _: () = redis::cmd("DEL")
        .arg("lc:rt:s1")
        .query_async(&mut conn)
        .await
        .unwrap();
    totals_become(&sys, json!({"🔥": 6, "👍": 3})).await;
    assert_eq!(hash(&mut conn).await, expected);
    react(&r, "🔥", 2).await;
    totals_become(&sys, json!({"🔥": 8, "👍": 3})).await;
    assert_eq!(hash(&mut conn).await["🔥"], 8);
    sys.stop().await;
}

fn accepted_comment(id: &str) -> wire::event::Comment {
    wire::event::Comment {
        id: id.into(),
        seq: 1,
        stream: wire::StreamId::new("s1").unwrap(),
        user: wire::event::UserRef {
            id: wire::UserId::new("ann").unwrap(),
            name: "ann".into(),
        },
        text: format!("text of {id}"),
        ts: wire::time::now_ms(),
        offset_ms: 0,
        reply_to: None,
        likes: 0,
        replies: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_a_dead_moderation_worker_had_read_go_to_another() {
    use bridge::bus::redis::{accepted_feed, forward_accepted};
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let claim_idle = Duration::from_millis(1000);
    let stop_a = CancellationToken::new();
    let mut a = accepted_feed(
        client.clone(),
        "lc".into(),
        "mod-a".into(),
        16,
        claim_idle,
        stop_a.clone(),
    )
    .comments;
    // The group starts "from now": wait until the worker has created it.
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let groups: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("lc:accepted")
            .query_async(&mut conn)
            .await;
        if matches!(groups, Ok(redis::Value::Array(ref g)) if !g.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "moderation group created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The bridge's side: accepted comments onto the stream.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let forwarder = tokio::spawn(forward_accepted(client.clone(), "lc".into(), rx));
    for id in ["c1", "c2"] {
        tx.send(accepted_comment(id).into()).await.unwrap();
    }
    drop(tx);
    forwarder.await.unwrap();

    // Worker a scores c1, then dies with c2 read but not scored.
    let first = tokio::time::timeout(WAIT, a.recv()).await.unwrap().unwrap();
    assert_eq!(first.comment.id, "c1");
    (first.receipt.expect("a receipt"))();
    let second = tokio::time::timeout(WAIT, a.recv()).await.unwrap().unwrap();
    assert_eq!(second.comment.id, "c2");
    drop(second);
    stop_a.cancel();
    drop(a);

    // Worker b gets c2 (claimed once idle), and not c1 (scored).
    let stop_b = CancellationToken::new();
    let feed = accepted_feed(
        client,
        "lc".into(),
        "mod-b".into(),
        16,
        claim_idle,
        stop_b.clone(),
    );
    let (mut b, acknowledged) = (feed.comments, feed.acknowledged);
    let got = tokio::time::timeout(WAIT, b.recv()).await.unwrap().unwrap();
    assert_eq!(got.comment.id, "c2");
    assert_eq!(got.comment.text, "text of c2");
    (got.receipt.expect("a receipt"))();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), b.recv())
            .await
            .is_err(),
        "nothing else: c1 was acknowledged, c2 now too"
    );
    // A worker that stops has sent its acknowledgements once the feed says so: nothing is
    // left pending for another worker to score again.
    stop_b.cancel();
    drop(b);
    tokio::time::timeout(WAIT, acknowledged)
        .await
        .expect("the acknowledgements end after the feed stops")
        .unwrap();
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg("lc:accepted")
        .arg("moderation")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "every scored comment acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn likes_count_once_per_user_in_redis_like_sets() {
    let redis = RedisServer::start();
    let sys = system_on(&redis).await;
    sys.live_stream("s1").await;
    let r = sys
        .http
        .post(sys.url("/v1/streams/s1/comments"))
        .bearer_auth(sys.token("ann", Role::Viewer))
        .json(&json!({"text": "like me", "client_msg_id": "l1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/reactions").await;
    let a = Client::must(sys.tcp("a", &sys.token("a", Role::Viewer))).await;
    let b = Client::must(sys.tcp("b", &sys.token("b", Role::Viewer))).await;
    for c in [&a, &a, &b] {
        c.client
            .publish(
                "streams/s1/react",
                rumqttc::QoS::AtMostOnce,
                false,
                json!({"emoji": "👍", "comment_id": id}).to_string(),
            )
            .await
            .unwrap();
    }
    let mut last = None;
    while let Some(f) = viewer.next_on("streams/s1/reactions", WAIT).await {
        if let Some(n) = f["likes"][&id].as_u64() {
            last = Some(n);
        }
        if last == Some(2) {
            break;
        }
    }
    assert_eq!(last, Some(2));
    // Whatever order the three were handled in, none makes 3.
    while let Some(f) = viewer
        .next_on("streams/s1/reactions", Duration::from_millis(1500))
        .await
    {
        assert_ne!(
            f["likes"][&id].as_u64(),
            Some(3),
            "a second like by the same user is ignored"
        );
    }
    // The set the bridge decided with is in Redis (users and the marker).
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("lc:likes:s1:{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    members.sort();
    assert_eq!(members, ["", "a", "b"]);
    let (_, replay) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await;
    assert_eq!(replay["comments"][0]["likes"], 2, "and the store has them");
    sys.stop().await;
}

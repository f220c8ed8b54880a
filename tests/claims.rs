//! Several bridges of a cluster on one stream: a post is processed by one bridge at a time
//! and a stream's moderation steps by one bridge at a time (claims in a real
//! `redis-server`).

mod common;

use std::time::{Duration, Instant};

use bridge::claims::{Claim, Claims, RedisClaims, HEARTBEAT_TTL};
use common::redis::RedisServer;
use common::{Client, System};
use livecomments::config::BusBackend;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wire::auth::Role;
use wire::store::DedupKey;
use wire::{StreamId, UserId};

/// Another bridge of the cluster, as far as claims go (same prefix as the system's bus).
async fn other_bridge(redis: &RedisServer, name: &str) -> (RedisClaims, CancellationToken) {
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let stop = CancellationToken::new();
    let claims = RedisClaims::start(conn, "lc".into(), name, stop.clone())
        .await
        .unwrap();
    (claims, stop)
}

fn post_claim(stream: &str, user: &str, cmid: &str) -> Claim {
    Claim::Post(DedupKey {
        stream: StreamId::new(stream).unwrap(),
        user: UserId::new(user).unwrap(),
        client_msg_id: cmid.into(),
    })
}

async fn system_on(redis: &RedisServer) -> System {
    let url = redis.url();
    System::start_with(move |c| {
        c.bus.backend = BusBackend::Redis;
        c.bus.redis.url = url;
        c.bus.redis.prefix = "lc".into();
        c.bus.redis.claim_idle_ms = 1000;
        c.bridge.rate_limit_count = 0;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_holds_until_released_or_its_bridge_stops() {
    let redis = RedisServer::start();
    let (a, a_stop) = other_bridge(&redis, "a").await;
    let (b, _b_stop) = other_bridge(&redis, "b").await;
    let post = post_claim("s1", "ann", "m1");
    let stream = Claim::Stream(StreamId::new("s1").unwrap());
    // Keys that differ only in where the separator falls are different claims.
    let tricky = post_claim("s1", "ann", "m1:x");

    assert_eq!(
        a.claim(&[post.clone(), stream.clone()]).await.unwrap(),
        [true, true]
    );
    assert_eq!(
        b.claim(&[post.clone(), stream.clone(), tricky.clone()])
            .await
            .unwrap(),
        [false, false, true],
        "held by a live bridge"
    );
    assert_eq!(
        a.claim(std::slice::from_ref(&post)).await.unwrap(),
        [true],
        "the holder may claim again"
    );

    a.release(std::slice::from_ref(&post)).await;
    assert_eq!(b.claim(std::slice::from_ref(&post)).await.unwrap(), [true]);
    // Releasing what another bridge holds changes nothing.
    a.release(std::slice::from_ref(&post)).await;
    assert_eq!(a.claim(std::slice::from_ref(&post)).await.unwrap(), [false]);

    // A stopped bridge's claims pass on at once (its heartbeat is removed).
    assert_eq!(
        b.claim(std::slice::from_ref(&stream)).await.unwrap(),
        [false]
    );
    a_stop.cancel();
    let deadline = Instant::now() + Duration::from_secs(3);
    while b.claim(std::slice::from_ref(&stream)).await.unwrap() != [true] {
        assert!(
            Instant::now() < deadline,
            "the stopped bridge's claim passed on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_bridges_claims_pass_on_when_its_heartbeat_expires() {
    let redis = RedisServer::start();
    let (b, _b_stop) = other_bridge(&redis, "b").await;
    // A "bridge" that dies without a word: its claim and heartbeat written as a live one
    // writes them, then nobody beats.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("lc:bridge:dead/1")
        .arg(1)
        .arg("PX")
        .arg(HEARTBEAT_TTL.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("lc:lock:s1")
        .arg("dead/1")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let stream = Claim::Stream(StreamId::new("s1").unwrap());
    assert_eq!(
        b.claim(std::slice::from_ref(&stream)).await.unwrap(),
        [false]
    );
    let started = Instant::now();
    while b.claim(std::slice::from_ref(&stream)).await.unwrap() != [true] {
        assert!(
            started.elapsed() < HEARTBEAT_TTL + Duration::from_secs(2),
            "the dead bridge's claim passed on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() > HEARTBEAT_TTL - Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_another_bridge_is_processing_is_answered_retry_and_stored_once() {
    let redis = RedisServer::start();
    let sys = system_on(&redis).await;
    sys.live_stream("s1").await;
    let (other, _stop) = other_bridge(&redis, "bridge-2").await;
    let mut ann = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    ann.subscribe("users/ann/inbox").await;

    // The other bridge is storing ann's post "x1" right now.
    let x1 = post_claim("s1", "ann", "x1");
    assert_eq!(
        other.claim(std::slice::from_ref(&x1)).await.unwrap(),
        [true]
    );
    ann.post_text("s1", "hello", "x1").await;
    let r = ann.inbox("ann").await;
    assert_eq!(r["type"], "reject", "{r}");
    assert_eq!(r["code"], "unavailable", "{r}");
    assert_eq!(r["client_msg_id"], "x1", "{r}");
    assert_eq!(r["retry_after_ms"], 500, "{r}");
    // Other posts are not held up.
    ann.post_text("s1", "other", "x2").await;
    assert_eq!(ann.inbox("ann").await["type"], "ack");

    // Done there (nothing stored, say): the retry is processed here, once.
    other.release(std::slice::from_ref(&x1)).await;
    ann.post_text("s1", "hello", "x1").await;
    let first = ann.inbox("ann").await;
    assert_eq!(first["type"], "ack", "{first}");
    ann.post_text("s1", "hello", "x1").await;
    let again = ann.inbox("ann").await;
    assert_eq!(again["id"], first["id"], "the retry gets the first answer");
    let stored = sys.stored("s1").await;
    assert_eq!(
        stored.iter().filter(|c| c["text"] == "hello").count(),
        1,
        "{stored:?}"
    );
    // The bridge released its claim: the other one may take the key again.
    assert_eq!(
        other.claim(std::slice::from_ref(&x1)).await.unwrap(),
        [true]
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderation_step_waits_for_the_stream_claim() {
    let redis = RedisServer::start();
    let sys = system_on(&redis).await;
    sys.live_stream("s1").await;
    let mut ann = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    ann.subscribe("users/ann/inbox").await;
    for (i, text) in ["one", "two"].iter().enumerate() {
        ann.post_text("s1", text, &format!("m{i}")).await;
    }
    let ids: Vec<String> = [ann.inbox("ann").await, ann.inbox("ann").await]
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    let retract = |id: &str| {
        sys.http
            .post(sys.url(&format!("/v1/streams/s1/comments/{id}/retract")))
            .bearer_auth(sys.token("mo", Role::Moderator))
            .json(&json!({"reason": "x"}))
            .send()
    };

    // Another bridge is changing s1: the retraction waits for it...
    let (other, _stop) = other_bridge(&redis, "bridge-2").await;
    let s1 = Claim::Stream(StreamId::new("s1").unwrap());
    assert_eq!(
        other.claim(std::slice::from_ref(&s1)).await.unwrap(),
        [true]
    );
    let started = Instant::now();
    let release = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        other.release(std::slice::from_ref(&s1)).await;
    };
    let (r, ()) = tokio::join!(retract(&ids[0]), release);
    assert_eq!(r.unwrap().status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );

    // ...and gives up with a retryable error when the other bridge does not finish.
    assert_eq!(
        other.claim(std::slice::from_ref(&s1)).await.unwrap(),
        [true]
    );
    let r = retract(&ids[1]).await.unwrap();
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    other.release(std::slice::from_ref(&s1)).await;
    assert_eq!(retract(&ids[1]).await.unwrap().status(), 200);
    sys.stop().await;
}

//! Several bridges of a cluster on one stream: a post is processed by one bridge at a time
//! and a stream's moderation steps by one bridge at a time (claims in a real
//! `redis-server`).

mod common;

use std::time::{Duration, Instant};

use bridge::claims::{Claim, Claims, RedisClaims, Taken, HEARTBEAT_TTL};
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
        [Taken::Yes, Taken::Yes]
    );
    assert_eq!(
        b.claim(&[post.clone(), stream.clone(), tricky.clone()])
            .await
            .unwrap(),
        [Taken::No, Taken::No, Taken::Yes],
        "held by a live bridge"
    );
    assert_eq!(
        a.claim(std::slice::from_ref(&post)).await.unwrap(),
        [Taken::Yes],
        "the holder may claim again"
    );

    a.release(std::slice::from_ref(&post)).await;
    assert_eq!(
        b.claim(std::slice::from_ref(&post)).await.unwrap(),
        [Taken::Yes]
    );
    // Releasing what another bridge holds changes nothing.
    a.release(std::slice::from_ref(&post)).await;
    assert_eq!(
        a.claim(std::slice::from_ref(&post)).await.unwrap(),
        [Taken::No]
    );

    // A stopped bridge's claims pass on at once (its heartbeat is removed).
    assert_eq!(
        b.claim(std::slice::from_ref(&stream)).await.unwrap(),
        [Taken::No]
    );
    a_stop.cancel();
    let deadline = Instant::now() + Duration::from_secs(3);
    while b.claim(std::slice::from_ref(&stream)).await.unwrap() != [Taken::Yes] {
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
        [Taken::No]
    );
    let started = Instant::now();
    while b.claim(std::slice::from_ref(&stream)).await.unwrap() != [Taken::Yes] {
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
        [Taken::Yes]
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
        [Taken::Yes]
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
        [Taken::Yes]
    );
    let started = Instant::now();
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        other.release(std::slice::from_ref(&s1)).await;
    };
    let (r, ()) = tokio::join!(retract(&ids[0]), release);
    assert_eq!(r.unwrap().status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "{:?}",
        started.elapsed()
    );

    // ...and gives up with a retryable error when the other bridge does not finish.
    assert_eq!(
        other.claim(std::slice::from_ref(&s1)).await.unwrap(),
        [Taken::Yes]
    );
    let r = retract(&ids[1]).await.unwrap();
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    other.release(std::slice::from_ref(&s1)).await;
    assert_eq!(retract(&ids[1]).await.unwrap().status(), 200);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsure_mark_is_reported_by_the_next_claim_only() {
    let redis = RedisServer::start();
    let (a, _a_stop) = other_bridge(&redis, "a").await;
    let (b, _b_stop) = other_bridge(&redis, "b").await;
    let post = post_claim("s1", "ann", "m1");
    let Claim::Post(key) = post.clone() else {
        unreachable!()
    };
    a.mark_unsure(std::slice::from_ref(&key)).await;
    // Another bridge's claim reports it, once.
    assert_eq!(
        b.claim(std::slice::from_ref(&post)).await.unwrap(),
        [Taken::Unsure]
    );
    b.release(std::slice::from_ref(&post)).await;
    assert_eq!(
        a.claim(std::slice::from_ref(&post)).await.unwrap(),
        [Taken::Yes]
    );
    // A claim that fails (held elsewhere) leaves the mark for the holder's retry.
    b.mark_unsure(std::slice::from_ref(&key)).await;
    assert_eq!(
        b.claim(std::slice::from_ref(&post)).await.unwrap(),
        [Taken::No]
    );
    a.release(std::slice::from_ref(&post)).await;
    assert_eq!(
        b.claim(std::slice::from_ref(&post)).await.unwrap(),
        [Taken::Unsure]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_finds_an_unsure_post_stored_publishes_it() {
    let redis = RedisServer::start();
    let sys = system_on(&redis).await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let mut ann = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    ann.subscribe("users/ann/inbox").await;
    ann.post_text("s1", "hello", "x1").await;
    let first = ann.inbox("ann").await;
    assert_eq!(first["type"], "ack", "{first}");
    let (got, _) = viewer.comments("s1", 1, common::WAIT).await;
    assert_eq!(got.len(), 1);

    // As a bridge whose commit of x1 timed out would have left it (the store has x1, nobody
    // was shown it).
    let (other, _stop) = other_bridge(&redis, "bridge-2").await;
    let Claim::Post(key) = post_claim("s1", "ann", "x1") else {
        unreachable!()
    };
    other.mark_unsure(std::slice::from_ref(&key)).await;
    ann.post_text("s1", "hello", "x1").await;
    let again = ann.inbox("ann").await;
    assert_eq!(
        (
            again["type"].clone(),
            again["id"].clone(),
            again["seq"].clone()
        ),
        (json!("ack"), first["id"].clone(), first["seq"].clone()),
        "{again}"
    );
    let (got, _) = viewer.comments("s1", 1, common::WAIT).await;
    assert_eq!(got.len(), 1, "published by the retry");
    assert_eq!(got[0]["id"], first["id"]);
    assert_eq!(got[0]["seq"], first["seq"]);

    // Once: a further retry is only answered.
    ann.post_text("s1", "hello", "x1").await;
    assert_eq!(ann.inbox("ann").await["id"], first["id"]);
    let (more, _) = viewer.comments("s1", 1, Duration::from_millis(800)).await;
    assert!(more.is_empty(), "{more:?}");
    sys.stop().await;
}

mod failed_commit {
    //! A commit that reports a failure after the store applied it (a storage timeout), on the
    //! embedded store behind a wrapper that can do exactly that.

    use std::sync::atomic::Ordering;

    use wire::inbox::{Answer, RejectCode};
    use wire::ingest::Ingest;

    use crate::common::flaky::FlakyBridge;
    use crate::common::post;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_comment_stored_by_a_failed_commit_is_published_by_its_retry() {
        let mut b = FlakyBridge::start().await;
        let bridge = b.bridge.clone();

        let Ok(Answer::Accepted(a1)) = bridge.submit(post("a1")).await else {
            panic!("a1 accepted")
        };
        assert_eq!(b.published().await, [a1.seq]);

        // x1's commit applies, then reports a failure: the poster is told to retry and
        // nothing is published.
        b.store.fail_after_commit.store(true, Ordering::SeqCst);
        let refused = bridge.submit(post("x1")).await.unwrap_err();
        assert_eq!(refused.code, RejectCode::Unavailable);
        assert!(b.published().await.is_empty());

        // The retry finds x1 stored: acknowledged with it, and published now.
        let Ok(Answer::Accepted(x1)) = bridge.submit(post("x1")).await else {
            panic!("x1 accepted on retry")
        };
        assert_eq!(x1.seq, a1.seq + 1);
        assert_eq!(b.published().await, [x1.seq]);
        // Only once.
        let Ok(Answer::Accepted(again)) = bridge.submit(post("x1")).await else {
            panic!("x1 accepted again")
        };
        assert_eq!(again, x1);
        assert!(b.published().await.is_empty());
        // Numbering goes on after it.
        let a2 = match bridge.submit(post("a2")).await {
            Ok(Answer::Accepted(a)) => a,
            other => panic!("a2 accepted: {other:?}"),
        };
        assert_eq!(a2.seq, x1.seq + 1);
        assert_eq!(b.published().await, [a2.seq]);
        b.stop().await;
    }
}

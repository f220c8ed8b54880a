//! Cassandra going away under a running cluster process (Redis bus, Cassandra store): posts are
//! refused with the retryable `unavailable` (and `retry_after_ms`), nothing is acknowledged
//! that is not stored, and service resumes by itself when the node is back.
//!
//! The node is this test's own (`scripts/cassandra` in a temporary directory, about 20 s to
//! start on the 2-core test machine), so stopping it disturbs no other test; it runs alone in
//! this test binary for the same reason.

mod common;

use std::time::{Duration, Instant};

use common::cassandra::{self, use_cassandra, PrivateNode};
use common::redis::RedisServer;
use common::{Client, System, WAIT};
use livecomments::config::BusBackend;
use serde_json::Value;
use wire::auth::Role;

async fn replay(sys: &System) -> (u16, Value) {
    sys.get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_cassandra_refuses_posts_retryably_and_service_resumes() {
    let mut node = PrivateNode::start().await;
    let redis = RedisServer::start();
    let keyspace = cassandra::fresh_keyspace("outage");
    let uri = node.uri.clone();
    let sys = System::start_with(|c| {
        c.bus.backend = BusBackend::Redis;
        c.bus.redis.url = redis.url();
        c.bus.redis.claim_idle_ms = 1000;
        use_cassandra(c, &uri, &keyspace);
        // Short, so a request to a node that went silent fails fast.
        c.store.cassandra.request_timeout_ms = 3000;
        c.store.cassandra.connect_timeout_ms = 2000;
    })
    .await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let mut poster = Client::must(sys.tcp("p", &sys.token("ann", Role::Viewer))).await;
    poster.subscribe("users/ann/inbox").await;
    poster.post_text("s1", "before", "m1").await;
    let first = poster.inbox("ann").await;
    assert_eq!(first["type"], "ack", "{first}");
    let (got, _) = viewer.comments("s1", 1, WAIT).await;
    assert_eq!(got[0]["text"], "before");

    node.stop().await;
    // Every answer while the node is down is a retryable refusal, within the request timeout.
    let mut acked = vec![first];
    for (text, id) in [("during 1", "m2"), ("during 2", "m3")] {
        let asked = Instant::now();
        poster.post_text("s1", text, id).await;
        let r = poster.inbox("ann").await;
        let took = asked.elapsed();
        eprintln!("answer with cassandra down after {took:?}: {r}");
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("reject"), Some("unavailable")),
            "{r}"
        );
        assert!(r["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{r}");
        assert_eq!(r["client_msg_id"], id, "{r}");
        assert!(took < Duration::from_secs(8), "refused after {took:?}");
    }
    let (status, body) = replay(&sys).await;
    assert_eq!(status, 503, "replay while the store is down: {body}");
    assert_eq!(body["code"], "unavailable", "{body}");

    node.restart().await;
    // The client retries m2 with the same client_msg_id until it is accepted (the driver
    // reconnects in the background with a growing back-off).
    let back = Instant::now();
    let answer = loop {
        poster.post_text("s1", "during 1", "m2").await;
        let r = poster.inbox("ann").await;
        if r["type"] == "ack" {
            break r;
        }
        assert_eq!(r["code"], "unavailable", "{r}");
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no ack 60 s after the node came back: {r}"
        );
        let wait = r["retry_after_ms"].as_u64().unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    };
    eprintln!(
        "first ack {:?} after the node answered CQL again",
        back.elapsed()
    );
    acked.push(answer);
    poster.post_text("s1", "after", "m4").await;
    let r = poster.inbox("ann").await;
    assert_eq!(r["type"], "ack", "{r}");
    acked.push(r);

    // Delivery resumed, and everything acknowledged is stored, once each.
    let (got, _) = viewer.comments("s1", 2, WAIT).await;
    let texts: Vec<_> = got.iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["during 1", "after"]);
    let (status, body) = replay(&sys).await;
    assert_eq!(status, 200, "{body}");
    let stored = body["comments"].as_array().unwrap();
    let stored_ids: Vec<_> = stored.iter().map(|c| c["id"].clone()).collect();
    let acked_ids: Vec<_> = acked.iter().map(|a| a["id"].clone()).collect();
    assert_eq!(stored_ids, acked_ids, "replay: {body}");
    let seqs = common::seqs(&acked);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    sys.stop().await;
    node.stop().await;
}

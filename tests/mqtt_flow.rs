//! The live path over real sockets: post over MQTT, fan-out over TCP and WebSocket, answers on
//! the inbox, storage visible in replay and catch-up, retries, rate limits, ordering, batching.

mod common;

use std::time::{Duration, Instant};

use common::{granted, seqs, Client, System, WAIT};
use wire::auth::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_reaches_tcp_and_websocket_viewers_and_is_stored() {
    let sys = System::start().await;
    sys.live_stream("s1").await;

    let viewer = sys.token("vic", Role::Viewer);
    let mut tcp = Client::must(sys.tcp("vic-tcp", &viewer)).await;
    let mut ws = Client::must(sys.ws("vic-ws", &viewer)).await;
    assert!(granted(&tcp.subscribe("streams/s1/comments").await));
    assert!(granted(&ws.subscribe("streams/s1/comments").await));

    let mut poster = Client::must(sys.tcp("ann-phone", &sys.token("ann", Role::Viewer))).await;
    assert!(granted(&poster.subscribe("users/ann/inbox").await));
    poster.post_text("s1", "hello everyone", "m1").await;

    let ack = poster.inbox("ann").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["client_msg_id"], "m1");
    assert_eq!(ack["seq"], 1);
    let id = ack["id"].as_str().expect("id").to_string();

    for viewer in [&mut tcp, &mut ws] {
        let (events, _) = viewer.comments("s1", 1, WAIT).await;
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e["type"], "comment");
        assert_eq!(e["id"], id.as_str());
        assert_eq!(e["seq"], 1);
        assert_eq!(e["stream"], "s1");
        assert_eq!(e["text"], "hello everyone");
        assert_eq!(e["user"]["id"], "ann");
        assert_eq!(e["user"]["name"], "ann name");
        assert!(e["ts"].as_i64().unwrap() > 1_700_000_000_000);
        assert!(e["offset_ms"].as_u64().is_some());
        assert!(e["reply_to"].is_null());
    }

    let stored = sys.stored("s1").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["id"], id.as_str());
    let (status, replay) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await;
    assert_eq!(status, 200);
    assert_eq!(replay["comments"][0]["id"], id.as_str());
    assert_eq!(replay["comments"][0]["type"], "comment");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_the_same_answer_and_is_stored_and_delivered_once() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let token = sys.token("ann", Role::Viewer);
    let mut poster = Client::must(sys.tcp("ann", &token)).await;
    poster.subscribe("users/ann/inbox").await;

    poster.post_text("s1", "only once", "retry-1").await;
    let first = poster.inbox("ann").await;
    poster.post_text("s1", "only once", "retry-1").await;
    let second = poster.inbox("ann").await;
    assert_eq!(first["type"], "ack");
    assert_eq!(first, second, "a retry returns the same id and seq");

    // The same key over HTTP is the same submission too.
    let r = sys
        .http
        .post(sys.url("/v1/streams/s1/comments"))
        .bearer_auth(&token)
        .body(r#"{"text":"only once","client_msg_id":"retry-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["id"], first["id"]);
    assert_eq!(body["seq"], first["seq"]);

    // A different user may use the same client_msg_id.
    let mut other = Client::must(sys.tcp("bo", &sys.token("bo", Role::Viewer))).await;
    other.subscribe("users/bo/inbox").await;
    other.post_text("s1", "mine", "retry-1").await;
    let ack = other.inbox("bo").await;
    assert_eq!(ack["seq"], 2);

    let (events, _) = viewer.comments("s1", 3, Duration::from_secs(2)).await;
    assert_eq!(seqs(&events), vec![1, 2], "delivered once each");
    assert_eq!(sys.stored("s1").await.len(), 2);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_rejects_with_retry_after_but_retries_still_get_their_ack() {
    let sys = System::start_with(|c| {
        c.bridge.rate_limit_count = 3;
        c.bridge.rate_limit_window_s = 60;
    })
    .await;
    sys.live_stream("s1").await;
    let mut poster = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    poster.subscribe("users/ann/inbox").await;
    let mut acks = Vec::new();
    for i in 0..3 {
        poster
            .post_text("s1", &format!("c{i}"), &format!("m{i}"))
            .await;
        let a = poster.inbox("ann").await;
        assert_eq!(a["type"], "ack", "{a}");
        acks.push(a);
    }
    poster.post_text("s1", "one too many", "m3").await;
    let r = poster.inbox("ann").await;
    assert_eq!(r["type"], "reject", "{r}");
    assert_eq!(r["code"], "rate_limited");
    assert_eq!(r["client_msg_id"], "m3");
    let retry = r["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(retry > 1_000 && retry <= 20_000, "{retry}");

    // A retry of an accepted comment is not a new comment: it is answered, not limited.
    poster.post_text("s1", "c0", "m0").await;
    assert_eq!(poster.inbox("ann").await, acks[0]);

    // Other users are not affected.
    let mut bo = Client::must(sys.tcp("bo", &sys.token("bo", Role::Viewer))).await;
    bo.subscribe("users/bo/inbox").await;
    bo.post_text("s1", "hi", "b1").await;
    assert_eq!(bo.inbox("bo").await["type"], "ack");

    assert_eq!(sys.stored("s1").await.len(), 4);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_strictly_increases_and_viewers_see_seq_order() {
    let sys = System::start_with(|c| {
        c.bridge.rate_limit_count = 0;
        c.mqtt.max_posts_per_second = 0;
    })
    .await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;

    const POSTERS: usize = 4;
    const EACH: usize = 25;
    let mut posters = Vec::new();
    for p in 0..POSTERS {
        let user = format!("p{p}");
        posters.push(Client::must(sys.tcp(&user, &sys.token(&user, Role::Viewer))).await);
    }
    let sends = posters.iter().enumerate().map(|(p, c)| async move {
        for i in 0..EACH {
            c.post_text("s1", &format!("{p}-{i}"), &format!("{p}-{i}"))
                .await;
        }
    });
    futures_util::future::join_all(sends).await;

    let (events, _) = viewer.comments("s1", POSTERS * EACH, WAIT).await;
    let got = seqs(&events);
    assert_eq!(got, (1..=(POSTERS * EACH) as u64).collect::<Vec<_>>());
    // Each poster's own comments keep their order too.
    for p in 0..POSTERS {
        let mine: Vec<String> = events
            .iter()
            .filter(|e| e["user"]["id"] == format!("p{p}"))
            .map(|e| e["text"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{p}-{i}")).collect();
        assert_eq!(mine, expected);
    }
    assert_eq!(seqs(&sys.stored("s1").await), got);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_coalesce_a_burst_but_a_lone_comment_goes_out_at_once() {
    let sys = System::start_with(|c| {
        c.bridge.rate_limit_count = 0;
        c.mqtt.max_posts_per_second = 0;
        c.delivery.batch_window_ms = 1000;
    })
    .await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let poster = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;

    // Quiet stream: the first comment does not wait for the 1 s window.
    let t0 = Instant::now();
    poster.post_text("s1", "lone", "lone").await;
    let (events, frames) = viewer.comments("s1", 1, WAIT).await;
    let lone_latency = t0.elapsed();
    assert_eq!((events.len(), frames), (1, 1));
    assert!(
        lone_latency < Duration::from_millis(500),
        "a lone comment took {lone_latency:?} with a 1 s window"
    );

    // A burst inside one window becomes a few frames, not one per comment.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..20 {
        poster
            .post_text("s1", &format!("b{i}"), &format!("b{i}"))
            .await;
    }
    let (events, frames) = viewer.comments("s1", 20, WAIT).await;
    assert_eq!(events.len(), 20);
    assert!(frames <= 3, "20 comments came in {frames} frames");
    assert_eq!(seqs(&events), (2..=21).collect::<Vec<_>>());
    sys.stop().await;
}

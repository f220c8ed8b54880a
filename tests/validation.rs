//! Bad input gets a machine-readable reject and stores nothing.

mod common;

use std::time::Duration;

use common::{Client, System};
use wire::auth::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_posts_are_rejected_with_their_code_and_nothing_is_stored() {
    let sys = System::start_with(|c| {
        c.bridge.rate_limit_count = 0;
        c.bridge.max_comment_chars = 20;
    })
    .await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let mut ann = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    ann.subscribe("users/ann/inbox").await;

    let too_long = "x".repeat(21);
    let cases: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (
            br#"{"text":"","client_msg_id":"a"}"#.to_vec(),
            "empty",
            Some("a"),
        ),
        (
            br#"{"text":"   ","client_msg_id":"b"}"#.to_vec(),
            "empty",
            Some("b"),
        ),
        (
            format!(r#"{{"text":"{too_long}","client_msg_id":"c"}}"#).into_bytes(),
            "too_long",
            Some("c"),
        ),
        (b"\xff\xfe\xfd".to_vec(), "invalid", None),
        (
            br#"{"text":"bell\u0007","client_msg_id":"d"}"#.to_vec(),
            "invalid",
            Some("d"),
        ),
        (b"{not json".to_vec(), "invalid", None),
        (br#"{"text":"no id"}"#.to_vec(), "invalid", None),
        (
            br#"{"text":42,"client_msg_id":"e"}"#.to_vec(),
            "invalid",
            Some("e"),
        ),
        (Vec::new(), "invalid", None),
    ];
    for (payload, code, id) in cases {
        ann.post("s1", payload.clone()).await;
        let r = ann.inbox("ann").await;
        assert_eq!(r["type"], "reject", "{payload:?}: {r}");
        assert_eq!(r["code"], code, "{payload:?}: {r}");
        match id {
            Some(id) => assert_eq!(r["client_msg_id"], id),
            None => assert!(r["client_msg_id"].is_null()),
        }
        assert!(!r["message"].as_str().unwrap_or_default().is_empty());
    }
    // Exactly the limit is fine, and counts characters, not bytes.
    ann.post_text("s1", &"é".repeat(20), "ok").await;
    assert_eq!(ann.inbox("ann").await["type"], "ack");

    let stored = sys.stored("s1").await;
    assert_eq!(stored.len(), 1, "only the valid comment is stored");
    let (events, _) = viewer.comments("s1", 2, Duration::from_secs(1)).await;
    assert_eq!(events.len(), 1, "only the valid comment is delivered");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_must_exist_and_be_live() {
    let sys = System::start().await;
    let b = sys.token("bob", Role::Broadcaster);
    let mut ann = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    ann.subscribe("users/ann/inbox").await;

    ann.post_text("s1", "too early", "m1").await;
    assert_eq!(ann.inbox("ann").await["code"], "stream_not_live");

    let r = sys
        .http
        .post(sys.url("/v1/streams"))
        .bearer_auth(&b)
        .body(r#"{"id":"s1","title":"Final"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    ann.post_text("s1", "created, not started", "m2").await;
    assert_eq!(ann.inbox("ann").await["code"], "stream_not_live");

    let start = |path: &'static str| {
        sys.http
            .post(sys.url(&format!("/v1/streams/s1/{path}")))
            .bearer_auth(&b)
            .send()
    };
    assert_eq!(start("start").await.unwrap().status(), 200);
    ann.post_text("s1", "live now", "m3").await;
    assert_eq!(ann.inbox("ann").await["type"], "ack");

    assert_eq!(start("end").await.unwrap().status(), 200);
    ann.post_text("s1", "too late", "m4").await;
    assert_eq!(ann.inbox("ann").await["code"], "stream_not_live");
    // An ended stream does not start again.
    assert_eq!(start("start").await.unwrap().status(), 409);
    assert_eq!(sys.stored("s1").await.len(), 1);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_created_streams_for_demos() {
    let sys = System::start_with(|c| c.bridge.auto_create_streams = true).await;
    let mut ann = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    ann.subscribe("users/ann/inbox").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/demo/comments").await;
    ann.post_text("demo", "first!", "m1").await;
    assert_eq!(ann.inbox("ann").await["type"], "ack");
    let (events, _) = viewer.comments("demo", 1, common::WAIT).await;
    assert_eq!(events[0]["text"], "first!");
    let (status, s) = sys.get_json("/v1/streams/demo").await;
    assert_eq!((status, s["status"].as_str()), (200, Some("live")));
    sys.stop().await;
}

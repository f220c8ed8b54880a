//! Engagement edge cases found in review: who is exempt from a stream's chat settings, what
//! removed comments may still collect (likes, replies, counts), reactions for streams that are
//! not live, and reactions in flight when the node shuts down.

mod common;

use std::time::Duration;

use common::{Client, System, WAIT};
use rumqttc::{Packet, QoS};
use serde_json::{json, Value};
use wire::auth::Role;

async fn http(
    sys: &System,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = sys.http.request(method, sys.url(path)).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Posts to s1 over HTTP as `user` with `role`; returns the status and body.
async fn post(
    sys: &System,
    user: &str,
    role: Role,
    text: &str,
    reply_to: Option<&str>,
) -> (u16, Value) {
    http(
        sys,
        reqwest::Method::POST,
        "/v1/streams/s1/comments",
        &sys.token(user, role),
        Some(
            json!({"text": text, "client_msg_id": format!("{user}-{text}"), "reply_to": reply_to}),
        ),
    )
    .await
}

async fn post_ok(sys: &System, user: &str, text: &str, reply_to: Option<&str>) -> String {
    let (s, v) = post(sys, user, Role::Viewer, text, reply_to).await;
    assert_eq!(s, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn moderate(sys: &System, id: &str, action: &str) {
    let (s, v) = http(
        sys,
        reqwest::Method::POST,
        &format!("/v1/streams/s1/comments/{id}/{action}"),
        &sys.token("mo", Role::Moderator),
        Some(json!({"reason": "test"})),
    )
    .await;
    assert_eq!(s, 200, "{action}: {v}");
}

/// The `replies` count the replay shows for comment `id`.
async fn reply_count(sys: &System, id: &str) -> u64 {
    let (_, replay) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await;
    replay["comments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} in the replay: {replay}"))["replies"]
        .as_u64()
        .unwrap_or(0) // left out when 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_streams_broadcaster_is_exempt_from_its_settings() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 0).await;
    sys.live_stream("s1").await; // owned by bob
    let bob = sys.token("bob", Role::Broadcaster);
    let (s, v) = http(
        &sys,
        reqwest::Method::PUT,
        "/v1/streams/s1/settings",
        &bob,
        Some(json!({"slow_mode_s": 60, "mode": "emote_only"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // carol broadcasts elsewhere: in bob's chat she is a viewer like any other.
    let (s, v) = post(&sys, "carol", Role::Broadcaster, "plain text", None).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("emote_only")), "{v}");
    let (s, v) = post(&sys, "carol", Role::Broadcaster, "🔥", None).await;
    assert_eq!(s, 202, "{v}");
    let (s, v) = post(&sys, "carol", Role::Broadcaster, "🎉", None).await;
    assert_eq!((s, v["code"].as_str()), (429, Some("slow_mode")), "{v}");
    // Letters dressed as emoji are not emoji.
    let (s, v) = post(&sys, "dan", Role::Viewer, "🅷🅴🅻🅻🅾 🆆🅾🆁🅻🅳", None).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("emote_only")), "{v}");
    // The owner and moderators are exempt.
    for (user, role) in [("bob", Role::Broadcaster), ("mo", Role::Moderator)] {
        for text in ["words one", "words two"] {
            let (s, v) = post(&sys, user, role, text, None).await;
            assert_eq!(s, 202, "{user}: {v}");
        }
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_comments_collect_no_likes_replies_or_counts() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 0).await;
    sys.live_stream("s1").await;
    let root = post_ok(&sys, "ann", "root", None).await;
    let r1 = post_ok(&sys, "b", "r1", Some(&root)).await;
    let r2 = post_ok(&sys, "c", "r2", Some(&r1)).await;
    let r3 = post_ok(&sys, "d", "r3", Some(&r2)).await;
    assert_eq!(reply_count(&sys, &r1).await, 1);

    // Retracting r2 stops counting it for r1, restoring counts it again.
    moderate(&sys, &r2, "retract").await;
    assert_eq!(reply_count(&sys, &r1).await, 0, "a retracted reply");
    moderate(&sys, &r2, "restore").await;
    assert_eq!(reply_count(&sys, &r1).await, 1, "a restored reply");

    // r3 is at the depth limit: a reply to it attaches to r2, unless r2 was removed.
    moderate(&sys, &r2, "retract").await;
    let (s, v) = post(&sys, "e", Role::Viewer, "r4", Some(&r3)).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("removed"), "{v}");

    // Likes of a retracted comment change nothing and do not leak its id.
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/reactions").await;
    let liker = Client::must(sys.tcp("l", &sys.token("lee", Role::Viewer))).await;
    for id in [&r2, &root] {
        liker
            .client
            .publish(
                "streams/s1/react",
                QoS::AtLeastOnce,
                false,
                json!({"emoji": "👍", "comment_id": id}).to_string(),
            )
            .await
            .unwrap();
    }
    let mut frames = Vec::new();
    while let Some(f) = viewer
        .next_on("streams/s1/reactions", Duration::from_secs(2))
        .await
    {
        let done = f["likes"][&root] == 1;
        frames.push(f);
        if done {
            break;
        }
    }
    assert!(
        frames.iter().any(|f| f["likes"][&root] == 1),
        "the visible comment's like shows: {frames:?}"
    );
    assert!(
        frames.iter().all(|f| f["likes"].get(&r2).is_none()),
        "the retracted comment's id never shows: {frames:?}"
    );
    moderate(&sys, &r2, "restore").await;
    let (_, replay) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await;
    let restored = replay["comments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == r2.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        restored["likes"].as_u64().unwrap_or(0),
        0,
        "the like while retracted was not kept: {restored}"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_a_removed_comment_is_refused() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let id = post_ok(&sys, "ann", "soon gone", None).await;
    moderate(&sys, &id, "retract").await;
    let (s, _) = http(
        &sys,
        reqwest::Method::POST,
        "/v1/streams/s1/pin",
        &sys.token("bob", Role::Broadcaster),
        Some(json!({"comment_id": id})),
    )
    .await;
    assert_eq!(s, 404);
    let (_, st) = sys.get_json("/v1/streams/s1").await;
    assert!(st["pinned"].is_null(), "{st}");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_count_only_for_live_streams() {
    let sys = System::start().await;
    let bob = sys.token("bob", Role::Broadcaster);
    let fan = Client::must(sys.tcp("f", &sys.token("fan", Role::Viewer))).await;
    let react = |stream: &'static str| {
        let c = fan.client.clone();
        async move {
            c.publish(
                format!("streams/{stream}/react"),
                QoS::AtMostOnce,
                false,
                json!({"emoji": "🔥"}).to_string(),
            )
            .await
            .unwrap();
        }
    };
    for _ in 0..5 {
        react("ghost").await;
    }
    // Created but not started: still not counted.
    let (s, _) = http(
        &sys,
        reqwest::Method::POST,
        "/v1/streams",
        &bob,
        Some(json!({"id": "ghost", "title": "t"})),
    )
    .await;
    assert_eq!(s, 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        react("ghost").await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // > window and the status cache
    let (s, stats) = sys.get_json("/v1/streams/ghost/stats").await;
    assert_eq!(s, 200);
    assert_eq!(stats["reactions"], json!({}), "{stats}");

    let (s, _) = http(
        &sys,
        reqwest::Method::POST,
        "/v1/streams/ghost/start",
        &bob,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/ghost/reactions").await;
    react("ghost").await;
    let frame = viewer.next_on("streams/ghost/reactions", WAIT).await;
    assert_eq!(frame.unwrap()["totals"], json!({"🔥": 1}));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_acknowledged_before_shutdown_are_in_the_totals() {
    // A window far longer than the test: only the final flush at shutdown stores them.
    let sys = System::start_with(|c| {
        c.reactions.window_ms = 600_000;
        c.reactions.per_user_per_second = 0;
    })
    .await;
    sys.live_stream("s1").await;
    let mut fan = Client::must(sys.tcp("f", &sys.token("fan", Role::Viewer))).await;
    const N: usize = 200;
    for _ in 0..N {
        fan.client
            .publish(
                "streams/s1/react",
                QoS::AtLeastOnce,
                false,
                json!({"emoji": "🔥"}).to_string(),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < N {
        match fan.next_packet(WAIT).await {
            Some(Packet::PubAck(_)) => acked += 1,
            Some(_) => {}
            None => panic!("only {acked} of {N} reactions acknowledged"),
        }
    }
    let sys = sys.restart().await;
    let (_, stats) = sys.get_json("/v1/streams/s1/stats").await;
    assert_eq!(stats["reactions"], json!({"🔥": N}), "{stats}");
    sys.stop().await;
}

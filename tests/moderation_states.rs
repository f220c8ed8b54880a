//! The moderation state machine's corner cases (found in review): decisions that must not
//! be undone or repeated, shadow comments that must stay hidden, held-post spam.
mod common;

use std::time::Duration;

use common::{Client, System, WAIT};
use serde_json::{json, Value};
use wire::auth::Role;

async fn call(
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
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
async fn post(sys: &System, path: &str, token: &str, body: Value) -> (u16, Value) {
    call(sys, reqwest::Method::POST, path, token, Some(body)).await
}
async fn events(c: &mut Client, stream: &str, n: usize, wait: Duration) -> Vec<Value> {
    let topic = format!("streams/{stream}/comments");
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(frame) = c.next_on(&topic, left).await else {
            break;
        };
        out.extend(frame["events"].as_array().unwrap().iter().cloned());
    }
    out
}
async fn viewer_and_poster(sys: &System, poster: &str) -> (Client, Client) {
    let mut v = Client::must(sys.tcp("viewer", &sys.token("vic", Role::Viewer))).await;
    v.subscribe("streams/s1/comments").await;
    let mut p = Client::must(sys.tcp(poster, &sys.token(poster, Role::Viewer))).await;
    p.subscribe(&format!("users/{poster}/inbox")).await;
    (v, p)
}

/// Approving a held post after the stream ended publishes into an ended stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_a_held_post_after_the_stream_ended_publishes_nothing() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let (_v, mut p) = viewer_and_poster(&sys, "ann").await;
    let moder = sys.token("mo", Role::Moderator);
    p.post_text("s1", "see https://ok.example", "h1").await;
    let held = p.inbox("ann").await;
    assert_eq!(held["type"], "held");
    let item = held["id"].as_str().unwrap().to_string();
    let (s, _) = post(
        &sys,
        "/v1/streams/s1/end",
        &sys.token("bob", Role::Broadcaster),
        json!({}),
    )
    .await;
    assert_eq!(s, 200);
    // A normal post is refused now.
    p.post_text("s1", "late", "late").await;
    assert_eq!(p.inbox("ann").await["code"], "stream_not_live");
    let (s, _) = post(
        &sys,
        &format!("/v1/moderation/queue/{item}/decision"),
        &moder,
        json!({"decision":"approve"}),
    )
    .await;
    assert_eq!(s, 409, "an ended stream takes no new comments");
    let stored = sys.stored("s1").await;
    assert!(
        stored.is_empty(),
        "comment published into an ended stream: {stored:?}"
    );
    sys.stop().await;
}

/// The same reporters can re-hide a comment right after a moderator restored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_reporters_cannot_undo_a_moderators_approval() {
    let sys = System::start_with(|c| c.moderation.reports.hide_threshold = 2).await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "ann").await;
    p.post_text("s1", "fair remark", "m1").await;
    let id = p.inbox("ann").await["id"].as_str().unwrap().to_string();
    events(&mut v, "s1", 1, WAIT).await;
    let moder = sys.token("mo", Role::Moderator);
    let path = format!("/v1/streams/s1/comments/{id}/report");
    for who in ["r1", "r2"] {
        post(&sys, &path, &sys.token(who, Role::Viewer), json!({})).await;
    }
    assert_eq!(events(&mut v, "s1", 1, WAIT).await[0]["type"], "retract");
    let (_, q) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/queue",
        &moder,
        None,
    )
    .await;
    let item = q["items"][0]["id"].as_str().unwrap().to_string();
    let (s, _) = post(
        &sys,
        &format!("/v1/moderation/queue/{item}/decision"),
        &moder,
        json!({"decision":"approve","reason":"fine"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(events(&mut v, "s1", 1, WAIT).await[0]["type"], "restore");
    // Same two users again.
    for who in ["r1", "r2"] {
        post(&sys, &path, &sys.token(who, Role::Viewer), json!({})).await;
    }
    let got = events(&mut v, "s1", 1, Duration::from_millis(800)).await;
    assert!(
        got.is_empty(),
        "the moderator's approval was undone by the same reporters: {got:?}"
    );
    sys.stop().await;
}

/// After a moderator upheld reports (decide retract), each new report opens a fresh item
/// on the already-decided comment, and deciding it again strikes the author again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upheld_reports_do_not_reopen_or_strike_twice() {
    let sys = System::start_with(|c| {
        c.moderation.reports.hide_threshold = 2;
        c.moderation.reputation.strikes = 2;
    })
    .await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "ann").await;
    p.post_text("s1", "rude remark", "m1").await;
    let id = p.inbox("ann").await["id"].as_str().unwrap().to_string();
    events(&mut v, "s1", 1, WAIT).await;
    let moder = sys.token("mo", Role::Moderator);
    let path = format!("/v1/streams/s1/comments/{id}/report");
    for who in ["r1", "r2"] {
        post(&sys, &path, &sys.token(who, Role::Viewer), json!({})).await;
    }
    let (_, q) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/queue",
        &moder,
        None,
    )
    .await;
    let item = q["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        post(
            &sys,
            &format!("/v1/moderation/queue/{item}/decision"),
            &moder,
            json!({"decision":"retract"})
        )
        .await
        .0,
        200
    );
    // A late reporter: a new open item for a decided comment.
    post(&sys, &path, &sys.token("r3", Role::Viewer), json!({})).await;
    let (_, q) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/queue",
        &moder,
        None,
    )
    .await;
    let items = q["items"].as_array().unwrap().clone();
    if let Some(it) = items.first() {
        let _ = post(
            &sys,
            &format!(
                "/v1/moderation/queue/{}/decision",
                it["id"].as_str().unwrap()
            ),
            &moder,
            json!({"decision":"retract"}),
        )
        .await;
    }
    let (_, log) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/log",
        &moder,
        None,
    )
    .await;
    let shadow = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "shadow_ban");
    assert!(
        items.is_empty() && !shadow,
        "decided comment reopened ({} items), shadow ban {shadow}",
        items.len()
    );
    sys.stop().await;
}

/// Retract then restore of a shadow-banned user's comment publishes it to everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_comment_cannot_be_made_public() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "ann").await;
    let moder = sys.token("mo", Role::Moderator);
    post(
        &sys,
        "/v1/users/ann/ban",
        &moder,
        json!({"scope":"global","permanent":true,"shadow":true}),
    )
    .await;
    p.post_text("s1", "shadow words", "s1").await;
    let id = p.inbox("ann").await["id"].as_str().unwrap().to_string();
    // A shadow comment is not in the stream at all: nothing to retract or restore.
    for what in ["retract", "restore", "retract", "restore"] {
        let (s, _) = post(
            &sys,
            &format!("/v1/streams/s1/comments/{id}/{what}"),
            &moder,
            json!({}),
        )
        .await;
        assert_eq!(s, 404, "{what}");
    }
    let got = events(&mut v, "s1", 2, Duration::from_millis(800)).await;
    assert!(got.is_empty(), "other viewers saw {got:?}");
    let (_, replay) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await;
    assert!(
        replay["comments"].as_array().unwrap().is_empty(),
        "shadow comment now public"
    );
    sys.stop().await;
}

/// Held posts skip the per-user rate limit (and link spam never reaches the repeat rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_spam_is_not_held_again_and_again() {
    let sys = System::start_with(|c| {
        c.bridge.rate_limit_count = 3;
        c.bridge.rate_limit_window_s = 60;
    })
    .await;
    sys.live_stream("s1").await;
    let (_v, mut p) = viewer_and_poster(&sys, "ann").await;
    let mut held = 0;
    for i in 0..20 {
        p.post_text("s1", "same spam www.spam.tv", &format!("x{i}"))
            .await;
        if p.inbox("ann").await["type"] == "held" {
            held += 1;
        }
    }
    let (_, q) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/queue?limit=1000",
        &sys.token("mo", Role::Moderator),
        None,
    )
    .await;
    assert_eq!(q["items"].as_array().unwrap().len(), held);
    assert!(
        held <= 3,
        "{held} identical link posts held, rate limit 3/60s and repeat_max 2"
    );
    sys.stop().await;
}

/// A declined held post: the author's retry still hears "held, waiting for review".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_decline_hears_blocked() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let (_v, mut p) = viewer_and_poster(&sys, "ann").await;
    let moder = sys.token("mo", Role::Moderator);
    p.post_text("s1", "www.spam.tv", "d1").await;
    let item = p.inbox("ann").await["id"].as_str().unwrap().to_string();
    post(
        &sys,
        &format!("/v1/moderation/queue/{item}/decision"),
        &moder,
        json!({"decision":"retract"}),
    )
    .await;
    let _ = p.inbox("ann").await; // blocked
    p.post_text("s1", "www.spam.tv", "d1").await;
    let r = p.inbox("ann").await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("reject"), Some("blocked")),
        "{r}"
    );
    sys.stop().await;
}

/// A moderator's retract of a reports-hidden comment is a no-op: no strike, item stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_retraction_settles_a_hidden_comment() {
    let sys = System::start_with(|c| c.moderation.reports.hide_threshold = 1).await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "ann").await;
    p.post_text("s1", "rude remark", "m1").await;
    let id = p.inbox("ann").await["id"].as_str().unwrap().to_string();
    events(&mut v, "s1", 1, WAIT).await;
    let moder = sys.token("mo", Role::Moderator);
    post(
        &sys,
        &format!("/v1/streams/s1/comments/{id}/report"),
        &sys.token("r1", Role::Viewer),
        json!({}),
    )
    .await;
    let (s, out) = post(
        &sys,
        &format!("/v1/streams/s1/comments/{id}/retract"),
        &moder,
        json!({"reason":"abuse"}),
    )
    .await;
    assert_eq!(
        (s, out["changed"].as_bool()),
        (200, Some(true)),
        "upholds the hiding: {out}"
    );
    let (_, q) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/queue",
        &moder,
        None,
    )
    .await;
    assert!(
        q["items"].as_array().unwrap().is_empty(),
        "item still open after moderator retraction: {q}"
    );
    sys.stop().await;
}

/// A broadcaster reporting on someone else's stream receives the full queue item (reporters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reporters_are_shown_only_to_the_streams_moderators() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "ann").await;
    p.post_text("s1", "meh", "m1").await;
    let id = p.inbox("ann").await["id"].as_str().unwrap().to_string();
    events(&mut v, "s1", 1, WAIT).await;
    post(
        &sys,
        &format!("/v1/streams/s1/comments/{id}/report"),
        &sys.token("secret_reporter", Role::Viewer),
        json!({"reason":"x"}),
    )
    .await;
    let (s, out) = post(
        &sys,
        &format!("/v1/streams/s1/comments/{id}/report"),
        &sys.token("carl", Role::Broadcaster),
        json!({}),
    )
    .await;
    assert_eq!(s, 202);
    assert!(out["item"].is_null(), "leaked item {}", out["item"]);
    sys.stop().await;
}

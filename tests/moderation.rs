//! Moderation end to end: rules, held posts, the model's retractions, moderator tools,
//! reports, bans, shadow bans, reputation, the audit trail.

mod common;

use std::time::{Duration, Instant};

use common::{seqs, Client, System, WAIT};
use moderation::RuleAction;
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

/// Events of any type received on the stream's frames until `n` arrived or `wait` passed.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_words_and_their_evasions_are_rejected() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 0).await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "ann").await;
    for (i, text) in [
        "fuck this referee",
        "f4ck this",
        "f u c k",
        "sh!t game",
        "what a b1tch",
        "ｆｕｃｋ",
        "ѕһіt",
        "fuuuuuck",
    ]
    .iter()
    .enumerate()
    {
        p.post_text("s1", text, &format!("b{i}")).await;
        let r = p.inbox("ann").await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("reject"), Some("blocked")),
            "{text}: {r}"
        );
        assert_eq!(r["client_msg_id"], format!("b{i}"));
    }
    p.post_text("s1", "what a classic assist", "ok").await;
    assert_eq!(p.inbox("ann").await["type"], "ack");
    let got = events(&mut v, "s1", 2, Duration::from_secs(1)).await;
    assert_eq!(got.len(), 1, "only the clean comment is delivered");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_post_is_shown_only_after_a_moderator_approves_it() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "ann").await;
    let moder = sys.token("mo", Role::Moderator);

    p.post_text("s1", "free tickets at https://scam.example", "h1")
        .await;
    let held = p.inbox("ann").await;
    assert_eq!(held["type"], "held", "{held}");
    assert_eq!(held["client_msg_id"], "h1");
    let item = held["id"].as_str().unwrap().to_string();
    assert!(events(&mut v, "s1", 1, Duration::from_millis(500))
        .await
        .is_empty());
    // A retry is the same held post.
    p.post_text("s1", "free tickets at https://scam.example", "h1")
        .await;
    assert_eq!(p.inbox("ann").await["id"], item.as_str());

    let (s, q) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/queue?stream=s1",
        &moder,
        None,
    )
    .await;
    assert_eq!(s, 200, "{q}");
    let items = q["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], item.as_str());
    assert_eq!(items[0]["kind"], "held");
    assert_eq!(
        items[0]["held"]["text"],
        "free tickets at https://scam.example"
    );
    assert!(items[0]["reason"].as_str().unwrap().contains("links"));

    let (s, out) = post(
        &sys,
        &format!("/v1/moderation/queue/{item}/decision"),
        &moder,
        json!({"decision":"approve","reason":"official partner"}),
    )
    .await;
    assert_eq!(s, 200, "{out}");
    let got = events(&mut v, "s1", 1, WAIT).await;
    assert_eq!(got[0]["type"], "comment");
    assert_eq!(got[0]["text"], "free tickets at https://scam.example");
    let ack = p.inbox("ann").await;
    assert_eq!(
        (ack["type"].as_str(), ack["client_msg_id"].as_str()),
        (Some("ack"), Some("h1"))
    );
    assert_eq!(ack["id"], got[0]["id"]);
    let (s, _) = post(
        &sys,
        &format!("/v1/moderation/queue/{item}/decision"),
        &moder,
        json!({"decision":"retract"}),
    )
    .await;
    assert_eq!(s, 409, "decided once");

    // A declined held post is never shown; its author is told.
    p.post_text("s1", "buy followers www.spam.tv", "h2").await;
    let item2 = p.inbox("ann").await["id"].as_str().unwrap().to_string();
    let (s, _) = post(
        &sys,
        &format!("/v1/moderation/queue/{item2}/decision"),
        &moder,
        json!({"decision":"retract","reason":"spam"}),
    )
    .await;
    assert_eq!(s, 200);
    let r = p.inbox("ann").await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("reject"), Some("blocked"))
    );
    assert!(events(&mut v, "s1", 1, Duration::from_millis(500))
        .await
        .is_empty());
    assert_eq!(sys.stored("s1").await.len(), 1);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderators_retract_and_restore_and_viewers_cannot() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "ann").await;
    p.post_text("s1", "a questionable comment", "m1").await;
    let ack = p.inbox("ann").await;
    let id = ack["id"].as_str().unwrap().to_string();
    events(&mut v, "s1", 1, WAIT).await;
    let path = |what: &str| format!("/v1/streams/s1/comments/{id}/{what}");

    for (who, role) in [("vic", Role::Viewer), ("carl", Role::Broadcaster)] {
        let (s, _) = post(
            &sys,
            &path("retract"),
            &sys.token(who, role),
            json!({"reason":"x"}),
        )
        .await;
        assert_eq!(s, 403, "{who}");
    }
    let (s, out) = post(
        &sys,
        &path("retract"),
        &sys.token("bob", Role::Broadcaster),
        json!({"reason":"off topic"}),
    )
    .await;
    assert_eq!(s, 200, "the stream's own broadcaster may: {out}");
    let got = events(&mut v, "s1", 1, WAIT).await;
    assert_eq!(got[0]["type"], "retract");
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["reason"], "off topic");
    assert_eq!(
        got[0]["seq"], 2,
        "a retraction has its own place in the sequence"
    );
    let (_, replay) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await;
    assert!(replay["comments"].as_array().unwrap().is_empty());
    let catch_up = sys.stored("s1").await;
    assert_eq!(catch_up.len(), 1);
    assert_eq!(
        (catch_up[0]["type"].as_str(), catch_up[0]["id"].as_str()),
        (Some("retract"), Some(id.as_str()))
    );

    let moder = sys.token("mo", Role::Moderator);
    let (s, out) = post(&sys, &path("retract"), &moder, json!({})).await;
    assert_eq!(
        (s, out["changed"].as_bool()),
        (200, Some(false)),
        "retracting twice changes nothing"
    );
    let (s, _) = post(
        &sys,
        &path("restore"),
        &moder,
        json!({"reason":"appeal upheld"}),
    )
    .await;
    assert_eq!(s, 200);
    let got = events(&mut v, "s1", 1, WAIT).await;
    assert_eq!(got[0]["type"], "restore");
    assert_eq!(got[0]["comment"]["text"], "a questionable comment");
    let (_, replay) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await;
    assert_eq!(replay["comments"].as_array().unwrap().len(), 1);
    let (s, _) = post(
        &sys,
        "/v1/streams/s1/comments/nope/retract",
        &moder,
        json!({}),
    )
    .await;
    assert_eq!(s, 404);

    let (s, log) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/log?stream=s1",
        &moder,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let actions: Vec<(String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("restore".to_string(), "mo".to_string()),
            ("retract".to_string(), "bob".to_string())
        ]
    );
    let (s, _) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/log",
        &sys.token("vic", Role::Viewer),
        None,
    )
    .await;
    assert_eq!(s, 403);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_distinct_viewers_hide_a_comment_until_reviewed() {
    let sys = System::start_with(|c| c.moderation.reports.hide_threshold = 2).await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "ann").await;
    p.post_text("s1", "borderline remark", "m1").await;
    let id = p.inbox("ann").await["id"].as_str().unwrap().to_string();
    events(&mut v, "s1", 1, WAIT).await;

    // First report over MQTT; the same reporter again counts once.
    let mut r1 = Client::must(sys.tcp("r1", &sys.token("r1", Role::Viewer))).await;
    r1.subscribe("users/r1/inbox").await;
    for _ in 0..2 {
        r1.client
            .publish(
                "streams/s1/report",
                rumqttc::QoS::AtLeastOnce,
                false,
                json!({"comment_id": id, "reason": "rude"}).to_string(),
            )
            .await
            .unwrap();
        let a = r1.inbox("r1").await;
        assert_eq!(
            (a["type"].as_str(), a["comment_id"].as_str()),
            (Some("reported"), Some(id.as_str())),
            "{a}"
        );
    }
    assert!(
        events(&mut v, "s1", 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "one reporter does not hide it"
    );
    // Bad reports are rejected.
    r1.client
        .publish("streams/s1/report", rumqttc::QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    assert_eq!(r1.inbox("r1").await["code"], "invalid");
    r1.client
        .publish(
            "streams/s1/report",
            rumqttc::QoS::AtLeastOnce,
            false,
            json!({"comment_id":"nope"}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(r1.inbox("r1").await["code"], "invalid");

    // Second distinct reporter over HTTP: hidden.
    let (s, _) = post(
        &sys,
        &format!("/v1/streams/s1/comments/{id}/report"),
        &sys.token("r2", Role::Viewer),
        json!({"reason":"insulting"}),
    )
    .await;
    assert_eq!(s, 202);
    let got = events(&mut v, "s1", 1, WAIT).await;
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["id"].as_str()),
        (Some("retract"), Some(id.as_str()))
    );

    let moder = sys.token("mo", Role::Moderator);
    let (_, q) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/queue",
        &moder,
        None,
    )
    .await;
    let item = &q["items"][0];
    assert_eq!(item["kind"], "reported");
    assert_eq!(item["hidden"], true);
    assert_eq!(item["reports"].as_array().unwrap().len(), 2);
    let (s, _) = post(
        &sys,
        &format!(
            "/v1/moderation/queue/{}/decision",
            item["id"].as_str().unwrap()
        ),
        &moder,
        json!({"decision":"approve","reason":"fair comment"}),
    )
    .await;
    assert_eq!(s, 200);
    let got = events(&mut v, "s1", 1, WAIT).await;
    assert_eq!(got[0]["type"], "restore");
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
        "nothing open any more"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_reject_posts_until_lifted_and_are_role_checked() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let bob = sys.token("bob", Role::Broadcaster);
    let (s, _) = post(&sys, "/v1/streams", &bob, json!({"id":"s2"})).await;
    assert_eq!(s, 201);
    assert_eq!(
        post(&sys, "/v1/streams/s2/start", &bob, json!({})).await.0,
        200
    );
    let (_, mut p) = viewer_and_poster(&sys, "ann").await;
    let moder = sys.token("mo", Role::Moderator);

    let (s, _) = post(
        &sys,
        "/v1/users/ann/ban",
        &sys.token("vic", Role::Viewer),
        json!({"scope":"s1","permanent":true}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = post(
        &sys,
        "/v1/users/ann/ban",
        &sys.token("carl", Role::Broadcaster),
        json!({"scope":"s1","permanent":true}),
    )
    .await;
    assert_eq!(s, 403, "not carl's stream");
    let (s, _) = post(
        &sys,
        "/v1/users/ann/ban",
        &bob,
        json!({"scope":"global","permanent":true}),
    )
    .await;
    assert_eq!(s, 403, "broadcasters do not ban globally");
    let (s, v) = post(&sys, "/v1/users/ann/ban", &bob, json!({"scope":"s1"})).await;
    assert_eq!(s, 400, "duration or permanent is required: {v}");

    let (s, ban) = post(
        &sys,
        "/v1/users/ann/ban",
        &bob,
        json!({"scope":"s1","duration_s":600,"reason":"spam"}),
    )
    .await;
    assert_eq!(s, 201, "{ban}");
    p.post_text("s1", "hello", "b1").await;
    let r = p.inbox("ann").await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("reject"), Some("banned")),
        "{r}"
    );
    p.post_text("s2", "elsewhere", "b2").await;
    assert_eq!(
        p.inbox("ann").await["type"],
        "ack",
        "a stream ban is for that stream"
    );

    let (s, _) = post(
        &sys,
        "/v1/users/ann/ban",
        &moder,
        json!({"scope":"global","permanent":true}),
    )
    .await;
    assert_eq!(s, 201);
    p.post_text("s2", "elsewhere again", "b3").await;
    assert_eq!(p.inbox("ann").await["code"], "banned");
    // Over HTTP too.
    let r = sys
        .http
        .post(sys.url("/v1/streams/s2/comments"))
        .bearer_auth(sys.token("ann", Role::Viewer))
        .body(r#"{"text":"x","client_msg_id":"h"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    for (scope, token) in [("global", &moder), ("s1", &bob)] {
        let r = sys
            .http
            .delete(sys.url(&format!("/v1/users/ann/ban?scope={scope}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{scope}");
    }
    let r = sys
        .http
        .delete(sys.url("/v1/users/ann/ban?scope=global"))
        .bearer_auth(&moder)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    p.post_text("s1", "back again", "b4").await;
    assert_eq!(p.inbox("ann").await["type"], "ack");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_banned_users_comments_reach_nobody_else() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "ann").await;
    p.subscribe("streams/s1/comments").await;
    let (s, _) = post(
        &sys,
        "/v1/users/ann/ban",
        &sys.token("mo", Role::Moderator),
        json!({"scope":"global","permanent":true,"shadow":true}),
    )
    .await;
    assert_eq!(s, 201);

    p.post_text("s1", "can anyone hear me", "s1").await;
    let ack = p.inbox("ann").await;
    assert_eq!(ack["type"], "ack", "acknowledged as usual: {ack}");
    let own = p.comments("s1", 1, WAIT).await.0;
    assert_eq!(own.len(), 1, "the author sees their own comment");
    assert_eq!(own[0]["text"], "can anyone hear me");
    assert!(
        events(&mut v, "s1", 1, Duration::from_millis(800))
            .await
            .is_empty(),
        "nobody else does"
    );
    assert!(sys.stored("s1").await.is_empty(), "nor in catch-up");
    let (_, replay) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await;
    assert!(
        replay["comments"].as_array().unwrap().is_empty(),
        "nor in replay"
    );

    // Others still talk normally.
    let bo = Client::must(sys.tcp("bo", &sys.token("bo", Role::Viewer))).await;
    bo.post_text("s1", "hello", "x").await;
    assert_eq!(events(&mut v, "s1", 1, WAIT).await.len(), 1);
    drop(bo);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strikes_shadow_ban_a_repeat_offender() {
    let sys = System::start_with(|c| {
        c.moderation.reputation.strikes = 2;
        c.bridge.rate_limit_count = 0;
    })
    .await;
    sys.live_stream("s1").await;
    let (mut v, mut p) = viewer_and_poster(&sys, "troll").await;
    let moder = sys.token("mo", Role::Moderator);
    for i in 0..2 {
        p.post_text("s1", &format!("bait number {i}"), &format!("t{i}"))
            .await;
        let id = p.inbox("troll").await["id"].as_str().unwrap().to_string();
        let (s, _) = post(
            &sys,
            &format!("/v1/streams/s1/comments/{id}/retract"),
            &moder,
            json!({"reason":"baiting"}),
        )
        .await;
        assert_eq!(s, 200);
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
        .find(|e| e["action"] == "shadow_ban")
        .cloned();
    let shadow = shadow.expect("a shadow ban in the audit trail");
    assert_eq!(shadow["user"], "troll");
    assert_eq!(shadow["actor"], "system:reputation");

    let seen_before = events(&mut v, "s1", 4, Duration::from_secs(1)).await.len();
    p.post_text("s1", "still here", "t9").await;
    assert_eq!(p.inbox("troll").await["type"], "ack");
    let after = events(&mut v, "s1", 1, Duration::from_millis(800)).await;
    assert!(
        after.iter().all(|e| e["text"] != "still here"),
        "{after:?} (saw {seen_before} before)"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_get_403_from_every_moderator_tool() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let vt = sys.token("vic", Role::Viewer);
    // A real queue item and a real comment, so 403 is about the role, not a missing target.
    let (_, mut p) = viewer_and_poster(&sys, "ann").await;
    p.post_text("s1", "see www.spam.tv", "h").await;
    let item = p.inbox("ann").await["id"].as_str().unwrap().to_string();
    p.post_text("s1", "a real comment", "c").await;
    let comment = p.inbox("ann").await["id"].as_str().unwrap().to_string();
    let retract = format!("/v1/streams/s1/comments/{comment}/retract");
    let restore = format!("/v1/streams/s1/comments/{comment}/restore");
    let decision = format!("/v1/moderation/queue/{item}/decision");
    use reqwest::Method as M;
    for (method, path, body) in [
        (M::POST, retract.as_str(), Some(json!({}))),
        (M::POST, restore.as_str(), Some(json!({}))),
        (M::GET, "/v1/moderation/queue", None),
        (M::GET, "/v1/moderation/queue?stream=s1", None),
        (
            M::POST,
            decision.as_str(),
            Some(json!({"decision":"approve"})),
        ),
        (
            M::POST,
            "/v1/users/ann/ban",
            Some(json!({"scope":"s1","permanent":true})),
        ),
        (M::DELETE, "/v1/users/ann/ban?scope=s1", None),
        (M::GET, "/v1/moderation/log", None),
        (
            M::PUT,
            "/v1/streams/s1/settings",
            Some(json!({"slow_mode_s": 1})),
        ),
        (
            M::POST,
            "/v1/streams/s1/pin",
            Some(json!({"comment_id": comment})),
        ),
    ] {
        let (s, v) = call(&sys, method.clone(), path, &vt, body).await;
        assert_eq!(s, 403, "{method} {path}: {v}");
    }
    // Nothing happened.
    assert_eq!(sys.stored("s1").await.len(), 1);
    sys.stop().await;
}

/// The model needs ONNX Runtime: `ORT_DYLIB_PATH` (set by scripts/test) or the default cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toxic_comment_is_delivered_then_retracted_by_the_model() {
    let sys = System::start_with(|c| {
        c.moderation.model.enabled = true;
        // Let the model, not the rules, catch it.
        c.moderation.rules.blocklist_action = RuleAction::Off;
        c.bridge.rate_limit_count = 0;
    })
    .await;
    sys.live_stream("s1").await;
    let (mut v, p) = viewer_and_poster(&sys, "ann").await;
    let t0 = Instant::now();
    p.post_text("s1", "you are a fucking stupid idiot", "tox")
        .await;
    p.post_text("s1", "what a wonderful goal, well played", "ok")
        .await;
    let got = events(&mut v, "s1", 3, WAIT).await;
    let took = t0.elapsed();
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["comment", "comment", "retract"], "{got:?}");
    assert_eq!(
        got[2]["id"], got[0]["id"],
        "the toxic one is retracted, not the clean one"
    );
    assert!(got[2]["reason"]
        .as_str()
        .unwrap()
        .starts_with("toxicity score"));
    assert!(
        took < Duration::from_secs(2),
        "post → retract took {took:?}"
    );
    assert_eq!(
        seqs(&sys.stored("s1").await),
        vec![2, 3],
        "catch-up: clean comment and the retraction"
    );
    let (_, log) = call(
        &sys,
        reqwest::Method::GET,
        "/v1/moderation/log",
        &sys.token("mo", Role::Moderator),
        None,
    )
    .await;
    assert_eq!(log["entries"][0]["actor"], "system:model");
    sys.stop().await;
}

//! Engagement with real MQTT clients: reactions, likes, pins, viewer counts, replies, slow
//! mode and chat modes, top comments, adaptive sampling.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{granted, Client, System, WAIT};
use rumqttc::QoS;
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

async fn react(c: &Client, stream: &str, body: Value) {
    c.client
        .publish(
            format!("streams/{stream}/react"),
            QoS::AtMostOnce,
            false,
            body.to_string(),
        )
        .await
        .unwrap();
}

/// Posts as `user` and returns the ack.
async fn post_as(sys: &System, user: &str, text: &str, reply_to: Option<&str>) -> Value {
    let r = sys
        .http
        .post(sys.url("/v1/streams/s1/comments"))
        .bearer_auth(sys.token(user, Role::Viewer))
        .json(
            &json!({"text": text, "client_msg_id": format!("{user}-{text}"), "reply_to": reply_to}),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_become_a_few_aggregate_frames_with_exact_totals() {
    let sys = System::start_with(|c| c.reactions.per_user_per_second = 0).await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    assert!(granted(&viewer.subscribe("streams/s1/reactions").await));
    let mut clients = Vec::new();
    for i in 0..10 {
        let u = format!("r{i}");
        clients.push(Client::must(sys.tcp(&u, &sys.token(&u, Role::Viewer))).await);
    }
    let sends = clients.iter().enumerate().map(|(i, c)| async move {
        for n in 0..100 {
            let emoji = if (i + n) % 2 == 0 { "🔥" } else { "❤️" };
            react(c, "s1", json!({"emoji": emoji})).await;
        }
        // Not allowed, not counted.
        react(c, "s1", json!({"emoji": "💩"})).await;
        react(c, "s1", json!({"nonsense": true})).await;
    });
    futures_util::future::join_all(sends).await;

    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    let mut frames = 0;
    let mut totals = Value::Null;
    while counted.values().sum::<u64>() < 1000 {
        let f = viewer
            .next_on("streams/s1/reactions", WAIT)
            .await
            .expect("a reactions frame");
        frames += 1;
        assert_eq!(f["window_ms"], 500);
        for (emoji, n) in f["counts"].as_object().unwrap() {
            *counted.entry(emoji.clone()).or_default() += n.as_u64().unwrap();
        }
        totals = f["totals"].clone();
    }
    assert_eq!(
        counted,
        BTreeMap::from([("🔥".to_string(), 500), ("❤️".to_string(), 500)])
    );
    assert_eq!(totals, json!({"🔥": 500, "❤️": 500}), "totals are exact");
    assert!(frames <= 6, "1000 reactions came in {frames} frames");
    assert_eq!(
        viewer
            .next_on("streams/s1/reactions", Duration::from_millis(1500))
            .await,
        None,
        "nothing while idle"
    );
    let (_, stats) = sys.get_json("/v1/streams/s1/stats").await;
    assert_eq!(stats["reactions"], json!({"🔥": 500, "❤️": 500}));

    // Totals persist across a restart.
    let sys = sys.restart().await;
    let (_, stats) = sys.get_json("/v1/streams/s1/stats").await;
    assert_eq!(stats["reactions"], json!({"🔥": 500, "❤️": 500}));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_dominate_the_counts() {
    let sys = System::start().await; // 10 reactions per second per user
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/reactions").await;
    let spammer = Client::must(sys.tcp("spam", &sys.token("spam", Role::Viewer))).await;
    for _ in 0..200 {
        react(&spammer, "s1", json!({"emoji": "🔥"})).await;
    }
    let mut total = 0;
    while let Some(f) = viewer
        .next_on("streams/s1/reactions", Duration::from_millis(1500))
        .await
    {
        total += f["counts"]["🔥"].as_u64().unwrap_or(0);
    }
    assert!(
        (1..=30).contains(&total),
        "200 reactions in a burst counted {total}"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn likes_count_once_per_user_and_show_in_frames_and_replay() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let id = post_as(&sys, "ann", "like me", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/reactions").await;
    let a = Client::must(sys.tcp("a", &sys.token("a", Role::Viewer))).await;
    let b = Client::must(sys.tcp("b", &sys.token("b", Role::Viewer))).await;
    for c in [&a, &a, &b] {
        react(c, "s1", json!({"emoji": "👍", "comment_id": id})).await;
    }
    let mut last = None;
    while let Some(f) = viewer
        .next_on("streams/s1/reactions", Duration::from_secs(2))
        .await
    {
        if let Some(n) = f["likes"][&id].as_u64() {
            last = Some(n);
        }
        if last == Some(2) {
            break;
        }
    }
    assert_eq!(last, Some(2), "a second like by the same user is ignored");
    react(
        &b,
        "s1",
        json!({"emoji": "👍", "comment_id": id, "remove": true}),
    )
    .await;
    let mut last = None;
    while let Some(f) = viewer
        .next_on("streams/s1/reactions", Duration::from_secs(2))
        .await
    {
        if let Some(n) = f["likes"][&id].as_u64() {
            last = Some(n);
            break;
        }
    }
    assert_eq!(last, Some(1), "an unlike removes it");
    let (_, replay) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await;
    assert_eq!(replay["comments"][0]["likes"], 1);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_pin_which_survives_restarts_and_retraction_clears() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let bob = sys.token("bob", Role::Broadcaster);
    let id = post_as(&sys, "ann", "pin me", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = http(
        &sys,
        reqwest::Method::POST,
        "/v1/streams/s1/pin",
        &sys.token("vic", Role::Viewer),
        Some(json!({"comment_id": id})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = http(
        &sys,
        reqwest::Method::POST,
        "/v1/streams/s1/pin",
        &bob,
        Some(json!({"comment_id": "nope"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = http(
        &sys,
        reqwest::Method::POST,
        "/v1/streams/s1/pin",
        &bob,
        Some(json!({"comment_id": id})),
    )
    .await;
    assert_eq!(s, 200);

    let sys = sys.restart().await;
    let mut late = Client::must(sys.tcp("late", &sys.token("late", Role::Viewer))).await;
    late.subscribe("streams/s1/pinned").await;
    let pin = late
        .next_on("streams/s1/pinned", WAIT)
        .await
        .expect("retained pin");
    assert_eq!(pin["pinned"]["id"], id.as_str());
    assert_eq!(pin["pinned"]["text"], "pin me");

    // A retracted comment is unpinned, with a JSON null (never an empty payload).
    let (s, _) = http(
        &sys,
        reqwest::Method::POST,
        &format!("/v1/streams/s1/comments/{id}/retract"),
        &sys.token("mo", Role::Moderator),
        Some(json!({"reason": "x"})),
    )
    .await;
    assert_eq!(s, 200);
    let cleared = late
        .next_on("streams/s1/pinned", WAIT)
        .await
        .expect("unpin");
    assert_eq!(cleared, json!({"pinned": null}));
    let mut later = Client::must(sys.tcp("later", &sys.token("later", Role::Viewer))).await;
    later.subscribe("streams/s1/pinned").await;
    assert_eq!(
        later.next_on("streams/s1/pinned", WAIT).await,
        Some(json!({"pinned": null}))
    );

    // Pin and unpin by hand.
    let id2 = post_as(&sys, "ann", "second", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    http(
        &sys,
        reqwest::Method::POST,
        "/v1/streams/s1/pin",
        &bob,
        Some(json!({"comment_id": id2})),
    )
    .await;
    assert_eq!(
        late.next_on("streams/s1/pinned", WAIT).await.unwrap()["pinned"]["id"],
        id2.as_str()
    );
    let (s, _) = http(
        &sys,
        reqwest::Method::DELETE,
        "/v1/streams/s1/pin",
        &bob,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        late.next_on("streams/s1/pinned", WAIT).await,
        Some(json!({"pinned": null}))
    );
    sys.stop().await;
}

/// The next presence message with `want` viewers, each within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_counts_follow_joins_and_abrupt_disconnects() {
    let sys = System::start_with(|c| c.presence.interval_ms = 500).await;
    sys.live_stream("s1").await;
    let mut watcher = Client::must(sys.tcp("w", &sys.token("w", Role::Viewer))).await;
    watcher.subscribe("streams/s1/presence").await;
    let mut others = Vec::new();
    for (id, user) in [("a1", "ann"), ("a2", "ann"), ("b", "bob")] {
        let mut c = Client::must(sys.tcp(id, &sys.token(user, Role::Viewer))).await;
        c.subscribe("streams/s1/comments").await;
        others.push(c);
    }
    let p = watcher.presence_until(4).await; // the watcher itself and three others
    assert_eq!(p["unique"], 3, "ann twice, bob, w: {p}");
    // Kill one client without a DISCONNECT (its socket just goes away).
    drop(others.pop());
    let p = watcher.presence_until(3).await;
    assert_eq!(p["unique"], 3, "unique counts users since the start");
    let (_, stats) = sys.get_json("/v1/streams/s1/stats").await;
    assert_eq!(
        (stats["viewers"].as_u64(), stats["unique"].as_u64()),
        (Some(3), Some(3))
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_threaded_limited_in_depth_and_notify_the_parent_author() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 0).await;
    sys.live_stream("s1").await;
    let mut ann = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    ann.subscribe("users/ann/inbox").await;
    let root = post_as(&sys, "ann", "root", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r1 = post_as(&sys, "bob", "r1", Some(&root)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let note = ann.inbox("ann").await;
    assert_eq!(
        (
            note["type"].as_str(),
            note["id"].as_str(),
            note["parent_id"].as_str()
        ),
        (Some("reply"), Some(r1.as_str()), Some(root.as_str())),
        "{note}"
    );
    assert_eq!(note["user"]["id"], "bob");
    let r2 = post_as(&sys, "carl", "r2", Some(&r1)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r3 = post_as(&sys, "dan", "r3", Some(&r2)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // r3 is at the depth limit (3): a reply to it attaches to r2.
    post_as(&sys, "eve", "r4", Some(&r3)).await;
    let (_, thread) = sys
        .get_json(&format!("/v1/streams/s1/comments/{r2}/replies"))
        .await;
    let texts: Vec<&str> = thread["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["r3", "r4"]);
    assert_eq!(thread["comments"][1]["reply_to"], r2.as_str());

    // The parent must exist in the same stream.
    let r = sys
        .http
        .post(sys.url("/v1/streams/s1/comments"))
        .bearer_auth(sys.token("x", Role::Viewer))
        .json(&json!({"text": "?", "client_msg_id": "q", "reply_to": "01NOTACOMMENTATALL00000000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (_, replay) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600")
        .await;
    assert_eq!(
        replay["comments"][0]["replies"], 1,
        "root has one direct reply"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_mode_and_chat_modes_reject_with_their_codes() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 0).await;
    sys.live_stream("s1").await;
    let bob = sys.token("bob", Role::Broadcaster);
    let mut state = Client::must(sys.tcp("st", &sys.token("st", Role::Viewer))).await;
    state.subscribe("streams/s1/state").await;
    state.next_on("streams/s1/state", WAIT).await;
    let mut ann = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    ann.subscribe("users/ann/inbox").await;
    let set = |body: Value| {
        http(
            &sys,
            reqwest::Method::PUT,
            "/v1/streams/s1/settings",
            &bob,
            Some(body),
        )
    };

    assert_eq!(
        http(
            &sys,
            reqwest::Method::PUT,
            "/v1/streams/s1/settings",
            &sys.token("vic", Role::Viewer),
            Some(json!({"slow_mode_s": 5}))
        )
        .await
        .0,
        403
    );
    assert_eq!(set(json!({"slow_mode_s": 5, "max_length": 0})).await.0, 400);
    let (s, v) = set(json!({"slow_mode_s": 5})).await;
    assert_eq!(s, 200, "{v}");
    let st = state.next_on("streams/s1/state", WAIT).await.unwrap();
    assert_eq!(
        st["settings"],
        json!({"slow_mode_s": 5, "mode": "open", "max_length": 500})
    );
    ann.post_text("s1", "one", "1").await;
    assert_eq!(ann.inbox("ann").await["type"], "ack");
    ann.post_text("s1", "two", "2").await;
    let r = ann.inbox("ann").await;
    assert_eq!(r["code"], "slow_mode", "{r}");
    let wait = r["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 3000 && wait <= 5000, "{wait}");
    // The broadcaster is exempt.
    let b = sys
        .http
        .post(sys.url("/v1/streams/s1/comments"))
        .bearer_auth(&bob)
        .json(&json!({"text":"a","client_msg_id":"b1"}))
        .send()
        .await
        .unwrap();
    let b2 = sys
        .http
        .post(sys.url("/v1/streams/s1/comments"))
        .bearer_auth(&bob)
        .json(&json!({"text":"b","client_msg_id":"b2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (b.status(), b2.status()),
        (reqwest::StatusCode::ACCEPTED, reqwest::StatusCode::ACCEPTED)
    );

    set(json!({"mode": "subscribers"})).await;
    ann.post_text("s1", "let me in", "3").await;
    assert_eq!(ann.inbox("ann").await["code"], "subscribers_only");
    let mut sub = Client::must(sys.tcp("sub", &sys.subscriber_token("sue"))).await;
    sub.subscribe("users/sue/inbox").await;
    sub.post_text("s1", "I pay", "1").await;
    assert_eq!(sub.inbox("sue").await["type"], "ack");

    set(json!({"mode": "emote_only", "max_length": 10})).await;
    ann.post_text("s1", "words", "4").await;
    assert_eq!(ann.inbox("ann").await["code"], "emote_only");
    ann.post_text("s1", "🔥 🎉", "5").await;
    assert_eq!(ann.inbox("ann").await["type"], "ack");
    ann.post_text("s1", "🔥🔥🔥🔥🔥🔥🔥🔥🔥🔥🔥", "6").await;
    assert_eq!(ann.inbox("ann").await["code"], "too_long");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_comments_rank_by_engagement() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 0).await;
    sys.live_stream("s1").await;
    post_as(&sys, "ann", "quiet", None).await;
    let liked = post_as(&sys, "ann", "liked", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let discussed = post_as(&sys, "ann", "discussed", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut likers = Vec::new();
    for u in ["l1", "l2", "l3"] {
        likers.push(Client::must(sys.tcp(u, &sys.token(u, Role::Viewer))).await);
    }
    for c in &likers {
        react(c, "s1", json!({"emoji": "👍", "comment_id": liked})).await;
    }
    for u in ["x", "y"] {
        post_as(&sys, u, &format!("re {u}"), Some(&discussed)).await;
    }
    // Likes are stored asynchronously: wait until they show.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, top) = sys
            .get_json("/v1/streams/s1/comments/top?window=600&limit=2")
            .await;
        let ids: Vec<&str> = top["comments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        if ids == vec![discussed.as_str(), liked.as_str()] || tokio::time::Instant::now() > deadline
        {
            // 2 replies (score 4/2^1.5) > 3 likes (3/2^1.5) > no engagement.
            assert_eq!(ids, vec![discussed.as_str(), liked.as_str()]);
            assert_eq!(top["comments"][0]["replies"], 2);
            assert_eq!(top["comments"][1]["likes"], 3);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, by_top) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&duration=3600&order=top&limit=2")
        .await;
    let ids: Vec<&str> = by_top["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![discussed.as_str(), liked.as_str()]);
    let (s, _) = sys
        .get_json("/v1/streams/s1/comments?start_time=0&order=sideways")
        .await;
    assert_eq!(s, 400);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_load_is_sampled_live_but_stored_in_full() {
    let sys = System::start_with(|c| {
        c.bridge.rate_limit_count = 0;
        c.mqtt.max_posts_per_second = 0;
        c.delivery.sampling_threshold_per_s = 20;
    })
    .await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let crowd = Client::must(sys.tcp("crowd", &sys.token("crowd", Role::Viewer))).await;
    let bob = Client::must(sys.tcp("bob", &sys.token("bob", Role::Broadcaster))).await;
    // 200 comments/s from the crowd for 2.5 s, and one from the broadcaster every 100 ms.
    let start = tokio::time::Instant::now();
    for i in 0..500u32 {
        tokio::time::sleep_until(start + Duration::from_millis(5 * u64::from(i))).await;
        crowd
            .post_text("s1", &format!("crowd {i}"), &format!("c{i}"))
            .await;
        if i % 20 == 0 {
            bob.post_text("s1", &format!("bob {i}"), &format!("b{i}"))
                .await;
        }
    }
    let mut events = Vec::new();
    while let Some(f) = viewer
        .next_on("streams/s1/comments", Duration::from_secs(3))
        .await
    {
        events.extend(f["events"].as_array().unwrap().iter().cloned());
    }
    let sampling: Vec<&Value> = events.iter().filter(|e| e["type"] == "sampling").collect();
    let crowd_seen = events
        .iter()
        .filter(|e| e["text"].as_str().is_some_and(|t| t.starts_with("crowd")))
        .count();
    let bob_seen = events
        .iter()
        .filter(|e| e["text"].as_str().is_some_and(|t| t.starts_with("bob")))
        .count();
    assert!(!sampling.is_empty(), "clients are told about sampling");
    let first = sampling[0];
    assert!(first["rate"].as_f64().unwrap() < 0.5, "{first}");
    assert!(first["incoming_per_s"].as_f64().unwrap() > 40.0, "{first}");
    assert_eq!(
        sampling.last().unwrap()["rate"],
        1.0,
        "sampling ends when the rate falls"
    );
    assert!(
        crowd_seen < 300,
        "the crowd was sampled: {crowd_seen} of 500 delivered"
    );
    assert_eq!(
        bob_seen, 25,
        "the broadcaster's comments are always delivered"
    );
    let stored = {
        let mut all = 0;
        let mut after = 0;
        loop {
            let (_, page) = sys
                .get_json(&format!(
                    "/v1/streams/s1/comments?after_seq={after}&limit=1000"
                ))
                .await;
            let c = page["comments"].as_array().unwrap();
            if c.is_empty() {
                break;
            }
            all += c.len();
            after = c.last().unwrap()["seq"].as_u64().unwrap();
        }
        all
    };
    assert_eq!(stored, 525, "everything is stored");
    sys.stop().await;
}

//! The HTTP API: stream lifecycle and roles, posting, replay windows, catch-up, health,
//! metrics.

mod common;

use std::time::Duration;

use common::{seqs, Client, System, WAIT};
use serde_json::{json, Value};
use wire::auth::Role;

async fn send(req: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_lifecycle_is_role_checked() {
    let sys = System::start().await;
    let bob = sys.token("bob", Role::Broadcaster);
    let carl = sys.token("carl", Role::Broadcaster);
    let viewer = sys.token("vic", Role::Viewer);
    let admin = sys.token("root", Role::Admin);
    let create = |token: &str, body: Value| {
        sys.http
            .post(sys.url("/v1/streams"))
            .bearer_auth(token)
            .json(&body)
    };

    let (s, v, _) = send(
        sys.http
            .post(sys.url("/v1/streams"))
            .json(&json!({"id":"s1"})),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")));
    let (s, v, _) = send(create(&viewer, json!({"id":"s1"}))).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")));
    let (s, v, _) = send(create(&bob, json!({"id":"bad id!"}))).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid")));
    let (s, v, _) = send(create(&bob, json!({"title":"no id"}))).await;
    assert_eq!(s, 400, "{v}");

    let (s, v, _) = send(create(&bob, json!({"id":"s1","title":"Final"}))).await;
    assert_eq!(s, 201);
    assert_eq!(v["status"], "created");
    assert_eq!(v["owner"], "bob");
    assert_eq!(v["title"], "Final");
    let (s, v, _) = send(create(&bob, json!({"id":"s1"}))).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("exists")));

    let action = |token: &str, what: &str| {
        sys.http
            .post(sys.url(&format!("/v1/streams/s1/{what}")))
            .bearer_auth(token)
    };
    assert_eq!(send(action(&viewer, "start")).await.0, 403);
    assert_eq!(
        send(action(&carl, "start")).await.0,
        403,
        "not carl's stream"
    );
    let (s, v, _) = send(action(&bob, "start")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("live")));
    assert!(v["started_at"].as_i64().is_some());
    assert_eq!(send(action(&bob, "start")).await.0, 200, "idempotent");
    // Concurrent starts agree on one start time (compare-and-set in the store).
    let starts = futures_util::future::join_all((0..8).map(|_| send(action(&bob, "start")))).await;
    let started: std::collections::BTreeSet<i64> = starts
        .iter()
        .map(|(s, v, _)| {
            assert_eq!(*s, 200);
            v["started_at"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    let (s, v, _) = send(action(&admin, "end")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ended")));

    let (s, v) = sys.get_json("/v1/streams/s1").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ended")));
    let (s, v) = sys.get_json("/v1/streams/nope").await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posting_over_http_answers_with_status_codes() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 2).await;
    sys.live_stream("s1").await;
    let ann = sys.token("ann", Role::Viewer);
    let post = |stream: &str, body: &str, token: Option<&str>| {
        let mut r = sys
            .http
            .post(sys.url(&format!("/v1/streams/{stream}/comments")))
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    };
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;

    let (s, v, _) = send(post(
        "s1",
        r#"{"text":"hi","client_msg_id":"h1"}"#,
        Some(&ann),
    ))
    .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["seq"], 1);
    assert_eq!(v["client_msg_id"], "h1");
    let (events, _) = viewer.comments("s1", 1, WAIT).await;
    assert_eq!(
        events[0]["id"], v["id"],
        "an HTTP post is delivered live too"
    );

    let (s, v, _) = send(post("s1", r#"{"text":"hi","client_msg_id":"h1"}"#, None)).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")));
    let (s, v, _) = send(post(
        "s1",
        r#"{"text":" ","client_msg_id":"h2"}"#,
        Some(&ann),
    ))
    .await;
    assert_eq!((s, v["code"].as_str()), (400, Some("empty")));
    let (s, v, _) = send(post("s1", "not json", Some(&ann))).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid")));
    let (s, v, _) = send(post(
        "nope",
        r#"{"text":"x","client_msg_id":"h3"}"#,
        Some(&ann),
    ))
    .await;
    assert_eq!((s, v["code"].as_str()), (404, Some("stream_not_live")));

    let (s, _, _) = send(post(
        "s1",
        r#"{"text":"two","client_msg_id":"h4"}"#,
        Some(&ann),
    ))
    .await;
    assert_eq!(s, 202);
    let (s, v, headers) = send(post(
        "s1",
        r#"{"text":"three","client_msg_id":"h5"}"#,
        Some(&ann),
    ))
    .await;
    assert_eq!((s, v["code"].as_str()), (429, Some("rate_limited")));
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0);
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_windows_and_catch_up_page_through_everything_in_order() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 0).await;
    sys.live_stream("s1").await;
    let ann = sys.token("ann", Role::Viewer);
    for i in 0..12 {
        let r = sys
            .http
            .post(sys.url("/v1/streams/s1/comments"))
            .bearer_auth(&ann)
            .body(json!({"text": format!("c{i}"), "client_msg_id": format!("m{i}")}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let all = sys.stored("s1").await;
    assert_eq!(seqs(&all), (1..=12).collect::<Vec<_>>());
    let offsets: Vec<u64> = all
        .iter()
        .map(|c| c["offset_ms"].as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");

    // Page through the whole recording three at a time.
    let mut got = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = "/v1/streams/s1/comments?start_time=0&duration=3600&limit=3".to_string();
        if let Some(t) = &token {
            path.push_str(&format!("&pagination_token={t}"));
        }
        let (s, page) = sys.get_json(&path).await;
        assert_eq!(s, 200, "{page}");
        got.extend(page["comments"].as_array().unwrap().iter().cloned());
        match page["next_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(seqs(&got), seqs(&all));
    // Pages are JSON to clients that look at the header (browsers' fetch, curl --json).
    let (_, _, headers) = send(
        sys.http
            .get(sys.url("/v1/streams/s1/comments?start_time=0&duration=3600&limit=3")),
    )
    .await;
    assert_eq!(headers["content-type"], "application/json");

    // A window holds exactly the comments with offset_ms in [start, start + duration).
    let (from, to) = (offsets[3], offsets[8]);
    let path = format!(
        "/v1/streams/s1/comments?start_time={}&duration={}",
        from as f64 / 1000.0,
        (to - from) as f64 / 1000.0
    );
    let (s, page) = sys.get_json(&path).await;
    assert_eq!(s, 200);
    let expected: Vec<u64> = all
        .iter()
        .filter(|c| (from..to).contains(&c["offset_ms"].as_u64().unwrap()))
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(seqs(page["comments"].as_array().unwrap()), expected);
    let (_, later) = sys
        .get_json("/v1/streams/s1/comments?start_time=3600")
        .await;
    assert!(later["comments"].as_array().unwrap().is_empty());

    // Catch-up after a seq, paged.
    let (s, page) = sys
        .get_json("/v1/streams/s1/comments?after_seq=5&limit=4")
        .await;
    assert_eq!(s, 200);
    assert_eq!(seqs(page["comments"].as_array().unwrap()), vec![6, 7, 8, 9]);
    let t = page["next_token"].as_str().unwrap();
    let (_, page) = sys
        .get_json(&format!(
            "/v1/streams/s1/comments?after_seq=5&limit=4&pagination_token={t}"
        ))
        .await;
    assert_eq!(seqs(page["comments"].as_array().unwrap()), vec![10, 11, 12]);
    assert!(page["next_token"].is_null());

    for bad in [
        "/v1/streams/s1/comments",
        "/v1/streams/s1/comments?start_time=0&after_seq=1",
        "/v1/streams/s1/comments?start_time=-1",
        "/v1/streams/s1/comments?start_time=0&duration=0",
        "/v1/streams/s1/comments?after_seq=0&limit=0",
        "/v1/streams/s1/comments?after_seq=0&limit=100000",
        "/v1/streams/s1/comments?after_seq=0&pagination_token=garbage",
        "/v1/streams/s1/comments?after_seq=x",
        "/v1/streams/s1/comments?after_seq=0&unknown=1",
    ] {
        let (s, v) = sys.get_json(bad).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("invalid")),
            "{bad}: {v}"
        );
    }
    let (s, _) = sys.get_json("/v1/streams/nope/comments?after_seq=0").await;
    assert_eq!(s, 404);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    let mut ann = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    ann.subscribe("users/ann/inbox").await;
    ann.post_text("s1", "counted", "m1").await;
    ann.inbox("ann").await;
    ann.post_text("s1", "", "m2").await;
    ann.inbox("ann").await;
    viewer.comments("s1", 1, WAIT).await;

    let (s, v) = sys.get_json("/healthz").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let (s, v) = sys.get_json("/readyz").await;
    assert_eq!(
        (
            s,
            v["status"].as_str(),
            v["store"].as_str(),
            v["bus"].as_str()
        ),
        (200, Some("ready"), Some("ok"), Some("ok"))
    );
    let text = sys
        .http
        .get(sys.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "livecomments_mqtt_connections",
        "livecomments_comments_accepted_total",
        "livecomments_comments_rejected_total{code=\"empty\"}",
        "livecomments_deliveries_total",
        "livecomments_post_to_publish_seconds_bucket",
        "livecomments_store_commit_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    sys.stop().await;
}

//! The gatekeeper: who may connect, publish and subscribe, and what they cannot disturb.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{granted, refused_with, token_with, Client, System, WAIT};
use rumqttc::{ConnectReturnCode, QoS, SubscribeFilter, SubscribeReasonCode};
use wire::auth::{JwtKeys, Role};

const QUIET: Duration = Duration::from_millis(800);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_outside_the_policy_closes_the_connection_and_reaches_nobody() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let mut viewer = Client::must(sys.tcp("vic", &sys.token("vic", Role::Viewer))).await;
    assert!(granted(&viewer.subscribe("streams/s1/#").await));
    assert!(granted(&viewer.subscribe("users/vic/inbox").await));
    // The retained state and pin arrive on subscribe; take them out of the way.
    assert_eq!(
        viewer.next_on("streams/s1/state", WAIT).await.unwrap()["status"],
        "live"
    );
    assert_eq!(
        viewer.next_on("streams/s1/pinned", WAIT).await,
        Some(serde_json::json!({"pinned": null}))
    );

    let forged = r#"{"v":1,"events":[{"type":"comment","id":"x","seq":999,"text":"forged"}]}"#;
    for (topic, payload) in [
        ("streams/s1/comments", forged.as_bytes().to_vec()),
        (
            "users/vic/inbox",
            br#"{"type":"ack","id":"x","seq":1}"#.to_vec(),
        ),
        ("streams/s1/state", Vec::new()),
        ("streams/s1/comments", Vec::new()),
        ("anything/else", b"x".to_vec()),
        ("$SYS/broker", b"x".to_vec()),
    ] {
        let mut attacker =
            Client::must(sys.tcp("mallory", &sys.token("mallory", Role::Admin))).await;
        attacker
            .client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
        assert!(
            attacker.closed_within(WAIT).await,
            "publishing to {topic} must close the connection"
        );
    }
    assert_eq!(
        viewer.next_publish(QUIET).await,
        None,
        "nothing forged reached the viewer"
    );
    assert!(
        granted(&viewer.subscribe("streams/s1/comments").await),
        "and the viewer is still connected"
    );

    // The retained state survived the empty payloads.
    let mut late = Client::must(sys.tcp("late", &sys.token("late", Role::Viewer))).await;
    late.subscribe("streams/s1/state").await;
    let state = late
        .next_on("streams/s1/state", WAIT)
        .await
        .expect("retained state");
    assert_eq!(state["status"], "live");
    assert_eq!(state["id"], "s1");

    // An empty post is refused by validation, not treated as a retained-message delete.
    let mut poster = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    poster.subscribe("users/ann/inbox").await;
    poster.post("s1", Vec::new()).await;
    assert_eq!(poster.inbox("ann").await["code"], "invalid");
    assert!(sys.stored("s1").await.is_empty());
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_stay_inside_one_stream_and_the_own_inbox() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let mut eve = Client::must(sys.tcp("eve", &sys.token("eve", Role::Admin))).await;
    for filter in [
        "#",
        "+/+/+",
        "streams/#",
        "streams/+/comments",
        "streams/+/#",
        "users/bob/inbox",
        "users/+/inbox",
        "users/#",
        "$SYS/#",
        "streams/s1/post",
        "streams/nope/comments",
        "$share/g/streams/s1/comments",
    ] {
        let codes = eve.subscribe(filter).await;
        assert_eq!(codes, vec![SubscribeReasonCode::Failure], "{filter}");
    }
    for filter in [
        "streams/s1/comments",
        "streams/s1/#",
        "streams/s1/+",
        "users/eve/inbox",
    ] {
        assert!(granted(&eve.subscribe(filter).await), "{filter}");
    }

    // One SUBSCRIBE with allowed and refused filters gets a code per filter, in order.
    eve.client
        .subscribe_many(vec![
            SubscribeFilter::new("users/bob/inbox".into(), QoS::AtMostOnce),
            SubscribeFilter::new("streams/s1/comments".into(), QoS::AtMostOnce),
            SubscribeFilter::new("#".into(), QoS::AtMostOnce),
            SubscribeFilter::new("users/eve/inbox".into(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    let mut codes = None;
    while codes.is_none() {
        match eve.next_packet(WAIT).await.expect("suback") {
            rumqttc::Packet::SubAck(a) => codes = Some(a.return_codes),
            _ => continue,
        }
    }
    let ok = SubscribeReasonCode::Success(QoS::AtMostOnce);
    assert_eq!(
        codes.unwrap(),
        vec![
            SubscribeReasonCode::Failure,
            ok,
            SubscribeReasonCode::Failure,
            ok
        ]
    );

    // Bob's answers never reach eve.
    let mut bob = Client::must(sys.tcp("bob", &sys.token("bob", Role::Viewer))).await;
    bob.subscribe("users/bob/inbox").await;
    bob.post_text("s1", "mine", "b1").await;
    assert_eq!(bob.inbox("bob").await["type"], "ack");
    loop {
        match eve.next_publish(QUIET).await {
            None => break,
            Some((topic, _)) => assert_ne!(topic, "users/bob/inbox"),
        }
    }
    assert!(
        granted(&eve.subscribe("streams/s1/state").await),
        "eve is still connected"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expired_unsigned_and_missing_tokens_are_refused() {
    let sys = System::start().await;
    let other_key = JwtKeys::new(b"a different secret of 32+ bytes!!");
    let now = wire::time::now_ms() / 1000;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD
        .encode(format!(r#"{{"sub":"eve","role":"admin","exp":{}}}"#, now + 3600).as_bytes());
    let unsigned = format!("{header}.{body}.");
    let cases = [
        (
            "wrong key",
            token_with(&other_key, "eve", Role::Admin, 3600),
        ),
        ("expired", token_with(sys.keys(), "eve", Role::Admin, -120)),
        ("alg none", unsigned),
        ("garbage", "not-a-jwt".to_string()),
        ("empty", String::new()),
    ];
    for (what, token) in cases {
        let r = Client::connect(sys.tcp("eve", &token)).await;
        assert_eq!(
            refused_with(r),
            Some(ConnectReturnCode::BadUserNamePassword),
            "{what}"
        );
        let r = Client::connect(sys.ws("eve-ws", &token)).await;
        assert_eq!(
            refused_with(r),
            Some(ConnectReturnCode::BadUserNamePassword),
            "{what} over websocket"
        );
    }
    let mut no_login = rumqttc::MqttOptions::new("anon", "127.0.0.1", sys.mqtt_port());
    no_login.set_keep_alive(Duration::from_secs(30));
    assert_eq!(
        refused_with(Client::connect(no_login).await),
        Some(ConnectReturnCode::NotAuthorized)
    );

    // HTTP refuses the same tokens.
    for token in ["garbage", &token_with(sys.keys(), "eve", Role::Admin, -120)] {
        let r = sys
            .http
            .post(sys.url("/v1/streams"))
            .bearer_auth(token)
            .body(r#"{"id":"x"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_token_expires() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let short = token_with(sys.keys(), "ann", Role::Viewer, 3);
    let mut c = Client::must(sys.tcp("ann", &short)).await;
    assert!(
        !c.closed_within(Duration::from_millis(1500)).await,
        "open while the token is valid"
    );
    assert!(
        c.closed_within(Duration::from_secs(8)).await,
        "closed once it expired"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_client_ids_of_different_users_do_not_kick_each_other_and_nobody_kicks_the_system() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 0).await;
    sys.live_stream("s1").await;
    let mut alice = Client::must(sys.tcp("phone", &sys.token("alice", Role::Viewer))).await;
    let mut bob = Client::must(sys.tcp("phone", &sys.token("bob", Role::Viewer))).await;
    // Clients named like the node's internal link and like router session slots.
    let mut relay_name = Client::must(sys.tcp("lc-relay", &sys.token("x", Role::Viewer))).await;
    let mut slot_name = Client::must(sys.tcp("c0", &sys.token("y", Role::Viewer))).await;
    for c in [&mut alice, &mut bob, &mut relay_name, &mut slot_name] {
        assert!(granted(&c.subscribe("streams/s1/comments").await));
    }
    let poster = Client::must(sys.tcp("p", &sys.token("p", Role::Viewer))).await;
    poster.post_text("s1", "hello", "m1").await;
    for c in [&mut alice, &mut bob, &mut relay_name, &mut slot_name] {
        let (events, _) = c.comments("s1", 1, WAIT).await;
        assert_eq!(events.len(), 1, "every viewer still gets comments");
    }

    // The same user with the same client id takes over (MQTT semantics) — only that one.
    let mut alice2 = Client::must(sys.tcp("phone", &sys.token("alice", Role::Viewer))).await;
    assert!(
        alice.closed_within(WAIT).await,
        "the older alice session is replaced"
    );
    assert!(granted(&alice2.subscribe("streams/s1/comments").await));
    poster.post_text("s1", "again", "m2").await;
    for c in [&mut bob, &mut alice2, &mut relay_name] {
        let (events, _) = c.comments("s1", 1, WAIT).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["text"], "again");
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_on_the_websocket_port_do_not_block_other_clients() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let addr = format!("127.0.0.1:{}", sys.ws_port());
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    let mut ws = Client::must(sys.ws("web", &sys.token("web", Role::Viewer))).await;
    assert!(granted(&ws.subscribe("streams/s1/comments").await));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "websocket connect took {:?} behind idle sockets",
        started.elapsed()
    );
    // And the WebSocket upgrade is only served on the configured path.
    let wrong = {
        let port = sys.ws_port();
        let mut o = rumqttc::MqttOptions::new("w2", format!("ws://127.0.0.1:{port}/other"), port);
        o.set_transport(rumqttc::Transport::Ws);
        o.set_credentials("u", sys.token("w2", Role::Viewer));
        Client::connect(o).await
    };
    assert!(wrong.is_err(), "upgrade on another path must fail");
    drop(idle);
    sys.stop().await;
}

//! MQTT protocol details of the gatekeeper: pipelining after CONNECT, overlapping filters,
//! UNSUBSCRIBE, per-connection post floods, connection churn.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{granted, seqs, Client, System, WAIT};
use rumqttc::mqttbytes::v4::{Connect, Login, Packet, Subscribe, SubscribeFilter, Unsubscribe};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::auth::Role;

fn connect_bytes(sys: &System, id: &str) -> BytesMut {
    let mut c = Connect::new(id);
    c.keep_alive = 30;
    c.login = Some(Login::new("u", sys.token(id, Role::Viewer)));
    let mut b = BytesMut::new();
    Packet::Connect(c).write(&mut b, usize::MAX).unwrap();
    b
}

/// Reads packets until `until` matches one or `WAIT` passes; returns all read.
async fn read_until(s: &mut TcpStream, until: impl Fn(&Packet) -> bool) -> Vec<Packet> {
    read_until_in(s, &mut BytesMut::new(), until).await
}

/// [`read_until`] keeping what was read past the matching packet in `buf` for the next call.
async fn read_until_in(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    until: impl Fn(&Packet) -> bool,
) -> Vec<Packet> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Ok(p) = Packet::read(buf, 1 << 20) {
            let done = until(&p);
            out.push(p);
            if done {
                return out;
            }
        }
        match tokio::time::timeout_at(deadline, s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return out,
        }
    }
}

/// Opens a raw connection and sends CONNECT and SUBSCRIBE to `filter` in one write, without
/// waiting for the CONNACK.
async fn connect_and_subscribe(sys: &System, id: &str, filter: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", sys.mqtt_port()))
        .await
        .unwrap();
    let mut b = connect_bytes(sys, id);
    Packet::Subscribe(Subscribe::new(filter, QoS::AtMostOnce))
        .write(&mut b, usize::MAX)
        .unwrap();
    s.write_all(&b).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_sent_together_with_connect_are_served() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let mut s = connect_and_subscribe(&sys, "pipe", "streams/s1/state").await;
    let got = read_until(&mut s, |p| matches!(p, Packet::Publish(_))).await;
    assert!(matches!(got.first(), Some(Packet::ConnAck(_))), "{got:?}");
    assert!(
        got.iter().any(|p| matches!(p, Packet::SubAck(_))),
        "{got:?}"
    );
    assert!(
        matches!(got.last(), Some(Packet::Publish(p)) if p.topic == "streams/s1/state"),
        "{got:?}"
    );
    sys.stop().await;
}

/// MQTT 3.1.1 §3.3.1.3: a retained message sent because of a new subscription has the retain
/// flag; one forwarded to existing subscribers has not. Subscribing again sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_state_comes_once_on_subscribe_and_changes_come_live() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let mut s = connect_and_subscribe(&sys, "ret", "streams/s1/state").await;
    let mut buf = BytesMut::new();
    let got = read_until_in(&mut s, &mut buf, |p| matches!(p, Packet::Publish(_))).await;
    match got.last() {
        Some(Packet::Publish(p)) => assert!(p.retain, "sent on subscribe: {p:?}"),
        other => panic!("no retained state: {other:?}"),
    }

    // The same filter again: a SUBACK and no second copy.
    let mut b = BytesMut::new();
    let mut again = Subscribe::new("streams/s1/state", QoS::AtMostOnce);
    again.pkid = 2;
    Packet::Subscribe(again).write(&mut b, usize::MAX).unwrap();
    s.write_all(&b).await.unwrap();
    let got = read_until_in(&mut s, &mut buf, |p| matches!(p, Packet::SubAck(_))).await;
    assert!(
        matches!(got.as_slice(), [Packet::SubAck(_)]),
        "one copy on the first SUBSCRIBE, none on the second: {got:?}"
    );

    // A change while subscribed arrives live, without the retain flag.
    let r = sys
        .http
        .put(sys.url("/v1/streams/s1/settings"))
        .bearer_auth(sys.token("bob", Role::Broadcaster))
        .json(&serde_json::json!({"slow_mode_s": 5, "mode": "open", "max_length": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = read_until_in(&mut s, &mut buf, |p| matches!(p, Packet::Publish(_))).await;
    match got.last() {
        Some(Packet::Publish(p)) => {
            assert!(!p.retain, "forwarded live: {p:?}");
            let state: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            assert_eq!(state["settings"]["slow_mode_s"], 5, "{state}");
        }
        other => panic!("no live state: {other:?}"),
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_deliver_each_event_once() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 0).await;
    sys.live_stream("s1").await;
    let mut v = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    for f in ["streams/s1/comments", "streams/s1/#", "streams/s1/+"] {
        assert!(granted(&v.subscribe(f).await), "{f}");
    }
    let p = Client::must(sys.tcp("p", &sys.token("p", Role::Viewer))).await;
    for i in 0..3 {
        p.post_text("s1", &format!("t{i}"), &format!("m{i}")).await;
    }
    let (events, _) = v.comments("s1", 100, Duration::from_secs(2)).await;
    assert_eq!(
        seqs(&events),
        vec![1, 2, 3],
        "each event once, in seq order"
    );

    // Dropping one overlapping filter keeps the others' deliveries; dropping all stops them.
    v.unsubscribe("streams/s1/#").await;
    v.unsubscribe("streams/s1/+").await;
    p.post_text("s1", "still here", "m3").await;
    let (events, _) = v.comments("s1", 1, WAIT).await;
    assert_eq!(seqs(&events), vec![4]);
    v.unsubscribe("streams/s1/comments").await;
    p.post_text("s1", "gone", "m4").await;
    assert_eq!(
        v.next_on("streams/s1/comments", Duration::from_millis(800))
            .await,
        None
    );
    // Subscribing again works.
    assert!(granted(&v.subscribe("streams/s1/comments").await));
    p.post_text("s1", "back", "m5").await;
    let (events, _) = v.comments("s1", 1, WAIT).await;
    assert_eq!(seqs(&events), vec![6]);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unsubscribe_gets_exactly_one_unsuback() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let mut s = TcpStream::connect(("127.0.0.1", sys.mqtt_port()))
        .await
        .unwrap();
    let mut b = connect_bytes(&sys, "raw");
    let sub = Subscribe {
        pkid: 1,
        filters: vec![
            SubscribeFilter::new("streams/s1/comments".into(), QoS::AtMostOnce),
            SubscribeFilter::new("streams/s1/state".into(), QoS::AtMostOnce),
        ],
    };
    Packet::Subscribe(sub).write(&mut b, usize::MAX).unwrap();
    for (pkid, topics) in [
        (2, vec!["streams/s1/comments", "streams/s1/state"]),
        (3, vec!["streams/s1/comments"]), // no longer subscribed
        (4, vec!["users/raw/inbox", "streams/nope/comments", "#"]),
    ] {
        let u = Unsubscribe {
            pkid,
            topics: topics.into_iter().map(String::from).collect(),
        };
        Packet::Unsubscribe(u).write(&mut b, usize::MAX).unwrap();
    }
    Packet::PingReq.write(&mut b, usize::MAX).unwrap();
    s.write_all(&b).await.unwrap();
    let got = read_until(&mut s, |p| matches!(p, Packet::PingResp)).await;
    let unsubacks: Vec<u16> = got
        .iter()
        .filter_map(|p| match p {
            Packet::UnsubAck(u) => Some(u.pkid),
            _ => None,
        })
        .collect();
    assert_eq!(unsubacks, vec![2, 3, 4], "{got:?}");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_flood_on_one_connection_is_answered_at_the_node() {
    let sys = System::start_with(|c| {
        c.bridge.rate_limit_count = 0;
        c.mqtt.max_posts_per_second = 5;
    })
    .await;
    sys.live_stream("s1").await;
    let mut ann = Client::must(sys.tcp("ann", &sys.token("ann", Role::Viewer))).await;
    ann.subscribe("users/ann/inbox").await;
    for i in 0..20 {
        ann.post_text("s1", &format!("f{i}"), &format!("f{i}"))
            .await;
    }
    let (mut acks, mut limited) = (0, 0);
    for _ in 0..20 {
        let a = ann.inbox("ann").await;
        match (a["type"].as_str(), a["code"].as_str()) {
            (Some("ack"), _) => acks += 1,
            (Some("reject"), Some("rate_limited")) => {
                assert!(a["retry_after_ms"].as_u64().unwrap() > 0);
                limited += 1;
            }
            other => panic!("unexpected answer {other:?}: {a}"),
        }
    }
    assert!((5..20).contains(&acks), "acks={acks}");
    assert_eq!(acks + limited, 20);
    assert_eq!(sys.stored("s1").await.len(), acks);
    sys.stop().await;
}

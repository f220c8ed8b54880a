//! An acknowledged comment survives `kill -9` of the process and a restart.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::process::{self, Proc};
use common::{Client, WAIT};
use rumqttc::MqttOptions;
use serde_json::Value;

fn mqtt(p: &Proc, id: &str, token: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", p.mqtt_port());
    o.set_credentials("u", token);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

async fn catch_up(http: &reqwest::Client, p: &Proc) -> Vec<Value> {
    let r = http
        .get(p.url("/v1/streams/s1/comments?after_seq=0&limit=1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["comments"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_comments_survive_kill_9_and_numbering_continues() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("LIVECOMMENTS__BRIDGE__RATE_LIMIT_COUNT", "0"),
        ("LIVECOMMENTS__MQTT__MAX_POSTS_PER_SECOND", "0"),
    ];
    let mut p = process::up(dir.path(), &env);
    let http = reqwest::Client::new();
    let bob = process::token(dir.path(), "bob", "broadcaster");
    let ann = process::token(dir.path(), "ann", "viewer");
    for (path, body) in [
        ("/v1/streams", Some(r#"{"id":"s1","title":"durable"}"#)),
        ("/v1/streams/s1/start", None),
    ] {
        let mut r = http.post(p.url(path)).bearer_auth(&bob);
        if let Some(b) = body {
            r = r.body(b);
        }
        assert!(r.send().await.unwrap().status().is_success(), "{path}");
    }

    // Post continuously; kill -9 once 40 acks arrived, with more posts in flight.
    let mut poster = Client::must(mqtt(&p, "ann", &ann)).await;
    poster.subscribe("users/ann/inbox").await;
    let mut acked: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let mut sent = 0;
    while acked.len() < 40 {
        for _ in 0..10 {
            poster
                .post_text("s1", &format!("text {sent}"), &format!("m{sent}"))
                .await;
            sent += 1;
        }
        while let Some(v) = poster
            .next_on("users/ann/inbox", Duration::from_millis(200))
            .await
        {
            assert_eq!(v["type"], "ack", "{v}");
            let n: usize = v["client_msg_id"].as_str().unwrap()[1..].parse().unwrap();
            acked.insert(
                v["seq"].as_u64().unwrap(),
                (v["id"].as_str().unwrap().to_string(), format!("text {n}")),
            );
        }
    }
    for _ in 0..20 {
        poster
            .post_text("s1", &format!("text {sent}"), &format!("m{sent}"))
            .await;
        sent += 1;
    }
    p.kill9();
    drop(poster);

    let p = process::up(dir.path(), &env);
    let stored = catch_up(&http, &p).await;
    let by_seq: BTreeMap<u64, &Value> = stored
        .iter()
        .map(|c| (c["seq"].as_u64().unwrap(), c))
        .collect();
    assert_eq!(by_seq.len(), stored.len(), "no seq stored twice");
    for (seq, (id, text)) in &acked {
        let c = by_seq
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged seq {seq} lost by kill -9"));
        assert_eq!(c["id"].as_str(), Some(id.as_str()));
        assert_eq!(c["text"].as_str(), Some(text.as_str()));
    }
    let seqs: Vec<u64> = by_seq.keys().copied().collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gaps");

    // The stream is still live and numbering continues after the highest stored seq.
    let mut poster = Client::must(mqtt(&p, "ann", &ann)).await;
    poster.subscribe("users/ann/inbox").await;
    poster.post_text("s1", "after restart", "after").await;
    let ack = poster.inbox("ann").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"].as_u64().unwrap(), *seqs.last().unwrap() + 1);

    // A retry of a comment acknowledged before the crash gets its original answer.
    let (first_seq, (first_id, _)) = acked.iter().next().unwrap();
    let n = by_seq[first_seq]["text"].as_str().unwrap()["text ".len()..].to_string();
    poster
        .post_text("s1", &format!("text {n}"), &format!("m{n}"))
        .await;
    let again = poster.next_on("users/ann/inbox", WAIT).await.unwrap();
    assert_eq!(again["id"].as_str(), Some(first_id.as_str()));
    assert_eq!(again["seq"].as_u64(), Some(*first_seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_posting_stores_every_post_that_got_a_puback() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("LIVECOMMENTS__BRIDGE__RATE_LIMIT_COUNT", "0"),
        ("LIVECOMMENTS__MQTT__MAX_POSTS_PER_SECOND", "0"),
    ];
    let mut p = process::up(dir.path(), &env);
    let http = reqwest::Client::new();
    let bob = process::token(dir.path(), "bob", "broadcaster");
    let ann = process::token(dir.path(), "ann", "viewer");
    for (path, body) in [
        ("/v1/streams", Some(r#"{"id":"s1"}"#)),
        ("/v1/streams/s1/start", None),
    ] {
        let mut r = http.post(p.url(path)).bearer_auth(&bob);
        if let Some(b) = body {
            r = r.body(b);
        }
        assert!(r.send().await.unwrap().status().is_success(), "{path}");
    }

    // rumqttc numbers QoS 1 publishes 1, 2, 3, … so PUBACK pkid n acknowledges post n - 1.
    let mut poster = Client::must(mqtt(&p, "ann", &ann)).await;
    let sender = poster.client.clone();
    let posting = tokio::spawn(async move {
        for i in 0..1000 {
            let body = format!(r#"{{"text":"sig {i}","client_msg_id":"s{i}"}}"#);
            if sender
                .publish("streams/s1/post", rumqttc::QoS::AtLeastOnce, false, body)
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut pubacked = std::collections::BTreeSet::new();
    while pubacked.len() < 100 {
        if let Some(rumqttc::Packet::PubAck(a)) = poster.next_packet(WAIT).await {
            pubacked.insert(a.pkid);
        }
    }
    let term = tokio::task::spawn_blocking(move || {
        let status = p.terminate();
        (status, p.log_text())
    });
    // Keep collecting PUBACKs until the server closes the connection.
    loop {
        match poster.next_packet(Duration::from_secs(20)).await {
            Some(rumqttc::Packet::PubAck(a)) => {
                pubacked.insert(a.pkid);
            }
            Some(_) => {}
            None => break,
        }
    }
    posting.abort();
    let (status, log) = term.await.unwrap();
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(log.contains("write path drained"), "{log}");

    let p = process::up(dir.path(), &env);
    let stored: std::collections::BTreeSet<String> = catch_up(&http, &p)
        .await
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    for pkid in &pubacked {
        let text = format!("sig {}", pkid - 1);
        assert!(
            stored.contains(&text),
            "{text} got a PUBACK but was not stored"
        );
    }
    assert!(pubacked.len() >= 100);
}

//! The behaviour every [`Bus`] must have, as checks that run against any of them
//! (`tests/bus_suite.rs` runs them against the in-process [`wire::bus::MemoryBus`] and the
//! [`super::RedisBus`] on a real `redis-server`).
//!
//! Each check takes a [`Pair`]: the bus as a broker node sees it and as a bridge sees it. For
//! the in-process bus they are one object; for a shared bus they are two connections, as two
//! processes of a cluster have. What only a shared bus has (calls between processes, claims of
//! a dead consumer's entries, a restart of Redis) is checked in `tests/redis_bus.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use wire::auth::Role;
use wire::bus::{
    Author, Bus, Channel, Delivery, Origin, Received, Request, Submission, SubmissionKind,
};
use wire::{StreamId, UserId};

/// How long a check waits for something that should arrive.
const WAIT: Duration = Duration::from_secs(10);

/// One bus seen from a node and from a bridge.
pub struct Pair {
    pub node: Arc<dyn Bus>,
    pub bridge: Arc<dyn Bus>,
}

fn submission(i: usize) -> Submission {
    let kinds = [
        SubmissionKind::Post,
        SubmissionKind::Report,
        SubmissionKind::Like,
    ];
    Submission {
        kind: kinds[i % kinds.len()],
        stream: StreamId::new(&format!("s{}", i % 3)).expect("stream id"),
        author: Author {
            id: UserId::new(&format!("u{i}")).expect("user id"),
            name: format!("Üser {i} 🎉"),
            role: if i % 5 == 0 {
                Role::Moderator
            } else {
                Role::Viewer
            },
            subscriber: i % 2 == 0,
        },
        // Not necessarily UTF-8: the bus carries the body as it came.
        payload: Bytes::from(vec![b'{', 0xff, (i % 256) as u8, 0, b'}']),
        origin: if i % 4 == 0 {
            Origin::Http
        } else {
            Origin::Mqtt
        },
        received_at_ms: 1_700_000_000_000 + i as i64,
    }
}

async fn next_submission(rx: &mut mpsc::Receiver<Received>) -> Received {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a submission within the wait")
        .expect("the bus is open")
}

/// Submissions reach the write path once each, in the order one node submitted them, with
/// every field intact; confirmed ones do not come back.
pub async fn submissions_arrive_once_in_order_intact(pair: Pair) {
    let mut rx = pair.bridge.take_submissions().expect("submissions");
    let sent: Vec<Submission> = (0..60).map(submission).collect();
    for s in &sent {
        pair.node.submit(s.clone()).await.expect("submitted");
    }
    for expected in &sent {
        let r = next_submission(&mut rx).await;
        match r.request {
            Request::Submission(got) => assert_eq!(&got, expected),
            other => panic!("a submission, not {other:?}"),
        }
        // Answered at once, as the write path does batch by batch.
        let receipts: Vec<String> = r.receipt.into_iter().collect();
        pair.bridge.confirm(&receipts).await.expect("confirmed");
    }
    let more = tokio::time::timeout(Duration::from_millis(2500), rx.recv()).await;
    assert!(
        more.is_err(),
        "nothing more (no redelivery of confirmed submissions): {more:?}"
    );
}

/// Submissions from several nodes at once all arrive, each node's in its own order.
pub async fn concurrent_submitters_lose_nothing(pair: Pair) {
    let mut rx = pair.bridge.take_submissions().expect("submissions");
    let (tasks, each) = (4usize, 50usize);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let bus = pair.node.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..each {
                let mut s = submission(i);
                s.received_at_ms = (t * 1000 + i) as i64;
                bus.submit(s).await.expect("submitted");
            }
        }));
    }
    let mut next_of = vec![0usize; tasks];
    let mut receipts = Vec::new();
    for _ in 0..tasks * each {
        let r = next_submission(&mut rx).await;
        receipts.extend(r.receipt);
        let Request::Submission(s) = r.request else {
            panic!("a submission")
        };
        let (t, i) = (
            s.received_at_ms as usize / 1000,
            s.received_at_ms as usize % 1000,
        );
        assert_eq!(i, next_of[t], "submitter {t}'s order");
        next_of[t] += 1;
    }
    assert_eq!(next_of, vec![each; tasks]);
    for h in handles {
        h.await.expect("submitter");
    }
    pair.bridge.confirm(&receipts).await.expect("confirmed");
}

/// Each end of a queue has one consumer.
pub async fn receivers_are_taken_once(pair: Pair) {
    let _s = pair.bridge.take_submissions().expect("submissions");
    assert!(pair.bridge.take_submissions().is_err());
    let _d = pair.node.take_deliveries().expect("deliveries");
    assert!(pair.node.take_deliveries().is_err());
    pair.node.ready().await.expect("ready");
    pair.bridge.ready().await.expect("ready");
}

/// Every kind of delivery reaches a node watching its channel, intact and in the order the
/// bridge delivered it.
pub async fn deliveries_reach_watching_nodes_intact_in_order(pair: Pair) {
    let mut rx = pair.node.take_deliveries().expect("deliveries");
    let stream = StreamId::new("s1").expect("stream id");
    let user = UserId::new("ann").expect("user id");
    pair.node.watch(Channel::Stream(stream.clone()));
    pair.node.watch(Channel::User(user.clone()));
    // Watching may take effect a moment later (a subscription): probe until one arrives.
    let probe = Delivery::Topic {
        topic: "streams/s1/presence".into(),
        payload: Bytes::from_static(b"probe"),
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    'ready: loop {
        pair.bridge.deliver(probe.clone()).await.expect("delivered");
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            if d == probe {
                break 'ready;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watching took effect"
        );
    }
    // Late probes may still be on their way.
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        assert_eq!(d, probe);
    }

    let mut sent = vec![
        Delivery::Inbox {
            user: user.clone(),
            payload: Bytes::from_static(b"{\"type\":\"ack\"}"),
        },
        Delivery::Private {
            user: user.clone(),
            topic: "streams/s1/comments".into(),
            payload: Bytes::from(vec![0u8, 1, 2, 0xff]),
        },
        Delivery::Retained {
            topic: "streams/s1/state".into(),
            payload: Bytes::from_static(b"{\"status\":\"live\"}"),
            version: 7,
        },
        Delivery::Likes {
            stream: stream.clone(),
            counts: vec![("c1".into(), 3), ("c2".into(), u64::MAX)],
        },
        Delivery::Topic {
            topic: "streams/s1/reactions".into(),
            payload: Bytes::from("{\"🔥\":2}"),
        },
    ];
    for seq in 1..=200u64 {
        sent.push(Delivery::Stream {
            stream: stream.clone(),
            event: Bytes::from(format!("{{\"seq\":{seq},\"text\":\"é {seq}\"}}")),
            seq,
            received_at_ms: 1_700_000_000_000 + seq as i64,
            keep: seq % 7 == 0,
        });
    }
    for d in &sent {
        pair.bridge.deliver(d.clone()).await.expect("delivered");
    }
    for expected in &sent {
        let got = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a delivery within the wait")
            .expect("the bus is open");
        assert_eq!(&got, expected);
    }
}

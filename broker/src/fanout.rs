//! The node's fan-out: each concrete topic with local subscribers has one broadcast channel of
//! frames; every subscribed connection holds a receiver on it and writes what arrives. A frame
//! travels as its encoded MQTT PUBLISH (QoS 0, no packet id: the same bytes for every viewer),
//! so it is encoded once per node, not once per viewer.
//!
//! Why not rumqttd's router (which did this until 2026-12): every rumqttd link reserves
//! per-link queues sized by compile-time constants (two 200-entry deques, a 100-entry cache and
//! two 100-entry ack logs, ~200 KB of address space), so an idle viewer cost ~40 KB of RSS, and
//! its filter logs and session records are never freed. Our subscriptions are already
//! concrete topics inside one stream (the gatekeeper expands filters), so the fan-out needs no
//! filter matching: a topic → channel map is the whole of it. A receiver is a cursor into the
//! topic's ring of frames (`tokio::sync::broadcast`), tens of bytes per viewer; a viewer more
//! than `mqtt.backlog_frames` behind skips ahead (counted as
//! `livecomments_deliveries_skipped_total`) and catches up over HTTP, as before.
//!
//! Retained messages (a stream's state and pin) live here too: the newest per topic, handed to
//! each new subscriber with its receiver under one lock, so a subscriber gets each retained
//! message either as the retained copy or as a frame, never both and never neither.
//!
//! Only `…/comments` topics get the full `mqtt.backlog_frames` ring (a channel's ring is
//! allocated when it is made, ~56 bytes a slot); the others carry at most a few messages a
//! second (reactions, presence) or rarely anything (state, pin) and get [`SMALL_BACKLOG`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Publish;
use rumqttc::mqttbytes::QoS;
use tokio::sync::broadcast;

/// Encodes a QoS 0 PUBLISH of `payload` on `topic`.
pub(crate) fn encode_publish(topic: &str, payload: Bytes, retain: bool) -> Bytes {
    let mut publish = Publish::from_bytes(topic, QoS::AtMostOnce, payload);
    publish.retain = retain;
    let mut out = BytesMut::with_capacity(publish.size());
    publish
        .write(&mut out)
        .expect("a QoS 0 publish always encodes");
    out.freeze()
}

/// Ring size of topics other than a stream's comments.
const SMALL_BACKLOG: usize = 64;

/// Concrete topic → its channel and retained message.
pub(crate) struct Fanout {
    topics: Mutex<HashMap<String, Topic>>,
    backlog: usize,
}

#[derive(Default)]
struct Topic {
    /// Present while someone subscribes (the ring is allocated with the channel); carries
    /// encoded PUBLISH packets.
    tx: Option<broadcast::Sender<Bytes>>,
    /// The payload (encoded with the retain flag for each new subscriber).
    retained: Option<Bytes>,
}

impl Fanout {
    /// `backlog`: frames kept per topic for subscribers that fall behind.
    pub(crate) fn new(backlog: usize) -> Fanout {
        Fanout {
            topics: Mutex::new(HashMap::new()),
            backlog: backlog.max(1),
        }
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, Topic>> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes to one concrete topic: a receiver of every frame published from now on (as
    /// encoded PUBLISH packets), and the topic's retained payload, if any, to write first.
    pub(crate) fn subscribe(&self, topic: &str) -> (broadcast::Receiver<Bytes>, Option<Bytes>) {
        let mut topics = self.topics();
        let before = topics.len();
        let t = topics.entry(topic.to_owned()).or_default();
        let rx = match &t.tx {
            Some(tx) => tx.subscribe(),
            None => {
                let backlog = if topic.ends_with("/comments") {
                    self.backlog
                } else {
                    self.backlog.min(SMALL_BACKLOG)
                };
                let (tx, rx) = broadcast::channel(backlog);
                t.tx = Some(tx);
                rx
            }
        };
        let retained = t.retained.clone();
        if topics.len() != before {
            metrics::gauge!("livecomments_fanout_topics").set(topics.len() as f64);
        }
        (rx, retained)
    }

    /// Called after a subscriber dropped its receiver (or a publish found nobody): frees the
    /// topic's channel once nobody holds one (a retained message stays). The gauge
    /// `livecomments_fanout_topics` counts topics with a channel or a retained message, so a
    /// leak shows.
    pub(crate) fn unsubscribed(&self, topic: &str) {
        let mut topics = self.topics();
        if let Some(t) = topics.get_mut(topic) {
            Self::collect(t);
            if t.tx.is_none() && t.retained.is_none() {
                topics.remove(topic);
                metrics::gauge!("livecomments_fanout_topics").set(topics.len() as f64);
            }
        }
    }

    /// Publishes a frame to the topic's current subscribers; returns how many there were.
    ///
    /// The send (which wakes every subscriber) happens outside the map's lock, so
    /// connections subscribing to other topics meanwhile do not wait on it.
    pub(crate) fn publish(&self, topic: &str, payload: Bytes) -> usize {
        let Some(tx) = self.topics().get(topic).and_then(|t| t.tx.clone()) else {
            return 0;
        };
        let n = tx.send(encode_publish(topic, payload, false)).unwrap_or(0);
        if n == 0 {
            drop(tx);
            self.unsubscribed(topic);
        }
        n
    }

    /// Replaces the topic's retained message and sends it to the current subscribers.
    pub(crate) fn retain(&self, topic: &str, payload: Bytes) {
        // Forwarded to existing subscribers without the retain flag (MQTT 3.1.1 §3.3.1.3).
        let live = encode_publish(topic, payload.clone(), false);
        let mut topics = self.topics();
        let before = topics.len();
        let t = topics.entry(topic.to_owned()).or_default();
        if let Some(tx) = &t.tx {
            // Under the lock (unlike `publish`): a subscriber gets this copy or the retained
            // one, never both. Retained messages change rarely.
            let _ = tx.send(live);
        }
        t.retained = Some(payload);
        Self::collect(t);
        if topics.len() != before {
            metrics::gauge!("livecomments_fanout_topics").set(topics.len() as f64);
        }
    }

    /// Drops a channel nobody receives from.
    fn collect(t: &mut Topic) {
        if t.tx.as_ref().is_some_and(|tx| tx.receiver_count() == 0) {
            t.tx = None;
        }
    }

    /// Topics with a channel or a retained message.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.topics().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::broadcast::error::TryRecvError;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// The payload of an encoded QoS 0 PUBLISH on `topic` (and its retain flag).
    fn payload(packet: Bytes, topic: &str) -> (Bytes, bool) {
        let mut buf = BytesMut::from(&packet[..]);
        match rumqttc::mqttbytes::v4::Packet::read(&mut buf, 1 << 20).unwrap() {
            rumqttc::mqttbytes::v4::Packet::Publish(p) => {
                assert_eq!(p.topic, topic);
                assert!(buf.is_empty(), "one packet");
                (p.payload, p.retain)
            }
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[test]
    fn frames_reach_every_subscriber_of_the_topic_only() {
        let f = Fanout::new(8);
        let (mut a, _) = f.subscribe("streams/s/comments");
        let (mut c, _) = f.subscribe("streams/s/comments");
        let (mut other, _) = f.subscribe("streams/t/comments");
        assert_eq!(f.publish("streams/s/comments", b("1")), 2);
        assert_eq!(
            payload(a.try_recv().unwrap(), "streams/s/comments"),
            (b("1"), false)
        );
        assert_eq!(
            payload(c.try_recv().unwrap(), "streams/s/comments"),
            (b("1"), false)
        );
        assert_eq!(other.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(
            f.publish("streams/u/comments", b("x")),
            0,
            "nobody subscribes"
        );
    }

    #[test]
    fn the_channel_goes_with_the_last_subscriber_and_retained_stays() {
        let f = Fanout::new(8);
        let (a, _) = f.subscribe("streams/s/comments");
        drop(a);
        f.unsubscribed("streams/s/comments");
        assert_eq!(f.len(), 0);

        f.retain("streams/s/state", b("v1"));
        let (mut a, retained) = f.subscribe("streams/s/state");
        assert_eq!(retained, Some(b("v1")));
        assert_eq!(a.try_recv(), Err(TryRecvError::Empty), "not sent twice");
        f.retain("streams/s/state", b("v2"));
        assert_eq!(
            payload(a.try_recv().unwrap(), "streams/s/state"),
            (b("v2"), false),
            "live, without the retain flag"
        );
        drop(a);
        f.unsubscribed("streams/s/state");
        assert_eq!(f.len(), 1, "the retained message outlives its subscribers");
        assert_eq!(f.subscribe("streams/s/state").1, Some(b("v2")));
    }

    #[test]
    fn one_subscriber_leaving_keeps_the_channel_for_the_others() {
        let f = Fanout::new(8);
        let (a, _) = f.subscribe("streams/s/comments");
        let (mut c, _) = f.subscribe("streams/s/comments");
        drop(a);
        f.unsubscribed("streams/s/comments");
        assert_eq!(f.publish("streams/s/comments", b("1")), 1);
        assert_eq!(
            payload(c.try_recv().unwrap(), "streams/s/comments"),
            (b("1"), false)
        );
    }

    #[test]
    fn only_comment_topics_get_the_full_backlog() {
        let f = Fanout::new(1000);
        let (mut comments, _) = f.subscribe("streams/s/comments");
        let (mut presence, _) = f.subscribe("streams/s/presence");
        for i in 0..200u8 {
            f.publish("streams/s/comments", Bytes::from(vec![i]));
            f.publish("streams/s/presence", Bytes::from(vec![i]));
        }
        assert!(comments.try_recv().is_ok(), "200 frames fit in 1000");
        assert_eq!(
            presence.try_recv(),
            Err(TryRecvError::Lagged(200 - SMALL_BACKLOG as u64))
        );
    }

    #[test]
    fn a_publish_without_receivers_frees_the_channel() {
        let f = Fanout::new(8);
        let (a, _) = f.subscribe("streams/s/comments");
        drop(a);
        assert_eq!(f.publish("streams/s/comments", b("1")), 0);
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn a_subscriber_further_behind_than_the_backlog_skips_ahead() {
        let f = Fanout::new(4);
        let (mut a, _) = f.subscribe("t");
        for i in 0..10u8 {
            f.publish("t", Bytes::from(vec![i]));
        }
        assert_eq!(a.try_recv(), Err(TryRecvError::Lagged(6)));
        assert_eq!(
            payload(a.try_recv().unwrap(), "t").0,
            Bytes::from(vec![6u8])
        );
    }
}

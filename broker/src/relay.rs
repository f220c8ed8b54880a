//! From the bus to local clients.
//!
//! Stream events are coalesced per stream for `delivery.batch_window_ms` and published as one
//! frame on `streams/{stream}/comments`, which [`Fanout`] hands to the topic's subscribers.
//! The first event after a quiet window goes out at once (with whatever else arrived in the
//! same instant), so a lone comment is not delayed; under load a stream gets one frame per
//! window. A stream with many viewers on the node gets a longer window (viewers /
//! `delivery.max_writes_per_s` seconds), so its frames stay within the writes the node makes. Inbox answers and
//! private frames go to the registry, retained and plain messages straight to the fan-out,
//! like counts to the reactions aggregator.
//!
//! **Sampling**: when a stream's events arrive faster than `delivery.sampling_threshold_per_s`,
//! the relay keeps a fraction `threshold / incoming` of them (events marked `keep` —
//! moderation, the broadcaster's and moderators' comments, replies — always stay) and puts a
//! `{"type":"sampling","rate":…,"incoming_per_s":…}` notice into the frame when the fraction
//! changes; `"rate":1.0` announces the end. Storage, replay and catch-up are not sampled.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::bus::Delivery;
use wire::event::encode_frame;
use wire::time::now_ms;
use wire::{topics, StreamId};

use crate::fanout::Fanout;
use crate::reactions::Flusher;
use crate::registry::Registry;
use crate::DeliveryConfig;

/// Deliveries taken from the queue in one go before frames are decided.
const DRAIN: usize = 4096;
/// Bytes of `{"v":1,"events":[]}` around the events.
const FRAME_OVERHEAD: usize = 19;

struct Pending {
    events: Vec<Bytes>,
    received_at_ms: Vec<i64>,
    /// When this stream's last frame went out.
    last_flush: Option<Instant>,
    /// Set while a flush is scheduled.
    due: Option<Instant>,
    /// Events counted since `bucket_start`, to measure the incoming rate.
    bucket_start: Instant,
    bucket_count: u32,
    /// Fraction of droppable events kept (1.0: no sampling).
    keep_fraction: f64,
    /// Sampling is on: from a second above the threshold until one below 80 % of it.
    sampling: bool,
    order: Order,
}

/// A stream's events in `seq` order.
#[derive(Default)]
struct Order {
    /// The `seq` expected next (unknown until the first event).
    next: Option<u64>,
    /// Events that arrived ahead of a missing `seq`, by `seq`.
    held: BTreeMap<u64, Admitted>,
    /// When the held events go out even if the gap is not filled.
    hold_until: Option<Instant>,
}

impl Order {
    /// Takes an event; returns what may go out now, in order, and the deadline of a hold
    /// that this event started. A late or repeated `seq` goes out at once: delivering late
    /// beats dropping.
    fn put(
        &mut self,
        seq: u64,
        a: Admitted,
        now: Instant,
        wait: Duration,
    ) -> (Vec<Admitted>, Option<Instant>) {
        match self.next {
            Some(next) if seq > next => {
                self.held.insert(seq, a);
                if self.hold_until.is_some() {
                    return (Vec::new(), None);
                }
                let until = now + wait;
                self.hold_until = Some(until);
                return (Vec::new(), Some(until));
            }
            Some(next) if seq < next => return (vec![a], None),
            _ => self.next = Some(seq + 1),
        }
        let mut out = vec![a];
        while let Some(next) = self.next {
            let Some(a) = self.held.remove(&next) else {
                break;
            };
            self.next = Some(next + 1);
            out.push(a);
        }
        if self.held.is_empty() {
            self.hold_until = None;
        }
        (out, None)
    }

    /// Gives up waiting for the gap: everything held, in order.
    fn release(&mut self) -> Vec<Admitted> {
        self.hold_until = None;
        let held = std::mem::take(&mut self.held);
        if let Some((&last, _)) = held.last_key_value() {
            self.next = Some(last + 1);
        }
        held.into_values().collect()
    }
}

/// A stream event, in order, before sampling.
struct Admitted {
    event: Bytes,
    received_at_ms: i64,
    keep: bool,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            events: Vec::new(),
            received_at_ms: Vec::new(),
            last_flush: None,
            due: None,
            bucket_start: Instant::now(),
            bucket_count: 0,
            keep_fraction: 1.0,
            sampling: false,
            order: Order::default(),
        }
    }
}

/// Sampling decisions are remade once per second of measured traffic.
const RATE_BUCKET: Duration = Duration::from_secs(1);

struct Relay {
    fanout: Arc<Fanout>,
    registry: Arc<Registry>,
    reactions: Arc<Flusher>,
    sampling_threshold: f64,
    window: Duration,
    /// Local viewers per stream, for the window of a big audience.
    viewers: Arc<crate::presence::Viewers>,
    max_writes_per_s: u64,
    max_frame_events: usize,
    max_frame_bytes: usize,
    streams: HashMap<StreamId, Pending>,
    timers: BinaryHeap<Reverse<(Instant, StreamId)>>,
    touched: Vec<StreamId>,
    /// The version of the last retained message published per topic.
    retained_versions: HashMap<String, u64>,
    reorder_wait: Duration,
    /// When streams' held events are due (see `Pending::hold_until`).
    gap_timers: BinaryHeap<Reverse<(Instant, StreamId)>>,
}

/// Where the relay's output goes, and what it reads about the node.
pub(crate) struct RelayTo {
    pub fanout: Arc<Fanout>,
    pub registry: Arc<Registry>,
    pub reactions: Arc<Flusher>,
    pub viewers: Arc<crate::presence::Viewers>,
}

pub(crate) async fn run(
    mut deliveries: mpsc::Receiver<Delivery>,
    mut local: mpsc::Receiver<crate::connection::Local>,
    to: RelayTo,
    config: DeliveryConfig,
    stop: CancellationToken,
) {
    let RelayTo {
        fanout,
        registry,
        reactions,
        viewers,
    } = to;
    let mut relay = Relay {
        fanout,
        registry,
        reactions,
        sampling_threshold: f64::from(config.sampling_threshold_per_s),
        window: Duration::from_millis(config.batch_window_ms),
        viewers,
        max_writes_per_s: config.max_writes_per_s,
        max_frame_events: config.max_frame_events,
        max_frame_bytes: config.max_frame_bytes,
        streams: HashMap::new(),
        timers: BinaryHeap::new(),
        touched: Vec::new(),
        retained_versions: HashMap::new(),
        reorder_wait: Duration::from_millis(config.reorder_wait_ms),
        gap_timers: BinaryHeap::new(),
    };
    let mut rates = tokio::time::interval(RATE_BUCKET);
    rates.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_due = [relay.timers.peek(), relay.gap_timers.peek()]
            .into_iter()
            .flatten()
            .map(|Reverse((at, _))| *at)
            .min();
        tokio::select! {
            _ = rates.tick() => {
                // Ends sampling of streams that went quiet.
                relay.remeasure_all();
                relay.decide();
            }
            d = deliveries.recv() => {
                let Some(d) = d else { break };
                relay.take(d);
                for _ in 0..DRAIN {
                    match deliveries.try_recv() {
                        Ok(d) => relay.take(d),
                        Err(_) => break,
                    }
                }
                relay.decide();
            }
            Some(l) = local.recv() => match l {
                crate::connection::Local::Deliver(d) => {
                    relay.take(d);
                    relay.decide();
                }
                crate::connection::Local::Barrier(done) => {
                    let _ = done.send(());
                }
            },
            _ = sleep_until_opt(next_due) => relay.flush_due(),
            _ = stop.cancelled() => {
                // Publish everything already queued (the like counts from the drained write
                // path among it), the last reactions window, then stop. With a shared bus the
                // last window reaches the other nodes; this node's clients are closing.
                while let Ok(d) = deliveries.try_recv() {
                    relay.take(d);
                }
                relay.release_all_held();
                relay.reactions.flush().await;
                while let Ok(d) = deliveries.try_recv() {
                    relay.take(d);
                }
                relay.flush_all();
                break;
            }
        }
    }
    tracing::info!("relay flushed");
}

fn push(p: &mut Pending, touched: &mut Vec<StreamId>, stream: &StreamId, event: Bytes, at: i64) {
    if p.events.is_empty() {
        touched.push(stream.clone());
    }
    p.events.push(event);
    p.received_at_ms.push(at);
}

/// Closes the rate bucket once a second has passed and decides the fraction to keep. Returns
/// the sampling notice to send when the fraction changed noticeably.
fn remeasure(p: &mut Pending, threshold: f64, now: Instant) -> Option<Bytes> {
    let elapsed = now.duration_since(p.bucket_start);
    if threshold <= 0.0 || elapsed < RATE_BUCKET {
        return None;
    }
    let incoming = f64::from(p.bucket_count) / elapsed.as_secs_f64();
    p.bucket_count = 0;
    p.bucket_start = now;
    let (before, was_sampling) = (p.keep_fraction, p.sampling);
    // On above the threshold, off a little below it, so it does not flap; while on, the
    // fraction follows the rate (an event rate between 80 % and 100 % keeps everything).
    p.sampling = incoming > threshold || (p.sampling && incoming >= threshold * 0.8);
    p.keep_fraction = if p.sampling {
        (threshold / incoming).min(1.0)
    } else {
        1.0
    };
    let changed = (p.keep_fraction - before).abs() > 0.05 || was_sampling != p.sampling;
    changed.then(|| {
        let rate = (p.keep_fraction * 100.0).round() / 100.0;
        Bytes::from(format!(
            r#"{{"type":"sampling","rate":{rate},"incoming_per_s":{}}}"#,
            incoming.round()
        ))
    })
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Relay {
    fn take(&mut self, d: Delivery) {
        match d {
            Delivery::Stream {
                stream,
                event,
                seq,
                received_at_ms,
                keep,
            } => {
                let a = Admitted {
                    event,
                    received_at_ms,
                    keep,
                };
                self.order(stream, seq, a);
            }
            Delivery::Topic { topic, payload } => {
                self.fanout.publish(&topic, payload);
            }
            Delivery::Likes { stream, counts } => {
                self.reactions.reactions.note_likes(stream, counts)
            }
            Delivery::Inbox { user, payload } => {
                self.registry
                    .deliver(&user, &topics::inbox(&user), &payload);
            }
            Delivery::Private {
                user,
                topic,
                payload,
            } => {
                self.registry.deliver(&user, &topic, &payload);
            }
            Delivery::Retained {
                topic,
                payload,
                version,
            } => {
                if payload.is_empty() {
                    // An empty retained payload would delete the retained message.
                    tracing::warn!(%topic, "refusing to publish an empty retained message");
                    return;
                }
                // Equal versions are the same record (a node's own bootstrap and the bus).
                let last = self.retained_versions.entry(topic.clone()).or_default();
                if version <= *last && version > 0 {
                    tracing::debug!(%topic, version, last = *last, "dropping an older retained message");
                    return;
                }
                *last = version;
                self.fanout.retain(&topic, payload);
            }
        }
    }

    /// Re-measures every stream's rate (the rate tick), so sampling also ends when events
    /// stop altogether.
    fn remeasure_all(&mut self) {
        if self.sampling_threshold <= 0.0 {
            return;
        }
        let now = Instant::now();
        let threshold = self.sampling_threshold;
        for (stream, p) in self.streams.iter_mut() {
            if let Some(notice) = remeasure(p, threshold, now) {
                push(p, &mut self.touched, stream, notice, wire::time::now_ms());
            }
        }
    }

    /// Puts a stream event in `seq` order and admits what may go out.
    fn order(&mut self, stream: StreamId, seq: u64, a: Admitted) {
        let wait = self.reorder_wait;
        let p = self.streams.entry(stream.clone()).or_default();
        let (out, hold) = p.order.put(seq, a, Instant::now(), wait);
        if let Some(until) = hold {
            metrics::counter!("livecomments_relay_reordered_total").increment(1);
            self.gap_timers.push(Reverse((until, stream.clone())));
        }
        for a in out {
            self.admit(&stream, a);
        }
    }

    /// Gives up waiting for a gap: admits everything held, in order.
    fn release_held(&mut self, stream: &StreamId) {
        let Some(p) = self.streams.get_mut(stream) else {
            return;
        };
        let out = p.order.release();
        if !out.is_empty() {
            metrics::counter!("livecomments_relay_gaps_total").increment(1);
        }
        for a in out {
            self.admit(stream, a);
        }
    }

    fn release_all_held(&mut self) {
        let streams: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, p)| !p.order.held.is_empty())
            .map(|(s, _)| s.clone())
            .collect();
        for s in streams {
            self.release_held(&s);
        }
    }

    /// Sampling, then the stream's next frame.
    fn admit(&mut self, stream: &StreamId, a: Admitted) {
        let threshold = self.sampling_threshold;
        let Some(p) = self.streams.get_mut(stream) else {
            return;
        };
        p.bucket_count += 1;
        if let Some(notice) = remeasure(p, threshold, Instant::now()) {
            push(p, &mut self.touched, stream, notice, a.received_at_ms);
        }
        if !a.keep && p.keep_fraction < 1.0 && rand::random::<f64>() >= p.keep_fraction {
            metrics::counter!("livecomments_sampled_out_total").increment(1);
            return;
        }
        push(p, &mut self.touched, stream, a.event, a.received_at_ms);
    }

    /// The batch window of `stream`: `batch_window_ms`, or longer for an audience so big that
    /// one frame per window would exceed `max_writes_per_s` socket writes.
    fn window_for(&self, stream: &StreamId) -> Duration {
        audience_window(
            self.window,
            self.viewers.count(stream),
            self.max_writes_per_s,
        )
    }

    /// For each stream that got events: flush now if it was quiet, else schedule.
    fn decide(&mut self) {
        let now = Instant::now();
        for stream in std::mem::take(&mut self.touched) {
            let window = self.window_for(&stream);
            let Some(p) = self.streams.get_mut(&stream) else {
                continue;
            };
            if p.due.is_some() && p.events.len() < self.max_frame_events {
                continue;
            }
            let quiet = p.last_flush.is_none_or(|t| now >= t + window);
            if quiet || p.events.len() >= self.max_frame_events {
                self.flush(&stream);
            } else if let Some(t) = p.last_flush {
                let due = t + window;
                p.due = Some(due);
                self.timers.push(Reverse((due, stream)));
            }
        }
    }

    fn flush_due(&mut self) {
        let now = Instant::now();
        let mut released = false;
        while let Some(Reverse((at, _))) = self.gap_timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, stream))) = self.gap_timers.pop() else {
                break;
            };
            if self.streams.get(&stream).and_then(|p| p.order.hold_until) == Some(at) {
                self.release_held(&stream);
                released = true;
            }
        }
        if released {
            self.decide();
        }
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, stream))) = self.timers.pop() else {
                break;
            };
            // Skip timers made obsolete by an early flush.
            if self.streams.get(&stream).and_then(|p| p.due) == Some(at) {
                self.flush(&stream);
            }
        }
        // Forget streams that have been quiet for a while.
        if self.streams.len() > 1024 {
            let window = self.window;
            self.streams.retain(|_, p| {
                !p.events.is_empty()
                    || !p.order.held.is_empty()
                    || p.last_flush.is_some_and(|t| now < t + window * 100)
            });
        }
    }

    fn flush_all(&mut self) {
        let streams: Vec<StreamId> = self.streams.keys().cloned().collect();
        for s in streams {
            self.flush(&s);
        }
    }

    fn flush(&mut self, stream: &StreamId) {
        let Some(p) = self.streams.get_mut(stream) else {
            return;
        };
        p.due = None;
        if p.events.is_empty() {
            return;
        }
        p.last_flush = Some(Instant::now());
        let events = std::mem::take(&mut p.events);
        let received = std::mem::take(&mut p.received_at_ms);
        let now = now_ms();
        let topic = topics::comments(stream);
        let mut start = 0;
        while start < events.len() {
            // Fill a frame up to the event and byte caps (at least one event per frame).
            let mut end = start + 1;
            let mut bytes = FRAME_OVERHEAD + events[start].len();
            while end < events.len()
                && end - start < self.max_frame_events
                && bytes + 1 + events[end].len() <= self.max_frame_bytes
            {
                bytes += 1 + events[end].len();
                end += 1;
            }
            let frame = encode_frame(&events[start..end]);
            start = end;
            self.fanout.publish(&topic, frame);
            metrics::counter!("livecomments_frames_published_total").increment(1);
        }
        metrics::counter!("livecomments_events_published_total").increment(events.len() as u64);
        let h = metrics::histogram!("livecomments_post_to_publish_seconds");
        for r in received {
            h.record((now - r).max(0) as f64 / 1000.0);
        }
    }
}

/// `base`, or `viewers / max_writes_per_s` seconds when that is longer (0: no limit).
fn audience_window(base: Duration, viewers: u64, max_writes_per_s: u64) -> Duration {
    if max_writes_per_s == 0 {
        return base;
    }
    base.max(Duration::from_secs_f64(
        viewers as f64 / max_writes_per_s as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_audience_gets_a_longer_window() {
        let base = Duration::from_millis(25);
        assert_eq!(audience_window(base, 1_000, 200_000), base);
        assert_eq!(
            audience_window(base, 10_000, 200_000),
            Duration::from_millis(50)
        );
        assert_eq!(
            audience_window(base, 19_000, 200_000),
            Duration::from_millis(95)
        );
        assert_eq!(audience_window(base, 19_000, 0), base, "0 turns it off");
    }

    /// One second of `rate` events into `p`, returning the notice's rate if one was sent.
    fn second(p: &mut Pending, rate: u32, threshold: f64) -> Option<String> {
        p.bucket_start = Instant::now() - RATE_BUCKET;
        p.bucket_count = rate;
        remeasure(p, threshold, Instant::now()).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    fn ev(n: u64) -> Admitted {
        Admitted {
            event: Bytes::from(n.to_string()),
            received_at_ms: 0,
            keep: false,
        }
    }

    fn seqs(out: &[Admitted]) -> Vec<String> {
        out.iter()
            .map(|a| String::from_utf8(a.event.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn events_go_out_in_seq_order_and_a_gap_waits_only_so_long() {
        let (now, wait) = (Instant::now(), Duration::from_millis(100));
        let mut o = Order::default();
        assert_eq!(
            seqs(&o.put(5, ev(5), now, wait).0),
            ["5"],
            "the first sets the start"
        );
        let (out, hold) = o.put(7, ev(7), now, wait);
        assert!(out.is_empty());
        assert_eq!(hold, Some(now + wait), "7 waits for 6");
        let (out, hold) = o.put(8, ev(8), now, wait);
        assert!(out.is_empty() && hold.is_none(), "one hold at a time");
        assert_eq!(seqs(&o.put(6, ev(6), now, wait).0), ["6", "7", "8"]);
        assert!(o.hold_until.is_none());
        // A gap that is never filled (a failed write): released in order after the wait.
        o.put(11, ev(11), now, wait);
        o.put(10, ev(10), now, wait);
        assert_eq!(seqs(&o.release()), ["10", "11"]);
        assert_eq!(seqs(&o.put(12, ev(12), now, wait).0), ["12"]);
        // Late and repeated events still go out.
        assert_eq!(seqs(&o.put(9, ev(9), now, wait).0), ["9"]);
    }

    #[test]
    fn sampling_follows_the_rate_and_ends_below_the_band() {
        let mut p = Pending::default();
        assert!(second(&mut p, 40, 50.0).is_none());
        assert_eq!(p.keep_fraction, 1.0);
        let n = second(&mut p, 250, 50.0).expect("sampling starts");
        assert!(n.contains(r#""rate":0.2"#), "{n}");
        // Inside the band (80-100 % of the threshold): everything is kept, sampling stays on.
        second(&mut p, 45, 50.0);
        assert_eq!(p.keep_fraction, 1.0);
        assert!(p.sampling);
        second(&mut p, 100, 50.0);
        assert!((p.keep_fraction - 0.5).abs() < 0.01);
        let n = second(&mut p, 30, 50.0).expect("sampling ends");
        assert!(n.contains(r#""rate":1"#), "{n}");
        assert!(!p.sampling);
    }
}

//! From the bus to local clients.
//!
//! Stream events are coalesced per stream for `delivery.batch_window_ms` and published as one
//! frame on `streams/{stream}/comments`, which the router fans out. The first event after a
//! quiet window goes out at once (with whatever else arrived in the same instant), so a lone
//! comment is not delayed; under load a stream gets one frame per window. Inbox answers go to
//! the registry, retained messages straight to the router.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet as RPacket, Publish as RPublish};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::bus::Delivery;
use wire::event::encode_frame;
use wire::time::now_ms;
use wire::{topics, StreamId};

use crate::registry::Registry;
use crate::router;
use crate::DeliveryConfig;

/// Deliveries taken from the queue in one go before frames are decided.
const DRAIN: usize = 4096;
/// Bytes of `{"v":1,"events":[]}` around the events.
const FRAME_OVERHEAD: usize = 19;

#[derive(Default)]
struct Pending {
    events: Vec<Bytes>,
    received_at_ms: Vec<i64>,
    /// When this stream's last frame went out.
    last_flush: Option<Instant>,
    /// Set while a flush is scheduled.
    due: Option<Instant>,
}

struct Relay {
    link: LinkTx,
    registry: Arc<Registry>,
    window: Duration,
    max_frame_events: usize,
    max_frame_bytes: usize,
    streams: HashMap<StreamId, Pending>,
    timers: BinaryHeap<Reverse<(Instant, StreamId)>>,
    touched: Vec<StreamId>,
}

pub(crate) async fn run(
    mut deliveries: mpsc::Receiver<Delivery>,
    (link, link_rx): (LinkTx, LinkRx),
    registry: Arc<Registry>,
    config: DeliveryConfig,
    stop: CancellationToken,
) {
    // Nothing is expected back on the relay's link; keep it drained so the router never
    // stalls on it.
    let drain = tokio::spawn(drain_link(link_rx));
    let mut relay = Relay {
        link,
        registry,
        window: Duration::from_millis(config.batch_window_ms),
        max_frame_events: config.max_frame_events,
        max_frame_bytes: config.max_frame_bytes,
        streams: HashMap::new(),
        timers: BinaryHeap::new(),
        touched: Vec::new(),
    };
    loop {
        let next_due = relay.timers.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
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
            _ = sleep_until_opt(next_due) => relay.flush_due(),
            _ = stop.cancelled() => {
                // Publish everything already queued, then stop.
                while let Ok(d) = deliveries.try_recv() {
                    relay.take(d);
                }
                relay.flush_all();
                break;
            }
        }
    }
    drain.abort();
    tracing::info!("relay flushed");
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn drain_link(mut rx: LinkRx) {
    while let Ok(n) = rx.next().await {
        tracing::trace!(?n, "relay link notification");
    }
}

impl Relay {
    fn take(&mut self, d: Delivery) {
        match d {
            Delivery::Stream {
                stream,
                event,
                received_at_ms,
            } => {
                let p = self.streams.entry(stream.clone()).or_default();
                if p.events.is_empty() {
                    self.touched.push(stream);
                }
                p.events.push(event);
                p.received_at_ms.push(received_at_ms);
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
            Delivery::Retained { topic, payload } => {
                if payload.is_empty() {
                    // An empty retained payload would delete the retained message.
                    tracing::warn!(%topic, "refusing to publish an empty retained message");
                    return;
                }
                // A full packet (unlike `publish`) keeps the retain flag.
                let publish = RPublish::new(Bytes::from(topic), payload, true);
                let packet = RPacket::Publish(publish, None);
                if let Err(e) = router::send_packets(&mut self.link, vec![packet]) {
                    tracing::error!(error = %e, "publishing a retained message failed");
                }
            }
        }
    }

    /// For each stream that got events: flush now if it was quiet, else schedule.
    fn decide(&mut self) {
        let now = Instant::now();
        for stream in std::mem::take(&mut self.touched) {
            let Some(p) = self.streams.get_mut(&stream) else {
                continue;
            };
            if p.due.is_some() && p.events.len() < self.max_frame_events {
                continue;
            }
            let quiet = p.last_flush.is_none_or(|t| now >= t + self.window);
            if quiet || p.events.len() >= self.max_frame_events {
                self.flush(&stream);
            } else if let Some(t) = p.last_flush {
                let due = t + self.window;
                p.due = Some(due);
                self.timers.push(Reverse((due, stream)));
            }
        }
    }

    fn flush_due(&mut self) {
        let now = Instant::now();
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
                !p.events.is_empty() || p.last_flush.is_some_and(|t| now < t + window * 100)
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
            if let Err(e) = router::publish(&mut self.link, topic.clone(), frame) {
                tracing::error!(error = %e, "publishing a frame failed");
                return;
            }
            metrics::counter!("livecomments_frames_published_total").increment(1);
        }
        metrics::counter!("livecomments_events_published_total").increment(events.len() as u64);
        let h = metrics::histogram!("livecomments_post_to_publish_seconds");
        for r in received {
            h.record((now - r).max(0) as f64 / 1000.0);
        }
    }
}

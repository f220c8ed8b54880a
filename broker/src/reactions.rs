//! Emoji reactions: counted on the node, flushed once per window.
//!
//! A reaction never travels alone: connections add it to the node's per-stream counts, and
//! every `reactions.window_ms` the node adds the window's counts to the stream's stored
//! totals and publishes one `streams/{stream}/reactions` frame
//! `{"window_ms":500,"counts":{…},"totals":{…},"likes":{…}}` — nothing while idle. Likes of
//! comments (`comment_id` with the like emoji) need a durable once-per-user set, so they go to
//! the write path; it sends back the new like counts, which ride along in the next frame.
//!
//! In a cluster a node adds each window's counts to the shared window in Redis and publishes
//! to its own viewers, once per window, the whole cluster's counts of the windows that closed
//! since its last frame (see [`wire::reactions`]): one frame per window whichever node a viewer
//! is on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::bus::{Bus, Delivery};
use wire::reactions::SharedReactions;
use wire::store::Store;
use wire::{topics, StreamId, UserId};

use crate::ReactionsConfig;

/// `{"emoji": "🔥"}` or `{"emoji": "👍", "comment_id": "...", "remove": false}`
#[derive(Deserialize)]
struct Body {
    emoji: String,
    #[serde(default)]
    comment_id: Option<String>,
}

/// What became of a reaction.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reacted {
    Counted,
    /// A like or unlike: forward the payload to the write path.
    Like,
    Dropped(&'static str),
}

type Counts = HashMap<StreamId, HashMap<String, u64>>;
type LikeCounts = HashMap<StreamId, BTreeMap<String, u64>>;

pub(crate) struct Reactions {
    allowed: HashSet<String>,
    like_emoji: String,
    limiter: Option<DefaultKeyedRateLimiter<UserId>>,
    window: Mutex<Counts>,
    likes: Mutex<LikeCounts>,
}

impl Reactions {
    pub(crate) fn new(config: &ReactionsConfig) -> Reactions {
        Reactions {
            allowed: config.allowed.iter().cloned().collect(),
            like_emoji: config.like_emoji.clone(),
            limiter: NonZeroU32::new(config.per_user_per_second)
                .map(|n| DefaultKeyedRateLimiter::keyed(Quota::per_second(n))),
            window: Mutex::new(HashMap::new()),
            likes: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one reaction from `user` on `stream`.
    pub(crate) fn react(&self, user: &UserId, stream: &StreamId, payload: &[u8]) -> Reacted {
        let Ok(body) = serde_json::from_slice::<Body>(payload) else {
            return self.drop_it("invalid");
        };
        if !self.allowed.contains(&body.emoji) {
            return self.drop_it("emoji");
        }
        if self
            .limiter
            .as_ref()
            .is_some_and(|l| l.check_key(user).is_err())
        {
            return self.drop_it("rate");
        }
        if body.comment_id.is_some() {
            if body.emoji != self.like_emoji {
                return self.drop_it("emoji");
            }
            return Reacted::Like;
        }
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        *w.entry(stream.clone())
            .or_default()
            .entry(body.emoji)
            .or_default() += 1;
        metrics::counter!("livecomments_reactions_total").increment(1);
        Reacted::Counted
    }

    fn drop_it(&self, reason: &'static str) -> Reacted {
        metrics::counter!("livecomments_reactions_dropped_total", "reason" => reason).increment(1);
        Reacted::Dropped(reason)
    }

    /// New like counts from the write path, for the next frame.
    pub(crate) fn note_likes(&self, stream: StreamId, counts: Vec<(String, u64)>) {
        let mut l = self.likes.lock().unwrap_or_else(PoisonError::into_inner);
        l.entry(stream).or_default().extend(counts);
    }

    fn take(&self) -> (Counts, LikeCounts) {
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(PoisonError::into_inner));
        let l = std::mem::take(&mut *self.likes.lock().unwrap_or_else(PoisonError::into_inner));
        (w, l)
    }

    fn forget_idle_users(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Puts a window that could not be stored back, to go out with the next one.
    fn restore(
        &self,
        stream: &StreamId,
        counts: BTreeMap<String, u64>,
        likes: Option<BTreeMap<String, u64>>,
    ) {
        if !counts.is_empty() {
            let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = w.entry(stream.clone()).or_default();
            for (emoji, n) in counts {
                *entry.entry(emoji).or_default() += n;
            }
        }
        if let Some(older) = likes {
            let mut l = self.likes.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = l.entry(stream.clone()).or_default();
            for (comment, n) in older {
                // A newer count that arrived meanwhile wins.
                entry.entry(comment).or_insert(n);
            }
        }
    }
}

/// Stores and publishes the windows of a [`Reactions`].
pub(crate) struct Flusher {
    pub(crate) reactions: Arc<Reactions>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    window_ms: u64,
    /// One flush at a time: the relay's final flush waits for a periodic one in progress, so
    /// that one's frames are on the bus before the relay drains it for the last time.
    running: tokio::sync::Mutex<()>,
    /// The cluster's windows, when there is a cluster.
    shared: Option<Shared>,
}

/// What a node of a cluster needs to publish the cluster's windows to its own viewers.
pub(crate) struct Shared {
    pub windows: Arc<dyn SharedReactions>,
    pub viewers: Arc<crate::presence::Viewers>,
    pub local: mpsc::Sender<crate::connection::Local>,
    /// The last window published per stream.
    pub published: Mutex<HashMap<StreamId, u64>>,
}

/// At most this many closed windows are summed into one frame (a node that fell behind skips
/// older ones rather than flooding its viewers).
const MAX_CATCH_UP_WINDOWS: u64 = 4;

impl Flusher {
    pub(crate) fn new(
        reactions: Arc<Reactions>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        window_ms: u64,
        shared: Option<Shared>,
    ) -> Flusher {
        Flusher {
            reactions,
            store,
            bus,
            window_ms,
            running: tokio::sync::Mutex::new(()),
            shared,
        }
    }

    /// Adds the window's counts to the stored totals and publishes one frame per stream that
    /// had reactions or new like counts. A window whose totals could not be stored is kept
    /// for the next flush.
    pub(crate) async fn flush(&self) {
        let _one = self.running.lock().await;
        if let Some(shared) = &self.shared {
            return self.flush_shared(shared).await;
        }
        let (counts, mut likes) = self.reactions.take();
        let mut streams: Vec<StreamId> = counts.keys().chain(likes.keys()).cloned().collect();
        streams.sort();
        streams.dedup();
        for stream in streams {
            let window: BTreeMap<String, u64> = counts
                .get(&stream)
                .map(|c| c.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default();
            let pairs: Vec<(String, u64)> = window.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let totals = if pairs.is_empty() {
                self.store.reaction_totals(&stream).await
            } else {
                self.store.add_reactions(&stream, &pairs).await
            };
            let totals: BTreeMap<String, u64> = match totals {
                Ok(t) => t.into_iter().collect(),
                Err(e) => {
                    tracing::error!(error = %e, %stream, "storing reaction totals failed; kept for the next window");
                    self.reactions
                        .restore(&stream, window, likes.remove(&stream));
                    continue;
                }
            };
            let mut frame = serde_json::json!({
                "window_ms": self.window_ms,
                "counts": window,
                "totals": totals,
            });
            if let Some(l) = likes.remove(&stream) {
                frame["likes"] = serde_json::json!(l);
            }
            let delivery = Delivery::Topic {
                topic: topics::reactions(&stream),
                payload: Bytes::from(frame.to_string()),
            };
            if let Err(e) = self.bus.deliver(delivery).await {
                tracing::warn!(error = %e, "publishing reactions failed");
            }
        }
    }
}

impl Flusher {
    /// The cluster's flush: store this node's counts in the totals and the shared window,
    /// then publish the closed windows' sums to this node's viewers.
    async fn flush_shared(&self, shared: &Shared) {
        let (counts, mut likes) = self.reactions.take();
        let window = wire::time::now_ms().max(0) as u64 / self.window_ms;
        for (stream, c) in counts {
            let pairs: Vec<(String, u64)> = c.into_iter().collect();
            if let Err(e) = self.store.add_reactions(&stream, &pairs).await {
                tracing::error!(error = %e, %stream, "storing reaction totals failed; kept for the next window");
                self.reactions
                    .restore(&stream, pairs.into_iter().collect(), likes.remove(&stream));
                continue;
            }
            if let Err(e) = shared.windows.add(&stream, window, &pairs).await {
                // The store's totals have them; the shared copy misses them until its next
                // seed (at most 10 minutes), and this window's live counts miss them.
                tracing::warn!(error = %e, %stream, "sharing a reaction window failed");
            }
        }
        let mut streams = shared.viewers.watched();
        streams.extend(likes.keys().cloned());
        streams.sort();
        streams.dedup();
        let last_closed = window.saturating_sub(1);
        for stream in streams {
            let first = {
                let published = shared
                    .published
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                published.get(&stream).map_or(last_closed, |p| p + 1)
            }
            .max(last_closed.saturating_sub(MAX_CATCH_UP_WINDOWS - 1));
            let sum = if first <= last_closed {
                match shared.windows.sum(&stream, first, last_closed).await {
                    Ok(sum) => sum,
                    Err(e) => {
                        tracing::warn!(error = %e, %stream, "reading the cluster's reactions failed");
                        continue;
                    }
                }
            } else {
                BTreeMap::new()
            };
            shared
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(stream.clone(), last_closed);
            let new_likes = likes.remove(&stream);
            if sum.is_empty() && new_likes.is_none() {
                continue;
            }
            let totals = wire::reactions::totals(Some(&*shared.windows), &*self.store, &stream);
            let totals: BTreeMap<String, u64> = match totals.await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, %stream, "reading reaction totals failed");
                    continue;
                }
            };
            let mut frame = serde_json::json!({
                "window_ms": self.window_ms,
                "counts": sum,
                "totals": totals,
            });
            if let Some(l) = new_likes {
                frame["likes"] = serde_json::json!(l);
            }
            let delivery = Delivery::Topic {
                topic: topics::reactions(&stream),
                payload: Bytes::from(frame.to_string()),
            };
            // Never wait on the relay from its own final flush: drop the frame instead.
            if shared
                .local
                .try_send(crate::connection::Local::Deliver(delivery))
                .is_err()
            {
                tracing::warn!(%stream, "the relay is busy; a reactions frame was dropped");
            }
        }
    }
}

/// Flushes the window every `window_ms` until `stop`. The last flush is the relay's, after
/// the write path has drained (its like counts are in it).
pub(crate) async fn run(flusher: Arc<Flusher>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(flusher.window_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        flusher.flush().await;
        rounds += 1;
        if rounds % 120 == 0 {
            flusher.reactions.forget_idle_users();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(limit: u32) -> ReactionsConfig {
        ReactionsConfig {
            allowed: vec!["🔥".into(), "👍".into()],
            like_emoji: "👍".into(),
            window_ms: 500,
            per_user_per_second: limit,
        }
    }

    #[test]
    fn counts_drops_and_likes() {
        let r = Reactions::new(&cfg(3));
        let (u, s) = (UserId::new("u").unwrap(), StreamId::new("s").unwrap());
        assert_eq!(
            r.react(&u, &s, r#"{"emoji":"🔥"}"#.as_bytes()),
            Reacted::Counted
        );
        assert_eq!(
            r.react(&u, &s, r#"{"emoji":"💩"}"#.as_bytes()),
            Reacted::Dropped("emoji")
        );
        assert_eq!(r.react(&u, &s, b"nope"), Reacted::Dropped("invalid"));
        assert_eq!(
            r.react(&u, &s, r#"{"emoji":"👍","comment_id":"c"}"#.as_bytes()),
            Reacted::Like
        );
        assert_eq!(
            r.react(&u, &s, r#"{"emoji":"🔥"}"#.as_bytes()),
            Reacted::Counted
        );
        assert_eq!(
            r.react(&u, &s, r#"{"emoji":"🔥"}"#.as_bytes()),
            Reacted::Dropped("rate")
        );
        let v = UserId::new("v").unwrap();
        assert_eq!(
            r.react(&v, &s, r#"{"emoji":"🔥"}"#.as_bytes()),
            Reacted::Counted
        );
        let (counts, _) = r.take();
        assert_eq!(counts[&s]["🔥"], 3);
        assert!(r.take().0.is_empty(), "a window starts empty");
    }
}

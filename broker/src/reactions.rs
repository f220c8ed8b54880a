//! Emoji reactions: counted on the node, flushed once per window.
//!
//! A reaction never travels alone: connections add it to the node's per-stream counts, and
//! every `reactions.window_ms` the node adds the window's counts to the stream's stored
//! totals and publishes one `streams/{stream}/reactions` frame
//! `{"window_ms":500,"counts":{…},"totals":{…},"likes":{…}}` — nothing while idle. Likes of
//! comments (`comment_id` with the like emoji) need a durable once-per-user set, so they go to
//! the write path; it sends back the new like counts, which ride along in the next frame.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use wire::bus::{Bus, Delivery};
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
}

/// Flushes the window every `window_ms` until `stop`, and once more at the end.
pub(crate) async fn run(
    reactions: Arc<Reactions>,
    window_ms: u64,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(window_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        flush(&reactions, window_ms, &*store, &*bus).await;
        rounds += 1;
        if rounds % 120 == 0 {
            reactions.forget_idle_users();
        }
        if stopping {
            break;
        }
    }
}

async fn flush(reactions: &Reactions, window_ms: u64, store: &dyn Store, bus: &dyn Bus) {
    let (counts, mut likes) = reactions.take();
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
            store.reaction_totals(&stream).await
        } else {
            store.add_reactions(&stream, &pairs).await
        };
        let totals: BTreeMap<String, u64> = match totals {
            Ok(t) => t.into_iter().collect(),
            Err(e) => {
                tracing::error!(error = %e, %stream, "storing reaction totals failed");
                continue;
            }
        };
        let mut frame = serde_json::json!({
            "window_ms": window_ms,
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
        if let Err(e) = bus.deliver(delivery).await {
            tracing::warn!(error = %e, "publishing reactions failed");
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

//! Viewer counts: how many connections watch each stream now, and how many distinct users
//! have since the stream started (HyperLogLog), published on `streams/{stream}/presence`
//! every `presence.interval_ms` while they change.
//!
//! In a cluster each node reports its share to the shared presence (Redis) every interval
//! and publishes the cluster-wide sums to its own viewers, so every viewer sees the same
//! counts whichever node they are on.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::bus::{Bus, Delivery};
use wire::presence::{NodeShare, Presence, PresenceBoard, SharedPresence};
use wire::{topics, StreamId, UserId};

/// Precision 14: about 0.8 % standard error; sparse (small) while a stream has few users.
const PRECISION: u8 = 14;

type Hll = HyperLogLogPlus<UserId, BuildHasherDefault<DefaultHasher>>;

/// A stream nobody on this node watched for this long is forgotten (its distinct-user
/// estimate with it), so the map holds the streams being watched, not every stream ever.
const FORGET_AFTER: Duration = Duration::from_secs(600);

struct StreamPresence {
    viewers: u64,
    unique: Hll,
    changed: bool,
    /// When `viewers` last dropped to 0.
    empty_since: Option<Instant>,
    /// Users who joined since the last report to the shared presence.
    new_users: Vec<UserId>,
}

#[derive(Default)]
pub(crate) struct Viewers {
    streams: Mutex<HashMap<StreamId, StreamPresence>>,
}

impl Viewers {
    /// A connection of `user` started watching `stream`; true for the node's first viewer.
    pub(crate) fn join(&self, stream: &StreamId, user: &UserId) -> bool {
        let mut m = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let p = match m.get_mut(stream) {
            Some(p) => p,
            None => {
                let Ok(unique) = Hll::new(PRECISION, BuildHasherDefault::default()) else {
                    return false;
                };
                m.entry(stream.clone()).or_insert(StreamPresence {
                    viewers: 0,
                    unique,
                    changed: true,
                    empty_since: None,
                    new_users: Vec::new(),
                })
            }
        };
        p.viewers += 1;
        p.unique.insert(user);
        if !p.new_users.contains(user) {
            p.new_users.push(user.clone());
        }
        p.changed = true;
        p.empty_since = None;
        p.viewers == 1
    }

    /// The node's viewers of `stream` now.
    pub(crate) fn count(&self, stream: &StreamId) -> u64 {
        let m = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        m.get(stream).map_or(0, |p| p.viewers)
    }

    /// A connection stopped watching `stream` (unsubscribed or gone); true when it was the
    /// node's last viewer.
    pub(crate) fn leave(&self, stream: &StreamId) -> bool {
        let mut m = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = m.get_mut(stream) {
            p.viewers = p.viewers.saturating_sub(1);
            p.changed = true;
            if p.viewers == 0 {
                p.empty_since = Some(Instant::now());
            }
            return p.viewers == 0;
        }
        false
    }

    /// The streams whose counts changed since the last call, with their counts; forgets the
    /// streams that have been without viewers for [`FORGET_AFTER`] (returned second).
    fn changed(&self, now: Instant) -> (Vec<(StreamId, Presence)>, Vec<StreamId>) {
        let mut m = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut forgotten = Vec::new();
        m.retain(|s, p| {
            let keep = p.changed
                || p.viewers > 0
                || p.empty_since
                    .is_none_or(|t| now.duration_since(t) < FORGET_AFTER);
            if !keep {
                forgotten.push(s.clone());
            }
            keep
        });
        let mut out = Vec::new();
        for (s, p) in m.iter_mut() {
            p.new_users.clear();
            if p.changed {
                p.changed = false;
                out.push((
                    s.clone(),
                    Presence {
                        viewers: p.viewers,
                        unique: p.unique.count().round() as u64,
                    },
                ));
            }
        }
        (out, forgotten)
    }

    /// This node's shares for the shared presence: every stream it has viewers of (a share
    /// expires unless renewed) and every stream whose count changed (0 withdraws it).
    fn shares(&self, now: Instant) -> (Vec<NodeShare>, Vec<StreamId>) {
        let mut m = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut forgotten = Vec::new();
        m.retain(|s, p| {
            let keep = p.changed
                || p.viewers > 0
                || p.empty_since
                    .is_none_or(|t| now.duration_since(t) < FORGET_AFTER);
            if !keep {
                forgotten.push(s.clone());
            }
            keep
        });
        let mut out = Vec::new();
        for (s, p) in m.iter_mut() {
            if p.changed || p.viewers > 0 {
                p.changed = false;
                out.push(NodeShare {
                    stream: s.clone(),
                    viewers: p.viewers,
                    new_users: std::mem::take(&mut p.new_users),
                });
            }
        }
        (out, forgotten)
    }

    /// Shares that could not be reported go back, to be reported with the next ones.
    fn unreport(&self, shares: Vec<NodeShare>) {
        let mut m = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        for share in shares {
            if let Some(p) = m.get_mut(&share.stream) {
                p.changed = true;
                for u in share.new_users {
                    if !p.new_users.contains(&u) {
                        p.new_users.push(u);
                    }
                }
            }
        }
    }

    /// The streams this node has viewers of now.
    pub(crate) fn watched(&self) -> Vec<StreamId> {
        let m = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        m.iter()
            .filter(|(_, p)| p.viewers > 0)
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn viewers_of(&self, stream: &StreamId) -> u64 {
        let m = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        m.get(stream).map_or(0, |p| p.viewers)
    }
}

/// Publishes changed counts every `interval` until `stop`: this node's own, or, in a cluster,
/// the sums the shared presence returns for this node's viewers.
pub(crate) async fn run(
    viewers: Arc<Viewers>,
    board: PresenceBoard,
    interval: Duration,
    bus: Arc<dyn Bus>,
    local: mpsc::Sender<crate::connection::Local>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What this node last published per stream (cluster mode).
    let mut published: HashMap<StreamId, Presence> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Some(shared) = board.shared() {
            report(&viewers, &board, shared.as_ref(), &local, &mut published).await;
            continue;
        }
        let (changed, forgotten) = viewers.changed(Instant::now());
        for stream in forgotten {
            board.remove(&stream);
        }
        for (stream, presence) in changed {
            board.set(&stream, presence);
            let payload = serde_json::to_vec(&presence).unwrap_or_default();
            let delivery = Delivery::Topic {
                topic: topics::presence(&stream),
                payload: Bytes::from(payload),
            };
            if let Err(e) = bus.deliver(delivery).await {
                tracing::warn!(error = %e, "publishing presence failed");
            }
        }
    }
}

/// One interval of cluster presence: report this node's shares, publish the sums that
/// changed to this node's viewers.
async fn report(
    viewers: &Viewers,
    board: &PresenceBoard,
    shared: &dyn SharedPresence,
    local: &mpsc::Sender<crate::connection::Local>,
    published: &mut HashMap<StreamId, Presence>,
) {
    let (shares, forgotten) = viewers.shares(Instant::now());
    for stream in forgotten {
        board.remove(&stream);
        published.remove(&stream);
    }
    if shares.is_empty() {
        return;
    }
    let sums = match shared.report(shares.clone()).await {
        Ok(sums) => sums,
        Err(e) => {
            tracing::warn!(error = %e, "reporting presence failed; retrying next interval");
            viewers.unreport(shares);
            return;
        }
    };
    for (stream, presence) in sums {
        board.set(&stream, presence);
        if viewers.viewers_of(&stream) == 0 {
            // Nobody here to tell; a later viewer here is told afresh.
            published.remove(&stream);
            continue;
        }
        if published.get(&stream) == Some(&presence) {
            continue;
        }
        published.insert(stream.clone(), presence);
        let delivery = Delivery::Topic {
            topic: topics::presence(&stream),
            payload: Bytes::from(serde_json::to_vec(&presence).unwrap_or_default()),
        };
        if local
            .send(crate::connection::Local::Deliver(delivery))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_viewers_and_distinct_users() {
        let v = Viewers::default();
        let s = StreamId::new("s").unwrap();
        let (a, b) = (UserId::new("a").unwrap(), UserId::new("b").unwrap());
        v.join(&s, &a);
        v.join(&s, &a); // a second connection of the same user
        v.join(&s, &b);
        let now = Instant::now();
        let (c, _) = v.changed(now);
        assert_eq!(
            c,
            vec![(
                s.clone(),
                Presence {
                    viewers: 3,
                    unique: 2
                }
            )]
        );
        assert!(v.changed(now).0.is_empty(), "nothing changed since");
        v.leave(&s);
        v.leave(&s);
        v.leave(&s);
        assert_eq!(
            v.changed(now).0[0].1,
            Presence {
                viewers: 0,
                unique: 2
            }
        );
        let (c, forgotten) = v.changed(Instant::now() + FORGET_AFTER / 2);
        assert!(c.is_empty() && forgotten.is_empty(), "kept a while");
        let (_, forgotten) = v.changed(Instant::now() + FORGET_AFTER * 2);
        assert_eq!(
            forgotten,
            vec![s.clone()],
            "forgotten after long without viewers"
        );
        v.join(&s, &a);
        assert_eq!(v.changed(Instant::now()).0[0].1.unique, 1, "counted afresh");
    }
}

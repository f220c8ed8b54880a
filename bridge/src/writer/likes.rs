//! Likes of comments: once per user per comment, decided by the deps' like sets (the store's
//! transaction for one bridge, Redis for a cluster's) and stored durably before new counts go
//! to the nodes, which add them to the next reactions frame.

use std::collections::BTreeMap;

use serde::Deserialize;
use wire::bus::{Delivery, Submission};
use wire::store::LikeChange;
use wire::StreamId;

use super::Writer;

/// `{"emoji": "👍", "comment_id": "...", "remove": false}`
#[derive(Deserialize)]
struct Body {
    comment_id: String,
    #[serde(default)]
    remove: bool,
}

impl Writer {
    /// Decides, stores and publishes `likes`; false when they could not be stored (nothing
    /// or only some of them may be, and the like sets were told to start again from the
    /// store, so applying them all again is safe).
    pub(super) async fn process_likes(&mut self, likes: Vec<Submission>) -> bool {
        let changes: Vec<LikeChange> = likes
            .iter()
            .filter_map(|s| match serde_json::from_slice::<Body>(&s.payload) {
                // Comment ids are ids (ULIDs); anything else names no comment.
                Ok(b) if wire::ids::validate_id(&b.comment_id).is_ok() => Some(LikeChange {
                    stream: s.stream.clone(),
                    comment_id: b.comment_id,
                    user: s.author.id.clone(),
                    like: !b.remove,
                }),
                _ => {
                    metrics::counter!("livecomments_reactions_dropped_total", "reason" => "invalid")
                        .increment(1);
                    None
                }
            })
            .collect();
        if changes.is_empty() {
            return true;
        }
        let counts = match self.deps.likes.apply(&*self.deps.store, &changes).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, count = changes.len(), "storing likes failed");
                return false;
            }
        };
        // The latest count per comment, grouped by stream.
        let mut by_stream: BTreeMap<StreamId, BTreeMap<String, u64>> = BTreeMap::new();
        for (ch, n) in changes.into_iter().zip(counts) {
            if let Some(n) = n {
                by_stream
                    .entry(ch.stream)
                    .or_default()
                    .insert(ch.comment_id, n);
            }
        }
        for (stream, counts) in by_stream {
            metrics::counter!("livecomments_likes_total").increment(counts.len() as u64);
            let delivery = Delivery::Likes {
                stream,
                counts: counts.into_iter().collect(),
            };
            if let Err(e) = self.deps.bus.deliver(delivery).await {
                tracing::warn!(error = %e, "publishing like counts failed");
            }
        }
        true
    }
}

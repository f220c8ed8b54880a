//! The storage trait: streams and comments, durable on return.
//!
//! The embedded implementation lives in the bridge crate; the cluster one (Cassandra) will sit
//! beside it. Callers hold an `Arc<dyn Store>` and never know which one they talk to.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::{Comment, Event, StreamState};
use crate::ids::{StreamId, UserId};
use crate::moderation::{AuditEntry, Ban, BanScope, QueueItem, QueueStatus};

/// Why storage failed. Every variant is retryable from the caller's point of view: the write
/// path answers `unavailable` and the client retries with the same `client_msg_id`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("storage task failed: {0}")]
    Task(String),
}

/// Who may see a stored comment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    Visible,
    /// Removed by a moderator, the model or reports; kept for the audit trail and appeals.
    Retracted {
        reason: String,
        actor: String,
        at: i64,
    },
    /// Posted by a shadow-banned user: stored and acknowledged, shown to nobody else. Kept
    /// apart from the stream's log and taking no `seq` of its own, so other viewers see no
    /// gap in the sequence.
    Shadow,
}

/// A comment with the fields only the write path needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredComment {
    pub comment: Comment,
    /// The poster's idempotency key; `(stream, user, client_msg_id)` is unique.
    pub client_msg_id: String,
    #[serde(default)]
    pub visibility: Visibility,
    /// Nesting level: 0 for a top-level comment, parent's + 1 for a reply.
    #[serde(default)]
    pub depth: u8,
}

/// One row of a stream's event log, keyed by `(stream, seq)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredEvent {
    Comment(StoredComment),
    /// Marks comment `comment_seq` retracted (its row is updated in the same transaction).
    Retract {
        stream: StreamId,
        seq: u64,
        comment_seq: u64,
        comment_id: String,
        reason: String,
        actor: String,
        at: i64,
    },
    /// Makes comment `comment_seq` visible again.
    Restore {
        stream: StreamId,
        seq: u64,
        comment_seq: u64,
        comment_id: String,
        actor: String,
        at: i64,
    },
}

impl StoredEvent {
    pub fn seq(&self) -> u64 {
        match self {
            StoredEvent::Comment(c) => c.comment.seq,
            StoredEvent::Retract { seq, .. } | StoredEvent::Restore { seq, .. } => *seq,
        }
    }
}

/// Identifies a submission for de-duplication of retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    pub stream: StreamId,
    pub user: UserId,
    pub client_msg_id: String,
}

/// What a previous submission with the same [`DedupKey`] became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupHit {
    /// Stored as comment `id` with `seq`.
    Stored { id: String, seq: u64 },
    /// Held for review as queue item `item`, still undecided.
    Held { item: String },
    /// Held for review, then declined by a moderator.
    Declined { item: String },
}

/// Everything one step of the write path stores, in one durable transaction: it all happens
/// or none of it does.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub events: Vec<StoredEvent>,
    /// Review-queue items created or changed.
    pub items: Vec<QueueItem>,
    pub audit: Vec<AuditEntry>,
    /// `(stream, comment id, user)`: the user reported the comment (once per comment, ever).
    pub reporters: Vec<(StreamId, String, UserId)>,
}

/// A user likes (or unlikes) a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LikeChange {
    pub stream: StreamId,
    pub comment_id: String,
    pub user: UserId,
    pub like: bool,
}

/// A like or unlike that the keeper of the like sets (a cluster's Redis) found to change
/// something, with the time that orders it among the changes of its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedLike {
    pub change: LikeChange,
    /// Microseconds since the Unix epoch, increasing per comment in the order the changes
    /// were decided: the write timestamp of the like's row, so that writes reaching the
    /// store out of order (from two bridges) still leave the last decision in place.
    pub at_us: i64,
}

/// Changes grouped by comment, in order of each comment's first change: `(stream, comment id,
/// indexes into changes)`. Likes of one comment are decided and counted together.
pub fn likes_by_comment(changes: &[LikeChange]) -> Vec<(&StreamId, &str, Vec<usize>)> {
    let mut groups: Vec<(&StreamId, &str, Vec<usize>)> = Vec::new();
    let mut index: std::collections::HashMap<(&StreamId, &str), usize> =
        std::collections::HashMap::new();
    for (i, ch) in changes.iter().enumerate() {
        let key = (&ch.stream, ch.comment_id.as_str());
        let g = *index.entry(key).or_insert_with(|| {
            groups.push((key.0, key.1, Vec::new()));
            groups.len() - 1
        });
        groups[g].2.push(i);
    }
    groups
}

/// Where a replay page starts: after this `(offset_ms, seq)` position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReplayCursor {
    pub offset_ms: u64,
    pub seq: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a stream; returns `false` (and changes nothing) if the id exists.
    async fn create_stream(&self, stream: &StreamState) -> Result<bool, StoreError>;
    /// Replaces a stream record only if the stored one still has version `expected` (compare
    /// and set, so concurrent changes cannot undo each other). Returns whether it wrote.
    async fn update_stream(&self, stream: &StreamState, expected: u64) -> Result<bool, StoreError>;
    async fn get_stream(&self, id: &StreamId) -> Result<Option<StreamState>, StoreError>;
    async fn list_streams(&self) -> Result<Vec<StreamState>, StoreError>;

    /// Highest `seq` stored for the stream (0 when none), to continue numbering after a restart.
    async fn last_seq(&self, stream: &StreamId) -> Result<u64, StoreError>;
    /// Looks up earlier submissions with the same keys, in order. A store may forget stored
    /// posts after a documented window (the embedded store keeps recent keys in memory).
    async fn find_dedup(&self, keys: &[DedupKey]) -> Result<Vec<Option<DedupHit>>, StoreError>;
    /// Stores a batch durably, all or nothing: comments with their indexes (comments of
    /// shadow-banned users apart from the stream's log), retractions and restorations with the
    /// change to the comment they address, queue items, audit entries, reporters. When this
    /// returns `Ok`, it survives a crash.
    async fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Whether the user reported the comment before.
    async fn has_reported(
        &self,
        stream: &StreamId,
        comment_id: &str,
        user: &UserId,
    ) -> Result<bool, StoreError>;
    /// Adds reaction counts to the stream's totals; returns all its totals afterwards.
    async fn add_reactions(
        &self,
        stream: &StreamId,
        counts: &[(String, u64)],
    ) -> Result<Vec<(String, u64)>, StoreError>;
    async fn reaction_totals(&self, stream: &StreamId) -> Result<Vec<(String, u64)>, StoreError>;
    /// Applies likes and unlikes in one transaction; a second like and an unlike without a
    /// like change nothing, nor do likes of unknown or removed comments. Returns, per change, the
    /// comment's new like count when it changed.
    async fn set_likes(&self, changes: &[LikeChange]) -> Result<Vec<Option<u64>>, StoreError>;
    /// Stores likes and unlikes that a caller keeping the like sets elsewhere (a cluster's
    /// Redis) has already found to change something: adds or removes the like (as of
    /// `at_us`) and moves the comment's count, without a transaction to decide membership
    /// again. Returns, per change, whether its comment exists and is visible (changes of
    /// other comments are not stored).
    async fn write_likes(&self, likes: &[DecidedLike]) -> Result<Vec<bool>, StoreError>;
    /// Who likes a comment, to seed a like set kept elsewhere; `None` when the stream has no
    /// visible comment with that id.
    async fn likers(
        &self,
        stream: &StreamId,
        comment_id: &str,
    ) -> Result<Option<Vec<UserId>>, StoreError>;
    /// Likes and direct replies of each comment, in order.
    async fn engagement(
        &self,
        stream: &StreamId,
        comment_ids: &[String],
    ) -> Result<Vec<(u64, u64)>, StoreError>;
    /// Visible direct replies to a comment, by `seq`, after `after_seq`, at most `limit`.
    async fn replies(
        &self,
        stream: &StreamId,
        parent_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError>;

    /// A comment by id, whatever its visibility.
    async fn find_comment(
        &self,
        stream: &StreamId,
        id: &str,
    ) -> Result<Option<StoredComment>, StoreError>;

    /// Visible comments with `from_ms <= offset_ms < to_ms`, ordered by `(offset_ms, seq)`,
    /// starting after `after` when given, at most `limit`.
    async fn replay(
        &self,
        stream: &StreamId,
        from_ms: u64,
        to_ms: u64,
        after: Option<ReplayCursor>,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError>;
    /// The newest visible comments with `from_ms <= offset_ms < to_ms`, newest first, at
    /// most `limit` (the candidates of a `top` ranking, where recent comments weigh most).
    async fn latest(
        &self,
        stream: &StreamId,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError>;
    /// Events with `seq > after_seq`, ascending, at most `limit`: visible comments,
    /// retractions, and restorations of comments that are visible now.
    async fn after_seq(
        &self,
        stream: &StreamId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    // ---- moderation state ----

    async fn put_ban(&self, ban: &Ban) -> Result<(), StoreError>;
    /// Removes a ban; returns whether one existed.
    async fn delete_ban(&self, user: &UserId, scope: &BanScope) -> Result<bool, StoreError>;
    /// Every ban recorded for these users (expired ones included; callers check `until`).
    async fn bans_of(&self, users: &[UserId]) -> Result<Vec<Ban>, StoreError>;

    /// Stores a queue item on its own (the write path uses [`Store::commit`]).
    async fn put_queue_item(&self, item: &QueueItem) -> Result<(), StoreError>;
    async fn get_queue_item(&self, id: &str) -> Result<Option<QueueItem>, StoreError>;
    /// The open item about a comment, if any.
    async fn queue_item_for_comment(
        &self,
        stream: &StreamId,
        comment_id: &str,
    ) -> Result<Option<QueueItem>, StoreError>;
    /// Items, newest first, optionally of one stream and one status.
    async fn list_queue(
        &self,
        stream: Option<&StreamId>,
        status: Option<QueueStatus>,
        limit: usize,
    ) -> Result<Vec<QueueItem>, StoreError>;
    /// Records a strike against a user; returns the strikes within `window_ms` of `at`.
    async fn add_strike(&self, user: &UserId, at: i64, window_ms: i64) -> Result<u32, StoreError>;

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Audit entries, newest first, optionally of one stream, older than `before` (ms).
    async fn list_audit(
        &self,
        stream: Option<&StreamId>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

//! The storage trait: streams and comments, durable on return.
//!
//! The embedded implementation lives in the bridge crate; the cluster one (Cassandra) will sit
//! beside it. Callers hold an `Arc<dyn Store>` and never know which one they talk to.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::{Comment, StreamState, StreamStatus};
use crate::ids::{StreamId, UserId};

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

/// A comment with the fields only the write path needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredComment {
    pub comment: Comment,
    /// The poster's idempotency key; `(stream, user, client_msg_id)` is unique.
    pub client_msg_id: String,
}

/// Identifies a submission for de-duplication of retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    pub stream: StreamId,
    pub user: UserId,
    pub client_msg_id: String,
}

/// What a previous submission with the same [`DedupKey`] was stored as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupHit {
    pub id: String,
    pub seq: u64,
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
    /// Replaces a stream record only if its stored status is still `expected` (compare and
    /// set, so concurrent lifecycle changes cannot undo each other). Returns whether it wrote.
    async fn update_stream(
        &self,
        stream: &StreamState,
        expected: StreamStatus,
    ) -> Result<bool, StoreError>;
    async fn get_stream(&self, id: &StreamId) -> Result<Option<StreamState>, StoreError>;
    async fn list_streams(&self) -> Result<Vec<StreamState>, StoreError>;

    /// Highest `seq` stored for the stream (0 when none), to continue numbering after a restart.
    async fn last_seq(&self, stream: &StreamId) -> Result<u64, StoreError>;
    /// Looks up earlier submissions with the same keys, in order.
    async fn find_dedup(&self, keys: &[DedupKey]) -> Result<Vec<Option<DedupHit>>, StoreError>;
    /// Stores comments durably (all or nothing). When this returns `Ok`, they survive a crash.
    async fn append(&self, comments: &[StoredComment]) -> Result<(), StoreError>;

    /// Comments with `from_ms <= offset_ms < to_ms`, ordered by `(offset_ms, seq)`, starting
    /// after `after` when given, at most `limit`.
    async fn replay(
        &self,
        stream: &StreamId,
        from_ms: u64,
        to_ms: u64,
        after: Option<ReplayCursor>,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError>;
    /// Comments with `seq > after_seq`, ascending, at most `limit`.
    async fn after_seq(
        &self,
        stream: &StreamId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError>;
}

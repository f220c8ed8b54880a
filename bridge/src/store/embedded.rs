//! The embedded store: one redb file, crash-safe, no external service.
//!
//! Why redb (the evidence is in docs/storage.md): a copy-on-write B+tree with checksummed
//! commits, so a `kill -9` at any point leaves the last committed transaction intact; a commit
//! with `Durability::Immediate` (the default) is fsynced before `commit()` returns, and the
//! bridge puts a whole batch in one transaction (group commit), so durability costs one fsync
//! per batch, not per comment; ordered tuple keys give the range scans replay needs.
//!
//! Tables (stream-scoped keys start with the stream id, so a stream's rows are contiguous):
//! - `streams`:       stream → `StreamState` (JSON)
//! - `events`:        (stream, seq) → `StoredEvent` (JSON) — the stream's log; catch-up scans it
//! - `by_time`:       (stream, offset_ms, seq) → () — replay windows seek here (comments only)
//! - `dedup`:         (stream, user, client_msg_id) → seq — approved held posts only (and
//!   every post of earlier versions): other retries are found in memory (`store::recent`),
//!   rebuilt from the events log when the store opens
//! - `comment_ids`:   (stream, comment id) → seq — moderator actions address comments by id
//! - `bans`:          (user, scope) → `Ban` (JSON)
//! - `queue`:         item id (ULID, time-ordered) → `QueueItem` (JSON)
//! - `queue_comment`: (stream, comment id) → item id of the comment's open item
//! - `held_dedup`:    (stream, user, client_msg_id) → item id of a held post
//! - `strikes`:       (user, at) → ()
//! - `audit`:         (at, entry id) → `AuditEntry` (JSON)
//! - `reactions`:     (stream, emoji) → total
//! - `likes`:         (stream, comment id, user) → () — who liked what, once each
//! - `like_counts`:   (stream, comment id) → likes
//! - `replies`:       (stream, parent id, seq) → () — a thread, in order
//! - `reply_counts`:  (stream, comment id) → direct replies
//! - `shadow`:        (stream, comment id) → `StoredComment` of a shadow-banned author
//! - `shadow_dedup`:  (stream, user, client_msg_id) → its comment id
//! - `reporters`:     (stream, comment id, user) → () — a user reports a comment once

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use wire::event::{Comment, Event, Restoration, Retraction, StreamState};
use wire::moderation::{AuditEntry, Ban, BanScope, QueueItem, QueueStatus};
use wire::store::{
    Batch, DecidedLike, DedupHit, DedupKey, LikeChange, ReplayCursor, Store, StoreError,
    StoredComment, StoredEvent, Visibility,
};
use wire::time::now_ms;
use wire::{StreamId, UserId};

use super::recent::RecentPosts;

const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const BY_TIME: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("by_time");
const DEDUP: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("dedup");
const COMMENT_IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("comment_ids");
const BANS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("bans");
const QUEUE: TableDefinition<&str, &[u8]> = TableDefinition::new("queue");
const QUEUE_COMMENT: TableDefinition<(&str, &str), &str> = TableDefinition::new("queue_comment");
const HELD_DEDUP: TableDefinition<(&str, &str, &str), &str> = TableDefinition::new("held_dedup");
const STRIKES: TableDefinition<(&str, i64), ()> = TableDefinition::new("strikes");
const AUDIT: TableDefinition<(i64, &str), &[u8]> = TableDefinition::new("audit");
const REACTIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("reactions");
const LIKES: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("likes");
const LIKE_COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("like_counts");
const REPLIES: TableDefinition<(&str, &str, u64), ()> = TableDefinition::new("replies");
const REPLY_COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("reply_counts");
const SHADOW: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("shadow");
const SHADOW_DEDUP: TableDefinition<(&str, &str, &str), &str> =
    TableDefinition::new("shadow_dedup");
const REPORTERS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("reporters");

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(corrupt)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(corrupt)
}

/// A redb database shared by the write path and the readers (MVCC: readers never block the
/// writer).
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    quick_repair: bool,
    /// Which seq recent posts were stored under, for retries (see `store::recent`).
    recent: Arc<Mutex<RecentPosts>>,
}

/// How an [`EmbeddedStore`] is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Every commit writes its allocator state too (a second fsync), so that opening after a
    /// crash takes milliseconds instead of a walk of the whole file (about 1 s per 0.5 GB
    /// measured, see docs/storage.md).
    pub quick_repair: bool,
    /// A retry of a post stored this long ago still gets the post's answer.
    pub dedup_window: Duration,
    /// ... unless this many newer posts were stored since (memory: about 60 bytes each).
    pub dedup_max_entries: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            quick_repair: true,
            dedup_window: Duration::from_secs(600),
            dedup_max_entries: 2_000_000,
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file and its tables, with the default options but
    /// `quick_repair` (see [`EmbeddedOptions`]).
    pub fn open(path: &Path, quick_repair: bool) -> Result<Self, StoreError> {
        Self::open_with(
            path,
            EmbeddedOptions {
                quick_repair,
                ..EmbeddedOptions::default()
            },
        )
    }

    /// Opens (or creates) the database file and its tables, and reads the keys of the posts
    /// stored within the de-duplication window from the end of each stream's log.
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let quick_repair = options.quick_repair;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let db = Database::create(path).map_err(backend)?;
        let tx = begin_write(&db, quick_repair)?;
        {
            tx.open_table(STREAMS).map_err(backend)?;
            tx.open_table(EVENTS).map_err(backend)?;
            tx.open_table(BY_TIME).map_err(backend)?;
            tx.open_table(DEDUP).map_err(backend)?;
            tx.open_table(COMMENT_IDS).map_err(backend)?;
            tx.open_table(BANS).map_err(backend)?;
            tx.open_table(QUEUE).map_err(backend)?;
            tx.open_table(QUEUE_COMMENT).map_err(backend)?;
            tx.open_table(HELD_DEDUP).map_err(backend)?;
            tx.open_table(STRIKES).map_err(backend)?;
            tx.open_table(AUDIT).map_err(backend)?;
            tx.open_table(REACTIONS).map_err(backend)?;
            tx.open_table(LIKES).map_err(backend)?;
            tx.open_table(LIKE_COUNTS).map_err(backend)?;
            tx.open_table(REPLIES).map_err(backend)?;
            tx.open_table(REPLY_COUNTS).map_err(backend)?;
            tx.open_table(SHADOW).map_err(backend)?;
            tx.open_table(SHADOW_DEDUP).map_err(backend)?;
            tx.open_table(REPORTERS).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        let mut recent = RecentPosts::new(options.dedup_window, options.dedup_max_entries);
        let started = std::time::Instant::now();
        load_recent(&db, &mut recent)?;
        tracing::info!(
            posts = recent.len(),
            ms = started.elapsed().as_millis() as u64,
            "read the keys of recent posts for de-duplication"
        );
        Ok(EmbeddedStore {
            db: Arc::new(db),
            quick_repair,
            recent: Arc::new(Mutex::new(recent)),
        })
    }

    fn recent(&self) -> MutexGuard<'_, RecentPosts> {
        // Nothing panics while holding it; a poisoned lock still holds a consistent index.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tests only: every post's key hashes alike.
    #[cfg(test)]
    fn collide_keys(&self) {
        self.recent().collide = true;
    }

    /// Runs a read transaction off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(backend)?;
            f(&tx)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs a durable write transaction off the async runtime; commits when `f` succeeds.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (db, qr) = (self.db.clone(), self.quick_repair);
        tokio::task::spawn_blocking(move || {
            let tx = begin_write(&db, qr)?;
            let out = f(&tx)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Writes events of the stream logs with their indexes (see [`Store::commit`]).
/// `on_disk`: per row, whether a comment's key also goes to the `dedup` table (approved held
/// posts: their `held_dedup` row would otherwise answer "held" once the key left memory).
fn put_events(
    tx: &WriteTransaction,
    rows: &[(StoredEvent, Vec<u8>)],
    on_disk: &[bool],
) -> Result<(), StoreError> {
    let mut events = tx.open_table(EVENTS).map_err(backend)?;
    let mut by_time = tx.open_table(BY_TIME).map_err(backend)?;
    let mut dedup = tx.open_table(DEDUP).map_err(backend)?;
    let mut ids = tx.open_table(COMMENT_IDS).map_err(backend)?;
    let mut replies = tx.open_table(REPLIES).map_err(backend)?;
    let mut reply_counts = tx.open_table(REPLY_COUNTS).map_err(backend)?;
    let mut shadow = tx.open_table(SHADOW).map_err(backend)?;
    let mut shadow_dedup = tx.open_table(SHADOW_DEDUP).map_err(backend)?;
    for ((event, bytes), on_disk) in rows.iter().zip(on_disk) {
        match event {
            StoredEvent::Comment(c) if c.visibility == Visibility::Shadow => {
                // Apart from the log: its seq is the stream's latest, not a new one.
                let s = c.comment.stream.as_str();
                let row = json(c)?;
                shadow
                    .insert((s, c.comment.id.as_str()), row.as_slice())
                    .map_err(backend)?;
                shadow_dedup
                    .insert(
                        (s, c.comment.user.id.as_str(), c.client_msg_id.as_str()),
                        c.comment.id.as_str(),
                    )
                    .map_err(backend)?;
            }
            StoredEvent::Comment(c) => {
                let s = c.comment.stream.as_str();
                let seq = c.comment.seq;
                events.insert((s, seq), bytes.as_slice()).map_err(backend)?;
                by_time
                    .insert((s, c.comment.offset_ms, seq), ())
                    .map_err(backend)?;
                // Its key goes to `RecentPosts` (see `commit`).
                if *on_disk {
                    dedup
                        .insert(
                            (s, c.comment.user.id.as_str(), c.client_msg_id.as_str()),
                            seq,
                        )
                        .map_err(backend)?;
                }
                ids.insert((s, c.comment.id.as_str()), seq)
                    .map_err(backend)?;
                if let Some(parent) = &c.comment.reply_to {
                    replies
                        .insert((s, parent.as_str(), seq), ())
                        .map_err(backend)?;
                    add_reply_count(&mut reply_counts, s, c, 1)?;
                }
            }
            StoredEvent::Retract {
                stream,
                seq,
                comment_seq,
                reason,
                actor,
                at,
                ..
            } => {
                let s = stream.as_str();
                events
                    .insert((s, *seq), bytes.as_slice())
                    .map_err(backend)?;
                let v = Visibility::Retracted {
                    reason: reason.clone(),
                    actor: actor.clone(),
                    at: *at,
                };
                let old = set_visibility(&mut events, s, *comment_seq, v)?;
                if old.visibility == Visibility::Visible {
                    // A removed reply stops counting for its parent (`top` weighs replies).
                    add_reply_count(&mut reply_counts, s, &old, -1)?;
                }
            }
            StoredEvent::Restore {
                stream,
                seq,
                comment_seq,
                ..
            } => {
                let s = stream.as_str();
                events
                    .insert((s, *seq), bytes.as_slice())
                    .map_err(backend)?;
                let old = set_visibility(&mut events, s, *comment_seq, Visibility::Visible)?;
                if old.visibility != Visibility::Visible {
                    add_reply_count(&mut reply_counts, s, &old, 1)?;
                }
            }
        }
    }
    Ok(())
}

/// Writes a queue item with its indexes.
fn put_item(tx: &WriteTransaction, item: &QueueItem, bytes: &[u8]) -> Result<(), StoreError> {
    let mut queue = tx.open_table(QUEUE).map_err(backend)?;
    queue.insert(item.id.as_str(), bytes).map_err(backend)?;
    let mut by_comment = tx.open_table(QUEUE_COMMENT).map_err(backend)?;
    let mut held = tx.open_table(HELD_DEDUP).map_err(backend)?;
    let s = item.stream.as_str();
    if let Some(cid) = &item.comment_id {
        if item.status == QueueStatus::Open {
            by_comment
                .insert((s, cid.as_str()), item.id.as_str())
                .map_err(backend)?;
        } else {
            by_comment.remove((s, cid.as_str())).map_err(backend)?;
        }
    }
    if let Some(h) = &item.held {
        held.insert(
            (s, h.author.id.as_str(), h.client_msg_id.as_str()),
            item.id.as_str(),
        )
        .map_err(backend)?;
    }
    Ok(())
}

/// All reaction totals of a stream.
fn totals_of(
    t: &impl ReadableTable<(&'static str, &'static str), u64>,
    stream: &str,
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::new();
    for row in t.range((stream, "")..).map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        if k.value().0 != stream {
            break;
        }
        out.push((k.value().1.to_owned(), v.value()));
    }
    Ok(out)
}

/// Reads the keys of the posts stored within the window into `recent`: from the end of each
/// stream's log back to the first comment older than the window (at most `max_entries` in all,
/// the newest).
fn load_recent(db: &Database, recent: &mut RecentPosts) -> Result<(), StoreError> {
    let tx = db.begin_read().map_err(backend)?;
    let streams = tx.open_table(STREAMS).map_err(backend)?;
    let events = tx.open_table(EVENTS).map_err(backend)?;
    let horizon = recent.horizon(now_ms());
    let cap = recent.max_entries();
    let mut found: Vec<(i64, StreamId, UserId, String, u64)> = Vec::new();
    for row in streams.iter().map_err(backend)? {
        let (name, _) = row.map_err(backend)?;
        let s = name.value();
        let stream = StreamId::new(s).map_err(corrupt)?;
        let mut n = 0;
        for row in events
            .range((s, 0u64)..=(s, u64::MAX))
            .map_err(backend)?
            .rev()
        {
            let (key, value) = row.map_err(backend)?;
            // Retractions and the other events carry no post.
            let Some(c) = parse_comment_row(value.value()) else {
                continue;
            };
            if c.comment.ts < horizon || n >= cap {
                break;
            }
            n += 1;
            found.push((
                c.comment.ts,
                stream.clone(),
                c.comment.user.id,
                c.client_msg_id,
                key.value().1,
            ));
        }
    }
    found.sort_by_key(|f| f.0);
    let skip = found.len().saturating_sub(cap);
    for (ts, stream, user, id, seq) in found.into_iter().skip(skip) {
        recent.insert(&stream, user.as_str(), &id, seq, ts);
    }
    Ok(())
}

/// A durable write transaction (redb's default `Durability::Immediate`: `commit()` returns
/// after fsync).
fn begin_write(db: &Database, quick_repair: bool) -> Result<WriteTransaction, StoreError> {
    let mut tx = db.begin_write().map_err(backend)?;
    tx.set_quick_repair(quick_repair);
    Ok(tx)
}

/// A comment row of the events table read without serde's buffering of internally tagged
/// enums (a third of a replay page's time went there). Same fields as
/// `StoredEvent::Comment`; any other row fails to parse as this and takes the full path.
#[derive(serde::Deserialize)]
struct CommentRow<'a> {
    kind: &'a str,
    comment: Comment,
    client_msg_id: String,
    #[serde(default)]
    visibility: Visibility,
    #[serde(default)]
    depth: u8,
}

/// Parses an events row that should be a comment.
fn parse_comment_row(bytes: &[u8]) -> Option<StoredComment> {
    let row: CommentRow = serde_json::from_slice(bytes).ok()?;
    (row.kind == "comment").then_some(StoredComment {
        comment: row.comment,
        client_msg_id: row.client_msg_id,
        visibility: row.visibility,
        depth: row.depth,
    })
}

/// Applies likes and unlikes in `tx`: per change, whether its comment is visible and its new
/// count when the change changed something (a second like or an unlike of nothing does not).
fn apply_likes(
    tx: &WriteTransaction,
    changes: &[LikeChange],
) -> Result<Vec<(bool, Option<u64>)>, StoreError> {
    let ids = tx.open_table(COMMENT_IDS).map_err(backend)?;
    let events = tx.open_table(EVENTS).map_err(backend)?;
    let mut likes = tx.open_table(LIKES).map_err(backend)?;
    let mut counts = tx.open_table(LIKE_COUNTS).map_err(backend)?;
    let mut out = Vec::with_capacity(changes.len());
    for ch in changes {
        let (s, c) = (ch.stream.as_str(), ch.comment_id.as_str());
        let Some(seq) = ids.get((s, c)).map_err(backend)?.map(|v| v.value()) else {
            out.push((false, None));
            continue;
        };
        // Likes on a removed comment would keep it ranked and leak its id.
        let visible =
            comment_at(&events, s, seq)?.is_some_and(|sc| sc.visibility == Visibility::Visible);
        if !visible {
            out.push((false, None));
            continue;
        }
        let key = (s, c, ch.user.as_str());
        let had = likes.get(key).map_err(backend)?.is_some();
        if had == ch.like {
            out.push((true, None));
            continue;
        }
        let n = counts
            .get((s, c))
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        let n = if ch.like {
            likes.insert(key, ()).map_err(backend)?;
            n + 1
        } else {
            likes.remove(key).map_err(backend)?;
            n.saturating_sub(1)
        };
        counts.insert((s, c), n).map_err(backend)?;
        out.push((true, Some(n)));
    }
    Ok(out)
}

/// Reads the comment at `(stream, seq)` of an events table.
fn comment_at(
    events: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    stream: &str,
    seq: u64,
) -> Result<Option<StoredComment>, StoreError> {
    match events.get((stream, seq)).map_err(backend)? {
        Some(v) => match parse_comment_row(v.value()) {
            Some(c) => Ok(Some(c)),
            None => comment_of(stream, seq, v.value()),
        },
        None => Ok(None),
    }
}

/// The full parse of a row that is not a plain comment row (an error unless it is a comment).
fn comment_of(stream: &str, seq: u64, bytes: &[u8]) -> Result<Option<StoredComment>, StoreError> {
    match parse::<StoredEvent>(bytes)? {
        StoredEvent::Comment(c) => Ok(Some(c)),
        other => Err(corrupt(format!(
            "seq {seq} of {stream} is not a comment: {other:?}"
        ))),
    }
}

/// The like and reply counts of a read transaction, opened once per read (opening a table
/// costs as much as a lookup: per comment it was a tenth of a replay page's time).
struct Counts {
    likes: redb::ReadOnlyTable<(&'static str, &'static str), u64>,
    replies: redb::ReadOnlyTable<(&'static str, &'static str), u64>,
}

impl Counts {
    fn open(tx: &ReadTransaction) -> Result<Counts, StoreError> {
        Ok(Counts {
            likes: tx.open_table(LIKE_COUNTS).map_err(backend)?,
            replies: tx.open_table(REPLY_COUNTS).map_err(backend)?,
        })
    }

    /// Fills in a comment's like and reply counts.
    fn fill(&self, mut c: Comment) -> Result<Comment, StoreError> {
        let key = (c.stream.as_str(), c.id.as_str());
        c.likes = self
            .likes
            .get(key)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        c.replies = self
            .replies
            .get(key)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok(c)
    }
}

/// Changes the visibility of a stored comment inside a write transaction.
fn set_visibility(
    events: &mut redb::Table<(&'static str, u64), &'static [u8]>,
    stream: &str,
    seq: u64,
    visibility: Visibility,
) -> Result<StoredComment, StoreError> {
    let old = comment_at(events, stream, seq)?
        .ok_or_else(|| corrupt(format!("no comment at seq {seq} of {stream}")))?;
    let mut c = old.clone();
    c.visibility = visibility;
    let bytes = json(&StoredEvent::Comment(c))?;
    events
        .insert((stream, seq), bytes.as_slice())
        .map_err(backend)?;
    Ok(old)
}

/// Counts a reply for its parent (`delta` 1) or stops counting it (-1); no-op for a
/// top-level comment.
fn add_reply_count(
    counts: &mut redb::Table<(&'static str, &'static str), u64>,
    stream: &str,
    c: &StoredComment,
    delta: i64,
) -> Result<(), StoreError> {
    let Some(parent) = &c.comment.reply_to else {
        return Ok(());
    };
    let key = (stream, parent.as_str());
    let n = counts
        .get(key)
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0);
    let n = n.saturating_add_signed(delta);
    if n == 0 {
        counts.remove(key).map_err(backend)?;
    } else {
        counts.insert(key, n).map_err(backend)?;
    }
    Ok(())
}

/// Writes a stream record if none exists (`expected == None`) or the stored one has the
/// expected version; returns whether it wrote.
fn put_stream_tx(
    tx: &WriteTransaction,
    state: &StreamState,
    expected: Option<u64>,
) -> Result<bool, StoreError> {
    let bytes = json(state)?;
    let mut t = tx.open_table(STREAMS).map_err(backend)?;
    let current: Option<u64> = match t.get(state.id.as_str()).map_err(backend)? {
        Some(v) => Some(parse::<StreamState>(v.value())?.version),
        None => None,
    };
    if current != expected {
        return Ok(false);
    }
    t.insert(state.id.as_str(), bytes.as_slice())
        .map_err(backend)?;
    Ok(true)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_stream(&self, stream: &StreamState) -> Result<bool, StoreError> {
        let stream = stream.clone();
        self.write(move |tx| put_stream_tx(tx, &stream, None)).await
    }

    async fn update_stream(&self, stream: &StreamState, expected: u64) -> Result<bool, StoreError> {
        let stream = stream.clone();
        self.write(move |tx| put_stream_tx(tx, &stream, Some(expected)))
            .await
    }

    async fn get_stream(&self, id: &StreamId) -> Result<Option<StreamState>, StoreError> {
        let id = id.clone();
        self.read(move |tx| {
            let t = tx.open_table(STREAMS).map_err(backend)?;
            t.get(id.as_str())
                .map_err(backend)?
                .map(|v| parse(v.value()))
                .transpose()
        })
        .await
    }

    async fn list_streams(&self) -> Result<Vec<StreamState>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(STREAMS).map_err(backend)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(backend)? {
                let (_, v) = row.map_err(backend)?;
                out.push(parse(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let stream = stream.clone();
        self.read(move |tx| {
            let t = tx.open_table(EVENTS).map_err(backend)?;
            let s = stream.as_str();
            let last = t
                .range((s, 0u64)..=(s, u64::MAX))
                .map_err(backend)?
                .next_back();
            match last {
                Some(row) => Ok(row.map_err(backend)?.0.value().1),
                None => Ok(0),
            }
        })
        .await
    }

    async fn find_dedup(&self, keys: &[DedupKey]) -> Result<Vec<Option<DedupHit>>, StoreError> {
        let candidates: Vec<Vec<u64>> = {
            let recent = self.recent();
            keys.iter()
                .map(|k| recent.get(&k.stream, k.user.as_str(), &k.client_msg_id))
                .collect()
        };
        let keys = keys.to_vec();
        self.read(move |tx| {
            let dedup = tx.open_table(DEDUP).map_err(backend)?;
            let held = tx.open_table(HELD_DEDUP).map_err(backend)?;
            let shadow_dedup = tx.open_table(SHADOW_DEDUP).map_err(backend)?;
            let shadow = tx.open_table(SHADOW).map_err(backend)?;
            let queue = tx.open_table(QUEUE).map_err(backend)?;
            let events = tx.open_table(EVENTS).map_err(backend)?;
            let mut out = Vec::with_capacity(keys.len());
            for (k, candidate) in keys.iter().zip(candidates) {
                let key = (k.stream.as_str(), k.user.as_str(), k.client_msg_id.as_str());
                // The in-memory index names a seq; the row there says whether it is this post.
                let mut recent = None;
                for seq in candidate {
                    if let Some(c) = comment_at(&events, k.stream.as_str(), seq)? {
                        if c.comment.user.id == k.user && c.client_msg_id == k.client_msg_id {
                            recent = Some(c);
                            break;
                        }
                    }
                }
                if let Some(c) = recent {
                    out.push(Some(DedupHit::Stored {
                        id: c.comment.id,
                        seq: c.comment.seq,
                    }));
                } else if let Some(seq) = dedup.get(key).map_err(backend)?.map(|v| v.value()) {
                    let c = comment_at(&events, k.stream.as_str(), seq)?.ok_or_else(|| {
                        corrupt(format!("dedup entry points at missing seq {seq}"))
                    })?;
                    out.push(Some(DedupHit::Stored {
                        id: c.comment.id,
                        seq,
                    }));
                } else if let Some(id) = shadow_dedup.get(key).map_err(backend)? {
                    let row = shadow
                        .get((k.stream.as_str(), id.value()))
                        .map_err(backend)?
                        .ok_or_else(|| corrupt("shadow dedup entry without its comment"))?;
                    let c: StoredComment = parse(row.value())?;
                    out.push(Some(DedupHit::Stored {
                        id: c.comment.id,
                        seq: c.comment.seq,
                    }));
                } else if let Some(item) = held.get(key).map_err(backend)? {
                    let item_id = item.value().to_owned();
                    let declined = match queue.get(item_id.as_str()).map_err(backend)? {
                        Some(v) => parse::<QueueItem>(v.value())?.status == QueueStatus::Retracted,
                        None => false,
                    };
                    out.push(Some(if declined {
                        DedupHit::Declined { item: item_id }
                    } else {
                        DedupHit::Held { item: item_id }
                    }));
                } else {
                    out.push(None);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            rows.push((e.clone(), json(e)?));
        }
        let mut items = Vec::with_capacity(batch.items.len());
        for i in &batch.items {
            items.push((i.clone(), json(i)?));
        }
        let mut audit = Vec::with_capacity(batch.audit.len());
        for a in &batch.audit {
            audit.push((a.at, ulid::Ulid::new().to_string(), json(a)?));
        }
        let reporters = batch.reporters.clone();
        // The posts' keys, for the in-memory index (shadow posts have their own table).
        let keys: Vec<(StreamId, UserId, String, u64)> = batch
            .events
            .iter()
            .filter_map(|e| match e {
                StoredEvent::Comment(c) if c.visibility != Visibility::Shadow => Some((
                    c.comment.stream.clone(),
                    c.comment.user.id.clone(),
                    c.client_msg_id.clone(),
                    c.comment.seq,
                )),
                _ => None,
            })
            .collect();
        // Approved held posts keep a `dedup` row (rare: a moderator's decision each).
        let approved: Vec<(&StreamId, &UserId, &str)> = batch
            .items
            .iter()
            .filter(|i| i.status == QueueStatus::Approved)
            .filter_map(|i| {
                let h = i.held.as_ref()?;
                Some((&i.stream, &h.author.id, h.client_msg_id.as_str()))
            })
            .collect();
        let on_disk: Vec<bool> = rows
            .iter()
            .map(|(e, _)| match e {
                StoredEvent::Comment(c) => approved.iter().any(|(s, u, m)| {
                    **s == c.comment.stream && **u == c.comment.user.id && *m == c.client_msg_id
                }),
                _ => false,
            })
            .collect();
        let written = self
            .write(move |tx| {
                put_events(tx, &rows, &on_disk)?;
                for (item, bytes) in &items {
                    put_item(tx, item, bytes)?;
                }
                let mut log = tx.open_table(AUDIT).map_err(backend)?;
                for (at, key, bytes) in &audit {
                    log.insert((*at, key.as_str()), bytes.as_slice())
                        .map_err(backend)?;
                }
                let mut rep = tx.open_table(REPORTERS).map_err(backend)?;
                for (s, c, u) in &reporters {
                    rep.insert((s.as_str(), c.as_str(), u.as_str()), ())
                        .map_err(backend)?;
                }
                Ok(())
            })
            .await;
        // Also when the commit reported a failure: it may have been applied all the same, and
        // an entry of a post that was not stored never matches (lookups check the row).
        let now = now_ms();
        let mut recent = self.recent();
        for (stream, user, id, seq) in &keys {
            recent.insert(stream, user.as_str(), id, *seq, now);
        }
        written
    }

    async fn has_reported(
        &self,
        stream: &StreamId,
        comment_id: &str,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let (stream, comment_id, user) = (stream.clone(), comment_id.to_owned(), user.clone());
        self.read(move |tx| {
            let t = tx.open_table(REPORTERS).map_err(backend)?;
            Ok(t.get((stream.as_str(), comment_id.as_str(), user.as_str()))
                .map_err(backend)?
                .is_some())
        })
        .await
    }

    async fn find_comment(
        &self,
        stream: &StreamId,
        id: &str,
    ) -> Result<Option<StoredComment>, StoreError> {
        let (stream, id) = (stream.clone(), id.to_owned());
        self.read(move |tx| {
            let ids = tx.open_table(COMMENT_IDS).map_err(backend)?;
            let events = tx.open_table(EVENTS).map_err(backend)?;
            let s = stream.as_str();
            match ids.get((s, id.as_str())).map_err(backend)? {
                Some(seq) => comment_at(&events, s, seq.value()),
                None => Ok(None),
            }
        })
        .await
    }

    async fn replay(
        &self,
        stream: &StreamId,
        from_ms: u64,
        to_ms: u64,
        after: Option<ReplayCursor>,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError> {
        let stream = stream.clone();
        self.read(move |tx| {
            let by_time = tx.open_table(BY_TIME).map_err(backend)?;
            let events = tx.open_table(EVENTS).map_err(backend)?;
            let counts = Counts::open(tx)?;
            let s = stream.as_str();
            let start = match after {
                Some(c) if (c.offset_ms, c.seq) >= (from_ms, 0) => {
                    Bound::Excluded((s, c.offset_ms, c.seq))
                }
                _ => Bound::Included((s, from_ms, 0)),
            };
            let end = Bound::Excluded((s, to_ms, 0));
            let mut out = Vec::with_capacity(limit.min(1000));
            for row in by_time
                .range::<(&str, u64, u64)>((start, end))
                .map_err(backend)?
            {
                if out.len() >= limit {
                    break;
                }
                let (k, _) = row.map_err(backend)?;
                let (_, _, seq) = k.value();
                let c = comment_at(&events, s, seq)?
                    .ok_or_else(|| corrupt(format!("time index points at missing seq {seq}")))?;
                if c.visibility == Visibility::Visible {
                    out.push(counts.fill(c.comment)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn latest(
        &self,
        stream: &StreamId,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError> {
        let stream = stream.clone();
        self.read(move |tx| {
            let by_time = tx.open_table(BY_TIME).map_err(backend)?;
            let events = tx.open_table(EVENTS).map_err(backend)?;
            let counts = Counts::open(tx)?;
            let s = stream.as_str();
            let mut out = Vec::new();
            for row in by_time
                .range::<(&str, u64, u64)>((s, from_ms, 0)..(s, to_ms, 0))
                .map_err(backend)?
                .rev()
            {
                if out.len() >= limit {
                    break;
                }
                let (k, _) = row.map_err(backend)?;
                let (_, _, seq) = k.value();
                let c = comment_at(&events, s, seq)?
                    .ok_or_else(|| corrupt(format!("time index points at missing seq {seq}")))?;
                if c.visibility == Visibility::Visible {
                    out.push(counts.fill(c.comment)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn after_seq(
        &self,
        stream: &StreamId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let stream = stream.clone();
        self.read(move |tx| {
            let events = tx.open_table(EVENTS).map_err(backend)?;
            let counts = Counts::open(tx)?;
            let s = stream.as_str();
            let Some(first) = after_seq.checked_add(1) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for row in events.range((s, first)..=(s, u64::MAX)).map_err(backend)? {
                if out.len() >= limit {
                    break;
                }
                let (_, v) = row.map_err(backend)?;
                match parse::<StoredEvent>(v.value())? {
                    StoredEvent::Comment(c) if c.visibility == Visibility::Visible => {
                        out.push(Event::Comment(counts.fill(c.comment)?))
                    }
                    StoredEvent::Comment(_) => {}
                    StoredEvent::Retract {
                        seq,
                        comment_id,
                        reason,
                        ..
                    } => out.push(Event::Retract(Retraction {
                        id: comment_id,
                        seq,
                        reason,
                    })),
                    StoredEvent::Restore {
                        seq,
                        comment_seq,
                        comment_id,
                        ..
                    } => {
                        // Only restorations that still hold: a later retraction wins.
                        if let Some(c) = comment_at(&events, s, comment_seq)? {
                            if c.visibility == Visibility::Visible {
                                out.push(Event::Restore(Restoration {
                                    id: comment_id,
                                    seq,
                                    comment: c.comment,
                                }));
                            }
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn add_reactions(
        &self,
        stream: &StreamId,
        counts: &[(String, u64)],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let (stream, counts) = (stream.clone(), counts.to_vec());
        self.write(move |tx| {
            let mut t = tx.open_table(REACTIONS).map_err(backend)?;
            let s = stream.as_str();
            for (emoji, n) in &counts {
                let old = t
                    .get((s, emoji.as_str()))
                    .map_err(backend)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                t.insert((s, emoji.as_str()), old.saturating_add(*n))
                    .map_err(backend)?;
            }
            totals_of(&t, s)
        })
        .await
    }

    async fn reaction_totals(&self, stream: &StreamId) -> Result<Vec<(String, u64)>, StoreError> {
        let stream = stream.clone();
        self.read(move |tx| {
            let t = tx.open_table(REACTIONS).map_err(backend)?;
            totals_of(&t, stream.as_str())
        })
        .await
    }

    async fn set_likes(&self, changes: &[LikeChange]) -> Result<Vec<Option<u64>>, StoreError> {
        let changes = changes.to_vec();
        let applied = self.write(move |tx| apply_likes(tx, &changes)).await?;
        Ok(applied.into_iter().map(|(_, n)| n).collect())
    }

    /// The same transaction as [`Store::set_likes`] (it checks membership, which here costs
    /// nothing): one process writes this file, in the order the changes were decided.
    async fn write_likes(&self, likes: &[DecidedLike]) -> Result<Vec<bool>, StoreError> {
        let changes: Vec<LikeChange> = likes.iter().map(|l| l.change.clone()).collect();
        let applied = self.write(move |tx| apply_likes(tx, &changes)).await?;
        Ok(applied.into_iter().map(|(visible, _)| visible).collect())
    }

    async fn likers(
        &self,
        stream: &StreamId,
        comment_id: &str,
    ) -> Result<Option<Vec<UserId>>, StoreError> {
        let (stream, id) = (stream.clone(), comment_id.to_owned());
        self.read(move |tx| {
            let (s, c) = (stream.as_str(), id.as_str());
            let ids = tx.open_table(COMMENT_IDS).map_err(backend)?;
            let events = tx.open_table(EVENTS).map_err(backend)?;
            let Some(seq) = ids.get((s, c)).map_err(backend)?.map(|v| v.value()) else {
                return Ok(None);
            };
            if !comment_at(&events, s, seq)?.is_some_and(|sc| sc.visibility == Visibility::Visible)
            {
                return Ok(None);
            }
            let likes = tx.open_table(LIKES).map_err(backend)?;
            let mut out = Vec::new();
            for row in likes.range((s, c, "")..).map_err(backend)? {
                let (k, _) = row.map_err(backend)?;
                let (ks, kc, user) = k.value();
                if (ks, kc) != (s, c) {
                    break;
                }
                out.push(UserId::new(user).map_err(|e| corrupt(format!("liker {user:?}: {e}")))?);
            }
            Ok(Some(out))
        })
        .await
    }

    async fn engagement(
        &self,
        stream: &StreamId,
        comment_ids: &[String],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let (stream, ids) = (stream.clone(), comment_ids.to_vec());
        self.read(move |tx| {
            let likes = tx.open_table(LIKE_COUNTS).map_err(backend)?;
            let replies = tx.open_table(REPLY_COUNTS).map_err(backend)?;
            let s = stream.as_str();
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                let l = likes
                    .get((s, id.as_str()))
                    .map_err(backend)?
                    .map(|v| v.value());
                let r = replies
                    .get((s, id.as_str()))
                    .map_err(backend)?
                    .map(|v| v.value());
                out.push((l.unwrap_or(0), r.unwrap_or(0)));
            }
            Ok(out)
        })
        .await
    }

    async fn replies(
        &self,
        stream: &StreamId,
        parent_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError> {
        let (stream, parent) = (stream.clone(), parent_id.to_owned());
        self.read(move |tx| {
            let replies = tx.open_table(REPLIES).map_err(backend)?;
            let events = tx.open_table(EVENTS).map_err(backend)?;
            let counts = Counts::open(tx)?;
            let (s, p) = (stream.as_str(), parent.as_str());
            let Some(first) = after_seq.checked_add(1) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for row in replies
                .range((s, p, first)..=(s, p, u64::MAX))
                .map_err(backend)?
            {
                if out.len() >= limit {
                    break;
                }
                let (k, _) = row.map_err(backend)?;
                let seq = k.value().2;
                if let Some(c) = comment_at(&events, s, seq)? {
                    if c.visibility == Visibility::Visible {
                        out.push(counts.fill(c.comment)?);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_ban(&self, ban: &Ban) -> Result<(), StoreError> {
        let (ban, bytes) = (ban.clone(), json(ban)?);
        self.write(move |tx| {
            let mut t = tx.open_table(BANS).map_err(backend)?;
            let scope = ban.scope.to_string();
            t.insert((ban.user.as_str(), scope.as_str()), bytes.as_slice())
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_ban(&self, user: &UserId, scope: &BanScope) -> Result<bool, StoreError> {
        let (user, scope) = (user.clone(), scope.to_string());
        self.write(move |tx| {
            let mut t = tx.open_table(BANS).map_err(backend)?;
            let removed = t
                .remove((user.as_str(), scope.as_str()))
                .map_err(backend)?
                .is_some();
            Ok(removed)
        })
        .await
    }

    async fn bans_of(&self, users: &[UserId]) -> Result<Vec<Ban>, StoreError> {
        let users = users.to_vec();
        self.read(move |tx| {
            let t = tx.open_table(BANS).map_err(backend)?;
            let mut out = Vec::new();
            for user in &users {
                let u = user.as_str();
                for row in t.range((u, "")..).map_err(backend)? {
                    let (k, v) = row.map_err(backend)?;
                    if k.value().0 != u {
                        break;
                    }
                    out.push(parse(v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_queue_item(&self, item: &QueueItem) -> Result<(), StoreError> {
        let (item, bytes) = (item.clone(), json(item)?);
        self.write(move |tx| put_item(tx, &item, &bytes)).await
    }

    async fn get_queue_item(&self, id: &str) -> Result<Option<QueueItem>, StoreError> {
        let id = id.to_owned();
        self.read(move |tx| {
            let t = tx.open_table(QUEUE).map_err(backend)?;
            t.get(id.as_str())
                .map_err(backend)?
                .map(|v| parse(v.value()))
                .transpose()
        })
        .await
    }

    async fn queue_item_for_comment(
        &self,
        stream: &StreamId,
        comment_id: &str,
    ) -> Result<Option<QueueItem>, StoreError> {
        let (stream, comment_id) = (stream.clone(), comment_id.to_owned());
        self.read(move |tx| {
            let by_comment = tx.open_table(QUEUE_COMMENT).map_err(backend)?;
            let queue = tx.open_table(QUEUE).map_err(backend)?;
            let Some(id) = by_comment
                .get((stream.as_str(), comment_id.as_str()))
                .map_err(backend)?
            else {
                return Ok(None);
            };
            queue
                .get(id.value())
                .map_err(backend)?
                .map(|v| parse(v.value()))
                .transpose()
        })
        .await
    }

    async fn list_queue(
        &self,
        stream: Option<&StreamId>,
        status: Option<QueueStatus>,
        limit: usize,
    ) -> Result<Vec<QueueItem>, StoreError> {
        let stream = stream.cloned();
        self.read(move |tx| {
            let t = tx.open_table(QUEUE).map_err(backend)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(backend)?.rev() {
                if out.len() >= limit {
                    break;
                }
                let (_, v) = row.map_err(backend)?;
                let item: QueueItem = parse(v.value())?;
                if stream.as_ref().is_some_and(|s| *s != item.stream)
                    || status.is_some_and(|st| st != item.status)
                {
                    continue;
                }
                out.push(item);
            }
            Ok(out)
        })
        .await
    }

    async fn add_strike(&self, user: &UserId, at: i64, window_ms: i64) -> Result<u32, StoreError> {
        let user = user.clone();
        self.write(move |tx| {
            let mut t = tx.open_table(STRIKES).map_err(backend)?;
            let u = user.as_str();
            t.insert((u, at), ()).map_err(backend)?;
            let from = at.saturating_sub(window_ms);
            let n = t.range((u, from)..=(u, i64::MAX)).map_err(backend)?.count();
            Ok(n as u32)
        })
        .await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let (at, bytes) = (entry.at, json(entry)?);
        let key = ulid::Ulid::new().to_string();
        self.write(move |tx| {
            let mut t = tx.open_table(AUDIT).map_err(backend)?;
            t.insert((at, key.as_str()), bytes.as_slice())
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        stream: Option<&StreamId>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let stream = stream.cloned();
        self.read(move |tx| {
            let t = tx.open_table(AUDIT).map_err(backend)?;
            let end = before.unwrap_or(i64::MAX);
            let mut out = Vec::new();
            for row in t.range(..(end, "")).map_err(backend)?.rev() {
                if out.len() >= limit {
                    break;
                }
                let (_, v) = row.map_err(backend)?;
                let e: AuditEntry = parse(v.value())?;
                if stream
                    .as_ref()
                    .is_some_and(|s| e.stream.as_ref() != Some(s))
                {
                    continue;
                }
                out.push(e);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod row_tests {
    use super::*;

    #[test]
    fn comment_rows_parse_the_same_on_the_fast_path() {
        let c = StoredComment {
            comment: Comment {
                id: "01KAM3T5W7Q8X9Y0Z1A2B3C4D5".into(),
                seq: 7,
                stream: StreamId::new("s").unwrap(),
                user: wire::event::UserRef {
                    id: UserId::new("ann").unwrap(),
                    name: "Ann \"A\"".into(),
                },
                text: "what a goal! ünïcode".into(),
                ts: 1,
                offset_ms: 2,
                reply_to: Some("01KAM".into()),
                likes: 0,
                replies: 0,
            },
            client_msg_id: "m1".into(),
            visibility: Visibility::Retracted {
                reason: "r".into(),
                actor: "mod".into(),
                at: 3,
            },
            depth: 1,
        };
        let bytes = json(&StoredEvent::Comment(c.clone())).unwrap();
        assert_eq!(parse_comment_row(&bytes), Some(c.clone()));
        assert_eq!(comment_of("s", 7, &bytes).unwrap(), Some(c));
        let retract = json(&StoredEvent::Retract {
            stream: StreamId::new("s").unwrap(),
            seq: 8,
            comment_seq: 7,
            comment_id: "x".into(),
            reason: "r".into(),
            actor: "a".into(),
            at: 4,
        })
        .unwrap();
        assert_eq!(parse_comment_row(&retract), None);
        assert!(comment_of("s", 8, &retract).is_err());
    }
}

#[cfg(test)]
mod tests {
    //! The behaviour every store shares is checked by `store::suite` (run against this store
    //! by `tests/store_suite.rs`); here only what is particular to a file on disk.

    use super::*;
    use crate::store::suite::{stored, Ns};

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let ns = Ns::new();
        let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
        {
            let store = EmbeddedStore::open(&path, true).unwrap();
            let batch = Batch {
                events: vec![StoredEvent::Comment(stored(&s1, &u1, 1, 10))],
                ..Default::default()
            };
            store.commit(&batch).await.unwrap();
        }
        let store = EmbeddedStore::open(&path, true).unwrap();
        assert_eq!(store.last_seq(&s1).await.unwrap(), 1);
    }

    fn key(stream: &StreamId, user: &UserId, id: &str) -> DedupKey {
        DedupKey {
            stream: stream.clone(),
            user: user.clone(),
            client_msg_id: id.into(),
        }
    }

    /// A comment stored `age_ms` ago.
    fn aged(stream: &StreamId, user: &UserId, seq: u64, age_ms: i64) -> StoredEvent {
        let mut c = stored(stream, user, seq, seq * 10);
        c.comment.ts = now_ms() - age_ms;
        StoredEvent::Comment(c)
    }

    fn hit(seq: u64) -> Option<DedupHit> {
        Some(DedupHit::Stored {
            id: format!("id{seq}"),
            seq,
        })
    }

    async fn create(store: &EmbeddedStore, stream: &StreamId) {
        let state = StreamState::new(stream.clone(), "t".into(), None, 0);
        assert!(store.create_stream(&state).await.unwrap());
    }

    #[tokio::test]
    async fn retries_within_the_window_are_recognised_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let ns = Ns::new();
        let (s1, s2, u1) = (ns.stream("s1"), ns.stream("s2"), ns.user("u1"));
        let options = EmbeddedOptions {
            dedup_window: Duration::from_secs(60),
            ..EmbeddedOptions::default()
        };
        {
            let store = EmbeddedStore::open_with(&path, options).unwrap();
            create(&store, &s1).await;
            create(&store, &s2).await;
            let batch = Batch {
                events: vec![
                    aged(&s1, &u1, 1, 120_000),
                    aged(&s1, &u1, 2, 30_000),
                    StoredEvent::Retract {
                        stream: s1.clone(),
                        seq: 3,
                        comment_seq: 2,
                        comment_id: "id2".into(),
                        reason: "r".into(),
                        actor: "mod".into(),
                        at: 0,
                    },
                    aged(&s2, &u1, 1, 1_000),
                ],
                ..Default::default()
            };
            store.commit(&batch).await.unwrap();
            // Before the reopen every post is known (the window counts from the commit).
            let found = store
                .find_dedup(&[key(&s1, &u1, "m1"), key(&s1, &u1, "m2")])
                .await
                .unwrap();
            assert_eq!(found, vec![hit(1), hit(2)]);
        }
        let store = EmbeddedStore::open_with(&path, options).unwrap();
        let found = store
            .find_dedup(&[
                key(&s1, &u1, "m1"),
                key(&s1, &u1, "m2"),
                key(&s2, &u1, "m1"),
                key(&s2, &u1, "m2"),
            ])
            .await
            .unwrap();
        // m1 of s1 was stored two minutes ago: out of the 60 s window. A retracted post still
        // answers as stored (its id and seq), as before.
        assert_eq!(found, vec![None, hit(2), hit(1), None]);

        // The newest `dedup_max_entries` only.
        let capped = EmbeddedOptions {
            dedup_max_entries: 1,
            ..options
        };
        drop(store);
        let store = EmbeddedStore::open_with(&path, capped).unwrap();
        let found = store
            .find_dedup(&[key(&s1, &u1, "m2"), key(&s2, &u1, "m1")])
            .await
            .unwrap();
        assert_eq!(found, vec![None, hit(1)]);
    }

    #[tokio::test]
    async fn colliding_keys_are_told_apart_by_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db.redb"), true).unwrap();
        store.collide_keys();
        let ns = Ns::new();
        let (s1, u1, u2) = (ns.stream("s1"), ns.user("u1"), ns.user("u2"));
        let batch = Batch {
            events: vec![aged(&s1, &u1, 1, 0), aged(&s1, &u2, 2, 0)],
            ..Default::default()
        };
        store.commit(&batch).await.unwrap();
        let found = store
            .find_dedup(&[
                key(&s1, &u1, "m1"),
                key(&s1, &u2, "m2"),
                key(&s1, &u1, "m2"),
                key(&s1, &u2, "m1"),
            ])
            .await
            .unwrap();
        assert_eq!(found, vec![hit(1), hit(2), None, None]);
    }

    #[tokio::test]
    async fn an_approved_held_post_answers_retries_after_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db.redb"), true).unwrap();
        let ns = Ns::new();
        // Holds, declines, and approves a held post ("m1", stored as seq 1).
        crate::store::suite::held_posts_answer_retries(Arc::new(store.clone()), &ns).await;
        *store.recent() = RecentPosts::new(Duration::from_secs(60), 10);
        let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
        assert_eq!(
            store.find_dedup(&[key(&s1, &u1, "m1")]).await.unwrap(),
            vec![hit(1)],
            "its held_dedup row would say held"
        );
    }

    #[tokio::test]
    async fn rows_of_the_dedup_table_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db.redb"), true).unwrap();
        let ns = Ns::new();
        let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
        let batch = Batch {
            events: vec![aged(&s1, &u1, 1, 0)],
            ..Default::default()
        };
        store.commit(&batch).await.unwrap();
        // As an earlier version stored it, and as if the window had passed.
        *store.recent() = RecentPosts::new(Duration::from_secs(60), 10);
        assert_eq!(
            store.find_dedup(&[key(&s1, &u1, "m1")]).await.unwrap(),
            vec![None]
        );
        let (st, u) = (s1.to_string(), u1.to_string());
        store
            .write(move |tx| {
                let mut t = tx.open_table(DEDUP).map_err(backend)?;
                t.insert((st.as_str(), u.as_str(), "m1"), 1)
                    .map_err(backend)?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            store.find_dedup(&[key(&s1, &u1, "m1")]).await.unwrap(),
            vec![hit(1)]
        );
    }
}

//! The cluster store: Apache Cassandra (or ScyllaDB) through the pure-Rust `scylla` driver.
//!
//! It behaves like the embedded store for every method of [`Store`] (the shared behaviour
//! suite in `store::suite` runs against both); what differs is what a cluster can promise
//! about atomicity, described at [`CassandraStore::commit`](Store::commit).
//!
//! # Layout
//!
//! Tables (`keyspace.table`; `schema.rs` has the CQL, docs/storage.md explains it):
//! - `events`           ((stream, seq_bucket), seq) → kind, body (JSON), visibility — the
//!   stream's log and the one copy of every comment: catch-up reads it in order, everything
//!   that addresses a comment by seq (retraction, restoration, likes, threads) reads it by key
//! - `comments_by_time` ((stream, bucket), offset_ms, seq) → () — replay windows seek here,
//!   then read the bodies from `events`
//! - `bucket_index`     (name, bucket) — which time buckets (`time/<stream>`) and days
//!   (`queue/..`, `audit/..`) hold rows, so reads skip empty partitions
//! - `stream_seq`       stream → last_seq, written `USING TIMESTAMP <seq>` (highest wins)
//! - `comment_ids`      (stream, id) → seq
//! - `dedup`            (stream, user, client_msg_id) → comment id and seq, or held item
//! - `replies`          ((stream, parent_id), seq) — threads
//! - `comment_counts`   ((stream, seq_bucket), seq) → likes, replies (counters)
//! - `likes`            ((stream, comment_id), user) — once per user (a lightweight transaction,
//!   or plain writes when a cluster's like sets in Redis decide)
//! - `shadow_comments`  (stream, id) → body of a shadow-banned author's comment
//! - `reporters`, `reactions` (counters), `bans`, `strikes`
//! - `queue_items` id → item; `queue_index` ((scope, status, day), id DESC) → item, with
//!   scope `*` or a stream and status `*` or one; `queue_by_comment` (stream, comment) → item
//! - `audit`            ((scope, day), at DESC, uid DESC) → entry, scope `*` or a stream
//! - `streams`          id → version, state (compare and set with lightweight transactions)
//! - `schema_meta`      the layout row: schema version and bucket widths
//!
//! # Partitioning
//!
//! - Time buckets of `bucket_ms` (default 60 s): the replay API's default window (60 s) reads
//!   one or two index partitions, a 3-minute window three or four; index rows are ~30 bytes, so
//!   a stream sustaining 10 k comments/s puts 600 k rows (~20 MB) in one bucket, well within
//!   what a partition should hold. Buckets without comments are never read (`bucket_index`).
//! - Seq buckets of 10 000 events: one catch-up page (≤ 1000) reads one or two partitions;
//!   10 000 bodies of ~300 bytes are ~3 MB per partition whatever the stream's rate.
//! - Bodies live once, in `events`: a retraction rewrites one cell, and the time index stays
//!   tiny. A replay page costs one more read (the bodies by seq range), measured in
//!   docs/storage.md.

mod error;
mod schema;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::try_join_all;
use futures_util::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch as CqlBatch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{Counter, MaybeUnset};
use serde::{Deserialize, Serialize};
use wire::event::{Comment, Event, Restoration, Retraction, StreamState};
use wire::moderation::{AuditEntry, Ban, BanScope, QueueItem, QueueStatus};
use wire::store::{
    Batch, DecidedLike, DedupHit, DedupKey, LikeChange, ReplayCursor, Store, StoreError,
    StoredComment, StoredEvent, Visibility,
};
use wire::{StreamId, UserId};

use error::CassError;
use schema::Statements;

/// Consistency level of reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyLevel {
    One,
    LocalOne,
    Quorum,
    #[default]
    LocalQuorum,
    All,
}

impl ConsistencyLevel {
    fn cql(self) -> Consistency {
        match self {
            ConsistencyLevel::One => Consistency::One,
            ConsistencyLevel::LocalOne => Consistency::LocalOne,
            ConsistencyLevel::Quorum => Consistency::Quorum,
            ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
            ConsistencyLevel::All => Consistency::All,
        }
    }

    /// Lightweight transactions stay within the data centre when the rest does.
    fn serial(self) -> SerialConsistency {
        match self {
            ConsistencyLevel::LocalOne | ConsistencyLevel::LocalQuorum => {
                SerialConsistency::LocalSerial
            }
            _ => SerialConsistency::Serial,
        }
    }
}

/// `[store.cassandra]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraConfig {
    /// Contact points, `host:port`; the driver discovers the rest of the cluster.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// Replicas per row when the keyspace is created here with SimpleStrategy (one data
    /// centre). Ignored when `datacenters` is set; both apply only to a keyspace that does not
    /// exist yet (an operator may also create it beforehand, docs/storage.md).
    pub replication_factor: u32,
    /// `"name:replicas"` per data centre, e.g. `["dc1:3", "dc2:3"]`: the keyspace is created
    /// with NetworkTopologyStrategy. Empty: SimpleStrategy with `replication_factor`.
    pub datacenters: Vec<String>,
    /// Of every read and write; lightweight transactions use the matching serial level.
    pub consistency: ConsistencyLevel,
    /// Width of a comment time bucket (a partition of the replay index). Fixed when the
    /// keyspace is created: a different value later is refused at start-up.
    pub bucket_ms: u64,
    /// Per request; a commit is several requests.
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        CassandraConfig {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "livecomments".into(),
            replication_factor: 1,
            datacenters: Vec::new(),
            consistency: ConsistencyLevel::LocalQuorum,
            bucket_ms: 60_000,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
        }
    }
}

impl CassandraConfig {
    /// Checks what Cassandra would refuse later, with a message naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("store.cassandra.nodes is empty".into());
        }
        if let Some(n) = self
            .nodes
            .iter()
            .find(|n| n.is_empty() || n.contains(char::is_whitespace))
        {
            return Err(format!(
                "store.cassandra.nodes entry {n:?} must be host:port (e.g. 127.0.0.1:9042)"
            ));
        }
        let ks = &self.keyspace;
        if ks.is_empty()
            || ks.len() > 48
            || !ks.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "store.cassandra.keyspace {ks:?} must be 1-48 characters of A-Z, a-z, 0-9 and _"
            ));
        }
        if self.replication_factor == 0 {
            return Err("store.cassandra.replication_factor must be at least 1".into());
        }
        self.replication()?;
        if self.bucket_ms == 0 || i64::try_from(self.bucket_ms).is_err() {
            return Err("store.cassandra.bucket_ms must be a positive number of ms".into());
        }
        if self.request_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err("store.cassandra timeouts must be positive".into());
        }
        Ok(())
    }

    /// The keyspace's `replication` map in CQL.
    pub(crate) fn replication(&self) -> Result<String, String> {
        if self.datacenters.is_empty() {
            return Ok(format!(
                "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                self.replication_factor
            ));
        }
        let mut parts = vec!["'class': 'NetworkTopologyStrategy'".to_string()];
        for dc in &self.datacenters {
            let parsed = dc.rsplit_once(':').and_then(|(name, n)| {
                let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
                let name = name.trim();
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                ok.then(|| format!("'{name}': {n}"))
            });
            match parsed {
                Some(p) => parts.push(p),
                None => {
                    return Err(format!(
                        "store.cassandra.datacenters entry {dc:?} must be \"name:replicas\" \
                         (e.g. \"dc1:3\")"
                    ))
                }
            }
        }
        Ok(format!("{{{}}}", parts.join(", ")))
    }
}

/// A connection to the cluster with its prepared statements; cheap to clone.
#[derive(Clone)]
pub struct CassandraStore {
    inner: Arc<Inner>,
}

struct Inner {
    session: Session,
    st: Statements,
    /// Width of a time bucket (ms), from the keyspace's layout row.
    bucket_ms: u64,
    /// Events per seq bucket, from the layout row.
    seq_bucket: u64,
}

/// Cassandra's default `batch_size_fail_threshold` is 50 KiB: a commit's writes go out in
/// logged batches of at most this many bytes of values.
const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Values per `IN (...)` read.
const MAX_IN: usize = 100;
/// Concurrent requests of one store call that fans out (likes, lookups by id).
const FAN_OUT: usize = 16;
/// Open-queue days older than this that read empty are forgotten (their items were decided).
const PRUNE_AFTER_DAYS: i64 = 2;
const DAY_MS: i64 = 86_400_000;

impl CassandraStore {
    /// Connects, creates or checks the keyspace and its tables, prepares every statement.
    pub async fn connect(config: &CassandraConfig) -> Result<Self, StoreError> {
        config.validate().map_err(CassError::Config)?;
        let started = Instant::now();
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency.cql())
            .serial_consistency(Some(config.consistency.serial()))
            .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(CassError::from)?;
        let layout = schema::ensure(&session, config).await?;
        let st = Statements::prepare(&session, &config.keyspace).await?;
        tracing::info!(
            nodes = ?config.nodes,
            keyspace = %config.keyspace,
            bucket_ms = layout.bucket_ms,
            seq_bucket = layout.seq_bucket,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "connected to cassandra"
        );
        Ok(CassandraStore {
            inner: Arc::new(Inner {
                session,
                st,
                bucket_ms: layout.bucket_ms,
                seq_bucket: layout.seq_bucket,
            }),
        })
    }
}

// ---- small helpers ----

/// A value written to a bigint column (Cassandra has no unsigned integers).
fn int(v: u64) -> Result<i64, CassError> {
    i64::try_from(v).map_err(|_| CassError::Rejected(format!("{v} does not fit a bigint")))
}

/// A bound of a range read: values above `i64::MAX` are never stored.
fn bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> Result<u64, CassError> {
    u64::try_from(v).map_err(|_| CassError::Decode(format!("negative value {v}")))
}

fn count(c: Option<Counter>) -> u64 {
    c.map_or(0, |c| u64::try_from(c.0).unwrap_or(0))
}

fn json<T: Serialize>(v: &T) -> Result<String, CassError> {
    Ok(serde_json::to_string(v)?)
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, CassError> {
    Ok(serde_json::from_str(s)?)
}

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

fn status_name(s: QueueStatus) -> &'static str {
    match s {
        QueueStatus::Open => "open",
        QueueStatus::Approved => "approved",
        QueueStatus::Retracted => "retracted",
    }
}

/// Scope of the listing of everything (not a valid stream id, so it cannot clash with one).
const ALL: &str = "*";

/// The `[applied]` column of a lightweight transaction's answer.
fn applied(res: QueryResult) -> Result<bool, CassError> {
    let rows = res.into_rows_result()?;
    let Some(idx) = rows
        .column_specs()
        .iter()
        .position(|c| c.name() == "[applied]")
    else {
        return Err(CassError::Decode("no [applied] column".into()));
    };
    let row = rows
        .maybe_first_row::<scylla::value::Row>()?
        .ok_or_else(|| CassError::Decode("no lightweight transaction row".into()))?;
    Ok(matches!(
        row.columns.get(idx),
        Some(Some(scylla::value::CqlValue::Boolean(true)))
    ))
}

/// One write with its values, ready for a batch.
struct Write {
    st: PreparedStatement,
    values: Box<dyn SerializeRow + Send + Sync>,
    /// The partition written: a batch within one partition needs no batch log.
    partition: String,
    /// Rough size of the values, to keep batches under Cassandra's limit.
    bytes: usize,
}

fn write(
    st: &PreparedStatement,
    partition: String,
    bytes: usize,
    values: impl SerializeRow + Send + Sync + 'static,
) -> Write {
    Write {
        st: st.clone(),
        values: Box::new(values),
        partition,
        bytes: bytes + 16,
    }
}

/// Writes that must apply together, with what their batch must add once.
#[derive(Default)]
struct Unit {
    writes: Vec<Write>,
    /// Highest seq stored per stream (for `stream_seq`).
    heads: Vec<(StreamId, u64)>,
    /// Time buckets written per stream (for `bucket_index`).
    buckets: Vec<(StreamId, i64)>,
}

impl Unit {
    fn bytes(&self) -> usize {
        self.writes.iter().map(|w| w.bytes).sum::<usize>() + 64 * self.heads.len()
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    fn absorb(&mut self, other: Unit) {
        self.writes.extend(other.writes);
        self.heads.extend(other.heads);
        self.buckets.extend(other.buckets);
    }
}

/// A paged read, one page at a time.
struct Pages<'a, V> {
    session: &'a Session,
    st: &'a PreparedStatement,
    values: V,
    /// `None` once the last page was read.
    state: Option<PagingState>,
}

impl<'a, V: SerializeRow> Pages<'a, V> {
    fn new(session: &'a Session, st: &'a PreparedStatement, values: V) -> Self {
        Pages {
            session,
            st,
            values,
            state: Some(PagingState::start()),
        }
    }

    /// The next page (possibly empty: Cassandra may end a page early), `None` after the last.
    async fn next<R: for<'f> DeserializeRow<'f, 'f>>(
        &mut self,
    ) -> Result<Option<Vec<R>>, CassError> {
        let Some(state) = self.state.take() else {
            return Ok(None);
        };
        let (res, paging) = self
            .session
            .execute_single_page(self.st, &self.values, state)
            .await?;
        self.state = match paging.into_paging_control_flow() {
            ControlFlow::Continue(s) => Some(s),
            ControlFlow::Break(()) => None,
        };
        let rows = res.into_rows_result()?;
        let out = rows.rows::<R>()?.collect::<Result<Vec<R>, _>>()?;
        Ok(Some(out))
    }

    async fn all<R: for<'f> DeserializeRow<'f, 'f>>(mut self) -> Result<Vec<R>, CassError> {
        let mut out = Vec::new();
        while let Some(page) = self.next::<R>().await? {
            out.extend(page);
        }
        Ok(out)
    }
}

/// A row of `events`.
type EventRow = (i64, String, String, Option<String>);

/// A parsed row of `events`.
enum Stored {
    Comment(StoredComment),
    Other(StoredEvent),
}

fn parse_event(row: &EventRow) -> Result<Stored, CassError> {
    let (_, kind, body, visibility) = row;
    if kind == "comment" {
        let mut c: StoredComment = parse(body)?;
        if let Some(v) = visibility {
            c.visibility = parse(v)?;
        }
        Ok(Stored::Comment(c))
    } else {
        Ok(Stored::Other(parse(body)?))
    }
}

impl Inner {
    fn bucket(&self, offset_ms: u64) -> u64 {
        offset_ms / self.bucket_ms
    }

    fn seq_bucket(&self, seq: u64) -> u64 {
        seq / self.seq_bucket
    }

    async fn exec(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult, CassError> {
        Ok(self.session.execute_unpaged(st, values).await?)
    }

    async fn first<R: for<'f> DeserializeRow<'f, 'f>>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>, CassError> {
        let rows = self.exec(st, values).await?.into_rows_result()?;
        Ok(rows.maybe_first_row::<R>()?)
    }

    fn pages<'a, V: SerializeRow>(&'a self, st: &'a PreparedStatement, values: V) -> Pages<'a, V> {
        Pages::new(&self.session, st, values)
    }

    /// Applies writes as one batch: unlogged when they share a partition (atomic and isolated
    /// there anyway), logged otherwise (the batch log replays it whole after a coordinator
    /// failure).
    async fn apply(&self, writes: Vec<Write>) -> Result<(), CassError> {
        match writes.as_slice() {
            [] => Ok(()),
            [w] => {
                self.session.execute_unpaged(&w.st, &w.values).await?;
                Ok(())
            }
            [first, rest @ ..] => {
                let one = rest.iter().all(|w| w.partition == first.partition);
                let mut batch = CqlBatch::new(if one {
                    BatchType::Unlogged
                } else {
                    BatchType::Logged
                });
                // Every statement here rewrites fixed values: repeating the batch is harmless.
                batch.set_is_idempotent(true);
                let mut values = Vec::with_capacity(writes.len());
                for w in writes {
                    batch.append_statement(w.st);
                    values.push(w.values);
                }
                self.session.batch(&batch, values).await?;
                Ok(())
            }
        }
    }

    /// Applies counter updates (never retried by the driver: counters are not idempotent).
    async fn apply_counters(&self, writes: Vec<Write>) -> Result<(), CassError> {
        match writes.as_slice() {
            [] => Ok(()),
            [w] => {
                self.session.execute_unpaged(&w.st, &w.values).await?;
                Ok(())
            }
            _ => {
                let mut batch = CqlBatch::new(BatchType::Counter);
                let mut values = Vec::with_capacity(writes.len());
                for w in writes {
                    batch.append_statement(w.st);
                    values.push(w.values);
                }
                self.session.batch(&batch, values).await?;
                Ok(())
            }
        }
    }

    // ---- reads of comments ----

    /// Rows of a table keyed by (stream, seq bucket, seq) for `seqs`, grouped per seq bucket:
    /// one range read (`range`) where the seqs are dense — spanning fewer than `slack(n)` seqs
    /// for `n` wanted — and `IN` lists (`list`) where they are scattered.
    async fn rows_by_seq<R: for<'f> DeserializeRow<'f, 'f> + Send>(
        &self,
        stream: &StreamId,
        seqs: &[u64],
        range: &PreparedStatement,
        list: &PreparedStatement,
        slack: fn(u64) -> u64,
    ) -> Result<Vec<R>, CassError> {
        let mut groups: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &seq in seqs {
            groups.entry(self.seq_bucket(seq)).or_default().push(seq);
        }
        let s = stream.as_str();
        let reads = groups.into_iter().flat_map(|(sb, mut seqs)| {
            seqs.sort_unstable();
            seqs.dedup();
            let (lo, hi) = (seqs[0], seqs[seqs.len() - 1]);
            let dense = hi - lo < slack(seqs.len() as u64);
            let parts: Vec<Vec<u64>> = if dense {
                vec![seqs]
            } else {
                seqs.chunks(MAX_IN).map(<[u64]>::to_vec).collect()
            };
            parts.into_iter().map(move |part| async move {
                let sb = bound(sb);
                if dense {
                    let (lo, hi) = (bound(part[0]), bound(part[part.len() - 1]));
                    self.pages(range, (s, sb, lo, hi)).all::<R>().await
                } else {
                    let values: Vec<i64> = part.iter().map(|&v| bound(v)).collect();
                    self.pages(list, (s, sb, values)).all::<R>().await
                }
            })
        });
        Ok(try_join_all(reads).await?.into_iter().flatten().collect())
    }

    /// Event rows by seq: a range read for a replay page, `IN` lists for a thread.
    async fn load_events(
        &self,
        stream: &StreamId,
        seqs: &[u64],
    ) -> Result<HashMap<u64, EventRow>, CassError> {
        let (range, list) = (&self.st.events_range, &self.st.events_in);
        let rows: Vec<EventRow> = self
            .rows_by_seq(stream, seqs, range, list, |n| 2 * n + 16)
            .await?;
        let mut out = HashMap::new();
        for row in rows {
            out.insert(uint(row.0)?, row);
        }
        Ok(out)
    }

    /// Comments by seq (those that exist; other events at those seqs are an error).
    async fn load_comments(
        &self,
        stream: &StreamId,
        seqs: &[u64],
    ) -> Result<HashMap<u64, StoredComment>, CassError> {
        let want: HashSet<u64> = seqs.iter().copied().collect();
        let mut out = HashMap::new();
        for (seq, row) in self.load_events(stream, seqs).await? {
            if !want.contains(&seq) {
                continue;
            }
            match parse_event(&row)? {
                Stored::Comment(c) => {
                    out.insert(seq, c);
                }
                Stored::Other(e) => {
                    return Err(CassError::Decode(format!(
                        "seq {seq} of {stream} is not a comment: {e:?}"
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Like and reply counts by seq (absent when both are 0).
    async fn load_counts(
        &self,
        stream: &StreamId,
        seqs: &[u64],
    ) -> Result<HashMap<u64, (u64, u64)>, CassError> {
        type Row = (i64, Option<Counter>, Option<Counter>);
        let (range, list) = (&self.st.counts_range, &self.st.counts_in);
        // Counter rows are sparse (most comments have neither likes nor replies): a range
        // returns only those that exist, so it is worth reading over wider gaps.
        let rows: Vec<Row> = self
            .rows_by_seq(stream, seqs, range, list, |n| 8 * n + 64)
            .await?;
        let mut out = HashMap::new();
        for (seq, likes, replies) in rows {
            out.insert(uint(seq)?, (count(likes), count(replies)));
        }
        Ok(out)
    }

    /// Fills in the like and reply counts of comments.
    async fn with_counts<'c>(
        &self,
        stream: &StreamId,
        comments: impl IntoIterator<Item = &'c mut Comment>,
    ) -> Result<(), CassError> {
        let mut comments: Vec<&mut Comment> = comments.into_iter().collect();
        if comments.is_empty() {
            return Ok(());
        }
        let seqs: Vec<u64> = comments.iter().map(|c| c.seq).collect();
        let counts = self.load_counts(stream, &seqs).await?;
        for c in comments.iter_mut() {
            let (likes, replies) = counts.get(&c.seq).copied().unwrap_or((0, 0));
            c.likes = likes;
            c.replies = replies;
        }
        Ok(())
    }

    /// Appends the visible comments among `seqs` (in that order) until `out` holds `limit`.
    /// An index row whose comment is not there yet (a batch still being applied) is skipped.
    async fn collect_visible(
        &self,
        stream: &StreamId,
        seqs: &[u64],
        out: &mut Vec<Comment>,
        limit: usize,
    ) -> Result<(), CassError> {
        let mut rest = seqs;
        while !rest.is_empty() && out.len() < limit {
            let take = (limit - out.len()).max(32).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let comments = self.load_comments(stream, chunk).await?;
            for seq in chunk {
                if out.len() >= limit {
                    break;
                }
                if let Some(c) = comments.get(seq) {
                    if c.visibility == Visibility::Visible {
                        out.push(c.comment.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Buckets of an indexed name within `[lo, hi]`, in the order asked for.
    fn buckets(&self, name: &str, lo: i64, hi: i64, asc: bool) -> Pages<'_, (String, i64, i64)> {
        let st = if asc {
            &self.st.buckets_asc
        } else {
            &self.st.buckets_desc
        };
        self.pages(st, (name.to_owned(), lo, hi))
    }

    /// The time window `[from, to)` after an optional cursor, oldest or newest first.
    async fn window(
        &self,
        stream: &StreamId,
        lower: ((u64, u64), bool),
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<Comment>, CassError> {
        let ((lo_off, lo_seq), exclusive) = lower;
        let mut out = Vec::new();
        if limit == 0 || lo_off >= to {
            return Ok(out);
        }
        let s = stream.as_str();
        let name = format!("time/{s}");
        let (first, last) = (self.bucket(lo_off), self.bucket(to - 1));
        let mut buckets = self.buckets(&name, bound(first), bound(last), !newest_first);
        let st = match (newest_first, exclusive) {
            (true, _) => &self.st.time_rev,
            (false, true) => &self.st.time_after,
            (false, false) => &self.st.time_from,
        };
        'outer: while let Some(page) = buckets.next::<(i64,)>().await? {
            for (b,) in page {
                let mut keys =
                    self.pages(st, (s, b, bound(lo_off), bound(lo_seq), bound(to), 0_i64));
                while let Some(rows) = keys.next::<(i64, i64)>().await? {
                    let seqs = rows
                        .iter()
                        .map(|(_, seq)| uint(*seq))
                        .collect::<Result<Vec<_>, _>>()?;
                    self.collect_visible(stream, &seqs, &mut out, limit).await?;
                    if out.len() >= limit {
                        break 'outer;
                    }
                }
            }
        }
        self.with_counts(stream, out.iter_mut()).await?;
        Ok(out)
    }

    /// The seq of a visible comment: likes on a removed comment would keep it ranked and leak
    /// its id.
    async fn visible_seq(&self, stream: &StreamId, id: &str) -> Result<Option<u64>, CassError> {
        let Some(seq) = self.seq_of(stream, id).await? else {
            return Ok(None);
        };
        let visible = self
            .load_comments(stream, &[seq])
            .await?
            .get(&seq)
            .is_some_and(|c| c.visibility == Visibility::Visible);
        Ok(visible.then_some(seq))
    }

    async fn seq_of(&self, stream: &StreamId, id: &str) -> Result<Option<u64>, CassError> {
        match self
            .first::<(i64,)>(&self.st.get_id, (stream.as_str(), id))
            .await?
        {
            Some((seq,)) => Ok(Some(uint(seq)?)),
            None => Ok(None),
        }
    }

    async fn get_item(&self, id: &str) -> Result<Option<QueueItem>, CassError> {
        match self.first::<(String,)>(&self.st.get_item, (id,)).await? {
            Some((item,)) => Ok(Some(parse(&item)?)),
            None => Ok(None),
        }
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<u64, CassError> {
        match self
            .first::<(Option<i64>,)>(&self.st.get_head, (stream.as_str(),))
            .await?
        {
            Some((Some(seq),)) => uint(seq),
            _ => Ok(0),
        }
    }

    // ---- writes ----

    /// The rows of a comment in the stream's log: body, time index, id, thread.
    fn comment_unit(
        &self,
        c: &StoredComment,
        visibility: &Visibility,
        dedup: bool,
    ) -> Result<Unit, CassError> {
        let s = c.comment.stream.as_str();
        let seq = int(c.comment.seq)?;
        let offset = int(c.comment.offset_ms)?;
        let b = int(self.bucket(c.comment.offset_ms))?;
        let sb = int(self.seq_bucket(c.comment.seq))?;
        let body = json(c)?;
        let vis = json(visibility)?;
        let id = c.comment.id.clone();
        let st = &self.st;
        let mut writes = vec![
            write(
                &st.put_time,
                format!("t/{s}/{b}"),
                s.len() + 24,
                (s.to_owned(), b, offset, seq),
            ),
            write(
                &st.put_event,
                format!("e/{s}/{sb}"),
                s.len() + body.len() + vis.len() + 24,
                (s.to_owned(), sb, seq, "comment", body, Some(vis)),
            ),
            write(
                &st.put_id,
                format!("i/{s}/{id}"),
                s.len() + id.len() + 8,
                (s.to_owned(), id.clone(), seq),
            ),
        ];
        if dedup {
            let (u, m) = (c.comment.user.id.as_str(), c.client_msg_id.as_str());
            writes.push(write(
                &st.set_dedup,
                format!("d/{s}/{u}/{m}"),
                s.len() + u.len() + m.len() + id.len() + 8,
                (id, seq, s.to_owned(), u.to_owned(), m.to_owned()),
            ));
        }
        if let Some(parent) = &c.comment.reply_to {
            writes.push(write(
                &st.put_reply,
                format!("r/{s}/{parent}"),
                s.len() + parent.len() + 8,
                (s.to_owned(), parent.clone(), seq),
            ));
        }
        Ok(Unit {
            writes,
            heads: vec![(c.comment.stream.clone(), c.comment.seq)],
            buckets: vec![(c.comment.stream.clone(), b)],
        })
    }

    /// A shadow-banned author's comment: apart from the log, found only by its retry key.
    fn shadow_unit(&self, c: &StoredComment, dedup: bool) -> Result<Unit, CassError> {
        let s = c.comment.stream.as_str();
        let body = json(c)?;
        let id = c.comment.id.clone();
        let mut writes = vec![write(
            &self.st.put_shadow,
            format!("s/{s}/{id}"),
            s.len() + id.len() + body.len(),
            (s.to_owned(), id.clone(), body),
        )];
        if dedup {
            let (u, m) = (c.comment.user.id.as_str(), c.client_msg_id.as_str());
            writes.push(write(
                &self.st.set_dedup,
                format!("d/{s}/{u}/{m}"),
                s.len() + u.len() + m.len() + id.len() + 8,
                (
                    id,
                    int(c.comment.seq)?,
                    s.to_owned(),
                    u.to_owned(),
                    m.to_owned(),
                ),
            ));
        }
        Ok(Unit {
            writes,
            ..Unit::default()
        })
    }

    /// A queue item with its listing rows (replacing those of its previous version).
    fn item_writes(
        &self,
        item: &QueueItem,
        old: Option<&QueueItem>,
        markers: &mut BTreeSet<(String, i64)>,
    ) -> Result<Vec<Write>, CassError> {
        let body = json(item)?;
        let keys = |i: &QueueItem| -> BTreeSet<(String, &'static str, i64)> {
            let day = day_of(i.created_at);
            let mut k = BTreeSet::new();
            for scope in [ALL.to_owned(), i.stream.to_string()] {
                for status in [ALL, status_name(i.status)] {
                    k.insert((scope.clone(), status, day));
                }
            }
            k
        };
        let new = keys(item);
        let id = item.id.as_str();
        let mut writes = vec![write(
            &self.st.put_item,
            format!("q/{id}"),
            id.len() + body.len(),
            (id.to_owned(), body.clone()),
        )];
        if let Some(old) = old {
            for (scope, status, day) in keys(old).difference(&new) {
                writes.push(write(
                    &self.st.delete_item_index,
                    format!("qi/{scope}/{status}/{day}"),
                    scope.len() + id.len() + 16,
                    (scope.clone(), *status, *day, id.to_owned()),
                ));
            }
        }
        for (scope, status, day) in &new {
            writes.push(write(
                &self.st.put_item_index,
                format!("qi/{scope}/{status}/{day}"),
                scope.len() + id.len() + body.len() + 16,
                (scope.clone(), *status, *day, id.to_owned(), body.clone()),
            ));
            markers.insert((format!("queue/{scope}/{status}"), *day));
        }
        Ok(writes)
    }

    /// Audit rows: in the log of everything and in the stream's.
    fn audit_writes(
        &self,
        e: &AuditEntry,
        markers: &mut BTreeSet<(String, i64)>,
    ) -> Result<Vec<Write>, CassError> {
        let body = json(e)?;
        let uid = ulid::Ulid::new().to_string();
        let day = day_of(e.at);
        let mut scopes = vec![ALL.to_owned()];
        if let Some(s) = &e.stream {
            scopes.push(s.to_string());
        }
        let mut writes = Vec::new();
        for scope in scopes {
            markers.insert((format!("audit/{scope}"), day));
            writes.push(write(
                &self.st.put_audit,
                format!("a/{scope}/{day}"),
                scope.len() + uid.len() + body.len() + 16,
                (scope, day, e.at, uid.clone(), body.clone()),
            ));
        }
        Ok(writes)
    }

    fn marker_writes(&self, markers: BTreeSet<(String, i64)>) -> Vec<Write> {
        markers
            .into_iter()
            .map(|(name, b)| {
                write(
                    &self.st.put_bucket,
                    format!("b/{name}"),
                    name.len() + 8,
                    (name, b),
                )
            })
            .collect()
    }

    /// Turns units into logged batches under the size limit, never splitting a unit, each
    /// with its head and bucket markers.
    fn chunks(&self, units: Vec<Unit>) -> Result<Vec<Vec<Write>>, CassError> {
        let mut chunks = Vec::new();
        let mut current = Unit::default();
        let mut size = 0;
        for unit in units {
            let n = unit.bytes();
            if !current.is_empty() && size + n > MAX_BATCH_BYTES {
                chunks.push(self.finish_chunk(std::mem::take(&mut current))?);
                size = 0;
            }
            size += n;
            current.absorb(unit);
        }
        if !current.is_empty() {
            chunks.push(self.finish_chunk(current)?);
        }
        Ok(chunks)
    }

    fn finish_chunk(&self, unit: Unit) -> Result<Vec<Write>, CassError> {
        let mut writes = unit.writes;
        let mut heads: BTreeMap<StreamId, u64> = BTreeMap::new();
        for (s, seq) in unit.heads {
            let h = heads.entry(s).or_insert(seq);
            *h = (*h).max(seq);
        }
        for (s, seq) in heads {
            let seq = int(seq)?;
            // The write time is the seq: of all writes of the cell, the highest seq wins,
            // whatever order the batches arrive in.
            writes.push(write(
                &self.st.set_head,
                format!("h/{s}"),
                s.as_str().len() + 16,
                (seq, seq, s.to_string()),
            ));
        }
        let markers: BTreeSet<(String, i64)> = unit
            .buckets
            .into_iter()
            .map(|(s, b)| (format!("time/{s}"), b))
            .collect();
        writes.extend(self.marker_writes(markers));
        Ok(writes)
    }
}

/// What a batch's retractions and restorations address.
struct Target {
    comment: StoredComment,
    /// Visibility as stored; `None` for a comment inserted by the same batch.
    stored: Option<Visibility>,
    /// After every event of the batch so far.
    now: Visibility,
}

impl Inner {
    /// Reads what the batch depends on, checks it, and lays out its writes in units.
    /// Returns the units (moderation first, then one per comment) and the reply count
    /// changes as `(stream, parent seq, delta)`.
    async fn plan(
        &self,
        batch: &Batch,
    ) -> Result<(Vec<Unit>, Vec<(StreamId, u64, i64)>), CassError> {
        // 1. Comments the retractions and restorations address that are not earlier in the
        //    batch: read them first, so a missing one fails the batch before anything is written.
        let mut seen: HashSet<(StreamId, u64)> = HashSet::new();
        let mut wanted: BTreeMap<StreamId, BTreeSet<u64>> = BTreeMap::new();
        // Replies that may be stored already (the same batch committed again after a failure
        // half-way): they must not count twice for their parent.
        let mut replies: BTreeMap<StreamId, BTreeSet<u64>> = BTreeMap::new();
        for e in &batch.events {
            match e {
                StoredEvent::Comment(c) if c.visibility != Visibility::Shadow => {
                    seen.insert((c.comment.stream.clone(), c.comment.seq));
                    if c.comment.reply_to.is_some() {
                        replies
                            .entry(c.comment.stream.clone())
                            .or_default()
                            .insert(c.comment.seq);
                    }
                }
                StoredEvent::Comment(_) => {}
                StoredEvent::Retract {
                    stream,
                    comment_seq,
                    ..
                }
                | StoredEvent::Restore {
                    stream,
                    comment_seq,
                    ..
                } => {
                    if !seen.contains(&(stream.clone(), *comment_seq)) {
                        wanted
                            .entry(stream.clone())
                            .or_default()
                            .insert(*comment_seq);
                    }
                }
            }
        }
        let loads = wanted.iter().map(|(stream, seqs)| async move {
            let seqs: Vec<u64> = seqs.iter().copied().collect();
            Ok::<_, CassError>((stream.clone(), self.load_comments(stream, &seqs).await?))
        });
        let mut existing: HashMap<(StreamId, u64), StoredComment> = HashMap::new();
        for (stream, found) in try_join_all(loads).await? {
            for (seq, c) in found {
                existing.insert((stream.clone(), seq), c);
            }
        }
        let loads = replies.iter().map(|(stream, seqs)| async move {
            let seqs: Vec<u64> = seqs.iter().copied().collect();
            Ok::<_, CassError>((stream.clone(), self.load_events(stream, &seqs).await?))
        });
        let mut stored_before: HashSet<(StreamId, String)> = HashSet::new();
        for (stream, rows) in try_join_all(loads).await? {
            for row in rows.values() {
                if let Stored::Comment(c) = parse_event(row)? {
                    stored_before.insert((stream.clone(), c.comment.id));
                }
            }
        }
        // Previous versions of the queue items (their listing rows move).
        let mut last_item: HashMap<&str, usize> = HashMap::new();
        for (i, item) in batch.items.iter().enumerate() {
            last_item.insert(item.id.as_str(), i);
        }
        let olds = last_item
            .keys()
            .map(|id| async move { Ok::<_, CassError>((*id, self.get_item(id).await?)) });
        let old_items: HashMap<&str, Option<QueueItem>> =
            try_join_all(olds).await?.into_iter().collect();

        // 2. Apply the events in order, in memory, as the embedded store does in its
        //    transaction: final visibility of every comment touched, reply count changes.
        let mut targets: HashMap<(StreamId, u64), Target> = HashMap::new();
        let mut inserted: Vec<(StoredComment, bool)> = Vec::new(); // (comment, addressed)
        let mut inserted_at: HashMap<(StreamId, u64), usize> = HashMap::new();
        let mut reply_delta: BTreeMap<(StreamId, String), i64> = BTreeMap::new();
        let mut log_events: Vec<&StoredEvent> = Vec::new();
        let mut shadows: Vec<&StoredComment> = Vec::new();
        for e in &batch.events {
            let (stream, comment_seq, new) = match e {
                StoredEvent::Comment(c) if c.visibility == Visibility::Shadow => {
                    shadows.push(c);
                    continue;
                }
                StoredEvent::Comment(c) => {
                    let key = (c.comment.stream.clone(), c.comment.seq);
                    let again =
                        stored_before.contains(&(c.comment.stream.clone(), c.comment.id.clone()));
                    if c.visibility == Visibility::Visible && !again {
                        if let Some(p) = &c.comment.reply_to {
                            *reply_delta
                                .entry((c.comment.stream.clone(), p.clone()))
                                .or_default() += 1;
                        }
                    }
                    inserted_at.insert(key.clone(), inserted.len());
                    inserted.push((c.clone(), false));
                    targets.insert(
                        key,
                        Target {
                            comment: c.clone(),
                            stored: None,
                            now: c.visibility.clone(),
                        },
                    );
                    continue;
                }
                StoredEvent::Retract {
                    stream,
                    comment_seq,
                    reason,
                    actor,
                    at,
                    ..
                } => (
                    stream,
                    *comment_seq,
                    Visibility::Retracted {
                        reason: reason.clone(),
                        actor: actor.clone(),
                        at: *at,
                    },
                ),
                StoredEvent::Restore {
                    stream,
                    comment_seq,
                    ..
                } => (stream, *comment_seq, Visibility::Visible),
            };
            log_events.push(e);
            let key = (stream.clone(), comment_seq);
            if !targets.contains_key(&key) {
                let c = existing.remove(&key).ok_or_else(|| {
                    CassError::Decode(format!("no comment at seq {comment_seq} of {stream}"))
                })?;
                let stored = c.visibility.clone();
                targets.insert(
                    key.clone(),
                    Target {
                        comment: c,
                        stored: Some(stored.clone()),
                        now: stored,
                    },
                );
            }
            if let Some(&i) = inserted_at.get(&key) {
                inserted[i].1 = true;
            }
            let t = targets
                .get_mut(&key)
                .ok_or_else(|| CassError::Decode("lost a retraction target".into()))?;
            let was_visible = t.now == Visibility::Visible;
            let is_visible = new == Visibility::Visible;
            if was_visible != is_visible {
                if let Some(p) = &t.comment.comment.reply_to {
                    *reply_delta.entry((stream.clone(), p.clone())).or_default() +=
                        if is_visible { 1 } else { -1 };
                }
            }
            t.now = new;
        }

        // 3. Reply counts go to the parent's counter row, addressed by its seq.
        let mut by_id: HashMap<(StreamId, String), u64> = HashMap::new();
        for (c, _) in &inserted {
            by_id.insert(
                (c.comment.stream.clone(), c.comment.id.clone()),
                c.comment.seq,
            );
        }
        let changes: Vec<((StreamId, String), i64)> =
            reply_delta.into_iter().filter(|(_, d)| *d != 0).collect();
        let lookups = changes.iter().map(|((stream, parent), delta)| {
            let known = by_id.get(&(stream.clone(), parent.clone())).copied();
            async move {
                let seq = match known {
                    Some(seq) => Some(seq),
                    None => self.seq_of(stream, parent).await?,
                };
                Ok::<_, CassError>(seq.map(|seq| (stream.clone(), seq, *delta)))
            }
        });
        // A reply to an unknown comment counts for nobody (the write path checks parents).
        let counters: Vec<(StreamId, u64, i64)> =
            try_join_all(lookups).await?.into_iter().flatten().collect();

        // 4. Lay out the writes. Retry keys: the last comment with a key answers for it.
        let mut dedup_owner: HashMap<(&StreamId, &UserId, &str), usize> = HashMap::new();
        let all_comments = inserted
            .iter()
            .map(|(c, _)| c)
            .chain(shadows.iter().copied());
        for (i, c) in all_comments.enumerate() {
            dedup_owner.insert(
                (
                    &c.comment.stream,
                    &c.comment.user.id,
                    c.client_msg_id.as_str(),
                ),
                i,
            );
        }
        let owns = |i: usize, c: &StoredComment| {
            dedup_owner.get(&(
                &c.comment.stream,
                &c.comment.user.id,
                c.client_msg_id.as_str(),
            )) == Some(&i)
        };

        // Everything of a moderation step in one unit: events with the visibility they change,
        // comments they address, queue items, audit, reporters.
        let mut moderation = Unit::default();
        let mut markers = BTreeSet::new();
        for e in log_events {
            let (stream, seq, kind) = match e {
                StoredEvent::Retract { stream, seq, .. } => (stream, *seq, "retract"),
                StoredEvent::Restore { stream, seq, .. } => (stream, *seq, "restore"),
                StoredEvent::Comment(_) => continue,
            };
            let s = stream.as_str();
            let body = json(e)?;
            let sb = int(self.seq_bucket(seq))?;
            moderation.writes.push(write(
                &self.st.put_event,
                format!("e/{s}/{sb}"),
                s.len() + body.len() + 24,
                // Unset, not null: a null would write a tombstone.
                (
                    s.to_owned(),
                    sb,
                    int(seq)?,
                    kind,
                    body,
                    MaybeUnset::<String>::Unset,
                ),
            ));
            moderation.heads.push((stream.clone(), seq));
        }
        for ((stream, seq), t) in &targets {
            let Some(stored) = &t.stored else { continue };
            if *stored != t.now {
                let s = stream.as_str();
                let sb = int(self.seq_bucket(*seq))?;
                let vis = json(&t.now)?;
                moderation.writes.push(write(
                    &self.st.set_visibility,
                    format!("e/{s}/{sb}"),
                    s.len() + vis.len() + 16,
                    (vis, s.to_owned(), sb, int(*seq)?),
                ));
            }
        }
        let mut comment_units = Vec::new();
        for (i, (c, addressed)) in inserted.iter().enumerate() {
            let key = (c.comment.stream.clone(), c.comment.seq);
            let vis = targets.get(&key).map_or(&c.visibility, |t| &t.now);
            let unit = self.comment_unit(c, vis, owns(i, c))?;
            if *addressed {
                moderation.absorb(unit);
            } else {
                comment_units.push(unit);
            }
        }
        for (j, c) in shadows.iter().enumerate() {
            comment_units.push(self.shadow_unit(c, owns(inserted.len() + j, c))?);
        }
        // Queue items: the last version of each; the open item of a comment and the retry key
        // of a held post, last writer wins (as in the embedded store's sequential inserts).
        let mut by_comment: BTreeMap<(StreamId, String), Option<String>> = BTreeMap::new();
        let mut held: BTreeMap<(StreamId, UserId, String), String> = BTreeMap::new();
        for (i, item) in batch.items.iter().enumerate() {
            if let Some(cid) = &item.comment_id {
                by_comment.insert(
                    (item.stream.clone(), cid.clone()),
                    (item.status == QueueStatus::Open).then(|| item.id.clone()),
                );
            }
            if let Some(h) = &item.held {
                held.insert(
                    (
                        item.stream.clone(),
                        h.author.id.clone(),
                        h.client_msg_id.clone(),
                    ),
                    item.id.clone(),
                );
            }
            if last_item.get(item.id.as_str()) == Some(&i) {
                let old = old_items.get(item.id.as_str()).and_then(Option::as_ref);
                moderation
                    .writes
                    .extend(self.item_writes(item, old, &mut markers)?);
            }
        }
        for ((stream, cid), item) in by_comment {
            moderation
                .writes
                .push(self.item_comment_write(&stream, &cid, item));
        }
        for ((stream, user, m), item) in held {
            let (s, u) = (stream.as_str(), user.as_str());
            moderation.writes.push(write(
                &self.st.set_dedup_held,
                format!("d/{s}/{u}/{m}"),
                s.len() + u.len() + m.len() + item.len(),
                (item, s.to_owned(), u.to_owned(), m),
            ));
        }
        for a in &batch.audit {
            moderation
                .writes
                .extend(self.audit_writes(a, &mut markers)?);
        }
        let reporters: BTreeSet<&(StreamId, String, UserId)> = batch.reporters.iter().collect();
        for (stream, cid, user) in reporters {
            let (s, u) = (stream.as_str(), user.as_str());
            moderation.writes.push(write(
                &self.st.put_reporter,
                format!("rp/{s}/{cid}"),
                s.len() + cid.len() + u.len(),
                (s.to_owned(), cid.clone(), u.to_owned()),
            ));
        }
        moderation.writes.extend(self.marker_writes(markers));

        let mut units = Vec::with_capacity(comment_units.len() + 1);
        if !moderation.is_empty() {
            units.push(moderation);
        }
        units.extend(comment_units);
        Ok((units, counters))
    }

    fn item_comment_write(&self, stream: &StreamId, cid: &str, item: Option<String>) -> Write {
        let s = stream.as_str();
        match item {
            Some(id) => write(
                &self.st.put_item_comment,
                format!("qc/{s}/{cid}"),
                s.len() + cid.len() + id.len(),
                (s.to_owned(), cid.to_owned(), id),
            ),
            None => write(
                &self.st.delete_item_comment,
                format!("qc/{s}/{cid}"),
                s.len() + cid.len(),
                (s.to_owned(), cid.to_owned()),
            ),
        }
    }
}

#[async_trait]
impl Store for CassandraStore {
    async fn create_stream(&self, stream: &StreamState) -> Result<bool, StoreError> {
        let me = &self.inner;
        let res = me
            .exec(
                &me.st.create_stream,
                (stream.id.as_str(), int(stream.version)?, json(stream)?),
            )
            .await?;
        Ok(applied(res)?)
    }

    async fn update_stream(&self, stream: &StreamState, expected: u64) -> Result<bool, StoreError> {
        let me = &self.inner;
        let res = me
            .exec(
                &me.st.update_stream,
                (
                    int(stream.version)?,
                    json(stream)?,
                    stream.id.as_str(),
                    int(expected)?,
                ),
            )
            .await?;
        Ok(applied(res)?)
    }

    async fn get_stream(&self, id: &StreamId) -> Result<Option<StreamState>, StoreError> {
        let me = &self.inner;
        match me
            .first::<(String,)>(&me.st.get_stream, (id.as_str(),))
            .await?
        {
            Some((state,)) => Ok(Some(parse(&state)?)),
            None => Ok(None),
        }
    }

    async fn list_streams(&self) -> Result<Vec<StreamState>, StoreError> {
        let me = &self.inner;
        let rows = me.pages(&me.st.all_streams, ()).all::<(String,)>().await?;
        let mut out = rows
            .iter()
            .map(|(s,)| parse::<StreamState>(s))
            .collect::<Result<Vec<_>, _>>()?;
        // Token order means nothing to callers: the embedded store lists by id.
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<u64, StoreError> {
        Ok(self.inner.last_seq(stream).await?)
    }

    async fn find_dedup(&self, keys: &[DedupKey]) -> Result<Vec<Option<DedupHit>>, StoreError> {
        let me = &self.inner;
        let lookups: Vec<_> = keys
            .iter()
            .map(|k| async move {
                let row = me
                    .first::<(Option<String>, Option<i64>, Option<String>)>(
                        &me.st.get_dedup,
                        (k.stream.as_str(), k.user.as_str(), k.client_msg_id.as_str()),
                    )
                    .await?;
                let hit = match row {
                    Some((Some(id), Some(seq), _)) => Some(DedupHit::Stored {
                        id,
                        seq: uint(seq)?,
                    }),
                    Some((_, _, Some(item))) => {
                        let declined = me
                            .get_item(&item)
                            .await?
                            .is_some_and(|i| i.status == QueueStatus::Retracted);
                        Some(if declined {
                            DedupHit::Declined { item }
                        } else {
                            DedupHit::Held { item }
                        })
                    }
                    _ => None,
                };
                Ok::<_, CassError>(hit)
            })
            .collect();
        Ok(futures_util::stream::iter(lookups)
            .buffered(FAN_OUT)
            .try_collect()
            .await?)
    }

    /// Stores a batch: every row is durable at the configured consistency when this returns
    /// `Ok`.
    ///
    /// What is atomic, and how:
    /// - Checks first: the comments that retractions and restorations address are read
    ///   before anything is written, so a batch addressing a missing comment fails whole.
    /// - Each comment's rows (body in `events`, time index, id, retry key, thread row, the
    ///   stream's last seq, the bucket marker) are in one logged batch: the batch log applies
    ///   all of them even if the coordinator dies half-way. So a retry key never points at a
    ///   comment that is not there, and a comment is findable every way or (until the batch
    ///   log replays it) not at all.
    /// - A moderation step (retractions and restorations with the visibility they change,
    ///   comments they address, queue items with their listing rows, audit entries,
    ///   reporters) is one logged batch.
    /// - A batch whose writes exceed 32 KiB (Cassandra refuses batches over 50 KiB by default)
    ///   is cut between comments into several logged batches, applied one after the other
    ///   in seq order. A failure then returns `Err` with earlier batches stored: those
    ///   comments are complete (all their rows) and their posters' retries find them by
    ///   their retry key and get the stored answer; nothing is ever stored twice, because
    ///   every row is keyed by the comment's identity and rewriting it writes the same
    ///   values. Their `seq` is not reused: the sequencer reads the last stored seq.
    /// - Reply counts are counters, updated after the rows they count are stored (counters
    ///   cannot be in a logged batch). A failure there leaves a count one low, never high,
    ///   and is logged; the commit still returns `Ok`, since every row is stored.
    /// - Logged batches give atomicity, not isolation: a reader may see some partitions of a
    ///   batch before others for a few milliseconds. Readers therefore skip index rows whose
    ///   comment is not there yet instead of failing.
    /// - Read-modify-write (visibility and reply counts) assumes, as the write path
    ///   guarantees, that one writer at a time applies a stream's moderation steps.
    async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let me = &self.inner;
        let started = Instant::now();
        let (units, counters) = me.plan(batch).await?;
        let chunks = me.chunks(units)?;
        let n = chunks.len();
        for chunk in chunks {
            me.apply(chunk).await?;
        }
        let counter_writes: Vec<Write> = counters
            .iter()
            .map(|(stream, seq, delta)| {
                let s = stream.as_str();
                let sb = int(me.seq_bucket(*seq))?;
                Ok(write(
                    &me.st.add_replies,
                    format!("c/{s}/{sb}"),
                    s.len() + 24,
                    (Counter(*delta), s.to_owned(), sb, int(*seq)?),
                ))
            })
            .collect::<Result<_, CassError>>()?;
        if let Err(e) = me.apply_counters(counter_writes).await {
            metrics::counter!("livecomments_store_counter_errors_total").increment(1);
            tracing::error!(error = %e, changes = counters.len(), "updating reply counts failed");
        }
        tracing::debug!(
            events = batch.events.len(),
            batches = n,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "commit"
        );
        Ok(())
    }

    async fn has_reported(
        &self,
        stream: &StreamId,
        comment_id: &str,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let me = &self.inner;
        Ok(me
            .first::<(String,)>(
                &me.st.get_reporter,
                (stream.as_str(), comment_id, user.as_str()),
            )
            .await?
            .is_some())
    }

    async fn add_reactions(
        &self,
        stream: &StreamId,
        counts: &[(String, u64)],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let me = &self.inner;
        let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
        for (emoji, n) in counts {
            let v = sums.entry(emoji.as_str()).or_default();
            *v = v.saturating_add(*n);
        }
        let s = stream.as_str();
        let writes = sums
            .into_iter()
            .map(|(emoji, n)| {
                write(
                    &me.st.add_reaction,
                    format!("x/{s}"),
                    s.len() + emoji.len() + 8,
                    (Counter(bound(n)), s.to_owned(), emoji.to_owned()),
                )
            })
            .collect();
        me.apply_counters(writes).await?;
        self.reaction_totals(stream).await
    }

    async fn reaction_totals(&self, stream: &StreamId) -> Result<Vec<(String, u64)>, StoreError> {
        let me = &self.inner;
        let rows = me
            .pages(&me.st.reactions, (stream.as_str(),))
            .all::<(String, Option<Counter>)>()
            .await?;
        Ok(rows.into_iter().map(|(e, n)| (e, count(n))).collect())
    }

    /// Likes: a lightweight transaction per change makes "once per user" hold across
    /// bridges; the count is a counter updated by the net change of the comment's likes.
    /// A failure between the two leaves the count off by one (the like itself is stored).
    async fn set_likes(&self, changes: &[LikeChange]) -> Result<Vec<Option<u64>>, StoreError> {
        let me = &self.inner;
        let groups = wire::store::likes_by_comment(changes);
        let work: Vec<_> = groups
            .into_iter()
            .map(|(stream, cid, idxs)| async move {
                let mut out: Vec<(usize, Option<u64>)> = Vec::new();
                let Some(seq) = me.visible_seq(stream, cid).await? else {
                    return Ok::<_, CassError>(out);
                };
                let s = stream.as_str();
                let mut delta = 0_i64;
                let mut done: Vec<(usize, i64)> = Vec::new();
                for i in idxs {
                    let ch = &changes[i];
                    let st = if ch.like { &me.st.like } else { &me.st.unlike };
                    if applied(me.exec(st, (s, cid, ch.user.as_str())).await?)? {
                        delta += if ch.like { 1 } else { -1 };
                        done.push((i, delta));
                    }
                }
                if done.is_empty() {
                    return Ok(out);
                }
                let sb = int(me.seq_bucket(seq))?;
                if delta != 0 {
                    me.exec(&me.st.add_likes, (Counter(delta), s, sb, int(seq)?))
                        .await?;
                }
                let now = me
                    .load_counts(stream, &[seq])
                    .await?
                    .get(&seq)
                    .map_or(0, |(likes, _)| *likes);
                for (i, d) in done {
                    // The count right after change i, as if the changes applied one by one.
                    let n = i64::try_from(now).unwrap_or(i64::MAX) - delta + d;
                    out.push((i, Some(u64::try_from(n).unwrap_or(0))));
                }
                Ok(out)
            })
            .collect();
        let results: Vec<Vec<(usize, Option<u64>)>> = futures_util::stream::iter(work)
            .buffer_unordered(FAN_OUT)
            .try_collect()
            .await?;
        let mut out = vec![None; changes.len()];
        for (i, n) in results.into_iter().flatten() {
            out[i] = n;
        }
        Ok(out)
    }

    /// Plain writes: whoever decided (a cluster's like sets in Redis) made "once per user"
    /// hold, so the lightweight transactions of [`Store::set_likes`] are not needed. Rows are
    /// written `USING TIMESTAMP` the decision's time, so a like and an unlike written by two
    /// bridges in the wrong order still end as decided. Per comment, only each user's last
    /// change reaches the rows (so they can go concurrently); the counter moves by the
    /// changes' net sum.
    async fn write_likes(&self, likes: &[DecidedLike]) -> Result<Vec<bool>, StoreError> {
        let me = &self.inner;
        let changes: Vec<LikeChange> = likes.iter().map(|l| l.change.clone()).collect();
        let changes = changes.as_slice();
        let groups = wire::store::likes_by_comment(changes);
        let work: Vec<_> = groups
            .into_iter()
            .map(|(stream, cid, idxs)| async move {
                let Some(seq) = me.visible_seq(stream, cid).await? else {
                    return Ok::<_, CassError>(Vec::new());
                };
                let s = stream.as_str();
                let mut last: HashMap<&str, (bool, i64)> = HashMap::new();
                let mut delta = 0_i64;
                for &i in &idxs {
                    let ch = &changes[i];
                    last.insert(ch.user.as_str(), (ch.like, likes[i].at_us));
                    delta += if ch.like { 1 } else { -1 };
                }
                let rows: Vec<_> = last
                    .into_iter()
                    .map(|(user, (like, at))| async move {
                        if like {
                            me.exec(&me.st.put_like, (s, cid, user, at)).await
                        } else {
                            me.exec(&me.st.delete_like, (at, s, cid, user)).await
                        }
                    })
                    .collect();
                futures_util::stream::iter(rows)
                    .buffer_unordered(FAN_OUT)
                    .try_collect::<Vec<_>>()
                    .await?;
                if delta != 0 {
                    let sb = int(me.seq_bucket(seq))?;
                    me.exec(&me.st.add_likes, (Counter(delta), s, sb, int(seq)?))
                        .await?;
                }
                Ok(idxs)
            })
            .collect();
        let stored: Vec<Vec<usize>> = futures_util::stream::iter(work)
            .buffer_unordered(FAN_OUT)
            .try_collect()
            .await?;
        let mut out = vec![false; changes.len()];
        for i in stored.into_iter().flatten() {
            out[i] = true;
        }
        Ok(out)
    }

    async fn likers(
        &self,
        stream: &StreamId,
        comment_id: &str,
    ) -> Result<Option<Vec<UserId>>, StoreError> {
        let me = &self.inner;
        if me.visible_seq(stream, comment_id).await?.is_none() {
            return Ok(None);
        }
        let rows = me
            .pages(&me.st.likers, (stream.as_str(), comment_id))
            .all::<(String,)>()
            .await?;
        let users = rows
            .into_iter()
            .map(|(u,)| UserId::new(&u).map_err(|e| CassError::Decode(format!("liker {u:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(users))
    }

    async fn engagement(
        &self,
        stream: &StreamId,
        comment_ids: &[String],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let me = &self.inner;
        let lookups: Vec<_> = comment_ids.iter().map(|id| me.seq_of(stream, id)).collect();
        let seqs: Vec<Option<u64>> = futures_util::stream::iter(lookups)
            .buffered(FAN_OUT)
            .try_collect()
            .await?;
        let known: Vec<u64> = seqs.iter().flatten().copied().collect();
        let counts = me.load_counts(stream, &known).await?;
        Ok(seqs
            .iter()
            .map(|s| s.and_then(|s| counts.get(&s).copied()).unwrap_or((0, 0)))
            .collect())
    }

    async fn replies(
        &self,
        stream: &StreamId,
        parent_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError> {
        let me = &self.inner;
        let mut out = Vec::new();
        if limit == 0 || after_seq >= i64::MAX as u64 {
            return Ok(out);
        }
        let mut pages = me.pages(
            &me.st.replies_after,
            (stream.as_str(), parent_id, bound(after_seq)),
        );
        while let Some(rows) = pages.next::<(i64,)>().await? {
            let seqs = rows
                .iter()
                .map(|(s,)| uint(*s))
                .collect::<Result<Vec<_>, _>>()?;
            me.collect_visible(stream, &seqs, &mut out, limit).await?;
            if out.len() >= limit {
                break;
            }
        }
        me.with_counts(stream, out.iter_mut()).await?;
        Ok(out)
    }

    async fn find_comment(
        &self,
        stream: &StreamId,
        id: &str,
    ) -> Result<Option<StoredComment>, StoreError> {
        let me = &self.inner;
        let Some(seq) = me.seq_of(stream, id).await? else {
            return Ok(None);
        };
        Ok(me.load_comments(stream, &[seq]).await?.remove(&seq))
    }

    async fn replay(
        &self,
        stream: &StreamId,
        from_ms: u64,
        to_ms: u64,
        after: Option<ReplayCursor>,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError> {
        let lower = match after {
            Some(c) if (c.offset_ms, c.seq) >= (from_ms, 0) => ((c.offset_ms, c.seq), true),
            _ => ((from_ms, 0), false),
        };
        Ok(self
            .inner
            .window(stream, lower, to_ms, limit, false)
            .await?)
    }

    async fn latest(
        &self,
        stream: &StreamId,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<Comment>, StoreError> {
        Ok(self
            .inner
            .window(stream, ((from_ms, 0), false), to_ms, limit, true)
            .await?)
    }

    async fn after_seq(
        &self,
        stream: &StreamId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let me = &self.inner;
        let mut out: Vec<Event> = Vec::new();
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(out);
        };
        let head = me.last_seq(stream).await?;
        if limit == 0 || first > head {
            return Ok(out);
        }
        let s = stream.as_str();
        'outer: for sb in me.seq_bucket(first)..=me.seq_bucket(head) {
            let mut pages = me.pages(&me.st.events_after, (s, bound(sb), bound(after_seq)));
            while let Some(rows) = pages.next::<EventRow>().await? {
                let parsed = rows
                    .iter()
                    .map(|r| Ok::<_, CassError>((uint(r.0)?, parse_event(r)?)))
                    .collect::<Result<Vec<_>, _>>()?;
                // Restorations are served only while they hold: read the comments they name.
                let targets: Vec<u64> = parsed
                    .iter()
                    .filter_map(|(_, e)| match e {
                        Stored::Other(StoredEvent::Restore { comment_seq, .. }) => {
                            Some(*comment_seq)
                        }
                        _ => None,
                    })
                    .collect();
                let restored = if targets.is_empty() {
                    HashMap::new()
                } else {
                    me.load_comments(stream, &targets).await?
                };
                for (seq, e) in parsed {
                    if out.len() >= limit {
                        break 'outer;
                    }
                    match e {
                        Stored::Comment(c) if c.visibility == Visibility::Visible => {
                            out.push(Event::Comment(c.comment))
                        }
                        Stored::Comment(_) => {}
                        Stored::Other(StoredEvent::Retract {
                            comment_id, reason, ..
                        }) => out.push(Event::Retract(Retraction {
                            id: comment_id,
                            seq,
                            reason,
                        })),
                        Stored::Other(StoredEvent::Restore {
                            comment_seq,
                            comment_id,
                            ..
                        }) => {
                            if let Some(c) = restored.get(&comment_seq) {
                                if c.visibility == Visibility::Visible {
                                    out.push(Event::Restore(Restoration {
                                        id: comment_id,
                                        seq,
                                        comment: c.comment.clone(),
                                    }));
                                }
                            }
                        }
                        Stored::Other(StoredEvent::Comment(_)) => {
                            return Err(CassError::Decode(format!(
                                "seq {seq} of {stream} has a comment body of another kind"
                            ))
                            .into())
                        }
                    }
                }
                if out.len() >= limit {
                    break 'outer;
                }
            }
        }
        me.with_counts(
            stream,
            out.iter_mut().filter_map(|e| match e {
                Event::Comment(c) => Some(c),
                _ => None,
            }),
        )
        .await?;
        Ok(out)
    }

    async fn put_ban(&self, ban: &Ban) -> Result<(), StoreError> {
        let me = &self.inner;
        me.exec(
            &me.st.put_ban,
            (ban.user.as_str(), ban.scope.to_string(), json(ban)?),
        )
        .await?;
        Ok(())
    }

    async fn delete_ban(&self, user: &UserId, scope: &BanScope) -> Result<bool, StoreError> {
        let me = &self.inner;
        let key = (user.as_str(), scope.to_string());
        if me.first::<(String,)>(&me.st.get_ban, &key).await?.is_none() {
            return Ok(false);
        }
        me.exec(&me.st.delete_ban, &key).await?;
        Ok(true)
    }

    async fn bans_of(&self, users: &[UserId]) -> Result<Vec<Ban>, StoreError> {
        let me = &self.inner;
        let reads = users.iter().map(|u| async move {
            me.pages(&me.st.bans_of, (u.as_str(),))
                .all::<(String,)>()
                .await
        });
        let mut out = Vec::new();
        for rows in try_join_all(reads).await? {
            for (ban,) in rows {
                out.push(parse(&ban)?);
            }
        }
        Ok(out)
    }

    async fn put_queue_item(&self, item: &QueueItem) -> Result<(), StoreError> {
        let me = &self.inner;
        let old = me.get_item(&item.id).await?;
        let mut markers = BTreeSet::new();
        let mut writes = me.item_writes(item, old.as_ref(), &mut markers)?;
        if let Some(cid) = &item.comment_id {
            let open = (item.status == QueueStatus::Open).then(|| item.id.clone());
            writes.push(me.item_comment_write(&item.stream, cid, open));
        }
        if let Some(h) = &item.held {
            let (s, u, m) = (
                item.stream.as_str(),
                h.author.id.as_str(),
                h.client_msg_id.as_str(),
            );
            writes.push(write(
                &me.st.set_dedup_held,
                format!("d/{s}/{u}/{m}"),
                s.len() + u.len() + m.len() + item.id.len(),
                (item.id.clone(), s.to_owned(), u.to_owned(), m.to_owned()),
            ));
        }
        writes.extend(me.marker_writes(markers));
        me.apply(writes).await?;
        Ok(())
    }

    async fn get_queue_item(&self, id: &str) -> Result<Option<QueueItem>, StoreError> {
        Ok(self.inner.get_item(id).await?)
    }

    async fn queue_item_for_comment(
        &self,
        stream: &StreamId,
        comment_id: &str,
    ) -> Result<Option<QueueItem>, StoreError> {
        let me = &self.inner;
        match me
            .first::<(String,)>(&me.st.get_item_comment, (stream.as_str(), comment_id))
            .await?
        {
            Some((id,)) => Ok(me.get_item(&id).await?),
            None => Ok(None),
        }
    }

    async fn list_queue(
        &self,
        stream: Option<&StreamId>,
        status: Option<QueueStatus>,
        limit: usize,
    ) -> Result<Vec<QueueItem>, StoreError> {
        let me = &self.inner;
        let scope = stream.map_or(ALL.to_owned(), |s| s.to_string());
        let status_key = status.map_or(ALL, status_name);
        let name = format!("queue/{scope}/{status_key}");
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let today = day_of(wire::time::now_ms());
        let mut days = me.buckets(&name, i64::MIN, i64::MAX, false);
        'outer: while let Some(page) = days.next::<(i64,)>().await? {
            for (day,) in page {
                let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
                let rows = me
                    .pages(&me.st.item_index, (scope.as_str(), status_key, day, want))
                    .all::<(String,)>()
                    .await?;
                if rows.is_empty()
                    && status == Some(QueueStatus::Open)
                    && day < today - PRUNE_AFTER_DAYS
                {
                    // Every item of that day was decided: stop reading the day. (Items are
                    // created with the current time, so no new open item can land there.)
                    me.exec(&me.st.delete_bucket, (name.as_str(), day)).await?;
                }
                for (item,) in rows {
                    out.push(parse(&item)?);
                    if out.len() >= limit {
                        break 'outer;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn add_strike(&self, user: &UserId, at: i64, window_ms: i64) -> Result<u32, StoreError> {
        let me = &self.inner;
        me.exec(&me.st.put_strike, (user.as_str(), at)).await?;
        let n = me
            .first::<(i64,)>(
                &me.st.count_strikes,
                (user.as_str(), at.saturating_sub(window_ms)),
            )
            .await?
            .map_or(0, |(n,)| n);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let me = &self.inner;
        let mut markers = BTreeSet::new();
        let mut writes = me.audit_writes(entry, &mut markers)?;
        writes.extend(me.marker_writes(markers));
        me.apply(writes).await?;
        Ok(())
    }

    async fn list_audit(
        &self,
        stream: Option<&StreamId>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let me = &self.inner;
        let scope = stream.map_or(ALL.to_owned(), |s| s.to_string());
        let mut out = Vec::new();
        let end = before.unwrap_or(i64::MAX);
        if limit == 0 || end == i64::MIN {
            return Ok(out);
        }
        let last_day = day_of(end - 1);
        let name = format!("audit/{scope}");
        let mut days = me.buckets(&name, i64::MIN, last_day, false);
        'outer: while let Some(page) = days.next::<(i64,)>().await? {
            for (day,) in page {
                let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
                let rows = me
                    .pages(&me.st.audit_before, (scope.as_str(), day, end, want))
                    .all::<(String,)>()
                    .await?;
                for (entry,) in rows {
                    out.push(parse(&entry)?);
                    if out.len() >= limit {
                        break 'outer;
                    }
                }
            }
        }
        Ok(out)
    }
}

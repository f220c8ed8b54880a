//! The keyspace: tables created (or checked) at start-up, and the prepared statements.
//!
//! Start-up is idempotent and safe when several processes start at once:
//! - every DDL statement is `IF NOT EXISTS`;
//! - every table is created `WITH ID = <uuid derived from keyspace.table>`, so two processes
//!   creating the same table at the same moment announce the *same* table, not two tables with
//!   different ids (which Cassandra would then have to reconcile, losing one's writes);
//! - the layout row (schema version, bucket widths) is written with `IF NOT EXISTS`: the first
//!   process decides, every other one reads and checks it.
//!
//! When the layout row already has this build's version, start-up runs no DDL at all.

use std::time::Duration;

use futures_util::future::try_join_all;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;

use super::error::CassError;
use super::CassandraConfig;

/// Version of the tables below; bumped by every change to them.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// Events per partition of `events` and `comment_counts` (see the module docs of
/// `store::cassandra` for the reasoning). Fixed per keyspace: recorded in the layout row.
pub(crate) const SEQ_BUCKET: u64 = 10_000;

/// DDL takes ~0.5 s per table on a single node (schema tables are flushed), more while the
/// node is busy: far beyond a request timeout meant for reads and writes.
const DDL_TIMEOUT: Duration = Duration::from_secs(120);

/// How the keyspace partitions data; decided when it is created and kept for its lifetime,
/// since the partition of every stored row depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub version: i32,
    pub bucket_ms: u64,
    pub seq_bucket: u64,
}

/// `(table, columns and options)`. Kept in one place so that docs/storage.md can quote it.
pub(crate) const TABLES: &[(&str, &str)] = &[
    (
        "schema_meta",
        "(key text PRIMARY KEY, version int, bucket_ms bigint, seq_bucket bigint, \
         created_at bigint)",
    ),
    (
        "streams",
        "(id text PRIMARY KEY, version bigint, state text)",
    ),
    // last_seq is written USING TIMESTAMP <seq>: the highest seq wins whatever the order.
    ("stream_seq", "(stream text PRIMARY KEY, last_seq bigint)"),
    (
        "events",
        "(stream text, seq_bucket bigint, seq bigint, kind text, body text, visibility text, \
         PRIMARY KEY ((stream, seq_bucket), seq))",
    ),
    (
        "comments_by_time",
        "(stream text, bucket bigint, offset_ms bigint, seq bigint, \
         PRIMARY KEY ((stream, bucket), offset_ms, seq))",
    ),
    (
        "comment_ids",
        "(stream text, id text, seq bigint, PRIMARY KEY ((stream, id)))",
    ),
    (
        "dedup",
        "(stream text, user_id text, client_msg_id text, comment_id text, seq bigint, \
         held_item text, PRIMARY KEY ((stream, user_id, client_msg_id)))",
    ),
    (
        "replies",
        "(stream text, parent_id text, seq bigint, PRIMARY KEY ((stream, parent_id), seq))",
    ),
    (
        "comment_counts",
        "(stream text, seq_bucket bigint, seq bigint, likes counter, replies counter, \
         PRIMARY KEY ((stream, seq_bucket), seq))",
    ),
    (
        "likes",
        "(stream text, comment_id text, user_id text, \
         PRIMARY KEY ((stream, comment_id), user_id))",
    ),
    (
        "shadow_comments",
        "(stream text, id text, body text, PRIMARY KEY ((stream, id)))",
    ),
    (
        "reporters",
        "(stream text, comment_id text, user_id text, \
         PRIMARY KEY ((stream, comment_id), user_id))",
    ),
    (
        "reactions",
        "(stream text, emoji text, total counter, PRIMARY KEY ((stream), emoji))",
    ),
    (
        "bans",
        "(user_id text, scope text, ban text, PRIMARY KEY ((user_id), scope))",
    ),
    (
        "strikes",
        "(user_id text, at bigint, PRIMARY KEY ((user_id), at))",
    ),
    ("queue_items", "(id text PRIMARY KEY, item text)"),
    (
        "queue_index",
        "(scope text, status text, day bigint, id text, item text, \
         PRIMARY KEY ((scope, status, day), id)) WITH CLUSTERING ORDER BY (id DESC)",
    ),
    (
        "queue_by_comment",
        "(stream text, comment_id text, item_id text, PRIMARY KEY ((stream, comment_id)))",
    ),
    (
        "audit",
        "(scope text, day bigint, at bigint, uid text, entry text, \
         PRIMARY KEY ((scope, day), at, uid)) WITH CLUSTERING ORDER BY (at DESC, uid DESC)",
    ),
    // Which buckets of a partitioned index hold rows: `time/<stream>` (time buckets of
    // comments_by_time), `queue/<scope>/<status>` and `audit/<scope>` (days).
    (
        "bucket_index",
        "(name text, bucket bigint, PRIMARY KEY ((name), bucket)) \
         WITH CLUSTERING ORDER BY (bucket DESC)",
    ),
];

/// A table id derived from the keyspace and table names (FNV-1a, 128 bits, as a version-8
/// UUID), the same in every process.
pub(crate) fn table_id(keyspace: &str, table: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in keyspace.bytes().chain([b'.']).chain(table.bytes()) {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    // Version 8 (custom), RFC 4122 variant.
    h = (h & !(0xF << 76)) | (0x8 << 76);
    h = (h & !(0x3 << 62)) | (0x2 << 62);
    let x = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

fn ddl(cql: String) -> Statement {
    let mut s = Statement::new(cql);
    s.set_request_timeout(Some(DDL_TIMEOUT));
    s
}

async fn run_ddl(session: &Session, cql: String) -> Result<(), CassError> {
    session.query_unpaged(ddl(cql), &[]).await?;
    Ok(())
}

/// `CREATE TABLE IF NOT EXISTS` with a deterministic id; without it where the server does not
/// know the option (ScyllaDB, whose schema changes are serialized by Raft instead).
async fn create_table(session: &Session, ks: &str, name: &str, def: &str) -> Result<(), CassError> {
    let id = table_id(ks, name);
    let with = if def.contains(" WITH ") {
        "AND"
    } else {
        "WITH"
    };
    let cql = format!("CREATE TABLE IF NOT EXISTS {ks}.{name} {def} {with} ID = {id}");
    match run_ddl(session, cql).await {
        Err(CassError::Rejected(msg)) => {
            tracing::info!(table = name, error = %msg, "creating the table without a fixed id");
            run_ddl(
                session,
                format!("CREATE TABLE IF NOT EXISTS {ks}.{name} {def}"),
            )
            .await
        }
        other => other,
    }
}

async fn read_layout(session: &Session, ks: &str) -> Result<Option<Layout>, CassError> {
    let cql =
        format!("SELECT version, bucket_ms, seq_bucket FROM {ks}.schema_meta WHERE key = 'layout'");
    let rows = session.query_unpaged(cql, &[]).await?.into_rows_result()?;
    let Some((version, bucket_ms, seq_bucket)) = rows.maybe_first_row::<(i32, i64, i64)>()? else {
        return Ok(None);
    };
    let width = |v: i64| {
        u64::try_from(v)
            .ok()
            .filter(|w| *w > 0)
            .ok_or_else(|| CassError::Decode(format!("layout row has a bucket width of {v}")))
    };
    Ok(Some(Layout {
        version,
        bucket_ms: width(bucket_ms)?,
        seq_bucket: width(seq_bucket)?,
    }))
}

/// Creates what is missing and returns the keyspace's layout.
pub(crate) async fn ensure(session: &Session, cfg: &CassandraConfig) -> Result<Layout, CassError> {
    let ks = cfg.keyspace.as_str();
    match read_layout(session, ks).await {
        Ok(Some(layout)) if layout.version == SCHEMA_VERSION => return check(layout, cfg),
        Ok(Some(layout)) if layout.version > SCHEMA_VERSION => {
            return Err(CassError::Config(format!(
                "keyspace {ks} has schema version {}, newer than this build's {SCHEMA_VERSION}",
                layout.version
            )))
        }
        // Older tables, or none: create what is missing below.
        Ok(_) => {}
        // No keyspace or no schema_meta table yet.
        Err(CassError::Rejected(_)) => {}
        Err(e) => return Err(e),
    }
    let started = std::time::Instant::now();
    let replication = cfg.replication().map_err(CassError::Config)?;
    run_ddl(
        session,
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"),
    )
    .await?;
    // Schema changes are serialized by the node anyway; a few at a time still overlap the
    // flushes (measured: 10 tables in 3.8 s at once, 5.5 s one by one).
    try_join_all(
        TABLES
            .iter()
            .map(|(name, def)| create_table(session, ks, name, def)),
    )
    .await?;
    let mut insert = Statement::new(format!(
        "INSERT INTO {ks}.schema_meta (key, version, bucket_ms, seq_bucket, created_at) \
         VALUES ('layout', ?, ?, ?, ?) IF NOT EXISTS"
    ));
    insert.set_request_timeout(Some(DDL_TIMEOUT));
    let bucket_ms = i64::try_from(cfg.bucket_ms)
        .map_err(|_| CassError::Config("bucket_ms is too large".into()))?;
    let seq_bucket = SEQ_BUCKET as i64;
    session
        .query_unpaged(
            insert,
            (SCHEMA_VERSION, bucket_ms, seq_bucket, wire::time::now_ms()),
        )
        .await?;
    // A keyspace made by an older build: its tables are all there now.
    let mut bump = Statement::new(format!(
        "UPDATE {ks}.schema_meta SET version = ? WHERE key = 'layout' IF version < ?"
    ));
    bump.set_request_timeout(Some(DDL_TIMEOUT));
    session
        .query_unpaged(bump, (SCHEMA_VERSION, SCHEMA_VERSION))
        .await?;
    let layout = read_layout(session, ks)
        .await?
        .ok_or_else(|| CassError::Decode(format!("keyspace {ks} has no layout row")))?;
    tracing::info!(
        keyspace = ks,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cassandra schema ready"
    );
    check(layout, cfg)
}

fn check(layout: Layout, cfg: &CassandraConfig) -> Result<Layout, CassError> {
    if layout.bucket_ms != cfg.bucket_ms {
        return Err(CassError::Config(format!(
            "keyspace {} stores comments in buckets of {} ms but bucket_ms is {}: the width is \
             fixed when the keyspace is created (set it back, or use a new keyspace)",
            cfg.keyspace, layout.bucket_ms, cfg.bucket_ms
        )));
    }
    Ok(layout)
}

/// Every statement the store runs, prepared once at start-up.
pub(crate) struct Statements {
    pub create_stream: PreparedStatement,
    pub update_stream: PreparedStatement,
    pub get_stream: PreparedStatement,
    pub all_streams: PreparedStatement,

    pub set_head: PreparedStatement,
    pub get_head: PreparedStatement,

    pub put_event: PreparedStatement,
    pub set_visibility: PreparedStatement,
    pub events_after: PreparedStatement,
    pub events_range: PreparedStatement,
    pub events_in: PreparedStatement,

    pub put_time: PreparedStatement,
    pub time_from: PreparedStatement,
    pub time_after: PreparedStatement,
    pub time_rev: PreparedStatement,

    pub put_id: PreparedStatement,
    pub get_id: PreparedStatement,

    pub set_dedup: PreparedStatement,
    pub set_dedup_held: PreparedStatement,
    pub get_dedup: PreparedStatement,

    pub put_reply: PreparedStatement,
    pub replies_after: PreparedStatement,

    pub add_likes: PreparedStatement,
    pub add_replies: PreparedStatement,
    pub counts_range: PreparedStatement,
    pub counts_in: PreparedStatement,

    pub like: PreparedStatement,
    pub unlike: PreparedStatement,
    pub put_like: PreparedStatement,
    pub delete_like: PreparedStatement,
    pub likers: PreparedStatement,

    pub put_shadow: PreparedStatement,

    pub put_reporter: PreparedStatement,
    pub get_reporter: PreparedStatement,

    pub add_reaction: PreparedStatement,
    pub reactions: PreparedStatement,

    pub put_ban: PreparedStatement,
    pub get_ban: PreparedStatement,
    pub delete_ban: PreparedStatement,
    pub bans_of: PreparedStatement,

    pub put_strike: PreparedStatement,
    pub count_strikes: PreparedStatement,

    pub put_item: PreparedStatement,
    pub get_item: PreparedStatement,
    pub put_item_index: PreparedStatement,
    pub delete_item_index: PreparedStatement,
    pub item_index: PreparedStatement,
    pub put_item_comment: PreparedStatement,
    pub delete_item_comment: PreparedStatement,
    pub get_item_comment: PreparedStatement,

    pub put_audit: PreparedStatement,
    pub audit_before: PreparedStatement,

    pub put_bucket: PreparedStatement,
    pub delete_bucket: PreparedStatement,
    pub buckets_desc: PreparedStatement,
    pub buckets_asc: PreparedStatement,
}

/// Rows per page of a scan (index rows are tiny; event rows are a few hundred bytes).
const INDEX_PAGE: i32 = 1000;
const EVENT_PAGE: i32 = 500;

impl Statements {
    pub(crate) async fn prepare(session: &Session, ks: &str) -> Result<Statements, CassError> {
        let p = |cql: String, page: Option<i32>, idempotent: bool| async move {
            let mut st = session.prepare(cql).await?;
            if let Some(n) = page {
                st.set_page_size(n);
            }
            // Lets the driver retry a timed-out write elsewhere: rewriting the same values is
            // harmless. Counter updates and lightweight transactions are not idempotent.
            st.set_is_idempotent(idempotent);
            Ok::<_, CassError>(st)
        };
        let q = |cql: String| p(cql, None, true);
        let scan = |cql: String, page: i32| p(cql, Some(page), true);
        let once = |cql: String| p(cql, None, false);
        Ok(Statements {
            create_stream: once(format!(
                "INSERT INTO {ks}.streams (id, version, state) VALUES (?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            update_stream: once(format!(
                "UPDATE {ks}.streams SET version = ?, state = ? WHERE id = ? IF version = ?"
            ))
            .await?,
            get_stream: q(format!("SELECT state FROM {ks}.streams WHERE id = ?")).await?,
            all_streams: scan(format!("SELECT state FROM {ks}.streams"), EVENT_PAGE).await?,

            set_head: q(format!(
                "UPDATE {ks}.stream_seq USING TIMESTAMP ? SET last_seq = ? WHERE stream = ?"
            ))
            .await?,
            get_head: q(format!(
                "SELECT last_seq FROM {ks}.stream_seq WHERE stream = ?"
            ))
            .await?,

            put_event: q(format!(
                "INSERT INTO {ks}.events (stream, seq_bucket, seq, kind, body, visibility) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            set_visibility: q(format!(
                "UPDATE {ks}.events SET visibility = ? \
                 WHERE stream = ? AND seq_bucket = ? AND seq = ?"
            ))
            .await?,
            events_after: scan(
                format!(
                    "SELECT seq, kind, body, visibility FROM {ks}.events \
                     WHERE stream = ? AND seq_bucket = ? AND seq > ?"
                ),
                EVENT_PAGE,
            )
            .await?,
            events_range: scan(
                format!(
                    "SELECT seq, kind, body, visibility FROM {ks}.events \
                     WHERE stream = ? AND seq_bucket = ? AND seq >= ? AND seq <= ?"
                ),
                EVENT_PAGE,
            )
            .await?,
            events_in: scan(
                format!(
                    "SELECT seq, kind, body, visibility FROM {ks}.events \
                     WHERE stream = ? AND seq_bucket = ? AND seq IN ?"
                ),
                EVENT_PAGE,
            )
            .await?,

            put_time: q(format!(
                "INSERT INTO {ks}.comments_by_time (stream, bucket, offset_ms, seq) \
                 VALUES (?, ?, ?, ?)"
            ))
            .await?,
            time_from: scan(
                format!(
                    "SELECT offset_ms, seq FROM {ks}.comments_by_time \
                     WHERE stream = ? AND bucket = ? \
                     AND (offset_ms, seq) >= (?, ?) AND (offset_ms, seq) < (?, ?)"
                ),
                INDEX_PAGE,
            )
            .await?,
            time_after: scan(
                format!(
                    "SELECT offset_ms, seq FROM {ks}.comments_by_time \
                     WHERE stream = ? AND bucket = ? \
                     AND (offset_ms, seq) > (?, ?) AND (offset_ms, seq) < (?, ?)"
                ),
                INDEX_PAGE,
            )
            .await?,
            time_rev: scan(
                format!(
                    "SELECT offset_ms, seq FROM {ks}.comments_by_time \
                     WHERE stream = ? AND bucket = ? \
                     AND (offset_ms, seq) >= (?, ?) AND (offset_ms, seq) < (?, ?) \
                     ORDER BY offset_ms DESC, seq DESC"
                ),
                INDEX_PAGE,
            )
            .await?,

            put_id: q(format!(
                "INSERT INTO {ks}.comment_ids (stream, id, seq) VALUES (?, ?, ?)"
            ))
            .await?,
            get_id: q(format!(
                "SELECT seq FROM {ks}.comment_ids WHERE stream = ? AND id = ?"
            ))
            .await?,

            set_dedup: q(format!(
                "UPDATE {ks}.dedup SET comment_id = ?, seq = ? \
                 WHERE stream = ? AND user_id = ? AND client_msg_id = ?"
            ))
            .await?,
            set_dedup_held: q(format!(
                "UPDATE {ks}.dedup SET held_item = ? \
                 WHERE stream = ? AND user_id = ? AND client_msg_id = ?"
            ))
            .await?,
            get_dedup: q(format!(
                "SELECT comment_id, seq, held_item FROM {ks}.dedup \
                 WHERE stream = ? AND user_id = ? AND client_msg_id = ?"
            ))
            .await?,

            put_reply: q(format!(
                "INSERT INTO {ks}.replies (stream, parent_id, seq) VALUES (?, ?, ?)"
            ))
            .await?,
            replies_after: scan(
                format!(
                    "SELECT seq FROM {ks}.replies WHERE stream = ? AND parent_id = ? AND seq > ?"
                ),
                INDEX_PAGE,
            )
            .await?,

            add_likes: once(format!(
                "UPDATE {ks}.comment_counts SET likes = likes + ? \
                 WHERE stream = ? AND seq_bucket = ? AND seq = ?"
            ))
            .await?,
            add_replies: once(format!(
                "UPDATE {ks}.comment_counts SET replies = replies + ? \
                 WHERE stream = ? AND seq_bucket = ? AND seq = ?"
            ))
            .await?,
            counts_range: scan(
                format!(
                    "SELECT seq, likes, replies FROM {ks}.comment_counts \
                     WHERE stream = ? AND seq_bucket = ? AND seq >= ? AND seq <= ?"
                ),
                INDEX_PAGE,
            )
            .await?,
            counts_in: scan(
                format!(
                    "SELECT seq, likes, replies FROM {ks}.comment_counts \
                     WHERE stream = ? AND seq_bucket = ? AND seq IN ?"
                ),
                INDEX_PAGE,
            )
            .await?,

            like: once(format!(
                "INSERT INTO {ks}.likes (stream, comment_id, user_id) VALUES (?, ?, ?) \
                 IF NOT EXISTS"
            ))
            .await?,
            unlike: once(format!(
                "DELETE FROM {ks}.likes WHERE stream = ? AND comment_id = ? AND user_id = ? \
                 IF EXISTS"
            ))
            .await?,
            put_like: q(format!(
                "INSERT INTO {ks}.likes (stream, comment_id, user_id) VALUES (?, ?, ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            delete_like: q(format!(
                "DELETE FROM {ks}.likes USING TIMESTAMP ? \
                 WHERE stream = ? AND comment_id = ? AND user_id = ?"
            ))
            .await?,
            likers: scan(
                format!("SELECT user_id FROM {ks}.likes WHERE stream = ? AND comment_id = ?"),
                INDEX_PAGE,
            )
            .await?,

            put_shadow: q(format!(
                "INSERT INTO {ks}.shadow_comments (stream, id, body) VALUES (?, ?, ?)"
            ))
            .await?,

            put_reporter: q(format!(
                "INSERT INTO {ks}.reporters (stream, comment_id, user_id) VALUES (?, ?, ?)"
            ))
            .await?,
            get_reporter: q(format!(
                "SELECT user_id FROM {ks}.reporters \
                 WHERE stream = ? AND comment_id = ? AND user_id = ?"
            ))
            .await?,

            add_reaction: once(format!(
                "UPDATE {ks}.reactions SET total = total + ? WHERE stream = ? AND emoji = ?"
            ))
            .await?,
            reactions: scan(
                format!("SELECT emoji, total FROM {ks}.reactions WHERE stream = ?"),
                INDEX_PAGE,
            )
            .await?,

            put_ban: q(format!(
                "INSERT INTO {ks}.bans (user_id, scope, ban) VALUES (?, ?, ?)"
            ))
            .await?,
            get_ban: q(format!(
                "SELECT ban FROM {ks}.bans WHERE user_id = ? AND scope = ?"
            ))
            .await?,
            delete_ban: q(format!(
                "DELETE FROM {ks}.bans WHERE user_id = ? AND scope = ?"
            ))
            .await?,
            bans_of: scan(
                format!("SELECT ban FROM {ks}.bans WHERE user_id = ?"),
                INDEX_PAGE,
            )
            .await?,

            put_strike: q(format!(
                "INSERT INTO {ks}.strikes (user_id, at) VALUES (?, ?)"
            ))
            .await?,
            count_strikes: q(format!(
                "SELECT COUNT(*) FROM {ks}.strikes WHERE user_id = ? AND at >= ?"
            ))
            .await?,

            put_item: q(format!(
                "INSERT INTO {ks}.queue_items (id, item) VALUES (?, ?)"
            ))
            .await?,
            get_item: q(format!("SELECT item FROM {ks}.queue_items WHERE id = ?")).await?,
            put_item_index: q(format!(
                "INSERT INTO {ks}.queue_index (scope, status, day, id, item) \
                 VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            delete_item_index: q(format!(
                "DELETE FROM {ks}.queue_index \
                 WHERE scope = ? AND status = ? AND day = ? AND id = ?"
            ))
            .await?,
            item_index: scan(
                format!(
                    "SELECT item FROM {ks}.queue_index \
                     WHERE scope = ? AND status = ? AND day = ? LIMIT ?"
                ),
                EVENT_PAGE,
            )
            .await?,
            put_item_comment: q(format!(
                "INSERT INTO {ks}.queue_by_comment (stream, comment_id, item_id) VALUES (?, ?, ?)"
            ))
            .await?,
            delete_item_comment: q(format!(
                "DELETE FROM {ks}.queue_by_comment WHERE stream = ? AND comment_id = ?"
            ))
            .await?,
            get_item_comment: q(format!(
                "SELECT item_id FROM {ks}.queue_by_comment WHERE stream = ? AND comment_id = ?"
            ))
            .await?,

            put_audit: q(format!(
                "INSERT INTO {ks}.audit (scope, day, at, uid, entry) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            audit_before: scan(
                format!(
                    "SELECT entry FROM {ks}.audit WHERE scope = ? AND day = ? AND at < ? LIMIT ?"
                ),
                EVENT_PAGE,
            )
            .await?,

            put_bucket: q(format!(
                "INSERT INTO {ks}.bucket_index (name, bucket) VALUES (?, ?)"
            ))
            .await?,
            delete_bucket: q(format!(
                "DELETE FROM {ks}.bucket_index WHERE name = ? AND bucket = ?"
            ))
            .await?,
            buckets_desc: scan(
                format!(
                    "SELECT bucket FROM {ks}.bucket_index \
                     WHERE name = ? AND bucket >= ? AND bucket <= ?"
                ),
                INDEX_PAGE,
            )
            .await?,
            buckets_asc: scan(
                format!(
                    "SELECT bucket FROM {ks}.bucket_index \
                     WHERE name = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket ASC"
                ),
                INDEX_PAGE,
            )
            .await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_ids_are_stable_uuids() {
        let a = table_id("livecomments", "events");
        assert_eq!(a, table_id("livecomments", "events"));
        assert_ne!(a, table_id("livecomments", "streams"));
        assert_ne!(a, table_id("other", "events"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "version 8");
        assert!(
            matches!(&a[19..20], "8" | "9" | "a" | "b"),
            "RFC 4122 variant"
        );
    }

    #[test]
    fn replication_is_simple_or_per_data_centre() {
        let simple = CassandraConfig {
            replication_factor: 3,
            ..CassandraConfig::default()
        };
        assert_eq!(
            simple.replication().unwrap(),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
        let nts = CassandraConfig {
            datacenters: vec!["dc1:3".into(), "eu-west.2:2".into()],
            ..CassandraConfig::default()
        };
        assert_eq!(
            nts.replication().unwrap(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'eu-west.2': 2}"
        );
        for bad in ["dc1", "dc1:0", ":3", "dc'1:3", "dc1:x"] {
            let c = CassandraConfig {
                datacenters: vec![bad.into()],
                ..CassandraConfig::default()
            };
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    /// docs/storage.md quotes every table as created here.
    #[test]
    fn docs_quote_the_tables() {
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let docs = squash(include_str!("../../../../docs/storage.md"));
        for (name, def) in TABLES {
            let cql = squash(&format!("CREATE TABLE {name} {def};"));
            assert!(docs.contains(&cql), "docs/storage.md lacks: {cql}");
        }
    }
}

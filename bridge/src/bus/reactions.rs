//! Reaction windows of a cluster in Redis: one hash per stream and window,
//! `{prefix}:rx:{stream}:{window}` (emoji → count), incremented by every node that counted
//! reactions in that window and expiring a minute later.

use std::collections::BTreeMap;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use wire::bus::BusError;

use super::redis::timed;
use wire::reactions::SharedReactions;
use wire::StreamId;

/// A window's counts are read within a few windows of closing; keep them a little longer.
const WINDOW_TTL_MS: u64 = 60_000;

pub struct RedisReactions {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisReactions {
    pub fn new(conn: ConnectionManager, prefix: String) -> Self {
        RedisReactions { conn, prefix }
    }

    fn key(&self, stream: &StreamId, window: u64) -> String {
        format!("{}:rx:{stream}:{window}", self.prefix)
    }
}

#[async_trait]
impl SharedReactions for RedisReactions {
    async fn add(
        &self,
        stream: &StreamId,
        window: u64,
        counts: &[(String, u64)],
    ) -> Result<(), BusError> {
        if counts.is_empty() {
            return Ok(());
        }
        let key = self.key(stream, window);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (emoji, n) in counts {
            pipe.cmd("HINCRBY").arg(&key).arg(emoji).arg(*n).ignore();
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(WINDOW_TTL_MS).ignore();
        let mut conn = self.conn.clone();
        timed(pipe.query_async::<()>(&mut conn)).await
    }

    async fn sum(
        &self,
        stream: &StreamId,
        first: u64,
        last: u64,
    ) -> Result<BTreeMap<String, u64>, BusError> {
        let mut pipe = redis::pipe();
        for window in first..=last {
            pipe.cmd("HGETALL").arg(self.key(stream, window));
        }
        let mut conn = self.conn.clone();
        let windows: Vec<BTreeMap<String, u64>> = timed(pipe.query_async(&mut conn)).await?;
        let mut out = BTreeMap::new();
        for w in windows {
            for (emoji, n) in w {
                *out.entry(emoji).or_default() += n;
            }
        }
        Ok(out)
    }
}

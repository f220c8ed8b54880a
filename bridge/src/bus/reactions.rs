//! Reactions of a cluster in Redis: one hash per stream and window,
//! `{prefix}:rx:{stream}:{window}` (emoji → count), incremented by every node that counted
//! reactions in that window and expiring a minute later; and one hash of totals per stream,
//! `{prefix}:rt:{stream}`, seeded from the store and incremented with the windows (see
//! [`wire::reactions`]). The totals hash carries the field `""` (never an emoji) so that a
//! seeded stream without reactions still has a hash.

use std::collections::BTreeMap;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use wire::bus::BusError;
use wire::reactions::SharedReactions;
use wire::StreamId;

use super::redis::timed;

/// A window's counts are read within a few windows of closing; keep them a little longer.
const WINDOW_TTL_MS: u64 = 60_000;
/// The shared totals are seeded from the store again this often (their expiry, set when
/// seeded and not renewed by additions): whatever a seed raced with, or a failed addition
/// missed, is corrected within this time.
const TOTALS_TTL_MS: u64 = 10 * 60 * 1000;

/// `KEYS` = window, totals; `ARGV` = window ttl, then emoji, count pairs. The totals are
/// incremented only when seeded: a missing hash is seeded from the store later, and the store
/// already has these counts.
const ADD: &str = r#"
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
return 0
"#;

/// `KEYS[1]` = totals; `ARGV` = ttl, then emoji, count pairs: seeds unless seeded already.
const SEED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], '', 0)
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#;

pub struct RedisReactions {
    conn: ConnectionManager,
    prefix: String,
    add: redis::Script,
    seed: redis::Script,
}

impl RedisReactions {
    pub fn new(conn: ConnectionManager, prefix: String) -> Self {
        RedisReactions {
            conn,
            prefix,
            add: redis::Script::new(ADD),
            seed: redis::Script::new(SEED),
        }
    }

    fn key(&self, stream: &StreamId, window: u64) -> String {
        format!("{}:rx:{stream}:{window}", self.prefix)
    }

    fn totals_key(&self, stream: &StreamId) -> String {
        format!("{}:rt:{stream}", self.prefix)
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
        let mut invocation = self.add.prepare_invoke();
        invocation
            .key(self.key(stream, window))
            .key(self.totals_key(stream))
            .arg(WINDOW_TTL_MS);
        for (emoji, n) in counts {
            invocation.arg(emoji).arg(*n);
        }
        let mut conn = self.conn.clone();
        timed(invocation.invoke_async::<()>(&mut conn)).await
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

    async fn totals(&self, stream: &StreamId) -> Result<Option<BTreeMap<String, u64>>, BusError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.totals_key(stream));
        let mut all: BTreeMap<String, u64> = timed(cmd.query_async(&mut conn)).await?;
        // The marker says "seeded"; a missing hash reads as empty.
        Ok(all.remove("").map(|_| all))
    }

    async fn seed(
        &self,
        stream: &StreamId,
        totals: &BTreeMap<String, u64>,
    ) -> Result<(), BusError> {
        let mut invocation = self.seed.prepare_invoke();
        invocation.key(self.totals_key(stream)).arg(TOTALS_TTL_MS);
        for (emoji, n) in totals {
            invocation.arg(emoji).arg(*n);
        }
        let mut conn = self.conn.clone();
        timed(invocation.invoke_async::<()>(&mut conn)).await
    }
}

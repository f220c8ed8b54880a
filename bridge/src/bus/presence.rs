//! Viewer counts of a cluster in Redis: each node's share of a stream in a hash
//! (`{prefix}:pv:{stream}`, one field per node holding `viewers:expires_at_ms`) and the
//! stream's distinct users in a HyperLogLog (`{prefix}:hll:{stream}`).
//!
//! A node renews its shares every presence interval; a share not renewed for three
//! intervals (the node died) is dropped by the next reader, so counts recover by themselves
//! after a node is killed. Expiry times come from Redis's clock (`TIME`), not the nodes'.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use wire::bus::BusError;

use super::redis::timed;
use wire::presence::{NodeShare, Presence, SharedPresence};
use wire::StreamId;

/// How long distinct users are kept after the last new one (a stream's "since it started").
const UNIQUE_TTL_S: u64 = 7 * 24 * 3600;
/// Users added per PFADD.
const PFADD_CHUNK: usize = 1000;
/// A share counts this many intervals after its last report.
const SHARE_LIFETIME_INTERVALS: u64 = 3;

/// KEYS: the stream's share hash, its HyperLogLog. ARGV: node id ("" to only read), the
/// node's viewers, the share's lifetime in ms. Returns {viewers summed over live shares,
/// distinct users}.
const REPORT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lifetime = tonumber(ARGV[3])
if ARGV[1] ~= '' then
  local viewers = tonumber(ARGV[2])
  if viewers > 0 then
    redis.call('HSET', KEYS[1], ARGV[1], viewers .. ':' .. (now + lifetime))
    redis.call('PEXPIRE', KEYS[1], lifetime * 2)
  else
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
end
local fields = redis.call('HGETALL', KEYS[1])
local sum = 0
for i = 1, #fields, 2 do
  local viewers, expires = string.match(fields[i + 1], '^(%d+):(%d+)$')
  if viewers == nil or tonumber(expires) < now then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    sum = sum + tonumber(viewers)
  end
end
return {sum, redis.call('PFCOUNT', KEYS[2])}
"#;

pub struct RedisPresence {
    conn: ConnectionManager,
    prefix: String,
    node: String,
    lifetime_ms: u64,
    script: redis::Script,
}

impl RedisPresence {
    /// `interval` is how often nodes report (`presence.interval_ms`).
    pub fn new(conn: ConnectionManager, prefix: String, node: String, interval: Duration) -> Self {
        RedisPresence {
            conn,
            prefix,
            node,
            lifetime_ms: interval.as_millis() as u64 * SHARE_LIFETIME_INTERVALS + 1000,
            script: redis::Script::new(REPORT),
        }
    }

    fn keys(&self, stream: &StreamId) -> (String, String) {
        (
            format!("{}:pv:{stream}", self.prefix),
            format!("{}:hll:{stream}", self.prefix),
        )
    }

    async fn sum(&self, stream: &StreamId, node: &str, viewers: u64) -> Result<Presence, BusError> {
        let (pv, hll) = self.keys(stream);
        let mut conn = self.conn.clone();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(pv)
            .key(hll)
            .arg(node)
            .arg(viewers)
            .arg(self.lifetime_ms);
        let call = invocation.invoke_async::<(u64, u64)>(&mut conn);
        let (viewers, unique) = timed(call).await?;
        Ok(Presence { viewers, unique })
    }
}

#[async_trait]
impl SharedPresence for RedisPresence {
    async fn report(&self, shares: Vec<NodeShare>) -> Result<Vec<(StreamId, Presence)>, BusError> {
        let mut out = Vec::with_capacity(shares.len());
        for share in shares {
            let (_, hll) = self.keys(&share.stream);
            if !share.new_users.is_empty() {
                let mut pipe = redis::pipe();
                for chunk in share.new_users.chunks(PFADD_CHUNK) {
                    let users: Vec<&str> = chunk.iter().map(|u| u.as_str()).collect();
                    pipe.cmd("PFADD").arg(&hll).arg(users).ignore();
                }
                pipe.cmd("EXPIRE").arg(&hll).arg(UNIQUE_TTL_S).ignore();
                let mut conn = self.conn.clone();
                timed(pipe.query_async::<()>(&mut conn)).await?;
            }
            let sum = self.sum(&share.stream, &self.node, share.viewers).await?;
            out.push((share.stream, sum));
        }
        Ok(out)
    }

    async fn get(&self, stream: &StreamId) -> Result<Presence, BusError> {
        self.sum(stream, "", 0).await
    }
}

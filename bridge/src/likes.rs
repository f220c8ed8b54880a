//! Who likes which comment: "once per user", decided where the like sets live.
//!
//! One bridge: the store decides in the transaction that stores the like ([`StoreLikes`]).
//! A cluster: each comment's like set is a Redis set, `{prefix}:likes:{stream}:{comment}`
//! ([`RedisLikes`]); a Lua script adds or removes users and answers which changes changed
//! something and the count after each, atomically for every bridge. Only those changes are
//! then written to the store, with plain writes (no lightweight transaction per like), each
//! stamped with the time Redis decided it (a per-comment clock, `…:t`, keeps those times
//! increasing) so that writes from two bridges reaching the store out of order end as
//! decided. A set expires [`LIKE_SET_TTL`] after its last change and is seeded again from the
//! store ([`Store::likers`]) the next time it is needed; the store stays the durable copy.
//! When a decision cannot be stored (the store refused it, or a call failed and its outcome
//! is unknown), the comment's set is dropped, to be seeded again from the store.
//!
//! A set holds the marker member `""` besides the users (user ids are never empty), so a
//! seeded set with no likers still exists and is told apart from one never seeded.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use wire::store::{DecidedLike, LikeChange, Store, StoreError};
use wire::StreamId;

use crate::bus::redis::timed;

/// How long an untouched like set stays in Redis (then it is read from the store again).
pub const LIKE_SET_TTL: Duration = Duration::from_secs(24 * 3600);
/// Users added to a set per Redis command while seeding (Lua's stack bounds `unpack`).
const SEED_CHUNK: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum LikeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("like sets unavailable: {0}")]
    Redis(#[from] wire::bus::BusError),
}

#[async_trait]
pub trait LikeSets: Send + Sync + 'static {
    /// Applies likes and unlikes in order; per change, the comment's like count right after
    /// it when it changed something (`None`: a second like, an unlike of nothing, or an
    /// unknown or removed comment). What changed is stored before this returns.
    async fn apply(
        &self,
        store: &dyn Store,
        changes: &[LikeChange],
    ) -> Result<Vec<Option<u64>>, LikeError>;
}

/// The store decides, in the transaction that stores the like.
pub struct StoreLikes;

#[async_trait]
impl LikeSets for StoreLikes {
    async fn apply(
        &self,
        store: &dyn Store,
        changes: &[LikeChange],
    ) -> Result<Vec<Option<u64>>, LikeError> {
        Ok(store.set_likes(changes).await?)
    }
}

/// Changes one comment's like set. KEYS[1]: the set; KEYS[2]: its clock (the last decision's
/// time, µs); ARGV[1]: TTL in ms; ARGV[2..]: `+user` (like) or `-user` (unlike). Nil when the
/// set does not exist (seed it first); otherwise two numbers per change: the count after it
/// and the time of the decision, or -1 and 0 when it changed nothing.
const APPLY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000000 + tonumber(now[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if t <= last then t = last + 1 end
local out = {}
for i = 2, #ARGV do
  local user = string.sub(ARGV[i], 2)
  local changed
  if string.sub(ARGV[i], 1, 1) == '+' then
    changed = redis.call('SADD', KEYS[1], user)
  else
    changed = redis.call('SREM', KEYS[1], user)
  end
  if changed == 1 then
    out[#out + 1] = redis.call('SCARD', KEYS[1]) - 1
    out[#out + 1] = t
    t = t + 1
  else
    out[#out + 1] = -1
    out[#out + 1] = 0
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], string.format('%.0f', t - 1), 'PX', ARGV[1])
return out
";

/// Seeds one comment's like set unless it exists. KEYS[1]: the set; ARGV[1]: TTL in ms;
/// ARGV[2]: '1' when this is the last chunk of the seed; ARGV[3..]: users. Chunks after the
/// first go to a temporary key renamed into place with the last one, so no bridge sees a
/// half-seeded set. Returns 1 when the set was seeded by this call.
const SEED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[2])
  return 0
end
redis.call('SADD', KEYS[2], '')
for i = 3, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
if ARGV[2] == '1' then
  redis.call('RENAME', KEYS[2], KEYS[1])
  return 1
end
return 0
";

/// Like sets in Redis, shared by the bridges of a cluster.
pub struct RedisLikes {
    conn: ConnectionManager,
    prefix: String,
    apply: redis::Script,
    seed: redis::Script,
}

impl RedisLikes {
    pub fn new(conn: ConnectionManager, prefix: String) -> Self {
        RedisLikes {
            conn,
            prefix,
            apply: redis::Script::new(APPLY),
            seed: redis::Script::new(SEED),
        }
    }

    /// Stream ids have no `:`, so the comment id is whatever follows the second one.
    fn key(&self, stream: &StreamId, comment_id: &str) -> String {
        format!("{}:likes:{stream}:{comment_id}", self.prefix)
    }

    /// Runs [`APPLY`] on one comment's set: per change, the count after it and the time of
    /// the decision (-1 and 0: no change); `None` when the set is not seeded.
    async fn change(
        &self,
        key: &str,
        changes: &[&LikeChange],
    ) -> Result<Option<Vec<i64>>, LikeError> {
        let mut invocation = self.apply.prepare_invoke();
        invocation
            .key(key)
            .key(format!("{key}:t"))
            .arg(LIKE_SET_TTL.as_millis() as u64);
        for ch in changes {
            let op = if ch.like { '+' } else { '-' };
            invocation.arg(format!("{op}{}", ch.user));
        }
        let mut conn = self.conn.clone();
        Ok(timed(invocation.invoke_async(&mut conn)).await?)
    }

    /// Seeds a comment's set from the store; false when the comment is unknown or removed.
    async fn seed(
        &self,
        store: &dyn Store,
        key: &str,
        stream: &StreamId,
        comment_id: &str,
    ) -> Result<bool, LikeError> {
        let Some(users) = store.likers(stream, comment_id).await? else {
            return Ok(false);
        };
        // Unique per call, so two bridges seeding at once never share a temporary key.
        let staging = format!("{key}:seed:{}", ulid::Ulid::new());
        let chunks: Vec<&[wire::UserId]> = if users.is_empty() {
            vec![&[]]
        } else {
            users.chunks(SEED_CHUNK).collect()
        };
        let mut conn = self.conn.clone();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut invocation = self.seed.prepare_invoke();
            invocation
                .key(key)
                .key(&staging)
                .arg(LIKE_SET_TTL.as_millis() as u64)
                .arg(if last { "1" } else { "0" });
            for u in *chunk {
                invocation.arg(u.as_str());
            }
            timed(invocation.invoke_async::<i64>(&mut conn)).await?;
        }
        Ok(true)
    }

    /// Drops sets whose decisions were not stored, or whose last call has an unknown
    /// outcome: the next change seeds them from the store again (best effort).
    async fn forget(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        let mut del = redis::cmd("DEL");
        del.arg(keys);
        if let Err(e) = timed(del.query_async::<()>(&mut conn)).await {
            tracing::warn!(error = %e, count = keys.len(), "dropping like sets failed; they are seeded again when they expire");
        }
    }

    /// Decides `changes` in Redis, comment by comment: `(index, count after, time)` of each
    /// change that changed something. `touched` gets every set a call went to, first.
    async fn decide(
        &self,
        store: &dyn Store,
        changes: &[LikeChange],
        touched: &mut Vec<String>,
    ) -> Result<Vec<(usize, u64, i64)>, LikeError> {
        let mut decided = Vec::new();
        for (stream, cid, idxs) in wire::store::likes_by_comment(changes) {
            let key = self.key(stream, cid);
            touched.push(key.clone());
            let group: Vec<&LikeChange> = idxs.iter().map(|&i| &changes[i]).collect();
            let answer = match self.change(&key, &group).await? {
                Some(a) => a,
                None => {
                    if !self.seed(store, &key, stream, cid).await? {
                        continue;
                    }
                    match self.change(&key, &group).await? {
                        Some(a) => a,
                        // Expired between seeding and use: a day untouched, so never.
                        None => continue,
                    }
                }
            };
            for (&i, pair) in idxs.iter().zip(answer.chunks_exact(2)) {
                if let Ok(n) = u64::try_from(pair[0]) {
                    decided.push((i, n, pair[1]));
                }
            }
        }
        Ok(decided)
    }
}

#[async_trait]
impl LikeSets for RedisLikes {
    async fn apply(
        &self,
        store: &dyn Store,
        changes: &[LikeChange],
    ) -> Result<Vec<Option<u64>>, LikeError> {
        let mut out = vec![None; changes.len()];
        let mut touched = Vec::new();
        let decided = match self.decide(store, changes, &mut touched).await {
            Ok(d) => d,
            Err(e) => {
                // Earlier comments' decisions would not be stored, and the failed call may
                // have run: their sets start again from the store.
                self.forget(&touched).await;
                return Err(e);
            }
        };
        if decided.is_empty() {
            return Ok(out);
        }
        let effective: Vec<DecidedLike> = decided
            .iter()
            .map(|&(i, _, at_us)| DecidedLike {
                change: changes[i].clone(),
                at_us,
            })
            .collect();
        let stored = match store.write_likes(&effective).await {
            Ok(s) => s,
            Err(e) => {
                // Stored or not, unknown: the store is the truth to seed from.
                self.forget(&touched).await;
                return Err(e.into());
            }
        };
        // A comment removed since its set was seeded: its likes are not stored.
        let mut refused: Vec<String> = decided
            .iter()
            .zip(&stored)
            .filter(|(_, ok)| !**ok)
            .map(|(&(i, _, _), _)| self.key(&changes[i].stream, &changes[i].comment_id))
            .collect();
        refused.dedup();
        self.forget(&refused).await;
        for ((i, n, _), ok) in decided.into_iter().zip(stored) {
            if ok {
                out[i] = Some(n);
            }
        }
        Ok(out)
    }
}

//! Per-user comment rate and per-stream slow mode: in memory for one bridge, in Redis for the
//! bridges of a cluster (a user's posts may reach any of them).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use wire::{StreamId, UserId};

use crate::ratelimit::UserRateLimit;

#[async_trait]
pub trait Limits: Send + Sync + 'static {
    /// Takes one comment of the user's rate; `Err` says how long until one is free.
    async fn comment(&self, user: &UserId) -> Result<(), Duration>;
    /// Slow mode: records a post of `user` in `stream` unless one was recorded less than
    /// `every` ago; `Err` says how long to wait.
    async fn slow_mode(
        &self,
        stream: &StreamId,
        user: &UserId,
        every: Duration,
    ) -> Result<(), Duration>;
    /// A post recorded by [`Limits::slow_mode`] was not stored: forget it, so the retry the
    /// client is told to make is not refused as too soon. (When `slow_mode` recorded it, no
    /// earlier post was within `every`, so forgetting loses nothing.)
    async fn undo_slow_mode(&self, stream: &StreamId, user: &UserId);
    /// Drops state of users who have been idle (in memory only).
    fn forget_idle(&self) {}
}

/// One bridge: GCRA in memory (`governor`) and a map of last posts.
pub struct LocalLimits {
    rate: UserRateLimit,
    last_post: Mutex<HashMap<(StreamId, UserId), Instant>>,
}

impl LocalLimits {
    pub fn new(count: u32, window: Duration) -> Self {
        LocalLimits {
            rate: UserRateLimit::new(count, window),
            last_post: Mutex::default(),
        }
    }

    fn last_post(&self) -> std::sync::MutexGuard<'_, HashMap<(StreamId, UserId), Instant>> {
        self.last_post
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Limits for LocalLimits {
    async fn comment(&self, user: &UserId) -> Result<(), Duration> {
        self.rate.check(user)
    }

    async fn slow_mode(
        &self,
        stream: &StreamId,
        user: &UserId,
        every: Duration,
    ) -> Result<(), Duration> {
        let mut m = self.last_post();
        let key = (stream.clone(), user.clone());
        if let Some(last) = m.get(&key) {
            let wait = every.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                return Err(wait);
            }
        }
        m.insert(key, Instant::now());
        Ok(())
    }

    async fn undo_slow_mode(&self, stream: &StreamId, user: &UserId) {
        self.last_post().remove(&(stream.clone(), user.clone()));
    }

    fn forget_idle(&self) {
        self.rate.forget_idle();
        // Records older than the longest slow mode are useless.
        self.last_post()
            .retain(|_, at| at.elapsed() < Duration::from_secs(3600));
    }
}

/// GCRA on the Redis server's clock: `KEYS[1]` holds the theoretical arrival time (ms);
/// `ARGV` = interval ms (window / count), burst (count). Returns 0 when allowed, else the
/// wait in ms.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * (burst - 1)
if tat - now > tolerance then
  return tat - tolerance - now
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now + 1000)
return 0
"#;

/// The bridges of a cluster: the same limits in Redis (keys under `{prefix}:rl:` and
/// `{prefix}:slow:`, expiring by themselves). If Redis cannot answer, the post is let
/// through: the limits protect the chat, they must not take it down.
pub struct RedisLimits {
    conn: ConnectionManager,
    prefix: String,
    interval_ms: u64,
    burst: u32,
    script: redis::Script,
}

impl RedisLimits {
    pub fn new(conn: ConnectionManager, prefix: String, count: u32, window: Duration) -> Self {
        let interval_ms = if count == 0 {
            0
        } else {
            (window.as_millis() as u64 / u64::from(count)).max(1)
        };
        RedisLimits {
            conn,
            prefix,
            interval_ms,
            burst: count,
            script: redis::Script::new(GCRA),
        }
    }

    fn slow_key(&self, stream: &StreamId, user: &UserId) -> String {
        format!("{}:slow:{stream}:{user}", self.prefix)
    }
}

#[async_trait]
impl Limits for RedisLimits {
    async fn comment(&self, user: &UserId) -> Result<(), Duration> {
        if self.burst == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let wait: redis::RedisResult<u64> = self
            .script
            .key(format!("{}:rl:{user}", self.prefix))
            .arg(self.interval_ms)
            .arg(self.burst)
            .invoke_async(&mut conn)
            .await;
        match wait {
            Ok(0) => Ok(()),
            Ok(ms) => Err(Duration::from_millis(ms)),
            Err(e) => {
                tracing::warn!(error = %e, "shared rate limit unavailable; letting the post through");
                Ok(())
            }
        }
    }

    async fn slow_mode(
        &self,
        stream: &StreamId,
        user: &UserId,
        every: Duration,
    ) -> Result<(), Duration> {
        let mut conn = self.conn.clone();
        let key = self.slow_key(stream, user);
        let ms = every.as_millis() as u64;
        let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await;
        match set {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                let left: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(ms as i64);
                Err(Duration::from_millis(left.max(1) as u64))
            }
            Err(e) => {
                tracing::warn!(error = %e, "shared slow mode unavailable; letting the post through");
                Ok(())
            }
        }
    }

    async fn undo_slow_mode(&self, stream: &StreamId, user: &UserId) {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(self.slow_key(stream, user))
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "forgetting a slow-mode post failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_slow_mode_waits_and_undo_forgets() {
        let l = LocalLimits::new(0, Duration::from_secs(60));
        let (s, u) = (StreamId::new("s").unwrap(), UserId::new("u").unwrap());
        let every = Duration::from_secs(30);
        assert!(l.slow_mode(&s, &u, every).await.is_ok());
        let wait = l.slow_mode(&s, &u, every).await.unwrap_err();
        assert!(wait > Duration::from_secs(29), "{wait:?}");
        l.undo_slow_mode(&s, &u).await;
        assert!(l.slow_mode(&s, &u, every).await.is_ok());
        assert!(l.comment(&u).await.is_ok(), "count 0: no rate limit");
    }
}

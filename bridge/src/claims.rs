//! Who processes what, when several bridges share the work.
//!
//! One bridge has one writer task, which already does one thing at a time: [`LocalClaims`]
//! grants everything. The bridges of a cluster take submissions from one Redis Stream, so a
//! post retried onto two bridges, or an entry claimed from a slow bridge, can be processed by
//! two of them at the same moment, and two moderation steps on one stream can interleave
//! their reads and writes. [`RedisClaims`] closes both: before a post is looked up and stored,
//! its retry key is claimed in Redis (`{prefix}:dd:…`); before an action, its stream
//! (`{prefix}:lock:{stream}`). A claim holds until released, or until its lease runs out, or
//! until the bridge holding it stops beating its heartbeat (`{prefix}:bridge:{token}`), so a
//! killed bridge's claims pass to another within [`HEARTBEAT_TTL`] while a slow but live one
//! keeps them.
//!
//! Claims also remember posts whose commit failed in a way that may still have stored them (a
//! storage timeout): [`Claims::mark_unsure`]. The next claim of such a post reports it
//! ([`Taken::Unsure`]) and forgets the mark, so the retry that finds the post stored publishes
//! it, which the failed attempt never did.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use wire::store::DedupKey;

use crate::bus::redis::{timed, CALL_TIMEOUT};
use wire::StreamId;

/// A bridge that has not beaten its heartbeat for this long is taken for dead.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(5);
/// How often a bridge beats.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Longest a post's claim holds without being released (a backstop: release is the normal
/// end; a commit may take several storage round trips).
const POST_LEASE: Duration = Duration::from_secs(60);
/// Longest a stream's claim holds without being released: other bridges' moderation steps on
/// the stream wait for it, so a claim whose release was lost must not block them for long.
const STREAM_LEASE: Duration = Duration::from_secs(10);
/// How long a post's "may be stored" mark waits for its retry.
const UNSURE_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
#[error("claims unavailable: {0}")]
pub struct ClaimError(#[from] wire::bus::BusError);

/// What a claim is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claim {
    /// Checking and storing one post (its retry key).
    Post(DedupKey),
    /// Applying a moderation step to one stream.
    Stream(StreamId),
}

/// The answer to one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Another live bridge holds it.
    No,
    /// This bridge holds it (also when it held it already).
    Yes,
    /// This bridge holds it, and the post's last attempt may have stored it unannounced
    /// ([`Claims::mark_unsure`]; the mark is gone now).
    Unsure,
}

impl Taken {
    pub fn held(self) -> bool {
        self != Taken::No
    }
}

#[async_trait]
pub trait Claims: Send + Sync + 'static {
    /// Takes each claim unless another live bridge holds it.
    async fn claim(&self, claims: &[Claim]) -> Result<Vec<Taken>, ClaimError>;
    /// Gives claims up (best effort: an unreleased claim ends with its lease).
    async fn release(&self, claims: &[Claim]);
    /// Remembers posts whose commit failed but may have been applied (best effort).
    async fn mark_unsure(&self, posts: &[DedupKey]);
}

/// One bridge: its writer does one thing at a time, so every claim is granted; the unsure
/// marks are kept in memory.
#[derive(Default)]
pub struct LocalClaims {
    unsure: Mutex<HashMap<DedupKey, Instant>>,
}

impl LocalClaims {
    fn unsure(&self) -> std::sync::MutexGuard<'_, HashMap<DedupKey, Instant>> {
        self.unsure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Claims for LocalClaims {
    async fn claim(&self, claims: &[Claim]) -> Result<Vec<Taken>, ClaimError> {
        let mut unsure = self.unsure();
        Ok(claims
            .iter()
            .map(|c| match c {
                Claim::Post(k) => match unsure.remove(k) {
                    Some(at) if at.elapsed() < UNSURE_TTL => Taken::Unsure,
                    _ => Taken::Yes,
                },
                Claim::Stream(_) => Taken::Yes,
            })
            .collect())
    }

    async fn release(&self, _claims: &[Claim]) {}

    async fn mark_unsure(&self, posts: &[DedupKey]) {
        let mut unsure = self.unsure();
        unsure.retain(|_, at| at.elapsed() < UNSURE_TTL);
        let now = Instant::now();
        for k in posts {
            unsure.insert(k.clone(), now);
        }
    }
}

/// Takes every free key of `KEYS` for `ARGV[1]` (this bridge's token); a key held by a bridge
/// whose heartbeat (`ARGV[2]` .. token) is gone is free. Key i's lease (ms) is
/// `ARGV[1 + 2i]` and its unsure mark (or empty) `ARGV[2 + 2i]`, deleted when the key is
/// taken. Returns per key 0 (another live bridge holds it), 1 (taken) or 2 (taken, was
/// unsure).
const CLAIM: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  local holder = redis.call('GET', k)
  if (not holder) or holder == ARGV[1] or redis.call('EXISTS', ARGV[2] .. holder) == 0 then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[1 + 2 * i])
    out[i] = 1
    local mark = ARGV[2 + 2 * i]
    if mark ~= '' and redis.call('DEL', mark) == 1 then out[i] = 2 end
  else
    out[i] = 0
  end
end
return out
"#;

/// Deletes every key of `KEYS` that `ARGV[1]` still holds.
const RELEASE: &str = r#"
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end
end
return 0
"#;

/// The bridges of a cluster: claims in Redis.
pub struct RedisClaims {
    conn: ConnectionManager,
    prefix: String,
    token: String,
    claim: redis::Script,
    release: redis::Script,
}

impl RedisClaims {
    /// Starts the heartbeat (beaten until `shutdown`, then removed, which frees this bridge's
    /// remaining claims at once). `node` names the process in the token, for operators.
    pub async fn start(
        conn: ConnectionManager,
        prefix: String,
        node: &str,
        shutdown: CancellationToken,
    ) -> Result<RedisClaims, ClaimError> {
        let token = format!("{node}/{}", ulid::Ulid::new());
        let heartbeat = format!("{prefix}:bridge:{token}");
        beat(&mut conn.clone(), &heartbeat).await?;
        let mut c = conn.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = beat(&mut c, &heartbeat).await {
                            tracing::warn!(error = %e, "bridge heartbeat failed");
                        }
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
            let _: Result<redis::RedisResult<()>, _> = tokio::time::timeout(
                CALL_TIMEOUT,
                redis::cmd("DEL").arg(&heartbeat).query_async(&mut c),
            )
            .await;
        });
        Ok(RedisClaims {
            conn,
            prefix,
            token,
            claim: redis::Script::new(CLAIM),
            release: redis::Script::new(RELEASE),
        })
    }

    /// This bridge's token (the value of the keys it holds).
    pub fn token(&self) -> &str {
        &self.token
    }

    fn key(&self, claim: &Claim) -> String {
        match claim {
            Claim::Post(k) => self.post_key("dd", k),
            Claim::Stream(s) => format!("{}:lock:{s}", self.prefix),
        }
    }

    /// `{prefix}:{kind}:{stream}:{len(user)}:{user}:{client_msg_id}`: the user id's length
    /// keeps the parts unambiguous whatever they contain.
    fn post_key(&self, kind: &str, k: &DedupKey) -> String {
        format!(
            "{}:{kind}:{}:{}:{}:{}",
            self.prefix,
            k.stream,
            k.user.as_str().len(),
            k.user,
            k.client_msg_id
        )
    }
}

async fn beat(conn: &mut ConnectionManager, key: &str) -> Result<(), ClaimError> {
    let mut set = redis::cmd("SET");
    set.arg(key)
        .arg(1)
        .arg("PX")
        .arg(HEARTBEAT_TTL.as_millis() as u64);
    Ok(timed(set.query_async::<()>(conn)).await?)
}

#[async_trait]
impl Claims for RedisClaims {
    async fn claim(&self, claims: &[Claim]) -> Result<Vec<Taken>, ClaimError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.claim.prepare_invoke();
        for c in claims {
            invocation.key(self.key(c));
        }
        invocation
            .arg(&self.token)
            .arg(format!("{}:bridge:", self.prefix));
        for c in claims {
            match c {
                Claim::Post(k) => invocation
                    .arg(POST_LEASE.as_millis() as u64)
                    .arg(self.post_key("unsure", k)),
                Claim::Stream(_) => invocation.arg(STREAM_LEASE.as_millis() as u64).arg(""),
            };
        }
        let mut conn = self.conn.clone();
        let taken: Vec<u8> = timed(invocation.invoke_async(&mut conn)).await?;
        Ok(taken
            .into_iter()
            .map(|t| match t {
                0 => Taken::No,
                2 => Taken::Unsure,
                _ => Taken::Yes,
            })
            .collect())
    }

    async fn release(&self, claims: &[Claim]) {
        if claims.is_empty() {
            return;
        }
        let mut invocation = self.release.prepare_invoke();
        for c in claims {
            invocation.key(self.key(c));
        }
        invocation.arg(&self.token);
        let mut conn = self.conn.clone();
        if let Err(e) = timed(invocation.invoke_async::<()>(&mut conn)).await {
            tracing::warn!(error = %e, count = claims.len(), "releasing claims failed");
        }
    }

    async fn mark_unsure(&self, posts: &[DedupKey]) {
        if posts.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for k in posts {
            pipe.cmd("SET")
                .arg(self.post_key("unsure", k))
                .arg(1)
                .arg("PX")
                .arg(UNSURE_TTL.as_millis() as u64)
                .ignore();
        }
        let mut conn = self.conn.clone();
        if let Err(e) = timed(pipe.query_async::<()>(&mut conn)).await {
            tracing::warn!(error = %e, count = posts.len(), "marking posts unsure failed");
        }
    }
}

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

use std::time::Duration;

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
/// Longest a claim holds without being released (a backstop: release is the normal end).
const LEASE: Duration = Duration::from_secs(60);

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

#[async_trait]
pub trait Claims: Send + Sync + 'static {
    /// Takes each claim unless another live bridge holds it: `true` = this bridge has it
    /// (also when it had it already).
    async fn claim(&self, claims: &[Claim]) -> Result<Vec<bool>, ClaimError>;
    /// Gives claims up (best effort: an unreleased claim ends with its lease).
    async fn release(&self, claims: &[Claim]);
}

/// One bridge: its writer does one thing at a time, so every claim is granted.
pub struct LocalClaims;

#[async_trait]
impl Claims for LocalClaims {
    async fn claim(&self, claims: &[Claim]) -> Result<Vec<bool>, ClaimError> {
        Ok(vec![true; claims.len()])
    }

    async fn release(&self, _claims: &[Claim]) {}
}

/// Takes every free key of `KEYS` for `ARGV[1]` (this bridge's token) with a lease of
/// `ARGV[2]` ms; a key held by a bridge whose heartbeat (`ARGV[3]` .. token) is gone is free.
/// Returns 1 per key taken, 0 per key another live bridge holds.
const CLAIM: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  local holder = redis.call('GET', k)
  if (not holder) or holder == ARGV[1] or redis.call('EXISTS', ARGV[3] .. holder) == 0 then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
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
            // The user id's length keeps (stream, user, id) unambiguous whatever they contain.
            Claim::Post(k) => format!(
                "{}:dd:{}:{}:{}:{}",
                self.prefix,
                k.stream,
                k.user.as_str().len(),
                k.user,
                k.client_msg_id
            ),
            Claim::Stream(s) => format!("{}:lock:{s}", self.prefix),
        }
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
    async fn claim(&self, claims: &[Claim]) -> Result<Vec<bool>, ClaimError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.claim.prepare_invoke();
        for c in claims {
            invocation.key(self.key(c));
        }
        invocation
            .arg(&self.token)
            .arg(LEASE.as_millis() as u64)
            .arg(format!("{}:bridge:", self.prefix));
        let mut conn = self.conn.clone();
        let taken: Vec<u8> = timed(invocation.invoke_async(&mut conn)).await?;
        Ok(taken.into_iter().map(|t| t == 1).collect())
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
}

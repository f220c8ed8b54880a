//! Per-stream `seq` numbering, shared by every writer of the system.
//!
//! One process: a counter in memory, started from the highest stored `seq`. A cluster: a
//! Redis counter per stream (`INCR`), started the same way (`SET NX`), so several bridges
//! never hand out the same `seq`. A `seq` taken for a write that then fails leaves a gap in
//! the cluster (clients catch up over it); in memory the counter is rewound.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use wire::store::{Store, StoreError};
use wire::StreamId;

#[async_trait]
pub trait Sequencer: Send + Sync + 'static {
    /// Takes the stream's next `seq`.
    async fn next(&self, stream: &StreamId, store: &dyn Store) -> Result<u64, StoreError>;
    /// The stream's latest `seq`, taking none.
    async fn current(&self, stream: &StreamId, store: &dyn Store) -> Result<u64, StoreError>;
    /// Nothing taken since `seq_before` was stored: numbering may resume from the store.
    fn forget(&self, stream: &StreamId);
}

#[derive(Default)]
pub struct MemorySequencer {
    last: Mutex<HashMap<StreamId, u64>>,
}

impl MemorySequencer {
    async fn ensure(&self, stream: &StreamId, store: &dyn Store) -> Result<(), StoreError> {
        let known = self
            .last
            .lock()
            .map(|m| m.contains_key(stream))
            .unwrap_or(false);
        if !known {
            let stored = store.last_seq(stream).await?;
            if let Ok(mut m) = self.last.lock() {
                m.entry(stream.clone()).or_insert(stored);
            }
        }
        Ok(())
    }
}

fn poisoned() -> StoreError {
    StoreError::Task("sequencer lock poisoned".into())
}

#[async_trait]
impl Sequencer for MemorySequencer {
    async fn next(&self, stream: &StreamId, store: &dyn Store) -> Result<u64, StoreError> {
        self.ensure(stream, store).await?;
        let mut m = self.last.lock().map_err(|_| poisoned())?;
        let n = m.entry(stream.clone()).or_insert(0);
        *n += 1;
        Ok(*n)
    }

    async fn current(&self, stream: &StreamId, store: &dyn Store) -> Result<u64, StoreError> {
        self.ensure(stream, store).await?;
        let m = self.last.lock().map_err(|_| poisoned())?;
        Ok(m.get(stream).copied().unwrap_or(0))
    }

    fn forget(&self, stream: &StreamId) {
        if let Ok(mut m) = self.last.lock() {
            m.remove(stream);
        }
    }
}

/// Counters in Redis, one per stream: `{prefix}:seq:{stream}`.
pub struct RedisSequencer {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisSequencer {
    pub fn new(conn: ConnectionManager, prefix: String) -> Self {
        RedisSequencer { conn, prefix }
    }

    fn key(&self, stream: &StreamId) -> String {
        format!("{}:seq:{stream}", self.prefix)
    }

    /// Starts the counter from the store the first time (SET NX: one writer wins).
    async fn ensure(
        &self,
        key: &str,
        stream: &StreamId,
        store: &dyn Store,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let exists: bool = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        if !exists {
            let stored = store.last_seq(stream).await?;
            let _: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(stored)
                .arg("NX")
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
        }
        Ok(())
    }
}

fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

#[async_trait]
impl Sequencer for RedisSequencer {
    async fn next(&self, stream: &StreamId, store: &dyn Store) -> Result<u64, StoreError> {
        let key = self.key(stream);
        self.ensure(&key, stream, store).await?;
        let mut conn = self.conn.clone();
        redis::cmd("INCR")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)
    }

    async fn current(&self, stream: &StreamId, store: &dyn Store) -> Result<u64, StoreError> {
        let key = self.key(stream);
        self.ensure(&key, stream, store).await?;
        let mut conn = self.conn.clone();
        let v: Option<u64> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(v.unwrap_or(0))
    }

    fn forget(&self, _stream: &StreamId) {}
}

//! A read-through cache of stream records.
//!
//! The bridge asks "is this stream live?" for every comment and the broker asks "does this
//! stream exist?" for every subscription; both answers change rarely, so they come from memory
//! and are refreshed from the store when older than the caller tolerates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::event::StreamState;
use crate::ids::StreamId;
use crate::store::{Store, StoreError};

/// One store read of a stream at a time; callers that miss the cache meanwhile wait for it.
type Gates = Arc<Mutex<HashMap<StreamId, Arc<tokio::sync::Mutex<()>>>>>;

/// Shared by every component of one process; cheap to clone.
#[derive(Clone)]
pub struct StreamDirectory {
    store: Arc<dyn Store>,
    /// Positive entries only: an unknown stream is looked up again next time, so that a stream
    /// created by another process becomes visible at once.
    cache: Arc<RwLock<HashMap<StreamId, (StreamState, Instant)>>>,
    /// Misses of one stream share one read: thousands of viewers subscribing at once to a
    /// stream not yet cached would otherwise each read the store (and time out on a busy
    /// Cassandra).
    reads: Gates,
}

impl StreamDirectory {
    pub fn new(store: Arc<dyn Store>) -> Self {
        StreamDirectory {
            store,
            cache: Arc::new(RwLock::new(HashMap::new())),
            reads: Arc::default(),
        }
    }

    fn cached(&self, id: &StreamId, max_age: Duration) -> Option<StreamState> {
        let cache = self.cache.read().ok()?;
        let (state, at) = cache.get(id)?;
        (at.elapsed() <= max_age).then(|| state.clone())
    }

    async fn read(&self, id: &StreamId) -> Result<Option<StreamState>, StoreError> {
        let fresh = self.store.get_stream(id).await?;
        if let Some(state) = &fresh {
            self.remember(state.clone());
        }
        Ok(fresh)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The stream record, from memory if it was read less than `max_age` ago.
    pub async fn get(
        &self,
        id: &StreamId,
        max_age: Duration,
    ) -> Result<Option<StreamState>, StoreError> {
        if let Some(state) = self.cached(id, max_age) {
            return Ok(Some(state));
        }
        if max_age.is_zero() {
            // Wants a read that starts now: a shared one may have started earlier.
            return self.read(id).await;
        }
        let gate = {
            let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
            reads.entry(id.clone()).or_default().clone()
        };
        let result = {
            let _turn = gate.lock().await;
            // Whoever went first may have read it meanwhile.
            match self.cached(id, max_age) {
                Some(state) => Ok(Some(state)),
                None => self.read(id).await,
            }
        };
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the map's and this call's: nobody else waits on this gate.
        if reads.get(id).is_some_and(|g| Arc::ptr_eq(g, &gate)) && Arc::strong_count(&gate) <= 2 {
            reads.remove(id);
        }
        result
    }

    /// Records a state this process just wrote or read, so its next reads see it at once.
    /// An older version (a slow read racing a newer write) never replaces a newer one.
    pub fn remember(&self, state: StreamState) {
        if let Ok(mut cache) = self.cache.write() {
            match cache.get_mut(&state.id) {
                Some((old, at)) if old.version > state.version => *at = Instant::now(),
                _ => {
                    cache.insert(state.id.clone(), (state, Instant::now()));
                }
            }
        }
    }

    /// Changes a stream record: `change` gets the current record and returns whether it
    /// changed it (or an error, which aborts). The write is a compare-and-set on the version,
    /// retried on the fresh record when another writer got there first. Returns the record as
    /// it is afterwards and whether this call changed it; `None` if the stream does not exist.
    pub async fn update<E: From<StoreError>>(
        &self,
        id: &StreamId,
        mut change: impl FnMut(&mut StreamState) -> Result<bool, E>,
    ) -> Result<Option<(StreamState, bool)>, E> {
        for _ in 0..8 {
            let Some(mut state) = self.store.get_stream(id).await? else {
                return Ok(None);
            };
            let expected = state.version;
            if !change(&mut state)? {
                self.remember(state.clone());
                return Ok(Some((state, false)));
            }
            state.version = expected + 1;
            if self.store.update_stream(&state, expected).await? {
                self.remember(state.clone());
                return Ok(Some((state, true)));
            }
        }
        Err(StoreError::Backend(format!("stream {id} keeps changing concurrently; retry")).into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::event::{Comment, Event};
    use crate::ids::UserId;
    use crate::moderation::{AuditEntry, Ban, BanScope, QueueItem, QueueStatus};
    use crate::store::{Batch, DedupHit, DedupKey, LikeChange, ReplayCursor, StoredComment};

    /// Knows one stream; counts and slows down its reads. Nothing else is used here.
    struct SlowStore {
        stream: StreamState,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl Store for SlowStore {
        async fn get_stream(&self, id: &StreamId) -> Result<Option<StreamState>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok((*id == self.stream.id).then(|| self.stream.clone()))
        }
        async fn create_stream(&self, _: &StreamState) -> Result<bool, StoreError> {
            unimplemented!()
        }
        async fn update_stream(&self, _: &StreamState, _: u64) -> Result<bool, StoreError> {
            unimplemented!()
        }
        async fn list_streams(&self) -> Result<Vec<StreamState>, StoreError> {
            unimplemented!()
        }
        async fn last_seq(&self, _: &StreamId) -> Result<u64, StoreError> {
            unimplemented!()
        }
        async fn find_dedup(&self, _: &[DedupKey]) -> Result<Vec<Option<DedupHit>>, StoreError> {
            unimplemented!()
        }
        async fn commit(&self, _: &Batch) -> Result<(), StoreError> {
            unimplemented!()
        }
        async fn has_reported(
            &self,
            _: &StreamId,
            _: &str,
            _: &UserId,
        ) -> Result<bool, StoreError> {
            unimplemented!()
        }
        async fn add_reactions(
            &self,
            _: &StreamId,
            _: &[(String, u64)],
        ) -> Result<Vec<(String, u64)>, StoreError> {
            unimplemented!()
        }
        async fn reaction_totals(&self, _: &StreamId) -> Result<Vec<(String, u64)>, StoreError> {
            unimplemented!()
        }
        async fn set_likes(&self, _: &[LikeChange]) -> Result<Vec<Option<u64>>, StoreError> {
            unimplemented!()
        }
        async fn write_likes(
            &self,
            _: &[crate::store::DecidedLike],
        ) -> Result<Vec<bool>, StoreError> {
            unimplemented!()
        }
        async fn likers(
            &self,
            _: &StreamId,
            _: &str,
        ) -> Result<Option<Vec<crate::UserId>>, StoreError> {
            unimplemented!()
        }
        async fn engagement(
            &self,
            _: &StreamId,
            _: &[String],
        ) -> Result<Vec<(u64, u64)>, StoreError> {
            unimplemented!()
        }
        async fn replies(
            &self,
            _: &StreamId,
            _: &str,
            _: u64,
            _: usize,
        ) -> Result<Vec<Comment>, StoreError> {
            unimplemented!()
        }
        async fn find_comment(
            &self,
            _: &StreamId,
            _: &str,
        ) -> Result<Option<StoredComment>, StoreError> {
            unimplemented!()
        }
        async fn replay(
            &self,
            _: &StreamId,
            _: u64,
            _: u64,
            _: Option<ReplayCursor>,
            _: usize,
        ) -> Result<Vec<Comment>, StoreError> {
            unimplemented!()
        }
        async fn latest(
            &self,
            _: &StreamId,
            _: u64,
            _: u64,
            _: usize,
        ) -> Result<Vec<Comment>, StoreError> {
            unimplemented!()
        }
        async fn after_seq(
            &self,
            _: &StreamId,
            _: u64,
            _: usize,
        ) -> Result<Vec<Event>, StoreError> {
            unimplemented!()
        }
        async fn put_ban(&self, _: &Ban) -> Result<(), StoreError> {
            unimplemented!()
        }
        async fn delete_ban(&self, _: &UserId, _: &BanScope) -> Result<bool, StoreError> {
            unimplemented!()
        }
        async fn bans_of(&self, _: &[UserId]) -> Result<Vec<Ban>, StoreError> {
            unimplemented!()
        }
        async fn put_queue_item(&self, _: &QueueItem) -> Result<(), StoreError> {
            unimplemented!()
        }
        async fn get_queue_item(&self, _: &str) -> Result<Option<QueueItem>, StoreError> {
            unimplemented!()
        }
        async fn queue_item_for_comment(
            &self,
            _: &StreamId,
            _: &str,
        ) -> Result<Option<QueueItem>, StoreError> {
            unimplemented!()
        }
        async fn list_queue(
            &self,
            _: Option<&StreamId>,
            _: Option<QueueStatus>,
            _: usize,
        ) -> Result<Vec<QueueItem>, StoreError> {
            unimplemented!()
        }
        async fn add_strike(&self, _: &UserId, _: i64, _: i64) -> Result<u32, StoreError> {
            unimplemented!()
        }
        async fn append_audit(&self, _: &AuditEntry) -> Result<(), StoreError> {
            unimplemented!()
        }
        async fn list_audit(
            &self,
            _: Option<&StreamId>,
            _: Option<i64>,
            _: usize,
        ) -> Result<Vec<AuditEntry>, StoreError> {
            unimplemented!()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_of_one_stream_share_one_read() {
        let id = StreamId::new("s1").unwrap();
        let store = Arc::new(SlowStore {
            stream: StreamState::new(id.clone(), "s1".into(), None, 0),
            reads: AtomicUsize::new(0),
        });
        let dir = StreamDirectory::new(store.clone());
        let lookups: Vec<_> = (0..200)
            .map(|_| {
                let (dir, id) = (dir.clone(), id.clone());
                tokio::spawn(async move { dir.get(&id, Duration::from_secs(5)).await })
            })
            .collect();
        for l in lookups {
            assert_eq!(l.await.unwrap().unwrap().unwrap().id, id);
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
        assert!(dir.reads.lock().unwrap().is_empty(), "no gate left behind");

        // A caller that wants a fresh record reads on its own; an unknown stream is not cached.
        dir.get(&id, Duration::ZERO).await.unwrap();
        assert_eq!(store.reads.load(Ordering::SeqCst), 2);
        let other = StreamId::new("s2").unwrap();
        assert!(dir
            .get(&other, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none());
        assert!(dir
            .get(&other, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none());
        assert_eq!(store.reads.load(Ordering::SeqCst), 4);
    }
}

//! A read-through cache of stream records.
//!
//! The bridge asks "is this stream live?" for every comment and the broker asks "does this
//! stream exist?" for every subscription; both answers change rarely, so they come from memory
//! and are refreshed from the store when older than the caller tolerates.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::event::StreamState;
use crate::ids::StreamId;
use crate::store::{Store, StoreError};

/// Shared by every component of one process; cheap to clone.
#[derive(Clone)]
pub struct StreamDirectory {
    store: Arc<dyn Store>,
    /// Positive entries only: an unknown stream is looked up again next time, so that a stream
    /// created by another process becomes visible at once.
    cache: Arc<RwLock<HashMap<StreamId, (StreamState, Instant)>>>,
}

impl StreamDirectory {
    pub fn new(store: Arc<dyn Store>) -> Self {
        StreamDirectory {
            store,
            cache: Arc::new(RwLock::new(HashMap::new())),
        }
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
        if let Ok(cache) = self.cache.read() {
            if let Some((state, at)) = cache.get(id) {
                if at.elapsed() <= max_age {
                    return Ok(Some(state.clone()));
                }
            }
        }
        let fresh = self.store.get_stream(id).await?;
        if let Some(state) = &fresh {
            self.remember(state.clone());
        }
        Ok(fresh)
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

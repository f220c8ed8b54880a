//! Reaction windows shared by the broker nodes of a cluster.
//!
//! Each node counts its own clients' reactions; in a cluster it adds each window's counts to
//! a shared window (keyed by the window's number, `now_ms / window_ms`) and publishes to its
//! own viewers the sum of every node's counts of the windows that have closed, so a viewer
//! receives one frame per window with the whole cluster's counts.
//!
//! The cluster also keeps each stream's reaction totals there, as the live copy every node and
//! API server reads (every window, for every watched stream) instead of the store. The store's
//! totals stay the durable record: the shared copy is seeded from them when it is missing
//! (first use, or after the shared state was lost), and only a seeded copy is incremented.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::bus::BusError;
use crate::ids::StreamId;
use crate::store::{Store, StoreError};

#[async_trait]
pub trait SharedReactions: Send + Sync + 'static {
    /// Adds this node's counts of window `window` of `stream`, and to the stream's shared
    /// totals if they are seeded.
    async fn add(
        &self,
        stream: &StreamId,
        window: u64,
        counts: &[(String, u64)],
    ) -> Result<(), BusError>;
    /// Every node's counts of windows `first..=last` of `stream`, summed.
    async fn sum(
        &self,
        stream: &StreamId,
        first: u64,
        last: u64,
    ) -> Result<BTreeMap<String, u64>, BusError>;
    /// The stream's shared totals; `None` when they are not seeded.
    async fn totals(&self, stream: &StreamId) -> Result<Option<BTreeMap<String, u64>>, BusError>;
    /// Seeds the stream's shared totals with the store's, unless another process seeded them
    /// first.
    async fn seed(&self, stream: &StreamId, totals: &BTreeMap<String, u64>)
        -> Result<(), BusError>;
}

/// A stream's reaction totals: the shared copy when there is one (seeded from the store when
/// missing), else the store's. The store answers too when the shared state is unreachable.
pub async fn totals(
    shared: Option<&dyn SharedReactions>,
    store: &dyn Store,
    stream: &StreamId,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let Some(shared) = shared else {
        return Ok(store.reaction_totals(stream).await?.into_iter().collect());
    };
    match shared.totals(stream).await {
        Ok(Some(t)) => return Ok(t),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, %stream, "shared reaction totals unavailable; reading the store")
        }
    }
    let stored: BTreeMap<String, u64> = store.reaction_totals(stream).await?.into_iter().collect();
    if let Err(e) = shared.seed(stream, &stored).await {
        tracing::warn!(error = %e, %stream, "seeding shared reaction totals failed");
    }
    Ok(stored)
}

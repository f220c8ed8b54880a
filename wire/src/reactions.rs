//! Reaction windows shared by the broker nodes of a cluster.
//!
//! Each node counts its own clients' reactions; in a cluster it adds each window's counts to
//! a shared window (keyed by the window's number, `now_ms / window_ms`) and publishes to its
//! own viewers the sum of every node's counts of the windows that have closed, so a viewer
//! receives one frame per window with the whole cluster's counts.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::bus::BusError;
use crate::ids::StreamId;

#[async_trait]
pub trait SharedReactions: Send + Sync + 'static {
    /// Adds this node's counts of window `window` of `stream`.
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
}

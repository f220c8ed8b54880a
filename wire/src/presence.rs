//! Viewer counts per stream: written by broker nodes, read by the HTTP API.
//!
//! One process keeps them in a [`PresenceBoard`]; the nodes of a cluster also report their
//! share to a [`SharedPresence`] (Redis) and publish the cluster-wide sums it returns.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde::Serialize;

use crate::bus::BusError;
use crate::ids::{StreamId, UserId};

/// `{"viewers": N, "unique": M}`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Presence {
    /// Clients subscribed to the stream now.
    pub viewers: u64,
    /// Distinct users seen since the stream started (HyperLogLog estimate; in the embedded
    /// mode, since this node started, and forgotten after 10 minutes without viewers; in a
    /// cluster, kept in Redis for 7 days after the last new viewer).
    pub unique: u64,
}

/// One node's part of a stream's presence, reported every interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShare {
    pub stream: StreamId,
    /// Connections on this node watching the stream now (0 withdraws the node's share).
    pub viewers: u64,
    /// Users who started watching on this node since the last report.
    pub new_users: Vec<UserId>,
}

/// Presence summed over the nodes of a cluster.
#[async_trait]
pub trait SharedPresence: Send + Sync + 'static {
    /// Records this node's shares (they expire unless reported again within a few
    /// intervals, so a node that dies stops counting) and returns the cluster-wide presence
    /// of the same streams.
    async fn report(&self, shares: Vec<NodeShare>) -> Result<Vec<(StreamId, Presence)>, BusError>;
    /// The cluster-wide presence of one stream.
    async fn get(&self, stream: &StreamId) -> Result<Presence, BusError>;
}

/// Shared, cheap to clone: the node's latest counts, and the cluster's when there is one.
#[derive(Clone, Default)]
pub struct PresenceBoard {
    local: Arc<RwLock<HashMap<StreamId, Presence>>>,
    shared: Option<Arc<dyn SharedPresence>>,
}

impl PresenceBoard {
    /// A board whose counts are the cluster's, summed by `shared`.
    pub fn clustered(shared: Arc<dyn SharedPresence>) -> Self {
        PresenceBoard {
            local: Arc::default(),
            shared: Some(shared),
        }
    }

    pub fn shared(&self) -> Option<&Arc<dyn SharedPresence>> {
        self.shared.as_ref()
    }

    pub fn set(&self, stream: &StreamId, presence: Presence) {
        if let Ok(mut m) = self.local.write() {
            m.insert(stream.clone(), presence);
        }
    }

    pub fn remove(&self, stream: &StreamId) {
        if let Ok(mut m) = self.local.write() {
            m.remove(stream);
        }
    }

    /// The latest counts this process knows (in a cluster, as last summed by this node).
    pub fn get(&self, stream: &StreamId) -> Presence {
        self.local
            .read()
            .ok()
            .and_then(|m| m.get(stream).copied())
            .unwrap_or_default()
    }

    /// The current counts: the cluster's when shared (asked now), else this process's.
    pub async fn current(&self, stream: &StreamId) -> Result<Presence, BusError> {
        match &self.shared {
            Some(shared) => shared.get(stream).await,
            None => Ok(self.get(stream)),
        }
    }
}

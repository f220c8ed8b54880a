//! The latest viewer counts per stream, written by the broker node and read by the HTTP API.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::ids::StreamId;

/// `{"viewers": N, "unique": M}`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Presence {
    /// Clients subscribed to the stream now.
    pub viewers: u64,
    /// Distinct users seen since the stream started (HyperLogLog estimate; in the embedded
    /// mode, since this node started, and forgotten after 10 minutes without viewers).
    pub unique: u64,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct PresenceBoard(Arc<RwLock<HashMap<StreamId, Presence>>>);

impl PresenceBoard {
    pub fn set(&self, stream: &StreamId, presence: Presence) {
        if let Ok(mut m) = self.0.write() {
            m.insert(stream.clone(), presence);
        }
    }

    pub fn remove(&self, stream: &StreamId) {
        if let Ok(mut m) = self.0.write() {
            m.remove(stream);
        }
    }

    pub fn get(&self, stream: &StreamId) -> Presence {
        self.0
            .read()
            .ok()
            .and_then(|m| m.get(stream).copied())
            .unwrap_or_default()
    }
}

//! Bus implementations beyond the in-process [`wire::bus::MemoryBus`].
//!
//! - [`redis`] — Redis Streams for submissions, pub/sub for deliveries (the cluster).
//! - [`presence`] — viewer counts summed over the nodes of a cluster.
//! - [`reactions`] — reaction windows summed over the nodes of a cluster.
//! - `suite` — behaviour checks every bus must pass (`tests/bus_suite.rs`).

pub mod presence;
pub mod reactions;
pub mod redis;
/// Behaviour checks shared by every bus (used by `tests/bus_suite.rs`).
#[cfg(any(test, feature = "bus-suite"))]
pub mod suite;

pub use self::presence::RedisPresence;
pub use self::reactions::RedisReactions;
pub use self::redis::{RedisBus, RedisBusConfig};

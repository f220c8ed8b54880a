//! Bus implementations beyond the in-process [`wire::bus::MemoryBus`].
//!
//! - [`redis`] — Redis Streams for submissions, pub/sub for deliveries (the cluster).
//! - [`presence`] — viewer counts summed over the nodes of a cluster.
//! - [`reactions`] — reaction windows summed over the nodes of a cluster.

pub mod presence;
pub mod reactions;
pub mod redis;

pub use self::presence::RedisPresence;
pub use self::reactions::RedisReactions;
pub use self::redis::{RedisBus, RedisBusConfig};

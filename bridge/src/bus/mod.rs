//! Bus implementations beyond the in-process [`wire::bus::MemoryBus`].
//!
//! - [`redis`] — Redis Streams for submissions, pub/sub for deliveries (the cluster).

pub mod redis;

pub use self::redis::{RedisBus, RedisBusConfig};

//! Storage implementations of [`wire::store::Store`].
//!
//! - [`embedded`] — redb, one file in the data directory (the default).
//! - [`cassandra`] — Apache Cassandra or ScyllaDB, for the cluster.

pub mod cassandra;
pub mod embedded;
mod recent;
/// Behaviour checks shared by every store (used by `tests/store_suite.rs`).
#[cfg(any(test, feature = "store-suite"))]
#[doc(hidden)]
pub mod suite;

pub use cassandra::{CassandraConfig, CassandraStore};
pub use embedded::{EmbeddedOptions, EmbeddedStore};

//! Storage implementations of [`wire::store::Store`].
//!
//! - [`embedded`] — redb, one file in the data directory (the default).

pub mod embedded;

pub use embedded::EmbeddedStore;

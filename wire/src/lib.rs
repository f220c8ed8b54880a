//! The wire contract of livecomments and the domain types every crate shares.
//!
//! Everything a client codes against is spelled here once: topic names, payload shapes, reject
//! codes, JWT claims. No other crate writes a topic string by hand. The traits that let the
//! embedded default and the cluster share every line above them (`Store`, `Bus`, `Ingest`) live
//! here too, so that the crates implementing them and the crates using them do not depend on
//! each other.
//!
//! # Layout
//! - [`ids`] — validated stream and user identifiers (`[A-Za-z0-9_-]{1,64}`).
//! - [`topics`] — MQTT topic names and the parsers the broker's gatekeeper uses.
//! - [`event`] — what viewers receive on `streams/{stream}/comments` and in replay.
//! - [`inbox`] — acknowledgements and rejections on `users/{user}/inbox`, reject codes.
//! - [`auth`] — JWT claims, roles, signing and verification (HS256 only).
//! - [`store`] — the storage trait and its record types.
//! - [`bus`] — the bus between broker nodes and bridges, with the in-process implementation.
//! - [`ingest`] — the write-path entry point the HTTP API and the bus consumer call.
//! - [`moderation`] — bans, review-queue items, reports, audit entries, moderation actions.
//! - [`presence`] — viewer counts per stream (one process, or summed over a cluster).
//! - [`reactions`] — reaction windows summed over the nodes of a cluster.
//! - [`streams`] — a cache of stream records shared by the broker, bridge and API.
//! - [`time`] — wall-clock helpers (milliseconds since the Unix epoch).

pub mod auth;
pub mod bus;
pub mod event;
pub mod ids;
pub mod inbox;
pub mod ingest;
pub mod moderation;
pub mod presence;
pub mod reactions;
pub mod store;
pub mod streams;
pub mod time;
pub mod topics;

pub use ids::{IdError, StreamId, UserId};

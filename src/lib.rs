//! `livecomments`: the one binary that composes the crates of the workspace.
//!
//! - `up` runs the MQTT node (`broker`), the write path (`bridge`), the moderation hooks
//!   (`moderation`) and the HTTP API (`playback-api`) in one process, with the embedded store
//!   and the in-process bus — no external service.
//! - `token` signs a JWT with the key `up` uses, so anyone can try the system in a minute.
//! - `print-default-config` and `check-config` help write configuration files.
//!
//! # Layout
//! - [`config`] — layered configuration (defaults, file, environment, flags).
//! - [`keys`] — the JWT secret: configured, or generated once into the data directory.
//! - [`app`] — start-up and ordered shutdown of every component.
//! - [`telemetry`] — logging and the Prometheus recorder.
//! - `main.rs` — the command line only.

pub mod app;
pub mod config;
pub mod keys;
pub mod telemetry;

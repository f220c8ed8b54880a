//! The livecomments HTTP API (axum).
//!
//! Replay viewers read comments by time window as the recording plays, reconnecting live
//! viewers catch up by `seq`, broadcasters run the stream lifecycle, clients without MQTT post
//! over HTTP (through the same write path as MQTT posts), operators read health and metrics.
//!
//! # Layout
//! - [`app`] builds the router from an [`AppState`] (tests call it without a socket).
//! - `routes/streams.rs` — create, read, start, end.
//! - `routes/comments.rs` — post, replay window, catch-up.
//! - `routes/engagement.rs` — stats, reply threads, top comments.
//! - `routes/moderation.rs` — moderator and broadcaster tools.
//! - `routes/ops.rs` — `/healthz`, `/metrics`.
//! - `auth.rs` — the Bearer-token extractor; `error.rs` — [`ApiError`].

mod auth;
mod error;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use wire::auth::JwtKeys;
use wire::bus::Bus;
use wire::ingest::Ingest;
use wire::streams::StreamDirectory;

pub use error::ApiError;

/// `[http]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    pub request_timeout_ms: u64,
    /// Largest `limit` a replay or catch-up request may ask for.
    pub max_page: usize,
}

impl HttpConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.request_timeout_ms == 0 {
            errors.push("http.request_timeout_ms must be at least 1".into());
        }
        if self.max_page == 0 {
            errors.push("http.max_page must be at least 1".into());
        }
        errors
    }
}

/// Renders the Prometheus text exposition.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Shared by every request; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub streams: StreamDirectory,
    pub ingest: Arc<dyn Ingest>,
    pub bus: Arc<dyn Bus>,
    pub keys: JwtKeys,
    pub metrics: MetricsRender,
    pub max_page: usize,
    /// The server's longest comment (a stream's `max_length` cannot exceed it).
    pub max_comment_chars: usize,
    /// Viewer counts left by the broker node.
    pub presence: wire::presence::PresenceBoard,
    /// A cluster's shared reaction totals (read instead of the store's).
    pub reactions: Option<Arc<dyn wire::reactions::SharedReactions>>,
}

/// The whole API as one router.
pub fn app(state: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .merge(routes::streams::router())
        .merge(routes::comments::router())
        .merge(routes::engagement::router())
        .merge(routes::moderation::router())
        .merge(routes::ops::router())
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(TraceLayer::new_for_http())
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Binds the listener and serves until `shutdown`, then finishes requests in flight.
/// Returns the bound address and the server task.
pub async fn run(
    config: &HttpConfig,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    tracing::info!(addr = %bound, "http listener ready");
    let router = app(state, Duration::from_millis(config.request_timeout_ms));
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((bound, task))
}

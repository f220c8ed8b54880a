//! The write path's entry points.
//!
//! The bridge implements it; the HTTP API calls it for `POST /v1/streams/{stream}/comments` and
//! the bridge's own bus consumer calls it for MQTT posts, so both go through the same checks.

use async_trait::async_trait;

use crate::bus::Submission;
use crate::inbox::Outcome;
use crate::moderation::{Action, ActionError, ActionOutcome};

#[async_trait]
pub trait Ingest: Send + Sync + 'static {
    /// Validates, stores durably and publishes one submission. Returns once the comment is
    /// durable (or refused); a retry with the same `client_msg_id` returns the same answer.
    async fn submit(&self, submission: Submission) -> Outcome;

    /// Executes a moderation action in stream order (it may publish an event with its own
    /// `seq`). Permissions are the caller's business.
    async fn act(&self, action: Action) -> Result<ActionOutcome, ActionError>;
}

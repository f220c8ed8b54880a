//! Moderation of livecomments.
//!
//! Two hooks, placed where they cannot slow delivery down:
//! - [`Moderation::check`] — synchronous, called by the bridge for every submission before it
//!   is accepted; it must take microseconds (rules, not models);
//! - [`run`] — an asynchronous consumer of accepted comments, after delivery, where slower
//!   scoring (an ONNX model) may retract a comment that was already shown.
//!
//! Both are empty for now: every comment is allowed and nothing is retracted. Rules, the model,
//! reputation and moderator tools fill them in (see docs/architecture.md).
//!
//! # Layout
//! - `lib.rs` — the two hooks and their types.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::bus::Author;
use wire::event::Comment;
use wire::inbox::Rejected;
use wire::StreamId;

/// What the synchronous check sees of a submission.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub stream: &'a StreamId,
    pub author: &'a Author,
    pub text: &'a str,
}

/// The synchronous check's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse the submission with this answer; nothing is stored.
    Reject(Rejected),
}

/// The moderation pipeline's synchronous part, shared by every bridge task.
#[derive(Debug, Default)]
pub struct Moderation {}

impl Moderation {
    pub fn new() -> Self {
        Moderation {}
    }

    /// Decides on a submission before it is accepted. No rules exist yet: everything passes.
    pub fn check(&self, _candidate: &Candidate<'_>) -> Verdict {
        Verdict::Allow
    }
}

/// Consumes accepted comments after delivery until `shutdown`, then drains what is queued.
/// Nothing scores them yet.
pub async fn run(mut accepted: mpsc::Receiver<Comment>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            c = accepted.recv() => match c {
                Some(c) => tracing::trace!(id = %c.id, "accepted comment seen by moderation"),
                None => break,
            },
            _ = shutdown.cancelled() => {
                accepted.close();
                while accepted.recv().await.is_some() {}
                break;
            }
        }
    }
}

//! The write path of another process, reached over a shared bus: what an API server or a
//! moderation worker of a cluster calls instead of a [`crate::Bridge`] of its own.

use std::sync::Arc;

use async_trait::async_trait;
use wire::bus::{Bus, Call, CallResult, Submission};
use wire::inbox::{Outcome, RejectCode, Rejected};
use wire::ingest::Ingest;
use wire::moderation::{Action, ActionError, ActionOutcome};

use crate::SUBMIT_TIMEOUT;

/// A little longer than the bridge's own deadline, so its `unavailable` answer (with the
/// reason) arrives before the caller gives up.
const CALL_TIMEOUT: std::time::Duration =
    SUBMIT_TIMEOUT.saturating_add(std::time::Duration::from_secs(1));

/// [`Ingest`] over [`Bus::call`]: a bridge of the cluster executes the call and sends the
/// result back. No answer in time is `unavailable` with a retry hint; a retry with the same
/// `client_msg_id` is answered from the de-duplication, so nothing is stored twice.
pub struct RemoteIngest {
    bus: Arc<dyn Bus>,
}

impl RemoteIngest {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        RemoteIngest { bus }
    }
}

fn unreachable_write_path(e: impl std::fmt::Display) -> String {
    format!("the write path is unreachable ({e}); retry")
}

#[async_trait]
impl Ingest for RemoteIngest {
    async fn submit(&self, submission: Submission) -> Outcome {
        match self.bus.call(Call::Submit(submission), CALL_TIMEOUT).await {
            Ok(CallResult::Submitted(outcome)) => outcome,
            Ok(other) => Err(Rejected::new(
                None,
                RejectCode::Unavailable,
                format!("the write path answered out of turn: {other:?}"),
            )),
            Err(e) => Err(
                Rejected::new(None, RejectCode::Unavailable, unreachable_write_path(e))
                    .retry_after(1000),
            ),
        }
    }

    async fn act(&self, action: Action) -> Result<ActionOutcome, ActionError> {
        match self.bus.call(Call::Act(action), CALL_TIMEOUT).await {
            Ok(CallResult::Acted(result)) => *result,
            Ok(other) => Err(ActionError::Unavailable(format!(
                "the write path answered out of turn: {other:?}"
            ))),
            Err(e) => Err(ActionError::Unavailable(unreachable_write_path(e))),
        }
    }
}

//! The write path of livecomments.
//!
//! Every post, from MQTT (via the bus) or HTTP (via [`Bridge::submit`]), goes through one
//! writer task that processes submissions in batches:
//!
//! 1. parse and validate the body (UTF-8, JSON, length, control characters);
//! 2. answer retries: a `(stream, user, client_msg_id)` seen before gets the first answer again;
//!    the others are claimed ([`claims`]) so no other bridge of a cluster processes them too;
//! 3. check the stream is live, run the moderation hook, apply the per-user rate limit;
//! 4. number the comment (`seq` per stream, `offset_ms` since the stream started);
//! 5. store the whole batch in one durable transaction (group commit);
//! 6. publish the events to the bus in `seq` order, then answer the posters.
//!
//! One writer per process keeps `seq` assignment, storage order and publication order the same
//! without locks; batching makes the fsync per batch, not per comment.
//!
//! # Layout
//! - [`validate`] — body parsing and validation.
//! - [`ratelimit`] — per-user GCRA limit; [`limits`] — the limits of one bridge or a cluster.
//! - [`claims`] — which bridge of a cluster processes a post or a stream's moderation step.
//! - [`sequence`] — per-stream `seq` numbering, in memory or Redis.
//! - [`bus`] — the Redis bus of a cluster.
//! - `writer` — the batch pipeline above.
//! - [`store`] — storage implementations (`embedded`: redb; `cassandra`).

pub mod bus;
pub mod claims;
pub mod likes;
pub mod limits;
pub mod ratelimit;
pub mod remote;
pub mod sequence;
pub mod store;
pub mod validate;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::bus::{Bus, Call, CallResult, Received, Request, Submission};
use wire::inbox::{Outcome, RejectCode, Rejected};
use wire::ingest::Ingest;
use wire::moderation::{Action, ActionError, ActionOutcome};
use wire::store::Store;
use wire::streams::StreamDirectory;

/// How long an HTTP post may wait for the write path before it is answered `unavailable`.
pub(crate) const SUBMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// `[bridge]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Longest comment, in characters.
    pub max_comment_chars: usize,
    /// Comments a user may post per window (0 = unlimited).
    pub rate_limit_count: u32,
    pub rate_limit_window_s: u64,
    /// Posting to an unknown stream creates it, live (for demos; off in production).
    pub auto_create_streams: bool,
    /// Submissions waiting for the writer; beyond it HTTP posts get `unavailable`.
    pub queue_capacity: usize,
    /// Most submissions stored in one transaction.
    pub max_batch: usize,
    /// Deepest reply nesting; a reply to a comment at this depth attaches to its parent.
    pub max_reply_depth: u8,
}

impl BridgeConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.max_comment_chars == 0 {
            errors.push("bridge.max_comment_chars must be at least 1".into());
        }
        if self.rate_limit_count > 0 && self.rate_limit_window_s == 0 {
            errors.push("bridge.rate_limit_window_s must be at least 1".into());
        }
        if self.max_reply_depth == 0 {
            errors.push("bridge.max_reply_depth must be at least 1".into());
        }
        if self.queue_capacity == 0 || self.max_batch == 0 {
            errors.push("bridge.queue_capacity and bridge.max_batch must be at least 1".into());
        }
        errors
    }
}

/// What the write path needs from the rest of the process.
#[derive(Clone)]
pub struct BridgeDeps {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub streams: StreamDirectory,
    pub moderation: Arc<moderation::Moderation>,
    /// Accepted comments are copied here for asynchronous moderation (never blocks delivery:
    /// when full, the copy is dropped and counted).
    pub accepted: Option<mpsc::Sender<moderation::Queued>>,
    /// Hands out `seq`s (in memory, or shared by a cluster's bridges).
    pub sequencer: Arc<dyn sequence::Sequencer>,
    /// Comment rate and slow mode (in memory, or shared by a cluster's bridges).
    pub limits: Arc<dyn limits::Limits>,
    /// Which bridge processes a post or a stream's moderation step (all of them for one
    /// bridge; claimed in Redis by a cluster's bridges).
    pub claims: Arc<dyn claims::Claims>,
    /// Who likes which comment (decided by the store for one bridge; Redis sets for a
    /// cluster's bridges).
    pub likes: Arc<dyn likes::LikeSets>,
}

pub(crate) enum Job {
    /// A post, report or like; answered on the author's inbox (MQTT) or to the caller (HTTP).
    Submit {
        submission: Submission,
        reply: writer::Reply,
        /// Confirmed to the bus once answered.
        receipt: Option<String>,
    },
    /// A moderation action.
    Act {
        action: Action,
        reply: oneshot::Sender<Result<ActionOutcome, ActionError>>,
    },
    /// Answered when everything queued before it has been processed.
    Flush(oneshot::Sender<()>),
}

/// A handle to the write path; cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    jobs: mpsc::Sender<Job>,
}

impl Bridge {
    /// Starts the writer and the consumer of the bus's submission queue. On `shutdown` the
    /// consumer drains what the bus already holds, the writer stores and answers everything
    /// queued, and the returned task ends.
    pub fn start(
        config: BridgeConfig,
        deps: BridgeDeps,
        shutdown: BridgeShutdown,
    ) -> Result<(Bridge, BridgeTasks), wire::bus::BusError> {
        let submissions = deps.bus.take_submissions()?;
        let (jobs_tx, jobs_rx) = mpsc::channel(config.queue_capacity);
        let bridge = Bridge {
            jobs: jobs_tx.clone(),
        };
        let bus = deps.bus.clone();
        let writer = writer::Writer::new(config, deps);
        let consumer = tokio::spawn(consume(submissions, bridge.clone(), bus, shutdown.consumer));
        let writer = tokio::spawn(writer.run(jobs_rx, shutdown.writer));
        Ok((bridge, BridgeTasks { consumer, writer }))
    }

    /// Returns once every job queued before this call has been processed (its comments
    /// stored, published and handed to moderation).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Shutdown of the write path, in two steps.
#[derive(Clone, Default)]
pub struct BridgeShutdown {
    /// Stop taking submissions from the bus, after draining what it holds.
    pub consumer: CancellationToken,
    /// Stop the writer, after processing what is queued (moderation's last actions too).
    pub writer: CancellationToken,
}

/// The write path's tasks.
pub struct BridgeTasks {
    pub consumer: JoinHandle<()>,
    pub writer: JoinHandle<()>,
}

/// Feeds requests from the bus to the writer: submissions from nodes (answered on the
/// author's inbox) and calls from processes without a write path (answered to the caller).
async fn consume(
    mut requests: mpsc::Receiver<Received>,
    bridge: Bridge,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) {
    let calls = tokio_util::task::TaskTracker::new();
    loop {
        let next = tokio::select! {
            r = requests.recv() => r,
            _ = shutdown.cancelled() => {
                // Drain what nodes already accepted (and PUBACKed) before stopping.
                requests.close();
                while let Some(r) = requests.recv().await {
                    if !take(r, &bridge, &bus, &calls).await {
                        break;
                    }
                }
                None
            }
        };
        let Some(r) = next else { break };
        if !take(r, &bridge, &bus, &calls).await {
            break;
        }
    }
    calls.close();
    calls.wait().await;
}

/// Queues one request; false once the writer is gone.
async fn take(
    r: Received,
    bridge: &Bridge,
    bus: &Arc<dyn Bus>,
    calls: &tokio_util::task::TaskTracker,
) -> bool {
    match r.request {
        Request::Submission(submission) => {
            let job = Job::Submit {
                submission,
                reply: writer::Reply::Inbox,
                receipt: r.receipt,
            };
            bridge.jobs.send(job).await.is_ok()
        }
        Request::Call { call, reply_to } => {
            // Each call waits for its own answer; the writer still processes them in order.
            let (bridge, bus, receipt) = (bridge.clone(), bus.clone(), r.receipt);
            calls.spawn(async move {
                let result = match call {
                    Call::Submit(s) => CallResult::Submitted(bridge.submit(s).await),
                    Call::Act(a) => CallResult::Acted(Box::new(bridge.act(a).await)),
                };
                if let Err(e) = bus.reply(&reply_to, &result).await {
                    tracing::warn!(error = %e, "answering a call failed");
                }
                if let Some(receipt) = receipt {
                    if let Err(e) = bus.confirm(&[receipt]).await {
                        tracing::warn!(error = %e, "confirming a call failed");
                    }
                }
            });
            true
        }
    }
}

#[async_trait]
impl Ingest for Bridge {
    async fn submit(&self, submission: Submission) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let unavailable = || {
            Rejected::new(
                None,
                RejectCode::Unavailable,
                "the write path is overloaded",
            )
            .retry_after(1000)
        };
        let job = Job::Submit {
            submission,
            reply: writer::Reply::Caller(tx),
            receipt: None,
        };
        // One deadline for queueing and processing, shorter than the HTTP request timeout, so
        // a caller always gets a JSON answer. A late result is still stored; the retry with
        // the same client_msg_id then gets it.
        let deadline = tokio::time::Instant::now() + SUBMIT_TIMEOUT;
        match tokio::time::timeout_at(deadline, self.jobs.send(job)).await {
            Ok(Ok(())) => {}
            _ => return Err(unavailable()),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => outcome,
            _ => Err(unavailable()),
        }
    }

    async fn act(&self, action: Action) -> Result<ActionOutcome, ActionError> {
        let (tx, rx) = oneshot::channel();
        let unavailable = || ActionError::Unavailable("the write path is overloaded".into());
        let deadline = tokio::time::Instant::now() + SUBMIT_TIMEOUT;
        let job = Job::Act { action, reply: tx };
        match tokio::time::timeout_at(deadline, self.jobs.send(job)).await {
            Ok(Ok(())) => {}
            _ => return Err(unavailable()),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            _ => Err(unavailable()),
        }
    }
}

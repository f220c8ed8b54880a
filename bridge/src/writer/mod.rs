//! The single writer of a process: posts in batches (see the crate docs for the steps) and
//! moderation actions in between, all numbered from the same per-stream sequence.

mod actions;
mod likes;
mod posts;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use wire::bus::{Delivery, SubmissionKind};
use wire::event::{encode_frame, Event, StreamState, StreamStatus};
use wire::inbox::{InboxMessage, Outcome, RejectCode, Rejected};
use wire::moderation::AuditEntry;
use wire::store::StoreError;
use wire::time::now_ms;
use wire::{topics, StreamId, UserId};

use crate::{BridgeConfig, BridgeDeps, Job};

/// How stale a cached "live" answer may be before the writer looks at the store again.
const LIVE_CACHE: Duration = Duration::from_secs(1);

/// Timeline state of one stream in this writer.
struct Cursor {
    last_offset_ms: u64,
}

pub(crate) struct Writer {
    config: BridgeConfig,
    deps: BridgeDeps,
    cursors: HashMap<StreamId, Cursor>,
    ids: ulid::Generator,
    last_cleanup: Instant,
}

/// Where an answer goes.
pub(crate) enum Reply {
    /// The author's inbox (MQTT).
    Inbox,
    /// The waiting HTTP request.
    Caller(oneshot::Sender<Outcome>),
}

impl Writer {
    pub(crate) fn new(config: BridgeConfig, deps: BridgeDeps) -> Self {
        Writer {
            config,
            deps,
            cursors: HashMap::new(),
            ids: ulid::Generator::new(),
            last_cleanup: Instant::now(),
        }
    }

    /// Processes batches until `stop` fires, then drains the queue and returns.
    pub(crate) async fn run(mut self, mut jobs: mpsc::Receiver<Job>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(self.config.max_batch);
        let mut stopping = false;
        loop {
            let n = if stopping {
                jobs.recv_many(&mut batch, self.config.max_batch).await
            } else {
                tokio::select! {
                    n = jobs.recv_many(&mut batch, self.config.max_batch) => n,
                    _ = stop.cancelled() => {
                        stopping = true;
                        jobs.close();
                        continue;
                    }
                }
            };
            if n == 0 {
                break;
            }
            self.process(std::mem::take(&mut batch)).await;
            if self.last_cleanup.elapsed() > Duration::from_secs(60) {
                self.deps.limits.forget_idle();
                self.last_cleanup = Instant::now();
            }
        }
        tracing::info!("write path drained");
    }

    /// Posts between two barriers are stored together (group commit), then the likes between
    /// them (one transaction); reports and moderator actions are barriers, handled one by one
    /// in arrival order.
    async fn process(&mut self, jobs: Vec<Job>) {
        let mut posts = Vec::new();
        let mut likes = Likes::default();
        // Receipts of bus submissions, confirmed once everything in this batch is answered.
        let mut receipts = Vec::new();
        for job in jobs {
            match job {
                Job::Submit {
                    submission,
                    reply,
                    receipt,
                } if submission.kind == SubmissionKind::Post => {
                    receipts.extend(receipt);
                    posts.push((submission, reply));
                }
                // Likes do not flush the posts (that would cost a commit per post under like
                // traffic); posts go first, so a like of a comment in the same batch finds it.
                // Nobody waits for an answer to a like: their receipts are confirmed only once
                // stored (see `Likes`).
                Job::Submit {
                    submission,
                    receipt,
                    ..
                } if submission.kind == SubmissionKind::Like => {
                    likes.batch.push(submission);
                    likes.receipts.extend(receipt);
                }
                Job::Submit {
                    submission,
                    reply,
                    receipt,
                } => {
                    receipts.extend(receipt);
                    self.flush_posts(&mut posts).await;
                    self.flush_likes(&mut likes).await;
                    let outcome = self.report(&submission).await;
                    self.answer(&submission.author.id, reply, outcome).await;
                }
                Job::Flush(done) => {
                    self.flush_posts(&mut posts).await;
                    self.flush_likes(&mut likes).await;
                    let _ = done.send(());
                }
                Job::Act { action, reply } => {
                    self.flush_posts(&mut posts).await;
                    self.flush_likes(&mut likes).await;
                    let result = self.act(action).await;
                    let _ = reply.send(result);
                }
            }
        }
        self.flush_posts(&mut posts).await;
        self.flush_likes(&mut likes).await;
        receipts.append(&mut likes.stored);
        if !likes.failed.is_empty() {
            // Left pending on the bus, they are claimed again after `claim_idle_ms` (by this
            // or another bridge) and applied then: the like sets make a retry of a like
            // that was stored after all change nothing.
            tracing::warn!(
                count = likes.failed.len(),
                "likes not stored; left on the bus to be retried"
            );
            metrics::counter!("livecomments_likes_retried_total")
                .increment(likes.failed.len() as u64);
        }
        if !receipts.is_empty() {
            if let Err(e) = self.deps.bus.confirm(&receipts).await {
                // Unconfirmed submissions come back (to this or another bridge); the
                // client_msg_id de-duplication answers them again without storing twice.
                tracing::warn!(error = %e, count = receipts.len(), "confirming submissions failed");
            }
        }
    }

    async fn flush_likes(&mut self, likes: &mut Likes) {
        if likes.batch.is_empty() {
            return;
        }
        let stored = self.process_likes(std::mem::take(&mut likes.batch)).await;
        let done = if stored {
            &mut likes.stored
        } else {
            &mut likes.failed
        };
        done.append(&mut likes.receipts);
    }

    async fn flush_posts(&mut self, posts: &mut Vec<(wire::bus::Submission, Reply)>) {
        if !posts.is_empty() {
            self.process_posts(std::mem::take(posts)).await;
        }
    }

    /// Sends an outcome to whoever waits for it, and counts it.
    async fn answer(&self, user: &UserId, reply: Reply, outcome: Outcome) {
        match &outcome {
            Ok(_) => metrics::counter!("livecomments_comments_accepted_total").increment(1),
            Err(r) => {
                metrics::counter!("livecomments_comments_rejected_total", "code" => r.code.as_str())
                    .increment(1)
            }
        }
        match reply {
            Reply::Caller(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Inbox => self.to_inbox(user, InboxMessage::from(outcome)).await,
        }
    }

    async fn to_inbox(&self, user: &UserId, message: InboxMessage) {
        let delivery = Delivery::Inbox {
            user: user.clone(),
            payload: message.to_bytes(),
        };
        if let Err(e) = self.deps.bus.deliver(delivery).await {
            tracing::warn!(error = %e, "answering a poster failed");
        }
    }

    /// Publishes an event to everyone watching the stream. `keep`: sampling never drops it.
    async fn publish(&self, stream: &StreamId, event: &Event, received_at_ms: i64, keep: bool) {
        let delivery = Delivery::Stream {
            stream: stream.clone(),
            event: event.to_bytes(),
            seq: event.seq(),
            received_at_ms,
            keep,
        };
        if let Err(e) = self.deps.bus.deliver(delivery).await {
            tracing::error!(error = %e, "publishing an event failed");
        }
    }

    /// Shows an event only to `user`'s own connections watching the stream.
    async fn publish_privately(&self, user: &UserId, stream: &StreamId, event: &Event) {
        let bytes: Bytes = event.to_bytes();
        let delivery = Delivery::Private {
            user: user.clone(),
            topic: topics::comments(stream),
            payload: encode_frame([&bytes]),
        };
        if let Err(e) = self.deps.bus.deliver(delivery).await {
            tracing::error!(error = %e, "publishing a private event failed");
        }
    }

    async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.deps.store.append_audit(&entry).await {
            tracing::error!(error = %e, action = %entry.action, "writing the audit trail failed");
        }
    }

    fn new_id(&mut self) -> String {
        self.ids
            .generate()
            .unwrap_or_else(|_| ulid::Ulid::new())
            .to_string()
    }

    /// The stream's next `seq`.
    async fn next_seq(&mut self, stream: &StreamId) -> Result<u64, StoreError> {
        self.deps.sequencer.next(stream, &*self.deps.store).await
    }

    /// `offset_ms` for a comment accepted `now`: time since the stream started, never less
    /// than this writer's previous one for the stream.
    fn offset(&mut self, stream: &StreamState, now: i64) -> u64 {
        let started = stream.started_at.unwrap_or(now);
        let c = self
            .cursors
            .entry(stream.id.clone())
            .or_insert(Cursor { last_offset_ms: 0 });
        c.last_offset_ms = u64::try_from(now - started)
            .unwrap_or(0)
            .max(c.last_offset_ms);
        c.last_offset_ms
    }

    /// The next `seq` and the `offset_ms` for a comment accepted `now`.
    async fn number(&mut self, stream: &StreamState, now: i64) -> Result<(u64, u64), StoreError> {
        let seq = self.next_seq(&stream.id).await?;
        Ok((seq, self.offset(stream, now)))
    }

    /// The stream's latest `seq` and the `offset_ms` for `now`, taking no new `seq`: for
    /// comments of shadow-banned users, which stay out of the public sequence.
    async fn peek(&mut self, stream: &StreamState, now: i64) -> Result<(u64, u64), StoreError> {
        let seq = self
            .deps
            .sequencer
            .current(&stream.id, &*self.deps.store)
            .await?;
        Ok((seq, self.offset(stream, now)))
    }

    /// After a failed write nothing was stored: numbering may resume from the store.
    fn forget_cursor(&mut self, stream: &StreamId) {
        self.deps.sequencer.forget(stream);
    }

    /// The stream's record if it accepts comments now.
    async fn live_stream(&mut self, id: &StreamId) -> Result<Option<StreamState>, StoreError> {
        let dir = &self.deps.streams;
        let mut state = dir.get(id, LIVE_CACHE).await?;
        if state
            .as_ref()
            .is_some_and(|s| s.status != StreamStatus::Live)
        {
            // A cached "not live" may be stale right after a start: look again.
            state = dir.get(id, Duration::ZERO).await?;
        }
        match state {
            Some(s) if s.status == StreamStatus::Live => Ok(Some(s)),
            Some(_) => Ok(None),
            None if self.config.auto_create_streams => {
                let now = now_ms();
                let mut s = StreamState::new(id.clone(), id.to_string(), None, now);
                s.status = StreamStatus::Live;
                s.started_at = Some(now);
                if !self.deps.streams.store().create_stream(&s).await? {
                    // Created concurrently by someone else: use theirs.
                    return Ok(dir
                        .get(id, Duration::ZERO)
                        .await?
                        .filter(|s| s.status == StreamStatus::Live));
                }
                tracing::info!(stream = %id, "stream auto-created");
                dir.remember(s.clone());
                if let Err(e) = self.deps.bus.deliver(Delivery::stream_state(&s)).await {
                    tracing::warn!(error = %e, "publishing stream state failed");
                }
                Ok(Some(s))
            }
            None => Ok(None),
        }
    }
}

/// The likes of a batch between two barriers, and what became of the bus receipts of those
/// already flushed. A like has no answer a client waits for (it is fire-and-forget), so the
/// bus is the only retry: receipts of likes that could not be stored stay unconfirmed.
#[derive(Default)]
struct Likes {
    batch: Vec<wire::bus::Submission>,
    /// Receipts of `batch`.
    receipts: Vec<String>,
    /// Receipts of flushed likes that were stored (or will never be: invalid ones).
    stored: Vec<String>,
    /// Receipts of flushed likes whose store call failed.
    failed: Vec<String>,
}

pub(crate) fn unavailable(client_msg_id: Option<String>) -> Rejected {
    Rejected::new(
        client_msg_id,
        RejectCode::Unavailable,
        "storage is unavailable; retry with the same client_msg_id",
    )
    .retry_after(1000)
}

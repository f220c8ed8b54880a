//! The batch pipeline of the write path (see the crate docs for the steps).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::bus::Delivery;
use wire::event::{Comment, Event, StreamState, StreamStatus, UserRef};
use wire::inbox::{Accepted, InboxMessage, Outcome, RejectCode, Rejected};
use wire::store::{DedupKey, StoredComment};
use wire::time::now_ms;
use wire::StreamId;

use crate::ratelimit::UserRateLimit;
use crate::validate::{parse_post, Post};
use crate::{BridgeConfig, BridgeDeps, Job};

/// How stale a cached "live" answer may be before the writer looks at the store again.
const LIVE_CACHE: Duration = Duration::from_secs(1);

/// Numbering state of one stream.
struct Cursor {
    last_seq: u64,
    last_offset_ms: u64,
}

pub(crate) struct Writer {
    config: BridgeConfig,
    deps: BridgeDeps,
    limiter: UserRateLimit,
    cursors: HashMap<StreamId, Cursor>,
    ids: ulid::Generator,
    last_cleanup: Instant,
}

/// A submission that passed every check and waits for numbering.
struct Fresh {
    index: usize,
    post: Post,
    stream: StreamState,
}

impl Writer {
    pub(crate) fn new(config: BridgeConfig, deps: BridgeDeps) -> Self {
        let limiter = UserRateLimit::new(
            config.rate_limit_count,
            Duration::from_secs(config.rate_limit_window_s),
        );
        Writer {
            config,
            deps,
            limiter,
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
                self.limiter.forget_idle();
                self.last_cleanup = Instant::now();
            }
        }
        tracing::info!("write path drained");
    }

    async fn process(&mut self, jobs: Vec<Job>) {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; jobs.len()];
        let mut posts: Vec<Option<Post>> = Vec::with_capacity(jobs.len());

        // 1. Parse and validate.
        for (i, job) in jobs.iter().enumerate() {
            match parse_post(&job.submission.payload, self.config.max_comment_chars) {
                Ok(p) => posts.push(Some(p)),
                Err(r) => {
                    outcomes[i] = Some(Err(r));
                    posts.push(None);
                }
            }
        }

        // 2. Retries: earlier batches (store) and earlier jobs of this batch.
        let mut first_of: HashMap<DedupKey, usize> = HashMap::new();
        let mut copy_of: Vec<Option<usize>> = vec![None; jobs.len()];
        let mut lookups = Vec::new();
        for (i, post) in posts.iter().enumerate() {
            let Some(post) = post else { continue };
            let key = DedupKey {
                stream: jobs[i].submission.stream.clone(),
                user: jobs[i].submission.author.id.clone(),
                client_msg_id: post.client_msg_id.clone(),
            };
            if let Some(&first) = first_of.get(&key) {
                copy_of[i] = Some(first);
            } else {
                first_of.insert(key.clone(), i);
                lookups.push((i, key));
            }
        }
        let keys: Vec<DedupKey> = lookups.iter().map(|(_, k)| k.clone()).collect();
        match self.deps.store.find_dedup(&keys).await {
            Ok(hits) => {
                for ((i, _), hit) in lookups.iter().zip(hits) {
                    if let Some(hit) = hit {
                        outcomes[*i] = Some(Ok(Accepted {
                            client_msg_id: keys_client_id(&posts[*i]),
                            id: hit.id,
                            seq: hit.seq,
                        }));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "de-duplication lookup failed");
                for (i, _) in &lookups {
                    outcomes[*i] = Some(Err(unavailable(&posts[*i])));
                }
            }
        }

        // 3. Stream, moderation, rate limit.
        let mut fresh = Vec::new();
        for i in 0..jobs.len() {
            if outcomes[i].is_some() || copy_of[i].is_some() {
                continue;
            }
            let Some(post) = posts[i].take() else {
                continue;
            };
            let sub = &jobs[i].submission;
            let stream = match self.live_stream(&sub.stream).await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    outcomes[i] = Some(Err(Rejected::new(
                        Some(post.client_msg_id),
                        RejectCode::StreamNotLive,
                        format!("stream {} is not live", sub.stream),
                    )));
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, stream = %sub.stream, "stream lookup failed");
                    outcomes[i] = Some(Err(unavailable(&Some(post))));
                    continue;
                }
            };
            let candidate = moderation::Candidate {
                stream: &sub.stream,
                author: &sub.author,
                text: &post.text,
            };
            if let moderation::Verdict::Reject(mut r) = self.deps.moderation.check(&candidate) {
                r.client_msg_id = Some(post.client_msg_id);
                outcomes[i] = Some(Err(r));
                continue;
            }
            if let Err(wait) = self.limiter.check(&sub.author.id) {
                let ms = (wait.as_millis() as u64).max(1);
                outcomes[i] = Some(Err(Rejected::new(
                    Some(post.client_msg_id),
                    RejectCode::RateLimited,
                    format!(
                        "at most {} comments per {} s; retry in {} ms",
                        self.config.rate_limit_count, self.config.rate_limit_window_s, ms
                    ),
                )
                .retry_after(ms)));
                continue;
            }
            fresh.push(Fresh {
                index: i,
                post,
                stream,
            });
        }

        // 4. Number, 5. store durably.
        let stored = self.store_fresh(&jobs, fresh, &mut outcomes).await;

        // 6. Publish in seq order, then answer.
        for c in &stored {
            let event = Event::Comment(c.comment.clone()).to_bytes();
            let delivery = Delivery::Stream {
                stream: c.comment.stream.clone(),
                event,
                received_at_ms: c.received_at_ms,
            };
            if let Err(e) = self.deps.bus.deliver(delivery).await {
                tracing::error!(error = %e, "publishing a stored comment failed");
            }
            if let Some(tx) = &self.deps.accepted {
                if tx.try_send(c.comment.clone()).is_err() {
                    metrics::counter!("livecomments_moderation_dropped_total").increment(1);
                }
            }
        }
        for i in 0..jobs.len() {
            if let Some(first) = copy_of[i] {
                outcomes[i] = outcomes[first].clone();
            }
        }
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            let outcome = outcome.unwrap_or_else(|| Err(unavailable(&None)));
            match &outcome {
                Ok(_) => metrics::counter!("livecomments_comments_accepted_total").increment(1),
                Err(r) => metrics::counter!("livecomments_comments_rejected_total", "code" => r.code.as_str())
                    .increment(1),
            }
            match job.reply {
                Some(tx) => {
                    let _ = tx.send(outcome);
                }
                None => {
                    let payload = InboxMessage::from(outcome).to_bytes();
                    let delivery = Delivery::Inbox {
                        user: job.submission.author.id.clone(),
                        payload,
                    };
                    if let Err(e) = self.deps.bus.deliver(delivery).await {
                        tracing::warn!(error = %e, "answering a poster failed");
                    }
                }
            }
        }
    }

    /// Numbers and durably stores fresh comments; fills their outcomes.
    async fn store_fresh(
        &mut self,
        jobs: &[Job],
        fresh: Vec<Fresh>,
        outcomes: &mut [Option<Outcome>],
    ) -> Vec<Numbered> {
        if fresh.is_empty() {
            return Vec::new();
        }
        let now = now_ms();
        let mut numbered = Vec::with_capacity(fresh.len());
        let mut failed_streams = Vec::new();
        for f in fresh {
            let sub = &jobs[f.index].submission;
            let id = self
                .ids
                .generate()
                .unwrap_or_else(|_| ulid::Ulid::new())
                .to_string();
            let cursor = match self.cursor(&sub.stream).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, stream = %sub.stream, "reading the last seq failed");
                    outcomes[f.index] = Some(Err(unavailable(&Some(f.post))));
                    continue;
                }
            };
            let started = f.stream.started_at.unwrap_or(now);
            let offset_ms = u64::try_from(now - started)
                .unwrap_or(0)
                .max(cursor.last_offset_ms);
            cursor.last_seq += 1;
            cursor.last_offset_ms = offset_ms;
            numbered.push(Numbered {
                index: f.index,
                received_at_ms: sub.received_at_ms,
                comment: Comment {
                    id,
                    seq: cursor.last_seq,
                    stream: sub.stream.clone(),
                    user: UserRef {
                        id: sub.author.id.clone(),
                        name: sub.author.name.clone(),
                    },
                    text: f.post.text,
                    ts: now,
                    offset_ms,
                    reply_to: f.post.reply_to,
                },
                client_msg_id: f.post.client_msg_id,
            });
        }
        let rows: Vec<StoredComment> = numbered
            .iter()
            .map(|n| StoredComment {
                comment: n.comment.clone(),
                client_msg_id: n.client_msg_id.clone(),
            })
            .collect();
        let started = Instant::now();
        let result = self.deps.store.append(&rows).await;
        metrics::histogram!("livecomments_store_commit_seconds").record(started.elapsed());
        metrics::histogram!("livecomments_store_batch_size").record(rows.len() as f64);
        match result {
            Ok(()) => {
                for n in &numbered {
                    outcomes[n.index] = Some(Ok(Accepted {
                        client_msg_id: n.client_msg_id.clone(),
                        id: n.comment.id.clone(),
                        seq: n.comment.seq,
                    }));
                }
                numbered
            }
            Err(e) => {
                tracing::error!(error = %e, count = rows.len(), "storing comments failed");
                for n in numbered {
                    failed_streams.push(n.comment.stream.clone());
                    outcomes[n.index] = Some(Err(Rejected::new(
                        Some(n.client_msg_id),
                        RejectCode::Unavailable,
                        "storage is unavailable; retry with the same client_msg_id",
                    )
                    .retry_after(1000)));
                }
                // Nothing was written: numbering restarts from the store next time.
                for s in failed_streams {
                    self.cursors.remove(&s);
                }
                Vec::new()
            }
        }
    }

    async fn cursor(&mut self, stream: &StreamId) -> Result<&mut Cursor, wire::store::StoreError> {
        if !self.cursors.contains_key(stream) {
            let last_seq = self.deps.store.last_seq(stream).await?;
            self.cursors.insert(
                stream.clone(),
                Cursor {
                    last_seq,
                    last_offset_ms: 0,
                },
            );
        }
        Ok(self
            .cursors
            .get_mut(stream)
            .expect("cursor inserted just above"))
    }

    /// The stream's record if it accepts comments now.
    async fn live_stream(
        &mut self,
        id: &StreamId,
    ) -> Result<Option<StreamState>, wire::store::StoreError> {
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
                let s = StreamState {
                    id: id.clone(),
                    title: id.to_string(),
                    owner: None,
                    status: StreamStatus::Live,
                    created_at: now,
                    started_at: Some(now),
                    ended_at: None,
                };
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

struct Numbered {
    index: usize,
    received_at_ms: i64,
    comment: Comment,
    client_msg_id: String,
}

fn keys_client_id(post: &Option<Post>) -> String {
    post.as_ref()
        .map(|p| p.client_msg_id.clone())
        .unwrap_or_default()
}

fn unavailable(post: &Option<Post>) -> Rejected {
    Rejected::new(
        post.as_ref().map(|p| p.client_msg_id.clone()),
        RejectCode::Unavailable,
        "storage is unavailable; retry with the same client_msg_id",
    )
    .retry_after(1000)
}

//! The asynchronous consumer: accepted comments in, model scores, retractions and review-queue
//! items out. Delivery never waits for it: the bridge hands it copies through a bounded queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::event::Comment;
use wire::ingest::Ingest;
use wire::moderation::{actors, Action};
use wire::time::now_ms;

use crate::config::ModelConfig;

/// Scores texts; `1.0` is certainly offensive. CPU-bound: called off the async runtime.
pub trait Scorer: Send + 'static {
    fn score(&mut self, texts: &[&str]) -> Result<Vec<f32>, String>;
}

/// A comment to score, with what confirms it was handled.
pub struct Queued {
    pub comment: Comment,
    /// Called once the comment is scored and acted on (a cluster's feed acknowledges its
    /// Redis entry then; an entry whose worker died first goes to another worker).
    pub receipt: Option<Box<dyn FnOnce() + Send>>,
}

impl From<Comment> for Queued {
    fn from(comment: Comment) -> Self {
        Queued {
            comment,
            receipt: None,
        }
    }
}

/// Consumes accepted comments until `shutdown`, then drains what is queued.
///
/// Without a scorer (model disabled) comments are only counted.
pub async fn run(
    config: ModelConfig,
    mut accepted: mpsc::Receiver<Queued>,
    scorer: Option<Box<dyn Scorer>>,
    ingest: Arc<dyn Ingest>,
    shutdown: CancellationToken,
) {
    let mut scorer = scorer;
    let wait = Duration::from_millis(config.batch_wait_ms);
    let mut batch: Vec<Queued> = Vec::with_capacity(config.batch_size);
    let mut stopping = false;
    loop {
        // Wait for the first comment, then fill the batch for at most `batch_wait_ms`.
        let first = if stopping {
            accepted.recv().await
        } else {
            tokio::select! {
                c = accepted.recv() => c,
                _ = shutdown.cancelled() => {
                    stopping = true;
                    accepted.close();
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < config.batch_size {
            match tokio::time::timeout_at(deadline, accepted.recv()).await {
                Ok(Some(c)) => batch.push(c),
                _ => break,
            }
        }
        let (comments, receipts): (Vec<Comment>, Vec<_>) = std::mem::take(&mut batch)
            .into_iter()
            .map(|q| (q.comment, q.receipt))
            .unzip();
        // Handled once this batch is done with, whatever its outcome.
        let confirm = move || receipts.into_iter().flatten().for_each(|r| r());
        let Some(s) = scorer.take() else {
            metrics::counter!("livecomments_moderation_unscored_total")
                .increment(comments.len() as u64);
            confirm();
            continue;
        };
        let started = Instant::now();
        let scored = tokio::task::spawn_blocking(move || {
            let mut s = s;
            let texts: Vec<&str> = comments.iter().map(|c| c.text.as_str()).collect();
            let scores = s.score(&texts);
            (s, comments, scores)
        })
        .await;
        let (s, comments, scores) = match scored {
            Ok(x) => x,
            Err(e) => {
                // The scorer panicked; it is gone, comments are no longer scored.
                tracing::error!(error = %e, "the toxicity model failed; model moderation stops");
                confirm();
                continue;
            }
        };
        scorer = Some(s);
        metrics::histogram!("livecomments_moderation_batch_seconds").record(started.elapsed());
        match scores {
            Ok(scores) => {
                metrics::counter!("livecomments_moderation_scored_total")
                    .increment(comments.len() as u64);
                for (c, score) in comments.into_iter().zip(scores) {
                    act_on(&config, c, score, &*ingest).await;
                }
            }
            Err(e) => tracing::error!(error = %e, count = comments.len(), "scoring failed"),
        }
        confirm();
    }
    tracing::info!("moderation drained");
}

async fn act_on(config: &ModelConfig, comment: Comment, score: f32, ingest: &dyn Ingest) {
    if score >= config.retract_threshold {
        let action = Action::Retract {
            stream: comment.stream.clone(),
            comment_id: comment.id.clone(),
            reason: format!("toxicity score {score:.2}"),
            actor: actors::MODEL.into(),
            strike: true,
        };
        match ingest.act(action).await {
            Ok(_) => {
                metrics::counter!("livecomments_moderation_retracted_total").increment(1);
                let delay = (now_ms() - comment.ts).max(0) as f64 / 1000.0;
                metrics::histogram!("livecomments_post_to_retract_seconds").record(delay);
            }
            Err(e) => tracing::warn!(error = %e, id = %comment.id, "model retraction failed"),
        }
    } else if score >= config.review_threshold {
        // Through the write path, like every change to the queue, so it cannot race a
        // moderator's decision or reports about the same comment.
        let action = Action::Flag {
            stream: comment.stream.clone(),
            comment_id: comment.id.clone(),
            score,
            reason: format!("toxicity score {score:.2} needs review"),
        };
        match ingest.act(action).await {
            Ok(_) => metrics::counter!("livecomments_moderation_queued_total").increment(1),
            Err(e) => {
                tracing::warn!(error = %e, id = %comment.id, "queueing a borderline comment failed")
            }
        }
    }
}

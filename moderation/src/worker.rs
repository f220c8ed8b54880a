//! The asynchronous consumer: accepted comments in, model scores, retractions and review-queue
//! items out. Delivery never waits for it: the bridge hands it copies through a bounded queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::event::Comment;
use wire::ingest::Ingest;
use wire::moderation::{actors, Action, ActionError};
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
        let Some(s) = scorer.take() else {
            // No model (or it failed for good): another worker would do no better.
            metrics::counter!("livecomments_moderation_unscored_total")
                .increment(comments.len() as u64);
            confirm(receipts);
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
                // The scorer panicked; it is gone, comments are no longer scored here. Their
                // entries stay unconfirmed, for another worker.
                tracing::error!(error = %e, "the toxicity model failed; model moderation stops");
                continue;
            }
        };
        scorer = Some(s);
        metrics::histogram!("livecomments_moderation_batch_seconds").record(started.elapsed());
        match scores {
            Ok(scores) => {
                metrics::counter!("livecomments_moderation_scored_total")
                    .increment(comments.len() as u64);
                for ((c, score), receipt) in comments.into_iter().zip(scores).zip(receipts) {
                    // An action the write path could not take now (unavailable) is left
                    // unconfirmed: the comment comes back to a worker later.
                    if act_on(&config, c, score, &*ingest).await {
                        confirm([receipt]);
                    }
                }
            }
            // Confirmed all the same: a text the model cannot score would come back forever.
            Err(e) => {
                tracing::error!(error = %e, count = comments.len(), "scoring failed");
                confirm(receipts);
            }
        }
    }
    tracing::info!("moderation drained");
}

/// Calls the receipts of handled comments.
fn confirm(receipts: impl IntoIterator<Item = Option<Box<dyn FnOnce() + Send>>>) {
    receipts.into_iter().flatten().for_each(|r| r());
}

/// Retracts or flags a scored comment as its score says; false when the write path could not
/// take the action now (worth another try).
async fn act_on(config: &ModelConfig, comment: Comment, score: f32, ingest: &dyn Ingest) -> bool {
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
            Err(e) => {
                tracing::warn!(error = %e, id = %comment.id, "model retraction failed");
                return !matches!(e, ActionError::Unavailable(_));
            }
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
                tracing::warn!(error = %e, id = %comment.id, "queueing a borderline comment failed");
                return !matches!(e, ActionError::Unavailable(_));
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use wire::bus::Submission;
    use wire::event::UserRef;
    use wire::inbox::{Outcome, RejectCode, Rejected};
    use wire::moderation::ActionOutcome;

    use super::*;

    /// Scores every text the same.
    struct Fixed(f32);

    impl Scorer for Fixed {
        fn score(&mut self, texts: &[&str]) -> Result<Vec<f32>, String> {
            Ok(vec![self.0; texts.len()])
        }
    }

    /// A write path that takes actions, or answers `unavailable` to all of them.
    struct WritePath {
        available: bool,
        acted: AtomicUsize,
    }

    #[async_trait]
    impl Ingest for WritePath {
        async fn submit(&self, _s: Submission) -> Outcome {
            Err(Rejected::new(None, RejectCode::Invalid, "not used"))
        }

        async fn act(&self, _a: Action) -> Result<ActionOutcome, ActionError> {
            self.acted.fetch_add(1, Ordering::SeqCst);
            if self.available {
                Ok(ActionOutcome::default())
            } else {
                Err(ActionError::Unavailable(
                    "another bridge is changing it".into(),
                ))
            }
        }
    }

    fn config() -> ModelConfig {
        ModelConfig {
            enabled: true,
            onnxruntime: String::new(),
            retract_threshold: 0.9,
            review_threshold: 0.5,
            batch_size: 8,
            batch_wait_ms: 10,
        }
    }

    fn comment(id: &str) -> Comment {
        Comment {
            id: id.into(),
            seq: 1,
            stream: wire::StreamId::new("s1").unwrap(),
            user: UserRef {
                id: wire::UserId::new("u").unwrap(),
                name: "u".into(),
            },
            text: "toxic".into(),
            ts: now_ms(),
            offset_ms: 0,
            reply_to: None,
            likes: 0,
            replies: 0,
        }
    }

    /// Runs the worker over `n` comments scoring `score`; returns (receipts called, actions).
    async fn confirmed(score: f32, available: bool, n: usize) -> (usize, usize) {
        let confirmed = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel(16);
        for i in 0..n {
            let c = confirmed.clone();
            tx.send(Queued {
                comment: comment(&format!("c{i}")),
                receipt: Some(Box::new(move || {
                    c.fetch_add(1, Ordering::SeqCst);
                })),
            })
            .await
            .unwrap();
        }
        drop(tx);
        let ingest = Arc::new(WritePath {
            available,
            acted: AtomicUsize::new(0),
        });
        run(
            config(),
            rx,
            Some(Box::new(Fixed(score))),
            ingest.clone(),
            CancellationToken::new(),
        )
        .await;
        (
            confirmed.load(Ordering::SeqCst),
            ingest.acted.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn handled_comments_are_confirmed() {
        assert_eq!(confirmed(0.95, true, 3).await, (3, 3), "retracted");
        assert_eq!(confirmed(0.6, true, 3).await, (3, 3), "flagged for review");
        assert_eq!(confirmed(0.1, true, 3).await, (3, 0), "nothing to do");
    }

    #[tokio::test]
    async fn an_action_the_write_path_could_not_take_is_left_for_another_try() {
        assert_eq!(confirmed(0.95, false, 3).await, (0, 3));
        assert_eq!(confirmed(0.6, false, 2).await, (0, 2));
    }
}

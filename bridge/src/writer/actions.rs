//! Moderation actions: retract, restore, report, flag, review-queue decisions, strikes.
//!
//! Each action gathers everything it changes — the event with the stream's next `seq`, the
//! comment's visibility, the queue item, the audit entry, the reporter — into one
//! [`Batch`] committed in one transaction, then publishes. Nothing is left half done when
//! storage fails.
//!
//! States of a comment: `Visible` → (`retract` by a moderator or the model) `Retracted`;
//! `Visible` → (reports beyond the threshold) `Retracted` by `system:reports`, which a
//! moderator settles: approve → `Visible` again, retract → `Retracted` by the moderator.
//! `Retracted` → (`restore`) `Visible`. Only `Visible` comments can be reported, and a user
//! reports a comment once, ever.

use std::time::Duration;

use wire::bus::{Delivery, Submission};
use wire::event::{Comment, Event, Restoration, Retraction, StreamStatus, UserRef};
use wire::inbox::{Accepted, Answer, InboxMessage, Outcome, RejectCode, Rejected, Reported};
use wire::moderation::{
    actors, Action, ActionError, ActionOutcome, AuditEntry, Ban, BanScope, Decision, QueueItem,
    QueueKind, QueueStatus, Report,
};
use wire::store::{Batch, StoreError, StoredComment, StoredEvent, Visibility};
use wire::time::now_ms;
use wire::{StreamId, UserId};

use super::Writer;
use crate::claims::Claim;

/// Longest an action waits for another bridge to finish with its stream. The writer waits
/// with it (everything queued behind the action waits too), so this stays short; other
/// bridges hold a stream's claim for one moderation step, milliseconds.
const STREAM_CLAIM_WAIT: Duration = Duration::from_millis(500);

fn store_err(e: StoreError) -> ActionError {
    tracing::error!(error = %e, "storage failed during a moderation action");
    ActionError::Unavailable("storage is unavailable; retry".into())
}

/// The reason given for comments hidden by viewer reports.
pub(crate) const HIDDEN_BY_REPORTS: &str = "hidden pending review after reports";

/// Longest report reason kept.
const MAX_REASON_CHARS: usize = 500;

fn audit(
    at: i64,
    actor: &str,
    action: &str,
    stream: &StreamId,
    comment: Option<&Comment>,
    reason: &str,
) -> AuditEntry {
    AuditEntry {
        at,
        actor: actor.to_owned(),
        action: action.to_owned(),
        stream: Some(stream.clone()),
        comment_id: comment.map(|c| c.id.clone()),
        user: comment.map(|c| c.user.id.clone()),
        reason: reason.to_owned(),
    }
}

fn close(item: &mut QueueItem, status: QueueStatus, actor: &str, reason: &str, now: i64) {
    item.status = status;
    item.decided_by = Some(actor.to_owned());
    item.decided_at = Some(now);
    item.decision_reason = Some(reason.to_owned());
}

/// What a committed action leaves to do.
#[derive(Default)]
struct After {
    event: Option<Event>,
    /// The retracted comment (unpinned if it was pinned).
    retracted: Option<(StreamId, String)>,
    strike: Option<UserId>,
}

impl Writer {
    /// Applies an action while holding its stream's claim: the steps read, then write, so two
    /// bridges of a cluster must not interleave them on one stream.
    pub(super) async fn act(&mut self, action: Action) -> Result<ActionOutcome, ActionError> {
        let stream = match &action {
            Action::Retract { stream, .. }
            | Action::Restore { stream, .. }
            | Action::Report { stream, .. }
            | Action::Flag { stream, .. } => stream.clone(),
            Action::Decide { item_id, .. } => self
                .deps
                .store
                .get_queue_item(item_id)
                .await
                .map_err(store_err)?
                .ok_or_else(|| ActionError::NotFound(format!("no queue item {item_id}")))?
                .stream
                .clone(),
        };
        let claim = self.claim_stream(&stream).await?;
        let result = self.apply(action).await;
        self.deps.claims.release(&[claim]).await;
        result
    }

    /// Waits (up to [`STREAM_CLAIM_WAIT`]) until this bridge holds `stream`'s claim.
    async fn claim_stream(&self, stream: &StreamId) -> Result<Claim, ActionError> {
        let claim = Claim::Stream(stream.clone());
        let deadline = tokio::time::Instant::now() + STREAM_CLAIM_WAIT;
        loop {
            match self.deps.claims.claim(std::slice::from_ref(&claim)).await {
                Ok(taken) if taken.first().is_some_and(|t| t.held()) => return Ok(claim),
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(_) => {
                    return Err(ActionError::Unavailable(format!(
                        "another bridge is still changing stream {stream}; retry"
                    )))
                }
                Err(e) => {
                    tracing::error!(error = %e, %stream, "claiming a stream failed");
                    // The claim may have been taken all the same (a timeout): give it back.
                    self.deps.claims.release(&[claim]).await;
                    return Err(ActionError::Unavailable(e.to_string()));
                }
            }
        }
    }

    async fn apply(&mut self, action: Action) -> Result<ActionOutcome, ActionError> {
        match action {
            Action::Retract {
                stream,
                comment_id,
                reason,
                actor,
                strike,
            } => {
                self.retract(&stream, &comment_id, &reason, &actor, strike)
                    .await
            }
            Action::Restore {
                stream,
                comment_id,
                reason,
                actor,
            } => self.restore(&stream, &comment_id, &reason, &actor).await,
            Action::Report {
                stream,
                comment_id,
                reporter,
                reason,
            } => {
                self.report_comment(&stream, &comment_id, &reporter, &reason)
                    .await
            }
            Action::Decide {
                item_id,
                decision,
                actor,
                reason,
            } => self.decide(&item_id, decision, &actor, &reason).await,
            Action::Flag {
                stream,
                comment_id,
                score,
                reason,
            } => self.flag(&stream, &comment_id, score, &reason).await,
        }
    }

    async fn comment(
        &self,
        stream: &StreamId,
        comment_id: &str,
    ) -> Result<StoredComment, ActionError> {
        self.deps
            .store
            .find_comment(stream, comment_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ActionError::NotFound(format!("no comment {comment_id} in stream {stream}"))
            })
    }

    async fn open_item(
        &self,
        stream: &StreamId,
        comment_id: &str,
    ) -> Result<Option<QueueItem>, ActionError> {
        self.deps
            .store
            .queue_item_for_comment(stream, comment_id)
            .await
            .map_err(store_err)
    }

    /// Adds a retraction of `c` (with the stream's next `seq`) to the batch.
    async fn retraction(
        &mut self,
        batch: &mut Batch,
        c: &StoredComment,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Event, ActionError> {
        let stream = &c.comment.stream;
        let seq = self.next_seq(stream).await.map_err(store_err)?;
        batch.events.push(StoredEvent::Retract {
            stream: stream.clone(),
            seq,
            comment_seq: c.comment.seq,
            comment_id: c.comment.id.clone(),
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            at: now,
        });
        let action = if actor == actors::REPORTS {
            "hide"
        } else {
            "retract"
        };
        batch
            .audit
            .push(audit(now, actor, action, stream, Some(&c.comment), reason));
        Ok(Event::Retract(Retraction {
            id: c.comment.id.clone(),
            seq,
            reason: reason.to_owned(),
        }))
    }

    /// Adds a restoration of `c` to the batch.
    async fn restoration(
        &mut self,
        batch: &mut Batch,
        c: &StoredComment,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Event, ActionError> {
        let stream = &c.comment.stream;
        let seq = self.next_seq(stream).await.map_err(store_err)?;
        batch.events.push(StoredEvent::Restore {
            stream: stream.clone(),
            seq,
            comment_seq: c.comment.seq,
            comment_id: c.comment.id.clone(),
            actor: actor.to_owned(),
            at: now,
        });
        batch.audit.push(audit(
            now,
            actor,
            "restore",
            stream,
            Some(&c.comment),
            reason,
        ));
        Ok(Event::Restore(Restoration {
            id: c.comment.id.clone(),
            seq,
            comment: c.comment.clone(),
        }))
    }

    /// Commits the batch, then publishes and applies what follows from it.
    async fn finish(
        &mut self,
        stream: &StreamId,
        batch: Batch,
        after: After,
        item: Option<QueueItem>,
    ) -> Result<ActionOutcome, ActionError> {
        if let Err(e) = self.deps.store.commit(&batch).await {
            // Nothing was written: numbering restarts from the store.
            self.forget_cursor(stream);
            return Err(store_err(e));
        }
        let now = now_ms();
        if let Some(event) = &after.event {
            self.publish(stream, event, now, true).await;
        }
        if let Some((s, id)) = &after.retracted {
            self.unpin_if(s, id).await;
        }
        if let Some(user) = &after.strike {
            self.strike(user).await;
        }
        Ok(ActionOutcome {
            event: after.event,
            item,
            changed: true,
        })
    }

    async fn retract(
        &mut self,
        stream: &StreamId,
        comment_id: &str,
        reason: &str,
        actor: &str,
        strike: bool,
    ) -> Result<ActionOutcome, ActionError> {
        let c = self.comment(stream, comment_id).await?;
        match &c.visibility {
            Visibility::Visible => {}
            // A moderator's or the model's retraction upholds a hiding by reports.
            Visibility::Retracted { actor: by, .. }
                if by == actors::REPORTS && actor != actors::REPORTS => {}
            _ => return Ok(ActionOutcome::default()),
        }
        let now = now_ms();
        let mut batch = Batch::default();
        let event = self.retraction(&mut batch, &c, reason, actor, now).await?;
        let mut item = self.open_item(stream, comment_id).await?;
        if let Some(open) = item.as_mut() {
            close(open, QueueStatus::Retracted, actor, reason, now);
            batch.items.push(open.clone());
        }
        let after = After {
            event: Some(event),
            retracted: Some((stream.clone(), comment_id.to_owned())),
            strike: strike.then(|| c.comment.user.id.clone()),
        };
        self.finish(stream, batch, after, item).await
    }

    async fn restore(
        &mut self,
        stream: &StreamId,
        comment_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<ActionOutcome, ActionError> {
        let c = self.comment(stream, comment_id).await?;
        if !matches!(c.visibility, Visibility::Retracted { .. }) {
            return Ok(ActionOutcome::default());
        }
        let now = now_ms();
        let mut batch = Batch::default();
        let event = self.restoration(&mut batch, &c, reason, actor, now).await?;
        let mut item = self.open_item(stream, comment_id).await?;
        if let Some(open) = item.as_mut() {
            close(open, QueueStatus::Approved, actor, reason, now);
            batch.items.push(open.clone());
        }
        let after = After {
            event: Some(event),
            ..Default::default()
        };
        self.finish(stream, batch, after, item).await
    }

    /// A viewer report over MQTT: `{"comment_id": "...", "reason": "..."}`.
    pub(super) async fn report(&mut self, sub: &Submission) -> Outcome {
        #[derive(serde::Deserialize)]
        struct Body {
            comment_id: String,
            #[serde(default)]
            reason: Option<String>,
        }
        let body: Body = match serde_json::from_slice(&sub.payload) {
            Ok(b) => b,
            Err(e) => {
                return Err(Rejected::new(
                    None,
                    RejectCode::Invalid,
                    format!("a report is {{\"comment_id\": \"...\", \"reason\": \"...\"}}: {e}"),
                ))
            }
        };
        let reason = body.reason.unwrap_or_default();
        let action = Action::Report {
            stream: sub.stream.clone(),
            comment_id: body.comment_id.clone(),
            reporter: sub.author.id.clone(),
            reason,
        };
        match self.act(action).await {
            Ok(_) => Ok(Answer::Reported(Reported {
                comment_id: body.comment_id,
            })),
            Err(ActionError::Unavailable(m)) => {
                Err(Rejected::new(None, RejectCode::Unavailable, m).retry_after(1000))
            }
            Err(e) => Err(Rejected::new(None, RejectCode::Invalid, e.to_string())),
        }
    }

    async fn report_comment(
        &mut self,
        stream: &StreamId,
        comment_id: &str,
        reporter: &UserId,
        reason: &str,
    ) -> Result<ActionOutcome, ActionError> {
        if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
            return Err(ActionError::Invalid(format!(
                "reason: at most {MAX_REASON_CHARS} characters, no control characters"
            )));
        }
        let c = self.comment(stream, comment_id).await?;
        if c.visibility != Visibility::Visible {
            // Hidden or removed already: nothing to add.
            return Ok(ActionOutcome::default());
        }
        let store = self.deps.store.clone();
        if store
            .has_reported(stream, comment_id, reporter)
            .await
            .map_err(store_err)?
        {
            return Ok(ActionOutcome::default());
        }
        let now = now_ms();
        let mut item = match self.open_item(stream, comment_id).await? {
            Some(item) => item,
            None => QueueItem {
                id: self.new_id(),
                stream: stream.clone(),
                kind: QueueKind::Reported,
                status: QueueStatus::Open,
                created_at: now,
                comment_id: Some(comment_id.to_owned()),
                comment: Some(c.comment.clone()),
                held: None,
                score: None,
                reason: "reported by viewers".into(),
                reports: Vec::new(),
                hidden: false,
                decided_by: None,
                decided_at: None,
                decision_reason: None,
            },
        };
        let mut batch = Batch::default();
        item.reports.push(Report {
            user: reporter.clone(),
            reason: reason.to_owned(),
            at: now,
        });
        batch
            .reporters
            .push((stream.clone(), comment_id.to_owned(), reporter.clone()));
        batch.audit.push(audit(
            now,
            reporter.as_str(),
            "report",
            stream,
            Some(&c.comment),
            reason,
        ));
        let mut after = After::default();
        let threshold = self.deps.moderation.config.reports.hide_threshold;
        if !item.hidden && item.reports.len() >= threshold {
            let event = self
                .retraction(&mut batch, &c, HIDDEN_BY_REPORTS, actors::REPORTS, now)
                .await?;
            item.hidden = true;
            after.event = Some(event);
            after.retracted = Some((stream.clone(), comment_id.to_owned()));
        }
        batch.items.push(item.clone());
        self.finish(stream, batch, after, Some(item)).await
    }

    /// The model found a delivered comment borderline: a queue item for a moderator.
    async fn flag(
        &mut self,
        stream: &StreamId,
        comment_id: &str,
        score: f32,
        reason: &str,
    ) -> Result<ActionOutcome, ActionError> {
        let c = self.comment(stream, comment_id).await?;
        if c.visibility != Visibility::Visible {
            return Ok(ActionOutcome::default());
        }
        let now = now_ms();
        let item = match self.open_item(stream, comment_id).await? {
            // Reports got there first: add the score to their item.
            Some(mut item) => {
                item.score = Some(score);
                item
            }
            None => QueueItem {
                id: self.new_id(),
                stream: stream.clone(),
                kind: QueueKind::Borderline,
                status: QueueStatus::Open,
                created_at: now,
                comment_id: Some(comment_id.to_owned()),
                comment: Some(c.comment.clone()),
                held: None,
                score: Some(score),
                reason: reason.to_owned(),
                reports: Vec::new(),
                hidden: false,
                decided_by: None,
                decided_at: None,
                decision_reason: None,
            },
        };
        let batch = Batch {
            items: vec![item.clone()],
            audit: vec![audit(
                now,
                actors::MODEL,
                "queue",
                stream,
                Some(&c.comment),
                reason,
            )],
            ..Default::default()
        };
        self.finish(stream, batch, After::default(), Some(item))
            .await
    }

    async fn decide(
        &mut self,
        item_id: &str,
        decision: Decision,
        actor: &str,
        reason: &str,
    ) -> Result<ActionOutcome, ActionError> {
        let store = self.deps.store.clone();
        let mut item = store
            .get_queue_item(item_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| ActionError::NotFound(format!("no queue item {item_id}")))?;
        if item.status != QueueStatus::Open {
            return Err(ActionError::Conflict(format!(
                "queue item {item_id} was already decided"
            )));
        }
        let stream = item.stream.clone();
        let now = now_ms();
        let mut batch = Batch::default();
        let mut after = After::default();
        match (item.kind, decision) {
            (QueueKind::Held, Decision::Approve) => {
                return self.publish_held(item, actor, reason).await;
            }
            (QueueKind::Held, Decision::Retract) => {
                close(&mut item, QueueStatus::Retracted, actor, reason, now);
                after.strike = item.held.as_ref().map(|h| h.author.id.clone());
            }
            (_, Decision::Approve) => {
                let comment_id = item.comment_id.clone().unwrap_or_default();
                let c = self.comment(&stream, &comment_id).await?;
                if matches!(c.visibility, Visibility::Retracted { .. }) {
                    after.event = Some(self.restoration(&mut batch, &c, reason, actor, now).await?);
                }
                close(&mut item, QueueStatus::Approved, actor, reason, now);
            }
            (_, Decision::Retract) => {
                let comment_id = item.comment_id.clone().unwrap_or_default();
                let c = self.comment(&stream, &comment_id).await?;
                let upholds_hiding = matches!(&c.visibility,
                    Visibility::Retracted { actor: by, .. } if by == actors::REPORTS);
                if c.visibility == Visibility::Visible || upholds_hiding {
                    // A moderator's retraction replaces the hiding by reports.
                    after.event = Some(self.retraction(&mut batch, &c, reason, actor, now).await?);
                    after.retracted = Some((stream.clone(), comment_id));
                }
                after.strike = Some(c.comment.user.id.clone());
                close(&mut item, QueueStatus::Retracted, actor, reason, now);
            }
        }
        let action = match decision {
            Decision::Approve => "approve",
            Decision::Retract => "reject",
        };
        let mut entry = audit(now, actor, action, &stream, item.comment.as_ref(), reason);
        if let Some(h) = &item.held {
            entry.user = Some(h.author.id.clone());
        }
        batch.audit.push(entry);
        batch.items.push(item.clone());
        let out = self
            .finish(&stream, batch, after, Some(item.clone()))
            .await?;
        if let (Some(h), Decision::Retract) = (&item.held, decision) {
            let answer = Rejected::new(
                Some(h.client_msg_id.clone()),
                RejectCode::Blocked,
                "a moderator declined this comment",
            );
            self.to_inbox(&h.author.id, InboxMessage::Reject(answer))
                .await;
        }
        Ok(out)
    }

    /// Publishes an approved held post as a new comment (now, with the stream's next `seq`)
    /// and tells its author. The stream must still be live and the author not banned.
    async fn publish_held(
        &mut self,
        mut item: QueueItem,
        actor: &str,
        reason: &str,
    ) -> Result<ActionOutcome, ActionError> {
        let held = item
            .held
            .clone()
            .ok_or_else(|| ActionError::Invalid("held item without its post".into()))?;
        let stream = self
            .deps
            .streams
            .get(&item.stream, std::time::Duration::ZERO)
            .await
            .map_err(store_err)?
            .ok_or_else(|| ActionError::NotFound(format!("no stream {}", item.stream)))?;
        if stream.status != StreamStatus::Live {
            return Err(ActionError::Conflict(format!(
                "stream {} is not live any more; decline the post instead",
                stream.id
            )));
        }
        let now = now_ms();
        let bans = self
            .deps
            .store
            .bans_of(std::slice::from_ref(&held.author.id))
            .await
            .map_err(store_err)?;
        let active: Vec<&Ban> = bans
            .iter()
            .filter(|b| b.scope.covers(&stream.id) && b.active(now))
            .collect();
        if active.iter().any(|b| !b.shadow) {
            return Err(ActionError::Conflict(
                "the author is banned; decline the post instead".into(),
            ));
        }
        let shadow = !active.is_empty();
        let id = self.new_id();
        let (seq, offset_ms) = if shadow {
            self.peek(&stream, now).await
        } else {
            self.number(&stream, now).await
        }
        .map_err(store_err)?;
        let comment = Comment {
            id,
            seq,
            stream: item.stream.clone(),
            user: UserRef {
                id: held.author.id.clone(),
                name: held.author.name.clone(),
            },
            text: held.text.clone(),
            ts: now,
            offset_ms,
            // Approved later: the thread may have changed; published as a top-level comment.
            reply_to: None,
            likes: 0,
            replies: 0,
        };
        close(&mut item, QueueStatus::Approved, actor, reason, now);
        let mut entry = audit(now, actor, "approve", &item.stream, None, reason);
        entry.user = Some(held.author.id.clone());
        let batch = Batch {
            events: vec![StoredEvent::Comment(StoredComment {
                comment: comment.clone(),
                client_msg_id: held.client_msg_id.clone(),
                visibility: if shadow {
                    Visibility::Shadow
                } else {
                    Visibility::Visible
                },
                depth: 0,
            })],
            items: vec![item.clone()],
            audit: vec![entry],
            ..Default::default()
        };
        if let Err(e) = self.deps.store.commit(&batch).await {
            self.forget_cursor(&item.stream);
            return Err(store_err(e));
        }
        let event = Event::Comment(comment.clone());
        if shadow {
            self.publish_privately(&held.author.id, &item.stream, &event)
                .await;
        } else {
            self.publish(&item.stream, &event, now, false).await;
        }
        self.to_inbox(
            &held.author.id,
            InboxMessage::Ack(Accepted {
                client_msg_id: held.client_msg_id.clone(),
                id: comment.id.clone(),
                seq,
            }),
        )
        .await;
        Ok(ActionOutcome {
            event: Some(event),
            item: Some(item),
            changed: true,
        })
    }

    /// A retracted comment does not stay pinned.
    async fn unpin_if(&self, stream: &StreamId, comment_id: &str) {
        let updated = self
            .deps
            .streams
            .update(stream, |s| {
                if s.pinned.as_ref().is_some_and(|c| c.id == comment_id) {
                    s.pinned = None;
                    return Ok::<_, StoreError>(true);
                }
                Ok(false)
            })
            .await;
        match updated {
            Ok(Some((s, true))) => {
                for d in [Delivery::pinned(&s), Delivery::stream_state(&s)] {
                    if let Err(e) = self.deps.bus.deliver(d).await {
                        tracing::warn!(error = %e, "publishing the unpin failed");
                    }
                }
                self.audit(AuditEntry {
                    at: now_ms(),
                    actor: "system".into(),
                    action: "unpin".into(),
                    stream: Some(stream.clone()),
                    comment_id: Some(comment_id.to_owned()),
                    user: None,
                    reason: "the pinned comment was retracted".into(),
                })
                .await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "unpinning a retracted comment failed"),
        }
    }

    /// Records a strike; enough of them within the window shadow-ban the user.
    async fn strike(&mut self, user: &UserId) {
        let cfg = self.deps.moderation.config.reputation.clone();
        if cfg.strikes == 0 {
            return;
        }
        let now = now_ms();
        let window_ms = (cfg.window_s as i64).saturating_mul(1000);
        let store = self.deps.store.clone();
        let count = match store.add_strike(user, now, window_ms).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, %user, "recording a strike failed");
                return;
            }
        };
        if count < cfg.strikes {
            return;
        }
        let already = store
            .bans_of(std::slice::from_ref(user))
            .await
            .map(|bans| {
                bans.iter()
                    .any(|b| b.scope == BanScope::Global && b.active(now))
            })
            .unwrap_or(false);
        if already {
            return;
        }
        let reason = format!("{count} strikes within {} s", cfg.window_s);
        let ban = Ban {
            user: user.clone(),
            scope: BanScope::Global,
            shadow: true,
            until: (cfg.shadow_ban_s > 0)
                .then(|| now.saturating_add((cfg.shadow_ban_s as i64).saturating_mul(1000))),
            reason: reason.clone(),
            actor: actors::REPUTATION.into(),
            at: now,
        };
        if let Err(e) = store.put_ban(&ban).await {
            tracing::error!(error = %e, %user, "shadow-banning failed");
            return;
        }
        tracing::info!(%user, count, "user shadow-banned by reputation");
        metrics::counter!("livecomments_shadow_bans_total").increment(1);
        self.audit(AuditEntry {
            at: now,
            actor: actors::REPUTATION.into(),
            action: "shadow_ban".into(),
            stream: None,
            comment_id: None,
            user: Some(user.clone()),
            reason,
        })
        .await;
    }
}

//! Moderation actions: retract, restore, report, review-queue decisions, strikes. Each one
//! that changes what viewers see gets its own `seq` and is published like a comment.

use wire::bus::{Author, Delivery, Submission};
use wire::event::{Comment, Event, Restoration, Retraction, UserRef};
use wire::inbox::{Accepted, Answer, InboxMessage, Outcome, RejectCode, Rejected, Reported};
use wire::moderation::{
    actors, Action, ActionError, ActionOutcome, AuditEntry, Ban, BanScope, Decision, QueueItem,
    QueueKind, QueueStatus, Report,
};
use wire::store::{StoreError, StoredComment, StoredEvent, Visibility};
use wire::time::now_ms;
use wire::{StreamId, UserId};

use super::Writer;

fn store_err(e: StoreError) -> ActionError {
    tracing::error!(error = %e, "storage failed during a moderation action");
    ActionError::Unavailable("storage is unavailable; retry".into())
}

/// The reason given for comments hidden by viewer reports.
pub(crate) const HIDDEN_BY_REPORTS: &str = "hidden pending review after reports";

/// Longest report reason kept.
const MAX_REASON_CHARS: usize = 500;

impl Writer {
    pub(super) async fn act(&mut self, action: Action) -> Result<ActionOutcome, ActionError> {
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

    /// Stores and publishes one moderation event with the stream's next `seq`.
    async fn append_one(
        &mut self,
        stream: &StreamId,
        make: impl FnOnce(u64) -> StoredEvent,
    ) -> Result<u64, ActionError> {
        let seq = self.next_seq(stream).await.map_err(store_err)?;
        if let Err(e) = self.deps.store.append(&[make(seq)]).await {
            self.forget_cursor(stream);
            return Err(store_err(e));
        }
        Ok(seq)
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
        if matches!(c.visibility, Visibility::Retracted { .. }) {
            return Ok(ActionOutcome::default());
        }
        let now = now_ms();
        let comment_seq = c.comment.seq;
        let seq = self
            .append_one(stream, |seq| StoredEvent::Retract {
                stream: stream.clone(),
                seq,
                comment_seq,
                comment_id: comment_id.to_owned(),
                reason: reason.to_owned(),
                actor: actor.to_owned(),
                at: now,
            })
            .await?;
        let event = Event::Retract(Retraction {
            id: comment_id.to_owned(),
            seq,
            reason: reason.to_owned(),
        });
        self.publish(stream, &event, now, true).await;
        self.audit(AuditEntry {
            at: now,
            actor: actor.to_owned(),
            action: if actor == actors::REPORTS {
                "hide"
            } else {
                "retract"
            }
            .into(),
            stream: Some(stream.clone()),
            comment_id: Some(comment_id.to_owned()),
            user: Some(c.comment.user.id.clone()),
            reason: reason.to_owned(),
        })
        .await;
        self.unpin_if(stream, comment_id, actor).await;
        // An open review item about this comment is settled by a moderator's or the
        // model's retraction (not by hiding, which waits for a moderator).
        let mut item = None;
        if actor != actors::REPORTS {
            if let Ok(Some(mut open)) = self
                .deps
                .store
                .queue_item_for_comment(stream, comment_id)
                .await
            {
                close(&mut open, QueueStatus::Retracted, actor, reason, now);
                self.deps
                    .store
                    .put_queue_item(&open)
                    .await
                    .map_err(store_err)?;
                item = Some(open);
            }
        }
        if strike {
            self.strike(&c.comment.user.id).await;
        }
        Ok(ActionOutcome {
            event: Some(event),
            item,
            changed: true,
        })
    }

    async fn restore(
        &mut self,
        stream: &StreamId,
        comment_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<ActionOutcome, ActionError> {
        let c = self.comment(stream, comment_id).await?;
        match c.visibility {
            Visibility::Retracted { .. } => {}
            Visibility::Visible => return Ok(ActionOutcome::default()),
            Visibility::Shadow => {
                return Err(ActionError::Conflict(
                    "the comment is from a shadow-banned user; lift the ban instead".into(),
                ))
            }
        }
        let now = now_ms();
        let comment_seq = c.comment.seq;
        let seq = self
            .append_one(stream, |seq| StoredEvent::Restore {
                stream: stream.clone(),
                seq,
                comment_seq,
                comment_id: comment_id.to_owned(),
                actor: actor.to_owned(),
                at: now,
            })
            .await?;
        let event = Event::Restore(Restoration {
            id: comment_id.to_owned(),
            seq,
            comment: c.comment.clone(),
        });
        self.publish(stream, &event, now, true).await;
        self.audit(AuditEntry {
            at: now,
            actor: actor.to_owned(),
            action: "restore".into(),
            stream: Some(stream.clone()),
            comment_id: Some(comment_id.to_owned()),
            user: Some(c.comment.user.id.clone()),
            reason: reason.to_owned(),
        })
        .await;
        let mut item = None;
        if let Ok(Some(mut open)) = self
            .deps
            .store
            .queue_item_for_comment(stream, comment_id)
            .await
        {
            close(&mut open, QueueStatus::Approved, actor, reason, now);
            self.deps
                .store
                .put_queue_item(&open)
                .await
                .map_err(store_err)?;
            item = Some(open);
        }
        Ok(ActionOutcome {
            event: Some(event),
            item,
            changed: true,
        })
    }

    /// A retracted comment does not stay pinned.
    async fn unpin_if(&self, stream: &StreamId, comment_id: &str, actor: &str) {
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
                    actor: actor.to_owned(),
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
        match self
            .report_comment(&sub.stream, &body.comment_id, &sub.author.id, &reason)
            .await
        {
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
        let hidden_by_reports = match &c.visibility {
            Visibility::Visible => false,
            Visibility::Retracted { actor, .. } if actor == actors::REPORTS => true,
            // Already removed, or not visible to the reporter at all.
            Visibility::Retracted { .. } => return Ok(ActionOutcome::default()),
            Visibility::Shadow => {
                return Err(ActionError::NotFound(format!(
                    "no comment {comment_id} in stream {stream}"
                )))
            }
        };
        let now = now_ms();
        let store = self.deps.store.clone();
        let mut item = match store
            .queue_item_for_comment(stream, comment_id)
            .await
            .map_err(store_err)?
        {
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
                hidden: hidden_by_reports,
                decided_by: None,
                decided_at: None,
                decision_reason: None,
            },
        };
        if item.reports.iter().any(|r| &r.user == reporter) {
            return Ok(ActionOutcome {
                item: Some(item),
                ..Default::default()
            });
        }
        item.reports.push(Report {
            user: reporter.clone(),
            reason: reason.to_owned(),
            at: now,
        });
        self.audit(AuditEntry {
            at: now,
            actor: reporter.to_string(),
            action: "report".into(),
            stream: Some(stream.clone()),
            comment_id: Some(comment_id.to_owned()),
            user: Some(c.comment.user.id.clone()),
            reason: reason.to_owned(),
        })
        .await;
        let threshold = self.deps.moderation.config.reports.hide_threshold;
        let mut event = None;
        if !item.hidden && !hidden_by_reports && item.reports.len() >= threshold {
            let out = self
                .retract(
                    stream,
                    comment_id,
                    HIDDEN_BY_REPORTS,
                    actors::REPORTS,
                    false,
                )
                .await?;
            item.hidden = true;
            event = out.event;
        }
        store.put_queue_item(&item).await.map_err(store_err)?;
        Ok(ActionOutcome {
            event,
            item: Some(item),
            changed: true,
        })
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
        let now = now_ms();
        let mut event = None;
        match (item.kind, decision) {
            (QueueKind::Held, Decision::Approve) => {
                event = Some(self.publish_held(&item).await?);
                close(&mut item, QueueStatus::Approved, actor, reason, now);
            }
            (QueueKind::Held, Decision::Retract) => {
                close(&mut item, QueueStatus::Retracted, actor, reason, now);
                if let Some(h) = &item.held {
                    let answer = Rejected::new(
                        Some(h.client_msg_id.clone()),
                        RejectCode::Blocked,
                        "a moderator declined this comment",
                    );
                    self.to_inbox(&h.author.id, InboxMessage::Reject(answer))
                        .await;
                    self.strike(&h.author.id).await;
                }
            }
            (_, Decision::Approve) => {
                let comment_id = item.comment_id.clone().unwrap_or_default();
                let c = self.comment(&item.stream, &comment_id).await?;
                if matches!(&c.visibility, Visibility::Retracted { .. }) {
                    event = self
                        .restore(&item.stream, &comment_id, reason, actor)
                        .await?
                        .event;
                }
                close(&mut item, QueueStatus::Approved, actor, reason, now);
            }
            (_, Decision::Retract) => {
                let comment_id = item.comment_id.clone().unwrap_or_default();
                let c = self.comment(&item.stream, &comment_id).await?;
                if c.visibility == Visibility::Visible {
                    event = self
                        .retract(&item.stream, &comment_id, reason, actor, true)
                        .await?
                        .event;
                } else {
                    // Hidden by reports already: upholding them still counts as a strike.
                    self.strike(&c.comment.user.id).await;
                }
                close(&mut item, QueueStatus::Retracted, actor, reason, now);
            }
        }
        store.put_queue_item(&item).await.map_err(store_err)?;
        self.audit(AuditEntry {
            at: now,
            actor: actor.to_owned(),
            action: match decision {
                Decision::Approve => "approve",
                Decision::Retract => "reject",
            }
            .into(),
            stream: Some(item.stream.clone()),
            comment_id: item.comment_id.clone(),
            user: item
                .held
                .as_ref()
                .map(|h| h.author.id.clone())
                .or_else(|| item.comment.as_ref().map(|c| c.user.id.clone())),
            reason: reason.to_owned(),
        })
        .await;
        Ok(ActionOutcome {
            event,
            item: Some(item),
            changed: true,
        })
    }

    /// Publishes an approved held post as a new comment and tells its author.
    async fn publish_held(&mut self, item: &QueueItem) -> Result<Event, ActionError> {
        let held = item
            .held
            .as_ref()
            .ok_or_else(|| ActionError::Invalid("held item without its post".into()))?;
        let stream = self
            .deps
            .streams
            .get(&item.stream, std::time::Duration::ZERO)
            .await
            .map_err(store_err)?
            .ok_or_else(|| ActionError::NotFound(format!("no stream {}", item.stream)))?;
        let now = now_ms();
        let id = self.new_id();
        let (seq, offset_ms) = self.number(&stream, now).await.map_err(store_err)?;
        let Author { id: user, name, .. } = held.author.clone();
        let comment = Comment {
            id,
            seq,
            stream: item.stream.clone(),
            user: UserRef {
                id: user.clone(),
                name,
            },
            text: held.text.clone(),
            ts: now,
            offset_ms,
            // Approved later: the thread may have changed; published as a top-level comment.
            reply_to: None,
            likes: 0,
            replies: 0,
        };
        let stored = StoredComment {
            comment: comment.clone(),
            client_msg_id: held.client_msg_id.clone(),
            visibility: Visibility::Visible,
            depth: 0,
        };
        if let Err(e) = self
            .deps
            .store
            .append(&[StoredEvent::Comment(stored)])
            .await
        {
            self.forget_cursor(&item.stream);
            return Err(store_err(e));
        }
        let event = Event::Comment(comment.clone());
        self.publish(&item.stream, &event, now, false).await;
        self.to_inbox(
            &user,
            InboxMessage::Ack(Accepted {
                client_msg_id: held.client_msg_id.clone(),
                id: comment.id.clone(),
                seq,
            }),
        )
        .await;
        Ok(event)
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

fn close(item: &mut QueueItem, status: QueueStatus, actor: &str, reason: &str, now: i64) {
    item.status = status;
    item.decided_by = Some(actor.to_owned());
    item.decided_at = Some(now);
    item.decision_reason = Some(reason.to_owned());
}

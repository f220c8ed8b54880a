//! A batch of posts: validate, answer retries, check stream, bans, rules and rate limit,
//! number, store in one transaction, publish, answer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wire::auth::Role;
use wire::bus::Submission;
use wire::event::{ChatMode, Comment, Event, StreamState, UserRef};
use wire::inbox::{self, Accepted, Answer, Held, InboxMessage, Outcome, RejectCode, Rejected};
use wire::moderation::{actors, AuditEntry, Ban, HeldPost, QueueItem, QueueKind, QueueStatus};
use wire::store::{Batch, DedupHit, DedupKey, StoredComment, StoredEvent, Visibility};
use wire::time::now_ms;
use wire::{StreamId, UserId};

use super::{unavailable, Reply, Writer};
use crate::claims::{Claim, Taken};
use crate::validate::{parse_post, Post};

/// When another bridge is processing the same post, its retry comes this much later.
const IN_PROGRESS_RETRY_MS: u64 = 500;

/// One submission on its way through the batch.
struct Slot {
    submission: Submission,
    reply: Reply,
    post: Option<Post>,
    outcome: Option<Outcome>,
    /// Same key as an earlier slot of this batch: gets that slot's answer.
    copy_of: Option<usize>,
    /// Stored by an earlier attempt whose commit failed: this comment was never published.
    recovered: Option<String>,
}

/// A post that passed every check.
struct Fresh {
    index: usize,
    post: Post,
    stream: StreamState,
    shadow: bool,
    /// Nesting level (0 top-level); `post.reply_to` is already the attached parent.
    depth: u8,
    /// The parent's author, told about the reply.
    notify: Option<UserId>,
    /// Sampling never drops it (broadcaster, moderators, replies).
    keep: bool,
    /// Slow mode recorded this post: forgotten if it is not stored (so the retry the client is
    /// told to make is not refused as too soon).
    slow_recorded: bool,
}

impl Writer {
    pub(super) async fn process_posts(&mut self, jobs: Vec<(Submission, Reply)>) {
        let mut slots: Vec<Slot> = jobs
            .into_iter()
            .map(|(submission, reply)| Slot {
                submission,
                reply,
                post: None,
                outcome: None,
                copy_of: None,
                recovered: None,
            })
            .collect();

        // 1. Parse and validate.
        for slot in &mut slots {
            match parse_post(&slot.submission.payload, self.config.max_comment_chars) {
                Ok(p) => slot.post = Some(p),
                Err(r) => slot.outcome = Some(Err(r)),
            }
        }

        // 2. Retries: earlier batches (store) and earlier slots of this batch. The posts this
        // bridge goes on to process are claimed (no other bridge processes them meanwhile).
        let claimed = self.answer_retries(&mut slots).await;

        // 3. Stream, bans, rules, rate limit.
        let bans = self.bans_of_authors(&slots).await;
        let mut fresh = Vec::new();
        let mut held = Vec::new();
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.outcome.is_some() || slot.copy_of.is_some() {
                continue;
            }
            let Some(post) = slot.post.take() else {
                continue;
            };
            match self.admit(&slot.submission, post, &bans).await {
                Ok(Admit::Fresh(mut f)) => {
                    f.index = i;
                    fresh.push(*f);
                }
                Ok(Admit::Held(h)) => held.push((i, *h)),
                Err(r) => slot.outcome = Some(Err(r)),
            }
        }

        // 4. Number, 5. store durably (with the held posts' queue items), 6. publish in
        // seq order.
        let (stored, failed, held_ok) = self.store_fresh(&slots, fresh, &held).await;
        for (index, client_msg_id) in failed {
            slots[index].outcome = Some(Err(unavailable(Some(client_msg_id))));
        }
        for (index, h) in held {
            slots[index].outcome = Some(if held_ok {
                Ok(Answer::Held(h.answer))
            } else {
                Err(unavailable(Some(h.answer.client_msg_id)))
            });
        }
        for (index, c, f) in stored {
            let sub = &slots[index].submission;
            let event = Event::Comment(c.comment.clone());
            if f.shadow {
                // Acknowledged as usual, shown only to its author.
                self.publish_privately(&sub.author.id, &c.comment.stream, &event)
                    .await;
            } else {
                self.publish(&c.comment.stream, &event, sub.received_at_ms, f.keep)
                    .await;
                if let Some(parent_author) = f.notify.filter(|u| *u != sub.author.id) {
                    let reply = inbox::Reply {
                        id: c.comment.id.clone(),
                        seq: c.comment.seq,
                        stream: c.comment.stream.clone(),
                        parent_id: c.comment.reply_to.clone().unwrap_or_default(),
                        user: c.comment.user.clone(),
                    };
                    self.to_inbox(&parent_author, InboxMessage::Reply(reply))
                        .await;
                }
                if let Some(tx) = &self.deps.accepted {
                    if tx.try_send(c.comment.clone().into()).is_err() {
                        metrics::counter!("livecomments_moderation_dropped_total").increment(1);
                    }
                }
            }
            slots[index].outcome = Some(Ok(Answer::Accepted(Accepted {
                client_msg_id: c.client_msg_id,
                id: c.comment.id,
                seq: c.comment.seq,
            })));
        }

        // Stored by an attempt whose commit failed: published now.
        for slot in &slots {
            if let (Some(id), Some(post)) = (&slot.recovered, &slot.post) {
                let key = DedupKey {
                    stream: slot.submission.stream.clone(),
                    user: slot.submission.author.id.clone(),
                    client_msg_id: post.client_msg_id.clone(),
                };
                self.publish_recovered(&slot.submission, key, id).await;
            }
        }

        // Stored (or not): a retry may go anywhere now.
        self.deps.claims.release(&claimed).await;

        // Answers, in arrival order.
        for i in 0..slots.len() {
            if let Some(first) = slots[i].copy_of {
                slots[i].outcome = slots[first].outcome.clone();
            }
        }
        for slot in slots {
            let outcome = slot.outcome.unwrap_or_else(|| Err(unavailable(None)));
            self.answer(&slot.submission.author.id, slot.reply, outcome)
                .await;
        }
    }

    /// Answers posts seen before and copies within the batch; claims the rest for this
    /// bridge (returned, to release once they are stored). A post another bridge is processing
    /// right now is answered "retry".
    async fn answer_retries(&mut self, slots: &mut [Slot]) -> Vec<Claim> {
        let mut first_of: HashMap<DedupKey, usize> = HashMap::new();
        let mut lookups = Vec::new();
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(post) = &slot.post else { continue };
            let key = DedupKey {
                stream: slot.submission.stream.clone(),
                user: slot.submission.author.id.clone(),
                client_msg_id: post.client_msg_id.clone(),
            };
            match first_of.get(&key) {
                Some(&first) => slot.copy_of = Some(first),
                None => {
                    first_of.insert(key.clone(), i);
                    lookups.push((i, key));
                }
            }
        }
        let claims: Vec<Claim> = lookups
            .iter()
            .map(|(_, k)| Claim::Post(k.clone()))
            .collect();
        let granted = match self.deps.claims.claim(&claims).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "claiming posts failed");
                // They may have been taken all the same (a timeout): give them back.
                self.deps.claims.release(&claims).await;
                for (i, key) in lookups {
                    slots[i].outcome = Some(Err(unavailable(Some(key.client_msg_id))));
                }
                return Vec::new();
            }
        };
        let keys: Vec<DedupKey> = lookups.iter().map(|(_, k)| k.clone()).collect();
        match self.deps.store.find_dedup(&keys).await {
            Ok(hits) => {
                for (((i, key), hit), taken) in lookups.into_iter().zip(hits).zip(&granted) {
                    if hit.is_none() && !taken.held() {
                        slots[i].outcome = Some(Err(Rejected::new(
                            Some(key.client_msg_id),
                            RejectCode::Unavailable,
                            "this comment is being processed; retry with the same client_msg_id",
                        )
                        .retry_after(IN_PROGRESS_RETRY_MS)));
                        continue;
                    }
                    if let (Taken::Unsure, Some(DedupHit::Stored { id, .. })) = (taken, &hit) {
                        slots[i].recovered = Some(id.clone());
                    }
                    slots[i].outcome = hit.map(|h| {
                        Ok(match h {
                            DedupHit::Stored { id, seq } => Answer::Accepted(Accepted {
                                client_msg_id: key.client_msg_id,
                                id,
                                seq,
                            }),
                            DedupHit::Held { item } => Answer::Held(held_answer(
                                key.client_msg_id,
                                item,
                                "waiting for review",
                            )),
                            DedupHit::Declined { .. } => {
                                return Err(Rejected::new(
                                    Some(key.client_msg_id),
                                    RejectCode::Blocked,
                                    "a moderator declined this comment",
                                ))
                            }
                        })
                    });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "de-duplication lookup failed");
                // Still unknown whether they are stored: keep them marked.
                let unsure: Vec<DedupKey> = lookups
                    .iter()
                    .zip(&granted)
                    .filter(|(_, t)| **t == Taken::Unsure)
                    .map(|((_, k), _)| k.clone())
                    .collect();
                self.deps.claims.mark_unsure(&unsure).await;
                for (i, key) in lookups {
                    slots[i].outcome = Some(Err(unavailable(Some(key.client_msg_id))));
                }
            }
        }
        claims
            .into_iter()
            .zip(granted)
            .filter_map(|(c, taken)| taken.held().then_some(c))
            .collect()
    }

    /// Publishes a comment an earlier attempt stored although its commit reported a failure
    /// (so it was neither published nor handed to moderation). It arrives late, with its own
    /// `seq`; nodes pass a late `seq` on at once.
    async fn publish_recovered(&mut self, sub: &Submission, key: DedupKey, id: &str) {
        let stored = match self.deps.store.find_comment(&sub.stream, id).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, %id, "reading a recovered comment failed");
                // The next retry tries again.
                self.deps.claims.mark_unsure(&[key]).await;
                return;
            }
        };
        tracing::info!(%id, seq = stored.comment.seq, "publishing a comment stored by a failed attempt");
        metrics::counter!("livecomments_comments_recovered_total").increment(1);
        let event = Event::Comment(stored.comment.clone());
        match stored.visibility {
            Visibility::Visible => {
                let keep = stored.comment.reply_to.is_some();
                self.publish(&sub.stream, &event, sub.received_at_ms, keep)
                    .await;
                if let Some(tx) = &self.deps.accepted {
                    if tx.try_send(stored.comment.into()).is_err() {
                        metrics::counter!("livecomments_moderation_dropped_total").increment(1);
                    }
                }
            }
            Visibility::Shadow => {
                self.publish_privately(&sub.author.id, &sub.stream, &event)
                    .await;
            }
            // Retracted meanwhile: nothing to show.
            Visibility::Retracted { .. } => {}
        }
    }

    /// Every ban of the batch's authors still to be decided, from one store read.
    async fn bans_of_authors(&self, slots: &[Slot]) -> Result<Vec<Ban>, ()> {
        let mut users: Vec<_> = slots
            .iter()
            .filter(|s| s.outcome.is_none() && s.copy_of.is_none())
            .map(|s| s.submission.author.id.clone())
            .collect();
        users.sort();
        users.dedup();
        if users.is_empty() {
            return Ok(Vec::new());
        }
        self.deps.store.bans_of(&users).await.map_err(|e| {
            tracing::error!(error = %e, "reading bans failed");
        })
    }

    /// Stream, bans, rules and rate limit for one post.
    async fn admit(
        &mut self,
        sub: &Submission,
        post: Post,
        bans: &Result<Vec<Ban>, ()>,
    ) -> Result<Admit, Rejected> {
        let id = Some(post.client_msg_id.clone());
        let stream = match self.live_stream(&sub.stream).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(Rejected::new(
                    id,
                    RejectCode::StreamNotLive,
                    format!("stream {} is not live", sub.stream),
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, stream = %sub.stream, "stream lookup failed");
                return Err(unavailable(id));
            }
        };
        let Ok(bans) = bans else {
            return Err(unavailable(id));
        };
        let now = now_ms();
        let active: Vec<&Ban> = bans
            .iter()
            .filter(|b| b.user == sub.author.id && b.scope.covers(&sub.stream) && b.active(now))
            .collect();
        if let Some(ban) = active.iter().find(|b| !b.shadow) {
            let until = match ban.until {
                Some(t) => format!(" for {} more seconds", (t - now).max(0) / 1000 + 1),
                None => String::new(),
            };
            return Err(Rejected::new(
                id,
                RejectCode::Banned,
                format!("you are banned from {}{until}", ban.scope),
            ));
        }
        let shadow = !active.is_empty();
        let a = &sub.author;
        // Only this stream's broadcaster is exempt, not broadcasters of other streams.
        let exempt =
            matches!(a.role, Role::Moderator | Role::Admin) || stream.owner.as_ref() == Some(&a.id);

        // Chat settings of the stream (its broadcaster and moderators are exempt).
        let settings = stream.settings;
        if !exempt {
            match settings.mode {
                ChatMode::Open => {}
                ChatMode::Subscribers if a.subscriber => {}
                ChatMode::Subscribers => {
                    return Err(Rejected::new(
                        id,
                        RejectCode::SubscribersOnly,
                        "this chat is for subscribers only",
                    ))
                }
                ChatMode::EmoteOnly if moderation::rules::is_emote_only(&post.text) => {}
                ChatMode::EmoteOnly => {
                    return Err(Rejected::new(
                        id,
                        RejectCode::EmoteOnly,
                        "this chat is in emote-only mode",
                    ))
                }
            }
            let chars = post.text.chars().count();
            if chars > settings.max_length {
                return Err(Rejected::new(
                    id,
                    RejectCode::TooLong,
                    format!(
                        "text is {chars} characters; this stream's limit is {}",
                        settings.max_length
                    ),
                ));
            }
        }

        if let Err(wait) = self.deps.limits.comment(&a.id).await {
            let ms = (wait.as_millis() as u64).max(1);
            return Err(Rejected::new(
                id.clone(),
                RejectCode::RateLimited,
                format!(
                    "at most {} comments per {} s; retry in {} ms",
                    self.config.rate_limit_count, self.config.rate_limit_window_s, ms
                ),
            )
            .retry_after(ms));
        }
        let candidate = moderation::Candidate {
            stream: &sub.stream,
            author: &sub.author,
            text: &post.text,
        };
        match self.deps.moderation.check(&candidate) {
            moderation::Verdict::Allow => {}
            moderation::Verdict::Reject(mut r) => {
                r.client_msg_id = id;
                return Err(r);
            }
            moderation::Verdict::Hold { rule, message } => {
                return Ok(Admit::Held(Box::new(self.hold(sub, post, rule, message))));
            }
        }

        let (post, depth, notify) = self.attach_reply(&sub.stream, post).await?;

        let mut slow_recorded = false;
        if !exempt && settings.slow_mode_s > 0 {
            let every = Duration::from_secs(settings.slow_mode_s);
            if let Err(wait) = self.deps.limits.slow_mode(&sub.stream, &a.id, every).await {
                let ms = (wait.as_millis() as u64).max(1);
                return Err(Rejected::new(
                    Some(post.client_msg_id),
                    RejectCode::SlowMode,
                    format!(
                        "slow mode: one comment every {} s; retry in {} ms",
                        settings.slow_mode_s, ms
                    ),
                )
                .retry_after(ms));
            }
            slow_recorded = true;
        }
        let keep = exempt || post.reply_to.is_some();
        Ok(Admit::Fresh(Box::new(Fresh {
            index: 0,
            slow_recorded,
            post,
            stream,
            shadow,
            depth,
            notify,
            keep,
        })))
    }

    /// Checks `reply_to` and attaches a reply deeper than the limit to its ancestor at the
    /// limit. Returns the post (with its final `reply_to`), its depth and the parent's author.
    async fn attach_reply(
        &self,
        stream: &StreamId,
        mut post: Post,
    ) -> Result<(Post, u8, Option<UserId>), Rejected> {
        let Some(parent_id) = post.reply_to.clone() else {
            return Ok((post, 0, None));
        };
        let id = Some(post.client_msg_id.clone());
        let missing = || {
            Rejected::new(
                id.clone(),
                RejectCode::Invalid,
                format!("reply_to: no comment {parent_id} in this stream"),
            )
        };
        let store = &self.deps.store;
        let parent = store
            .find_comment(stream, &parent_id)
            .await
            .map_err(|_| unavailable(id.clone()))?
            .filter(|c| c.visibility == Visibility::Visible)
            .ok_or_else(missing)?;
        let max = self.config.max_reply_depth;
        if parent.depth < max {
            return Ok((post, parent.depth + 1, Some(parent.comment.user.id)));
        }
        // Too deep: attach to the parent's own parent, which is at the limit - 1.
        let ancestor_id = parent.comment.reply_to.clone().ok_or_else(missing)?;
        let ancestor = store
            .find_comment(stream, &ancestor_id)
            .await
            .map_err(|_| unavailable(id.clone()))?
            .filter(|c| c.visibility == Visibility::Visible)
            .ok_or_else(|| {
                Rejected::new(
                    id.clone(),
                    RejectCode::Invalid,
                    format!("reply_to: the thread {parent_id} belongs to was removed"),
                )
            })?;
        post.reply_to = Some(ancestor_id);
        Ok((post, ancestor.depth + 1, Some(ancestor.comment.user.id)))
    }

    /// Prepares a post for the review queue instead of the stream (stored with the batch).
    fn hold(&mut self, sub: &Submission, post: Post, rule: &'static str, message: String) -> Hold {
        let now = now_ms();
        let item = QueueItem {
            id: self.new_id(),
            stream: sub.stream.clone(),
            kind: QueueKind::Held,
            status: QueueStatus::Open,
            created_at: now,
            comment_id: None,
            comment: None,
            held: Some(HeldPost {
                author: sub.author.clone(),
                text: post.text.clone(),
                client_msg_id: post.client_msg_id.clone(),
                reply_to: post.reply_to.clone(),
            }),
            score: None,
            reason: format!("{rule}: {message}"),
            reports: Vec::new(),
            hidden: false,
            decided_by: None,
            decided_at: None,
            decision_reason: None,
        };
        let audit = AuditEntry {
            at: now,
            actor: actors::RULES.into(),
            action: "hold".into(),
            stream: Some(sub.stream.clone()),
            comment_id: None,
            user: Some(sub.author.id.clone()),
            reason: item.reason.clone(),
        };
        let answer = held_answer(post.client_msg_id, item.id.clone(), &message);
        Hold {
            item,
            audit,
            answer,
        }
    }

    /// Numbers the fresh posts and stores them in one transaction. Returns what was stored
    /// (slot, comment, shadow) and what was not (slot, client id).
    /// Held posts' queue items go into the same transaction; the last value says whether
    /// they were stored.
    async fn store_fresh(
        &mut self,
        slots: &[Slot],
        fresh: Vec<Fresh>,
        held: &[(usize, Hold)],
    ) -> (
        Vec<(usize, StoredComment, Fresh)>,
        Vec<(usize, String)>,
        bool,
    ) {
        if fresh.is_empty() && held.is_empty() {
            return (Vec::new(), Vec::new(), true);
        }
        let now = now_ms();
        let mut rows = Vec::with_capacity(fresh.len());
        let mut meta = Vec::with_capacity(fresh.len());
        let mut failed = Vec::new();
        for f in fresh {
            let sub = &slots[f.index].submission;
            let id = self.new_id();
            // A shadow-banned author's comment takes no seq of its own.
            let numbered = if f.shadow {
                self.peek(&f.stream, now).await
            } else {
                self.number(&f.stream, now).await
            };
            let (seq, offset_ms) = match numbered {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, stream = %sub.stream, "reading the last seq failed");
                    if f.slow_recorded {
                        self.deps
                            .limits
                            .undo_slow_mode(&sub.stream, &sub.author.id)
                            .await;
                    }
                    failed.push((f.index, f.post.client_msg_id.clone()));
                    continue;
                }
            };
            let stored = StoredComment {
                comment: Comment {
                    id,
                    seq,
                    stream: sub.stream.clone(),
                    user: UserRef {
                        id: sub.author.id.clone(),
                        name: sub.author.name.clone(),
                    },
                    text: f.post.text.clone(),
                    ts: now,
                    offset_ms,
                    reply_to: f.post.reply_to.clone(),
                    likes: 0,
                    replies: 0,
                },
                client_msg_id: f.post.client_msg_id.clone(),
                visibility: if f.shadow {
                    Visibility::Shadow
                } else {
                    Visibility::Visible
                },
                depth: f.depth,
            };
            meta.push((f.index, stored.clone(), f));
            rows.push(StoredEvent::Comment(stored));
        }
        if rows.is_empty() && held.is_empty() {
            return (Vec::new(), failed, true);
        }
        let count = rows.len();
        let batch = Batch {
            events: rows,
            items: held.iter().map(|(_, h)| h.item.clone()).collect(),
            audit: held.iter().map(|(_, h)| h.audit.clone()).collect(),
            reporters: Vec::new(),
        };
        let started = Instant::now();
        let result = self.deps.store.commit(&batch).await;
        metrics::histogram!("livecomments_store_commit_seconds").record(started.elapsed());
        metrics::histogram!("livecomments_store_batch_size").record(count as f64);
        match result {
            Ok(()) => (meta, failed, true),
            Err(e) => {
                tracing::error!(error = %e, count, "storing comments failed");
                // A timeout may have stored them all the same: their retries will tell.
                let unsure: Vec<DedupKey> = meta
                    .iter()
                    .map(|(_, c, _)| DedupKey {
                        stream: c.comment.stream.clone(),
                        user: c.comment.user.id.clone(),
                        client_msg_id: c.client_msg_id.clone(),
                    })
                    .collect();
                self.deps.claims.mark_unsure(&unsure).await;
                for (index, c, f) in meta {
                    self.forget_cursor(&c.comment.stream);
                    if f.slow_recorded {
                        self.deps
                            .limits
                            .undo_slow_mode(&c.comment.stream, &c.comment.user.id)
                            .await;
                    }
                    failed.push((index, c.client_msg_id));
                }
                (Vec::new(), failed, false)
            }
        }
    }
}

enum Admit {
    Fresh(Box<Fresh>),
    /// Held for review: its queue item is stored with the batch.
    Held(Box<Hold>),
}

/// A held post, stored with the batch it came in.
struct Hold {
    item: QueueItem,
    audit: AuditEntry,
    answer: Held,
}

fn held_answer(client_msg_id: String, item: String, message: &str) -> Held {
    Held {
        client_msg_id,
        id: item,
        message: format!("held for review: {message}"),
    }
}

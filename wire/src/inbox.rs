//! Answers to a poster: `ack` and `reject` on `users/{user}/inbox`, and the reject codes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Machine-readable reason a submission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// Too many comments from this user; retry after `retry_after_ms`.
    RateLimited,
    /// Longer than the configured limit (characters).
    TooLong,
    /// Empty or whitespace only.
    Empty,
    /// Malformed JSON, invalid UTF-8, control characters, bad field values.
    Invalid,
    /// The stream is in slow mode; retry after `retry_after_ms`.
    SlowMode,
    /// The user is banned from this stream or everywhere.
    Banned,
    /// The stream does not exist, has not started or has ended.
    StreamNotLive,
    /// The service cannot store the comment right now (overload, storage down); retryable.
    Unavailable,
    /// A moderation rule refused the text (blocklist, links, spam).
    Blocked,
    /// The stream admits only subscribers (and its broadcaster and moderators).
    SubscribersOnly,
    /// The stream admits only emoji.
    EmoteOnly,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::RateLimited => "rate_limited",
            RejectCode::TooLong => "too_long",
            RejectCode::Empty => "empty",
            RejectCode::Invalid => "invalid",
            RejectCode::SlowMode => "slow_mode",
            RejectCode::Banned => "banned",
            RejectCode::StreamNotLive => "stream_not_live",
            RejectCode::Unavailable => "unavailable",
            RejectCode::Blocked => "blocked",
            RejectCode::SubscribersOnly => "subscribers_only",
            RejectCode::EmoteOnly => "emote_only",
        }
    }

    /// Whether the same submission may succeed later without changes.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            RejectCode::RateLimited | RejectCode::SlowMode | RejectCode::Unavailable
        )
    }
}

/// A comment was stored durably. A retry with the same `client_msg_id` gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub client_msg_id: String,
    pub id: String,
    pub seq: u64,
}

/// A submission was refused; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// `None` when the payload was too malformed to read it.
    pub client_msg_id: Option<String>,
    pub code: RejectCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Rejected {
    pub fn new(
        client_msg_id: Option<String>,
        code: RejectCode,
        message: impl Into<String>,
    ) -> Self {
        Rejected {
            client_msg_id,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
}

/// How a submission ended well.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Accepted(Accepted),
    Held(Held),
    Reported(Reported),
}

/// The outcome of one submission.
pub type Outcome = Result<Answer, Rejected>;

/// A post a rule held for review: nobody sees it unless a moderator approves it, and then
/// the poster gets an `ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub client_msg_id: String,
    /// The review-queue item.
    pub id: String,
    pub message: String,
}

/// A report was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    pub comment_id: String,
}

/// Someone replied to one of the user's comments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The reply.
    pub id: String,
    pub seq: u64,
    pub stream: crate::StreamId,
    /// The user's comment that was replied to.
    pub parent_id: String,
    pub user: crate::event::UserRef,
}

/// A message on a user's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboxMessage {
    Ack(Accepted),
    Reject(Rejected),
    Held(Held),
    Reported(Reported),
    Reply(Reply),
}

impl From<Outcome> for InboxMessage {
    fn from(o: Outcome) -> Self {
        match o {
            Ok(Answer::Accepted(a)) => InboxMessage::Ack(a),
            Ok(Answer::Held(h)) => InboxMessage::Held(h),
            Ok(Answer::Reported(r)) => InboxMessage::Reported(r),
            Err(r) => InboxMessage::Reject(r),
        }
    }
}

impl InboxMessage {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_and_reject_have_the_documented_shape() {
        let ack = InboxMessage::Ack(Accepted {
            client_msg_id: "c1".into(),
            id: "01J".into(),
            seq: 17,
        });
        assert_eq!(
            serde_json::to_value(&ack).unwrap(),
            serde_json::json!({"type":"ack","client_msg_id":"c1","id":"01J","seq":17})
        );
        let rej = InboxMessage::Reject(
            Rejected::new(Some("c2".into()), RejectCode::RateLimited, "slow down")
                .retry_after(1234),
        );
        assert_eq!(
            serde_json::to_value(&rej).unwrap(),
            serde_json::json!({"type":"reject","client_msg_id":"c2","code":"rate_limited",
                "message":"slow down","retry_after_ms":1234})
        );
    }

    #[test]
    fn codes_serialize_as_their_names() {
        for c in [
            RejectCode::RateLimited,
            RejectCode::TooLong,
            RejectCode::Empty,
            RejectCode::Invalid,
            RejectCode::SlowMode,
            RejectCode::Banned,
            RejectCode::StreamNotLive,
            RejectCode::Unavailable,
            RejectCode::Blocked,
            RejectCode::SubscribersOnly,
            RejectCode::EmoteOnly,
        ] {
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::Value::String(c.as_str().into())
            );
        }
    }
}

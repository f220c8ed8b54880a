//! Moderation records shared by the write path, the moderation worker and the HTTP API: bans,
//! review-queue items, reports, the audit trail, and the actions that change what viewers see.

use serde::{Deserialize, Serialize};

use crate::bus::Author;
use crate::event::{Comment, Event};
use crate::ids::{StreamId, UserId};

/// Where a ban applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BanScope {
    Global,
    Stream(StreamId),
}

impl TryFrom<String> for BanScope {
    type Error = crate::ids::IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s == "global" {
            Ok(BanScope::Global)
        } else {
            StreamId::new(&s).map(BanScope::Stream)
        }
    }
}

impl From<BanScope> for String {
    fn from(s: BanScope) -> String {
        s.to_string()
    }
}

impl std::fmt::Display for BanScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BanScope::Global => f.write_str("global"),
            BanScope::Stream(s) => f.write_str(s.as_str()),
        }
    }
}

impl BanScope {
    /// Whether this scope covers posts to `stream`.
    pub fn covers(&self, stream: &StreamId) -> bool {
        match self {
            BanScope::Global => true,
            BanScope::Stream(s) => s == stream,
        }
    }
}

/// A ban of a user, everywhere or from one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub user: UserId,
    pub scope: BanScope,
    /// Shadow ban: posts are acknowledged but shown to nobody else.
    pub shadow: bool,
    /// End of the ban (ms since epoch); `None` is permanent.
    pub until: Option<i64>,
    pub reason: String,
    pub actor: String,
    pub at: i64,
}

impl Ban {
    pub fn active(&self, now_ms: i64) -> bool {
        self.until.is_none_or(|u| now_ms < u)
    }
}

/// Why a review-queue item exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// A rule held the post before anyone saw it; approving publishes it.
    Held,
    /// The model scored a delivered comment between the review and retract thresholds.
    Borderline,
    /// Viewers reported a delivered comment.
    Reported,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatus {
    Open,
    Approved,
    Retracted,
}

/// A post a rule held back, kept until a moderator decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPost {
    pub author: Author,
    pub text: String,
    pub client_msg_id: String,
    pub reply_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub user: UserId,
    pub reason: String,
    pub at: i64,
}

/// One entry of the review queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    /// ULID.
    pub id: String,
    pub stream: StreamId,
    pub kind: QueueKind,
    pub status: QueueStatus,
    pub created_at: i64,
    /// The comment concerned (not for held posts, which have no comment yet).
    pub comment_id: Option<String>,
    /// A snapshot of that comment for the moderator.
    pub comment: Option<Comment>,
    pub held: Option<HeldPost>,
    /// Model score, when the model looked at it.
    pub score: Option<f32>,
    /// Why it is in the queue (rule name, model, reports).
    pub reason: String,
    /// Reports from distinct users.
    #[serde(default)]
    pub reports: Vec<Report>,
    /// Hidden from viewers pending review (reports beyond the threshold).
    #[serde(default)]
    pub hidden: bool,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub decision_reason: Option<String>,
}

/// One line of the audit trail: every moderation action, by whom and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: i64,
    /// A user id, or `system:model`, `system:rules`, `system:reports`, `system:reputation`.
    pub actor: String,
    /// `retract`, `restore`, `hold`, `approve`, `reject`, `ban`, `unban`, `shadow_ban`,
    /// `report`, `hide`, `queue`.
    pub action: String,
    pub stream: Option<StreamId>,
    pub comment_id: Option<String>,
    pub user: Option<UserId>,
    pub reason: String,
}

/// Actors that are not people.
pub mod actors {
    pub const MODEL: &str = "system:model";
    pub const RULES: &str = "system:rules";
    pub const REPORTS: &str = "system:reports";
    pub const REPUTATION: &str = "system:reputation";
}

/// What a moderator decides about a queue item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Keep or publish the comment.
    Approve,
    /// Remove it (or never publish a held post); counts as a strike against the author.
    Retract,
}

/// A change to what viewers see, executed by the write path in stream order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    Retract {
        stream: StreamId,
        comment_id: String,
        reason: String,
        actor: String,
        /// Counts against the author's reputation.
        strike: bool,
    },
    Restore {
        stream: StreamId,
        comment_id: String,
        reason: String,
        actor: String,
    },
    Report {
        stream: StreamId,
        comment_id: String,
        reporter: UserId,
        reason: String,
    },
    Decide {
        item_id: String,
        decision: Decision,
        actor: String,
        reason: String,
    },
    /// The model's borderline score: a review-queue item for the comment.
    Flag {
        stream: StreamId,
        comment_id: String,
        score: f32,
        reason: String,
    },
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// The event published (retract, restore, or the comment of an approved held post).
    pub event: Option<Event>,
    /// The queue item created or changed.
    pub item: Option<QueueItem>,
    /// Whether anything changed (retracting a retracted comment changes nothing).
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ActionError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

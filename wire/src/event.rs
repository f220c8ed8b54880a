//! What viewers receive: comment events, delivery frames and the retained stream state.
//!
//! An event is serialized to JSON once, by the bridge, and travels as bytes from there on; the
//! broker node splices those bytes into a frame `{"v":1,"events":[...]}` without parsing them.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::ids::{StreamId, UserId};

/// Version of the delivery frame format.
pub const FRAME_VERSION: u32 = 1;

/// The author of a comment as viewers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: UserId,
    pub name: String,
}

/// An accepted comment, as delivered live and as served by replay and catch-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// Globally unique, time-sortable (ULID).
    pub id: String,
    /// Strictly increasing per stream; the order viewers see and the cursor for catch-up.
    pub seq: u64,
    pub stream: StreamId,
    pub user: UserRef,
    pub text: String,
    /// Wall-clock acceptance time, milliseconds since the Unix epoch.
    pub ts: i64,
    /// Milliseconds since the stream started: the position on the recording's timeline.
    pub offset_ms: u64,
    pub reply_to: Option<String>,
    /// Likes, in replay, catch-up and top lists (omitted when 0; live events start at 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub likes: u64,
    /// Direct replies, in replay, catch-up and top lists (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replies: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One event inside a delivery frame and in catch-up. Later features add variants; clients
/// ignore types they do not know. Every event has its own `seq` in the stream's sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Comment(Comment),
    /// Remove the comment `id` from view (abuse, moderation).
    Retract(Retraction),
    /// Show the comment `id` again (a retraction was overturned).
    Restore(Restoration),
}

/// `{"type":"retract","id":"<comment id>","seq":<this event's seq>,"reason":"..."}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retraction {
    /// The retracted comment.
    pub id: String,
    /// This event's position in the stream's sequence (after the comment's own `seq`).
    pub seq: u64,
    pub reason: String,
}

/// `{"type":"restore","id":"<comment id>","seq":<this event's seq>,"comment":{...}}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restoration {
    pub id: String,
    pub seq: u64,
    /// The comment as it was (with its original `seq`), so clients can show it again.
    pub comment: Comment,
}

impl Event {
    /// This event's position in the stream's sequence.
    pub fn seq(&self) -> u64 {
        match self {
            Event::Comment(c) => c.seq,
            Event::Retract(r) => r.seq,
            Event::Restore(r) => r.seq,
        }
    }
}

impl Event {
    /// Serializes the event once, for every delivery and frame it will be part of.
    pub fn to_bytes(&self) -> Bytes {
        // Serializing these plain structs cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A delivery frame as clients parse it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub v: u32,
    pub events: Vec<serde_json::Value>,
}

/// Builds `{"v":1,"events":[e1,e2,...]}` from already-serialized events without re-parsing.
pub fn encode_frame<'a>(events: impl IntoIterator<Item = &'a Bytes>) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(b"{\"v\":1,\"events\":[");
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(e);
    }
    out.put_slice(b"]}");
    out.freeze()
}

/// Lifecycle of a stream. It only moves forward: created → live → ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStatus {
    /// Created, not started: viewers may subscribe, nobody may post yet.
    Created,
    /// Accepting comments; `offset_ms` counts from the start.
    Live,
    /// Over: replay only.
    Ended,
}

/// The retained message on `streams/{stream}/state` (and the HTTP representation of a stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    pub id: StreamId,
    pub title: String,
    /// The broadcaster who created it (`None` for auto-created streams).
    #[serde(default)]
    pub owner: Option<UserId>,
    pub status: StreamStatus,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// Slow mode and chat mode, set by the broadcaster or moderators.
    #[serde(default)]
    pub settings: ChatSettings,
    /// The pinned comment (also the retained message on `streams/{stream}/pinned`).
    #[serde(default)]
    pub pinned: Option<Comment>,
    /// Incremented by every change; updates are compare-and-set on it.
    #[serde(default)]
    pub version: u64,
}

impl StreamState {
    /// A new stream record (status `created`).
    pub fn new(id: StreamId, title: String, owner: Option<UserId>, now: i64) -> StreamState {
        StreamState {
            id,
            title,
            owner,
            status: StreamStatus::Created,
            created_at: now,
            started_at: None,
            ended_at: None,
            settings: ChatSettings::default(),
            pinned: None,
            version: 0,
        }
    }
}

/// Who may post and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatMode {
    /// Everyone.
    #[default]
    Open,
    /// Only users whose token says `"subscriber": true` (and broadcasters and moderators).
    Subscribers,
    /// Only emoji.
    EmoteOnly,
}

/// A stream's chat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSettings {
    /// Seconds a user waits between comments (0 = off).
    #[serde(default)]
    pub slow_mode_s: u64,
    #[serde(default)]
    pub mode: ChatMode,
    /// Longest comment in characters (capped by the server's limit).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

fn default_max_length() -> usize {
    500
}

impl Default for ChatSettings {
    fn default() -> Self {
        ChatSettings {
            slow_mode_s: 0,
            mode: ChatMode::Open,
            max_length: default_max_length(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_event_has_the_documented_shape() {
        let e = Event::Comment(Comment {
            id: "01J".into(),
            seq: 17,
            stream: StreamId::new("s1").unwrap(),
            user: UserRef {
                id: UserId::new("u1").unwrap(),
                name: "Ann".into(),
            },
            text: "hi".into(),
            ts: 1_763_771_234_567,
            offset_ms: 93_120,
            reply_to: None,
            likes: 0,
            replies: 0,
        });
        let v: serde_json::Value = serde_json::from_slice(&e.to_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"comment","id":"01J","seq":17,"stream":"s1",
                "user":{"id":"u1","name":"Ann"},"text":"hi","ts":1_763_771_234_567_i64,
                "offset_ms":93_120,"reply_to":null})
        );
    }

    #[test]
    fn frames_splice_events() {
        let a = Bytes::from_static(b"{\"type\":\"comment\",\"seq\":1}");
        let b = Bytes::from_static(b"{\"type\":\"comment\",\"seq\":2}");
        let f: Frame = serde_json::from_slice(&encode_frame([&a, &b])).unwrap();
        assert_eq!(f.v, FRAME_VERSION);
        assert_eq!(f.events.len(), 2);
        assert_eq!(f.events[1]["seq"], 2);
        let empty: Frame = serde_json::from_slice(&encode_frame([])).unwrap();
        assert!(empty.events.is_empty());
    }
}

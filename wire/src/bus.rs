//! The bus between broker nodes and the write path.
//!
//! Two directions:
//! - **submissions**, node → bridge: a client's post, tagged with the identity the gatekeeper
//!   verified at CONNECT;
//! - **deliveries**, bridge/API → nodes: stream events (spliced into frames by the node), inbox
//!   answers, retained messages.
//!
//! [`MemoryBus`] is the embedded default: two bounded in-process queues. A distributed
//! implementation (Redis) provides the same trait.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::auth::{Identity, Role};
use crate::event::StreamState;
use crate::ids::{StreamId, UserId};
use crate::inbox::Outcome;
use crate::moderation::{Action, ActionError, ActionOutcome};
use crate::topics;

/// The verified author of a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub id: UserId,
    pub name: String,
    pub role: Role,
    pub subscriber: bool,
}

impl From<&Identity> for Author {
    fn from(i: &Identity) -> Self {
        Author {
            id: i.user.clone(),
            name: i.name.clone(),
            role: i.role,
            subscriber: i.subscriber,
        }
    }
}

/// Where a submission came from, which decides where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// MQTT: the answer goes to the author's inbox.
    Mqtt,
    /// HTTP: the answer is the response.
    Http,
}

/// What a client submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmissionKind {
    /// A comment: `{"text", "client_msg_id", "reply_to"}`.
    #[default]
    Post,
    /// A report of a comment: `{"comment_id", "reason"}`.
    Report,
    /// A like or unlike of a comment: `{"emoji", "comment_id", "remove"}`.
    Like,
}

/// A client's post or report before validation. The payload is the raw body; the bridge
/// parses it so that MQTT and HTTP submissions share one validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    #[serde(default)]
    pub kind: SubmissionKind,
    pub stream: StreamId,
    pub author: Author,
    pub payload: Bytes,
    pub origin: Origin,
    /// When the gatekeeper or API received it (ms since epoch), for latency metrics.
    pub received_at_ms: i64,
}

/// Something broker nodes publish to their local clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// One serialized event for `streams/{stream}/comments`; nodes batch these into frames.
    /// `received_at_ms` is when the post entered the system, for the post → publish metric.
    Stream {
        stream: StreamId,
        event: Bytes,
        /// The event's `seq`: nodes publish a stream's events in this order.
        seq: u64,
        received_at_ms: i64,
        /// Never dropped by sampling (moderation events, comments by the broadcaster and
        /// moderators, replies).
        keep: bool,
    },
    /// A plain (not retained, not batched) message, e.g. `streams/{stream}/reactions` or
    /// `.../presence`.
    Topic { topic: String, payload: Bytes },
    /// New like counts of comments; nodes add them to the next reactions frame.
    Likes {
        stream: StreamId,
        counts: Vec<(String, u64)>,
    },
    /// One message for `users/{user}/inbox`.
    Inbox { user: UserId, payload: Bytes },
    /// A retained message (e.g. `streams/{stream}/state`). Payload is never empty.
    /// `version` is the stream record's: publishes of concurrent changes can arrive out of
    /// order, and a node drops one older than the last it published on the topic.
    Retained {
        topic: String,
        payload: Bytes,
        version: u64,
    },
    /// A message for one user's connections that subscribed to `topic` (a shadow-banned
    /// author's own comments, which nobody else receives).
    Private {
        user: UserId,
        topic: String,
        payload: Bytes,
    },
}

impl Delivery {
    /// The retained `streams/{stream}/state` message for a stream record.
    pub fn stream_state(state: &StreamState) -> Delivery {
        Delivery::Retained {
            topic: topics::state(&state.id),
            payload: Bytes::from(serde_json::to_vec(state).unwrap_or_default()),
            version: state.version,
        }
    }

    /// The retained `streams/{stream}/pinned` message: `{"pinned": comment}` or
    /// `{"pinned": null}` (never an empty payload, which would delete the retained message).
    pub fn pinned(state: &StreamState) -> Delivery {
        let body = serde_json::json!({ "pinned": state.pinned });
        Delivery::Retained {
            topic: topics::pinned(&state.id),
            payload: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            version: state.version,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus is closed")]
    Closed,
    #[error("bus is full")]
    Full,
    #[error("{0} was already taken; only one consumer is supported")]
    AlreadyTaken(&'static str),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Who a delivery is for: the nodes watching a stream, or the node(s) of a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Stream(StreamId),
    User(UserId),
}

impl Delivery {
    /// The channel this delivery travels on.
    pub fn channel(&self) -> Option<Channel> {
        match self {
            Delivery::Stream { stream, .. } | Delivery::Likes { stream, .. } => {
                Some(Channel::Stream(stream.clone()))
            }
            Delivery::Inbox { user, .. } | Delivery::Private { user, .. } => {
                Some(Channel::User(user.clone()))
            }
            Delivery::Retained { topic, .. } | Delivery::Topic { topic, .. } => {
                topics::stream_of(topic).map(Channel::Stream)
            }
        }
    }
}

/// A request taken from the bus. Once it has been answered, its `receipt` is confirmed;
/// an unconfirmed request is handed to another consumer if this one dies.
#[derive(Debug)]
pub struct Received {
    pub request: Request,
    pub receipt: Option<String>,
}

/// What the write path is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// A client's submission from a node; answered on the author's inbox.
    Submission(Submission),
    /// A call from a process without a write path of its own (an API server, a moderation
    /// worker); answered to `reply_to`.
    Call { call: Call, reply_to: ReplyTo },
}

impl Received {
    /// A submission with nothing to confirm (the in-process bus).
    pub fn submission(submission: Submission) -> Received {
        Received {
            request: Request::Submission(submission),
            receipt: None,
        }
    }
}

/// A call to the write path over the bus: the [`crate::ingest::Ingest`] methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Call {
    Submit(Submission),
    Act(Action),
}

/// The result of a [`Call`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallResult {
    Submitted(Outcome),
    Acted(Box<Result<ActionOutcome, ActionError>>),
}

/// Where the result of a call goes: the caller's reply channel and its call id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    pub channel: String,
    pub id: u64,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Hands a submission to the write path. Fails fast when the bus cannot take it (full,
    /// unreachable), so a node can tell the client to retry instead of stalling.
    async fn submit(&self, submission: Submission) -> Result<(), BusError>;
    /// The write path's end of the submission queue.
    fn take_submissions(&self) -> Result<mpsc::Receiver<Received>, BusError>;
    /// Confirms that submissions were answered.
    async fn confirm(&self, _receipts: &[String]) -> Result<(), BusError> {
        Ok(())
    }
    /// Calls the write path of another process and waits at most `timeout` for the result.
    /// Only a shared bus has one; a process with its own write path calls it directly.
    async fn call(&self, _call: Call, _timeout: Duration) -> Result<CallResult, BusError> {
        Err(BusError::Unavailable(
            "this bus reaches no write path in another process".into(),
        ))
    }
    /// Sends a call's result back to its caller.
    async fn reply(&self, _to: &ReplyTo, _result: &CallResult) -> Result<(), BusError> {
        Ok(())
    }
    /// Publishes to broker nodes; waits while the nodes' queue is full (back-pressure).
    async fn deliver(&self, delivery: Delivery) -> Result<(), BusError>;
    /// A node's end of the delivery queue.
    fn take_deliveries(&self) -> Result<mpsc::Receiver<Delivery>, BusError>;
    /// This node has local interest in a channel (viewers of a stream, connections of a
    /// user); called on the first, `unwatch` after the last. A bus that delivers everything
    /// everywhere ignores these.
    fn watch(&self, _channel: Channel) {}
    fn unwatch(&self, _channel: Channel) {}
    /// Whether the bus can carry traffic now (readiness probes); an in-process bus always can.
    async fn ready(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// The in-process bus of the embedded default.
pub struct MemoryBus {
    submit_tx: mpsc::Sender<Received>,
    submit_rx: Mutex<Option<mpsc::Receiver<Received>>>,
    deliver_tx: mpsc::Sender<Delivery>,
    deliver_rx: Mutex<Option<mpsc::Receiver<Delivery>>>,
}

impl MemoryBus {
    /// `capacity` bounds each direction; a full submission queue rejects with `unavailable`.
    pub fn new(capacity: usize) -> Self {
        let (submit_tx, submit_rx) = mpsc::channel(capacity);
        let (deliver_tx, deliver_rx) = mpsc::channel(capacity);
        MemoryBus {
            submit_tx,
            submit_rx: Mutex::new(Some(submit_rx)),
            deliver_tx,
            deliver_rx: Mutex::new(Some(deliver_rx)),
        }
    }
}

fn take<T>(slot: &Mutex<Option<T>>, what: &'static str) -> Result<T, BusError> {
    slot.lock()
        .map_err(|_| BusError::Closed)?
        .take()
        .ok_or(BusError::AlreadyTaken(what))
}

#[async_trait]
impl Bus for MemoryBus {
    async fn submit(&self, submission: Submission) -> Result<(), BusError> {
        self.submit_tx
            .try_send(Received::submission(submission))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => BusError::Full,
                mpsc::error::TrySendError::Closed(_) => BusError::Closed,
            })
    }

    fn take_submissions(&self) -> Result<mpsc::Receiver<Received>, BusError> {
        take(&self.submit_rx, "submissions")
    }

    async fn deliver(&self, delivery: Delivery) -> Result<(), BusError> {
        self.deliver_tx
            .send(delivery)
            .await
            .map_err(|_| BusError::Closed)
    }

    fn take_deliveries(&self) -> Result<mpsc::Receiver<Delivery>, BusError> {
        take(&self.deliver_rx, "deliveries")
    }
}

//! Settings of a node: `[mqtt]`, `[ws]`, `[delivery]`.

use serde::{Deserialize, Serialize};

/// `[mqtt]` — the MQTT 3.1.1 TCP listener and limits shared by both listeners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    /// 0 picks a free port (the chosen one is logged and written to endpoints.json).
    pub port: u16,
    /// Open client connections per node (TCP + WebSocket), including unfinished handshakes.
    pub max_connections: usize,
    /// Largest MQTT packet a client may send, in bytes.
    pub max_packet_size: usize,
    /// Time a new connection has to send CONNECT (and finish the WebSocket handshake).
    pub connect_timeout_ms: u64,
    /// A client that accepts no bytes for this long is disconnected.
    pub write_timeout_ms: u64,
    /// Posts one connection may send per second (0 = unlimited); beyond it posts are answered
    /// `rate_limited` by the node without reaching the write path.
    pub max_posts_per_second: u32,
    /// Frames queued per viewer whose socket is full before its oldest queued ones are dropped
    /// (it sees the `seq` gap and catches up over HTTP with `after_seq`).
    pub backlog_frames: usize,
    /// Settings of the rumqttd router the node no longer uses (ignored, with a warning at
    /// start, so configuration files written for it still load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_count: Option<u64>,
}

/// `[ws]` — MQTT over WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// HTTP path of the upgrade request.
    pub path: String,
}

/// `[delivery]` — how a node batches stream events into frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// A stream's events are coalesced for this long into one frame. The first event after a
    /// quiet window goes out at once, so a lone comment is not delayed.
    pub batch_window_ms: u64,
    /// A frame is sent early when it holds this many events.
    pub max_frame_events: usize,
    /// Frames are split to stay under this many bytes (a single larger event still goes out
    /// alone). Many MQTT clients refuse large packets (rumqttc: 10 KiB by default).
    pub max_frame_bytes: usize,
    /// Frame writes per second the node aims to stay under: a stream with many local viewers
    /// gets a longer batch window (viewers / this, in seconds, when that is longer than
    /// `batch_window_ms`), so a big audience gets fewer, fuller frames instead of more writes
    /// than the machine can make. 0 = always `batch_window_ms`.
    pub max_writes_per_s: u64,
    /// Above this many comments per second in one stream, live delivery keeps a fraction
    /// (always keeping the broadcaster's, moderators' and replies); 0 turns sampling off.
    pub sampling_threshold_per_s: u32,
    /// Events of a stream are published in `seq` order: one that arrives ahead of a missing
    /// `seq` (several bridges of a cluster publish concurrently) waits at most this long for
    /// it; a `seq` that never comes (a failed write) then stops holding the others.
    pub reorder_wait_ms: u64,
}

/// `[reactions]` — emoji reactions, aggregated per node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactionsConfig {
    /// Emoji a client may send; others are dropped (and counted).
    pub allowed: Vec<String>,
    /// With a `comment_id`, this emoji likes the comment.
    pub like_emoji: String,
    /// Counts are published (and added to the totals) this often while anything happens.
    pub window_ms: u64,
    /// Reactions one user may send per second; more are dropped (and counted). 0 = no limit.
    pub per_user_per_second: u32,
}

/// `[presence]` — viewer counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// Counts are published this often while they change.
    pub interval_ms: u64,
}

/// Everything a node reads from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    pub mqtt: MqttConfig,
    pub ws: WsConfig,
    pub delivery: DeliveryConfig,
    pub reactions: ReactionsConfig,
    pub presence: PresenceConfig,
}

impl BrokerConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.mqtt.max_connections == 0 {
            errors.push("mqtt.max_connections must be at least 1".into());
        }
        if self.mqtt.max_packet_size < 1024 {
            errors.push("mqtt.max_packet_size must be at least 1024".into());
        }
        if self.mqtt.connect_timeout_ms == 0 || self.mqtt.write_timeout_ms == 0 {
            errors.push(
                "mqtt.connect_timeout_ms and mqtt.write_timeout_ms must be at least 1".into(),
            );
        }
        if !(1..=1 << 20).contains(&self.mqtt.backlog_frames) {
            errors.push("mqtt.backlog_frames must be between 1 and 1048576".into());
        }
        if !self.ws.path.starts_with('/') {
            errors.push("ws.path must start with '/'".into());
        }
        if self.ws.enabled && self.ws.port != 0 && self.ws.port == self.mqtt.port {
            errors.push("ws.port and mqtt.port must differ".into());
        }
        if self.delivery.max_frame_events == 0 {
            errors.push("delivery.max_frame_events must be at least 1".into());
        }
        if self.delivery.max_frame_bytes < 1024 {
            errors.push("delivery.max_frame_bytes must be at least 1024".into());
        }
        if self.reactions.window_ms < 50 || self.presence.interval_ms < 100 {
            errors.push("reactions.window_ms must be >= 50 and presence.interval_ms >= 100".into());
        }
        if self.reactions.allowed.is_empty() {
            errors.push("reactions.allowed must list at least one emoji".into());
        }
        errors
    }
}

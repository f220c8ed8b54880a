//! One livecomments MQTT node.
//!
//! Everything is ours but the MQTT framing (rumqttc's codec): the node accepts connections
//! itself (TCP and WebSocket), speaks MQTT 3.1.1, and fans frames out to its subscribers
//! from fan-out threads that write the sockets themselves. Until 2026-12 the fan-out was an embedded rumqttd
//! router (the design's choice); it was replaced because every rumqttd link reserves fixed
//! per-link queues (~40 KB of RSS per idle viewer, measured in docs/benchmarks.md §2) and
//! never frees its filter logs, and because its `Server` has no authorization, does not say
//! who published, blocks WebSocket handshakes behind one slow client and cannot be shut down
//! (../shared/DESIGN.md §5). See docs/architecture.md.
//!
//! The gatekeeper, per connection:
//! - verifies the JWT at CONNECT (password) and answers a refused CONNACK otherwise;
//! - lets clients publish only to `streams/{stream}/post` (and `report`, `react`); those posts
//!   are tagged with the verified identity and handed to the write path via the bus, never
//!   fanned out directly; any other publish closes the connection (a forged broadcast never
//!   reaches anyone);
//! - lets clients subscribe only inside one concrete, existing stream, and to their own inbox,
//!   which is served by the node directly (refused filters get SUBACK failure `0x80`);
//! - applies MQTT's takeover to the same user reconnecting with the same client id; one
//!   user's client ids never touch another user's sessions.
//!
//! # Layout
//! - [`config`] — `[mqtt]`, `[ws]` and `[delivery]` settings.
//! - `listener` — accept loops, connection limit, WebSocket handshake with a timeout.
//! - `transport` — one byte-stream interface over TCP and WebSocket.
//! - `connection` — the per-connection gatekeeper and its loop.
//! - `fanout` — one thread per core writing frames to its share of the connections' sockets
//!   (queueing for a full one), per concrete topic; retained messages.
//! - `registry` — takeover map, direct messages (inbox, private frames).
//! - `relay` — bus deliveries → per-stream frames (with sampling under load) → fan-out; inbox,
//!   retained and plain messages.
//! - `reactions` — emoji reactions counted per node, flushed once per window.
//! - `presence` — viewers per stream and distinct users (HyperLogLog).

pub mod config;
mod connection;
mod fanout;
mod listener;
mod presence;
mod reactions;
mod registry;
mod relay;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::auth::JwtKeys;
use wire::bus::Bus;
use wire::streams::StreamDirectory;

pub use config::{
    BrokerConfig, DeliveryConfig, MqttConfig, PresenceConfig, ReactionsConfig, WsConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bus(#[from] wire::bus::BusError),
}

/// What a node needs from the rest of the process.
#[derive(Clone)]
pub struct BrokerDeps {
    pub bus: Arc<dyn Bus>,
    pub keys: JwtKeys,
    pub streams: StreamDirectory,
    /// Subscriptions to unknown streams are allowed (they are created on first post).
    pub auto_create_streams: bool,
    /// Where the node leaves its viewer counts for the HTTP API.
    pub presence: wire::presence::PresenceBoard,
    /// The cluster's reaction windows (none in one process).
    pub shared_reactions: Option<Arc<dyn wire::reactions::SharedReactions>>,
}

/// Shutdown phases of a node.
#[derive(Clone, Default)]
pub struct NodeShutdown {
    /// Stop accepting connections and stop reading from clients: nothing new enters.
    pub intake: CancellationToken,
    /// Publish what the bus still holds, then stop relaying.
    pub relay: CancellationToken,
    /// Close every client connection.
    pub close: CancellationToken,
}

/// A running node.
pub struct Node {
    pub mqtt_addr: SocketAddr,
    pub ws_addr: Option<SocketAddr>,
    relay: JoinHandle<()>,
    fanout: Arc<fanout::Fanout>,
    connections: TaskTracker,
    readers: TaskTracker,
}

impl Node {
    /// Binds the listeners and starts the relay and the accept loops.
    pub async fn start(
        config: BrokerConfig,
        deps: BrokerDeps,
        shutdown: NodeShutdown,
    ) -> Result<Node, BrokerError> {
        if config.mqtt.segment_size.is_some() || config.mqtt.segment_count.is_some() {
            tracing::warn!(
                "mqtt.segment_size and mqtt.segment_count are ignored: the node fans out itself \
                 (see mqtt.backlog_frames)"
            );
        }
        let fanout = Arc::new(fanout::Fanout::new(0, config.mqtt.backlog_frames));
        let registry = Arc::new(registry::Registry::default());
        let connections = TaskTracker::new();
        let readers = TaskTracker::new();
        let reactions = Arc::new(reactions::Reactions::new(&config.reactions));
        let viewers = Arc::new(presence::Viewers::default());
        let (local_tx, local_rx) = tokio::sync::mpsc::channel(1024);
        let ctx = Arc::new(connection::NodeCtx {
            local: local_tx,
            config: config.clone(),
            deps: deps.clone(),
            fanout: fanout.clone(),
            registry: registry.clone(),
            shutdown: shutdown.clone(),
            readers: readers.clone(),
            reactions: reactions.clone(),
            viewers: viewers.clone(),
        });
        let shared = deps
            .shared_reactions
            .clone()
            .map(|windows| reactions::Shared {
                windows,
                viewers: viewers.clone(),
                local: ctx.local.clone(),
                published: Default::default(),
            });
        let flusher = Arc::new(reactions::Flusher::new(
            reactions.clone(),
            deps.streams.store().clone(),
            deps.bus.clone(),
            config.reactions.window_ms,
            shared,
        ));
        tokio::spawn(reactions::run(flusher.clone(), shutdown.relay.clone()));
        tokio::spawn(presence::run(
            viewers.clone(),
            deps.presence.clone(),
            std::time::Duration::from_millis(config.presence.interval_ms),
            deps.bus.clone(),
            ctx.local.clone(),
            shutdown.relay.clone(),
        ));

        let tcp = listener::bind(&config.mqtt.host, config.mqtt.port).await?;
        let mqtt_addr = tcp.local_addr().map_err(|source| BrokerError::Bind {
            addr: format!("{}:{}", config.mqtt.host, config.mqtt.port),
            source,
        })?;
        let limit = Arc::new(tokio::sync::Semaphore::new(config.mqtt.max_connections));
        tracing::info!(addr = %mqtt_addr, "mqtt listener ready");
        tokio::spawn(listener::accept_loop(
            tcp,
            listener::Kind::Tcp,
            ctx.clone(),
            limit.clone(),
            connections.clone(),
        ));

        let ws_addr = if config.ws.enabled {
            let ws = listener::bind(&config.ws.host, config.ws.port).await?;
            let addr = ws.local_addr().map_err(|source| BrokerError::Bind {
                addr: format!("{}:{}", config.ws.host, config.ws.port),
                source,
            })?;
            tracing::info!(addr = %addr, path = %config.ws.path, "mqtt-over-websocket listener ready");
            tokio::spawn(listener::accept_loop(
                ws,
                listener::Kind::WebSocket,
                ctx.clone(),
                limit,
                connections.clone(),
            ));
            Some(addr)
        } else {
            None
        };

        let deliveries = deps.bus.take_deliveries()?;
        let relay = tokio::spawn(relay::run(
            deliveries,
            local_rx,
            relay::RelayTo {
                fanout: fanout.clone(),
                registry,
                reactions: flusher,
                viewers: viewers.clone(),
            },
            config.delivery.clone(),
            shutdown.relay.clone(),
        ));

        Ok(Node {
            mqtt_addr,
            ws_addr,
            relay,
            fanout,
            connections,
            readers,
        })
    }

    /// Waits until no connection reads from its client any more (after `shutdown.intake`), so
    /// that every post a client got a PUBACK for is on the bus.
    pub async fn intake_stopped(&self) {
        self.readers.close();
        self.readers.wait().await;
    }

    /// Waits for the relay to flush (after `shutdown.relay`), then for the fan-out threads to
    /// have written (or queued for slow connections) every frame the relay handed them.
    pub async fn relay_finished(&mut self) {
        let _ = (&mut self.relay).await;
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.fanout.flushed())
            .await
            .is_err()
        {
            tracing::warn!("the fan-out threads had not written the last frames after 5 s");
        }
    }

    /// Waits until every connection task ended (after `shutdown.close`).
    pub async fn connections_closed(&self) {
        self.connections.close();
        self.connections.wait().await;
    }
}

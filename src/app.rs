//! `livecomments up`: the roles of this process (all of them by default), started and
//! stopped in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bridge::bus::redis::{RedisBus, RedisBusConfig};
use bridge::remote::RemoteIngest;
use bridge::store::{CassandraStore, EmbeddedOptions, EmbeddedStore};
use bridge::{Bridge, BridgeDeps, BridgeShutdown};
use broker::{BrokerDeps, Node, NodeShutdown};
use playback_api::AppState;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::auth::JwtKeys;
use wire::bus::{Bus, MemoryBus};
use wire::store::Store;
use wire::streams::StreamDirectory;

use crate::config::{AppConfig, BusBackend, ClusterRole, StoreBackend};
use crate::keys::load_or_create_secret;
use crate::telemetry;

/// Moderation workers of a cluster take over a silent worker's comments after this long at
/// least (`bus.redis.claim_idle_ms` if longer): it must exceed the time to score a batch, or a
/// slow worker's comments would be scored twice.
const MODERATION_CLAIM_IDLE: Duration = Duration::from_secs(30);

/// Where a running system listens; also written to `data_dir/endpoints.json`. A process of a
/// cluster has only the endpoints of its roles.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Endpoints {
    pub mqtt: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
}

/// A running system, or the part of a cluster this process runs.
pub struct Running {
    pub endpoints: Endpoints,
    pub keys: JwtKeys,
    node: Option<RunningNode>,
    http: Option<JoinHandle<()>>,
    /// Stops HTTP intake; the node's intake token when there is a node.
    intake: CancellationToken,
    bridge: Option<RunningBridge>,
    moderation: Option<RunningModeration>,
    /// Ends the bus's background tasks (Redis pub/sub and consumers), last.
    bus_stop: CancellationToken,
    store: Arc<dyn Store>,
}

struct RunningModeration {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// A cluster worker's acknowledgements of what it scored (the Redis feed).
    acknowledged: Option<JoinHandle<()>>,
}

struct RunningNode {
    node: Node,
    shutdown: NodeShutdown,
}

struct RunningBridge {
    stop: BridgeShutdown,
    bridge: Bridge,
    tasks: bridge::BridgeTasks,
    /// Hands accepted comments to other processes' moderation workers (cluster).
    forward: Option<JoinHandle<()>>,
}

/// Starts the roles of `config.cluster.roles` in this process: all of them (the embedded
/// default) or some (a process of a cluster).
pub async fn start(config: AppConfig) -> anyhow::Result<Running> {
    let secret = load_or_create_secret(&config)?;
    let keys = JwtKeys::new(&secret);
    let metrics = telemetry::metrics();
    let roles = &config.cluster;
    let node_id = roles.node_id();

    let store: Arc<dyn Store> = match config.store.backend {
        StoreBackend::Embedded => {
            let path = config.store_path();
            let options = EmbeddedOptions {
                quick_repair: config.store.quick_repair,
                dedup_window: Duration::from_secs(config.store.dedup_window_s),
                dedup_max_entries: config.store.dedup_max_entries,
            };
            let store = EmbeddedStore::open_with(&path, options)
                .with_context(|| format!("opening the store at {}", path.display()))?;
            tracing::info!(path = %path.display(), "embedded store open");
            Arc::new(store)
        }
        StoreBackend::Cassandra => {
            let c = &config.store.cassandra;
            // Creates the keyspace and its tables when missing (safe when several processes
            // start at once), then prepares every statement.
            let store = CassandraStore::connect(c).await.with_context(|| {
                format!(
                    "connecting to Cassandra at {} (keyspace {})",
                    c.nodes.join(","),
                    c.keyspace
                )
            })?;
            Arc::new(store)
        }
    };
    let bus_stop = CancellationToken::new();
    let mut redis_client = None;
    let bus: Arc<dyn Bus> = match config.bus.backend {
        BusBackend::Memory => Arc::new(MemoryBus::new(config.bus.queue_capacity)),
        BusBackend::Redis => {
            let r = &config.bus.redis;
            let bus = RedisBus::connect(
                RedisBusConfig {
                    url: r.url.clone(),
                    prefix: r.prefix.clone(),
                    claim_idle_ms: r.claim_idle_ms,
                    unwatch_linger_ms: r.unwatch_linger_ms,
                    queue_capacity: config.bus.queue_capacity,
                },
                node_id.clone(),
                bus_stop.clone(),
            )
            .await
            .with_context(|| format!("connecting to Redis at {}", r.url))?;
            tracing::info!(url = %r.url, node = %node_id, "redis bus connected");
            redis_client = Some(redis::Client::open(r.url.as_str())?);
            Arc::new(bus)
        }
    };
    let streams = StreamDirectory::new(store.clone());

    // The write path: here, or a bridge of the cluster reached over the bus.
    let (accepted_tx, accepted_rx) = tokio::sync::mpsc::channel(4096);
    let mut accepted_rx = Some(accepted_rx);
    let (bridge, ingest): (Option<RunningBridge>, Arc<dyn wire::ingest::Ingest>) =
        if roles.runs(ClusterRole::Bridge) {
            let (count, window) = (
                config.bridge.rate_limit_count,
                Duration::from_secs(config.bridge.rate_limit_window_s),
            );
            // Numbering, limits, claims and like sets: in memory (or the store) for one
            // bridge, shared in Redis by the bridges of a cluster.
            let mut deps = BridgeDeps {
                store: store.clone(),
                bus: bus.clone(),
                streams: streams.clone(),
                moderation: Arc::new(moderation::Moderation::new(config.moderation.clone())),
                accepted: Some(accepted_tx),
                sequencer: Arc::new(bridge::sequence::MemorySequencer::default()),
                limits: Arc::new(bridge::limits::LocalLimits::new(count, window)),
                claims: Arc::new(bridge::claims::LocalClaims::default()),
                likes: Arc::new(bridge::likes::StoreLikes),
            };
            if let Some(client) = &redis_client {
                let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
                let prefix = config.bus.redis.prefix.clone();
                deps.claims = Arc::new(
                    bridge::claims::RedisClaims::start(
                        conn.clone(),
                        prefix.clone(),
                        &node_id,
                        bus_stop.clone(),
                    )
                    .await?,
                );
                deps.sequencer = Arc::new(bridge::sequence::RedisSequencer::new(
                    conn.clone(),
                    prefix.clone(),
                ));
                deps.limits = Arc::new(bridge::limits::RedisLimits::new(
                    conn.clone(),
                    prefix.clone(),
                    count,
                    window,
                ));
                deps.likes = Arc::new(bridge::likes::RedisLikes::new(conn, prefix));
            }
            let stop = BridgeShutdown::default();
            let (bridge, tasks) = Bridge::start(config.bridge.clone(), deps, stop.clone())?;
            let forward = match (&redis_client, roles.runs(ClusterRole::Moderation)) {
                (Some(client), false) => Some(tokio::spawn(bridge::bus::redis::forward_accepted(
                    client.clone(),
                    config.bus.redis.prefix.clone(),
                    accepted_rx.take().expect("taken once"),
                ))),
                _ => None,
            };
            let ingest = Arc::new(bridge.clone());
            (
                Some(RunningBridge {
                    stop,
                    bridge,
                    tasks,
                    forward,
                }),
                ingest,
            )
        } else {
            drop(accepted_tx);
            (None, Arc::new(RemoteIngest::new(bus.clone())))
        };

    let moderation = if roles.runs(ClusterRole::Moderation) {
        let scorer = load_scorer(&config.moderation.model)?;
        let stop = CancellationToken::new();
        let (input, acknowledged) = match (bridge.is_some(), &redis_client) {
            (true, _) => (accepted_rx.take().expect("taken once"), None),
            (false, Some(client)) => {
                let feed = bridge::bus::redis::accepted_feed(
                    client.clone(),
                    config.bus.redis.prefix.clone(),
                    node_id.clone(),
                    config.moderation.model.batch_size,
                    // A batch is scored in well under this; a dead worker's entries wait as long.
                    Duration::from_millis(config.bus.redis.claim_idle_ms)
                        .max(MODERATION_CLAIM_IDLE),
                    stop.clone(),
                );
                (feed.comments, Some(feed.acknowledged))
            }
            (false, None) => {
                anyhow::bail!("a moderation worker without a bridge needs the redis bus")
            }
        };
        let task = tokio::spawn(moderation::run(
            config.moderation.model.clone(),
            input,
            scorer,
            ingest.clone(),
            stop.clone(),
        ));
        Some(RunningModeration {
            stop,
            task,
            acknowledged,
        })
    } else {
        None
    };

    // One process counts its own viewers and reactions; the nodes of a cluster sum theirs in
    // Redis.
    let (presence, shared_reactions) = match &redis_client {
        None => (wire::presence::PresenceBoard::default(), None),
        Some(client) => {
            let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
            let prefix = config.bus.redis.prefix.clone();
            let presence = wire::presence::PresenceBoard::clustered(Arc::new(
                bridge::bus::RedisPresence::new(
                    conn.clone(),
                    prefix.clone(),
                    node_id.clone(),
                    Duration::from_millis(config.presence.interval_ms),
                ),
            ));
            let reactions: Arc<dyn wire::reactions::SharedReactions> =
                Arc::new(bridge::bus::RedisReactions::new(conn, prefix));
            (presence, Some(reactions))
        }
    };
    let node_shutdown = NodeShutdown::default();
    let node = if roles.runs(ClusterRole::Broker) {
        let node = Node::start(
            config.broker(),
            BrokerDeps {
                bus: bus.clone(),
                keys: keys.clone(),
                streams: streams.clone(),
                auto_create_streams: config.bridge.auto_create_streams,
                presence: presence.clone(),
                shared_reactions: shared_reactions.clone(),
            },
            node_shutdown.clone(),
        )
        .await?;
        Some(RunningNode {
            node,
            shutdown: node_shutdown.clone(),
        })
    } else {
        None
    };

    let (http_addr, http) = if roles.runs(ClusterRole::Api) {
        let (addr, task) = playback_api::run(
            &config.http,
            AppState {
                streams,
                ingest,
                bus,
                keys: keys.clone(),
                metrics,
                max_page: config.http.max_page,
                max_comment_chars: config.bridge.max_comment_chars,
                presence,
                reactions: shared_reactions,
            },
            node_shutdown.intake.clone(),
        )
        .await?;
        (Some(addr), Some(task))
    } else {
        (None, None)
    };

    let endpoints = Endpoints {
        mqtt: node.as_ref().map(|n| n.node.mqtt_addr),
        ws: node.as_ref().and_then(|n| n.node.ws_addr),
        http: http_addr,
    };
    write_endpoints(&config, &endpoints)?;
    tracing::info!(
        mqtt = ?endpoints.mqtt,
        ws = ?endpoints.ws,
        http = ?endpoints.http,
        roles = ?config.cluster.roles,
        "livecomments is up"
    );
    Ok(Running {
        endpoints,
        keys,
        node,
        http,
        intake: node_shutdown.intake,
        bridge,
        moderation,
        bus_stop,
        store,
    })
}

/// Where `scripts/install-onnxruntime` puts the runtime library.
fn default_onnxruntime() -> std::path::PathBuf {
    let cache = std::env::var_os("LIVECOMMENTS_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/livecomments"))
        })
        .unwrap_or_else(|| ".cache/livecomments".into());
    cache.join("onnxruntime/libonnxruntime.so.1.31.1")
}

/// The ONNX Runtime library: configured, `$ORT_DYLIB_PATH`, or the install script's place.
pub fn onnxruntime_path(config: &moderation::ModelConfig) -> std::path::PathBuf {
    if !config.onnxruntime.is_empty() {
        return config.onnxruntime.clone().into();
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => p.into(),
        _ => default_onnxruntime(),
    }
}

/// The toxicity model, when enabled. A missing runtime library is an error with a way out,
/// not a silent downgrade of moderation.
fn load_scorer(
    config: &moderation::ModelConfig,
) -> anyhow::Result<Option<Box<dyn moderation::Scorer>>> {
    if !config.enabled {
        tracing::warn!("the toxicity model is disabled (moderation.model.enabled = false)");
        return Ok(None);
    }
    let path = onnxruntime_path(config);
    let model = moderation::model::ToxicityModel::load(&path).with_context(|| {
        format!(
            "loading the toxicity model with ONNX Runtime at {}; run scripts/install-onnxruntime, \
             set moderation.model.onnxruntime or ORT_DYLIB_PATH, or set \
             moderation.model.enabled = false",
            path.display()
        )
    })?;
    tracing::info!(runtime = %path.display(), "toxicity model loaded");
    Ok(Some(Box::new(model)))
}

fn write_endpoints(config: &AppConfig, endpoints: &Endpoints) -> anyhow::Result<()> {
    let path = config.data_path("endpoints.json");
    let tmp = config.data_path("endpoints.json.tmp");
    // With a configured key and a shared store nothing else has created it.
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    std::fs::write(&tmp, serde_json::to_vec_pretty(endpoints)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl Running {
    /// Stops in an order that loses nothing: stop intake (listeners, client reads, HTTP), let
    /// the write path store and answer everything already accepted, publish what is queued,
    /// then close client connections. Roles this process does not run are skipped.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        self.intake.cancel();
        if let Some(n) = &self.node {
            if tokio::time::timeout(Duration::from_secs(10), n.node.intake_stopped())
                .await
                .is_err()
            {
                tracing::warn!("some connections were still reading 10 s after intake stopped");
            }
        }
        if let Some(http) = &mut self.http {
            if tokio::time::timeout(Duration::from_secs(10), http)
                .await
                .is_err()
            {
                tracing::warn!("http requests still running 10 s after shutdown began");
            }
        }
        // The write path stores everything already received, then moderation scores what it
        // was given (its retractions still go through the writer), then the writer stops.
        if let Some(b) = &mut self.bridge {
            b.stop.consumer.cancel();
            let _ = (&mut b.tasks.consumer).await;
            b.bridge.flush().await;
        }
        if let Some(m) = &mut self.moderation {
            m.stop.cancel();
            let _ = (&mut m.task).await;
            if let Some(acked) = &mut m.acknowledged {
                if tokio::time::timeout(Duration::from_secs(5), acked)
                    .await
                    .is_err()
                {
                    tracing::warn!("moderation acknowledgements still pending 5 s after stop");
                }
            }
        }
        if let Some(b) = &mut self.bridge {
            b.stop.writer.cancel();
            let _ = (&mut b.tasks.writer).await;
            if let Some(forward) = &mut b.forward {
                let _ = forward.await;
            }
        }
        if let Some(n) = &mut self.node {
            n.shutdown.relay.cancel();
            n.node.relay_finished().await;
            // Give connections a moment to write the last frames and answers.
            tokio::time::sleep(Duration::from_millis(200)).await;
            n.shutdown.close.cancel();
            if tokio::time::timeout(Duration::from_secs(5), n.node.connections_closed())
                .await
                .is_err()
            {
                tracing::warn!("some connections did not close within 5 s");
            }
        }
        self.bus_stop.cancel();
        drop(self.store);
        tracing::info!("stopped");
    }
}

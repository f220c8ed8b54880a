//! `livecomments up`: every component in one process, started and stopped in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bridge::store::EmbeddedStore;
use bridge::{Bridge, BridgeDeps, BridgeShutdown};
use broker::{BrokerDeps, Node, NodeShutdown};
use playback_api::AppState;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::auth::JwtKeys;
use wire::bus::{Bus, Delivery, MemoryBus};
use wire::store::Store;
use wire::streams::StreamDirectory;

use crate::config::{AppConfig, BusBackend, StoreBackend};
use crate::keys::load_or_create_secret;
use crate::telemetry;

/// Where a running system listens; also written to `data_dir/endpoints.json`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Endpoints {
    pub mqtt: SocketAddr,
    pub ws: Option<SocketAddr>,
    pub http: SocketAddr,
}

/// A running system.
pub struct Running {
    pub endpoints: Endpoints,
    pub keys: JwtKeys,
    node: Node,
    node_shutdown: NodeShutdown,
    http: JoinHandle<()>,
    bridge_stop: BridgeShutdown,
    bridge: Bridge,
    bridge_tasks: bridge::BridgeTasks,
    moderation_stop: CancellationToken,
    moderation: JoinHandle<()>,
    store: Arc<dyn Store>,
}

/// Starts broker node, write path, moderation hooks and HTTP API in this process.
pub async fn start(config: AppConfig) -> anyhow::Result<Running> {
    let secret = load_or_create_secret(&config)?;
    let keys = JwtKeys::new(&secret);
    let metrics = telemetry::metrics();

    let store: Arc<dyn Store> = match config.store.backend {
        StoreBackend::Embedded => {
            let path = config.store_path();
            let store = EmbeddedStore::open(&path, config.store.quick_repair)
                .with_context(|| format!("opening the store at {}", path.display()))?;
            tracing::info!(path = %path.display(), "embedded store open");
            Arc::new(store)
        }
    };
    let bus: Arc<dyn Bus> = match config.bus.backend {
        BusBackend::Memory => Arc::new(MemoryBus::new(config.bus.queue_capacity)),
    };
    let streams = StreamDirectory::new(store.clone());

    let moderation = Arc::new(moderation::Moderation::new(config.moderation.clone()));
    let scorer = load_scorer(&config.moderation.model)?;
    let (accepted_tx, accepted_rx) = tokio::sync::mpsc::channel(4096);

    let bridge_stop = BridgeShutdown::default();
    let (bridge, bridge_tasks) = Bridge::start(
        config.bridge.clone(),
        BridgeDeps {
            store: store.clone(),
            bus: bus.clone(),
            streams: streams.clone(),
            moderation,
            accepted: Some(accepted_tx),
            sequencer: Arc::new(bridge::sequence::MemorySequencer::default()),
        },
        bridge_stop.clone(),
    )?;
    let bridge_handle = bridge.clone();
    let bridge: Arc<dyn wire::ingest::Ingest> = Arc::new(bridge);
    let moderation_stop = CancellationToken::new();
    let moderation_task = tokio::spawn(moderation::run(
        config.moderation.model.clone(),
        accepted_rx,
        scorer,
        bridge.clone(),
        moderation_stop.clone(),
    ));

    let presence = wire::presence::PresenceBoard::default();
    let node_shutdown = NodeShutdown::default();
    let node = Node::start(
        config.broker(),
        BrokerDeps {
            bus: bus.clone(),
            keys: keys.clone(),
            streams: streams.clone(),
            auto_create_streams: config.bridge.auto_create_streams,
            presence: presence.clone(),
        },
        node_shutdown.clone(),
    )
    .await?;

    // Retained stream states and pins live in the router's memory: publish them again after a
    // start.
    for s in store.list_streams().await? {
        bus.deliver(Delivery::stream_state(&s)).await?;
        if s.pinned.is_some() {
            bus.deliver(Delivery::pinned(&s)).await?;
        }
    }

    let (http_addr, http) = playback_api::run(
        &config.http,
        AppState {
            streams,
            ingest: bridge,
            bus,
            keys: keys.clone(),
            metrics,
            max_page: config.http.max_page,
            max_comment_chars: config.bridge.max_comment_chars,
            presence,
        },
        node_shutdown.intake.clone(),
    )
    .await?;

    let endpoints = Endpoints {
        mqtt: node.mqtt_addr,
        ws: node.ws_addr,
        http: http_addr,
    };
    write_endpoints(&config, &endpoints)?;
    tracing::info!(
        mqtt = %endpoints.mqtt,
        ws = ?endpoints.ws,
        http = %endpoints.http,
        "livecomments is up"
    );
    Ok(Running {
        endpoints,
        keys,
        node,
        node_shutdown,
        http,
        bridge_stop,
        bridge: bridge_handle,
        bridge_tasks,
        moderation_stop,
        moderation: moderation_task,
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
    std::fs::write(&tmp, serde_json::to_vec_pretty(endpoints)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl Running {
    /// Stops in an order that loses nothing: stop intake (listeners, client reads, HTTP), let
    /// the write path store and answer everything already accepted, publish what is queued,
    /// then close client connections.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        self.node_shutdown.intake.cancel();
        if tokio::time::timeout(Duration::from_secs(10), self.node.intake_stopped())
            .await
            .is_err()
        {
            tracing::warn!("some connections were still reading 10 s after intake stopped");
        }
        if tokio::time::timeout(Duration::from_secs(10), &mut self.http)
            .await
            .is_err()
        {
            tracing::warn!("http requests still running 10 s after shutdown began");
        }
        // The write path stores everything already received, then moderation scores what it
        // was given (its retractions still go through the writer), then the writer stops.
        self.bridge_stop.consumer.cancel();
        let _ = (&mut self.bridge_tasks.consumer).await;
        self.bridge.flush().await;
        self.moderation_stop.cancel();
        let _ = (&mut self.moderation).await;
        self.bridge_stop.writer.cancel();
        let _ = (&mut self.bridge_tasks.writer).await;
        self.node_shutdown.relay.cancel();
        self.node.relay_finished().await;
        // Give connections a moment to write the last frames and answers.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.node_shutdown.close.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.node.connections_closed())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within 5 s");
        }
        drop(self.store);
        tracing::info!("stopped");
    }
}

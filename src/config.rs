//! The layered configuration: built-in defaults (`configs/default.toml`) < a `--config` file <
//! `LIVECOMMENTS__SECTION__KEY` environment variables < command-line flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bridge::store::CassandraConfig;
use bridge::BridgeConfig;
use broker::{DeliveryConfig, MqttConfig, WsConfig};
use config::{Environment, File, FileFormat};
use playback_api::HttpConfig;
use serde::{Deserialize, Serialize};

/// The built-in defaults, printed verbatim by `print-default-config`.
pub const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

/// Prefix of environment overrides: `LIVECOMMENTS__MQTT__PORT=21883`.
pub const ENV_PREFIX: &str = "LIVECOMMENTS";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub data_dir: PathBuf,
    pub mqtt: MqttConfig,
    pub ws: WsConfig,
    pub delivery: DeliveryConfig,
    pub reactions: broker::ReactionsConfig,
    pub presence: broker::PresenceConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub bridge: BridgeConfig,
    pub store: StoreConfig,
    pub bus: BusConfig,
    pub moderation: moderation::ModerationConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
}

/// What one process of a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterRole {
    /// An MQTT node: gatekeeper, router, relay.
    Broker,
    /// The write path: validates, numbers, stores, publishes.
    Bridge,
    /// The toxicity model over accepted comments.
    Moderation,
    /// The HTTP API.
    Api,
}

impl ClusterRole {
    pub const ALL: [ClusterRole; 4] = [
        ClusterRole::Broker,
        ClusterRole::Bridge,
        ClusterRole::Moderation,
        ClusterRole::Api,
    ];
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The roles this process runs; all four is the embedded default. Anything less needs
    /// the shared bus and store (`bus.backend = "redis"`, `store.backend = "cassandra"`).
    pub roles: Vec<ClusterRole>,
    /// This process's name on the bus (consumer name, reply channel); empty: host name and
    /// process id. Must be unique in the cluster.
    pub node_id: String,
}

impl ClusterConfig {
    pub fn runs(&self, role: ClusterRole) -> bool {
        self.roles.contains(&role)
    }

    /// Whether this process runs only part of the system.
    pub fn is_split(&self) -> bool {
        !ClusterRole::ALL.iter().all(|r| self.runs(*r))
    }

    pub fn node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into());
        format!("{host}-{}", std::process::id())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Empty: generated on first start and kept in `data_dir/jwt-secret`.
    pub jwt_secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// One redb file in `data_dir`: one process, no external service.
    Embedded,
    /// Apache Cassandra or ScyllaDB (`[store.cassandra]`), shared by the processes of a cluster.
    Cassandra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// Relative paths are inside `data_dir`.
    pub path: PathBuf,
    /// Instant reopen after a crash at the cost of a second fsync per commit.
    pub quick_repair: bool,
    /// Embedded only: a retry of a post stored this many seconds ago still gets its answer...
    pub dedup_window_s: u64,
    /// ... unless this many newer posts were stored since (memory: about 60 bytes each).
    pub dedup_max_entries: usize,
    /// `[store.cassandra]`, used when `backend = "cassandra"`; every key has a default.
    #[serde(default)]
    pub cassandra: CassandraConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusBackend {
    Memory,
    Redis,
}

/// `[bus.redis]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Prefix of every key and channel, so several systems can share one Redis.
    pub prefix: String,
    /// A submission pending this long with a consumer that died is claimed by another bridge.
    pub claim_idle_ms: u64,
    /// A node leaves a stream's channel this long after its last local viewer left.
    pub unwatch_linger_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub backend: BusBackend,
    pub queue_capacity: usize,
    pub redis: RedisConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// Where a configuration comes from besides the defaults.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// Read `LIVECOMMENTS__*` variables (off in tests that build configs in-process).
    pub env: bool,
}

/// `LIVECOMMENTS__SECTION__KEY` variables; the keys listed take comma-separated lists
/// (`LIVECOMMENTS__CLUSTER__ROLES=broker,api`).
fn environment() -> Environment {
    Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("cluster.roles")
        .with_list_parse_key("store.cassandra.nodes")
        .with_list_parse_key("store.cassandra.datacenters")
}

impl AppConfig {
    /// The built-in defaults alone.
    pub fn defaults() -> anyhow::Result<AppConfig> {
        Self::load(&Sources::default())
    }

    pub fn load(sources: &Sources) -> anyhow::Result<AppConfig> {
        let mut builder =
            config::Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = &sources.file {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        if sources.env {
            builder = builder.add_source(environment());
        }
        if let Some(dir) = &sources.data_dir {
            builder = builder.set_override("data_dir", dir.to_string_lossy().to_string())?;
        }
        let config: AppConfig = builder
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        let errors = config.validate();
        if !errors.is_empty() {
            anyhow::bail!("invalid configuration:\n  - {}", errors.join("\n  - "));
        }
        Ok(config)
    }

    /// Checks values that parse but make no sense; every problem is listed.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = self.broker().validate();
        errors.extend(self.bridge.validate());
        errors.extend(self.http.validate());
        errors.extend(self.moderation.validate());
        let secret = &self.auth.jwt_secret;
        if !secret.is_empty() && secret.len() < 32 {
            errors.push("auth.jwt_secret must be at least 32 characters (or empty)".into());
        }
        if self.store.backend == StoreBackend::Cassandra {
            if let Err(e) = self.store.cassandra.validate() {
                errors.push(e);
            }
        }
        if self.store.dedup_window_s == 0 || self.store.dedup_max_entries == 0 {
            errors.push(
                "store.dedup_window_s and store.dedup_max_entries must be at least 1 \
                 (retries of posts would not be recognised)"
                    .into(),
            );
        }
        if self.bus.queue_capacity == 0 {
            errors.push("bus.queue_capacity must be at least 1".into());
        }
        errors.extend(self.validate_cluster());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            errors.push(format!("log.level is not a valid filter: {e}"));
        }
        errors
    }

    fn validate_cluster(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let roles = &self.cluster.roles;
        if roles.is_empty() {
            errors.push("cluster.roles must name at least one role".into());
        }
        let mut unique = roles.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != roles.len() {
            errors.push("cluster.roles names a role twice".into());
        }
        if self.cluster.is_split() && self.bus.backend != BusBackend::Redis {
            errors.push(
                "a process with only some cluster.roles needs bus.backend = \"redis\"".into(),
            );
        }
        if self.cluster.is_split() && self.store.backend == StoreBackend::Embedded {
            errors.push(
                "a process with only some cluster.roles needs a shared store \
                 (store.backend = \"cassandra\"); the embedded store belongs to one process"
                    .into(),
            );
        }
        if self.bus.backend == BusBackend::Redis {
            let r = &self.bus.redis;
            if !r.url.starts_with("redis://") && !r.url.starts_with("rediss://") {
                errors.push(format!("bus.redis.url must be redis://… (got {:?})", r.url));
            }
            if r.prefix.is_empty() || r.prefix.contains(char::is_whitespace) {
                errors.push("bus.redis.prefix must be a non-empty word".into());
            }
            if r.claim_idle_ms < 1000 {
                errors.push("bus.redis.claim_idle_ms must be at least 1000".into());
            }
        }
        errors
    }

    pub fn broker(&self) -> broker::BrokerConfig {
        broker::BrokerConfig {
            mqtt: self.mqtt.clone(),
            ws: self.ws.clone(),
            delivery: self.delivery.clone(),
            reactions: self.reactions.clone(),
            presence: self.presence.clone(),
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join(&self.store.path)
    }

    pub fn data_path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.data_dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = AppConfig::defaults().unwrap();
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.ws.port, 8083);
        assert_eq!(c.ws.path, "/mqtt");
        assert_eq!(c.http.port, 8080);
        assert_eq!(c.bridge.max_comment_chars, 500);
        assert_eq!(c.bridge.rate_limit_count, 10);
        assert_eq!(c.bridge.rate_limit_window_s, 60);
        assert!(!c.bridge.auto_create_streams);
        assert!(c.auth.jwt_secret.is_empty());
    }

    /// The defaults overridden by these environment variables, as `load` reads them.
    fn with_env(vars: &[(&str, &str)]) -> AppConfig {
        let vars = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config::Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .add_source(environment().source(Some(vars)))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn the_old_router_log_settings_still_load() {
        let c = with_env(&[("LIVECOMMENTS__MQTT__SEGMENT_SIZE", "1048576")]);
        assert_eq!(c.mqtt.segment_size, Some(1_048_576));
        assert_eq!(c.mqtt.backlog_frames, 1024);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn the_cassandra_store_is_configured_by_environment() {
        let c = AppConfig::defaults().unwrap();
        assert_eq!(c.store.backend, StoreBackend::Embedded);
        assert_eq!(c.store.cassandra, CassandraConfig::default());

        let c = with_env(&[
            ("LIVECOMMENTS__STORE__BACKEND", "cassandra"),
            (
                "LIVECOMMENTS__STORE__CASSANDRA__NODES",
                "10.0.0.1:9042,10.0.0.2:9042",
            ),
            ("LIVECOMMENTS__STORE__CASSANDRA__KEYSPACE", "lc_prod"),
            ("LIVECOMMENTS__STORE__CASSANDRA__DATACENTERS", "dc1:3,dc2:3"),
            ("LIVECOMMENTS__STORE__CASSANDRA__CONSISTENCY", "quorum"),
            ("LIVECOMMENTS__STORE__CASSANDRA__REQUEST_TIMEOUT_MS", "2000"),
        ]);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.store.backend, StoreBackend::Cassandra);
        let k = &c.store.cassandra;
        assert_eq!(k.nodes, ["10.0.0.1:9042", "10.0.0.2:9042"]);
        assert_eq!(k.keyspace, "lc_prod");
        assert_eq!(k.datacenters, ["dc1:3", "dc2:3"]);
        assert_eq!(
            k.consistency,
            bridge::store::cassandra::ConsistencyLevel::Quorum
        );
        assert_eq!(k.request_timeout_ms, 2000);
        // One contact point is a list of one.
        let c = with_env(&[("LIVECOMMENTS__STORE__CASSANDRA__NODES", "127.0.0.1:9042")]);
        assert_eq!(c.store.cassandra.nodes, ["127.0.0.1:9042"]);

        // Checked only when used, and then every problem is named.
        let c = with_env(&[("LIVECOMMENTS__STORE__CASSANDRA__KEYSPACE", "bad-name")]);
        assert!(c.validate().is_empty());
        let c = with_env(&[
            ("LIVECOMMENTS__STORE__BACKEND", "cassandra"),
            ("LIVECOMMENTS__STORE__CASSANDRA__KEYSPACE", "bad-name"),
        ]);
        let errors = c.validate();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("store.cassandra.keyspace")),
            "{errors:?}"
        );
    }

    #[test]
    fn split_roles_need_the_shared_bus_and_store() {
        let c = with_env(&[("LIVECOMMENTS__CLUSTER__ROLES", "broker,api")]);
        let errors = c.validate().join("\n");
        assert!(errors.contains("bus.backend"), "{errors}");
        assert!(errors.contains("store.backend"), "{errors}");
        let c = with_env(&[
            ("LIVECOMMENTS__CLUSTER__ROLES", "broker,api"),
            ("LIVECOMMENTS__BUS__BACKEND", "redis"),
            ("LIVECOMMENTS__STORE__BACKEND", "cassandra"),
        ]);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn a_file_overrides_some_keys_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[mqtt]\nport = 2883\n").unwrap();
        let c = AppConfig::load(&Sources {
            file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.mqtt.port, 2883);
        assert_eq!(c.http.port, 8080);

        std::fs::write(&path, "[mqtt]\nprot = 2883\n").unwrap();
        let err = AppConfig::load(&Sources {
            file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("prot"), "{err:#}");

        std::fs::write(&path, "[auth]\njwt_secret = \"short\"\n").unwrap();
        let err = AppConfig::load(&Sources {
            file: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("jwt_secret"), "{err:#}");
    }
}

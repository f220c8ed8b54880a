//! The layered configuration: built-in defaults (`configs/default.toml`) < a `--config` file <
//! `LIVECOMMENTS__SECTION__KEY` environment variables < command-line flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
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
    pub log: LogConfig,
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
    Embedded,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// Relative paths are inside `data_dir`.
    pub path: PathBuf,
    /// Instant reopen after a crash at the cost of a second fsync per commit.
    pub quick_repair: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusBackend {
    Memory,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub backend: BusBackend,
    pub queue_capacity: usize,
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
            builder = builder.add_source(
                Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
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
        if self.bus.queue_capacity == 0 {
            errors.push("bus.queue_capacity must be at least 1".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            errors.push(format!("log.level is not a valid filter: {e}"));
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

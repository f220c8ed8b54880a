//! The `livecomments` command line. Everything it does lives in the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use livecomments::config::{AppConfig, Sources, DEFAULT_TOML};
use livecomments::{app, keys, telemetry};
use wire::auth::{Claims, JwtKeys, Role};

#[derive(Parser)]
#[command(name = "livecomments", version, about = "Live comments over MQTT")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// A TOML file with the settings to change (see `print-default-config`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the store, the generated JWT key and endpoints.json live.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<AppConfig> {
        AppConfig::load(&Sources {
            file: self.config.clone(),
            data_dir: self.data_dir.clone(),
            env: true,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run broker, write path, moderation and HTTP API in one process.
    Up {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print a JWT signed with the key `up` uses.
    Token {
        /// User id (`[A-Za-z0-9_-]{1,64}`).
        #[arg(long)]
        sub: String,
        /// Display name (defaults to the user id).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "viewer", value_parser = clap::value_parser!(Role))]
        role: Role,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Mark the user as a paying subscriber.
        #[arg(long)]
        subscriber: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print the built-in default configuration.
    PrintDefaultConfig,
    /// Validate a configuration file (with environment overrides applied).
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Moderation tools.
    Moderation {
        #[command(subcommand)]
        command: ModerationCommand,
    },
}

#[derive(Subcommand)]
enum ModerationCommand {
    /// Score a labelled file (`label<TAB>text` per line, 1 = offensive, 0 = clean) with the
    /// toxicity model; print precision, recall, F1 and ROC AUC at the configured thresholds,
    /// and the latency per comment.
    Eval {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up { config } => {
            let config = config.load()?;
            telemetry::init_logging(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let running = app::start(config).await?;
                wait_for_signal().await;
                running.shutdown().await;
                anyhow::Ok(())
            })
        }
        Command::Token {
            sub,
            name,
            role,
            ttl,
            subscriber,
            config,
        } => {
            let config = config.load()?;
            wire::UserId::new(&sub).with_context(|| format!("--sub {sub:?}"))?;
            let secret = keys::load_or_create_secret(&config)?;
            let now = wire::time::now_ms() as u64 / 1000;
            let claims = Claims {
                sub,
                name,
                role,
                exp: now + ttl.as_secs(),
                iat: Some(now),
                subscriber,
            };
            println!("{}", JwtKeys::new(&secret).sign(&claims)?);
            Ok(())
        }
        Command::PrintDefaultConfig => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Moderation {
            command: ModerationCommand::Eval { file, config },
        } => {
            let config = config.load()?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let examples = moderation::eval::parse_tsv(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let m = &config.moderation.model;
            let path = app::onnxruntime_path(m);
            let mut model = moderation::model::ToxicityModel::load(&path).with_context(|| {
                format!(
                    "loading ONNX Runtime from {} (run scripts/install-onnxruntime)",
                    path.display()
                )
            })?;
            let report = moderation::eval::evaluate(
                &mut model,
                &examples,
                m.retract_threshold,
                m.review_threshold,
            )
            .map_err(|e| anyhow::anyhow!("scoring failed: {e}"))?;
            print!("{report}");
            Ok(())
        }
        Command::CheckConfig { file } => {
            AppConfig::load(&Sources {
                file: Some(file.clone()),
                data_dir: None,
                env: true,
            })?;
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

//! The JWT signing key: from configuration, or generated once and kept in the data directory.
//!
//! There is no built-in default key: a fixed key in the source would let anyone sign tokens
//! for every installation that forgot to set one.

use std::io::Write;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

use crate::config::AppConfig;

/// File in the data directory holding a generated key.
pub const SECRET_FILE: &str = "jwt-secret";

/// The HS256 secret `up` verifies with and `token` signs with.
pub fn load_or_create_secret(config: &AppConfig) -> anyhow::Result<Vec<u8>> {
    if !config.auth.jwt_secret.is_empty() {
        return Ok(config.auth.jwt_secret.as_bytes().to_vec());
    }
    let path = config.data_path(SECRET_FILE);
    if path.exists() {
        let secret = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let secret = secret.trim();
        anyhow::ensure!(
            secret.len() >= 32,
            "{} holds a key shorter than 32 characters",
            path.display()
        );
        return Ok(secret.as_bytes().to_vec());
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret = URL_SAFE_NO_PAD.encode(raw);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut f) => {
            f.write_all(secret.as_bytes())?;
            f.sync_all()?;
            tracing::info!(path = %path.display(), "generated a new JWT signing key");
            Ok(secret.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_secret(config),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = AppConfig::defaults().unwrap();
        c.data_dir = dir.path().join("d");
        let a = load_or_create_secret(&c).unwrap();
        let b = load_or_create_secret(&c).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 32);
        let other = tempfile::tempdir().unwrap();
        c.data_dir = other.path().to_path_buf();
        assert_ne!(load_or_create_secret(&c).unwrap(), a, "keys are random");
        c.auth.jwt_secret = "x".repeat(40);
        assert_eq!(
            load_or_create_secret(&c).unwrap(),
            "x".repeat(40).into_bytes()
        );
    }
}

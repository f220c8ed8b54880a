//! Cassandra for end-to-end tests: the shared node at `CASSANDRA_URI` (which `scripts/test`
//! starts) with a fresh keyspace per test, and private nodes (`scripts/cassandra`) for tests
//! that stop one.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bridge::store::CassandraConfig;
use livecomments::config::AppConfig;

/// The node every Cassandra test uses. Missing, the test fails: tests never pass by skipping.
pub fn uri() -> String {
    match std::env::var("CASSANDRA_URI") {
        Ok(uri) if !uri.is_empty() => uri,
        _ => panic!(
            "CASSANDRA_URI is not set: run scripts/test (it starts a Cassandra node), or start \
             one with `scripts/cassandra start DIR` and set CASSANDRA_URI=127.0.0.1:PORT"
        ),
    }
}

/// A keyspace name no other test (or earlier run against the same node) uses.
pub fn fresh_keyspace(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "lc_{tag}_{}_{}_{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Store settings for a test on `node`: a busy 2-core test machine needs generous timeouts.
pub fn store_config(node: &str, keyspace: &str) -> CassandraConfig {
    CassandraConfig {
        nodes: vec![node.to_string()],
        keyspace: keyspace.to_string(),
        request_timeout_ms: 10_000,
        connect_timeout_ms: 5_000,
        ..CassandraConfig::default()
    }
}

/// Points a system's configuration at `node`, keyspace `keyspace`.
pub fn use_cassandra(c: &mut AppConfig, node: &str, keyspace: &str) {
    c.store.backend = livecomments::config::StoreBackend::Cassandra;
    c.store.cassandra = store_config(node, keyspace);
}

/// Drops a test's keyspace (schema changes take seconds on a busy node; failures only warn).
pub async fn drop_keyspace(node: &str, keyspace: &str) {
    let session = match scylla::client::session_builder::SessionBuilder::new()
        .known_node(node)
        .build()
        .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dropping keyspace {keyspace}: {e}");
            return;
        }
    };
    let mut drop = scylla::statement::unprepared::Statement::new(format!(
        "DROP KEYSPACE IF EXISTS {keyspace}"
    ));
    drop.set_request_timeout(Some(Duration::from_secs(120)));
    if let Err(e) = session.query_unpaged(drop, &[]).await {
        eprintln!("dropping keyspace {keyspace}: {e}");
    }
}

fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cassandra"))
}

/// A Cassandra node of this test alone, started with `scripts/cassandra` (Java 17 and the
/// jars, which `scripts/test` installs) in a temporary directory; stopped when dropped.
pub struct PrivateNode {
    dir: tempfile::TempDir,
    pub uri: String,
    running: bool,
}

impl PrivateNode {
    pub async fn start() -> PrivateNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = PrivateNode {
            dir,
            uri: String::new(),
            running: false,
        };
        node.run().await;
        node
    }

    fn node_dir(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    /// Starts the node (again, on the same data and ports) and waits until CQL answers.
    async fn run(&mut self) {
        let started = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(180),
            tokio::process::Command::new(script())
                .arg("start")
                .arg(self.node_dir())
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("scripts/cassandra start finishes within 180 s")
        .expect("scripts/cassandra runs");
        assert!(
            out.status.success(),
            "scripts/cassandra start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let uri = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            self.uri.is_empty() || self.uri == uri,
            "restarted on {uri}, not {}",
            self.uri
        );
        self.uri = uri;
        self.running = true;
        eprintln!(
            "private cassandra at {} up in {:?}",
            self.uri,
            started.elapsed()
        );
    }

    /// Stops the node cleanly (SIGTERM: it drains and flushes, as in a rolling restart).
    pub async fn stop(&mut self) {
        let started = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(90),
            tokio::process::Command::new(script())
                .arg("stop")
                .arg(self.node_dir())
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("scripts/cassandra stop finishes within 90 s")
        .expect("scripts/cassandra runs");
        assert!(
            out.status.success(),
            "scripts/cassandra stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
        eprintln!("private cassandra stopped in {:?}", started.elapsed());
    }

    /// Starts it again on the same data directory and port.
    pub async fn restart(&mut self) {
        self.run().await;
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        if self.running {
            let _ = std::process::Command::new(script())
                .arg("stop")
                .arg(self.node_dir())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

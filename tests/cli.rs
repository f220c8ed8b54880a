//! The command line: token, print-default-config, check-config, environment overrides.

mod common;

use std::net::TcpListener;

use common::process::{self, run};
use wire::auth::{JwtKeys, Role};

#[test]
fn print_default_config_is_the_shipped_file_and_checks_clean() {
    let out = run(&["print-default-config"], &[]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/default.toml"))
            .unwrap();
    assert_eq!(printed, shipped);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, &printed).unwrap();
    let out = run(&["check-config", file.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_config_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    for (content, needle) in [
        ("[mqtt]\nprot = 1\n", "prot"),
        ("[mqtt]\nport = \"abc\"\n", "port"),
        ("[delivery]\nmax_frame_events = 0\n", "max_frame_events"),
        ("[auth]\njwt_secret = \"short\"\n", "jwt_secret"),
        ("[log]\nformat = \"xml\"\n", "xml"),
    ] {
        std::fs::write(&file, content).unwrap();
        let out = run(&["check-config", file.to_str().unwrap()], &[]);
        assert!(!out.status.success(), "{content} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{content}: {err}");
    }
    let out = run(&["check-config", "/nonexistent.toml"], &[]);
    assert!(!out.status.success());
    // Environment overrides are validated too.
    std::fs::write(&file, "").unwrap();
    let out = run(
        &["check-config", file.to_str().unwrap()],
        &[("LIVECOMMENTS__BRIDGE__MAX_COMMENT_CHARS", "0")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_comment_chars"));
    // The Cassandra store's settings, from a file or the environment (nothing is contacted).
    std::fs::write(
        &file,
        "[store]\nbackend = \"cassandra\"\n[store.cassandra]\nconsistency = \"local_quorum\"\n",
    )
    .unwrap();
    let cassandra = [
        (
            "LIVECOMMENTS__STORE__CASSANDRA__NODES",
            "10.0.0.1:9042,10.0.0.2:9042",
        ),
        ("LIVECOMMENTS__STORE__CASSANDRA__KEYSPACE", "lc"),
    ];
    let out = run(&["check-config", file.to_str().unwrap()], &cassandra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &["check-config", file.to_str().unwrap()],
        &[("LIVECOMMENTS__STORE__CASSANDRA__DATACENTERS", "dc1")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.cassandra.datacenters"));
    std::fs::write(&file, "[store.cassandra]\nconsistency = \"maybe\"\n").unwrap();
    let out = run(&["check-config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("maybe"));
}

#[test]
fn token_signs_with_the_key_up_uses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = run(
        &[
            "token",
            "--sub",
            "ann",
            "--name",
            "Ann",
            "--role",
            "moderator",
            "--ttl",
            "10m",
            "--data-dir",
            d,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let secret = std::fs::read(dir.path().join("jwt-secret")).expect("key kept in the data dir");
    let id = JwtKeys::new(&secret).verify(token.trim()).unwrap();
    assert_eq!(id.user.as_str(), "ann");
    assert_eq!(id.name, "Ann");
    assert_eq!(id.role, Role::Moderator);
    let now = wire::time::now_ms() as u64 / 1000;
    assert!(id.exp > now + 590 && id.exp <= now + 600);

    // A configured secret wins over the data directory.
    let secret = "s".repeat(40);
    let out = run(
        &["token", "--sub", "bob", "--data-dir", d],
        &[("LIVECOMMENTS__AUTH__JWT_SECRET", &secret)],
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(JwtKeys::new(secret.as_bytes()).verify(token.trim()).is_ok());

    for bad in [
        vec!["token", "--sub", "a/b", "--data-dir", d],
        vec!["token", "--sub", "ann", "--role", "god", "--data-dir", d],
        vec!["token", "--sub", "ann", "--ttl", "soon", "--data-dir", d],
    ] {
        assert!(!run(&bad, &[]).status.success(), "{bad:?}");
    }
}

#[test]
fn environment_overrides_ports_and_logs_say_where_listeners_are() {
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (mqtt, http) = (free(), free());
    let dir = tempfile::tempdir().unwrap();
    let (m, h) = (mqtt.to_string(), http.to_string());
    let mut p = process::up(
        dir.path(),
        &[
            ("LIVECOMMENTS__MQTT__PORT", &m),
            ("LIVECOMMENTS__HTTP__PORT", &h),
        ],
    );
    assert_eq!(p.mqtt, format!("127.0.0.1:{mqtt}"));
    assert_eq!(p.http, format!("127.0.0.1:{http}"));
    let log = p.log_text();
    assert!(
        log.contains(&format!("mqtt listener ready addr=127.0.0.1:{mqtt}")),
        "{log}"
    );
    assert!(log.contains("mqtt-over-websocket listener ready"), "{log}");
    assert!(
        log.contains(&format!("http listener ready addr=127.0.0.1:{http}")),
        "{log}"
    );
    assert!(p.terminate().success());
}

#[test]
fn moderation_eval_prints_the_measures() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/moderation/eval/sample.tsv");
    let out = run(&["moderation", "eval", sample], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "ROC AUC",
        "precision",
        "recall",
        "F1",
        "latency per comment",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "maybe\tsomething\n").unwrap();
    let out = run(&["moderation", "eval", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}

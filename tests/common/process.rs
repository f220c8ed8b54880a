//! A `livecomments up` child process for tests that need a real process (kill -9, CLI, env).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_livecomments")
}

pub struct Proc {
    pub child: Child,
    pub mqtt: String,
    pub http: String,
    pub ws: Option<String>,
    pub log: PathBuf,
}

/// Starts `livecomments up` on free loopback ports with extra environment and waits until it
/// wrote `endpoints.json`.
pub fn up(data_dir: &Path, env: &[(&str, &str)]) -> Proc {
    let endpoints = data_dir.join("endpoints.json");
    let _ = std::fs::remove_file(&endpoints);
    std::fs::create_dir_all(data_dir).unwrap();
    let log = data_dir.join(format!("up-{}.log", wire::time::now_ms()));
    let mut cmd = Command::new(bin());
    cmd.arg("up")
        .arg("--data-dir")
        .arg(data_dir)
        .env("LIVECOMMENTS__MQTT__HOST", "127.0.0.1")
        .env("LIVECOMMENTS__MQTT__PORT", "0")
        .env("LIVECOMMENTS__WS__HOST", "127.0.0.1")
        .env("LIVECOMMENTS__WS__PORT", "0")
        .env("LIVECOMMENTS__HTTP__HOST", "127.0.0.1")
        .env("LIVECOMMENTS__HTTP__PORT", "0")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn livecomments up");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = std::fs::read(&endpoints) {
            let v: Value = serde_json::from_slice(&bytes).expect("endpoints.json");
            return Proc {
                child,
                mqtt: v["mqtt"].as_str().unwrap().to_string(),
                http: v["http"].as_str().unwrap().to_string(),
                ws: v["ws"].as_str().map(str::to_string),
                log,
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "livecomments up exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "livecomments up did not start in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Proc {
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().ok();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "no exit 20 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `livecomments <args>` to completion.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run livecomments")
}

/// A token signed by the CLI with the key in `data_dir`.
pub fn token(data_dir: &Path, sub: &str, role: &str) -> String {
    let out = run(
        &[
            "token",
            "--sub",
            sub,
            "--role",
            role,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

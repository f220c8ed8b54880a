//! Mosquitto's command-line clients (Debian `mosquitto-clients`) against livecomments.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::System;
use wire::auth::Role;

/// `mosquitto_sub -d`: its output lines, read as they come.
struct Sub {
    lines: mpsc::Receiver<String>,
}

impl Sub {
    fn spawn(port: &str, user: &str, token: &str, topic: &str) -> Sub {
        // stdbuf: line-buffered output through the pipe, so SUBACK is seen when it happens.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-d",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-u",
                user,
                "-P",
                token,
            ])
            .args(["-t", topic, "-v", "-C", "1", "-W", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub must be installed (Debian package mosquitto-clients)");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
            let _ = child.wait();
        });
        Sub { lines }
    }

    /// The first line satisfying `f`, waiting up to 20 s.
    fn wait_for(&self, f: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("mosquitto_sub said nothing more");
            if f(&line) {
                return line;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_and_pub_work_against_it() {
    let sys = System::start().await;
    sys.live_stream("s1").await;
    let port = sys.mqtt_port().to_string();
    let viewer = sys.token("vic", Role::Viewer);
    let poster = sys.token("ann", Role::Viewer);

    // Each user sees only its own messages: the viewer the frame, the poster its ack.
    let frames = Sub::spawn(&port, "vic", &viewer, "streams/s1/comments");
    let inbox = Sub::spawn(&port, "ann", &poster, "users/ann/inbox");
    for sub in [&frames, &inbox] {
        sub.wait_for(|l| l.contains("received SUBACK"));
    }

    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "ann",
            "-P",
            &poster,
            "-q",
            "1",
        ])
        .args([
            "-t",
            "streams/s1/post",
            "-m",
            r#"{"text":"from mosquitto","client_msg_id":"mq1"}"#,
        ])
        .status()
        .unwrap();
    assert!(status.success());

    let line = frames.wait_for(|l| l.starts_with("streams/s1/comments "));
    let frame: serde_json::Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
    assert_eq!(frame["events"][0]["text"], "from mosquitto");
    assert_eq!(frame["events"][0]["user"]["id"], "ann");

    let line = inbox.wait_for(|l| l.starts_with("users/ann/inbox "));
    let ack: serde_json::Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["client_msg_id"], "mq1");

    // A forged broadcast from mosquitto_pub loses its connection instead of being delivered.
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "ann",
            "-P",
            &poster,
            "-q",
            "1",
        ])
        .args(["-t", "streams/s1/comments", "-m", "forged"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a forbidden publish must not be acknowledged"
    );
    // And a bad token is refused at CONNECT.
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "ann",
            "-P",
            "bad",
            "-q",
            "1",
        ])
        .args(["-t", "streams/s1/post", "-m", "{}"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(sys.stored("s1").await.len(), 1);
    sys.stop().await;
}

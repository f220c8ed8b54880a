//! Cost of the synchronous moderation rules (the write path runs them for every post) with
//! the default configuration, per kind of comment, on one thread.
//!
//! ```text
//! cargo run --release --example rules_bench -- [--seconds 3]
//! ```
//! Kinds: the ingest benchmark's 200-byte ASCII comments, short chat, chat with emoji, accented
//! and look-alike text, leetspeak insults (caught) and an emoji wall (caught). Prints the mean
//! time per check and checks per second for each.

use std::time::{Duration, Instant};

use livecomments::config::AppConfig;
use moderation::{Candidate, Moderation, Verdict};
use wire::auth::Role;
use wire::bus::Author;
use wire::{StreamId, UserId};

/// Distinct texts (and users) per kind.
const N: u64 = 20_000;

fn seconds() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// `c{seq} t{time}` and filler to 200 bytes, like `livecomments-bench ingest`.
fn ingest_text(i: u64) -> String {
    let filler = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor \
                  incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis \
                  nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo";
    let mut t = format!("c{i} t{} {filler}", 1_763_800_000_000_000 + i * 100);
    t.truncate(199);
    t.trim_end().to_string()
}

fn main() -> anyhow::Result<()> {
    let config = AppConfig::defaults()?;
    let moderation = Moderation::new(config.moderation);
    let stream = StreamId::new("bench")?;
    let kinds: Vec<(&str, Vec<String>)> = vec![
        ("ingest 200 B ascii", (0..N).map(ingest_text).collect()),
        (
            "short chat",
            (0..N)
                .map(|i| format!("what a goal {i}, that keeper had no chance"))
                .collect(),
        ),
        (
            "chat with emoji",
            (0..N)
                .map(|i| format!("GOAL {i} 🔥🔥 unbelievable 👏 what a night ❤️"))
                .collect(),
        ),
        (
            "accents, look-alikes",
            (0..N)
                .map(|i| format!("Ça c'est du football {i}, ｆａｎｔａｓｔｉｑｕｅ, naïve défense"))
                .collect(),
        ),
        (
            "leetspeak insult",
            (0..N)
                .map(|i| format!("ref {i} you are a $h1tty b1tch"))
                .collect(),
        ),
        (
            "emoji wall",
            (0..N).map(|i| format!("{} {i}", "😂".repeat(30))).collect(),
        ),
    ];
    let budget = Duration::from_secs(seconds());
    println!("| comments | mean per check | checks/s | verdict |");
    println!("|---|---:|---:|---|");
    for (name, texts) in &kinds {
        // As many users as texts, shifted by one each pass: the repeat rule (per-user history,
        // as in production) never sees a user send the same text twice.
        let authors: Vec<Author> = (0..texts.len())
            .map(|i| Author {
                id: UserId::new(&format!("u{i}")).expect("valid id"),
                name: format!("u{i}"),
                role: Role::Viewer,
                subscriber: false,
            })
            .collect();
        let started = Instant::now();
        let (mut n, mut pass, mut last) = (0u64, 0usize, Verdict::Allow);
        while started.elapsed() < budget && pass < texts.len() {
            let shifted = authors[pass..].iter().chain(&authors[..pass]);
            pass += 1;
            for (text, author) in texts.iter().zip(shifted) {
                last = moderation.check(&Candidate {
                    stream: &stream,
                    author,
                    text,
                });
            }
            n += texts.len() as u64;
        }
        let per = started.elapsed() / n as u32;
        let verdict = match last {
            Verdict::Allow => "allow".to_string(),
            other => format!("{other:?}").chars().take(40).collect(),
        };
        println!(
            "| {name} | {:.2} µs | {:.0} | {verdict} |",
            per.as_secs_f64() * 1e6,
            1.0 / per.as_secs_f64()
        );
    }
    Ok(())
}

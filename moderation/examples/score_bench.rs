//! Throughput and latency of the toxicity model on one core, in batches of 64.
//!
//!     ORT_DYLIB_PATH=$(scripts/install-onnxruntime) \
//!         cargo run --release -p moderation --example score_bench [-- SECONDS]
//!
//! Scores a few thousand generated comments (clean chat, insults, leetspeak, accents, emoji,
//! CJK; 1 to 40 words) over and over for SECONDS (default 5) on the calling thread — the
//! session is single-threaded — and prints comments per second and per-batch p50/p99.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use moderation::model::ToxicityModel;

const BATCH: usize = 64;
const TEXTS: usize = 4096;

const WORDS: &[&str] = &[
    "the",
    "stream",
    "is",
    "great",
    "tonight",
    "thanks",
    "for",
    "tips",
    "what",
    "time",
    "does",
    "match",
    "start",
    "love",
    "this",
    "song",
    "so",
    "much",
    "can",
    "you",
    "explain",
    "again",
    "please",
    "weather",
    "lovely",
    "goal",
    "referee",
    "player",
    "team",
    "win",
    "lose",
    "chat",
    "hello",
    "everyone",
    "from",
    "Brazil",
    "Berlin",
    "lol",
    "haha",
    "gg",
    "wp",
    "nice",
    "play",
    "wow",
    "amazing",
    "boring",
    "slow",
    "fast",
    "link",
    "slides",
    "question",
    "answer",
    "music",
    "volume",
    "camera",
    "mic",
    "Pokémon",
    "café",
    "naïve",
    "連絡",
    "迷惑",
    "😀",
    "😡",
    "🔥",
    "!!!",
    "???",
    "2024",
    "v1.2",
    "user_talk",
    "https://example.com/a?b=c",
];
const RUDE: &[&str] = &[
    "fuck", "FUCK", "shit", "idiot", "stupid", "moron", "asshole", "bitch", "dumbass", "sh1t",
    "f*ck", "a$$hole", "fuk", "bullshit", "damn", "hell", "crap", "loser", "STFU", "wtf",
];

/// xorshift64*: deterministic, so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn corpus() -> Vec<String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..TEXTS)
        .map(|_| {
            let long = rng.below(10) == 0;
            let words = 1 + rng.below(if long { 40 } else { 14 });
            let rude = rng.below(4) == 0;
            (0..words)
                .map(|_| {
                    if rude && rng.below(5) == 0 {
                        RUDE[rng.below(RUDE.len())]
                    } else {
                        WORDS[rng.below(WORDS.len())]
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dylib: PathBuf = std::env::var_os("ORT_DYLIB_PATH")
        .ok_or("set ORT_DYLIB_PATH=$(scripts/install-onnxruntime)")?
        .into();
    let seconds: f64 = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 5.0,
    };
    let texts = corpus();
    let batches: Vec<Vec<&str>> = texts
        .chunks(BATCH)
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    let mean_chars = texts.iter().map(|t| t.chars().count()).sum::<usize>() / texts.len();

    let mut model = ToxicityModel::load(&dylib)?;
    let mut flagged = 0;
    for batch in &batches {
        flagged += model.score(batch)?.iter().filter(|&&p| p > 0.5).count();
    }

    let mut latencies: Vec<Duration> = Vec::new();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        for batch in &batches {
            let t = Instant::now();
            let scores = model.score(batch)?;
            latencies.push(t.elapsed());
            std::hint::black_box(scores);
        }
    }
    let elapsed = started.elapsed();
    let comments = latencies.len() * BATCH;
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "{} distinct texts (mean {mean_chars} chars, {flagged} scored > 0.5), batches of {BATCH}, one thread",
        texts.len()
    );
    println!(
        "{comments} comments in {:.2} s: {:.0} comments/s ({:.2} µs per comment)",
        elapsed.as_secs_f64(),
        comments as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / comments as f64
    );
    println!(
        "per batch: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        latencies.last().unwrap().as_secs_f64() * 1e6
    );
    Ok(())
}

//! Deterministic live-comment records and key encodings.
//!
//! Every field of a record is a pure function of (stream, seq), so a checker can recompute
//! all three keys of any seq (used by the crash test).

use crate::stores::Row;
use std::time::Duration;

/// Milliseconds of video time between consecutive comments, on average.
pub const MS_PER_SEQ: u64 = 50;
pub const RECORD_BYTES: usize = 300;

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Tiny deterministic RNG for picking query positions.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0) % n.max(1)
    }
}

fn push_str(k: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 256);
    k.push(s.len() as u8);
    k.extend_from_slice(s.as_bytes());
}

/// (stream, seq) — length-prefixed stream id, big-endian seq, so keys sort by seq.
pub fn primary_key(stream: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + stream.len() + 8);
    push_str(&mut k, stream);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// (stream, offset_ms, seq)
pub fn index_key(stream: &str, offset_ms: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + stream.len() + 16);
    push_str(&mut k, stream);
    k.extend_from_slice(&offset_ms.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// (stream, user_id, client_msg_id)
pub fn dedup_key(stream: &str, user: &str, client_msg_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + stream.len() + user.len() + client_msg_id.len());
    push_str(&mut k, stream);
    push_str(&mut k, user);
    push_str(&mut k, client_msg_id);
    k
}

/// Video offset of a comment: roughly increasing with seq, with up to 2 s of jitter,
/// so the time index is not in seq order.
pub fn offset_ms(seq: u64) -> u64 {
    seq * MS_PER_SEQ + splitmix(seq) % 2000
}
pub fn user_id(seq: u64) -> String {
    format!("u{}", splitmix(seq ^ 0xA5A5) % 50_000)
}
pub fn client_msg_id(seq: u64) -> String {
    format!("{:016x}", splitmix(seq ^ 0x5A5A_5A5A))
}

pub fn row(stream: &str, seq: u64) -> Row {
    let (off, user, cmid) = (offset_ms(seq), user_id(seq), client_msg_id(seq));
    let mut value = format!(
        r#"{{"stream":"{stream}","seq":{seq},"offset_ms":{off},"user":"{user}","client_msg_id":"{cmid}","name":"viewer {user}","badges":["sub"],"text":""#
    )
    .into_bytes();
    let filler = b"what a play!! lol that was insane, clip it please ";
    let mut i = (seq % filler.len() as u64) as usize;
    while value.len() < RECORD_BYTES - 2 {
        value.push(filler[i % filler.len()]);
        i += 1;
    }
    value.extend_from_slice(b"\"}");
    Row {
        pk: primary_key(stream, seq),
        value,
        ik: index_key(stream, off, seq),
        dk: dedup_key(stream, &user, &cmid),
        seq,
    }
}

/// Rows seq..seq+n of one stream.
pub fn rows(stream: &str, seq: u64, n: usize) -> Vec<Row> {
    (seq..seq + n as u64).map(|s| row(stream, s)).collect()
}

/// p50 and p99 of a sample (sorts it).
pub fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    v.sort_unstable();
    let at = |p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    (at(50), at(99))
}

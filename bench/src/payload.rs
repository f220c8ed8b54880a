//! What the posters send and what the subscribers read back.
//!
//! Every comment's text starts with `c{seq} t{sent_us} ` — its sequence number in the run and
//! its send time in microseconds since the Unix epoch — and is padded with lower-case filler
//! words to the requested size, so the moderation rules (capitals, links, repeats, blocklist)
//! let it through. Both targets get the same post body `{"text", "client_msg_id"}`:
//! livecomments wraps accepted comments into frames `{"v":1,"events":[...]}`, Mosquitto
//! forwards the body as it is.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Innocent filler the model and the rules pass.
const FILLER: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod \
                      tempor incididunt ut labore et dolore magna aliqua ut enim ad minim \
                      veniam quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea \
                      commodo consequat duis aute irure dolor in reprehenderit in voluptate ";

/// Microseconds since the Unix epoch (one clock for every process on the machine).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The comment text for `seq` sent at `sent_us`, padded to `len` bytes (never cut below its
/// header).
pub fn comment_text(seq: u64, sent_us: u64, len: usize) -> String {
    let mut text = format!("c{seq} t{sent_us}");
    let mut filler = FILLER.split(' ').filter(|w| !w.is_empty()).cycle();
    // Each word goes in with its leading space, cut to fit; the text never ends in a space
    // (servers trim it) and is at most one byte short of `len`.
    while len >= text.len() + 2 {
        let room = len - text.len() - 1;
        let word = filler.next().unwrap_or("x");
        text.push(' ');
        text.push_str(&word[..word.len().min(room)]);
    }
    text
}

#[derive(serde::Serialize)]
struct Post<'a> {
    text: &'a str,
    client_msg_id: &'a str,
}

/// The post body for comment `seq`; its `client_msg_id` is the sequence number.
pub fn post_body(seq: u64, sent_us: u64, len: usize) -> Vec<u8> {
    let text = comment_text(seq, sent_us, len);
    let id = seq.to_string();
    serde_json::to_vec(&Post {
        text: &text,
        client_msg_id: &id,
    })
    .unwrap_or_default()
}

/// Sequence number and send time from a comment text written by [`comment_text`].
pub fn parse_text(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.splitn(3, ' ');
    let seq = parts.next()?.strip_prefix('c')?.parse().ok()?;
    let sent = parts.next()?.strip_prefix('t')?.parse().ok()?;
    Some((seq, sent))
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    events: Vec<Event<'a>>,
}

#[derive(Deserialize)]
struct PostIn<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

/// One comment of ours in a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comment {
    /// The generator's sequence number.
    pub seq: u64,
    /// Send time, microseconds since the Unix epoch.
    pub sent_us: u64,
    /// The server's sequence number of the event (livecomments).
    pub server_seq: Option<u64>,
}

/// What one received message held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Comment events that are ours (pushed to the output).
    pub comments: usize,
    /// Other events (retractions, sampling notices, comments of others).
    pub other: usize,
}

/// A livecomments delivery frame: pushes every comment event of ours.
pub fn parse_frame(payload: &[u8], out: &mut Vec<Comment>) -> Option<Parsed> {
    let frame: Frame = serde_json::from_slice(payload).ok()?;
    let mut parsed = Parsed::default();
    for e in frame.events {
        match (e.kind.as_ref(), e.text.as_deref().and_then(parse_text)) {
            ("comment", Some((seq, sent_us))) => {
                out.push(Comment {
                    seq,
                    sent_us,
                    server_seq: e.seq,
                });
                parsed.comments += 1;
            }
            _ => parsed.other += 1,
        }
    }
    Some(parsed)
}

/// A plain message carrying one post body (Mosquitto).
pub fn parse_post(payload: &[u8], out: &mut Vec<Comment>) -> Option<Parsed> {
    let post: PostIn = serde_json::from_slice(payload).ok()?;
    let (seq, sent_us) = parse_text(&post.text)?;
    out.push(Comment {
        seq,
        sent_us,
        server_seq: None,
    });
    Some(Parsed {
        comments: 1,
        other: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_the_requested_size_and_round_trips() {
        for len in [0, 10, 40, 200, 500] {
            let t = comment_text(123_456, 1_763_771_234_567_890, len);
            if len > 30 {
                assert!(t.len() == len || t.len() + 1 == len, "{len}: {t:?}");
            }
            assert_eq!(t, t.trim());
            assert!(!t.chars().any(|c| c.is_ascii_uppercase() || c.is_control()));
            assert_eq!(parse_text(&t), Some((123_456, 1_763_771_234_567_890)));
        }
    }

    #[test]
    fn frames_and_posts_parse() {
        let body = post_body(7, 99, 200);
        let mut out = Vec::new();
        assert_eq!(
            parse_post(&body, &mut out),
            Some(Parsed {
                comments: 1,
                other: 0
            })
        );
        assert_eq!(
            (out[0].seq, out[0].sent_us, out[0].server_seq),
            (7, 99, None)
        );

        let text = comment_text(8, 100, 60);
        let frame = serde_json::json!({"v":1,"events":[
            {"type":"comment","id":"01K","seq":3,"text":text,"user":{"id":"p0","name":"p0"}},
            {"type":"retract","id":"01K","seq":4,"reason":"x"},
            {"type":"sampling","rate":0.5},
        ]});
        out.clear();
        let p = parse_frame(frame.to_string().as_bytes(), &mut out).unwrap();
        assert_eq!((p.comments, p.other), (1, 2));
        assert_eq!(
            (out[0].seq, out[0].sent_us, out[0].server_seq),
            (8, 100, Some(3))
        );
        assert!(parse_frame(b"not json", &mut out).is_none());
    }
}

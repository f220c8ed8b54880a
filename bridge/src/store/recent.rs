//! The idempotency keys of recent posts, in memory: which `seq` a `(stream, user,
//! client_msg_id)` was stored under.
//!
//! Why not a table: the key is chosen by clients, so in a B-tree each new key lands on a
//! random leaf, and a commit of n posts rewrote about n 4 KiB pages (measured at 10 k posts/s:
//! disk writes 25–49 MB/s with the table, 12–19 MB/s without; the commits' fsyncs waited that
//! much longer and ack p99 doubled). The events log already holds every post's key, so this
//! index is rebuilt from the log's tail when the store opens, like NATS JetStream's duplicate
//! window. A key is kept for the window or until `max_entries` newer keys push it out.
//!
//! Memory: about 60 bytes per key (a 64-bit keyed hash of the key, the seq, the time, in a hash
//! map and a queue; 2 M keys measured at 59 bytes each).
//! A hit is only a candidate: the store reads the row at that seq and compares the key, so a
//! hash collision or an entry of a commit that failed never answers for another post.

use std::collections::hash_map::Entry;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::Duration;

use wire::StreamId;

/// Keys of recent posts (see the module docs).
pub(crate) struct RecentPosts {
    hasher: RandomState,
    window_ms: i64,
    max_entries: usize,
    /// Hash of (stream, user, client_msg_id) → seq of the oldest post with that hash.
    first: HashMap<u64, u64>,
    /// Later posts whose key has the same hash (a 64-bit collision: practically never).
    more: HashMap<u64, Vec<u64>>,
    /// Insertion order: (stored at ms, hash, seq), oldest first.
    order: VecDeque<(i64, u64, u64)>,
    /// Tests only: every key hashes alike.
    #[cfg(test)]
    pub(crate) collide: bool,
}

impl RecentPosts {
    pub(crate) fn new(window: Duration, max_entries: usize) -> RecentPosts {
        RecentPosts {
            hasher: RandomState::new(),
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            max_entries,
            first: HashMap::new(),
            more: HashMap::new(),
            order: VecDeque::new(),
            #[cfg(test)]
            collide: false,
        }
    }

    fn hash(&self, stream: &StreamId, user: &str, client_msg_id: &str) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 0;
        }
        let mut h = self.hasher.build_hasher();
        stream.as_str().hash(&mut h);
        user.hash(&mut h);
        client_msg_id.hash(&mut h);
        h.finish()
    }

    /// The seqs a post with this key may have been stored under, oldest first (empty when
    /// none; more than one only on a hash collision). The caller checks the rows.
    pub(crate) fn get(&self, stream: &StreamId, user: &str, client_msg_id: &str) -> Vec<u64> {
        let k = self.hash(stream, user, client_msg_id);
        let Some(&seq) = self.first.get(&k) else {
            return Vec::new();
        };
        let mut out = vec![seq];
        if let Some(more) = self.more.get(&k) {
            out.extend_from_slice(more);
        }
        out
    }

    /// Records a stored post (`at_ms`: when it was stored) and forgets what is out of the
    /// window then.
    pub(crate) fn insert(
        &mut self,
        stream: &StreamId,
        user: &str,
        client_msg_id: &str,
        seq: u64,
        at_ms: i64,
    ) {
        let k = self.hash(stream, user, client_msg_id);
        match self.first.entry(k) {
            Entry::Vacant(v) => {
                v.insert(seq);
            }
            Entry::Occupied(_) => self.more.entry(k).or_default().push(seq),
        }
        self.order.push_back((at_ms, k, seq));
        self.expire(at_ms);
    }

    /// Forgets keys older than the window, and the oldest beyond `max_entries`.
    pub(crate) fn expire(&mut self, now_ms: i64) {
        let horizon = self.horizon(now_ms);
        while let Some(&(at, k, seq)) = self.order.front() {
            if at >= horizon && self.order.len() <= self.max_entries {
                break;
            }
            self.order.pop_front();
            if self.first.get(&k) == Some(&seq) {
                match self.more.get_mut(&k) {
                    Some(more) => {
                        self.first.insert(k, more.remove(0));
                        if more.is_empty() {
                            self.more.remove(&k);
                        }
                    }
                    None => {
                        self.first.remove(&k);
                    }
                }
            } else if let Some(more) = self.more.get_mut(&k) {
                more.retain(|s| *s != seq);
                if more.is_empty() {
                    self.more.remove(&k);
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// Posts stored before this are outside the window.
    pub(crate) fn horizon(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.window_ms)
    }

    pub(crate) fn max_entries(&self) -> usize {
        self.max_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> StreamId {
        StreamId::new(name).unwrap()
    }

    #[test]
    fn keys_are_per_stream_user_and_id() {
        let mut r = RecentPosts::new(Duration::from_secs(60), 100);
        r.insert(&s("a"), "ann", "m1", 1, 1_000);
        r.insert(&s("a"), "bob", "m1", 2, 1_000);
        r.insert(&s("b"), "ann", "m1", 1, 1_000);
        assert_eq!(r.get(&s("a"), "ann", "m1"), [1]);
        assert_eq!(r.get(&s("a"), "bob", "m1"), [2]);
        assert_eq!(r.get(&s("b"), "ann", "m1"), [1]);
        assert!(r.get(&s("a"), "ann", "m2").is_empty());
        assert!(r.get(&s("c"), "ann", "m1").is_empty());
        // The user and the id are hashed apart: ("an", "nm1") is another key.
        assert!(r.get(&s("a"), "an", "nm1").is_empty());
    }

    #[test]
    fn keys_expire_after_the_window_and_beyond_the_cap() {
        let mut r = RecentPosts::new(Duration::from_secs(10), 3);
        r.insert(&s("a"), "u", "m1", 1, 1_000);
        r.insert(&s("a"), "u", "m2", 2, 5_000);
        r.expire(11_000);
        assert_eq!(r.get(&s("a"), "u", "m1"), [1], "10 s old: still in");
        r.expire(11_001);
        assert!(r.get(&s("a"), "u", "m1").is_empty(), "older than 10 s");
        assert_eq!(r.get(&s("a"), "u", "m2"), [2]);
        r.insert(&s("a"), "u", "m3", 3, 11_000);
        r.insert(&s("a"), "u", "m4", 4, 11_000);
        r.insert(&s("a"), "u", "m5", 5, 11_000);
        assert_eq!(r.len(), 3);
        assert!(
            r.get(&s("a"), "u", "m2").is_empty(),
            "pushed out by the cap"
        );
        assert_eq!(r.get(&s("a"), "u", "m5"), [5]);
    }

    #[test]
    fn colliding_keys_keep_every_seq_until_each_expires() {
        let mut r = RecentPosts::new(Duration::from_secs(10), 100);
        r.collide = true;
        r.insert(&s("a"), "u", "m1", 1, 1_000);
        r.insert(&s("a"), "u", "m2", 2, 2_000);
        r.insert(&s("a"), "v", "m3", 3, 3_000);
        assert_eq!(
            r.get(&s("a"), "x", "y"),
            [1, 2, 3],
            "candidates, checked by the caller"
        );
        r.expire(11_500);
        assert_eq!(r.get(&s("a"), "x", "y"), [2, 3]);
        r.expire(12_500);
        assert_eq!(r.get(&s("a"), "x", "y"), [3]);
        r.expire(13_500);
        assert!(r.get(&s("a"), "x", "y").is_empty());
        assert_eq!(r.len(), 0);
        assert!(r.first.is_empty() && r.more.is_empty());
    }
}

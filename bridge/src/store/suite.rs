//! The behaviour every [`Store`] implementation must have, as checks that run against any of
//! them (`bridge/tests/store_suite.rs` runs them against the embedded and the Cassandra store).
//!
//! Each check takes a store and an [`Ns`], a namespace of ids unique to the check, so that
//! checks can share one database (a Cassandra keyspace is slow to create) and run at the same
//! time. Listings that span streams (`list_streams`, `list_queue(None, ..)`, `list_audit(None,
//! ..)`) are therefore checked on the rows of the check's own namespace.
//!
//! The bucket checks place comments around multiples of [`BUCKET_MS`] and [`SEQ_BUCKET`], the
//! Cassandra store's default partition widths; for other stores they are ordinary data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wire::auth::Role;
use wire::bus::Author;
use wire::event::{Comment, Event, StreamState, StreamStatus, UserRef};
use wire::moderation::{AuditEntry, Ban, BanScope, HeldPost, QueueItem, QueueKind, QueueStatus};
use wire::store::{
    Batch, DecidedLike, DedupHit, DedupKey, LikeChange, ReplayCursor, Store, StoreError,
    StoredComment, StoredEvent, Visibility,
};
use wire::{StreamId, UserId};

/// The Cassandra store's default time bucket (`bucket_ms`).
pub const BUCKET_MS: u64 = 60_000;
/// The Cassandra store's seq bucket.
pub const SEQ_BUCKET: u64 = 10_000;

/// Ids unique to one check.
pub struct Ns {
    prefix: String,
}

impl Default for Ns {
    fn default() -> Self {
        Ns::new()
    }
}

impl Ns {
    /// A namespace unique in this process and, through the clock and the process id, across
    /// runs against the same database.
    pub fn new() -> Ns {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let t = wire::time::now_ms() % 100_000_000;
        Ns {
            prefix: format!("t{t}p{}n{n}", std::process::id()),
        }
    }

    pub fn stream(&self, name: &str) -> StreamId {
        StreamId::new(&format!("{}-{name}", self.prefix)).expect("valid stream id")
    }

    pub fn user(&self, name: &str) -> UserId {
        UserId::new(&format!("{}-{name}", self.prefix)).expect("valid user id")
    }

    /// A globally unique id (queue items).
    pub fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn owns(&self, stream: &StreamId) -> bool {
        stream
            .as_str()
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with('-'))
    }
}

pub type Shared = Arc<dyn Store>;

/// A visible top-level comment `id<seq>` by `user`.
pub fn stored(stream: &StreamId, user: &UserId, seq: u64, offset_ms: u64) -> StoredComment {
    StoredComment {
        comment: Comment {
            id: format!("id{seq}"),
            seq,
            stream: stream.clone(),
            user: UserRef {
                id: user.clone(),
                name: "U".into(),
            },
            text: format!("c{seq}"),
            ts: 0,
            offset_ms,
            reply_to: None,
            likes: 0,
            replies: 0,
        },
        client_msg_id: format!("m{seq}"),
        visibility: Visibility::Visible,
        depth: 0,
    }
}

fn comment(stream: &StreamId, user: &UserId, seq: u64, offset_ms: u64) -> StoredEvent {
    StoredEvent::Comment(stored(stream, user, seq, offset_ms))
}

/// A visible reply `id<seq>` to `parent`.
pub fn reply(
    stream: &StreamId,
    user: &UserId,
    seq: u64,
    offset_ms: u64,
    parent: &str,
) -> StoredEvent {
    let mut c = stored(stream, user, seq, offset_ms);
    c.comment.reply_to = Some(parent.to_owned());
    c.depth = 1;
    StoredEvent::Comment(c)
}

fn retract(stream: &StreamId, seq: u64, comment_seq: u64, reason: &str) -> StoredEvent {
    StoredEvent::Retract {
        stream: stream.clone(),
        seq,
        comment_seq,
        comment_id: format!("id{comment_seq}"),
        reason: reason.into(),
        actor: "mod".into(),
        at: 5,
    }
}

fn restore(stream: &StreamId, seq: u64, comment_seq: u64) -> StoredEvent {
    StoredEvent::Restore {
        stream: stream.clone(),
        seq,
        comment_seq,
        comment_id: format!("id{comment_seq}"),
        actor: "mod".into(),
        at: 6,
    }
}

async fn append(store: &Shared, events: Vec<StoredEvent>) -> Result<(), StoreError> {
    store
        .commit(&Batch {
            events,
            ..Default::default()
        })
        .await
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(Event::seq).collect()
}

fn like_change(stream: &StreamId, user: &UserId, comment_id: &str, like: bool) -> LikeChange {
    LikeChange {
        stream: stream.clone(),
        comment_id: comment_id.into(),
        user: user.clone(),
        like,
    }
}

fn comment_seqs(comments: &[Comment]) -> Vec<u64> {
    comments.iter().map(|c| c.seq).collect()
}

fn item(ns: &Ns, id: &str, stream: &StreamId, comment_id: &str, created_at: i64) -> QueueItem {
    QueueItem {
        id: ns.id(id),
        stream: stream.clone(),
        kind: QueueKind::Reported,
        status: QueueStatus::Open,
        created_at,
        comment_id: Some(comment_id.into()),
        comment: None,
        held: None,
        score: None,
        reason: "reports".into(),
        reports: vec![],
        hidden: false,
        decided_by: None,
        decided_at: None,
        decision_reason: None,
    }
}

fn audit(at: i64, stream: &StreamId) -> AuditEntry {
    AuditEntry {
        at,
        actor: "mod".into(),
        action: "retract".into(),
        stream: Some(stream.clone()),
        comment_id: None,
        user: None,
        reason: format!("r{at}"),
    }
}

pub async fn streams_round_trip_with_compare_and_set(store: Shared, ns: &Ns) {
    let st = StreamState::new(ns.stream("s1"), "t".into(), None, 1);
    assert!(store.create_stream(&st).await.unwrap());
    assert!(!store.create_stream(&st).await.unwrap());
    let mut live = st.clone();
    live.status = StreamStatus::Live;
    live.version = 1;
    assert!(store.update_stream(&live, 0).await.unwrap());
    assert!(
        !store.update_stream(&st, 0).await.unwrap(),
        "compare and set: the stored version is 1 now"
    );
    assert_eq!(store.get_stream(&st.id).await.unwrap(), Some(live));
    let mine: Vec<_> = store
        .list_streams()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| ns.owns(&s.id))
        .collect();
    assert_eq!(mine.len(), 1);
    let ghost = StreamState::new(ns.stream("ghost"), "g".into(), None, 1);
    assert!(
        !store.update_stream(&ghost, 0).await.unwrap(),
        "no record, nothing to compare with"
    );
    assert_eq!(store.get_stream(&ghost.id).await.unwrap(), None);
}

/// Two writers race on the same version: exactly one wins each round.
pub async fn concurrent_compare_and_set(store: Shared, ns: &Ns) {
    let st = StreamState::new(ns.stream("race"), "t".into(), None, 1);
    let (a, b) = tokio::join!(store.create_stream(&st), store.create_stream(&st));
    assert!(a.unwrap() ^ b.unwrap(), "exactly one create wins");
    for round in 0..5u64 {
        let mut x = st.clone();
        x.title = format!("x{round}");
        x.version = round + 1;
        let mut y = st.clone();
        y.title = format!("y{round}");
        y.version = round + 1;
        let (sx, sy) = (store.clone(), store.clone());
        let (a, b) = tokio::join!(
            tokio::spawn(async move { sx.update_stream(&x, round).await }),
            tokio::spawn(async move { sy.update_stream(&y, round).await }),
        );
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        assert!(
            a ^ b,
            "round {round}: exactly one compare-and-set wins ({a}, {b})"
        );
        let now = store.get_stream(&st.id).await.unwrap().unwrap();
        assert_eq!(now.version, round + 1);
        let winner = if a { "x" } else { "y" };
        assert_eq!(
            now.title,
            format!("{winner}{round}"),
            "the winner's record is stored"
        );
    }
}

pub async fn windows_seq_and_dedup(store: Shared, ns: &Ns) {
    let (s1, s2, u1) = (ns.stream("s1"), ns.stream("s2"), ns.user("u1"));
    let batch: Vec<_> = (1..=10).map(|i| comment(&s1, &u1, i, i * 100)).collect();
    append(&store, batch).await.unwrap();
    append(&store, vec![comment(&s2, &u1, 1, 50)])
        .await
        .unwrap();

    assert_eq!(store.last_seq(&s1).await.unwrap(), 10);
    assert_eq!(store.last_seq(&ns.stream("s3")).await.unwrap(), 0);

    // [300, 700) → seqs 3..=6
    let w = store.replay(&s1, 300, 700, None, 100).await.unwrap();
    assert_eq!(comment_seqs(&w), vec![3, 4, 5, 6]);
    let page = store.replay(&s1, 300, 700, None, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    let cursor = ReplayCursor {
        offset_ms: page[1].offset_ms,
        seq: page[1].seq,
    };
    let rest = store
        .replay(&s1, 300, 700, Some(cursor), 100)
        .await
        .unwrap();
    assert_eq!(comment_seqs(&rest), vec![5, 6]);
    // The newest of a window, newest first.
    let newest = store.latest(&s1, 300, 700, 3).await.unwrap();
    assert_eq!(comment_seqs(&newest), vec![6, 5, 4]);
    assert!(store
        .replay(&s1, 700, 700, None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .replay(&s1, 300, 700, None, 0)
        .await
        .unwrap()
        .is_empty());

    let after = store.after_seq(&s1, 8, 100).await.unwrap();
    assert_eq!(seqs(&after), vec![9, 10]);
    assert_eq!(
        seqs(&store.after_seq(&s1, 0, 3).await.unwrap()),
        vec![1, 2, 3]
    );
    assert!(store.after_seq(&s1, u64::MAX, 10).await.unwrap().is_empty());

    let key = |user: &UserId, id: &str| DedupKey {
        stream: s1.clone(),
        user: user.clone(),
        client_msg_id: id.into(),
    };
    let hits = store
        .find_dedup(&[key(&u1, "m4"), key(&ns.user("u2"), "m4")])
        .await
        .unwrap();
    assert_eq!(
        hits,
        vec![
            Some(DedupHit::Stored {
                id: "id4".into(),
                seq: 4
            }),
            None
        ]
    );
    let found = store.find_comment(&s1, "id4").await.unwrap().unwrap();
    assert_eq!(found, stored(&s1, &u1, 4, 400));
    assert!(store.find_comment(&s1, "nope").await.unwrap().is_none());
}

pub async fn retraction_hides_from_replay_and_catch_up_returns_the_events(store: Shared, ns: &Ns) {
    let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
    append(
        &store,
        vec![comment(&s1, &u1, 1, 10), comment(&s1, &u1, 2, 20)],
    )
    .await
    .unwrap();
    append(&store, vec![retract(&s1, 3, 1, "abuse")])
        .await
        .unwrap();
    let replay = store.replay(&s1, 0, 1000, None, 10).await.unwrap();
    assert_eq!(comment_seqs(&replay), vec![2]);
    assert_eq!(
        comment_seqs(&store.latest(&s1, 0, 1000, 10).await.unwrap()),
        vec![2]
    );
    let events = store.after_seq(&s1, 0, 10).await.unwrap();
    assert_eq!(
        seqs(&events),
        vec![2, 3],
        "the retracted comment itself is not served"
    );
    assert!(matches!(&events[1], Event::Retract(r) if r.id == "id1" && r.reason == "abuse"));
    let c = store.find_comment(&s1, "id1").await.unwrap().unwrap();
    assert!(matches!(c.visibility, Visibility::Retracted { .. }));

    append(&store, vec![restore(&s1, 4, 1)]).await.unwrap();
    assert_eq!(store.replay(&s1, 0, 1000, None, 10).await.unwrap().len(), 2);
    let events = store.after_seq(&s1, 2, 10).await.unwrap();
    assert_eq!(seqs(&events), vec![3, 4]);
    assert!(matches!(&events[1], Event::Restore(r) if r.comment.seq == 1 && r.id == "id1"));
    assert_eq!(store.last_seq(&s1).await.unwrap(), 4);

    // A later retraction wins: the restoration is no longer served.
    append(&store, vec![retract(&s1, 5, 1, "again")])
        .await
        .unwrap();
    let events = store.after_seq(&s1, 2, 10).await.unwrap();
    assert_eq!(seqs(&events), vec![3, 5]);
    let c = store.find_comment(&s1, "id1").await.unwrap().unwrap();
    assert!(matches!(c.visibility, Visibility::Retracted { reason, .. } if reason == "again"));
}

/// A batch that inserts a comment and retracts it, or replies to a comment of the same batch.
pub async fn one_batch_touches_a_comment_twice(store: Shared, ns: &Ns) {
    let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
    append(
        &store,
        vec![
            comment(&s1, &u1, 1, 10),
            reply(&s1, &u1, 2, 20, "id1"),
            reply(&s1, &u1, 3, 30, "id1"),
            retract(&s1, 4, 3, "spam"),
            retract(&s1, 5, 2, "spam"),
            restore(&s1, 6, 2),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        comment_seqs(&store.replay(&s1, 0, 100, None, 10).await.unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        store.engagement(&s1, &["id1".into()]).await.unwrap(),
        vec![(0, 1)],
        "one visible reply left"
    );
    assert!(matches!(
        store
            .find_comment(&s1, "id3")
            .await
            .unwrap()
            .unwrap()
            .visibility,
        Visibility::Retracted { .. }
    ));
    assert_eq!(
        seqs(&store.after_seq(&s1, 0, 10).await.unwrap()),
        vec![1, 2, 4, 5, 6]
    );
}

pub async fn moderation_tables(store: Shared, ns: &Ns) {
    let (s1, s2, u) = (ns.stream("s1"), ns.stream("s2"), ns.user("u1"));
    let ban = Ban {
        user: u.clone(),
        scope: BanScope::Stream(s1.clone()),
        shadow: true,
        until: None,
        reason: "r".into(),
        actor: "mod".into(),
        at: 1,
    };
    store.put_ban(&ban).await.unwrap();
    store
        .put_ban(&Ban {
            scope: BanScope::Global,
            ..ban.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        store.bans_of(std::slice::from_ref(&u)).await.unwrap().len(),
        2
    );
    let other = ns.user("u");
    assert!(store
        .bans_of(std::slice::from_ref(&other))
        .await
        .unwrap()
        .is_empty());
    assert!(store.delete_ban(&u, &BanScope::Global).await.unwrap());
    assert!(!store.delete_ban(&u, &BanScope::Global).await.unwrap());
    assert_eq!(store.bans_of(&[other, u.clone()]).await.unwrap(), vec![ban]);

    assert_eq!(store.add_strike(&u, 1_000, 500).await.unwrap(), 1);
    assert_eq!(store.add_strike(&u, 1_200, 500).await.unwrap(), 2);
    assert_eq!(
        store.add_strike(&u, 2_000, 500).await.unwrap(),
        1,
        "old strikes expire"
    );

    let first = item(ns, "01A", &s1, "c1", 1);
    store.put_queue_item(&first).await.unwrap();
    let later = QueueItem {
        comment_id: Some("c2".into()),
        ..item(ns, "01B", &s2, "c2", 1)
    };
    store.put_queue_item(&later).await.unwrap();
    assert_eq!(
        store
            .queue_item_for_comment(&s1, "c1")
            .await
            .unwrap()
            .map(|i| i.id),
        Some(ns.id("01A"))
    );
    assert_eq!(
        store.get_queue_item(&ns.id("01B")).await.unwrap(),
        Some(later.clone())
    );
    let mine = |items: Vec<QueueItem>| -> Vec<String> {
        items
            .into_iter()
            .filter(|i| ns.owns(&i.stream))
            .map(|i| i.id)
            .collect()
    };
    let all = store.list_queue(None, None, 10_000).await.unwrap();
    assert_eq!(mine(all), [ns.id("01B"), ns.id("01A")]);
    assert_eq!(
        store.list_queue(Some(&s1), None, 10).await.unwrap().len(),
        1
    );
    let closed = QueueItem {
        status: QueueStatus::Approved,
        ..first.clone()
    };
    store.put_queue_item(&closed).await.unwrap();
    assert!(store
        .queue_item_for_comment(&s1, "c1")
        .await
        .unwrap()
        .is_none());
    let open = store
        .list_queue(None, Some(QueueStatus::Open), 10_000)
        .await
        .unwrap();
    assert_eq!(mine(open), [ns.id("01B")]);
    assert!(store
        .list_queue(Some(&s1), Some(QueueStatus::Open), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .list_queue(Some(&s1), Some(QueueStatus::Approved), 10)
            .await
            .unwrap(),
        vec![closed.clone()],
        "the item moved to its new status"
    );
    assert_eq!(
        store.list_queue(Some(&s1), None, 10).await.unwrap(),
        vec![closed],
        "and is listed once, as it is now"
    );

    for (at, stream) in [(1, &s1), (2, &s2), (3, &s1)] {
        store.append_audit(&audit(at, stream)).await.unwrap();
    }
    let log = store.list_audit(Some(&s1), None, 10).await.unwrap();
    assert_eq!(log.iter().map(|e| e.at).collect::<Vec<_>>(), vec![3, 1]);
    let older: Vec<i64> = store
        .list_audit(None, Some(3), 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.stream.as_ref().is_some_and(|s| ns.owns(s)))
        .map(|e| e.at)
        .collect();
    assert_eq!(older, vec![2, 1]);
}

/// Audit and queue listings that span days, newest first, with `before` paging.
pub async fn listings_span_days(store: Shared, ns: &Ns) {
    const DAY: i64 = 86_400_000;
    let s1 = ns.stream("s1");
    let ats = [DAY - 1, DAY, 3 * DAY + 5, 3 * DAY + 6, 10 * DAY];
    for at in ats {
        store.append_audit(&audit(at, &s1)).await.unwrap();
    }
    let all = store.list_audit(Some(&s1), None, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.at).collect::<Vec<_>>(),
        vec![10 * DAY, 3 * DAY + 6, 3 * DAY + 5, DAY, DAY - 1]
    );
    let page = store.list_audit(Some(&s1), None, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    let next = store
        .list_audit(Some(&s1), Some(page[1].at), 2)
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|e| e.at).collect::<Vec<_>>(),
        vec![3 * DAY + 5, DAY]
    );
    let last = store.list_audit(Some(&s1), Some(DAY), 10).await.unwrap();
    assert_eq!(last.iter().map(|e| e.at).collect::<Vec<_>>(), vec![DAY - 1]);

    // Queue items of several days; ids increase with creation time, as ULIDs do.
    let now = wire::time::now_ms();
    let created = [now - 5 * DAY, now - 3 * DAY, now - DAY, now];
    for (i, at) in created.iter().enumerate() {
        let it = item(ns, &format!("q{i}"), &s1, &format!("c{i}"), *at);
        store.put_queue_item(&it).await.unwrap();
    }
    // Decide the two oldest: the open listing skips their (now empty) days.
    for (i, at) in created.iter().enumerate().take(2) {
        let mut it = item(ns, &format!("q{i}"), &s1, &format!("c{i}"), *at);
        it.status = QueueStatus::Retracted;
        store.put_queue_item(&it).await.unwrap();
    }
    let ids = |v: Vec<QueueItem>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let open = store
        .list_queue(Some(&s1), Some(QueueStatus::Open), 10)
        .await
        .unwrap();
    assert_eq!(ids(open), vec![ns.id("q3"), ns.id("q2")]);
    let open = store
        .list_queue(Some(&s1), Some(QueueStatus::Open), 10)
        .await
        .unwrap();
    assert_eq!(ids(open), vec![ns.id("q3"), ns.id("q2")], "listing again");
    let all = store.list_queue(Some(&s1), None, 3).await.unwrap();
    assert_eq!(ids(all), vec![ns.id("q3"), ns.id("q2"), ns.id("q1")]);
    let decided = store
        .list_queue(Some(&s1), Some(QueueStatus::Retracted), 10)
        .await
        .unwrap();
    assert_eq!(ids(decided), vec![ns.id("q1"), ns.id("q0")]);
}

pub async fn shadow_comments_stay_out_of_the_log_and_batches_are_atomic(store: Shared, ns: &Ns) {
    let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
    append(&store, vec![comment(&s1, &u1, 1, 10)])
        .await
        .unwrap();
    let mut shadow = stored(&s1, &u1, 1, 20);
    shadow.comment.id = "shadowed".into();
    shadow.client_msg_id = "sh".into();
    shadow.visibility = Visibility::Shadow;
    append(&store, vec![StoredEvent::Comment(shadow.clone())])
        .await
        .unwrap();
    assert_eq!(store.last_seq(&s1).await.unwrap(), 1, "no seq taken");
    assert_eq!(store.after_seq(&s1, 0, 10).await.unwrap().len(), 1);
    assert_eq!(store.replay(&s1, 0, 100, None, 10).await.unwrap().len(), 1);
    assert!(store.find_comment(&s1, "shadowed").await.unwrap().is_none());
    let hit = store
        .find_dedup(&[DedupKey {
            stream: s1.clone(),
            user: u1.clone(),
            client_msg_id: "sh".into(),
        }])
        .await
        .unwrap();
    assert_eq!(
        hit,
        vec![Some(DedupHit::Stored {
            id: "shadowed".into(),
            seq: 1
        })]
    );
    let r = ns.user("r");
    assert!(!store.has_reported(&s1, "id1", &r).await.unwrap());
    store
        .commit(&Batch {
            reporters: vec![(s1.clone(), "id1".into(), r.clone())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(store.has_reported(&s1, "id1", &r).await.unwrap());
    assert!(!store.has_reported(&s1, "id1", &u1).await.unwrap());
    // A batch with a bad event writes none of its parts.
    let bad = StoredEvent::Retract {
        stream: s1.clone(),
        seq: 2,
        comment_seq: 99,
        comment_id: "missing".into(),
        reason: "x".into(),
        actor: "m".into(),
        at: 1,
    };
    let err = store
        .commit(&Batch {
            events: vec![comment(&s1, &u1, 3, 30), bad],
            audit: vec![audit(7, &s1)],
            ..Default::default()
        })
        .await;
    assert!(err.is_err());
    assert_eq!(store.last_seq(&s1).await.unwrap(), 1, "all or nothing");
    assert!(store.find_comment(&s1, "id3").await.unwrap().is_none());
    assert!(store
        .list_audit(Some(&s1), None, 10)
        .await
        .unwrap()
        .is_empty());
}

/// A held post answers its retries as held, then as declined once a moderator rejects it.
pub async fn held_posts_answer_retries(store: Shared, ns: &Ns) {
    let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
    let mut held = item(ns, "h1", &s1, "unused", 1);
    held.kind = QueueKind::Held;
    held.comment_id = None;
    held.held = Some(HeldPost {
        author: Author {
            id: u1.clone(),
            name: "U".into(),
            role: Role::Viewer,
            subscriber: false,
        },
        text: "hmm".into(),
        client_msg_id: "m-held".into(),
        reply_to: None,
    });
    store
        .commit(&Batch {
            items: vec![held.clone()],
            audit: vec![audit(1, &s1)],
            ..Default::default()
        })
        .await
        .unwrap();
    let key = DedupKey {
        stream: s1.clone(),
        user: u1.clone(),
        client_msg_id: "m-held".into(),
    };
    assert_eq!(
        store.find_dedup(std::slice::from_ref(&key)).await.unwrap(),
        vec![Some(DedupHit::Held { item: ns.id("h1") })]
    );
    held.status = QueueStatus::Retracted;
    store
        .commit(&Batch {
            items: vec![held.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.find_dedup(std::slice::from_ref(&key)).await.unwrap(),
        vec![Some(DedupHit::Declined { item: ns.id("h1") })]
    );
    // Approving another held post stores its comment with the item in one batch.
    let mut approved = held.clone();
    approved.id = ns.id("h2");
    approved.status = QueueStatus::Approved;
    if let Some(h) = approved.held.as_mut() {
        h.client_msg_id = "m1".into();
    }
    store
        .commit(&Batch {
            events: vec![comment(&s1, &u1, 1, 10)],
            items: vec![approved],
            ..Default::default()
        })
        .await
        .unwrap();
    let key1 = DedupKey {
        client_msg_id: "m1".into(),
        ..key
    };
    assert_eq!(
        store.find_dedup(&[key1]).await.unwrap(),
        vec![Some(DedupHit::Stored {
            id: "id1".into(),
            seq: 1
        })],
        "a stored comment answers before its held item"
    );
}

pub async fn likes_and_replies(store: Shared, ns: &Ns) {
    let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
    let (a, b) = (ns.user("a"), ns.user("b"));
    append(
        &store,
        vec![
            comment(&s1, &u1, 1, 10),
            reply(&s1, &u1, 2, 20, "id1"),
            reply(&s1, &u1, 3, 30, "id1"),
            comment(&s1, &u1, 4, 40),
        ],
    )
    .await
    .unwrap();
    let like = |user: &UserId, id: &str, like: bool| like_change(&s1, user, id, like);
    let counts = store
        .set_likes(&[
            like(&a, "id1", true),
            like(&b, "id1", true),
            like(&a, "id1", true),
            like(&a, "nope", true),
            like(&b, "id4", false),
            like(&a, "id2", true),
        ])
        .await
        .unwrap();
    assert_eq!(counts, vec![Some(1), Some(2), None, None, None, Some(1)]);
    assert_eq!(
        store.set_likes(&[like(&a, "id1", false)]).await.unwrap(),
        vec![Some(1)]
    );
    assert_eq!(
        store
            .engagement(&s1, &["id1".into(), "id2".into(), "id4".into(), "x".into()])
            .await
            .unwrap(),
        vec![(1, 2), (1, 0), (0, 0), (0, 0)]
    );
    let thread = store.replies(&s1, "id1", 0, 10).await.unwrap();
    assert_eq!(comment_seqs(&thread), vec![2, 3]);
    assert_eq!(thread[0].likes, 1);
    assert_eq!(
        comment_seqs(&store.replies(&s1, "id1", 2, 10).await.unwrap()),
        vec![3]
    );
    assert_eq!(
        comment_seqs(&store.replies(&s1, "id1", 0, 1).await.unwrap()),
        vec![2]
    );
    let w = store.replay(&s1, 0, 100, None, 10).await.unwrap();
    assert_eq!(
        (w[0].likes, w[0].replies),
        (1, 2),
        "replay carries the counts"
    );
    let e = store.after_seq(&s1, 0, 1).await.unwrap();
    assert!(matches!(&e[0], Event::Comment(c) if c.likes == 1 && c.replies == 2));

    // A retracted reply stops counting and is not listed; restored, it counts again.
    append(&store, vec![retract(&s1, 5, 2, "x")]).await.unwrap();
    assert_eq!(
        store.engagement(&s1, &["id1".into()]).await.unwrap(),
        vec![(1, 1)]
    );
    assert_eq!(
        comment_seqs(&store.replies(&s1, "id1", 0, 10).await.unwrap()),
        vec![3]
    );
    assert_eq!(
        comment_seqs(&store.replies(&s1, "id1", 0, 1).await.unwrap()),
        vec![3]
    );
    // Likes of a removed comment change nothing.
    assert_eq!(
        store.set_likes(&[like(&b, "id2", true)]).await.unwrap(),
        vec![None]
    );
    append(&store, vec![retract(&s1, 6, 2, "twice")])
        .await
        .unwrap();
    assert_eq!(
        store.engagement(&s1, &["id1".into()]).await.unwrap(),
        vec![(1, 1)],
        "a second retraction does not count twice"
    );
    append(&store, vec![restore(&s1, 7, 2)]).await.unwrap();
    assert_eq!(
        store.engagement(&s1, &["id1".into()]).await.unwrap(),
        vec![(1, 2)]
    );
    assert_eq!(
        store.engagement(&s1, &["id2".into()]).await.unwrap(),
        vec![(1, 0)],
        "the like from before the retraction is still there"
    );
}

/// Likes decided elsewhere (a cluster's Redis sets): `write_likes` stores them as given, and
/// `likers` reads the sets back to seed that copy.
pub async fn likes_written_as_decided(store: Shared, ns: &Ns) {
    let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
    let (a, b, c) = (ns.user("a"), ns.user("b"), ns.user("c"));
    append(
        &store,
        vec![comment(&s1, &u1, 1, 10), comment(&s1, &u1, 2, 20)],
    )
    .await
    .unwrap();
    // Decision times, increasing as a cluster's Redis hands them out.
    let clock = std::cell::Cell::new(1_763_800_000_000_000_i64);
    let like = |user: &UserId, id: &str, like: bool| {
        clock.set(clock.get() + 1);
        DecidedLike {
            change: like_change(&s1, user, id, like),
            at_us: clock.get(),
        }
    };
    assert_eq!(
        store.likers(&s1, "id1").await.unwrap(),
        Some(vec![]),
        "a visible comment nobody likes"
    );
    assert_eq!(store.likers(&s1, "nope").await.unwrap(), None);
    let stored = store
        .write_likes(&[
            like(&a, "id1", true),
            like(&b, "id1", true),
            like(&c, "id1", true),
            like(&c, "id1", false),
            like(&a, "nope", true),
            like(&a, "id2", true),
        ])
        .await
        .unwrap();
    assert_eq!(stored, vec![true, true, true, true, false, true]);
    let mut likers = store.likers(&s1, "id1").await.unwrap().unwrap();
    likers.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(likers, want, "each user's last change holds");
    assert_eq!(
        store
            .engagement(&s1, &["id1".into(), "id2".into()])
            .await
            .unwrap(),
        vec![(2, 0), (1, 0)],
        "counts move by the net change"
    );
    assert_eq!(
        store.write_likes(&[like(&a, "id1", false)]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        store.likers(&s1, "id1").await.unwrap(),
        Some(vec![b.clone()])
    );
    assert_eq!(
        store.engagement(&s1, &["id1".into()]).await.unwrap(),
        vec![(1, 0)]
    );
    // A removed comment takes no likes and seeds no set.
    append(&store, vec![retract(&s1, 3, 2, "x")]).await.unwrap();
    assert_eq!(store.likers(&s1, "id2").await.unwrap(), None);
    assert_eq!(
        store.write_likes(&[like(&b, "id2", true)]).await.unwrap(),
        vec![false]
    );
}

pub async fn reactions_add_up(store: Shared, ns: &Ns) {
    let s1 = ns.stream("s1");
    assert!(store.reaction_totals(&s1).await.unwrap().is_empty());
    let t = store
        .add_reactions(&s1, &[("🔥".into(), 3), ("❤️".into(), 1)])
        .await
        .unwrap();
    assert_eq!(t, vec![("❤️".into(), 1), ("🔥".into(), 3)]);
    let t = store
        .add_reactions(&s1, &[("🔥".into(), 2), ("🔥".into(), 1)])
        .await
        .unwrap();
    assert_eq!(t, vec![("❤️".into(), 1), ("🔥".into(), 6)]);
    assert_eq!(store.reaction_totals(&s1).await.unwrap(), t);
    assert!(store
        .reaction_totals(&ns.stream("s2"))
        .await
        .unwrap()
        .is_empty());
}

/// Replay, latest and pages around and across time buckets, and over empty ones.
pub async fn replay_across_time_buckets(store: Shared, ns: &Ns) {
    let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
    let b = BUCKET_MS;
    // (seq, offset): two in the first bucket's last ms, two at the next bucket's start, one at
    // its end, then nothing for three buckets.
    let at = [
        (1, b - 10),
        (2, b - 1),
        (3, b - 1),
        (4, b),
        (5, b + 1),
        (6, 2 * b - 1),
        (7, 2 * b),
        (8, 6 * b + 7),
    ];
    let events: Vec<_> = at.iter().map(|(s, o)| comment(&s1, &u1, *s, *o)).collect();
    append(&store, events).await.unwrap();
    let window = |from, to| {
        let store = store.clone();
        let s1 = s1.clone();
        async move { comment_seqs(&store.replay(&s1, from, to, None, 100).await.unwrap()) }
    };
    assert_eq!(
        window(b - 5, b + 5).await,
        vec![2, 3, 4, 5],
        "spans two buckets"
    );
    assert_eq!(window(b, 2 * b).await, vec![4, 5, 6], "exactly one bucket");
    assert_eq!(window(0, 10 * b).await, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        window(2 * b + 1, 6 * b).await,
        Vec::<u64>::new(),
        "empty buckets"
    );
    assert_eq!(window(3 * b, 7 * b).await, vec![8]);

    // Pages of two walk over the boundary without losing or repeating a comment.
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.replay(&s1, 0, 10 * b, cursor, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        let last = &page[page.len() - 1];
        cursor = Some(ReplayCursor {
            offset_ms: last.offset_ms,
            seq: last.seq,
        });
        got.extend(comment_seqs(&page));
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    // A cursor before the window starts at the window.
    let early = ReplayCursor {
        offset_ms: 0,
        seq: 0,
    };
    assert_eq!(
        comment_seqs(&store.replay(&s1, b, 2 * b, Some(early), 10).await.unwrap()),
        vec![4, 5, 6]
    );

    let newest = store.latest(&s1, 0, 10 * b, 5).await.unwrap();
    assert_eq!(comment_seqs(&newest), vec![8, 7, 6, 5, 4]);
    let newest = store.latest(&s1, b - 5, b + 5, 3).await.unwrap();
    assert_eq!(comment_seqs(&newest), vec![5, 4, 3]);

    // Retracted comments near the boundary are skipped, and the page is still full.
    append(
        &store,
        vec![retract(&s1, 9, 3, "x"), retract(&s1, 10, 4, "x")],
    )
    .await
    .unwrap();
    assert_eq!(
        comment_seqs(&store.replay(&s1, 0, 10 * b, None, 3).await.unwrap()),
        vec![1, 2, 5]
    );
    assert_eq!(
        comment_seqs(&store.latest(&s1, 0, 2 * b, 3).await.unwrap()),
        vec![6, 5, 2]
    );
}

/// Catch-up over seq buckets: comments around the boundaries and events addressing comments
/// of an earlier bucket.
pub async fn catch_up_across_seq_buckets(store: Shared, ns: &Ns) {
    let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
    let n = SEQ_BUCKET;
    let list = [n - 2, n - 1, n, n + 1, 2 * n + 5, 4 * n];
    let events: Vec<_> = list
        .iter()
        .enumerate()
        .map(|(i, s)| comment(&s1, &u1, *s, i as u64 * 10))
        .collect();
    append(&store, events).await.unwrap();
    assert_eq!(store.last_seq(&s1).await.unwrap(), 4 * n);
    assert_eq!(seqs(&store.after_seq(&s1, 0, 100).await.unwrap()), list);
    assert_eq!(
        seqs(&store.after_seq(&s1, n - 1, 2).await.unwrap()),
        vec![n, n + 1]
    );
    assert_eq!(
        seqs(&store.after_seq(&s1, n + 1, 10).await.unwrap()),
        vec![2 * n + 5, 4 * n]
    );
    // A page that ends exactly at a bucket's last seq, then the next one.
    assert_eq!(
        seqs(&store.after_seq(&s1, 0, 2).await.unwrap()),
        vec![n - 2, n - 1]
    );
    assert_eq!(
        seqs(&store.after_seq(&s1, n - 1, 100).await.unwrap()),
        vec![n, n + 1, 2 * n + 5, 4 * n]
    );
    // A retraction in a later bucket addresses a comment of an earlier one.
    append(
        &store,
        vec![
            retract(&s1, 4 * n + 1, n - 1, "x"),
            restore(&s1, 4 * n + 2, n - 1),
        ],
    )
    .await
    .unwrap();
    let tail = store.after_seq(&s1, 4 * n, 10).await.unwrap();
    assert_eq!(seqs(&tail), vec![4 * n + 1, 4 * n + 2]);
    assert!(matches!(&tail[1], Event::Restore(r) if r.comment.seq == n - 1));
    assert_eq!(
        seqs(&store.after_seq(&s1, 0, 100).await.unwrap()),
        vec![
            n - 2,
            n - 1,
            n,
            n + 1,
            2 * n + 5,
            4 * n,
            4 * n + 1,
            4 * n + 2
        ]
    );
    // Likes and replies of comments in different seq buckets.
    append(
        &store,
        vec![reply(&s1, &u1, 4 * n + 3, 100, &format!("id{}", n - 2))],
    )
    .await
    .unwrap();
    let likes = store
        .set_likes(&[LikeChange {
            stream: s1.clone(),
            comment_id: format!("id{}", 2 * n + 5),
            user: u1.clone(),
            like: true,
        }])
        .await
        .unwrap();
    assert_eq!(likes, vec![Some(1)]);
    let all = store.after_seq(&s1, 0, 100).await.unwrap();
    let counts: Vec<(u64, u64, u64)> = all
        .iter()
        .filter_map(|e| match e {
            Event::Comment(c) if c.likes + c.replies > 0 => Some((c.seq, c.likes, c.replies)),
            _ => None,
        })
        .collect();
    assert_eq!(counts, vec![(n - 2, 0, 1), (2 * n + 5, 1, 0)]);
}

/// A commit that returned `Ok` is readable through `reader` (another connection or instance).
pub async fn committed_is_readable(writer: Shared, reader: Shared, ns: &Ns) {
    let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
    let events: Vec<_> = (1..=64).map(|i| comment(&s1, &u1, i, i * 7)).collect();
    writer
        .commit(&Batch {
            events,
            audit: vec![audit(1, &s1)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reader.last_seq(&s1).await.unwrap(), 64);
    assert_eq!(reader.after_seq(&s1, 0, 1000).await.unwrap().len(), 64);
    assert_eq!(
        reader.replay(&s1, 0, 1000, None, 1000).await.unwrap().len(),
        64
    );
    assert_eq!(
        reader.find_comment(&s1, "id64").await.unwrap(),
        Some(stored(&s1, &u1, 64, 448))
    );
    assert_eq!(
        reader.list_audit(Some(&s1), None, 10).await.unwrap().len(),
        1
    );
}

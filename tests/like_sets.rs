//! A cluster's like sets in Redis (`bridge::likes::RedisLikes`) against a real `redis-server`
//! and a real store: bridges racing on one comment count each user once, a set lost from
//! Redis is seeded again from the store, and a set whose decisions the store did not take
//! (refused, or failed with an unknown outcome) is dropped and seeded again.

mod common;

use std::sync::Arc;

use bridge::likes::{LikeSets, RedisLikes};
use bridge::store::suite::stored;
use bridge::store::EmbeddedStore;
use common::flaky::Flaky;
use common::redis::RedisServer;
use wire::store::{Batch, DecidedLike, LikeChange, Store, StoredEvent};
use wire::{StreamId, UserId};

struct Setup {
    _dir: tempfile::TempDir,
    _redis: RedisServer,
    /// The same store as `store`, to make it fail.
    flaky: Arc<Flaky>,
    store: Arc<dyn Store>,
    client: redis::Client,
    stream: StreamId,
}

async fn setup() -> Setup {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let flaky = Arc::new(Flaky::new(
        EmbeddedStore::open(&dir.path().join("db.redb"), true).unwrap(),
    ));
    let store: Arc<dyn Store> = flaky.clone();
    let stream = StreamId::new("s1").unwrap();
    let author = UserId::new("ann").unwrap();
    let events = (1..=2)
        .map(|seq| StoredEvent::Comment(stored(&stream, &author, seq, seq * 10)))
        .collect();
    store
        .commit(&Batch {
            events,
            ..Default::default()
        })
        .await
        .unwrap();
    Setup {
        client: redis::Client::open(redis.url()).unwrap(),
        _redis: redis,
        _dir: dir,
        flaky,
        store,
        stream,
    }
}

impl Setup {
    /// A bridge's like sets: a connection of its own.
    async fn bridge(&self) -> RedisLikes {
        let conn = redis::aio::ConnectionManager::new(self.client.clone())
            .await
            .unwrap();
        RedisLikes::new(conn, "lc".into())
    }

    fn like(&self, user: &str, comment: &str, like: bool) -> LikeChange {
        LikeChange {
            stream: self.stream.clone(),
            comment_id: comment.into(),
            user: UserId::new(user).unwrap(),
            like,
        }
    }

    async fn redis(&self, cmd: &str, key: &str) -> redis::Value {
        let mut conn = self
            .client
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd(cmd)
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    async fn likes_stored(&self, comment: &str) -> u64 {
        self.store
            .engagement(&self.stream, &[comment.into()])
            .await
            .unwrap()[0]
            .0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_count_each_user_once_and_a_lost_set_is_seeded_from_the_store() {
    let s = setup().await;
    let (a, b) = (s.bridge().await, s.bridge().await);
    // Users 0..40 like through bridge a, 20..60 through bridge b, one change per call, both
    // at once: 20 users like twice, on two bridges at the same moment.
    let run = |likes: RedisLikes, users: std::ops::Range<u32>| {
        let (store, changes) = (
            s.store.clone(),
            users
                .map(|u| s.like(&format!("u{u}"), "id1", true))
                .collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            let mut counted = Vec::new();
            for ch in changes {
                let n = likes
                    .apply(&*store, std::slice::from_ref(&ch))
                    .await
                    .unwrap();
                counted.extend(n.into_iter().flatten());
            }
            (likes, counted)
        })
    };
    let (ta, tb) = (run(a, 0..40), run(b, 20..60));
    let ((a, mut counted), (_b, from_b)) = (ta.await.unwrap(), tb.await.unwrap());
    counted.extend(from_b);
    counted.sort_unstable();
    assert_eq!(
        counted,
        (1..=60).collect::<Vec<u64>>(),
        "60 users, each counted once, each count handed out once"
    );
    assert_eq!(s.likes_stored("id1").await, 60);
    assert_eq!(
        s.store
            .likers(&s.stream, "id1")
            .await
            .unwrap()
            .unwrap()
            .len(),
        60
    );
    assert_eq!(
        s.redis("SCARD", "lc:likes:s1:id1").await,
        redis::Value::Int(61),
        "the set in Redis: 60 users and the marker"
    );

    // The set is lost (expired, or Redis restarted empty): the next change seeds it from
    // the store, so a user who liked before still cannot like twice.
    s.redis("DEL", "lc:likes:s1:id1").await;
    let n = a
        .apply(
            &*s.store,
            &[s.like("u0", "id1", true), s.like("u1", "id1", false)],
        )
        .await
        .unwrap();
    assert_eq!(n, vec![None, Some(59)]);
    assert_eq!(s.likes_stored("id1").await, 59);
    assert_eq!(
        s.redis("SCARD", "lc:likes:s1:id1").await,
        redis::Value::Int(60)
    );
    // An unknown comment makes no set.
    assert_eq!(
        a.apply(&*s.store, &[s.like("u0", "nope", true)])
            .await
            .unwrap(),
        vec![None]
    );
    assert_eq!(
        s.redis("EXISTS", "lc:likes:s1:nope").await,
        redis::Value::Int(0)
    );

    // A set larger than one seeding command (1 000 users) arrives whole.
    let many: Vec<DecidedLike> = (0..2500)
        .map(|u| DecidedLike {
            change: s.like(&format!("m{u}"), "id2", true),
            at_us: 1_000 + u,
        })
        .collect();
    assert!(s
        .store
        .write_likes(&many)
        .await
        .unwrap()
        .iter()
        .all(|&ok| ok));
    assert_eq!(
        a.apply(
            &*s.store,
            &[s.like("m7", "id2", true), s.like("z", "id2", true)]
        )
        .await
        .unwrap(),
        vec![None, Some(2501)]
    );
    assert_eq!(
        s.redis("SCARD", "lc:likes:s1:id2").await,
        redis::Value::Int(2502)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_whose_decisions_were_not_stored_is_seeded_again_from_the_store() {
    use std::sync::atomic::Ordering;
    let s = setup().await;
    let a = s.bridge().await;
    assert_eq!(
        a.apply(&*s.store, &[s.like("u0", "id2", true)])
            .await
            .unwrap(),
        vec![Some(1)]
    );
    // The store applies the next write, then reports a failure (a timeout): the set is
    // dropped, and the next change sees what the store has.
    s.flaky.fail_after_write_likes.store(true, Ordering::SeqCst);
    assert!(a
        .apply(&*s.store, &[s.like("u1", "id2", true)])
        .await
        .is_err());
    assert_eq!(
        s.redis("EXISTS", "lc:likes:s1:id2").await,
        redis::Value::Int(0)
    );
    assert_eq!(
        a.apply(
            &*s.store,
            &[s.like("u1", "id2", true), s.like("u2", "id2", true)]
        )
        .await
        .unwrap(),
        vec![None, Some(3)],
        "u1's like was stored: seeded from the store, it is not counted twice"
    );
    assert_eq!(s.likes_stored("id2").await, 3);

    // The comment is removed while its set lives: Redis takes the next like, the store
    // refuses it, the set is dropped, and a removed comment gets no new one.
    s.store
        .commit(&Batch {
            events: vec![StoredEvent::Retract {
                stream: s.stream.clone(),
                seq: 3,
                comment_seq: 2,
                comment_id: "id2".into(),
                reason: "spam".into(),
                actor: "mod".into(),
                at: 5,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        a.apply(
            &*s.store,
            &[s.like("u3", "id2", true), s.like("u0", "id2", false)]
        )
        .await
        .unwrap(),
        vec![None, None]
    );
    assert_eq!(
        s.redis("EXISTS", "lc:likes:s1:id2").await,
        redis::Value::Int(0)
    );
    assert_eq!(
        a.apply(&*s.store, &[s.like("u4", "id2", true)])
            .await
            .unwrap(),
        vec![None]
    );
    assert_eq!(
        s.redis("EXISTS", "lc:likes:s1:id2").await,
        redis::Value::Int(0)
    );
    assert_eq!(
        s.likes_stored("id2").await,
        3,
        "nothing stored for a removed comment"
    );
}

/// A like is fire-and-forget: nobody is told when it could not be stored, so the bus is its
/// retry. Its submission stays pending, is claimed again after `claim_idle_ms`, and counts
/// once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_like_the_store_failed_is_retried_from_the_bus() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use bridge::bus::redis::{RedisBus, RedisBusConfig};
    use wire::bus::Bus;

    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(dir.path());
    let stop = tokio_util::sync::CancellationToken::new();
    let bus = Arc::new(
        RedisBus::connect(
            RedisBusConfig {
                url: s._redis.url(),
                prefix: "lc".into(),
                claim_idle_ms: 600,
                unwatch_linger_ms: 200,
                queue_capacity: 64,
            },
            "bridge-1".into(),
            stop.clone(),
        )
        .await
        .unwrap(),
    );
    let shutdown = bridge::BridgeShutdown::default();
    let (_bridge, tasks) = bridge::Bridge::start(
        config.bridge.clone(),
        bridge::BridgeDeps {
            store: s.store.clone(),
            bus: bus.clone(),
            streams: wire::streams::StreamDirectory::new(s.store.clone()),
            moderation: Arc::new(moderation::Moderation::new(config.moderation.clone())),
            accepted: None,
            sequencer: Arc::new(bridge::sequence::MemorySequencer::default()),
            limits: Arc::new(bridge::limits::LocalLimits::new(0, Duration::from_secs(1))),
            claims: Arc::new(bridge::claims::LocalClaims::default()),
            likes: Arc::new(s.bridge().await),
        },
        shutdown.clone(),
    )
    .unwrap();

    s.flaky.fail_write_likes.store(true, Ordering::SeqCst);
    let mut like = common::post("unused");
    like.kind = wire::bus::SubmissionKind::Like;
    like.author.id = UserId::new("u1").unwrap();
    like.payload = serde_json::json!({"emoji": "👍", "comment_id": "id1"})
        .to_string()
        .into();
    bus.submit(like).await.unwrap();

    let deadline = tokio::time::Instant::now() + common::WAIT;
    while s.likes_stored("id1").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the like was not retried after the store failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !s.flaky.fail_write_likes.load(Ordering::SeqCst),
        "the first attempt failed"
    );
    assert_eq!(s.likes_stored("id1").await, 1);
    // Once stored, the submission is confirmed: nothing stays pending to be applied again.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let pending = s.redis("XLEN", "lc:submissions").await;
        if pending == redis::Value::Int(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still on the bus: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.consumer.cancel();
    shutdown.writer.cancel();
    tokio::time::timeout(common::WAIT, tasks.writer)
        .await
        .expect("the writer stopped")
        .unwrap();
    stop.cancel();
    assert_eq!(s.likes_stored("id1").await, 1, "counted once");
}

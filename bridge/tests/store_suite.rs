//! The store behaviour suite (`bridge::store::suite`) against every store: the embedded one
//! (a temporary directory per check) and Cassandra at `CASSANDRA_URI` (`host:port`; one
//! keyspace, `livecomments_test`, shared by all checks, which keep apart by unique ids).
//! `scripts/test` starts a Cassandra node and sets `CASSANDRA_URI`; without it the Cassandra
//! checks fail rather than pass unchecked.
//!
//! After the shared checks: what only a cluster store has (fresh connections, concurrent
//! schema creation, an unreachable or vanishing node).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge::store::cassandra::{CassandraConfig, CassandraStore};
use bridge::store::suite::{self, Ns, Shared};
use bridge::store::EmbeddedStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use wire::store::{Store, StoreError};

/// The keyspace every Cassandra check shares (created once per node; later runs reuse it).
const KEYSPACE: &str = "livecomments_test";

async fn open_embedded() -> (Option<tempfile::TempDir>, Shared) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("db.redb"), true).unwrap();
    (Some(dir), Arc::new(store))
}

fn cassandra_uri() -> String {
    std::env::var("CASSANDRA_URI").unwrap_or_else(|_| {
        panic!(
            "CASSANDRA_URI is not set: run scripts/test (it starts a Cassandra node), or start \
             one with `scripts/cassandra start DIR` and set CASSANDRA_URI=127.0.0.1:PORT"
        )
    })
}

fn cassandra_config(keyspace: &str) -> CassandraConfig {
    CassandraConfig {
        nodes: vec![cassandra_uri()],
        keyspace: keyspace.into(),
        // A test node shares two cores with the compiler and the other checks.
        request_timeout_ms: 30_000,
        connect_timeout_ms: 10_000,
        ..CassandraConfig::default()
    }
}

/// Creates the shared keyspace once per test binary, before any check connects.
async fn shared_keyspace() {
    static SCHEMA: OnceCell<()> = OnceCell::const_new();
    SCHEMA
        .get_or_init(|| async {
            let started = Instant::now();
            CassandraStore::connect(&cassandra_config(KEYSPACE))
                .await
                .unwrap_or_else(|e| panic!("connecting to Cassandra at {}: {e}", cassandra_uri()));
            eprintln!("cassandra keyspace ready in {:?}", started.elapsed());
        })
        .await;
}

async fn open_cassandra() -> (Option<tempfile::TempDir>, Shared) {
    shared_keyspace().await;
    let store = CassandraStore::connect(&cassandra_config(KEYSPACE))
        .await
        .unwrap();
    (None, Arc::new(store))
}

macro_rules! checks {
    ($open:ident: $($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let (_dir, store) = $open().await;
            suite::$check(store, &Ns::new()).await;
        }
    )*};
}

macro_rules! suite {
    ($open:ident) => {
        checks!($open:
            streams_round_trip_with_compare_and_set,
            concurrent_compare_and_set,
            windows_seq_and_dedup,
            retraction_hides_from_replay_and_catch_up_returns_the_events,
            one_batch_touches_a_comment_twice,
            moderation_tables,
            listings_span_days,
            shadow_comments_stay_out_of_the_log_and_batches_are_atomic,
            held_posts_answer_retries,
            likes_and_replies,
            likes_written_as_decided,
            reactions_add_up,
            replay_across_time_buckets,
            catch_up_across_seq_buckets,
        );
    };
}

mod embedded {
    use super::*;

    suite!(open_embedded);

    #[tokio::test]
    async fn committed_is_readable() {
        let (_dir, store) = open_embedded().await;
        suite::committed_is_readable(store.clone(), store, &Ns::new()).await;
    }
}

mod cassandra {
    use super::*;

    suite!(open_cassandra);

    /// Two bridges decided a like then an unlike (Redis times 1 then 2), and the unlike's
    /// write arrives first: the row still ends unliked, and the count at zero.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn likes_written_out_of_order_end_as_decided() {
        use wire::store::{Batch, DecidedLike, LikeChange, StoredEvent};
        let (_, store) = open_cassandra().await;
        let ns = Ns::new();
        let (s1, u) = (ns.stream("s1"), ns.user("u"));
        let stored = suite::stored(&s1, &u, 1, 10);
        store
            .commit(&Batch {
                events: vec![StoredEvent::Comment(stored)],
                ..Default::default()
            })
            .await
            .unwrap();
        let change = |like: bool, at_us: i64| DecidedLike {
            change: LikeChange {
                stream: s1.clone(),
                comment_id: "id1".into(),
                user: u.clone(),
                like,
            },
            at_us,
        };
        let base = 1_763_800_000_000_000;
        assert_eq!(
            store.write_likes(&[change(false, base + 2)]).await.unwrap(),
            vec![true]
        );
        assert_eq!(
            store.write_likes(&[change(true, base + 1)]).await.unwrap(),
            vec![true]
        );
        assert_eq!(store.likers(&s1, "id1").await.unwrap(), Some(vec![]));
        assert_eq!(
            store.engagement(&s1, &["id1".into()]).await.unwrap(),
            vec![(0, 0)]
        );
    }

    /// What a commit returned `Ok` for is there for another connection, at the configured
    /// consistency.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_is_readable_from_a_fresh_connection() {
        let (_, writer) = open_cassandra().await;
        let (_, reader) = open_cassandra().await;
        suite::committed_is_readable(writer, reader, &Ns::new()).await;
    }

    /// The same batch committed again (as after a failure half-way) writes the same rows and
    /// counts nothing twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committing_a_batch_again_changes_nothing() {
        let (_, store) = open_cassandra().await;
        let ns = Ns::new();
        let (s1, u1) = (ns.stream("s1"), ns.user("u1"));
        let batch = wire::store::Batch {
            events: vec![
                wire::store::StoredEvent::Comment(suite::stored(&s1, &u1, 1, 10)),
                suite::reply(&s1, &u1, 2, 20, "id1"),
            ],
            ..Default::default()
        };
        store.commit(&batch).await.unwrap();
        store.commit(&batch).await.unwrap();
        assert_eq!(
            store.engagement(&s1, &["id1".into()]).await.unwrap(),
            vec![(0, 1)]
        );
        assert_eq!(store.replay(&s1, 0, 100, None, 10).await.unwrap().len(), 2);
        assert_eq!(store.after_seq(&s1, 0, 10).await.unwrap().len(), 2);
        assert_eq!(store.last_seq(&s1).await.unwrap(), 2);
    }

    fn assert_unavailable(r: Result<impl std::fmt::Debug, StoreError>) {
        match r {
            Err(StoreError::Backend(msg)) => {
                assert!(msg.contains("unavailable"), "{msg}")
            }
            other => panic!("expected the retryable backend error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_is_a_retryable_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = CassandraConfig {
            nodes: vec![format!("127.0.0.1:{port}")],
            connect_timeout_ms: 2_000,
            ..CassandraConfig::default()
        };
        let started = Instant::now();
        assert_unavailable(CassandraStore::connect(&config).await.map(|_| ()));
        assert!(started.elapsed() < Duration::from_secs(15));
    }

    /// Several processes starting at once on a new keyspace all succeed; a later start with a
    /// different bucket width is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn schema_creation_is_safe_when_several_start_at_once() {
        let keyspace = format!("lc_schema_{}", std::process::id());
        let config = cassandra_config(&keyspace);
        let started = Instant::now();
        let (a, b, c) = tokio::join!(
            CassandraStore::connect(&config),
            CassandraStore::connect(&config),
            CassandraStore::connect(&config),
        );
        eprintln!("three concurrent schema creations: {:?}", started.elapsed());
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        // They all use the same tables: what one writes, the others read.
        let ns = Ns::new();
        suite::committed_is_readable(Arc::new(a), Arc::new(b), &ns).await;
        assert_eq!(c.last_seq(&ns.stream("s1")).await.unwrap(), 64);
        let other = CassandraConfig {
            bucket_ms: 10_000,
            ..config.clone()
        };
        match CassandraStore::connect(&other).await {
            Err(StoreError::Backend(msg)) => assert!(msg.contains("bucket"), "{msg}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a different bucket width must be refused"),
        }
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_node(cassandra_uri())
            .build()
            .await
            .unwrap();
        let mut drop = scylla::statement::unprepared::Statement::new(format!(
            "DROP KEYSPACE IF EXISTS {keyspace}"
        ));
        drop.set_request_timeout(Some(Duration::from_secs(120)));
        session.query_unpaged(drop, &[]).await.unwrap();
    }

    /// A TCP proxy in front of the node, which the test can cut off and bring back.
    struct Proxy {
        addr: SocketAddr,
        tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    }

    impl Proxy {
        async fn start(addr: SocketAddr, upstream: String) -> Proxy {
            let listener = TcpListener::bind(addr).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
            let conns = tasks.clone();
            let accept = tokio::spawn(async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let conn = tokio::spawn(async move {
                        if let Ok(mut up) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                    conns.lock().unwrap().push(conn);
                }
            });
            tasks.lock().unwrap().push(accept);
            Proxy { addr, tasks }
        }

        /// Closes the listener and every connection: to the driver, the node died. Waits
        /// until the aborted tasks have dropped their sockets: `abort` only asks, and a
        /// listener still open when the test binds the port again fails with AddrInUse.
        async fn cut(&self) {
            let tasks: Vec<JoinHandle<()>> = self.tasks.lock().unwrap().drain(..).collect();
            for t in &tasks {
                t.abort();
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }

    /// Operations on a store whose node went away fail with the retryable error within the
    /// request timeout, and work again once the node is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vanished_node_gives_retryable_errors_then_recovers() {
        shared_keyspace().await;
        let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), cassandra_uri()).await;
        let config = CassandraConfig {
            nodes: vec![proxy.addr.to_string()],
            request_timeout_ms: 3_000,
            connect_timeout_ms: 2_000,
            ..cassandra_config(KEYSPACE)
        };
        let store = CassandraStore::connect(&config).await.unwrap();
        let ns = Ns::new();
        let s1 = ns.stream("s1");
        assert_eq!(store.last_seq(&s1).await.unwrap(), 0);

        proxy.cut().await;
        let started = Instant::now();
        assert_unavailable(store.last_seq(&s1).await);
        let events = vec![wire::store::StoredEvent::Comment(suite::stored(
            &s1,
            &ns.user("u1"),
            1,
            10,
        ))];
        let batch = wire::store::Batch {
            events,
            ..Default::default()
        };
        assert_unavailable(store.commit(&batch).await);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "errors come within the request timeout, took {:?}",
            started.elapsed()
        );

        let back = Proxy::start(proxy.addr, cassandra_uri()).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match store.commit(&batch).await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("still reconnecting: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("the store did not recover: {e}"),
            }
        }
        assert_eq!(store.last_seq(&s1).await.unwrap(), 1);
        back.cut().await;
    }
}

//! The store behaviour suite (`bridge::store::suite`) against every store: the embedded one
//! (a temporary directory per check).

use std::sync::Arc;

use bridge::store::suite::{self, Ns, Shared};
use bridge::store::EmbeddedStore;

async fn open_embedded() -> (Option<tempfile::TempDir>, Shared) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("db.redb"), true).unwrap();
    (Some(dir), Arc::new(store))
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

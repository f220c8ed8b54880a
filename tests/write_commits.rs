//! What arrives while a batch of posts commits: a retry of a post still committing, posts
//! queued behind a commit that fails, a stop (a bridge on an embedded store whose commits the
//! test holds and fails). These hold for any writer, and are what a writer that overlaps its
//! work with the commit (tried, docs/benchmarks.md §3) must keep.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::flaky::FlakyBridge;
use common::post;
use wire::event::Event;
use wire::inbox::{Accepted, Answer, Outcome, RejectCode};
use wire::ingest::Ingest;
use wire::store::Store;
use wire::StreamId;

/// Long enough for the writer to take what is queued, if it would.
const CHECKED: Duration = Duration::from_millis(300);

fn accepted(outcome: Outcome) -> Accepted {
    match outcome {
        Ok(Answer::Accepted(a)) => a,
        other => panic!("accepted: {other:?}"),
    }
}

/// Submits without waiting for the answer.
fn submit(b: &FlakyBridge, cmid: &str) -> tokio::task::JoinHandle<Outcome> {
    let (bridge, post) = (b.bridge.clone(), post(cmid));
    tokio::spawn(async move { bridge.submit(post).await })
}

/// The seqs of the stream's stored comments.
async fn stored(b: &FlakyBridge) -> Vec<u64> {
    let events = b
        .store
        .after_seq(&StreamId::new("s1").unwrap(), 0, 100)
        .await
        .unwrap();
    events
        .iter()
        .map(|e| match e {
            Event::Comment(c) => c.seq,
            other => panic!("only comments: {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sent_while_its_post_commits_gets_the_same_answer() {
    let mut b = FlakyBridge::start().await;
    let a1 = accepted(b.bridge.submit(post("a1")).await);

    b.store.hold_commits(true);
    let first = submit(&b, "x1");
    b.store.until_held(1).await;
    // The retry (not yet findable in the store) and a new post arrive meanwhile.
    let retry = submit(&b, "x1");
    let x2 = submit(&b, "x2");
    tokio::time::sleep(CHECKED).await;
    assert!(
        !retry.is_finished(),
        "the retry waits for its post's commit"
    );
    b.store.hold_commits(false);

    let first = accepted(first.await.unwrap());
    assert_eq!(first.seq, a1.seq + 1);
    assert_eq!(
        accepted(retry.await.unwrap()),
        first,
        "stored once, answered alike"
    );
    let x2 = accepted(x2.await.unwrap());
    assert_eq!(x2.seq, first.seq + 1);
    assert_eq!(b.published().await, [a1.seq, first.seq, x2.seq]);
    assert_eq!(stored(&b).await, [a1.seq, first.seq, x2.seq]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_queued_behind_a_failed_commit_are_numbered_after_what_is_stored() {
    let mut b = FlakyBridge::start().await;
    let a1 = accepted(b.bridge.submit(post("a1")).await);

    b.store.hold_commits(true);
    b.store.fail_commit.store(true, Ordering::SeqCst);
    let x1 = submit(&b, "x1");
    b.store.until_held(1).await;
    let x2 = submit(&b, "x2");
    tokio::time::sleep(CHECKED).await;
    b.store.hold_commits(false);

    let refused = x1.await.unwrap().unwrap_err();
    assert_eq!(refused.code, RejectCode::Unavailable);
    // x1's seq was given back: no gap in the stream.
    let x2 = accepted(x2.await.unwrap());
    assert_eq!(x2.seq, a1.seq + 1);
    assert_eq!(b.published().await, [a1.seq, x2.seq]);
    // The retry stores x1 after it.
    let x1 = accepted(b.bridge.submit(post("x1")).await);
    assert_eq!(x1.seq, x2.seq + 1);
    assert_eq!(stored(&b).await, [a1.seq, x2.seq, x1.seq]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_waits_for_the_commit_running_and_answers_it() {
    let b = FlakyBridge::start().await;
    let store = b.store.clone();
    store.hold_commits(true);
    let x1 = submit(&b, "x1");
    store.until_held(1).await;

    let stopping = tokio::spawn(b.stop());
    tokio::time::sleep(CHECKED).await;
    assert!(!stopping.is_finished(), "the writer waits for its commit");
    store.hold_commits(false);
    stopping.await.unwrap();

    let x1 = accepted(x1.await.unwrap());
    let events = store
        .after_seq(&StreamId::new("s1").unwrap(), 0, 10)
        .await
        .unwrap();
    assert!(
        matches!(&events[..], [Event::Comment(c)] if c.seq == x1.seq),
        "{events:?}"
    );
}

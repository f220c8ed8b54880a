//! A store that fails or stalls on demand, for tests of what the write path does about it,
//! and a bridge on it (in this process, on the in-memory bus).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bridge::claims::LocalClaims;
use bridge::store::EmbeddedStore;
use bridge::{Bridge, BridgeDeps, BridgeShutdown, BridgeTasks};
use tokio::sync::{mpsc, watch};
use wire::bus::{Bus, Delivery, MemoryBus};
use wire::event::{Comment, Event, StreamState, StreamStatus};
use wire::moderation::{AuditEntry, Ban, BanScope, QueueItem, QueueStatus};
use wire::store::{
    Batch, DedupHit, DedupKey, LikeChange, ReplayCursor, Store, StoreError, StoredComment,
};
use wire::streams::StreamDirectory;
use wire::{StreamId, UserId};

/// The embedded store, which can report a failure after it applied a write, as a storage
/// timeout does.
pub struct Flaky {
    pub inner: EmbeddedStore,
    /// The next commit is applied, then reported failed.
    pub fail_after_commit: AtomicBool,
    /// The next commit fails without applying anything.
    pub fail_commit: AtomicBool,
    /// The next `write_likes` is applied, then reported failed.
    pub fail_after_write_likes: AtomicBool,
    /// The next `write_likes` fails without applying anything.
    pub fail_write_likes: AtomicBool,
    /// While `true`, commits wait before they start.
    hold: watch::Sender<bool>,
    /// How many commits wait for `hold` to end.
    held: watch::Sender<usize>,
}

impl Flaky {
    pub fn new(inner: EmbeddedStore) -> Flaky {
        Flaky {
            inner,
            fail_after_commit: AtomicBool::new(false),
            fail_commit: AtomicBool::new(false),
            fail_after_write_likes: AtomicBool::new(false),
            fail_write_likes: AtomicBool::new(false),
            hold: watch::Sender::new(false),
            held: watch::Sender::new(0),
        }
    }

    /// Makes commits wait (`true`) until called with `false`.
    pub fn hold_commits(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// Waits until `n` commits wait for [`Flaky::hold_commits`] to end.
    pub async fn until_held(&self, n: usize) {
        let mut held = self.held.subscribe();
        tokio::time::timeout(super::WAIT, held.wait_for(|h| *h >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} commits held in time"))
            .unwrap();
    }
}

/// A bridge on a [`Flaky`] store with a live stream `s1`, on the in-memory bus (whose
/// deliveries the test reads).
pub struct FlakyBridge {
    pub store: Arc<Flaky>,
    pub bridge: Bridge,
    pub deliveries: mpsc::Receiver<Delivery>,
    shutdown: BridgeShutdown,
    tasks: BridgeTasks,
    _dir: tempfile::TempDir,
}

impl FlakyBridge {
    pub async fn start() -> FlakyBridge {
        let dir = tempfile::tempdir().unwrap();
        let config = super::test_config(dir.path());
        let store = Arc::new(Flaky::new(
            EmbeddedStore::open(&dir.path().join("db.redb"), true).unwrap(),
        ));
        let id = StreamId::new("s1").unwrap();
        let mut live = StreamState::new(id, "s1".into(), None, 0);
        live.status = StreamStatus::Live;
        live.started_at = Some(wire::time::now_ms());
        assert!(store.create_stream(&live).await.unwrap());
        let bus = Arc::new(MemoryBus::new(1024));
        let deliveries = bus.take_deliveries().unwrap();
        let shutdown = BridgeShutdown::default();
        let (bridge, tasks) = Bridge::start(
            config.bridge.clone(),
            BridgeDeps {
                store: store.clone(),
                bus: bus.clone(),
                streams: StreamDirectory::new(store.clone()),
                moderation: Arc::new(moderation::Moderation::new(config.moderation.clone())),
                accepted: None,
                sequencer: Arc::new(bridge::sequence::MemorySequencer::default()),
                limits: Arc::new(bridge::limits::LocalLimits::new(0, Duration::from_secs(1))),
                claims: Arc::new(LocalClaims::default()),
                likes: Arc::new(bridge::likes::StoreLikes),
            },
            shutdown.clone(),
        )
        .unwrap();
        FlakyBridge {
            store,
            bridge,
            deliveries,
            shutdown,
            tasks,
            _dir: dir,
        }
    }

    /// The seqs of the stream events published until nothing comes for a while.
    pub async fn published(&mut self) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Ok(Some(d)) =
            tokio::time::timeout(Duration::from_millis(500), self.deliveries.recv()).await
        {
            if let Delivery::Stream { seq, .. } = d {
                seqs.push(seq);
            }
        }
        seqs
    }

    /// Stops the write path (it stores and answers what it holds first) and waits for it.
    pub async fn stop(self) {
        self.shutdown.consumer.cancel();
        self.shutdown.writer.cancel();
        tokio::time::timeout(super::WAIT, self.tasks.writer)
            .await
            .expect("the writer stopped")
            .unwrap();
    }
}

#[async_trait]
impl Store for Flaky {
    async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if *self.hold.borrow() {
            self.held.send_modify(|h| *h += 1);
            let mut rx = self.hold.subscribe();
            let _ = rx.wait_for(|hold| !hold).await;
            self.held.send_modify(|h| *h -= 1);
        }
        if self.fail_commit.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Backend("unavailable (not applied)".into()));
        }
        self.inner.commit(batch).await?;
        if self.fail_after_commit.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Task("request timed out (applied)".into()));
        }
        Ok(())
    }
    async fn create_stream(&self, s: &StreamState) -> Result<bool, StoreError> {
        self.inner.create_stream(s).await
    }
    async fn update_stream(&self, s: &StreamState, e: u64) -> Result<bool, StoreError> {
        self.inner.update_stream(s, e).await
    }
    async fn get_stream(&self, id: &StreamId) -> Result<Option<StreamState>, StoreError> {
        self.inner.get_stream(id).await
    }
    async fn list_streams(&self) -> Result<Vec<StreamState>, StoreError> {
        self.inner.list_streams().await
    }
    async fn last_seq(&self, s: &StreamId) -> Result<u64, StoreError> {
        self.inner.last_seq(s).await
    }
    async fn find_dedup(&self, k: &[DedupKey]) -> Result<Vec<Option<DedupHit>>, StoreError> {
        self.inner.find_dedup(k).await
    }
    async fn has_reported(&self, s: &StreamId, c: &str, u: &UserId) -> Result<bool, StoreError> {
        self.inner.has_reported(s, c, u).await
    }
    async fn add_reactions(
        &self,
        s: &StreamId,
        c: &[(String, u64)],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.add_reactions(s, c).await
    }
    async fn reaction_totals(&self, s: &StreamId) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.reaction_totals(s).await
    }
    async fn set_likes(&self, c: &[LikeChange]) -> Result<Vec<Option<u64>>, StoreError> {
        self.inner.set_likes(c).await
    }
    async fn write_likes(&self, c: &[wire::store::DecidedLike]) -> Result<Vec<bool>, StoreError> {
        if self.fail_write_likes.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Backend("unavailable (not applied)".into()));
        }
        let stored = self.inner.write_likes(c).await?;
        if self.fail_after_write_likes.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Task("request timed out (applied)".into()));
        }
        Ok(stored)
    }
    async fn likers(&self, s: &StreamId, c: &str) -> Result<Option<Vec<UserId>>, StoreError> {
        self.inner.likers(s, c).await
    }
    async fn engagement(
        &self,
        s: &StreamId,
        ids: &[String],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        self.inner.engagement(s, ids).await
    }
    async fn replies(
        &self,
        s: &StreamId,
        p: &str,
        a: u64,
        l: usize,
    ) -> Result<Vec<Comment>, StoreError> {
        self.inner.replies(s, p, a, l).await
    }
    async fn find_comment(
        &self,
        s: &StreamId,
        id: &str,
    ) -> Result<Option<StoredComment>, StoreError> {
        self.inner.find_comment(s, id).await
    }
    async fn replay(
        &self,
        s: &StreamId,
        f: u64,
        t: u64,
        a: Option<ReplayCursor>,
        l: usize,
    ) -> Result<Vec<Comment>, StoreError> {
        self.inner.replay(s, f, t, a, l).await
    }
    async fn latest(
        &self,
        s: &StreamId,
        f: u64,
        t: u64,
        l: usize,
    ) -> Result<Vec<Comment>, StoreError> {
        self.inner.latest(s, f, t, l).await
    }
    async fn after_seq(&self, s: &StreamId, a: u64, l: usize) -> Result<Vec<Event>, StoreError> {
        self.inner.after_seq(s, a, l).await
    }
    async fn put_ban(&self, b: &Ban) -> Result<(), StoreError> {
        self.inner.put_ban(b).await
    }
    async fn delete_ban(&self, u: &UserId, s: &BanScope) -> Result<bool, StoreError> {
        self.inner.delete_ban(u, s).await
    }
    async fn bans_of(&self, u: &[UserId]) -> Result<Vec<Ban>, StoreError> {
        self.inner.bans_of(u).await
    }
    async fn put_queue_item(&self, i: &QueueItem) -> Result<(), StoreError> {
        self.inner.put_queue_item(i).await
    }
    async fn get_queue_item(&self, id: &str) -> Result<Option<QueueItem>, StoreError> {
        self.inner.get_queue_item(id).await
    }
    async fn queue_item_for_comment(
        &self,
        s: &StreamId,
        c: &str,
    ) -> Result<Option<QueueItem>, StoreError> {
        self.inner.queue_item_for_comment(s, c).await
    }
    async fn list_queue(
        &self,
        s: Option<&StreamId>,
        st: Option<QueueStatus>,
        l: usize,
    ) -> Result<Vec<QueueItem>, StoreError> {
        self.inner.list_queue(s, st, l).await
    }
    async fn add_strike(&self, u: &UserId, at: i64, w: i64) -> Result<u32, StoreError> {
        self.inner.add_strike(u, at, w).await
    }
    async fn append_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        self.inner.append_audit(e).await
    }
    async fn list_audit(
        &self,
        s: Option<&StreamId>,
        b: Option<i64>,
        l: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.list_audit(s, b, l).await
    }
}

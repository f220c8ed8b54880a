//! The Redis bus of a cluster.
//!
//! - **Submissions** (node → write path) go on one Redis Stream, `{prefix}:submissions`, read
//!   by the consumer group `bridges`: bridges share the load, an entry is acknowledged (and
//!   deleted) only after it was answered, and entries a crashed bridge left pending are claimed
//!   by another after `claim_idle_ms` (`XAUTOCLAIM`). Redelivery is harmless: the
//!   `client_msg_id` de-duplication answers a retry with the first answer.
//! - **Deliveries** (write path → nodes) go by pub/sub, one channel per stream
//!   (`{prefix}:s:{stream}`) and per user (`{prefix}:u:{user}`, inbox answers). A node
//!   subscribes while it has local viewers of a stream or connections of a user, and
//!   unsubscribes `unwatch_linger_ms` after the last one left. After a lost connection it
//!   reconnects with back-off and subscribes again to everything it watches.
//!
//! Messages are postcard-encoded `Submission`s and `Delivery`s.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::bus::{
    Bus, BusError, Call, CallResult, Channel, Delivery, Received, ReplyTo, Request, Submission,
};

/// `[bus]` settings used by the Redis bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedisBusConfig {
    pub url: String,
    /// Prefix of every key and channel, so several systems can share one Redis.
    pub prefix: String,
    /// A submission pending this long with a dead consumer is claimed by another.
    pub claim_idle_ms: u64,
    /// Unsubscribe from a channel this long after the last local interest ended.
    pub unwatch_linger_ms: u64,
    pub queue_capacity: usize,
}

const GROUP: &str = "bridges";
/// How long a node waits for Redis to take a submission before telling the client to retry.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_COUNT: usize = 256;

enum WatchCmd {
    Watch(String),
    Unwatch(String),
}

pub struct RedisBus {
    client: redis::Client,
    conn: ConnectionManager,
    config: RedisBusConfig,
    /// This process's consumer name in the group.
    consumer: String,
    watch_tx: mpsc::UnboundedSender<WatchCmd>,
    deliveries: Mutex<Option<mpsc::Receiver<Delivery>>>,
    submissions_taken: AtomicBool,
    shutdown: CancellationToken,
    /// This process's reply channel for calls, `{prefix}:r:{consumer}`.
    reply_channel: String,
    next_call: AtomicU64,
    /// Calls waiting for their result.
    pending: Pending,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<CallResult>>>>;

/// A call on the submission stream (JSON: its types carry tagged enums).
#[derive(Serialize, Deserialize)]
struct CallEnvelope {
    call: Call,
    reply_to: ReplyTo,
}

/// A call's result on the caller's reply channel.
#[derive(Serialize, Deserialize)]
struct ReplyEnvelope {
    id: u64,
    result: CallResult,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// Longest one call on the cluster's shared state in Redis may take (presence, reactions,
/// claims); beyond it Redis counts as unavailable rather than stalling the caller.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis call bounded by [`CALL_TIMEOUT`]; a timeout or an error is `Unavailable`.
pub(crate) async fn timed<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BusError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| unavailable("redis did not answer in time"))?
        .map_err(unavailable)
}

impl RedisBus {
    /// Connects and starts the pub/sub task. `consumer` names this process in the group.
    pub async fn connect(
        config: RedisBusConfig,
        consumer: String,
        shutdown: CancellationToken,
    ) -> Result<RedisBus, BusError> {
        let client = redis::Client::open(config.url.as_str()).map_err(unavailable)?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client.clone(), manager)
            .await
            .map_err(unavailable)?;
        let (watch_tx, watch_rx) = mpsc::unbounded_channel();
        let (deliver_tx, deliver_rx) = mpsc::channel(config.queue_capacity);
        let reply_channel = format!("{}:r:{consumer}", config.prefix);
        let pending: Pending = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(pubsub_task(
            client.clone(),
            watch_rx,
            deliver_tx,
            Replies {
                channel: reply_channel.clone(),
                pending: pending.clone(),
                ready: Some(ready_tx),
            },
            Duration::from_millis(config.unwatch_linger_ms),
            shutdown.clone(),
        ));
        // Results of calls must not arrive before the reply channel is subscribed.
        tokio::time::timeout(Duration::from_secs(5), ready_rx)
            .await
            .map_err(|_| unavailable("subscribing to the reply channel timed out"))?
            .map_err(|_| unavailable("the pub/sub task stopped"))?;
        Ok(RedisBus {
            client,
            conn,
            config,
            consumer,
            watch_tx,
            deliveries: Mutex::new(Some(deliver_rx)),
            submissions_taken: AtomicBool::new(false),
            shutdown,
            reply_channel,
            next_call: AtomicU64::new(1),
            pending,
        })
    }

    fn stream_key(&self) -> String {
        format!("{}:submissions", self.config.prefix)
    }

    fn channel_name(&self, channel: &Channel) -> String {
        channel_name(&self.config.prefix, channel)
    }
}

fn channel_name(prefix: &str, channel: &Channel) -> String {
    match channel {
        Channel::Stream(s) => format!("{prefix}:s:{s}"),
        Channel::User(u) => format!("{prefix}:u:{u}"),
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn ready(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        tokio::time::timeout(SUBMIT_TIMEOUT, ping)
            .await
            .map_err(|_| unavailable("redis did not answer in time"))?
            .map(drop)
            .map_err(unavailable)
    }

    async fn submit(&self, submission: Submission) -> Result<(), BusError> {
        let bytes = postcard::to_allocvec(&submission).map_err(unavailable)?;
        let mut conn = self.conn.clone();
        // A node answers its client quickly either way: taken, or `unavailable` to retry.
        let added = tokio::time::timeout(
            SUBMIT_TIMEOUT,
            conn.xadd::<_, _, _, _, String>(self.stream_key(), "*", &[("s", bytes)]),
        )
        .await
        .map_err(|_| unavailable("redis did not answer in time"))?;
        added.map_err(unavailable)?;
        Ok(())
    }

    fn take_submissions(&self) -> Result<mpsc::Receiver<Received>, BusError> {
        if self.submissions_taken.swap(true, Ordering::SeqCst) {
            return Err(BusError::AlreadyTaken("submissions"));
        }
        let (tx, rx) = mpsc::channel(self.config.queue_capacity);
        let reader = GroupReader {
            client: self.client.clone(),
            key: self.stream_key(),
            group: GROUP,
            start: "0",
            consumer: self.consumer.clone(),
            claim_idle: Duration::from_millis(self.config.claim_idle_ms),
            count: READ_COUNT,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(reader.run(decode_request, tx));
        Ok(rx)
    }

    async fn confirm(&self, receipts: &[String]) -> Result<(), BusError> {
        if receipts.is_empty() {
            return Ok(());
        }
        let key = self.stream_key();
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("XACK")
            .arg(&key)
            .arg(GROUP)
            .arg(receipts)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(receipts)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn call(&self, call: Call, timeout: Duration) -> Result<CallResult, BusError> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let envelope = CallEnvelope {
            call,
            reply_to: ReplyTo {
                channel: self.reply_channel.clone(),
                id,
            },
        };
        let bytes = serde_json::to_vec(&envelope).map_err(unavailable)?;
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut conn = self.conn.clone();
        let sent: redis::RedisResult<String> =
            conn.xadd(self.stream_key(), "*", &[("c", bytes)]).await;
        if let Err(e) = sent {
            lock(&self.pending).remove(&id);
            return Err(unavailable(e));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => Ok(result),
            _ => {
                lock(&self.pending).remove(&id);
                Err(BusError::Unavailable(format!(
                    "no answer from the write path within {} ms",
                    timeout.as_millis()
                )))
            }
        }
    }

    async fn reply(&self, to: &ReplyTo, result: &CallResult) -> Result<(), BusError> {
        let envelope = ReplyEnvelope {
            id: to.id,
            result: result.clone(),
        };
        let bytes = serde_json::to_vec(&envelope).map_err(unavailable)?;
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .publish(&to.channel, bytes)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn deliver(&self, delivery: Delivery) -> Result<(), BusError> {
        let Some(channel) = delivery.channel() else {
            return Ok(());
        };
        let bytes = postcard::to_allocvec(&delivery).map_err(unavailable)?;
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .publish(self.channel_name(&channel), bytes)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn take_deliveries(&self) -> Result<mpsc::Receiver<Delivery>, BusError> {
        self.deliveries
            .lock()
            .map_err(|_| BusError::Closed)?
            .take()
            .ok_or(BusError::AlreadyTaken("deliveries"))
    }

    fn watch(&self, channel: Channel) {
        let _ = self
            .watch_tx
            .send(WatchCmd::Watch(self.channel_name(&channel)));
    }

    fn unwatch(&self, channel: Channel) {
        let _ = self
            .watch_tx
            .send(WatchCmd::Unwatch(self.channel_name(&channel)));
    }
}

/// Back-off between reconnection attempts: 100 ms doubling to 2 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)).min(2000))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The reply channel of this process's calls.
struct Replies {
    channel: String,
    pending: Pending,
    /// Told once the channel is subscribed.
    ready: Option<oneshot::Sender<()>>,
}

impl Replies {
    fn route(&self, payload: &[u8]) {
        match serde_json::from_slice::<ReplyEnvelope>(payload) {
            Ok(r) => {
                if let Some(tx) = lock(&self.pending).remove(&r.id) {
                    let _ = tx.send(r.result);
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable call result dropped"),
        }
    }
}

/// Keeps one pub/sub connection subscribed to every watched channel (and this process's
/// reply channel) and forwards messages.
async fn pubsub_task(
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<WatchCmd>,
    deliveries: mpsc::Sender<Delivery>,
    mut replies: Replies,
    linger: Duration,
    shutdown: CancellationToken,
) {
    let mut watched: BTreeSet<String> = BTreeSet::new();
    // Channels to leave at the given time unless watched again.
    let mut leaving: HashMap<String, Instant> = HashMap::new();
    let mut attempt = 0;
    'connect: loop {
        let pubsub = tokio::select! {
            r = client.get_async_pubsub() => r,
            _ = shutdown.cancelled() => return,
        };
        let (mut sink, mut stream) = match pubsub {
            Ok(ps) => ps.split(),
            Err(e) => {
                tracing::warn!(error = %e, "redis pub/sub unavailable; retrying");
                metrics::counter!("livecomments_redis_reconnects_total").increment(1);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        for ch in std::iter::once(&replies.channel).chain(&watched) {
            if let Err(e) = sink.subscribe(ch).await {
                tracing::warn!(error = %e, "resubscribing failed; reconnecting");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue 'connect;
            }
        }
        if let Some(ready) = replies.ready.take() {
            let _ = ready.send(());
        }
        if attempt > 0 {
            tracing::info!(channels = watched.len(), "redis pub/sub reconnected");
        }
        attempt = 0;
        loop {
            let next_leave = leaving.values().min().copied();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let r = match cmd {
                        WatchCmd::Watch(ch) => {
                            leaving.remove(&ch);
                            if watched.insert(ch.clone()) {
                                sink.subscribe(&ch).await
                            } else {
                                Ok(())
                            }
                        }
                        WatchCmd::Unwatch(ch) => {
                            leaving.insert(ch, Instant::now() + linger);
                            Ok(())
                        }
                    };
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "redis pub/sub failed; reconnecting");
                        continue 'connect;
                    }
                }
                _ = sleep_until_opt(next_leave) => {
                    let now = Instant::now();
                    let due: Vec<String> = leaving
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .map(|(ch, _)| ch.clone())
                        .collect();
                    for ch in due {
                        leaving.remove(&ch);
                        watched.remove(&ch);
                        if let Err(e) = sink.unsubscribe(&ch).await {
                            tracing::warn!(error = %e, "redis pub/sub failed; reconnecting");
                            continue 'connect;
                        }
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("redis pub/sub connection lost; reconnecting");
                        metrics::counter!("livecomments_redis_reconnects_total").increment(1);
                        tokio::time::sleep(backoff(0)).await;
                        continue 'connect;
                    };
                    if msg.get_channel_name() == replies.channel {
                        replies.route(msg.get_payload_bytes());
                        continue;
                    }
                    match postcard::from_bytes::<Delivery>(msg.get_payload_bytes()) {
                        Ok(d) => {
                            if deliveries.send(d).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "undecodable delivery dropped"),
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One consumer of a consumer group: reads new entries, and every `claim_idle / 2` claims the
/// entries other consumers (or this one, before a restart) left pending longer than
/// `claim_idle` (`XAUTOCLAIM`: their consumer died). Decoded entries go to `tx` with their id,
/// to be acknowledged by whoever handles them; an entry that cannot be decoded (a newer or
/// foreign writer) is logged, acknowledged and deleted, or it would be claimed forever.
/// Reconnects with back-off; ends when `tx` closes or `shutdown` fires (checked between
/// reads, so entries already read are always handed on).
struct GroupReader {
    client: redis::Client,
    key: String,
    group: &'static str,
    /// Where a new group starts: `0` (everything) or `$` (from now on).
    start: &'static str,
    consumer: String,
    claim_idle: Duration,
    /// Entries per read.
    count: usize,
    shutdown: CancellationToken,
}

impl GroupReader {
    async fn run<T: Send>(
        self,
        decode: impl Fn(redis::streams::StreamId) -> Result<T, (String, String)>,
        tx: mpsc::Sender<T>,
    ) {
        let mut attempt = 0;
        'connect: loop {
            if tx.is_closed() || self.shutdown.is_cancelled() {
                return;
            }
            let mut conn = match self.client.get_multiplexed_async_connection().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, key = %self.key, "redis unavailable; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            // The group may exist already (BUSYGROUP): fine.
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&self.key)
                .arg(self.group)
                .arg(self.start)
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            if let Err(e) = created {
                if e.code() != Some("BUSYGROUP") {
                    tracing::warn!(error = %e, key = %self.key, "creating a consumer group failed");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            }
            attempt = 0;
            let mut last_claim = Instant::now() - self.claim_idle;
            loop {
                if tx.is_closed() || self.shutdown.is_cancelled() {
                    return;
                }
                let entries = if last_claim.elapsed() >= self.claim_idle / 2 {
                    last_claim = Instant::now();
                    let claimed: redis::RedisResult<StreamAutoClaimReply> =
                        redis::cmd("XAUTOCLAIM")
                            .arg(&self.key)
                            .arg(self.group)
                            .arg(&self.consumer)
                            .arg(self.claim_idle.as_millis() as u64)
                            .arg("0-0")
                            .arg("COUNT")
                            .arg(self.count)
                            .query_async(&mut conn)
                            .await;
                    match claimed {
                        Ok(reply) => {
                            if !reply.claimed.is_empty() {
                                tracing::info!(
                                    count = reply.claimed.len(),
                                    key = %self.key,
                                    "claimed pending entries"
                                );
                                metrics::counter!("livecomments_bus_claimed_total", "group" => self.group)
                                    .increment(reply.claimed.len() as u64);
                            }
                            reply.claimed
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, key = %self.key, "claiming pending entries failed");
                            tokio::time::sleep(backoff(0)).await;
                            continue 'connect;
                        }
                    }
                } else {
                    let read: redis::RedisResult<Option<StreamReadReply>> =
                        redis::cmd("XREADGROUP")
                            .arg("GROUP")
                            .arg(self.group)
                            .arg(&self.consumer)
                            .arg("COUNT")
                            .arg(self.count)
                            .arg("BLOCK")
                            .arg(500)
                            .arg("STREAMS")
                            .arg(&self.key)
                            .arg(">")
                            .query_async(&mut conn)
                            .await;
                    match read {
                        Ok(reply) => reply
                            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                            .unwrap_or_default(),
                        Err(e) => {
                            tracing::warn!(error = %e, key = %self.key, "reading failed; reconnecting");
                            tokio::time::sleep(backoff(0)).await;
                            continue 'connect;
                        }
                    }
                };
                let mut bad = Vec::new();
                for entry in entries {
                    match decode(entry) {
                        Ok(item) => {
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                        Err((id, e)) => {
                            tracing::error!(error = %e, %id, key = %self.key, "undecodable entry dropped");
                            metrics::counter!("livecomments_bus_undecodable_total").increment(1);
                            bad.push(id);
                        }
                    }
                }
                if !bad.is_empty() {
                    let dropped: redis::RedisResult<()> = redis::pipe()
                        .cmd("XACK")
                        .arg(&self.key)
                        .arg(self.group)
                        .arg(&bad)
                        .ignore()
                        .cmd("XDEL")
                        .arg(&self.key)
                        .arg(&bad)
                        .ignore()
                        .query_async(&mut conn)
                        .await;
                    if let Err(e) = dropped {
                        tracing::warn!(error = %e, "removing undecodable entries failed");
                    }
                }
            }
        }
    }
}

/// A submission or a call, from an entry of the submission stream.
fn decode_request(entry: redis::streams::StreamId) -> Result<Received, (String, String)> {
    let request = if let Some(bytes) = entry.get::<Vec<u8>>("s") {
        postcard::from_bytes::<Submission>(&bytes)
            .map(Request::Submission)
            .map_err(|e| e.to_string())
    } else if let Some(bytes) = entry.get::<Vec<u8>>("c") {
        serde_json::from_slice::<CallEnvelope>(&bytes)
            .map(|c| Request::Call {
                call: c.call,
                reply_to: c.reply_to,
            })
            .map_err(|e| e.to_string())
    } else {
        Err("neither a submission nor a call".to_string())
    };
    match request {
        Ok(request) => Ok(Received {
            request,
            receipt: Some(entry.id),
        }),
        Err(e) => Err((entry.id, e)),
    }
}

/// Accepted comments for moderation workers in other processes: a Redis Stream,
/// `{prefix}:accepted`, capped at about `ACCEPTED_MAXLEN` entries, read by the consumer group
/// `moderation`.
const ACCEPTED_MAXLEN: usize = 100_000;
const MODERATION_GROUP: &str = "moderation";

fn accepted_key(prefix: &str) -> String {
    format!("{prefix}:accepted")
}

/// Moves accepted comments from this bridge to the stream moderation workers read. Runs until
/// `comments` closes (the writer stopped); a comment that cannot be added while Redis is down
/// is counted and dropped: moderation is a second look, the comment itself is stored.
pub async fn forward_accepted(
    client: redis::Client,
    prefix: String,
    mut comments: mpsc::Receiver<moderation::Queued>,
) {
    let key = accepted_key(&prefix);
    let mut conn = None;
    while let Some(c) = comments.recv().await {
        let bytes = match serde_json::to_vec(&c.comment) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "encoding an accepted comment failed");
                continue;
            }
        };
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        let Some(c) = conn.as_mut() else {
            metrics::counter!("livecomments_moderation_dropped_total").increment(1);
            continue;
        };
        let added: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(ACCEPTED_MAXLEN)
            .arg("*")
            .arg("c")
            .arg(bytes)
            .query_async(c)
            .await;
        if let Err(e) = added {
            tracing::warn!(error = %e, "handing a comment to moderation failed");
            metrics::counter!("livecomments_moderation_dropped_total").increment(1);
            conn = None;
        }
    }
}

/// The comments moderation workers share: each is read by one worker of the group and
/// acknowledged once that worker scored it and acted on it; what a worker read but did not
/// finish (it died, or its action failed) is claimed by another after `claim_idle`.
///
/// A worker reads about one batch ahead (`batch_size` entries, and a queue as long), so an
/// entry waits locally for about one batch's scoring: far less than `claim_idle`, after which
/// another worker would take it as abandoned and score it again. `claim_idle` should be well
/// above the time to score a batch (at least 30 s here).
pub fn accepted_feed(
    client: redis::Client,
    prefix: String,
    consumer: String,
    batch_size: usize,
    claim_idle: Duration,
    shutdown: CancellationToken,
) -> AcceptedFeed {
    let (tx, rx) = mpsc::channel(batch_size.max(1));
    let key = accepted_key(&prefix);
    let (acks_tx, acks) = mpsc::unbounded_channel::<String>();
    let acknowledged = tokio::spawn(acknowledge(client.clone(), key.clone(), acks));
    let reader = GroupReader {
        client,
        key,
        group: MODERATION_GROUP,
        start: "$",
        consumer,
        claim_idle,
        count: batch_size.max(1),
        shutdown,
    };
    let decode = move |entry: redis::streams::StreamId| {
        let comment = entry
            .get::<Vec<u8>>("c")
            .ok_or_else(|| "no comment".to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
        match comment {
            Ok(comment) => {
                let acks = acks_tx.clone();
                let id = entry.id;
                Ok(moderation::Queued {
                    comment,
                    receipt: Some(Box::new(move || {
                        let _ = acks.send(id);
                    })),
                })
            }
            Err(e) => Err((entry.id, e)),
        }
    };
    tokio::spawn(reader.run(decode, tx));
    AcceptedFeed {
        comments: rx,
        acknowledged,
    }
}

/// A moderation worker's input from the cluster's accepted comments.
pub struct AcceptedFeed {
    pub comments: mpsc::Receiver<moderation::Queued>,
    /// Ends once the feed stopped, every receipt is gone and the last acknowledgements were
    /// sent: awaited at shutdown, so comments scored just before it are not scored again.
    pub acknowledged: tokio::task::JoinHandle<()>,
}

/// Acknowledges handled entries of the moderation group, in batches; ends when every
/// receipt is gone (the reader and the worker stopped).
async fn acknowledge(
    client: redis::Client,
    key: String,
    mut acks: mpsc::UnboundedReceiver<String>,
) {
    let mut conn = None;
    let mut ids = Vec::new();
    while acks.recv_many(&mut ids, READ_COUNT).await > 0 {
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        let Some(c) = conn.as_mut() else {
            tracing::warn!(count = ids.len(), "redis unavailable; entries stay pending");
            ids.clear();
            continue;
        };
        let acked: redis::RedisResult<()> = redis::cmd("XACK")
            .arg(&key)
            .arg(MODERATION_GROUP)
            .arg(&ids)
            .query_async(c)
            .await;
        if let Err(e) = acked {
            // Left pending: claimed and scored again later, which is harmless.
            tracing::warn!(error = %e, "acknowledging accepted comments failed");
            conn = None;
        }
        ids.clear();
    }
}

//! The node's fan-out: one thread per core, each writing every frame to its share of the
//! subscribed connections' sockets itself, as a broker's event loop does, instead of waking
//! one task per viewer to write it.
//!
//! A frame travels as its encoded MQTT PUBLISH (QoS 0, no packet id: the same bytes for every
//! viewer), encoded once per node. Each connection has an [`Outlet`]: its socket (TCP) and a
//! queue of what could not be written yet. The fan-out writes a frame straight to the socket
//! when nothing is queued before it and the socket takes it (the usual case: a viewer that
//! keeps up); otherwise it queues the frame (shared bytes, not a copy) and wakes the
//! connection's task, which writes the queue as the socket drains. Everything a connection
//! writes itself (CONNACK, SUBACK, PINGRESP, inbox messages) goes through the same outlet, so
//! bytes never interleave mid-packet and stay in order. WebSocket connections frame what they
//! write, so for them the fan-out only queues and the task writes.
//!
//! Why (2026-12): waking a task per viewer per frame cost ~4 µs of user time per write at
//! 10 000 viewers (scheduler queues, broadcast-channel locks shared by every viewer, the
//! task's `select!` re-armed), on top of the ~5 µs the kernel needs for a loopback write
//! (`perf`, docs/benchmarks.md §1). Before that the frames went through a
//! `tokio::sync::broadcast` channel per topic, and before that through rumqttd's router, whose
//! per-link buffers cost ~40 KB per idle viewer.
//!
//! Each thread owns the topic → outlets map of its connections: they subscribe and leave by
//! message, in order with the frames and retained messages, so a subscriber gets a topic's retained
//! message on subscribe and every frame after it, never both copies of a change and never
//! neither. A viewer more than `mqtt.backlog_frames` frames behind (beyond what its socket
//! buffers hold) skips ahead: its oldest queued frames are dropped, counted as
//! `livecomments_deliveries_skipped_total`, and it catches up over HTTP after the `seq` gap.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Publish;
use rumqttc::mqttbytes::QoS;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Encodes a QoS 0 PUBLISH of `payload` on `topic`.
pub(crate) fn encode_publish(topic: &str, payload: Bytes, retain: bool) -> Bytes {
    let mut publish = Publish::from_bytes(topic, QoS::AtMostOnce, payload);
    publish.retain = retain;
    let mut out = BytesMut::with_capacity(publish.size());
    publish
        .write(&mut out)
        .expect("a QoS 0 publish always encodes");
    out.freeze()
}

/// Slices handed to one vectored write of a queue.
const MAX_SLICES: usize = 64;

/// Why a connection's writes stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("client does not read: write timed out")]
    Timeout,
}

/// One connection's way out: its socket (TCP only) and what waits to be written to it.
pub(crate) struct Outlet {
    /// The fan-out thread that writes to it.
    shard: usize,
    state: Mutex<Queue>,
    /// Wakes the connection's task: something was queued for it to write.
    queued: Notify,
    /// Frames a viewer may have queued before the oldest are dropped.
    backlog: usize,
}

struct Queue {
    /// Written to directly while nothing is queued; `None` for WebSocket connections (the
    /// task frames and writes everything) and once the connection closed.
    socket: Option<Arc<TcpStream>>,
    items: VecDeque<Item>,
    /// Bytes of the front item already written.
    head_written: usize,
    /// Frames in `items` (an item may carry several frames of one topic, or none: the
    /// connection's own packets and state changes, which are never dropped).
    frames: usize,
    closed: bool,
}

struct Item {
    bytes: Bytes,
    frames: usize,
}

/// What became of frames offered to an outlet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// On their way: written to the socket or queued for the task; `skipped` older queued
    /// frames were dropped to make room.
    Sent { skipped: usize },
    /// The connection is gone.
    Closed,
}

impl Outlet {
    /// `socket`: the TCP socket the fan-out may write to directly (`None`: only queue).
    fn new(shard: usize, socket: Option<Arc<TcpStream>>, backlog: usize) -> Arc<Outlet> {
        Arc::new(Outlet {
            shard,
            state: Mutex::new(Queue {
                socket,
                items: VecDeque::new(),
                head_written: 0,
                frames: 0,
                closed: false,
            }),
            queued: Notify::new(),
            backlog: backlog.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `data` (`frames` frames; 0: never dropped) now if nothing is queued before it
    /// and the socket takes it, and queues what is left; frames beyond the backlog make room
    /// by dropping the oldest queued frames. Never blocks: the socket is non-blocking.
    fn offer(&self, data: Bytes, frames: usize) -> Offered {
        let mut q = self.lock();
        if q.closed {
            return Offered::Closed;
        }
        let mut written = 0;
        if q.items.is_empty() {
            if let Some(socket) = &q.socket {
                // An error is left for the task: its next write meets it and closes.
                written = write_some(socket, &data);
                if written == data.len() {
                    return Offered::Sent { skipped: 0 };
                }
            }
        }
        let mut skipped = 0;
        if frames > 0 {
            while q.frames + frames > self.backlog {
                match q.skip_oldest_frames() {
                    0 => break,
                    n => skipped += n,
                }
            }
        }
        if q.items.is_empty() {
            q.head_written = written;
        }
        q.frames += frames;
        q.items.push_back(Item {
            bytes: data,
            frames,
        });
        drop(q);
        self.queued.notify_one();
        Offered::Sent { skipped }
    }

    /// Writes or queues the connection's own bytes (never dropped; nothing once closed).
    /// They are few and small (CONNACK, SUBACK, PINGRESP, inbox messages), so a copy is fine.
    pub(crate) fn send_own(&self, data: &[u8]) {
        let _ = self.offer(Bytes::copy_from_slice(data), 0);
    }

    /// Waits until something was queued for the task to write.
    pub(crate) async fn wait_queued(&self) {
        self.queued.notified().await;
    }

    /// Writes what is queued to a TCP connection's `socket` (the outlet's own) without
    /// waiting: the bytes written, and whether the queue is empty now.
    pub(crate) fn write_queued(&self, socket: &TcpStream) -> io::Result<(usize, bool)> {
        let mut q = self.lock();
        let mut total = 0;
        while !q.items.is_empty() {
            let n = {
                let mut slices = Vec::with_capacity(q.items.len().min(MAX_SLICES));
                for (i, item) in q.items.iter().take(MAX_SLICES).enumerate() {
                    let skip = if i == 0 { q.head_written } else { 0 };
                    slices.push(IoSlice::new(&item.bytes[skip..]));
                }
                match socket.try_write_vectored(&slices) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            q.consume(n);
            total += n;
        }
        Ok((total, q.items.is_empty()))
    }

    /// Writes the whole queue to a TCP connection's `socket`, waiting for it; fails when the
    /// client accepts nothing for `limit`.
    pub(crate) async fn drain_tcp(
        &self,
        socket: &TcpStream,
        limit: Duration,
    ) -> Result<(), WriteError> {
        loop {
            if self.write_queued(socket)?.1 {
                return Ok(());
            }
            match tokio::time::timeout(limit, socket.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(WriteError::Timeout),
            }
        }
    }

    /// Takes everything queued, in order, as one buffer (for a transport that frames what it
    /// writes itself). The fan-out never writes to such a connection, so taking the queue
    /// cannot reorder anything.
    pub(crate) fn take_queued(&self) -> Option<Bytes> {
        let mut q = self.lock();
        if q.items.is_empty() {
            return None;
        }
        let head = q.head_written;
        let mut out = BytesMut::new();
        for (i, item) in q.items.drain(..).enumerate() {
            out.extend_from_slice(&item.bytes[if i == 0 { head } else { 0 }..]);
        }
        q.head_written = 0;
        q.frames = 0;
        Some(out.freeze())
    }

    /// The connection is ending: nothing more is written or queued, and the socket is given
    /// back (so the task can shut it down).
    pub(crate) fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.socket = None;
        q.items.clear();
        q.frames = 0;
    }
}

impl Queue {
    /// Drops the oldest queued item of frames that is not partly written; the frames it
    /// held (0 if there is none).
    fn skip_oldest_frames(&mut self) -> usize {
        let partly = self.head_written > 0;
        let found = self
            .items
            .iter()
            .enumerate()
            .position(|(i, item)| item.frames > 0 && !(i == 0 && partly));
        match found {
            Some(i) => {
                let item = self.items.remove(i).expect("found");
                self.frames -= item.frames;
                if i == 0 {
                    self.head_written = 0;
                }
                item.frames
            }
            None => 0,
        }
    }

    /// Removes `n` written bytes from the front.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.items.front() else {
                return;
            };
            let left = front.bytes.len() - self.head_written;
            if n < left {
                self.head_written += n;
                return;
            }
            n -= left;
            let item = self.items.pop_front().expect("front exists");
            self.frames -= item.frames;
            self.head_written = 0;
        }
    }
}

/// Writes as much of `data` as the socket takes now; an error ends the attempt (what was
/// written before it counts).
fn write_some(socket: &TcpStream, data: &[u8]) -> usize {
    let mut written = 0;
    while written < data.len() {
        match socket.try_write(&data[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    written
}

enum Command {
    Subscribe {
        topic: String,
        outlet: Arc<Outlet>,
    },
    Unsubscribe {
        topic: String,
        outlet: Arc<Outlet>,
    },
    /// An encoded PUBLISH.
    Publish {
        topic: String,
        packet: Bytes,
    },
    Retain {
        topic: String,
        payload: Bytes,
    },
    /// Answered once every command sent before it was handled.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The handle to the fan-out threads, one per core: each writes to its share of the
/// connections (assigned in turn), every one gets every frame. They end with the handle.
pub(crate) struct Fanout {
    shards: Vec<std_mpsc::Sender<Command>>,
    next: std::sync::atomic::AtomicUsize,
    backlog: usize,
}

#[derive(Default)]
struct Topic {
    outlets: Vec<Arc<Outlet>>,
    /// The newest retained payload (encoded with the retain flag for each new subscriber).
    retained: Option<Bytes>,
}

impl Fanout {
    /// `threads`: fan-out threads (0: one per core); `backlog`: frames a viewer may have
    /// queued before its oldest are dropped.
    pub(crate) fn new(threads: usize, backlog: usize) -> Fanout {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let shards = (0..threads)
            .map(|i| {
                let (tx, rx) = std_mpsc::channel();
                std::thread::Builder::new()
                    .name(format!("livecomments-fanout-{i}"))
                    .spawn(move || run(rx))
                    .expect("spawning a fan-out thread");
                tx
            })
            .collect();
        Fanout {
            shards,
            next: Default::default(),
            backlog,
        }
    }

    /// A new connection's outlet; `socket` is its TCP socket, which the fan-out writes to
    /// directly (`None`, e.g. WebSocket: frames are only queued for the connection's task).
    pub(crate) fn outlet(&self, socket: Option<Arc<TcpStream>>) -> Arc<Outlet> {
        let shard =
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.shards.len();
        Outlet::new(shard, socket, self.backlog)
    }

    fn send(&self, shard: usize, c: Command) {
        // Fails only if the thread is gone: it panicked (its viewers get nothing more).
        if self.shards[shard].send(c).is_err() {
            tracing::error!(shard, "a fan-out thread is gone; its viewers get no frames");
            return;
        }
        // The threads' queues are not bounded (a thread that falls behind sends what piled
        // up together); this gauge shows when they grow.
        metrics::gauge!("livecomments_fanout_queued").increment(1.0);
    }

    /// From now on, `outlet` gets the topic's frames, starting with its retained message (with
    /// the retain flag), if any.
    pub(crate) fn subscribe(&self, topic: &str, outlet: &Arc<Outlet>) {
        self.send(
            outlet.shard,
            Command::Subscribe {
                topic: topic.to_owned(),
                outlet: outlet.clone(),
            },
        );
    }

    pub(crate) fn unsubscribe(&self, topic: &str, outlet: &Arc<Outlet>) {
        self.send(
            outlet.shard,
            Command::Unsubscribe {
                topic: topic.to_owned(),
                outlet: outlet.clone(),
            },
        );
    }

    /// Publishes a frame to the topic's current subscribers (encoded once, here).
    pub(crate) fn publish(&self, topic: &str, payload: Bytes) {
        let packet = encode_publish(topic, payload, false);
        for shard in 0..self.shards.len() {
            self.send(
                shard,
                Command::Publish {
                    topic: topic.to_owned(),
                    packet: packet.clone(),
                },
            );
        }
    }

    /// Replaces the topic's retained message and sends it to the current subscribers.
    pub(crate) fn retain(&self, topic: &str, payload: Bytes) {
        for shard in 0..self.shards.len() {
            self.send(
                shard,
                Command::Retain {
                    topic: topic.to_owned(),
                    payload: payload.clone(),
                },
            );
        }
    }

    /// Waits until every thread handled everything sent to it before.
    pub(crate) async fn flushed(&self) {
        for shard in 0..self.shards.len() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.send(shard, Command::Barrier(tx));
            let _ = rx.await;
        }
    }

    /// [`Fanout::flushed`] for tests outside a runtime.
    #[cfg(test)]
    fn barrier(&self) {
        for shard in 0..self.shards.len() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.send(shard, Command::Barrier(tx));
            rx.blocking_recv().expect("the fan-out thread answers");
        }
    }
}

/// A fan-out thread: handles commands in order until the handle is gone. The gauge
/// `livecomments_fanout_topics` sums the topic entries of all threads (a topic with a retained
/// message has one in each), so a leak shows.
fn run(rx: std_mpsc::Receiver<Command>) {
    let mut shard = Shard::default();
    let mut group = Vec::new();
    while let Ok(first) = rx.recv() {
        group.push(first);
        // What queued up meanwhile is handled as one group: frames of a topic that piled up
        // while the thread was busy go out as one write per viewer, so a fan-out that falls
        // behind catches up instead of falling further behind.
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let before = shard.topics.len();
        metrics::gauge!("livecomments_fanout_queued").decrement(group.len() as f64);
        for command in group.drain(..) {
            shard.handle(command);
        }
        shard.flush_all();
        if shard.topics.len() != before {
            metrics::gauge!("livecomments_fanout_topics")
                .increment(shard.topics.len() as f64 - before as f64);
        }
    }
}

/// Most commands a thread takes from its queue at once.
const MAX_GROUP: usize = 1024;
/// A topic's frames held back within a group are sent once they reach this size.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// One fan-out thread's state.
#[derive(Default)]
struct Shard {
    topics: HashMap<String, Topic>,
    /// Frames of the current group per topic, not sent yet, and their total size.
    held: HashMap<String, (Vec<Bytes>, usize)>,
}

impl Shard {
    fn handle(&mut self, command: Command) {
        match command {
            Command::Publish { topic, packet } => {
                if !self.topics.contains_key(&topic) {
                    return;
                }
                let (frames, size) = self.held.entry(topic.clone()).or_default();
                *size += packet.len();
                frames.push(packet);
                if *size >= MAX_BATCH_BYTES {
                    self.flush(&topic);
                }
            }
            Command::Subscribe { topic, outlet } => {
                // Frames held back were published before this subscription.
                self.flush(&topic);
                let t = self.topics.entry(topic.clone()).or_default();
                if let Some(payload) = &t.retained {
                    // Encoded per subscriber: only this copy has the retain flag.
                    outlet.offer(encode_publish(&topic, payload.clone(), true), 0);
                }
                t.outlets.push(outlet);
            }
            Command::Unsubscribe { topic, outlet } => {
                self.flush(&topic);
                if let Some(t) = self.topics.get_mut(&topic) {
                    if let Some(i) = t.outlets.iter().position(|o| Arc::ptr_eq(o, &outlet)) {
                        t.outlets.swap_remove(i);
                    }
                    if t.outlets.is_empty() && t.retained.is_none() {
                        self.topics.remove(&topic);
                    }
                }
            }
            Command::Retain { topic, payload } => {
                self.flush(&topic);
                let t = self.topics.entry(topic.clone()).or_default();
                // Forwarded to existing subscribers without the retain flag (MQTT 3.1.1
                // §3.3.1.3); state changes are never dropped for a slow viewer.
                send_to_all(t, encode_publish(&topic, payload.clone(), false), 0);
                t.retained = Some(payload);
            }
            Command::Barrier(done) => {
                self.flush_all();
                let _ = done.send(());
            }
        }
    }

    /// Sends the frames of `topic` held back in this group, as one write per viewer.
    fn flush(&mut self, topic: &str) {
        let Some((frames, size)) = self.held.remove(topic) else {
            return;
        };
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let n = frames.len();
        let packet = if n == 1 {
            frames.into_iter().next().expect("one frame")
        } else {
            let mut joined = BytesMut::with_capacity(size);
            for f in &frames {
                joined.extend_from_slice(f);
            }
            joined.freeze()
        };
        send_to_all(t, packet, n);
        if t.outlets.is_empty() && t.retained.is_none() {
            self.topics.remove(topic);
        }
    }

    fn flush_all(&mut self) {
        let topics: Vec<String> = self.held.keys().cloned().collect();
        for topic in topics {
            self.flush(&topic);
        }
    }
}

/// Offers `packet` (`frames` frames; 0: a state change, never dropped) to every outlet of
/// `t`, forgetting closed ones.
fn send_to_all(t: &mut Topic, packet: Bytes, frames: usize) {
    let (mut sent, mut skipped) = (0u64, 0u64);
    t.outlets.retain(|o| match o.offer(packet.clone(), frames) {
        Offered::Sent { skipped: n } => {
            sent += 1;
            skipped += n as u64;
            true
        }
        Offered::Closed => false,
    });
    if sent > 0 && frames > 0 {
        metrics::counter!("livecomments_deliveries_total").increment(sent * frames as u64);
    }
    if skipped > 0 {
        metrics::counter!("livecomments_deliveries_skipped_total").increment(skipped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// The PUBLISH packets in `bytes`: (topic, payload, retain).
    fn publishes(bytes: Option<Bytes>) -> Vec<(String, Bytes, bool)> {
        let mut buf = BytesMut::from(&bytes.unwrap_or_default()[..]);
        let mut out = Vec::new();
        while !buf.is_empty() {
            match rumqttc::mqttbytes::v4::Packet::read(&mut buf, 1 << 20).unwrap() {
                rumqttc::mqttbytes::v4::Packet::Publish(p) => {
                    out.push((p.topic, p.payload, p.retain))
                }
                other => panic!("not a publish: {other:?}"),
            }
        }
        out
    }

    fn queue_only(f: &Fanout) -> Arc<Outlet> {
        f.outlet(None)
    }

    #[test]
    fn frames_reach_every_subscriber_of_the_topic_only() {
        let f = Fanout::new(2, 8);
        let (a, c, other) = (queue_only(&f), queue_only(&f), queue_only(&f));
        f.subscribe("streams/s/comments", &a);
        f.subscribe("streams/s/comments", &c);
        f.subscribe("streams/t/comments", &other);
        f.publish("streams/s/comments", b("1"));
        f.publish("streams/u/comments", b("x"));
        f.barrier();
        for o in [&a, &c] {
            assert_eq!(
                publishes(o.take_queued()),
                [("streams/s/comments".into(), b("1"), false)]
            );
        }
        assert_eq!(other.take_queued(), None);
    }

    #[test]
    fn frames_that_pile_up_go_out_together_in_order() {
        let f = Fanout::new(1, 1000);
        let a = queue_only(&f);
        f.subscribe("t", &a);
        f.subscribe("u", &a);
        for i in 0..100u8 {
            f.publish("t", Bytes::from(vec![i]));
            f.publish("u", Bytes::from(vec![i]));
        }
        f.barrier();
        let got = publishes(a.take_queued());
        for topic in ["t", "u"] {
            let frames: Vec<Bytes> = got
                .iter()
                .filter(|(t, _, _)| t == topic)
                .map(|(_, p, _)| p.clone())
                .collect();
            assert_eq!(
                frames,
                (0..100u8).map(|i| Bytes::from(vec![i])).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn retained_comes_once_on_subscribe_then_changes_come_live() {
        let f = Fanout::new(2, 8);
        f.retain("streams/s/state", b("v1"));
        let a = queue_only(&f);
        f.subscribe("streams/s/state", &a);
        f.barrier();
        assert_eq!(
            publishes(a.take_queued()),
            [("streams/s/state".into(), b("v1"), true)]
        );
        f.retain("streams/s/state", b("v2"));
        f.barrier();
        assert_eq!(
            publishes(a.take_queued()),
            [("streams/s/state".into(), b("v2"), false)],
            "live, without the retain flag"
        );
        f.unsubscribe("streams/s/state", &a);
        let c = queue_only(&f);
        f.subscribe("streams/s/state", &c);
        f.retain("streams/s/state", b("v3"));
        f.barrier();
        assert_eq!(a.take_queued(), None, "unsubscribed");
        assert_eq!(
            publishes(c.take_queued()),
            [
                ("streams/s/state".into(), b("v2"), true),
                ("streams/s/state".into(), b("v3"), false)
            ],
            "the retained message outlives its subscribers"
        );
    }

    #[test]
    fn a_closed_outlet_gets_nothing_and_is_forgotten() {
        let f = Fanout::new(2, 8);
        let (a, c) = (queue_only(&f), queue_only(&f));
        f.subscribe("t", &a);
        f.subscribe("t", &c);
        a.close();
        f.publish("t", b("1"));
        f.barrier();
        assert_eq!(a.take_queued(), None);
        assert_eq!(publishes(c.take_queued()).len(), 1);
        assert_eq!(Arc::strong_count(&a), 1, "the fan-out let go of it");
    }

    #[test]
    fn a_viewer_further_behind_than_the_backlog_skips_its_oldest_frames_not_its_own_packets() {
        let f = Fanout::new(2, 4);
        let a = queue_only(&f);
        f.subscribe("t", &a);
        f.barrier();
        a.send_own(b"own");
        for i in 0..10u8 {
            f.publish("t", Bytes::from(vec![b'0' + i]));
            // One at a time: frames waiting together would go out as one write.
            f.barrier();
        }
        let got = a.take_queued().unwrap();
        assert!(got.starts_with(b"own"), "{got:?}");
        let frames: Vec<Bytes> = publishes(Some(got.slice(3..)))
            .into_iter()
            .map(|(_, p, _)| p)
            .collect();
        assert_eq!(frames, [b("6"), b("7"), b("8"), b("9")]);
    }

    /// A TCP outlet: frames go straight to the socket while it takes them, are queued once
    /// it is full, and the task's drain writes the queue after them, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tcp_outlet_writes_directly_then_queues_in_order() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let socket = Arc::new(server);
        socket.writable().await.unwrap();
        let f = Fanout::new(2, 1 << 20);
        let outlet = f.outlet(Some(socket.clone()));
        f.subscribe("t", &outlet);
        // Enough frames to fill the socket buffers, so some are queued.
        let frame = Bytes::from(vec![b'x'; 60_000]);
        for _ in 0..200 {
            f.publish("t", frame.clone());
        }
        f.flushed().await;
        outlet.send_own(b"end");
        assert!(outlet.lock().items.len() > 1, "the socket filled up");
        let drain = {
            let outlet = outlet.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                outlet
                    .drain_tcp(&socket, Duration::from_secs(10))
                    .await
                    .unwrap()
            })
        };
        let mut got = Vec::new();
        let want = 200 * encode_publish("t", frame.clone(), false).len() + 3;
        while got.len() < want {
            assert!(client.read_buf(&mut got).await.unwrap() > 0);
        }
        drain.await.unwrap();
        assert!(got.ends_with(b"end"));
        let frames = publishes(Some(Bytes::from(got[..got.len() - 3].to_vec())));
        assert_eq!(frames.len(), 200);
        assert!(frames.iter().all(|(t, p, _)| t == "t" && p == &frame));
    }
}

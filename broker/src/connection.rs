//! The gatekeeper: one task per client connection.
//!
//! Reads MQTT 3.1.1 packets with rumqttc's codec, applies the topic policy, turns posts into
//! submissions, answers what it can itself (PINGREQ, PUBACK, SUBACK, inbox messages) and
//! subscribes to the node's [`Fanout`] only for topics of existing streams. The fan-out writes
//! frames to the client itself; everything this task writes goes through the same
//! [`Outlet`], and the task writes what the outlet queued while the socket was full.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use governor::{DefaultDirectRateLimiter, Quota};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet as CPacket, PubAck, PubComp, PubRec, Publish as CPublish,
    SubAck as CSubAck, Subscribe as CSubscribe, SubscribeReasonCode as CCode, UnsubAck,
    Unsubscribe as CUnsubscribe,
};
use rumqttc::mqttbytes::{Error as CodecError, Protocol as MqttVersion, QoS as CQoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;
use wire::auth::Identity;
use wire::bus::{Author, Channel, Delivery, Origin, Submission, SubmissionKind};
use wire::inbox::{InboxMessage, RejectCode, Rejected};
use wire::time::now_ms;
use wire::topics::{self, ClientPublish, SubscribeTarget};
use wire::StreamId;

use crate::fanout::{Fanout, Outlet, WriteError};
use crate::reactions::Reacted;
use crate::registry::{Direct, Registry};
use crate::transport::Transport;
use crate::{BrokerConfig, BrokerDeps, NodeShutdown};

/// How long a stream's existence is trusted from cache when a client subscribes.
const STREAM_EXISTS_CACHE: Duration = Duration::from_secs(60);
/// How long a stream's status is trusted from cache when counting reactions.
const STREAM_LIVE_CACHE: Duration = Duration::from_secs(2);
/// Direct messages (inbox answers, private frames) queued per connection before further ones
/// are dropped.
const DIRECT_QUEUE: usize = 64;
/// How long a connection stays open after refusing a post, so the refusal is read first.
const REFUSED_LINGER: Duration = Duration::from_millis(300);

pub(crate) struct NodeCtx {
    pub config: BrokerConfig,
    pub deps: BrokerDeps,
    pub fanout: Arc<Fanout>,
    pub registry: Arc<Registry>,
    pub shutdown: NodeShutdown,
    /// One token per connection that may still read from its client; shutdown waits for all
    /// of them before the write path stops taking submissions.
    pub readers: tokio_util::task::TaskTracker,
    pub reactions: Arc<crate::reactions::Reactions>,
    pub viewers: Arc<crate::presence::Viewers>,
    /// Deliveries for this node only, straight to the relay (retained state on first watch).
    pub local: mpsc::Sender<Local>,
}

impl NodeCtx {
    /// Publishes a stream's retained state and pin on this node from the store, and returns
    /// once the relay handed them to the fan-out. Run when the node gets its first viewer of
    /// the stream, before that viewer subscribes to the fan-out (so it gets them once, as
    /// retained messages): retained messages live in the node's memory, and with a
    /// shared bus this node missed changes made while nobody watched here. The relay drops
    /// them if a newer version was already published.
    async fn bootstrap(&self, stream: &StreamId) {
        let s = match self.deps.streams.get(stream, Duration::ZERO).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, %stream, "reading the stream's state failed");
                return;
            }
        };
        let (done, barrier) = tokio::sync::oneshot::channel();
        for l in [
            Local::Deliver(Delivery::stream_state(&s)),
            Local::Deliver(Delivery::pinned(&s)),
            Local::Barrier(done),
        ] {
            if self.local.send(l).await.is_err() {
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), barrier).await;
    }
}

/// What a connection asks of its node's relay directly.
pub(crate) enum Local {
    Deliver(Delivery),
    /// Answered once everything sent before it went to the fan-out.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Close {
    #[error("peer closed the connection")]
    PeerClosed,
    #[error("peer sent DISCONNECT")]
    PeerDisconnected,
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A publish or packet outside the policy.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("keep-alive expired")]
    KeepAlive,
    #[error("token expired")]
    TokenExpired,
    #[error("taken over by a new connection with the same client id")]
    TakenOver,
    #[error("the write path did not take a post")]
    Refused,
    #[error("client does not read: write timed out")]
    WriteTimeout,
    #[error("node shutting down")]
    Shutdown,
}

/// Serves one accepted connection until it ends.
pub(crate) async fn serve(
    mut transport: Transport,
    peer: SocketAddr,
    ctx: Arc<NodeCtx>,
    reader: TaskTrackerToken,
) {
    let mut read_buf = BytesMut::new();
    let max = ctx.config.mqtt.max_packet_size;
    let wait = Duration::from_millis(ctx.config.mqtt.connect_timeout_ms);
    let first = tokio::time::timeout(wait, read_packet(&mut transport, &mut read_buf, max)).await;
    let connect = match first {
        Ok(Ok(CPacket::Connect(c))) if c.protocol == MqttVersion::V4 => c,
        Ok(Ok(CPacket::Connect(_))) | Ok(Err(Close::Protocol(_))) => {
            // MQTT 5 or an unknown protocol level: say so in a 3.1.1 CONNACK.
            refuse(
                &mut transport,
                ConnectReturnCode::RefusedProtocolVersion,
                "protocol",
            )
            .await;
            return;
        }
        Ok(Ok(_)) => {
            tracing::debug!(%peer, "first packet was not CONNECT");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, reason = %e, "connection ended before CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
    };

    let password = connect
        .login
        .as_ref()
        .map(|l| l.password.as_str())
        .unwrap_or_default();
    let identity = match ctx.deps.keys.verify(password) {
        Ok(id) => id,
        Err(e) => {
            tracing::info!(%peer, client_id = %connect.client_id, error = %e, "connection refused");
            let code = if connect.login.is_none() {
                ConnectReturnCode::NotAuthorized
            } else {
                ConnectReturnCode::BadUserNamePassword
            };
            refuse(&mut transport, code, "auth").await;
            return;
        }
    };
    if connect.last_will.is_some() {
        // A will is a publish to a topic of the client's choosing: not allowed.
        tracing::debug!(user = %identity.user, "ignoring the last will of a client");
    }

    let uid = ctx.registry.next_uid();
    let kicked = ctx
        .registry
        .take_over(&identity.user, &connect.client_id, uid);
    let transport_name = transport.name();
    let span = tracing::debug_span!(
        "conn",
        user = %identity.user,
        client_id = %connect.client_id,
        %peer,
        transport = transport_name
    );
    let keepalive = (connect.keep_alive > 0)
        .then(|| Duration::from_secs(u64::from(connect.keep_alive)) * 3 / 2);
    let (direct_tx, direct_rx) = mpsc::channel(DIRECT_QUEUE);
    if ctx.registry.attach(&identity.user, uid, direct_tx) {
        ctx.deps.bus.watch(Channel::User(identity.user.clone()));
    }
    let inbox_topic = topics::inbox(&identity.user);
    let socket = match &transport {
        Transport::Tcp(s) => Some(s.clone()),
        Transport::Ws(_) => None,
    };
    let outlet = ctx.fanout.outlet(socket);
    let mut session = Session {
        ctx: ctx.clone(),
        identity,
        client_id: connect.client_id,
        uid,
        transport,
        read_buf,
        out: BytesMut::new(),
        outlet,
        inbox_topic,
        inbox_subscribed: false,
        filters: HashMap::new(),
        held: HashMap::new(),
        watching: HashMap::new(),
        post_limit: post_limiter(ctx.config.mqtt.max_posts_per_second),
        reader: Some(reader),
        write_blocked: false,
        pumped: 0,
    };
    metrics::gauge!("livecomments_mqtt_connections", "transport" => transport_name).increment(1.0);
    async move {
        let reason = session.run(keepalive, direct_rx, kicked).await;
        tracing::debug!(%reason, "connection closed");
        session.teardown().await;
    }
    .instrument(span)
    .await;
    metrics::gauge!("livecomments_mqtt_connections", "transport" => transport_name).decrement(1.0);
}

/// Reads one whole packet (used before the session exists).
async fn read_packet(
    transport: &mut Transport,
    buf: &mut BytesMut,
    max: usize,
) -> Result<CPacket, Close> {
    loop {
        match CPacket::read(buf, max) {
            Ok(p) => return Ok(p),
            Err(CodecError::InsufficientBytes(_)) => match transport.read(buf).await {
                Ok(0) => return Err(Close::PeerClosed),
                Ok(_) => {}
                Err(e) => return Err(Close::Io(e)),
            },
            Err(e) => return Err(Close::Protocol(e.to_string())),
        }
    }
}

async fn refuse(transport: &mut Transport, code: ConnectReturnCode, reason: &'static str) {
    metrics::counter!("livecomments_mqtt_connects_refused_total", "reason" => reason).increment(1);
    let mut out = BytesMut::new();
    if CPacket::ConnAck(ConnAck::new(code, false))
        .write(&mut out, usize::MAX)
        .is_ok()
    {
        let _ = transport.write_all(&out).await;
    }
    transport.close().await;
}

struct Session {
    ctx: Arc<NodeCtx>,
    identity: Identity,
    /// As the client sent it (for takeover).
    client_id: String,
    uid: u64,
    transport: Transport,
    read_buf: BytesMut,
    /// Packets of this task's own, encoded, until the next flush hands them to the outlet.
    out: BytesMut,
    /// Where frames and this task's packets go out, in order (see [`crate::fanout`]).
    outlet: Arc<Outlet>,
    inbox_topic: String,
    inbox_subscribed: bool,
    /// The client's granted stream filters → the concrete topics each covers.
    filters: HashMap<String, Vec<String>>,
    /// Concrete topics subscribed at the fan-out → how many client filters cover them. Each
    /// topic is subscribed once, so overlapping filters never duplicate a message.
    held: HashMap<String, u32>,
    /// Streams this connection watches → how many of their topics it holds (presence).
    watching: HashMap<StreamId, u32>,
    /// Posts per second one connection may send (a flood is answered here, not queued).
    post_limit: Option<DefaultDirectRateLimiter>,
    /// Held while this connection may still read posts from its client.
    reader: Option<TaskTrackerToken>,
    /// Bytes wait in the outlet that the socket did not take (TCP).
    write_blocked: bool,
    /// Bytes written from the outlet's queue since the loop last looked.
    pumped: usize,
}

fn post_limiter(per_second: u32) -> Option<DefaultDirectRateLimiter> {
    NonZeroU32::new(per_second).map(|n| DefaultDirectRateLimiter::direct(Quota::per_second(n)))
}

impl Session {
    async fn run(
        &mut self,
        keepalive: Option<Duration>,
        mut direct_rx: mpsc::Receiver<Direct>,
        kicked: CancellationToken,
    ) -> Close {
        if let Err(c) = self.write_packet(CPacket::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        ))) {
            return c;
        }
        // Packets that arrived together with CONNECT (clients need not wait for CONNACK).
        if !self.read_buf.is_empty() {
            if let Err(c) = self.on_readable().await {
                return c;
            }
        }
        if let Err(c) = self.flush().await {
            return c;
        }
        let expires_in = Duration::from_secs(
            self.identity
                .exp
                .saturating_sub((now_ms() / 1000).max(0) as u64),
        );
        let token_deadline = tokio::time::Instant::now() + expires_in;
        let deadline_after_read = |now: tokio::time::Instant| match keepalive {
            Some(k) => (now + k).min(token_deadline),
            None => token_deadline,
        };
        let timer = tokio::time::sleep_until(deadline_after_read(tokio::time::Instant::now()));
        tokio::pin!(timer);
        // Every poll of a token's `cancelled()` takes the token's lock, and the loop polls
        // them once per frame: the node-wide tokens are watched through child tokens of this
        // connection's own, so 10 000 viewers woken by one frame do not queue on one lock.
        let close_token = self.ctx.shutdown.close.child_token();
        let intake_token = self.ctx.shutdown.intake.child_token();
        let close = close_token.cancelled();
        let taken = kicked.cancelled();
        let intake = intake_token.cancelled();
        tokio::pin!(close, taken, intake);
        let outlet = self.outlet.clone();
        let socket = match &self.transport {
            Transport::Tcp(s) => Some(s.clone()),
            Transport::Ws(_) => None,
        };
        // A client that accepts no bytes for this long while some wait is closed.
        let write_limit = Duration::from_millis(self.ctx.config.mqtt.write_timeout_ms);
        let stall = tokio::time::sleep(write_limit);
        tokio::pin!(stall);

        loop {
            let reading = self.reader.is_some();
            let blocked = self.write_blocked;
            let writable = async {
                match &socket {
                    Some(s) => s.writable().await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                // Stop conditions first, so a cancelled intake wins over pending input; input
                // before writing what the fan-out queued, so a viewer that cannot keep up with
                // a busy stream still gets its PINGREQs and posts read.
                biased;
                _ = &mut close => Err(Close::Shutdown),
                _ = &mut taken => Err(Close::TakenOver),
                _ = &mut intake, if reading => {
                    // Nothing new enters once intake stops; deliveries still go out, and the
                    // client is not expected to ping while nobody reads.
                    self.reader = None;
                    timer.as_mut().reset(token_deadline);
                    Ok(())
                }
                _ = &mut timer => Err(if tokio::time::Instant::now() >= token_deadline {
                    Close::TokenExpired
                } else {
                    Close::KeepAlive
                }),
                r = self.transport.read(&mut self.read_buf), if reading => match r {
                    Ok(0) => Err(Close::PeerClosed),
                    Ok(_) => {
                        timer.as_mut().reset(deadline_after_read(tokio::time::Instant::now()));
                        self.on_readable().await
                    }
                    Err(e) => Err(Close::Io(e)),
                },
                Some(message) = direct_rx.recv() => {
                    let mut r = self.write_direct(message);
                    while r.is_ok() {
                        match direct_rx.try_recv() {
                            Ok(m) => r = self.write_direct(m),
                            Err(_) => break,
                        }
                    }
                    r
                }
                _ = outlet.wait_queued() => self.pump().await,
                r = writable, if blocked => match r {
                    Ok(()) => self.pump().await,
                    Err(e) => Err(Close::Io(e)),
                },
                _ = &mut stall, if blocked => Err(Close::WriteTimeout),
            };
            let step = match step {
                Ok(()) => self.flush().await,
                Err(c) => Err(c),
            };
            // The write timeout runs while bytes wait and restarts whenever some go out.
            if self.write_blocked && (!blocked || self.pumped > 0) {
                stall
                    .as_mut()
                    .reset(tokio::time::Instant::now() + write_limit);
            }
            self.pumped = 0;
            if let Err(close) = step {
                if matches!(close, Close::Refused) {
                    // The `unavailable` answer written just before must reach the client, and
                    // apart from the close: a client that reads the answer and the FIN in one
                    // go may drop the answer (rumqttc does), so the close waits a moment.
                    if self.flush().await.is_ok() {
                        let _ = self.drain().await;
                    }
                    self.linger(REFUSED_LINGER).await;
                }
                return close;
            }
        }
    }

    /// Reads and discards what the client sends for up to `wait` (or until it closes), so
    /// the last answer reaches it ahead of the close.
    async fn linger(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(n)) =
            tokio::time::timeout_at(deadline, self.transport.read(&mut self.read_buf)).await
        {
            self.read_buf.clear();
            if n == 0 {
                break;
            }
        }
    }

    /// Handles every complete packet in the read buffer.
    async fn on_readable(&mut self) -> Result<(), Close> {
        let max = self.ctx.config.mqtt.max_packet_size;
        loop {
            let packet = match CPacket::read(&mut self.read_buf, max) {
                Ok(p) => p,
                Err(CodecError::InsufficientBytes(_)) => break,
                Err(e) => return Err(Close::Protocol(e.to_string())),
            };
            self.on_packet(packet).await?;
        }
        if self.read_buf.is_empty() && self.read_buf.capacity() > 64 * 1024 {
            self.read_buf = BytesMut::new();
        }
        Ok(())
    }

    async fn on_packet(&mut self, packet: CPacket) -> Result<(), Close> {
        match packet {
            CPacket::Publish(p) => self.on_publish(p).await,
            CPacket::PubRel(r) => self.write_packet(CPacket::PubComp(PubComp::new(r.pkid))),
            CPacket::Subscribe(s) => self.on_subscribe(s).await,
            CPacket::Unsubscribe(u) => self.on_unsubscribe(u),
            CPacket::PingReq => self.write_packet(CPacket::PingResp),
            CPacket::Disconnect => Err(Close::PeerDisconnected),
            // Deliveries are QoS 0, so there is nothing for these to acknowledge.
            CPacket::PubAck(_) | CPacket::PubRec(_) | CPacket::PubComp(_) => Ok(()),
            other => Err(Close::Protocol(format!(
                "unexpected packet from a client: {other:?}"
            ))),
        }
    }

    async fn on_publish(&mut self, p: CPublish) -> Result<(), Close> {
        let (kind, stream) = match topics::parse_client_publish(&p.topic) {
            Some(ClientPublish::Post(s)) => (SubmissionKind::Post, s),
            Some(ClientPublish::Report(s)) => (SubmissionKind::Report, s),
            Some(ClientPublish::React(s)) => return self.on_react(p, s).await,
            None => {
                metrics::counter!("livecomments_publish_denied_total").increment(1);
                tracing::warn!(topic = %p.topic, "publish outside the policy; closing");
                return Err(Close::Forbidden(format!("publish to {}", p.topic)));
            }
        };
        let limited = self
            .post_limit
            .as_ref()
            .and_then(|l| l.check().err())
            .map(|not_until| {
                not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ))
            });
        if let Some(wait) = limited {
            // Answered here: a flood from one connection never fills the shared queue.
            metrics::counter!("livecomments_comments_rejected_total", "code" => "rate_limited")
                .increment(1);
            let ms = (wait.as_millis() as u64).max(1);
            self.answer_locally(
                Rejected::new(
                    client_msg_id(&p.payload),
                    RejectCode::RateLimited,
                    format!(
                        "at most {} posts per second on one connection",
                        self.ctx.config.mqtt.max_posts_per_second
                    ),
                )
                .retry_after(ms),
            )?;
            return self.ack_publish(&p);
        }
        let submission = Submission {
            kind,
            stream,
            author: Author::from(&self.identity),
            payload: p.payload.clone(),
            origin: Origin::Mqtt,
            received_at_ms: now_ms(),
        };
        let refused = if self.reader.is_none() || self.ctx.shutdown.intake.is_cancelled() {
            Some("the node is shutting down".to_string())
        } else {
            self.ctx.deps.bus.submit(submission).await.err().map(|e| {
                tracing::warn!(error = %e, "the bus did not take a post");
                match e {
                    wire::bus::BusError::Full => "the write path is overloaded",
                    _ => "the write path is unreachable",
                }
                .to_string()
            })
        };
        if let Some(why) = refused {
            // No PUBACK: the client learns the post was not taken and sends it again after
            // reconnecting (the same client_msg_id makes that harmless).
            metrics::counter!("livecomments_submissions_refused_total").increment(1);
            tracing::warn!(reason = %why, "write path did not take a post; closing");
            self.answer_locally(
                Rejected::new(
                    client_msg_id(&p.payload),
                    RejectCode::Unavailable,
                    format!("the post was not taken ({why}); retry with the same client_msg_id"),
                )
                .retry_after(1000),
            )?;
            return Err(Close::Refused);
        }
        self.ack_publish(&p)
    }

    /// Reactions are counted here; likes go to the write path. Either way the client gets
    /// its PUBACK: a reaction that is dropped (unknown emoji, over the rate) is dropped
    /// silently and counted.
    async fn on_react(&mut self, p: CPublish, stream: StreamId) -> Result<(), Close> {
        // Counting only live streams keeps one user from creating rows for made-up names.
        if !self.stream_live(&stream).await {
            metrics::counter!("livecomments_reactions_dropped_total", "reason" => "not_live")
                .increment(1);
            return self.ack_publish(&p);
        }
        let user = &self.identity.user;
        if self.ctx.reactions.react(user, &stream, &p.payload) == Reacted::Like {
            let like = Submission {
                kind: SubmissionKind::Like,
                stream,
                author: Author::from(&self.identity),
                payload: p.payload.clone(),
                origin: Origin::Mqtt,
                received_at_ms: now_ms(),
            };
            if self.ctx.deps.bus.submit(like).await.is_err() {
                metrics::counter!("livecomments_reactions_dropped_total", "reason" => "overload")
                    .increment(1);
            }
        }
        self.ack_publish(&p)
    }

    fn ack_publish(&mut self, p: &CPublish) -> Result<(), Close> {
        match p.qos {
            CQoS::AtMostOnce => Ok(()),
            CQoS::AtLeastOnce => self.write_packet(CPacket::PubAck(PubAck::new(p.pkid))),
            CQoS::ExactlyOnce => self.write_packet(CPacket::PubRec(PubRec::new(p.pkid))),
        }
    }

    /// Writes a reject to this client's inbox if it listens there.
    fn answer_locally(&mut self, reject: Rejected) -> Result<(), Close> {
        if self.inbox_subscribed {
            self.write_inbox(InboxMessage::Reject(reject).to_bytes())?;
        }
        Ok(())
    }

    async fn on_subscribe(&mut self, s: CSubscribe) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut new_topics = Vec::new();
        let mut first_viewer = Vec::new();
        for f in &s.filters {
            let granted = match topics::parse_subscribe(&f.path) {
                Some(SubscribeTarget::Inbox(user)) if user == self.identity.user => {
                    self.inbox_subscribed = true;
                    true
                }
                Some(SubscribeTarget::Stream { stream, topics }) => {
                    if self.filters.contains_key(&f.path) {
                        true
                    } else if self.stream_exists(&stream).await {
                        for t in &topics {
                            let n = self.held.entry(t.clone()).or_insert(0);
                            *n += 1;
                            if *n == 1 {
                                new_topics.push(t.clone());
                                if self.watch(&stream, 1) {
                                    first_viewer.push(stream.clone());
                                }
                            }
                        }
                        self.filters.insert(f.path.clone(), topics);
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            };
            if granted {
                codes.push(CCode::Success(CQoS::AtMostOnce));
            } else {
                metrics::counter!("livecomments_subscribe_denied_total").increment(1);
                tracing::info!(filter = %f.path, "subscription refused");
                codes.push(CCode::Failure);
            }
        }
        // Granted QoS is always 0. Handed to the outlet before the fan-out may write retained
        // messages to it.
        self.write_packet(CPacket::SubAck(CSubAck::new(s.pkid, codes)))?;
        self.flush().await?;
        for stream in first_viewer {
            self.ctx.bootstrap(&stream).await;
        }
        for topic in new_topics {
            self.ctx.fanout.subscribe(&topic, &self.outlet);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: CUnsubscribe) -> Result<(), Close> {
        for f in u.topics {
            if let Some(SubscribeTarget::Inbox(user)) = topics::parse_subscribe(&f) {
                if user == self.identity.user {
                    self.inbox_subscribed = false;
                }
                continue;
            }
            for t in self.filters.remove(&f).unwrap_or_default() {
                if let Some(n) = self.held.get_mut(&t) {
                    *n -= 1;
                    if *n == 0 {
                        self.held.remove(&t);
                        if let Some(SubscribeTarget::Stream { stream, .. }) =
                            topics::parse_subscribe(&t)
                        {
                            self.watch(&stream, -1);
                        }
                        self.ctx.fanout.unsubscribe(&t, &self.outlet);
                    }
                }
            }
        }
        // Exactly one UNSUBACK per UNSUBSCRIBE.
        self.write_packet(CPacket::UnsubAck(UnsubAck::new(u.pkid)))
    }

    /// Counts the topics this connection holds per stream; the first one makes it a viewer of
    /// the stream, dropping the last one stops that.
    /// Returns true for the node's first viewer of the stream.
    fn watch(&mut self, stream: &StreamId, delta: i32) -> bool {
        let n = self.watching.entry(stream.clone()).or_insert(0);
        let before = *n;
        *n = n.saturating_add_signed(delta);
        let bus = &self.ctx.deps.bus;
        let mut first = false;
        if before == 0 && *n > 0 && self.ctx.viewers.join(stream, &self.identity.user) {
            bus.watch(Channel::Stream(stream.clone()));
            first = true;
        }
        if before > 0 && *n == 0 {
            if self.ctx.viewers.leave(stream) {
                bus.unwatch(Channel::Stream(stream.clone()));
            }
            self.watching.remove(stream);
        }
        first
    }

    async fn stream_exists(&self, stream: &wire::StreamId) -> bool {
        if self.ctx.deps.auto_create_streams {
            return true;
        }
        match self.ctx.deps.streams.get(stream, STREAM_EXISTS_CACHE).await {
            Ok(s) => s.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "stream lookup failed");
                false
            }
        }
    }

    /// Whether a stream exists and is live (a cached answer, briefly: a stream going live on
    /// another node is seen within [`STREAM_LIVE_CACHE`]).
    async fn stream_live(&self, stream: &wire::StreamId) -> bool {
        match self.ctx.deps.streams.get(stream, STREAM_LIVE_CACHE).await {
            Ok(s) => s.is_some_and(|s| s.status == wire::event::StreamStatus::Live),
            Err(e) => {
                tracing::warn!(error = %e, "stream lookup failed");
                false
            }
        }
    }

    fn write_inbox(&mut self, payload: Bytes) -> Result<(), Close> {
        let publish = CPublish::from_bytes(self.inbox_topic.clone(), CQoS::AtMostOnce, payload);
        self.write_packet(CPacket::Publish(publish))
    }

    /// A message for this user: written if this connection subscribed to its topic.
    fn write_direct(&mut self, (topic, payload): Direct) -> Result<(), Close> {
        if topic == self.inbox_topic {
            if self.inbox_subscribed {
                return self.write_inbox(payload);
            }
            return Ok(());
        }
        if self.held.contains_key(&topic) {
            let publish = CPublish::from_bytes(topic, CQoS::AtMostOnce, payload);
            return self.write_packet(CPacket::Publish(publish));
        }
        Ok(())
    }

    fn write_packet(&mut self, p: CPacket) -> Result<(), Close> {
        p.write(&mut self.out, usize::MAX)
            .map(|_| ())
            .map_err(|e| Close::Protocol(e.to_string()))
    }

    /// Hands this task's packets to the outlet (which keeps them in order with the frames) and
    /// writes what the outlet has queued, as far as the socket takes it now.
    async fn flush(&mut self) -> Result<(), Close> {
        if !self.out.is_empty() {
            self.outlet.send_own(&self.out);
            if self.out.capacity() > 64 * 1024 {
                self.out = BytesMut::new();
            } else {
                self.out.clear();
            }
        }
        self.pump().await
    }

    /// Writes what the outlet queued (frames the fan-out could not write at once, and this
    /// task's packets behind them). TCP: without waiting; what the socket does not take yet
    /// leaves `write_blocked` set, and the loop waits for the socket between its other work.
    /// WebSocket: all of it, waiting at most the write timeout.
    async fn pump(&mut self) -> Result<(), Close> {
        match &self.transport {
            Transport::Tcp(socket) => {
                let (n, empty) = self.outlet.write_queued(socket).map_err(Close::Io)?;
                self.pumped += n;
                self.write_blocked = !empty;
                Ok(())
            }
            Transport::Ws(_) => self.drain().await,
        }
    }

    /// Writes everything the outlet queued, waiting for the socket; a client that accepts
    /// nothing for `write_timeout_ms` is closed.
    async fn drain(&mut self) -> Result<(), Close> {
        let limit = Duration::from_millis(self.ctx.config.mqtt.write_timeout_ms);
        match &mut self.transport {
            Transport::Tcp(socket) => {
                self.outlet
                    .drain_tcp(socket, limit)
                    .await
                    .map_err(|e| match e {
                        WriteError::Io(e) => Close::Io(e),
                        WriteError::Timeout => Close::WriteTimeout,
                    })
            }
            ws @ Transport::Ws(_) => {
                while let Some(bytes) = self.outlet.take_queued() {
                    match tokio::time::timeout(limit, ws.write_all(&bytes)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(Close::Io(e)),
                        Err(_) => return Err(Close::WriteTimeout),
                    }
                }
                Ok(())
            }
        }
    }

    async fn teardown(&mut self) {
        self.reader = None;
        for stream in self.watching.keys() {
            if self.ctx.viewers.leave(stream) {
                self.ctx.deps.bus.unwatch(Channel::Stream(stream.clone()));
            }
        }
        self.watching.clear();
        let reg = &self.ctx.registry;
        if reg.detach(&self.identity.user, self.uid) {
            self.ctx
                .deps
                .bus
                .unwatch(Channel::User(self.identity.user.clone()));
        }
        reg.leave(&self.identity.user, &self.client_id, self.uid);
        self.leave_fanout();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.transport.close()).await;
    }
}

impl Session {
    /// Closes the outlet (the fan-out writes nothing more and gives the socket back) and
    /// leaves every topic, so the fan-out forgets the outlet.
    fn leave_fanout(&mut self) {
        self.outlet.close();
        for t in self.held.keys() {
            self.ctx.fanout.unsubscribe(t, &self.outlet);
        }
        self.held.clear();
    }
}

/// A connection task that panicked never reaches `teardown`; the fan-out still lets go of
/// its outlet.
impl Drop for Session {
    fn drop(&mut self) {
        self.leave_fanout();
    }
}

/// Best-effort extraction of `client_msg_id` for answers produced before validation.
fn client_msg_id(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("client_msg_id")?
        .as_str()
        .map(str::to_owned)
}

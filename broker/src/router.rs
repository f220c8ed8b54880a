//! The rumqttd router of a node and its internal link.
//!
//! `rumqttd::Broker::new` spawns the router thread; its listeners are never started (the node
//! runs its own, see `listener`), only `Broker::link` is used: once for the relay's internal
//! link and once per client connection.

use std::sync::Arc;

use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::{Config, RouterConfig};

use crate::{BrokerConfig, BrokerError};

/// Router session ids of client connections are `c{slot}`; internal links use names that
/// cannot take that form (rumqttd forbids `/ + # $` in client ids).
pub(crate) const RELAY_LINK_ID: &str = "lc-relay";

/// Internal links plus a margin beyond the client connection limit.
const INTERNAL_LINKS: usize = 16;

pub(crate) struct Router {
    pub broker: Arc<rumqttd::Broker>,
    pub link: (LinkTx, LinkRx),
}

pub(crate) fn start(config: &BrokerConfig) -> Result<Router, BrokerError> {
    let router = RouterConfig {
        max_connections: config.mqtt.max_connections + INTERNAL_LINKS,
        // Packets the router hands a connection per scheduling round.
        max_outgoing_packet_count: 200,
        max_segment_size: config.mqtt.segment_size,
        max_segment_count: config.mqtt.segment_count,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let broker = rumqttd::Broker::new(Config {
        id: 0,
        router,
        ..Default::default()
    });
    let link = broker
        .link(RELAY_LINK_ID)
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    Ok(Router {
        broker: Arc::new(broker),
        link,
    })
}

/// Runs `f`, which may block on the router's bounded queue, without stalling the async
/// runtime's other tasks: on a multi-threaded runtime the worker hands its tasks to another
/// thread for the duration (`block_in_place`).
fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The router link failed (the router thread is gone or refused the session).
#[derive(Debug, thiserror::Error)]
#[error("router link failed: {0}")]
pub(crate) struct LinkFailed(String);

impl From<LinkError> for LinkFailed {
    fn from(e: LinkError) -> Self {
        LinkFailed(e.to_string())
    }
}

/// Queues packets for the router and wakes it once.
///
/// `LinkTx::send` is async in name only: it pushes to a buffer and makes a *blocking* send on
/// the router's bounded channel, so its future completes on the first poll.
pub(crate) fn send_packets(
    link: &mut LinkTx,
    mut packets: Vec<rumqttd::protocol::Packet>,
) -> Result<(), LinkFailed> {
    let Some(last) = packets.pop() else {
        return Ok(());
    };
    link.buffer().extend(packets);
    off_runtime(
        || match futures_util::FutureExt::now_or_never(link.send(last)) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
            None => Err(LinkFailed("send did not complete".into())),
        },
    )
}

/// Publishes a QoS 0, non-retained message through the router.
pub(crate) fn publish(
    link: &mut LinkTx,
    topic: String,
    payload: bytes::Bytes,
) -> Result<(), LinkFailed> {
    off_runtime(|| match link.publish(topic, payload) {
        Ok(_) => Ok(()),
        Err(e) => Err(LinkFailed(e.to_string())),
    })
}

//! The rumqttd router of a node and its internal link.
//!
//! `rumqttd::Broker::new` spawns the router thread; its listeners are never started (the node
//! runs its own, see `listener`), only `Broker::link` is used: once for the relay's internal
//! link and once per client connection.

use std::sync::Arc;

use rumqttd::local::{LinkRx, LinkTx};
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

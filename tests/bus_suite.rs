//! The bus behaviour suite (`bridge::bus::suite`) against both buses: the in-process one of
//! the embedded default, and the Redis bus of a cluster on a real `redis-server` (a node and a
//! bridge as two connections, each check under a prefix of its own).

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bridge::bus::suite::{self, Pair};
use bridge::bus::{RedisBus, RedisBusConfig};
use common::redis::RedisServer;
use tokio_util::sync::CancellationToken;
use wire::bus::MemoryBus;

fn memory() -> Pair {
    let bus = Arc::new(MemoryBus::new(1024));
    Pair {
        node: bus.clone(),
        bridge: bus,
    }
}

/// Runs a check against a fresh pair of Redis bus connections (a node and a bridge).
async fn on_redis<F, Fut>(check: F)
where
    F: FnOnce(Pair) -> Fut,
    Fut: Future<Output = ()>,
{
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let redis = RedisServer::start();
    let prefix = format!("suite{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let stop = CancellationToken::new();
    let connect = |name: &str| {
        RedisBus::connect(
            RedisBusConfig {
                url: redis.url(),
                prefix: prefix.clone(),
                // Short, so an unconfirmed submission would come back within the checks' waits.
                claim_idle_ms: 1000,
                unwatch_linger_ms: 200,
                queue_capacity: 1024,
            },
            name.to_string(),
            stop.clone(),
        )
    };
    let node = connect("node-1").await.expect("node bus");
    let bridge = connect("bridge-1").await.expect("bridge bus");
    check(Pair {
        node: Arc::new(node),
        bridge: Arc::new(bridge),
    })
    .await;
    stop.cancel();
}

macro_rules! both {
    ($($check:ident),* $(,)?) => {
        mod memory_bus {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    suite::$check(memory()).await;
                }
            )*
        }
        mod redis_bus {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    on_redis(suite::$check).await;
                }
            )*
        }
    };
}

both!(
    submissions_arrive_once_in_order_intact,
    concurrent_submitters_lose_nothing,
    receivers_are_taken_once,
    deliveries_reach_watching_nodes_intact_in_order,
);

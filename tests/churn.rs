//! Connection churn (disconnects and takeovers) leaves no connection state behind.
//! Alone in its test binary: it reads the process-wide connections gauge.

mod common;

use common::{granted, Client, System, WAIT};
use wire::auth::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_leaves_nothing_behind() {
    let sys = System::start_with(|c| c.bridge.rate_limit_count = 0).await;
    sys.live_stream("s1").await;
    for round in 0..60 {
        let mut c = Client::must(sys.tcp("same-id", &sys.token("churn", Role::Viewer))).await;
        assert!(granted(&c.subscribe("streams/s1/#").await));
        assert!(granted(&c.subscribe("users/churn/inbox").await));
        if round % 2 == 0 {
            c.client.disconnect().await.unwrap();
            assert!(c.closed_within(WAIT).await);
        }
        // Odd rounds are replaced by the next round's takeover.
    }
    // After all that, one fresh viewer and one poster still work, and answers go only to
    // connections that are alive.
    let mut v = Client::must(sys.tcp("v", &sys.token("vic", Role::Viewer))).await;
    v.subscribe("streams/s1/comments").await;
    let mut p = Client::must(sys.tcp("same-id", &sys.token("churn", Role::Viewer))).await;
    p.subscribe("users/churn/inbox").await;
    p.post_text("s1", "after churn", "c1").await;
    assert_eq!(p.inbox("churn").await["type"], "ack");
    let (events, _) = v.comments("s1", 1, WAIT).await;
    assert_eq!(events.len(), 1);
    drop(p);
    drop(v);
    // Every closed connection gave its gauge back.
    sys.metric_becomes("livecomments_mqtt_connections{transport=\"tcp\"}", 0.0)
        .await;
    sys.stop().await;
}

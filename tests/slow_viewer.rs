//! A viewer that stops reading its socket while the stream is busy: the node disconnects it
//! after `mqtt.write_timeout_ms` (it holds buffers meanwhile), nobody else waits for it, and
//! until then what it sends is still read (its posts, its PINGREQs).
//! Alone in its test binary: it reads the process-wide connections gauge.

mod common;

use bytes::BytesMut;
use common::{seqs, Client, System, WAIT};
use rumqttc::mqttbytes::v4::{Connect, Login, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use wire::auth::Role;

const GAUGE: &str = "livecomments_mqtt_connections{transport=\"tcp\"}";
/// Comments posted: ~1.5 KB each (500 three-byte characters), together more than the
/// kernel buffers a loopback socket that is not read holds (~2.8 MB of server send buffer
/// here), so the node's writes to the stuck viewer block.
const POSTS: usize = 2_500;
const POSTERS: usize = 5;

/// A distinct comment of 500 CJK characters with no character repeated in a row.
fn text(n: usize) -> String {
    (0..500)
        .map(|i| char::from_u32(0x4E00 + ((n * 31 + i * 7) % 5000) as u32).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_is_dropped_and_holds_up_nobody() {
    let sys = System::start_with(|c| {
        // Long enough for the stuck viewer to post while the node cannot write to it.
        c.mqtt.write_timeout_ms = 5_000;
        c.mqtt.max_posts_per_second = 0;
        c.bridge.rate_limit_count = 0;
        c.delivery.sampling_threshold_per_s = 0;
    })
    .await;
    sys.live_stream("s1").await;

    // The stuck viewer: a small receive buffer, subscribed, then never read again.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket
        .connect(([127, 0, 0, 1], sys.mqtt_port()).into())
        .await
        .unwrap();
    let mut connect = Connect::new("stuck");
    connect.keep_alive = 60;
    connect.login = Some(Login::new("u", sys.token("stuck", Role::Viewer)));
    let mut b = BytesMut::new();
    Packet::Connect(connect).write(&mut b, usize::MAX).unwrap();
    Packet::Subscribe(Subscribe::new("streams/s1/comments", QoS::AtMostOnce))
        .write(&mut b, usize::MAX)
        .unwrap();
    stuck.write_all(&b).await.unwrap();
    let mut buf = BytesMut::new();
    let suback = tokio::time::timeout(WAIT, async {
        loop {
            while let Ok(p) = Packet::read(&mut buf, 1 << 20) {
                if matches!(p, Packet::SubAck(_)) {
                    return;
                }
            }
            assert!(stuck.read_buf(&mut buf).await.unwrap() > 0, "closed early");
        }
    });
    suback.await.expect("SUBACK");

    let mut viewer = Client::must(sys.tcp("v", &sys.token("v", Role::Viewer))).await;
    viewer.subscribe("streams/s1/comments").await;
    sys.metric_becomes(GAUGE, 2.0).await;

    let posting: Vec<_> = (0..POSTERS)
        .map(|p| {
            let http = sys.http.clone();
            let url = sys.url("/v1/streams/s1/comments");
            let token = sys.token(&format!("poster{p}"), Role::Viewer);
            tokio::spawn(async move {
                for n in (p..POSTS).step_by(POSTERS) {
                    let r = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(
                            &serde_json::json!({"text": text(n), "client_msg_id": format!("m{n}")}),
                        )
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
                }
            })
        })
        .collect();
    // The healthy viewer gets every comment, in order, while the stuck one blocks its writes.
    let (events, _) = viewer.comments("s1", POSTS, 6 * WAIT).await;
    for p in posting {
        p.await.unwrap();
    }
    assert_eq!(
        seqs(&events),
        (1..=POSTS as u64).collect::<Vec<_>>(),
        "every comment, in order, to the viewer that reads"
    );
    // The node cannot write to the stuck viewer now, but still reads it: its post is taken.
    assert_eq!(
        sys.metric(GAUGE).await,
        Some(2.0),
        "the stuck viewer is still connected"
    );
    let mut b = BytesMut::new();
    Packet::Publish(Publish::new(
        "streams/s1/post",
        QoS::AtMostOnce,
        serde_json::json!({"text": "from the stuck one", "client_msg_id": "stuck-1"}).to_string(),
    ))
    .write(&mut b, usize::MAX)
    .unwrap();
    stuck.write_all(&b).await.unwrap();
    let (events, _) = viewer.comments("s1", 1, WAIT).await;
    assert_eq!(
        events.len(),
        1,
        "the stuck viewer's post was read and published"
    );
    assert_eq!(events[0]["text"], "from the stuck one");
    assert_eq!(events[0]["user"]["id"], "stuck");
    // The stuck viewer is let go: the gauge counts only the healthy one.
    sys.metric_becomes(GAUGE, 1.0).await;
    // What the node had written before it gave up, then the end of the connection.
    let ended = tokio::time::timeout(WAIT, async {
        let mut sink = vec![0u8; 1 << 16];
        loop {
            match stuck.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    ended.await.expect("the node closed the stuck connection");
    drop(viewer);
    sys.stop().await;
}

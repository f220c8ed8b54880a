//! Accept loops for the MQTT TCP and MQTT-over-WebSocket listeners.
//!
//! Every accepted socket gets its own task at once; the WebSocket handshake and the wait for
//! CONNECT run there under `mqtt.connect_timeout_ms`, so an idle or slow client holds only its
//! own task (rumqttd's server performs the handshake inside its accept loop, which lets one
//! idle TCP connection block every later WebSocket client).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;

use crate::connection::{self, NodeCtx};
use crate::transport::Transport;
use crate::BrokerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp,
    WebSocket,
}

/// WebSocket sub-protocols we answer to, in order of preference.
const SUBPROTOCOLS: &[&str] = &["mqtt", "mqttv3.1"];

pub(crate) async fn bind(host: &str, port: u16) -> Result<TcpListener, BrokerError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| BrokerError::Bind { addr, source })
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    ctx: Arc<NodeCtx>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.intake.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics::counter!("livecomments_mqtt_connects_refused_total", "reason" => "limit")
                .increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        // Taken before the task starts, so shutdown cannot miss a connection about to read.
        let reader = ctx.readers.token();
        tracker.spawn(async move {
            let _permit = permit;
            let timeout = Duration::from_millis(ctx.config.mqtt.connect_timeout_ms);
            let transport = match kind {
                Kind::Tcp => Transport::Tcp(std::sync::Arc::new(stream)),
                Kind::WebSocket => {
                    match tokio::time::timeout(timeout, handshake(stream, &ctx.config.ws.path))
                        .await
                    {
                        Ok(Ok(ws)) => Transport::Ws(Box::new(ws)),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "websocket handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "websocket handshake timed out");
                            return;
                        }
                    }
                }
            };
            connection::serve(transport, peer, ctx, reader).await;
        });
    }
    tracing::debug!(?kind, "listener stopped");
}

// The callback's `Result<Response, ErrorResponse>` is tungstenite's signature.
#[allow(clippy::result_large_err)]
async fn handshake(
    stream: TcpStream,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut err = ErrorResponse::new(Some(format!("no MQTT endpoint here; use {path}")));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        // Echo a sub-protocol only when the client offered it (browsers fail otherwise).
        let offered: Vec<String> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_ascii_lowercase())
            .collect();
        if let Some(p) = SUBPROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o == *p))
        {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(p));
        }
        Ok(resp)
    };
    let mut config = WebSocketConfig::default();
    // Small buffers: most connections are idle viewers.
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    let config = config
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
}

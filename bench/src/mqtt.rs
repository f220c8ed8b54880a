//! A minimal MQTT 3.1.1 client: rumqttc's v4 packet codec over a tokio socket (TCP or
//! WebSocket), bound to a chosen source address. No event loop, no queues, no reconnects —
//! one connection is a reader and a writer owned by one light task, which is what lets one
//! process hold thousands of subscribers without the generator becoming the bottleneck.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Login, Packet, Subscribe};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Largest packet accepted from a broker (frames are at most 8 KiB plus one large event).
pub const MAX_INCOMING_PACKET: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    Ws(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("mqtt: {0}")]
    Mqtt(#[from] mqttbytes::Error),
    #[error("connection refused by the broker: {0:?}")]
    Refused(ConnectReturnCode),
    #[error("subscription to {0} refused")]
    SubscribeRefused(String),
    #[error("the broker closed the connection")]
    Closed,
    #[error("unexpected packet while waiting for {expected}: {got:?}")]
    Unexpected {
        expected: &'static str,
        got: Box<Packet>,
    },
    #[error("timed out")]
    Timeout,
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::Ws(Box::new(e))
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp(SocketAddr),
    /// MQTT over WebSocket: the socket address and the URL path (sub-protocol `mqtt`).
    Ws(SocketAddr, String),
}

impl Endpoint {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Endpoint::Tcp(a) | Endpoint::Ws(a, _) => *a,
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

enum ReadHalf {
    Tcp(OwnedReadHalf),
    Ws(SplitStream<Ws>),
}

enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Ws(SplitSink<Ws, Message>),
}

/// The receiving side of a connection: whole MQTT packets.
pub struct Reader {
    half: ReadHalf,
    buf: BytesMut,
}

/// The sending side: pre-encoded packets.
pub struct Writer {
    half: WriteHalf,
}

/// Opens a socket from `source` (port chosen by the kernel) to `endpoint`.
pub async fn open(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
) -> Result<(Reader, Writer), ClientError> {
    let addr = endpoint.addr();
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let buf = BytesMut::with_capacity(4096);
    Ok(match endpoint {
        Endpoint::Tcp(_) => {
            let (r, w) = stream.into_split();
            (
                Reader {
                    half: ReadHalf::Tcp(r),
                    buf,
                },
                Writer {
                    half: WriteHalf::Tcp(w),
                },
            )
        }
        Endpoint::Ws(addr, path) => {
            let mut request = format!("ws://{addr}{path}").into_client_request()?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
            let (w, r) = ws.split();
            (
                Reader {
                    half: ReadHalf::Ws(r),
                    buf,
                },
                Writer {
                    half: WriteHalf::Ws(w),
                },
            )
        }
    })
}

impl Reader {
    /// The next packet. Cancel-safe: bytes already read stay buffered.
    pub async fn next(&mut self) -> Result<Packet, ClientError> {
        loop {
            match Packet::read(&mut self.buf, MAX_INCOMING_PACKET) {
                Ok(p) => return Ok(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(e.into()),
            }
            match &mut self.half {
                ReadHalf::Tcp(r) => {
                    if r.read_buf(&mut self.buf).await? == 0 {
                        return Err(ClientError::Closed);
                    }
                }
                ReadHalf::Ws(r) => match r.next().await {
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(Message::Close(_))) | None => return Err(ClientError::Closed),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                },
            }
        }
    }
}

impl Writer {
    pub async fn send(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        match &mut self.half {
            WriteHalf::Tcp(w) => w.write_all(&bytes).await?,
            WriteHalf::Ws(w) => w.send(Message::Binary(bytes)).await?,
        }
        Ok(())
    }

    /// Sends DISCONNECT and closes the socket (errors ignored: the peer may be gone).
    pub async fn disconnect(mut self) {
        let _ = self.send(encode(&Packet::Disconnect)).await;
        match &mut self.half {
            WriteHalf::Tcp(w) => {
                let _ = w.shutdown().await;
            }
            WriteHalf::Ws(w) => {
                let _ = w.close().await;
            }
        }
    }
}

/// Encodes one packet.
pub fn encode(packet: &Packet) -> Bytes {
    let mut buf = BytesMut::new();
    // Only our own packets are encoded here; they are far below any size limit.
    let _ = packet.write(&mut buf, usize::MAX);
    buf.freeze()
}

/// CONNECT (clean session) and wait for a successful CONNACK.
pub async fn handshake(
    reader: &mut Reader,
    writer: &mut Writer,
    client_id: &str,
    login: Option<(&str, &str)>,
    keep_alive: Duration,
) -> Result<(), ClientError> {
    let mut connect = Connect::new(client_id);
    connect.keep_alive = keep_alive.as_secs().min(u16::MAX as u64) as u16;
    connect.clean_session = true;
    connect.login = login.map(|(u, p)| Login::new(u, p));
    writer.send(encode(&Packet::Connect(connect))).await?;
    match reader.next().await? {
        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Ok(()),
        Packet::ConnAck(ack) => Err(ClientError::Refused(ack.code)),
        other => Err(ClientError::Unexpected {
            expected: "CONNACK",
            got: Box::new(other),
        }),
    }
}

/// SUBSCRIBE to `filter` at QoS 0 and wait for its SUBACK. Publishes that arrive before the
/// SUBACK are dropped (nothing is posted before every subscriber is ready).
pub async fn subscribe(
    reader: &mut Reader,
    writer: &mut Writer,
    filter: &str,
    pkid: u16,
) -> Result<(), ClientError> {
    let mut sub = Subscribe::new(filter, QoS::AtMostOnce);
    sub.pkid = pkid;
    writer.send(encode(&Packet::Subscribe(sub))).await?;
    loop {
        match reader.next().await? {
            Packet::SubAck(ack) if ack.pkid == pkid => {
                return match ack.return_codes.first() {
                    Some(mqttbytes::v4::SubscribeReasonCode::Success(_)) => Ok(()),
                    _ => Err(ClientError::SubscribeRefused(filter.to_string())),
                };
            }
            Packet::Publish(_) | Packet::PingResp => {}
            other => {
                return Err(ClientError::Unexpected {
                    expected: "SUBACK",
                    got: Box::new(other),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{ConnAck, Publish, SubAck, SubscribeReasonCode};
    use tokio::net::TcpListener;

    /// A fake broker: answers CONNECT and SUBSCRIBE, then sends two publishes in one write.
    #[tokio::test]
    async fn talks_to_a_broker_from_a_chosen_source_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, peer) = listener.accept().await.unwrap();
            let (r, w) = s.into_split();
            let mut reader = Reader {
                half: ReadHalf::Tcp(r),
                buf: BytesMut::new(),
            };
            let mut writer = Writer {
                half: WriteHalf::Tcp(w),
            };
            assert!(matches!(reader.next().await.unwrap(), Packet::Connect(_)));
            let ack = ConnAck::new(ConnectReturnCode::Success, false);
            writer.send(encode(&Packet::ConnAck(ack))).await.unwrap();
            let Packet::Subscribe(sub) = reader.next().await.unwrap() else {
                panic!("expected SUBSCRIBE")
            };
            let suback = SubAck::new(
                sub.pkid,
                vec![SubscribeReasonCode::Success(QoS::AtMostOnce)],
            );
            let mut both = BytesMut::new();
            both.extend_from_slice(&encode(&Packet::SubAck(suback)));
            for body in ["one", "two"] {
                let p = Publish::new("t", QoS::AtMostOnce, body);
                both.extend_from_slice(&encode(&Packet::Publish(p)));
            }
            writer.send(both.freeze()).await.unwrap();
            assert!(matches!(reader.next().await.unwrap(), Packet::Disconnect));
            peer
        });
        let source: IpAddr = "127.0.0.3".parse().unwrap();
        let (mut r, mut w) = open(&Endpoint::Tcp(addr), Some(source)).await.unwrap();
        handshake(
            &mut r,
            &mut w,
            "c1",
            Some(("u", "p")),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        subscribe(&mut r, &mut w, "t", 1).await.unwrap();
        for body in ["one", "two"] {
            let Packet::Publish(p) = r.next().await.unwrap() else {
                panic!("expected PUBLISH")
            };
            assert_eq!(&p.payload[..], body.as_bytes());
        }
        w.disconnect().await;
        assert_eq!(server.await.unwrap().ip(), source);
    }
}

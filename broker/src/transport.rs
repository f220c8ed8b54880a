//! One byte-stream interface over the two transports a client may use.
//!
//! MQTT over WebSocket carries MQTT bytes in binary messages that need not align with packet
//! boundaries, so both transports reduce to "append what arrived to a buffer" and "write these
//! bytes"; the MQTT codec above does not know which one it talks to.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Spare room kept in the read buffer before a socket read.
const READ_RESERVE: usize = 2048;

pub(crate) enum Transport {
    /// Shared with the connection's fan-out outlet, which writes frames to it directly.
    Tcp(Arc<TcpStream>),
    Ws(Box<WebSocketStream<TcpStream>>),
}

impl Transport {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Transport::Tcp(_) => "tcp",
            Transport::Ws(_) => "ws",
        }
    }

    /// Appends received bytes to `buf`. `Ok(0)` means the peer closed. Cancel-safe.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => {
                if buf.capacity() - buf.len() < READ_RESERVE / 4 {
                    buf.reserve(READ_RESERVE);
                }
                loop {
                    s.readable().await?;
                    match s.try_read_buf(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => return r,
                    }
                }
            }
            Transport::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                        buf.extend_from_slice(&b);
                        return Ok(b.len());
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "MQTT over WebSocket uses binary messages",
                        ))
                    }
                    // Pings are answered by tungstenite itself.
                    Some(Ok(_)) => continue,
                }
            },
        }
    }

    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => {
                let mut written = 0;
                while written < data.len() {
                    s.writable().await?;
                    match s.try_write(&data[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Transport::Ws(ws) => ws
                .send(Message::Binary(Bytes::copy_from_slice(data)))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Closes politely; errors do not matter any more at this point.
    pub(crate) async fn close(&mut self) {
        match self {
            Transport::Tcp(s) => {
                // Shared until the outlet is closed; a socket still shared is closed on drop.
                if let Some(s) = Arc::get_mut(s) {
                    let _ = s.shutdown().await;
                }
            }
            Transport::Ws(ws) => {
                let _ = SinkExt::close(ws.as_mut()).await;
            }
        }
    }
}

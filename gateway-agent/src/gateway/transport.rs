//! One connection's byte stream as frames: length-prefixed over TCP, one binary message
//! per frame over WebSocket; either may run inside TLS.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use switchyard_proto::wire::{Frame, FrameCodec, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message, protocol::WebSocketConfig};
use tokio_util::codec::Framed;

/// Any byte stream a session can run on (plain TCP or TLS).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The boxed stream, so TLS and plain connections share one session code path.
pub(crate) type BoxIo = Box<dyn Io>;

/// What arrived from the client.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A protocol frame.
    Frame(Frame),
    /// A WebSocket ping or pong: activity only (tungstenite queues the pong answer,
    /// sent by the next flush).
    Control,
    /// The client closed the connection.
    Closed,
}

/// Why reading failed; each closes the connection with [`RecvError::reason`] counted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecvError {
    /// A malformed frame (size, kind, payload) or a stream error.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// WebSocket-level failure.
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    /// A text message where only binary frames are allowed.
    #[error("websocket text message (frames are binary)")]
    Text,
}

impl RecvError {
    /// Metric label.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Frame(e) => e.reason(),
            Self::Ws(tungstenite::Error::Capacity(_)) => "too_large",
            Self::Ws(tungstenite::Error::Io(_)) => "io",
            Self::Ws(tungstenite::Error::Protocol(_)) => "ws_protocol",
            Self::Ws(_) => "ws",
            Self::Text => "bad_payload",
        }
    }

    /// True when the peer simply went away (not a protocol violation).
    pub(crate) fn is_disconnect(&self) -> bool {
        matches!(self.reason(), "io")
            || matches!(
                self,
                Self::Ws(
                    tungstenite::Error::ConnectionClosed
                        | tungstenite::Error::AlreadyClosed
                        | tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                        )
                )
            )
    }
}

/// A connection speaking contract 3.
pub(crate) enum Transport {
    /// Length-prefixed frames on a byte stream.
    Tcp(Framed<BoxIo, FrameCodec>),
    /// One binary message per frame.
    Ws {
        /// The WebSocket.
        ws: Box<WebSocketStream<BoxIo>>,
        /// Frame limit (the message limit is set to it too).
        max_frame: usize,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp(_) => "Transport::Tcp",
            Self::Ws { .. } => "Transport::Ws",
        })
    }
}

/// Starting size of a TCP connection's read and write buffers. `Framed::new` starts both
/// at 8 KiB, which an idle connection pays for all its life while its traffic is 5-byte
/// heartbeats and a WELCOME: 256 bytes holds those, and a bigger frame grows the buffer as
/// its bytes arrive (the codec reserves nothing for an announced length), so only the
/// connections that carry big frames pay for them. Measured by `bench-density`.
const INITIAL_BUFFER: usize = 256;

impl Transport {
    pub(crate) fn tcp(io: BoxIo, max_frame: usize) -> Self {
        Self::Tcp(Framed::with_capacity(
            io,
            FrameCodec::new(max_frame),
            INITIAL_BUFFER,
        ))
    }

    /// Runs the WebSocket upgrade on `io` (any path is accepted).
    pub(crate) async fn websocket(io: BoxIo, max_frame: usize) -> Result<Self, tungstenite::Error> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_frame))
            .max_frame_size(Some(max_frame));
        let ws = tokio_tungstenite::accept_async_with_config(io, Some(config)).await?;
        Ok(Self::Ws {
            ws: Box::new(ws),
            max_frame,
        })
    }

    /// Protocol label for metrics and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Tcp(_) => "tcp",
            Self::Ws { .. } => "ws",
        }
    }

    /// The next thing from the client. Cancel-safe: it only awaits `next()`.
    pub(crate) async fn recv(&mut self) -> Result<Incoming, RecvError> {
        match self {
            Self::Tcp(framed) => match framed.next().await {
                Some(Ok(f)) => Ok(Incoming::Frame(f)),
                Some(Err(e)) => Err(e.into()),
                None => Ok(Incoming::Closed),
            },
            Self::Ws { ws, max_frame } => match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    Ok(Incoming::Frame(Frame::decode_message(b, *max_frame)?))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(Incoming::Control),
                Some(Ok(Message::Text(_))) => Err(RecvError::Text),
                Some(Ok(Message::Close(_))) | None => Ok(Incoming::Closed),
                Some(Ok(Message::Frame(_))) => Ok(Incoming::Control),
                Some(Err(e)) => Err(e.into()),
            },
        }
    }

    /// Sends one frame and flushes.
    pub(crate) async fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        match self {
            Self::Tcp(framed) => framed.send(frame).await.map_err(std::io::Error::other),
            Self::Ws { ws, .. } => ws
                .send(Message::Binary(frame.to_message()))
                .await
                .map_err(std::io::Error::other),
        }
    }

    /// Flushes what is queued (on WebSocket: the automatic pong to a ping).
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Tcp(framed) => SinkExt::<&Frame>::flush(framed)
                .await
                .map_err(std::io::Error::other),
            Self::Ws { ws, .. } => ws.flush().await.map_err(std::io::Error::other),
        }
    }

    /// Ends the connection politely so the last frame (KICK, REJECT) is read before the
    /// socket goes: half-close our side, then discard input until the client closes or
    /// `linger` passes. Closing with unread input would send RST, which can destroy the
    /// frame in flight.
    pub(crate) async fn close(self, linger: Duration) {
        let drain = async move {
            match self {
                Self::Tcp(framed) => {
                    let mut io = framed.into_inner();
                    let _ = io.shutdown().await;
                    let mut sink = [0u8; 1024];
                    while let Ok(n) = io.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
                Self::Ws { mut ws, .. } => {
                    let _ = ws.close().await;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            }
        };
        let _ = tokio::time::timeout(linger, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer announcing a 64 KiB frame and sending only its header must not make the
    /// gateway hold 64 KiB for it (before HELLO, that is what a flood of such peers costs).
    #[tokio::test]
    async fn an_announced_length_is_not_reserved() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut t = Transport::tcp(Box::new(server), 64 * 1024);
        client.write_all(&[0, 1, 0, 0, 0x05]).await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(200), t.recv()).await;
        assert!(r.is_err(), "no frame yet");
        let Transport::Tcp(framed) = &t else {
            unreachable!()
        };
        let cap = framed.read_buffer().capacity();
        assert!(cap <= 4 * INITIAL_BUFFER, "read buffer grew to {cap} bytes");
    }
}

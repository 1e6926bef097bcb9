//! Links to a gateway: TCP (length-prefixed frames) or WebSocket (one binary message per
//! frame), each optionally over TLS, with TCP keepalive as a second line of defence.

use std::sync::Arc;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use socket2::{SockRef, TcpKeepalive};
use switchyard_proto::wire::{Frame, FrameCodec, FrameError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::codec::Framed;

use crate::config::{Keepalive, Protocol};
use crate::event::DisconnectCause;

/// A byte stream: plain TCP or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type BoxIo = Box<dyn Io>;

/// Why a link could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// Address that does not parse for the protocol.
    #[error("bad gateway address {0:?}: {1}")]
    Address(String, String),
    /// Socket-level failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a frame.
    #[error("protocol: {0}")]
    Frame(#[from] FrameError),
    /// WebSocket failure.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// The WebSocket peer sent a text message or other non-frame.
    #[error("websocket: unexpected {0} message")]
    WsMessage(&'static str),
}

impl LinkError {
    /// What this error means for an established link. Every way a peer or path can end a
    /// connection (EOF, RST, broken pipe, a WebSocket reset) is one cause, so one crash
    /// gives one cause whatever the timing; anything else the peer sent wrong is a
    /// protocol error.
    pub(crate) fn into_cause(self) -> DisconnectCause {
        use tokio_tungstenite::tungstenite::Error as WsError;
        use tokio_tungstenite::tungstenite::error::ProtocolError;
        let closed = match &self {
            Self::Io(_) | Self::Frame(FrameError::Io(_)) => true,
            Self::Ws(
                WsError::Io(_)
                | WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            ) => true,
            Self::Address(..) | Self::Frame(_) | Self::Ws(_) | Self::WsMessage(_) => false,
        };
        if closed {
            DisconnectCause::LinkClosed {
                detail: self.to_string(),
            }
        } else {
            DisconnectCause::Protocol {
                detail: self.to_string(),
            }
        }
    }
}

/// Everything needed to open a link.
#[derive(Clone)]
pub(crate) struct Dialer {
    /// TCP or WebSocket.
    pub(crate) protocol: Protocol,
    /// TLS for TCP (always) or for `wss://` URLs; `None` = plain TCP.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// Kernel keepalive settings, the backstop behind the app heartbeat.
    pub(crate) keepalive: Option<Keepalive>,
    /// Largest frame accepted from the gateway.
    pub(crate) max_frame: usize,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

fn tcp_setup(tcp: &TcpStream, keepalive: Option<Keepalive>) -> std::io::Result<()> {
    // Frames are small and latency matters more than packet count (Mars does the same).
    tcp.set_nodelay(true)?;
    if let Some(k) = keepalive {
        let ka = TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.count);
        SockRef::from(tcp).set_tcp_keepalive(&ka)?;
    }
    Ok(())
}

fn host_of(hostport: &str) -> &str {
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h,
        None => hostport,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

async fn tls_wrap(
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<BoxIo, LinkError> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| LinkError::Address(host.to_owned(), e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await?;
    Ok(Box::new(stream))
}

impl Dialer {
    /// Opens a link to `address` (no HELLO yet).
    pub(crate) async fn dial(&self, address: &str) -> Result<(LinkTx, LinkRx), LinkError> {
        match self.protocol {
            Protocol::Tcp => {
                let tcp = TcpStream::connect(address).await?;
                tcp_setup(&tcp, self.keepalive)?;
                let io: BoxIo = match &self.tls {
                    Some(tls) => tls_wrap(tls, host_of(address), tcp).await?,
                    None => Box::new(tcp),
                };
                let (tx, rx) = Framed::new(io, FrameCodec::new(self.max_frame)).split();
                Ok((LinkTx::Tcp(tx), LinkRx::Tcp(rx)))
            }
            Protocol::Ws => {
                let bad = |why: &str| LinkError::Address(address.to_owned(), why.to_owned());
                let (secure, rest) = if let Some(r) = address.strip_prefix("wss://") {
                    (true, r)
                } else if let Some(r) = address.strip_prefix("ws://") {
                    (false, r)
                } else {
                    return Err(bad("expected a ws:// or wss:// URL"));
                };
                let authority = rest.split('/').next().unwrap_or_default();
                if authority.is_empty() {
                    return Err(bad("no host"));
                }
                let hostport = if authority
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    authority.to_owned()
                } else {
                    format!("{authority}:{}", if secure { 443 } else { 80 })
                };
                let tcp = TcpStream::connect(&hostport).await?;
                tcp_setup(&tcp, self.keepalive)?;
                let io: BoxIo = if secure {
                    let tls = self.tls.clone().unwrap_or_else(crate::config::default_tls);
                    tls_wrap(&tls, host_of(&hostport), tcp).await?
                } else {
                    Box::new(tcp)
                };
                let mut cfg = WebSocketConfig::default();
                cfg.max_message_size = Some(self.max_frame);
                cfg.max_frame_size = Some(self.max_frame);
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(address, io, Some(cfg)).await?;
                let (tx, rx) = ws.split();
                Ok((LinkTx::Ws(tx), LinkRx::Ws(rx)))
            }
        }
    }
}

/// Sending half of a link.
pub(crate) enum LinkTx {
    /// Length-prefixed frames.
    Tcp(SplitSink<Framed<BoxIo, FrameCodec>, Frame>),
    /// One binary message per frame.
    Ws(SplitSink<WebSocketStream<BoxIo>, Message>),
}

/// Receiving half of a link.
pub(crate) enum LinkRx {
    /// Length-prefixed frames.
    Tcp(SplitStream<Framed<BoxIo, FrameCodec>>),
    /// One binary message per frame.
    Ws(SplitStream<WebSocketStream<BoxIo>>),
}

impl std::fmt::Debug for LinkTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTx")
    }
}

impl std::fmt::Debug for LinkRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkRx")
    }
}

impl LinkTx {
    /// Writes and flushes one frame.
    pub(crate) async fn send(&mut self, frame: Frame) -> Result<(), LinkError> {
        match self {
            Self::Tcp(s) => s.send(frame).await?,
            Self::Ws(s) => s.send(Message::Binary(frame.to_message())).await?,
        }
        Ok(())
    }

    /// Closes the write side politely (best effort).
    pub(crate) async fn close(&mut self) {
        let _ = match self {
            Self::Tcp(s) => s.close().await.map_err(LinkError::from),
            Self::Ws(s) => s.close().await.map_err(LinkError::from),
        };
    }
}

impl LinkRx {
    /// The next frame; `None` when the peer closed the link.
    pub(crate) async fn recv(&mut self, max_frame: usize) -> Option<Result<Frame, LinkError>> {
        match self {
            Self::Tcp(s) => s.next().await.map(|r| r.map_err(LinkError::from)),
            Self::Ws(s) => loop {
                match s.next().await? {
                    Ok(Message::Binary(b)) => {
                        return Some(Frame::decode_message(b, max_frame).map_err(LinkError::from));
                    }
                    // tungstenite answers pings itself.
                    Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                    Ok(Message::Close(_)) => return None,
                    Ok(Message::Text(_)) => return Some(Err(LinkError::WsMessage("text"))),
                    Err(e) => return Some(Err(e.into())),
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_and_a_broken_pipe_are_one_cause_and_a_bad_frame_another() {
        use std::io::{Error, ErrorKind};
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
        ] {
            assert_eq!(
                LinkError::Io(Error::from(kind)).into_cause().name(),
                "link_closed"
            );
            let framed = LinkError::Frame(FrameError::Io(Error::from(kind)));
            assert_eq!(framed.into_cause().name(), "link_closed");
        }
        assert_eq!(
            LinkError::Frame(FrameError::UnknownKind(0x7f))
                .into_cause()
                .name(),
            "protocol"
        );
    }

    #[test]
    fn host_is_taken_from_host_port() {
        assert_eq!(host_of("gw.example.com:7200"), "gw.example.com");
        assert_eq!(host_of("[::1]:7200"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}

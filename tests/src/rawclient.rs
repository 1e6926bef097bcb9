//! A raw-socket client for gateway tests: speaks contract 3 frame by frame (TCP or
//! WebSocket, optionally over TLS) with no client-lib logic, so each server rule can be
//! checked on the wire, including malformed input. Also starts a gateway in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use switchyard_gateway_agent::gateway::{self, Gateway, Hub, Listeners};
use switchyard_proto::v1;
use switchyard_proto::wire::{DEFAULT_MAX_FRAME, Frame, FrameCodec};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::codec::Framed;

/// Which listener to talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Length-prefixed frames.
    Tcp,
    /// One binary WebSocket message per frame.
    Ws,
}

/// Both, for tests that check a rule on each.
pub const BOTH: [Proto; 2] = [Proto::Tcp, Proto::Ws];

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

enum Conn {
    Tcp(Framed<BoxIo, FrameCodec>),
    Ws(Box<WebSocketStream<BoxIo>>),
}

/// What the server did next.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A frame.
    Frame(Frame),
    /// A WebSocket pong control frame.
    WsPong(Bytes),
    /// The server closed (EOF, reset, or WebSocket close).
    Closed,
}

/// One raw connection.
pub struct RawClient {
    conn: Conn,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawClient")
    }
}

impl RawClient {
    /// Connects (and upgrades, for WebSocket) in plain text.
    pub async fn connect(proto: Proto, addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect to gateway");
        Self::over(proto, addr, Box::new(tcp)).await
    }

    /// Connects over TLS, trusting `roots`, presenting `server_name`.
    pub async fn connect_tls(
        proto: Proto,
        addr: SocketAddr,
        roots: rustls::RootCertStore,
        server_name: &str,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.expect("connect to gateway");
        let name = rustls_pki_types::ServerName::try_from(server_name.to_owned()).expect("name");
        let tls = connector.connect(name, tcp).await.expect("tls handshake");
        Self::over(proto, addr, Box::new(tls)).await
    }

    async fn over(proto: Proto, addr: SocketAddr, io: BoxIo) -> Self {
        let conn = match proto {
            Proto::Tcp => Conn::Tcp(Framed::new(io, FrameCodec::new(16 * DEFAULT_MAX_FRAME))),
            Proto::Ws => {
                let url = format!("ws://{addr}/ws");
                let (ws, _) = tokio_tungstenite::client_async(url, io)
                    .await
                    .expect("websocket upgrade");
                Conn::Ws(Box::new(ws))
            }
        };
        Self { conn }
    }

    /// Sends a well-formed frame.
    pub async fn send(&mut self, frame: &Frame) {
        match &mut self.conn {
            Conn::Tcp(f) => f.send(frame).await.expect("send frame"),
            Conn::Ws(ws) => ws
                .send(Message::Binary(frame.to_message()))
                .await
                .expect("send ws message"),
        }
    }

    /// Sends bytes as they are: on TCP straight onto the stream, on WebSocket as one
    /// binary message. Errors are ignored (the server may already have closed).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.conn {
            Conn::Tcp(f) => {
                let _ = f.get_mut().write_all(bytes).await;
                let _ = f.get_mut().flush().await;
            }
            Conn::Ws(ws) => {
                let _ = ws
                    .send(Message::Binary(Bytes::copy_from_slice(bytes)))
                    .await;
            }
        }
    }

    /// A text WebSocket message (not allowed by the protocol).
    pub async fn send_ws_text(&mut self, text: &str) {
        if let Conn::Ws(ws) = &mut self.conn {
            let _ = ws.send(Message::Text(text.into())).await;
        }
    }

    /// A WebSocket ping control frame.
    pub async fn ws_ping(&mut self, payload: &'static [u8]) {
        if let Conn::Ws(ws) = &mut self.conn {
            ws.send(Message::Ping(Bytes::from_static(payload)))
                .await
                .expect("send ws ping");
        }
    }

    /// The next event, or `None` if nothing came within `limit`.
    pub async fn try_next(&mut self, limit: Duration) -> Option<Event> {
        let next = async {
            match &mut self.conn {
                Conn::Tcp(f) => match f.next().await {
                    Some(Ok(frame)) => Event::Frame(frame),
                    Some(Err(_)) | None => Event::Closed,
                },
                Conn::Ws(ws) => loop {
                    match ws.next().await {
                        Some(Ok(Message::Binary(b))) => {
                            break Event::Frame(
                                Frame::decode_message(b, 16 * DEFAULT_MAX_FRAME)
                                    .expect("server sent a valid frame"),
                            );
                        }
                        Some(Ok(Message::Pong(p))) => break Event::WsPong(p),
                        Some(Ok(Message::Ping(_) | Message::Frame(_))) => continue,
                        Some(Ok(Message::Text(t))) => panic!("server sent text {t:?}"),
                        Some(Ok(Message::Close(_)) | Err(_)) | None => break Event::Closed,
                    }
                },
            }
        };
        tokio::time::timeout(limit, next).await.ok()
    }

    /// The next event; panics if nothing came within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Event {
        self.try_next(limit)
            .await
            .unwrap_or_else(|| panic!("nothing from the gateway within {limit:?}"))
    }

    /// The next frame; panics on close or timeout.
    pub async fn frame(&mut self, limit: Duration) -> Frame {
        match self.next(limit).await {
            Event::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Sends HELLO and returns the answer frame.
    pub async fn hello(&mut self, client_id: &str, token: &str) -> Frame {
        self.send(&Frame::Hello(v1::Hello {
            client_id: client_id.into(),
            token: token.into(),
            session_id: String::new(),
            client_version: "rawclient".into(),
        }))
        .await;
        self.frame(Duration::from_secs(5)).await
    }

    /// Connects and logs in; panics unless WELCOMEd.
    pub async fn login(proto: Proto, addr: SocketAddr, client_id: &str) -> (Self, v1::Welcome) {
        let mut c = Self::connect(proto, addr).await;
        match c.hello(client_id, "").await {
            Frame::Welcome(w) => (c, w),
            other => panic!("expected WELCOME for {client_id}, got {other:?}"),
        }
    }

    /// Skips frames until the server closes; false if it is still open after `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next(left).await {
                Some(Event::Closed) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    }
}

/// Encodes a frame with its length prefix (for splicing malformed bytes around it).
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    frame.encode(&mut b);
    b.to_vec()
}

/// A gateway running in this process on loopback port 0.
#[derive(Debug)]
pub struct TestGateway {
    /// TCP listener address.
    pub tcp: SocketAddr,
    /// WebSocket listener address.
    pub ws: SocketAddr,
    /// The session registry, for pushes.
    pub hub: Hub,
    /// Fires the shutdown (drain).
    shutdown: Option<oneshot::Sender<()>>,
    /// `run`'s task.
    task: Option<JoinHandle<Result<(), gateway::Error>>>,
}

impl TestGateway {
    /// Starts `gateway` on fresh TCP and WebSocket listeners.
    pub async fn start(gw: Gateway) -> Self {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let ws = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let (tcp_addr, ws_addr) = (tcp.local_addr().unwrap(), ws.local_addr().unwrap());
        let hub = gw.hub();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(
            Listeners {
                tcp: Some(tcp),
                ws: Some(ws),
            },
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            tcp: tcp_addr,
            ws: ws_addr,
            hub,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Starts a gateway with `config` and the echo hook.
    pub async fn with_config(config: gateway::Config) -> Self {
        Self::start(Gateway::new(config).expect("valid config")).await
    }

    /// The address for `proto`.
    pub fn addr(&self, proto: Proto) -> SocketAddr {
        match proto {
            Proto::Tcp => self.tcp,
            Proto::Ws => self.ws,
        }
    }

    /// Starts the drain (like SIGTERM).
    pub fn drain(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `run` to return after [`TestGateway::drain`]; panics after `limit`.
    pub async fn stopped(&mut self, limit: Duration) {
        let task = self.task.take().expect("not awaited yet");
        tokio::time::timeout(limit, task)
            .await
            .expect("gateway stops in time")
            .expect("run task")
            .expect("run ok");
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

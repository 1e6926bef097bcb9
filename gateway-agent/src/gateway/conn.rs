//! One connection's task: TLS and WebSocket handshakes, HELLO, then the session loop.
//!
//! Dead-link detection costs nothing per tick: each session owns one `tokio::time::Sleep`
//! that is reset on every frame from the client. tokio keeps timers in a hierarchical
//! timing wheel, so a reset is O(1) and an expiry touches only the session it belongs to;
//! nothing ever walks the list of connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard_proto::limits::MAX_SESSION_ID;
use switchyard_proto::v1;
use switchyard_proto::wire::Frame;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info};

use super::Shared;
use super::auth::{AuthError, Identity, Refusal, count_refusal, login};
use super::hub::{Admission, Control, SessionHandle};
use super::limits::Permit;
use super::session::{AckTracker, Action, on_client_frame};
use super::transport::{BoxIo, Incoming, RecvError, Transport};

/// How long a closing connection waits for the client to read the last frame and hang up.
const LINGER: Duration = Duration::from_secs(1);

/// Longest a HELLO whose ticket names an unknown key waits for the keys to be fetched
/// again (a rotation that just began), within the HELLO deadline.
const KEY_WAIT: Duration = Duration::from_secs(2);

fn closed(reason: &'static str) {
    metrics::counter!("switchyard_gateway_closed_total", "reason" => reason).increment(1);
}

fn frame_error(reason: &'static str) {
    metrics::counter!("switchyard_gateway_frame_errors_total", "reason" => reason).increment(1);
}

/// How a session ended.
enum Ending {
    /// The terminal frame was sent: close politely so the client reads it.
    Graceful(&'static str),
    /// Drop the socket now.
    Abort(&'static str),
}

/// Serves one accepted socket until it closes. Never panics on client input.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    websocket: bool,
    shared: Arc<Shared>,
    permit: Permit,
) {
    let _ = stream.set_nodelay(true);
    serve_io(Box::new(stream), peer, websocket, shared, permit).await;
}

/// [`serve`] on any byte stream (tests use in-memory pipes).
///
/// An async fn's state is as large as its largest await point, and this one lives as long
/// as the connection: the cold paths (TLS handshake, WebSocket upgrade, REJECT, the lingering
/// close with its discard buffer) are boxed so an idle session does not carry their state
/// for life (see the `session_state_stays_small` test).
pub(crate) async fn serve_io(
    io: BoxIo,
    peer: SocketAddr,
    websocket: bool,
    shared: Arc<Shared>,
    mut permit: Permit,
) {
    let cfg = &shared.config;
    // One deadline from accept to HELLO across every stage, so a peer cannot stretch its
    // pre-login time by spending just under a limit in each (TLS, upgrade, HELLO).
    let deadline = Instant::now() + cfg.hello_timeout;
    let io: BoxIo = match &shared.tls {
        Some(acceptor) => match timeout_at(deadline, Box::pin(acceptor.accept(io))).await {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "tls handshake failed");
                return closed("tls_error");
            }
            Err(_) => return closed("hello_timeout"),
        },
        None => io,
    };
    let mut transport = if websocket {
        match timeout_at(deadline, Box::pin(Transport::websocket(io, cfg.max_frame))).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "websocket upgrade failed");
                return closed("ws_handshake");
            }
            Err(_) => return closed("hello_timeout"),
        }
    } else {
        Transport::tcp(io, cfg.max_frame)
    };

    let hello = loop {
        match timeout_at(deadline, transport.recv()).await {
            Err(_) => {
                debug!(%peer, "no HELLO in time");
                return closed("hello_timeout");
            }
            Ok(Ok(Incoming::Frame(Frame::Hello(h)))) => {
                permit.hello_done();
                break h;
            }
            // The pong answer waits on the client reading it: a client that pings and never
            // reads would park this flush forever, so it runs under the HELLO deadline too.
            Ok(Ok(Incoming::Control)) => {
                if timeout_at(deadline, transport.flush()).await.is_err() {
                    debug!(%peer, "no HELLO in time (pongs unread)");
                    return closed("hello_timeout");
                }
            }
            Ok(Ok(Incoming::Closed)) => return closed("client_closed"),
            Ok(Ok(Incoming::Frame(other))) => {
                debug!(%peer, kind = other.kind().name(), "first frame is not HELLO");
                frame_error("unexpected_kind");
                return closed("frame_error");
            }
            Ok(Err(e)) => return recv_failed(&peer, &e),
        }
    };

    let identity = match Box::pin(authenticate(&shared, &hello, deadline)).await {
        Ok(id) => id,
        Err(e) => {
            info!(%peer, client_id = %hello.client_id, error = %e, "login refused");
            count_refusal(&e);
            let code = e.reject_code();
            return Box::pin(reject(transport, code, e.reason(), 0, &shared)).await;
        }
    };

    // A longer client-chosen id gets a fresh one rather than a refusal.
    let session_id = if !hello.session_id.is_empty() && hello.session_id.len() <= MAX_SESSION_ID {
        hello.session_id.clone()
    } else {
        format!("{:016x}", rand::random::<u64>())
    };
    let key = shared.next_key();
    let (handle, data_rx) = SessionHandle::new(
        hello.client_id.clone(),
        session_id,
        identity.mode,
        key,
        cfg.send_queue,
        cfg.slow_client_timeout,
    );
    match shared.hub.register(&handle) {
        Admission::Accept { .. } => {}
        Admission::Draining => {
            return Box::pin(reject(
                transport,
                v1::RejectCode::Draining,
                "gateway is draining".into(),
                0,
                &shared,
            ))
            .await;
        }
        Admission::Overloaded => {
            return Box::pin(reject(
                transport,
                v1::RejectCode::Overloaded,
                format!("gateway at capacity ({})", cfg.capacity),
                1000,
                &shared,
            ))
            .await;
        }
        Admission::Duplicate => {
            let kick = Frame::Kick(v1::Kick {
                code: v1::KickCode::LoggedInElsewhere as i32,
                reason: "this client_id is already logged in here".into(),
            });
            metrics::counter!("switchyard_gateway_kicks_total", "reason" => "duplicate_login")
                .increment(1);
            if timeout(cfg.slow_client_timeout, transport.send(&kick))
                .await
                .is_ok()
            {
                Box::pin(transport.close(LINGER)).await;
            }
            return closed("duplicate_login");
        }
    }

    let welcome = Frame::Welcome(v1::Welcome {
        gateway_id: cfg.gateway_id.clone(),
        session_id: handle.session_id().to_owned(),
        heartbeat_interval_ms: cfg.heartbeat_interval.as_millis() as u64,
        idle_timeout_ms: cfg.idle_timeout.as_millis() as u64,
    });
    let ending = match timeout(cfg.slow_client_timeout, transport.send(&welcome)).await {
        Ok(Ok(())) => {
            metrics::counter!("switchyard_gateway_sessions_total", "protocol" => transport.name())
                .increment(1);
            debug!(%peer, client_id = %handle.client_id(), session_id = %handle.session_id(), "welcomed");
            shared.app.on_open(&handle);
            let ending = session(&mut transport, &handle, data_rx, &shared).await;
            shared.app.on_close(&handle);
            ending
        }
        Ok(Err(_)) => Ending::Abort("io_error"),
        Err(_) => Ending::Abort("slow_client"),
    };
    shared.hub.unregister(&handle);
    handle.end_control();
    match ending {
        Ending::Graceful(reason) => {
            closed(reason);
            Box::pin(transport.close(LINGER)).await;
        }
        Ending::Abort(reason) => {
            if reason == "slow_client" {
                metrics::counter!("switchyard_gateway_slow_clients_total").increment(1);
            }
            debug!(%peer, client_id = %handle.client_id(), reason, "session closed");
            closed(reason);
        }
    }
}

/// The login check; a ticket signed by a key nobody has fetched yet waits (bounded) for
/// the keys to be fetched again and is checked once more, so the first ticket of a
/// rotated-in key is admitted.
async fn authenticate(
    shared: &Shared,
    hello: &v1::Hello,
    deadline: Instant,
) -> Result<Identity, AuthError> {
    let first = login(&*shared.auth, &*shared.app, hello);
    let unknown_key = matches!(
        &first,
        Err(AuthError::Refused {
            refusal: Refusal::UnknownKey(_),
            ..
        })
    );
    if !unknown_key {
        return first;
    }
    let Some(refreshed) = shared.auth.keys_refreshed() else {
        return first;
    };
    let _ = timeout_at(deadline.min(Instant::now() + KEY_WAIT), refreshed).await;
    login(&*shared.auth, &*shared.app, hello)
}

fn recv_failed(peer: &SocketAddr, e: &RecvError) {
    if e.is_disconnect() {
        closed("client_closed");
    } else {
        info!(%peer, error = %e, "bad frame, closing connection");
        frame_error(e.reason());
        closed("frame_error");
    }
}

async fn reject(
    mut transport: Transport,
    code: v1::RejectCode,
    reason: String,
    retry_after_ms: u64,
    shared: &Shared,
) {
    metrics::counter!("switchyard_gateway_rejects_total", "code" => code.as_str_name())
        .increment(1);
    let frame = Frame::Reject(v1::Reject {
        code: code as i32,
        reason,
        retry_after_ms,
    });
    if timeout(shared.config.slow_client_timeout, transport.send(&frame))
        .await
        .is_ok()
    {
        transport.close(LINGER).await;
    }
    closed("rejected");
}

/// Sends within the slow-client timeout; a socket that takes no bytes that long is slow.
async fn send(transport: &mut Transport, frame: &Frame, limit: Duration) -> Result<(), Ending> {
    match timeout(limit, transport.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ending::Abort("io_error")),
        Err(_) => Err(Ending::Abort("slow_client")),
    }
}

/// The logged-in session: one task, one select loop, no locks on the frame path.
async fn session(
    transport: &mut Transport,
    handle: &SessionHandle,
    mut data_rx: mpsc::Receiver<Bytes>,
    shared: &Shared,
) -> Ending {
    let cfg = &shared.config;
    let limit = cfg.slow_client_timeout;
    let idle = tokio::time::sleep(cfg.idle_timeout);
    tokio::pin!(idle);
    let mut acks = AckTracker::default();
    let mut out_seq: u64 = 0;
    loop {
        // Order matters: control first (kick beats queued data), then the dead-link clock
        // (so a stream of pushes cannot keep a silent client alive), then our queued data
        // (drained before reading more, which is the flow control for echo), then client
        // frames, and an owed ACK last, which batches ACKs over frames already buffered.
        let result = tokio::select! {
            biased;
            c = handle.next_control() => match c {
                Control::Kick(k) => {
                    return match send(transport, &Frame::Kick(k), limit).await {
                        Ok(()) => Ending::Graceful("kicked"),
                        Err(e) => e,
                    };
                }
                Control::GoAway(g) => send(transport, &Frame::GoAway(g), limit).await,
                Control::Close(reason) => return Ending::Abort(reason),
            },
            () = &mut idle, if cfg.heartbeat_check => {
                debug!(client_id = %handle.client_id(), "idle timeout: reaping dead link");
                return Ending::Abort("idle");
            }
            Some(payload) = data_rx.recv() => {
                out_seq += 1;
                send(transport, &Frame::Data { seq: out_seq, payload }, limit).await
            }
            r = transport.recv() => {
                idle.as_mut().reset(Instant::now() + cfg.idle_timeout);
                match r {
                    Ok(Incoming::Frame(f)) => {
                        metrics::counter!("switchyard_gateway_frames_in_total", "kind" => f.kind().name()).increment(1);
                        match on_client_frame(f) {
                            Action::Pong(p) => {
                                if cfg.log_heartbeats {
                                    info!(client_id = %handle.client_id(), "PING");
                                }
                                send(transport, &Frame::Pong(p), limit).await
                            }
                            Action::Nothing => {
                                if cfg.log_heartbeats {
                                    info!(client_id = %handle.client_id(), "PONG");
                                }
                                Ok(())
                            }
                            Action::Data(seq, payload) => match shared.app.on_data(handle, seq, payload) {
                                Ok(()) => {
                                    acks.taken(seq);
                                    Ok(())
                                }
                                Err(e) => {
                                    info!(client_id = %handle.client_id(), error = %e, "application refused data");
                                    return Ending::Abort("app_refused");
                                }
                            },
                            // The gateway does not resend (a new session starts afresh), so
                            // ACKs of our DATA only count as liveness.
                            Action::Acked(_) => Ok(()),
                            Action::Violation(kind) => {
                                info!(client_id = %handle.client_id(), kind = kind.name(), "client sent a server-only frame");
                                frame_error("unexpected_kind");
                                return Ending::Abort("frame_error");
                            }
                        }
                    }
                    Ok(Incoming::Control) => match timeout(limit, transport.flush()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err(Ending::Abort("io_error")),
                        Err(_) => Err(Ending::Abort("slow_client")),
                    },
                    Ok(Incoming::Closed) => return Ending::Abort("client_closed"),
                    Err(e) => {
                        if e.is_disconnect() {
                            return Ending::Abort("client_closed");
                        }
                        info!(client_id = %handle.client_id(), error = %e, "bad frame, closing connection");
                        frame_error(e.reason());
                        return Ending::Abort("frame_error");
                    }
                }
            }
            () = std::future::ready(()), if acks.is_pending() => {
                let n = acks.take_pending().unwrap_or_default();
                send(transport, &Frame::Ack(n), limit).await
            }
        };
        if let Err(ending) = result {
            return ending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::limits::Limits;
    use crate::gateway::{AcceptAny, Config, Echo, Hub};
    use futures::{SinkExt, StreamExt};
    use switchyard_proto::wire::FrameCodec;
    use tokio_util::codec::Framed;

    fn shared(config: Config) -> Arc<Shared> {
        Arc::new(Shared {
            hub: Hub::new(config.kick_policy, config.capacity),
            limits: Arc::new(Limits::new(&config)),
            config,
            app: Arc::new(Echo),
            auth: Arc::new(AcceptAny),
            tls: None,
            next_key: Default::default(),
        })
    }

    /// A session over an in-memory pipe; the client end speaks frames.
    fn pipe(
        shared: &Arc<Shared>,
    ) -> (
        Framed<tokio::io::DuplexStream, FrameCodec>,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let task = tokio::spawn(serve_io(
            Box::new(server),
            peer,
            false,
            shared.clone(),
            shared.limits.admit(peer.ip()).unwrap(),
        ));
        (Framed::new(client, FrameCodec::default()), task)
    }

    fn hello(id: &str) -> Frame {
        Frame::Hello(v1::Hello {
            client_id: id.into(),
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn hello_deadline_is_exact() {
        let mut cfg = Config::new("gw");
        cfg.hello_timeout = Duration::from_secs(10);
        let sh = shared(cfg);
        let (mut c, task) = pipe(&sh);
        let start = Instant::now();
        assert!(c.next().await.is_none(), "closed without a frame");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        task.await.unwrap();
    }

    /// Over WebSocket, a client that sends pings before HELLO and never reads fills the
    /// socket with pong answers; the HELLO deadline must still close it on time.
    #[tokio::test(start_paused = true)]
    async fn hello_deadline_holds_against_pings_never_read() {
        use tokio_tungstenite::tungstenite::Message;
        let mut cfg = Config::new("gw");
        cfg.hello_timeout = Duration::from_secs(10);
        let sh = shared(cfg);
        // A small pipe fills after a few dozen pongs.
        let (client, server) = tokio::io::duplex(4096);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let permit = sh.limits.admit(peer.ip()).unwrap();
        let task = tokio::spawn(serve_io(Box::new(server), peer, true, sh, permit));
        let start = Instant::now();
        let (ws, _) = tokio_tungstenite::client_async("ws://gw/ws", client)
            .await
            .unwrap();
        let (mut tx, _never_read) = ws.split();
        let pinger = tokio::spawn(async move {
            let ping = Bytes::from(vec![0u8; 125]);
            while tx.send(Message::Ping(ping.clone())).await.is_ok() {}
        });
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the connection outlived its HELLO deadline")
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        pinger.abort();
    }

    /// Every connection's task holds this future for its whole life; the cold paths are
    /// boxed so it stays about the size of the session loop (2.5 KB before, 1.6 KB after).
    #[test]
    fn session_state_stays_small() {
        let sh = shared(Config::new("gw"));
        let (_client, server) = tokio::io::duplex(64);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let permit = sh.limits.admit(peer.ip()).unwrap();
        let fut = serve_io(Box::new(server), peer, false, sh, permit);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 2048, "serve_io's state is {size} bytes");
    }

    /// The TCP buffers start small (transport.rs); frames far bigger than that, and a
    /// burst of small frames arriving in one read, must still pass both ways.
    #[tokio::test]
    async fn big_frames_and_bursts_outgrow_the_small_buffers() {
        let sh = shared(Config::new("gw"));
        let (mut c, task) = pipe(&sh);
        c.send(hello("big")).await.unwrap();
        assert!(matches!(c.next().await, Some(Ok(Frame::Welcome(_)))));

        // Near the 64 KiB frame limit, in and (echoed) out.
        let big = Bytes::from(vec![7u8; 60_000]);
        c.send(Frame::Data {
            seq: 1,
            payload: big.clone(),
        })
        .await
        .unwrap();
        let (mut echoed, mut acked) = (false, false);
        while !(echoed && acked) {
            match c.next().await {
                Some(Ok(Frame::Data { payload, .. })) => {
                    assert_eq!(payload, big);
                    echoed = true;
                }
                Some(Ok(Frame::Ack(1))) => acked = true,
                other => panic!("expected the echo and ACK 1, got {other:?}"),
            }
        }

        // 500 PINGs written as one burst (several KiB in one read), answered in order.
        for i in 0..500u32 {
            c.feed(Frame::Ping(Bytes::from(i.to_be_bytes().to_vec())))
                .await
                .unwrap();
        }
        SinkExt::<Frame>::flush(&mut c).await.unwrap();
        for i in 0..500u32 {
            match c.next().await {
                Some(Ok(Frame::Pong(p))) => assert_eq!(p.as_ref(), i.to_be_bytes()),
                other => panic!("expected PONG {i}, got {other:?}"),
            }
        }
        drop(c);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_clock_counts_client_frames_only() {
        let mut cfg = Config::new("gw");
        cfg.heartbeat_interval = Duration::from_secs(30);
        cfg.idle_timeout = Duration::from_secs(75);
        let sh = shared(cfg);
        let (mut c, task) = pipe(&sh);
        c.send(hello("u1")).await.unwrap();
        assert!(matches!(c.next().await, Some(Ok(Frame::Welcome(_)))));
        let start = Instant::now();
        // A ping at 60 s moves the deadline to 135 s; pushes in between do not.
        tokio::time::sleep(Duration::from_secs(60)).await;
        c.send(Frame::Ping(bytes::Bytes::new())).await.unwrap();
        assert!(matches!(c.next().await, Some(Ok(Frame::Pong(_)))));
        for _ in 0..7 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            sh.hub
                .push("u1", bytes::Bytes::from_static(b"news"))
                .unwrap();
            assert!(matches!(c.next().await, Some(Ok(Frame::Data { .. }))));
        }
        assert!(c.next().await.is_none(), "reaped");
        assert_eq!(start.elapsed(), Duration::from_secs(135));
        task.await.unwrap();
        assert_eq!(sh.hub.connections(), 0);
    }
}

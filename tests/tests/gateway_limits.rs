//! Gateway connection limits on real sockets (issue 14 item 3): each limit is crossed, the
//! over-limit socket is closed at once and counted in
//! `switchyard_gateway_refused_connections_total{reason}`, and a session logged in before
//! keeps working (a PING and a DATA round trip).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use switchyard_proto::v1;
use switchyard_proto::wire::{Frame, FrameCodec};
use switchyard_tests::client_kit::{GatewayOpts, GatewayProc};
use switchyard_tests::eventually;
use switchyard_tests::rawclient::{Proto, RawClient};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;

const WAIT: Duration = Duration::from_secs(10);

async fn gateway(id: &str, args: &[&str]) -> GatewayProc {
    let opts = GatewayOpts {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..GatewayOpts::default()
    };
    let gw = GatewayProc::start(id, &opts).await;
    // The start-up probe's socket must be gone before sockets are counted.
    wait_handshaking(&gw, 0.0).await;
    gw
}

fn tcp(gw: &GatewayProc) -> SocketAddr {
    gw.tcp.parse().expect("gateway address")
}

/// A plain TCP socket from `source` (any 127/8 address is loopback on Linux, so a second
/// source address needs no setup).
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::from((source, 0))).expect("bind source");
    s.connect(to).await.expect("connect")
}

const HOME: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// True when the gateway closed the socket within `limit` without sending a byte.
async fn refused(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(n)) => panic!("an over-limit socket got {n} bytes"),
        Err(_) => false,
    }
}

async fn metric(gw: &GatewayProc, name: &str) -> f64 {
    gw.metric(name).await.unwrap_or(0.0)
}

async fn refusals(gw: &GatewayProc, reason: &str) -> f64 {
    let name = format!("switchyard_gateway_refused_connections_total{{reason=\"{reason}\"}}");
    metric(gw, &name).await
}

async fn wait_handshaking(gw: &GatewayProc, n: f64) {
    eventually(WAIT, &format!("{n} sockets before HELLO"), || async {
        (gw.metric("switchyard_gateway_handshaking").await == Some(n)).then_some(())
    })
    .await;
}

async fn wait_refusals(gw: &GatewayProc, reason: &str, n: f64) {
    eventually(WAIT, &format!("{n} refusals for {reason}"), || async {
        (refusals(gw, reason).await == n).then_some(())
    })
    .await;
}

/// A PING and a DATA round trip on a logged-in session.
async fn round_trip(c: &mut RawClient) {
    c.send(&Frame::Ping(Bytes::from_static(b"still here")))
        .await;
    assert_eq!(
        c.frame(WAIT).await,
        Frame::Pong(Bytes::from_static(b"still here"))
    );
    c.send(&Frame::Data {
        seq: 1,
        payload: Bytes::from_static(b"echo me"),
    })
    .await;
    let (mut echoed, mut acked) = (false, false);
    for _ in 0..4 {
        match c.frame(WAIT).await {
            Frame::Data { payload, .. } => {
                assert_eq!(&payload[..], b"echo me");
                echoed = true;
            }
            Frame::Ack(1) => acked = true,
            other => panic!("unexpected {other:?}"),
        }
        if echoed && acked {
            return;
        }
    }
    panic!("no echo and ACK (echoed {echoed}, acked {acked})");
}

#[tokio::test]
async fn max_connections_closes_the_socket_over_it_at_once() {
    let gw = gateway("gw-maxconn", &["--max-connections", "3"]).await;
    let (mut alice, _) = RawClient::login(Proto::Tcp, tcp(&gw), "alice").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from(HOME, tcp(&gw)).await);
    }
    wait_handshaking(&gw, 2.0).await;

    let mut over = connect_from(OTHER, tcp(&gw)).await;
    assert!(refused(&mut over, WAIT).await, "fourth socket closed");
    wait_refusals(&gw, "max_connections", 1.0).await;
    round_trip(&mut alice).await;
    for s in &mut held {
        assert!(
            !refused(s, Duration::from_millis(200)).await,
            "held sockets stay"
        );
    }

    // A slot freed is a slot to use.
    drop(held.pop());
    wait_handshaking(&gw, 1.0).await;
    let (mut bob, _) = RawClient::login(Proto::Tcp, tcp(&gw), "bob").await;
    round_trip(&mut bob).await;
}

#[tokio::test]
async fn max_handshaking_caps_sockets_before_hello_until_the_deadline_frees_them() {
    let gw = gateway(
        "gw-maxhs",
        &["--max-handshaking", "2", "--hello-timeout", "3s"],
    )
    .await;
    let (mut alice, _) = RawClient::login(Proto::Tcp, tcp(&gw), "alice").await;
    // Logged-in sessions do not hold handshake slots.
    wait_handshaking(&gw, 0.0).await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(connect_from(HOME, tcp(&gw)).await);
    }
    wait_handshaking(&gw, 2.0).await;

    let mut over = connect_from(OTHER, tcp(&gw)).await;
    assert!(refused(&mut over, WAIT).await, "third silent socket closed");
    wait_refusals(&gw, "max_handshaking", 1.0).await;
    round_trip(&mut alice).await;

    // The HELLO deadline closes the silent ones, and their slots serve new logins.
    for s in &mut silent {
        assert!(
            refused(s, WAIT).await,
            "silent socket closed at the deadline"
        );
    }
    wait_handshaking(&gw, 0.0).await;
    let (mut bob, _) = RawClient::login(Proto::Tcp, tcp(&gw), "bob").await;
    round_trip(&mut bob).await;
    round_trip(&mut alice).await;
}

/// The HELLO timeout is one deadline from accept: a WebSocket client that spends most of
/// it before its upgrade and most of it again before HELLO is closed, though each stage
/// alone is within the timeout.
#[tokio::test]
async fn one_deadline_covers_accept_upgrade_and_hello() {
    let gw = gateway("gw-deadline", &["--hello-timeout", "2s"]).await;
    let (mut alice, _) = RawClient::login(Proto::Tcp, tcp(&gw), "alice").await;
    let ws_addr: SocketAddr = gw
        .ws
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let before = metric(
        &gw,
        "switchyard_gateway_closed_total{reason=\"hello_timeout\"}",
    )
    .await;
    let stream = TcpStream::connect(ws_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // On a slow machine the upgrade itself may already be past the deadline: closed either way.
    if let Ok((mut ws, _)) = tokio_tungstenite::client_async(&gw.ws, stream).await {
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let hello = Frame::Hello(v1::Hello {
            client_id: "late".into(),
            ..Default::default()
        });
        let _ = ws
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                hello.to_message(),
            ))
            .await;
        let next = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut ws))
            .await
            .expect("the gateway answers or closes");
        assert!(
            !matches!(
                next,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(_)))
            ),
            "no WELCOME after the deadline: {next:?}"
        );
    }
    eventually(WAIT, "hello_timeout counted", || async {
        (metric(
            &gw,
            "switchyard_gateway_closed_total{reason=\"hello_timeout\"}",
        )
        .await
            > before)
            .then_some(())
    })
    .await;
    round_trip(&mut alice).await;
}

#[tokio::test]
async fn per_address_connection_cap_leaves_other_addresses_alone() {
    let gw = gateway("gw-perip", &["--max-connections-per-ip", "2"]).await;
    let (mut alice, _) = RawClient::login(Proto::Tcp, tcp(&gw), "alice").await;
    let _second = connect_from(HOME, tcp(&gw)).await;
    wait_handshaking(&gw, 1.0).await;

    let mut over = connect_from(HOME, tcp(&gw)).await;
    assert!(
        refused(&mut over, WAIT).await,
        "third socket from one address closed"
    );
    wait_refusals(&gw, "max_connections_per_ip", 1.0).await;

    // Another address logs in while the first is full.
    let other = connect_from(OTHER, tcp(&gw)).await;
    let mut carol = Framed::new(other, FrameCodec::default());
    carol
        .send(Frame::Hello(v1::Hello {
            client_id: "carol".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut carol))
        .await
        .expect("an answer");
    assert!(matches!(answer, Some(Ok(Frame::Welcome(_)))), "{answer:?}");
    round_trip(&mut alice).await;
}

#[tokio::test]
async fn per_address_accept_rate_refuses_a_connect_burst() {
    // Two tokens a second, and connections are not capped, so only the rate refuses.
    let gw = gateway(
        "gw-rate",
        &[
            "--accept-rate-per-ip",
            "2/s",
            "--max-connections-per-ip",
            "0",
        ],
    )
    .await;
    // Alice logs in from the other address, so the burst below spends only its own tokens.
    let (mut alice, _) = {
        let s = connect_from(OTHER, tcp(&gw)).await;
        let mut f = Framed::new(s, FrameCodec::default());
        f.send(Frame::Hello(v1::Hello {
            client_id: "alice".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
        match tokio::time::timeout(WAIT, futures::StreamExt::next(&mut f)).await {
            Ok(Some(Ok(Frame::Welcome(w)))) => (f, w),
            other => panic!("alice not welcomed: {other:?}"),
        }
    };
    let mut burst = Vec::new();
    for _ in 0..8 {
        burst.push(connect_from(HOME, tcp(&gw)).await);
    }
    let closed =
        futures::future::join_all(burst.iter_mut().map(|s| refused(s, Duration::from_secs(2))))
            .await;
    let n = closed.iter().filter(|c| **c).count();
    // A burst of 2 (the start-up probe spent one), plus a few refills on a slow machine.
    assert!((3..=8).contains(&n), "refused {n} of 8: {closed:?}");
    wait_refusals(&gw, "accept_rate_per_ip", n as f64).await;

    alice
        .send(Frame::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, futures::StreamExt::next(&mut alice)).await {
        Ok(Some(Ok(Frame::Pong(p)))) => assert_eq!(&p[..], b"p"),
        other => panic!("alice's PING: {other:?}"),
    }
    // A RawClient session from the limited address, once its bucket refilled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut bob, _) = RawClient::login(Proto::Tcp, tcp(&gw), "bob").await;
    round_trip(&mut bob).await;
}

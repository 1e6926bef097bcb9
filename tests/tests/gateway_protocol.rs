//! Contract 3 on the wire, over TCP and WebSocket, against an in-process reference gateway
//! driven by a raw-socket client (not client-lib).

use std::time::Duration;

use bytes::Bytes;
use switchyard_gateway_agent::gateway::{Config, HmacAuth, KickPolicy, PushError};
use switchyard_identity::Secret;
use switchyard_proto::v1;
use switchyard_proto::wire::Frame;
use switchyard_tests::rawclient::{BOTH, Event, Proto, RawClient, TestGateway, encode};

const T: Duration = Duration::from_secs(3);

/// Short timers so each rule shows within a second.
fn fast() -> Config {
    let mut c = Config::new("gw-test");
    c.hello_timeout = Duration::from_millis(400);
    c.heartbeat_interval = Duration::from_millis(200);
    c.idle_timeout = Duration::from_millis(500);
    c.slow_client_timeout = Duration::from_millis(300);
    c.drain_window = Duration::from_millis(800);
    c
}

fn data(seq: u64, payload: &'static [u8]) -> Frame {
    Frame::Data {
        seq,
        payload: Bytes::from_static(payload),
    }
}

/// The next two frames, in kind order (the echo and the ACK may come either way round).
async fn two(c: &mut RawClient) -> Vec<Frame> {
    let mut got = vec![c.frame(T).await, c.frame(T).await];
    got.sort_by_key(|f| f.kind() as u8);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_welcome_heartbeat_echo_and_ack() {
    let gw = TestGateway::with_config(fast()).await;
    for proto in BOTH {
        let (mut c, w) = RawClient::login(proto, gw.addr(proto), "u1").await;
        assert_eq!(w.gateway_id, "gw-test");
        assert_eq!(w.heartbeat_interval_ms, 200);
        assert_eq!(w.idle_timeout_ms, 500);
        assert!(!w.session_id.is_empty());

        c.send(&Frame::Ping(Bytes::from_static(b"hb"))).await;
        assert_eq!(c.frame(T).await, Frame::Pong(Bytes::from_static(b"hb")));
        c.send(&Frame::Ping(Bytes::new())).await;
        assert_eq!(c.frame(T).await, Frame::Pong(Bytes::new()));

        // DATA is echoed (numbered by the gateway) and acknowledged after the hook took it.
        c.send(&data(41, b"hello")).await;
        assert_eq!(two(&mut c).await, vec![data(1, b"hello"), Frame::Ack(41)]);
        // seq 0 is echoed but never acknowledged; the next numbered one is.
        c.send(&data(0, b"fire-and-forget")).await;
        assert_eq!(c.frame(T).await, data(2, b"fire-and-forget"));
        c.send(&data(42, b"x")).await;
        assert_eq!(two(&mut c).await, vec![data(3, b"x"), Frame::Ack(42)]);
        // The client acknowledging our DATA is answered by nothing.
        c.send(&Frame::Ack(3)).await;
        assert_eq!(c.try_next(Duration::from_millis(100)).await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_are_answered() {
    let gw = TestGateway::with_config(fast()).await;
    let (mut c, _) = RawClient::login(Proto::Ws, gw.ws, "u1").await;
    c.ws_ping(b"are-you-there").await;
    assert_eq!(
        c.next(T).await,
        Event::WsPong(Bytes::from_static(b"are-you-there"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hello_in_time_or_wrong_first_frame_closes() {
    let gw = TestGateway::with_config(fast()).await;
    for proto in BOTH {
        let start = tokio::time::Instant::now();
        let mut silent = RawClient::connect(proto, gw.addr(proto)).await;
        assert!(
            silent.closed_within(T).await,
            "{proto:?}: silent socket closed"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(350),
            "not before the hello timeout"
        );

        let mut wrong = RawClient::connect(proto, gw.addr(proto)).await;
        wrong.send(&Frame::Ping(Bytes::new())).await;
        assert_eq!(
            wrong.next(T).await,
            Event::Closed,
            "{proto:?}: PING before HELLO"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hello_and_auth_are_rejected() {
    let mut cfg = fast();
    cfg.auth.auth_secret = Some(Secret::new("s3cret"));
    cfg.auth.hmac_legacy = true;
    let gw = TestGateway::with_config(cfg).await;
    let token = HmacAuth::new("s3cret").legacy_token("u1");
    for proto in BOTH {
        let mut c = RawClient::connect(proto, gw.addr(proto)).await;
        match c.hello("", "").await {
            Frame::Reject(r) => assert_eq!(r.code, v1::RejectCode::BadHello as i32),
            other => panic!("{other:?}"),
        }
        assert!(c.closed_within(T).await);

        let mut c = RawClient::connect(proto, gw.addr(proto)).await;
        match c.hello("u1", "00ff").await {
            Frame::Reject(r) => assert_eq!(r.code, v1::RejectCode::Auth as i32),
            other => panic!("{other:?}"),
        }
        assert!(c.closed_within(T).await);

        let mut c = RawClient::connect(proto, gw.addr(proto)).await;
        match c.hello("u2", &token).await {
            Frame::Reject(r) => assert_eq!(r.code, v1::RejectCode::Auth as i32, "token of u1"),
            other => panic!("{other:?}"),
        }

        let mut c = RawClient::connect(proto, gw.addr(proto)).await;
        assert!(matches!(c.hello("u1", &token).await, Frame::Welcome(_)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_reaped_and_pushes_do_not_keep_them_alive() {
    let gw = TestGateway::with_config(fast()).await;
    for proto in BOTH {
        let addr = gw.addr(proto);
        let (mut alive, _) = RawClient::login(proto, addr, "alive").await;
        let (mut dead, _) = RawClient::login(proto, addr, "dead").await;
        // 1.2 s = 2.4 idle timeouts. "alive" pings every ~150 ms; "dead" sends nothing but
        // keeps receiving pushes, which must not count as life.
        let start = tokio::time::Instant::now();
        let mut dead_closed_at = None;
        while start.elapsed() < Duration::from_millis(1200) {
            alive.send(&Frame::Ping(Bytes::new())).await;
            assert_eq!(alive.frame(T).await, Frame::Pong(Bytes::new()));
            let _ = gw.hub.push("dead", Bytes::from_static(b"news"));
            if dead_closed_at.is_none() {
                while let Some(ev) = dead.try_next(Duration::from_millis(150)).await {
                    if ev == Event::Closed {
                        dead_closed_at = Some(start.elapsed());
                        break;
                    }
                }
            } else {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        let at = dead_closed_at.unwrap_or_else(|| panic!("{proto:?}: silent client not reaped"));
        assert!(
            at >= Duration::from_millis(450) && at < Duration::from_millis(1100),
            "{proto:?}: reaped after {at:?}, idle timeout 500ms"
        );
        alive.send(&data(1, b"still here")).await;
        assert_eq!(
            two(&mut alive).await,
            vec![data(1, b"still here"), Frame::Ack(1)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_check_can_be_switched_off() {
    let mut cfg = fast();
    cfg.heartbeat_check = false;
    let gw = TestGateway::with_config(cfg).await;
    let (mut c, _) = RawClient::login(Proto::Tcp, gw.tcp, "u1").await;
    assert_eq!(
        c.try_next(Duration::from_millis(1200)).await,
        None,
        "still open after 2.4 idle timeouts"
    );
    assert_eq!(gw.hub.connections(), 1);
}

/// A proven identity replaces its old session (an anonymous one does not: see
/// gateway_identity.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_login_kicks_the_first() {
    let mut cfg = fast();
    cfg.auth.auth_secret = Some(Secret::new("s3cret"));
    let gw = TestGateway::with_config(cfg).await;
    let token = HmacAuth::new("s3cret")
        .token("default", "same", switchyard_identity::unix_now() + 600)
        .unwrap();
    let login = |proto, addr| {
        let token = token.clone();
        async move {
            let mut c = RawClient::connect(proto, addr).await;
            assert!(matches!(c.hello("same", &token).await, Frame::Welcome(_)));
            c
        }
    };
    for proto in BOTH {
        let addr = gw.addr(proto);
        let mut old = login(proto, addr).await;
        let mut new = login(proto, addr).await;
        match old.frame(T).await {
            Frame::Kick(k) => assert_eq!(k.code, v1::KickCode::LoggedInElsewhere as i32),
            other => panic!("{proto:?}: expected KICK, got {other:?}"),
        }
        assert!(old.closed_within(T).await);
        // Pushes now reach the new session only.
        assert_eq!(gw.hub.push("same", Bytes::from_static(b"p")), Ok(1));
        assert_eq!(new.frame(T).await, data(1, b"p"));
        drop(new);
        switchyard_tests::eventually(T, "session gone", || async {
            (gw.hub.connections() == 0).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_new_and_allow_many_policies() {
    let mut cfg = fast();
    cfg.kick_policy = KickPolicy::RejectNew;
    let gw = TestGateway::with_config(cfg).await;
    let (mut first, _) = RawClient::login(Proto::Tcp, gw.tcp, "same").await;
    let mut second = RawClient::connect(Proto::Ws, gw.ws).await;
    match second.hello("same", "").await {
        Frame::Kick(k) => assert_eq!(k.code, v1::KickCode::LoggedInElsewhere as i32),
        other => panic!("expected KICK for the newcomer, got {other:?}"),
    }
    assert!(second.closed_within(T).await);
    first.send(&Frame::Ping(Bytes::new())).await;
    assert_eq!(
        first.frame(T).await,
        Frame::Pong(Bytes::new()),
        "first untouched"
    );

    let mut cfg = fast();
    cfg.kick_policy = KickPolicy::AllowMany;
    let gw = TestGateway::with_config(cfg).await;
    let (mut a, _) = RawClient::login(Proto::Tcp, gw.tcp, "same").await;
    let (mut b, _) = RawClient::login(Proto::Ws, gw.ws, "same").await;
    assert_eq!(gw.hub.push("same", Bytes::from_static(b"both")), Ok(2));
    assert_eq!(a.frame(T).await, data(1, b"both"));
    assert_eq!(b.frame(T).await, data(1, b"both"));
    let (mut c, _) = RawClient::login(Proto::Tcp, gw.tcp, "other").await;
    let report = gw.hub.broadcast(Bytes::from_static(b"all"));
    assert_eq!(report.queued, 3);
    assert_eq!(a.frame(T).await, data(2, b"all"));
    assert_eq!(b.frame(T).await, data(2, b"all"));
    assert_eq!(c.frame(T).await, data(1, b"all"));
    assert!(matches!(
        gw.hub.push("nobody", Bytes::new()),
        Err(PushError::NotConnected(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let mut cfg = fast();
    cfg.max_frame = 1024;
    cfg.heartbeat_check = false;
    let gw = TestGateway::with_config(cfg).await;
    let welcome_from_client = Frame::Welcome(v1::Welcome {
        gateway_id: "fake".into(),
        ..Default::default()
    });
    for proto in BOTH {
        let addr = gw.addr(proto);
        let (mut bystander, _) = RawClient::login(proto, addr, "bystander").await;
        let bad: Vec<(&str, Vec<u8>)> = match proto {
            Proto::Tcp => vec![
                ("oversize", vec![0, 0, 0x10, 0, 0x05]),
                ("unknown kind", vec![0, 0, 0, 1, 0x7f]),
                ("empty", vec![0, 0, 0, 0]),
                ("short ack", vec![0, 0, 0, 3, 0x09, 1, 2]),
                ("long ping", {
                    let mut v = vec![0, 0, 0, 66, 0x03];
                    v.extend([0u8; 65]);
                    v
                }),
                ("server-only kind", encode(&welcome_from_client)),
            ],
            Proto::Ws => vec![
                ("oversize", vec![0x05; 2048]),
                ("unknown kind", vec![0x7f]),
                ("empty", vec![]),
                ("short ack", vec![0x09, 1, 2]),
                ("bad hello payload", vec![0x01, 0xff, 0xff]),
                (
                    "server-only kind",
                    welcome_from_client.to_message().to_vec(),
                ),
            ],
        };
        for (what, bytes) in bad {
            let (mut c, _) = RawClient::login(proto, addr, what).await;
            c.send_raw(&bytes).await;
            assert!(
                c.closed_within(T).await,
                "{proto:?}: {what} closes the connection"
            );
        }
        if proto == Proto::Ws {
            let (mut c, _) = RawClient::login(proto, addr, "texter").await;
            c.send_ws_text("hi").await;
            assert!(c.closed_within(T).await, "a text message closes");
        }
        bystander.send(&data(5, b"unaffected")).await;
        assert_eq!(
            two(&mut bystander).await,
            vec![data(1, b"unaffected"), Frame::Ack(5)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_gets_overloaded() {
    let mut cfg = fast();
    cfg.capacity = 2;
    cfg.heartbeat_check = false;
    let gw = TestGateway::with_config(cfg).await;
    let (_a, welcome_a) = RawClient::login(Proto::Tcp, gw.tcp, "a").await;
    let _b = RawClient::login(Proto::Ws, gw.ws, "b").await;
    for proto in BOTH {
        let mut c = RawClient::connect(proto, gw.addr(proto)).await;
        match c.hello("c", "").await {
            Frame::Reject(r) => {
                assert_eq!(r.code, v1::RejectCode::Overloaded as i32);
                assert!(r.retry_after_ms > 0);
            }
            other => panic!("{proto:?}: expected REJECT, got {other:?}"),
        }
    }
    // Kick-old replacing its own session does not need a free slot (an anonymous client
    // replaces only the session it resumes by session_id).
    let mut a2 = RawClient::connect(Proto::Tcp, gw.tcp).await;
    a2.send(&Frame::Hello(v1::Hello {
        client_id: "a".into(),
        session_id: welcome_a.session_id,
        ..Default::default()
    }))
    .await;
    assert!(matches!(a2.frame(T).await, Frame::Welcome(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_others_are_not_stalled() {
    let mut cfg = fast();
    cfg.send_queue = 4;
    cfg.heartbeat_check = false;
    let gw = TestGateway::with_config(cfg).await;
    let (mut slow, _) = RawClient::login(Proto::Tcp, gw.tcp, "slow").await;
    let (mut other, _) = RawClient::login(Proto::Ws, gw.ws, "other").await;
    let big = Bytes::from(vec![7u8; 60 * 1024]);
    // "slow" never reads. Push until the gateway gives up on it; "other" is served meanwhile.
    let start = tokio::time::Instant::now();
    let mut full = 0;
    let mut gone = false;
    for i in 0..5000u64 {
        match gw.hub.push("slow", big.clone()) {
            Ok(_) => {}
            Err(PushError::QueueFull) => full += 1,
            Err(_) => {
                gone = true;
                break;
            }
        }
        if i % 50 == 0 {
            other.send(&Frame::Ping(Bytes::new())).await;
            assert_eq!(other.frame(T).await, Frame::Pong(Bytes::new()));
        }
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(full > 0, "the bounded queue filled");
    assert!(gone, "the slow client was closed");
    assert!(gw.hub.sessions_of("slow").is_empty());
    assert!(slow.closed_within(Duration::from_secs(10)).await);
    other.send(&Frame::Ping(Bytes::new())).await;
    assert_eq!(other.frame(T).await, Frame::Pong(Bytes::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_spreads_goaway_refuses_new_logins_then_closes_the_rest() {
    let mut cfg = fast();
    // The clients stay silent through the drain; only the drain may close them.
    cfg.heartbeat_check = false;
    let mut gw = TestGateway::with_config(cfg).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let proto = BOTH[i % 2];
        clients.push(
            RawClient::login(proto, gw.addr(proto), &format!("u{i}"))
                .await
                .0,
        );
    }
    let start = tokio::time::Instant::now();
    gw.drain();
    // Read every client at once so each GOAWAY is timed when it arrives.
    let mut seen = futures::future::join_all(clients.iter_mut().map(|c| async move {
        match c.frame(T).await {
            Frame::GoAway(g) => {
                assert_eq!(g.reconnect_within_ms, 80, "a tenth of the 800 ms window");
                start.elapsed()
            }
            other => panic!("expected GOAWAY, got {other:?}"),
        }
    }))
    .await;
    seen.sort();
    assert!(
        seen[5] - seen[0] >= Duration::from_millis(400),
        "GOAWAYs spread over the window: {seen:?}"
    );
    for proto in BOTH {
        let mut late = RawClient::connect(proto, gw.addr(proto)).await;
        match late.hello("late", "").await {
            Frame::Reject(r) => assert_eq!(r.code, v1::RejectCode::Draining as i32),
            other => panic!("expected REJECT{{DRAINING}}, got {other:?}"),
        }
    }
    // Nobody leaves by itself: the gateway closes them at the end of the window.
    for c in clients.iter_mut() {
        assert!(c.closed_within(T).await);
    }
    assert!(start.elapsed() >= Duration::from_millis(750));
    gw.stopped(Duration::from_secs(5)).await;
}

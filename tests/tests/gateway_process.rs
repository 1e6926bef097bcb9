//! The `switchyard-gateway` binary as a separate process (`--no-register`): flags, env and
//! `--config` merge, frame errors counted by reason on `/metrics`, SIGTERM drain with
//! GOAWAY and exit 0, and a second signal exiting at once.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use switchyard_proto::wire::Frame;
use switchyard_tests::rawclient::{Proto, RawClient};
use switchyard_tests::{Child, Launch, bin_path, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(5);

struct Proc {
    child: Child,
    tcp: SocketAddr,
    ws: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Starts the gateway with a TOML file for some settings, env for one, flags for the rest.
async fn start(extra: &[&str]) -> Proc {
    let addr = |p: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], p)) };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        "id = \"gw-proc\"\nheartbeat_interval = \"200ms\"\nidle_timeout = \"30s\"\nmax_frame = 999999\n",
    )
    .unwrap();
    let command = |[tcp, ws, http]: [u16; 3]| {
        let mut cmd = Command::new(bin_path("switchyard-gateway"));
        cmd.args(["--no-register", "--config"])
            .arg(&file)
            .args(["--listen", &addr(tcp).to_string()])
            .args(["--ws-listen", &addr(ws).to_string()])
            .args(["--http-listen", &addr(http).to_string()])
            // env beats the file
            .env("SWITCHYARD_IDLE_TIMEOUT", "900ms")
            // a flag beats the file
            .args(["--max-frame", "1024"])
            .args(extra);
        cmd
    };
    let launch = Launch {
        name: "switchyard-gateway",
        ready: "gateway listens",
        limit: Duration::from_secs(10),
        echo: true,
    };
    let ready =
        |[tcp, _, _]: [u16; 3]| async move { tokio::net::TcpStream::connect(addr(tcp)).await.ok() };
    let (child, [tcp, ws, http], _) = switchyard_tests::start(&launch, command, ready).await;
    Proc {
        child,
        tcp: addr(tcp),
        ws: addr(ws),
        http: addr(http),
        _dir: dir,
    }
}

async fn metrics(http: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(http)
        .await
        .expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_counted_by_reason_and_sigterm_drains_then_exits_zero() {
    let mut p = start(&["--drain-window", "1s"]).await;
    let (mut keeper, w) = RawClient::login(Proto::Ws, p.ws, "keeper").await;
    assert_eq!(w.gateway_id, "gw-proc", "from the file");
    assert_eq!(w.heartbeat_interval_ms, 200, "from the file");
    assert_eq!(w.idle_timeout_ms, 900, "env beats the file");

    let (mut big, _) = RawClient::login(Proto::Tcp, p.tcp, "big").await;
    big.send_raw(&[0, 0, 0x08, 0, 0x05]).await; // 2048 > --max-frame 1024 (flag beats file)
    assert!(big.closed_within(T).await);
    let (mut odd, _) = RawClient::login(Proto::Tcp, p.tcp, "odd").await;
    odd.send_raw(&[0, 0, 0, 1, 0x42]).await;
    assert!(odd.closed_within(T).await);

    let text = eventually(T, "frame errors on /metrics", || async {
        let m = metrics(p.http).await;
        (m.contains(r#"switchyard_gateway_frame_errors_total{reason="too_large"} 1"#)
            && m.contains(r#"switchyard_gateway_frame_errors_total{reason="unknown_kind"} 1"#))
        .then_some(m)
    })
    .await;
    assert!(text.contains("switchyard_gateway_connections 1"), "{text}");

    keeper.send(&Frame::Ping(Bytes::new())).await;
    assert_eq!(keeper.frame(T).await, Frame::Pong(Bytes::new()));

    p.child.signal("TERM");
    match keeper.frame(T).await {
        Frame::GoAway(g) => assert_eq!(g.reconnect_within_ms, 100),
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    assert!(
        keeper.closed_within(T).await,
        "closed at the end of the drain"
    );
    assert_eq!(p.child.wait_timeout(T), Some(0), "exit 0 after the drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut p = start(&["--drain-window", "60s"]).await;
    let (_c, _) = RawClient::login(Proto::Tcp, p.tcp, "u1").await;
    p.child.signal("TERM");
    // Still draining: new logins are refused.
    eventually(T, "REJECT{DRAINING}", || async {
        let mut c = RawClient::connect(Proto::Tcp, p.tcp).await;
        matches!(c.hello("late", "").await, Frame::Reject(_)).then_some(())
    })
    .await;
    let start = std::time::Instant::now();
    p.child.signal("INT");
    assert_eq!(p.child.wait_timeout(T), Some(1));
    assert!(start.elapsed() < Duration::from_secs(3));
}

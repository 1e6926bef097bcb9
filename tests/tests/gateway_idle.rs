//! 20 000 concurrent idle connections held in one scenario.
//!
//! RLIMIT_NOFILE on the CI machines is 20 000 per process (hard), and every loopback
//! connection costs one descriptor on each side, so the load is spread: two gateway
//! processes hold 10 000 sessions each, and two copies of this test binary (re-run in
//! "holder" mode) hold the client ends. Each process stays well under its limit.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use switchyard_proto::wire::Frame;
use switchyard_tests::rawclient::{Proto, RawClient};
use switchyard_tests::{Child, Launch, bin_path, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PER_GATEWAY: usize = 10_000;
const HOLD_ADDR: &str = "SWITCHYARD_TEST_HOLD_ADDR";

/// Holder mode: log `PER_GATEWAY` clients in, report, then sit idle until killed (60 s cap).
async fn hold(addr: SocketAddr) {
    let clients: Vec<RawClient> = futures::stream::iter(0..PER_GATEWAY)
        .map(|i| async move {
            let (c, _) = RawClient::login(Proto::Tcp, addr, &format!("idle-{addr}-{i}")).await;
            c
        })
        .buffer_unordered(128)
        .collect()
        .await;
    println!("HELD {}", clients.len());
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(clients);
}

async fn gauge(http: SocketAddr) -> Option<f64> {
    let mut s = tokio::net::TcpStream::connect(http).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("switchyard_gateway_connections "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_idle_connections_are_held() {
    if let Ok(addr) = std::env::var(HOLD_ADDR) {
        return hold(addr.parse().expect("holder address")).await;
    }
    let start = std::time::Instant::now();
    let addr = |p: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], p)) };
    let mut gateways = Vec::new();
    for i in 0..2 {
        let command = |[tcp, http]: [u16; 2]| {
            let mut cmd = Command::new(bin_path("switchyard-gateway"));
            switchyard_tests::one_address_for_all(&mut cmd);
            cmd.args(["--no-register", "--id", &format!("gw-idle-{i}")])
                .args([
                    "--listen",
                    &addr(tcp).to_string(),
                    "--http-listen",
                    &addr(http).to_string(),
                ])
                .args(["--capacity", &(PER_GATEWAY + 10).to_string()])
                // Reaping stays on: idle sessions are timed by the timer wheel, not scanned.
                .args(["--heartbeat-interval", "30s"])
                .env("RUST_LOG", "warn");
            cmd
        };
        let launch = Launch {
            name: "switchyard-gateway",
            ready: "gateway listens",
            limit: Duration::from_secs(10),
            echo: true,
        };
        let ready = |[tcp, _]: [u16; 2]| async move {
            tokio::net::TcpStream::connect(addr(tcp)).await.ok()
        };
        let (child, [tcp, http], _) = switchyard_tests::start(&launch, command, ready).await;
        gateways.push((child, addr(tcp), addr(http)));
    }
    let exe = std::env::current_exe().unwrap();
    let mut holders = Vec::new();
    for (_, tcp, _) in &gateways {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--exact",
            "twenty_thousand_idle_connections_are_held",
            "--test-threads",
            "1",
        ])
        .env(HOLD_ADDR, tcp.to_string());
        holders.push(Child::spawn(cmd, "idle holder"));
    }
    for (_, _, http) in &gateways {
        eventually(
            Duration::from_secs(45),
            "10 000 sessions on each gateway",
            || async { (gauge(*http).await? == PER_GATEWAY as f64).then_some(()) },
        )
        .await;
    }
    let held_at = start.elapsed();

    // Under that load a new session is served at once.
    for (_, tcp, _) in &gateways {
        let probe = std::time::Instant::now();
        let (mut c, _) = RawClient::login(Proto::Tcp, *tcp, "probe").await;
        c.send(&Frame::Ping(Bytes::from_static(b"p"))).await;
        assert_eq!(
            c.frame(Duration::from_secs(2)).await,
            Frame::Pong(Bytes::from_static(b"p"))
        );
        assert!(probe.elapsed() < Duration::from_secs(2));
    }

    // All 20 000 go away when their holders die; the gateways notice every one.
    for mut h in holders {
        h.kill();
    }
    for (_, _, http) in &gateways {
        eventually(Duration::from_secs(20), "sessions released", || async {
            (gauge(*http).await? == 0.0).then_some(())
        })
        .await;
    }
    println!(
        "held 20000 idle sessions after {held_at:?}, released after {:?}",
        start.elapsed()
    );
}

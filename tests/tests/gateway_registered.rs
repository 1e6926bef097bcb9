//! The gateway with its agent embedded, against a real etcd: the record carries the
//! advertised addresses and the live session count (no probe), SIGTERM and an ops drain
//! both make it `draining`, send GOAWAY, revoke the lease and exit 0.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use switchyard_proto::wire::Frame;
use switchyard_registry::{DrainRecord, GatewayId, GatewayState, Prefix, fleet};
use switchyard_tests::agent::record;
use switchyard_tests::rawclient::{Proto, RawClient};
use switchyard_tests::{Child, Etcd, Launch, bin_path, eventually, start, unique_prefix};

const WAIT: Duration = Duration::from_secs(8);

struct Gw {
    child: Child,
    tcp: SocketAddr,
    ws: SocketAddr,
}

/// The gateway command on the given TCP and WebSocket ports.
fn command(etcd: &Etcd, prefix: &Prefix, id: &str, tcp: SocketAddr, ws: SocketAddr) -> Command {
    let mut cmd = Command::new(bin_path("switchyard-gateway"));
    cmd.args([
        "--etcd",
        &etcd.endpoint(),
        "--prefix",
        prefix.as_str(),
        "--id",
        id,
    ])
    .args(["--listen", &tcp.to_string(), "--ws-listen", &ws.to_string()])
    .args(["--region", "r1", "--zone", "z1", "--capacity", "50"])
    .args(["--ttl", "2s", "--report-interval", "100ms"])
    .args(["--drain-window", "1s", "--heartbeat-interval", "10s"]);
    cmd
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts a gateway and waits until it accepts on its TCP port.
async fn start_gw(etcd: &Etcd, prefix: &Prefix, id: &str) -> Gw {
    let launch = Launch {
        name: id,
        ready: "gateway listens",
        limit: Duration::from_secs(10),
        echo: true,
    };
    let (child, [tcp, ws], ()) = start(
        &launch,
        |[tcp, ws]: [u16; 2]| command(etcd, prefix, id, addr(tcp), addr(ws)),
        |[tcp, _]: [u16; 2]| async move {
            tokio::net::TcpStream::connect(addr(tcp))
                .await
                .ok()
                .map(drop)
        },
    )
    .await;
    Gw {
        child,
        tcp: addr(tcp),
        ws: addr(ws),
    }
}

async fn state(
    client: &etcd_client::Client,
    prefix: &Prefix,
    id: &str,
) -> Option<(GatewayState, u64)> {
    let (r, _) = record(client, prefix, id).await?;
    Some((r.state, r.load.connections))
}

async fn gone(client: &etcd_client::Client, prefix: &Prefix, id: &str) -> Option<()> {
    record(client, prefix, id).await.is_none().then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_reports_sessions_and_sigterm_drains_deregisters_exits_0() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let mut gw = start_gw(&etcd, &prefix, "gw-reg").await;
    let (rec, _) = eventually(WAIT, "registered", || record(&client, &prefix, "gw-reg")).await;
    assert_eq!(rec.state, GatewayState::Serving);
    assert_eq!(rec.addrs.tcp.as_deref(), Some(gw.tcp.to_string().as_str()));
    assert_eq!(rec.addrs.ws, Some(format!("ws://{}/ws", gw.ws)));
    assert_eq!(
        (rec.region.as_str(), rec.zone.as_str(), rec.capacity),
        ("r1", "z1", 50)
    );

    let mut clients = Vec::new();
    for i in 0..3 {
        let proto = if i == 0 { Proto::Ws } else { Proto::Tcp };
        let addr = if i == 0 { gw.ws } else { gw.tcp };
        clients.push(RawClient::login(proto, addr, &format!("u{i}")).await.0);
    }
    eventually(WAIT, "3 connections in the record", || async {
        (state(&client, &prefix, "gw-reg").await? == (GatewayState::Serving, 3)).then_some(())
    })
    .await;
    clients.pop();
    eventually(WAIT, "2 connections in the record", || async {
        (state(&client, &prefix, "gw-reg").await?.1 == 2).then_some(())
    })
    .await;

    gw.child.signal("TERM");
    eventually(WAIT, "draining", || async {
        (state(&client, &prefix, "gw-reg").await?.0 == GatewayState::Draining).then_some(())
    })
    .await;
    for c in clients.iter_mut() {
        assert!(matches!(c.frame(WAIT).await, Frame::GoAway(_)));
    }
    eventually(WAIT, "record gone", || gone(&client, &prefix, "gw-reg")).await;
    assert_eq!(gw.child.wait_timeout(WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ops_drain_makes_the_gateway_drain_and_exit() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let mut gw = start_gw(&etcd, &prefix, "gw-ops").await;
    eventually(WAIT, "serving", || async {
        (state(&client, &prefix, "gw-ops").await?.0 == GatewayState::Serving).then_some(())
    })
    .await;
    let (mut c, _) = RawClient::login(Proto::Tcp, gw.tcp, "u1").await;

    let drain = DrainRecord {
        reason: "rack move".into(),
        by: "test".into(),
        at: Some(chrono::Utc::now()),
    };
    fleet::put_drain(&client, &prefix, &GatewayId::new("gw-ops").unwrap(), &drain)
        .await
        .unwrap();
    match c.frame(WAIT).await {
        Frame::GoAway(g) => assert_eq!(g.reconnect_within_ms, 100),
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    let mut late = RawClient::connect(Proto::Tcp, gw.tcp).await;
    assert!(matches!(late.hello("late", "").await, Frame::Reject(_)));
    eventually(WAIT, "record gone", || gone(&client, &prefix, "gw-ops")).await;
    assert_eq!(gw.child.wait_timeout(WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_duplicate_id_is_refused_with_a_clear_error() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let _first = start_gw(&etcd, &prefix, "gw-dup").await;
    eventually(WAIT, "registered", || record(&client, &prefix, "gw-dup")).await;
    // Not started with `start_gw`: it is meant to exit, so it is never "up".
    let [tcp, ws] = switchyard_tests::ports::reserve_n();
    let mut second = Child::spawn(
        command(&etcd, &prefix, "gw-dup", addr(tcp), addr(ws)),
        "gw-dup (second)",
    );
    assert_eq!(second.wait_timeout(WAIT), Some(1), "exits with an error");
    let output = second.output_tail();
    assert!(output.contains("already registered"), "{output}");
}

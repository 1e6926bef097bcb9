//! Router limits (issue 14): one address floods a router process (many connections, many
//! streams, many calls) past its per-address Route rate and its small concurrency limit;
//! the flood is refused at once and counted, while a client on another address keeps
//! routing; a WatchGateways stream over the cap is refused. (Build the binary first when
//! running this file alone: `cargo build -p switchyard-router --bins`.)

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard_proto::v1::WatchGatewaysRequest;
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_tests::router::{http_get, put_record, record, route_req};
use switchyard_tests::{Etcd, Launch, bin_path, init_tracing, start, unique_prefix};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

async fn channel(port: u16, from: [u8; 4]) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .local_address(Some(IpAddr::from(from)))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to the router")
}

/// The value of `switchyard_router_shed_total{reason="…"}` on the side port, 0 if absent.
async fn shed(http: SocketAddr, reason: &str) -> u64 {
    let (code, text) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    let needle = format!("switchyard_router_shed_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_refused_and_counted_while_others_route() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    put_record(&mut kv, &prefix, &record("gw-1", "r", "z", 100_000, 0)).await;

    let command = |[grpc_port, http_port]: [u16; 2]| {
        let mut cmd = Command::new(bin_path("switchyard-router"));
        cmd.args(["--prefix", prefix.as_str()])
            .args(["--listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--route-rate-per-ip", "20", "--route-rate-burst", "20"])
            .args(["--route-concurrency", "4", "--retry-after", "20ms"])
            .args(["--watch-streams", "2"])
            .env("SWITCHYARD_ETCD", etcd.endpoint())
            .env("RUST_LOG", "warn");
        cmd
    };
    let launch = Launch {
        name: "switchyard-router",
        ready: "router /healthz says ok",
        limit: Duration::from_secs(20),
        echo: true,
    };
    let ready = |[_, http_port]: [u16; 2]| async move {
        let http = SocketAddr::from(([127, 0, 0, 1], http_port));
        drop(tokio::net::TcpStream::connect(http).await.ok()?);
        let (code, _) = http_get(http, "/healthz").await;
        (code == 200).then_some(())
    };
    let (mut child, [grpc, http_port], ()) = start(&launch, command, ready).await;
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));

    // The flood: 4 connections from 127.0.0.1, 16 concurrent callers on each (HTTP/2
    // streams), each calling until told to stop (bounded by count and time).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, exhausted, unavailable) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut flood = Vec::new();
    for conn in 0..4 {
        let ch = channel(grpc, [127, 0, 0, 1]).await;
        for caller in 0..16 {
            let mut c = RouterClient::new(ch.clone());
            let (stop, ok, exhausted, unavailable) = (
                stop.clone(),
                ok.clone(),
                exhausted.clone(),
                unavailable.clone(),
            );
            flood.push(tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(60);
                for _ in 0..50_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > until {
                        break;
                    }
                    let id = format!("flood-{conn}-{caller}");
                    match c.route(route_req(&id)).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            assert!(s.metadata().get("retry-after-ms").is_some());
                            exhausted.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(s) if s.code() == Code::Unavailable => {
                            assert!(s.metadata().get("retry-after-ms").is_some());
                            unavailable.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(s) => panic!("flood call: unexpected {s:?}"),
                    };
                }
            }));
        }
    }

    // Meanwhile another address routes: shed calls (UNAVAILABLE, the router is busy for
    // everyone) are retried after the hint; its own rate budget is never spent by the flood.
    let mut other = RouterClient::new(channel(grpc, [127, 0, 0, 2]).await);
    let mut routed = 0;
    for i in 0..10 {
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries <= 500, "call {i} from 127.0.0.2 never got through");
            match other.route(route_req("other-client")).await {
                Ok(r) => {
                    assert_eq!(r.into_inner().gateways[0].id, "gw-1");
                    routed += 1;
                    break;
                }
                Err(s) if s.code() == Code::Unavailable => {
                    let ms: u64 = s
                        .metadata()
                        .get("retry-after-ms")
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Err(s) => panic!("127.0.0.2 was refused: {s:?}"),
            }
        }
        // Under the 20/s of its own address.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(routed, 10);
    let flood_still_running = flood.iter().any(|t| !t.is_finished());
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("flood callers stop")
            .unwrap();
    }
    assert!(
        flood_still_running,
        "the other client routed during the flood"
    );

    // (a) The flood was refused, not queued, and the router counted what it refused.
    let (ok, exhausted, unavailable) = (
        ok.load(Ordering::Relaxed),
        exhausted.load(Ordering::Relaxed),
        unavailable.load(Ordering::Relaxed),
    );
    eprintln!("flood: {ok} ok, {exhausted} rate-limited, {unavailable} shed");
    assert!(exhausted > 0, "the per-address rate refused the flood");
    assert!(shed(http, "route_rate").await >= exhausted);
    assert!(shed(http, "concurrency").await >= unavailable);

    // (c) WatchGateways over the cap (2) is refused; the first two keep streaming.
    let watcher = RouterClient::new(channel(grpc, [127, 0, 0, 3]).await);
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = watcher
            .clone()
            .watch_gateways(WatchGatewaysRequest::default())
            .await
            .expect("a stream under the cap")
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("first update in time");
        assert!(first.unwrap().is_some());
        open.push(stream);
    }
    let refused = watcher
        .clone()
        .watch_gateways(WatchGatewaysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.metadata().get("retry-after-ms").is_some());
    assert_eq!(shed(http, "watch_streams").await, 1);
    drop(open);

    child.terminate(Duration::from_secs(10));
}

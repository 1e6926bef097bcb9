//! The `switchyard-router` binary as its own process: flags, `SWITCHYARD_*` env and a TOML
//! file merged; the side port serves `/healthz`, `/metrics` and the status page; SIGTERM
//! stops it cleanly. (Build it first when running this file alone:
//! `cargo build -p switchyard-router --bins`.)

use std::process::Command;
use std::time::Duration;

use switchyard_proto::v1::RouteRequest;
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_tests::router::{http_get, put_record, record};
use switchyard_tests::{Etcd, Launch, bin_path, init_tracing, start, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_grpc_metrics_and_status() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    put_record(&mut kv, &prefix, &record("gw-proc", "cn", "a", 1000, 10)).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        r#"
prefix = "/overridden-by-the-flag"
valid_for = "12s"
[policy.default]
heartbeat_interval = "20s"
[[policy.overrides]]
network = "cellular"
heartbeat_interval = "45s"
heartbeat_timeout = "120s"
[[locality]]
cidr = "127.0.0.0/8"
region = "cn"
zone = "a"
"#,
    )
    .unwrap();
    let command = |[grpc_port, http_port]: [u16; 2]| {
        let mut cmd = Command::new(bin_path("switchyard-router"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--prefix")
            .arg(prefix.as_str())
            .arg("--listen")
            .arg(format!("127.0.0.1:{grpc_port}"))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .env("SWITCHYARD_ETCD", etcd.endpoint())
            .env("SWITCHYARD_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn");
        cmd
    };
    let launch = Launch {
        name: "switchyard-router",
        ready: "router /healthz says ok",
        limit: Duration::from_secs(15),
        echo: true,
    };
    let ready = |[_, http_port]: [u16; 2]| async move {
        let http = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
        let s = tokio::net::TcpStream::connect(http).await.ok()?;
        drop(s);
        let (code, _) = http_get(http, "/healthz").await;
        (code == 200).then_some(())
    };
    let (mut child, [grpc_port, http_port], ()) = start(&launch, command, ready).await;
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));

    let mut c = RouterClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .unwrap();
    let r = c
        .route(RouteRequest {
            client_id: "proc-client".into(),
            network: "cellular".into(),
            ..RouteRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.gateways[0].id, "gw-proc");
    assert_eq!(r.valid_for_ms, 12_000, "TOML value");
    let policy = r.policy.unwrap();
    assert_eq!(
        policy.heartbeat_interval_ms, 45_000,
        "override for cellular"
    );
    let bad = c.route(RouteRequest::default()).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // Located by the CIDR table: explanations say the gateway is in the zone tier.
    let r = c
        .route(RouteRequest {
            client_id: "proc-client".into(),
            explain: true,
            ..RouteRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.explanation[0].tier, "zone", "{:?}", r.explanation);

    // Server reflection lists every service, so grpcurl needs no .proto.
    use tonic_reflection::pb::v1 as refl;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = refl::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = refl::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            refl::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter(vec![ask]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("unexpected reflection answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "switchyard.v1.Router",
        "switchyard.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }

    let (code, metrics) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    for needle in [
        "switchyard_router_routes_total{code=\"ok\"} 2",
        "switchyard_router_routes_total{code=\"invalid_argument\"} 1",
        "switchyard_router_route_seconds_bucket",
        "switchyard_router_gateways{state=\"serving\"} 1",
        "switchyard_router_snapshot_revision",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    let (code, page) = http_get(http, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("gw-proc") && page.contains("class=\"bar\""));

    assert_eq!(child.terminate(Duration::from_secs(10)), Some(0));
}

//! A router in-process on free ports, gRPC clients for it, and gateway records written
//! straight into etcd as a third-party agent would.

use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::Client;
use serde_json::{Value, json};
use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_proto::v1::{ListGatewaysRequest, RouteRequest, RouteResponse};
use switchyard_registry::Prefix;
use switchyard_router::{Config, Listeners};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Admin token the helper configures.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A router config for tests: the prefix, the admin token, and short etcd intervals.
pub fn test_config(prefix: &Prefix) -> Config {
    Config {
        prefix: prefix.as_str().to_owned(),
        admin_token: Some(ADMIN_TOKEN.into()),
        etcd_progress_interval: Duration::from_millis(300),
        etcd_silence_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// A router running in this process.
#[derive(Debug)]
pub struct TestRouter {
    /// gRPC address.
    pub addr: SocketAddr,
    /// HTTP side-port address.
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), switchyard_router::Error>>,
}

impl TestRouter {
    /// Starts a router on `etcd` (endpoints) with `config`, and waits until it has loaded
    /// the registry.
    pub async fn start(etcd: &[String], config: Config) -> Self {
        let config = config.validate().expect("valid test config");
        let client = switchyard_registry::EtcdConfig::new(etcd)
            .expect("etcd endpoints")
            .connect()
            .await
            .expect("etcd client");
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(switchyard_router::run(
            Listeners {
                grpc,
                http: Some(http),
            },
            config,
            client,
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        let router = Self {
            addr,
            http: http_addr,
            stop: Some(stop),
            task,
        };
        crate::eventually(Duration::from_secs(10), "router loads the registry", || {
            let url = router.url();
            async move {
                use tonic_health::pb::health_check_response::ServingStatus;
                let channel = tonic::transport::Endpoint::from_shared(url)
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                let status = tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .status;
                (status == ServingStatus::Serving as i32).then_some(())
            }
        })
        .await;
        router
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A Router client.
    pub async fn client(&self) -> RouterClient<Channel> {
        RouterClient::connect(self.url())
            .await
            .expect("connect to router")
    }

    /// An Admin client (no token attached; see [`with_token`]).
    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::connect(self.url())
            .await
            .expect("connect to router")
    }

    /// Stops the router and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `req` with `authorization: Bearer <token>`.
pub fn with_token<T>(req: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(req);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    r
}

/// A gateway record as JSON (DESIGN contract 1), started long ago (no slow start).
pub fn record(id: &str, region: &str, zone: &str, capacity: u64, connections: u64) -> Value {
    json!({
        "id": id,
        "addrs": {"tcp": "127.0.0.1:7200", "ws": format!("ws://127.0.0.1:7202/{id}")},
        "region": region, "zone": zone,
        "capacity": capacity, "weight": 100,
        "state": "serving",
        "load": {"connections": connections, "cpu": 0.1},
        "version": "test", "labels": {},
        "started_at": "2020-01-01T00:00:00Z",
        "updated_at": chrono::Utc::now().to_rfc3339(),
    })
}

/// Writes `P/gateways/<id>` with a plain etcd put (no lease), as a foreign agent could.
pub async fn put_record(etcd: &mut Client, prefix: &Prefix, rec: &Value) {
    let id = rec["id"].as_str().expect("record id");
    etcd.put(format!("{}{id}", prefix.gateways()), rec.to_string(), None)
        .await
        .expect("put record");
}

/// Writes any bytes under `P/gateways/<key>`.
pub async fn put_raw(etcd: &mut Client, prefix: &Prefix, key: &str, value: &str) {
    etcd.put(format!("{}{key}", prefix.gateways()), value, None)
        .await
        .expect("put raw");
}

/// A Route request for `client_id` with defaults.
pub fn route_req(client_id: &str) -> RouteRequest {
    RouteRequest {
        client_id: client_id.into(),
        ..RouteRequest::default()
    }
}

/// Ids in a Route answer, best first.
pub fn ids(resp: &RouteResponse) -> Vec<String> {
    resp.gateways.iter().map(|g| g.id.clone()).collect()
}

/// Waits until the router's view holds exactly `want` gateway ids (sorted). Sends the
/// [`ADMIN_TOKEN`] of [`test_config`]: ListGateways needs the ops token when one is set.
pub async fn wait_gateways(c: &RouterClient<Channel>, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    crate::eventually(
        Duration::from_secs(10),
        &format!("router sees gateways {want:?}"),
        || {
            let mut c = c.clone();
            let want = want.clone();
            async move {
                let r = c
                    .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
                    .await
                    .ok()?;
                let mut have: Vec<String> =
                    r.get_ref().gateways.iter().map(|g| g.id.clone()).collect();
                have.sort();
                (have == want).then_some(())
            }
        },
    )
    .await;
}

/// One HTTP/1.0 GET on the side port; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf))
        .await
        .expect("http answer in time")
        .expect("read http");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

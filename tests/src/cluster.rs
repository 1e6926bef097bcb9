//! A local Switchyard cluster of real processes: etcd, routers and reference gateways, each
//! on free loopback ports. Scenario tests, benchmarks and the demo all start theirs here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use switchyard_proto::v1::{self as pb, router_client::RouterClient};
use switchyard_registry::Prefix;

use crate::process::{Child, Launch, bin_path, start};
use crate::{EtcdCluster, eventually, unique_prefix};

/// One gateway to start.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// Registry id.
    pub id: String,
    /// Region registered.
    pub region: String,
    /// Zone registered.
    pub zone: String,
    /// Session limit.
    pub capacity: u64,
    /// Further `switchyard-gateway` flags (e.g. `--heartbeat-interval 1s`).
    pub args: Vec<String>,
}

impl GatewaySpec {
    /// A gateway in `region`/`zone` with capacity 10 000.
    pub fn new(id: &str, region: &str, zone: &str) -> Self {
        Self {
            id: id.into(),
            region: region.into(),
            zone: zone.into(),
            capacity: 10_000,
            args: Vec::new(),
        }
    }

    /// Adds flags.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// A running router process.
#[derive(Debug)]
pub struct RouterProcess {
    /// The process.
    pub child: Child,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP side port (`/metrics`, `/healthz`, status page).
    pub http: SocketAddr,
}

impl RouterProcess {
    /// `http://127.0.0.1:<grpc port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

/// A running reference gateway process.
#[derive(Debug)]
pub struct GatewayProcess {
    /// The process.
    pub child: Child,
    /// What it was started with.
    pub spec: GatewaySpec,
    /// TCP listen (and advertised) address.
    pub tcp: SocketAddr,
    /// WebSocket URL.
    pub ws: String,
    /// HTTP side port (`/metrics`, `/healthz`).
    pub http: SocketAddr,
}

/// etcd + routers + gateways, all separate processes, stopped on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The etcd all of them use (one member unless started with [`Cluster::start_on`]);
    /// every process is given all its members.
    pub etcd: EtcdCluster,
    /// Registry prefix of this cluster.
    pub prefix: Prefix,
    /// Routers, in start order.
    pub routers: Vec<RouterProcess>,
    /// Gateways by id.
    pub gateways: BTreeMap<String, GatewayProcess>,
    /// Where child processes log (`RUST_LOG` for them; default `warn`).
    log_filter: String,
    /// Extra router flags.
    router_args: Vec<String>,
}

impl Cluster {
    /// Starts etcd, `routers` routers and the gateways, and waits until every router
    /// hands out every gateway.
    pub async fn start(routers: usize, gateways: &[GatewaySpec]) -> Self {
        Self::start_with(routers, &[] as &[&str], gateways).await
    }

    /// Like [`Cluster::start`], with extra flags for every router.
    pub async fn start_with<S: AsRef<str>>(
        routers: usize,
        router_args: &[S],
        gateways: &[GatewaySpec],
    ) -> Self {
        Self::start_on(EtcdCluster::start(1).await, routers, router_args, gateways).await
    }

    /// Like [`Cluster::start_with`], on an etcd cluster started by the caller (e.g. three
    /// members, to kill the leader).
    pub async fn start_on<S: AsRef<str>>(
        etcd: EtcdCluster,
        routers: usize,
        router_args: &[S],
        gateways: &[GatewaySpec],
    ) -> Self {
        let mut cluster = Self {
            etcd,
            prefix: unique_prefix(),
            routers: Vec::new(),
            gateways: BTreeMap::new(),
            log_filter: std::env::var("SWITCHYARD_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            router_args: router_args.iter().map(|a| a.as_ref().to_owned()).collect(),
        };
        for _ in 0..routers {
            cluster.add_router().await;
        }
        for spec in gateways {
            cluster.add_gateway(spec.clone()).await;
        }
        let ids: Vec<String> = gateways.iter().map(|g| g.id.clone()).collect();
        cluster.wait_serving(&ids, Duration::from_secs(20)).await;
        cluster
    }

    /// Router gRPC URLs.
    pub fn router_urls(&self) -> Vec<String> {
        self.routers.iter().map(RouterProcess::url).collect()
    }

    /// Starts one more router and waits until it answers.
    pub async fn add_router(&mut self) -> usize {
        let etcd = self.etcd.endpoint();
        self.add_router_via(&etcd).await
    }

    /// Like [`Cluster::add_router`], with the router's `--etcd` set to `etcd` (e.g. a
    /// [`crate::CutProxy`] in front of this cluster's etcd, to cut only the router off).
    pub async fn add_router_via(&mut self, etcd: &str) -> usize {
        let addr = |p: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], p)) };
        let launch = Launch {
            name: "switchyard-router",
            ready: "router answers",
            limit: Duration::from_secs(20),
            echo: true,
        };
        let command = |[grpc, http]: [u16; 2]| {
            let mut cmd = Command::new(bin_path("switchyard-router"));
            cmd.args(["--etcd", etcd, "--prefix", self.prefix.as_str()])
                .args([
                    "--listen",
                    &addr(grpc).to_string(),
                    "--http-listen",
                    &addr(http).to_string(),
                ])
                .args(&self.router_args);
            self.child_env(&mut cmd);
            cmd
        };
        let token = self.admin_token().map(str::to_owned);
        let ready = |[grpc, _]: [u16; 2]| {
            let token = token.clone();
            async move { list_with(&format!("http://{}", addr(grpc)), token.as_deref()).await }
        };
        let (child, [grpc, http], _) = start(&launch, command, ready).await;
        self.routers.push(RouterProcess {
            child,
            grpc: addr(grpc),
            http: addr(http),
        });
        self.routers.len() - 1
    }

    /// Starts a gateway (registered in etcd under this cluster's prefix) and waits until it
    /// accepts connections.
    pub async fn add_gateway(&mut self, spec: GatewaySpec) {
        let addr = |p: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], p)) };
        let name = format!("switchyard-gateway {}", spec.id);
        let launch = Launch {
            name: &name,
            ready: "gateway listens",
            limit: Duration::from_secs(20),
            echo: true,
        };
        let command = |[tcp, ws, http]: [u16; 3]| {
            let mut cmd = Command::new(bin_path("switchyard-gateway"));
            crate::one_address_for_all(&mut cmd);
            cmd.args([
                "--etcd",
                &self.etcd.endpoint(),
                "--prefix",
                self.prefix.as_str(),
            ])
            .args([
                "--id",
                &spec.id,
                "--region",
                &spec.region,
                "--zone",
                &spec.zone,
            ])
            .args(["--capacity", &spec.capacity.to_string()])
            .args([
                "--listen",
                &addr(tcp).to_string(),
                "--ws-listen",
                &addr(ws).to_string(),
            ])
            .args(["--http-listen", &addr(http).to_string()])
            .args(&spec.args);
            self.child_env(&mut cmd);
            cmd
        };
        let ready = |[tcp, _, _]: [u16; 3]| async move {
            tokio::net::TcpStream::connect(addr(tcp)).await.ok()
        };
        let (child, [tcp, ws, http], _) = start(&launch, command, ready).await;
        self.gateways.insert(
            spec.id.clone(),
            GatewayProcess {
                child,
                spec,
                tcp: addr(tcp),
                ws: format!("ws://{}/ws", addr(ws)),
                http: addr(http),
            },
        );
    }

    /// Starts gateway `id` again with the spec it had (as its supervisor would after a
    /// crash) and waits until every router hands it out. Panics when `id` never ran here.
    pub async fn restart_gateway(&mut self, id: &str, limit: Duration) {
        let spec = self
            .gateways
            .remove(id)
            .map(|g| g.spec)
            .unwrap_or_else(|| panic!("gateway {id} is not part of this cluster"));
        self.add_gateway(spec).await;
        self.wait_serving(&[id.to_owned()], limit).await;
    }

    /// Waits until every router lists each of `ids` as serving.
    pub async fn wait_serving(&self, ids: &[String], limit: Duration) {
        for url in self.router_urls() {
            eventually(
                limit,
                &format!("router {url} hands out {ids:?}"),
                || async {
                    let list = list_with(&url, self.admin_token()).await?;
                    ids.iter()
                        .all(|id| {
                            list.gateways
                                .iter()
                                .any(|g| &g.id == id && g.state == "serving")
                        })
                        .then_some(())
                },
            )
            .await;
        }
    }

    /// Waits until no router lists `id` at all (lease revoked or expired).
    pub async fn wait_gone(&self, id: &str, limit: Duration) {
        for url in self.router_urls() {
            eventually(limit, &format!("router {url} forgets {id}"), || async {
                let list = list_with(&url, self.admin_token()).await?;
                (!list.gateways.iter().any(|g| g.id == id)).then_some(())
            })
            .await;
        }
    }

    /// The gateway `id`.
    pub fn gateway(&mut self, id: &str) -> &mut GatewayProcess {
        self.gateways
            .get_mut(id)
            .unwrap_or_else(|| panic!("no gateway {id}"))
    }

    /// The `--admin-token` the routers were started with, if any: ListGateways and
    /// WatchGateways need it then.
    pub fn admin_token(&self) -> Option<&str> {
        let args = &self.router_args;
        args.iter()
            .enumerate()
            .find_map(|(i, a)| match a.strip_prefix("--admin-token") {
                Some("") => args.get(i + 1).map(String::as_str),
                Some(rest) => rest.strip_prefix('='),
                None => None,
            })
    }

    /// Runs `switchyardctl --router <first router> <args>` and returns its output.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin_path("switchyardctl"))
            .args(["--router", &self.router_urls()[0]])
            .args(args)
            .output()
            .expect("run switchyardctl")
    }

    fn child_env(&self, cmd: &mut Command) {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SWITCHYARD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", &self.log_filter);
    }
}

/// `ListGateways` from one router, or `None` when it does not answer (an open loopback
/// router: no ops token configured).
pub async fn list(router_url: &str) -> Option<pb::ListGatewaysResponse> {
    list_with(router_url, None).await
}

/// `ListGateways` from one router with the ops token, when given.
pub async fn list_with(
    router_url: &str,
    admin_token: Option<&str>,
) -> Option<pb::ListGatewaysResponse> {
    let mut c = RouterClient::connect(router_url.to_owned()).await.ok()?;
    let req = match admin_token {
        Some(t) => crate::router::with_token(pb::ListGatewaysRequest {}, t),
        None => tonic::Request::new(pb::ListGatewaysRequest {}),
    };
    Some(c.list_gateways(req).await.ok()?.into_inner())
}

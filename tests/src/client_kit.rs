//! Client scenario helpers: a standalone reference gateway process (`--no-register`, for
//! scenarios that need no registry), a client preset with test-sized timings, and waits on
//! a client's state and event history. Scenarios with routers use [`crate::Cluster`].

use std::process::Command;
use std::time::Duration;

use switchyard_client::{Builder, Client, Event, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{Launch, start};
use crate::{Child, bin_path, eventually};

/// Child output is noise even in a failing test's report, past the last lines a failed
/// start shows; `SWITCHYARD_TEST_CHILD_LOGS=1` copies all of it to the test's output.
fn echo_child_output() -> bool {
    std::env::var_os("SWITCHYARD_TEST_CHILD_LOGS").is_some()
}

/// Settings for one reference gateway process.
#[derive(Debug, Clone, Default)]
pub struct GatewayOpts {
    /// `--drain-window` (GOAWAYs spread over it on SIGTERM).
    pub drain_window: Option<Duration>,
    /// `--auth-secret` (HMAC tokens required).
    pub auth_secret: Option<String>,
    /// `--tls-cert` and `--tls-key` PEM files (TLS on both listeners).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// More flags, as given (auth modes and their keys, for the identity scenarios).
    pub args: Vec<String>,
}

/// A running `switchyard-gateway`.
#[derive(Debug)]
pub struct GatewayProc {
    /// Gateway id.
    pub id: String,
    /// TCP address.
    pub tcp: String,
    /// WebSocket URL.
    pub ws: String,
    /// `/metrics` and `/healthz` address.
    pub http: String,
    /// The process (killed on drop).
    pub child: Child,
    /// Its `switchyard-agent` sidecar, once registered.
    pub agent: Option<Child>,
}

impl GatewayProc {
    /// Starts an unregistered gateway on free loopback ports; waits until it serves
    /// `/healthz` and accepts on its TCP port (it binds the `/healthz` port first).
    pub async fn start(id: &str, opts: &GatewayOpts) -> Self {
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let name = format!("gateway {id}");
        let launch = Launch {
            name: &name,
            ready: "gateway /healthz",
            limit: Duration::from_secs(10),
            echo: echo_child_output(),
        };
        let command = |[tcp, ws, http]: [u16; 3]| {
            let mut cmd = Command::new(bin_path("switchyard-gateway"));
            crate::one_address_for_all(&mut cmd);
            cmd.args(["--id", id, "--listen", &addr(tcp), "--ws-listen", &addr(ws)])
                .args([
                    "--http-listen",
                    &addr(http),
                    "--region",
                    "r1",
                    "--zone",
                    "z1",
                ])
                .args(["--capacity", "1000"]);
            if let Some(d) = opts.drain_window {
                cmd.arg("--drain-window")
                    .arg(format!("{}ms", d.as_millis()));
            }
            if let Some(s) = &opts.auth_secret {
                cmd.args(["--auth-secret", s]);
            }
            if let Some((cert, key)) = &opts.tls {
                cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            }
            cmd.args(&opts.args);
            cmd.arg("--no-register");
            cmd
        };
        let ready = |[tcp, _, http]: [u16; 3]| async move {
            http_get(&addr(http), "/healthz")
                .await
                .filter(|b| b.contains("ok"))?;
            tokio::net::TcpStream::connect(addr(tcp)).await.ok()
        };
        let (child, [tcp, ws, http], _) = start(&launch, command, ready).await;
        Self {
            id: id.to_owned(),
            tcp: addr(tcp),
            ws: format!("ws://{}/ws", addr(ws)),
            http: addr(http),
            child,
            agent: None,
        }
    }

    /// Registers the gateway in etcd through a `switchyard-agent` sidecar (a supported
    /// deployment for any gateway; it also works before the reference gateway embeds its
    /// agent). The agent does not probe, so a killed gateway stays registered and
    /// "serving" until the client reports it: exactly what `exclude` is for.
    pub fn register(&mut self, etcd: &str, prefix: &str) {
        let mut cmd = Command::new(bin_path("switchyard-agent"));
        cmd.args(["--etcd", etcd, "--prefix", prefix, "--id", &self.id])
            .args(["--tcp-addr", &self.tcp, "--ws-addr", &self.ws])
            .args(["--region", "r1", "--zone", "z1", "--capacity", "1000"])
            .args(["--ttl", "5s"]);
        let name = format!("agent {}", self.id);
        self.agent = Some(if echo_child_output() {
            Child::spawn(cmd, &name)
        } else {
            Child::spawn_quiet(cmd, &name)
        });
    }

    /// The bootstrap entry for this gateway (TCP).
    pub fn gateway(&self) -> Gateway {
        Gateway::new(&self.id, &self.tcp)
    }

    /// Sum of a metric's samples whose line starts with `name` (labels included in the
    /// match when given, e.g. `switchyard_gateway_frames_in_total{kind="data"}`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(&self.http, "/metrics").await?;
        let mut found = None;
        for line in body.lines().filter(|l| l.starts_with(name)) {
            if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }
}

/// Minimal HTTP/1.0 GET on loopback; `None` on any failure.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_owned())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

/// Client settings sized for tests: fast heartbeats, short waits, small backoff.
pub fn fast_client(client_id: &str) -> Builder {
    Client::builder()
        .client_id(client_id)
        .heartbeat_interval(Duration::from_millis(400))
        .heartbeat_timeout(Duration::from_millis(400))
        .backoff(Duration::from_millis(100), Duration::from_millis(400))
        .reconnect_spread(Duration::from_millis(100))
        .racing(Duration::from_millis(100), 3)
        .connect_timeout(Duration::from_secs(1))
        .route_timeout(Duration::from_millis(500))
        .send_timeout(Duration::from_secs(5))
}

/// Waits until `client` is on a gateway other than `not` (any, when `None`); returns it.
pub async fn wait_connected(client: &Client, not: Option<&str>, limit: Duration) -> String {
    eventually(limit, "client connected to another gateway", || async {
        client.gateway().filter(|g| Some(g.as_str()) != not)
    })
    .await
}

/// Waits for an event matching `pred` in the client's history; returns its index.
pub async fn wait_event(
    client: &Client,
    what: &str,
    limit: Duration,
    pred: impl Fn(&Event) -> bool,
) -> usize {
    eventually(limit, what, || async {
        client.history().iter().position(&pred)
    })
    .await
}

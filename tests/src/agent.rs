//! Helpers for the agent scenarios: the `switchyard-agent` sidecar as a child process, its
//! record read straight from etcd, and its `/metrics` scraped over HTTP.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_client::Client;
use switchyard_gateway_agent::agent::{Target, http_get as get};
use switchyard_registry::{GatewayId, GatewayRecord, Prefix};

use crate::process::{Launch, start};
use crate::{Child, bin_path};

/// A running sidecar and where its `/metrics` is served.
#[derive(Debug)]
pub struct AgentProcess {
    /// The process; killed when dropped.
    pub child: Child,
    /// Its `--http-listen` address.
    pub http: SocketAddr,
}

impl AgentProcess {
    /// Starts `switchyard-agent --etcd <etcd> --prefix <prefix> --id <id> --tcp-addr
    /// 127.0.0.1:7200 --capacity 1000 --ttl 2s` plus `extra` (later flags win) and
    /// `--http-listen <free port>`, as [`AgentProcess::start_with`].
    pub async fn start(etcd: &str, prefix: &Prefix, id: &str, extra: &[&str]) -> Self {
        Self::start_with(|| {
            let mut cmd = command(etcd, prefix, id);
            cmd.args(extra);
            cmd
        })
        .await
    }

    /// Starts the sidecar `base` builds with `--http-listen <free port>` added, and waits
    /// until it serves `/healthz` (it binds that port before it contacts etcd, so an
    /// unreachable etcd does not delay this). Its output goes to the test's output.
    pub async fn start_with(mut base: impl FnMut() -> Command) -> Self {
        let launch = Launch {
            name: "switchyard-agent",
            ready: "agent /healthz",
            limit: Duration::from_secs(10),
            echo: true,
        };
        let command = |[http]: [u16; 1]| {
            let mut cmd = base();
            cmd.args(["--http-listen", &format!("127.0.0.1:{http}")]);
            cmd
        };
        let ready = |[http]: [u16; 1]| async move {
            let target = Target::parse(&format!("http://127.0.0.1:{http}/healthz")).ok()?;
            let (status, _) = get(&target).await.ok()?;
            status.is_success().then_some(())
        };
        let (child, [http], ()) = start(&launch, command, ready).await;
        Self {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
        }
    }

    /// The Prometheus text of `/metrics`; `None` while the endpoint is not up.
    pub async fn metrics(&self) -> Option<String> {
        let target = Target::parse(&format!("http://{}/metrics", self.http)).ok()?;
        let (status, body) = get(&target).await.ok()?;
        status
            .is_success()
            .then(|| String::from_utf8_lossy(&body).into_owned())
    }

    /// One metric's value (first matching series, labels included in `series`, e.g.
    /// `switchyard_agent_probes_total{result="fail"}`); `None` when absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.metrics().await?, series)
    }
}

/// The sidecar command with the common flags, without `--http-listen`.
pub fn command(etcd: &str, prefix: &Prefix, id: &str) -> Command {
    let mut cmd = Command::new(bin_path("switchyard-agent"));
    cmd.args(["--etcd", etcd, "--prefix", prefix.as_str(), "--id", id])
        .args([
            "--tcp-addr",
            "127.0.0.1:7200",
            "--capacity",
            "1000",
            "--ttl",
            "2s",
        ])
        .env("RUST_LOG", "info,switchyard_registry=debug")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    cmd
}

/// A metric's value in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// The gateway's record and the lease it is on, read from etcd; `None` when absent.
pub async fn record(client: &Client, prefix: &Prefix, id: &str) -> Option<(GatewayRecord, i64)> {
    let key = prefix.gateway(&GatewayId::new(id).expect("valid id"));
    let resp = client.clone().get(key, None).await.ok()?;
    let kv = resp.kvs().first()?;
    let record = GatewayRecord::from_key_value(id, kv.value()).expect("a valid record");
    Some((record, kv.lease()))
}

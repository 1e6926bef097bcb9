//! Integration harness: a real etcd (one member or a 3-member cluster) on free loopback
//! ports, a TCP proxy that can cut links, child processes that die with the test, and
//! bounded polling.
//!
//! # Layout
//! - [`agent`]: the `switchyard-agent` sidecar as a process, its record and metrics.
//! - [`cluster`]: [`Cluster`], etcd + routers + reference gateways as processes.
//! - [`etcd`]: [`Etcd`] (start, stop, restart on the same ports and data) and [`EtcdCluster`]
//!   (find the leader, kill and restart members).
//! - [`proxy`]: [`CutProxy`], a loopback TCP proxy whose links can be cut and restored.
//! - [`process`]: [`bin_path`], [`Child`] (a process killed on drop, its last lines kept for
//!   the failure message) and [`start`] (on fresh ports, until up, again on new ports when
//!   one was taken).
//! - [`ports`]: loopback ports outside the kernel's ephemeral range, never handed out twice.
//! - [`router`]: a router in-process on free ports, and records written straight into etcd.
//! - [`eventually`]: bounded polling for scenario assertions.
//! - [`rawclient`]: a raw-socket contract-3 client and an in-process gateway, for gateway tests.
//! - [`scripted`]: a scripted gateway peer that holds ACKs, refuses with `retry_after`,
//!   kicks or stays silent on demand, for the client-lib contract tests.
//! - [`client_kit`]: standalone gateway processes, a client preset and event waits for the
//!   client scenarios.
//! - [`keys`]: [`keys::AuthKeys`], the key files of an authenticated cluster (the app's
//!   login service, the routers' ticket key) and app tokens signed with them.
//!
//! etcd comes from `ETCD_BIN` or `etcd` on `PATH`; when neither exists every test fails
//! loudly (it never skips): run `.ci/run` or install Debian's `etcd-server`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod client_kit;
pub mod cluster;
pub mod etcd;
pub mod keys;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod rawclient;
pub mod router;
pub mod scripted;

pub use cluster::{Cluster, GatewaySpec};
pub use etcd::{Etcd, EtcdCluster};
pub use process::{Child, Launch, bin_path, start};
pub use proxy::CutProxy;

use std::time::Duration;

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`. Panics with
/// `what` when time runs out, so a scenario never hangs.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every client of a harness gateway (swarms, benches, the demo) comes from 127.0.0.1,
/// which the per-address limits are not sized for: they are turned off through the
/// environment, so a flag (what `gateway_limits` passes) still wins and a gateway binary
/// without those limits ignores them.
pub fn one_address_for_all(cmd: &mut std::process::Command) {
    cmd.env("SWITCHYARD_MAX_CONNECTIONS_PER_IP", "0")
        .env("SWITCHYARD_ACCEPT_RATE_PER_IP", "0");
}

/// A key prefix no other test uses, e.g. `/t-3f9a1c`.
pub fn unique_prefix() -> switchyard_registry::Prefix {
    let n: u32 = rand::random();
    switchyard_registry::Prefix::new(format!("/t-{n:08x}")).expect("valid prefix")
}

/// Logs to the test's output (captured unless `--nocapture`); `RUST_LOG` filters.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A free loopback port for a child to bind, or to stand for an address nobody listens
/// on: [`ports::reserve`] (outside the ephemeral range, never handed out twice).
pub fn free_port() -> u16 {
    ports::reserve()
}

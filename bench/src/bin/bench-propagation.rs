//! Registry propagation (issue 8.4): etcd and a router as OS processes, `switchyard-agent`
//! sidecars as OS processes, and this process as the agent-style writer and the observers.
//!
//! (a) Agent write → visible in the router: each write is a `LeaseSession::put` of a
//!     `GatewayRecord` with a new `load.connections` (the call the agent makes for every
//!     report), timestamped before the call; the router side is observed on its
//!     `WatchGateways` stream. Same writes, same run: a client polling etcd every
//!     `--poll-interval` (1 s), what a team without a watch does.
//! (b) Ops drain: `Admin.Drain` through the router (admin token) → the gateway is absent
//!     from `Route` answers (polled back to back), over repeated drain/undrain cycles.
//!     Target p99 ≤ 100 ms.
//! (c) Agent SIGKILL (sidecar, lease TTL 2 s) → absent from `Route` answers. Target
//!     ≤ TTL + 1 s. Eureka's documented eviction figures are printed next to it.
//!
//! `--quick`: 100 writes, 30 drain cycles, 3 kills (about 20 s). Full: 1 000 writes,
//! 200 drain cycles, 10 kills (about 2 minutes).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use parking_lot::Mutex;
use rand::Rng;
use switchyard_bench::stats::{latency_summary, quantile};
use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_proto::v1::{DrainRequest, RouteRequest, UndrainRequest, WatchGatewaysRequest};
use switchyard_registry::etcd_client::{Client as Etcd, GetOptions};
use switchyard_registry::{
    Addrs, EtcdConfig, GatewayId, GatewayRecord, GatewayState, LeaseSession, Load, Prefix,
    Registration,
};
use switchyard_tests::{Child, Cluster, free_port};
use tokio::time::Instant;
use tonic::transport::Channel;

/// Propagation from the registry to the router's answers.
#[derive(Debug, Parser)]
#[command(name = "bench-propagation")]
struct Args {
    /// Small, fast run: 100 writes, 30 drain cycles, 3 agent kills.
    #[arg(long)]
    quick: bool,
    /// Record writes for (a) (default 1000, 100 with --quick).
    #[arg(long)]
    writes: Option<usize>,
    /// Mean gap between writes; each gap is uniform in [gap/2, 3·gap/2] so writes do not
    /// line up with the poller.
    #[arg(long, default_value = "60ms", value_parser = humantime::parse_duration)]
    write_gap: Duration,
    /// The etcd-polling alternative reads the prefix this often.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Drain/undrain cycles for (b) (default 200, 30 with --quick).
    #[arg(long)]
    drain_cycles: Option<usize>,
    /// Agent kills for (c) (default 10, 3 with --quick).
    #[arg(long)]
    kills: Option<usize>,
    /// Lease TTL of the sidecar agents (whole seconds, ≥ 2 s).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

/// The router's admin token (Admin.Drain needs it).
const ADMIN_TOKEN: &str = "bench-propagation-admin";

/// Target for (b).
const DRAIN_TARGET: Duration = Duration::from_millis(100);

/// Eureka, documented (shared/notes/lb_anchors.md §4, read from eureka `61acc83`): lease
/// 90 s, real expiry 2 × 90 s = 180 s because of the renew bug, eviction timer every 60 s;
/// worst case for a crashed instance to leave a Ribbon client's list ≈ 5.5 min.
const EUREKA_EXPIRY_S: u64 = 180;
const EUREKA_EVICT_TIMER_S: u64 = 60;
const EUREKA_WORST_S: u64 = 330;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    switchyard_bench::stats::finish("bench-propagation", run(&args)).await;
}

fn q_ms(values: &[Duration], q: f64) -> String {
    quantile(values, q).map_or("-".into(), |d| d.as_millis().to_string())
}

/// A `switchyard-agent` sidecar with the given id and lease TTL, quiet, killed on drop.
fn spawn_agent(cluster: &Cluster, id: &str, ttl: Duration) -> Child {
    let mut cmd = switchyard_tests::agent::command(&cluster.etcd.endpoint(), &cluster.prefix, id);
    cmd.args([
        "--tcp-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--ttl",
        &format!("{}s", ttl.as_secs()),
        "--region",
        "local",
        "--zone",
        "zone-a",
    ])
    .env("RUST_LOG", "warn");
    Child::spawn_quiet(cmd, &format!("switchyard-agent {id}"))
}

/// Ids in a `Route` answer for a fixed client, all eligible gateways (limit 16).
async fn routed(router: &mut RouterClient<Channel>) -> Result<Vec<String>> {
    let resp = router
        .route(RouteRequest {
            client_id: "propagation-probe".into(),
            limit: 16,
            ..RouteRequest::default()
        })
        .await;
    match resp {
        Ok(r) => Ok(r.into_inner().gateways.into_iter().map(|g| g.id).collect()),
        // No gateway at all is also "not handed out".
        Err(s) if s.code() == tonic::Code::Unavailable => Ok(Vec::new()),
        Err(s) => Err(s).context("Route"),
    }
}

/// Polls `Route` back to back until `id`'s presence equals `present`; returns when the
/// answer that showed it arrived, or fails after `limit`.
async fn route_until(
    router: &mut RouterClient<Channel>,
    id: &str,
    present: bool,
    limit: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let ids = routed(router).await?;
        let now = Instant::now();
        if ids.iter().any(|g| g == id) == present {
            return Ok(now);
        }
        if now > deadline {
            bail!(
                "{id} still {} in Route answers after {limit:?}",
                if present { "absent" } else { "present" }
            );
        }
        tokio::task::yield_now().await;
    }
}

/// First time each observer saw `load.connections >= n`, from (value, when) observations
/// in arrival order.
fn first_seen(observations: &[(u64, Instant)], n: u64) -> Option<Instant> {
    observations.iter().find(|(v, _)| *v >= n).map(|(_, t)| *t)
}

async fn run(args: &Args) -> Result<String> {
    let writes = args.writes.unwrap_or(if args.quick { 100 } else { 1000 });
    let cycles = args
        .drain_cycles
        .unwrap_or(if args.quick { 30 } else { 200 });
    let kills = args.kills.unwrap_or(if args.quick { 3 } else { 10 });
    if args.ttl < Duration::from_secs(2) || args.ttl.subsec_nanos() != 0 {
        bail!("--ttl must be whole seconds and at least 2s");
    }

    println!(
        "starting etcd and a router (processes), 2 switchyard-agent sidecars (TTL {:?})",
        args.ttl
    );
    let cluster = Cluster::start_with(1, &["--admin-token", ADMIN_TOKEN], &[]).await;
    let _agents = [
        spawn_agent(&cluster, "agent-1", args.ttl),
        spawn_agent(&cluster, "agent-2", args.ttl),
    ];
    let url = cluster.router_urls()[0].clone();
    let mut router = RouterClient::connect(url.clone()).await?;
    for id in ["agent-1", "agent-2"] {
        route_until(&mut router, id, true, Duration::from_secs(20)).await?;
    }
    let etcd = EtcdConfig::new(&[cluster.etcd.endpoint()])?
        .connect()
        .await?;

    let (a_router, a_poll, a_put) =
        agent_writes(args, &cluster.prefix, &etcd, &url, writes).await?;
    let (drain, undrain) = drains(&url, &mut router, cycles).await?;
    let gone = agent_kills(args, &cluster, &mut router, kills).await?;
    drop(cluster);

    let ttl_ms = args.ttl.as_millis();
    let kill_target = args.ttl + Duration::from_secs(1);
    let drain_met = quantile(&drain, 0.99).is_some_and(|d| d <= DRAIN_TARGET);
    let kill_met = quantile(&gone, 1.0).is_some_and(|d| d <= kill_target);
    println!(
        "(c) alternative, documented not measured: Eureka lease expiry {EUREKA_EXPIRY_S} s (90 s lease, counted twice by the renew bug) + eviction timer every {EUREKA_EVICT_TIMER_S} s; crashed instance out of a Ribbon client's list after ~{EUREKA_WORST_S} s worst case"
    );
    Ok(format!(
        "bench-propagation: writes={writes} write_p50_ms={} write_p99_ms={} write_max_ms={} observed=WatchGateways \
         etcd_put_p50_ms={} poll_interval_ms={} poll_p50_ms={} poll_p99_ms={} poll_max_ms={} \
         drain_cycles={cycles} drain_p50_ms={} drain_p99_ms={} drain_max_ms={} drain_target_ms={} undrain_p50_ms={} undrain_p99_ms={} \
         kills={kills} ttl_ms={ttl_ms} gone_p50_ms={} gone_max_ms={} gone_target_ms={} eureka_worst_s={EUREKA_WORST_S}(documented) \
         target_met={}",
        q_ms(&a_router, 0.5),
        q_ms(&a_router, 0.99),
        q_ms(&a_router, 1.0),
        q_ms(&a_put, 0.5),
        args.poll_interval.as_millis(),
        q_ms(&a_poll, 0.5),
        q_ms(&a_poll, 0.99),
        q_ms(&a_poll, 1.0),
        q_ms(&drain, 0.5),
        q_ms(&drain, 0.99),
        q_ms(&drain, 1.0),
        DRAIN_TARGET.as_millis(),
        q_ms(&undrain, 0.5),
        q_ms(&undrain, 0.99),
        q_ms(&gone, 0.5),
        q_ms(&gone, 1.0),
        kill_target.as_millis(),
        drain_met && kill_met,
    ))
}

/// (a): returns per-write latencies to the router's watch stream, to the etcd poller, and
/// of the put itself.
async fn agent_writes(
    args: &Args,
    prefix: &Prefix,
    etcd: &Etcd,
    router_url: &str,
    writes: usize,
) -> Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
    const ID: &str = "written";
    let mut record = GatewayRecord {
        id: ID.into(),
        addrs: Addrs {
            tcp: Some(format!("127.0.0.1:{}", free_port())),
            ws: None,
        },
        region: "local".into(),
        zone: "zone-a".into(),
        // Large, so the written load never makes it ineligible.
        capacity: 1_000_000,
        weight: 100,
        state: GatewayState::Serving,
        load: Load {
            connections: 0,
            cpu: 0.1,
        },
        version: "bench".into(),
        labels: Default::default(),
        started_at: None,
        updated_at: None,
    };
    let session = LeaseSession::register(
        etcd.clone(),
        Registration {
            key: prefix.gateway(&GatewayId::new(ID)?),
            value: record.to_json(),
            ttl: Duration::from_secs(10),
            takeover: false,
        },
    )
    .await?;

    // Observer 1: the router's WatchGateways stream.
    let watched: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let mut stream = RouterClient::connect(router_url.to_owned())
        .await?
        .watch_gateways(switchyard_tests::router::with_token(
            WatchGatewaysRequest {},
            ADMIN_TOKEN,
        ))
        .await?
        .into_inner();
    let w = watched.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(Some(update)) = stream.message().await {
            let now = Instant::now();
            for g in update.upserted.iter().filter(|g| g.id == ID) {
                w.lock().push((g.connections, now));
            }
        }
    });

    // Observer 2: what a team without a watch does, a prefix read every poll interval.
    let polled: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let p = polled.clone();
    let mut c = etcd.clone();
    let key = prefix.gateways();
    let every = args.poll_interval;
    let poller = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Ok(resp) = c
                .get(key.as_str(), Some(GetOptions::new().with_prefix()))
                .await
            else {
                continue;
            };
            let now = Instant::now();
            for kv in resp.kvs() {
                if let Ok(rec) = GatewayRecord::from_json(kv.value())
                    && rec.id == ID
                {
                    p.lock().push((rec.load.connections, now));
                }
            }
        }
    });

    let mut written = Vec::with_capacity(writes);
    let mut put_took = Vec::with_capacity(writes);
    for n in 1..=writes as u64 {
        let gap = args.write_gap.mul_f64(rand::rng().random_range(0.5..1.5));
        tokio::time::sleep(gap).await;
        record.load.connections = n;
        let value = record.to_json();
        let t0 = Instant::now();
        session.put(value).await?;
        put_took.push(t0.elapsed());
        written.push(t0);
    }
    // Both observers must have seen the last write; the poller needs up to one interval.
    let last = writes as u64;
    let limit = args.poll_interval * 3 + Duration::from_secs(5);
    let deadline = Instant::now() + limit;
    while first_seen(&watched.lock(), last).is_none() || first_seen(&polled.lock(), last).is_none()
    {
        if Instant::now() > deadline {
            watcher.abort();
            poller.abort();
            bail!("the last write was not seen by both observers within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.abort();
    poller.abort();
    let _ = session.revoke().await;

    let latencies = |obs: &[(u64, Instant)]| -> Result<Vec<Duration>> {
        written
            .iter()
            .zip(1u64..)
            .map(|(t0, n)| {
                first_seen(obs, n)
                    .map(|t| t.saturating_duration_since(*t0))
                    .with_context(|| format!("write {n} never observed"))
            })
            .collect()
    };
    let to_router = latencies(&watched.lock())?;
    let to_poller = latencies(&polled.lock())?;
    println!(
        "(a) {writes} agent writes (LeaseSession::put, gap ~{} ms): visible on the router's WatchGateways stream {}; etcd put itself {}",
        args.write_gap.as_millis(),
        latency_summary(&to_router),
        latency_summary(&put_took)
    );
    println!(
        "    alternative, same writes: a client reading the prefix from etcd every {} ms sees them {}",
        args.poll_interval.as_millis(),
        latency_summary(&to_poller)
    );
    Ok((to_router, to_poller, put_took))
}

/// `req` with the admin bearer token.
fn auth<T>(req: T) -> tonic::Request<T> {
    switchyard_tests::router::with_token(req, ADMIN_TOKEN)
}

/// (b): drain/undrain cycles on `agent-1`; returns (drain → absent, undrain → present).
async fn drains(
    url: &str,
    router: &mut RouterClient<Channel>,
    cycles: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    const ID: &str = "agent-1";
    let mut admin = AdminClient::connect(url.to_owned()).await?;
    let mut drained = Vec::with_capacity(cycles);
    let mut undrained = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        route_until(router, ID, true, Duration::from_secs(10)).await?;
        let t0 = Instant::now();
        admin
            .drain(auth(DrainRequest {
                gateway_id: ID.into(),
                reason: "bench-propagation".into(),
                by: "bench".into(),
            }))
            .await
            .context("Admin.Drain")?;
        let gone = route_until(router, ID, false, Duration::from_secs(5)).await?;
        drained.push(gone - t0);
        // The sidecar follows the drain (record says draining); let it, so undrain
        // measures the whole way back: drain key deleted and the record serving again.
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..200))).await;
        let t1 = Instant::now();
        admin
            .undrain(auth(UndrainRequest {
                gateway_id: ID.into(),
            }))
            .await
            .context("Admin.Undrain")?;
        let back = route_until(router, ID, true, Duration::from_secs(10)).await?;
        undrained.push(back - t1);
    }
    println!(
        "(b) {cycles} ops drains (Admin.Drain via the router) -> absent from Route answers (polled back to back): {} (target p99 <= {} ms)",
        latency_summary(&drained),
        DRAIN_TARGET.as_millis()
    );
    println!(
        "    undrain -> handed out again (includes the sidecar rewriting its record as serving): {}",
        latency_summary(&undrained)
    );
    Ok((drained, undrained))
}

/// (c): start a sidecar, wait until it is handed out, SIGKILL it, time until it is not.
async fn agent_kills(
    args: &Args,
    cluster: &Cluster,
    router: &mut RouterClient<Channel>,
    kills: usize,
) -> Result<Vec<Duration>> {
    let mut gone = Vec::with_capacity(kills);
    for k in 0..kills {
        let id = format!("victim-{k}");
        let mut agent = spawn_agent(cluster, &id, args.ttl);
        route_until(router, &id, true, Duration::from_secs(20)).await?;
        // Kill at a random point of the keepalive cycle (every TTL/3).
        let phase = args.ttl.mul_f64(rand::rng().random_range(0.0..1.0));
        tokio::time::sleep(Duration::from_millis(500) + phase).await;
        let t0 = Instant::now();
        agent.kill();
        let out = route_until(router, &id, false, args.ttl + Duration::from_secs(20)).await?;
        gone.push(out - t0);
    }
    println!(
        "(c) {kills} sidecar agents SIGKILLed (lease TTL {} ms) -> absent from Route answers: {} (target <= TTL + 1 s = {} ms)",
        args.ttl.as_millis(),
        latency_summary(&gone),
        (args.ttl + Duration::from_secs(1)).as_millis()
    );
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_value_proves_an_earlier_write_visible() {
        let t = Instant::now();
        let obs = [
            (1, t),
            (4, t + Duration::from_millis(5)),
            (5, t + Duration::from_millis(9)),
        ];
        assert_eq!(first_seen(&obs, 1), Some(t));
        // Writes 2 and 3 were coalesced into the update carrying 4.
        assert_eq!(first_seen(&obs, 3), Some(t + Duration::from_millis(5)));
        assert_eq!(first_seen(&obs, 5), Some(t + Duration::from_millis(9)));
        assert_eq!(first_seen(&obs, 6), None);
    }
}

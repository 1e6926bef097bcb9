//! Failover with real processes (issue 8.3): etcd, 2 routers and 3 reference gateways as OS
//! processes, a swarm of client-lib clients in this process.
//!
//! 1. SIGKILL one gateway: time from the kill until each of its clients is connected to
//!    another gateway, against the client's reconnect spread (the first retry waits a random
//!    0..spread on purpose). Target: p99 ≤ spread + 300 ms.
//! 2. Restart it, then SIGSTOP another gateway: the process is frozen but its kernel still
//!    holds the sockets, so only an app-level heartbeat can tell. Detection time per client
//!    (SIGSTOP → `Disconnected`) and time to be connected elsewhere, against the heartbeat
//!    settings used (interval + timeout).
//! 3. In the same freeze, a second swarm with app heartbeats effectively off (1 h) and a
//!    short kernel TCP keepalive: does keepalive alone ever notice? (The frozen process's
//!    kernel ACKs the probes, so it should not.) Linux default keepalive and the client's
//!    default keepalive are printed as documented figures.
//!
//! `--quick`: 300 + 60 clients, 12 s keepalive window (well under a minute of wall time).
//! Full: 2 000 + 200 clients, 30 s keepalive window (about 1-2 minutes).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use switchyard_bench::stats::{latency_summary, quantile};
use switchyard_bench::swarm::{self, Swarm};
use switchyard_client::Keepalive;
use switchyard_tests::{Cluster, GatewaySpec};
use tokio::time::Instant;

/// Gateway failover and dead-gateway detection with real processes.
#[derive(Debug, Parser)]
#[command(name = "bench-failover")]
struct Args {
    /// Small, fast run: 300 clients, 60 keepalive-only clients, 12 s keepalive window.
    #[arg(long)]
    quick: bool,
    /// Clients with app heartbeats (default 2000, 300 with --quick).
    #[arg(long)]
    clients: Option<usize>,
    /// Clients with heartbeats off and short keepalive (default 200, 60 with --quick).
    #[arg(long)]
    keepalive_clients: Option<usize>,
    /// The client's first reconnect after a lost link waits a random 0..spread.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    spread: Duration,
    /// App heartbeat: PING after this much write-idle time.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// App heartbeat: the link is dead when nothing arrives this long after a PING.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
    /// Keepalive-only clients: kernel keepalive idle time before the first probe.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    keepalive_idle: Duration,
    /// Keepalive-only clients: time between probes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    keepalive_interval: Duration,
    /// Keepalive-only clients: unanswered probes before the kernel drops the link.
    #[arg(long, default_value_t = 3)]
    keepalive_count: u32,
    /// How long to watch the keepalive-only clients of the frozen gateway (default 30 s,
    /// 12 s with --quick; both several times idle + interval × count).
    #[arg(long, value_parser = humantime::parse_duration)]
    keepalive_window: Option<Duration>,
}

/// Slack on top of the configured bounds for scheduling, connect and HELLO on a shared
/// 2-core machine (the figure for the kill target).
const SLACK: Duration = Duration::from_millis(300);

/// Linux defaults (`tcp_keepalive_time` 7200 s, `tcp_keepalive_intvl` 75 s,
/// `tcp_keepalive_probes` 9), from `man 7 tcp`: the earliest a dead peer is noticed by
/// keepalive alone. Documented, not measured.
const LINUX_KEEPALIVE: Duration = Duration::from_secs(7200 + 9 * 75);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    switchyard_bench::stats::finish("bench-failover", run(&args)).await;
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn q_ms(values: &[Duration], q: f64) -> String {
    quantile(values, q).map_or("-".into(), |d| ms(d).to_string())
}

async fn run(args: &Args) -> Result<String> {
    let clients = args.clients.unwrap_or(if args.quick { 300 } else { 2000 });
    let ka_clients = args
        .keepalive_clients
        .unwrap_or(if args.quick { 60 } else { 200 });
    let ka_window = args.keepalive_window.unwrap_or(if args.quick {
        Duration::from_secs(12)
    } else {
        Duration::from_secs(30)
    });
    let ka = Keepalive {
        idle: args.keepalive_idle,
        interval: args.keepalive_interval,
        count: args.keepalive_count,
    };
    let ka_bound = ka.idle + ka.interval * ka.count;
    let hb_bound = args.heartbeat_interval + args.heartbeat_timeout;

    // gw-b is alone in zone-b so the keepalive-only clients (zone-b hint) all land on it;
    // the heartbeat clients give no locality and spread over all three. A 2 s lease TTL
    // lets the killed gateway come back quickly. The idle timeout is long so the gateways
    // never reap the keepalive-only clients and never cap their heartbeat interval.
    let capacity = (clients + ka_clients) as u64;
    let gw = |id: &str, zone: &str| GatewaySpec {
        capacity,
        ..GatewaySpec::new(id, "local", zone).args([
            "--ttl",
            "2s",
            "--heartbeat-interval",
            &format!("{}ms", args.heartbeat_interval.as_millis()),
            "--idle-timeout",
            "2h",
        ])
    };
    println!("starting etcd, 2 routers, gateways gw-a1, gw-a2 (zone-a) and gw-b (zone-b)");
    let mut cluster = Cluster::start(
        2,
        &[
            gw("gw-a1", "zone-a"),
            gw("gw-b", "zone-b"),
            gw("gw-a2", "zone-a"),
        ],
    )
    .await;

    let started = Instant::now();
    let config = swarm::Config {
        routers: cluster.router_urls(),
        clients,
        id_prefix: "hb".into(),
        localities: Vec::new(),
        login_concurrency: 200,
        login_timeout: Duration::from_secs(90),
    };
    let (spread, interval, timeout) =
        (args.spread, args.heartbeat_interval, args.heartbeat_timeout);
    let swarm = Swarm::start(&config, |_, b| {
        b.reconnect_spread(spread)
            .heartbeat_interval(interval)
            .heartbeat_timeout(timeout)
    })
    .await
    .context("logging in the heartbeat swarm")?;
    println!(
        "{clients} clients (heartbeat {}ms + {}ms, spread {}ms) connected in {} ms: {:?}",
        ms(interval),
        ms(timeout),
        ms(spread),
        ms(started.elapsed()),
        swarm.distribution()
    );

    // 1. SIGKILL.
    let victims = swarm.on_gateway("gw-a1");
    if victims.is_empty() {
        bail!("no client on gw-a1 to fail over");
    }
    let killed_at = Instant::now();
    cluster.gateway("gw-a1").child.kill();
    let limit = spread + Duration::from_secs(30);
    let moves = loop {
        let moves = swarm.moves_from("gw-a1", &victims);
        if moves.len() == victims.len() {
            break moves;
        }
        if killed_at.elapsed() > limit {
            bail!(
                "{} of {} clients of gw-a1 not connected elsewhere {limit:?} after SIGKILL",
                victims.len() - moves.len(),
                victims.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let kill_times: Vec<Duration> = moves.iter().map(|m| m.at - killed_at).collect();
    let kill_target = spread + SLACK;
    let kill_p99 = quantile(&kill_times, 0.99).unwrap_or_default();
    let kill_met = kill_p99 <= kill_target;
    println!(
        "SIGKILL gw-a1: {} clients connected elsewhere, {} (target p99 <= spread {} ms + 300 ms = {} ms: {})",
        victims.len(),
        latency_summary(&kill_times),
        ms(spread),
        ms(kill_target),
        if kill_met { "met" } else { "MISSED" }
    );
    println!("  after: {:?}", swarm.distribution());

    // Recovery: the lease (2 s TTL) expires, the supervisor restarts the gateway.
    cluster.wait_gone("gw-a1", Duration::from_secs(20)).await;
    cluster
        .restart_gateway("gw-a1", Duration::from_secs(20))
        .await;
    println!(
        "gw-a1 restarted and serving {} ms after the kill",
        ms(killed_at.elapsed())
    );

    // The keepalive-only swarm: heartbeat effectively off, short kernel keepalive.
    let ka_config = swarm::Config {
        routers: cluster.router_urls(),
        clients: ka_clients,
        id_prefix: "ka".into(),
        localities: vec![("local".into(), "zone-b".into())],
        login_concurrency: 100,
        login_timeout: Duration::from_secs(60),
    };
    let ka_swarm = Swarm::start(&ka_config, |_, b| {
        b.reconnect_spread(spread)
            .heartbeat_interval(Duration::from_secs(3600))
            .keepalive(Some(ka))
    })
    .await
    .context("logging in the keepalive-only swarm")?;
    println!(
        "{ka_clients} keepalive-only clients (heartbeat 3600 s, keepalive idle {} ms, interval {} ms, {} probes) connected: {:?}",
        ms(ka.idle),
        ms(ka.interval),
        ka.count,
        ka_swarm.distribution()
    );

    // 2 and 3. SIGSTOP.
    let hb_victims = swarm.on_gateway("gw-b");
    let ka_victims = ka_swarm.on_gateway("gw-b");
    if hb_victims.is_empty() || ka_victims.is_empty() {
        bail!(
            "gw-b has {} heartbeat and {} keepalive-only clients; need both",
            hb_victims.len(),
            ka_victims.len()
        );
    }
    let stopped_at = Instant::now();
    cluster.gateway("gw-b").child.signal("STOP");
    let limit = hb_bound + spread + Duration::from_secs(30);
    let hb_losses = loop {
        let losses = swarm.losses_since(&hb_victims, stopped_at);
        let done = losses.iter().filter(|l| l.reconnected_at.is_some()).count();
        if done == hb_victims.len() {
            break losses;
        }
        if stopped_at.elapsed() > limit {
            cluster.gateway("gw-b").child.signal("CONT");
            bail!(
                "{} of {} heartbeat clients of the frozen gw-b not connected elsewhere after {limit:?}",
                hb_victims.len() - done,
                hb_victims.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let detect: Vec<Duration> = hb_losses.iter().map(|l| l.lost_at - stopped_at).collect();
    let moved: Vec<Duration> = hb_losses
        .iter()
        .filter_map(|l| l.reconnected_at.map(|t| t - stopped_at))
        .collect();
    let by_heartbeat = hb_losses
        .iter()
        .filter(|l| l.reason.contains("heartbeat"))
        .count();
    let detect_max = quantile(&detect, 1.0).unwrap_or_default();
    let detect_met = detect_max <= hb_bound + SLACK;
    let moved_bound = hb_bound + spread + SLACK;
    let moved_met = quantile(&moved, 0.99).unwrap_or_default() <= moved_bound;
    println!(
        "SIGSTOP gw-b: {} heartbeat clients; detected (SIGSTOP -> Disconnected) {} (bound interval + timeout = {} ms: {}); {} of them by heartbeat timeout",
        hb_victims.len(),
        latency_summary(&detect),
        ms(hb_bound),
        if detect_met { "met" } else { "MISSED" },
        by_heartbeat
    );
    println!(
        "  connected elsewhere {} (bound interval + timeout + spread + 300 ms = {} ms: {})",
        latency_summary(&moved),
        ms(moved_bound),
        if moved_met { "met" } else { "MISSED" }
    );

    // Watch the keepalive-only clients for the rest of the window.
    while stopped_at.elapsed() < ka_window {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ka_losses = ka_swarm.losses_since(&ka_victims, stopped_at);
    let ka_detect: Vec<Duration> = ka_losses.iter().map(|l| l.lost_at - stopped_at).collect();
    println!(
        "  keepalive-only clients of gw-b: {} of {} noticed the freeze within {} s (keepalive alone would need idle + interval x count = {} ms if probes went unanswered){}",
        ka_losses.len(),
        ka_victims.len(),
        ka_window.as_secs(),
        ms(ka_bound),
        if ka_losses.is_empty() {
            String::new()
        } else {
            format!(": {}", latency_summary(&ka_detect))
        }
    );
    println!(
        "  documented, not measured: Linux default keepalive 7200 s + 9 x 75 s = {} s; client-lib default keepalive 60 s + 3 x 10 s = 90 s (both only against a peer whose kernel stops answering)",
        LINUX_KEEPALIVE.as_secs()
    );

    cluster.gateway("gw-b").child.signal("CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ka_still = ka_swarm.on_gateway("gw-b").len();
    println!(
        "SIGCONT gw-b: {ka_still} of {} keepalive-only clients are still on it (their links were never broken)",
        ka_victims.len()
    );
    let ended = swarm.ended().len() + ka_swarm.ended().len();
    swarm.close().await;
    ka_swarm.close().await;
    drop(cluster);

    let target_met = kill_met && detect_met && moved_met;
    Ok(format!(
        "bench-failover: clients={clients} spread_ms={} kill_clients={} kill_p50_ms={} kill_p99_ms={} kill_max_ms={} kill_target_ms={} \
         hb_interval_ms={} hb_timeout_ms={} stop_clients={} detect_p50_ms={} detect_p99_ms={} detect_max_ms={} detect_bound_ms={} \
         moved_p99_ms={} moved_max_ms={} ka_idle_ms={} ka_interval_ms={} ka_count={} ka_clients={} ka_detected={} ka_window_s={} \
         linux_keepalive_s={}(documented) ended={ended} target_met={target_met}",
        ms(spread),
        victims.len(),
        q_ms(&kill_times, 0.5),
        q_ms(&kill_times, 0.99),
        q_ms(&kill_times, 1.0),
        ms(kill_target),
        ms(interval),
        ms(timeout),
        hb_victims.len(),
        q_ms(&detect, 0.5),
        q_ms(&detect, 0.99),
        q_ms(&detect, 1.0),
        ms(hb_bound),
        q_ms(&moved, 0.99),
        q_ms(&moved, 1.0),
        ms(ka.idle),
        ms(ka.interval),
        ka.count,
        ka_victims.len(),
        ka_losses.len(),
        ka_window.as_secs(),
        LINUX_KEEPALIVE.as_secs(),
    ))
}

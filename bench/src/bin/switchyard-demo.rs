//! The local demo: a real Switchyard cluster on this machine, a swarm of clients, a gateway
//! crash and a drain, with the numbers that matter. Run through `deploy/local/demo`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use switchyard_bench::stats::{latency_summary, max_over_mean};
use switchyard_bench::swarm::{self, Swarm};
use switchyard_tests::keys::AuthKeys;
use switchyard_tests::{Cluster, GatewaySpec};
use tokio::time::Instant;

/// Start etcd, 2 routers and 3 gateways in 2 zones, log in a swarm of clients, crash one
/// gateway, drain another, and report failover times and balance.
#[derive(Debug, Parser)]
#[command(name = "switchyard-demo", version)]
struct Args {
    /// Clients in the swarm.
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// A small, fast run (300 clients, short drain window) ending in `demo ok:`.
    #[arg(long)]
    quick: bool,
    /// GOAWAYs of the drained gateway are spread over this window.
    #[arg(long, value_parser = humantime::parse_duration)]
    drain_window: Option<Duration>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let outcome = tokio::select! {
        r = run(&args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C); every process it started is stopped")),
    };
    // Returning (not exiting) here drops the cluster, which stops every child process.
    match outcome {
        Ok(summary) => println!("\ndemo ok: {summary}"),
        Err(e) => {
            println!("\ndemo failed: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The routers' admin token; `switchyardctl --token` must match it for drains.
const ADMIN_TOKEN: &str = "demo-admin-token";

fn step(text: &str) {
    println!("\n▶ {text}");
}

async fn run(args: &Args) -> Result<String> {
    let clients = if args.quick && args.clients == 2000 {
        300
    } else {
        args.clients
    };
    let drain_window = args.drain_window.unwrap_or(if args.quick {
        Duration::from_secs(4)
    } else {
        Duration::from_secs(10)
    });
    let window = format!("{}ms", drain_window.as_millis());

    step("Starting etcd, 2 routers and 3 gateways (zone-a: gw-a1, gw-a2; zone-b: gw-b1)");
    // Authentication on, as in production (docs/security.md): the demo plays the app's
    // login service (an HS256 key in a JWKS file) and gives the routers an Ed25519 ticket
    // key. Clients send their app token to the routers and present the router's ticket at
    // the gateway; gateways also take the app token (clients routing from a cached list
    // while every router is down).
    let keys = AuthKeys::generate().context("making the demo's keys")?;
    // Sized so the swarm is a visible share of each gateway: agents skip load reports that
    // move by less than 2 % of capacity.
    let capacity = (clients as u64).max(100);
    let gw = |id: &str, zone: &str| GatewaySpec {
        capacity,
        ..GatewaySpec::new(id, "local", zone)
            .args(["--drain-window", &window])
            .args(keys.gateway_args())
    };
    let gateways = [
        gw("gw-a1", "zone-a"),
        gw("gw-a2", "zone-a"),
        gw("gw-b1", "zone-b"),
    ];
    let mut router_args = vec!["--admin-token".to_owned(), ADMIN_TOKEN.to_owned()];
    router_args.extend(keys.router_args());
    let mut cluster = Cluster::start_with(2, &router_args, &gateways).await;
    println!(
        "  auth     app tokens (JWKS {}) → login tickets (key {}), ops token for switchyardctl",
        keys.app_jwks().display(),
        keys.ticket_key().display()
    );
    println!("  etcd     {}", cluster.etcd.endpoint());
    for (i, r) in cluster.routers.iter().enumerate() {
        println!(
            "  router{}  grpc {}   status page http://{}/",
            i + 1,
            r.url(),
            r.http
        );
    }
    for (id, g) in &cluster.gateways {
        println!("  {id:<7}  tcp {}   zone {}", g.tcp, g.spec.zone);
    }

    step(&format!(
        "Logging in {clients} clients through the routers (2/3 prefer zone-a, 1/3 zone-b)"
    ));
    let started = Instant::now();
    let config = swarm::Config {
        routers: cluster.router_urls(),
        clients,
        id_prefix: "user".into(),
        localities: vec![
            ("local".into(), "zone-a".into()),
            ("local".into(), "zone-a".into()),
            ("local".into(), "zone-b".into()),
        ],
        login_concurrency: 200,
        login_timeout: Duration::from_secs(60),
    };
    let swarm = Swarm::start(&config, |id, b| {
        b.token(keys.app_token(id, Duration::from_secs(3600)))
    })
    .await
    .context("logging in the swarm")?;
    println!(
        "  {} clients connected in {} ms",
        swarm.connected(),
        started.elapsed().as_millis()
    );
    print_distribution(&swarm);
    // Let the agents report their counts so the table shows them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("\n  switchyardctl gateways:");
    let _ = print_ctl(&cluster, &["--token", ADMIN_TOKEN, "gateways"]);

    step("Crashing gw-a1 (SIGKILL): its clients must fail over by themselves");
    let victims = swarm.on_gateway("gw-a1");
    let killed_at = Instant::now();
    cluster.gateway("gw-a1").child.kill();
    let deadline = killed_at + Duration::from_secs(30);
    let moves = loop {
        let moves = swarm.moves_from("gw-a1", &victims);
        if moves.len() == victims.len() {
            break moves;
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} clients of gw-a1 did not fail over within 30 s",
                victims.len() - moves.len(),
                victims.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let times: Vec<Duration> = moves
        .iter()
        .map(|m| m.at.duration_since(killed_at))
        .collect();
    let failover = latency_summary(&times);
    println!(
        "  {} clients failed over, time from crash to connected elsewhere: {failover}",
        victims.len()
    );
    println!(
        "  (the first retry waits a random 0–1 s on purpose, so a crash does not become a reconnect storm)"
    );
    print_distribution(&swarm);

    step("gw-a1's lease expires: the registry forgets it without anyone cleaning up");
    cluster.wait_gone("gw-a1", Duration::from_secs(20)).await;
    println!(
        "  gone from every router {} ms after the crash (lease TTL 10 s)",
        killed_at.elapsed().as_millis()
    );

    step("gw-a1 comes back (its supervisor restarts it)");
    cluster
        .restart_gateway("gw-a1", Duration::from_secs(20))
        .await;
    println!(
        "  gw-a1 is serving again; existing clients stay where they are (long connections do not move)"
    );

    step(&format!(
        "Draining gw-b1 (switchyardctl drain): GOAWAY spread over {} ms",
        drain_window.as_millis()
    ));
    let leaving = swarm.on_gateway("gw-b1");
    if !print_ctl(
        &cluster,
        &[
            "--token",
            ADMIN_TOKEN,
            "drain",
            "gw-b1",
            "--reason",
            "demo drain",
        ],
    ) {
        bail!("switchyardctl drain failed");
    }
    let drain_at = Instant::now();
    let deadline = drain_at + drain_window + Duration::from_secs(20);
    let mut last_print = Instant::now();
    loop {
        let remaining = swarm.on_gateway("gw-b1").len();
        if last_print.elapsed() >= Duration::from_secs(1) || remaining == 0 {
            println!(
                "  t+{:>5} ms  gw-b1 still has {remaining:>5} clients",
                drain_at.elapsed().as_millis()
            );
            last_print = Instant::now();
        }
        if remaining == 0 && swarm.moves_from("gw-b1", &leaving).len() == leaving.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{remaining} clients still on gw-b1 long after the drain window");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_took = drain_at.elapsed();
    println!(
        "  all {} clients of gw-b1 moved in {} ms",
        leaving.len(),
        drain_took.as_millis()
    );
    cluster.wait_gone("gw-b1", Duration::from_secs(30)).await;
    println!("  gw-b1 revoked its lease and left the registry");

    step("Final balance");
    let dist = print_distribution(&swarm);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = print_ctl(&cluster, &["--token", ADMIN_TOKEN, "gateways"]);
    let lost = clients - swarm.connected();
    let ended = swarm.ended();
    if lost > 0 || !ended.is_empty() {
        bail!(
            "{lost} clients not connected at the end ({} ended: {:?})",
            ended.len(),
            ended.first()
        );
    }
    let ratio = max_over_mean(dist.values().copied()).unwrap_or(0.0);
    let summary = format!(
        "clients={clients} connected={} failover_clients={} failover {failover} drained={} drain_ms={} gateways={} final_max_over_mean={ratio:.2}",
        swarm.connected(),
        victims.len(),
        leaving.len(),
        drain_took.as_millis(),
        dist.len(),
    );
    swarm.close().await;
    Ok(summary)
}

fn print_distribution(swarm: &Swarm) -> std::collections::BTreeMap<String, usize> {
    let dist = swarm.distribution();
    let total: usize = dist.values().sum();
    for (gw, n) in &dist {
        let width = (n * 40).checked_div(total).unwrap_or(0);
        println!("  {gw:<7} {n:>6} {}", "#".repeat(width));
    }
    dist
}

/// Runs switchyardctl against the first router, indents its output; true on success.
fn print_ctl(cluster: &Cluster, args: &[&str]) -> bool {
    let out = cluster.ctl(args);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        println!("    {}", err.trim());
    }
    out.status.success()
}

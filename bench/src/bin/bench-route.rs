//! Route speed: the router library on port 0 over a real etcd, 64 concurrent gRPC callers,
//! at 10/100/1000/10000 registered gateways, against the etcd-direct alternative (read the
//! prefix from etcd and rank on the client, per login).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use switchyard_bench::fixture;
use switchyard_bench::stats::quantile;
use switchyard_proto::v1::RouteRequest;
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_registry::Prefix;
use switchyard_tests::Etcd;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Route throughput and latency against etcd-direct ranking.
#[derive(Debug, Parser)]
#[command(name = "bench-route")]
struct Args {
    /// Short run (1 s per measurement).
    #[arg(long)]
    quick: bool,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Registered gateway counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    gateways: Vec<usize>,
    /// Length of each measurement.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    duration: Duration,
    /// gRPC connections the callers share.
    #[arg(long, default_value_t = 8)]
    channels: usize,
}

/// One measurement: calls per second and per-call latencies.
struct Run {
    rate: f64,
    lat: Vec<Duration>,
    errors: u64,
}

impl Run {
    fn fmt(&self) -> String {
        let us = |q| quantile(&self.lat, q).map_or(0, |d| d.as_micros());
        format!(
            "rps={:.0} p50={}us p99={}us p999={}us errors={}",
            self.rate,
            us(0.5),
            us(0.99),
            us(0.999),
            self.errors
        )
    }
    fn p99_ms(&self) -> f64 {
        quantile(&self.lat, 0.99).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }
}

/// Runs `callers` loops of `call` for `duration` (each loop also capped in count).
async fn drive<F, Fut>(callers: usize, duration: Duration, call: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..callers {
        let call = call.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            for n in 0..10_000_000u64 {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                if call(w, n).await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        });
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (l, e) = r.expect("caller task");
        lat.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Run {
        rate: lat.len() as f64 / elapsed,
        lat,
        errors,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let duration = if args.quick {
        Duration::from_secs(1)
    } else {
        args.duration
    };
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let mut summary = Vec::new();
    let mut target_line = String::new();
    for (round, &count) in args.gateways.iter().enumerate() {
        let prefix = Prefix::new(format!("/bench-route-{round}"))?;
        fixture::put_records(&client, &prefix, count).await?;

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = switchyard_router::Config {
            prefix: prefix.as_str().to_owned(),
            ..Default::default()
        }
        .validate()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let router = tokio::spawn(switchyard_router::run(
            switchyard_router::Listeners {
                grpc: listener,
                http: None,
            },
            config,
            client.clone(),
            None,
            async {
                let _ = stop_rx.await;
            },
        ));
        let url = format!("http://{addr}");
        let mut channels = Vec::new();
        for _ in 0..args.channels.max(1) {
            channels.push(Channel::from_shared(url.clone())?.connect().await?);
        }
        // Ready when the view holds every gateway.
        let probe = RouterClient::new(channels[0].clone());
        switchyard_tests::eventually(Duration::from_secs(30), "router view loaded", || {
            let mut probe = probe.clone();
            async move {
                let r = probe
                    .list_gateways(switchyard_proto::v1::ListGatewaysRequest {})
                    .await
                    .ok()?;
                (r.into_inner().gateways.len() == count).then_some(())
            }
        })
        .await;

        let channels = Arc::new(channels);
        let route_call = move |w: usize, n: u64| {
            let mut rc = RouterClient::new(channels[w % channels.len()].clone());
            async move {
                let (region, zone) = fixture::locality(n as usize + w);
                rc.route(RouteRequest {
                    client_id: format!("c-{w}-{n}"),
                    region,
                    zone,
                    limit: 3,
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| !r.get_ref().gateways.is_empty())
            }
        };
        // Warm-up, then the measurement.
        drive(args.callers, Duration::from_millis(300), route_call.clone()).await;
        let routed = drive(args.callers, duration, route_call).await;
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), router).await;

        let direct_client = client.clone();
        let p = prefix.clone();
        let direct = drive(args.callers, duration, move |w, n| {
            let mut c = direct_client.clone();
            let p = p.clone();
            async move {
                let (region, zone) = fixture::locality(n as usize + w);
                fixture::etcd_direct_route(&mut c, &p, &format!("c-{w}-{n}"), &region, &zone)
                    .await
                    .is_ok()
            }
        })
        .await;
        let ratio = routed.rate / direct.rate.max(1e-9);
        println!("gateways={count} router: {}", routed.fmt());
        println!("gateways={count} etcd-direct: {}", direct.fmt());
        println!("gateways={count} ratio={ratio:.1}x");
        summary.push(format!(
            "g{count}_rps={:.0} g{count}_p99_ms={:.2} g{count}_direct_rps={:.0} g{count}_ratio={ratio:.1}",
            routed.rate,
            routed.p99_ms(),
            direct.rate
        ));
        if count == 1000 {
            let met = routed.rate >= 40_000.0 && routed.p99_ms() <= 2.0 && ratio >= 10.0;
            target_line = format!(" target_1000_met={met}");
        }
        // Keep etcd small for the next round.
        let mut c = client.clone();
        c.delete(
            prefix.root(),
            Some(switchyard_registry::etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .context("cleaning up")?;
    }
    println!(
        "bench-route: callers={} duration={:?} {}{}",
        args.callers,
        duration,
        summary.join(" "),
        target_line
    );
    Ok(())
}

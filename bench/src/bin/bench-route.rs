//! Route speed (issue 8.1): the router library on port 0 over a real etcd, answering 64
//! concurrent gRPC callers that run in a **separate process** (this binary re-executed with
//! the hidden `--caller` flag) over 8 HTTP/2 connections, at 10/100/1000/10000 registered
//! gateways. In the same run, per size and with the same callers:
//! - the **etcd-direct** alternative: each login reads the whole prefix from etcd, decodes
//!   every record and ranks on the client (what teams do without a router);
//! - a **no-op gRPC floor**: a trivial `Router` service answering a constant
//!   `RouteResponse` of the same shape, same server set-up — what tonic, HTTP/2 and the
//!   kernel cost with no routing at all, i.e. the most this set-up can show;
//! - the ranking call alone in this process, indexed (`ranking::rank`) against the plain
//!   full scan (`ranking::rank_reference`), with a check that both give the same answers.
//!
//! CPU is split from `/proc`: this process (router or floor), the caller process, and the
//! whole machine (the rest is etcd and whatever else runs here).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use switchyard_bench::fixture;
use switchyard_bench::stats::quantile;
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_proto::v1::router_server::{Router, RouterServer};
use switchyard_proto::v1::{
    GatewaysUpdate, ListGatewaysRequest, ListGatewaysResponse, RouteRequest, RouteResponse,
    RoutedGateway, WatchGatewaysRequest,
};
use switchyard_registry::Prefix;
use switchyard_registry::etcd_client::Client as EtcdClient;
use switchyard_router::ranking;
use switchyard_tests::Etcd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

/// Route throughput and latency against etcd-direct ranking and a no-op gRPC floor.
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
    /// Length of each measurement (1 s with --quick).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    duration: Duration,
    /// Warm-up before each measurement.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300ms")]
    warmup: Duration,
    /// gRPC connections (HTTP/2) the callers share, round-robin.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Internal: run as the caller process against `--url`.
    #[arg(long, hide = true)]
    caller: Option<Mode>,
    /// Internal: router/floor URL, or the etcd endpoint for `--caller direct`.
    #[arg(long, hide = true, default_value = "")]
    url: String,
    /// Internal: registry prefix for `--caller direct`.
    #[arg(long, hide = true, default_value = "/bench-route")]
    prefix: String,
}

/// What the caller process calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// `Router.Route` on a gRPC server (the router or the floor).
    Route,
    /// etcd range read of the prefix + decode + rank on the client.
    Direct,
}

/// Time an etcd-direct call may run past the end of its measurement before it is cut off
/// and counted as an error (at 10 000 gateways one call reads megabytes).
const DIRECT_GRACE: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(mode) = args.caller {
        return caller_main(&args, mode).await;
    }
    let duration = if args.quick {
        Duration::from_secs(1)
    } else {
        args.duration
    };
    let load_start = loadavg();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let floor_url = start_floor().await?;
    let mut summary = vec![
        format!("callers={}", args.callers),
        format!("channels={}", args.channels),
        format!("duration_s={}", duration.as_secs_f64()),
    ];
    let mut floors = Vec::new();
    let mut at_1000: Option<(f64, f64, f64)> = None;
    for (round, &count) in args.gateways.iter().enumerate() {
        let prefix = Prefix::new(format!("/bench-route-{round}"))?;
        fixture::put_records(&client, &prefix, count).await?;

        let cost = rank_cost(count, duration);
        println!(
            "gateways={count} rank (this process, one call): indexed={:.2}us reference={:.2}us index_build={:.0}us answers_differ={}",
            cost.indexed_us, cost.reference_us, cost.build_us, cost.mismatches
        );

        // The floor next to each router run, so both see the same machine load.
        let floor = run_callers(&args, Mode::Route, &floor_url, "", duration).await?;
        println!("gateways={count} floor (no-op gRPC): {}", floor.fmt());

        let router = start_router(&client, &prefix, count).await?;
        let routed = run_callers(&args, Mode::Route, &router.url, "", duration).await?;
        let _ = router.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), router.task).await;
        println!("gateways={count} router: {}", routed.fmt());

        let direct = run_callers(
            &args,
            Mode::Direct,
            &etcd.endpoint(),
            prefix.as_str(),
            duration,
        )
        .await?;
        println!("gateways={count} etcd-direct: {}", direct.fmt());

        let vs_etcd = routed.rps() / direct.rps().max(1e-9);
        let vs_floor = routed.rps() / floor.rps().max(1e-9);
        println!("gateways={count} router/etcd-direct={vs_etcd:.1}x router/floor={vs_floor:.2}");
        summary.push(format!(
            "g{count}_rps={:.0} g{count}_p50_ms={:.2} g{count}_p99_ms={:.2} g{count}_p999_ms={:.2} \
             g{count}_direct_rps={:.1} g{count}_vs_etcd={vs_etcd:.1} g{count}_floor_rps={:.0} \
             g{count}_vs_floor={vs_floor:.2} g{count}_server_us={:.1} g{count}_floor_server_us={:.1} \
             g{count}_rank_us={:.2} g{count}_rank_ref_us={:.2}",
            routed.rps(),
            routed.p50_us / 1e3,
            routed.p99_us / 1e3,
            routed.p999_us / 1e3,
            direct.rps(),
            floor.rps(),
            routed.server_us(),
            floor.server_us(),
            cost.indexed_us,
            cost.reference_us,
        ));
        if count == 1000 {
            at_1000 = Some((routed.rps(), routed.p99_us / 1e3, vs_etcd));
        }
        floors.push(floor.rps());
        // Keep etcd small for the next round.
        let mut c = client.clone();
        c.delete(
            prefix.root(),
            Some(switchyard_registry::etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .context("cleaning up")?;
    }
    floors.sort_by(f64::total_cmp);
    if let Some(median) = floors.get(floors.len() / 2) {
        summary.push(format!("floor_rps={median:.0}"));
    }
    if let Some((rps, p99_ms, vs_etcd)) = at_1000 {
        summary.push(format!(
            "target_rps_met={} target_p99_met={} target_ratio_met={}",
            rps >= 40_000.0,
            p99_ms <= 2.0,
            vs_etcd >= 10.0
        ));
    }
    summary.push(format!("load_start={load_start} load_end={}", loadavg()));
    println!("bench-route: {}", summary.join(" "));
    Ok(())
}

/// The router library on a port-0 listener over `prefix`, ready when its view holds all
/// `count` gateways. Returns its URL, a stop switch and its task.
async fn start_router(client: &EtcdClient, prefix: &Prefix, count: usize) -> Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
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
    let probe = RouterClient::new(Channel::from_shared(url.clone())?.connect().await?);
    switchyard_tests::eventually(Duration::from_secs(60), "router view loaded", || {
        let mut probe = probe.clone();
        async move {
            let r = probe.list_gateways(ListGatewaysRequest {}).await.ok()?;
            (r.into_inner().gateways.len() == count).then_some(())
        }
    })
    .await;
    Ok(Running {
        url,
        stop: stop_tx,
        task: router,
    })
}

/// A router started by [`start_router`].
struct Running {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), switchyard_router::Error>>,
}

/// A `Router` that answers every Route with the same response and does nothing else.
#[derive(Debug, Clone)]
struct Floor(Arc<RouteResponse>);

type UpdateStream = Pin<Box<dyn futures::Stream<Item = Result<GatewaysUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Router for Floor {
    async fn route(&self, _: Request<RouteRequest>) -> Result<Response<RouteResponse>, Status> {
        // A clone, as the router builds its answer: same allocations for the strings.
        Ok(Response::new((*self.0).clone()))
    }

    async fn list_gateways(
        &self,
        _: Request<ListGatewaysRequest>,
    ) -> Result<Response<ListGatewaysResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    type WatchGatewaysStream = UpdateStream;

    async fn watch_gateways(
        &self,
        _: Request<WatchGatewaysRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
}

/// Serves [`Floor`] (in this process, like the router) with the router's server settings;
/// its answer has the size and shape of a real one (3 gateways and a policy).
async fn start_floor() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let gateways = (0..3)
        .map(|n| {
            let rec = fixture::record(n, 10_000);
            RoutedGateway {
                address: rec.addrs.tcp.clone().unwrap_or_default(),
                id: rec.id,
                region: rec.region,
                zone: rec.zone,
                score: f64::from(3 - n as u32),
            }
        })
        .collect();
    let answer = RouteResponse {
        gateways,
        revision: 12_345,
        valid_for_ms: 30_000,
        policy: Some(switchyard_router::Policy::default().to_proto()),
        explanation: Vec::new(),
        snapshot_age_ms: 3,
        ticket: String::new(),
        ticket_valid_for_ms: 0,
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        Server::builder()
            .add_service(RouterServer::new(Floor(Arc::new(answer))))
            .serve_with_incoming(incoming),
    );
    Ok(url)
}

/// What one caller-process run measured, with the CPU split over its measurement window.
#[derive(Debug, Clone, PartialEq)]
struct Measured {
    calls: u64,
    secs: f64,
    errors: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Cores used by the caller process.
    caller_cores: f64,
    /// Cores used by this process (the router or the floor).
    server_cores: f64,
    /// Cores busy on the whole machine.
    machine_cores: f64,
}

impl Measured {
    fn rps(&self) -> f64 {
        self.calls as f64 / self.secs.max(1e-9)
    }

    /// Server CPU per call in µs: what a call costs the router (or floor) process, which
    /// unlike the rate does not depend on how many cores other processes leave us.
    fn server_us(&self) -> f64 {
        self.server_cores * 1e6 / self.rps().max(1e-9)
    }

    /// Caller-process CPU per call in µs.
    fn caller_us(&self) -> f64 {
        self.caller_cores * 1e6 / self.rps().max(1e-9)
    }

    fn fmt(&self) -> String {
        format!(
            "rps={:.0} p50={:.0}us p99={:.0}us p999={:.0}us errors={} | cpu per call: server={:.1}us callers={:.1}us | cores: server={:.2} callers={:.2} machine={:.2} of {}",
            self.rps(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.errors,
            self.server_us(),
            self.caller_us(),
            self.server_cores,
            self.caller_cores,
            self.machine_cores,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        )
    }
}

/// Runs the caller process against `url` and reads its result; this process's and the
/// machine's CPU are sampled at its `measuring` and `stopped` lines.
async fn run_callers(
    args: &Args,
    mode: Mode,
    url: &str,
    prefix: &str,
    duration: Duration,
) -> Result<Measured> {
    let exe = std::env::current_exe()?;
    let mode_arg = match mode {
        Mode::Route => "route",
        Mode::Direct => "direct",
    };
    let mut child = tokio::process::Command::new(exe)
        .args(["--caller", mode_arg, "--url", url, "--prefix", prefix])
        .args(["--callers", &args.callers.to_string()])
        .args(["--channels", &args.channels.to_string()])
        .args(["--duration", &format!("{}ms", duration.as_millis())])
        .args(["--warmup", &format!("{}ms", args.warmup.as_millis())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the caller process")?;
    let stdout = child.stdout.take().context("caller stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let limit = duration + args.warmup + DIRECT_GRACE + Duration::from_secs(60);
    let read = async {
        let mut start: Option<(f64, CpuTimes)> = None;
        let mut window: Option<(f64, f64)> = None;
        while let Some(line) = lines.next_line().await? {
            if line == "measuring" {
                start = Some((self_cpu_s()?, machine_cpu()?));
            } else if line.starts_with("stopped") {
                let (cpu0, m0) = start.context("stopped before measuring")?;
                let m1 = machine_cpu()?;
                window = Some((self_cpu_s()? - cpu0, m1.busy_s - m0.busy_s));
            } else if let Some(result) = line.strip_prefix("caller: ") {
                let (server_s, machine_s) = window.context("result before stopped")?;
                let mut m = parse_caller(result).context("caller result line")?;
                m.server_cores = server_s / m.secs;
                m.machine_cores = machine_s / m.secs;
                return Ok(m);
            }
        }
        bail!("caller process ended without a result")
    };
    let measured = tokio::time::timeout(limit, read)
        .await
        .context("caller process timed out")?;
    let _ = child.wait().await;
    measured
}

/// The caller process: `--callers` loops over `--channels` connections, a warm-up, then the
/// measurement. Prints `measuring`, `stopped`, then one `caller: key=value …` line.
async fn caller_main(args: &Args, mode: Mode) -> Result<()> {
    let channels = args.channels.max(1);
    let call: CallFn = match mode {
        Mode::Route => {
            let mut conns = Vec::new();
            for _ in 0..channels {
                conns.push(Channel::from_shared(args.url.clone())?.connect().await?);
            }
            let conns = Arc::new(conns);
            Arc::new(move |w: usize, n: u64, _deadline: Instant| {
                let mut rc = RouterClient::new(conns[w % conns.len()].clone());
                let call: CallFuture = Box::pin(async move {
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
                });
                call
            })
        }
        Mode::Direct => {
            let mut conns = Vec::new();
            for _ in 0..channels {
                conns.push(EtcdClient::connect([args.url.as_str()], None).await?);
            }
            let conns = Arc::new(conns);
            let prefix = Prefix::new(args.prefix.clone())?;
            Arc::new(move |w: usize, n: u64, deadline: Instant| {
                let mut c = conns[w % conns.len()].clone();
                let prefix = prefix.clone();
                let call: CallFuture = Box::pin(async move {
                    let (region, zone) = fixture::locality(n as usize + w);
                    let id = format!("c-{w}-{n}");
                    let call = fixture::etcd_direct_route(&mut c, &prefix, &id, &region, &zone);
                    matches!(
                        tokio::time::timeout_at(deadline + DIRECT_GRACE, call).await,
                        Ok(Ok(_))
                    )
                });
                call
            })
        }
    };
    drive(args.callers, args.warmup, call.clone()).await;
    println!("measuring");
    let cpu0 = self_cpu_s()?;
    let run = drive(args.callers, args.duration, call).await;
    let cpu = self_cpu_s()? - cpu0;
    println!("stopped");
    let us = |q| quantile(&run.lat, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
    println!(
        "caller: calls={} secs={:.4} errors={} p50_us={:.1} p99_us={:.1} p999_us={:.1} cpu_s={cpu:.3}",
        run.lat.len(),
        run.secs,
        run.errors,
        us(0.5),
        us(0.99),
        us(0.999),
    );
    Ok(())
}

/// One call in flight; true on success.
type CallFuture = Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// One call of caller `w`, its `n`th, with the measurement's deadline.
type CallFn = Arc<dyn Fn(usize, u64, Instant) -> CallFuture + Send + Sync>;

/// Latencies of the successful calls, errors, and the real elapsed time.
struct Run {
    lat: Vec<Duration>,
    errors: u64,
    secs: f64,
}

/// Runs `callers` closed loops of `call` until `duration` has passed (each loop also
/// capped in count); the rate is over the real elapsed time, late calls included.
async fn drive(callers: usize, duration: Duration, call: CallFn) -> Run {
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
                if call(w, n, deadline).await {
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
    Run {
        lat,
        errors,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// Cost of one ranking call at `count` gateways, indexed and by the plain full scan.
struct RankCost {
    indexed_us: f64,
    reference_us: f64,
    build_us: f64,
    /// Calls where the two disagreed (must be 0).
    mismatches: usize,
}

/// Times `ranking::rank` against `ranking::rank_reference` on the bench's registry, with
/// the requests the callers send; each loop is bounded by 20 000 calls and `budget`.
fn rank_cost(count: usize, budget: Duration) -> RankCost {
    let cands: Vec<ranking::Candidate> = (0..count)
        .map(|n| fixture::candidate(&fixture::record(n, 10_000)))
        .collect();
    let t = std::time::Instant::now();
    let mut builds = 0u32;
    let mut index = ranking::Index::new(&cands);
    while builds < 100 && t.elapsed() < budget / 4 {
        index = ranking::Index::new(&cands);
        builds += 1;
    }
    let build_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(builds.max(1));
    let params = ranking::Params::default();
    let ids: Vec<String> = (0..20_000).map(|n| format!("c-{n}")).collect();
    let localities: Vec<(String, String)> = (0..6).map(fixture::locality).collect();
    let request = |n: usize| ranking::Request {
        client_id: &ids[n],
        region: &localities[n % 6].0,
        zone: &localities[n % 6].1,
        protocol: ranking::Protocol::Tcp,
        limit: 3,
        exclude: &[],
        now_ms: 0,
        seed: n as u64,
    };
    let mut scratch = ranking::Scratch::new();
    let (mut out, mut ref_out, mut ref_scratch) = (Vec::new(), Vec::new(), Vec::new());
    let time = |f: &mut dyn FnMut(usize)| {
        let t = std::time::Instant::now();
        let mut n = 0;
        while n < ids.len() && (n < 10 || t.elapsed() < budget / 4) {
            f(n);
            n += 1;
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let live = fixture::NoLive;
    let indexed_us = time(&mut |n| {
        let _ = ranking::rank(
            &cands,
            &index,
            &live,
            &request(n),
            &params,
            &mut scratch,
            &mut out,
        );
    });
    let reference_us = time(&mut |n| {
        let r = request(n);
        let _ = ranking::rank_reference(&cands, &live, &r, &params, &mut ref_scratch, &mut ref_out);
    });
    let mismatches = (0..500)
        .filter(|&n| {
            let r = request(n);
            let a = ranking::rank(&cands, &index, &live, &r, &params, &mut scratch, &mut out)
                .map(|()| out.clone());
            let b =
                ranking::rank_reference(&cands, &live, &r, &params, &mut ref_scratch, &mut ref_out)
                    .map(|()| ref_out.clone());
            a != b
        })
        .count();
    RankCost {
        indexed_us,
        reference_us,
        build_us,
        mismatches,
    }
}

/// `key=value` pairs of a `caller:` line; the CPU fields are filled in by the caller of
/// this function.
fn parse_caller(line: &str) -> Option<Measured> {
    let get = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let num = |key: &str| get(key)?.parse::<f64>().ok();
    let secs = num("secs")?;
    Some(Measured {
        calls: get("calls")?.parse().ok()?,
        secs,
        errors: get("errors")?.parse().ok()?,
        p50_us: num("p50_us")?,
        p99_us: num("p99_us")?,
        p999_us: num("p999_us")?,
        caller_cores: num("cpu_s")? / secs.max(1e-9),
        server_cores: 0.0,
        machine_cores: 0.0,
    })
}

/// User + system CPU seconds of this process (all threads), from `/proc/self/stat`.
fn self_cpu_s() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    proc_stat_cpu_s(&stat).context("parsing /proc/self/stat")
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in seconds. The fields are in clock ticks
/// of `USER_HZ`, which Linux fixes at 100 for this interface.
fn proc_stat_cpu_s(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Busy CPU seconds of the whole machine so far.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    busy_s: f64,
}

fn machine_cpu() -> Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    machine_busy(&stat).context("parsing /proc/stat")
}

/// From the aggregate `cpu` line of `/proc/stat`: everything but idle and iowait.
fn machine_busy(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user].
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4).unwrap_or(&0);
    Some(CpuTimes {
        busy_s: busy as f64 / 100.0,
    })
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_command_names() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 70 0 0 20 0 3 0";
        assert_eq!(proc_stat_cpu_s(stat), Some(3.2));
        assert_eq!(proc_stat_cpu_s("garbage"), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(
            machine_busy(stat),
            Some(CpuTimes {
                busy_s: (100 + 5 + 50 + 3 + 2) as f64 / 100.0
            })
        );
        assert_eq!(machine_busy("intr 1 2 3"), None);
    }

    #[test]
    fn parses_the_caller_line() {
        let m = parse_caller(
            "calls=1000 secs=2.0000 errors=1 p50_us=100.0 p99_us=900.5 p999_us=1500.0 cpu_s=1.500",
        )
        .unwrap();
        assert_eq!((m.calls, m.errors), (1000, 1));
        assert_eq!(m.rps(), 500.0);
        assert_eq!((m.p50_us, m.p99_us, m.p999_us), (100.0, 900.5, 1500.0));
        assert_eq!(m.caller_cores, 0.75);
        assert!(parse_caller("calls=1 secs=1").is_none());
    }
}

//! Soak and chaos (issue 8.7): a 3-member etcd cluster, 2 routers and 4 reference gateways
//! as OS processes, ~300 client-lib clients in this process that log in (with churn:
//! cohorts leave and new ones log in during the run) and send messages the gateways ACK
//! and echo. A seeded, bounded chaos schedule hits the system one step at a time: gateway
//! SIGKILL + restart, SIGSTOP + SIGCONT, ops drain (Admin API) + undrain + restart, etcd
//! leader SIGKILL + restart. Invariants, sampled every second throughout:
//!
//! - no client disconnected longer than the bound its settings imply
//!   ([`switchyard_bench::soak::GapPolicy`] states the formula); a gap starts when the
//!   link stopped working (the freeze, for a SIGSTOPped gateway) and ends at `Connected`;
//! - no message missing: every message `send()` accepted is ACKed or handed back as
//!   failed (missing = sent − acked − failed, must be 0);
//! - router memory flat: RSS from /proc every 10 s, last third vs first third of the run
//!   within a stated tolerance.
//!
//! `--quick`: 90 s, one step of each kind. Full: 10 minutes, ~22 steps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use parking_lot::Mutex;
use switchyard_bench::soak::{Chaos, GapPolicy, GapTracker, RssTrend, Step, parse_vm_rss_kb};
use switchyard_bench::stats::latency_summary;
use switchyard_bench::swarm::{self, Swarm};
use switchyard_client::{Client, Event};
use switchyard_proto::backoff::Backoff;
use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::{DrainRequest, UndrainRequest};
use switchyard_tests::{Cluster, EtcdCluster, GatewaySpec};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

/// Soak and chaos with real processes and invariants checked throughout.
#[derive(Debug, Parser)]
#[command(name = "bench-soak")]
struct Args {
    /// Short run: 90 s, one chaos step of each kind.
    #[arg(long)]
    quick: bool,
    /// Whole run (default 10 min, 90 s with --quick).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Seed of the chaos schedule and target choice.
    #[arg(long, default_value_t = 87)]
    seed: u64,
    /// Clients connected at any time (a base swarm plus churn cohorts).
    #[arg(long, default_value_t = 300)]
    clients: usize,
    /// Reference gateways.
    #[arg(long, default_value_t = 4)]
    gateways: usize,
    /// Clients per churn cohort; a new cohort logs in every --churn-every and the oldest
    /// of more than two leaves.
    #[arg(long, default_value_t = 20)]
    churn_size: usize,
    /// Default 30 s, 15 s with --quick.
    #[arg(long, value_parser = humantime::parse_duration)]
    churn_every: Option<Duration>,
    /// Each client sends one message about this often (uniform 0.5×..1.5×).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    send_every: Duration,
    /// Client heartbeat: PING after this much write-idle time.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Client heartbeat: dead when nothing answers this long.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
    /// First reconnect after a loss waits uniform 0..spread.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    spread: Duration,
    /// Reconnect backoff base (full jitter).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    backoff_base: Duration,
    /// Reconnect backoff cap.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    backoff_cap: Duration,
    /// One connection attempt's budget (TCP + HELLO → WELCOME).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// SIGSTOP lasts this long (default 10 s, 6 s with --quick).
    #[arg(long, value_parser = humantime::parse_duration)]
    stop_for: Option<Duration>,
    /// A killed gateway (or etcd leader) is restarted after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    down_for: Duration,
    /// A drained gateway's GOAWAYs are spread over this window.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    drain_window: Duration,
    /// "Flat": each router's RSS grew by at most this much (kB), last vs first third.
    #[arg(long, default_value_t = 8192)]
    rss_tolerance_kb: u64,
}

const ADMIN_TOKEN: &str = "bench-soak-admin";
/// Route answers, per client request.
const ROUTE_LIMIT: u32 = 3;
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
const RACE_DELAY: Duration = Duration::from_millis(250);
/// Scheduling slack on a shared 2-core machine.
const SLACK: Duration = Duration::from_secs(1);
/// Router RSS sampling period.
const RSS_EVERY: Duration = Duration::from_secs(10);
/// How long a leaving cohort (or the final stop) waits for outstanding receipts.
const RECEIPT_GRACE: Duration = Duration::from_secs(15);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    switchyard_bench::stats::finish("bench-soak", run(&args)).await;
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// What every client is built with; the gap bound is derived from the same values.
#[derive(Debug, Clone, Copy)]
struct Settings {
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    spread: Duration,
    backoff: Backoff,
    connect_timeout: Duration,
}

impl Settings {
    fn apply(&self, b: switchyard_client::Builder) -> switchyard_client::Builder {
        b.heartbeat_interval(self.heartbeat_interval)
            .heartbeat_timeout(self.heartbeat_timeout)
            .reconnect_spread(self.spread)
            .backoff(self.backoff.base, self.backoff.cap)
            .connect_timeout(self.connect_timeout)
            .route_timeout(ROUTE_TIMEOUT)
            .route_limit(ROUTE_LIMIT)
            .racing(RACE_DELAY, ROUTE_LIMIT as usize)
    }

    fn policy(&self, routers: u32) -> GapPolicy {
        GapPolicy {
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            spread: self.spread,
            backoff: self.backoff,
            routers,
            route_timeout: ROUTE_TIMEOUT,
            route_limit: ROUTE_LIMIT,
            race_delay: RACE_DELAY,
            connect_timeout: self.connect_timeout,
            rounds: 2,
            slack: SLACK,
        }
    }
}

/// One client's invariant state.
#[derive(Debug)]
struct Track {
    client: Client,
    state: Mutex<TrackState>,
}

#[derive(Debug)]
struct TrackState {
    gaps: GapTracker,
    /// Kicked or gave up: terminal, a violation here.
    ended: Option<String>,
    /// Left on purpose (churn or the end): the longest gap up to then.
    retired: Option<Duration>,
}

impl Track {
    fn longest(&self, now: Instant) -> Duration {
        let s = self.state.lock();
        s.retired.unwrap_or_else(|| s.gaps.longest(now))
    }
}

/// Message accounting over every client.
#[derive(Debug, Default)]
struct Counters {
    /// Accepted by `send()`.
    sent: AtomicU64,
    /// Receipt resolved: the gateway ACKed.
    acked: AtomicU64,
    /// Receipt resolved: handed back with its payload.
    failed: AtomicU64,
    /// `send()` refused at once (no link within its timeout): never accepted.
    refused: AtomicU64,
}

/// State the sampler, the churn task and the chaos steps share.
#[derive(Debug, Default)]
struct Shared {
    tracks: Mutex<Vec<Arc<Track>>>,
    counters: Counters,
    /// Echoes received by cohorts that already left.
    echoed: AtomicU64,
    /// Frames resent on a new link, by clients that already left.
    resent: AtomicU64,
}

impl Shared {
    /// Marks the clients on `gateway` as frozen since `at`.
    fn frozen(&self, gateway: &str, at: Instant) -> usize {
        let mut n = 0;
        for t in self.tracks.lock().iter() {
            if t.client.gateway().as_deref() == Some(gateway) {
                t.state.lock().gaps.frozen(at);
                n += 1;
            }
        }
        n
    }

    fn thawed(&self) {
        for t in self.tracks.lock().iter() {
            t.state.lock().gaps.thawed();
        }
    }

    /// Gaps closed so far, over every client.
    fn reconnects(&self) -> usize {
        self.tracks
            .lock()
            .iter()
            .map(|t| t.state.lock().gaps.gaps().len())
            .sum()
    }

    fn on_gateway(&self, gateway: &str) -> usize {
        self.tracks
            .lock()
            .iter()
            .filter(|t| t.client.gateway().as_deref() == Some(gateway))
            .count()
    }
}

/// A group of clients that log in together and leave together.
#[derive(Debug)]
struct Cohort {
    swarm: Swarm,
    tracks: Vec<Arc<Track>>,
    senders: JoinSet<()>,
    watchers: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl Cohort {
    async fn start(
        name: &str,
        n: usize,
        routers: &[String],
        settings: Settings,
        send_every: Duration,
        shared: &Arc<Shared>,
    ) -> Result<Self> {
        let config = swarm::Config {
            routers: routers.to_vec(),
            clients: n,
            id_prefix: name.to_owned(),
            localities: Vec::new(),
            login_concurrency: 100,
            login_timeout: Duration::from_secs(90),
        };
        let swarm = Swarm::start(&config, |_, b| settings.apply(b))
            .await
            .with_context(|| format!("logging in cohort {name}"))?;
        let (stop, _) = watch::channel(false);
        let mut cohort = Self {
            swarm,
            tracks: Vec::with_capacity(n),
            senders: JoinSet::new(),
            watchers: JoinSet::new(),
            stop,
        };
        let clients: Vec<(String, Client)> = cohort
            .swarm
            .clients()
            .map(|(id, c)| (id.to_owned(), c.clone()))
            .collect();
        for (id, client) in clients {
            // Subscribe first, then read the state: no event falls between the two.
            let events = client.events();
            let now = Instant::now();
            let track = Arc::new(Track {
                state: Mutex::new(TrackState {
                    gaps: GapTracker::new(client.gateway().is_some(), now),
                    ended: None,
                    retired: None,
                }),
                client: client.clone(),
            });
            cohort.watchers.spawn(watch_events(track.clone(), events));
            cohort.senders.spawn(send_loop(
                id,
                client,
                send_every,
                cohort.stop.subscribe(),
                shared.clone(),
            ));
            shared.tracks.lock().push(track.clone());
            cohort.tracks.push(track);
        }
        Ok(cohort)
    }

    /// Stops sending, lets outstanding receipts resolve (bounded), closes every client
    /// (which hands back what is still unacknowledged) and folds its figures into `shared`.
    async fn leave(mut self, shared: &Shared) {
        let now = Instant::now();
        for t in &self.tracks {
            let mut s = t.state.lock();
            let longest = s.gaps.longest(now);
            s.retired = Some(longest);
        }
        let _ = self.stop.send(true);
        join_until(&mut self.senders, Instant::now() + RECEIPT_GRACE).await;
        shared
            .echoed
            .fetch_add(self.swarm.received(), Ordering::Relaxed);
        let resent: u64 = self.tracks.iter().map(|t| t.client.stats().resent).sum();
        shared.resent.fetch_add(resent, Ordering::Relaxed);
        self.swarm.close().await;
        // Receipts still pending resolve on close; a sender still stuck after this is
        // aborted and its message stays unaccounted (missing).
        join_until(&mut self.senders, Instant::now() + Duration::from_secs(5)).await;
        self.senders.abort_all();
        self.watchers.abort_all();
    }
}

/// Waits for the tasks until `deadline`.
async fn join_until(set: &mut JoinSet<()>, deadline: Instant) {
    loop {
        tokio::select! {
            next = set.join_next() => if next.is_none() { return },
            () = sleep_until(deadline) => return,
        }
    }
}

/// Feeds one client's events into its gap tracker.
async fn watch_events(track: Arc<Track>, mut events: switchyard_client::Events) {
    while let Some(e) = events.next().await {
        let now = Instant::now();
        let mut s = track.state.lock();
        if s.retired.is_some() {
            return;
        }
        match e {
            Event::Connected { .. } => s.gaps.connected(now),
            Event::Disconnected { .. } => s.gaps.lost(now),
            Event::Kicked { reason, .. } => {
                s.gaps.lost(now);
                s.ended = Some(format!("kicked: {reason}"));
            }
            Event::GaveUp { cause } => {
                s.gaps.lost(now);
                s.ended = Some(format!("gave up: {cause}"));
            }
            _ => {}
        }
    }
}

/// One client's messages: one at a time, awaiting each receipt (ACK or handed back).
async fn send_loop(
    id: String,
    client: Client,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let c = &shared.counters;
    for n in 0u64.. {
        let wait = every.mul_f64(rand::random_range(0.5..1.5));
        tokio::select! {
            _ = stop.changed() => return,
            () = sleep(wait) => {}
        }
        if *stop.borrow() {
            return;
        }
        match client.send(format!("{id}:{n}")).await {
            Ok(receipt) => {
                c.sent.fetch_add(1, Ordering::Relaxed);
                match receipt.await {
                    Ok(()) => c.acked.fetch_add(1, Ordering::Relaxed),
                    // An empty payload means the driver dropped the receipt without an
                    // answer: that is a lost message, not a hand-back.
                    Err(u) if !u.payload.is_empty() => c.failed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => 0,
                };
            }
            Err(_) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Gap and RSS samples taken while the run lasts.
#[derive(Debug, Default)]
struct Samples {
    max_gap: Duration,
    /// Clients seen over the bound (each counted once).
    violators: std::collections::HashSet<usize>,
    rss: Vec<Vec<u64>>,
}

/// Every second: each client's longest gap against the bound; every `RSS_EVERY`: the
/// routers' RSS. Runs until `stop`.
async fn sample(
    shared: Arc<Shared>,
    router_pids: Vec<u32>,
    bound: Duration,
    samples: Arc<Mutex<Samples>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_rss: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let tracks: Vec<Arc<Track>> = shared.tracks.lock().clone();
        let mut s = samples.lock();
        for (i, t) in tracks.iter().enumerate() {
            let longest = t.longest(now);
            s.max_gap = s.max_gap.max(longest);
            if longest > bound && s.violators.insert(i) {
                println!(
                    "  INVARIANT: a client has been disconnected {} ms (bound {} ms)",
                    ms(longest),
                    ms(bound)
                );
            }
        }
        if last_rss.is_none_or(|t| now - t >= RSS_EVERY) {
            last_rss = Some(now);
            s.rss.resize(router_pids.len(), Vec::new());
            for (i, pid) in router_pids.iter().enumerate() {
                let kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .as_deref()
                    .and_then(parse_vm_rss_kb);
                if let Some(kb) = kb {
                    s.rss[i].push(kb);
                }
            }
        }
    }
}

/// Churn: a new cohort every `every`; the oldest leaves once more than two are in.
async fn churn(
    routers: Vec<String>,
    settings: Settings,
    size: usize,
    every: Duration,
    send_every: Duration,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> (VecDeque<Cohort>, usize) {
    let mut cohorts: VecDeque<Cohort> = VecDeque::new();
    let mut logins = 0;
    for n in 0.. {
        tokio::select! {
            _ = stop.changed() => break,
            () = sleep(every) => {}
        }
        match Cohort::start(
            &format!("churn{n}"),
            size,
            &routers,
            settings,
            send_every,
            &shared,
        )
        .await
        {
            Ok(c) => {
                logins += size;
                cohorts.push_back(c);
            }
            Err(e) => println!("  churn: {e:#}"),
        }
        if cohorts.len() > 2
            && let Some(old) = cohorts.pop_front()
        {
            old.leave(&shared).await;
        }
        if *stop.borrow() {
            break;
        }
    }
    (cohorts, logins)
}

/// Polls the routers until every gateway is listed as serving; `None` after `limit`.
async fn healed(cluster: &Cluster, since: Instant, limit: Duration) -> Option<Duration> {
    let ids: Vec<String> = cluster.gateways.keys().cloned().collect();
    while since.elapsed() < limit {
        let mut ok = true;
        for url in cluster.router_urls() {
            let serving = switchyard_tests::cluster::list_with(&url, Some(ADMIN_TOKEN))
                .await
                .is_some_and(|l| {
                    ids.iter().all(|id| {
                        l.gateways
                            .iter()
                            .any(|g| &g.id == id && g.state == "serving")
                    })
                });
            ok &= serving;
        }
        if ok {
            return Some(since.elapsed());
        }
        sleep(Duration::from_millis(100)).await;
    }
    None
}

/// `req` with the admin bearer token.
fn auth<T>(req: T) -> tonic::Request<T> {
    switchyard_tests::router::with_token(req, ADMIN_TOKEN)
}

/// Admin call with a few retries: the router writes etcd, which may be mid-election.
async fn admin(url: &str, id: &str, drain: bool) -> Result<()> {
    let mut last = None;
    for _ in 0..10 {
        let result = async {
            let mut a = AdminClient::connect(url.to_owned()).await?;
            if drain {
                a.drain(auth(DrainRequest {
                    gateway_id: id.into(),
                    reason: "bench-soak".into(),
                    by: "bench-soak".into(),
                }))
                .await?;
            } else {
                a.undrain(auth(UndrainRequest {
                    gateway_id: id.into(),
                }))
                .await?;
            }
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        sleep(Duration::from_millis(500)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
        .with_context(|| format!("Admin {} {id}", if drain { "drain" } else { "undrain" }))
}

async fn restart_gateway(cluster: &mut Cluster, id: &str) -> Result<()> {
    let spec = cluster
        .gateways
        .remove(id)
        .map(|g| g.spec)
        .with_context(|| format!("no gateway {id}"))?;
    cluster.add_gateway(spec).await;
    Ok(())
}

/// Runs one chaos step to its end (the system is healed or healing when it returns).
async fn run_step(
    cluster: &mut Cluster,
    step: Step,
    args: &Args,
    stop_for: Duration,
    shared: &Shared,
) -> Result<String> {
    let ids: Vec<String> = cluster.gateways.keys().cloned().collect();
    let id = ids[step.target % ids.len()].clone();
    Ok(match step.chaos {
        Chaos::Kill => {
            let on = shared.on_gateway(&id);
            cluster.gateway(&id).child.kill();
            sleep(args.down_for).await;
            restart_gateway(cluster, &id).await?;
            format!(
                "SIGKILL {id} ({on} clients on it), restarted after {} ms",
                ms(args.down_for)
            )
        }
        Chaos::Stop => {
            let at = Instant::now();
            cluster.gateway(&id).child.signal("STOP");
            let on = shared.frozen(&id, at);
            sleep(stop_for).await;
            cluster.gateway(&id).child.signal("CONT");
            shared.thawed();
            format!(
                "SIGSTOP {id} ({on} clients on it) for {} ms, SIGCONT",
                ms(stop_for)
            )
        }
        Chaos::Drain => {
            let on = shared.on_gateway(&id);
            let url = cluster.router_urls()[0].clone();
            let at = Instant::now();
            admin(&url, &id, true).await?;
            // The reference gateway drains (GOAWAY over its window), revokes its lease
            // and exits; only then may the drain key go, or the restart would drain too.
            let limit = args.drain_window + Duration::from_secs(20);
            while cluster.gateway(&id).child.is_running() {
                if at.elapsed() > limit {
                    cluster.gateway(&id).child.kill();
                    println!(
                        "  {id} still running {} ms after the drain: killed",
                        ms(limit)
                    );
                    break;
                }
                sleep(Duration::from_millis(50)).await;
            }
            let exited = at.elapsed();
            admin(&url, &id, false).await?;
            restart_gateway(cluster, &id).await?;
            format!(
                "ops drain {id} ({on} clients on it): exited after {} ms, undrained, restarted",
                ms(exited)
            )
        }
        Chaos::LeaderKill => {
            let leader = cluster.etcd.leader().await;
            cluster.etcd.kill(leader);
            sleep(args.down_for).await;
            cluster.etcd.restart(leader).await;
            format!(
                "SIGKILL etcd leader m{leader}, restarted after {} ms",
                ms(args.down_for)
            )
        }
    })
}

async fn run(args: &Args) -> Result<String> {
    let duration = args.duration.unwrap_or(if args.quick {
        Duration::from_secs(90)
    } else {
        Duration::from_secs(600)
    });
    let stop_for = args.stop_for.unwrap_or(if args.quick {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(10)
    });
    let churn_every = args.churn_every.unwrap_or(if args.quick {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(30)
    });
    // Chaos runs between a warm-up and a cool-down, one step per slot; a slot holds the
    // longest step (freeze, drain window + exit + restart, downtime + restart) and its
    // healing.
    let (warmup, cooldown, slot) = if args.quick {
        (8, 10, 18)
    } else {
        (20, 30, 25)
    };
    let (warmup, cooldown, slot) = (
        Duration::from_secs(warmup),
        Duration::from_secs(cooldown),
        Duration::from_secs(slot),
    );
    let busy = stop_for
        .max(args.drain_window + Duration::from_secs(4))
        .max(args.down_for + Duration::from_secs(3));
    if duration < warmup + cooldown + slot || busy > slot {
        bail!("--duration {duration:?} leaves no chaos slot of {slot:?} (steps need {busy:?})");
    }
    let window = duration - warmup - cooldown;
    let steps = switchyard_bench::soak::schedule(args.seed, window, slot, busy, args.gateways);
    let settings = Settings {
        heartbeat_interval: args.heartbeat_interval,
        heartbeat_timeout: args.heartbeat_timeout,
        spread: args.spread,
        backoff: Backoff {
            base: args.backoff_base,
            cap: args.backoff_cap,
        },
        connect_timeout: args.connect_timeout,
    };
    let routers = 2;
    let bound = settings.policy(routers).bound();
    let base_clients = args.clients.saturating_sub(2 * args.churn_size).max(1);

    println!(
        "starting a 3-member etcd cluster, {routers} routers and {} gateways (lease TTL 3 s, drain window {} ms)",
        args.gateways,
        ms(args.drain_window)
    );
    let capacity = (args.clients * 2) as u64;
    let window_arg = format!("{}ms", ms(args.drain_window));
    let hb_arg = format!("{}ms", ms(args.heartbeat_interval));
    let specs: Vec<GatewaySpec> = (1..=args.gateways)
        .map(|n| GatewaySpec {
            capacity,
            // --takeover: a restarted gateway replaces the record its killed self left
            // behind instead of waiting for the lease to expire.
            ..GatewaySpec::new(&format!("gw-{n}"), "local", "zone-a").args([
                "--ttl",
                "3s",
                "--heartbeat-interval",
                &hb_arg,
                "--drain-window",
                &window_arg,
                "--takeover",
            ])
        })
        .collect();
    let etcd = EtcdCluster::start(3).await;
    let mut cluster = Cluster::start_on(
        etcd,
        routers as usize,
        &["--admin-token", ADMIN_TOKEN],
        &specs,
    )
    .await;
    let router_urls = cluster.router_urls();
    let router_pids: Vec<u32> = cluster.routers.iter().map(|r| r.child.pid()).collect();

    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let base = Cohort::start(
        "base",
        base_clients,
        &router_urls,
        settings,
        args.send_every,
        &shared,
    )
    .await?;
    println!(
        "{base_clients} base clients logged in in {} ms: {:?}; churn: {} clients every {} s, at most 2 cohorts in",
        ms(started.elapsed()),
        base.swarm.distribution(),
        args.churn_size,
        churn_every.as_secs()
    );
    println!(
        "client settings: heartbeat {} + {} ms, spread {} ms, backoff {}..{} ms, connect timeout {} ms, route timeout {} ms x {routers} routers, race delay {} ms x {ROUTE_LIMIT} candidates",
        ms(settings.heartbeat_interval),
        ms(settings.heartbeat_timeout),
        ms(settings.spread),
        ms(settings.backoff.base),
        ms(settings.backoff.cap),
        ms(settings.connect_timeout),
        ms(ROUTE_TIMEOUT),
        ms(RACE_DELAY)
    );
    println!(
        "gap bound = heartbeat interval + timeout + spread + 2 rounds x (routers x route timeout + (candidates - 1) x race delay + connect timeout) + backoff ceiling(1) + {} ms slack = {} ms",
        ms(SLACK),
        ms(bound)
    );
    println!(
        "schedule (seed {}): {} steps over {} s after a {} s warm-up, {} s cool-down",
        args.seed,
        steps.len(),
        window.as_secs(),
        warmup.as_secs(),
        cooldown.as_secs()
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let samples = Arc::new(Mutex::new(Samples::default()));
    let sampler = tokio::spawn(sample(
        shared.clone(),
        router_pids.clone(),
        bound,
        samples.clone(),
        stop_rx.clone(),
    ));
    let churner = tokio::spawn(churn(
        router_urls.clone(),
        settings,
        args.churn_size,
        churn_every,
        args.send_every,
        shared.clone(),
        stop_rx,
    ));

    let t0 = Instant::now();
    let chaos_start = t0 + warmup;
    let mut counts = std::collections::HashMap::new();
    // Reconnects (closed gaps) counted at each step's start: what each step cost.
    let mut per_step: Vec<(Chaos, usize)> = Vec::with_capacity(steps.len());
    for step in &steps {
        sleep_until(chaos_start + step.at).await;
        let began = Instant::now();
        per_step.push((step.chaos, shared.reconnects()));
        let what = run_step(&mut cluster, *step, args, stop_for, &shared).await?;
        *counts.entry(step.chaos).or_insert(0u32) += 1;
        let heal = healed(&cluster, began, slot).await;
        println!(
            "t+{:>3} s  {what}; all gateways serving again {} ms after the step began",
            (began - t0).as_secs(),
            heal.map_or("-".into(), |d| ms(d).to_string())
        );
    }
    sleep_until(t0 + duration).await;
    let mut costs: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    let ends = per_step
        .iter()
        .skip(1)
        .map(|(_, n)| *n)
        .chain([shared.reconnects()]);
    for ((chaos, start), end) in per_step.iter().zip(ends) {
        costs
            .entry(format!("{chaos:?}"))
            .or_default()
            .push(end - start);
    }
    println!("reconnects from each step until the next one, by kind: {costs:?}");

    // End: stop churn, check everyone is connected, then let every cohort leave.
    let _ = stop_tx.send(true);
    let (mut cohorts, churn_logins) = churner.await.context("churn task")?;
    let now = Instant::now();
    let (down_at_end, ended): (usize, Vec<String>) = {
        let tracks = shared.tracks.lock();
        let down = tracks
            .iter()
            .filter(|t| {
                let s = t.state.lock();
                s.retired.is_none() && s.gaps.is_down()
            })
            .count();
        let ended = tracks
            .iter()
            .filter_map(|t| t.state.lock().ended.clone())
            .collect();
        (down, ended)
    };
    let _ = sampler.await;
    let samples = std::mem::take(&mut *samples.lock());
    cohorts.push_front(base);
    for c in cohorts {
        c.leave(&shared).await;
    }
    let ended_after = now.elapsed();
    drop(cluster);

    let c = &shared.counters;
    let (sent, acked, failed, refused) = (
        c.sent.load(Ordering::Relaxed),
        c.acked.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
    );
    let missing = sent.saturating_sub(acked + failed);
    let gaps: Vec<Duration> = shared
        .tracks
        .lock()
        .iter()
        .flat_map(|t| t.state.lock().gaps.gaps().to_vec())
        .collect();
    let max_gap = samples
        .max_gap
        .max(gaps.iter().copied().max().unwrap_or_default());
    let trends: Vec<Option<RssTrend>> = samples.rss.iter().map(|s| RssTrend::of(s)).collect();
    let growth = trends
        .iter()
        .flatten()
        .map(RssTrend::growth_kb)
        .max()
        .unwrap_or(0);
    let late = trends
        .iter()
        .flatten()
        .map(RssTrend::late_growth_kb)
        .max()
        .unwrap_or(0);
    let rss_flat = trends
        .iter()
        .all(|t| t.is_some_and(|t| t.is_flat(args.rss_tolerance_kb)));
    for (i, s) in samples.rss.iter().enumerate() {
        println!(
            "router {i} RSS (kB, every {} s): {:?}",
            RSS_EVERY.as_secs(),
            s
        );
    }
    let echoed = shared.echoed.load(Ordering::Relaxed);
    let resent = shared.resent.load(Ordering::Relaxed);
    let logins = base_clients + churn_logins;
    println!(
        "{logins} logins, {} reconnects, gaps {} (bound {} ms); {} clients over the bound, {} ended (kicked / gave up), {down_at_end} not connected at the end",
        gaps.len(),
        latency_summary(&gaps),
        ms(bound),
        samples.violators.len(),
        ended.len()
    );
    if let Some(e) = ended.first() {
        println!("  first ended: {e}");
    }
    println!(
        "messages: {sent} accepted, {acked} acked, {failed} handed back, {missing} missing; {refused} refused by send() (no link within its timeout, never accepted); {echoed} echoes received"
    );
    println!(
        "  alternative (fire-and-forget, no outbox): the {resent} frames resent on a new link were unacknowledged when their link died, at risk of loss"
    );
    println!(
        "  alternative (no app heartbeat, TCP keepalive only): clients of a frozen gateway stay on it for the whole freeze ({} ms here; bench-failover: 0 of 200 keepalive-only clients noticed in 30 s)",
        ms(stop_for)
    );
    println!(
        "router RSS growth, last third vs first third: {growth} kB (late: last vs middle third {late} kB; flat = at most {} kB: {})",
        args.rss_tolerance_kb,
        if rss_flat { "yes" } else { "NO" }
    );
    println!("every cohort closed {} ms after the end", ms(ended_after));

    let count = |k: Chaos| counts.get(&k).copied().unwrap_or(0);
    let invariants_ok = missing == 0
        && max_gap <= bound
        && samples.violators.is_empty()
        && ended.is_empty()
        && down_at_end == 0
        && rss_flat;
    Ok(format!(
        "bench-soak: duration_s={} seed={} clients={} gateways={} logins={logins} kills={} stops={} drains={} leader_kills={} \
         sent={sent} acked={acked} failed={failed} missing={missing} refused={refused} resent={resent} echoed={echoed} \
         reconnects={} max_gap_ms={} gap_bound_ms={} over_bound={} ended={} down_at_end={down_at_end} \
         router_rss_first_kb={} router_rss_growth_kb={growth} router_rss_late_growth_kb={late} rss_tolerance_kb={} invariants_ok={invariants_ok}",
        duration.as_secs(),
        args.seed,
        args.clients,
        args.gateways,
        count(Chaos::Kill),
        count(Chaos::Stop),
        count(Chaos::Drain),
        count(Chaos::LeaderKill),
        gaps.len(),
        ms(max_gap),
        ms(bound),
        samples.violators.len(),
        ended.len(),
        trends
            .iter()
            .flatten()
            .map(|t| t.first_kb.round() as u64)
            .max()
            .unwrap_or(0),
        args.rss_tolerance_kb,
    ))
}

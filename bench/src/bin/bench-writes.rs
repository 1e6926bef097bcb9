//! etcd write load (issue 8.6): record writes per gateway per minute made by the agent
//! embedded in `switchyard-gateway`, in steady state, under moderate churn and under heavy
//! churn, next to the naive alternative in the same run.
//!
//! etcd and `--gateways` reference gateways run as processes (capacity `--capacity`, lease
//! TTL 10 s, report interval 2 s: the defaults); this process holds real client sessions on
//! them (HELLO over TCP, then idle; the gateways' idle timeout is set to 1 h so nothing is
//! reaped) and changes how many, per phase:
//!
//! - steady: `--base` sessions per gateway, untouched;
//! - moderate: every second each gateway loses 0–4 random sessions and gains 0–4 new ones
//!   (sessions turn over all the time, the count wanders slowly), kept within base ± 100;
//! - heavy: every second each gateway's count jumps to a random value in base ± 150.
//!
//! Alongside, for every gateway, a naive reporter writes the same record (with the live
//! session count) on every report tick (`--naive-interval`, 2 s = 30 writes/min) whatever
//! changed. Writes are counted by watching the registry prefix in etcd: every put is one
//! event, so the count is what etcd and every router's watch actually receive. Each agent
//! write is also classified by what changed since the previous one (state, connections by
//! at least the hysteresis band, CPU by at least a quarter core, or nothing = the 30 s
//! refresh). Lease keepalives (not keyspace writes: no revision, no watch event) are read
//! from etcd's `grpc_server_msg_received_total{grpc_method="LeaseKeepAlive"}`; the naive
//! reporters use no lease, so that count is the agents' alone.
//!
//! `--quick`: 30 s per phase (about 2 minutes). Full: 180 s per phase (about 10 minutes).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use rand::seq::index::sample;
use switchyard_bench::rawconn;
use switchyard_gateway_agent::agent::CPU_BAND;
use switchyard_registry::etcd_client::{Client as Etcd, EventType, GetOptions, WatchOptions};
use switchyard_registry::{GatewayRecord, Prefix};
use switchyard_tests::{Cluster, GatewaySpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Agent record writes against a naive every-tick reporter.
#[derive(Debug, Parser)]
#[command(name = "bench-writes")]
struct Args {
    /// Small, fast run: 30 s per phase.
    #[arg(long)]
    quick: bool,
    /// Gateways (each a process with its agent embedded).
    #[arg(long, default_value_t = 4)]
    gateways: usize,
    /// Length of each phase (default 180 s, 30 s with --quick).
    #[arg(long, value_parser = humantime::parse_duration)]
    phase: Option<Duration>,
    /// Gateway capacity; the agent's hysteresis band is 2 % of it.
    #[arg(long, default_value_t = 1000)]
    capacity: u64,
    /// Sessions per gateway in steady state (and the middle of the churn ranges).
    #[arg(long, default_value_t = 300)]
    base: usize,
    /// The naive reporter writes this often (the agent's report interval).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    naive_interval: Duration,
}

/// The agent defaults the gateways run with (`switchyard-gateway` sets the interval by
/// `--report-interval`; the band and the refresh are the agent's defaults).
const REPORT_INTERVAL: Duration = Duration::from_secs(2);
const REPORT_DELTA: f64 = 0.02;
const REPORT_MAX_INTERVAL: Duration = Duration::from_secs(30);
/// Naive reporters' ids start with this.
const NAIVE: &str = "naive-";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    switchyard_bench::stats::finish("bench-writes", run(&args)).await;
}

/// Why a record was written, judged from what changed since the previous write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reason {
    /// A naive reporter's tick.
    Naive,
    /// The first record seen for this id (registration).
    First,
    /// `state` changed.
    State,
    /// Connections moved by at least the band.
    Conns,
    /// CPU moved by at least [`CPU_BAND`] (the host's CPU: other work on this machine).
    Cpu,
    /// Nothing that matters changed: the periodic refresh.
    Refresh,
}

/// Classifies an agent write against the previous record of the same gateway.
fn classify(prev: Option<&GatewayRecord>, now: &GatewayRecord, band: f64) -> Reason {
    let Some(prev) = prev else {
        return Reason::First;
    };
    if prev.state != now.state {
        Reason::State
    } else if (now.load.connections as f64 - prev.load.connections as f64).abs() >= band {
        Reason::Conns
    } else if (now.load.cpu - prev.load.cpu).abs() >= CPU_BAND {
        Reason::Cpu
    } else {
        Reason::Refresh
    }
}

/// One put seen on the watch.
#[derive(Debug, Clone, Copy)]
struct Put {
    at: Instant,
    reason: Reason,
}

/// Counts puts under the gateways prefix from `revision + 1`, classifying agent writes.
fn watch_puts(
    mut etcd: Etcd,
    prefix: String,
    revision: i64,
    mut last: HashMap<String, GatewayRecord>,
    band: f64,
    puts: Arc<Mutex<Vec<Put>>>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = etcd.watch(prefix.as_str(), Some(options)).await?;
        while let Some(resp) = stream.message().await? {
            let at = Instant::now();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                if ev.event_type() != EventType::Put {
                    continue;
                }
                let id = kv.key_str()?.trim_start_matches(prefix.as_str()).to_owned();
                let reason = if id.starts_with(NAIVE) {
                    Reason::Naive
                } else {
                    let rec = GatewayRecord::from_json(kv.value())?;
                    let r = classify(last.get(&id), &rec, band);
                    last.insert(id, rec);
                    r
                };
                puts.lock().push(Put { at, reason });
            }
        }
        Ok(())
    })
}

/// The sessions this process holds on one gateway.
struct Pool {
    addr: SocketAddr,
    streams: Vec<TcpStream>,
    /// Next client id number (ids are never reused, so no login replaces another).
    next: usize,
    /// Read by the naive reporter.
    count: Arc<AtomicU64>,
    opened: u64,
    closed: u64,
}

impl Pool {
    /// Closes `n` random sessions.
    fn close(&mut self, n: usize) {
        let n = n.min(self.streams.len());
        let mut idx = sample(&mut rand::rng(), self.streams.len(), n).into_vec();
        // Remove from the back so earlier indexes stay valid.
        idx.sort_unstable_by(|a, b| b.cmp(a));
        for i in idx {
            drop(self.streams.swap_remove(i));
        }
        self.closed += n as u64;
        self.count
            .store(self.streams.len() as u64, Ordering::Relaxed);
    }

    /// Opens `n` sessions (64 logins in flight).
    async fn open(&mut self, gw: usize, n: usize) -> Result<()> {
        let first = self.next;
        self.next += n;
        let addr = self.addr;
        let opened: Vec<std::io::Result<TcpStream>> = futures::stream::iter(first..first + n)
            .map(|i| async move {
                // 16 source addresses: churn leaves closed sockets in TIME_WAIT for 60 s,
                // more than one address's ephemeral ports would hold under heavy churn.
                let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 100 + (i % 16) as u8));
                rawconn::login(addr, Some(src), format!("w{gw}-{i}")).await
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for s in opened {
            self.streams.push(s.context("login")?);
        }
        self.opened += n as u64;
        self.count
            .store(self.streams.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Opens or closes sessions until there are `target`.
    async fn set(&mut self, gw: usize, target: usize) -> Result<()> {
        let now = self.streams.len();
        if target < now {
            self.close(now - target);
        } else {
            self.open(gw, target - now).await?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Steady,
    Moderate,
    Heavy,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Steady => "steady",
            Self::Moderate => "moderate churn",
            Self::Heavy => "heavy churn",
        }
    }
}

/// What one phase produced, per gateway per minute.
#[derive(Debug, Default)]
struct Rates {
    agent: f64,
    by: HashMap<&'static str, f64>,
    naive: f64,
    keepalives: f64,
    opened: f64,
    closed: f64,
}

/// Puts in `[from, to)` by reason.
fn count(puts: &[Put], from: Instant, to: Instant) -> HashMap<Reason, u64> {
    let mut n = HashMap::new();
    for p in puts.iter().filter(|p| p.at >= from && p.at < to) {
        *n.entry(p.reason).or_default() += 1;
    }
    n
}

/// etcd's count of lease keepalive requests received (its `/metrics` is a few hundred KB:
/// read whole over HTTP/1.0, within 5 s).
async fn keepalives(etcd_endpoint: &str) -> Result<f64> {
    let addr = etcd_endpoint.trim_start_matches("http://");
    let read = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .context("etcd /metrics: timeout")??;
    switchyard_tests::agent::metric(
        &text,
        r#"grpc_server_msg_received_total{grpc_method="LeaseKeepAlive",grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"}"#,
    )
    .context("no LeaseKeepAlive counter in etcd's /metrics")
}

async fn phase(
    args: &Args,
    which: Phase,
    length: Duration,
    pools: &mut [Pool],
    puts: &Mutex<Vec<Put>>,
    etcd_endpoint: &str,
) -> Result<Rates> {
    let before: Vec<(u64, u64)> = pools.iter().map(|p| (p.opened, p.closed)).collect();
    let k0 = keepalives(etcd_endpoint).await?;
    let start = Instant::now();
    let end = start + length;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(end) => break,
        }
        for (gw, pool) in pools.iter_mut().enumerate() {
            match which {
                Phase::Steady => {}
                Phase::Moderate => {
                    let (leave, join) = {
                        let mut rng = rand::rng();
                        (rng.random_range(0..=4usize), rng.random_range(0..=4usize))
                    };
                    let low = args.base.saturating_sub(100);
                    let leave = leave.min(pool.streams.len().saturating_sub(low));
                    pool.close(leave);
                    let join = join.min((args.base + 100).saturating_sub(pool.streams.len()));
                    pool.open(gw, join).await?;
                }
                Phase::Heavy => {
                    let target =
                        rand::rng().random_range(args.base.saturating_sub(150)..=args.base + 150);
                    pool.set(gw, target).await?;
                }
            }
        }
    }
    let stop = Instant::now();
    let k1 = keepalives(etcd_endpoint).await?;
    // Writes caused by the last change land up to one report interval later; the next
    // phase starts at once, so they are counted there, as the first writes are here.
    let n = count(&puts.lock(), start, stop);
    let per = |v: u64| v as f64 / pools.len() as f64 / (stop - start).as_secs_f64() * 60.0;
    let agent: u64 = n
        .iter()
        .filter(|(r, _)| !matches!(r, Reason::Naive))
        .map(|(_, v)| v)
        .sum();
    let mut by = HashMap::new();
    for (reason, label) in [
        (Reason::Refresh, "refresh"),
        (Reason::Conns, "conns"),
        (Reason::Cpu, "cpu"),
        (Reason::State, "state"),
        (Reason::First, "first"),
    ] {
        by.insert(label, per(n.get(&reason).copied().unwrap_or(0)));
    }
    let opened: u64 = pools.iter().zip(&before).map(|(p, b)| p.opened - b.0).sum();
    let closed: u64 = pools.iter().zip(&before).map(|(p, b)| p.closed - b.1).sum();
    let rates = Rates {
        agent: per(agent),
        naive: per(n.get(&Reason::Naive).copied().unwrap_or(0)),
        keepalives: (k1 - k0) / pools.len() as f64 / (stop - start).as_secs_f64() * 60.0,
        opened: per(opened),
        closed: per(closed),
        by,
    };
    println!(
        "{}: {:.0} s; per gateway per minute: {:.1} sessions opened, {:.1} closed; agent writes {:.1} \
         (refresh {:.1}, connections {:.1}, cpu {:.1}, state {:.1}); naive {:.1}; lease keepalives {:.1} (not keyspace writes)",
        which.name(),
        (stop - start).as_secs_f64(),
        rates.opened,
        rates.closed,
        rates.agent,
        rates.by["refresh"],
        rates.by["conns"],
        rates.by["cpu"],
        rates.by["state"],
        rates.naive,
        rates.keepalives,
    );
    Ok(rates)
}

/// The naive reporter for gateway `i`: a plain put of its record every `every`, until
/// `until`, whatever changed.
fn naive_reporter(
    mut etcd: Etcd,
    key: String,
    mut record: GatewayRecord,
    count: Arc<AtomicU64>,
    every: Duration,
    until: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let beat = async {
            loop {
                tick.tick().await;
                record.load.connections = count.load(Ordering::Relaxed);
                if let Err(e) = etcd.put(key.as_str(), record.to_json(), None).await {
                    eprintln!("naive put failed: {e}");
                }
            }
        };
        let _ = tokio::time::timeout_at(until, beat).await;
    })
}

async fn run(args: &Args) -> Result<String> {
    let length = args
        .phase
        .unwrap_or(Duration::from_secs(if args.quick { 30 } else { 180 }));
    if args.gateways == 0 || args.base < 150 || args.base as u64 + 150 > args.capacity {
        bail!("need --gateways >= 1 and 150 <= --base <= --capacity - 150");
    }
    let band = (REPORT_DELTA * args.capacity as f64).max(1.0);
    println!(
        "starting etcd and {} gateways (capacity {}, agent: report interval {} s, band {band} connections = {} % of capacity, refresh every {} s, CPU band {CPU_BAND} cores, lease TTL 10 s); \
         {} sessions each; naive reporter every {} ms; {} s per phase",
        args.gateways,
        args.capacity,
        REPORT_INTERVAL.as_secs(),
        REPORT_DELTA * 100.0,
        REPORT_MAX_INTERVAL.as_secs(),
        args.base,
        args.naive_interval.as_millis(),
        length.as_secs(),
    );
    let specs: Vec<GatewaySpec> = (0..args.gateways)
        .map(|i| {
            let mut g = GatewaySpec::new(&format!("gw-w{i}"), "local", "zone-a").args([
                "--heartbeat-interval",
                "30s",
                // Held sessions send nothing: keep them.
                "--idle-timeout",
                "1h",
                "--report-interval",
                "2s",
            ]);
            g.capacity = args.capacity;
            g
        })
        .collect();
    let cluster = Cluster::start(0, &specs).await;
    let endpoint = cluster.etcd.endpoint();
    let etcd = cluster.etcd.client().await;
    let prefix: &Prefix = &cluster.prefix;
    let gw_prefix = prefix.gateways();

    // Every gateway registered; that listing seeds the classifier and the watch revision.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listing = loop {
        let resp = etcd
            .clone()
            .get(gw_prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        if resp.kvs().len() >= args.gateways {
            break resp;
        }
        if Instant::now() > deadline {
            bail!("gateways did not register within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let revision = listing.header().map_or(0, |h| h.revision());
    let mut last = HashMap::new();
    for kv in listing.kvs() {
        let id = kv
            .key_str()?
            .trim_start_matches(gw_prefix.as_str())
            .to_owned();
        last.insert(id, GatewayRecord::from_json(kv.value())?);
    }
    let template = last.values().next().cloned().context("a record")?;
    let puts: Arc<Mutex<Vec<Put>>> = Arc::default();
    let watcher = watch_puts(
        etcd.clone(),
        gw_prefix.clone(),
        revision,
        last,
        band,
        puts.clone(),
    );

    let mut pools: Vec<Pool> = cluster
        .gateways
        .values()
        .map(|g| Pool {
            addr: g.tcp,
            streams: Vec::new(),
            next: 0,
            count: Arc::default(),
            opened: 0,
            closed: 0,
        })
        .collect();
    for (gw, pool) in pools.iter_mut().enumerate() {
        pool.open(gw, args.base).await?;
    }
    let until = Instant::now() + length * 3 + Duration::from_secs(30);
    let naive: Vec<_> = pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = format!("{NAIVE}{i}");
            let mut record = template.clone();
            record.id.clone_from(&id);
            naive_reporter(
                etcd.clone(),
                format!("{gw_prefix}{id}"),
                record,
                p.count.clone(),
                args.naive_interval,
                until,
            )
        })
        .collect();
    // Let the write for the initial logins go out before steady state starts.
    tokio::time::sleep(REPORT_INTERVAL * 2).await;

    let steady = phase(args, Phase::Steady, length, &mut pools, &puts, &endpoint).await?;
    let moderate = phase(args, Phase::Moderate, length, &mut pools, &puts, &endpoint).await?;
    let heavy = phase(args, Phase::Heavy, length, &mut pools, &puts, &endpoint).await?;
    for n in naive {
        n.abort();
    }
    if watcher.is_finished() {
        watcher.await??;
        bail!("the watch ended early");
    }
    watcher.abort();
    drop(pools);
    drop(cluster);

    let naive = (steady.naive + moderate.naive + heavy.naive) / 3.0;
    println!(
        "naive alternative: every report tick ({} ms) = {:.0} writes/gw/min by construction; measured {naive:.1}",
        args.naive_interval.as_millis(),
        60_000.0 / args.naive_interval.as_millis() as f64
    );
    Ok(format!(
        "bench-writes: gateways={} phase_s={} steady_per_gw_min={:.1} moderate={:.1} churn={:.1} naive={naive:.1} \
         steady_cpu_driven={:.1} moderate_sessions_per_gw_min={:.0} churn_sessions_per_gw_min={:.0} \
         keepalives_per_gw_min={:.1} report_interval_s={} refresh_s={} band_conns={band}",
        args.gateways,
        length.as_secs(),
        steady.agent,
        moderate.agent,
        heavy.agent,
        steady.by["cpu"],
        moderate.opened + moderate.closed,
        heavy.opened + heavy.closed,
        (steady.keepalives + moderate.keepalives + heavy.keepalives) / 3.0,
        REPORT_INTERVAL.as_secs(),
        REPORT_MAX_INTERVAL.as_secs(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_registry::{Addrs, GatewayState, Load};

    fn record(state: GatewayState, connections: u64, cpu: f64) -> GatewayRecord {
        GatewayRecord {
            id: "gw".into(),
            addrs: Addrs {
                tcp: Some("127.0.0.1:1".into()),
                ws: None,
            },
            region: "r".into(),
            zone: "z".into(),
            capacity: 1000,
            weight: 100,
            state,
            load: Load { connections, cpu },
            version: "t".into(),
            labels: Default::default(),
            started_at: None,
            updated_at: None,
        }
    }

    #[test]
    fn writes_are_classified_by_what_changed() {
        let s = GatewayState::Serving;
        let prev = record(s, 300, 0.5);
        assert_eq!(classify(None, &prev, 20.0), Reason::First);
        assert_eq!(
            classify(Some(&prev), &record(GatewayState::Draining, 300, 0.5), 20.0),
            Reason::State
        );
        assert_eq!(
            classify(Some(&prev), &record(s, 280, 0.5), 20.0),
            Reason::Conns
        );
        assert_eq!(
            classify(Some(&prev), &record(s, 310, 0.9), 20.0),
            Reason::Cpu
        );
        assert_eq!(
            classify(Some(&prev), &record(s, 319, 0.6), 20.0),
            Reason::Refresh
        );
    }

    #[test]
    fn puts_are_counted_inside_the_window_only() {
        let t = Instant::now();
        let puts = [
            Put {
                at: t,
                reason: Reason::Naive,
            },
            Put {
                at: t + Duration::from_secs(1),
                reason: Reason::Refresh,
            },
            Put {
                at: t + Duration::from_secs(2),
                reason: Reason::Naive,
            },
        ];
        let n = count(&puts, t, t + Duration::from_secs(2));
        assert_eq!(n.get(&Reason::Naive), Some(&1));
        assert_eq!(n.get(&Reason::Refresh), Some(&1));
    }
}

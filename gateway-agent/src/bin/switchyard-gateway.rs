//! `switchyard-gateway`: the reference long-connection gateway with its agent embedded
//! (DESIGN contract 4). Flags, `SWITCHYARD_<FLAG>` environment variables and a TOML file
//! (`--config`, keys are the long flag names) are merged by `cli::parse`.
//!
//! Lifecycle: register (unless `--no-register`), serve; on SIGTERM/SIGINT or an ops drain
//! (`P/drain/<id>`) the record says `draining`, GOAWAYs go out over `--drain-window`, the
//! rest is closed, the lease revoked, exit 0. A second signal exits at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use switchyard_gateway_agent::agent::{self, cpu};
use switchyard_gateway_agent::cli::{self, LogFormat};
use switchyard_gateway_agent::gateway::{self, Gateway, Hub, KickPolicy, Listeners};
use switchyard_registry::{Addrs, EtcdConfig, GatewayId, Prefix};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// The reference gateway.
#[derive(Debug, Parser)]
#[command(name = "switchyard-gateway", version, args_override_self = true)]
struct Flags {
    /// TOML file with any of these flags as keys (flags and env win).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "SWITCHYARD_ETCD", default_value = "http://127.0.0.1:2379")]
    etcd: String,
    /// Registry prefix in etcd.
    #[arg(long, env = "SWITCHYARD_PREFIX", default_value = "/switchyard")]
    prefix: String,
    /// Gateway id (registry key; sent in WELCOME).
    #[arg(long, env = "SWITCHYARD_ID")]
    id: String,
    /// TCP listen address.
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:7200")]
    listen: SocketAddr,
    /// WebSocket listen address.
    #[arg(long, env = "SWITCHYARD_WS_LISTEN")]
    ws_listen: Option<SocketAddr>,
    /// TCP address registered (default: --listen when it is a concrete address).
    #[arg(long, env = "SWITCHYARD_ADVERTISE")]
    advertise: Option<String>,
    /// WebSocket URL registered (default: ws[s]://<ws-listen>/ws when concrete).
    #[arg(long, env = "SWITCHYARD_WS_ADVERTISE")]
    ws_advertise: Option<String>,
    /// Region registered.
    #[arg(long, env = "SWITCHYARD_REGION", default_value = "")]
    region: String,
    /// Zone registered.
    #[arg(long, env = "SWITCHYARD_ZONE", default_value = "")]
    zone: String,
    /// Session limit (registered as capacity); more logins get REJECT{OVERLOADED}.
    #[arg(long, env = "SWITCHYARD_CAPACITY", default_value_t = 100_000)]
    capacity: u64,
    /// Relative weight registered (1–10000).
    #[arg(long, env = "SWITCHYARD_WEIGHT", default_value_t = 100)]
    weight: u32,
    /// Label `key=value` registered (repeat, or comma-separated in the env variable).
    #[arg(long, env = "SWITCHYARD_LABEL", value_delimiter = ',')]
    label: Vec<String>,
    /// Lease TTL (whole seconds, at least 2s).
    #[arg(long, env = "SWITCHYARD_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// At most one load-driven record write per this interval.
    #[arg(long, env = "SWITCHYARD_REPORT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    report_interval: Duration,
    /// Replace a live agent registered under the same id.
    #[arg(long, env = "SWITCHYARD_TAKEOVER")]
    takeover: bool,
    /// Run without etcd (no registration, no ops drain).
    #[arg(long, env = "SWITCHYARD_NO_REGISTER")]
    no_register: bool,
    /// Time to complete TLS, the WebSocket upgrade and HELLO.
    #[arg(long, env = "SWITCHYARD_HELLO_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    hello_timeout: Duration,
    /// Heartbeat interval told to clients in WELCOME.
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Close sessions the client kept silent this long (default 2.5 × heartbeat interval).
    #[arg(long, env = "SWITCHYARD_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Debugging: never reap silent sessions.
    #[arg(long, env = "SWITCHYARD_NO_HEARTBEAT_CHECK")]
    no_heartbeat_check: bool,
    /// Log every PING/PONG.
    #[arg(long, env = "SWITCHYARD_LOG_HEARTBEATS")]
    log_heartbeats: bool,
    /// Close clients whose queue stays full (or socket takes no bytes) this long.
    #[arg(long, env = "SWITCHYARD_SLOW_CLIENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    slow_client_timeout: Duration,
    /// Outbound frames queued per session.
    #[arg(long, env = "SWITCHYARD_SEND_QUEUE", default_value_t = 256)]
    send_queue: usize,
    /// Largest frame in bytes (the length field).
    #[arg(long, env = "SWITCHYARD_MAX_FRAME", default_value_t = 64 * 1024)]
    max_frame: usize,
    /// GOAWAYs are spread evenly over this window on drain.
    #[arg(long, env = "SWITCHYARD_DRAIN_WINDOW", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_window: Duration,
    /// kick-old | reject-new | allow-many.
    #[arg(long, env = "SWITCHYARD_KICK_POLICY", default_value = "kick-old")]
    kick_policy: KickPolicy,
    /// HELLO tokens must be hex(HMAC-SHA256(secret, client_id)).
    #[arg(long, env = "SWITCHYARD_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// PEM certificate chain: both listeners speak TLS.
    #[arg(long, env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve /metrics and /healthz here.
    #[arg(long, env = "SWITCHYARD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl Flags {
    fn gateway(&self) -> anyhow::Result<gateway::Config> {
        let mut c = gateway::Config::new(self.id.clone());
        c.hello_timeout = self.hello_timeout;
        c.heartbeat_interval = self.heartbeat_interval;
        c.idle_timeout = self
            .idle_timeout
            .unwrap_or_else(|| gateway::default_idle_timeout(self.heartbeat_interval));
        c.heartbeat_check = !self.no_heartbeat_check;
        c.log_heartbeats = self.log_heartbeats;
        c.slow_client_timeout = self.slow_client_timeout;
        c.send_queue = self.send_queue;
        c.max_frame = self.max_frame;
        c.capacity = self.capacity;
        c.drain_window = self.drain_window;
        c.kick_policy = self.kick_policy;
        c.auth_secret = self.auth_secret.clone().map(String::into_bytes);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            c.tls = Some(gateway::load_tls(cert, key)?);
        }
        c.validate()?;
        Ok(c)
    }

    /// What the registry advertises: explicit flags, else the listen addresses when they
    /// are concrete (an unspecified 0.0.0.0 cannot be dialled by a client).
    fn addrs(&self, tcp: SocketAddr, ws: Option<SocketAddr>) -> anyhow::Result<Addrs> {
        let tcp = match &self.advertise {
            Some(a) => Some(a.clone()),
            None if tcp.ip().is_unspecified() => {
                bail!("--listen {tcp} is not a concrete address: give --advertise host:port")
            }
            None => Some(tcp.to_string()),
        };
        let scheme = if self.tls_cert.is_some() { "wss" } else { "ws" };
        let ws = match (&self.ws_advertise, ws) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(a)) if a.ip().is_unspecified() => bail!(
                "--ws-listen {a} is not a concrete address: give --ws-advertise ws://host:port/ws"
            ),
            (None, Some(a)) => Some(format!("{scheme}://{a}/ws")),
            (None, None) => None,
        };
        Ok(Addrs { tcp, ws })
    }

    fn agent(&self, addrs: Addrs) -> anyhow::Result<agent::Config> {
        let mut labels = BTreeMap::new();
        for l in &self.label {
            let Some((k, v)) = l.split_once('=') else {
                bail!("label {l:?} is not key=value");
            };
            labels.insert(k.to_owned(), v.to_owned());
        }
        let mut a = agent::Config::new(
            EtcdConfig::new(&[&self.etcd])?,
            Prefix::new(&self.prefix)?,
            GatewayId::new(&self.id)?,
            addrs,
            self.capacity,
        )?;
        a.region.clone_from(&self.region);
        a.zone.clone_from(&self.zone);
        a.weight = self.weight;
        a.labels = labels;
        a.ttl = self.ttl;
        a.report_interval = self.report_interval;
        a.takeover = self.takeover;
        a.validate()?;
        Ok(a)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let flags: Flags = cli::parse();
    cli::init_logging(flags.log_format);
    match run(flags).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Why the drain started.
async fn drain_trigger(agent: Option<&agent::Agent>) -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return std::future::pending().await;
    };
    let ops = async {
        match agent {
            Some(a) => {
                let mut rx = a.ops_drain();
                // Only an error (agent gone) ends this without a drain record.
                if rx.wait_for(Option::is_some).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        () = ops => "ops drain",
    };
    // A second signal exits at once, whatever the drain is doing.
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        warn!("second signal: exiting now");
        std::process::exit(1);
    });
    why
}

/// Feeds the live session count and the process's CPU to the agent (no probe: the count
/// is read straight from the hub; the agent's reporting policy decides when to write).
async fn report_load(hub: Hub, agent: agent::Agent) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let me = std::process::id();
    let mut last_cpu = cpu::process_cpu_time(me).ok();
    let mut last_cpu_at = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        agent.set_connections(hub.connections() as u64);
        if last_cpu_at.elapsed() >= Duration::from_secs(1) {
            // Its own CPU, not the host's: other work on the host must not rewrite this
            // gateway's record (each change past the report delta is an etcd write).
            let now = cpu::process_cpu_time(me).ok();
            if let (Some(a), Some(b)) = (last_cpu, now) {
                agent.set_cpu(cpu::process_cores(a, b, last_cpu_at.elapsed()));
            }
            last_cpu = now;
            last_cpu_at = tokio::time::Instant::now();
        }
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let config = flags.gateway().context("invalid gateway settings")?;
    match cli::raise_fd_limit() {
        // Listeners, etcd and the ops endpoint need a few descriptors of their own.
        Ok(Some(n)) if n < config.capacity + 64 => warn!(
            limit = n,
            capacity = config.capacity,
            "open-file limit is below --capacity: logins past it will fail to be accepted (raise LimitNOFILE / ulimit -n)"
        ),
        Ok(limit) => info!(?limit, "open-file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
    let metrics = cli::install_metrics().context("installing the metrics recorder")?;
    if let Some(addr) = flags.http_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --http-listen {addr}"))?;
        info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
        tokio::spawn(cli::serve(
            listener,
            cli::ops_router(metrics),
            std::future::pending(),
        ));
    }
    let tcp = TcpListener::bind(flags.listen)
        .await
        .with_context(|| format!("binding --listen {}", flags.listen))?;
    let ws = match flags.ws_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding --ws-listen {a}"))?,
        ),
        None => None,
    };
    let tcp_addr = tcp.local_addr()?;
    let ws_addr = ws.as_ref().map(TcpListener::local_addr).transpose()?;

    let gw = Gateway::new(config)?;
    let hub = gw.hub();
    let agent = if flags.no_register {
        None
    } else {
        let a = agent::start(flags.agent(flags.addrs(tcp_addr, ws_addr)?)?)
            .await
            .map_err(|e| {
                anyhow::anyhow!("registering in etcd (use --no-register to run without etcd): {e}")
            })?;
        tokio::spawn(report_load(hub.clone(), a.clone()));
        Some(a)
    };
    info!(id = %flags.id, tcp = %tcp_addr, ws = ?ws_addr, registered = agent.is_some(), "gateway listening");

    let shutdown = async {
        let why = drain_trigger(agent.as_ref()).await;
        info!(why, "draining (a second signal exits at once)");
        if let Some(a) = &agent {
            a.drain().await;
        }
    };
    gw.run(Listeners { tcp: Some(tcp), ws }, shutdown).await?;
    if let Some(a) = agent {
        a.set_connections(0);
        a.shutdown().await.context("revoking the lease")?;
    }
    info!("drained, exiting");
    Ok(())
}

//! `switchyard-gateway`: the reference long-connection gateway with its agent embedded
//! (DESIGN contract 4). Flags, `SWITCHYARD_<FLAG>` environment variables and a TOML file
//! (`--config`, keys are the long flag names) are merged by `cli::parse`.
//!
//! Lifecycle: register (unless `--no-register`), serve; on SIGTERM/SIGINT or an ops drain
//! (`P/drain/<id>`) the record says `draining`, GOAWAYs go out over `--drain-window`, the
//! rest is closed, the lease revoked, exit 0. A second signal exits at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use switchyard_gateway_agent::agent::{self, RegistryArgs};
use switchyard_gateway_agent::gateway::{self, AuthMode, Gateway, KickPolicy, Listeners};
use switchyard_gateway_agent::{ops_router, raise_fd_limit, serve_ops};
use switchyard_identity::Secret;
use switchyard_proto::limits::DEFAULT_MAX_FRAME;
use switchyard_registry::Addrs;
use switchyard_registry::cli;
use switchyard_registry::telemetry::{self, LogFormat};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Name in error lines.
const BIN: &str = "switchyard-gateway";

/// The reference gateway.
#[derive(Debug, Parser)]
#[command(name = "switchyard-gateway", version, args_override_self = true)]
struct Flags {
    /// TOML file with any of these flags as keys (flags and env win).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Registry connection and the record's identity, locality and reporting.
    #[command(flatten)]
    registry: RegistryArgs,
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
    /// Session limit (registered as capacity); more logins get REJECT{OVERLOADED}.
    #[arg(long, env = "SWITCHYARD_CAPACITY", default_value_t = 100_000)]
    capacity: u64,
    /// Open sockets beyond this are closed on accept, before TLS (default: --capacity +
    /// --max-handshaking, at most the open-file limit less 64).
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Sockets that have not sent HELLO yet beyond this are closed on accept.
    #[arg(long, env = "SWITCHYARD_MAX_HANDSHAKING", default_value_t = 1024)]
    max_handshaking: usize,
    /// Open sockets per source address (IPv6: per /64); 0 = no limit.
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    max_connections_per_ip: u32,
    /// New sockets per second per source address, `N` or `N/s` (burst: one second's
    /// worth); 0 = no limit.
    #[arg(long, env = "SWITCHYARD_ACCEPT_RATE_PER_IP", default_value = "50/s", value_parser = per_second)]
    accept_rate_per_ip: f64,
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
    #[arg(long, env = "SWITCHYARD_MAX_FRAME", default_value_t = DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// GOAWAYs are spread evenly over this window on drain.
    #[arg(long, env = "SWITCHYARD_DRAIN_WINDOW", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_window: Duration,
    /// kick-old | reject-new | allow-many.
    #[arg(long, env = "SWITCHYARD_KICK_POLICY", default_value = "kick-old")]
    kick_policy: KickPolicy,
    /// Auth modes in the order tried, e.g. ticket,jwt (ticket | jwt | hmac); a HELLO passes
    /// if any accepts it. Default: every mode whose keys are given.
    #[arg(long, env = "SWITCHYARD_AUTH", value_delimiter = ',')]
    auth: Vec<AuthMode>,
    /// ticket mode: JWKS file of the routers' public ticket keys (re-read when it changes).
    #[arg(long, env = "SWITCHYARD_TICKET_JWKS")]
    ticket_jwks: Option<PathBuf>,
    /// ticket mode: a router's http://host:port/v1/ticket-keys (repeatable; fetched at
    /// start, every 30 s, and when a ticket names an unknown key).
    #[arg(long, env = "SWITCHYARD_TICKET_JWKS_URL", value_delimiter = ',')]
    ticket_jwks_url: Vec<String>,
    /// jwt mode: JWKS file of the app's token keys (re-read when it changes).
    #[arg(long, env = "SWITCHYARD_APP_JWKS")]
    app_jwks: Option<PathBuf>,
    /// jwt mode: accepted `aud` values of app tokens (repeatable; default: not checked).
    #[arg(long, env = "SWITCHYARD_APP_AUDIENCE", value_delimiter = ',')]
    app_audience: Vec<String>,
    /// jwt mode: accepted `iss` values of app tokens (repeatable; default: not checked).
    #[arg(long, env = "SWITCHYARD_APP_ISSUER", value_delimiter = ',')]
    app_issuer: Vec<String>,
    /// hmac mode: the secret of kid "default" (prefer --auth-secret-file: a flag shows in ps).
    #[arg(long, env = "SWITCHYARD_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// hmac mode: file of `kid secret` lines (re-read when it changes).
    #[arg(long, env = "SWITCHYARD_AUTH_SECRET_FILE")]
    auth_secret_file: Option<PathBuf>,
    /// hmac mode: also accept the old never-expiring hex(HMAC-SHA256(secret, client_id)).
    #[arg(long, env = "SWITCHYARD_HMAC_LEGACY")]
    hmac_legacy: bool,
    /// Admit logins nobody verified on non-loopback listeners (no auth mode).
    #[arg(long, env = "SWITCHYARD_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
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
    /// Validate flags, environment, the config file and the files they name (TLS, CA),
    /// print a summary and exit: 0 when valid, 2 with the reason. Binds no port and does
    /// not contact etcd.
    #[arg(long)]
    check: bool,
}

/// `N` or `N/s`: a rate per second.
fn per_second(s: &str) -> Result<f64, String> {
    let n = s.strip_suffix("/s").unwrap_or(s).trim();
    match n.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a rate like 50/s (0 = off)")),
    }
}

impl Flags {
    fn gateway(&self) -> anyhow::Result<gateway::Config> {
        let mut c = gateway::Config::new(self.registry.id.clone());
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
        c.max_handshaking = self.max_handshaking;
        c.max_connections = self.max_connections.unwrap_or_else(|| {
            usize::try_from(self.capacity)
                .unwrap_or(usize::MAX)
                .saturating_add(self.max_handshaking)
        });
        c.max_connections_per_ip = self.max_connections_per_ip;
        c.accept_rate_per_ip = self.accept_rate_per_ip;
        c.drain_window = self.drain_window;
        c.kick_policy = self.kick_policy;
        c.auth = gateway::AuthConfig {
            modes: self.auth.clone(),
            ticket_jwks: self.ticket_jwks.clone(),
            ticket_jwks_urls: self.ticket_jwks_url.clone(),
            app_jwks: self.app_jwks.clone(),
            app_audience: self.app_audience.clone(),
            app_issuer: self.app_issuer.clone(),
            auth_secret: self.auth_secret.clone().map(Secret::new),
            auth_secret_file: self.auth_secret_file.clone(),
            hmac_legacy: self.hmac_legacy,
            allow_anonymous: self.allow_anonymous,
        };
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
}

/// Everything the flags say, validated before anything is bound or connected.
struct Settings {
    /// The gateway server's configuration.
    gateway: gateway::Config,
    /// The auth modes in force, with their key files read (validated before start).
    modes: Vec<&'static str>,
    /// The embedded agent's, `None` with `--no-register`; its addresses are filled in once
    /// the listeners are bound (a port 0 becomes a real port).
    agent: Option<agent::Config>,
}

impl Flags {
    /// Any error here is a usage error (exit 2).
    fn settings(&self) -> anyhow::Result<Settings> {
        let gateway = self.gateway().context("invalid gateway settings")?;
        let modes = gateway::Authenticator::from_config(&gateway.auth, &gateway.gateway_id)
            .context("invalid auth settings")?
            .modes();
        let agent = if self.no_register {
            None
        } else {
            let addrs = self.addrs(self.listen, self.ws_listen)?;
            Some(self.registry.config(addrs, self.capacity)?)
        };
        // After the registration checks: a missing --advertise is the first thing to fix.
        let listen: Vec<SocketAddr> = std::iter::once(self.listen).chain(self.ws_listen).collect();
        gateway
            .check_exposure(&listen)
            .context("invalid gateway settings")?;
        Ok(Settings {
            gateway,
            modes,
            agent,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags: Flags = cli::parse();
    telemetry::init_logging(flags.log_format);
    let settings = match flags.settings() {
        Ok(s) => s,
        Err(e) => return cli::fail(BIN, cli::EXIT_USAGE, &format_args!("{e:#}")),
    };
    if flags.check {
        let registered = settings.agent.as_ref().map_or_else(
            || "not registered".to_owned(),
            |a| format!("registers {} in {}", a.id, a.region),
        );
        let auth = if settings.modes.is_empty() {
            "none (anonymous)".to_owned()
        } else {
            settings.modes.join(",")
        };
        println!(
            "{BIN}: configuration ok: listen {}, capacity {}, auth {auth}, {registered}",
            flags.listen, settings.gateway.capacity
        );
        return ExitCode::SUCCESS;
    }
    match run(flags, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            cli::fail(BIN, cli::EXIT_RUNTIME, &format_args!("{e:#}"))
        }
    }
}

async fn run(flags: Flags, settings: Settings) -> anyhow::Result<()> {
    let Settings {
        gateway: mut config,
        modes,
        agent: agent_config,
    } = settings;
    let fd_limit = raise_fd_limit();
    match &fd_limit {
        // Listeners, etcd and the ops endpoint need a few descriptors of their own.
        Ok(Some(n)) if *n < config.capacity + 64 => warn!(
            limit = n,
            capacity = config.capacity,
            "open-file limit is below --capacity: logins past it will fail to be accepted (raise LimitNOFILE / ulimit -n)"
        ),
        Ok(limit) => info!(?limit, "open-file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
    // Refusing a socket on accept is clean; running out of descriptors stalls accept for
    // everyone, so the default cap stays under the limit.
    if let (None, Ok(Some(n))) = (flags.max_connections, fd_limit) {
        let room = usize::try_from(n.saturating_sub(64))
            .unwrap_or(usize::MAX)
            .max(1);
        config.max_connections = config.max_connections.min(room);
    }
    info!(
        max_connections = config.max_connections,
        max_handshaking = config.max_handshaking,
        max_connections_per_ip = config.max_connections_per_ip,
        accept_rate_per_ip = config.accept_rate_per_ip,
        "connection limits"
    );
    let metrics = telemetry::install_metrics(&[]).context("installing the metrics recorder")?;
    telemetry::declare_counters(&[
        "switchyard_gateway_sessions_total",
        "switchyard_gateway_rejects_total",
        "switchyard_gateway_kicks_total",
        "switchyard_gateway_goaways_total",
        "switchyard_agent_record_write_errors_total",
    ]);
    // The hub sets it on each open and close; until the first, a dashboard would show no
    // line at all for an idle gateway.
    metrics::gauge!("switchyard_gateway_connections").set(0.0);
    if let Some(addr) = flags.http_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --http-listen {addr}"))?;
        info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
        tokio::spawn(serve_ops(
            listener,
            ops_router(metrics),
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
    // Before registering: routers send clients only once their tickets can be checked.
    gw.load_keys().await?;
    info!(modes = ?modes, "auth");
    let hub = gw.hub();
    let agent = if let Some(mut agent_config) = agent_config {
        agent_config.addrs = flags.addrs(tcp_addr, ws_addr)?;
        let a = agent::start(agent_config).await.map_err(|e| {
            anyhow::anyhow!("registering in etcd (use --no-register to run without etcd): {e}")
        })?;
        let hub = hub.clone();
        agent::report_load(a.clone(), move || hub.connections() as u64);
        Some(a)
    } else {
        None
    };
    info!(id = %flags.registry.id, tcp = %tcp_addr, ws = ?ws_addr, registered = agent.is_some(), "gateway listening");

    let shutdown = async {
        let why = agent::drain_requested(agent.as_ref()).await;
        info!(
            why = why.as_str(),
            "draining (a second signal exits at once)"
        );
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
